//! `tartan load`: multi-layer images from a `docker save` archive or an OCI
//! image-layout tarball. The outer archive is unpacked under `tmp/` first
//! (its index may come after the layers), then each layer is extracted
//! into the store as `import` does, lowest first.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::config::{ConfigFile, ImageConfig};
use super::{archive, image_id, tempdir_in, Image, ImageStore, Reference};
use crate::error::io_err;
use crate::{Result, RuntimeError};

/// One entry of a `docker save` manifest.json.
#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
    #[serde(rename = "Config", default)]
    config: Option<String>,
}

#[derive(Deserialize)]
struct OciDescriptor {
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    layers: Vec<OciDescriptor>,
    #[serde(default)]
    config: Option<OciDescriptor>,
}

/// An image the archive describes: its names and its layer files, lowest first.
struct Described {
    references: Vec<Reference>,
    layer_files: Vec<PathBuf>,
    /// When the image was built, from its config, RFC 3339 to the second.
    created: Option<String>,
    /// Its run settings; `None` when the archive holds no config.
    config: Option<ImageConfig>,
}

fn corrupt(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::CorruptArchive(reason.into())
}

/// A path inside the unpacked archive, refusing anything that leaves it.
fn inside(root: &Path, relative: &str) -> Result<PathBuf> {
    let path = Path::new(relative);
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(corrupt(format!("{relative:?} points outside the archive")));
    }
    Ok(root.join(path))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| corrupt(format!("{}: {e}", path.display())))
}

/// The creation time and run settings an image's config records, if the
/// archive holds the config (a config without a time is valid; so is an
/// archive without configs, which Docker never writes but other tools may).
fn read_config(config: Option<PathBuf>) -> Result<(Option<String>, Option<ImageConfig>)> {
    let Some(path) = config.filter(|path| path.is_file()) else {
        return Ok((None, None));
    };
    let file: ConfigFile = read_json(&path)?;
    let settings = file
        .image_config()
        .map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
    let created = file
        .created
        .and_then(|text| humantime::parse_rfc3339_weak(&text).ok())
        .map(|time| humantime::format_rfc3339_seconds(time).to_string());
    Ok((created, Some(settings)))
}

fn blob(root: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| corrupt(format!("unsupported digest {digest:?}")))?;
    inside(root, &format!("blobs/sha256/{hex}"))
}

fn describe(root: &Path) -> Result<Vec<Described>> {
    let manifest = root.join("manifest.json");
    if manifest.exists() {
        let entries: Vec<DockerManifest> = read_json(&manifest)?;
        return entries
            .into_iter()
            .map(|entry| {
                let references = entry
                    .repo_tags
                    .unwrap_or_default()
                    .iter()
                    .map(|tag| tag.parse())
                    .collect::<Result<Vec<Reference>>>()?;
                let layer_files = entry
                    .layers
                    .iter()
                    .map(|l| inside(root, l))
                    .collect::<Result<_>>()?;
                let config = entry.config.map(|c| inside(root, &c)).transpose()?;
                let (created, config) = read_config(config)?;
                Ok(Described {
                    references,
                    layer_files,
                    created,
                    config,
                })
            })
            .collect();
    }
    let index = root.join("index.json");
    if index.exists() {
        let index: OciIndex = read_json(&index)?;
        return index
            .manifests
            .into_iter()
            .map(|descriptor| {
                let names = [
                    "io.containerd.image.name",
                    "org.opencontainers.image.ref.name",
                ];
                let references = names
                    .iter()
                    .filter_map(|key| descriptor.annotations.get(*key))
                    .find_map(|name| {
                        name.parse::<Reference>()
                            .ok()
                            .filter(|_| name.contains(':'))
                    })
                    .into_iter()
                    .collect();
                let manifest: OciManifest = read_json(&blob(root, &descriptor.digest)?)?;
                let layer_files = manifest
                    .layers
                    .iter()
                    .map(|layer| blob(root, &layer.digest))
                    .collect::<Result<_>>()?;
                let config = manifest.config.map(|c| blob(root, &c.digest)).transpose()?;
                let (created, config) = read_config(config)?;
                Ok(Described {
                    references,
                    layer_files,
                    created,
                    config,
                })
            })
            .collect();
    }
    Err(corrupt(
        "neither a docker save archive (manifest.json) nor an OCI layout (index.json)",
    ))
}

impl ImageStore {
    /// Loads every tagged image of the archive; returns them.
    pub fn load(&self, reader: impl Read) -> Result<Vec<Image>> {
        let staging = tempdir_in(&self.tmp_dir())?;
        let result = self.load_staged(reader, &staging);
        // Best effort: the store empties tmp/ at every open anyway.
        let _ = std::fs::remove_dir_all(&staging);
        if result.is_err() {
            // Layers stored before the failure belong to no image: drop them.
            let index = self.load_index()?;
            self.collect_garbage(&index, &Default::default())?;
        }
        result
    }

    fn load_staged(&self, reader: impl Read, staging: &Path) -> Result<Vec<Image>> {
        let unpacked = staging.join("archive");
        archive::extract(reader, &unpacked)?;
        let described = describe(&unpacked)?;
        let mut loaded = Vec::new();
        let mut index = self.load_index()?;
        for image in described {
            if image.references.is_empty() {
                return Err(corrupt("an image in the archive has no name (RepoTags)"));
            }
            if image.layer_files.is_empty() {
                return Err(corrupt("an image in the archive has no layers"));
            }
            let mut layers = Vec::new();
            let mut size = 0;
            for (n, file) in image.layer_files.iter().enumerate() {
                let reader = std::fs::File::open(file)
                    .map_err(|e| corrupt(format!("{}: {e}", file.display())))?;
                let dest = staging.join(format!("layer-{n}"));
                let layer = archive::extract(reader, &dest)?;
                let target = self.layer_dir(&layer.digest);
                if !target.exists() {
                    std::fs::rename(&dest, &target)
                        .map_err(io_err("storing the layer", &target))?;
                }
                size += layer.size;
                layers.push(layer.digest);
            }
            for reference in image.references {
                let record = Image {
                    id: image_id(&layers),
                    name: reference.name,
                    tag: reference.tag,
                    layers: layers.clone(),
                    size,
                    // As Docker lists it: when the image was built, else when it came here.
                    created: image.created.clone().unwrap_or_else(|| {
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
                    }),
                    config: image.config.clone(),
                };
                index
                    .images
                    .retain(|i| !(i.name == record.name && i.tag == record.tag));
                index.images.push(record.clone());
                loaded.push(record);
            }
        }
        self.save(&index)?;
        self.collect_garbage(&index, &Default::default())?;
        Ok(loaded)
    }
}
