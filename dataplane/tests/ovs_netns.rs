//! The OVSDB client against a real, private Open vSwitch (userspace datapath)
//! running in a namespace of the test's own.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_dataplane::{DataplaneError, Ovsdb, PortChange, PortSpec, PortType};
use tartan_tests::netns::{ip, Netns};
use tartan_tests::ovs::Ovs;
use tartan_tests::wait::wait_until;

const OWNER: &str = "tartan-owner";

fn owned_by(owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(OWNER.to_string(), owner.to_string())])
}

async fn connect(ovs: &Ovs) -> Result<Ovsdb> {
    Ok(Ovsdb::connect(&ovs.address())
        .await?
        .with_timeout(Duration::from_secs(10)))
}

fn spec(bridge: &str, name: &str, port_type: PortType, tag: u16, owner: &str) -> PortSpec {
    PortSpec {
        bridge: bridge.to_string(),
        name: name.to_string(),
        port_type,
        tag: Some(tag),
        external_ids: owned_by(owner),
    }
}

/// A "container": a namespace whose `eth0` is the peer of `host_end` in `host`.
fn container(host: &Netns, host_end: &str, address: &str) -> Result<Netns> {
    let ns = Netns::create("ovsc")?;
    ip(&[
        "-n",
        host.name(),
        "link",
        "add",
        host_end,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])?;
    ip(&["-n", host.name(), "link", "set", host_end, "up"])?;
    ip(&["-n", ns.name(), "addr", "add", address, "dev", "eth0"])?;
    ip(&["-n", ns.name(), "link", "set", "eth0", "up"])?;
    Ok(ns)
}

fn pings(from: &Netns, to: &str) -> Result<bool> {
    Ok(from
        .exec("ping", &["-c", "1", "-W", "1", to])?
        .status
        .success())
}

fn link_exists(ns: &Netns, name: &str) -> Result<bool> {
    Ok(ns.exec("ip", &["link", "show", name])?.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_ports_reach_their_own_vlan_and_not_the_other() -> Result<()> {
    let host = Netns::create("ovsh")?;
    let ovs = Ovs::start(&host)?;
    let db = connect(&ovs).await?;
    assert!(db.ensure_bridge("ovs0", &owned_by("test")).await?);
    assert!(
        !db.ensure_bridge("ovs0", &owned_by("test")).await?,
        "a second ensure finds the bridge"
    );
    ensure!(
        ovs.vsctl(&["get", "Bridge", "ovs0", "datapath_type"])?
            .trim()
            == "netdev",
        "the bridge uses the userspace datapath"
    );

    // Two containers on VLAN 100 and two on VLAN 200, all in one subnet, so
    // only the tags keep them apart.
    let red_a = container(&host, "red-a", "10.77.0.1/24")?;
    let red_b = container(&host, "red-b", "10.77.0.2/24")?;
    let blue_a = container(&host, "blue-a", "10.77.0.3/24")?;
    let blue_b = container(&host, "blue-b", "10.77.0.4/24")?;
    for (name, tag) in [
        ("red-a", 100),
        ("red-b", 100),
        ("blue-a", 200),
        ("blue-b", 200),
    ] {
        let change = db
            .ensure_port(&spec("ovs0", name, PortType::System, tag, name))
            .await?;
        assert_eq!(change, PortChange::Created, "{name}");
    }
    assert_eq!(ovs.vsctl(&["get", "Port", "red-a", "tag"])?.trim(), "100");
    assert_eq!(ovs.vsctl(&["get", "Port", "blue-b", "tag"])?.trim(), "200");

    let (timeout, every) = (Duration::from_secs(15), Duration::from_millis(200));
    wait_until(timeout, every, || pings(&red_a, "10.77.0.2")).context("red-a to red-b")?;
    wait_until(timeout, every, || pings(&blue_a, "10.77.0.4")).context("blue-a to blue-b")?;
    // The same VLAN works both ways by now, so silence across VLANs is the tag.
    for (from, to) in [
        (&red_a, "10.77.0.3"),
        (&red_b, "10.77.0.4"),
        (&blue_a, "10.77.0.1"),
        (&blue_b, "10.77.0.2"),
    ] {
        ensure!(
            !pings(from, to)?,
            "{} reached {to} on the other VLAN",
            from.name()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_between_two_hosts_carries_both_vlans() -> Result<()> {
    // Two hosts, each with its own switch, joined by a veth pair whose ends
    // are untagged (trunk) ports on each host's bridge.
    let east = Netns::create("ovse")?;
    let west = Netns::create("ovsw")?;
    let east_ovs = Ovs::start(&east)?;
    let west_ovs = Ovs::start(&west)?;
    ip(&[
        "-n",
        east.name(),
        "link",
        "add",
        "trunk",
        "type",
        "veth",
        "peer",
        "name",
        "trunk",
        "netns",
        west.name(),
    ])?;
    ip(&["-n", east.name(), "link", "set", "trunk", "up"])?;
    ip(&["-n", west.name(), "link", "set", "trunk", "up"])?;
    let east_db = connect(&east_ovs).await?;
    let west_db = connect(&west_ovs).await?;
    for db in [&east_db, &west_db] {
        db.ensure_bridge("ovs0", &owned_by("test")).await?;
        let trunk = PortSpec {
            tag: None,
            ..spec("ovs0", "trunk", PortType::System, 1, "test")
        };
        db.ensure_port(&trunk).await?;
    }

    let red_east = container(&east, "red", "10.78.0.1/24")?;
    let blue_east = container(&east, "blue", "10.78.0.3/24")?;
    let _red_west = container(&west, "red", "10.78.0.2/24")?;
    let blue_west = container(&west, "blue", "10.78.0.4/24")?;
    for db in [&east_db, &west_db] {
        db.ensure_port(&spec("ovs0", "red", PortType::System, 100, "red"))
            .await?;
        db.ensure_port(&spec("ovs0", "blue", PortType::System, 200, "blue"))
            .await?;
    }

    let (timeout, every) = (Duration::from_secs(15), Duration::from_millis(200));
    wait_until(timeout, every, || pings(&red_east, "10.78.0.2")).context("red across")?;
    wait_until(timeout, every, || pings(&blue_west, "10.78.0.3")).context("blue across")?;
    for (from, to) in [(&red_east, "10.78.0.4"), (&blue_east, "10.78.0.2")] {
        ensure!(
            !pings(from, to)?,
            "{} reached {to} on the other VLAN across the trunk",
            from.name()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_are_found_changed_and_removed_by_owner() -> Result<()> {
    let host = Netns::create("ovsh")?;
    let ovs = Ovs::start(&host)?;
    let db = connect(&ovs).await?;
    db.ensure_bridge("ovs0", &owned_by("test")).await?;
    for (name, owner) in [("c1p0", "c1"), ("c1p1", "c1"), ("c2p0", "c2")] {
        db.ensure_port(&spec("ovs0", name, PortType::Internal, 10, owner))
            .await?;
    }
    // A port somebody else made, with no owner.
    ovs.vsctl(&[
        "add-port",
        "ovs0",
        "other",
        "--",
        "set",
        "Interface",
        "other",
        "type=internal",
    ])?;

    let mine = db.ports_owned_by(OWNER, "c1").await?;
    let names: Vec<_> = mine.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["c1p0", "c1p1"]);
    for port in &mine {
        assert_eq!(port.bridge, "ovs0");
        assert_eq!(port.tag, Some(10));
        assert_eq!(port.interface_type, "internal");
        assert_eq!(port.external_ids, owned_by("c1"));
    }
    assert!(
        link_exists(&host, "c1p0")?,
        "the switch made the internal port's device"
    );

    // Idempotent, then brought in line, then refused to another owner.
    let same = spec("ovs0", "c1p0", PortType::Internal, 10, "c1");
    assert_eq!(db.ensure_port(&same).await?, PortChange::Unchanged);
    // A key somebody else added does not make the port someone else's.
    ovs.vsctl(&["set", "Port", "c1p0", "external_ids:note=kept"])?;
    assert_eq!(db.ensure_port(&same).await?, PortChange::Unchanged);
    let retagged = PortSpec {
        tag: Some(20),
        ..same.clone()
    };
    assert_eq!(db.ensure_port(&retagged).await?, PortChange::Updated);
    assert_eq!(ovs.vsctl(&["get", "Port", "c1p0", "tag"])?.trim(), "20");
    let err = db
        .ensure_port(&spec("ovs0", "c1p0", PortType::Internal, 10, "c2"))
        .await
        .expect_err("another owner's port");
    assert!(matches!(err, DataplaneError::Conflict(_)), "{err}");
    assert!(err.to_string().contains("tartan-owner=c1"), "{err}");

    for port in db.ports_owned_by(OWNER, "c1").await? {
        assert!(db.remove_port(&port.name).await?, "{}", port.name);
        assert!(
            !db.remove_port(&port.name).await?,
            "removing twice is no error"
        );
    }
    assert!(db.ports_owned_by(OWNER, "c1").await?.is_empty());
    assert_eq!(
        ovs.vsctl(&["list-ports", "ovs0"])?
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["c2p0", "other"]
    );
    ensure!(
        !link_exists(&host, "c1p0")?,
        "c1p0's device outlived its port"
    );

    ovs.vsctl(&[
        "add-br",
        "theirs",
        "--",
        "set",
        "Bridge",
        "theirs",
        "datapath_type=netdev",
    ])?;
    assert_eq!(db.bridges_owned_by(OWNER, "test").await?, ["ovs0"]);
    assert!(db.remove_bridge("ovs0").await?);
    assert!(
        !db.remove_bridge("ovs0").await?,
        "removing twice is no error"
    );
    assert!(db.bridges_owned_by(OWNER, "test").await?.is_empty());
    assert_eq!(ovs.vsctl(&["list-br"])?.trim(), "theirs");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_fail_in_one_line_and_leave_nothing() -> Result<()> {
    let host = Netns::create("ovsh")?;
    let ovs = Ovs::start(&host)?;
    let db = connect(&ovs).await?;
    db.ensure_bridge("ovs0", &owned_by("test")).await?;
    db.ensure_port(&spec("ovs0", "kept", PortType::Internal, 100, "c0"))
        .await?;
    let before = ovs.state()?;
    let links_before = host.exec("ip", &["-o", "link"])?.stdout;

    let bad = [
        (
            spec("nosuch", "p1", PortType::Internal, 100, "c1"),
            "no Open vSwitch bridge named nosuch",
        ),
        (
            spec("ovs0", "ghost0", PortType::System, 100, "c1"),
            "Open vSwitch cannot use port ghost0: ",
        ),
        (
            spec("ovs0", "p1", PortType::Internal, 4095, "c1"),
            "VLAN 4095 is out of range",
        ),
        (
            spec("ovs0", "a-name-longer-than-15", PortType::Internal, 1, "c1"),
            "not a valid port name",
        ),
        (
            spec("ovs0", "kept", PortType::Internal, 100, "c1"),
            "OVS port kept already exists",
        ),
        (
            PortSpec {
                external_ids: BTreeMap::new(),
                ..spec("ovs0", "p1", PortType::Internal, 100, "c1")
            },
            "needs external_ids naming its owner",
        ),
    ];
    for (request, expected) in bad {
        let err = db.ensure_port(&request).await.expect_err(&request.name);
        let text = err.to_string();
        assert!(text.contains(expected), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
    let err = db
        .transact(vec![
            serde_json::json!({"op": "select", "table": "NoSuchTable", "where": []}),
        ])
        .await
        .expect_err("unknown table");
    assert!(
        err.to_string().starts_with("OVSDB transaction failed: "),
        "{err}"
    );
    assert!(!err.to_string().contains('\n'), "{err}");

    let err = db
        .ensure_bridge("ovs1", &BTreeMap::new())
        .await
        .expect_err("a bridge without an owner");
    assert_eq!(
        err.to_string(),
        "an OVS bridge needs external_ids naming its owner"
    );

    assert_eq!(
        ovs.state()?,
        before,
        "a bad request left something in OVSDB"
    );
    assert_eq!(
        String::from_utf8_lossy(&host.exec("ip", &["-o", "link"])?.stdout),
        String::from_utf8_lossy(&links_before),
        "a bad request left an interface"
    );

    let err = Ovsdb::connect("unix:/nonexistent/db.sock")
        .await
        .err()
        .context("connecting to no socket")?;
    assert_eq!(
        err.to_string(),
        "connecting to OVSDB at unix:/nonexistent/db.sock"
    );
    let err = Ovsdb::connect("tcp:127.0.0.1:6640")
        .await
        .err()
        .context("tcp")?;
    assert!(err.to_string().contains("use unix:PATH"), "{err}");
    Ok(())
}
