//! Published ports (`run -p`, `tartan port`): DNAT rules in the agent's
//! nf_tables, reached from another host, from containers on this host and
//! the other, from the host itself (its address and 127.0.0.1) and from the
//! container itself; a port in use refused; and the ruleset exactly as it
//! was after every way a container stops publishing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, import_busybox, text, VXLAN};
use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::containers::inspect;
use tartan_tests::netns::Netns;
use tartan_tests::wait::wait_until;

const CONVERGE: Duration = Duration::from_secs(20);

/// busybox httpd answering `hi` on port 80.
const SERVE: &str =
    "mkdir -p /www && echo hi > /www/index.html && exec busybox httpd -f -p 80 -h /www";

/// The whole ruleset of a host's namespace, as `nft` prints it.
fn ruleset(ns: &Netns) -> Result<String> {
    let out = ns.exec("nft", &["list", "ruleset"])?;
    ensure!(
        out.status.success(),
        "nft list ruleset: {}",
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// An HTTP GET of / from inside `ns`; the body, or an error.
fn http_get(ns: &Netns, ip: Ipv4Addr, port: u16) -> Result<String> {
    ns.enter(|| -> Result<String> {
        let address = SocketAddr::from((ip, port));
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3))
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string())
    })?
}

/// Waits until `ip:port` answers `hi` from `ns`.
fn reaches(ns: &Netns, ip: Ipv4Addr, port: u16, from: &str) -> Result<()> {
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(http_get(ns, ip, port)? == "hi")
    })
    .with_context(|| format!("{ip}:{port} from {from}"))
}

/// An HTTP GET of `ip:port` inside a container.
fn container_gets(agent: &Agent, container: &str, ip: Ipv4Addr, port: u16) -> Result<()> {
    // busybox nc: this busybox's wget crashes on any URL.
    let script = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {ip} {port}");
    let mut last = String::new();
    wait_until(CONVERGE, Duration::from_millis(200), || {
        let out = agent.cli(&["exec", container, "sh", "-c", &script])?;
        last = format!("{}{}", text(&out.stdout), text(&out.stderr));
        Ok(out.status.success() && text(&out.stdout).trim_end().ends_with("\r\n\r\nhi"))
    })
    .with_context(|| format!("{ip}:{port} from container {container}: {}", last.trim()))
}

fn wait_ruleset(ns: &Netns, expected: &str, what: &str) -> Result<()> {
    wait_until(CONVERGE, Duration::from_millis(100), || {
        Ok(ruleset(ns)? == expected)
    })
    .with_context(|| {
        format!(
            "the ruleset after {what} is not the one before: {}",
            ruleset(ns).unwrap_or_default()
        )
    })
}

#[test]
fn a_published_port_is_reached_from_everywhere_and_its_rules_go_with_it() -> Result<()> {
    let cluster = Cluster::start("pt", 185, VXLAN, 2)?;
    let (h0, h1) = (&cluster.agents[0], &cluster.agents[1]);
    import_busybox(h0)?;
    import_busybox(h1)?;
    let host0 = &cluster.hosts[0];
    let before = ruleset(&host0.netns)?;

    cli_ok(
        h0,
        &[
            "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c", SERVE,
        ],
    )?;
    cli_ok(
        h0,
        &["run", "-d", "--name", "near", "busybox", "sleep", "1000"],
    )?;
    cli_ok(
        h1,
        &["run", "-d", "--name", "far", "busybox", "sleep", "1000"],
    )?;

    reaches(&cluster.hosts[1].netns, host0.ip, 8080, "the other host")?;
    reaches(&host0.netns, host0.ip, 8080, "the host, by its address")?;
    reaches(
        &host0.netns,
        Ipv4Addr::LOCALHOST,
        8080,
        "the host, by 127.0.0.1",
    )?;
    container_gets(h0, "near", host0.ip, 8080)?;
    container_gets(h1, "far", host0.ip, 8080)?;
    container_gets(h0, "web", host0.ip, 8080)?;

    let ps = cli_ok(h0, &["ps"])?;
    ensure!(
        ps.lines().next().is_some_and(|h| h.contains("PORTS")),
        "{ps}"
    );
    ensure!(
        ps.lines()
            .any(|l| l.contains("0.0.0.0:8080->80/tcp") && l.ends_with("web")),
        "ps shows the port as Docker does: {ps}"
    );
    ensure!(cli_ok(h0, &["port", "web"])? == "80/tcp -> 0.0.0.0:8080\n");
    ensure!(cli_ok(h0, &["port", "web", "80/tcp"])? == "0.0.0.0:8080\n");
    let info = inspect(h0, "web")?;
    ensure!(
        info["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"] == "8080",
        "{info}"
    );
    ensure!(
        info["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"] == "8080",
        "{info}"
    );

    // Another container cannot have the port, and nothing of it is made.
    let with_web = ruleset(&host0.netns)?;
    let out = h0.cli(&[
        "run", "-d", "--name", "web2", "-p", "8080:81", "busybox", "sleep", "1000",
    ])?;
    ensure!(!out.status.success(), "a second 8080 is refused");
    let err = text(&out.stderr);
    ensure!(
        err.trim().lines().count() == 1
            && err.contains("Bind for 0.0.0.0:8080 failed: port is already allocated"),
        "{err}"
    );
    ensure!(
        !cli_ok(h0, &["ps", "-a"])?.contains("web2"),
        "no container is left"
    );
    ensure!(
        ruleset(&host0.netns)? == with_web,
        "the refusal changed the ruleset"
    );
    // Nor can it bind the port on one address when 0.0.0.0 holds it.
    let out = h0.cli(&[
        "run",
        "-d",
        "-p",
        &format!("{}:8080:80", host0.ip),
        "busybox",
        "sleep",
        "1000",
    ])?;
    ensure!(
        !out.status.success(),
        "a host address inside 0.0.0.0 is refused too"
    );

    // Stopped: no rules; started: back, and reached again.
    cli_ok(h0, &["stop", "-t", "1", "web"])?;
    wait_ruleset(&host0.netns, &before, "stop")?;
    ensure!(
        cli_ok(h0, &["port", "web"])?.is_empty(),
        "a stopped container publishes nothing"
    );
    // Its port is free while it is stopped; its start is refused while taken.
    cli_ok(
        h0,
        &[
            "run", "-d", "--name", "taker", "-p", "8080:81", "busybox", "sleep", "1000",
        ],
    )?;
    let out = h0.cli(&["start", "web"])?;
    ensure!(!out.status.success(), "web's port is taken");
    ensure!(
        text(&out.stderr).contains("Bind for 0.0.0.0:8080 failed: port is already allocated"),
        "{}",
        text(&out.stderr)
    );
    cli_ok(h0, &["rm", "-f", "taker"])?;
    wait_ruleset(&host0.netns, &before, "rm -f of the other container")?;
    cli_ok(h0, &["start", "web"])?;
    reaches(
        &cluster.hosts[1].netns,
        host0.ip,
        8080,
        "the other host, after start",
    )?;
    cli_ok(h0, &["rm", "-f", "web"])?;
    wait_ruleset(&host0.netns, &before, "rm -f")?;
    Ok(())
}

#[test]
fn no_rules_outlive_a_crashed_agent_or_a_failed_start() -> Result<()> {
    let mut cluster = Cluster::start("pk", 186, VXLAN, 2)?;
    import_busybox(&cluster.agents[0])?;
    let ns = &cluster.hosts[0].netns;
    let ip = cluster.hosts[0].ip;
    let before = ruleset(ns)?;

    // A chosen port (the seed's HOST_IP form, and udp, alongside).
    let agent = &cluster.agents[0];
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            "80",
            "-p",
            &format!("{ip}:9090:22"),
            "-p",
            "5353:53/udp",
            "busybox",
            "sh",
            "-c",
            SERVE,
        ],
    )?;
    let lines = cli_ok(agent, &["port", "web"])?;
    let chosen: u16 = lines
        .lines()
        .find_map(|l| l.strip_prefix("80/tcp -> 0.0.0.0:"))
        .with_context(|| format!("port lists 80/tcp: {lines}"))?
        .parse()?;
    ensure!(
        chosen >= 1024,
        "a chosen port is an ephemeral one: {chosen}"
    );
    ensure!(lines.contains(&format!("22/tcp -> {ip}:9090")), "{lines}");
    ensure!(lines.contains("53/udp -> 0.0.0.0:5353"), "{lines}");
    reaches(&cluster.hosts[1].netns, ip, chosen, "the other host")?;
    let with_web = ruleset(ns)?;
    ensure!(with_web != before, "publishing adds rules");

    // Killed with its container running: the rules stay (it still serves)...
    cluster.agents[0].kill()?;
    reaches(
        &cluster.hosts[1].netns,
        ip,
        chosen,
        "the other host, the agent down",
    )?;
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    ensure!(
        ruleset(ns)? == with_web,
        "a restart keeps a running container's rules"
    );
    // ...and killed while its container ends: the next start removes them.
    cluster.agents[0].kill()?;
    cluster.agents[0].kill_containers();
    ensure!(ruleset(ns)? == with_web, "nobody removed them yet");
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    wait_ruleset(ns, &before, "a crash and a restart")?;

    // A start that fails leaves no rules.
    let agent = &cluster.agents[0];
    let out = agent.cli(&[
        "run",
        "-d",
        "--name",
        "broken",
        "-p",
        "8081:80",
        "busybox",
        "/no/such/command",
    ])?;
    ensure!(!out.status.success(), "a missing command fails the run");
    wait_ruleset(ns, &before, "a failed start")?;

    // Bad input: one line, nothing made.
    let out = agent.cli(&[
        "run",
        "-d",
        "--name",
        "bad",
        "-p",
        "8080:80/sctp",
        "busybox",
        "sleep",
        "1",
    ])?;
    ensure!(!out.status.success());
    let err = text(&out.stderr);
    ensure!(
        err.trim().lines().count() == 1 && err.contains("tcp or udp"),
        "{err}"
    );
    ensure!(
        !cli_ok(agent, &["ps", "-a"])?.contains("bad"),
        "nothing is made"
    );

    // An address that is not the host's: refused, as Docker's proxy cannot bind it.
    let out = agent.cli(&[
        "run",
        "-d",
        "--name",
        "elsewhere",
        "-p",
        "192.0.2.1:9091:80",
        "busybox",
        "sleep",
        "1",
    ])?;
    ensure!(!out.status.success());
    ensure!(
        text(&out.stderr).contains("192.0.2.1 is not an address of this host"),
        "{}",
        text(&out.stderr)
    );
    ensure!(
        !cli_ok(agent, &["ps", "-a"])?.contains("elsewhere"),
        "nothing is made"
    );

    // --net host: the ports are discarded with Docker's warning.
    let out = agent.cli(&[
        "run", "-d", "--name", "hosted", "--net", "host", "-p", "8082:80", "busybox", "sleep",
        "1000",
    ])?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    ensure!(
        text(&out.stderr)
            .contains("WARNING: Published ports are discarded when using host network mode"),
        "{}",
        text(&out.stderr)
    );
    ensure!(cli_ok(agent, &["port", "hosted"])?.is_empty());
    ensure!(ruleset(ns)? == before, "--net host publishes nothing");
    Ok(())
}

/// Serves `runN` on port 80, N counting the container's runs (kept in its
/// writable layer), until `/www/stop` appears; then exits 3.
const SERVE_UNTIL_STOPPED: &str =
    "n=$(( $(cat /runs 2>/dev/null || echo 0) + 1 )); echo $n > /runs; \
     mkdir -p /www && echo run$n > /www/index.html && busybox httpd -p 80 -h /www && \
     while [ ! -e /www/stop ]; do sleep 0.1; done; rm /www/stop; exit 3";

/// The rules of Tartan's ports table.
fn ports_table(ns: &Netns) -> Result<String> {
    let out = ns.exec("nft", &["list", "table", "ip", "tartan-ports"])?;
    ensure!(
        out.status.success(),
        "nft list table ip tartan-ports: {}",
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// Waits until `ip:port` answers `body` from `ns`.
fn answers(ns: &Netns, ip: Ipv4Addr, port: u16, body: &str) -> Result<()> {
    let mut last = String::new();
    wait_until(CONVERGE, Duration::from_millis(200), || {
        last = http_get(ns, ip, port).unwrap_or_else(|e| format!("{e:#}"));
        Ok(last == body)
    })
    .with_context(|| format!("{ip}:{port} answering {body}; last: {last}"))
}

#[test]
fn a_published_port_reaches_the_process_a_restart_policy_started() -> Result<()> {
    let mut cluster = Cluster::start("pr", 117, VXLAN, 2)?;
    import_busybox(&cluster.agents[0])?;
    let ns = &cluster.hosts[0].netns;
    let other = &cluster.hosts[1].netns;
    let ip = cluster.hosts[0].ip;
    let before = ruleset(ns)?;

    let agent = &cluster.agents[0];
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "flaky",
            "--restart",
            "on-failure",
            "-p",
            "8080:80",
            "busybox",
            "sh",
            "-c",
            SERVE_UNTIL_STOPPED,
        ],
    )?;
    answers(other, ip, 8080, "run1")?;
    answers(ns, ip, 8080, "run1")?;
    let with_flaky = ruleset(ns)?;
    let table = ports_table(ns)?;
    ensure!(table.contains("8080"), "no rule for 8080: {table}");

    // Its process exits 3; the supervisor runs it again, and the port reaches the new one.
    cli_ok(agent, &["exec", "flaky", "touch", "/www/stop"])?;
    answers(other, ip, 8080, "run2")?;
    answers(ns, ip, 8080, "run2")?;
    ensure!(
        ports_table(ns)? == table,
        "the ports table changed across a restart: {}\nwas: {table}",
        ports_table(ns)?
    );
    ensure!(
        ruleset(ns)? == with_flaky,
        "the ruleset changed across a restart"
    );

    // Restarted while the agent is down (told through its root): the agent
    // that starts again takes its rules as they are.
    let pid = inspect(agent, "flaky")?["state"]["pid"]
        .as_u64()
        .context("no pid")?;
    cluster.agents[0].kill()?;
    std::fs::write(format!("/proc/{pid}/root/www/stop"), "")?;
    answers(other, ip, 8080, "run3")?;
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    let agent = &cluster.agents[0];
    answers(other, ip, 8080, "run3")?;
    cli_ok(agent, &["exec", "flaky", "touch", "/www/stop"])?;
    answers(other, ip, 8080, "run4")?;
    ensure!(
        ports_table(ns)? == table,
        "the ports table changed across the agent's restart: {}\nwas: {table}",
        ports_table(ns)?
    );
    ensure!(
        ruleset(ns)? == with_flaky,
        "the ruleset changed across the agent's restart"
    );

    // Stopped, and removed: nothing left.
    cli_ok(agent, &["stop", "-t", "1", "flaky"])?;
    wait_ruleset(ns, &before, "a stop of a restarted container")?;
    cli_ok(agent, &["rm", "flaky"])?;
    wait_ruleset(ns, &before, "rm of a restarted container")?;
    Ok(())
}
