//! `tartan init` for real: inside fresh mount, PID, UTS, IPC and network
//! namespaces (made here with `unshare`, as the supervisor will make them),
//! a busybox image becomes the root, and the command runs as PID 1 with
//! Docker's default capabilities and seccomp filter.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use tartan_runtime::container::ContainerSpec;
use tartan_runtime::init::InitSpec;
use tartan_runtime::ImageStore;
use tartan_tests::prereq;
use tartan_tests::rootfs::{busybox_rootfs, tarball};

fn run_init(dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    prereq::require_root()?;
    prereq::require_binary("unshare")?;
    let root = busybox_rootfs(&dir.join("src"))?;
    let store = ImageStore::open(&dir.join("store"))?;
    let image = store.import(&tarball(&root, false)?[..], &"busybox".parse()?)?;
    let container = dir.join("container");
    for sub in ["upper", "work", "rootfs"] {
        std::fs::create_dir_all(container.join(sub))?;
    }
    let spec = InitSpec {
        layers: image.layers.iter().map(|l| store.layer_dir(l)).collect(),
        upper: container.join("upper"),
        work: container.join("work"),
        merged: container.join("rootfs"),
        files: Vec::new(),
        container: ContainerSpec {
            hostname: "web".into(),
            env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
            args: args.iter().map(|a| a.to_string()).collect(),
            ..ContainerSpec::default()
        },
    };
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--uts", "--ipc", "--net"])
        .arg(tartan_tests::agent::tartan_bin()?)
        .arg("init")
        .arg(&spec_path)
        .output()
        .context("running tartan init")
}

#[test]
fn a_busybox_image_runs_as_pid_1_in_its_own_root() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let script = "echo $GREETING; hostname; echo pid=$$; ls /; grep CapBnd /proc/self/status; \
                  grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; ls /dev; touch /made-inside; \
                  ls /proc | grep -c '^[0-9]'";
    let out = run_init(dir.path(), &["sh", "-c", script])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "init failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "hello", "the environment: {stdout}");
    assert_eq!(lines[1], "web", "the hostname: {stdout}");
    assert_eq!(lines[2], "pid=1", "PID 1 of its own namespace: {stdout}");
    for entry in ["bin", "dev", "etc", "proc", "sys"] {
        ensure!(lines.contains(&entry), "/ has {entry}: {stdout}");
    }
    ensure!(
        stdout.contains("CapBnd:\t00000000a80425fb"),
        "Docker's default bounding set: {stdout}"
    );
    ensure!(
        lines.contains(&"NoNewPrivs:\t0"),
        "no no_new_privs unless asked, as in Docker: {stdout}"
    );
    ensure!(
        lines.contains(&"Seccomp:\t2"),
        "Docker's seccomp filter: {stdout}"
    );
    for node in ["null", "zero", "urandom", "tty", "pts", "ptmx", "shm"] {
        ensure!(lines.contains(&node), "/dev/{node}: {stdout}");
    }
    let procs: usize = lines.last().context("process count")?.parse()?;
    ensure!(
        procs <= 3,
        "only the container's processes in /proc, saw {procs}"
    );
    ensure!(
        dir.path().join("container/upper/made-inside").exists(),
        "writes land in the container's own layer"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    ensure!(
        !mounts.contains(&dir.path().display().to_string()),
        "no mount leaked to the host"
    );
    Ok(())
}

#[test]
fn a_missing_command_exits_127_and_says_why() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = run_init(dir.path(), &["/no/such/program"])?;
    assert_eq!(out.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.lines().count() == 1 && stderr.contains("/no/such/program"),
        "{stderr}"
    );
    Ok(())
}
