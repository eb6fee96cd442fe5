//! Kernel programming for Tartan. This is the only crate that talks netlink;
//! it exposes intent and knows nothing of etcd or gRPC.
//!
//! It finds the host's public interface, keeps the node bridge and the VXLAN
//! device as they should be, plugs containers in with veth pairs, and
//! reconciles the routes, neighbours and FDB entries towards peer subnets.
//! It also keeps Open vSwitch bridges and ports through OVSDB (`ovsdb`).

mod bridge;
mod error;
mod host;
mod link;
mod netlink;
mod nftables;
mod overlay;
pub mod ovsdb;
pub mod udp;
mod veth;
mod vxlan;

pub use bridge::{stable_bridge_mac, BridgeSpec};
pub use error::{DataplaneError, Result};
pub use host::{HostInterface, InterfaceSelector};
pub use link::{LinkState, VxlanInfo};
pub use netlink::Netlink;
pub use nftables::{ensure_firewall, forward_drop_policies, remove_firewall, FirewallSpec};
pub use overlay::{
    diff, FdbSpec, NeighbourSpec, OverlayChanges, OverlayScope, OverlayState, RouteSpec,
    ROUTE_PROTOCOL,
};
pub use ovsdb::{OvsPort, Ovsdb, PortChange, PortSpec, PortType};
pub use udp::{PeerMap, UdpOverlay, UdpOverlaySpec};
pub use veth::VethSpec;
pub use vxlan::{stable_vtep_mac, VxlanSpec};
