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

/// Whether this mount namespace has cgroupfs.
pub fn is_mounted() -> Result<bool> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let table = std::fs::read_to_string(mountinfo).map_err(io_err("reading", mountinfo))?;
    Ok(table.lines().any(|line| {
        line.split_once(" - ")
            .is_some_and(|(_, right)| right.starts_with("cgroup ") || right.starts_with("cgroup2 "))
    }))
}

/// Mounts cgroupfs, when this mount namespace lacks it, in a private
/// mount namespace this process moves to, so that the caller's is left as
/// it was. For a short-lived process (`exec`) that must reach cgroupfs.
/// Must be called from a process with a single thread.
pub fn mount_privately_if_missing() -> Result<()> {
    if is_mounted()? {
        return Ok(());
    }
    let failed = |op: &'static str| RuntimeError::Io {
        op,
        path: ROOT.into(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: unshare of this single-threaded process's own mount namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(failed(
            "taking a mount namespace of its own to mount cgroupfs at",
        ));
    }
    // SAFETY: NUL-terminated literals; nothing mounted here may reach the caller's namespace.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(failed("making the mounts private before mounting"));
    }
    mount_if_missing().map(|_| ())
}

/// Mounts cgroupfs at `/sys/fs/cgroup` unless this mount namespace has it;
/// whether it did.
pub fn mount_if_missing() -> Result<bool> {
    if is_mounted()? {
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
