//! An image's own run settings, read from the config a `docker save` or OCI
//! archive carries (Docker's and OCI's `config` object alike) and kept with
//! the image, so that `run` can apply them as Docker does.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Result, RuntimeError};

/// The settings `run` applies; empty fields are unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    /// `name`, `uid`, `name:group` or `uid:gid`, resolved at the container's start.
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub exposed_ports: Vec<ExposedPort>,
    /// Absolute paths inside the container.
    #[serde(default)]
    pub volumes: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A port the image says it listens on, `80/tcp` in Docker's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ExposedPort {
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for ExposedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        };
        write!(f, "{}/{protocol}", self.port)
    }
}

impl FromStr for ExposedPort {
    type Err = RuntimeError;

    /// `PORT[/tcp|/udp|/sctp]`; tcp when no protocol is given, as Docker reads it.
    fn from_str(text: &str) -> Result<ExposedPort> {
        let bad = || RuntimeError::CorruptArchive(format!("bad exposed port {text:?}"));
        let (port, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return Err(bad()),
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(bad)?;
        Ok(ExposedPort { port, protocol })
    }
}

/// The `config` object of an image config file, in Docker's field names.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    volumes: Option<BTreeMap<String, serde_json::Value>>,
}

/// The whole config file: only its `config` object matters here.
#[derive(Deserialize)]
pub(super) struct ConfigFile {
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    config: Option<RawConfig>,
}

impl ConfigFile {
    /// The run settings, checked: ports must be ports and volumes absolute.
    pub(super) fn image_config(&self) -> Result<ImageConfig> {
        let Some(raw) = &self.config else {
            return Ok(ImageConfig::default());
        };
        let exposed_ports = raw
            .exposed_ports
            .iter()
            .flat_map(|ports| ports.keys())
            .map(|key| key.parse())
            .collect::<Result<Vec<ExposedPort>>>()?;
        let volumes = raw
            .volumes
            .iter()
            .flat_map(|volumes| volumes.keys())
            .map(|path| {
                if path.starts_with('/') {
                    Ok(PathBuf::from(path))
                } else {
                    Err(RuntimeError::CorruptArchive(format!(
                        "volume {path:?} is not an absolute path"
                    )))
                }
            })
            .collect::<Result<Vec<PathBuf>>>()?;
        Ok(ImageConfig {
            entrypoint: raw.entrypoint.clone().unwrap_or_default(),
            cmd: raw.cmd.clone().unwrap_or_default(),
            env: raw.env.clone().unwrap_or_default(),
            working_dir: raw.working_dir.clone().unwrap_or_default(),
            user: raw.user.clone().unwrap_or_default(),
            exposed_ports,
            volumes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_docker_config_is_read_in_dockers_field_names() {
        let file: ConfigFile = serde_json::from_str(
            r#"{"created":"2024-01-01T00:00:00Z","config":{"Entrypoint":["/bin/tini","--"],
            "Cmd":null,"Env":["A=1"],"WorkingDir":"/srv","User":"app:staff",
            "ExposedPorts":{"80/tcp":{},"53/udp":{},"8080":{}},"Volumes":{"/data":{}}}}"#,
        )
        .expect("json");
        let config = file.image_config().expect("valid");
        assert_eq!(config.entrypoint, ["/bin/tini", "--"]);
        assert!(config.cmd.is_empty());
        assert_eq!(
            (config.working_dir.as_str(), config.user.as_str()),
            ("/srv", "app:staff")
        );
        let ports: Vec<String> = config.exposed_ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, ["53/udp", "80/tcp", "8080/tcp"]);
        assert_eq!(config.volumes, [PathBuf::from("/data")]);
        let bad: ConfigFile =
            serde_json::from_str(r#"{"config":{"ExposedPorts":{"http/tcp":{}}}}"#).expect("json");
        assert!(bad.image_config().is_err());
    }
}
