//! flannel compatibility against a real etcd: the config read as flannel's
//! Go code reads it, reservations, dual-stack keys, and flannel's untyped
//! udp leases. Agents that program nothing (`alloc`) run in the test's own
//! namespace; the rest run on simulated hosts in namespaces of their own.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tartan_tests::agent::{Agent, AgentConfig};
use tartan_tests::cluster::Cluster;
use tartan_tests::etcd::EtcdServer;
use tartan_tests::netns::Underlay;
use tartan_tests::wait::wait_until;
use tartan_tests::{
    agent_config, etcd_with_config, get_json, lease_key, prereq, put_lease, unique_prefix,
};

const READY: Duration = Duration::from_secs(20);
const CONVERGE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn config_keys_match_in_any_case_as_in_go() -> Result<()> {
    let (etcd, prefix, mut client) = etcd_with_config(
        "anycase",
        r#"{"network":"10.5.0.0/16","subnetLEN":26,"backend":{"TYPE":"Alloc","Colour":"red"}}"#,
    )
    .await?;
    let agent = Agent::start(agent_config(&etcd, &prefix, "10.250.20.1"))?;
    agent.wait_ready(READY)?;
    let subnet = agent.subnet()?;
    ensure!(
        subnet.starts_with("10.5.") && subnet.ends_with("/26"),
        "{subnet}"
    );
    let (value, _) = get_json(&mut client, &lease_key(&prefix, &subnet))
        .await?
        .context("lease")?;
    assert_eq!(
        value["BackendType"],
        Value::Null,
        "alloc, as flannel's: untyped"
    );
    // A field flannel ignores is said once, not dropped in silence.
    agent.wait_log_contains("Colour", READY)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_is_kept_by_its_node_and_left_alone_by_others() -> Result<()> {
    // Three subnets in all: 10.5.1.0, 10.5.2.0 and 10.5.3.0.
    let (etcd, prefix, mut client) = etcd_with_config(
        "reserve",
        r#"{"Network":"10.5.0.0/22","SubnetLen":24,"Backend":{"Type":"alloc"}}"#,
    )
    .await?;
    let reserved = lease_key(&prefix, "10.5.2.0/24");
    put_lease(
        &mut client,
        &prefix,
        "10.5.2.0-24",
        r#"{"PublicIP":"10.250.21.1"}"#,
        None,
    )
    .await?;
    // Two other nodes fill the rest of the range and never touch the reservation.
    let others = [
        Agent::start(agent_config(&etcd, &prefix, "10.250.21.2"))?,
        Agent::start(agent_config(&etcd, &prefix, "10.250.21.3"))?,
    ];
    let mut taken = Vec::new();
    for agent in &others {
        agent.wait_ready(READY)?;
        taken.push(agent.subnet()?);
    }
    taken.sort();
    assert_eq!(taken, ["10.5.1.0/24", "10.5.3.0/24"]);

    // The node the reservation names takes it as it is: no TTL attached.
    let mut owner = agent_config(&etcd, &prefix, "10.250.21.1");
    owner.subnet_lease_ttl = Some("60s".into());
    owner.subnet_lease_renew_margin = Some("55s".into());
    let owner = Agent::start(owner)?;
    owner.wait_ready(READY)?;
    assert_eq!(owner.subnet()?, "10.5.2.0/24");
    let (value, etcd_lease) = get_json(&mut client, &reserved)
        .await?
        .context("the reservation is gone")?;
    assert_eq!(etcd_lease, 0, "a reservation gets no TTL: {value}");
    assert_eq!(value["PublicIP"], "10.250.21.1");
    assert_eq!(
        value.as_object().map(|o| o.len()),
        Some(2),
        "rewritten with our attributes (alloc: PublicIP and PublicIPv6): {value}"
    );
    // Past the renew time of a 60 s lease (5 s): still a reservation.
    tokio::time::sleep(Duration::from_secs(7)).await;
    ensure!(owner.is_running(), "{}", owner.log_tail(20));
    let (_, etcd_lease) = get_json(&mut client, &reserved)
        .await?
        .context("the reservation is gone")?;
    assert_eq!(etcd_lease, 0, "still no TTL after the renew time");
    let status = owner.status_json()?;
    assert_eq!(status["node"]["subnet"], "10.5.2.0/24");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dual_stack_keys_are_taken_subnets_and_peers() -> Result<()> {
    let (etcd, prefix, mut client) = etcd_with_config(
        "dualstack",
        r#"{"Network":"10.5.0.0/22","SubnetLen":24,"Backend":{"Type":"alloc"}}"#,
    )
    .await?;
    // A flannel node with IPv6 on holds 10.5.1.0/24 and 10.5.2.0/24.
    for (key, ip) in [
        ("10.5.1.0-24&fc00::-64", "10.250.22.8"),
        ("10.5.2.0-24&fc00:0:0:1::-64", "10.250.22.9"),
    ] {
        let value =
            format!(r#"{{"PublicIP":"{ip}","PublicIPv6":"fd00::9","BackendType":"alloc"}}"#);
        put_lease(&mut client, &prefix, key, &value, Some(600)).await?;
    }
    let agent = Agent::start(agent_config(&etcd, &prefix, "10.250.22.1"))?;
    agent.wait_ready(READY)?;
    assert_eq!(agent.subnet()?, "10.5.3.0/24", "the only free subnet");
    let status = agent.status_json()?;
    let mut peers: Vec<String> = status["peers"]
        .as_array()
        .context("peers")?
        .iter()
        .filter_map(|p| p["subnet"].as_str().map(String::from))
        .collect();
    peers.sort();
    assert_eq!(peers, ["10.5.1.0/24", "10.5.2.0/24"]);
    ensure!(
        !agent.log().contains("ignoring subnet lease"),
        "no dual-stack key is malformed:\n{}",
        agent.log()
    );
    Ok(())
}

#[test]
fn vxlan_options_are_read_in_any_case_and_honoured() -> Result<()> {
    // GBP is left off: with it, the kernel drops packets without a policy mark.
    let config = r#"{"network":"10.12.0.0/16","backend":{"type":"VXLAN","vni":4096,"learning":true,"mtu":1400}}"#;
    let mut cluster = Cluster::start("vo", 229, config, 2)?;
    let a = cluster.container(0, "voa")?;
    let b = cluster.container(1, "vob")?;
    let env = cluster.agents[0].subnet_env()?;
    assert_eq!(
        env.get("FLANNEL_MTU").map(String::as_str),
        Some("1350"),
        "MTU stands for the underlay's, less 50"
    );
    let out = cluster.hosts[0]
        .netns
        .exec("ip", &["-d", "link", "show", "tartan.4096"])?;
    let details = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && details.contains("vxlan id 4096"),
        "{details}"
    );
    ensure!(
        !details.contains("nolearning") && details.contains("mtu 1350"),
        "{details}"
    );
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&a, b.address)
    })
    .with_context(|| cluster.agents[0].log_tail(20))?;
    Ok(())
}

#[test]
fn no_backend_means_udp_with_flannels_untyped_leases() -> Result<()> {
    let mut cluster = Cluster::start("ud", 228, r#"{"Network":"10.13.0.0/16"}"#, 2)?;
    cluster.agents[0].wait_log_contains("using udp, as flannel does", READY)?;
    for agent in &cluster.agents {
        let key = format!(
            "{}/subnets/{}",
            cluster.prefix,
            agent.subnet()?.replace('/', "-")
        );
        let value = cluster.etcdctl(&["get", "--print-value-only", &key])?;
        let lease: Value = serde_json::from_str(value.trim())?;
        // Exactly what flannel's udp backend writes: no BackendType, no BackendData.
        assert_eq!(
            lease
                .as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["PublicIP".to_string(), "PublicIPv6".to_string()]),
            "{lease}"
        );
    }
    // Each side programs the other's untyped lease, as flannel's udp does.
    let a = cluster.container(0, "uda")?;
    let b = cluster.container(1, "udb")?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&a, b.address)
    })
    .with_context(|| cluster.agents[0].log_tail(20))?;
    ensure!(cluster.ping(&b, a.address)?, "back from b to a");
    Ok(())
}

/// A host on a fresh underlay with etcd in the hub, and the network config.
fn host_with_etcd(
    name: &str,
    octet: u8,
    config: &str,
) -> Result<(Underlay, EtcdServer, tartan_tests::netns::Host, String)> {
    prereq::require_root()?;
    prereq::require_binary("etcd")?;
    prereq::require_binary("etcdctl")?;
    prereq::require_binary("nft")?;
    let underlay = Underlay::create(name, (Ipv4Addr::new(10, octet, 0, 0), 24))?;
    let etcd = EtcdServer::start_on(underlay.hub_ip(), Some(underlay.hub().name()))?;
    let prefix = unique_prefix(name);
    let out = underlay
        .hub()
        .command("etcdctl")
        .args([
            "--endpoints",
            &etcd.endpoint(),
            "put",
            &format!("{prefix}/config"),
            config,
        ])
        .env("ETCDCTL_API", "3")
        .output()?;
    ensure!(
        out.status.success(),
        "etcdctl put: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let host = underlay.add_host("h0")?;
    Ok((underlay, etcd, host, prefix))
}

#[test]
fn swapped_in_for_flanneld_it_takes_flanneld_flags_and_leaves_the_bridge_alone() -> Result<()> {
    let (_underlay, etcd, host, prefix) = host_with_etcd(
        "fd",
        231,
        r#"{"Network":"10.14.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )?;
    // As a flanneld unit runs it: Go-style flags, the rest from FLANNELD_*.
    let agent = Agent::start(AgentConfig {
        etcd_endpoints: etcd.endpoint(),
        etcd_prefix: prefix.clone(),
        netns: Some(host.netns.name().to_string()),
        as_flanneld: true,
        extra_args: vec!["-iface=nosuch0".into(), "-iface=eth0".into()],
        env: vec![("FLANNELD_IP_MASQ".into(), "true".into())],
        ..AgentConfig::default()
    })?;
    agent.wait_ready(READY)?;
    let env = agent.subnet_env()?;
    assert_eq!(env.get("FLANNEL_IPMASQ").map(String::as_str), Some("true"));
    assert_eq!(env.get("FLANNEL_MTU").map(String::as_str), Some("1450"));
    let links = host.netns.exec("ip", &["-o", "link", "show"])?;
    let links = String::from_utf8_lossy(&links.stdout);
    ensure!(
        links.contains("tartan.1"),
        "the VXLAN device is made:\n{links}"
    );
    ensure!(
        !links.contains("tartan0"),
        "flanneld makes no bridge; dockerd --bip does:\n{links}"
    );
    let rules = host.netns.exec("nft", &["list", "table", "ip", "tartan"])?;
    let rules = String::from_utf8_lossy(&rules.stdout);
    ensure!(
        rules.contains("masquerade") && rules.contains("ip saddr 10.14.0.0/16 accept"),
        "masquerading and forward accepts:\n{rules}"
    );
    // No bridge of its own: nothing to attach to, said in one line.
    let out = agent.cli(&["attach", "nosuchns"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("--external-bridge")
            && err.trim().lines().count() == 1,
        "{err}"
    );

    // Docker's drop policy in the host's forward hook: status says so.
    for args in [
        &["add", "table", "ip", "filter"][..],
        &[
            "add", "chain", "ip", "filter", "FORWARD", "{", "type", "filter", "hook", "forward",
            "priority", "0", ";", "policy", "drop", ";", "}",
        ],
    ] {
        let out = host.netns.exec("nft", args)?;
        ensure!(out.status.success(), "nft {args:?}");
    }
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(agent.status_json()?["forward_dropped_by"] == serde_json::json!(["ip filter FORWARD"]))
    })
    .context("status names the foreign drop policy")?;
    let table = agent.cli(&["status"])?;
    ensure!(
        String::from_utf8_lossy(&table.stdout).contains("ip filter FORWARD"),
        "{}",
        String::from_utf8_lossy(&table.stdout)
    );
    Ok(())
}

#[test]
fn the_bridge_can_be_named() -> Result<()> {
    let mut cluster = Cluster::start_with(
        "bn",
        232,
        r#"{"Network":"10.15.0.0/16","Backend":{"Type":"vxlan"}}"#,
        1,
        &["--bridge", "cbr0"],
    )?;
    let c = cluster.container(0, "bnc")?;
    let out = cluster.hosts[0]
        .netns
        .exec("ip", &["-o", "addr", "show", "dev", "cbr0"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let gateway = format!("{}.1/24", {
        let o = c.address.octets();
        format!("{}.{}.{}", o[0], o[1], o[2])
    });
    ensure!(text.contains(&gateway), "cbr0 holds {gateway}:\n{text}");
    let links = cluster.hosts[0]
        .netns
        .exec("ip", &["-o", "link", "show", "master", "cbr0"])?;
    ensure!(
        String::from_utf8_lossy(&links.stdout).lines().count() == 1,
        "the container's veth is on cbr0"
    );
    Ok(())
}
