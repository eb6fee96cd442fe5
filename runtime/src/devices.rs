//! The host's device nodes, for `--privileged`: Docker gives a privileged
//! container every character and block device of the host's `/dev`, made
//! anew in the container's own `/dev`. Listed here, before the container's
//! root replaces the host's; made by [`crate::rootfs::mount_rootfs`].

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::syscall::DeviceKind;
use crate::Result;

/// One device node, by its path under `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Relative to `/dev` (`sda`, `net/tun`).
    pub path: PathBuf,
    pub kind: DeviceKind,
    /// The permission bits.
    pub mode: u32,
    pub major: u32,
    pub minor: u32,
}

/// Directories under `/dev` that are not the host's devices to pass on:
/// the container has its own pts, shm and mqueue, and `fd` is a link to
/// its own descriptors (as runc's host device walk skips them).
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// Every character and block device under `dev`, its subdirectories
/// included, except the host's console (the container has a terminal of
/// its own or none). Links and other files are not devices.
pub fn host_devices(dev: &Path) -> Result<Vec<DeviceNode>> {
    let mut found = Vec::new();
    walk(dev, Path::new(""), &mut found)?;
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

fn walk(dev: &Path, relative: &Path, found: &mut Vec<DeviceNode>) -> Result<()> {
    let dir = dev.join(relative);
    let entries = std::fs::read_dir(&dir).map_err(io_err("listing", &dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("listing", &dir))?;
        let name = entry.file_name();
        let path = relative.join(&name);
        // Not following links: /dev/stdin and the like point elsewhere.
        let meta = match std::fs::symlink_metadata(entry.path()) {
            Ok(meta) => meta,
            // Gone since the listing (a hot-unplugged device).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_err("reading", entry.path())(err)),
        };
        let file_type = meta.file_type();
        if file_type.is_dir() {
            if !SKIPPED_DIRS.iter().any(|skipped| name == *skipped) {
                walk(dev, &path, found)?;
            }
            continue;
        }
        let kind = if file_type.is_char_device() {
            DeviceKind::Char
        } else if file_type.is_block_device() {
            DeviceKind::Block
        } else {
            continue;
        };
        if relative.as_os_str().is_empty() && name == "console" {
            continue;
        }
        let rdev = meta.rdev();
        found.push(DeviceNode {
            path,
            kind,
            mode: meta.mode() & 0o7777,
            major: libc::major(rdev),
            minor: libc::minor(rdev),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_s_null_device_is_found_and_links_are_not() {
        let devices = host_devices(Path::new("/dev")).expect("listing /dev");
        let null = devices
            .iter()
            .find(|d| d.path == Path::new("null"))
            .expect("/dev/null is listed");
        assert_eq!(
            (null.kind, null.major, null.minor),
            (DeviceKind::Char, 1, 3)
        );
        assert!(
            !devices
                .iter()
                .any(|d| d.path.starts_with("pts") || d.path == Path::new("stdin")),
            "neither the host's pts nor links"
        );
        assert!(!devices.iter().any(|d| d.path == Path::new("console")));
    }
}
