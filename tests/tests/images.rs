//! `tartan import`, `images` and `rmi` through a real agent.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{ensure, Context, Result};
use tartan_tests::agent::{Agent, AgentConfig};
use tartan_tests::etcd::EtcdServer;
use tartan_tests::rootfs::{
    busybox_rootfs, docker_save, docker_save_with_config, tarball, two_layers,
};
use tartan_tests::{prereq, put_flannel_config, unique_prefix};

const READY: std::time::Duration = std::time::Duration::from_secs(20);

fn run(agent: &Agent, args: &[&str]) -> Result<(bool, String, String)> {
    let out = agent.cli(args)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// An agent in the test's own namespace with the `alloc` backend, so that
/// it programs nothing there; only its image store is exercised.
async fn image_agent(name: &str, public_ip: &str) -> Result<(EtcdServer, Agent)> {
    prereq::require_root()?;
    let etcd = EtcdServer::start()?;
    let prefix = unique_prefix(name);
    let mut client = etcd.client().await?;
    put_flannel_config(
        &mut client,
        &prefix,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"alloc"}}"#,
    )
    .await?;
    let agent = Agent::start(AgentConfig {
        etcd_endpoints: etcd.endpoint(),
        etcd_prefix: prefix,
        public_ip: Some(public_ip.parse()?),
        ..AgentConfig::default()
    })?;
    agent.wait_ready(READY)?;
    Ok((etcd, agent))
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_imported_listed_and_removed_through_the_agent() -> Result<()> {
    let (_etcd, mut agent) = image_agent("images", "10.250.9.1").await?;

    let dir = tempfile::tempdir()?;
    let root = busybox_rootfs(dir.path())?;
    let archive = dir.path().join("busybox.tar");
    std::fs::write(&archive, tarball(&root, false)?)?;

    // From a file, and the same content gzipped from standard input.
    let (ok, out, err) = run(&agent, &["import", &archive.to_string_lossy(), "busybox"])?;
    ensure!(
        ok && out.starts_with("sha256:") && out.len() == 7 + 64,
        "import: {out} {err}"
    );
    let id = out.trim_start_matches("sha256:").to_string();
    let mut child = Command::new(tartan_tests::agent::tartan_bin()?)
        .args(["import", "-", "busybox:gz", "--api-socket"])
        .arg(agent.api_socket())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(&tarball(&root, true)?)?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "import -: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sha256:{id}"),
        "same content, same id"
    );

    let (ok, table, _) = run(&agent, &["images"])?;
    ensure!(ok);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    ensure!(rows.iter().all(|r| r.contains(&id[..12])), "{table}");
    let layers = std::fs::read_dir(agent.state_dir().join("images/layers"))?.count();
    assert_eq!(layers, 1, "one shared layer");

    // Bad input: one line each, and the store unchanged.
    let broken = dir.path().join("broken.tar");
    let full = std::fs::read(&archive)?;
    std::fs::write(&broken, &full[..full.len() / 3])?;
    let binary = tartan_tests::agent::tartan_bin()?
        .to_string_lossy()
        .into_owned();
    for (args, needle) in [
        (
            vec![
                "import".to_string(),
                broken.to_string_lossy().into(),
                "broken".into(),
            ],
            "truncated archive",
        ),
        (
            vec!["import".into(), binary.clone(), "binary".into()],
            "not a tar archive",
        ),
        (
            vec!["load".into(), "-i".into(), binary.clone()],
            "not a tar archive",
        ),
        (
            vec![
                "import".into(),
                archive.to_string_lossy().into(),
                "Bad Name".into(),
            ],
            "bad image reference",
        ),
        (
            vec!["import".into(), "/nonexistent.tar".into(), "x".into()],
            "/nonexistent.tar",
        ),
        (vec!["rmi".into(), "nosuch".into()], "no such image"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = run(&agent, &args)?;
        ensure!(
            !ok && err.lines().count() == 1 && err.contains(needle),
            "{args:?}: {err}"
        );
        // Neither the archive's bytes nor the agent's staging paths.
        ensure!(
            err.chars().all(|c| !c.is_control() && c != '\u{fffd}'),
            "{args:?}: {err:?}"
        );
        ensure!(
            !err.contains(&*agent.state_dir().to_string_lossy()),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_dir(agent.state_dir().join("images/layers"))?.count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(agent.state_dir().join("images/tmp"))?.count(),
        0
    );

    // The store survives a restart; rmi by tag, then by id prefix.
    agent.terminate()?;
    agent.restart()?;
    agent.wait_ready(READY)?;
    let (ok, out, _) = run(&agent, &["rmi", "busybox:gz"])?;
    ensure!(ok && out == "Untagged: busybox:gz", "{out}");
    let (ok, out, err) = run(&agent, &["rmi", &id[..8]])?;
    ensure!(
        ok && out == format!("Untagged: busybox:latest\nDeleted: sha256:{id}"),
        "{out} {err}"
    );
    assert_eq!(
        std::fs::read_dir(agent.state_dir().join("images/layers"))?.count(),
        0
    );
    let (_, table, _) = run(&agent, &["images"])?;
    assert_eq!(table.lines().count(), 1, "only the header is left: {table}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_save_archive_is_loaded_with_its_layers() -> Result<()> {
    let (_etcd, agent) = image_agent("load", "10.250.9.2").await?;
    let dir = tempfile::tempdir()?;
    let (l1, l2) = two_layers(dir.path())?;
    let archive = dir.path().join("save.tar");
    std::fs::write(
        &archive,
        docker_save(dir.path(), &l1, &l2, &["demo:1", "demo:latest"])?,
    )?;
    let (ok, out, err) = run(&agent, &["load", "-i", &archive.to_string_lossy()])?;
    ensure!(ok, "load: {err}");
    assert_eq!(out, "Loaded image: demo:1\nLoaded image: demo:latest");
    assert_eq!(
        std::fs::read_dir(agent.state_dir().join("images/layers"))?.count(),
        2
    );
    let (_, table, _) = run(&agent, &["images"])?;
    assert_eq!(table.lines().count(), 3, "{table}");

    let truncated = dir.path().join("short.tar");
    let full = std::fs::read(&archive)?;
    std::fs::write(&truncated, &full[..full.len() * 2 / 3])?;
    let (ok, _, err) = run(&agent, &["load", "-i", &truncated.to_string_lossy()])?;
    ensure!(
        !ok && err.lines().count() == 1 && err.contains("not a usable image"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(agent.state_dir().join("images/layers"))?.count(),
        2,
        "the store is as it was"
    );

    // CREATED is when the image was built, from its config, and reads as an age.
    let built = dir.path().join("built.tar");
    std::fs::write(
        &built,
        docker_save_with_config(
            dir.path(),
            &l1,
            &l2,
            &["built:1"],
            r#"{"created":"2020-03-04T05:06:07.123456789Z","os":"linux"}"#,
        )?,
    )?;
    let (ok, _, err) = run(&agent, &["load", "-i", &built.to_string_lossy()])?;
    ensure!(ok, "load: {err}");
    let (_, table, _) = run(&agent, &["images"])?;
    let row = |name: &str| {
        table
            .lines()
            .find(|row| row.starts_with(name))
            .map(str::to_string)
            .with_context(|| format!("no {name}: {table}"))
    };
    ensure!(row("built ")?.contains(" years ago "), "{table}");
    // Without a time in its config: when it was loaded.
    let demo = row("demo ")?;
    ensure!(demo.contains(" ago ") && !demo.contains("year"), "{table}");
    Ok(())
}
