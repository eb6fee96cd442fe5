use std::path::PathBuf;

/// Everything the runtime can fail at.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the archive is not a usable image: {0}")]
    CorruptArchive(String),
    #[error("bad image reference {0}")]
    BadReference(String),
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("{0} matches more than one image; give more of the id")]
    Ambiguous(String),
    #[error("conflict: unable to delete {image} (cannot be forced) - image is in use by {user}")]
    ImageInUse { image: String, user: String },
    #[error("conflict: unable to delete {id} (must be forced) - image is referenced in multiple repositories")]
    ImageHasTags { id: String },
    #[error("{0}")]
    Protocol(String),
    #[error("{op} process {pid}")]
    Process {
        op: &'static str,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    /// A privilege setting that cannot be applied (flags, profiles).
    #[error("{0}")]
    Security(String),
    /// A resource limit that cannot be applied (values, missing controllers).
    #[error("{0}")]
    Limits(String),
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("the image store at {path} is damaged")]
    Store {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// An I/O error mapper that names the operation and the path.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let path = path.into();
    move |source| RuntimeError::Io { op, path, source }
}
