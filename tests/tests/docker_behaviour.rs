//! What a Docker user expects of the container commands: signals reach a
//! foreground container, `run --rm` returns once it is gone, a command that
//! cannot run is an error with its cause at `run -d` too, the terminal of
//! `-t` is the container's own, and `rmi` refuses what Docker refuses.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, finish, import_busybox, text, under_terminal, VXLAN};
use tartan_tests::cluster::Cluster;
use tartan_tests::rootfs::{busybox_rootfs, tarball};

/// Whether `ps` (with `-a`, `all`) lists a container named `name`.
fn listed(agent: &Agent, all: bool, name: &str) -> Result<bool> {
    let args: &[&str] = if all { &["ps", "-a"] } else { &["ps"] };
    Ok(cli_ok(agent, args)?
        .lines()
        .any(|l| l.split_whitespace().last() == Some(name)))
}

/// Starts a foreground `run` of a container that reports the signals it
/// gets, and waits until it says it is ready for them.
fn trapping_run(agent: &Agent, extra: &[&str], name: &str) -> Result<Child> {
    let mut args = vec!["run", "--rm", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "busybox",
        "sh",
        "-c",
        "trap 'echo got-term; exit 7' TERM; trap 'echo got-int; exit 8' INT; \
         echo ready; while true; do sleep 0.1; done",
    ]);
    let mut child = agent
        .cli_command(&args)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        // The rest goes to the caller through the pipe's end being read here.
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .context("the container never said it was ready")?;
    ensure!(first == "ready\n", "the container said {first:?}");
    Ok(child)
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill on our own child's pid, not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, signal) };
}

#[test]
fn signals_reach_a_foreground_container_and_rm_returns_once_it_is_gone() -> Result<()> {
    let cluster = Cluster::start("ds", 205, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    // SIGTERM and SIGINT (Ctrl-C) are passed on; the CLI leaves with the
    // container's code once it has ended, and --rm has removed it.
    for (sig, code) in [(libc::SIGTERM, 7), (libc::SIGINT, 8)] {
        let child = trapping_run(agent, &[], "trapper")?;
        signal(&child, sig);
        let out = finish(child, Duration::from_secs(20))?;
        assert_eq!(
            out.status.code(),
            Some(code),
            "signal {sig}: {}",
            text(&out.stderr)
        );
        ensure!(!listed(agent, true, "trapper")?, "--rm left it");
    }

    // --sig-proxy=false: the signal is the CLI's alone.
    let child = trapping_run(agent, &["--sig-proxy=false"], "kept")?;
    signal(&child, libc::SIGTERM);
    let out = finish(child, Duration::from_secs(20))?;
    assert_eq!(out.status.code(), None, "the CLI died of the signal");
    ensure!(listed(agent, false, "kept")?, "the container runs on");
    cli_ok(agent, &["rm", "-f", "kept"])?;

    // `run --rm` returns only once the container is gone: the name is free
    // at once, and nothing is left to report. (The issue saw four of five
    // fail; the race is narrow, hence more rounds.)
    for round in 0..10 {
        let out = agent.cli(&["run", "--rm", "--name", "x", "busybox", "true"])?;
        ensure!(
            out.status.success() && out.stderr.is_empty(),
            "round {round}: {}",
            text(&out.stderr)
        );
        let left = cli_ok(agent, &["ps", "-a", "-q"])?;
        ensure!(left.trim().is_empty(), "round {round}: still there: {left}");
    }
    Ok(())
}

#[test]
fn a_command_that_cannot_run_fails_the_run_with_its_cause() -> Result<()> {
    let cluster = Cluster::start("dx", 206, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    for detach in [true, false] {
        let mut args = vec!["run", "--rm"];
        if detach {
            args.push("-d");
        }
        for (command, code, cause) in [
            ("/nonexistent", 127, "no such file or directory"),
            ("/etc/passwd", 126, "permission denied"),
        ] {
            let mut args = args.clone();
            args.extend_from_slice(&["busybox", command]);
            let out = agent.cli(&args)?;
            assert_eq!(
                out.status.code(),
                Some(code),
                "{args:?}: {}",
                text(&out.stderr)
            );
            let stderr = text(&out.stderr);
            ensure!(
                stderr.contains(&format!("running {command}: {cause}")),
                "{args:?} says why: {stderr:?}"
            );
            if detach {
                ensure!(out.stdout.is_empty(), "no id: {}", text(&out.stdout));
            }
        }
    }
    let left = cli_ok(agent, &["ps", "-a", "-q"])?;
    ensure!(left.trim().is_empty(), "nothing left behind: {left}");

    // -w with a missing directory makes it, as Docker does.
    let out = cli_ok(
        agent,
        &["run", "--rm", "-w", "/nope/deeper", "busybox", "pwd"],
    )?;
    assert_eq!(out, "/nope/deeper\n");
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "w", "-w", "/nope", "busybox", "sleep", "1000",
        ],
    )?;
    ensure!(listed(agent, false, "w")?, "it runs");
    // Options end at the image (and at exec's container): a command that
    // looks like one of Tartan's options is the container's.
    for args in [
        &["run", "--rm", "busybox", "--ip"][..],
        &["exec", "w", "--env"][..],
    ] {
        let out = agent.cli(args)?;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(127), "{args:?}: {stderr}");
        let command = args.last().copied().unwrap_or_default();
        ensure!(
            stderr.contains(&format!("running {command}")),
            "{args:?} ran {command}: {stderr:?}"
        );
    }
    cli_ok(agent, &["rm", "-f", "w"])?;
    Ok(())
}

#[test]
fn run_t_and_exec_t_see_their_terminal_in_the_container() -> Result<()> {
    let cluster = Cluster::start("dt", 207, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    let out = under_terminal(
        &cluster,
        agent,
        "run -t --rm busybox sh -c 'tty; ls /dev/pts; test -c /dev/console && echo console-ok'",
    )?;
    let seen = text(&out.stdout);
    ensure!(
        seen.contains("/dev/pts/0\r\n") && seen.contains("console-ok"),
        "run -t: {seen:?} {:?}",
        text(&out.stderr)
    );
    ensure!(
        seen.lines().any(|l| l.split_whitespace().any(|w| w == "0")),
        "/dev/pts lists it: {seen:?}"
    );

    cli_ok(
        agent,
        &["run", "-d", "--name", "t", "busybox", "sleep", "1000"],
    )?;
    let out = under_terminal(&cluster, agent, "exec -t t sh -c 'tty; ls /dev/pts'")?;
    let seen = text(&out.stdout);
    let tty = seen.lines().next().unwrap_or_default().trim().to_string();
    let number = tty
        .strip_prefix("/dev/pts/")
        .with_context(|| format!("exec -t: {seen:?} {:?}", text(&out.stderr)))?;
    ensure!(
        seen.lines()
            .skip(1)
            .any(|l| l.split_whitespace().any(|w| w == number)),
        "/dev/pts lists {tty}: {seen:?}"
    );
    cli_ok(agent, &["rm", "-f", "t"])?;
    Ok(())
}

#[test]
fn rmi_refuses_what_docker_refuses() -> Result<()> {
    let cluster = Cluster::start("dr", 208, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("busybox.tar");
    std::fs::write(&archive, tarball(&busybox_rootfs(dir.path())?, false)?)?;
    let archive = archive.display().to_string();
    let id = cli_ok(agent, &["import", &archive, "busybox"])?;
    let id = id.trim().trim_start_matches("sha256:").to_string();
    cli_ok(agent, &["import", &archive, "busybox:other"])?;
    let short = &id[..12];
    let tags =
        |agent: &Agent| -> Result<usize> { Ok(cli_ok(agent, &["images"])?.lines().count() - 1) };

    // By id, an image with two tags needs -f.
    let out = agent.cli(&["rmi", short])?;
    ensure!(
        !out.status.success()
            && text(&out.stderr).contains(&format!(
                "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
            )),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(tags(agent)?, 2);

    // -f never removes an image a container uses, running or not.
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "user", "--net", "none", "busybox", "sleep", "1000",
        ],
    )?;
    for state in ["running", "stopped"] {
        let out = agent.cli(&["rmi", "-f", short])?;
        ensure!(
            !out.status.success()
                && text(&out.stderr).contains(&format!("in use by {state} container user")),
            "{state}: {}",
            text(&out.stderr)
        );
        assert_eq!(tags(agent)?, 2, "{state}: nothing removed");
        cli_ok(agent, &["stop", "-t", "0", "user"])?;
    }
    // One tag of two may go while it is used: the other keeps the image.
    assert_eq!(
        cli_ok(agent, &["rmi", "busybox:other"])?,
        "Untagged: busybox:other\n"
    );
    cli_ok(agent, &["import", &archive, "busybox:other"])?;
    cli_ok(agent, &["rm", "user"])?;
    let out = cli_ok(agent, &["rmi", "-f", short])?;
    assert_eq!(
        out,
        format!("Untagged: busybox:latest\nUntagged: busybox:other\nDeleted: sha256:{id}\n")
    );
    assert_eq!(tags(agent)?, 0);
    Ok(())
}
