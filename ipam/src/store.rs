//! Keeping host allocations across restarts: a small JSON file, replaced atomically.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::{HostAllocator, IpamError};

const FORMAT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    subnet: Ipv4Network,
    allocations: Vec<StoredAllocation>,
}

#[derive(Serialize, Deserialize)]
struct StoredAllocation {
    address: Ipv4Addr,
    owner: String,
}

impl HostAllocator {
    /// Restores the allocations saved at `path`, or starts empty when there are none.
    pub fn load_or_new(path: &Path, subnet: Ipv4Network) -> Result<HostAllocator, IpamError> {
        let mut allocator = HostAllocator::new(subnet)?;
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(allocator),
            Err(source) => {
                return Err(IpamError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let stored: Stored =
            serde_json::from_slice(&text).map_err(|source| IpamError::Malformed {
                path: path.to_path_buf(),
                source,
            })?;
        if stored.subnet != allocator.subnet() {
            return Err(IpamError::SubnetChanged {
                path: path.to_path_buf(),
                stored: stored.subnet,
                current: allocator.subnet(),
            });
        }
        for entry in stored.allocations {
            allocator.restore(entry.address, entry.owner)?;
        }
        Ok(allocator)
    }

    /// Saves the allocations; a crash leaves either the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), IpamError> {
        let write_err = |source| IpamError::Write {
            path: path.to_path_buf(),
            source,
        };
        let stored = Stored {
            version: FORMAT_VERSION,
            subnet: self.subnet(),
            allocations: self
                .allocations()
                .map(|(address, owner)| StoredAllocation {
                    address,
                    owner: owner.to_string(),
                })
                .collect(),
        };
        let text =
            serde_json::to_vec_pretty(&stored).map_err(|e| write_err(std::io::Error::other(e)))?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut file = std::fs::File::create(&tmp).map_err(write_err)?;
        file.write_all(&text)
            .and_then(|()| file.sync_all())
            .map_err(write_err)?;
        std::fs::rename(&tmp, path).map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_another_subnet() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/ipam.json");
        let subnet: Ipv4Network = "10.5.34.0/24".parse().expect("cidr");
        let mut a = HostAllocator::load_or_new(&path, subnet).expect("new");
        a.allocate("c1").expect("c1");
        a.allocate_specific("c2", Ipv4Addr::new(10, 5, 34, 77))
            .expect("c2");
        a.save(&path).expect("save");
        let b = HostAllocator::load_or_new(&path, subnet).expect("load");
        assert_eq!(a, b);
        let other: Ipv4Network = "10.5.35.0/24".parse().expect("cidr");
        assert!(matches!(
            HostAllocator::load_or_new(&path, other),
            Err(IpamError::SubnetChanged { .. })
        ));
        std::fs::write(&path, b"{broken").expect("write");
        let err = HostAllocator::load_or_new(&path, subnet).expect_err("malformed");
        assert!(err.to_string().contains("ipam.json"), "{err}");
    }
}
