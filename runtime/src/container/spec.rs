//! What a container runs, and with which privileges: one type from the
//! agent's API to the container's init. The agent checks it once when the
//! container is made, stores it in the container's record and hands it to
//! the supervisor as it is.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::restart::RestartPolicy;
use crate::image::ExposedPort;
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
    /// `-u` or the image's `User`, resolved in the container's own
    /// `/etc/passwd` at its start; empty for root.
    #[serde(default)]
    pub user: String,
    /// The entrypoint and command `args` was made of, as `inspect` shows them.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// The image's `ExposedPorts` (for `-P`).
    #[serde(default)]
    pub exposed_ports: Vec<ExposedPort>,
    /// The image's `Volumes`: paths that get an anonymous volume.
    #[serde(default)]
    pub image_volumes: Vec<PathBuf>,
    /// `-v` and `--volumes-from`, their sources resolved on the host; absent from older records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// `--restart`, which the supervisor applies; absent from older records.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// `--memory`, `--cpus`, ... as checked; absent from older records.
    #[serde(default, skip_serializing_if = "crate::cgroups::Resources::is_unset")]
    pub resources: crate::cgroups::Resources,
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
            user: String::new(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            exposed_ports: Vec::new(),
            image_volumes: Vec::new(),
            mounts: Vec::new(),
            restart: RestartPolicy::No,
            resources: crate::cgroups::Resources::default(),
        }
    }
}
