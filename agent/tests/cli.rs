//! The `tartan` binary's command line: usage errors and a missing agent
//! are one line each, and nothing is created on the way out.
//!
//! Living in this package also makes `cargo test --workspace` build the
//! binary that the integration tests under `tests/` run.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Runs `cmd` to its end, killing it after `limit`: an agent that accepts
/// what it should refuse would otherwise run on.
fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            child.kill().ok();
            let out = child.wait_with_output()?;
            bail!(
                "still running after {limit:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

#[test]
fn the_cli_says_so_when_no_agent_listens() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("nobody.sock");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tartan"))
        .args(["status", "--api-socket"])
        .arg(&socket)
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no tartan agent is listening on"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_api_socket_may_stand_before_the_command() -> Result<()> {
    let bin = env!("CARGO_BIN_EXE_tartan");
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("nobody.sock");
    let socket_text = socket.to_string_lossy().into_owned();
    let before = ["--api-socket", socket_text.as_str()];
    let joined = format!("--api-socket={socket_text}");
    let lines: [Vec<&str>; 4] = [
        [&before[..], &["status"]].concat(),
        vec![joined.as_str(), "ps", "-a"],
        [&before[..], &["images"]].concat(),
        [&before[..], &["inspect", "web"]].concat(),
    ];
    for args in lines {
        let out = std::process::Command::new(bin).args(&args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Asked the socket given, not the default: the agent is missing there.
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("no tartan agent is listening on {socket_text}")),
            "{args:?}: {stderr}"
        );
    }
    // The agent serves the socket given there too (and refuses these flags first).
    agent_refuses_a_margin_beyond_the_ttl(&before, dir.path(), &[])?;
    Ok(())
}

#[test]
fn bad_flags_are_one_line_errors() -> Result<()> {
    let bin = env!("CARGO_BIN_EXE_tartan");
    let cases: [&[&str]; 4] = [
        &["agent", "--subnet-lease-ttl", "banana"],
        &["agent", "--public-ip", "10.0.0.300"],
        &["agent", "--iface", ""],
        &["status", "-o", "yaml"],
    ];
    for args in cases {
        let out = std::process::Command::new(bin).args(args).output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
    // A value clap accepts but the agent refuses: one line, exit 1, nothing created.
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("s.sock");
    agent_refuses_a_margin_beyond_the_ttl(
        &[],
        dir.path(),
        &["--api-socket", &socket.to_string_lossy()],
    )?;
    assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "nothing created");
    Ok(())
}

#[test]
fn an_etcd_endpoint_that_is_no_url_is_refused_at_start() -> Result<()> {
    let bin = env!("CARGO_BIN_EXE_tartan");
    let dir = tempfile::tempdir()?;
    let cases: [(&[&str], Option<&str>); 3] = [
        (&["agent", "--etcd-endpoints", "notaurl"], None),
        (&["agent", "-etcd-endpoints=notaurl"], None),
        (&["agent"], Some("http://127.0.0.1:2379,notaurl")),
    ];
    for (args, env) in cases {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--api-socket")
            .arg(dir.path().join("s.sock"))
            .arg("--subnet-file")
            .arg(dir.path().join("subnet.env"))
            .env_remove("TARTAN_ETCD_ENDPOINTS")
            .env_remove("FLANNELD_ETCD_ENDPOINTS");
        if let Some(value) = env {
            cmd.env("TARTAN_ETCD_ENDPOINTS", value);
        }
        let out = output_within(&mut cmd, Duration::from_secs(10))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("'notaurl'") && stderr.contains("use http://HOST:PORT"),
            "{args:?} {env:?}: {stderr}"
        );
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "nothing created");
    }
    Ok(())
}

#[test]
fn run_takes_h_as_its_hostname_and_only_help_for_help() -> Result<()> {
    let bin = env!("CARGO_BIN_EXE_tartan");
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("nobody.sock");
    // A value for -h: the line parses and the missing agent is what stops it.
    let out = Command::new(bin)
        .args(["run", "-h", "web", "--api-socket"])
        .arg(&socket)
        .args(["busybox", "true"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("no tartan agent is listening"), "{stderr}");
    let out = Command::new(bin).args(["run", "--help"]).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout.contains("-h, --hostname"), "{stdout}");
    Ok(())
}

#[test]
fn usage_errors_name_what_is_missing_and_the_command_help() -> Result<()> {
    let bin = env!("CARGO_BIN_EXE_tartan");
    // (arguments, exit code, what the line must say)
    let cases: [(&[&str], i32, &[&str]); 7] = [
        (&["run"], 125, &["<IMAGE>", "see tartan run --help"]),
        (
            &["run", "--bogus", "busybox"],
            125,
            &["--bogus", "see tartan run --help"],
        ),
        (&["run", "--ip"], 125, &["--ip", "see tartan run --help"]),
        (
            &["--api-socket", "/nowhere", "run", "-h"],
            125,
            &["--hostname"],
        ),
        (&["stop"], 2, &["<CONTAINER>", "see tartan stop --help"]),
        (
            &["exec", "web"],
            2,
            &["<COMMAND>", "see tartan exec --help"],
        ),
        (
            &["status", "-o", "yaml"],
            2,
            &["yaml", "see tartan status --help"],
        ),
    ];
    for (args, code, says) in cases {
        let out = output_within(Command::new(bin).args(args), Duration::from_secs(10))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        for word in says {
            assert!(stderr.contains(word), "{args:?}: {stderr}");
        }
    }
    Ok(())
}

#[test]
fn a_user_who_may_not_use_the_socket_is_told_so() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    let socket = dir.path().join("agent.sock");
    // The agent's socket is root's alone (0600).
    let _listener = std::os::unix::net::UnixListener::bind(&socket)?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let out = Command::new(env!("CARGO_BIN_EXE_tartan"))
        .args(["ps", "--api-socket"])
        .arg(&socket)
        .uid(65534)
        .gid(65534)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("permission denied on the API socket (root only)"),
        "{stderr}"
    );
    Ok(())
}

/// `tartan BEFORE agent` with a renew margin longer than the TTL and a state
/// directory in `dir`: refused with exit 1, in a line naming the flag.
fn agent_refuses_a_margin_beyond_the_ttl(
    before: &[&str],
    dir: &Path,
    after: &[&str],
) -> Result<()> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tartan"))
        .args(before)
        .args([
            "agent",
            "--subnet-lease-ttl",
            "1m",
            "--subnet-lease-renew-margin",
            "2m",
        ])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(after)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--subnet-lease-renew-margin"), "{stderr}");
    Ok(())
}
