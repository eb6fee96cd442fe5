//! The manual peers (`connect`), kept in the state dir so that a restart
//! reconnects to them (weave's `--resume`, always on).

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

const FILE: &str = "peers.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    manual: Vec<SocketAddrV4>,
}

#[derive(Debug, Clone)]
pub struct ManualPeers {
    path: PathBuf,
}

impl ManualPeers {
    pub fn in_state_dir(state_dir: &Path) -> ManualPeers {
        ManualPeers {
            path: state_dir.join(FILE),
        }
    }

    /// The stored list; none when the file is missing.
    pub fn load(&self) -> Result<Vec<SocketAddrV4>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                let stored: Stored = serde_json::from_slice(&bytes)
                    .with_context(|| format!("reading {}", self.path.display()))?;
                Ok(stored.manual)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(err) => Err(err).with_context(|| format!("reading {}", self.path.display())),
        }
    }

    /// Replaces the stored list, atomically.
    pub fn save(&self, manual: &[SocketAddrV4]) -> Result<()> {
        let stored = Stored {
            manual: manual.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&stored).context("encoding the peer list")?;
        let temporary = self.path.with_extension("json.new");
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &self.path))
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_survives_a_round_trip_and_starts_empty() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let peers = ManualPeers::in_state_dir(dir.path());
        assert!(peers.load()?.is_empty());
        let list = vec!["10.0.0.2:6783".parse()?, "10.0.0.3:7000".parse()?];
        peers.save(&list)?;
        assert_eq!(peers.load()?, list);
        Ok(())
    }
}
