//! Address arithmetic and allocation for Tartan: how a network config splits
//! into node subnets (flannel's rules, so mixed clusters agree), how subnets
//! are named in etcd keys, and which container gets which address inside a
//! node subnet.
//!
//! Pure on purpose: no logging, no networking, no async. The only I/O is
//! the allocation file of [`HostAllocator::save`] and
//! [`HostAllocator::load_or_new`]; callers decide what to log and when.

mod error;
mod host;
mod key;
mod range;
mod store;

pub use error::IpamError;
pub use host::HostAllocator;
pub use key::{parse_lease_key, parse_subnet_key, subnet_to_key, LeaseKey};
pub use range::{gateway, gateway_cidr, overlaps, SubnetRange};
