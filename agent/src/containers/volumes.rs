//! Volumes (`run -v`, `--volumes-from`, `tartan volume`): the flags parsed
//! by Docker's rules, the volumes themselves (directories under
//! `<state-dir>/volumes/NAME/_data`, kept across containers, agent restarts
//! and reboots), and the container's mounts made of both.
//!
//! A volume is made whole or not at all: its directory is filled (from the
//! image, on first use) under a temporary name and renamed into place.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tartan_runtime::container::ContainerConfig;
use tartan_runtime::volumes::{populate_from_layers, under_root, Mount, MountKind};
use tracing::{info, warn};

use super::{random_hex, Containers};

/// One `-v`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeRequest {
    /// `HOST_PATH:CONTAINER_PATH[:MODE]`.
    Bind {
        source: PathBuf,
        destination: PathBuf,
        read_only: bool,
    },
    /// `NAME:CONTAINER_PATH[:MODE]`.
    Named {
        name: String,
        destination: PathBuf,
        read_only: bool,
    },
    /// `CONTAINER_PATH`: a fresh volume with a random name.
    Anonymous { destination: PathBuf },
}

impl VolumeRequest {
    fn destination(&self) -> &Path {
        match self {
            VolumeRequest::Bind { destination, .. }
            | VolumeRequest::Named { destination, .. }
            | VolumeRequest::Anonymous { destination } => destination,
        }
    }
}

/// Docker's modes for `-v`: ro or rw (with the SELinux and propagation
/// words Docker also takes, which mean nothing here and are refused).
fn read_only_mode(mode: &str) -> Option<bool> {
    match mode {
        "ro" => Some(true),
        "rw" => Some(false),
        _ => None,
    }
}

/// Parses `-v` as Docker's Linux parser does.
pub fn parse_volume(text: &str) -> Result<VolumeRequest> {
    let parts: Vec<&str> = text.split(':').collect();
    let invalid_spec = || anyhow::anyhow!("invalid volume specification: '{text}'");
    let (source, destination, mode) = match parts.as_slice() {
        [destination] => (None, *destination, None),
        // A destination and a mode is not a volume: volumes take no mode alone.
        [_, mode] if read_only_mode(mode).is_some() => return Err(invalid_spec()),
        [source, destination] => (Some(*source), *destination, None),
        [source, destination, mode] => (Some(*source), *destination, Some(*mode)),
        _ => return Err(invalid_spec()),
    };
    if source == Some("") || destination.is_empty() {
        return Err(invalid_spec());
    }
    let read_only = match mode {
        None => false,
        Some(mode) => {
            read_only_mode(mode).ok_or_else(|| anyhow::anyhow!("invalid mode: {mode}"))?
        }
    };
    if !destination.starts_with('/') {
        bail!(
            "invalid volume specification: '{text}': mount path {destination:?} must be absolute"
        );
    }
    if under_root(Path::new("/"), Path::new(destination)).is_none() {
        bail!("invalid volume specification: '{text}': mount path {destination:?} must not climb out with ..");
    }
    if Path::new(destination) == Path::new("/") {
        bail!("invalid volume specification: '{text}': destination can't be '/'");
    }
    let destination = PathBuf::from(destination);
    Ok(match source {
        None => VolumeRequest::Anonymous { destination },
        Some(source) if source.starts_with('/') => VolumeRequest::Bind {
            source: source.into(),
            destination,
            read_only,
        },
        Some(name) => {
            check_volume_name(name)?;
            VolumeRequest::Named {
                name: name.to_string(),
                destination,
                read_only,
            }
        }
    })
}

/// Parses `--volumes-from CONTAINER[:ro|:rw]`: the container, and the mode
/// that overrides its mounts' (None keeps theirs).
pub fn parse_volumes_from(text: &str) -> Result<(String, Option<bool>)> {
    let (container, mode) = match text.rsplit_once(':') {
        Some((container, mode)) => (container, Some(mode)),
        None => (text, None),
    };
    if container.is_empty() {
        bail!("invalid --volumes-from {text:?}: name the container");
    }
    let read_only = match mode {
        None => None,
        Some(mode) => {
            Some(read_only_mode(mode).ok_or_else(|| anyhow::anyhow!("invalid mode: {mode}"))?)
        }
    };
    Ok((container.to_string(), read_only))
}

/// Docker's rule for local volume names, and its words.
pub fn check_volume_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok || name.len() < 2 {
        bail!("{name:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path");
    }
    Ok(())
}

/// What is recorded beside a volume's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VolumeRecord {
    created: String,
    #[serde(default)]
    anonymous: bool,
}

/// One volume, as `volume ls` and `volume inspect` show it.
#[derive(Debug, Clone)]
pub struct VolumeView {
    pub name: String,
    pub mountpoint: PathBuf,
    pub created: String,
    pub anonymous: bool,
    /// Full ids of the containers that use it.
    pub used_by: Vec<String>,
}

/// `<state-dir>/volumes`.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

const RECORD: &str = "volume.json";
const STAGING_PREFIX: &str = ".new-";

impl VolumeStore {
    /// Opens the store, removing volumes a crash left half-made.
    pub fn open(state_dir: &Path) -> Result<VolumeStore> {
        let root = state_dir.join("volumes");
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let listing =
            std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))?;
        for item in listing.flatten() {
            if item
                .file_name()
                .to_string_lossy()
                .starts_with(STAGING_PREFIX)
            {
                warn!(dir = %item.path().display(), "removing a volume a crash left half-made");
                if let Err(err) = std::fs::remove_dir_all(item.path()) {
                    warn!(error = %err, "could not remove a half-made volume");
                }
            }
        }
        Ok(VolumeStore { root })
    }

    pub fn data_dir(&self, name: &str) -> PathBuf {
        self.root.join(name).join("_data")
    }

    fn exists(&self, name: &str) -> bool {
        self.root.join(name).join(RECORD).is_file()
    }

    /// Makes the volume unless it exists; a new (or still empty) one is
    /// filled from `seed` (the image's layers, lowest first, and the path
    /// in the image), as Docker fills it. True when it was made now.
    pub fn ensure(
        &self,
        name: &str,
        anonymous: bool,
        seed: Option<(&[PathBuf], &Path)>,
    ) -> Result<bool> {
        if self.exists(name) {
            let data = self.data_dir(name);
            let empty = std::fs::read_dir(&data)
                .with_context(|| format!("reading {}", data.display()))?
                .next()
                .is_none();
            if let (true, Some((layers, path))) = (empty, seed) {
                populate_from_layers(layers, path, &data)
                    .with_context(|| format!("filling volume {name} from the image"))?;
            }
            return Ok(false);
        }
        let staging = self
            .root
            .join(format!("{STAGING_PREFIX}{name}-{}", random_hex(4)));
        let made = self.stage(&staging, anonymous, seed);
        let made = made.and_then(|()| match std::fs::rename(&staging, self.root.join(name)) {
            Ok(()) => Ok(true),
            // Made meanwhile by another run: that one is the volume.
            Err(_) if self.exists(name) => Ok(false),
            Err(err) => Err(err).with_context(|| format!("creating volume {name}")),
        });
        if !matches!(made, Ok(true)) {
            let _ = std::fs::remove_dir_all(&staging);
        }
        let made = made?;
        if made {
            info!(volume = %name, anonymous, "created a volume");
        }
        Ok(made)
    }

    fn stage(
        &self,
        staging: &Path,
        anonymous: bool,
        seed: Option<(&[PathBuf], &Path)>,
    ) -> Result<()> {
        let data = staging.join("_data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        if let Some((layers, path)) = seed {
            populate_from_layers(layers, path, &data)
                .context("filling the volume from the image")?;
        }
        let record = VolumeRecord {
            created: tartan_runtime::container::now_rfc3339(),
            anonymous,
        };
        let path = staging.join(RECORD);
        std::fs::write(&path, serde_json::to_vec_pretty(&record)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn record(&self, name: &str) -> Result<VolumeRecord> {
        let path = self.root.join(name).join(RECORD);
        let text = std::fs::read(&path).map_err(|_| anyhow::anyhow!("no such volume: {name}"))?;
        serde_json::from_slice(&text).with_context(|| format!("reading {}", path.display()))
    }

    /// Every volume's name, sorted.
    fn names(&self) -> Result<Vec<String>> {
        let listing = std::fs::read_dir(&self.root)
            .with_context(|| format!("reading {}", self.root.display()))?;
        let mut names: Vec<String> = listing
            .flatten()
            .map(|item| item.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.starts_with('.') && self.exists(name))
            .collect();
        names.sort();
        Ok(names)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.root.join(name);
        // Renamed aside first, so that a failure half-way leaves no volume half-removed under its name.
        let doomed = self
            .root
            .join(format!("{STAGING_PREFIX}removed-{name}-{}", random_hex(4)));
        std::fs::rename(&path, &doomed).with_context(|| format!("removing volume {name}"))?;
        std::fs::remove_dir_all(&doomed).with_context(|| format!("removing {}", doomed.display()))
    }
}

/// The volumes a container record uses, by name.
fn volume_names(config: &ContainerConfig) -> impl Iterator<Item = &str> {
    config
        .spec
        .mounts
        .iter()
        .filter(|m| m.kind == MountKind::Volume)
        .map(|m| m.name.as_str())
}

impl Containers {
    fn volume_store(&self) -> &VolumeStore {
        &self.inner.volumes
    }

    /// The mounts of a new container, checked and resolved, with nothing
    /// made yet: an anonymous volume for each of `image_volumes` (the
    /// image's `Volumes`), then `--volumes-from`, then `-v`; each replaces
    /// an earlier mount at the same path, as in Docker.
    pub(super) fn plan_mounts(
        &self,
        image_volumes: &[PathBuf],
        volumes: &[VolumeRequest],
        volumes_from: &[String],
    ) -> Result<Vec<Mount>> {
        let mut mounts: Vec<Mount> = Vec::new();
        for destination in image_volumes {
            if under_root(Path::new("/"), destination).is_none() {
                bail!(
                    "the image's volume {} is not an absolute path",
                    destination.display()
                );
            }
            mounts.retain(|m| &m.destination != destination);
            mounts.push(self.anonymous_mount(destination));
        }
        for text in volumes_from {
            let (container, read_only) = parse_volumes_from(text)?;
            let id = self.resolve(&container)?;
            let (config, _) = self.entry_parts(&id)?;
            for mount in config.spec.mounts {
                mounts.retain(|m| m.destination != mount.destination);
                mounts.push(Mount {
                    read_only: read_only.unwrap_or(mount.read_only),
                    ..mount
                });
            }
        }
        let mut given: Vec<&Path> = Vec::new();
        for request in volumes {
            let destination = request.destination();
            if given.contains(&destination) {
                bail!("Duplicate mount point: {}", destination.display());
            }
            given.push(destination);
            let mount = match request {
                VolumeRequest::Bind {
                    source,
                    destination,
                    read_only,
                } => Mount {
                    kind: MountKind::Bind,
                    name: String::new(),
                    source: source.clone(),
                    destination: destination.clone(),
                    read_only: *read_only,
                    anonymous: false,
                },
                VolumeRequest::Named {
                    name,
                    destination,
                    read_only,
                } => Mount {
                    kind: MountKind::Volume,
                    name: name.clone(),
                    source: self.volume_store().data_dir(name),
                    destination: destination.clone(),
                    read_only: *read_only,
                    anonymous: false,
                },
                VolumeRequest::Anonymous { destination } => self.anonymous_mount(destination),
            };
            mounts.retain(|m| m.destination != mount.destination);
            mounts.push(mount);
        }
        Ok(mounts)
    }

    /// A new anonymous volume at `destination` (Docker's `-v PATH`, and an
    /// image's `Volumes`): a random 64-hex name, made when the container is.
    pub fn anonymous_mount(&self, destination: &Path) -> Mount {
        let name = random_hex(32);
        Mount {
            kind: MountKind::Volume,
            source: self.volume_store().data_dir(&name),
            name,
            destination: destination.to_path_buf(),
            read_only: false,
            anonymous: true,
        }
    }

    /// Makes what a new container's mounts need on the host: missing bind
    /// sources as directories (as Docker's `-v` does) and volumes, filled
    /// from the image on first use.
    pub(super) fn make_mounts(&self, mounts: &[Mount], layers: &[PathBuf]) -> Result<()> {
        for mount in mounts {
            match mount.kind {
                MountKind::Bind => {
                    if !mount.source.exists() {
                        std::fs::create_dir_all(&mount.source).with_context(|| {
                            format!("creating the bind source {}", mount.source.display())
                        })?;
                    }
                }
                MountKind::Volume => {
                    self.volume_store().ensure(
                        &mount.name,
                        mount.anonymous,
                        Some((layers, &mount.destination)),
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Removes a container's anonymous volumes that no other container
    /// uses (`rm -v`, `run --rm`); failures are logged.
    pub fn remove_anonymous_volumes(&self, config: &ContainerConfig) {
        for mount in &config.spec.mounts {
            if !(mount.kind == MountKind::Volume && mount.anonymous) {
                continue;
            }
            if !self.volume_users(&mount.name).is_empty() {
                continue;
            }
            if !self.volume_store().exists(&mount.name) {
                continue;
            }
            match self.volume_store().delete(&mount.name) {
                Ok(()) => info!(volume = %mount.name, "removed an anonymous volume"),
                Err(err) => {
                    warn!(volume = %mount.name, error = %format!("{err:#}"), "could not remove an anonymous volume")
                }
            }
        }
    }

    /// Full ids of the containers (running or not) that use a volume.
    fn volume_users(&self, name: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .lock()
            .values()
            .filter(|e| volume_names(&e.config).any(|n| n == name))
            .map(|e| e.config.id.clone())
            .collect();
        users.sort();
        users
    }

    fn volume_view(&self, name: &str) -> Result<VolumeView> {
        let record = self.volume_store().record(name)?;
        Ok(VolumeView {
            name: name.to_string(),
            mountpoint: self.volume_store().data_dir(name),
            created: record.created,
            anonymous: record.anonymous,
            used_by: self.volume_users(name),
        })
    }

    /// `tartan volume create [NAME]`.
    pub fn create_volume(&self, name: &str) -> Result<VolumeView> {
        let (name, anonymous) = if name.is_empty() {
            (random_hex(32), true)
        } else {
            check_volume_name(name)?;
            (name.to_string(), false)
        };
        self.volume_store().ensure(&name, anonymous, None)?;
        self.volume_view(&name)
    }

    /// `tartan volume ls`.
    pub fn list_volumes(&self) -> Result<Vec<VolumeView>> {
        let mut views = Vec::new();
        for name in self.volume_store().names()? {
            match self.volume_view(&name) {
                Ok(view) => views.push(view),
                // Removed meanwhile.
                Err(_) => continue,
            }
        }
        Ok(views)
    }

    /// `tartan volume inspect NAME`.
    pub fn inspect_volume(&self, name: &str) -> Result<VolumeView> {
        if name.is_empty() {
            bail!("no volume named");
        }
        self.volume_view(name)
    }

    /// `tartan volume rm NAME`: refused while a container uses it, with Docker's words.
    pub fn remove_volume(&self, name: &str) -> Result<VolumeView> {
        let view = self.inspect_volume(name)?;
        // Held across the check and the removal, so that no run takes it up meanwhile.
        let entries = self.lock();
        let users: Vec<&str> = entries
            .values()
            .filter(|e| volume_names(&e.config).any(|n| n == name))
            .map(|e| e.config.id.as_str())
            .collect();
        if !users.is_empty() {
            bail!("remove {name}: volume is in use - [{}]", users.join(", "));
        }
        self.volume_store().delete(name)?;
        drop(entries);
        info!(volume = %name, "removed a volume");
        Ok(view)
    }

    /// `tartan volume prune`: the unused anonymous volumes, or with `all`
    /// every unused one (Docker's `prune -a`).
    pub fn prune_volumes(&self, all: bool) -> Result<Vec<VolumeView>> {
        let mut removed = Vec::new();
        for view in self.list_volumes()? {
            if !view.used_by.is_empty() || !(all || view.anonymous) {
                continue;
            }
            // In use by a container made meanwhile: kept.
            if let Ok(view) = self.remove_volume(&view.name) {
                removed.push(view);
            }
        }
        Ok(removed)
    }
}

/// Counts the volumes each container uses, for tests of the in-use rule.
#[cfg(test)]
fn uses(configs: &[ContainerConfig]) -> std::collections::BTreeMap<String, usize> {
    use std::collections::BTreeMap;
    let mut counts = BTreeMap::new();
    for config in configs {
        for name in volume_names(config) {
            *counts.entry(name.to_string()).or_insert(0) += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_follow_dockers_parser() {
        assert_eq!(
            parse_volume("/data/:/tmp/data").expect("bind"),
            VolumeRequest::Bind {
                source: "/data/".into(),
                destination: "/tmp/data".into(),
                read_only: false
            }
        );
        assert_eq!(
            parse_volume("db:/var/lib/db:ro").expect("named"),
            VolumeRequest::Named {
                name: "db".into(),
                destination: "/var/lib/db".into(),
                read_only: true
            }
        );
        assert_eq!(
            parse_volume("/cache").expect("anonymous"),
            VolumeRequest::Anonymous {
                destination: "/cache".into()
            }
        );
        for (bad, says) in [
            ("/data:data", "must be absolute"),
            ("/data:/x:rx", "invalid mode: rx"),
            ("/x:ro", "invalid volume specification"),
            ("a:b:c:d", "invalid volume specification"),
            ("/data:/", "can't be '/'"),
            ("/data:/x/../..", "climb"),
            ("b@d:/x", "invalid characters"),
            (":/x", "invalid volume specification"),
        ] {
            let err = parse_volume(bad).expect_err(bad).to_string();
            assert!(err.contains(says), "{bad}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn volumes_from_takes_a_mode() {
        assert_eq!(
            parse_volumes_from("c8").expect("plain"),
            ("c8".to_string(), None)
        );
        assert_eq!(
            parse_volumes_from("c8:ro").expect("ro"),
            ("c8".to_string(), Some(true))
        );
        assert!(parse_volumes_from("c8:rx").is_err());
        assert!(parse_volumes_from(":ro").is_err());
    }

    #[test]
    fn a_volume_is_made_whole_and_kept_until_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = VolumeStore::open(dir.path()).expect("store");
        let layer = dir.path().join("layer");
        std::fs::create_dir_all(layer.join("etc")).expect("layer");
        std::fs::write(layer.join("etc/passwd"), "root").expect("passwd");
        let layers = [layer];
        assert!(store
            .ensure("db", false, Some((&layers, Path::new("/etc"))))
            .expect("made"));
        assert_eq!(
            std::fs::read_to_string(store.data_dir("db").join("passwd")).expect("seeded"),
            "root"
        );
        std::fs::write(store.data_dir("db").join("passwd"), "changed").expect("write");
        // Used again: not made again, not seeded over.
        assert!(!store
            .ensure("db", false, Some((&layers, Path::new("/etc"))))
            .expect("exists"));
        assert_eq!(
            std::fs::read_to_string(store.data_dir("db").join("passwd")).expect("kept"),
            "changed"
        );
        assert_eq!(store.names().expect("names"), ["db"]);
        store.delete("db").expect("delete");
        assert!(store.names().expect("names").is_empty());
        // A staging directory a crash left is gone at the next open.
        std::fs::create_dir_all(dir.path().join("volumes/.new-x-1/_data")).expect("staging");
        VolumeStore::open(dir.path()).expect("reopen");
        assert!(!dir.path().join("volumes/.new-x-1").exists());
    }

    #[test]
    fn only_volume_mounts_count_as_uses() {
        let config: ContainerConfig = serde_json::from_value(serde_json::json!({
            "id": "ab", "name": "c", "image": "i", "image_id": "d", "args": [], "env": [],
            "cwd": "/", "hostname": "h", "tty": false, "open_stdin": false,
            "network": "none", "requested_ip": null, "auto_remove": false, "created": "",
            "mounts": [
                {"kind": "volume", "name": "db", "source": "/s/db/_data", "destination": "/db", "read_only": false},
                {"kind": "bind", "source": "/data", "destination": "/data", "read_only": true}
            ]
        }))
        .expect("a record with mounts");
        assert_eq!(
            uses(&[config.clone(), config]),
            std::collections::BTreeMap::from([("db".to_string(), 2)])
        );
    }
}
