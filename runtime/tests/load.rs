//! `docker save` and OCI image-layout archives with several layers and
//! whiteouts, loaded into the store and checked through a real overlayfs.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use anyhow::{ensure, Result};
use sha2::{Digest, Sha256};
use tartan_runtime::{ImageStore, RuntimeError};
use tartan_tests::prereq;
use tartan_tests::rootfs::{docker_save, tarball, two_layers as layers};

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Mounts the image's layers as a read-only overlay in a private mount
/// namespace and lists the given directories.
fn overlay_listing(store: &ImageStore, layers: &[String], dirs: &[&str]) -> Result<String> {
    prereq::require_root()?;
    prereq::require_binary("unshare")?;
    let mnt = tempfile::tempdir()?;
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(l).to_string_lossy().into_owned())
        .collect();
    let script = format!(
        "mount -t overlay overlay -o lowerdir={} {} && cd {} && ls -1 {}",
        lower.join(":"),
        mnt.path().display(),
        mnt.path().display(),
        dirs.join(" ")
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()?;
    ensure!(
        out.status.success(),
        "overlay mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_docker_save_archive_loads_with_its_whiteouts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (l1, l2) = layers(dir.path())?;
    let archive = docker_save(dir.path(), &l1, &l2, &["demo:2", "demo:latest"])?;

    let store_root = dir.path().join("store");
    let store = ImageStore::open(&store_root)?;
    let images = store.load(&archive[..])?;
    let names: Vec<String> = images.iter().map(|i| i.reference()).collect();
    assert_eq!(names, ["demo:2", "demo:latest"]);
    assert_eq!(images[0].id, images[1].id);
    assert_eq!(
        images[0].layers,
        vec![sha256(&l1), sha256(&l2)],
        "layers by diff id, lowest first"
    );

    let top = store.layer_dir(&images[0].layers[1]);
    let removed = std::fs::symlink_metadata(top.join("etc/removed"))?;
    ensure!(
        removed.file_type().is_char_device() && removed.rdev() == 0,
        "a 0/0 whiteout device"
    );
    let mut value = [0u8; 4];
    let path = std::ffi::CString::new(top.join("data/dir").to_string_lossy().as_bytes())?;
    // SAFETY: getxattr into a 4-byte buffer with valid NUL-terminated strings.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            value.as_mut_ptr().cast(),
            4,
        )
    };
    ensure!(
        n == 1 && value[0] == b'y',
        "the opaque directory is marked for overlayfs"
    );

    let listing = overlay_listing(&store, &images[0].layers, &["etc", "data/dir"])?;
    ensure!(
        listing.contains("added") && listing.contains("passwd"),
        "{listing}"
    );
    ensure!(
        !listing.contains("removed"),
        "the whiteout hides the file: {listing}"
    );
    ensure!(
        listing.contains("\nb\n") || listing.ends_with("b\n"),
        "{listing}"
    );
    ensure!(
        !listing.lines().any(|l| l == "a"),
        "the opaque directory hides the lower one: {listing}"
    );
    Ok(())
}

#[test]
fn an_oci_layout_loads_with_gzip_layers() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (l1, _) = layers(dir.path())?;
    let gz = tarball(&dir.path().join("l1/rootfs"), true)?;
    let outer = dir.path().join("oci");
    let blobs = outer.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(blobs.join(sha256(&gz)), &gz)?;
    // Its build time, to the nanosecond as Docker and buildkit write it.
    let config = br#"{"created":"2024-01-02T03:04:05.123456789Z","architecture":"amd64"}"#;
    std::fs::write(blobs.join(sha256(config)), config)?;
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{}"}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}"}}]}}"#,
        sha256(config),
        sha256(&gz)
    );
    std::fs::write(blobs.join(sha256(manifest.as_bytes())), &manifest)?;
    std::fs::write(
        outer.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    std::fs::write(
        outer.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"digest":"sha256:{}","annotations":{{"io.containerd.image.name":"docker.io/library/demo:oci","org.opencontainers.image.ref.name":"oci"}}}}]}}"#,
            sha256(manifest.as_bytes())
        ),
    )?;
    let store = ImageStore::open(&dir.path().join("store"))?;
    let images = store.load(&tarball(&outer, false)?[..])?;
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].reference(), "docker.io/library/demo:oci");
    assert_eq!(images[0].created, "2024-01-02T03:04:05Z", "from the config");
    assert_eq!(
        images[0].layers,
        vec![sha256(&l1)],
        "the diff id is of the uncompressed layer"
    );
    ensure!(store
        .layer_dir(&images[0].layers[0])
        .join("bin/busybox")
        .is_file());
    Ok(())
}

/// A `docker save` directory holding the base layer as `l1/layer.tar` and
/// the given manifest, for archives that are wrong in one specific way.
fn one_layer_save(dir: &std::path::Path, manifest: &str) -> Result<std::path::PathBuf> {
    let (l1, _) = layers(dir)?;
    let outer = dir.join("save");
    std::fs::create_dir_all(outer.join("l1"))?;
    std::fs::write(outer.join("l1/layer.tar"), &l1)?;
    std::fs::write(outer.join("manifest.json"), manifest)?;
    Ok(outer)
}

#[test]
fn a_broken_save_archive_leaves_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let outer = one_layer_save(
        dir.path(),
        r#"[{"Config":"c.json","RepoTags":["demo:x"],"Layers":["l1/layer.tar","missing/layer.tar"]}]"#,
    )?;
    let missing_layer = tarball(&outer, false)?;
    std::fs::write(
        outer.join("manifest.json"),
        r#"[{"Config":"c.json","RepoTags":["demo:x"],"Layers":["../../etc/passwd"]}]"#,
    )?;
    let escaping = tarball(&outer, false)?;
    std::fs::remove_file(outer.join("manifest.json"))?;
    let no_index = tarball(&outer, false)?;

    let store_root = dir.path().join("store");
    let store = ImageStore::open(&store_root)?;
    for (what, bytes) in [
        ("a layer file is missing", missing_layer.clone()),
        ("a layer path escapes", escaping),
        ("no manifest or index", no_index),
        (
            "truncated",
            missing_layer[..missing_layer.len() / 2].to_vec(),
        ),
    ] {
        let err = store.load(&bytes[..]).expect_err(what);
        ensure!(
            matches!(err, RuntimeError::CorruptArchive(_)),
            "{what}: {err}"
        );
        let layers = std::fs::read_dir(store_root.join("layers"))?.count();
        let tmp = std::fs::read_dir(store_root.join("tmp"))?.count();
        ensure!(
            (layers, tmp) == (0, 0),
            "{what}: left {layers} layers, {tmp} staging dirs"
        );
    }
    ensure!(store.list()?.is_empty());
    Ok(())
}

#[test]
fn load_needs_a_name_for_every_image() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let outer = one_layer_save(
        dir.path(),
        r#"[{"Config":"c.json","RepoTags":null,"Layers":["l1/layer.tar"]}]"#,
    )?;
    let store = ImageStore::open(&dir.path().join("store"))?;
    let err = store
        .load(&tarball(&outer, false)?[..])
        .expect_err("unnamed");
    ensure!(err.to_string().contains("no name"), "{err}");
    Ok(())
}
