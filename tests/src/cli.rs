//! Driving the `tartan` CLI from tests: output as text, commands that must
//! succeed, the busybox image, and runs under a terminal of their own.

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::agent::{tartan_bin, Agent};
use crate::cluster::Cluster;
use crate::rootfs::{busybox_rootfs, tarball};

/// The vxlan network most container tests use.
pub const VXLAN: &str =
    r#"{"Network": "10.5.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the CLI and insists on success; returns stdout.
pub fn cli_ok(agent: &Agent, args: &[&str]) -> Result<String> {
    let out = agent.cli(args)?;
    ensure!(
        out.status.success(),
        "tartan {args:?} failed ({}): {}{}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
    Ok(text(&out.stdout))
}

/// Imports a busybox image as `busybox` into the agent's store.
pub fn import_busybox(agent: &Agent) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("busybox.tar");
    std::fs::write(&archive, tarball(&busybox_rootfs(dir.path())?, false)?)?;
    cli_ok(
        agent,
        &["import", &archive.display().to_string(), "busybox"],
    )?;
    Ok(())
}

/// Waits for a child with a deadline, killing it when it runs over.
pub fn finish(mut child: Child, limit: Duration) -> Result<Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            child.kill().ok();
            let out = child.wait_with_output()?;
            bail!(
                "still running after {limit:?}; it printed {:?} / {:?}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// Runs the CLI with no input and waits at most `limit` for it, killing it
/// when it runs over; success or failure is the caller's to judge.
pub fn cli_within(agent: &Agent, args: &[&str], limit: Duration) -> Result<Output> {
    let child = agent
        .cli_command(args)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the tartan CLI")?;
    finish(child, limit)
}

/// `tartan ARGS` (a shell word list) against host 0's agent, with a
/// terminal of its own as standard input and output (`script` makes one).
pub fn under_terminal(cluster: &Cluster, agent: &Agent, args: &str) -> Result<Output> {
    let inner = format!(
        "ip netns exec {} env TARTAN_API_SOCKET={} {} {args}",
        cluster.hosts[0].netns.name(),
        agent.api_socket().display(),
        tartan_bin()?.display()
    );
    let child = std::process::Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running script (bsdutils)")?;
    finish(child, Duration::from_secs(20))
}
