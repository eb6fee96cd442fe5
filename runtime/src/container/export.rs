//! `tartan export`: a container's filesystem as one tarball, as `docker
//! export` gives it. The container's own layer and the image layers are
//! stacked in a read-only overlay (whiteouts in the container's layer hide
//! what it deleted), mounted in a mount namespace private to one thread so
//! that nobody else ever sees it, and written out as a tar stream.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::syscall::{LinuxSyscall, Syscall, MS_PRIVATE, MS_RDONLY, MS_REC};
use crate::{Result, RuntimeError};

/// Writes the merged filesystem of `layers` (lowest first) under `upper`
/// to `out` as a tar stream. `mountpoint` is an empty directory.
pub fn export(
    layers: &[PathBuf],
    upper: &Path,
    mountpoint: &Path,
    out: impl Write + Send + 'static,
) -> Result<()> {
    let mut lower: Vec<String> = vec![upper.display().to_string()];
    lower.extend(layers.iter().rev().map(|p| p.display().to_string()));
    let data = format!("lowerdir={}", lower.join(":"));
    std::fs::create_dir_all(mountpoint).map_err(io_err("creating", mountpoint))?;
    let mountpoint = mountpoint.to_path_buf();
    // A thread of its own: unsharing the mount namespace affects only it.
    let worker = std::thread::spawn(move || -> Result<()> {
        // SAFETY: unshare for this thread only (CLONE_NEWNS implies CLONE_FS).
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(RuntimeError::Io {
                op: "a private mount namespace for",
                path: mountpoint.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        let sys = LinuxSyscall;
        sys.mount("", Path::new("/"), "", MS_REC | MS_PRIVATE, "")?;
        sys.mount("overlay", &mountpoint, "overlay", MS_RDONLY, &data)?;
        let written = write_tree(&mountpoint, out);
        // The mount lives in this thread's private namespace, which ends with
        // the thread; unmounting first only frees it sooner.
        let _ = sys.umount_detach(&mountpoint);
        written
    });
    match worker.join() {
        Ok(result) => result,
        Err(_) => Err(RuntimeError::Protocol("the export worker panicked".into())),
    }
}

fn write_tree(root: &Path, out: impl Write) -> Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder
        .append_dir_all(".", root)
        .map_err(io_err("archiving", root))?;
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(io_err("writing the archive of", root))
}
