//! Volumes and bind mounts (`run -v`, `--volumes-from`): host directories
//! (or files) bound into the container's root while it is still being
//! built, so that its process finds them in place and the host sees none of
//! the mounts (they live in the container's mount namespace). A named
//! volume's directory is filled from the image's content at its path the
//! first time it is used, as Docker does.

use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::syscall::{PathKind, Syscall, MS_BIND, MS_RDONLY, MS_REC, MS_REMOUNT};
use crate::Result;

/// Docker's mount types, as `inspect` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountKind {
    Bind,
    Volume,
}

/// One mount of a container, as recorded and handed to its init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    pub kind: MountKind,
    /// The volume's name; empty for a bind mount.
    #[serde(default)]
    pub name: String,
    /// On the host.
    pub source: PathBuf,
    /// Absolute, inside the container.
    pub destination: PathBuf,
    pub read_only: bool,
    /// A volume made for this container alone (`-v /path`): it goes with
    /// the container under `rm -v` and `run --rm`.
    #[serde(default)]
    pub anonymous: bool,
}

/// `destination` under the container's root `root`; None when it is not
/// absolute or climbs out with `..`.
pub fn under_root(root: &Path, destination: &Path) -> Option<PathBuf> {
    if !destination.is_absolute() {
        return None;
    }
    let mut path = root.to_path_buf();
    for part in destination.components() {
        match part {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => path.push(name),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(path)
}

/// The most symlinks followed in one path, as the kernel's limit.
const MAX_LINKS: usize = 40;

/// `destination` under `root`, with the image's symlinks on the way
/// followed as the container will see them: an absolute target starts
/// again at `root` and `..` stops there, so that a link in an untrusted
/// image cannot make the mount (or the directories made for it) land on
/// the host's own paths.
pub fn resolve_in_root(sys: &dyn Syscall, root: &Path, destination: &Path) -> Result<PathBuf> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    fn parts(path: &Path) -> Vec<OsString> {
        path.components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name.to_os_string()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    }
    let mut pending: VecDeque<OsString> = parts(destination).into();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match sys.read_link(&root.join(&candidate))? {
            Some(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io_err("resolving", destination)(
                        std::io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for part in parts(&target).into_iter().rev() {
                    pending.push_front(part);
                }
            }
            None => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// Binds each mount's source onto its destination under `root` (the
/// container's merged root, before pivot_root), making the destination as
/// Docker does (a directory, or an empty file for a file source), then
/// makes the read-only ones read-only.
pub fn mount_volumes(sys: &dyn Syscall, root: &Path, mounts: &[Mount]) -> Result<()> {
    for mount in mounts {
        if under_root(root, &mount.destination).is_none() {
            return Err(crate::RuntimeError::BadReference(format!(
                "invalid mount path {}: it must be absolute, without ..",
                mount.destination.display()
            )));
        }
        let target = resolve_in_root(sys, root, &mount.destination)?;
        match sys.path_kind(&mount.source)? {
            PathKind::Directory => sys.mkdir_all(&target)?,
            PathKind::Missing => {
                return Err(io_err("binding", &mount.source)(
                    std::io::Error::from_raw_os_error(libc::ENOENT),
                ))
            }
            PathKind::Other => {
                if let Some(parent) = target.parent() {
                    sys.mkdir_all(parent)?;
                }
                if sys.path_kind(&target)? == PathKind::Missing {
                    sys.write_file(&target, b"")?;
                }
            }
        }
        let source = mount.source.display().to_string();
        sys.mount(&source, &target, "", MS_BIND | MS_REC, "")?;
        if mount.read_only {
            // A bind mount takes its read-only flag only from a remount.
            sys.mount(
                &source,
                &target,
                "",
                MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC,
                "",
            )?;
        }
    }
    Ok(())
}

/// Fills `dest` (a new, empty volume directory) with the image's content at
/// `path`: the layers (lowest first) are laid over each other, their
/// whiteouts (0/0 character devices) removing what lower layers had, and
/// `dest` takes the image directory's mode and owner.
pub fn populate_from_layers(layers: &[PathBuf], path: &Path, dest: &Path) -> Result<()> {
    for layer in layers {
        let Some(source) = under_root(layer, path) else {
            return Ok(());
        };
        // Only a real directory at the path itself: a symlink on the way
        // would be followed on the host, and copy the host's files.
        if through_symlink(layer, &source) {
            continue;
        }
        match std::fs::symlink_metadata(&source) {
            Ok(meta) if meta.is_dir() => {
                copy_tree(&source, dest)?;
                std::fs::set_permissions(dest, meta.permissions())
                    .map_err(io_err("setting the mode of", dest))?;
                lchown(dest, Some(meta.uid()), Some(meta.gid()))
                    .map_err(io_err("setting the owner of", dest))?;
            }
            // Not there, or not a directory in this layer: nothing to copy from it.
            _ => {}
        }
    }
    Ok(())
}

/// Whether any part of `path` below `layer` is a symlink.
fn through_symlink(layer: &Path, path: &Path) -> bool {
    let Ok(below) = path.strip_prefix(layer) else {
        return true;
    };
    let mut walked = layer.to_path_buf();
    below.components().any(|part| {
        walked.push(part);
        std::fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_symlink())
    })
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let listing = std::fs::read_dir(from).map_err(io_err("reading", from))?;
    for entry in listing {
        let entry = entry.map_err(io_err("reading", from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&source).map_err(io_err("looking at", &source))?;
        let kind = meta.file_type();
        let whiteout = {
            use std::os::unix::fs::FileTypeExt;
            kind.is_char_device() && meta.rdev() == 0
        };
        if whiteout || (!kind.is_dir() && target.is_dir()) {
            remove_any(&target)?;
        }
        if whiteout {
            continue;
        }
        if kind.is_dir() {
            if !target.is_dir() {
                remove_any(&target)?;
                std::fs::create_dir(&target).map_err(io_err("creating", &target))?;
            }
            copy_tree(&source, &target)?;
            std::fs::set_permissions(&target, meta.permissions())
                .map_err(io_err("setting the mode of", &target))?;
        } else if kind.is_symlink() {
            remove_any(&target)?;
            let link = std::fs::read_link(&source).map_err(io_err("reading", &source))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io_err("linking", &target))?;
        } else if kind.is_file() {
            remove_any(&target)?;
            std::fs::copy(&source, &target).map_err(io_err("copying", &source))?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(meta.mode()))
                .map_err(io_err("setting the mode of", &target))?;
        } else {
            // Devices, fifos and sockets have no place in a volume's seed.
            continue;
        }
        lchown(&target, Some(meta.uid()), Some(meta.gid()))
            .map_err(io_err("setting the owner of", &target))?;
    }
    Ok(())
}

fn remove_any(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            std::fs::remove_dir_all(path).map_err(io_err("removing", path))
        }
        Ok(_) => std::fs::remove_file(path).map_err(io_err("removing", path)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};

    fn mount(source: &str, destination: &str, read_only: bool) -> Mount {
        Mount {
            kind: MountKind::Bind,
            name: String::new(),
            source: source.into(),
            destination: destination.into(),
            read_only,
            anonymous: false,
        }
    }

    #[test]
    fn binds_are_made_under_the_root_and_read_only_ones_remounted() {
        let sys = RecordingSyscall {
            directories: vec!["/data".into(), "/s/v/db/_data".into()],
            missing: vec!["/c/rootfs/etc/app.conf".into()],
            ..RecordingSyscall::default()
        };
        let mounts = [
            mount("/data", "/tmp/data", false),
            mount("/s/v/db/_data", "/var/lib/db", true),
            mount("/host/app.conf", "/etc/app.conf", false),
        ];
        mount_volumes(&sys, Path::new("/c/rootfs"), &mounts).expect("mounts");
        let bind = |source: &str, target: &str, flags| Call::Mount {
            source: source.into(),
            target: target.into(),
            fstype: String::new(),
            flags,
            data: String::new(),
        };
        assert_eq!(
            *sys.calls.borrow(),
            [
                Call::MkdirAll("/c/rootfs/tmp/data".into()),
                bind("/data", "/c/rootfs/tmp/data", MS_BIND | MS_REC),
                Call::MkdirAll("/c/rootfs/var/lib/db".into()),
                bind("/s/v/db/_data", "/c/rootfs/var/lib/db", MS_BIND | MS_REC),
                bind(
                    "/s/v/db/_data",
                    "/c/rootfs/var/lib/db",
                    MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC
                ),
                Call::MkdirAll("/c/rootfs/etc".into()),
                Call::WriteFile("/c/rootfs/etc/app.conf".into(), Vec::new()),
                bind("/host/app.conf", "/c/rootfs/etc/app.conf", MS_BIND | MS_REC),
            ]
        );
    }

    #[test]
    fn the_images_symlinks_stay_inside_the_root() {
        let sys = RecordingSyscall {
            links: vec![
                ("/r/escape".into(), "/etc".into()),
                ("/r/up".into(), "../../..".into()),
                ("/r/var/run".into(), "../run".into()),
                ("/r/loop".into(), "/loop".into()),
            ],
            ..RecordingSyscall::default()
        };
        let resolve = |path: &str| resolve_in_root(&sys, Path::new("/r"), Path::new(path));
        assert_eq!(resolve("/escape/x").expect("x"), Path::new("/r/etc/x"));
        assert_eq!(resolve("/up/x").expect("x"), Path::new("/r/x"));
        assert_eq!(resolve("/var/run/db").expect("db"), Path::new("/r/run/db"));
        assert!(resolve("/loop/x").is_err());
    }

    #[test]
    fn a_missing_source_or_a_climbing_destination_mounts_nothing() {
        let sys = RecordingSyscall {
            missing: vec!["/gone".into()],
            directories: vec!["/data".into()],
            ..RecordingSyscall::default()
        };
        assert!(mount_volumes(&sys, Path::new("/r"), &[mount("/gone", "/x", false)]).is_err());
        assert!(mount_volumes(&sys, Path::new("/r"), &[mount("/data", "/../x", false)]).is_err());
        assert!(mount_volumes(&sys, Path::new("/r"), &[mount("/data", "x", false)]).is_err());
        assert!(sys.calls.borrow().is_empty(), "{:?}", sys.calls.borrow());
    }

    #[test]
    fn a_volume_is_seeded_from_the_layers_with_their_whiteouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base");
        let top = dir.path().join("top");
        std::fs::create_dir_all(base.join("srv/sub")).expect("base");
        std::fs::write(base.join("srv/kept"), "base").expect("kept");
        std::fs::write(base.join("srv/gone"), "base").expect("gone");
        std::fs::write(base.join("srv/sub/a"), "a").expect("a");
        std::fs::create_dir_all(top.join("srv")).expect("top");
        std::fs::write(top.join("srv/kept"), "top").expect("kept");
        std::os::unix::fs::symlink("kept", top.join("srv/link")).expect("link");
        // A whiteout as the image store lays it out for overlayfs.
        let whiteout =
            std::ffi::CString::new(top.join("srv/gone").into_os_string().into_encoded_bytes())
                .expect("path");
        // SAFETY: a valid path; a 0/0 character device.
        let made = unsafe { libc::mknod(whiteout.as_ptr(), libc::S_IFCHR | 0o600, 0) };
        assert_eq!(
            made,
            0,
            "mknod needs root: {}",
            std::io::Error::last_os_error()
        );
        // A link to a host directory is not the image's content.
        let host = dir.path().join("host");
        std::fs::create_dir_all(host.join("secret")).expect("host");
        std::fs::write(host.join("secret/key"), "host").expect("key");
        std::os::unix::fs::symlink(&host, top.join("linked")).expect("link");
        let leak = dir.path().join("leak");
        std::fs::create_dir(&leak).expect("leak");
        populate_from_layers(
            std::slice::from_ref(&top),
            Path::new("/linked/secret"),
            &leak,
        )
        .expect("nothing");
        assert!(!leak.join("key").exists(), "the host's file was copied");
        let volume = dir.path().join("volume");
        std::fs::create_dir(&volume).expect("volume");
        populate_from_layers(&[base, top], Path::new("/srv"), &volume).expect("populates");
        assert_eq!(
            std::fs::read_to_string(volume.join("kept")).expect("kept"),
            "top"
        );
        assert_eq!(
            std::fs::read_to_string(volume.join("sub/a")).expect("a"),
            "a"
        );
        assert!(!volume.join("gone").exists());
        assert_eq!(
            std::fs::read_link(volume.join("link")).expect("link"),
            Path::new("kept")
        );
    }
}
