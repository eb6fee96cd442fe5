//! The bundled runtime end to end: busybox containers started by agents on
//! simulated hosts, reaching each other over the overlay, surviving agent
//! restarts, and the Docker-style commands around them.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tartan_runtime::container::ContainerDir;
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, finish, import_busybox, text, under_terminal, VXLAN};
use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::containers::{exec, inspect, pings};
use tartan_tests::rootfs::{busybox_rootfs, tarball};
use tartan_tests::wait::wait_until;

const CONVERGE: Duration = Duration::from_secs(20);

fn address_of(agent: &Agent, name: &str) -> Result<Ipv4Addr> {
    let info = inspect(agent, name)?;
    info["network"]["ip_address"]
        .as_str()
        .with_context(|| format!("{name} has no address: {info}"))?
        .parse()
        .context("parsing the address")
}

/// Host ends of container interfaces in the agent's host namespace.
fn container_links(cluster: &Cluster, host: usize) -> Result<usize> {
    let out = cluster.hosts[host]
        .netns
        .exec("ip", &["-o", "link", "show"])?;
    Ok(text(&out.stdout)
        .lines()
        .filter(|l| l.split(": ").nth(1).is_some_and(|n| n.starts_with("vt")))
        .count())
}

fn container_dirs(agent: &Agent) -> usize {
    std::fs::read_dir(agent.state_dir().join("containers"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn containers_on_two_hosts_reach_each_other_and_outlive_their_agent() -> Result<()> {
    let mut cluster = Cluster::start("ct", 225, VXLAN, 2)?;
    import_busybox(&cluster.agents[0])?;
    import_busybox(&cluster.agents[1])?;
    let id = cli_ok(
        &cluster.agents[0],
        &["run", "-d", "--name", "web", "busybox", "sleep", "1000"],
    )?;
    ensure!(id.trim().len() == 64, "run -d prints the id: {id}");
    cli_ok(
        &cluster.agents[1],
        &[
            "run",
            "-d",
            "--name",
            "db",
            "--hostname",
            "dbhost",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let web = address_of(&cluster.agents[0], "web")?;
    let db = address_of(&cluster.agents[1], "db")?;
    let subnet0 = cluster.agents[0].subnet()?;
    ensure!(
        tartan_tests::agent::network_of(&format!("{web}/24"))? == subnet0,
        "{web} is in host 0's subnet {subnet0}"
    );
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(&cluster.agents[0], "web", &db.to_string())
    })
    .with_context(|| format!("web ({web}) never reached db ({db})"))?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(&cluster.agents[1], "db", &web.to_string())
    })
    .context("db reaches web")?;

    // The container's view of itself.
    let out = exec(
        &cluster.agents[1],
        "db",
        &["sh", "-c", "hostname; cat /etc/hostname; grep dbhost /etc/hosts; cat /sys/class/net/eth0/mtu; echo $$"],
    )?;
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    ensure!(out.status.success(), "exec: {}", text(&out.stderr));
    assert_eq!(lines[0], "dbhost");
    assert_eq!(lines[1], "dbhost");
    assert_eq!(lines[2], format!("{db}\tdbhost db"));
    assert_eq!(lines[3], "1450", "eth0 follows the vxlan MTU");
    ensure!(lines[4] != "1", "exec runs beside PID 1, not as it");

    // Names and id prefixes both work.
    let by_prefix = inspect(&cluster.agents[0], &id.trim()[..6])?;
    assert_eq!(by_prefix["name"], "web");
    assert_eq!(by_prefix["state"]["status"], "running");

    // kill -9 the agent: the container carries on, reachable.
    let links_before = container_links(&cluster, 0)?;
    cluster.agents[0].kill()?;
    // What a crash between mkdir and the first record leaves: the next start clears it.
    let half_made = cluster.agents[0]
        .state_dir()
        .join("containers/0123456789ab");
    std::fs::create_dir_all(half_made.join("upper"))?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(&cluster.agents[1], "db", &web.to_string())
    })
    .context("web answers with its agent dead")?;
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    let ps = cli_ok(&cluster.agents[0], &["ps"])?;
    ensure!(
        ps.contains("web") && ps.contains("Up "),
        "ps after the restart:\n{ps}"
    );
    assert_eq!(address_of(&cluster.agents[0], "web")?, web, "same address");
    assert_eq!(container_links(&cluster, 0)?, links_before);
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(&cluster.agents[0], "web", &db.to_string())
    })
    .context("exec works after the restart")?;

    // stop: sleep as PID 1 ignores SIGTERM, so SIGKILL after -t.
    cli_ok(&cluster.agents[0], &["stop", "-t", "1", "web"])?;
    let stopped = inspect(&cluster.agents[0], "web")?;
    assert_eq!(stopped["state"]["status"], "exited");
    assert_eq!(stopped["state"]["exit_code"], 137);
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        Ok(container_links(&cluster, 0)? == links_before - 1)
    })
    .context("a stopped container has no interface")?;
    cli_ok(&cluster.agents[0], &["start", "web"])?;
    assert_eq!(
        address_of(&cluster.agents[0], "web")?,
        web,
        "start keeps the address"
    );
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(&cluster.agents[1], "db", &web.to_string())
    })?;
    cli_ok(&cluster.agents[0], &["restart", "-t", "0", "web"])?;
    assert_eq!(
        inspect(&cluster.agents[0], "web")?["state"]["status"],
        "running"
    );

    // rm refuses a running container; rm -f frees the interface and the address.
    let refused = cluster.agents[0].cli(&["rm", "web"])?;
    ensure!(
        !refused.status.success(),
        "rm of a running container is refused"
    );
    let id = inspect(&cluster.agents[0], "web")?["id"]
        .as_str()
        .context("no id")?
        .to_string();
    ensure!(
        text(&refused.stderr).contains(&format!("You cannot remove a running container {id}. Stop the container before attempting removal or force remove")),
        "{}",
        text(&refused.stderr)
    );
    cli_ok(&cluster.agents[0], &["rm", "-f", "web"])?;
    // The kernel removes the interface with the namespace, a moment after the container dies.
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        Ok(container_links(&cluster, 0)? == links_before - 1)
    })
    .context("rm -f leaves no interface")?;
    assert_eq!(container_dirs(&cluster.agents[0]), 0);
    let again = cli_ok(
        &cluster.agents[0],
        &[
            "run",
            "-d",
            "--name",
            "web2",
            "--ip",
            &web.to_string(),
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    ensure!(!again.is_empty(), "the address is free again");
    assert_eq!(address_of(&cluster.agents[0], "web2")?, web);
    Ok(())
}

/// A process's environment, one `KEY=VALUE` per entry.
fn environ(pid: u64) -> Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .with_context(|| format!("reading the environment of {pid}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|entry| !entry.is_empty())
        .map(|entry| String::from_utf8_lossy(entry).into_owned())
        .collect())
}

/// The agent runs as a systemd `Type=notify` service: the notify socket,
/// socket activation and watchdog variables are its own, and neither a
/// container's supervisor nor the container inherits them.
#[test]
fn containers_inherit_none_of_the_agents_systemd_variables() -> Result<()> {
    let notify_dir = tempfile::tempdir()?;
    let notify_path = notify_dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(READY))?;
    let service_env = [
        ("NOTIFY_SOCKET", notify_path.to_string_lossy().into_owned()),
        ("LISTEN_FDS", "0".to_string()),
        ("LISTEN_PID", "1".to_string()),
        ("WATCHDOG_USEC", "60000000".to_string()),
        ("WATCHDOG_PID", "1".to_string()),
    ];
    let cluster = Cluster::start_configured("cn", 224, VXLAN, 1, &|agent| {
        for (key, value) in &service_env {
            agent.env.push((key.to_string(), value.clone()));
        }
    })?;
    let agent = &cluster.agents[0];
    // The agent itself has the socket: systemd hears from it.
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).context("no READY=1 from the agent")?;
    assert_eq!(&buf[..n], b"READY=1");

    import_busybox(agent)?;
    let id = cli_ok(
        agent,
        &["run", "-d", "--name", "quiet", "busybox", "sleep", "1000"],
    )?;
    let id = id.trim();
    let pid = inspect(agent, "quiet")?["state"]["pid"]
        .as_u64()
        .context("inspect shows no pid")?;
    let state_path = agent
        .state_dir()
        .join("containers")
        .join(&id[..12.min(id.len())])
        .join("state.json");
    let state: Value = serde_json::from_slice(
        &std::fs::read(&state_path).with_context(|| format!("reading {}", state_path.display()))?,
    )?;
    let shim_pid = state["shim_pid"]
        .as_u64()
        .with_context(|| format!("no shim_pid in {state}"))?;

    let shim_env = environ(shim_pid)?;
    // What the agent was given otherwise reaches the supervisor: the right process was read.
    ensure!(
        shim_env.iter().any(|e| e.starts_with("TARTAN_LOG=")),
        "the supervisor's environment lacks the agent's TARTAN_LOG: {shim_env:?}"
    );
    let container_env = environ(pid)?;
    ensure!(
        container_env.iter().any(|e| e.starts_with("HOSTNAME=")),
        "the container's environment: {container_env:?}"
    );
    for (who, env) in [("supervisor", &shim_env), ("container", &container_env)] {
        for (key, _) in &service_env {
            ensure!(
                !env.iter().any(|e| e.starts_with(&format!("{key}="))),
                "the {who} inherited {key} from the agent"
            );
        }
    }
    Ok(())
}

/// A process of the test's own, killed and reaped however the test ends.
struct Stranger(Child);

impl Drop for Stranger {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// A container whose recorded pid has passed to an unrelated process (its
/// first process ended and the pid was reused while its supervisor still
/// runs): `stop` and `rm -f` must not signal that process.
#[test]
fn stop_and_rm_never_signal_a_process_that_took_the_containers_pid() -> Result<()> {
    let cluster = Cluster::start("cr", 223, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    let id = cli_ok(
        agent,
        &[
            "run", "-d", "--name", "recycled", "busybox", "sleep", "1000",
        ],
    )?;
    let id = id.trim();
    let dir = ContainerDir::new(agent.state_dir().join("containers").join(&id[..12]));
    let mut stranger = Stranger(
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .context("starting sleep")?,
    );
    // The record rewritten as the supervisor writes it (a whole file, renamed in).
    let mut state = dir
        .read_state()
        .context("the container has no state.json")?;
    state.pid = stranger.0.id();
    let staging = dir.state_path().with_extension("json.tmp");
    std::fs::write(&staging, serde_json::to_vec(&state)?)?;
    std::fs::rename(&staging, dir.state_path())?;

    for (args, said) in [
        (&["stop", "-t", "1", "recycled"][..], "did not stop"),
        (&["rm", "-f", "recycled"], "did not die"),
    ] {
        // Bounded by the agent: the timeout given, then 10 s for the supervisor.
        let out = agent.cli(args)?;
        ensure!(
            stranger.0.try_wait()?.is_none(),
            "tartan {args:?} signalled pid {}, which is not the container's",
            state.pid
        );
        // Nothing was signalled, so the container still runs and says why it did not stop.
        ensure!(!out.status.success(), "tartan {args:?} succeeded");
        ensure!(
            text(&out.stderr).contains(said),
            "tartan {args:?}: {}",
            text(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn foreground_runs_stream_output_take_input_and_exit_with_the_code() -> Result<()> {
    let cluster = Cluster::start("cf", 226, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    let out = agent.cli(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ])?;
    assert_eq!(text(&out.stdout), "out\n", "{out:?}");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(
        out.status.code(),
        Some(3),
        "run exits with the container's code"
    );
    ensure!(
        cli_ok(agent, &["ps", "-a", "-q"])?.trim().is_empty(),
        "--rm removed it"
    );
    assert_eq!(container_dirs(agent), 0);
    wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        Ok(container_links(&cluster, 0)? == 0)
    })
    .context("--rm leaves no interface")?;
    let missing = agent.cli(&["run", "--rm", "busybox", "/no/such/program"])?;
    assert_eq!(
        missing.status.code(),
        Some(127),
        "{}",
        text(&missing.stderr)
    );

    // -i: standard input reaches the container, and its end ends the command.
    let mut child = agent
        .cli_command(&["run", "-i", "--rm", "busybox", "tr", "a-z", "A-Z"])?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"hello tartan\n")?;
    let out = finish(child, Duration::from_secs(20))?;
    assert_eq!(text(&out.stdout), "HELLO TARTAN\n", "{}", text(&out.stderr));
    ensure!(out.status.success());

    // -t: a terminal inside, under a terminal outside (script gives us one).
    let out = under_terminal(
        &cluster,
        agent,
        "run -t --rm busybox sh -c 'test -t 0 && test -t 1 && echo tty-yes; tty >/dev/null; exit 4'",
    )?;
    ensure!(
        text(&out.stdout).contains("tty-yes\r\n"),
        "a terminal, with its line discipline: {:?} {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(4));

    // logs, and logs -f that ends when the container does.
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "chatty",
            "busybox",
            "sh",
            "-c",
            "echo one; echo two >&2; exec sleep 1000",
        ],
    )?;
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(cli_ok(agent, &["logs", "chatty"])?.contains("one"))
    })?;
    let logs = agent.cli(&["logs", "chatty"])?;
    assert_eq!(text(&logs.stdout), "one\n");
    assert_eq!(text(&logs.stderr), "two\n");
    let follower = agent
        .cli_command(&["logs", "-f", "chatty"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    cli_ok(agent, &["stop", "-t", "1", "chatty"])?;
    let followed = finish(follower, Duration::from_secs(10))?;
    assert_eq!(text(&followed.stdout), "one\n");

    // exec: exit codes, and a stopped container refuses.
    cli_ok(agent, &["start", "chatty"])?;
    assert_eq!(
        exec(agent, "chatty", &["sh", "-c", "exit 7"])?
            .status
            .code(),
        Some(7)
    );
    assert_eq!(
        exec(agent, "chatty", &["/no/such"])?.status.code(),
        Some(127)
    );
    let mut child = agent
        .cli_command(&["exec", "-i", "chatty", "cat"])?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"through exec\n")?;
    assert_eq!(
        text(&finish(child, Duration::from_secs(10))?.stdout),
        "through exec\n"
    );
    // exec -t: a terminal of its own, under ours.
    let out = under_terminal(
        &cluster,
        agent,
        "exec -t chatty sh -c 'test -t 0 && test -t 1 && echo exec-tty'",
    )?;
    ensure!(
        text(&out.stdout).contains("exec-tty\r\n"),
        "exec -t: {:?} {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    cli_ok(agent, &["stop", "-t", "0", "chatty"])?;
    let refused = exec(agent, "chatty", &["true"])?;
    ensure!(
        !refused.status.success() && text(&refused.stderr).contains("not running"),
        "{}",
        text(&refused.stderr)
    );

    // export: the image plus what the container changed, deletions included.
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "ex",
            "busybox",
            "sh",
            "-c",
            "touch /made; rm /bin/tty; exec sleep 1000",
        ],
    )?;
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(exec(agent, "ex", &["test", "-e", "/made"])?
            .status
            .success())
    })?;
    let dir = tempfile::tempdir()?;
    let tarball = dir.path().join("ex.tar");
    cli_ok(
        agent,
        &["export", "-o", &tarball.display().to_string(), "ex"],
    )?;
    let listing = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tarball)
        .output()?;
    let listing = text(&listing.stdout);
    let entries: Vec<&str> = listing
        .lines()
        .map(|l| l.trim_start_matches("./"))
        .collect();
    for wanted in ["made", "bin/busybox", "etc/hosts"] {
        ensure!(
            entries.contains(&wanted),
            "{wanted} in the export: {entries:?}"
        );
    }
    ensure!(
        !entries.contains(&"bin/tty"),
        "a deleted file stays deleted: {entries:?}"
    );

    // An image in use stays.
    let rmi = agent.cli(&["rmi", "busybox"])?;
    ensure!(
        !rmi.status.success() && text(&rmi.stderr).contains("in use"),
        "{}",
        text(&rmi.stderr)
    );

    // The other network modes.
    let none = cli_ok(
        agent,
        &[
            "run", "--rm", "--net", "none", "busybox", "ip", "-o", "link",
        ],
    )?;
    assert_eq!(none.lines().count(), 1, "only loopback: {none}");
    ensure!(none.contains("lo:") && none.contains("UP"), "{none}");
    let host = cli_ok(
        agent,
        &[
            "run", "--rm", "--net", "host", "busybox", "ip", "-o", "-4", "addr",
        ],
    )?;
    ensure!(
        host.contains(&cluster.hosts[0].ip.to_string()),
        "the host's addresses: {host}"
    );
    let ex_address = address_of(agent, "ex")?;
    let shared = cli_ok(
        agent,
        &[
            "run",
            "--rm",
            "--net",
            "container:ex",
            "busybox",
            "ip",
            "-o",
            "-4",
            "addr",
            "show",
            "eth0",
        ],
    )?;
    ensure!(
        shared.contains(&ex_address.to_string()),
        "ex's network: {shared}"
    );
    Ok(())
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing_behind() -> Result<()> {
    let cluster = Cluster::start("cb", 227, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(
        agent,
        &["run", "-d", "--name", "taken", "busybox", "sleep", "1000"],
    )?;
    let taken = address_of(agent, "taken")?;
    let outside = "10.99.0.5";
    let taken_text = taken.to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["nosuchimage".into(), "true".into()], "no such image"),
        (
            vec![
                "--name".into(),
                "taken".into(),
                "busybox".into(),
                "true".into(),
            ],
            "already in use",
        ),
        (
            vec![
                "--name".into(),
                "bad/name".into(),
                "busybox".into(),
                "true".into(),
            ],
            "invalid container name",
        ),
        (
            vec![
                "--ip".into(),
                outside.into(),
                "busybox".into(),
                "true".into(),
            ],
            "outside the node subnet",
        ),
        (
            vec![
                "--ip".into(),
                taken.to_string(),
                "busybox".into(),
                "true".into(),
            ],
            &taken_text,
        ),
        (
            vec![
                "--ip".into(),
                "banana".into(),
                "busybox".into(),
                "true".into(),
            ],
            "not an IPv4 address",
        ),
        (
            vec![
                "--net".into(),
                "macvlan".into(),
                "busybox".into(),
                "true".into(),
            ],
            "network macvlan not found",
        ),
        (
            vec![
                "--net".into(),
                "container:ghost".into(),
                "busybox".into(),
                "true".into(),
            ],
            "no such container",
        ),
        (
            vec![
                "--net".into(),
                "host".into(),
                "--ip".into(),
                taken.to_string(),
                "busybox".into(),
                "true".into(),
            ],
            "--ip needs --net overlay",
        ),
        (
            vec!["-e".into(), "=x".into(), "busybox".into(), "true".into()],
            "invalid environment entry",
        ),
        (
            vec![
                "-w".into(),
                "relative".into(),
                "busybox".into(),
                "true".into(),
            ],
            "not absolute",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["run", "-d"];
        full.extend(args.iter().map(String::as_str));
        let out = agent.cli(&full)?;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{full:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{full:?}: one line: {stderr}");
        ensure!(
            stderr.contains(needle),
            "{full:?}: {stderr} should say {needle:?}"
        );
    }
    for (args, needle) in [
        (vec!["stop", "ghost"], "no such container"),
        (vec!["rm", "ghost"], "no such container"),
        (vec!["logs", "ghost"], "no such container"),
        (vec!["exec", "ghost", "true"], "no such container"),
        (vec!["stop", "-t", "soon", "taken"], "invalid value"),
    ] {
        let out = agent.cli(&args)?;
        ensure!(!out.status.success(), "{args:?} succeeded");
        ensure!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    // Nothing half-made: one container, one directory, one interface, and
    // the refused addresses are still free.
    assert_eq!(cli_ok(agent, &["ps", "-a", "-q"])?.lines().count(), 1);
    assert_eq!(container_dirs(agent), 1);
    assert_eq!(container_links(&cluster, 0)?, 1);
    let subnet = agent.subnet()?;
    let free = subnet.replace(".0/24", ".200");
    cli_ok(
        agent,
        &["run", "-d", "--ip", &free, "busybox", "sleep", "1000"],
    )?;
    Ok(())
}

/// The node loses its lease and another node takes its subnet at once (its
/// value written over the key, which etcd sees as one change, so the agent
/// cannot simply take the subnet back): the agent leases another subnet, and
/// everything on the old one follows it.
#[test]
fn a_new_subnet_moves_running_containers_and_attachments() -> Result<()> {
    let mut cluster = Cluster::start("sc", 241, VXLAN, 1)?;
    import_busybox(&cluster.agents[0])?;
    let agent = &cluster.agents[0];
    cli_ok(
        agent,
        &["run", "-d", "--name", "mover", "busybox", "sleep", "1000"],
    )?;
    let old_subnet: ipnetwork::Ipv4Network = agent.subnet()?.parse()?;
    let old_address = address_of(agent, "mover")?;
    ensure!(
        old_subnet.contains(old_address),
        "{old_address} in {old_subnet}"
    );
    let attached = cluster.container(0, "sc-att")?;
    ensure!(old_subnet.contains(attached.address));

    let key = format!(
        "{}/subnets/{}-{}",
        cluster.prefix,
        old_subnet.network(),
        old_subnet.prefix()
    );
    let taker = r#"{"PublicIP":"10.241.0.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"82:aa:bb:cc:dd:ee"}}"#;
    // etcd runs in the hub namespace: etcdctl reaches it there.
    cluster
        .etcdctl(&["put", &key, taker])
        .context("taking the node's subnet")?;

    let agent = &cluster.agents[0];
    let mut new_subnet = old_subnet;
    wait_until(CONVERGE, Duration::from_millis(100), || {
        new_subnet = agent.subnet()?.parse()?;
        Ok(new_subnet != old_subnet)
    })
    .with_context(|| agent.log_tail(30))?;
    let gateway = Ipv4Addr::from(u32::from(new_subnet.network()) + 1);

    // The running container: a new address, its gateway, its /etc/hosts.
    wait_until(CONVERGE, Duration::from_millis(100), || {
        Ok(new_subnet.contains(address_of(agent, "mover")?))
    })
    .with_context(|| agent.log_tail(30))?;
    let new_address = address_of(agent, "mover")?;
    let addr_out = text(&exec(agent, "mover", &["ip", "-4", "-o", "addr", "show", "eth0"])?.stdout);
    ensure!(
        addr_out.contains(&format!("{new_address}/{}", new_subnet.prefix()))
            && !addr_out.contains(&old_address.to_string()),
        "eth0 in the container: {addr_out}"
    );
    let route_out = text(&exec(agent, "mover", &["ip", "route"])?.stdout);
    ensure!(
        route_out.contains(&format!("default via {gateway}")),
        "routes in the container: {route_out}"
    );
    let hosts = text(&exec(agent, "mover", &["cat", "/etc/hosts"])?.stdout);
    ensure!(
        hosts.contains(&format!("{new_address}\t")) && !hosts.contains(&old_address.to_string()),
        "/etc/hosts: {hosts}"
    );
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "mover", &gateway.to_string())
    })
    .with_context(|| {
        format!(
            "the moved container reaches its new gateway {gateway}; bridge: {:?} {:?} {:?} {:?}\n{}",
            cluster.hosts[0].netns.exec("ip", &["-o", "addr", "show", "tartan0"]).map(|o| text(&o.stdout)),
            cluster.hosts[0].netns.exec("sh", &["-c", "ip neigh; bridge fdb show br tartan0; ip route; nft list ruleset; sysctl net.ipv4.conf.tartan0.arp_ignore net.ipv4.conf.all.rp_filter net.ipv4.conf.tartan0.rp_filter"]).map(|o| text(&o.stdout) + &text(&o.stderr)),
            exec(agent, "mover", &["sh", "-c", "ip addr; ip route; ip neigh"]).map(|o| text(&o.stdout)),
            exec(agent, "mover", &["ping", "-c", "1", "-W", "1", &gateway.to_string()]).map(|o| format!("{}{}", text(&o.stdout), text(&o.stderr))),
            agent.log_tail(40)
        )
    })?;
    ensure!(
        agent
            .log()
            .contains("moved the container to the node's new subnet"),
        "the move is logged:\n{}",
        agent.log_tail(30)
    );

    // A new container takes an address of the new subnet and reaches the moved one.
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "newcomer", "busybox", "sleep", "1000",
        ],
    )?;
    let newcomer = address_of(agent, "newcomer")?;
    ensure!(new_subnet.contains(newcomer), "{newcomer} in {new_subnet}");
    ensure!(newcomer != new_address, "two containers, two addresses");
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "newcomer", &new_address.to_string())
    })
    .context("the new container reaches the moved one")?;

    // The namespace `tartan attach` plugged in moved too.
    wait_until(CONVERGE, Duration::from_millis(200), || {
        let out = cluster.in_container(&attached, "ip", &["-4", "-o", "addr", "show", "eth0"])?;
        Ok(inet_of(&text(&out.stdout)).is_some_and(|a| new_subnet.contains(a)))
    })
    .with_context(|| agent.log_tail(30))?;

    // The subnet's new holder is a peer now, routed over the VXLAN device.
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(cluster
            .route(0, &old_subnet.to_string())?
            .contains("dev tartan.1"))
    })
    .with_context(|| agent.log_tail(30))?;

    // While the agent is down, another node takes its subnet again: on its
    // return the agent leases a third one, and what runs follows it there.
    cluster.agents[0].kill()?;
    cluster
        .etcdctl(&[
            "put",
            &format!(
                "{}/subnets/{}-{}",
                cluster.prefix,
                new_subnet.network(),
                new_subnet.prefix()
            ),
            r#"{"PublicIP":"10.241.0.98","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"82:aa:bb:cc:dd:ef"}}"#,
        ])
        .context("taking the node's second subnet")?;
    cluster.agents[0].restart()?;
    let agent = &cluster.agents[0];
    agent.wait_ready(READY)?;
    let third: ipnetwork::Ipv4Network = agent.subnet()?.parse()?;
    ensure!(
        third != new_subnet && third != old_subnet,
        "a third subnet: {third}"
    );
    wait_until(CONVERGE, Duration::from_millis(100), || {
        Ok(third.contains(address_of(agent, "mover")?)
            && third.contains(address_of(agent, "newcomer")?))
    })
    .with_context(|| agent.log_tail(30))?;
    let moved = address_of(agent, "mover")?;
    let hosts = text(&exec(agent, "mover", &["cat", "/etc/hosts"])?.stdout);
    ensure!(hosts.contains(&format!("{moved}\t")), "/etc/hosts: {hosts}");
    wait_until(CONVERGE, Duration::from_millis(200), || {
        pings(agent, "newcomer", &moved.to_string())
    })
    .context("the containers reach each other on the third subnet")?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        let out = cluster.in_container(&attached, "ip", &["-4", "-o", "addr", "show", "eth0"])?;
        Ok(inet_of(&text(&out.stdout)).is_some_and(|a| third.contains(a)))
    })
    .with_context(|| agent.log_tail(30))?;
    Ok(())
}

/// The address in `ip -o addr` output.
fn inet_of(out: &str) -> Option<Ipv4Addr> {
    let mut words = out.split_whitespace();
    words.find(|w| *w == "inet")?;
    words.next()?.split('/').next()?.parse().ok()
}

/// A tmpfs mounted in a process's mount namespace, unmounted on drop, so
/// that a failed test leaves no mount behind.
struct Mounted {
    pid: u32,
    path: std::path::PathBuf,
}

impl Mounted {
    fn new(pid: u32, path: &std::path::Path) -> Result<Mounted> {
        let status = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "mount", "-t", "tmpfs", "none"])
            .arg(path)
            .status()
            .context("running nsenter")?;
        ensure!(status.success(), "mounting a tmpfs on {}", path.display());
        Ok(Mounted {
            pid,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // Best effort: the namespace goes with the agent anyway.
        let _ = std::process::Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-m", "umount"])
            .arg(&self.path)
            .status();
    }
}

/// `rm` tries every step of its teardown and reports every failure in one
/// line; what could not be done then can be done again.
#[test]
fn rm_reports_every_failed_step_together() -> Result<()> {
    let cluster = Cluster::start("rmf", 243, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(
        agent,
        &["run", "-d", "--name", "doomed", "busybox", "sleep", "1000"],
    )?;
    let id = inspect(agent, "doomed")?["id"]
        .as_str()
        .context("the container's id")?
        .to_string();
    // The container's directory holds a mount point, and the address book
    // cannot be written: both steps of `rm` fail.
    let busy = agent
        .state_dir()
        .join("containers")
        .join(&id[..12])
        .join("busy");
    std::fs::create_dir(&busy)?;
    // In the agent's own mount namespace, where it removes the directory.
    let mounted = Mounted::new(agent.pid().context("the agent's pid")?, &busy)?;
    let book = agent.state_dir().join("ipam.json");
    std::fs::remove_file(&book)?;
    std::fs::create_dir(&book)?;

    let out = agent.cli(&["rm", "-f", "doomed"])?;
    let err = text(&out.stderr);
    // The container's line, then the count of containers that failed.
    let line = err.lines().next().unwrap_or_default();
    ensure!(
        !out.status.success()
            && line.contains("freeing the container's address")
            && line.contains("; removing the container"),
        "rm -f ({}): {err:?}",
        out.status
    );

    drop(mounted);
    std::fs::remove_dir(&book)?;
    cli_ok(agent, &["rm", "-f", "doomed"]).context("rm again once nothing is in the way")?;
    ensure!(
        !cli_ok(agent, &["ps", "-a"])?.contains("doomed"),
        "the container is gone"
    );
    Ok(())
}

/// `tartan reset` (weave's): refused while the agent runs, then while a
/// container runs; forced, it leaves nothing of Tartan's on the host, and
/// the agent starts afresh afterwards.
#[test]
fn reset_removes_everything_the_agent_made() -> Result<()> {
    let mut cluster = Cluster::start("rst", 217, VXLAN, 2)?;
    import_busybox(&cluster.agents[0])?;
    cli_ok(
        &cluster.agents[0],
        &["run", "-d", "--name", "victim", "busybox", "sleep", "1000"],
    )?;
    let ours: ipnetwork::Ipv4Network = cluster.agents[0].subnet()?.parse()?;
    let theirs = cluster.agents[1].subnet()?;
    let attached = cluster.container(0, "rst-att")?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(!cluster.route(0, &theirs)?.is_empty())
    })?;
    let tartan = tartan_tests::agent::tartan_bin()?;
    let agent = &cluster.agents[0];
    let key = format!(
        "{}/subnets/{}-{}",
        cluster.prefix,
        ours.network(),
        ours.prefix()
    );
    let flags: Vec<String> = vec![
        "--state-dir".into(),
        agent.state_dir().display().to_string(),
        "--subnet-file".into(),
        agent.subnet_file().display().to_string(),
        "--api-socket".into(),
        agent.api_socket().display().to_string(),
        "--etcd-endpoints".into(),
        cluster.etcd.endpoint(),
        "--etcd-prefix".into(),
        cluster.prefix.clone(),
    ];
    let reset = |extra: &[&str]| -> Result<Output> {
        let mut cmd = cluster.hosts[0]
            .netns
            .command(&tartan.display().to_string());
        cmd.arg("reset").args(extra).args(&flags);
        cmd.output().context("running tartan reset")
    };

    let out = reset(&[])?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains("stop it first"),
        "refused while the agent runs: {}",
        text(&out.stderr)
    );
    // Killed, as a crashed agent: everything it made is still there.
    cluster.agents[0].kill()?;
    let tables = text(
        &cluster.hosts[0]
            .netns
            .exec("nft", &["list", "tables"])?
            .stdout,
    );
    ensure!(tables.contains("ip tartan"), "the table is there: {tables}");
    let out = reset(&[])?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains("a container is running: victim"),
        "refused while a container runs: {}",
        text(&out.stderr)
    );
    ensure!(
        cluster.hosts[0]
            .netns
            .exec("ip", &["link", "show", "tartan0"])?
            .status
            .success(),
        "a refused reset changes nothing"
    );

    let out = reset(&["-f", "--release-lease"])?;
    ensure!(
        out.status.success(),
        "reset -f: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    for line in [
        "killed container victim",
        "removed tartan0",
        "removed tartan.1",
        "nf_tables table ip tartan: gone",
        &format!("released the lease of {ours}"),
    ] {
        ensure!(said.contains(line), "{line:?} in:\n{said}");
    }
    let links = text(
        &cluster.hosts[0]
            .netns
            .exec("ip", &["-o", "link", "show"])?
            .stdout,
    );
    ensure!(
        !links.contains("tartan") && !links.contains(" vt"),
        "links left: {links}"
    );
    let routes = text(
        &cluster.hosts[0]
            .netns
            .exec("ip", &["route", "show", "proto", "84"])?
            .stdout,
    );
    ensure!(routes.trim().is_empty(), "routes left: {routes}");
    let tables = text(
        &cluster.hosts[0]
            .netns
            .exec("nft", &["list", "tables"])?
            .stdout,
    );
    ensure!(!tables.contains("ip tartan"), "tables left: {tables}");
    ensure!(
        !cluster.agents[0].subnet_file().exists(),
        "the subnet file is gone"
    );
    ensure!(
        !cluster.agents[0].state_dir().join("ipam.json").exists(),
        "the address book is gone"
    );
    ensure!(
        cluster.etcdctl(&["get", &key])?.trim().is_empty(),
        "the lease is released"
    );
    ensure!(
        !cluster
            .etcdctl(&["get", "--prefix", &format!("{}/subnets/", cluster.prefix)])?
            .is_empty(),
        "the other host's lease stays"
    );
    ensure!(
        cluster
            .in_container(&attached, "ip", &["link", "show", "eth0"])?
            .status
            .code()
            != Some(0),
        "the attachment's interface went with its host end"
    );
    // Nothing left to do: a second reset is quiet and succeeds.
    let again = reset(&[])?;
    ensure!(again.status.success(), "{}", text(&again.stderr));

    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    ensure!(cluster.hosts[0]
        .netns
        .exec("ip", &["link", "show", "tartan0"])?
        .status
        .success());
    Ok(())
}

/// Runs the CLI against `agent` with a standard output whose reader is
/// already gone, as `tartan … | head -1` leaves it once head has its line.
fn cli_to_closed_pipe(agent: &Agent, args: &[&str]) -> Result<Output> {
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let child = agent
        .cli_command(args)?
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .context("running the tartan CLI")?;
    finish(child, Duration::from_secs(20))
}

#[test]
fn the_cli_ends_quietly_when_its_reader_goes() -> Result<()> {
    let cluster = Cluster::start("pp", 213, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "busybox",
            "sh",
            "-c",
            "echo hello; sleep 1000",
        ],
    )?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(cli_ok(agent, &["logs", "web"])?.contains("hello"))
    })?;
    for args in [
        &["inspect", "web"][..],
        &["status", "-o", "json"],
        &["status"],
        &["ps"],
        &["images"],
        &["logs", "web"],
        &["export", "web"],
    ] {
        let out = cli_to_closed_pipe(agent, args)?;
        ensure!(
            out.status.success() && out.stderr.is_empty(),
            "tartan {args:?} on a closed pipe ({}): {}",
            out.status,
            text(&out.stderr)
        );
    }
    // Each container is still done when nobody reads the names printed.
    cli_ok(
        agent,
        &["run", "-d", "--name", "db", "busybox", "sleep", "1000"],
    )?;
    let out = cli_to_closed_pipe(agent, &["rm", "-f", "web", "db"])?;
    ensure!(out.status.success(), "rm -f: {}", text(&out.stderr));
    ensure!(
        cli_ok(agent, &["ps", "-aq"])?.trim().is_empty(),
        "both containers are gone"
    );
    Ok(())
}

/// The ADDRESS column of `ps` for the container named `name`.
fn ps_addresses(agent: &Agent, name: &str) -> Result<String> {
    let table = cli_ok(agent, &["ps"])?;
    let header = table.lines().next().context("a header")?;
    let from = header.find("ADDRESS").context("an ADDRESS column")?;
    let to = header.find("NAMES").context("a NAMES column")?;
    let row = table
        .lines()
        .find(|row| row.split_whitespace().last() == Some(name))
        .with_context(|| format!("no row for {name}: {table}"))?;
    Ok(row.get(from..to).unwrap_or_default().trim().to_string())
}

#[test]
fn ps_shows_the_address_of_every_network_a_container_is_on() -> Result<()> {
    let cluster = Cluster::start("pa", 214, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    let sleeper = |name: &str, net: &str| {
        cli_ok(
            agent,
            &[
                "run", "-d", "--name", name, "--net", net, "busybox", "sleep", "1000",
            ],
        )
    };
    sleeper("web", "overlay")?;
    sleeper("side", "container:web")?;
    sleeper("lonely", "none")?;
    sleeper("hnet", "host")?;
    let web = address_of(agent, "web")?;
    let web_len = match &inspect(agent, "web")?["network"]["prefix_len"] {
        Value::String(len) => len.clone(),
        other => other.to_string(),
    };
    let web = format!("{web}/{web_len}");
    ensure!(
        ps_addresses(agent, "web")? == web,
        "{}",
        cli_ok(agent, &["ps"])?
    );

    // A second address in web's namespace (a documentation range, inside it only).
    let pid = |name: &str| -> Result<u64> {
        inspect(agent, name)?["state"]["pid"]
            .as_u64()
            .with_context(|| format!("{name} has no pid"))
    };
    let netns = format!("--net=/proc/{}/ns/net", pid("web")?);
    let out = std::process::Command::new("nsenter")
        .args([
            netns.as_str(),
            "ip",
            "addr",
            "add",
            "192.0.2.7/24",
            "dev",
            "eth0",
        ])
        .output()
        .context("running nsenter (util-linux)")?;
    ensure!(out.status.success(), "ip addr add: {}", text(&out.stderr));
    let both = format!("{web},192.0.2.7/24");
    ensure!(
        ps_addresses(agent, "web")? == both,
        "{}",
        cli_ok(agent, &["ps"])?
    );
    // Sharing web's network is having its addresses.
    ensure!(
        ps_addresses(agent, "side")? == both,
        "{}",
        cli_ok(agent, &["ps"])?
    );
    // No network, then one plugged in by `tartan attach`.
    ensure!(
        ps_addresses(agent, "lonely")?.is_empty(),
        "{}",
        cli_ok(agent, &["ps"])?
    );
    let attached = cli_ok(agent, &["attach", &pid("lonely")?.to_string()])?;
    ensure!(
        ps_addresses(agent, "lonely")? == attached.trim(),
        "attached {attached}: {}",
        cli_ok(agent, &["ps"])?
    );
    // The host's addresses are not the container's own.
    ensure!(
        ps_addresses(agent, "hnet")?.is_empty(),
        "{}",
        cli_ok(agent, &["ps"])?
    );
    cli_ok(agent, &["detach", &pid("lonely")?.to_string()])?;
    Ok(())
}

#[test]
fn archives_show_progress_on_a_terminal_only() -> Result<()> {
    let cluster = Cluster::start("pg", 215, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("busybox.tar");
    std::fs::write(&archive, tarball(&busybox_rootfs(dir.path())?, false)?)?;
    let (l1, l2) = tartan_tests::rootfs::two_layers(dir.path())?;
    let saved = dir.path().join("save.tar");
    std::fs::write(
        &saved,
        tartan_tests::rootfs::docker_save(dir.path(), &l1, &l2, &["demo:1"])?,
    )?;
    let exported = dir.path().join("web.tar");
    let archive_arg = archive.display().to_string();
    let saved_arg = saved.display().to_string();
    let exported_arg = exported.display().to_string();

    // Not on a terminal: the output alone, nothing on standard error.
    let quiet = |args: &[&str]| -> Result<()> {
        let out = agent.cli(args)?;
        ensure!(
            out.status.success() && out.stderr.is_empty(),
            "tartan {args:?} ({}): {:?}",
            out.status,
            text(&out.stderr)
        );
        Ok(())
    };
    quiet(&["import", &archive_arg, "busybox"])?;
    quiet(&["load", "-i", &saved_arg])?;
    cli_ok(
        agent,
        &["run", "-d", "--name", "web", "busybox", "sleep", "1000"],
    )?;
    quiet(&["export", "-o", &exported_arg, "web"])?;

    // On a terminal: one line redrawn in place, with the bytes and the rate.
    for (args, verb, size_known) in [
        (format!("import {archive_arg} busybox:2"), "Importing", true),
        (format!("load -i {saved_arg}"), "Loading", true),
        (format!("export -o {exported_arg} web"), "Exporting", false),
    ] {
        let out = under_terminal(&cluster, agent, &args)?;
        let shown = text(&out.stdout);
        ensure!(out.status.success(), "{args}: {shown}");
        ensure!(
            shown.contains(&format!("\r{verb}  ")) && shown.contains("B/s"),
            "{args}: {shown:?}"
        );
        // "Importing  2.0MB/2.0MB  40.1MB/s": of a file, the size too.
        let last = shown
            .rsplit(&format!("\r{verb}  "))
            .next()
            .and_then(|tail| tail.split('\x1b').next())
            .unwrap_or_default();
        let slashes = if size_known { 2 } else { 1 };
        ensure!(
            last.matches('/').count() == slashes,
            "{args}: last line {last:?} of {shown:?}"
        );
    }
    Ok(())
}

/// `cat /sys/class/net/eth0/address` in the container.
fn eth0_mac(agent: &Agent, name: &str) -> Result<String> {
    let out = exec(agent, name, &["cat", "/sys/class/net/eth0/address"])?;
    ensure!(
        out.status.success(),
        "reading eth0's MAC: {}",
        text(&out.stderr)
    );
    Ok(text(&out.stdout).trim().to_string())
}

/// Docker's MAC on a bridge network, from the address, so that it stays
/// the same when the container restarts with the same address. (That a
/// peer on another host reaches it at once after such a restart is not
/// tested: it does with a random MAC too, the container's gratuitous ARP
/// correcting the neighbour caches.)
#[test]
fn the_overlay_mac_follows_the_address_across_a_restart() -> Result<()> {
    let cluster = Cluster::start("ctm", 151, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    // A free address of the node subnet, to ask for by --ip.
    let probe = cli_ok(
        agent,
        &["run", "-d", "--name", "probe", "busybox", "sleep", "1000"],
    )?;
    let free = address_of(agent, "probe")?;
    cli_ok(agent, &["rm", "-f", probe.trim()])?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "fixed",
            "--ip",
            &free.to_string(),
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let [a, b, c, d] = free.octets();
    let want = format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}");
    let before = eth0_mac(agent, "fixed")?;
    ensure!(before == want, "eth0's MAC is {before}, not {want}");
    cli_ok(agent, &["restart", "-t", "0", "fixed"])?;
    let after = eth0_mac(agent, "fixed")?;
    ensure!(
        after == before,
        "the MAC changed across the restart: {before} -> {after}"
    );
    Ok(())
}
