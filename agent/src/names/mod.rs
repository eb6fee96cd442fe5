//! Names on the network: the fabric-wide registry of container names, and
//! the DNS that answers them.

pub mod cache;
pub mod dns;
pub mod registry;
pub mod server;
