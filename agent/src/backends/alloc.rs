//! flannel's alloc backend: a subnet lease and nothing else.

use std::sync::Arc;

use tartan_dataplane::{OverlayScope, OverlayState};

use super::{OverlayBackend, Registration, Underlay};
use crate::control::lease::Lease;

pub const REGISTRATION: Registration = Registration {
    type_name: "alloc",
    fields: &[],
    parse: |_, _| Ok(Arc::new(Alloc)),
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alloc;

#[async_trait::async_trait]
impl OverlayBackend for Alloc {
    fn type_name(&self) -> &'static str {
        REGISTRATION.type_name
    }

    /// flannel's alloc leases carry no type.
    fn lease_type(&self) -> &'static str {
        ""
    }

    fn accepts(&self, _lease_type: &str) -> bool {
        false
    }

    fn programs_kernel(&self) -> bool {
        false
    }

    fn program_peer(
        &self,
        _peer: &Lease,
        _underlay: &Underlay,
        _scope: OverlayScope,
        _state: &mut OverlayState,
    ) -> Result<(), String> {
        Err("the alloc backend programs no peers".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_no_peers_and_keeps_the_underlay_mtu() {
        assert!(!Alloc.accepts("") && !Alloc.accepts("alloc"));
        assert_eq!(Alloc.lease_type(), "");
        assert!(!Alloc.programs_kernel());
        assert_eq!(Alloc.mtu(9000), 9000);
    }
}
