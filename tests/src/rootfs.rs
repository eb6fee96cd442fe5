//! A tiny root filesystem for runtime tests, built from Debian's
//! busybox-static, and tarballs of it made by the real `tar`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

pub const BUSYBOX: &str = "/bin/busybox";

/// `dir/rootfs` with busybox, a few applet links and /etc/passwd.
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    ensure!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: install Debian's busybox-static (see .ci/run)"
    );
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "ping", "ip", "hostname", "id",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(root)
}

/// `tar -C root -c .` (gzip on request), as users produce image tarballs.
pub fn tarball(root: &Path, gzip: bool) -> Result<Vec<u8>> {
    let out = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg(if gzip { "-czf" } else { "-cf" })
        .arg("-")
        .arg(".")
        .output()
        .context("running tar")?;
    ensure!(
        out.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}
