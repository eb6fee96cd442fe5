//! Kernel programming for Tartan. This is the only crate that talks netlink;
//! it exposes intent and knows nothing of etcd or gRPC.
//!
//! Today it finds the host's public interface (address and MTU); links,
//! routes, neighbours and FDB entries follow, one module per kind of object.

mod error;
mod host;
mod netlink;

pub use error::{DataplaneError, Result};
pub use host::{HostInterface, InterfaceSelector};
pub use netlink::Netlink;
