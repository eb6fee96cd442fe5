//! The image store against real archives: a busybox root filesystem made
//! from Debian's busybox-static, tarred by the real `tar`.

use std::io::Write;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use tartan_runtime::{ImageStore, Reference, RuntimeError};
use tartan_tests::rootfs::{busybox_rootfs as rootfs, tarball, BUSYBOX};

fn store_dirs(store_root: &Path) -> Result<(usize, usize)> {
    let layers = std::fs::read_dir(store_root.join("layers"))?.count();
    let tmp = std::fs::read_dir(store_root.join("tmp"))?.count();
    Ok((layers, tmp))
}

#[test]
fn import_list_share_and_remove() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = rootfs(dir.path())?;
    let store_root = dir.path().join("store");
    let store = ImageStore::open(&store_root)?;

    let plain = tarball(&root, false)?;
    let image = store.import(&plain[..], &"busybox".parse()?)?;
    assert_eq!(
        (image.name.as_str(), image.tag.as_str()),
        ("busybox", "latest")
    );
    assert_eq!(image.layers.len(), 1);
    let busybox_len = std::fs::metadata(BUSYBOX)?.len();
    ensure!(
        image.size >= busybox_len,
        "size {} counts busybox",
        image.size
    );
    let layer = store.layer_dir(&image.layers[0]);
    let meta = std::fs::metadata(layer.join("bin/busybox"))?;
    ensure!(
        meta.len() == busybox_len
            && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o111 != 0
    );
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh"))?,
        Path::new("busybox")
    );

    // The same content gzipped under another tag: one layer, shared.
    let gz = tarball(&root, true)?;
    let again = store.import(&gz[..], &"busybox:1.36".parse()?)?;
    assert_eq!(
        again.layers, image.layers,
        "the digest is of the uncompressed stream"
    );
    assert_eq!(again.id, image.id);
    assert_eq!(store_dirs(&store_root)?, (1, 0));
    let names: Vec<String> = store.list()?.iter().map(|i| i.reference()).collect();
    assert_eq!(names, ["busybox:1.36", "busybox:latest"]);
    assert_eq!(
        store.resolve(&image.id[..12])?.id,
        image.id,
        "id prefixes resolve"
    );

    // By id, an image with two tags is refused unless forced, as in Docker;
    // forced, it is still refused while a container uses it.
    let web = |_: &tartan_runtime::Image| Some("stopped container web".to_string());
    let refused = store.remove(&image.id[..12], false, |_| None);
    let Err(err @ RuntimeError::ImageHasTags { .. }) = refused else {
        panic!("{refused:?}");
    };
    assert!(err
        .to_string()
        .contains("(must be forced) - image is referenced in multiple repositories"));
    let refused = store.remove(&image.id[..12], true, web);
    assert!(
        matches!(refused, Err(RuntimeError::ImageInUse { .. })),
        "{refused:?}"
    );
    assert_eq!(store.list()?.len(), 2, "a refusal removes nothing");

    // In use: one of two tags may go (the other keeps the image), the last
    // one is refused. Removing one tag keeps the shared layer; the last one frees it.
    let removed = store.remove("busybox:1.36", false, web)?;
    assert!(!removed.deleted);
    assert_eq!(store_dirs(&store_root)?, (1, 0));
    let refused = store.remove("busybox", true, web);
    assert!(
        matches!(refused, Err(RuntimeError::ImageInUse { .. })),
        "{refused:?}"
    );
    let removed = store.remove("busybox", false, |_| None)?;
    assert!(removed.deleted);
    assert_eq!(store_dirs(&store_root)?, (0, 0));
    // Forced by id: every tag goes, and the image.
    let image = store.import(&gz[..], &"busybox:a".parse()?)?;
    store.import(&gz[..], &"busybox:b".parse()?)?;
    let removed = store.remove(&image.id[..12], true, |_| None)?;
    assert_eq!(removed.untagged.len(), 2);
    assert!(removed.deleted);
    assert_eq!(store_dirs(&store_root)?, (0, 0));
    assert!(matches!(
        store.resolve("busybox"),
        Err(RuntimeError::NoSuchImage(_))
    ));
    Ok(())
}

#[test]
fn damaged_archives_are_refused_and_leave_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = rootfs(dir.path())?;
    let store_root = dir.path().join("store");
    let store = ImageStore::open(&store_root)?;
    let good = tarball(&root, false)?;

    // Cut mid-file, cut exactly at the end marker, garbage, gzip cut short, empty.
    let end = good.iter().rposition(|b| *b != 0).context("content")? + 1;
    let at_boundary = end.next_multiple_of(512);
    let gz = tarball(&root, true)?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated mid-file", good[..good.len() / 2].to_vec()),
        (
            "truncated at an entry boundary",
            good[..at_boundary].to_vec(),
        ),
        (
            "not an archive",
            b"this is not a tarball at all, just text".repeat(40),
        ),
        ("gzip cut short", gz[..gz.len() / 2].to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        let err = store
            .import(&bytes[..], &"broken".parse()?)
            .expect_err(what);
        ensure!(
            matches!(err, RuntimeError::CorruptArchive(_)),
            "{what}: {err}"
        );
        assert!(!err.to_string().contains('\n'), "{what}: one line: {err}");
        assert_eq!(
            store_dirs(&store_root)?,
            (0, 0),
            "{what}: nothing half-written"
        );
    }
    assert!(store.list()?.is_empty());
    Ok(())
}

#[test]
fn entries_escaping_the_root_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store_root = dir.path().join("store");
    let store = ImageStore::open(&store_root)?;
    // Hand-made, since honest tools refuse to write such a name.
    let mut header = tar::Header::new_old();
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.as_old_mut().name[..13].copy_from_slice(b"../escaped.tx");
    header.set_cksum();
    let mut bytes = header.as_bytes().to_vec();
    bytes.extend_from_slice(b"evil");
    bytes.resize(1024, 0);
    bytes.extend_from_slice(&[0; 1024]);
    let err = store
        .import(&bytes[..], &"evil".parse()?)
        .expect_err("escape");
    ensure!(matches!(err, RuntimeError::CorruptArchive(_)), "{err}");
    ensure!(!store_root.join("tmp/escaped.tx").exists() && !store_root.join("escaped.tx").exists());
    assert_eq!(store_dirs(&store_root)?, (0, 0));
    Ok(())
}

#[test]
fn an_interrupted_import_is_cleaned_up_on_open() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store_root = dir.path().join("store");
    drop(ImageStore::open(&store_root)?);
    let leftover = store_root.join("tmp/import-deadbeef/rootfs");
    std::fs::create_dir_all(&leftover)?;
    std::fs::File::create(leftover.join("half"))?.write_all(b"x")?;
    let _store = ImageStore::open(&store_root)?;
    assert_eq!(store_dirs(&store_root)?, (0, 0));
    let bad: Result<Reference, _> = "Not Valid".parse();
    assert!(bad.is_err());
    Ok(())
}
