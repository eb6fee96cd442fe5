//! The bridge, the VXLAN device, veth attachment and overlay reconciliation
//! against a real kernel, inside namespaces of the test's own.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use tartan_dataplane::{
    stable_vtep_mac, BridgeSpec, FdbSpec, NeighbourSpec, Netlink, OverlayScope, OverlayState,
    RouteSpec, VethSpec, VxlanSpec,
};
use tartan_tests::netns::{ip, Netns};

fn ns_output(ns: &Netns, args: &[&str]) -> Result<String> {
    let out = ns.exec("ip", args)?;
    ensure!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A host namespace with an underlay veth `up0` (10.232.0.2/24).
fn host() -> Result<Netns> {
    let ns = Netns::create("ov")?;
    let n = ns.name();
    ip(&[
        "-n", n, "link", "add", "up0", "type", "veth", "peer", "name", "up0p",
    ])?;
    ip(&["-n", n, "link", "set", "up0", "up"])?;
    ip(&["-n", n, "link", "set", "up0p", "up"])?;
    ip(&["-n", n, "addr", "add", "10.232.0.2/24", "dev", "up0"])?;
    Ok(ns)
}

#[tokio::test(flavor = "multi_thread")]
async fn vxlan_overlay_is_reconciled_and_repaired() -> Result<()> {
    let ns = host()?;
    let nl = Netlink::connect_in_netns(&ns.path()).await?;
    let underlay = nl.link("up0").await?.context("up0")?;
    let local = Ipv4Addr::new(10, 232, 0, 2);
    let spec = VxlanSpec {
        name: "tartan.1".into(),
        vni: 1,
        port: 8472,
        local,
        underlay_index: underlay.index,
        mac: stable_vtep_mac(local, 1),
        mtu: 1450,
        address: Ipv4Addr::new(10, 5, 34, 0),
        learning: false,
        gbp: false,
    };
    // flannel's GBP and Learning options: the device is made with them, and
    // made again without them when they are turned off.
    let flagged = VxlanSpec {
        learning: true,
        gbp: true,
        ..spec.clone()
    };
    nl.ensure_vxlan(&flagged).await?;
    let details = ns_output(&ns, &["-d", "link", "show", "tartan.1"])?;
    ensure!(
        details.contains(" gbp") && !details.contains("nolearning"),
        "{details}"
    );
    let index = nl.ensure_vxlan(&spec).await?;
    assert_eq!(
        nl.ensure_vxlan(&spec).await?,
        index,
        "idempotent: same device"
    );
    let details = ns_output(&ns, &["-d", "link", "show", "tartan.1"])?;
    ensure!(
        details.contains("vxlan id 1") && details.contains("dstport 8472"),
        "{details}"
    );
    ensure!(
        details.contains("nolearning") && !details.contains(" gbp"),
        "{details}"
    );
    ensure!(details.contains("mtu 1450"), "{details}");

    let bridge = nl
        .ensure_bridge(&BridgeSpec {
            name: "tartan0".into(),
            mtu: 1450,
            gateway: "10.5.34.1/24".parse()?,
            mac: [0x0a, 0x58, 10, 0, 0, 1],
        })
        .await?;
    ensure!(ns_output(&ns, &["addr", "show", "tartan0"])?.contains("10.5.34.1/24"));
    // The MAC stays put as ports with lower MACs come and go, which an
    // unset bridge MAC would follow.
    for args in [
        &[
            "link",
            "add",
            "lowport",
            "address",
            "02:00:00:00:00:01",
            "type",
            "veth",
            "peer",
            "name",
            "lowpeer",
        ][..],
        &["link", "set", "lowport", "master", "tartan0", "up"][..],
    ] {
        ns_output(&ns, args)?;
    }
    ensure!(
        ns_output(&ns, &["link", "show", "tartan0"])?.contains("link/ether 0a:58:0a:00:00:01"),
        "{}",
        ns_output(&ns, &["link", "show", "tartan0"])?
    );
    ns_output(&ns, &["link", "del", "lowport"])?;

    let peer_mac = [0x0e, 0, 0, 0, 0, 7];
    let mut desired = OverlayState::default();
    desired.fdb.insert(FdbSpec {
        ifindex: index,
        mac: peer_mac,
        destination: Ipv4Addr::new(10, 232, 0, 7),
    });
    desired.neighbours.insert(NeighbourSpec {
        ifindex: index,
        ip: Ipv4Addr::new(10, 5, 7, 0),
        mac: peer_mac,
    });
    desired.routes.insert(RouteSpec {
        destination: "10.5.7.0/24".parse()?,
        gateway: Ipv4Addr::new(10, 5, 7, 0),
        oif: index,
        onlink: true,
    });
    let scope = OverlayScope {
        vxlan_index: Some(index),
    };
    let changes = nl.apply_overlay(&desired, scope).await?;
    assert_eq!(changes.count(), 3);
    let observed = nl.observe_overlay(scope).await?;
    assert_eq!(observed, desired, "observed after apply");
    assert!(
        nl.apply_overlay(&desired, scope).await?.is_empty(),
        "a second pass changes nothing"
    );
    assert_eq!(nl.observe_overlay(scope).await?, desired);
    let routes = ns_output(&ns, &["route", "show", "10.5.7.0/24"])?;
    ensure!(
        routes.contains("via 10.5.7.0 dev tartan.1") && routes.contains("onlink"),
        "{routes}"
    );
    let fdb = ns.exec("bridge", &["fdb", "show", "dev", "tartan.1"])?;
    ensure!(String::from_utf8_lossy(&fdb.stdout).contains("dst 10.232.0.7"));

    // Somebody deletes the route: the next pass puts it back, and only it.
    ip(&["-n", ns.name(), "route", "del", "10.5.7.0/24"])?;
    let repair = nl.apply_overlay(&desired, scope).await?;
    assert_eq!(repair.add_routes.len(), 1);
    assert_eq!(repair.count(), 1);

    // The peer goes away: everything for it is withdrawn.
    let gone = nl.apply_overlay(&OverlayState::default(), scope).await?;
    assert_eq!(gone.count(), 3);
    assert_eq!(nl.observe_overlay(scope).await?, OverlayState::default());

    // A container plugged into the bridge.
    let container = Netns::create("ovc")?;
    let veth = VethSpec {
        netns: container.path(),
        host_name: "vtest0".into(),
        container_name: "eth0".into(),
        address: Some("10.5.34.2/24".parse()?),
        gateway: Some(Ipv4Addr::new(10, 5, 34, 1)),
        mtu: 1450,
        bridge_index: Some(bridge),
        mac: None,
    };
    nl.attach_veth(&veth).await?;
    let inside = ns_output(&container, &["addr", "show", "eth0"])?;
    ensure!(
        inside.contains("10.5.34.2/24") && inside.contains("mtu 1450"),
        "{inside}"
    );
    ensure!(ns_output(&container, &["route"])?.contains("default via 10.5.34.1 dev eth0"));
    ensure!(ns_output(&ns, &["link", "show", "vtest0"])?.contains("master tartan0"));
    let ping = container.exec("ping", &["-c", "1", "-W", "2", "10.5.34.1"])?;
    ensure!(ping.status.success(), "container reaches its gateway");
    let again = nl.attach_veth(&veth).await.expect_err("attached twice");
    ensure!(again.to_string().contains("already"), "{again}");
    assert!(nl.detach_veth("vtest0").await?);
    assert!(!nl.detach_veth("vtest0").await?);
    ensure!(
        container
            .exec("ip", &["link", "show", "eth0"])?
            .status
            .code()
            != Some(0),
        "eth0 gone"
    );
    Ok(())
}
