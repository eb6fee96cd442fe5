//! Address arithmetic and allocation for Tartan: how a network config splits
//! into node subnets (flannel's rules), how subnets are named in etcd keys,
//! and which container gets which address inside a node subnet. Pure: no
//! I/O beyond the allocation file, no logging, no async.

mod error;
mod host;
mod key;
mod range;
mod store;

pub use error::IpamError;
pub use host::HostAllocator;
pub use key::{parse_subnet_key, subnet_to_key};
pub use range::{gateway, gateway_cidr, overlaps, SubnetRange};
