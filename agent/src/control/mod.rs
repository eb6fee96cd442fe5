//! The network control plane, flannel's "subnet manager": the network
//! config, this node's lease and the peer leases in etcd, published to the
//! rest of the agent as watched values.

pub mod acquire;
pub mod config;
pub mod etcd;
pub mod gojson;
pub mod lease;
pub mod node_state;
pub mod peers;
pub mod subnet_file;
