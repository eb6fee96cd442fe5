//! A container's published ports as its record keeps them.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`: a host port forwarded to
/// one of the container's.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortBinding {
    /// None for every address of the host (0.0.0.0).
    pub host_ip: Option<Ipv4Addr>,
    /// 0 when a free port is chosen at each start, as Docker does.
    pub host_port: u16,
    pub container_port: u16,
    /// "tcp" or "udp".
    pub protocol: String,
}

impl PortBinding {
    /// Docker's `0.0.0.0:8080->80/tcp`.
    pub fn display(&self) -> String {
        format!(
            "{}:{}->{}/{}",
            self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            self.host_port,
            self.container_port,
            self.protocol
        )
    }

    /// Whether the two cannot both hold: the same port and protocol on the
    /// same address, or on any address where one of them takes all.
    pub fn overlaps(&self, other: &PortBinding) -> bool {
        self.host_port == other.host_port
            && self.protocol == other.protocol
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }
}
