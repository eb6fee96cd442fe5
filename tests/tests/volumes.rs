//! Volumes end to end: busybox containers with bind mounts (read-write and
//! read-only), named volumes filled from the image and kept after their
//! containers and across an agent restart, anonymous volumes removed with
//! `rm -v`, `--volumes-from`, the `volume` commands, and bad input refused
//! with nothing made.

use std::path::Path;

use anyhow::{ensure, Result};
use serde_json::Value;
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, import_busybox, text, VXLAN};
use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::containers::{inspect, refused};
use tartan_tests::rootfs::{busybox_rootfs, tarball};

fn volume_names(agent: &Agent) -> Result<Vec<String>> {
    Ok(cli_ok(agent, &["volume", "ls", "-q"])?
        .lines()
        .map(str::to_string)
        .collect())
}

/// Mounts of the host's mount namespace under `dir`: a container's mounts
/// must stay in its own.
fn host_mounts_under(dir: &Path) -> Result<usize> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let dir = dir.display().to_string();
    Ok(table.lines().filter(|l| l.contains(&dir)).count())
}

#[test]
fn binds_are_read_write_or_read_only_and_bad_input_makes_nothing() -> Result<()> {
    let cluster = Cluster::start("vb", 190, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    let host = tempfile::tempdir()?;
    let data = host.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::write(data.join("seed"), "from the host")?;
    let rw = format!("{}/:/tmp/data", data.display());
    let out = cli_ok(
        agent,
        &[
            "run",
            "--rm",
            "--net",
            "none",
            "-v",
            &rw,
            "busybox",
            "sh",
            "-c",
            "cat /tmp/data/seed && echo written > /tmp/data/made",
        ],
    )?;
    ensure!(out.contains("from the host"), "the container read {out:?}");
    assert_eq!(std::fs::read_to_string(data.join("made"))?, "written\n");

    let ro = format!("{}:/tmp/data:ro", data.display());
    let out = agent.cli(&[
        "run",
        "--rm",
        "--net",
        "none",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /tmp/data/seed && touch /tmp/data/refused",
    ])?;
    ensure!(!out.status.success(), "a write through :ro succeeded");
    ensure!(
        text(&out.stdout).contains("from the host"),
        "read-only still reads: {}",
        text(&out.stdout)
    );
    ensure!(
        text(&out.stderr).contains("Read-only file system"),
        "{}",
        text(&out.stderr)
    );
    ensure!(!data.join("refused").exists(), "the write reached the host");

    // A missing source is made as a directory, as Docker's -v makes it.
    let missing = host.path().join("new/sub");
    let spec = format!("{}:/srv", missing.display());
    cli_ok(
        agent,
        &[
            "run", "--rm", "--net", "none", "-v", &spec, "busybox", "touch", "/srv/x",
        ],
    )?;
    ensure!(
        missing.join("x").is_file(),
        "the missing source was not made"
    );
    assert_eq!(
        host_mounts_under(host.path())?,
        0,
        "a mount leaked to the host"
    );

    // Bad input: one line, and no container, volume or directory made.
    let absent = host.path().join("absent");
    let absent_mode = format!("{}:/x:rx", absent.display());
    let absent_relative = format!("{}:x", absent.display());
    for (args, says) in [
        (vec!["-v", absent_relative.as_str()], "must be absolute"),
        (vec!["-v", absent_mode.as_str()], "invalid mode: rx"),
        (vec!["-v", "/x:ro"], "invalid volume specification"),
        (vec!["-v", "b@d:/x"], "invalid characters"),
        (
            vec!["-v", "made:/x", "--volumes-from", "nosuch"],
            "no such container: nosuch",
        ),
        (
            vec!["-v", "/cache", "--volumes-from", "nosuch:rx"],
            "invalid mode: rx",
        ),
        (
            vec!["-v", "/a:/x", "-v", "/b:/x"],
            "Duplicate mount point: /x",
        ),
    ] {
        let mut run = vec!["run", "--rm", "--net", "none"];
        run.extend(&args);
        run.extend(["busybox", "true"]);
        let err = refused(agent, &run)?;
        ensure!(err.contains(says), "{args:?}: {err}");
    }
    ensure!(!absent.exists(), "a refused run made its bind source");

    // An image whose symlink points at a host path: the mount lands inside
    // the container's root, and nothing is made on the host.
    let image_dir = tempfile::tempdir()?;
    let root = busybox_rootfs(image_dir.path())?;
    let outside = host.path().join("outside");
    std::os::unix::fs::symlink(&outside, root.join("escape"))?;
    let archive = image_dir.path().join("linky.tar");
    std::fs::write(&archive, tarball(&root, false)?)?;
    cli_ok(agent, &["import", &archive.display().to_string(), "linky"])?;
    let through_link = format!("{}:/escape/sub", data.display());
    let out = cli_ok(
        agent,
        &[
            "run",
            "--rm",
            "--net",
            "none",
            "-v",
            &through_link,
            "linky",
            "cat",
            "/escape/sub/seed",
        ],
    )?;
    ensure!(out.contains("from the host"), "through the link: {out:?}");
    ensure!(
        !outside.exists(),
        "the image's symlink made {} on the host",
        outside.display()
    );
    assert_eq!(
        host_mounts_under(host.path())?,
        0,
        "a mount leaked to the host"
    );
    ensure!(
        volume_names(agent)?.is_empty(),
        "a refused run made a volume"
    );
    ensure!(
        cli_ok(agent, &["ps", "-a", "-q"])?.trim().is_empty(),
        "a refused run left a container"
    );
    Ok(())
}

#[test]
fn named_volumes_are_filled_from_the_image_kept_and_outlive_the_agent() -> Result<()> {
    let mut cluster = Cluster::start("vn", 191, VXLAN, 1)?;
    import_busybox(&cluster.agents[0])?;
    {
        let agent = &cluster.agents[0];
        let id = cli_ok(
            agent,
            &[
                "run",
                "-d",
                "--name",
                "db",
                "--net",
                "none",
                "-v",
                "etcvol:/etc",
                "busybox",
                "sleep",
                "1000",
            ],
        )?;
        let id = id.trim().to_string();
        // Filled from the image's /etc on first use.
        let passwd = cli_ok(agent, &["exec", "db", "cat", "/etc/passwd"])?;
        ensure!(
            passwd.starts_with("root:x:0:0"),
            "the volume holds {passwd:?}"
        );
        cli_ok(
            agent,
            &["exec", "db", "sh", "-c", "echo kept > /etc/marker"],
        )?;
        let mounts = inspect(agent, "db")?["Mounts"].clone();
        let mount = &mounts[0];
        ensure!(
            mount["Type"] == "volume"
                && mount["Name"] == "etcvol"
                && mount["Destination"] == "/etc"
                && mount["RW"] == true
                && mount["Source"]
                    .as_str()
                    .is_some_and(|s| s.ends_with("/volumes/etcvol/_data")),
            "Mounts: {mounts}"
        );

        // In use by a container, running or not: refused with Docker's words.
        let err = refused(agent, &["volume", "rm", "etcvol"])?;
        ensure!(
            err.contains(&format!("remove etcvol: volume is in use - [{id}]")),
            "{err}"
        );
        cli_ok(agent, &["stop", "-t", "1", "db"])?;
        let err = refused(agent, &["volume", "rm", "etcvol"])?;
        ensure!(err.contains("volume is in use"), "{err}");
        cli_ok(agent, &["rm", "-v", "db"])?;
        ensure!(
            volume_names(agent)? == ["etcvol"],
            "a named volume goes only by volume rm"
        );
    }

    cluster.agents[0].terminate()?;
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    let agent = &cluster.agents[0];
    let out = cli_ok(
        agent,
        &[
            "run",
            "--rm",
            "--net",
            "none",
            "-v",
            "etcvol:/seed:ro",
            "busybox",
            "cat",
            "/seed/marker",
        ],
    )?;
    assert_eq!(
        out, "kept\n",
        "the data outlived its container and the agent"
    );
    cli_ok(agent, &["volume", "rm", "etcvol"])?;
    ensure!(volume_names(agent)?.is_empty(), "volume rm left it");
    Ok(())
}

#[test]
fn anonymous_volumes_volumes_from_and_the_volume_commands() -> Result<()> {
    let cluster = Cluster::start("va", 192, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    let host = tempfile::tempdir()?;
    let data = host.path().join("data");
    let bind = format!("{}:/tmp/data", data.display());
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "c8", "--net", "none", "-v", "/cache", "-v", &bind, "busybox",
            "sleep", "1000",
        ],
    )?;
    let anonymous = volume_names(agent)?;
    ensure!(
        anonymous.len() == 1
            && anonymous[0].len() == 64
            && anonymous[0].chars().all(|c| c.is_ascii_hexdigit()),
        "volumes: {anonymous:?}"
    );

    // The same mounts as c8's, binds included; read-only when asked.
    cli_ok(
        agent,
        &[
            "run",
            "--rm",
            "--net",
            "none",
            "--volumes-from",
            "c8",
            "busybox",
            "sh",
            "-c",
            "echo shared > /cache/f && echo bound > /tmp/data/g",
        ],
    )?;
    assert_eq!(
        cli_ok(agent, &["exec", "c8", "cat", "/cache/f"])?,
        "shared\n"
    );
    assert_eq!(std::fs::read_to_string(data.join("g"))?, "bound\n");
    let out = agent.cli(&[
        "run",
        "--rm",
        "--net",
        "none",
        "--volumes-from",
        "c8:ro",
        "busybox",
        "sh",
        "-c",
        "cat /cache/f && touch /cache/h",
    ])?;
    ensure!(
        !out.status.success() && text(&out.stdout) == "shared\n",
        "--volumes-from c8:ro: {out:?}"
    );
    ensure!(
        volume_names(agent)? == anonymous,
        "run --rm with --volumes-from removed c8's volume"
    );

    // rm -v takes the container's own anonymous volumes, rm alone keeps them.
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "c9", "--net", "none", "-v", "/scratch", "busybox", "sleep",
            "1000",
        ],
    )?;
    ensure!(volume_names(agent)?.len() == 2, "c9 has no volume");
    cli_ok(agent, &["rm", "-f", "-v", "c9"])?;
    ensure!(volume_names(agent)? == anonymous, "rm -v left c9's volume");
    cli_ok(agent, &["rm", "-f", "c8"])?;
    ensure!(
        volume_names(agent)? == anonymous,
        "rm without -v removed c8's"
    );

    // The volume commands.
    assert_eq!(cli_ok(agent, &["volume", "create", "made"])?, "made\n");
    let listing = cli_ok(agent, &["volume", "ls"])?;
    ensure!(
        listing.starts_with("DRIVER    VOLUME NAME\n") && listing.contains("local     made\n"),
        "volume ls:\n{listing}"
    );
    let shown: Value = serde_json::from_str(&cli_ok(agent, &["volume", "inspect", "made"])?)?;
    ensure!(
        shown[0]["Name"] == "made"
            && shown[0]["Driver"] == "local"
            && shown[0]["Mountpoint"]
                .as_str()
                .is_some_and(|m| Path::new(m).is_dir()),
        "volume inspect: {shown}"
    );
    let err = refused(agent, &["volume", "create", "b@d"])?;
    ensure!(err.contains("invalid"), "{err}");
    // Prune takes the unused anonymous volume and keeps the named one.
    let pruned = cli_ok(agent, &["volume", "prune", "-f"])?;
    ensure!(
        pruned.contains(&anonymous[0]) && !pruned.contains("made"),
        "prune:\n{pruned}"
    );
    assert_eq!(volume_names(agent)?, ["made"]);
    assert_eq!(cli_ok(agent, &["volume", "rm", "made"])?, "made\n");
    let err = refused(agent, &["volume", "inspect", "made"])?;
    ensure!(err.contains("no such volume: made"), "{err}");
    Ok(())
}
