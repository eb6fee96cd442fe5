//! Named networks in Docker's dialect: defined once in etcd for every host,
//! addresses allocated fabric-wide, containers on them with `--network`
//! and `network connect`.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, finish, import_busybox, text, VXLAN};
use tartan_tests::cluster::Cluster;
use tartan_tests::containers::{exec, inspect, inspect_network, pings, refused_with};
use tartan_tests::ovs::Ovs;
use tartan_tests::wait::wait_until;

const CONVERGE: Duration = Duration::from_secs(20);

/// Tartan's own key prefix of the cluster's agents (the default: /tartan
/// and the flannel prefix).
fn tartan_prefix(cluster: &Cluster) -> String {
    format!("/tartan{}", cluster.prefix)
}

/// Every key under `prefix`, sorted.
fn etcd_keys(cluster: &Cluster, prefix: &str) -> Result<Vec<String>> {
    let out = cluster.etcdctl(&["get", "--prefix", "--keys-only", prefix])?;
    let mut keys: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    keys.sort();
    Ok(keys)
}

/// The interface names of host `host`'s namespace, sorted.
fn links(cluster: &Cluster, host: usize) -> Result<Vec<String>> {
    let out = cluster.hosts[host]
        .netns
        .exec("ip", &["-o", "link", "show"])?;
    let mut names: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    names.sort();
    Ok(names)
}

/// The IPv4 address with prefix of a container's interface.
fn inet(agent: &Agent, name: &str, ifname: &str) -> Result<Option<String>> {
    let out = exec(
        agent,
        name,
        &["ip", "-o", "-4", "addr", "show", "dev", ifname],
    )?;
    Ok(text(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .map(String::from))
}

/// The addresses the network's inspect shows, by container name.
fn network_addresses(agent: &Agent, name: &str) -> Result<Vec<(String, String)>> {
    let info = inspect_network(agent, name)?;
    let containers = info["Containers"]
        .as_object()
        .with_context(|| format!("no Containers: {info}"))?;
    let mut out: Vec<(String, String)> = containers
        .values()
        .map(|c| {
            (
                c["Name"].as_str().unwrap_or_default().to_string(),
                c["IPv4Address"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// One host whose agent finds a private Open vSwitch at `--ovsdb`, with
/// busybox imported. Bound with its fields in this order, the switch goes
/// before the cluster, and the directory of the socket's link last.
struct WithOvs {
    _socket_dir: tempfile::TempDir,
    cluster: Cluster,
    ovs: Ovs,
    /// The `--ovsdb` flag, for other commands that need it (reset).
    flag: String,
}

fn cluster_with_ovs(name: &str, octet: u8) -> Result<WithOvs> {
    // The agent is told where OVSDB will be before the switch exists.
    let socket_dir = tempfile::Builder::new()
        .prefix(&format!("tt-{name}-ovsdb-"))
        .tempdir_in("/tmp")?;
    let socket = socket_dir.path().join("db.sock");
    let flag = format!("--ovsdb=unix:{}", socket.display());
    let cluster = Cluster::start_with(name, octet, VXLAN, 1, &[&flag])?;
    let ovs = Ovs::start(&cluster.hosts[0].netns)?;
    std::os::unix::fs::symlink(ovs.socket(), &socket)?;
    import_busybox(&cluster.agents[0])?;
    Ok(WithOvs {
        _socket_dir: socket_dir,
        cluster,
        ovs,
        flag,
    })
}

#[test]
fn a_network_made_on_one_host_is_every_host_s_and_its_containers_talk() -> Result<()> {
    let cluster = Cluster::start("nw", 224, VXLAN, 2)?;
    let (h0, h1) = (&cluster.agents[0], &cluster.agents[1]);
    import_busybox(h0)?;
    import_busybox(h1)?;
    let flannel_keys = etcd_keys(&cluster, &cluster.prefix)?;

    // The seed: docker network create --subnet=10.1.1.0/24 network01
    let id = cli_ok(
        h0,
        &["network", "create", "--subnet=10.1.1.0/24", "network01"],
    )?;
    let id = id.trim();
    ensure!(id.len() == 64, "create prints the id: {id}");
    let tp = tartan_prefix(&cluster);
    assert_eq!(
        etcd_keys(&cluster, &tp)?,
        [format!("{tp}/networks"), format!("{tp}/networks/network01")],
        "the definition, and the key every create rewrites"
    );
    assert_eq!(
        etcd_keys(&cluster, &cluster.prefix)?,
        flannel_keys,
        "nothing is written among flannel's keys"
    );

    // Host 1 sees it.
    let listed = cli_ok(h1, &["network", "ls"])?;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    );
    // With the predefined networks, by name as Docker lists them.
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(names, ["host", "network01", "none", "overlay"], "{listed}");
    assert_eq!(rows[1], [&id[..12], "network01", "bridge", "global"]);
    assert_eq!(rows[0][2..], ["host", "local"]);
    assert_eq!(rows[2][2..], ["null", "local"]);
    assert_eq!(rows[3][2..], ["vxlan", "global"], "the cluster's backend");
    let overlay_id = rows[3][0].to_string();
    ensure!(
        cli_ok(h0, &["network", "ls"])?.contains(&overlay_id),
        "every host shows the same id for the overlay"
    );
    // The node's own subnet and gateway, as the subnet file has them
    // (FLANNEL_SUBNET is the gateway with the subnet's prefix).
    let subnet_file = std::fs::read_to_string(h1.subnet_file())?;
    let own: ipnetwork::Ipv4Network = subnet_file
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .with_context(|| format!("no FLANNEL_SUBNET in {subnet_file}"))?
        .parse()?;
    let info = inspect_network(h1, "overlay")?;
    assert_eq!(info["Driver"], "vxlan");
    assert_eq!(info["Scope"], "global");
    assert_eq!(
        info["IPAM"]["Config"][0]["Subnet"],
        format!("{}/{}", own.network(), own.prefix())
    );
    assert_eq!(info["IPAM"]["Config"][0]["Gateway"], own.ip().to_string());
    let info = inspect_network(h1, "none")?;
    assert_eq!(info["Driver"], "null");
    assert_eq!(info["IPAM"]["Config"], serde_json::json!([]));
    let info = inspect_network(h1, "network01")?;
    assert_eq!(info["Id"], id);
    assert_eq!(info["IPAM"]["Config"][0]["Subnet"], "10.1.1.0/24");
    assert_eq!(info["IPAM"]["Config"][0]["Gateway"], "10.1.1.1");
    refused_with(
        h1,
        &["network", "create", "--subnet=10.1.1.0/24", "network01"],
        "already exists",
    )?;

    // The seed: docker run --network=network01 --ip=10.1.1.10
    cli_ok(
        h0,
        &[
            "run",
            "-d",
            "--name=c1",
            "--network=network01",
            "--ip=10.1.1.10",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    cli_ok(
        h0,
        &[
            "run",
            "-d",
            "--name=c2",
            "--network",
            "network01",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    assert_eq!(inet(h0, "c1", "eth0")?.as_deref(), Some("10.1.1.10/24"));
    assert_eq!(
        inet(h0, "c2", "eth0")?.as_deref(),
        Some("10.1.1.2/24"),
        "the first free address after the gateway"
    );
    let routes = text(&exec(h0, "c1", &["ip", "route"])?.stdout);
    ensure!(routes.contains("default via 10.1.1.1 dev eth0"), "{routes}");
    let bridge = format!("br-{}", &id[..12]);
    let shown = text(
        &cluster.hosts[0]
            .netns
            .exec("ip", &["-o", "-4", "addr", "show", "dev", &bridge])?
            .stdout,
    );
    ensure!(
        shown.contains("10.1.1.1/24"),
        "the bridge holds the gateway: {shown:?}"
    );
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(h0, "c1", "10.1.1.2")
    })
    .context("c1 never reached c2 on their bridge network")?;
    let hosts_file = text(&exec(h0, "c1", &["cat", "/etc/hosts"])?.stdout);
    ensure!(hosts_file.contains("10.1.1.10\t"), "{hosts_file}");

    // The address is the fabric's: host 1 cannot have it.
    refused_with(
        h1,
        &[
            "run",
            "-d",
            "--network=network01",
            "--ip=10.1.1.10",
            "busybox",
            "sleep",
            "1000",
        ],
        "in use by container c1",
    )?;
    let seen = network_addresses(h1, "network01")?;
    assert_eq!(
        seen,
        [
            ("c1".into(), "10.1.1.10/24".into()),
            ("c2".into(), "10.1.1.2/24".into())
        ]
    );

    // Removal waits until it is empty; then nothing is left of it.
    refused_with(
        h1,
        &["network", "rm", "network01"],
        "in use by containers c1, c2",
    )?;
    cli_ok(h0, &["rm", "-f", "c1"])?;
    refused_with(
        h1,
        &["network", "rm", "network01"],
        "in use by container c2",
    )?;
    cli_ok(h0, &["rm", "-f", "c2"])?;
    ensure!(
        !links(&cluster, 0)?.contains(&bridge),
        "the bridge goes with the last container on it"
    );
    cli_ok(h1, &["network", "rm", "network01"])?;
    assert_eq!(etcd_keys(&cluster, &tp)?, [format!("{tp}/networks")]);
    ensure!(!cli_ok(h0, &["network", "ls"])?.contains("network01"));

    // The seed's macvlan network on the hosts' underlay interface: made
    // once for both hosts, where Docker needs it made on each.
    let macvlan = [
        "network",
        "create",
        "-d",
        "macvlan",
        "--subnet",
        "172.25.0.0/24",
        "--gateway",
        "172.25.0.1",
        "-o",
        "parent=eth0",
        "macvlan1",
    ];
    cli_ok(h0, &macvlan)?;
    refused_with(h1, &macvlan, "already exists")?;
    cli_ok(
        h0,
        &[
            "run",
            "-d",
            "--name=m0",
            "--network=macvlan1",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    cli_ok(
        h1,
        &[
            "run",
            "-d",
            "--name=m1",
            "--network=macvlan1",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    assert_eq!(inet(h0, "m0", "eth0")?.as_deref(), Some("172.25.0.2/24"));
    assert_eq!(inet(h1, "m1", "eth0")?.as_deref(), Some("172.25.0.3/24"));
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(h0, "m0", "172.25.0.3")
    })
    .context("m0 never reached m1 across the underlay")?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(h1, "m1", "172.25.0.2")
    })
    .context("m1 never reached m0 across the underlay")?;
    cli_ok(h0, &["rm", "-f", "m0"])?;
    cli_ok(h1, &["rm", "-f", "m1"])?;
    cli_ok(h0, &["network", "rm", "macvlan1"])?;
    assert_eq!(etcd_keys(&cluster, &tp)?, [format!("{tp}/networks")]);
    Ok(())
}

#[test]
fn connected_interfaces_outlive_stop_start_and_an_agent_restart() -> Result<()> {
    let WithOvs {
        _socket_dir,
        mut cluster,
        ovs,
        flag: _,
    } = cluster_with_ovs("nc", 235)?;
    let agent = &cluster.agents[0];
    cli_ok(
        agent,
        &[
            "network",
            "create",
            "--subnet",
            "10.2.2.0/24",
            "--ip-range",
            "10.2.2.64/26",
            "net2",
        ],
    )?;
    cli_ok(
        agent,
        &["run", "-d", "--name", "web", "busybox", "sleep", "1000"],
    )?;
    let overlay = inet(agent, "web", "eth0")?.context("web has its overlay eth0")?;
    cli_ok(agent, &["network", "connect", "net2", "web"])?;
    assert_eq!(
        inet(agent, "web", "eth1")?.as_deref(),
        Some("10.2.2.64/24"),
        "the first address of --ip-range"
    );
    let routes = text(&exec(agent, "web", &["ip", "route"])?.stdout);
    ensure!(
        !routes.contains("default via 10.2.2."),
        "the default route stays on eth0: {routes}"
    );
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "peer",
            "--network",
            "net2",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "peer", "10.2.2.64")
    })
    .context("peer never reached web's eth1")?;
    refused_with(
        agent,
        &["network", "connect", "net2", "web"],
        "already on network net2",
    )?;

    // An Open vSwitch network, its ports on VLAN 7: web's eth2.
    let id = cli_ok(
        agent,
        &[
            "network",
            "create",
            "-d",
            "ovs",
            "--subnet",
            "10.7.7.0/24",
            "-o",
            "vlan=7",
            "ovsnet",
        ],
    )?;
    let ovs_bridge = format!("ovs{}", &id.trim()[..12]);
    // A fixed address on connect, as Docker's `network connect --ip`.
    cli_ok(
        agent,
        &["network", "connect", "--ip", "10.7.7.20", "ovsnet", "web"],
    )?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "opeer",
            "--network",
            "ovsnet",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    assert_eq!(inet(agent, "web", "eth2")?.as_deref(), Some("10.7.7.20/24"));
    assert_eq!(
        inet(agent, "opeer", "eth0")?.as_deref(),
        Some("10.7.7.2/24"),
        "the first free address, web holding .20"
    );
    let tagged = ovs.vsctl(&["--bare", "--columns=name", "find", "Port", "tag=7"])?;
    assert_eq!(tagged.split_whitespace().count(), 2, "{tagged}");
    assert_eq!(ovs.vsctl(&["list-br"])?.trim(), ovs_bridge);
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "opeer", "10.7.7.20")
    })
    .context("opeer never reached web's eth2 on the OVS bridge")?;

    cli_ok(agent, &["stop", "-t", "1", "web"])?;
    cli_ok(agent, &["start", "web"])?;
    assert_eq!(inet(agent, "web", "eth0")?, Some(overlay.clone()));
    assert_eq!(inet(agent, "web", "eth1")?.as_deref(), Some("10.2.2.64/24"));
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "peer", "10.2.2.64")
    })
    .context("peer never reached web's eth1 after its stop and start")?;

    // Claims of containers that are gone (as a removal while etcd was out
    // of reach leaves them): this host's are freed when its agent starts,
    // another host's are left to it.
    let host = inspect_network(agent, "net2")?["Containers"]
        .as_object()
        .and_then(|c| c.values().next())
        .and_then(|c| c["Host"].as_str())
        .context("net2 has a container with a host")?
        .to_string();
    let claims = format!("{}/networks/net2/addresses", tartan_prefix(&cluster));
    let gone = format!(
        r#"{{"host":"{host}","container":"{}","name":"gone","interface":"eth0"}}"#,
        "0".repeat(64)
    );
    let elsewhere = format!(
        r#"{{"host":"10.235.0.250","container":"{}","name":"elsewhere","interface":"eth0"}}"#,
        "1".repeat(64)
    );
    cluster.etcdctl(&["put", &format!("{claims}/10.2.2.100"), &gone])?;
    cluster.etcdctl(&["put", &format!("{claims}/10.2.2.101"), &elsewhere])?;

    cluster.agents[0].terminate()?;
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(tartan_tests::cluster::READY)?;
    let agent = &cluster.agents[0];
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(!network_addresses(agent, "net2")?
            .iter()
            .any(|(name, _)| name == "gone"))
    })
    .context("the claim of a container that is gone was never freed")?;
    ensure!(
        network_addresses(agent, "net2")?
            .iter()
            .any(|(name, _)| name == "elsewhere"),
        "another host's claim stays"
    );
    cluster.etcdctl(&["del", &format!("{claims}/10.2.2.101")])?;
    assert_eq!(inet(agent, "web", "eth1")?.as_deref(), Some("10.2.2.64/24"));
    cli_ok(agent, &["restart", "-t", "1", "web"])?;
    assert_eq!(inet(agent, "web", "eth1")?.as_deref(), Some("10.2.2.64/24"));
    assert_eq!(inet(agent, "web", "eth2")?.as_deref(), Some("10.7.7.20/24"));
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "peer", "10.2.2.64")
    })
    .context("peer never reached web's eth1 after the restarts")?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "opeer", "10.7.7.20")
    })
    .context("opeer never reached web's eth2 after the restarts")?;

    cli_ok(agent, &["network", "disconnect", "net2", "web"])?;
    assert_eq!(inet(agent, "web", "eth1")?, None);
    assert_eq!(
        network_addresses(agent, "net2")?,
        [("peer".into(), "10.2.2.65/24".into())]
    );
    cli_ok(agent, &["rm", "-f", "web", "opeer"])?;
    assert_eq!(
        ovs.vsctl(&["list-br"])?.trim(),
        "",
        "the OVS bridge goes with the network's last container here"
    );
    assert_eq!(network_addresses(agent, "ovsnet")?, []);
    Ok(())
}

#[test]
fn hosts_allocating_at_once_never_share_an_address() -> Result<()> {
    let mut cluster = Cluster::start("na", 237, VXLAN, 2)?;
    let id = allocate_at_once(&cluster, &["--subnet", "10.3.3.0/24"])?;

    // `reset -f` on a host with the agent stopped removes the network's bridge too.
    let bridge = format!("br-{}", &id.trim()[..12]);
    ensure!(links(&cluster, 1)?.contains(&bridge), "{bridge} on host 1");
    cluster.agents[1].terminate()?;
    let agent = &cluster.agents[1];
    let tartan = tartan_tests::agent::tartan_bin()?;
    let out = cluster.hosts[1]
        .netns
        .command(&tartan.display().to_string())
        .args(["reset", "-f", "--state-dir"])
        .arg(agent.state_dir())
        .arg("--subnet-file")
        .arg(agent.subnet_file())
        .arg("--api-socket")
        .arg(agent.api_socket())
        .output()?;
    ensure!(out.status.success(), "reset: {}", text(&out.stderr));
    ensure!(
        text(&out.stdout).contains(&format!("removed {bridge}")),
        "{}",
        text(&out.stdout)
    );
    ensure!(!links(&cluster, 1)?.contains(&bridge), "{bridge} is gone");
    Ok(())
}

/// The seed's macvlan network on the hosts' underlay interface, its
/// addresses claimed from both hosts at once.
#[test]
fn hosts_allocating_at_once_on_a_macvlan_network_never_share_an_address() -> Result<()> {
    let cluster = Cluster::start("nm", 166, VXLAN, 2)?;
    allocate_at_once(
        &cluster,
        &[
            "-d",
            "macvlan",
            "--subnet",
            "10.3.3.0/24",
            "-o",
            "parent=eth0",
        ],
    )?;
    assert_eq!(
        inspect_network(&cluster.agents[1], "busy")?["Driver"],
        "macvlan"
    );
    Ok(())
}

/// Makes a network `busy` with `create_args` and has both hosts run and
/// connect containers on it at once; every address is claimed once and is
/// on its interface. Returns the network's id.
fn allocate_at_once(cluster: &Cluster, create_args: &[&str]) -> Result<String> {
    const RUNS_PER_HOST: usize = 6;
    const CONNECTS_PER_HOST: usize = 3;
    for agent in &cluster.agents {
        import_busybox(agent)?;
    }
    let mut create = vec!["network", "create"];
    create.extend_from_slice(create_args);
    create.push("busy");
    let id = cli_ok(&cluster.agents[0], &create)?;
    // Containers to connect, made first.
    for (h, agent) in cluster.agents.iter().enumerate() {
        for i in 0..CONNECTS_PER_HOST {
            cli_ok(
                agent,
                &[
                    "run",
                    "-d",
                    "--name",
                    &format!("o{h}{i}"),
                    "busybox",
                    "sleep",
                    "1000",
                ],
            )?;
        }
    }
    let mut children = Vec::new();
    for (h, agent) in cluster.agents.iter().enumerate() {
        for i in 0..RUNS_PER_HOST {
            let name = format!("r{h}{i}");
            let mut command = agent.cli_command(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "busy",
                "busybox",
                "sleep",
                "1000",
            ])?;
            children.push((
                name,
                command
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?,
            ));
        }
        for i in 0..CONNECTS_PER_HOST {
            let name = format!("o{h}{i}");
            let mut command = agent.cli_command(&["network", "connect", "busy", &name])?;
            children.push((
                name,
                command
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?,
            ));
        }
    }
    for (name, child) in children {
        let out = finish(child, Duration::from_secs(60))?;
        ensure!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
    let claimed = network_addresses(&cluster.agents[0], "busy")?;
    let expected = 2 * (RUNS_PER_HOST + CONNECTS_PER_HOST);
    assert_eq!(claimed.len(), expected, "{claimed:?}");
    let distinct: BTreeSet<&String> = claimed.iter().map(|(_, a)| a).collect();
    assert_eq!(
        distinct.len(),
        expected,
        "an address was handed out twice: {claimed:?}"
    );
    // And the interfaces have what the claims say.
    for (name, address) in &claimed {
        let h = usize::from(name.as_bytes()[1] - b'0');
        let ifname = if name.starts_with('r') {
            "eth0"
        } else {
            "eth1"
        };
        assert_eq!(
            inet(&cluster.agents[h], name, ifname)?.as_ref(),
            Some(address),
            "{name}"
        );
    }

    Ok(id)
}

#[test]
fn bad_network_commands_are_one_line_and_leave_nothing_behind() -> Result<()> {
    // No Open vSwitch here: the agent is pointed at a socket that does not exist.
    let no_ovs = tempfile::Builder::new()
        .prefix("tt-nb-ovsdb-")
        .tempdir_in("/tmp")?;
    let flag = format!("--ovsdb=unix:{}/db.sock", no_ovs.path().display());
    let cluster = Cluster::start_with("nb", 240, VXLAN, 1, &[&flag])?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(
        agent,
        &["network", "create", "--subnet", "10.4.4.0/24", "good"],
    )?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "user",
            "--network",
            "good",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    // This kernel has no 802.1Q: a macvlan network on a VLAN is refused
    // when a container would join it, on this host.
    cli_ok(
        agent,
        &[
            "network",
            "create",
            "-d",
            "macvlan",
            "--subnet",
            "10.6.6.0/24",
            "-o",
            "parent=eth0",
            "-o",
            "vlan=10",
            "tagged",
        ],
    )?;
    cli_ok(
        agent,
        &[
            "network",
            "create",
            "-d",
            "ovs",
            "--subnet",
            "10.8.8.0/24",
            "switched",
        ],
    )?;
    let tp = tartan_prefix(&cluster);
    let keys_before = etcd_keys(&cluster, "/")?;
    let links_before = links(&cluster, 0)?;
    let cases: &[(&[&str], &str)] = &[
        (
            &["network", "create", "--subnet", "10.9.0.0/33", "n"],
            "invalid --subnet",
        ),
        (
            &["network", "create", "--subnet", "banana", "n"],
            "invalid --subnet",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.9.0.0/24",
                "--gateway",
                "10.8.0.1",
                "n",
            ],
            "outside --subnet",
        ),
        (
            &[
                "network",
                "create",
                "--subnet",
                "10.9.0.0/24",
                "--ip-range",
                "10.8.0.0/25",
                "n",
            ],
            "outside --subnet",
        ),
        (&["network", "create", "-d", "weave", "n"], "unknown driver"),
        (
            &["network", "create", "-o", "mtu=9000", "n"],
            "unknown option",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "-o",
                "parent=eth0",
                "-o",
                "vlan=5000",
                "n",
            ],
            "1 to 4094",
        ),
        (
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "-o",
                "parent=eth0",
                "-o",
                "vlan=x",
                "n",
            ],
            "1 to 4094",
        ),
        (
            &["network", "create", "-d", "macvlan", "n"],
            "needs -o parent",
        ),
        (
            &["network", "create", "--subnet", "10.4.0.0/16", "n"],
            "overlaps 10.4.4.0/24",
        ),
        (
            &["network", "create", "--subnet", "10.5.7.0/24", "n"],
            "overlaps 10.5.0.0/16",
        ),
        (&["network", "create", "good"], "already exists"),
        (&["network", "create", "host"], "network mode"),
        (
            &["network", "create", "overlay"],
            "overlay is a pre-defined network",
        ),
        (&["network", "create", "bad/name"], "invalid network name"),
        (
            &["network", "rm", "overlay"],
            "overlay is a pre-defined network",
        ),
        (&["network", "rm", "none"], "none is a pre-defined network"),
        (&["network", "rm", "ghost"], "network ghost not found"),
        (&["network", "rm", "good"], "in use by container user"),
        (&["network", "inspect", "ghost"], "network ghost not found"),
        (
            &["network", "connect", "ghost", "user"],
            "network ghost not found",
        ),
        (
            &["network", "connect", "good", "nobody"],
            "no such container",
        ),
        (
            &["network", "connect", "--ip", "10.4.5.1", "good", "user"],
            "already on network good",
        ),
        (
            &["network", "disconnect", "overlay", "user"],
            "not on network overlay",
        ),
        (
            &["run", "--network", "ghost", "busybox", "true"],
            "network ghost not found",
        ),
        (&["run", "--network", "tagged", "busybox", "true"], "802.1Q"),
        (&["network", "connect", "tagged", "user"], "802.1Q"),
        (
            &["run", "--network", "switched", "busybox", "true"],
            "Open vSwitch is needed",
        ),
        (
            &["network", "connect", "switched", "user"],
            "Open vSwitch is needed",
        ),
        (
            &[
                "run",
                "--network",
                "good",
                "--ip",
                "10.4.5.1",
                "busybox",
                "true",
            ],
            "outside the subnet",
        ),
        (
            &[
                "run",
                "--network",
                "good",
                "--ip",
                "10.4.4.1",
                "busybox",
                "true",
            ],
            "gateway",
        ),
        (
            &[
                "run",
                "--network",
                "good",
                "--ip",
                "10.4.4.2",
                "busybox",
                "true",
            ],
            "in use by container user",
        ),
    ];
    for (args, expected) in cases {
        refused_with(agent, args, expected)?;
    }
    assert_eq!(etcd_keys(&cluster, "/")?, keys_before, "etcd keys");
    assert_eq!(links(&cluster, 0)?, links_before, "host links");
    let containers = cli_ok(agent, &["ps", "-a", "-q"])?;
    assert_eq!(containers.lines().count(), 1, "{containers}");
    ensure!(
        etcd_keys(&cluster, &tp)?.len() == 6,
        "good, tagged, switched, user's address, user's name and the key every create rewrites"
    );
    Ok(())
}

#[test]
fn creates_at_once_never_get_overlapping_subnets() -> Result<()> {
    const CREATES_PER_HOST: usize = 6;
    let cluster = Cluster::start("nk", 154, VXLAN, 2)?;
    let spawn_creates =
        |prefix: &str, extra: &[&str]| -> Result<Vec<(String, std::process::Child)>> {
            let mut children = Vec::new();
            for (h, agent) in cluster.agents.iter().enumerate() {
                for i in 0..CREATES_PER_HOST {
                    let name = format!("{prefix}{h}{i}");
                    let mut args = vec!["network", "create"];
                    args.extend_from_slice(extra);
                    args.push(&name);
                    let child = agent
                        .cli_command(&args)?
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()?;
                    children.push((name, child));
                }
            }
            Ok(children)
        };

    // Default pools: each create its own.
    for (name, child) in spawn_creates("pool", &[])? {
        let out = finish(child, Duration::from_secs(60))?;
        ensure!(out.status.success(), "{name}: {}", text(&out.stderr));
    }
    let mut subnets = Vec::new();
    for h in 0..2 {
        for i in 0..CREATES_PER_HOST {
            let info = inspect_network(&cluster.agents[0], &format!("pool{h}{i}"))?;
            let subnet: ipnetwork::Ipv4Network = info["IPAM"]["Config"][0]["Subnet"]
                .as_str()
                .with_context(|| format!("no subnet: {info}"))?
                .parse()?;
            subnets.push(subnet);
        }
    }
    for (i, a) in subnets.iter().enumerate() {
        for b in &subnets[i + 1..] {
            ensure!(!a.overlaps(*b), "{a} and {b} overlap: {subnets:?}");
        }
    }

    // One --subnet: one create wins, the others name it.
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for (name, child) in spawn_creates("same", &["--subnet", "10.60.0.0/24"])? {
        let out = finish(child, Duration::from_secs(60))?;
        if out.status.success() {
            winners.push(name);
        } else {
            losers.push((name, text(&out.stderr)));
        }
    }
    assert_eq!(winners.len(), 1, "winners {winners:?}, losers {losers:?}");
    let expected = format!("overlaps 10.60.0.0/24 of network {}", winners[0]);
    for (name, err) in &losers {
        ensure!(
            err.contains(&expected) && err.trim_end().lines().count() == 1,
            "{name}: expected one line with {expected:?}, got {err:?}"
        );
    }
    Ok(())
}

#[test]
fn reset_removes_the_ovs_bridges_of_ovs_networks() -> Result<()> {
    let WithOvs {
        _socket_dir,
        mut cluster,
        ovs,
        flag,
    } = cluster_with_ovs("nr", 155)?;
    let agent = &cluster.agents[0];
    let id = cli_ok(
        agent,
        &[
            "network",
            "create",
            "-d",
            "ovs",
            "--subnet",
            "10.7.5.0/24",
            "ovsnet",
        ],
    )?;
    let ovs_bridge = format!("ovs{}", &id.trim()[..12]);
    // An operator's bridge beside it, which reset leaves alone.
    ovs.vsctl(&[
        "add-br",
        "operator0",
        "--",
        "set",
        "Bridge",
        "operator0",
        "datapath_type=netdev",
    ])?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "o1",
            "--network",
            "ovsnet",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let shown = ovs.vsctl(&["show"])?;
    ensure!(
        shown.contains(&ovs_bridge),
        "{ovs_bridge} before reset: {shown}"
    );

    cluster.agents[0].terminate()?;
    let agent = &cluster.agents[0];
    let tartan = tartan_tests::agent::tartan_bin()?;
    let out = cluster.hosts[0]
        .netns
        .command(&tartan.display().to_string())
        .args(["reset", "-f", "--state-dir"])
        .arg(agent.state_dir())
        .arg("--subnet-file")
        .arg(agent.subnet_file())
        .arg("--api-socket")
        .arg(agent.api_socket())
        .arg(&flag)
        .output()?;
    ensure!(out.status.success(), "reset: {}", text(&out.stderr));
    ensure!(
        text(&out.stdout).contains(&format!("removed OVS bridge {ovs_bridge}")),
        "{}",
        text(&out.stdout)
    );
    let shown = ovs.vsctl(&["show"])?;
    ensure!(
        !shown.contains(&ovs_bridge),
        "{ovs_bridge} after reset: {shown}"
    );
    ensure!(
        shown.contains("operator0"),
        "the operator's bridge stays: {shown}"
    );
    Ok(())
}

#[test]
fn ls_filters_and_prune_work_as_docker_s() -> Result<()> {
    let cluster = Cluster::start("np", 156, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    let mut ids = std::collections::BTreeMap::new();
    for (name, driver, subnet) in [
        ("web1", "bridge", "10.11.0.0/24"),
        ("web2", "bridge", "10.11.1.0/24"),
        ("sw", "ovs", "10.11.2.0/24"),
    ] {
        let id = cli_ok(
            agent,
            &["network", "create", "-d", driver, "--subnet", subnet, name],
        )?;
        ids.insert(name, id.trim()[..12].to_string());
    }
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "user",
            "--network",
            "web1",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let names = |args: &[&str]| -> Result<Vec<String>> {
        let mut all = vec!["network", "ls"];
        all.extend_from_slice(args);
        Ok(cli_ok(agent, &all)?
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().nth(1).map(String::from))
            .collect())
    };
    assert_eq!(names(&["--filter", "name=web"])?, ["web1", "web2"]);
    assert_eq!(
        names(&["-f", "name=web2", "--filter", "name=sw"])?,
        ["sw", "web2"],
        "values of one key are alternatives"
    );
    assert_eq!(
        names(&["--filter", "name=web", "--filter", "driver=ovs"])?,
        Vec::<String>::new(),
        "different keys must all match"
    );
    assert_eq!(names(&["--filter", "driver=null"])?, ["none"]);
    assert_eq!(
        cli_ok(agent, &["network", "ls", "-q", "--filter", "driver=ovs"])?,
        format!("{}\n", ids["sw"])
    );
    refused_with(
        agent,
        &["network", "ls", "--filter", "label=x"],
        "invalid filter 'label'",
    )?;

    // Without -f it asks; anything but y keeps everything.
    let mut child = agent
        .cli_command(&["network", "prune"])?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("prune's stdin")?;
        stdin.write_all(b"n\n")?;
    }
    let out = finish(child, Duration::from_secs(30))?;
    ensure!(out.status.success(), "prune: {}", text(&out.stderr));
    ensure!(
        text(&out.stdout).contains("Are you sure you want to continue? [y/N]"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        names(&[])?,
        ["host", "none", "overlay", "sw", "web1", "web2"]
    );

    // -f removes the networks no container is on, and says which.
    let out = cli_ok(agent, &["network", "prune", "-f"])?;
    assert_eq!(out, "Deleted Networks:\nsw\nweb2\n");
    assert_eq!(names(&[])?, ["host", "none", "overlay", "web1"]);
    cli_ok(agent, &["rm", "-f", "user"])?;
    assert_eq!(
        cli_ok(agent, &["network", "prune", "-f"])?,
        "Deleted Networks:\nweb1\n"
    );
    assert_eq!(cli_ok(agent, &["network", "prune", "-f"])?, "");
    Ok(())
}

/// `-o bridge=NAME` puts a bridge network on the operator's bridge, which
/// outlives the network; `-o macvlan_mode=` sets the macvlans' mode, and
/// `private` keeps containers on one parent from each other, as the
/// kernel's mode says.
#[test]
fn an_operator_s_bridge_and_macvlan_modes_are_honoured() -> Result<()> {
    let cluster = Cluster::start("no", 104, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    let host = &cluster.hosts[0].netns;
    import_busybox(agent)?;
    let run_on = |network: &str, name: &str| {
        cli_ok(
            agent,
            &[
                "run",
                "-d",
                &format!("--name={name}"),
                &format!("--network={network}"),
                "busybox",
                "sleep",
                "1000",
            ],
        )
    };
    let ports_of = |bridge: &str| -> Result<usize> {
        let out = host.exec("ip", &["-o", "link", "show", "master", bridge])?;
        Ok(text(&out.stdout).lines().count())
    };

    host.run("ip", &["link", "add", "brop", "type", "bridge"], &[])?;
    host.run("ip", &["link", "set", "brop", "up"], &[])?;
    cli_ok(
        agent,
        &[
            "network",
            "create",
            "--subnet=10.9.9.0/24",
            "-o",
            "bridge=brop",
            "opnet",
        ],
    )?;
    run_on("opnet", "o1")?;
    run_on("opnet", "o2")?;
    assert_eq!(
        ports_of("brop")?,
        2,
        "both containers are on the operator's bridge"
    );
    let o2 = inet(agent, "o2", "eth0")?.context("o2 has no address")?;
    let o2 = o2.split('/').next().unwrap_or_default().to_string();
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "o1", &o2)
    })
    .context("o1 never reached o2 over the operator's bridge")?;
    cli_ok(agent, &["rm", "-f", "o1", "o2"])?;
    cli_ok(agent, &["network", "rm", "opnet"])?;
    ensure!(
        links(&cluster, 0)?.contains(&"brop".to_string()),
        "the operator's bridge outlives the network"
    );
    assert_eq!(ports_of("brop")?, 0, "the containers' veths went with them");

    // Busybox's ip shows no link details: the host's, in the container's namespace.
    let mode_of = |name: &str| -> Result<String> {
        let shown = inspect(agent, name)?;
        let pid = shown["state"]["pid"].as_u64().context("no pid")?;
        let out = std::process::Command::new("nsenter")
            .args([
                "-t",
                &pid.to_string(),
                "-n",
                "ip",
                "-d",
                "link",
                "show",
                "eth0",
            ])
            .output()
            .context("running nsenter")?;
        let shown = text(&out.stdout);
        // "... macvlan mode private ..."
        let words: Vec<&str> = shown.split_whitespace().collect();
        Ok(words
            .windows(3)
            .find(|w| w[0] == "macvlan" && w[1] == "mode")
            .map(|w| w[2].to_string())
            .unwrap_or_default())
    };
    for (mode, reach) in [("bridge", true), ("private", false)] {
        let network = format!("m{mode}");
        cli_ok(
            agent,
            &[
                "network",
                "create",
                "-d",
                "macvlan",
                "--subnet=172.26.0.0/24",
                "-o",
                "parent=eth0",
                "-o",
                &format!("macvlan_mode={mode}"),
                &network,
            ],
        )?;
        run_on(&network, "a")?;
        run_on(&network, "b")?;
        assert_eq!(mode_of("a")?, mode, "{network}");
        let b = inet(agent, "b", "eth0")?.context("b has no address")?;
        let b = b.split('/').next().unwrap_or_default().to_string();
        if reach {
            wait_until(CONVERGE, Duration::from_millis(200), || {
                pings(agent, "a", &b)
            })
            .context("bridge mode: a never reached b")?;
        } else {
            // Three tries of a second each: a private macvlan hears no sibling.
            for _ in 0..3 {
                ensure!(!pings(agent, "a", &b)?, "private mode: a reached b");
            }
        }
        cli_ok(agent, &["rm", "-f", "a", "b"])?;
        cli_ok(agent, &["network", "rm", &network])?;
    }
    Ok(())
}

/// An OVS port of an ovs network whose container no longer exists (a crash
/// between removing the container and its port leaves one) is removed at
/// the agent's start, with its host end; a living container's stays.
#[test]
fn the_ovs_ports_of_containers_that_are_gone_go_at_the_agent_s_start() -> Result<()> {
    let WithOvs {
        _socket_dir,
        mut cluster,
        ovs,
        flag: _,
    } = cluster_with_ovs("nq", 120)?;
    let agent = &cluster.agents[0];
    cli_ok(
        agent,
        &[
            "network",
            "create",
            "-d",
            "ovs",
            "--subnet",
            "10.7.6.0/24",
            "sw",
        ],
    )?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "kept",
            "--network",
            "sw",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let ports = |ovs: &Ovs| -> Result<String> {
        ovs.vsctl(&["--columns=name,external_ids", "list", "Port"])
    };
    let before = ports(&ovs)?;
    let kept_port = before
        .lines()
        .zip(before.lines().skip(1))
        .find(|(_, ids)| ids.contains("container:"))
        .and_then(|(name, _)| {
            name.split('"')
                .nth(1)
                .or_else(|| name.split_whitespace().last())
        })
        .context(format!("no port of the running container: {before}"))?
        .to_string();
    // What a crash leaves: a port on the network's bridge, with its host
    // end, for a container this agent does not have.
    let bridge = ovs.vsctl(&["port-to-br", &kept_port])?.trim().to_string();
    let host = cluster.hosts[0].netns.name().to_string();
    tartan_tests::netns::ip(&[
        "-n", &host, "link", "add", "orph0", "type", "veth", "peer", "name", "orph0p",
    ])?;
    ovs.vsctl(&[
        "add-port",
        &bridge,
        "orph0",
        "--",
        "set",
        "Port",
        "orph0",
        "external_ids:tartan-owner=container:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ])?;

    cluster.agents[0].kill()?;
    cluster.agents[0].restart()?;
    let agent = &cluster.agents[0];
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(!ports(&ovs)?.contains("orph0"))
    })
    .with_context(|| agent.log_tail(20))?;
    ensure!(
        ports(&ovs)?.contains(&kept_port),
        "the running container's port stays: {}",
        ports(&ovs)?
    );
    ensure!(
        !links(&cluster, 0)?.iter().any(|l| l.starts_with("orph0")),
        "the orphan's host end went with it"
    );
    Ok(())
}
