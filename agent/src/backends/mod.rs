//! The overlay backends (vxlan, host-gw, udp, alloc), one module each behind
//! `OverlayBackend`: what a backend publishes in its lease, which peer
//! leases it takes, the kernel state it wants towards them (pure, so that
//! the rules have unit tests), and the devices it keeps. `registry` maps
//! flannel's type strings to them; `node` keeps the node's kernel state.

pub mod alloc;
pub mod host_gw;
pub mod node;
pub mod registry;
pub mod udp;
pub mod vxlan;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::Result;
use ipnetwork::Ipv4Network;
use serde_json::{Map, Value};
use tartan_dataplane::{Netlink, OverlayChanges, OverlayScope, OverlayState};

use crate::control::config::{optional_uint, BackendSection, ConfigError};
use crate::control::lease::Lease;
use crate::teardown::Teardown;

/// The interface encapsulated (or routed) traffic leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
}

impl Underlay {
    /// Whether `ip` is on the underlay's own L2 segment (no router between).
    pub fn is_direct(&self, ip: Ipv4Addr) -> bool {
        Ipv4Network::new(self.ip, self.prefix_len).is_ok_and(|net| net.contains(ip))
    }
}

/// What a backend programs the kernel with, once the node holds a subnet.
#[derive(Clone, Copy)]
pub struct NodeNet<'a> {
    pub netlink: &'a Netlink,
    pub underlay: &'a Underlay,
    /// The address published in the lease (`--public-ip`, or the underlay's).
    pub public_ip: Ipv4Addr,
    /// The cluster network.
    pub network: Ipv4Network,
    /// This node's subnet.
    pub own: Ipv4Network,
}

/// Why a peer lease got no kernel state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub subnet: Ipv4Network,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subnet, self.reason)
    }
}

/// Makes the backend as the `Backend` object sets it up; notes what an
/// operator should know about how it was read.
pub type ParseBackend =
    fn(&BackendSection, &mut Vec<String>) -> Result<Arc<dyn OverlayBackend>, ConfigError>;

/// One kind of backend, as `registry` lists it.
pub struct Registration {
    /// `Backend.Type`, lower-case.
    pub type_name: &'static str,
    /// The `Backend` fields it reads besides `Type`; others are noted.
    pub fields: &'static [&'static str],
    pub parse: ParseBackend,
}

/// `Backend.Port`, for the backends that encapsulate in UDP.
pub fn optional_port(obj: &Map<String, Value>, default: u16) -> Result<u16, ConfigError> {
    // flannel hands Port 0 to the kernel, which then uses its default: ours.
    Ok(
        match optional_uint(obj, "Port", "Backend.Port", u64::from(u16::MAX))? {
            None | Some(0) => default,
            Some(v) => v as u16,
        },
    )
}

/// One overlay kind. A value is one backend as the config set it up; the
/// registry makes it from the config's `Backend` object.
#[async_trait::async_trait]
pub trait OverlayBackend: fmt::Debug + Send + Sync {
    /// The type, as flannel spells it in `Backend.Type`.
    fn type_name(&self) -> &'static str;

    /// The `BackendType` this node publishes in its lease.
    fn lease_type(&self) -> &'static str {
        self.type_name()
    }

    /// The `BackendData` this node publishes in its lease.
    fn lease_data(&self, _public_ip: Ipv4Addr) -> Value {
        Value::Null
    }

    /// What the encapsulation takes from the underlay's MTU.
    fn mtu_overhead(&self) -> u32 {
        0
    }

    /// The MTU containers get, given the MTU of the underlay interface.
    fn mtu(&self, underlay_mtu: u32) -> u32 {
        underlay_mtu.saturating_sub(self.mtu_overhead())
    }

    /// Whether a peer lease of `lease_type` is one this backend programs,
    /// exactly as flannel decides (by default: leases of its own type).
    fn accepts(&self, lease_type: &str) -> bool {
        lease_type == self.type_name()
    }

    /// Whether the node's kernel is programmed at all (the bridge, the
    /// firewall table, the overlay): every backend but alloc.
    fn programs_kernel(&self) -> bool {
        true
    }

    /// Adds to `state` what one accepted peer needs; Err says why it gets
    /// nothing. `scope` names the devices `ensure` made.
    fn program_peer(
        &self,
        peer: &Lease,
        underlay: &Underlay,
        scope: OverlayScope,
        state: &mut OverlayState,
    ) -> Result<(), String>;

    /// The overlay state wanted for `peers`, and the peers left out.
    fn desired(
        &self,
        peers: &[Lease],
        underlay: &Underlay,
        scope: OverlayScope,
    ) -> (OverlayState, Vec<Skipped>) {
        let mut state = OverlayState::default();
        let mut skipped = Vec::new();
        for peer in peers {
            let programmed = if self.accepts(&peer.attrs.backend_type) {
                self.program_peer(peer, underlay, scope, &mut state)
            } else {
                Err(format!("backend {:?} is not ours", peer.attrs.backend_type))
            };
            if let Err(reason) = programmed {
                skipped.push(Skipped {
                    subnet: peer.subnet,
                    reason,
                });
            }
        }
        (state, skipped)
    }

    /// Makes sure the backend's devices are as they should be (idempotent);
    /// says which of them the overlay state is scoped to.
    async fn ensure(&self, _node: &NodeNet<'_>) -> Result<OverlayScope> {
        Ok(OverlayScope::default())
    }

    /// Brings the kernel in line with `peers`.
    async fn apply(
        &self,
        node: &NodeNet<'_>,
        peers: &[Lease],
        scope: OverlayScope,
    ) -> Result<(OverlayChanges, Vec<Skipped>)> {
        apply_desired(self, node, peers, scope).await
    }

    /// Removes the devices this kind of backend makes, whatever options
    /// made them, trying every one; says what it removed and records what
    /// failed. The routes are the overlay's: withdrawn with it.
    async fn teardown(&self, _netlink: &Netlink, _report: &mut Teardown) -> Vec<String> {
        Vec::new()
    }
}

/// `apply` as every backend does it: the desired state, then the difference
/// to the kernel's.
pub async fn apply_desired<B: OverlayBackend + ?Sized>(
    backend: &B,
    node: &NodeNet<'_>,
    peers: &[Lease],
    scope: OverlayScope,
) -> Result<(OverlayChanges, Vec<Skipped>)> {
    let (desired, skipped) = backend.desired(peers, node.underlay, scope);
    let changes = node.netlink.apply_overlay(&desired, scope).await?;
    Ok((changes, skipped))
}

#[cfg(test)]
pub(crate) mod testing {
    use std::net::Ipv4Addr;

    use serde_json::Value;

    use super::Underlay;
    use crate::control::lease::{Lease, LeaseAttrs};

    pub const UNDERLAY: Underlay = Underlay {
        index: 2,
        ip: Ipv4Addr::new(192, 168, 1, 10),
        prefix_len: 24,
        mtu: 1500,
    };

    pub fn lease(subnet: &str, ip: [u8; 4], backend: &str, data: Value) -> Lease {
        Lease {
            subnet: subnet.parse().expect("cidr"),
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::from(ip),
                public_ipv6: None,
                backend_type: backend.into(),
                backend_data: data,
            },
            etcd_lease: 1,
            mod_revision: 1,
        }
    }
}
