//! The fabric's DNS: every agent answers the names of every host's
//! containers on its bridge address, and forwards the rest to the host's
//! resolvers.

use std::cell::RefCell;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, import_busybox, text, VXLAN};
use tartan_tests::cluster::Cluster;
use tartan_tests::containers::inspect;
use tartan_tests::dns::{a_question, ask_tcp, NetnsResolvConf, TestResolver};
use tartan_tests::wait::wait_value;

/// The made-up name only the test resolver knows, and its address.
const OUTSIDE_NAME: &str = "outside.tartan-test";
const OUTSIDE_ADDRESS: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// How long a name may take to resolve, or to stop resolving: far more than
/// it takes; the time it took is printed.
const NAME_DEADLINE: Duration = Duration::from_secs(15);

/// A cluster whose hosts' resolver is a test resolver in the hub (at the
/// hub's address), named by each host's own resolv.conf.
struct DnsCluster {
    // Field order is drop order: the cluster (agents) first.
    cluster: Cluster,
    resolver: TestResolver,
    _resolv_confs: Vec<NetnsResolvConf>,
}

fn start(name: &str, octet: u8, hosts: usize, resolv_conf_extra: &str) -> Result<DnsCluster> {
    let hub_ip = Ipv4Addr::new(10, octet, 0, 254);
    let contents = format!("{resolv_conf_extra}nameserver {hub_ip}\n");
    let written: RefCell<Vec<Result<NetnsResolvConf>>> = RefCell::new(Vec::new());
    let started = Cluster::start_configured(name, octet, VXLAN, hosts, &|agent| {
        if let Some(netns) = &agent.netns {
            written
                .borrow_mut()
                .push(NetnsResolvConf::write(netns, &contents));
        }
    });
    let resolv_confs = written
        .into_inner()
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    let cluster = started?;
    ensure!(
        resolv_confs.len() == hosts,
        "a host has no namespace of its own"
    );
    let resolver = TestResolver::start(
        cluster.underlay.hub(),
        hub_ip,
        OUTSIDE_NAME,
        OUTSIDE_ADDRESS,
    )?;
    for agent in &cluster.agents {
        agent.wait_log_contains(
            "answering DNS for the fabric's names",
            Duration::from_secs(10),
        )?;
        import_busybox(agent)?;
    }
    Ok(DnsCluster {
        cluster,
        resolver,
        _resolv_confs: resolv_confs,
    })
}

/// The agent's bridge address: the gateway of its subnet (FLANNEL_SUBNET).
fn bridge_address(agent: &Agent) -> Result<String> {
    let env = agent.subnet_env()?;
    let subnet = env
        .get("FLANNEL_SUBNET")
        .context("the subnet file has no FLANNEL_SUBNET")?;
    Ok(subnet.split('/').next().unwrap_or_default().to_string())
}

fn address_of(agent: &Agent, name: &str) -> Result<String> {
    let info = inspect(agent, name)?;
    info["network"]["ip_address"]
        .as_str()
        .map(|a| a.split('/').next().unwrap_or_default().to_string())
        .ok_or_else(|| anyhow!("{name} has no address: {info}"))
}

/// Another node takes the agent's subnet in etcd, as a node whose lease
/// lapsed finds it taken: the agent leases another one and its containers
/// move. Returns the agent's new bridge address.
fn take_the_subnet(cluster: &Cluster, agent: &Agent) -> Result<String> {
    let old_subnet = agent.subnet()?;
    let old_bridge = bridge_address(agent)?;
    let (network, prefix) = old_subnet
        .split_once('/')
        .context("the subnet has no prefix length")?;
    let key = format!("{}/subnets/{network}-{prefix}", cluster.prefix);
    // A host of the underlay's that does not exist.
    let [a, b, c, _] = cluster.underlay.hub_ip().octets();
    let taker = format!(
        r#"{{"PublicIP":"{a}.{b}.{c}.99","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"82:aa:bb:cc:dd:ee"}}}}"#
    );
    cluster.etcdctl(&["put", &key, &taker])?;
    wait_value(
        "the agent's new subnet",
        NAME_DEADLINE,
        Duration::from_millis(100),
        || bridge_address(agent),
        |bridge| *bridge != old_bridge,
    )
}

/// busybox nslookup of `name` in `container`: (succeeded, what it printed).
fn nslookup(agent: &Agent, container: &str, name: &str) -> Result<(bool, String)> {
    let out = agent.cli(&["exec", container, "busybox", "nslookup", name])?;
    Ok((
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    ))
}

fn resolves_to(result: &(bool, String), address: &str) -> bool {
    result.0 && result.1.contains(&format!("Address: {address}"))
}

#[test]
fn a_container_resolves_names_and_aliases_of_another_host_until_removed() -> Result<()> {
    // No search line: busybox's nslookup asks only NAME.SUFFIX for a dotless NAME when there is one.
    let dns = start("dn", 110, 2, "")?;
    let (h0, h1) = (&dns.cluster.agents[0], &dns.cluster.agents[1]);
    cli_ok(
        h0,
        &["run", "-d", "--name", "client", "busybox", "sleep", "1000"],
    )?;
    let resolv = cli_ok(h0, &["exec", "client", "cat", "/etc/resolv.conf"])?;
    let bridge = bridge_address(h0)?;
    ensure!(
        resolv == format!("nameserver {bridge}\n"),
        "the container's resolv.conf names {resolv:?}, not the agent at {bridge}"
    );

    cli_ok(
        h1,
        &[
            "run",
            "-d",
            "--name",
            "db",
            "--network-alias",
            "Database",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let ran = Instant::now();
    let db = address_of(h1, "db")?;
    wait_value(
        "db resolving on the other host",
        NAME_DEADLINE,
        Duration::from_millis(20),
        || nslookup(h0, "client", "db"),
        |r| resolves_to(r, &db),
    )?;
    println!(
        "db resolved on the other host {:?} after its run returned",
        ran.elapsed()
    );
    // The alias, in any case; `ping` resolves through the C library.
    for name in ["database", "DB"] {
        let found = nslookup(h0, "client", name)?;
        ensure!(resolves_to(&found, &db), "nslookup {name}: {}", found.1);
    }
    // Resolved through the C library: ping names the address (whether the
    // overlay carries the echo yet is not this test's business).
    let ping = h0.cli(&["exec", "client", "ping", "-c1", "-W1", "database"])?;
    ensure!(
        text(&ping.stdout).contains(&format!("PING database ({db})")),
        "ping database: {}{}",
        text(&ping.stdout),
        text(&ping.stderr)
    );

    cli_ok(h1, &["rm", "-f", "db"])?;
    let removed = Instant::now();
    wait_value(
        "db no longer resolving after rm",
        NAME_DEADLINE,
        Duration::from_millis(20),
        || nslookup(h0, "client", "db"),
        |r| !r.0 && !r.1.contains(&db),
    )?;
    println!(
        "db stopped resolving on the other host {:?} after rm returned",
        removed.elapsed()
    );
    let alias = nslookup(h0, "client", "database")?;
    ensure!(!alias.0, "the alias still resolves: {}", alias.1);
    Ok(())
}

#[test]
fn other_names_go_to_the_host_s_resolvers_and_stopped_containers_are_not_answered() -> Result<()> {
    let dns = start("df", 111, 1, "search tartan-test\noptions ndots:1\n")?;
    let agent = &dns.cluster.agents[0];
    let bridge = bridge_address(agent)?;
    cli_ok(
        agent,
        &["run", "-d", "--name", "c", "busybox", "sleep", "1000"],
    )?;
    let resolv = cli_ok(agent, &["exec", "c", "cat", "/etc/resolv.conf"])?;
    ensure!(
        resolv == format!("nameserver {bridge}\nsearch tartan-test\noptions ndots:1\n"),
        "the container's resolv.conf: {resolv:?}"
    );
    // --net host keeps the host's, as in Docker.
    let host_resolv = cli_ok(
        agent,
        &[
            "run",
            "--rm",
            "--net",
            "host",
            "busybox",
            "cat",
            "/etc/resolv.conf",
        ],
    )?;
    ensure!(
        host_resolv.contains("nameserver 10.111.0.254") && !host_resolv.contains(&bridge),
        "--net host's resolv.conf: {host_resolv:?}"
    );

    let before = dns.resolver.questions();
    let found = nslookup(agent, "c", OUTSIDE_NAME)?;
    ensure!(
        resolves_to(&found, &OUTSIDE_ADDRESS.to_string()),
        "nslookup {OUTSIDE_NAME}: {}",
        found.1
    );
    ensure!(
        dns.resolver.questions() > before,
        "the test resolver was not asked"
    );
    let unknown = nslookup(agent, "c", "nosuch.tartan-test")?;
    ensure!(
        !unknown.0 && unknown.1.contains("NXDOMAIN"),
        "nslookup of an unknown name: {}",
        unknown.1
    );

    // Docker's DNS answers for running containers only. A trailing dot:
    // busybox's nslookup asks for the name itself.
    cli_ok(
        agent,
        &["run", "-d", "--name", "gone", "busybox", "sleep", "1000"],
    )?;
    let gone = address_of(agent, "gone")?;
    let found = nslookup(agent, "c", "gone.")?;
    ensure!(resolves_to(&found, &gone), "nslookup gone.: {}", found.1);
    // Over TCP too, from the host; a forwarded TCP question goes over TCP,
    // to which the test resolver (UDP only) does not answer.
    let host = &dns.cluster.hosts[0].netns;
    let bridge_ip: Ipv4Addr = bridge.parse()?;
    let (rcode, addresses) = ask_tcp(host, bridge_ip, &a_question(7, "GONE"))?;
    ensure!(
        rcode == 0 && addresses == [gone.parse::<Ipv4Addr>()?],
        "TCP question for GONE: rcode {rcode}, {addresses:?}"
    );
    let (rcode, addresses) = ask_tcp(host, bridge_ip, &a_question(8, OUTSIDE_NAME))?;
    ensure!(
        rcode == 2 && addresses.is_empty(),
        "TCP question for {OUTSIDE_NAME}: rcode {rcode}, {addresses:?}"
    );
    cli_ok(agent, &["stop", "-t", "0", "gone"])?;
    wait_value(
        "a stopped container's name no longer answered",
        NAME_DEADLINE,
        Duration::from_millis(20),
        || nslookup(agent, "c", "gone."),
        |r| !r.0 && r.1.contains("NXDOMAIN"),
    )?;
    cli_ok(agent, &["start", "gone"])?;
    let gone = address_of(agent, "gone")?;
    wait_value(
        "a started container's name answered again",
        NAME_DEADLINE,
        Duration::from_millis(20),
        || nslookup(agent, "c", "gone."),
        |r| resolves_to(r, &gone),
    )?;

    // No resolver answering: SERVFAIL.
    drop(dns.resolver);
    let failed = nslookup(agent, "c", OUTSIDE_NAME)?;
    ensure!(
        !failed.0 && failed.1.contains("SERVFAIL"),
        "nslookup with no resolver answering: {}",
        failed.1
    );
    Ok(())
}

/// The node's subnet changes under running containers: the agent answers on
/// the new bridge address, the moved containers' resolv.conf names it (and
/// that of one sharing a moved one's network), and their names answer with
/// their new addresses.
#[test]
fn a_new_subnet_moves_the_dns_with_the_containers() -> Result<()> {
    let dns = start("dm", 112, 1, "")?;
    let cluster = &dns.cluster;
    let agent = &cluster.agents[0];
    for name in ["mover", "peer"] {
        cli_ok(
            agent,
            &["run", "-d", "--name", name, "busybox", "sleep", "1000"],
        )?;
    }
    // One sharing mover's network: its resolv.conf is its own file.
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "sharer",
            "--net",
            "container:mover",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let moved = Instant::now();
    let new_bridge = take_the_subnet(cluster, agent)?;
    wait_value(
        "mover's resolv.conf naming the new bridge address",
        NAME_DEADLINE,
        Duration::from_millis(100),
        || cli_ok(agent, &["exec", "mover", "cat", "/etc/resolv.conf"]),
        |conf| *conf == format!("nameserver {new_bridge}\n"),
    )?;
    wait_value(
        "the sharer's resolv.conf naming the new bridge address",
        NAME_DEADLINE,
        Duration::from_millis(100),
        || cli_ok(agent, &["exec", "sharer", "cat", "/etc/resolv.conf"]),
        |conf| *conf == format!("nameserver {new_bridge}\n"),
    )?;
    let peer = wait_value(
        "peer's new address",
        NAME_DEADLINE,
        Duration::from_millis(100),
        || address_of(agent, "peer"),
        |address| address.starts_with(&new_bridge[..new_bridge.rfind('.').unwrap_or(0)]),
    )?;
    wait_value(
        "peer resolving to its new address from mover",
        NAME_DEADLINE,
        Duration::from_millis(50),
        || nslookup(agent, "mover", "peer"),
        |r| resolves_to(r, &peer) && r.1.contains(&format!("Server:\t\t{new_bridge}")),
    )
    .with_context(|| agent.log_tail(30))?;
    println!(
        "names answered on the new subnet {:?} after the takeover",
        moved.elapsed()
    );
    Ok(())
}

/// After a "reboot" (every container and the agent gone, then the agent
/// again), a container its restart policy brings back names the agent in
/// its resolv.conf and is answered with its address of now.
#[test]
fn a_container_back_after_a_reboot_uses_and_is_answered_by_the_fabric_dns() -> Result<()> {
    let mut dns = start("dr", 113, 1, "")?;
    cli_ok(
        &dns.cluster.agents[0],
        &[
            "run",
            "-d",
            "--name",
            "back",
            "--restart",
            "always",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let agent = &mut dns.cluster.agents[0];
    agent.kill()?;
    agent.kill_containers();
    agent.restart()?;
    agent.wait_ready(tartan_tests::cluster::READY)?;
    let agent = &dns.cluster.agents[0];
    let bridge = bridge_address(agent)?;
    let resolv = wait_value(
        "back running again, with its resolv.conf",
        NAME_DEADLINE,
        Duration::from_millis(100),
        || cli_ok(agent, &["exec", "back", "cat", "/etc/resolv.conf"]),
        |_| true,
    )
    .with_context(|| agent.log_tail(30))?;
    ensure!(
        resolv == format!("nameserver {bridge}\n"),
        "resolv.conf after the reboot: {resolv:?}"
    );
    let back = address_of(agent, "back")?;
    wait_value(
        "back answered with its address after the reboot",
        NAME_DEADLINE,
        Duration::from_millis(50),
        || nslookup(agent, "back", "back"),
        |r| resolves_to(r, &back),
    )?;
    Ok(())
}

/// After a move, a restart by the container's restart policy writes its
/// `/etc/hosts` and `resolv.conf` as the move left them, not as they were
/// at its start.
#[test]
fn a_restart_after_a_move_keeps_the_files_the_move_wrote() -> Result<()> {
    let dns = start("dr", 114, 1, "")?;
    let cluster = &dns.cluster;
    let agent = &cluster.agents[0];
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "flapper",
            "--restart",
            "always",
            "busybox",
            "sh",
            "-c",
            "sleep 2; exit 1",
        ],
    )?;
    let new_bridge = take_the_subnet(cluster, agent)?;
    let prefix = &new_bridge[..new_bridge.rfind('.').unwrap_or(0)];
    let address = wait_value(
        "flapper's new address",
        NAME_DEADLINE,
        Duration::from_millis(100),
        || address_of(agent, "flapper"),
        |address| address.starts_with(prefix),
    )?;
    let restarts = |agent: &Agent| -> Result<u64> {
        let out = cli_ok(agent, &["inspect", "flapper"])?;
        let parsed: serde_json::Value = serde_json::from_str(&out)?;
        parsed[0]["RestartCount"]
            .as_u64()
            .context("inspect shows no RestartCount")
    };
    let before = restarts(agent)?;
    wait_value(
        "a restart after the move",
        NAME_DEADLINE,
        Duration::from_millis(100),
        || restarts(agent),
        |count| *count > before,
    )?;
    // Read from the run that restart began (exec waits out the back-off).
    let files = wait_value(
        "the restarted flapper's files",
        NAME_DEADLINE,
        Duration::from_millis(100),
        || {
            cli_ok(
                agent,
                &["exec", "flapper", "cat", "/etc/hosts", "/etc/resolv.conf"],
            )
        },
        |_| true,
    )?;
    ensure!(
        files.contains(&format!("{address}\t")) || files.contains(&format!("{address} ")),
        "/etc/hosts names the new address {address}: {files}"
    );
    ensure!(
        files.contains(&format!("nameserver {new_bridge}\n")),
        "resolv.conf names the agent at {new_bridge}: {files}"
    );
    Ok(())
}
