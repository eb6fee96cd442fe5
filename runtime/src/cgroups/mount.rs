//! cgroupfs for a mount namespace that lacks it. `ip netns exec` gives the
//! program a fresh `/sys` without the host's cgroup mounts; an agent run
//! that way mounts the hierarchies its processes belong to (as listed in
//! `/proc/self/cgroup`) where the host has them, in its own namespace only.

use std::ffi::CString;
use std::path::Path;

use crate::error::io_err;
use crate::{Result, RuntimeError};

const ROOT: &str = "/sys/fs/cgroup";

/// What `/proc/self/cgroup` says is to be mounted.
#[derive(Debug, PartialEq, Eq)]
pub enum Hierarchies {
    /// The unified hierarchy only.
    Unified,
    /// v1 hierarchies by their controllers ("cpu,cpuacct").
    V1(Vec<String>),
}

pub fn hierarchies(proc_cgroup: &str) -> Hierarchies {
    let v1: Vec<String> = proc_cgroup
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .filter(|controllers| !controllers.is_empty() && !controllers.starts_with("name="))
        .map(str::to_string)
        .collect();
    if v1.is_empty() {
        Hierarchies::Unified
    } else {
        Hierarchies::V1(v1)
    }
}

fn mount(source: &str, target: &Path, fstype: &str, data: &str) -> Result<()> {
    let path = |s: &str| {
        CString::new(s).map_err(|_| RuntimeError::Limits(format!("bad mount argument {s:?}")))
    };
    let (source, fstype, data) = (path(source)?, path(fstype)?, path(data)?);
    let target_c = path(&target.to_string_lossy())?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io_err("mounting cgroupfs at", target)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Mounts cgroupfs at `/sys/fs/cgroup` unless this mount namespace has it;
/// whether it did.
pub fn mount_if_missing() -> Result<bool> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let table = std::fs::read_to_string(mountinfo).map_err(io_err("reading", mountinfo))?;
    let mounted = table.lines().any(|line| {
        line.split_once(" - ")
            .is_some_and(|(_, right)| right.starts_with("cgroup ") || right.starts_with("cgroup2 "))
    });
    if mounted {
        return Ok(false);
    }
    let own = Path::new("/proc/self/cgroup");
    let text = std::fs::read_to_string(own).map_err(io_err("reading", own))?;
    let root = Path::new(ROOT);
    match hierarchies(&text) {
        Hierarchies::Unified => mount("cgroup2", root, "cgroup2", "")?,
        Hierarchies::V1(list) => {
            mount("tmpfs", root, "tmpfs", "mode=755")?;
            for controllers in list {
                let dir = root.join(&controllers);
                std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
                mount("cgroup", &dir, "cgroup", &controllers)?;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hierarchies_come_from_the_processs_own_cgroups() {
        let hybrid = "9:name=systemd:/\n8:pids:/\n4:memory:/x\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            hierarchies(hybrid),
            Hierarchies::V1(vec!["pids".into(), "memory".into(), "cpu,cpuacct".into()])
        );
        assert_eq!(hierarchies("0::/user.slice\n"), Hierarchies::Unified);
    }
}
