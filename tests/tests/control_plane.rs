//! The node agent's control plane against a real etcd: leasing, the subnet
//! file, restarts, races, expiry, compaction, outages and hostile input.
//!
//! Agents here run in the test's own namespace with `--public-ip` set (they
//! program nothing yet, so they touch no interface); the multi-host test runs
//! them in namespaces of their own on a simulated underlay.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tartan_tests::agent::{Agent, AgentConfig};
use tartan_tests::etcd::EtcdServer;
use tartan_tests::netns::Underlay;
use tartan_tests::pki::TestPki;
use tartan_tests::proxy::TcpProxy;
use tartan_tests::{
    agent_config, compact, etcd_with_config, get_json, lease_key, prereq, put_flannel_config,
    put_lease, unique_prefix, wait,
};

/// Agents in the test's own namespace lease only (`alloc`): they must not
/// create devices or routes there. The multi-host test runs vxlan in namespaces.
const CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#;
const VXLAN_CONFIG: &str = r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#;
const READY: Duration = Duration::from_secs(20);

fn prerequisites() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("etcd")?;
    prereq::require_binary("ip")?;
    Ok(())
}

fn peer_subnets(status: &Value) -> HashSet<String> {
    status["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .filter_map(|p| p["subnet"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_leases_a_subnet_in_flannel_format() -> Result<()> {
    let (etcd, prefix, mut client) = etcd_with_config("lease", CONFIG).await?;
    let mut cfg = agent_config(&etcd, &prefix, "10.250.0.1");
    cfg.subnet_lease_ttl = Some("1h".into());
    cfg.subnet_lease_renew_margin = Some("10m".into());
    // Stand in for systemd: Type=notify services get READY=1 on $NOTIFY_SOCKET.
    let notify_dir = tempfile::tempdir()?;
    let notify_path = notify_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(READY))?;
    cfg.env.push((
        "NOTIFY_SOCKET".into(),
        notify_path.to_string_lossy().into_owned(),
    ));
    let agent = Agent::start(cfg)?;
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).context("no READY=1 from the agent")?;
    assert_eq!(&buf[..n], b"READY=1");
    assert!(
        agent.subnet_file().exists(),
        "READY=1 only once the subnet file is written"
    );
    agent.wait_ready(READY)?;

    let env = agent.subnet_env()?;
    assert_eq!(
        env.get("FLANNEL_NETWORK").map(String::as_str),
        Some("10.5.0.0/16")
    );
    let gateway = env.get("FLANNEL_SUBNET").context("FLANNEL_SUBNET")?;
    assert!(
        gateway.starts_with("10.5.") && gateway.ends_with(".1/24"),
        "{gateway}"
    );
    let mtu: u32 = env.get("FLANNEL_MTU").context("FLANNEL_MTU")?.parse()?;
    assert!((500..=65536).contains(&mtu), "alloc MTU {mtu}");
    assert_eq!(env.get("FLANNEL_IPMASQ").map(String::as_str), Some("false"));

    let subnet = agent.subnet()?;
    let (value, etcd_lease) = get_json(&mut client, &lease_key(&prefix, &subnet))
        .await?
        .context("the lease key is missing")?;
    assert_eq!(value["PublicIP"], "10.250.0.1");
    assert_eq!(value["PublicIPv6"], Value::Null);
    assert_eq!(
        value["BackendType"],
        Value::Null,
        "flannel's alloc leases are untyped"
    );
    assert_eq!(value["BackendData"], Value::Null);
    assert_ne!(etcd_lease, 0, "the key must carry an etcd lease");
    let ttl = client.lease_time_to_live(etcd_lease, None).await?.ttl();
    assert!((3000..=3600).contains(&ttl), "TTL {ttl}");

    let mode = std::fs::metadata(agent.api_socket())?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "API socket mode {mode:o}");
    let status = agent.status_json()?;
    assert_eq!(status["node"]["subnet"], subnet.as_str());
    assert_eq!(status["config"]["network"], "10.5.0.0/16");
    assert_eq!(status["config"]["subnet_len"], 24);
    assert_eq!(status["etcd_reachable"], true);
    assert!(status["node"]["expires"].is_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_gets_its_subnet_back() -> Result<()> {
    let (etcd, prefix, mut client) = etcd_with_config("restart", CONFIG).await?;
    let mut agent = Agent::start(agent_config(&etcd, &prefix, "10.250.0.2"))?;
    agent.wait_ready(READY)?;
    let subnet = agent.subnet()?;

    // SIGTERM: a clean exit that keeps the lease in etcd.
    let status = agent.terminate()?;
    assert!(
        status.success(),
        "agent exit status {status:?}\n{}",
        agent.log_tail(20)
    );
    assert!(
        !agent.api_socket().exists(),
        "the API socket is removed on shutdown"
    );
    assert!(get_json(&mut client, &lease_key(&prefix, &subnet))
        .await?
        .is_some());
    agent.restart()?;
    agent.wait_ready(READY)?;
    assert_eq!(agent.subnet()?, subnet, "reused by public IP");

    // With the key gone, the previous subnet file brings the same subnet back.
    agent.terminate()?;
    client.delete(lease_key(&prefix, &subnet), None).await?;
    agent.restart()?;
    agent.wait_ready(READY)?;
    assert_eq!(agent.subnet()?, subnet, "taken back from the subnet file");
    let (value, _) = get_json(&mut client, &lease_key(&prefix, &subnet))
        .await?
        .context("lease rewritten")?;
    assert_eq!(value["PublicIP"], "10.250.0.2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_agents_racing_get_twenty_distinct_subnets() -> Result<()> {
    prerequisites()?;
    let etcd = EtcdServer::start()?;
    let prefix = unique_prefix("race");
    let mut client = etcd.client().await?;
    // 31 subnets for 20 agents: collisions are certain, not a matter of luck.
    put_flannel_config(
        &mut client,
        &prefix,
        r#"{"Network":"10.7.0.0/19","SubnetLen":24,"Backend":{"Type":"alloc"}}"#,
    )
    .await?;
    let agents = (1..=20)
        .map(|i| Agent::start(agent_config(&etcd, &prefix, &format!("10.251.0.{i}"))))
        .collect::<Result<Vec<_>>>()?;
    let mut subnets = HashSet::new();
    for agent in &agents {
        agent.wait_ready(Duration::from_secs(60))?;
        subnets.insert(agent.subnet()?);
    }
    assert_eq!(subnets.len(), 20, "{subnets:?}");
    let resp = client
        .get(
            format!("{prefix}/subnets/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    assert_eq!(resp.kvs().len(), 20);
    let owners: HashSet<String> = resp
        .kvs()
        .iter()
        .map(|kv| serde_json::from_slice::<Value>(kv.value()).map(|v| v["PublicIP"].to_string()))
        .collect::<Result<_, _>>()?;
    assert_eq!(owners.len(), 20, "one lease per agent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_nodes_lease_expires_and_leaves_the_peer_tables() -> Result<()> {
    let (etcd, prefix, mut client) = etcd_with_config("expiry", CONFIG).await?;
    let short = |ip: &str| {
        let mut cfg = agent_config(&etcd, &prefix, ip);
        cfg.subnet_lease_ttl = Some("4s".into());
        cfg.subnet_lease_renew_margin = Some("2s".into());
        cfg
    };
    let survivor = Agent::start(short("10.250.1.1"))?;
    let mut victim = Agent::start(short("10.250.1.2"))?;
    survivor.wait_ready(READY)?;
    victim.wait_ready(READY)?;
    let victim_subnet = victim.subnet()?;
    wait::wait_until(READY, Duration::from_millis(100), || {
        Ok(peer_subnets(&survivor.status_json()?).contains(&victim_subnet))
    })?;

    // Renewal: after three TTLs the living agents' leases are still there.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        get_json(&mut client, &lease_key(&prefix, &survivor.subnet()?))
            .await?
            .is_some()
    );
    assert!(peer_subnets(&survivor.status_json()?).contains(&victim_subnet));

    victim.kill()?;
    wait::wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        Ok(!peer_subnets(&survivor.status_json()?).contains(&victim_subnet))
    })
    .with_context(|| survivor.log_tail(30))?;
    assert!(get_json(&mut client, &lease_key(&prefix, &victim_subnet))
        .await?
        .is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_overtaken_by_compaction_lists_again() -> Result<()> {
    let (etcd, prefix, mut client) = etcd_with_config("compact", CONFIG).await?;
    let proxy = TcpProxy::start(etcd.client_addr())?;
    let mut cfg = agent_config(&etcd, &prefix, "10.250.2.1");
    cfg.etcd_endpoints = proxy.endpoint();
    let agent = Agent::start(cfg)?;
    agent.wait_ready(READY)?;
    let lease = |ip: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":null}}"#
        )
    };
    put_lease(
        &mut client,
        &prefix,
        "10.5.201.0-24",
        &lease("10.250.2.201"),
        None,
    )
    .await?;
    wait::wait_until(READY, Duration::from_millis(100), || {
        Ok(peer_subnets(&agent.status_json()?).contains("10.5.201.0/24"))
    })?;

    proxy.cut();
    agent.wait_log_contains("subnet watch broke", READY)?;
    client
        .delete(format!("{prefix}/subnets/10.5.201.0-24"), None)
        .await?;
    put_lease(
        &mut client,
        &prefix,
        "10.5.202.0-24",
        &lease("10.250.2.202"),
        None,
    )
    .await?;
    for i in 0..20 {
        client.put(format!("/unrelated/{i}"), "x", None).await?;
    }
    compact(&mut client).await?;
    proxy.restore();

    wait::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        let peers = peer_subnets(&agent.status_json()?);
        Ok(peers.contains("10.5.202.0/24") && !peers.contains("10.5.201.0/24"))
    })
    .with_context(|| agent.log_tail(30))?;
    ensure!(
        agent.log().contains("fell behind a compaction"),
        "the agent should have re-listed after the compaction:\n{}",
        agent.log_tail(30)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_rides_out_an_etcd_outage() -> Result<()> {
    prerequisites()?;
    let mut etcd = EtcdServer::start()?;
    let prefix = unique_prefix("outage");
    {
        let mut client = etcd.client().await?;
        put_flannel_config(&mut client, &prefix, CONFIG).await?;
    }
    let mut cfg = agent_config(&etcd, &prefix, "10.250.3.1");
    cfg.extra_args = vec!["--etcd-outage-report-interval".into(), "1s".into()];
    let agent = Agent::start(cfg)?;
    agent.wait_ready(READY)?;
    let subnet = agent.subnet()?;

    etcd.kill()?;
    // The very first status after the outage began says so: it asks etcd.
    let status = agent.status_json()?;
    assert_eq!(status["etcd_reachable"], false, "{status}");
    ensure!(
        status["etcd_error"].as_str().is_some_and(|e| !e.is_empty()),
        "the cause is shown: {status}"
    );
    let table = agent.cli(&["status"])?;
    let table = String::from_utf8_lossy(&table.stdout);
    ensure!(table.contains("UNREACHABLE"), "{table}");
    // Logged as it starts, then again while it lasts, with its length.
    agent.wait_log_contains("etcd is unreachable", READY)?;
    agent.wait_log_contains("etcd is still unreachable", READY)?;
    ensure!(
        agent.log().contains("out_for="),
        "the outage's length is logged:\n{}",
        agent.log_tail(20)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        agent.is_running(),
        "the agent died without etcd:\n{}",
        agent.log_tail(20)
    );
    assert_eq!(
        agent.status_json()?["node"]["subnet"],
        subnet.as_str(),
        "keeps what it knows"
    );

    etcd.restart()?;
    let mut client = etcd.client().await?;
    put_lease(
        &mut client,
        &prefix,
        "10.5.203.0-24",
        r#"{"PublicIP":"10.250.3.203","BackendType":"vxlan"}"#,
        None,
    )
    .await?;
    wait::wait_until(Duration::from_secs(40), Duration::from_millis(200), || {
        let status = agent.status_json()?;
        Ok(status["etcd_reachable"] == true && peer_subnets(&status).contains("10.5.203.0/24"))
    })
    .with_context(|| agent.log_tail(30))?;
    assert_eq!(agent.subnet()?, subnet);
    agent.wait_log_contains("etcd is reachable again", READY)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_absent_at_start_is_reported_at_once() -> Result<()> {
    prerequisites()?;
    // A port nothing listens on: etcd is down from the start.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let agent = Agent::start(AgentConfig {
        etcd_endpoints: format!("http://127.0.0.1:{port}"),
        etcd_prefix: unique_prefix("absent"),
        public_ip: Some("10.250.3.9".parse()?),
        ..AgentConfig::default()
    })?;
    agent.wait_log_contains("etcd is unreachable", READY)?;
    wait::wait_until(READY, Duration::from_millis(200), || {
        Ok(agent.status_json()?["etcd_reachable"] == false)
    })
    .with_context(|| agent.log_tail(20))?;
    ensure!(
        agent.is_running(),
        "it waits for etcd:\n{}",
        agent.log_tail(20)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_hostile_leases_are_ignored() -> Result<()> {
    let (etcd, prefix, mut client) = etcd_with_config("hostile", CONFIG).await?;
    let huge = format!(
        r#"{{"PublicIP":"10.250.4.9","BackendData":{{"pad":"{}"}}}}"#,
        "x".repeat(100_000)
    );
    let hostile: Vec<(&str, String)> = vec![
        ("10.5.210.0-24", "{not json".into()),
        ("10.5.211.0-24", r#"{"PublicIP":"999.1.1.1"}"#.into()),
        (
            "10.5.212.0-24",
            r#"{"PublicIP":"0.0.0.0","BackendType":"vxlan"}"#.into(),
        ),
        ("10.5.213.0-24", huge),
        (
            "10.5.214.0-24",
            r#"{"PublicIP":"10.250.4.14","BackendData":"string"}"#.into(),
        ),
        (
            "10.6.1.0-24",
            r#"{"PublicIP":"10.250.4.15","BackendType":"vxlan"}"#.into(),
        ),
        (
            "10.5.215.7-24",
            r#"{"PublicIP":"10.250.4.16","BackendType":"vxlan"}"#.into(),
        ),
        (
            "banana",
            r#"{"PublicIP":"10.250.4.17","BackendType":"vxlan"}"#.into(),
        ),
        (
            "10.5.216.0-24/../../config",
            r#"{"PublicIP":"10.250.4.18"}"#.into(),
        ),
    ];
    for (key, value) in &hostile {
        put_lease(&mut client, &prefix, key, value, None).await?;
    }
    put_lease(
        &mut client,
        &prefix,
        "10.5.220.0-24",
        r#"{"PublicIP":"10.250.4.20","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:20"}}"#,
        None,
    )
    .await?;

    let agent = Agent::start(agent_config(&etcd, &prefix, "10.250.4.1"))?;
    agent.wait_ready(READY)?;
    let own = agent.subnet()?;
    // A wide lease over our own subnet, written while we run.
    put_lease(
        &mut client,
        &prefix,
        "10.5.0.0-16",
        r#"{"PublicIP":"10.250.4.30","BackendType":"vxlan"}"#,
        None,
    )
    .await?;
    put_lease(
        &mut client,
        &prefix,
        "10.5.221.0-24",
        r#"{"PublicIP":"10.250.4.21","BackendType":"host-gw"}"#,
        None,
    )
    .await?;
    wait::wait_until(READY, Duration::from_millis(100), || {
        Ok(peer_subnets(&agent.status_json()?).contains("10.5.221.0/24"))
    })?;
    let peers = peer_subnets(&agent.status_json()?);
    let expected: HashSet<String> = ["10.5.220.0/24", "10.5.221.0/24"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(peers, expected, "only the valid leases are peers");
    assert!(!own.is_empty() && !hostile.iter().any(|(k, _)| k.replace('-', "/") == own));
    ensure!(agent.is_running());
    let log = agent.log();
    for needle in ["10.5.210.0-24", "10.6.1.0-24", "10.5.0.0-16", "banana"] {
        let reports = log
            .lines()
            .filter(|l| l.contains("ignoring subnet lease") && l.contains(needle))
            .count();
        assert_eq!(reports, 1, "{needle} reported once:\n{log}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_config_is_reported_and_waited_out() -> Result<()> {
    prerequisites()?;
    let etcd = EtcdServer::start()?;
    let prefix = unique_prefix("badconfig");
    let mut client = etcd.client().await?;
    put_flannel_config(
        &mut client,
        &prefix,
        r#"{"Network":"10.5.0.0/16","SubnetLen":40}"#,
    )
    .await?;
    let agent = Agent::start(agent_config(&etcd, &prefix, "10.250.5.1"))?;
    agent.wait_log_contains("SubnetLen", READY)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        agent.is_running(),
        "the agent must wait, not exit:\n{}",
        agent.log_tail(20)
    );
    ensure!(
        !agent.subnet_file().exists(),
        "no subnet file before a valid config"
    );
    let reports = agent
        .log()
        .lines()
        .filter(|l| l.contains("invalid network config"))
        .count();
    assert_eq!(reports, 1, "reported once:\n{}", agent.log());
    let status = agent.status_json()?;
    assert_eq!(status["config"], Value::Null);
    assert_eq!(status["node"], Value::Null);

    put_flannel_config(&mut client, &prefix, CONFIG).await?;
    agent.wait_ready(READY)?;
    assert!(agent.subnet()?.starts_with("10.5."));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_can_come_from_tartan_environment_variables() -> Result<()> {
    let (etcd, prefix, mut client) = etcd_with_config("env", CONFIG).await?;
    let mut cfg = agent_config(&etcd, &prefix, "10.250.6.1");
    cfg.public_ip = None;
    cfg.env = vec![
        ("TARTAN_PUBLIC_IP".into(), "10.250.6.1".into()),
        ("TARTAN_SUBNET_LEASE_TTL".into(), "90s".into()),
        ("TARTAN_SUBNET_LEASE_RENEW_MARGIN".into(), "30s".into()),
    ];
    let agent = Agent::start(cfg)?;
    agent.wait_ready(READY)?;
    let (value, etcd_lease) = get_json(&mut client, &lease_key(&prefix, &agent.subnet()?))
        .await?
        .context("lease")?;
    assert_eq!(value["PublicIP"], "10.250.6.1");
    let ttl = client.lease_time_to_live(etcd_lease, None).await?.ttl();
    assert!((60..=90).contains(&ttl), "TTL {ttl}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_authentication_is_used_and_a_wrong_password_is_waited_out() -> Result<()> {
    prerequisites()?;
    let etcd = EtcdServer::start()?;
    let prefix = unique_prefix("auth");
    {
        let mut client = etcd.client().await?;
        put_flannel_config(&mut client, &prefix, CONFIG).await?;
        client.user_add("root", "s3cret", None).await?;
        client.user_grant_role("root", "root").await?;
        client.auth_enable().await?;
    }
    let mut wrong = agent_config(&etcd, &prefix, "10.250.7.2");
    wrong.extra_args = ["--etcd-username", "root", "--etcd-password", "wrong"]
        .map(String::from)
        .to_vec();
    let wrong = Agent::start(wrong)?;
    wrong.wait_log_contains("authentication failed", READY)?;
    ensure!(wrong.is_running(), "a wrong password is retried, not fatal");
    ensure!(!wrong.subnet_file().exists());

    let mut right = agent_config(&etcd, &prefix, "10.250.7.1");
    right.extra_args = ["--etcd-username", "root", "--etcd-password", "s3cret"]
        .map(String::from)
        .to_vec();
    let right = Agent::start(right)?;
    right.wait_ready(READY)?;
    assert!(right.subnet()?.starts_with("10.5."));
    Ok(())
}

/// The acceptance scenario: three hosts in their own namespaces on one
/// underlay, one etcd; each agent finds its own address from the default
/// route, holds a distinct lease and lists the others; a hand-written flannel
/// lease shows up everywhere; a restarted agent keeps its subnet.
#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_share_one_etcd() -> Result<()> {
    prerequisites()?;
    let underlay = Underlay::create("cp3", ("10.234.0.0".parse()?, 24))?;
    let etcd = EtcdServer::start_on(underlay.hub_ip(), Some(underlay.hub().name()))?;
    let prefix = unique_prefix("three");
    // etcd lives in the hub namespace, out of this process's reach: write with etcdctl there.
    let etcd_endpoint = etcd.endpoint();
    let etcdctl = |args: &[&str]| -> Result<()> {
        let mut full = vec!["--endpoints", etcd_endpoint.as_str()];
        full.extend_from_slice(args);
        underlay
            .hub()
            .run("etcdctl", &full, &[("ETCDCTL_API", "3")])
    };
    etcdctl(&["put", &format!("{prefix}/config"), VXLAN_CONFIG])?;

    let mut hosts = Vec::new();
    let mut agents = Vec::new();
    for i in 1..=3 {
        let host = underlay.add_host(&format!("h{i}"))?;
        let agent = Agent::start(AgentConfig {
            etcd_endpoints: etcd.endpoint(),
            etcd_prefix: prefix.clone(),
            netns: Some(host.netns.name().to_string()),
            ..AgentConfig::default()
        })?;
        hosts.push(host);
        agents.push(agent);
    }
    let mut subnets = Vec::new();
    for (agent, host) in agents.iter().zip(&hosts) {
        agent.wait_ready(READY)?;
        let status = agent.status_json()?;
        assert_eq!(
            status["node"]["public_ip"],
            host.ip.to_string(),
            "address from the default route"
        );
        subnets.push(agent.subnet()?);
    }
    assert_eq!(
        subnets.iter().collect::<HashSet<_>>().len(),
        3,
        "{subnets:?}"
    );

    let flannel = r#"{"PublicIP":"10.234.0.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:ee"}}"#;
    // A subnet none of the agents holds: writing over an agent's own lease
    // would make it lease another one.
    let flannel_subnet = [
        "10.5.250.0/24",
        "10.5.251.0/24",
        "10.5.252.0/24",
        "10.5.253.0/24",
    ]
    .into_iter()
    .find(|s| !subnets.iter().any(|held| held == s))
    .context("a free subnet for the flannel lease")?;
    etcdctl(&[
        "put",
        &format!("{prefix}/subnets/{}", flannel_subnet.replace('/', "-")),
        flannel,
    ])?;
    for (i, agent) in agents.iter().enumerate() {
        wait::wait_until(READY, Duration::from_millis(100), || {
            let mut expected: HashSet<String> = subnets
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| s.clone())
                .collect();
            expected.insert(flannel_subnet.into());
            Ok(peer_subnets(&agent.status_json()?) == expected)
        })
        .with_context(|| agent.log_tail(20))?;
    }
    let status = agents[0].status_json()?;
    let flannel_peer = status["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["subnet"] == flannel_subnet))
        .context("flannel lease listed")?;
    assert_eq!(flannel_peer["public_ip"], "10.234.0.99");
    assert_eq!(flannel_peer["backend_data"]["VtepMAC"], "0e:aa:bb:cc:dd:ee");

    // The vxlan dataplane in each host namespace: the device with the MAC the
    // lease publishes, and an onlink route to every other subnet through it.
    for (i, (agent, host)) in agents.iter().zip(&hosts).enumerate() {
        let status = agent.status_json()?;
        let mac = status["node"]["backend_data"]["VtepMAC"]
            .as_str()
            .context("VtepMAC published")?
            .to_string();
        let link = host.netns.exec("ip", &["-d", "link", "show", "tartan.1"])?;
        let link = String::from_utf8_lossy(&link.stdout);
        ensure!(link.contains(&mac) && link.contains("vxlan id 1"), "{link}");
        for (j, other) in subnets.iter().enumerate().filter(|(j, _)| *j != i) {
            let base = other.split('/').next().context("subnet")?;
            let want = format!("via {base} dev tartan.1");
            wait::wait_until(READY, Duration::from_millis(100), || {
                let out = host.netns.exec("ip", &["route", "show", other])?;
                Ok(String::from_utf8_lossy(&out.stdout).contains(&want))
            })
            .with_context(|| format!("host {i} has no route to host {j}'s {other}"))?;
        }
    }

    let restarted = &mut agents[1];
    restarted.terminate()?;
    restarted.restart()?;
    restarted.wait_ready(READY)?;
    assert_eq!(restarted.subnet()?, subnets[1]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_over_tls_with_client_certificates() -> Result<()> {
    prerequisites()?;
    let certs = tempfile::tempdir()?;
    let pki = TestPki::generate(certs.path())?;
    let etcd = EtcdServer::start_tls(&pki)?;
    let prefix = unique_prefix("tls");
    let mut client = etcd.client().await?;
    put_flannel_config(&mut client, &prefix, CONFIG).await?;
    let mut cfg = agent_config(&etcd, &prefix, "10.250.8.1");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    cfg.extra_args = vec![
        "--etcd-cafile".into(),
        path(&pki.ca),
        "--etcd-certfile".into(),
        path(&pki.client_cert),
        "--etcd-keyfile".into(),
        path(&pki.client_key),
    ];
    let agent = Agent::start(cfg)?;
    agent.wait_ready(READY)?;
    let (value, _) = get_json(&mut client, &lease_key(&prefix, &agent.subnet()?))
        .await?
        .context("lease over TLS")?;
    assert_eq!(value["PublicIP"], "10.250.8.1");

    // A certificate file that does not exist is the operator's to fix: one line, exit 1.
    let mut broken = agent_config(&etcd, &prefix, "10.250.8.2");
    broken.extra_args = vec!["--etcd-cafile".into(), "/nonexistent/ca.pem".into()];
    let mut broken = Agent::start(broken)?;
    let status = broken.wait_exit(READY)?;
    assert_eq!(status.code(), Some(1));
    let log = broken.log();
    assert!(log.contains("--etcd-cafile /nonexistent/ca.pem"), "{log}");
    Ok(())
}
