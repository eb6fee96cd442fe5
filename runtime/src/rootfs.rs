//! A container's root filesystem: the image layers under an overlay with a
//! private upper directory, the kernel filesystems on top, then pivot_root.
//! Everything here runs inside the container's own mount namespace, so the
//! mounts vanish with it and the host never sees them.

use std::path::{Path, PathBuf};

use crate::syscall::{
    Syscall, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC,
};
use crate::Result;

/// Where the pieces of one container's root filesystem live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsLayout {
    /// Image layers, lowest first.
    pub layers: Vec<PathBuf>,
    /// The container's writable layer and overlayfs's work directory (same filesystem).
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the merged view is mounted before it becomes `/`.
    pub merged: PathBuf,
}

/// The device nodes every container gets: name, major, minor.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Mounts the overlay and the kernel filesystems under `layout.merged`.
pub fn mount_rootfs(sys: &dyn Syscall, layout: &RootfsLayout) -> Result<()> {
    // Nothing mounted from here on may propagate back to the host.
    sys.mount("", Path::new("/"), "", MS_REC | MS_PRIVATE, "")?;
    // overlayfs lists lowerdirs top first.
    let lower: Vec<String> = layout
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        layout.upper.display(),
        layout.work.display()
    );
    sys.mount("overlay", &layout.merged, "overlay", 0, &data)?;
    let root = &layout.merged;
    sys.mkdir_all(&root.join("proc"))?;
    sys.mount(
        "proc",
        &root.join("proc"),
        "proc",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "",
    )?;
    sys.mkdir_all(&root.join("sys"))?;
    sys.mount(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY,
        "",
    )?;
    let dev = root.join("dev");
    sys.mkdir_all(&dev)?;
    sys.mount("tmpfs", &dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")?;
    for (name, major, minor) in DEVICES {
        sys.mknod_char(&dev.join(name), 0o666, major, minor)?;
    }
    sys.mkdir_all(&dev.join("pts"))?;
    sys.mount(
        "devpts",
        &dev.join("pts"),
        "devpts",
        MS_NOSUID | MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )?;
    sys.symlink(Path::new("pts/ptmx"), &dev.join("ptmx"))?;
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(Path::new(target), &dev.join(link))?;
    }
    sys.mkdir_all(&dev.join("shm"))?;
    sys.mount(
        "shm",
        &dev.join("shm"),
        "tmpfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC,
        "mode=1777,size=65536k",
    )?;
    Ok(())
}

/// Makes `merged` the root. The `pivot_root(".", ".")` form needs no
/// directory for the old root: after it, the old root is stacked on top of
/// the new one at `/`, and a lazy unmount of `.` takes it away, leaving the
/// container with no path to the host's filesystem.
pub fn pivot_into(sys: &dyn Syscall, merged: &Path) -> Result<()> {
    // pivot_root needs the new root to be a mount point; bind it onto itself to be sure.
    sys.mount(
        &merged.display().to_string(),
        merged,
        "",
        MS_BIND | MS_REC,
        "",
    )?;
    sys.chdir(merged)?;
    sys.pivot_root(Path::new("."), Path::new("."))?;
    sys.umount_detach(Path::new("."))?;
    sys.chdir(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    fn layout() -> RootfsLayout {
        RootfsLayout {
            layers: vec![
                PathBuf::from("/s/layers/base"),
                PathBuf::from("/s/layers/top"),
            ],
            upper: PathBuf::from("/s/c/upper"),
            work: PathBuf::from("/s/c/work"),
            merged: PathBuf::from("/s/c/rootfs"),
        }
    }

    #[test]
    fn the_overlay_comes_first_with_the_top_layer_first() {
        let sys = RecordingSyscall::default();
        mount_rootfs(&sys, &layout()).expect("mounts");
        let calls = sys.calls.borrow();
        assert!(
            matches!(&calls[0], Call::Mount { target, flags, .. } if target == Path::new("/") && *flags == MS_REC | MS_PRIVATE)
        );
        match &calls[1] {
            Call::Mount {
                fstype,
                data,
                target,
                ..
            } => {
                assert_eq!(fstype, "overlay");
                assert_eq!(target, Path::new("/s/c/rootfs"));
                assert_eq!(
                    data,
                    "lowerdir=/s/layers/top:/s/layers/base,upperdir=/s/c/upper,workdir=/s/c/work"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        let mounted: Vec<&str> = calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { fstype, .. } => Some(fstype.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            mounted,
            ["", "overlay", "proc", "sysfs", "tmpfs", "devpts", "tmpfs"]
        );
        let sysfs_ro = calls.iter().any(|c| matches!(c, Call::Mount { fstype, flags, .. } if fstype == "sysfs" && flags & MS_RDONLY != 0));
        assert!(sysfs_ro, "/sys is read-only");
        let nodes = calls
            .iter()
            .filter(|c| matches!(c, Call::MknodChar(..)))
            .count();
        assert_eq!(nodes, DEVICES.len());
        assert!(calls.contains(&Call::Symlink(
            PathBuf::from("pts/ptmx"),
            PathBuf::from("/s/c/rootfs/dev/ptmx")
        )));
    }

    #[test]
    fn pivot_root_drops_the_old_root() {
        let sys = RecordingSyscall::default();
        pivot_into(&sys, Path::new("/s/c/rootfs")).expect("pivot");
        let calls = sys.calls.borrow();
        assert_eq!(
            calls[1..],
            [
                Call::Chdir(PathBuf::from("/s/c/rootfs")),
                Call::PivotRoot(PathBuf::from("."), PathBuf::from(".")),
                Call::UmountDetach(PathBuf::from(".")),
                Call::Chdir(PathBuf::from("/")),
            ]
        );
    }
}
