//! A container's root filesystem: the image layers under an overlay with a
//! private upper directory, the kernel filesystems on top, then pivot_root.
//! Everything here runs inside the container's own mount namespace, so the
//! mounts vanish with it and the host never sees them. Once it is the root,
//! Docker's read-only and masked kernel paths close the ways out through
//! `/proc` and `/sys`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::devices::DeviceNode;
use crate::syscall::{
    DeviceKind, PathKind, Syscall, MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY,
    MS_REC, MS_REMOUNT,
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
    /// `--privileged`: `/sys` stays writable, as in Docker.
    pub privileged: bool,
    /// The host's devices, made in the container's `/dev` besides its own
    /// (`--privileged`; empty otherwise).
    pub host_devices: Vec<DeviceNode>,
}

/// Docker's default read-only paths (moby `oci/defaults.go`): the host's
/// kernel settings (`/proc/sys/kernel/core_pattern` runs a program as the
/// host's root), its interrupts and sysrq.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Docker's default masked paths (moby `oci/defaults.go`): the host's
/// memory, keys, timers and firmware. A directory gets an empty read-only
/// tmpfs over it, a file `/dev/null`.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

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
    let sys_readonly = if layout.privileged { 0 } else { MS_RDONLY };
    sys.mount(
        "sysfs",
        &root.join("sys"),
        "sysfs",
        MS_NOSUID | MS_NODEV | MS_NOEXEC | sys_readonly,
        "",
    )?;
    let dev = root.join("dev");
    sys.mkdir_all(&dev)?;
    sys.mount("tmpfs", &dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")?;
    for (name, major, minor) in DEVICES {
        sys.mknod(&dev.join(name), DeviceKind::Char, 0o666, major, minor)?;
    }
    // Those the container has of its own (and `ptmx`, its devpts's) stay its own.
    let own = |path: &Path| {
        path == Path::new("ptmx") || DEVICES.iter().any(|(name, ..)| path == Path::new(name))
    };
    for device in layout.host_devices.iter().filter(|d| !own(&d.path)) {
        let path = dev.join(&device.path);
        if let Some(parent) = path.parent() {
            sys.mkdir_all(parent)?;
        }
        sys.mknod(&path, device.kind, device.mode, device.major, device.minor)?;
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

/// Inside the new root: writes the `--sysctl` settings (already checked to
/// be the container's own), then, unless privileged, makes Docker's
/// read-only paths read-only and masks its masked paths. Paths this kernel
/// lacks are skipped.
pub fn restrict_kernel_paths(
    sys: &dyn Syscall,
    sysctls: &BTreeMap<String, String>,
    privileged: bool,
) -> Result<()> {
    for (key, value) in sysctls {
        let relative = if key.contains('/') {
            key.clone()
        } else {
            key.replace('.', "/")
        };
        sys.write_file(&Path::new("/proc/sys").join(relative), value.as_bytes())?;
    }
    if privileged {
        return Ok(());
    }
    for path in READONLY_PATHS.map(Path::new) {
        if sys.path_kind(path)? == PathKind::Missing {
            continue;
        }
        let name = path.display().to_string();
        sys.mount(&name, path, "", MS_BIND | MS_REC, "")?;
        // A bind remount sets the mount's flags to exactly these: keep /proc's.
        sys.mount(
            &name,
            path,
            "",
            MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
            "",
        )?;
    }
    for path in MASKED_PATHS.map(Path::new) {
        match sys.path_kind(path)? {
            PathKind::Missing => {}
            PathKind::Directory => sys.mount("tmpfs", path, "tmpfs", MS_RDONLY, "")?,
            PathKind::Other => sys.mount("/dev/null", path, "", MS_BIND, "")?,
        }
    }
    Ok(())
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
            privileged: false,
            host_devices: Vec::new(),
        }
    }

    fn mounts(sys: &RecordingSyscall) -> Vec<(String, PathBuf, u64)> {
        sys.calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Mount {
                    source,
                    target,
                    flags,
                    ..
                } => Some((source.clone(), target.clone(), *flags)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sysctls_are_written_before_dockers_paths_close() {
        let sys = RecordingSyscall {
            directories: vec![
                "/proc/sys".into(),
                "/proc/acpi".into(),
                "/sys/firmware".into(),
            ],
            missing: vec!["/proc/timer_stats".into(), "/proc/bus".into()],
            ..RecordingSyscall::default()
        };
        let sysctls = BTreeMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        restrict_kernel_paths(&sys, &sysctls, false).expect("restricts");
        assert_eq!(
            sys.calls.borrow()[0],
            Call::WriteFile("/proc/sys/net/ipv4/ip_forward".into(), b"1".to_vec())
        );
        let mounts = mounts(&sys);
        let ro = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
        let mut expected = Vec::new();
        for path in ["/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"] {
            expected.push((path.to_string(), PathBuf::from(path), MS_BIND | MS_REC));
            expected.push((path.to_string(), PathBuf::from(path), ro));
        }
        for path in MASKED_PATHS {
            let source = match path {
                "/proc/timer_stats" => continue,
                "/proc/acpi" | "/sys/firmware" => "tmpfs",
                _ => "/dev/null",
            };
            let flags = if source == "tmpfs" {
                MS_RDONLY
            } else {
                MS_BIND
            };
            expected.push((source.to_string(), PathBuf::from(path), flags));
        }
        assert_eq!(mounts, expected);
    }

    #[test]
    fn privileged_containers_keep_proc_and_sys_open() {
        let sys = RecordingSyscall::default();
        let sysctls = BTreeMap::from([("kernel.shmmax".to_string(), "9".to_string())]);
        restrict_kernel_paths(&sys, &sysctls, true).expect("restricts");
        assert_eq!(
            *sys.calls.borrow(),
            [Call::WriteFile(
                "/proc/sys/kernel/shmmax".into(),
                b"9".to_vec()
            )]
        );
        let rootfs = RecordingSyscall::default();
        mount_rootfs(
            &rootfs,
            &RootfsLayout {
                privileged: true,
                ..layout()
            },
        )
        .expect("mounts");
        let sysfs = mounts(&rootfs)
            .into_iter()
            .find(|(source, ..)| source == "sysfs")
            .expect("sysfs");
        assert_eq!(sysfs.2 & MS_RDONLY, 0, "/sys is writable when privileged");
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
            .filter(|c| matches!(c, Call::Mknod(..)))
            .count();
        assert_eq!(nodes, DEVICES.len());
        assert!(calls.contains(&Call::Symlink(
            PathBuf::from("pts/ptmx"),
            PathBuf::from("/s/c/rootfs/dev/ptmx")
        )));
    }

    #[test]
    fn a_privileged_container_gets_the_host_s_devices_beside_its_own() {
        let sys = RecordingSyscall::default();
        let device = |path: &str, kind, major, minor| DeviceNode {
            path: PathBuf::from(path),
            kind,
            mode: 0o660,
            major,
            minor,
        };
        let layout = RootfsLayout {
            privileged: true,
            host_devices: vec![
                device("null", DeviceKind::Char, 1, 3),
                device("ptmx", DeviceKind::Char, 5, 2),
                device("net/tun", DeviceKind::Char, 10, 200),
                device("vda", DeviceKind::Block, 254, 0),
            ],
            ..layout()
        };
        mount_rootfs(&sys, &layout).expect("mount");
        let calls = sys.calls.borrow();
        let dev = Path::new("/s/c/rootfs/dev");
        assert!(calls.contains(&Call::MkdirAll(dev.join("net"))));
        assert!(calls.contains(&Call::Mknod(
            dev.join("net/tun"),
            DeviceKind::Char,
            0o660,
            10,
            200
        )));
        assert!(calls.contains(&Call::Mknod(
            dev.join("vda"),
            DeviceKind::Block,
            0o660,
            254,
            0
        )));
        let nodes = calls
            .iter()
            .filter(|c| matches!(c, Call::Mknod(..)))
            .count();
        assert_eq!(
            nodes,
            DEVICES.len() + 2,
            "its own null and ptmx stay its own"
        );
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
