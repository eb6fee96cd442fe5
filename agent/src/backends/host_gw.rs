//! flannel's host-gw backend: a route to each peer subnet via the peer's
//! public address, which must be on the underlay's own L2 segment.

use std::sync::Arc;

use tartan_dataplane::{OverlayScope, OverlayState, RouteSpec};

use super::{OverlayBackend, Registration, Underlay};
use crate::control::lease::Lease;

pub const REGISTRATION: Registration = Registration {
    type_name: "host-gw",
    fields: &[],
    parse: |_, _| Ok(Arc::new(HostGw)),
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGw;

#[async_trait::async_trait]
impl OverlayBackend for HostGw {
    fn type_name(&self) -> &'static str {
        REGISTRATION.type_name
    }

    fn program_peer(
        &self,
        peer: &Lease,
        underlay: &Underlay,
        _scope: OverlayScope,
        state: &mut OverlayState,
    ) -> Result<(), String> {
        let public_ip = peer.attrs.public_ip;
        if !underlay.is_direct(public_ip) {
            return Err(format!(
                "{public_ip} is not on this host's L2 segment; host-gw needs it to be"
            ));
        }
        state.routes.insert(RouteSpec {
            destination: peer.subnet,
            gateway: public_ip,
            oif: underlay.index,
            onlink: false,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::backends::testing::{lease, UNDERLAY};

    #[test]
    fn routes_via_the_peer_and_refuses_unreachable_ones() {
        let peers = [
            lease("10.5.7.0/24", [192, 168, 1, 11], "host-gw", Value::Null),
            lease("10.5.8.0/24", [172, 16, 0, 8], "host-gw", Value::Null),
        ];
        let (state, skipped) = HostGw.desired(&peers, &UNDERLAY, OverlayScope::default());
        assert_eq!(state.routes.len(), 1);
        assert!(state.neighbours.is_empty() && state.fdb.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].reason.contains("L2 segment"), "{}", skipped[0]);
    }

    #[test]
    fn peer_types_are_taken_as_flannel_takes_them() {
        // flannel's udp and alloc leases carry no BackendType.
        let untyped = lease("10.5.7.0/24", [192, 168, 1, 11], "", Value::Null);
        let (state, skipped) = HostGw.desired(&[untyped], &UNDERLAY, OverlayScope::default());
        assert!(state.routes.is_empty());
        assert_eq!(skipped.len(), 1, "host-gw wants host-gw leases only");
        assert!(HostGw.accepts("host-gw") && !HostGw.accepts(""));
        assert_eq!(HostGw.lease_type(), "host-gw");
    }

    #[test]
    fn mtu_is_the_underlay_s() {
        assert_eq!(HostGw.mtu(1500), 1500);
    }
}
