//! What a Docker user expects of the container commands: `run --rm`
//! returns once the container is gone.

use anyhow::{ensure, Result};
use tartan_tests::agent::Agent;
use tartan_tests::cluster::Cluster;
use tartan_tests::rootfs::{busybox_rootfs, tarball};

const VXLAN: &str = r#"{"Network": "10.5.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs the CLI and insists on success; returns stdout.
fn cli_ok(agent: &Agent, args: &[&str]) -> Result<String> {
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
fn import_busybox(agent: &Agent) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("busybox.tar");
    std::fs::write(&archive, tarball(&busybox_rootfs(dir.path())?, false)?)?;
    cli_ok(
        agent,
        &["import", &archive.display().to_string(), "busybox"],
    )?;
    Ok(())
}

#[test]
fn run_rm_returns_once_the_container_is_gone() -> Result<()> {
    let cluster = Cluster::start("ds", 205, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

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
