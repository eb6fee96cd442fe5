//! Extracting one layer tarball, checked and hashed on the way.

use std::ffi::CString;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::EntryType;

use crate::{Result, RuntimeError};

/// A tar archive ends with two zero blocks; one missing means it was cut short.
const END_MARKER: usize = 1024;

/// What an extracted layer is.
pub struct Layer {
    /// sha256 of the uncompressed tar stream, hex (Docker's diff id).
    pub digest: String,
    /// Bytes of file content.
    pub size: u64,
}

/// Hashes everything read through it and remembers whether the stream so
/// far ends in zeros, for the end-of-archive check.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    trailing_zeros: usize,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = &buf[..n];
        self.hasher.update(chunk);
        match chunk.iter().rposition(|b| *b != 0) {
            Some(last) => self.trailing_zeros = n - last - 1,
            None => self.trailing_zeros += n,
        }
        Ok(n)
    }
}

/// A whiteout entry of a layer tarball (the OCI / Docker convention), and
/// its overlayfs form: a 0/0 character device hides a file of the layers
/// below, the `trusted.overlay.opaque` attribute hides a whole directory's
/// lower contents.
#[derive(Debug, PartialEq, Eq)]
enum Whiteout {
    File(PathBuf),
    Opaque(PathBuf),
}

impl Whiteout {
    fn of(path: &Path) -> Option<Whiteout> {
        let name = path.file_name()?.to_str()?;
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == ".wh..wh..opq" {
            return Some(Whiteout::Opaque(parent));
        }
        let hidden = name.strip_prefix(".wh.")?;
        Some(Whiteout::File(parent.join(hidden)))
    }

    fn apply(&self, dest: &Path) -> io::Result<()> {
        let target = match self {
            Whiteout::File(path) | Whiteout::Opaque(path) => path,
        };
        if target
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(io::Error::other("whiteout outside the root"));
        }
        let full = dest.join(target);
        match self {
            Whiteout::File(_) => {
                if let Some(parent) = full.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                // Usually absent; anything else in the way makes mknod fail below.
                let _ = std::fs::remove_file(&full);
                let c_path = CString::new(full.as_os_str().as_bytes()).map_err(io::Error::other)?;
                // SAFETY: mknod with a valid NUL-terminated path.
                if unsafe { libc::mknod(c_path.as_ptr(), libc::S_IFCHR, 0) } != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Whiteout::Opaque(_) => {
                std::fs::create_dir_all(&full)?;
                let c_path = CString::new(full.as_os_str().as_bytes()).map_err(io::Error::other)?;
                let name = c"trusted.overlay.opaque";
                // SAFETY: setxattr with valid NUL-terminated path and name and a 1-byte value.
                if unsafe {
                    libc::setxattr(c_path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0)
                } != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

fn corrupt(err: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::CorruptArchive(err.to_string())
}

/// Extracts a plain or gzip-compressed tarball into `dest` (created).
pub fn extract(reader: impl Read, dest: &Path) -> Result<Layer> {
    let mut buffered = BufReader::with_capacity(64 * 1024, reader);
    let gzip = buffered
        .fill_buf()
        .map_err(corrupt)?
        .starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let mut hashing = Hashing {
        inner: stream,
        hasher: Sha256::new(),
        trailing_zeros: 0,
    };
    std::fs::create_dir_all(dest).map_err(crate::error::io_err("creating", dest))?;
    let mut size = 0u64;
    let mut entries_seen = 0usize;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_preserve_ownerships(true);
        archive.set_unpack_xattrs(false);
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            entries_seen += 1;
            match entry.header().entry_type() {
                // The runtime populates /dev itself; nodes in an image are not needed.
                EntryType::Char | EntryType::Block | EntryType::Fifo => continue,
                EntryType::Regular | EntryType::Continuous => size += entry.size(),
                _ => {}
            }
            let path = entry.path().map_err(corrupt)?.into_owned();
            if let Some(whiteout) = Whiteout::of(&path) {
                whiteout
                    .apply(dest)
                    .map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
                continue;
            }
            let inside = entry
                .unpack_in(dest)
                .map_err(|e| corrupt(format!("{}: {e}", path.display())))?;
            if !inside {
                return Err(corrupt(format!(
                    "{} points outside the root",
                    path.display()
                )));
            }
        }
    }
    // Read what the tar reader left (padding after the end marker) so the
    // digest covers the whole stream and the end marker can be checked.
    io::copy(&mut hashing, &mut io::sink()).map_err(corrupt)?;
    if entries_seen == 0 {
        return Err(corrupt("it holds no files"));
    }
    if hashing.trailing_zeros < END_MARKER {
        return Err(corrupt(
            "it ends without the end-of-archive marker (truncated?)",
        ));
    }
    Ok(Layer {
        digest: format!("{:x}", hashing.hasher.finalize()),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names_are_recognised() {
        assert_eq!(
            Whiteout::of(Path::new("./etc/.wh.passwd")),
            Some(Whiteout::File(PathBuf::from("./etc/passwd")))
        );
        assert_eq!(
            Whiteout::of(Path::new("data/dir/.wh..wh..opq")),
            Some(Whiteout::Opaque(PathBuf::from("data/dir")))
        );
        assert_eq!(Whiteout::of(Path::new("etc/passwd")), None);
        let escape = Whiteout::File(PathBuf::from("../../etc/passwd"));
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            escape.apply(dir.path()).is_err(),
            "a whiteout may not reach outside"
        );
    }
}
