//! `tartan agent --no-etcd` (peer mode): an agent with no store at all. No
//! etcd runs in these tests; each agent lives in a host namespace of its
//! own underlay.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_tests::agent::{tartan_bin, Agent, AgentConfig};
use tartan_tests::cli::{cli_ok, cli_within, finish, import_busybox, text, VXLAN};
use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::containers::{inspect, refusal};
use tartan_tests::netns::{Host, Netns, Underlay};
use tartan_tests::wait::wait_until;

/// How long the agent may take to re-apply an attachment after a restart.
const FOLLOW: Duration = Duration::from_secs(10);
/// What a refused CLI command may take: it asks, it is told no.
const ANSWER: Duration = Duration::from_secs(10);

const NO_STORE: &str = "named networks are kept in etcd; this agent runs with --no-etcd";
const NO_OVERLAY: &str = "the overlay needs etcd (a subnet lease): this agent runs with --no-etcd";

/// An underlay `10.<octet>.0.0/24` with one host, and a peer-mode agent in it.
struct PeerHost {
    // Field order is drop order: the agent first, then the namespaces.
    agent: Agent,
    _no_ovs: tempfile::TempDir,
    host: Host,
    _underlay: Underlay,
}

fn peer_host(name: &str, octet: u8, env: &[(&str, &str)]) -> Result<PeerHost> {
    let underlay = Underlay::create(name, (Ipv4Addr::new(10, octet, 0, 0), 24))?;
    let host = underlay.add_host("h0")?;
    // No OVS for this agent: a machine's own is never asked.
    let no_ovs = tempfile::Builder::new()
        .prefix("tt-noovs-")
        .tempdir_in("/tmp")?;
    let agent = Agent::start(AgentConfig {
        peer_mode: true,
        netns: Some(host.netns.name().to_string()),
        extra_args: vec![format!("--ovsdb=unix:{}/db.sock", no_ovs.path().display())],
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..AgentConfig::default()
    })?;
    agent.wait_ready(READY)?;
    Ok(PeerHost {
        agent,
        _no_ovs: no_ovs,
        host,
        _underlay: underlay,
    })
}

/// [`refusal`] of a CLI run bounded by `ANSWER`: a CLI that hangs instead
/// of refusing fails the test rather than stalling it.
fn refused(agent: &Agent, args: &[&str]) -> Result<String> {
    refusal(args, &cli_within(agent, args, ANSWER)?)
}

fn network_names(agent: &Agent) -> Result<Vec<String>> {
    let table = cli_ok(agent, &["network", "ls"])?;
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1).map(String::from))
        .collect())
}

/// `containers::exec` that must succeed: its stdout.
fn exec(agent: &Agent, name: &str, command: &[&str]) -> Result<String> {
    let mut args = vec!["exec", name];
    args.extend_from_slice(command);
    cli_ok(agent, &args)
}

/// The IPv4 addresses inside a running container's network namespace.
fn container_addresses(agent: &Agent, name: &str) -> Result<String> {
    exec(agent, name, &["ip", "-o", "-4", "addr"])
}

#[test]
fn a_peer_mode_agent_is_ready_without_etcd_and_says_so() -> Result<()> {
    // etcd settings in the environment (a shared environment file) are
    // ignored in peer mode: with them taken, the agent would wait for an
    // etcd that does not exist and never be ready.
    // Stand in for systemd: Type=notify services get READY=1 on $NOTIFY_SOCKET.
    let notify_dir = tempfile::tempdir()?;
    let notify_path = notify_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(READY))?;
    let peer = peer_host(
        "pma",
        170,
        &[
            ("TARTAN_ETCD_PREFIX", "/coreos.com/network"),
            ("FLANNELD_ETCD_ENDPOINTS", "http://10.170.0.254:2379"),
            ("NOTIFY_SOCKET", &notify_path.to_string_lossy()),
        ],
    )?;
    let agent = &peer.agent;
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).context("no READY=1 from the agent")?;
    ensure!(&buf[..n] == b"READY=1", "{:?}", &buf[..n]);
    ensure!(
        !agent.subnet_file().exists(),
        "peer mode writes no subnet file"
    );

    let table = cli_ok(agent, &["status"])?;
    ensure!(
        table.starts_with("store:    none (peer mode, --no-etcd)"),
        "status says the mode: {table}"
    );
    ensure!(!table.contains("etcd:"), "no etcd probe: {table}");
    let json = agent.status_json()?;
    ensure!(json["store"] == "none", "status -o json: {json}");
    ensure!(json.get("node").is_none(), "no lease: {json}");

    // Only the predefined networks that work without a lease.
    let names = network_names(agent)?;
    ensure!(names == ["host", "none"], "network ls: {names:?}");
    let said = refused(agent, &["network", "create", "net1"])?;
    ensure!(said.contains(NO_STORE), "network create: {said}");
    let said = refused(
        agent,
        &["network", "create", "--subnet", "10.99.0.0/24", "net2"],
    )?;
    ensure!(said.contains(NO_STORE), "network create --subnet: {said}");
    ensure!(
        network_names(agent)? == ["host", "none"],
        "nothing was stored"
    );
    for args in [
        &["network", "inspect", "net1"][..],
        &["network", "rm", "net1"],
    ] {
        let said = refused(agent, args)?;
        ensure!(said.contains(NO_STORE), "{args:?}: {said}");
    }
    let said = refused(agent, &["network", "inspect", "overlay"])?;
    ensure!(said.contains(NO_OVERLAY), "network inspect overlay: {said}");

    // With no cluster network, the weave form is the L2 segment's.
    let target = Netns::create("pmat")?;
    let printed = cli_ok(agent, &["attach", "10.170.5.2/24", target.name()])?;
    ensure!(
        printed.trim() == "10.170.5.2",
        "weave-form attach: {printed}"
    );
    let ethwe = text(
        &target
            .exec("ip", &["-o", "-4", "addr", "show", "ethwe"])?
            .stdout,
    );
    ensure!(ethwe.contains("10.170.5.2/24"), "on the segment: {ethwe}");
    cli_ok(agent, &["detach", target.name()])?;

    // A second agent in the namespace is refused, naming the first.
    let mut second = Agent::start(AgentConfig {
        peer_mode: true,
        netns: Some(peer.host.netns.name().to_string()),
        ..AgentConfig::default()
    })?;
    let status = second.wait_exit(READY)?;
    ensure!(!status.success(), "the second agent exited with {status}");
    ensure!(
        second
            .log()
            .contains("another tartan agent runs in this network namespace"),
        "the second agent says why: {}",
        second.log_tail(5)
    );
    Ok(())
}

#[test]
fn containers_run_without_a_network_by_default_and_exec_works() -> Result<()> {
    let peer = peer_host("pmc", 171, &[])?;
    let agent = &peer.agent;
    import_busybox(agent)?;

    // No --net: loopback alone (no lease, no overlay).
    cli_ok(
        agent,
        &["run", "-d", "--name", "c1", "busybox", "sleep", "1000"],
    )?;
    let c1 = inspect(agent, "c1")?;
    ensure!(c1["network"]["mode"] == "none", "c1's network: {c1}");
    let links = exec(agent, "c1", &["ip", "-o", "link"])?;
    ensure!(
        links.lines().count() == 1 && links.contains("lo:"),
        "c1 has loopback alone: {links}"
    );

    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "c2", "--net", "none", "busybox", "sleep", "1000",
        ],
    )?;
    ensure!(
        exec(agent, "c2", &["echo", "hello"])?.trim() == "hello",
        "exec in c2"
    );
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "c3",
            "--net",
            "container:c1",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "c4", "--net", "host", "busybox", "sleep", "1000",
        ],
    )?;
    let host_links = exec(agent, "c4", &["ip", "-o", "link"])?;
    ensure!(
        host_links.contains("eth0"),
        "c4 shares the host's network: {host_links}"
    );

    // The overlay, by either name, is refused in one line (Docker's 125).
    for net in ["overlay", "bridge"] {
        let out = agent.cli(&[
            "run", "-d", "--name", "c5", "--net", net, "busybox", "sleep", "1000",
        ])?;
        ensure!(out.status.code() == Some(125), "--net {net}: {out:?}");
        let said = text(&out.stderr);
        ensure!(
            said.contains(NO_OVERLAY) && said.trim_end().lines().count() == 1,
            "--net {net}: {said}"
        );
    }
    // A named network needs the store.
    let out = agent.cli(&[
        "run", "-d", "--name", "c5", "--net", "net1", "busybox", "sleep", "1000",
    ])?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains(NO_STORE),
        "--net net1: {out:?}"
    );
    let said = refused(agent, &["network", "connect", "net1", "c1"])?;
    ensure!(said.contains(NO_STORE), "network connect: {said}");

    // A foreground run streams its output; logs has it afterwards.
    let said = cli_ok(
        agent,
        &["run", "--name", "greet", "busybox", "echo", "hello"],
    )?;
    ensure!(said == "hello\n", "run printed {said:?}");
    let logged = cli_ok(agent, &["logs", "greet"])?;
    ensure!(logged == "hello\n", "logs printed {logged:?}");
    cli_ok(agent, &["rm", "greet"])?;

    let ps = cli_ok(agent, &["ps", "-q"])?;
    ensure!(ps.lines().count() == 4, "four containers run: {ps}");
    cli_ok(agent, &["stop", "-t", "0", "c2"])?;
    cli_ok(agent, &["rm", "c2"])?;
    cli_ok(agent, &["rm", "-f", "c3", "c4", "c1"])?;
    ensure!(
        cli_ok(agent, &["ps", "-aq"])?.trim().is_empty(),
        "all removed"
    );
    Ok(())
}

#[test]
fn a_pipework_attachment_survives_an_agent_restart_and_reset_removes_it() -> Result<()> {
    let mut peer = peer_host("pmp", 172, &[])?;
    import_busybox(&peer.agent)?;
    cli_ok(
        &peer.agent,
        &["run", "-d", "--name", "web", "busybox", "sleep", "1000"],
    )?;
    cli_ok(&peer.agent, &["attach", "br1", "web", "192.168.172.10/24"])?;
    let host = peer.host.netns.name().to_string();
    tartan_tests::netns::ip(&["-n", &host, "addr", "add", "192.168.172.1/24", "dev", "br1"])?;
    ensure!(
        peer.host.netns.reaches("192.168.172.10")?,
        "the host reaches web on br1"
    );

    // A clean stop and start: the attachment stays, and is listed.
    peer.agent.terminate()?;
    peer.agent.restart()?;
    peer.agent.wait_ready(READY)?;
    let listed = cli_ok(&peer.agent, &["attachments"])?;
    ensure!(
        listed.contains("192.168.172.10/24") && listed.contains("br1"),
        "attachments: {listed}"
    );
    ensure!(
        peer.host.netns.reaches("192.168.172.10")?,
        "web is reachable after a restart"
    );

    // A crash, and the interface removed while no agent ran: put back.
    let pid = inspect(&peer.agent, "web")?["state"]["pid"]
        .as_u64()
        .context("web has no pid")?;
    peer.agent.kill()?;
    let removed = std::process::Command::new("nsenter")
        .args([
            &format!("--net=/proc/{pid}/ns/net"),
            "ip",
            "link",
            "del",
            "eth1",
        ])
        .status()
        .context("running nsenter (util-linux)")?;
    ensure!(removed.success(), "removing eth1 in web");
    peer.agent.restart()?;
    peer.agent.wait_ready(READY)?;
    wait_until(FOLLOW, Duration::from_millis(100), || {
        Ok(container_addresses(&peer.agent, "web")?.contains("192.168.172.10/24"))
    })
    .context("the attachment is made again")?;

    // reset needs no etcd: it clears a peer-mode agent's host.
    peer.agent.terminate()?;
    let out = peer
        .host
        .netns
        .command(&tartan_bin()?.display().to_string())
        .arg("reset")
        .arg("-f")
        .args(["--state-dir", &peer.agent.state_dir().display().to_string()])
        .args([
            "--subnet-file",
            &peer.agent.subnet_file().display().to_string(),
        ])
        .args([
            "--api-socket",
            &peer.agent.api_socket().display().to_string(),
        ])
        .arg(format!(
            "--ovsdb=unix:{}/db.sock",
            peer._no_ovs.path().display()
        ))
        .output()
        .context("running tartan reset")?;
    ensure!(
        out.status.success(),
        "reset: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let links = text(&peer.host.netns.exec("ip", &["-o", "link"])?.stdout);
    ensure!(!links.contains("br1"), "reset removed br1: {links}");
    Ok(())
}

#[test]
fn no_etcd_with_an_etcd_flag_is_refused() -> Result<()> {
    // Refused before the agent touches anything; in a namespace all the same.
    let ns = Netns::create("pmr")?;
    let dir = tempfile::tempdir()?;
    let agent = ns
        .command(&tartan_bin()?.display().to_string())
        .args([
            "agent",
            "--no-etcd",
            "--etcd-endpoints",
            "http://10.173.0.254:2379",
        ])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--api-socket")
        .arg(dir.path().join("tartan.sock"))
        .env_remove("TARTAN_NO_ETCD")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running tartan agent")?;
    let out = finish(agent, ANSWER)?;
    let said = text(&out.stderr);
    ensure!(out.status.code() == Some(2), "exit code: {out:?}");
    ensure!(
        said == "tartan: --no-etcd runs the agent without etcd: --etcd-endpoints cannot be given with it\n",
        "{said}"
    );
    ensure!(!dir.path().join("state").exists(), "nothing was made");
    Ok(())
}

#[test]
fn a_host_moved_to_peer_mode_keeps_its_containers_but_not_the_overlay() -> Result<()> {
    let no_ovs = tempfile::Builder::new()
        .prefix("tt-noovs-")
        .tempdir_in("/tmp")?;
    let flag = format!("--ovsdb=unix:{}/db.sock", no_ovs.path().display());
    let mut cluster = Cluster::start_with("pmm", 174, VXLAN, 1, &[&flag])?;
    import_busybox(&cluster.agents[0])?;
    cli_ok(
        &cluster.agents[0],
        &[
            "run",
            "-d",
            "--name",
            "onoverlay",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    cli_ok(&cluster.agents[0], &["stop", "-t", "0", "onoverlay"])?;
    cli_ok(
        &cluster.agents[0],
        &[
            "run", "-d", "--name", "onnone", "--net", "none", "busybox", "sleep", "1000",
        ],
    )?;

    // The same host, its state kept, restarted without etcd.
    let agent = &mut cluster.agents[0];
    agent.terminate()?;
    agent.config_mut().peer_mode = true;
    agent.restart()?;
    agent.wait_ready(READY)?;
    ensure!(agent.status_json()?["store"] == "none", "peer mode");
    let running = cli_ok(agent, &["ps"])?;
    ensure!(running.contains("onnone"), "onnone still runs: {running}");
    ensure!(
        exec(agent, "onnone", &["echo", "still here"])?.trim() == "still here",
        "exec in onnone"
    );
    // Per container, then how many failed, as Docker's `start` says it.
    let out = agent.cli(&["start", "onoverlay"])?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains(NO_OVERLAY),
        "start onoverlay: {out:?}"
    );
    cli_ok(agent, &["rm", "-f", "onoverlay", "onnone"])?;
    Ok(())
}
