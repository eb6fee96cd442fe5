//! Keeping a node's container addresses across agent restarts: a small JSON
//! file, replaced atomically so that a crash leaves the old file or the new
//! one, never a torn one.

use std::ffi::OsString;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::{HostAllocator, IpamError};

/// Bumped when the file's meaning changes, so an older build refuses a newer
/// file instead of misreading it.
const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct AllocationFile {
    version: u32,
    subnet: Ipv4Network,
    allocations: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    address: Ipv4Addr,
    owner: String,
}

/// Read first, so a file from a newer build is reported as such even if
/// the rest of it no longer looks like ours.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

fn same_subnet(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.network() == b.network() && a.prefix() == b.prefix()
}

impl HostAllocator {
    /// Restores the allocations saved at `path`, or starts empty when there
    /// is no file yet. A file for another subnet is
    /// [`IpamError::SubnetChanged`]: whether the old containers are gone is
    /// for the caller to decide.
    pub fn load_or_new(path: &Path, subnet: Ipv4Network) -> Result<HostAllocator, IpamError> {
        let mut book = HostAllocator::new(subnet)?;
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(book),
            Err(source) => {
                return Err(IpamError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let malformed = |source| IpamError::Malformed {
            path: path.to_path_buf(),
            source,
        };
        let VersionOnly { version } = serde_json::from_slice(&text).map_err(malformed)?;
        if version != FORMAT_VERSION {
            return Err(IpamError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let stored: AllocationFile = serde_json::from_slice(&text).map_err(malformed)?;
        if !same_subnet(&stored.subnet, &book.subnet()) {
            return Err(IpamError::SubnetChanged {
                stored: stored.subnet,
                current: book.subnet(),
            });
        }
        for Entry { address, owner } in stored.allocations {
            if let Err(err) = book.allocate_specific(&owner, address) {
                return Err(IpamError::BadEntry {
                    path: path.to_path_buf(),
                    addr: address,
                    owner,
                    source: Box::new(err),
                });
            }
        }
        Ok(book)
    }

    /// Writes the allocations to `path` as JSON, creating its directory.
    /// The data goes to a temporary file beside it, is synced, and is renamed
    /// over `path`; the directory is synced too so the rename survives a
    /// power cut. The file is private to its owner (mode 0600 on Unix).
    pub fn save(&self, path: &Path) -> Result<(), IpamError> {
        self.write(path, true)
    }

    /// As `save`, without waiting for the disk: the file is replaced
    /// atomically, so a crashed process never leaves it torn, but a power
    /// cut may bring back the previous version. For bookings that a restart
    /// reconciles anyway (container addresses: nothing runs after a power cut).
    pub fn save_unsynced(&self, path: &Path) -> Result<(), IpamError> {
        self.write(path, false)
    }

    fn write(&self, path: &Path, durable: bool) -> Result<(), IpamError> {
        let write_err = |source| IpamError::Write {
            path: path.to_path_buf(),
            source,
        };
        let stored = AllocationFile {
            version: FORMAT_VERSION,
            subnet: self.subnet(),
            allocations: self
                .allocations()
                .map(|(address, owner)| Entry {
                    address,
                    owner: owner.to_owned(),
                })
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&stored).map_err(|source| IpamError::Encode {
            path: path.to_path_buf(),
            source,
        })?;
        text.push(b'\n');

        let name = path.file_name().ok_or_else(|| {
            write_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path does not name a file",
            ))
        })?;
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let mut prefix = OsString::from(".");
        prefix.push(name);
        prefix.push(".");
        let mut tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(write_err)?;
        tmp.write_all(&text).map_err(write_err)?;
        if durable {
            tmp.as_file().sync_all().map_err(write_err)?;
        }
        // On failure the temporary file is dropped, which removes it.
        tmp.persist(path).map_err(|err| write_err(err.error))?;
        if durable {
            sync_dir(dir).map_err(write_err)?;
        }
        Ok(())
    }
}

/// Makes a rename in `dir` durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;

    fn net(text: &str) -> Ipv4Network {
        text.parse().expect("test CIDR")
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("test address")
    }

    fn scratch() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state").join("ipam.json");
        (dir, path)
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .expect("readable dir")
            .map(|entry| {
                entry
                    .expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    #[test]
    fn no_file_means_an_empty_book() {
        let (_dir, path) = scratch();
        let book = HostAllocator::load_or_new(&path, net("10.5.34.0/24")).expect("empty");
        assert_eq!(book.subnet(), net("10.5.34.0/24"));
        assert_eq!(book.allocations().count(), 0);
        assert!(!path.exists(), "loading does not create the file");
    }

    #[test]
    fn saves_and_restores_allocations() {
        let (dir, path) = scratch();
        let subnet = net("10.5.34.0/24");
        let mut book = HostAllocator::load_or_new(&path, subnet).expect("empty");
        book.allocate("c1").expect("free");
        book.allocate_specific("c2", ip("10.5.34.77"))
            .expect("free");
        book.save(&path).expect("saved");

        let restored = HostAllocator::load_or_new(&path, subnet).expect("loaded");
        assert_eq!(restored, book);
        assert_eq!(restored.address_of("c1"), Some(ip("10.5.34.2")));
        assert_eq!(restored.owner_of(ip("10.5.34.77")), Some("c2"));
        assert_eq!(files_in(&dir.path().join("state")), vec!["ipam.json"]);

        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("file")).expect("JSON");
        assert_eq!(json["version"], 1);
        assert_eq!(json["subnet"], "10.5.34.0/24");
        assert_eq!(json["allocations"][1]["address"], "10.5.34.77");
        assert_eq!(json["allocations"][1]["owner"], "c2");
    }

    #[test]
    fn an_unsynced_save_reads_back_the_same() {
        let (_dir, path) = scratch();
        let subnet = net("10.5.34.0/24");
        let mut book = HostAllocator::new(subnet).expect("valid");
        book.allocate("c1").expect("free");
        book.save_unsynced(&path).expect("saved");
        let restored = HostAllocator::load_or_new(&path, subnet).expect("loaded");
        assert_eq!(restored, book);
    }

    #[test]
    fn saving_again_replaces_the_file() {
        let (dir, path) = scratch();
        let subnet = net("10.5.34.0/24");
        let mut book = HostAllocator::new(subnet).expect("valid");
        book.allocate("c1").expect("free");
        book.save(&path).expect("first save");
        book.release("c1");
        book.allocate("c2").expect("free");
        book.allocate("c3").expect("free");
        book.save(&path).expect("second save");
        let restored = HostAllocator::load_or_new(&path, subnet).expect("loaded");
        assert_eq!(restored.address_of("c1"), None);
        assert_eq!(restored.address_of("c3"), Some(ip("10.5.34.3")));
        assert_eq!(files_in(&dir.path().join("state")), vec!["ipam.json"]);
    }

    #[test]
    fn another_subnet_is_reported_with_both_subnets() {
        let (_dir, path) = scratch();
        HostAllocator::new(net("10.5.34.0/24"))
            .expect("valid")
            .save(&path)
            .expect("saved");
        for current in ["10.5.35.0/24", "10.5.34.0/25"] {
            match HostAllocator::load_or_new(&path, net(current)) {
                Err(IpamError::SubnetChanged {
                    stored,
                    current: now,
                }) => {
                    assert_eq!(stored, net("10.5.34.0/24"));
                    assert_eq!(now, net(current));
                }
                other => panic!("expected SubnetChanged, got {other:?}"),
            }
        }
        // The same subnet spelled with host bits is still the same subnet.
        HostAllocator::load_or_new(&path, net("10.5.34.9/24")).expect("same subnet");
    }

    fn load_text(text: &str) -> (PathBuf, Result<HostAllocator, IpamError>, tempfile::TempDir) {
        let (dir, path) = scratch();
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        let result = HostAllocator::load_or_new(&path, net("10.5.34.0/24"));
        (path, result, dir)
    }

    #[test]
    fn malformed_files_name_their_path() {
        for text in [
            "{broken",
            "",
            "[]",
            r#"{"version": 1}"#,
            r#"{"subnet": "10.5.34.0/24", "allocations": []}"#,
            r#"{"version": "1", "subnet": "10.5.34.0/24", "allocations": []}"#,
            r#"{"version": 1, "subnet": "nonsense", "allocations": []}"#,
            r#"{"version": 1, "subnet": "10.5.34.0/24", "allocations": [{"address": "10.5.34"}]}"#,
            r#"{"version": 1, "subnet": "10.5.34.0/24", "allocations": [{"owner": "c"}]}"#,
        ] {
            let (path, result, _dir) = load_text(text);
            match result {
                Err(err @ IpamError::Malformed { .. }) => {
                    assert!(
                        err.to_string().contains(&path.display().to_string()),
                        "{err}"
                    );
                }
                other => panic!("{text}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn newer_versions_are_refused() {
        let (path, result, _dir) = load_text(r#"{"version": 2, "subnets": ["anything new"]}"#);
        match result {
            Err(err @ IpamError::UnsupportedVersion { .. }) => {
                let message = err.to_string();
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(message.contains("version 2"), "{message}");
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }

    #[test]
    fn entries_that_cannot_be_restored_are_refused() {
        let entry = |address: &str, owner: &str| {
            format!(r#"{{"address": "{address}", "owner": "{owner}"}}"#)
        };
        let cases = [
            (vec![entry("10.5.34.1", "c1")], "Reserved"),
            (vec![entry("10.5.34.255", "c1")], "Reserved"),
            (vec![entry("10.5.99.2", "c1")], "OutsideSubnet"),
            (
                vec![entry("10.5.34.2", "c1"), entry("10.5.34.2", "c2")],
                "InUse",
            ),
            (
                vec![entry("10.5.34.2", "c1"), entry("10.5.34.3", "c1")],
                "OwnerHasAddress",
            ),
        ];
        for (entries, expected) in cases {
            let text = format!(
                r#"{{"version": 1, "subnet": "10.5.34.0/24", "allocations": [{}]}}"#,
                entries.join(",")
            );
            let (path, result, _dir) = load_text(&text);
            match result {
                Err(IpamError::BadEntry {
                    path: reported,
                    source,
                    ..
                }) => {
                    assert_eq!(reported, path);
                    let kind = match *source {
                        IpamError::Reserved { .. } => "Reserved",
                        IpamError::OutsideSubnet { .. } => "OutsideSubnet",
                        IpamError::InUse { .. } => "InUse",
                        IpamError::OwnerHasAddress { .. } => "OwnerHasAddress",
                        ref other => panic!("unexpected cause {other}"),
                    };
                    assert_eq!(kind, expected, "{text}");
                }
                other => panic!("{text}: expected BadEntry, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_unreadable_path_is_a_read_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        match HostAllocator::load_or_new(dir.path(), net("10.5.34.0/24")) {
            Err(IpamError::Read { path, .. }) => assert_eq!(path, dir.path()),
            other => panic!("expected Read, got {other:?}"),
        }
    }

    #[test]
    fn an_unwritable_path_is_a_write_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let blocker = dir.path().join("not-a-dir");
        std::fs::write(&blocker, b"file").expect("write");
        let path = blocker.join("ipam.json");
        let book = HostAllocator::new(net("10.5.34.0/24")).expect("valid");
        match book.save(&path) {
            Err(IpamError::Write { path: reported, .. }) => assert_eq!(reported, path),
            other => panic!("expected Write, got {other:?}"),
        }
        match book.save(Path::new("/")) {
            Err(IpamError::Write { .. }) => {}
            other => panic!("expected Write for a path without a file name, got {other:?}"),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn save_then_load_gives_the_same_book(
            prefix in 22u8..=30,
            requests in proptest::collection::vec(
                (any::<String>(), 0u32..1024, any::<bool>()),
                0..40,
            ),
        ) {
            let base = Ipv4Network::new(Ipv4Addr::new(10, 5, 32, 0), prefix)
                .expect("prefix <= 32")
                .network();
            let subnet = Ipv4Network::new(base, prefix).expect("prefix <= 32");
            let mut book = HostAllocator::new(subnet).expect("valid");
            for (owner, host, specific) in requests {
                if specific {
                    let addr = Ipv4Addr::from(u32::from(base) + host);
                    let _refused_or_granted = book.allocate_specific(&owner, addr);
                } else {
                    let _granted_or_full = book.allocate(&owner);
                }
            }
            let (_dir, path) = scratch();
            book.save(&path).expect("saved");
            let restored = HostAllocator::load_or_new(&path, subnet).expect("loaded");
            prop_assert_eq!(&restored, &book);
            prop_assert_eq!(
                restored.allocations().collect::<Vec<_>>(),
                book.allocations().collect::<Vec<_>>()
            );
        }
    }
}
