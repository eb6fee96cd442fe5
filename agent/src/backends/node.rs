//! The node's kernel state, kept as it should be: the bridge, the
//! backend's devices and the overlay towards every peer, re-asserted on every lease
//! change and every few seconds, so that anything deleted by hand comes back.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;

use tartan_dataplane::{
    ensure_firewall, forward_drop_policies, BridgeSpec, FirewallSpec, Netlink, OverlayChanges,
    OverlayScope,
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backends::{NodeNet, OverlayBackend, Underlay};
use crate::control::lease::Lease;
use crate::control::node_state::NodeState;

/// How often the kernel is compared with the leases even when nothing changed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(3);

/// The devices the node keeps, and how to reach them.
pub struct NodeDataplane {
    pub netlink: Netlink,
    pub backend: Arc<dyn OverlayBackend>,
    pub underlay: Underlay,
    /// The address published in the lease.
    pub public_ip: Ipv4Addr,
    /// Masquerade the cluster network's traffic to the outside (`--ip-masq`).
    pub masquerade: bool,
    /// Accept the cluster network's forwarded traffic (`--forward-rules`).
    pub forward_accept: bool,
    /// The cluster network.
    pub network: Ipv4Network,
    /// The bridge the agent keeps, holding the subnet's gateway; None when
    /// it is external (its consumer, say dockerd --bip, makes it).
    pub bridge: Option<String>,
    /// The bridge's fixed MAC.
    pub bridge_mac: [u8; 6],
    /// One setup pass at a time: the reconciler and a subnet change may both ask.
    pub pass: tokio::sync::Mutex<()>,
}

/// The nf_tables table the agent owns (masquerading, forward accepts).
pub const FIREWALL_TABLE: &str = "tartan";

/// The indexes of the devices after a setup pass, and what stands in the
/// way of forwarded traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    /// None when the bridge is external.
    pub bridge: Option<u32>,
    /// The backend's devices the overlay state is scoped to.
    pub overlay: OverlayScope,
    /// Other tables' forward chains with a drop policy (`ip filter FORWARD`).
    pub forward_dropped_by: Vec<String>,
}

impl NodeDataplane {
    pub fn mtu(&self) -> u32 {
        self.backend.mtu(self.underlay.mtu)
    }

    fn node_net(&self, own: Ipv4Network) -> NodeNet<'_> {
        NodeNet {
            netlink: &self.netlink,
            underlay: &self.underlay,
            public_ip: self.public_ip,
            network: self.network,
            own,
        }
    }

    /// Forwarding on, the bridge holding the gateway, the backend's devices,
    /// the firewall. Idempotent.
    pub async fn ensure_devices(&self, own: Ipv4Network) -> Result<Devices> {
        let _pass = self.pass.lock().await;
        self.ensure_devices_in_pass(own).await
    }

    /// As `ensure_devices`, for a caller that holds the pass.
    async fn ensure_devices_in_pass(&self, own: Ipv4Network) -> Result<Devices> {
        enable_ip_forwarding()?;
        let gateway = Ipv4Network::new(tartan_ipam::gateway(&own), own.prefix())?;
        let bridge = match &self.bridge {
            Some(name) => Some(
                self.netlink
                    .ensure_bridge(&BridgeSpec {
                        name: name.clone(),
                        mtu: self.mtu(),
                        gateway,
                        mac: self.bridge_mac,
                    })
                    .await
                    .with_context(|| format!("setting up the node bridge {name}"))?,
            ),
            None => None,
        };
        let overlay = self.backend.ensure(&self.node_net(own)).await?;
        let spec = FirewallSpec {
            table: FIREWALL_TABLE.to_string(),
            network: self.network,
            masquerade: self.masquerade,
            forward_accept: self.forward_accept,
        };
        // nf_tables is spoken over a blocking socket; keep it off the runtime's workers.
        let (rebuilt, dropped_by) = tokio::task::spawn_blocking(move || {
            let rebuilt = ensure_firewall(&spec)?;
            let dropped_by = if spec.forward_accept {
                forward_drop_policies(&spec.table)?
            } else {
                Vec::new()
            };
            Ok::<_, tartan_dataplane::DataplaneError>((rebuilt, dropped_by))
        })
        .await
        .context("firewall task")?
        .context("installing the firewall rules")?;
        if rebuilt {
            info!(
                network = %self.network,
                table = FIREWALL_TABLE,
                masquerade = self.masquerade,
                forward_accept = self.forward_accept,
                "installed the firewall rules"
            );
        }
        Ok(Devices {
            bridge,
            overlay,
            forward_dropped_by: dropped_by,
        })
    }

    /// One reconciliation pass: devices, then the overlay for `peers`. The
    /// caller holds the pass.
    /// Returns the changes made and the foreign forward chains with a drop
    /// policy.
    async fn reconcile(
        &self,
        own: Ipv4Network,
        peers: &[Lease],
        reported: &mut HashSet<String>,
    ) -> Result<(OverlayChanges, Vec<String>)> {
        let devices = self.ensure_devices_in_pass(own).await?;
        let (changes, skipped) = self
            .backend
            .apply(&self.node_net(own), peers, devices.overlay)
            .await?;
        for skip in skipped {
            let line = skip.to_string();
            if reported.insert(line) {
                warn!(subnet = %skip.subnet, reason = %skip.reason, "peer lease not programmed");
            }
        }
        Ok((changes, devices.forward_dropped_by))
    }
}

fn enable_ip_forwarding() -> Result<()> {
    // Per network namespace: this is the agent's own namespace's setting.
    let path = "/proc/sys/net/ipv4/ip_forward";
    let current = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    if current.trim() != "1" {
        std::fs::write(path, "1").with_context(|| format!("enabling IP forwarding in {path}"))?;
        info!("enabled IP forwarding");
    }
    Ok(())
}

/// Keeps the kernel in line with the node's state: on every change of it,
/// and every few seconds, so that anything deleted by hand comes back.
/// Nothing is programmed before the first full listing of the leases, so
/// that a restart never withdraws routes that are about to be confirmed.
/// Publishes the foreign forward chains with a drop policy it finds.
pub async fn reconcile_loop(
    node: std::sync::Arc<NodeDataplane>,
    mut state: watch::Receiver<NodeState>,
    forward_dropped_by: watch::Sender<Vec<String>>,
) {
    let mut ticker = tokio::time::interval(RESYNC_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = HashSet::new();
    let mut last_error = String::new();
    loop {
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = ticker.tick() => {}
        }
        // The pass first, then the state: a subnet change that held the pass
        // meanwhile is seen, never undone with the old subnet's gateway.
        let _pass = node.pass.lock().await;
        let snapshot = {
            let st = state.borrow_and_update();
            match (st.subnet(), st.peers.as_ref()) {
                (Some(own), Some(peers)) => Some((own, peers.clone())),
                _ => None,
            }
        };
        let Some((own, peers)) = snapshot else {
            continue;
        };
        let started = std::time::Instant::now();
        let result = node.reconcile(own, &peers, &mut reported).await;
        if let Ok((_, dropped_by)) = &result {
            forward_dropped_by.send_if_modified(|current| {
                if current == dropped_by {
                    return false;
                }
                if !dropped_by.is_empty() {
                    warn!(
                        chains = %dropped_by.join(", "),
                        "a forward chain of another table has a drop policy: it may drop the network's traffic, whatever tartan's own table accepts"
                    );
                }
                current.clone_from(dropped_by);
                true
            });
        }
        match result.map(|(changes, _)| changes) {
            Ok(changes) if !changes.is_empty() => {
                last_error.clear();
                info!(
                    peers = peers.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    routes_added = changes.add_routes.len(),
                    routes_removed = changes.remove_routes.len(),
                    neighbours_added = changes.add_neighbours.len(),
                    neighbours_removed = changes.remove_neighbours.len(),
                    fdb_added = changes.add_fdb.len(),
                    fdb_removed = changes.remove_fdb.len(),
                    "reconciled the overlay"
                );
            }
            Ok(_) => {
                last_error.clear();
                debug!(peers = peers.len(), "overlay already in line");
            }
            Err(err) => {
                let text = format!("{err:#}");
                if text != last_error {
                    warn!(error = %text, "could not reconcile the overlay; retrying");
                    last_error = text;
                }
            }
        }
    }
}
