//! The weave-style flat L2 segment end to end: hosts sharing etcd are each
//! other's peers, addresses on the segment are unique fabric-wide, ARP and
//! broadcast cross hosts, a host of another etcd prefix joins only through
//! `connect`, and bad peers are refused in one line.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tartan_tests::agent::{Agent, AgentConfig};
use tartan_tests::cli::{cli_ok, text, VXLAN};
use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::containers::pings;
use tartan_tests::netns::Netns;
use tartan_tests::wait::{wait_until, wait_value};

/// How long peers may take to find each other: a listing of the leases,
/// then an exchange, each retried after a second or two, and longer as the
/// back-off grows when agents start slowly on a loaded machine.
const MEET: Duration = Duration::from_secs(60);

/// The segment's part of `status -o json`.
fn segment(agent: &Agent) -> Result<Value> {
    Ok(agent.status_json()?["segment"].clone())
}

/// The connected peers' addresses (`HOST:PORT`) of an agent.
fn connected(agent: &Agent) -> Result<BTreeSet<String>> {
    let status = segment(agent)?;
    Ok(status["peers"]
        .as_array()
        .context("peers")?
        .iter()
        .filter(|p| p["state"] == "connected")
        .filter_map(|p| p["address"].as_str().map(str::to_string))
        .collect())
}

/// Every peer of an agent, whatever its state.
fn peer_list(agent: &Agent) -> Result<BTreeSet<String>> {
    let status = segment(agent)?;
    Ok(status["peers"]
        .as_array()
        .context("peers")?
        .iter()
        .filter_map(|p| p["address"].as_str().map(str::to_string))
        .collect())
}

fn peer_of(host: Ipv4Addr) -> String {
    format!("{host}:6783")
}

/// `tartan attach --l2 NETNS` on `agent`: the address it printed.
fn attach_auto(agent: &Agent, ns: &Netns) -> Result<Ipv4Addr> {
    let printed = cli_ok(agent, &["attach", "--l2", ns.name()])?;
    printed
        .trim()
        .parse()
        .with_context(|| format!("attach printed {printed:?}"))
}

fn links_of(ns: &Netns) -> Result<String> {
    Ok(text(&ns.exec("ip", &["-o", "link", "show"])?.stdout))
}

#[test]
fn hosts_sharing_etcd_share_one_segment_with_unique_addresses() -> Result<()> {
    let cluster = Cluster::start("seg", 175, VXLAN, 3)?;
    let hosts: Vec<Ipv4Addr> = cluster.hosts.iter().map(|h| h.ip).collect();
    for (i, agent) in cluster.agents.iter().enumerate() {
        let others: BTreeSet<String> = hosts
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, ip)| peer_of(*ip))
            .collect();
        wait_value(
            &format!("host {i} connected to the other two"),
            MEET,
            Duration::from_millis(300),
            || connected(agent),
            |peers| *peers == others,
        )?;
        let status = segment(agent)?;
        ensure!(status["up"] == true, "segment down on host {i}: {status}");
        ensure!(
            status["peers"][0]["source"][0] == "etcd",
            "etcd peers say so: {status}"
        );
    }

    // Automatic addresses, one per host, unique across the fabric.
    let containers: Vec<Netns> = (0..3)
        .map(|i| Netns::create(&format!("sgc{i}")))
        .collect::<Result<_>>()?;
    let mut addresses = Vec::new();
    for (agent, ns) in cluster.agents.iter().zip(&containers) {
        addresses.push(attach_auto(agent, ns)?);
    }
    let unique: BTreeSet<Ipv4Addr> = addresses.iter().copied().collect();
    ensure!(
        unique.len() == 3,
        "automatic addresses collide: {addresses:?}"
    );
    let range: ipnetwork::Ipv4Network = "10.32.0.0/12".parse()?;
    ensure!(
        addresses.iter().all(|a| range.contains(*a)),
        "outside --l2-range: {addresses:?}"
    );
    let inside = text(
        &containers[0]
            .exec("ip", &["-o", "-4", "addr", "show", "ethwe"])?
            .stdout,
    );
    ensure!(
        inside.contains(&format!("{}/12", addresses[0])),
        "ethwe carries the address: {inside}"
    );
    // The same attach again is the same attachment.
    let again = cli_ok(
        &cluster.agents[0],
        &["attach", "--l2", containers[0].name()],
    )?;
    ensure!(
        again.contains("already attached") && again.contains(&addresses[0].to_string()),
        "{again}"
    );

    // A duplicate is refused, naming its holder; nothing is made.
    let intruder = Netns::create("sgdup")?;
    let out =
        cluster.agents[1].cli(&["attach", &format!("{}/12", addresses[0]), intruder.name()])?;
    let err = text(&out.stderr);
    ensure!(!out.status.success(), "a duplicate was accepted");
    ensure!(
        err.contains(&format!("{} on {}", containers[0].name(), hosts[0])),
        "the refusal names the holder: {err}"
    );
    ensure!(err.trim().lines().count() == 1, "one line: {err}");
    ensure!(
        !links_of(&intruder)?.contains("ethwe"),
        "nothing left in the refused namespace"
    );

    // One broadcast domain: unicast, and a broadcast ping answered by both
    // other hosts' containers.
    for (i, to) in addresses.iter().enumerate().skip(1) {
        ensure!(
            containers[0].reaches(to)?,
            "container on host 0 cannot reach {to} on host {i}"
        );
    }
    for ns in &containers {
        ns.exec("sysctl", &["-qw", "net.ipv4.icmp_echo_ignore_broadcasts=0"])?;
    }
    let broadcast = range.broadcast().to_string();
    let mut heard = BTreeSet::new();
    for _ in 0..3 {
        let out = containers[0].exec("ping", &["-b", "-c", "3", "-W", "2", &broadcast])?;
        for line in text(&out.stdout).lines() {
            for (i, address) in addresses.iter().enumerate().skip(1) {
                if line.contains(&format!("from {address}:")) {
                    heard.insert(i);
                }
            }
        }
        if heard.len() == 2 {
            break;
        }
    }
    ensure!(
        heard.len() == 2,
        "broadcast answered by hosts {heard:?} only"
    );

    // The registry converges on the attachments: a claim lost from etcd
    // is registered again.
    let key = format!(
        "/tartan/{}/segment/addresses/{}",
        cluster.prefix.trim_matches('/'),
        addresses[1]
    );
    ensure!(
        cluster.etcdctl(&["get", &key])?.contains("sgc1"),
        "registered"
    );
    cluster.etcdctl(&["del", &key])?;
    wait_until(Duration::from_secs(30), Duration::from_millis(500), || {
        Ok(cluster.etcdctl(&["get", &key])?.contains("sgc1"))
    })?;

    // Detach gives the address back: another container may take it.
    cli_ok(&cluster.agents[2], &["detach", containers[2].name()])?;
    // Its host tells its peers at once; they may still be answering.
    let taker = Netns::create("sgtake")?;
    let freed = format!("{}/12", addresses[2]);
    wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        Ok(cluster.agents[1]
            .cli(&["attach", &freed, taker.name()])?
            .status
            .success())
    })?;
    Ok(())
}

#[test]
fn a_host_of_another_prefix_joins_only_through_connect() -> Result<()> {
    let cluster = Cluster::start("sgx", 176, VXLAN, 2)?;
    let hosts: Vec<Ipv4Addr> = cluster.hosts.iter().map(|h| h.ip).collect();
    let outsider_host = cluster.underlay.add_host("hx")?;
    let prefix = format!("{}-other", cluster.prefix);
    cluster.etcdctl(&["put", &format!("{prefix}/config"), VXLAN])?;
    let outsider = Agent::start(AgentConfig {
        etcd_endpoints: cluster.etcd.endpoint(),
        etcd_prefix: prefix,
        netns: Some(outsider_host.netns.name().to_string()),
        ..AgentConfig::default()
    })?;
    outsider.wait_ready(READY)?;
    for agent in &cluster.agents {
        wait_value(
            "the two hosts of one prefix connected",
            MEET,
            Duration::from_millis(300),
            || connected(agent),
            |peers| peers.len() == 1,
        )?;
    }
    let inside: Vec<Netns> = (0..2)
        .map(|i| Netns::create(&format!("sgxc{i}")))
        .collect::<Result<_>>()?;
    for (i, (agent, ns)) in cluster.agents.iter().zip(&inside).enumerate() {
        cli_ok(
            agent,
            &["attach", &format!("10.1.1.{}/24", i + 1), ns.name()],
        )?;
    }
    let lone = Netns::create("sgxc9")?;
    cli_ok(&outsider, &["attach", "10.1.1.9/24", lone.name()])?;
    ensure!(
        connected(&outsider)?.is_empty(),
        "another prefix's host has no peers of its own"
    );
    ensure!(
        !lone.reaches(Ipv4Addr::new(10, 1, 1, 1))?,
        "reached the segment without connect"
    );

    let hosts_arg: Vec<String> = hosts.iter().map(ToString::to_string).collect();
    let mut args = vec!["connect"];
    args.extend(hosts_arg.iter().map(String::as_str));
    let said = cli_ok(&outsider, &args)?;
    for host in &hosts {
        ensure!(
            said.contains(&format!("{}: connected", peer_of(*host))),
            "connect says how it went: {said}"
        );
    }
    // Mutual: each side lists the other as a manual peer.
    for agent in &cluster.agents {
        wait_until(MEET, Duration::from_millis(300), || {
            Ok(connected(agent)?.contains(&peer_of(outsider_host.ip)))
        })?;
    }
    for (i, to) in ["10.1.1.1", "10.1.1.2"].iter().enumerate() {
        ensure!(
            lone.reaches(to.parse::<Ipv4Addr>()?)?,
            "after connect, host {i}'s container is not reached"
        );
    }
    // Its claim is known to the others: the address is refused there.
    let dup = Netns::create("sgxdup")?;
    let out = cluster.agents[0].cli(&["attach", "10.1.1.9/24", dup.name()])?;
    ensure!(
        !out.status.success()
            && text(&out.stderr).contains(&format!("{} on {}", lone.name(), outsider_host.ip)),
        "a peer's address is refused, naming it: {}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn bad_unreachable_and_unauthorised_peers_are_told_in_one_line() -> Result<()> {
    let cluster = Cluster::start_with("sgb", 177, VXLAN, 2, &["--peer-secret", "one secret"])?;
    let agent = &cluster.agents[0];
    let before = peer_list(agent)?;

    for bad in [
        "10.177.0.1:0",
        "fe80::1",
        "no-such-host.invalid",
        "10.177.0.1:x",
    ] {
        let out = agent.cli(&["connect", bad])?;
        let err = text(&out.stderr);
        ensure!(!out.status.success(), "connect {bad} succeeded");
        ensure!(err.trim().lines().count() == 1, "connect {bad}: {err}");
    }
    let own = agent.cli(&["connect", &cluster.hosts[0].ip.to_string()])?;
    ensure!(
        !own.status.success() && text(&own.stderr).contains("this host"),
        "connecting to oneself: {}",
        text(&own.stderr)
    );
    ensure!(peer_list(agent)? == before, "bad input changed the peers");

    // Nobody listens there: kept, retried, and said so.
    let unreachable = Ipv4Addr::new(10, 177, 0, 200);
    let said = cli_ok(agent, &["connect", &unreachable.to_string()])?;
    ensure!(
        said.contains(&format!("{}: not reached", peer_of(unreachable)))
            && said.contains("retried with back-off"),
        "{said}"
    );
    let status = segment(agent)?;
    let kept = status["peers"]
        .as_array()
        .context("peers")?
        .iter()
        .find(|p| p["address"] == peer_of(unreachable).as_str())
        .cloned()
        .context("the unreachable peer is kept")?;
    ensure!(kept["state"] == "retrying", "{kept}");
    cli_ok(agent, &["forget", &unreachable.to_string()])?;

    // A host with another secret refuses this one, and is not kept on
    // either side.
    let stranger_host = cluster.underlay.add_host("hs")?;
    let stranger = Agent::start(AgentConfig {
        etcd_endpoints: cluster.etcd.endpoint(),
        etcd_prefix: format!("{}-s", cluster.prefix),
        netns: Some(stranger_host.netns.name().to_string()),
        extra_args: vec!["--peer-secret".into(), "another secret".into()],
        ..AgentConfig::default()
    })?;
    cluster.etcdctl(&["put", &format!("{}-s/config", cluster.prefix), VXLAN])?;
    stranger.wait_ready(READY)?;
    let out = agent.cli(&["connect", &stranger_host.ip.to_string()])?;
    let err = text(&out.stderr);
    ensure!(!out.status.success(), "a wrong secret was accepted");
    ensure!(
        err.contains("secret does not match") && err.trim().lines().count() == 1,
        "{err}"
    );
    let mine = segment(agent)?;
    ensure!(
        !mine.to_string().contains(&stranger_host.ip.to_string()),
        "the refusing host is kept here: {mine}"
    );
    let theirs = segment(&stranger)?;
    ensure!(
        theirs["peers"].as_array().is_some_and(Vec::is_empty),
        "the stranger kept this host: {theirs}"
    );
    Ok(())
}

/// The unicast FDB entries of a host's segment device, as `MAC dst HOST`.
fn fdb(host: &Netns) -> Result<BTreeSet<String>> {
    let out = host.exec("bridge", &["fdb", "show", "dev", "tartan-l2vx"])?;
    ensure!(out.status.success(), "bridge fdb: {}", text(&out.stderr));
    Ok(text(&out.stdout)
        .lines()
        .filter(|l| l.contains(" dst ") && !l.starts_with("00:00:00:00:00:00"))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let dst = words
                .iter()
                .position(|w| *w == "dst")
                .and_then(|i| words.get(i + 1))
                .copied()
                .unwrap_or("?");
            format!("{} dst {dst}", words.first().copied().unwrap_or("?"))
        })
        .collect())
}

#[test]
fn a_gone_peer_s_entries_leave_after_the_timeout_and_come_back_with_it() -> Result<()> {
    let mut cluster = Cluster::start_with(
        "sgt",
        178,
        VXLAN,
        2,
        &["--peer-timeout", "3s", "--peer-interval", "1s"],
    )?;
    wait_value(
        "the two hosts connected",
        MEET,
        Duration::from_millis(300),
        || connected(&cluster.agents[0]),
        |peers| peers.len() == 1,
    )?;
    let containers: Vec<Netns> = (0..2)
        .map(|i| Netns::create(&format!("sgtc{i}")))
        .collect::<Result<_>>()?;
    for (i, (agent, ns)) in cluster.agents.iter().zip(&containers).enumerate() {
        cli_ok(
            agent,
            &["attach", &format!("10.1.2.{}/24", i + 1), ns.name()],
        )?;
    }
    let entry = format!("02:42:0a:01:02:02 dst {}", cluster.hosts[1].ip);
    let host0 = &cluster.hosts[0].netns;
    wait_value(
        "host 0 has host 1's container in its FDB",
        MEET,
        Duration::from_millis(300),
        || fdb(host0),
        |entries| entries.contains(&entry),
    )?;
    ensure!(
        containers[0].reaches(Ipv4Addr::new(10, 1, 2, 2))?,
        "no path"
    );

    cluster.agents[1].kill()?;
    let gone = wait_value(
        "host 1's entries gone after the timeout",
        Duration::from_secs(20),
        Duration::from_millis(300),
        || fdb(host0),
        |entries| !entries.contains(&entry),
    );
    gone?;
    wait_value(
        "the gone peer retried",
        MEET,
        Duration::from_millis(300),
        || segment(&cluster.agents[0]),
        |status| status["peers"][0]["state"] == "retrying",
    )?;
    cluster.agents[1].restart()?;
    cluster.agents[1].wait_ready(READY)?;
    wait_value(
        "host 1's entries back with it",
        MEET,
        Duration::from_millis(300),
        || fdb(host0),
        |entries| entries.contains(&entry),
    )?;
    ensure!(
        containers[0].reaches(Ipv4Addr::new(10, 1, 2, 2))?,
        "the restarted host's container is not reached"
    );
    Ok(())
}

#[test]
fn a_conflict_found_when_two_hosts_meet_shows_on_both() -> Result<()> {
    let cluster = Cluster::start("sgk", 179, VXLAN, 1)?;
    let other_host = cluster.underlay.add_host("hk")?;
    let prefix = format!("{}-k", cluster.prefix);
    cluster.etcdctl(&["put", &format!("{prefix}/config"), VXLAN])?;
    let other = Agent::start(AgentConfig {
        etcd_endpoints: cluster.etcd.endpoint(),
        etcd_prefix: prefix,
        netns: Some(other_host.netns.name().to_string()),
        ..AgentConfig::default()
    })?;
    other.wait_ready(READY)?;
    let a = Netns::create("sgka")?;
    let b = Netns::create("sgkb")?;
    cli_ok(&cluster.agents[0], &["attach", "10.1.3.9/24", a.name()])?;
    cli_ok(&other, &["attach", "10.1.3.9/24", b.name()])?;
    cli_ok(&cluster.agents[0], &["connect", &other_host.ip.to_string()])?;
    for agent in [&cluster.agents[0], &other] {
        let conflict = wait_value(
            "the conflict reported",
            MEET,
            Duration::from_millis(300),
            || segment(agent),
            |status| status["conflicts"].as_array().is_some_and(|c| c.len() == 1),
        )?;
        let holders = conflict["conflicts"][0]["holders"].to_string();
        ensure!(
            holders.contains(&format!("{} on {}", a.name(), cluster.hosts[0].ip))
                && holders.contains(&format!("{} on {}", b.name(), other_host.ip)),
            "both holders named: {holders}"
        );
        let table = cli_ok(agent, &["status"])?;
        ensure!(table.contains("CONFLICT: 10.1.3.9"), "{table}");
        ensure!(
            agent.log().contains("address conflict on the L2 segment"),
            "logged"
        );
    }
    Ok(())
}

/// Pings from a Tartan container until one answers, a few times at most.
fn container_reaches(agent: &Agent, container: &str, to: &str) -> Result<bool> {
    for _ in 0..5 {
        if pings(agent, container, to)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The peers an agent lists, with their state: `HOST:PORT state`.
fn peer_states(agent: &Agent) -> Result<BTreeSet<String>> {
    let status = segment(agent)?;
    Ok(status["peers"]
        .as_array()
        .context("peers")?
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["address"].as_str().unwrap_or("?"),
                p["state"].as_str().unwrap_or("?")
            )
        })
        .collect())
}

#[test]
fn the_seed_s_weave_sequence_in_peer_mode() -> Result<()> {
    tartan_tests::prereq::require_root()?;
    let underlay =
        tartan_tests::netns::Underlay::create("sgw", (Ipv4Addr::new(10, 180, 0, 0), 24))?;
    let hosts = [underlay.add_host("h1")?, underlay.add_host("h2")?];
    // No OVS for these agents: a machine's own is never asked.
    let no_ovs = tempfile::Builder::new()
        .prefix("tt-noovs-")
        .tempdir_in("/tmp")?;
    let mut agents = Vec::new();
    for host in &hosts {
        let agent = Agent::start(AgentConfig {
            peer_mode: true,
            netns: Some(host.netns.name().to_string()),
            extra_args: vec![format!("--ovsdb=unix:{}/db.sock", no_ovs.path().display())],
            ..AgentConfig::default()
        })?;
        agent.wait_ready(READY)?;
        tartan_tests::cli::import_busybox(&agent)?;
        agents.push(agent);
    }
    let (h1, h2) = (hosts[0].ip, hosts[1].ip);

    // host1$ docker run -tid --name c1 …; weave attach 10.1.1.1/24 c1
    // host2$ docker run -tid --name c1 …; weave attach 10.1.1.2/24 c1
    for (i, agent) in agents.iter().enumerate() {
        cli_ok(
            agent,
            &["run", "-d", "--name", "c1", "busybox", "sleep", "1d"],
        )?;
        let printed = cli_ok(agent, &["attach", &format!("10.1.1.{}/24", i + 1), "c1"])?;
        ensure!(
            printed.trim() == format!("10.1.1.{}", i + 1),
            "attach printed {printed:?}"
        );
    }
    ensure!(
        !pings(&agents[0], "c1", "10.1.1.2")?,
        "reached host2 before any connect"
    );

    // host1$ weave connect 192.168.0.20: one side only, and both list each other.
    let said = cli_ok(&agents[0], &["connect", &h2.to_string()])?;
    ensure!(
        said.contains(&format!("{}: connected", peer_of(h2))),
        "{said}"
    );
    wait_value(
        "host2 lists host1 back",
        MEET,
        Duration::from_millis(300),
        || peer_states(&agents[1]),
        |peers| peers.contains(&format!("{} connected", peer_of(h1))),
    )?;
    let listed = segment(&agents[1])?;
    ensure!(
        listed["peers"][0]["source"][0] == "manual",
        "a connect made on the other side is a manual peer here: {listed}"
    );
    // host1$ docker attach c1 -> ping 10.1.1.2, and the other way.
    ensure!(
        container_reaches(&agents[0], "c1", "10.1.1.2")?,
        "host1 -> host2"
    );
    ensure!(
        container_reaches(&agents[1], "c1", "10.1.1.1")?,
        "host2 -> host1"
    );

    // Peers know each other's addresses: a duplicate is refused, naming c1 on host1.
    cli_ok(
        &agents[1],
        &["run", "-d", "--name", "c2", "busybox", "sleep", "1d"],
    )?;
    let out = agents[1].cli(&["attach", "10.1.1.1/24", "c2"])?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains(&format!("c1 on {h1}")),
        "a peer's address is refused, naming it: {}",
        text(&out.stderr)
    );

    // forget on one side: traffic stops, and the other side drops it too.
    cli_ok(&agents[0], &["forget", &h2.to_string()])?;
    ensure!(
        peer_states(&agents[0])?.is_empty(),
        "host1 still lists host2"
    );
    wait_value(
        "host2 drops host1",
        MEET,
        Duration::from_millis(300),
        || peer_states(&agents[1]),
        BTreeSet::is_empty,
    )?;
    ensure!(
        !pings(&agents[0], "c1", "10.1.1.2")? && !pings(&agents[1], "c1", "10.1.1.1")?,
        "traffic still flows after forget"
    );

    // connect again: traffic comes back.
    cli_ok(&agents[0], &["connect", &h2.to_string()])?;
    ensure!(
        container_reaches(&agents[0], "c1", "10.1.1.2")?,
        "after connect again"
    );

    // An agent restart keeps the peer list and the attachments.
    agents[0].terminate()?;
    agents[0].restart()?;
    agents[0].wait_ready(READY)?;
    wait_value(
        "host1 reconnects to host2 after its restart",
        MEET,
        Duration::from_millis(300),
        || peer_states(&agents[0]),
        |peers| peers.contains(&format!("{} connected", peer_of(h2))),
    )?;
    ensure!(
        container_reaches(&agents[0], "c1", "10.1.1.2")?,
        "the attachment after a restart"
    );
    let peers = cli_ok(&agents[0], &["status"])?;
    ensure!(
        peers.contains(&peer_of(h2)) && peers.contains("manual"),
        "{peers}"
    );
    for agent in &agents {
        cli_ok(agent, &["rm", "-f", "c1"])?;
    }
    Ok(())
}

#[test]
fn a_second_agent_in_a_namespace_runs_without_the_segment_and_says_why() -> Result<()> {
    let alloc = r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "alloc"}}"#;
    let cluster = Cluster::start("sgn", 181, alloc, 1)?;
    let second = Agent::start(AgentConfig {
        etcd_endpoints: cluster.etcd.endpoint(),
        etcd_prefix: cluster.prefix.clone(),
        netns: Some(cluster.hosts[0].netns.name().to_string()),
        public_ip: Some(Ipv4Addr::new(10, 181, 0, 77)),
        ..AgentConfig::default()
    })?;
    second.wait_ready(READY)?;
    ensure!(
        segment(&cluster.agents[0])?["up"] == true,
        "the first keeps it"
    );
    let status = segment(&second)?;
    ensure!(
        status["up"] == false
            && status["error"]
                .as_str()
                .is_some_and(|e| e.contains("keeps the L2 segment")),
        "{status}"
    );
    let ns = Netns::create("sgnc")?;
    let out = second.cli(&["attach", "--l2", ns.name()])?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains("not up on this host"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}
