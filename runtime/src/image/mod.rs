//! The image store: content-addressed layers (extracted once, shared by
//! every image and container that uses them) and a small index of images.
//!
//! ```text
//! <root>/layers/<sha256 of the uncompressed tar>/   an extracted layer
//! <root>/images.json                                 the index, replaced atomically
//! <root>/tmp/                                        imports in progress
//! ```
//!
//! An import is extracted under `tmp/` and renamed into `layers/` only when
//! the whole archive has been read and checked, so a corrupt or truncated
//! archive leaves nothing behind; `tmp/` is emptied on open, so neither does
//! a crash.

mod archive;
pub mod config;
mod load;
mod reference;

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use config::{ExposedPort, ImageConfig, Protocol};
pub use reference::{Reference, DEFAULT_TAG};

use crate::error::io_err;
use crate::{Result, RuntimeError};

/// One tagged image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// sha256 of the image's layer list, hex.
    pub id: String,
    pub name: String,
    pub tag: String,
    /// Layer digests, lowest first.
    pub layers: Vec<String>,
    /// Bytes of file content across the layers.
    pub size: u64,
    /// RFC 3339.
    pub created: String,
    /// The run settings of a loaded image; `None` for an imported rootfs
    /// (and in records older than them).
    #[serde(default)]
    pub config: Option<ImageConfig>,
}

impl Image {
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// What `remove` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The tags that went.
    pub untagged: Vec<Image>,
    /// Whether the image went too (its last tag did).
    pub deleted: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: Vec<Image>,
}

/// The store under one directory.
pub struct ImageStore {
    root: PathBuf,
}

fn image_id(layers: &[String]) -> String {
    let mut hasher = Sha256::new();
    for layer in layers {
        hasher.update(layer.as_bytes());
        hasher.update(b"\n");
    }
    format!("{:x}", hasher.finalize())
}

impl ImageStore {
    /// Opens (creating) the store, discarding imports a crash interrupted.
    pub fn open(root: &Path) -> Result<ImageStore> {
        let store = ImageStore {
            root: root.to_path_buf(),
        };
        let tmp = store.tmp_dir();
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("cleaning", &tmp))?;
        }
        for dir in [store.root.join("layers"), tmp] {
            std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        Ok(store)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    /// The directory of an extracted layer.
    pub fn layer_dir(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest)
    }

    fn load_index(&self) -> Result<Index> {
        let path = self.index_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| RuntimeError::Store { path, source }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(err) => Err(io_err("reading", path)(err)),
        }
    }

    fn save(&self, index: &Index) -> Result<()> {
        let path = self.index_path();
        let tmp = self.root.join(".images.json.tmp");
        let bytes = serde_json::to_vec_pretty(index).map_err(|source| RuntimeError::Store {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&tmp, bytes).map_err(io_err("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("replacing", &path))
    }

    /// Imports a root filesystem tarball (plain or gzip) as a one-layer image.
    /// A tag that existed is moved to the new image.
    pub fn import(&self, reader: impl Read, reference: &Reference) -> Result<Image> {
        let staging = tempdir_in(&self.tmp_dir())?;
        let extracted = archive::extract(reader, &staging.join("rootfs"));
        let layer = match extracted {
            Ok(layer) => layer,
            Err(err) => {
                // Best effort: the store empties tmp/ at every open anyway.
                let _ = std::fs::remove_dir_all(&staging);
                return Err(err);
            }
        };
        let target = self.layer_dir(&layer.digest);
        if target.exists() {
            // The same content is already a layer: share it, never copy.
            std::fs::remove_dir_all(&staging).map_err(io_err("cleaning", &staging))?;
        } else {
            let rootfs = staging.join("rootfs");
            std::fs::rename(&rootfs, &target).map_err(io_err("storing the layer", &target))?;
            // Best effort: the store empties tmp/ at every open anyway.
            let _ = std::fs::remove_dir_all(&staging);
        }
        let layers = vec![layer.digest];
        let image = Image {
            id: image_id(&layers),
            name: reference.name.clone(),
            tag: reference.tag.clone(),
            layers,
            size: layer.size,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            config: None,
        };
        let mut index = self.load_index()?;
        index
            .images
            .retain(|i| !(i.name == image.name && i.tag == image.tag));
        index.images.push(image.clone());
        self.save(&index)?;
        self.collect_garbage(&index, &HashSet::new())?;
        Ok(image)
    }

    /// `tag`, as Docker does it: `target` names the image `source` names
    /// (a reference or an id), moving the name if another image had it.
    /// Moving the last name of an image that `in_use` names a container of
    /// is refused, since Tartan keeps no untagged images.
    pub fn tag(
        &self,
        source: &str,
        target: &Reference,
        in_use: impl Fn(&Image) -> Option<String>,
    ) -> Result<Image> {
        let mut index = self.load_index()?;
        let image = resolve_in(&index.images, source)?;
        let tagged = Image {
            name: target.name.clone(),
            tag: target.tag.clone(),
            ..image
        };
        let displaced = index
            .images
            .iter()
            .find(|i| i.name == tagged.name && i.tag == tagged.tag && i.id != tagged.id);
        if let Some(displaced) = displaced {
            let last = index.images.iter().filter(|i| i.id == displaced.id).count() == 1;
            if let Some(user) = last.then(|| in_use(displaced)).flatten() {
                return Err(RuntimeError::ImageInUse {
                    image: displaced.reference(),
                    user,
                });
            }
        }
        index
            .images
            .retain(|i| !(i.name == tagged.name && i.tag == tagged.tag));
        index.images.push(tagged.clone());
        self.save(&index)?;
        self.collect_garbage(&index, &HashSet::new())?;
        Ok(tagged)
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        let mut images = self.load_index()?.images;
        images.sort_by(|a, b| (&a.name, &a.tag).cmp(&(&b.name, &b.tag)));
        Ok(images)
    }

    /// Finds an image by `NAME[:TAG]` or by a unique prefix of its id.
    pub fn resolve(&self, text: &str) -> Result<Image> {
        resolve_in(&self.load_index()?.images, text)
    }

    /// `rmi`, as Docker does it: by `NAME[:TAG]` the one tag goes; by id
    /// every tag goes, which needs `force` when there are several. The image
    /// itself goes with its last tag, and then its layers that no other
    /// image uses; never while `in_use` names a container (running or not)
    /// that uses it, `force` or not.
    pub fn remove(
        &self,
        text: &str,
        force: bool,
        in_use: impl Fn(&Image) -> Option<String>,
    ) -> Result<Removed> {
        let mut index = self.load_index()?;
        let image = resolve_in(&index.images, text)?;
        let by_reference = text.parse::<Reference>().is_ok_and(|r| {
            index
                .images
                .iter()
                .any(|i| i.name == r.name && i.tag == r.tag)
        });
        let tags: Vec<Image> = index
            .images
            .iter()
            .filter(|i| i.id == image.id)
            .cloned()
            .collect();
        if !by_reference && tags.len() > 1 && !force {
            return Err(RuntimeError::ImageHasTags {
                id: image.id.chars().take(12).collect(),
            });
        }
        let untagged: Vec<Image> = if by_reference {
            vec![image.clone()]
        } else {
            tags.clone()
        };
        let deleted = untagged.len() == tags.len();
        if deleted {
            if let Some(user) = in_use(&image) {
                return Err(RuntimeError::ImageInUse {
                    image: image.reference(),
                    user,
                });
            }
        }
        index
            .images
            .retain(|i| !untagged.iter().any(|u| u.name == i.name && u.tag == i.tag));
        self.save(&index)?;
        self.collect_garbage(&index, &HashSet::new())?;
        Ok(Removed { untagged, deleted })
    }

    /// Deletes layers that no image references and `keep` does not hold.
    fn collect_garbage(&self, index: &Index, keep: &HashSet<String>) -> Result<()> {
        let used: HashSet<&String> = index.images.iter().flat_map(|i| &i.layers).collect();
        let layers = self.root.join("layers");
        for entry in std::fs::read_dir(&layers).map_err(io_err("listing", &layers))? {
            let entry = entry.map_err(io_err("listing", &layers))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !used.contains(&name) && !keep.contains(&name) {
                let path = entry.path();
                std::fs::remove_dir_all(&path)
                    .map_err(io_err("removing an unused layer", &path))?;
            }
        }
        Ok(())
    }
}

fn resolve_in(images: &[Image], text: &str) -> Result<Image> {
    if let Ok(reference) = text.parse::<Reference>() {
        if let Some(image) = images
            .iter()
            .find(|i| i.name == reference.name && i.tag == reference.tag)
        {
            return Ok(image.clone());
        }
    }
    let id = text.strip_prefix("sha256:").unwrap_or(text);
    if id.len() >= 4 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut matching: Vec<&Image> = images.iter().filter(|i| i.id.starts_with(id)).collect();
        matching.dedup_by(|a, b| a.id == b.id);
        match matching.len() {
            0 => {}
            1 => return Ok(matching[0].clone()),
            _ => {
                let distinct: HashSet<&str> = matching.iter().map(|i| i.id.as_str()).collect();
                if distinct.len() > 1 {
                    return Err(RuntimeError::Ambiguous(text.to_string()));
                }
                return Ok(matching[0].clone());
            }
        }
    }
    Err(RuntimeError::NoSuchImage(text.to_string()))
}

/// A fresh, uniquely named directory under `parent`.
fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    for _ in 0..16 {
        let path = parent.join(format!("import-{:016x}", rand::random::<u64>()));
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(io_err("creating", path)(err)),
        }
    }
    Err(io_err("creating a staging directory in", parent)(
        std::io::Error::other("no free name"),
    ))
}
