//! The agent's side of `tartan import`, `images` and `rmi`: the runtime's
//! image store behind a lock, fed from a gRPC stream.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use anyhow::{Context, Result};
use tartan_runtime::{Image, ImageStore, Reference};

/// The store; one writer at a time, since imports and removals rewrite its index.
#[derive(Clone)]
pub struct Images {
    store: Arc<Mutex<ImageStore>>,
}

/// A `Read` over chunks arriving from an async stream.
pub struct ChunkReader {
    chunks: mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
}

impl ChunkReader {
    pub fn new(chunks: mpsc::Receiver<Vec<u8>>) -> ChunkReader {
        ChunkReader {
            chunks,
            current: Vec::new(),
            offset: 0,
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                // The sender is gone: the stream ended (or broke; the archive check tells which).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl Images {
    pub fn open(state_dir: &Path) -> Result<Images> {
        let store =
            ImageStore::open(&state_dir.join("images")).context("opening the image store")?;
        Ok(Images {
            store: Arc::new(Mutex::new(store)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ImageStore> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Blocking: extracts the archive read from `reader`.
    pub fn import(&self, reader: impl Read, reference: &Reference) -> Result<Image> {
        Ok(self.lock().import(reader, reference)?)
    }

    /// Blocking: loads a `docker save` or OCI layout archive.
    pub fn load(&self, reader: impl Read) -> Result<Vec<Image>> {
        Ok(self.lock().load(reader)?)
    }

    pub fn list(&self) -> Result<Vec<Image>> {
        Ok(self.lock().list()?)
    }

    /// Blocking: `rmi` (see `ImageStore::remove`).
    pub fn remove(
        &self,
        image: &str,
        force: bool,
        in_use: impl Fn(&Image) -> Option<String>,
    ) -> Result<tartan_runtime::image::Removed> {
        Ok(self.lock().remove(image, force, in_use)?)
    }

    /// Blocking: `tag` (see `ImageStore::tag`).
    pub fn tag(
        &self,
        source: &str,
        target: &Reference,
        in_use: impl Fn(&Image) -> Option<String>,
    ) -> Result<Image> {
        Ok(self.lock().tag(source, target, in_use)?)
    }

    /// Blocking: a NAME[:TAG] or an id prefix.
    pub fn resolve(&self, image: &str) -> Result<Image> {
        Ok(self.lock().resolve(image)?)
    }

    /// The image's layer directories, lowest first.
    pub fn layer_dirs(&self, image: &Image) -> Vec<PathBuf> {
        let store = self.lock();
        image.layers.iter().map(|l| store.layer_dir(l)).collect()
    }
}
