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
/// far ends in zeros, for the end-of-archive check, and whether it ran out
/// (so that a failure of the tar reader can be told to be a truncation).
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    trailing_zeros: usize,
    /// The input ended.
    ran_out: bool,
    /// The gzip stream ended before its own end.
    gzip_cut: bool,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(err) => {
                self.gzip_cut |= err.kind() == io::ErrorKind::UnexpectedEof;
                return Err(err);
            }
        };
        self.ran_out |= n == 0 && !buf.is_empty();
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

/// The innermost cause of a tar reader's error: its outer text names the
/// staging path the entry was being unpacked to, which means nothing to the
/// user.
fn root_cause(err: &io::Error) -> String {
    let mut cause: &dyn std::error::Error = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// Why reading an archive failed, as the tar reader saw it.
enum Failure {
    /// Reading the archive (its headers or the stream itself).
    Reading(io::Error),
    /// Unpacking one entry, named by its path in the archive.
    Entry(PathBuf, io::Error),
    /// Refused by this module.
    Refused(RuntimeError),
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
        ran_out: false,
        gzip_cut: false,
    };
    std::fs::create_dir_all(dest).map_err(crate::error::io_err("creating", dest))?;
    let mut size = 0u64;
    let mut entries_seen = 0usize;
    let unpacked = unpack(&mut hashing, dest, &mut size, &mut entries_seen);
    // Read what the tar reader left (padding after the end marker) so the
    // digest covers the whole stream and the end marker can be checked.
    let unpacked = unpacked.and_then(|()| {
        io::copy(&mut hashing, &mut io::sink())
            .map(drop)
            .map_err(Failure::Reading)
    });
    match unpacked {
        Ok(()) => {}
        Err(Failure::Refused(err)) => return Err(err),
        // Whatever the tar reader made of it, an input that ran out was cut short.
        Err(_) if hashing.gzip_cut || (hashing.ran_out && entries_seen > 0) => {
            return Err(corrupt("truncated archive"));
        }
        // Not even the first header could be read: this is no tar at all
        // (the tar reader's own text quotes the bytes it found).
        Err(_) if entries_seen == 0 => return Err(corrupt("not a tar archive")),
        Err(Failure::Reading(err)) => return Err(corrupt(root_cause(&err))),
        Err(Failure::Entry(path, err)) => {
            return Err(corrupt(format!("{}: {}", path.display(), root_cause(&err))))
        }
    }
    if entries_seen == 0 {
        return Err(corrupt("it holds no files"));
    }
    if hashing.trailing_zeros < END_MARKER {
        return Err(corrupt(
            "truncated archive: it ends without the end-of-archive marker",
        ));
    }
    Ok(Layer {
        digest: format!("{:x}", hashing.hasher.finalize()),
        size,
    })
}

/// Unpacks every entry of the tar stream into `dest`, counting them and
/// the bytes of file content.
fn unpack(
    stream: &mut impl Read,
    dest: &Path,
    size: &mut u64,
    entries_seen: &mut usize,
) -> std::result::Result<(), Failure> {
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(false);
    for entry in archive.entries().map_err(Failure::Reading)? {
        let mut entry = entry.map_err(Failure::Reading)?;
        *entries_seen += 1;
        match entry.header().entry_type() {
            // The runtime populates /dev itself; nodes in an image are not needed.
            EntryType::Char | EntryType::Block | EntryType::Fifo => continue,
            EntryType::Regular | EntryType::Continuous => *size += entry.size(),
            _ => {}
        }
        let path = entry.path().map_err(Failure::Reading)?.into_owned();
        if let Some(whiteout) = Whiteout::of(&path) {
            whiteout
                .apply(dest)
                .map_err(|e| Failure::Entry(path.clone(), e))?;
            continue;
        }
        let inside = entry
            .unpack_in(dest)
            .map_err(|e| Failure::Entry(path.clone(), e))?;
        if !inside {
            return Err(Failure::Refused(corrupt(format!(
                "{} points outside the root",
                path.display()
            ))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar of a few files, one of them big enough to be cut inside.
    fn sample_tar() -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, len) in [("etc/hostname", 10usize), ("bin/tool", 20_000), ("a", 3)] {
            let mut header = tar::Header::new_gnu();
            header.set_size(len as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            builder
                .append_data(&mut header, name, &vec![b'x'; len][..])
                .expect("appending");
        }
        builder.into_inner().expect("finishing")
    }

    fn refusal(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("staging-rootfs");
        let err = match extract(bytes, &dest) {
            Ok(_) => panic!("{} bytes taken as an archive", bytes.len()),
            Err(err) => err.to_string(),
        };
        assert!(
            !err.contains("staging-rootfs"),
            "names the staging path: {err}"
        );
        assert!(
            err.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "one printable line: {err:?}"
        );
        err
    }

    #[test]
    fn an_archive_is_taken_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layer = extract(&sample_tar()[..], &dir.path().join("rootfs")).expect("extracts");
        assert_eq!(layer.size, 20_013);
    }

    #[test]
    fn what_is_no_tar_is_refused_as_such() {
        let mut garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        garbage[..4].copy_from_slice(b"\x7fELF");
        let text = b"just some text, not an archive\n".repeat(40);
        let gzip_of_text = {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut encoder, &text).expect("compressing");
            encoder.finish().expect("compressing")
        };
        for bytes in [&garbage[..], &text[..], &gzip_of_text[..]] {
            let err = refusal(bytes);
            assert!(err.ends_with("not a tar archive"), "{err}");
        }
    }

    #[test]
    fn a_cut_archive_is_called_truncated() {
        let whole = sample_tar();
        let gzipped = {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut encoder, &whole).expect("compressing");
            encoder.finish().expect("compressing")
        };
        // Inside a file's data, inside a header, on a block boundary, before the end marker.
        for cut in [1024 + 5000, 512 * 42 + 100, 512 * 42, whole.len() - 1024] {
            let err = refusal(&whole[..cut]);
            assert!(err.contains("truncated archive"), "cut at {cut}: {err}");
        }
        let err = refusal(&gzipped[..gzipped.len() / 2]);
        assert!(err.contains("truncated archive"), "gzip cut: {err}");
    }

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
