//! The system calls container setup makes, behind a trait: the real ones for
//! `tartan init`, a recording fake for unit tests of the order and arguments.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::Result;

pub const MS_RDONLY: u64 = libc::MS_RDONLY;
pub const MS_NOSUID: u64 = libc::MS_NOSUID;
pub const MS_NODEV: u64 = libc::MS_NODEV;
pub const MS_NOEXEC: u64 = libc::MS_NOEXEC;
pub const MS_BIND: u64 = libc::MS_BIND;
pub const MS_REC: u64 = libc::MS_REC;
pub const MS_PRIVATE: u64 = libc::MS_PRIVATE;
pub const MS_REMOUNT: u64 = libc::MS_REMOUNT;

/// A device node's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Char,
    Block,
}

/// What a path is, for choosing how to mask it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    Directory,
    Other,
}

/// What container setup asks of the kernel.
pub trait Syscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> Result<()>;
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()>;
    fn umount_detach(&self, target: &Path) -> Result<()>;
    fn chdir(&self, path: &Path) -> Result<()>;
    fn mkdir_all(&self, path: &Path) -> Result<()>;
    fn mknod(&self, path: &Path, kind: DeviceKind, mode: u32, major: u32, minor: u32)
        -> Result<()>;
    fn symlink(&self, target: &Path, link: &Path) -> Result<()>;
    fn sethostname(&self, name: &str) -> Result<()>;
    /// Replaces a file's contents (or creates it, mode 0644).
    fn write_file(&self, path: &Path, contents: &[u8]) -> Result<()>;
    /// Whether `path` exists and is a directory (not following a last symlink).
    fn path_kind(&self, path: &Path) -> Result<PathKind>;
    /// The target of `path` if it is a symlink; None if it is anything else or missing.
    fn read_link(&self, path: &Path) -> Result<Option<PathBuf>>;
}

fn cstr(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The real system calls.
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> Result<()> {
        let run = || -> std::io::Result<()> {
            let source = CString::new(source).map_err(std::io::Error::other)?;
            let fstype = CString::new(fstype).map_err(std::io::Error::other)?;
            let data = CString::new(data).map_err(std::io::Error::other)?;
            let target = cstr(target)?;
            let opt = |c: &CString| {
                if c.as_bytes().is_empty() {
                    std::ptr::null()
                } else {
                    c.as_ptr()
                }
            };
            // SAFETY: valid NUL-terminated strings or null where the kernel allows it.
            check(unsafe {
                libc::mount(
                    opt(&source),
                    target.as_ptr(),
                    opt(&fstype),
                    flags,
                    opt(&data).cast(),
                )
            })
        };
        run().map_err(io_err("mounting on", target))
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        let run = || -> std::io::Result<()> {
            let (new_root, put_old) = (cstr(new_root)?, cstr(put_old)?);
            // SAFETY: pivot_root has no libc wrapper; raw syscall with two valid paths.
            let rc =
                unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
            check(rc as libc::c_int)
        };
        run().map_err(io_err("pivot_root to", new_root))
    }

    fn umount_detach(&self, target: &Path) -> Result<()> {
        let run = || -> std::io::Result<()> {
            let target = cstr(target)?;
            // SAFETY: a valid path.
            check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
        };
        run().map_err(io_err("unmounting", target))
    }

    fn chdir(&self, path: &Path) -> Result<()> {
        std::env::set_current_dir(path).map_err(io_err("changing directory to", path))
    }

    fn mkdir_all(&self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path).map_err(io_err("creating", path))
    }

    fn mknod(
        &self,
        path: &Path,
        kind: DeviceKind,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        let file_type = match kind {
            DeviceKind::Char => libc::S_IFCHR,
            DeviceKind::Block => libc::S_IFBLK,
        };
        let run = || -> std::io::Result<()> {
            let c = cstr(path)?;
            // SAFETY: a valid path; makedev composes the device number.
            check(unsafe {
                libc::mknod(c.as_ptr(), file_type | mode, libc::makedev(major, minor))
            })?;
            // mknod honours the umask; the node must have exactly `mode`.
            std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        };
        run().map_err(io_err("creating the device", path))
    }

    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        std::os::unix::fs::symlink(target, link).map_err(io_err("linking", link))
    }

    fn sethostname(&self, name: &str) -> Result<()> {
        // SAFETY: a buffer and its length.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
            .map_err(io_err("setting the hostname to", name))
    }

    fn write_file(&self, path: &Path, contents: &[u8]) -> Result<()> {
        std::fs::write(path, contents).map_err(io_err("writing", path))
    }

    fn path_kind(&self, path: &Path) -> Result<PathKind> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => Ok(PathKind::Directory),
            Ok(_) => Ok(PathKind::Other),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(PathKind::Missing),
            Err(err) => Err(io_err("looking at", path)(err)),
        }
    }

    fn read_link(&self, path: &Path) -> Result<Option<PathBuf>> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => std::fs::read_link(path)
                .map(Some)
                .map_err(io_err("reading the link", path)),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_err("looking at", path)(err)),
        }
    }
}

/// One recorded call, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        flags: u64,
        data: String,
    },
    PivotRoot(PathBuf, PathBuf),
    UmountDetach(PathBuf),
    Chdir(PathBuf),
    MkdirAll(PathBuf),
    Mknod(PathBuf, DeviceKind, u32, u32, u32),
    Symlink(PathBuf, PathBuf),
    Sethostname(String),
    WriteFile(PathBuf, Vec<u8>),
}

/// Records every call and succeeds, so that unit tests can check what
/// container setup would do, in which order, without root. Paths are files
/// unless listed in `directories` or `missing`.
#[derive(Default)]
pub struct RecordingSyscall {
    pub calls: RefCell<Vec<Call>>,
    pub directories: Vec<PathBuf>,
    pub missing: Vec<PathBuf>,
    /// Symlinks: where each points.
    pub links: Vec<(PathBuf, PathBuf)>,
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: u64,
        data: &str,
    ) -> Result<()> {
        self.calls.borrow_mut().push(Call::Mount {
            source: source.into(),
            target: target.into(),
            fstype: fstype.into(),
            flags,
            data: data.into(),
        });
        Ok(())
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::PivotRoot(new_root.into(), put_old.into()));
        Ok(())
    }
    fn umount_detach(&self, target: &Path) -> Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::UmountDetach(target.into()));
        Ok(())
    }
    fn chdir(&self, path: &Path) -> Result<()> {
        self.calls.borrow_mut().push(Call::Chdir(path.into()));
        Ok(())
    }
    fn mkdir_all(&self, path: &Path) -> Result<()> {
        self.calls.borrow_mut().push(Call::MkdirAll(path.into()));
        Ok(())
    }
    fn mknod(
        &self,
        path: &Path,
        kind: DeviceKind,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Mknod(path.into(), kind, mode, major, minor));
        Ok(())
    }
    fn symlink(&self, target: &Path, link: &Path) -> Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::Symlink(target.into(), link.into()));
        Ok(())
    }
    fn sethostname(&self, name: &str) -> Result<()> {
        self.calls.borrow_mut().push(Call::Sethostname(name.into()));
        Ok(())
    }
    fn write_file(&self, path: &Path, contents: &[u8]) -> Result<()> {
        self.calls
            .borrow_mut()
            .push(Call::WriteFile(path.into(), contents.to_vec()));
        Ok(())
    }
    fn path_kind(&self, path: &Path) -> Result<PathKind> {
        Ok(if self.missing.iter().any(|p| p == path) {
            PathKind::Missing
        } else if self.directories.iter().any(|p| p == path) {
            PathKind::Directory
        } else {
            PathKind::Other
        })
    }
    fn read_link(&self, path: &Path) -> Result<Option<PathBuf>> {
        Ok(self
            .links
            .iter()
            .find(|(link, _)| link == path)
            .map(|(_, target)| target.clone()))
    }
}
