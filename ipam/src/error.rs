use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

/// Everything that can go wrong in address arithmetic and allocation.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A network config field is unusable; `field` is flannel's name for it.
    #[error("{field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error("{key:?} is not a subnet key like 10.5.34.0-24")]
    BadSubnetKey { key: String },
    #[error("subnet {subnet} is too small to hold containers (needs a /30 or larger)")]
    SubnetTooSmall { subnet: Ipv4Network },
    #[error("no free address left in {subnet}")]
    Exhausted { subnet: Ipv4Network },
    #[error("{addr} is outside the node subnet {subnet}")]
    OutsideSubnet { addr: Ipv4Addr, subnet: Ipv4Network },
    #[error("{addr} is reserved (network, gateway or broadcast address)")]
    Reserved { addr: Ipv4Addr },
    #[error("{addr} is already in use by {owner}")]
    InUse { addr: Ipv4Addr, owner: String },
    #[error("the allocations in {path} are for subnet {stored}, but the node now holds {current}")]
    SubnetChanged {
        path: PathBuf,
        stored: Ipv4Network,
        current: Ipv4Network,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid allocation file")]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
}
