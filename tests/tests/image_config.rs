//! A loaded image's own settings (Entrypoint, Cmd, Env, WorkingDir, User,
//! ExposedPorts, Volumes) applied by `run` with Docker's rules, shown by
//! `inspect`, and `tag`: a real agent, a real image archive, real containers.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, cli_within, import_busybox, text, VXLAN};
use tartan_tests::cluster::Cluster;
use tartan_tests::containers::inspect;
use tartan_tests::rootfs::{busybox_rootfs, docker_save_with_config, tarball};

const LIMIT: Duration = Duration::from_secs(60);

/// What `/report.sh` prints: its arguments, identity, directory and environment.
fn report(agent: &Agent, flags: &[&str], image: &str, command: &[&str]) -> Result<String> {
    let mut args = vec!["run", "--rm", "--net", "none"];
    args.extend_from_slice(flags);
    args.push(image);
    args.extend_from_slice(command);
    let out = cli_within(agent, &args, LIMIT)?;
    ensure!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    Ok(text(&out.stdout))
}

const REPORT: &str = r#"echo "args=$*"
id
echo "pwd=$(pwd)"
echo "greeting=$GREETING"
echo "path=$PATH"
echo "home=$HOME"
"#;

const CONFIG: &str = r#"{"created":"2024-01-02T03:04:05Z","os":"linux","config":{
  "Entrypoint":["/bin/sh","/report.sh"],"Cmd":["from-cmd"],
  "Env":["PATH=/opt/bin:/bin","GREETING=image"],"WorkingDir":"/srv/app","User":"app",
  "ExposedPorts":{"80/tcp":{},"53/udp":{}},"Volumes":{"/data":{}}}}"#;

/// A `docker save` archive of busybox with a user `app` (in group `staff`
/// too) and `/report.sh`, whose config sets every field `run` applies.
fn configured_image(dir: &Path) -> Result<Vec<u8>> {
    let base = busybox_rootfs(&dir.join("l1"))?;
    std::fs::write(
        base.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n",
    )?;
    std::fs::write(
        base.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
    )?;
    let top = dir.join("l2/rootfs");
    std::fs::create_dir_all(&top)?;
    std::fs::write(top.join("report.sh"), REPORT)?;
    docker_save_with_config(
        dir,
        &tarball(&base, false)?,
        &tarball(&top, false)?,
        &["cfg:1"],
        CONFIG,
    )
}

fn line<'a>(out: &'a str, key: &str) -> Result<&'a str> {
    out.lines()
        .find_map(|l| l.strip_prefix(key))
        .with_context(|| format!("no {key} in {out}"))
}

#[test]
fn a_loaded_images_config_is_applied_with_dockers_rules() -> Result<()> {
    let cluster = Cluster::start("imgcfg", 182, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("cfg.tar");
    std::fs::write(&archive, configured_image(dir.path())?)?;
    cli_ok(agent, &["load", "-i", &archive.display().to_string()])?;

    // The image alone: Entrypoint + Cmd, its user from its passwd (with the
    // supplementary group from its group file), a working directory made
    // for it, its environment and HOME.
    let out = report(agent, &[], "cfg:1", &[])?;
    assert_eq!(line(&out, "args=")?, "from-cmd", "{out}");
    let id = line(&out, "uid=")?;
    ensure!(
        id.starts_with("1000(app) gid=1000(app)") && id.contains("50(staff)"),
        "{out}"
    );
    assert_eq!(line(&out, "pwd=")?, "/srv/app", "{out}");
    assert_eq!(line(&out, "greeting=")?, "image", "{out}");
    assert_eq!(line(&out, "path=")?, "/opt/bin:/bin", "{out}");
    assert_eq!(line(&out, "home=")?, "/home/app", "{out}");

    // A command replaces Cmd; flags replace the rest; a uid:gid needs no entry.
    let out = report(
        agent,
        &["-e", "GREETING=flag", "-w", "/tmp", "-u", "4242:4343"],
        "cfg:1",
        &["given", "args"],
    )?;
    assert_eq!(line(&out, "args=")?, "given args", "{out}");
    ensure!(line(&out, "uid=")?.starts_with("4242 gid=4343"), "{out}");
    assert_eq!(line(&out, "pwd=")?, "/tmp", "{out}");
    assert_eq!(line(&out, "greeting=")?, "flag", "{out}");
    assert_eq!(line(&out, "home=")?, "/", "{out}");
    // A named group replaces the primary one and the supplementary ones.
    let out = report(agent, &["-u", "app:staff"], "cfg:1", &[])?;
    let id = line(&out, "uid=")?;
    ensure!(
        id.starts_with("1000(app) gid=50(staff)") && !id.contains("1000(app),"),
        "{out}"
    );

    // --entrypoint drops the image's Cmd; "" clears the entrypoint.
    let echoed = report(agent, &["--entrypoint", "/bin/echo"], "cfg:1", &[])?;
    assert_eq!(echoed, "\n");
    let echoed = report(agent, &["--entrypoint", "/bin/echo"], "cfg:1", &["hi"])?;
    assert_eq!(echoed, "hi\n");
    let plain = report(agent, &["--entrypoint", ""], "cfg:1", &["echo", "plain"])?;
    assert_eq!(plain, "plain\n");
    let none = cli_within(agent, &["run", "--rm", "--entrypoint", "", "cfg:1"], LIMIT)?;
    ensure!(
        !none.status.success() && text(&none.stderr).contains("No command specified"),
        "{}",
        text(&none.stderr)
    );

    // An unknown user: Docker's words and exit code, and nothing left behind.
    let unknown = cli_within(
        agent,
        &["run", "--rm", "--net", "none", "-u", "nobody", "cfg:1"],
        LIMIT,
    )?;
    let err = text(&unknown.stderr);
    assert_eq!(unknown.status.code(), Some(125), "{err}");
    ensure!(
        err.trim().lines().count() == 1
            && err.contains("unable to find user nobody: no matching entries in passwd file"),
        "{err}"
    );
    ensure!(cli_ok(agent, &["ps", "-a", "-q"])?.trim().is_empty());

    // exec runs as the container's user too, as Docker's does.
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "svc",
            "--net",
            "none",
            "--entrypoint",
            "sleep",
            "cfg:1",
            "1000",
        ],
    )?;
    let exec = cli_ok(agent, &["exec", "svc", "sh", "-c", "id; echo home=$HOME"])?;
    ensure!(
        exec.starts_with("uid=1000(app) gid=1000(app)") && line(&exec, "home=")? == "/home/app",
        "{exec}"
    );
    cli_ok(agent, &["rm", "-f", "svc"])?;

    // inspect shows what was applied, in Docker's shapes.
    let out = cli_within(
        agent,
        &["run", "--name", "shown", "--net", "none", "cfg:1"],
        LIMIT,
    )?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    let inspected = inspect(agent, "shown")?;
    let config = &inspected["config"];
    assert_eq!(config["entrypoint"], json!(["/bin/sh", "/report.sh"]));
    assert_eq!(config["cmd"], json!(["from-cmd"]));
    assert_eq!(config["user"], json!("app"));
    assert_eq!(config["working_dir"], json!("/srv/app"));
    assert_eq!(config["image"], json!("cfg:1"));
    assert_eq!(config["exposed_ports"], json!({"53/udp": {}, "80/tcp": {}}));
    assert_eq!(config["volumes"], json!({"/data": {}}));
    let env: Vec<&str> = config["env"]
        .as_array()
        .context("env")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(
        env.contains(&"GREETING=image") && env.contains(&"PATH=/opt/bin:/bin"),
        "{env:?}"
    );
    cli_ok(agent, &["rm", "shown"])?;

    // -P publishes what the image exposes, and its Volumes get anonymous
    // volumes, which rm -v removes.
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "exposed",
            "-P",
            "--entrypoint",
            "sleep",
            "cfg:1",
            "60",
        ],
    )?;
    let ports = cli_ok(agent, &["port", "exposed"])?;
    ensure!(
        ports.contains("80/tcp -> 0.0.0.0:") && ports.contains("53/udp -> 0.0.0.0:"),
        "{ports}"
    );
    let shown = inspect(agent, "exposed")?;
    let mounts = shown["Mounts"].as_array().context("Mounts")?.clone();
    ensure!(
        mounts.len() == 1 && mounts[0]["Type"] == "volume" && mounts[0]["Destination"] == "/data",
        "{mounts:?}"
    );
    let volume = mounts[0]["Name"].as_str().context("a name")?.to_string();
    cli_ok(agent, &["rm", "-f", "-v", "exposed"])?;
    let volumes = cli_ok(agent, &["volume", "ls", "-q"])?;
    ensure!(!volumes.contains(&volume), "rm -v left {volume}");
    Ok(())
}

#[test]
fn tag_names_an_image_again_and_rmi_takes_one_name() -> Result<()> {
    let cluster = Cluster::start("imgtag", 183, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("cfg.tar");
    std::fs::write(&archive, configured_image(dir.path())?)?;
    cli_ok(agent, &["load", "-i", &archive.display().to_string()])?;
    let images = cli_ok(agent, &["images"])?;
    let id = images
        .lines()
        .nth(1)
        .and_then(|row| row.split_whitespace().nth(2))
        .with_context(|| format!("no image: {images}"))?
        .to_string();

    // By name, and by id (the tag defaults to latest), silently as Docker.
    assert_eq!(cli_ok(agent, &["tag", "cfg:1", "other:2"])?, "");
    assert_eq!(cli_ok(agent, &["tag", &id, "third"])?, "");
    let images = cli_ok(agent, &["images"])?;
    for name in ["cfg ", "other ", "third "] {
        let row = images
            .lines()
            .find(|row| row.starts_with(name))
            .with_context(|| format!("no {name}: {images}"))?;
        ensure!(row.contains(&id), "{images}");
    }
    // A tag carries the image's config.
    let out = report(agent, &[], "other:2", &[])?;
    assert_eq!(line(&out, "args=")?, "from-cmd", "{out}");

    let bad = cli_within(agent, &["tag", "nosuch:1", "x"], LIMIT)?;
    ensure!(
        !bad.status.success() && text(&bad.stderr).contains("no such image: nosuch:1"),
        "{}",
        text(&bad.stderr)
    );
    let bad = cli_within(agent, &["tag", "cfg:1", "Bad Name"], LIMIT)?;
    ensure!(!bad.status.success(), "{}", text(&bad.stdout));

    // Moving the last name of an image a container uses is refused.
    import_busybox(agent)?;
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "keep", "--net", "none", "busybox", "sleep", "1000",
        ],
    )?;
    let moved = cli_within(agent, &["tag", "cfg:1", "busybox"], LIMIT)?;
    ensure!(
        !moved.status.success() && text(&moved.stderr).contains("image is in use by"),
        "{}",
        text(&moved.stderr)
    );
    cli_ok(agent, &["rm", "-f", "keep"])?;
    cli_ok(agent, &["tag", "cfg:1", "busybox"])?;

    // rmi of one tag keeps the others and the image.
    assert_eq!(
        cli_ok(agent, &["rmi", "other:2"])?.trim(),
        "Untagged: other:2"
    );
    let images = cli_ok(agent, &["images"])?;
    ensure!(
        !images.contains("other") && images.contains("cfg ") && images.contains("third "),
        "{images}"
    );
    let out = report(agent, &[], "third", &[])?;
    assert_eq!(line(&out, "args=")?, "from-cmd", "{out}");
    Ok(())
}
