//! The node's kernel state, kept as it should be: the bridge, the VXLAN
//! device and the overlay towards every peer, re-asserted on every lease
//! change and every few seconds, so that anything deleted by hand comes back.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;
use std::net::SocketAddrV4;

use tartan_dataplane::{
    ensure_firewall, forward_drop_policies, BridgeSpec, FirewallSpec, Netlink, OverlayChanges,
    OverlayScope, PeerMap, UdpOverlay, UdpOverlaySpec, VxlanSpec,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::backend::{desired_overlay, vxlan_device_name, Underlay};
use crate::config::Backend;
use crate::daemon::{lock, SharedState};
use crate::lease::Lease;
use crate::peers::LeaseEvent;

/// How often the kernel is compared with the leases even when nothing changed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(3);

/// The devices the node keeps, and how to reach them.
pub struct NodeDataplane {
    pub netlink: Netlink,
    pub backend: Backend,
    pub underlay: Underlay,
    pub vtep_mac: Option<[u8; 6]>,
    /// Masquerade the cluster network's traffic to the outside (`--ip-masq`).
    pub masquerade: bool,
    /// Accept the cluster network's forwarded traffic (`--forward-rules`).
    pub forward_accept: bool,
    /// The cluster network (the udp backend's TUN device carries all of it).
    pub network: Ipv4Network,
    /// The bridge the agent keeps, holding the subnet's gateway; None when
    /// it is external (its consumer, say dockerd --bip, makes it).
    pub bridge: Option<String>,
    /// The udp backend's packet pump, once started.
    pub udp: std::sync::Mutex<Option<UdpOverlay>>,
}

/// The udp backend's TUN device.
pub const UDP_DEVICE_NAME: &str = "tartan-udp";

/// The nf_tables table the agent owns (masquerading, forward accepts).
pub const FIREWALL_TABLE: &str = "tartan";

/// The indexes of the devices after a setup pass, and what stands in the
/// way of forwarded traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Devices {
    /// None when the bridge is external.
    pub bridge: Option<u32>,
    pub vxlan: Option<u32>,
    /// Other tables' forward chains with a drop policy (`ip filter FORWARD`).
    pub forward_dropped_by: Vec<String>,
}

impl NodeDataplane {
    pub fn mtu(&self) -> u32 {
        self.backend.mtu(self.underlay.mtu)
    }

    /// Forwarding on, the bridge holding the gateway, the VXLAN device. Idempotent.
    pub async fn ensure_devices(&self, own: Ipv4Network) -> Result<Devices> {
        enable_ip_forwarding()?;
        let gateway = Ipv4Network::new(tartan_ipam::gateway(&own), own.prefix())?;
        let bridge = match &self.bridge {
            Some(name) => Some(
                self.netlink
                    .ensure_bridge(&BridgeSpec {
                        name: name.clone(),
                        mtu: self.mtu(),
                        gateway,
                    })
                    .await
                    .with_context(|| format!("setting up the node bridge {name}"))?,
            ),
            None => None,
        };
        let vxlan = match (&self.backend, self.vtep_mac) {
            (Backend::Vxlan(vx), Some(mac)) => Some(
                self.netlink
                    .ensure_vxlan(&VxlanSpec {
                        name: vxlan_device_name(vx.vni),
                        vni: vx.vni,
                        port: vx.port,
                        learning: vx.learning,
                        gbp: vx.gbp,
                        local: self.underlay.ip,
                        underlay_index: self.underlay.index,
                        mac,
                        mtu: self.mtu(),
                        address: own.network(),
                    })
                    .await
                    .context("setting up the VXLAN device")?,
            ),
            _ => None,
        };
        if let Backend::Udp { port } = self.backend {
            self.ensure_udp(own, port).await?;
        }
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
            vxlan,
            forward_dropped_by: dropped_by,
        })
    }

    async fn ensure_udp(&self, own: Ipv4Network, port: u16) -> Result<()> {
        let running_for = lock_udp(&self.udp).as_ref().map(UdpOverlay::own);
        if let Some(running_own) = running_for {
            let device_present = self.netlink.link(UDP_DEVICE_NAME).await?.is_some();
            if running_own == own && device_present {
                return Ok(());
            }
            warn!(
                device = UDP_DEVICE_NAME,
                device_present,
                subnet = %own,
                "restarting the udp overlay"
            );
            // Stopping joins the packet thread (up to one poll interval): off the async workers.
            let old = lock_udp(&self.udp).take();
            let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        }
        let spec = UdpOverlaySpec {
            tun_name: UDP_DEVICE_NAME.to_string(),
            listen: SocketAddrV4::new(self.underlay.ip, port),
            own,
            network: self.network,
            mtu: self.mtu(),
        };
        let overlay = UdpOverlay::start(&self.netlink, &spec, PeerMap::new(own.prefix()))
            .await
            .context("starting the udp overlay")?;
        info!(device = UDP_DEVICE_NAME, listen = %spec.listen, "udp overlay running");
        *lock_udp(&self.udp) = Some(overlay);
        Ok(())
    }

    /// Hands the udp packet thread the current peers.
    fn update_udp_peers(&self, own: Ipv4Network, port: u16, peers: &[Lease]) {
        let mut map = PeerMap::new(own.prefix());
        for lease in peers
            .iter()
            .filter(|l| self.backend.accepts(&l.attrs.backend_type))
        {
            map.insert(lease.subnet, SocketAddrV4::new(lease.attrs.public_ip, port));
        }
        if let Some(overlay) = lock_udp(&self.udp).as_ref() {
            overlay.set_peers(map);
        }
    }

    /// One reconciliation pass: devices, then the overlay for `peers`.
    /// Returns the changes made and the foreign forward chains with a drop
    /// policy.
    async fn reconcile(
        &self,
        own: Ipv4Network,
        peers: &[Lease],
        reported: &mut HashSet<String>,
    ) -> Result<(OverlayChanges, Vec<String>)> {
        let devices = self.ensure_devices(own).await?;
        if let Backend::Udp { port } = self.backend {
            self.update_udp_peers(own, port, peers);
        }
        let (desired, skipped) =
            desired_overlay(&self.backend, peers, &self.underlay, devices.vxlan);
        for skip in skipped {
            let line = skip.to_string();
            if reported.insert(line) {
                warn!(subnet = %skip.subnet, reason = %skip.reason, "peer lease not programmed");
            }
        }
        let scope = OverlayScope {
            vxlan_index: devices.vxlan,
        };
        let changes = self.netlink.apply_overlay(&desired, scope).await?;
        Ok((changes, devices.forward_dropped_by))
    }
}

fn lock_udp(
    udp: &std::sync::Mutex<Option<UdpOverlay>>,
) -> std::sync::MutexGuard<'_, Option<UdpOverlay>> {
    udp.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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

/// Consumes lease events and keeps the kernel in line with the peer table.
/// Nothing is programmed before the first full listing, so that a restart
/// never withdraws routes that are about to be confirmed.
pub async fn reconcile_loop(
    node: NodeDataplane,
    state: SharedState,
    mut events: mpsc::Receiver<Vec<LeaseEvent>>,
) {
    let mut ticker = tokio::time::interval(RESYNC_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = HashSet::new();
    let mut last_error = String::new();
    loop {
        tokio::select! {
            batch = events.recv() => match batch {
                Some(batch) => log_events(&batch),
                None => return,
            },
            _ = ticker.tick() => {}
        }
        // Fold a burst of batches into one pass.
        while let Ok(batch) = events.try_recv() {
            log_events(&batch);
        }
        let snapshot = {
            let st = lock(&state);
            match (st.peers_listed, st.node.as_ref(), st.peers.as_ref()) {
                (true, Some(node), Some(table)) => Some((
                    node.lease.subnet,
                    table.peers().cloned().collect::<Vec<_>>(),
                )),
                _ => None,
            }
        };
        let Some((own, peers)) = snapshot else {
            continue;
        };
        let started = std::time::Instant::now();
        let result = node.reconcile(own, &peers, &mut reported).await;
        if let Ok((_, dropped_by)) = &result {
            let mut st = lock(&state);
            if st.forward_dropped_by != *dropped_by {
                if !dropped_by.is_empty() {
                    warn!(
                        chains = %dropped_by.join(", "),
                        "a forward chain of another table has a drop policy: it may drop the network's traffic, whatever tartan's own table accepts"
                    );
                }
                st.forward_dropped_by = dropped_by.clone();
            }
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

/// The consumer for the lease-only (`alloc`) backend: it only logs.
pub async fn log_only(mut events: mpsc::Receiver<Vec<LeaseEvent>>) {
    while let Some(batch) = events.recv().await {
        log_events(&batch);
    }
}

fn log_events(batch: &[LeaseEvent]) {
    if batch.len() > 16 {
        info!(changes = batch.len(), "peer leases changed");
        return;
    }
    for event in batch {
        match event {
            LeaseEvent::Upserted(lease) => info!(
                subnet = %lease.subnet,
                public_ip = %lease.attrs.public_ip,
                backend = %lease.attrs.backend_type,
                "peer lease added or changed"
            ),
            LeaseEvent::Removed(subnet) => info!(%subnet, "peer lease removed"),
        }
    }
}
