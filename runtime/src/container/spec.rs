//! What a container runs, and with which privileges: one type from the
//! agent's API to the container's init. The agent checks it once when the
//! container is made, stores it in the container's record and hands it to
//! the supervisor as it is.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::security::Security;
use crate::volumes::Mount;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `KEY=VALUE` entries, Docker's defaults (PATH, HOSTNAME) included.
    pub env: Vec<String>,
    /// Absolute, inside the container.
    pub cwd: PathBuf,
    pub hostname: String,
    pub tty: bool,
    pub open_stdin: bool,
    /// Docker's defaults unless `run` said otherwise; absent from older records.
    #[serde(default)]
    pub security: Security,
    /// `-v` and `--volumes-from`, their sources resolved on the host; absent from older records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

impl Default for ContainerSpec {
    fn default() -> ContainerSpec {
        ContainerSpec {
            args: Vec::new(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            hostname: String::new(),
            tty: false,
            open_stdin: false,
            security: Security::default(),
            mounts: Vec::new(),
        }
    }
}
