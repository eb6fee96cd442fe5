//! Kernel programming for Tartan. This is the only crate that talks netlink;
//! it exposes intent and knows nothing of etcd or gRPC.
//!
//! It finds the host's public interface, keeps the node bridge and the VXLAN
//! device as they should be, plugs containers in with veth pairs, and
//! reconciles the routes, neighbours and FDB entries towards peer subnets.
//! It keeps the flat L2 segment (`l2_segment`): a bridge and a VXLAN device
//! of its own, flooding to every peer. It also keeps Open vSwitch bridges
//! and ports through OVSDB (`ovsdb`).

mod bridge;
mod error;
mod host;
mod host_shim;
mod l2_segment;
mod link;
mod macvlan;
mod md5;
mod netlink;
mod nftables;
mod overlay;
pub mod ovsdb;
pub mod udp;
mod veth;
mod vlan;
mod vxlan;

pub use bridge::{stable_bridge_mac, BridgeSpec};
pub use error::{DataplaneError, Result};
pub use host::{HostInterface, InterfaceSelector};
pub use host_shim::HostShimSpec;
pub use l2_segment::{
    desired_l2_fdb, diff_l2_fdb, L2FdbChanges, L2FdbEntry, L2FdbState, L2Segment, L2SegmentSpec,
    FLOOD_MAC, L2_SEGMENT_BRIDGE, L2_SEGMENT_IFNAME, L2_SEGMENT_PORT, L2_SEGMENT_VNI,
    L2_SEGMENT_VXLAN, VXLAN_OVERHEAD,
};
pub use link::{check_ifname, Ensured, LinkState, VxlanInfo, MAX_IFNAME_LEN};
pub use macvlan::{
    format_mac, needs_gateway_host_route, parse_mac, pipework_mac, MacvlanMode, MacvlanSpec,
    DEFAULT_CONTAINER_IFNAME,
};
pub use netlink::Netlink;
pub use nftables::{
    allow_hairpin, allow_loopback_towards, apply_published_ports, PortProtocol, PortRuleChanges,
    PublishedPort,
};
pub use nftables::{ensure_firewall, forward_drop_policies, remove_firewall, FirewallSpec};
pub use overlay::{
    diff, FdbSpec, NeighbourSpec, OverlayChanges, OverlayScope, OverlayState, RouteSpec,
    ROUTE_PROTOCOL,
};
pub use ovsdb::{OvsPort, Ovsdb, PortChange, PortSpec, PortType};
pub use udp::{PeerMap, UdpOverlay, UdpOverlaySpec};
pub use veth::VethSpec;
pub use vlan::{check_vlan_id, parse_vlan_id, vlan_ifname, VLAN_IDS};
pub use vxlan::{stable_vtep_mac, VxlanSpec};
