//! The cgroup v2 device rules against the real kernel: Docker's rules as an
//! eBPF program attached to a cgroup of the test's own in the unified
//! hierarchy (the host's v2 mount, or a hybrid host's `unified` one), and a
//! shell moved into it that opens devices by the host's own nodes.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use tartan_runtime::cgroups::device_filter::{default_program, load_and_attach};

/// Where the unified hierarchy is mounted.
fn unified_root() -> Result<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in table.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() == Some("cgroup2") {
            if let Some(point) = left.split(' ').nth(4) {
                return Ok(PathBuf::from(point));
            }
        }
    }
    bail!("this machine mounts no cgroup2 hierarchy to attach a device program to")
}

/// A cgroup of the test's own, removed on drop (its one process has ended).
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::fs::remove_dir(&self.0).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// What a shell (moved into `cgroup` first, if given) can open: the host's
/// null device, and a device outside Docker's list. (Each open is in a
/// subshell: a failed redirection of `:` ends the shell that runs it.)
fn opens(cgroup: Option<&Path>, other: &str) -> Result<String> {
    let script = r#"
        if [ -n "$1" ]; then echo $$ > "$1/cgroup.procs" || exit 9; fi
        if ( : < /dev/null ) 2>/dev/null; then echo null; fi
        if ( : < "$2" ) 2>/dev/null; then echo other; fi
    "#;
    let cgroup = cgroup.map(|c| c.display().to_string()).unwrap_or_default();
    let out = Command::new("sh")
        .args(["-c", script, "sh", &cgroup, other])
        .output()
        .context("running sh")?;
    ensure!(out.status.success(), "sh failed: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" "))
}

#[test]
fn docker_s_rules_as_a_bpf_program_refuse_other_devices() -> Result<()> {
    let other = ["/dev/loop-control", "/dev/vcs", "/dev/tty1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("the host has none of /dev/loop-control, /dev/vcs, /dev/tty1 to try")?;
    assert_eq!(
        opens(None, other)?,
        "null other",
        "outside the cgroup, root opens both"
    );

    let root = unified_root()?;
    let cgroup = TestCgroup(root.join(format!("tartan-test-devices-{}", std::process::id())));
    std::fs::create_dir(&cgroup.0).with_context(|| format!("creating {}", cgroup.0.display()))?;
    load_and_attach(&cgroup.0, &default_program()?)?;
    assert_eq!(
        opens(Some(&cgroup.0), other)?,
        "null",
        "inside, only Docker's devices open"
    );
    Ok(())
}
