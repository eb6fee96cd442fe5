//! The crate's one error type. Variants are structured so that callers can
//! react to a case (a config field to report, a changed subnet to forget)
//! without parsing messages.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

/// Everything that can go wrong in address arithmetic and allocation.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// A network config field is unusable; `field` is flannel's name for it
    /// (`Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`) and `reason` names
    /// the bad value.
    #[error("{field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// An etcd key name that is not exactly `a.b.c.d-N`. `key` is cut short
    /// so that hostile input cannot flood a log line.
    #[error("{key:?} is not a subnet key like 10.5.34.0-24 ({reason})")]
    BadSubnetKey { key: String, reason: &'static str },

    /// A node subnet without room for a gateway and one container.
    #[error("subnet {subnet} is too small to hold containers (needs a /30 or larger)")]
    SubnetTooSmall { subnet: Ipv4Network },

    #[error("no free address left in {subnet}")]
    Exhausted { subnet: Ipv4Network },

    #[error("{addr} is outside the node subnet {subnet}")]
    OutsideSubnet { addr: Ipv4Addr, subnet: Ipv4Network },

    /// The network, gateway or broadcast address of the node subnet.
    #[error("{addr} is reserved (network, gateway or broadcast address)")]
    Reserved { addr: Ipv4Addr },

    #[error("{addr} is already in use by {owner}")]
    InUse { addr: Ipv4Addr, owner: String },

    /// One owner, one address: moving a container silently would leave the
    /// old address configured inside it.
    #[error("{owner} already holds {addr}")]
    OwnerHasAddress { owner: String, addr: Ipv4Addr },

    /// The allocation file belongs to another node subnet; whether to forget
    /// those allocations is the caller's decision.
    #[error("the saved allocations are for subnet {stored}, but the node now holds {current}")]
    SubnetChanged {
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

    /// Written by a newer tartan; guessing at its meaning could hand out an
    /// address twice.
    #[error("{path} has allocation file version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },

    /// A recorded allocation that does not fit the subnet or clashes with
    /// another entry; `source` says how.
    #[error("{path} records {addr} for {owner:?}, which cannot be restored")]
    BadEntry {
        path: PathBuf,
        addr: Ipv4Addr,
        owner: String,
        source: Box<IpamError>,
    },

    #[error("encoding the allocations for {path}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
}
