//! Names on the network: the fabric-wide registry of container names.

pub mod registry;
