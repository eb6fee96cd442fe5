//! flannel's udp backend: a TUN device carrying the whole network, and a
//! packet pump that sends each packet in a UDP datagram to the peer whose
//! lease holds its destination. The pump is the backend's running state.

use std::fmt;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use tartan_dataplane::{
    Netlink, OverlayChanges, OverlayScope, OverlayState, PeerMap, UdpOverlay, UdpOverlaySpec,
};
use tracing::{info, warn};

use super::{
    apply_desired, optional_port, NodeNet, OverlayBackend, Registration, Skipped, Underlay,
};
use crate::control::lease::Lease;
use crate::teardown::Teardown;

pub const REGISTRATION: Registration = Registration {
    type_name: "udp",
    fields: &["Port"],
    parse: |section, _| {
        Ok(Arc::new(Udp::new(optional_port(
            section.fields(),
            DEFAULT_PORT,
        )?)))
    },
};

/// Outer IP 20 + UDP 8.
const OVERHEAD: u32 = 28;
/// flannel's default.
const DEFAULT_PORT: u16 = 8285;

/// The TUN device's name.
pub const DEVICE_NAME: &str = "tartan-udp";

pub struct Udp {
    pub port: u16,
    /// The packet pump, once started.
    pump: Mutex<Option<UdpOverlay>>,
}

impl fmt::Debug for Udp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Udp").field("port", &self.port).finish()
    }
}

impl Udp {
    pub fn new(port: u16) -> Udp {
        Udp {
            port,
            pump: Mutex::new(None),
        }
    }

    fn pump(&self) -> MutexGuard<'_, Option<UdpOverlay>> {
        self.pump
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops the pump, if it runs.
    async fn stop(&self) -> Result<()> {
        let old = self.pump().take();
        // Stopping joins the packet thread (up to one poll interval): off the async workers.
        tokio::task::spawn_blocking(move || drop(old))
            .await
            .context("stopping the udp overlay")
    }
}

#[async_trait::async_trait]
impl OverlayBackend for Udp {
    fn type_name(&self) -> &'static str {
        REGISTRATION.type_name
    }

    /// flannel's udp leases carry no type.
    fn lease_type(&self) -> &'static str {
        ""
    }

    fn mtu_overhead(&self) -> u32 {
        OVERHEAD
    }

    /// Every lease, as flannel's udp backend takes them: its own carry no type.
    fn accepts(&self, _lease_type: &str) -> bool {
        true
    }

    /// The pump carries the peers' traffic: nothing in the kernel per peer.
    fn program_peer(
        &self,
        _peer: &Lease,
        _underlay: &Underlay,
        _scope: OverlayScope,
        _state: &mut OverlayState,
    ) -> Result<(), String> {
        Ok(())
    }

    async fn ensure(&self, node: &NodeNet<'_>) -> Result<OverlayScope> {
        let running_for = self.pump().as_ref().map(UdpOverlay::own);
        if let Some(running_own) = running_for {
            let device_present = node.netlink.link(DEVICE_NAME).await?.is_some();
            if running_own == node.own && device_present {
                return Ok(OverlayScope::default());
            }
            warn!(
                device = DEVICE_NAME,
                device_present,
                subnet = %node.own,
                "restarting the udp overlay"
            );
            self.stop().await?;
        }
        let spec = UdpOverlaySpec {
            tun_name: DEVICE_NAME.to_string(),
            listen: SocketAddrV4::new(node.underlay.ip, self.port),
            own: node.own,
            network: node.network,
            mtu: self.mtu(node.underlay.mtu),
        };
        let overlay = UdpOverlay::start(node.netlink, &spec, PeerMap::new(node.own.prefix()))
            .await
            .context("starting the udp overlay")?;
        info!(device = DEVICE_NAME, listen = %spec.listen, "udp overlay running");
        *self.pump() = Some(overlay);
        Ok(OverlayScope::default())
    }

    /// Hands the pump the current peers, then withdraws any stale kernel state.
    async fn apply(
        &self,
        node: &NodeNet<'_>,
        peers: &[Lease],
        scope: OverlayScope,
    ) -> Result<(OverlayChanges, Vec<Skipped>)> {
        let mut map = PeerMap::new(node.own.prefix());
        for lease in peers.iter().filter(|l| self.accepts(&l.attrs.backend_type)) {
            map.insert(
                lease.subnet,
                SocketAddrV4::new(lease.attrs.public_ip, self.port),
            );
        }
        if let Some(overlay) = self.pump().as_ref() {
            overlay.set_peers(map);
        }
        apply_desired(self, node, peers, scope).await
    }

    async fn teardown(&self, netlink: &Netlink, report: &mut Teardown) -> Vec<String> {
        report.step("stopping the udp overlay", self.stop().await);
        let Some(Some(link)) = report.step(
            &format!("looking up {DEVICE_NAME}"),
            netlink.link(DEVICE_NAME).await,
        ) else {
            return Vec::new();
        };
        report
            .step(
                &format!("removing {DEVICE_NAME}"),
                netlink.delete_link(link.index).await,
            )
            .map(|()| vec![format!("removed {DEVICE_NAME}")])
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::NetworkConfig;

    #[test]
    fn takes_every_lease_and_publishes_no_type() {
        let udp = Udp::new(DEFAULT_PORT);
        assert!(udp.accepts("") && udp.accepts("udp") && udp.accepts("vxlan"));
        assert_eq!(udp.lease_type(), "", "flannel's udp publishes no type");
        assert_eq!(udp.mtu(1500), 1472);
    }

    #[test]
    fn port_is_read_with_flannel_s_default() {
        let port = |text: &str| {
            let cfg = NetworkConfig::parse(text.as_bytes()).expect("valid config");
            optional_port(cfg.backend.fields(), DEFAULT_PORT).expect("port")
        };
        assert_eq!(port(r#"{"Network":"10.5.0.0/16"}"#), 8285);
        assert_eq!(
            port(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#),
            8285
        );
        assert_eq!(
            port(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":9000}}"#),
            9000
        );
    }
}
