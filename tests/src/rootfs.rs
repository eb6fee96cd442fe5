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
        "{BUSYBOX} is missing: install Debian's busybox-static (scripts/test.sh does)"
    );
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    for applet in [
        "sh", "ls", "cat", "echo", "sleep", "ping", "ip", "hostname", "id", "tr", "test", "stty",
        "grep", "touch", "rm", "wc", "true", "false", "pwd", "mkdir", "tty",
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

/// Two layer tarballs: a busybox base with `etc/removed` and `data/dir/a`,
/// and a top layer that whites out `etc/removed`, makes `data/dir` opaque
/// and adds `data/dir/b` and `etc/added`.
pub fn two_layers(dir: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let base = busybox_rootfs(&dir.join("l1"))?;
    std::fs::write(base.join("etc/removed"), "gone in layer 2")?;
    std::fs::create_dir_all(base.join("data/dir"))?;
    std::fs::write(base.join("data/dir/a"), "hidden by the opaque layer")?;
    let top = dir.join("l2/rootfs");
    std::fs::create_dir_all(top.join("etc"))?;
    std::fs::create_dir_all(top.join("data/dir"))?;
    std::fs::write(top.join("etc/.wh.removed"), "")?;
    std::fs::write(top.join("data/dir/.wh..wh..opq"), "")?;
    std::fs::write(top.join("data/dir/b"), "new")?;
    std::fs::write(top.join("etc/added"), "new")?;
    Ok((tarball(&base, false)?, tarball(&top, false)?))
}

/// A `docker save` archive of the two layers, tagged with `tags`.
pub fn docker_save(dir: &Path, l1: &[u8], l2: &[u8], tags: &[&str]) -> Result<Vec<u8>> {
    docker_save_with_config(dir, l1, l2, tags, "{}")
}

/// [`docker_save`] with `config` as the image's config JSON.
pub fn docker_save_with_config(
    dir: &Path,
    l1: &[u8],
    l2: &[u8],
    tags: &[&str],
    config: &str,
) -> Result<Vec<u8>> {
    let outer = dir.join("save");
    std::fs::create_dir_all(outer.join("l1"))?;
    std::fs::create_dir_all(outer.join("l2"))?;
    std::fs::write(outer.join("l1/layer.tar"), l1)?;
    std::fs::write(outer.join("l2/layer.tar"), l2)?;
    std::fs::write(outer.join("config.json"), config)?;
    let tags: Vec<String> = tags.iter().map(|t| format!("{t:?}")).collect();
    std::fs::write(
        outer.join("manifest.json"),
        format!(
            r#"[{{"Config":"config.json","RepoTags":[{}],"Layers":["l1/layer.tar","l2/layer.tar"]}}]"#,
            tags.join(",")
        ),
    )?;
    tarball(&outer, false)
}
