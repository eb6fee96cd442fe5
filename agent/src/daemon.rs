//! `tartan agent`: the node agent's main loop.
//!
//! Start-up order: find the public address, serve the local API, wait for a
//! valid network config, take a lease, write the subnet file, tell systemd
//! we are ready, then keep the lease alive and the peer table current until
//! SIGTERM. The lease is kept on shutdown so that a restart gets it back.
//!
//! With `--no-etcd` (peer mode) there is no store: no config, lease, subnet
//! file, overlay or peer table. The agent serves the API (attachments, the
//! containers, images) and is ready as soon as it does.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use tartan_dataplane::{stable_bridge_mac, HostInterface, InterfaceSelector, Netlink};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::backends::node::{NodeDataplane, FIREWALL_TABLE};
use crate::backends::registry::parse_config;
use crate::backends::{OverlayBackend, Underlay};
use crate::background::Background;
use crate::containers::images::Images;
use crate::containers::{Containers, Overlay};
use crate::control::acquire::{acquire, HeldLease};
use crate::control::config::NetworkConfig;
use crate::control::etcd::{is_unreachable, EtcdOptions, Registry};
use crate::control::lease::{lease_key, LeaseAttrs};
use crate::control::node_state::{EtcdMonitor, NodeLease, NodeState};
use crate::control::peers::{LeaseEvent, PeerTable, RawChange, RawLease, Rejected};
use crate::control::subnet_file::{previous_subnet, SubnetFile};
use crate::names::registry::NameRegistry;
use crate::networks::attach::Attacher;
use crate::networks::named::NamedNetworks;
use crate::networks::ovsdb::OvsdbHandle;
use crate::networks::pipework::Pipework;
use crate::networks::store::NetworkStore;
use crate::segment::wire::PeerSecret;
use crate::segment::{self, Segment, SegmentOptions};
use crate::teardown::Teardown;
use crate::{api, backends::node, claim, notify};

/// Where the fabric's shared state is kept.
#[derive(Debug, Clone)]
pub enum Store {
    /// Leases and peers under flannel's prefix, named networks under
    /// `tartan_prefix` (Tartan's own keys).
    Etcd {
        etcd: EtcdOptions,
        tartan_prefix: String,
    },
    /// `--no-etcd` (peer mode): nothing is shared through a store.
    None,
}

/// Everything `tartan agent` is told on its command line.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub store: Store,
    /// Interfaces to try in order; empty: the default route's.
    pub iface: Vec<InterfaceSelector>,
    /// The node bridge's name.
    pub bridge: String,
    /// The bridge belongs to someone else (docker0): not made, not attached to.
    pub external_bridge: bool,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub subnet_lease_ttl: Duration,
    pub subnet_lease_renew_margin: Duration,
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
    /// Masquerade traffic from the cluster network to the outside.
    pub ip_masq: bool,
    /// Accept the cluster network's forwarded traffic in the agent's table.
    pub forward_rules: bool,
    /// How often an etcd outage is logged while it lasts.
    pub etcd_outage_report_interval: Duration,
    /// The OVSDB address (`unix:PATH`), connected to when first needed.
    pub ovsdb: String,
    pub segment: SegmentSettings,
}

/// The L2 segment's part of the command line.
#[derive(Debug, Clone)]
pub struct SegmentSettings {
    pub peer_port: u16,
    pub secret: Option<String>,
    pub range: Ipv4Network,
    pub timing: crate::segment::book::Timing,
}

/// The channels the node's facts travel on; the control plane writes them.
struct Publishers {
    node: watch::Sender<NodeState>,
    attacher: watch::Sender<Option<Arc<Attacher>>>,
    forward_dropped_by: watch::Sender<Vec<String>>,
    etcd: EtcdMonitor,
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(opts: AgentOptions) -> Result<()> {
    if opts.subnet_lease_renew_margin >= opts.subnet_lease_ttl {
        bail!(
            "--subnet-lease-renew-margin ({}) must be shorter than --subnet-lease-ttl ({})",
            humantime::format_duration(opts.subnet_lease_renew_margin),
            humantime::format_duration(opts.subnet_lease_ttl)
        );
    }
    let timing = opts.segment.timing;
    if timing.timeout <= timing.interval {
        bail!(
            "--peer-timeout ({}) must be longer than --peer-interval ({}): peers would time out between two exchanges",
            humantime::format_duration(timing.timeout),
            humantime::format_duration(timing.interval)
        );
    }
    let netlink = Netlink::connect().context("opening netlink")?;
    let (public_ip, iface) = public_address(&netlink, &opts).await?;
    info!(%public_ip, iface = iface.as_ref().map(|i| i.name.as_str()), "using public address");
    let holder = claim::Holder {
        pid: std::process::id(),
        state_dir: opts.state_dir.display().to_string(),
        api_socket: opts.api_socket.display().to_string(),
    };
    let _claim = match &opts.store {
        // Two agents with one public address and prefix would share one lease.
        Store::Etcd { etcd, .. } => {
            let prefix = etcd.prefix.trim_end_matches('/');
            claim::take(
                &format!("lease {prefix} {public_ip}"),
                &holder,
                &format!("leases the subnet of {public_ip} under {prefix}"),
            )
            .await?
        }
        // No lease to share; the namespace's network is this agent's (and
        // `tartan reset` takes the same claim).
        Store::None => {
            claim::take(
                "dataplane",
                &holder,
                "programs its network (peer mode, --no-etcd)",
            )
            .await?
        }
    };
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating --state-dir {}", opts.state_dir.display()))?;

    let publishers = Publishers {
        node: watch::Sender::new(NodeState::default()),
        attacher: watch::Sender::new(None),
        forward_dropped_by: watch::Sender::new(Vec::new()),
        etcd: EtcdMonitor::default(),
    };
    let mut background = Background::new();
    background.spawn(
        "etcd outage report",
        publishers
            .etcd
            .clone()
            .report_outages(opts.etcd_outage_report_interval),
    );
    let (registry, network_store, names) = match &opts.store {
        Store::Etcd {
            etcd,
            tartan_prefix,
        } => {
            let connect = Registry::connect_options(etcd)?;
            let registry = connect_with_backoff(etcd, connect, &publishers.etcd).await;
            let store = NetworkStore::new(registry.client(), tartan_prefix);
            let (names, address_writer) =
                NameRegistry::new(registry.client(), tartan_prefix, &public_ip.to_string());
            background.spawn("name address writer", address_writer);
            (Some(registry), store, names)
        }
        Store::None => (None, NetworkStore::none(), NameRegistry::none()),
    };
    let overlay = match registry {
        Some(_) => Overlay::Leased,
        None => Overlay::NoStore,
    };
    let images = Images::open(&opts.state_dir)?;
    // One connection to Open vSwitch for named networks and `attach`.
    let ovsdb = Arc::new(OvsdbHandle::new(opts.ovsdb.clone()));
    let named_networks = NamedNetworks::new(
        network_store,
        netlink.clone(),
        ovsdb.clone(),
        public_ip.to_string(),
    );
    let pipework = Arc::new(Pipework::open(netlink.clone(), ovsdb, &opts.state_dir)?);
    // One agent per namespace keeps the segment: its devices and the peer
    // port are the namespace's. Others (alloc agents sharing a namespace)
    // run without one, and say why.
    let segment_claim = claim::take(
        "segment",
        &holder,
        "keeps the L2 segment (tartan-l2) and its peer port",
    )
    .await;
    let kept_elsewhere = segment_claim.as_ref().err().map(|err| format!("{err:#}"));
    if let Some(why) = &kept_elsewhere {
        warn!(reason = %why, "running without the L2 segment");
    }
    let segment = Segment::new(
        netlink.clone(),
        SegmentOptions {
            public_ip,
            underlay: iface.as_ref().map(|i| (i.index, i.mtu)),
            peer_port: opts.segment.peer_port,
            secret: opts.segment.secret.as_deref().map(PeerSecret::new),
            range: opts.segment.range,
            timing: opts.segment.timing,
            state_dir: opts.state_dir.clone(),
            kept_elsewhere: kept_elsewhere.clone(),
        },
        pipework.clone(),
        match (&registry, &opts.store) {
            (Some(registry), Store::Etcd { tartan_prefix, .. }) => Some(segment::Store {
                client: registry.client(),
                tartan_prefix: tartan_prefix.clone(),
            }),
            _ => None,
        },
    )?;
    let _peer_service = if kept_elsewhere.is_none() {
        // Up before the attachments on it are made again.
        segment.start().await;
        let service = segment::server::serve(
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, opts.segment.peer_port)),
            segment.clone(),
        )
        .await?;
        // With etcd, the lease holders are peers too.
        let lease_holders = registry.is_some().then(|| publishers.node.subscribe());
        background.spawn("L2 segment", segment.clone().run(lease_holders));
        Some(service)
    } else {
        None
    };
    // Containers' cgroups need cgroupfs in this mount namespace.
    match tartan_runtime::cgroups::mount::mount_if_missing() {
        Ok(true) => info!("mounted cgroupfs at /sys/fs/cgroup in the agent's mount namespace"),
        Ok(false) => {}
        Err(err) => {
            warn!(error = %err, "no cgroupfs: containers get no cgroup limits, device rules or stats")
        }
    }
    // The fabric's DNS: the names followed from etcd, answered on the
    // bridge's address. None in peer mode.
    let names = match crate::names::cache::follow(&names) {
        Some((table, follower)) => {
            background.spawn("names watch", follower);
            let (serving, server) =
                crate::names::server::serve(publishers.attacher.subscribe(), table);
            background.spawn("DNS server", server);
            names.with_dns(serving)
        }
        None => names,
    };
    let containers = Containers::open(
        &opts.state_dir,
        images.clone(),
        overlay,
        publishers.attacher.subscribe(),
        named_networks.clone(),
        pipework.clone(),
        names,
    )?;
    containers.recover().await;
    background.spawn(
        "subnet follower",
        containers
            .clone()
            .follow_subnet(publishers.attacher.subscribe()),
    );
    background.spawn(
        "attachment follower",
        pipework.clone().follow(Arc::new(containers.clone())),
    );
    let server = api::serve(
        &opts.api_socket,
        api::Services {
            node: publishers.node.subscribe(),
            etcd: publishers.etcd.clone(),
            forward_dropped_by: publishers.forward_dropped_by.subscribe(),
            registry: registry.clone(),
            attacher: publishers.attacher.subscribe(),
            images,
            containers,
            networks: named_networks,
            pipework,
            segment,
        },
    )
    .await?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let node_state = publishers.node.subscribe();
    // Held until the firewall table is removed below, not only while the node runs.
    let mut dataplane_claim = None;
    let keeps = if registry.is_some() {
        ", keeping the lease"
    } else {
        ""
    };
    let node = async {
        match registry {
            Some(registry) => {
                run_node(
                    &opts,
                    registry,
                    &publishers,
                    netlink,
                    (public_ip, iface),
                    (&holder, &mut dataplane_claim),
                )
                .await
            }
            None => run_peer_mode().await,
        }
    };
    let outcome = tokio::select! {
        result = node => result,
        err = background.ended() => Err(err),
        _ = sigterm.recv() => { info!("SIGTERM: shutting down{keeps}"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down{keeps}"); Ok(()) }
    };
    let mut teardown = Teardown::new();
    teardown.step("telling systemd", notify::notify("STOPPING=1"));
    server.shutdown().await;
    // Only a backend that programs the kernel made the table (alloc makes
    // none); it holds the claim once the config is read.
    let programmed = dataplane_claim.is_some() && node_state.borrow().config.is_some();
    if programmed && (opts.ip_masq || opts.forward_rules) {
        // The rules go with the agent; the next start puts them back.
        let removed =
            tokio::task::spawn_blocking(|| tartan_dataplane::remove_firewall(FIREWALL_TABLE))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r.map_err(anyhow::Error::from));
        if teardown
            .step("removing the firewall rules", removed)
            .is_some()
        {
            info!("removed the firewall rules");
        }
    }
    teardown.log("shutting down left something behind");
    outcome
}

/// Peer mode: no config to wait for, no lease to take or keep; ready as
/// soon as the API serves, until a signal.
async fn run_peer_mode() -> Result<()> {
    if let Err(err) = notify::notify("READY=1") {
        warn!(error = %format!("{err:#}"), "could not notify systemd");
    }
    info!("ready: peer mode (--no-etcd), no store, no lease");
    std::future::pending().await
}

/// Builds the etcd client, retrying while etcd is unreachable (only
/// authentication needs a round trip at this point).
async fn connect_with_backoff(
    etcd: &EtcdOptions,
    connect: etcd_client::ConnectOptions,
    health: &EtcdMonitor,
) -> Registry {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut last_error = String::new();
    loop {
        match Registry::connect(etcd, connect.clone()).await {
            Ok(registry) => return registry,
            Err(err) if is_unreachable(&err) => health.unreachable(&err),
            Err(err) => report_once(&mut last_error, format!("{err:#}")),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

/// The public IP to publish, and the interface traffic leaves by (None only
/// when `--public-ip` names an address of no interface and there is no default route).
async fn public_address(
    netlink: &Netlink,
    opts: &AgentOptions,
) -> Result<(Ipv4Addr, Option<HostInterface>)> {
    let iface = match (opts.iface.as_slice(), opts.public_ip) {
        ([], Some(ip)) => match netlink.interface_by_address(ip).await? {
            Some(iface) => Some(iface),
            // An address we do not carry (NAT, tests): the underlay is the default route's.
            None => netlink.default_route_interface().await?,
        },
        ([], None) => Some(netlink.public_interface(None).await?),
        // flanneld's repeated -iface: the first that exists wins.
        (selectors, _) => {
            let mut last_error = None;
            let mut found = None;
            for selector in selectors {
                match netlink.find_interface(selector).await {
                    Ok(iface) => {
                        found = Some(iface);
                        break;
                    }
                    Err(err) => last_error = Some(err),
                }
            }
            match (found, last_error) {
                (Some(iface), _) => Some(iface),
                (None, Some(err)) if selectors.len() == 1 => return Err(err.into()),
                (None, _) => bail!(
                    "none of the interfaces given with --iface exists or has an IPv4 address: {}",
                    selectors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let public_ip = match (opts.public_ip, &iface) {
        (Some(ip), _) => ip,
        (None, Some(iface)) => iface.ipv4.ok_or_else(|| {
            anyhow!(
                "interface {} has no IPv4 address; pass --public-ip",
                iface.name
            )
        })?,
        (None, None) => bail!("no default route; pass --iface or --public-ip"),
    };
    Ok((public_ip, iface))
}

/// The underlay as the backends need it.
fn underlay_of(iface: Option<&HostInterface>, public_ip: Ipv4Addr) -> Option<Underlay> {
    let iface = iface?;
    Some(Underlay {
        index: iface.index,
        ip: iface.ipv4.unwrap_or(public_ip),
        prefix_len: iface.prefix_len,
        mtu: iface.mtu,
    })
}

async fn run_node(
    opts: &AgentOptions,
    registry: Registry,
    publishers: &Publishers,
    netlink: Netlink,
    (public_ip, iface): (Ipv4Addr, Option<HostInterface>),
    (holder, dataplane_claim): (&claim::Holder, &mut Option<claim::Claim>),
) -> Result<()> {
    let health = &publishers.etcd;
    let (config, backend) = wait_for_config(&registry, health).await;
    let config = Arc::new(config);
    info!(config = %config, "network config");
    for note in &config.notes {
        warn!(note = %note, "network config");
    }
    // The devices, routes and firewall table are the namespace's, whatever the prefix.
    if backend.programs_kernel() {
        *dataplane_claim = Some(
            claim::take(
                "dataplane",
                holder,
                "programs its network (the bridge, the overlay devices and routes, the firewall table)",
            )
            .await?,
        );
    }
    let underlay = underlay_of(iface.as_ref(), public_ip);
    let dataplane = match underlay {
        _ if !backend.programs_kernel() => None,
        Some(underlay) => Some(Arc::new(NodeDataplane {
            netlink: netlink.clone(),
            backend: backend.clone(),
            underlay,
            public_ip,
            masquerade: opts.ip_masq,
            forward_accept: opts.forward_rules,
            network: config.network(),
            bridge: (!opts.external_bridge).then(|| opts.bridge.clone()),
            bridge_mac: stable_bridge_mac(public_ip),
            pass: tokio::sync::Mutex::new(()),
        })),
        None => bail!(
            "the {} backend needs an underlay interface; pass --iface",
            backend.type_name()
        ),
    };
    let underlay_mtu = underlay.map(|u| u.mtu).unwrap_or(1500);
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: backend.lease_type().to_string(),
        backend_data: backend.lease_data(public_ip),
    };
    let previous = previous_subnet(&opts.subnet_file);
    let mut held = acquire_with_backoff(
        &registry,
        health,
        &config,
        &attrs,
        previous,
        opts.subnet_lease_ttl,
    )
    .await;
    let subnet_file = |subnet: Ipv4Network| SubnetFile {
        network: config.network(),
        subnet,
        mtu: backend.mtu(underlay_mtu),
        ip_masq: opts.ip_masq,
    };
    if let Some(dataplane) = &dataplane {
        let devices = dataplane.ensure_devices(held.subnet).await?;
        // An external bridge's consumer hands out its addresses: nothing to attach.
        if devices.bridge.is_some() {
            let attacher = Attacher::new(
                netlink.clone(),
                held.subnet,
                dataplane.mtu(),
                opts.bridge.clone(),
                &opts.state_dir,
            )?;
            attacher.finish_releases().await;
            let previous = attacher.take_previous();
            if !previous.is_empty() {
                log_moves(attacher.adopt_attached(previous).await);
            }
            let attacher = Arc::new(attacher);
            publishers.attacher.send_replace(Some(attacher.clone()));
            // Processes attached before this start: freed when they end.
            for (_, key) in attacher.bookings().await {
                if let Some(crate::networks::attach::ContainerRef::Pid(pid)) =
                    crate::networks::attach::ContainerRef::from_key(&key)
                {
                    crate::networks::attach::free_when_process_ends(
                        publishers.attacher.subscribe(),
                        pid,
                    );
                }
            }
        } else {
            info!(bridge = %opts.bridge, "the bridge is external: left to its consumer");
        }
    }
    subnet_file(held.subnet).write(&opts.subnet_file)?;
    publishers.node.send_modify(|st| {
        st.config = Some(config.clone());
        st.lease = Some(node_lease(&held, opts.subnet_lease_ttl));
    });
    if let Err(err) = notify::notify("READY=1") {
        warn!(error = %format!("{err:#}"), "could not notify systemd");
    }
    info!(subnet = %held.subnet, file = %opts.subnet_file.display(), "ready");

    let (lost_tx, mut lost_rx) = mpsc::channel(1);
    let mut tasks = Background::new();
    tasks.spawn(
        "lease watch",
        watch_peers(
            registry.clone(),
            publishers.node.clone(),
            health.clone(),
            config.range.clone(),
            lost_tx,
        ),
    );
    if let Some(dataplane) = &dataplane {
        tasks.spawn(
            "dataplane reconciler",
            node::reconcile_loop(
                dataplane.clone(),
                publishers.node.subscribe(),
                publishers.forward_dropped_by.clone(),
            ),
        );
    }

    let ttl = opts.subnet_lease_ttl;
    let margin = opts.subnet_lease_renew_margin;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut renew_in = ttl - margin;
    loop {
        // A reservation has no TTL: nothing to renew, only its loss to notice.
        let renew = async {
            if held.is_reservation() {
                std::future::pending::<()>().await
            }
            tokio::time::sleep(renew_in).await
        };
        let lost = tokio::select! {
            _ = renew => false,
            Some(()) = lost_rx.recv() => true,
            err = tasks.ended() => return Err(err),
        };
        let lost = lost
            || {
                match registry.keep_alive(held.etcd_lease).await {
                    Ok(remaining) if remaining > 0 => {
                        backoff.reset();
                        health.reachable();
                        let remaining = Duration::from_secs(remaining.unsigned_abs());
                        publishers.node.send_modify(|st| {
                            if let Some(lease) = st.lease.as_mut() {
                                lease.expires_at = Some(SystemTime::now() + remaining);
                            }
                        });
                        renew_in = remaining
                            .saturating_sub(margin)
                            .max(Duration::from_millis(500));
                        debug!(subnet = %held.subnet, ttl = ?remaining, "renewed the subnet lease");
                        false
                    }
                    Ok(_) => true,
                    Err(err) => {
                        if is_unreachable(&err) {
                            health.unreachable(&err);
                        }
                        renew_in = backoff.next();
                        warn!(error = %format!("{err:#}"), retry_in = ?renew_in, "could not renew the subnet lease");
                        false
                    }
                }
            };
        if lost {
            warn!(subnet = %held.subnet, "the subnet lease is gone from etcd; acquiring again");
            let before = held.subnet;
            held =
                acquire_with_backoff(&registry, health, &config, &attrs, Some(before), ttl).await;
            subnet_file(held.subnet).write(&opts.subnet_file)?;
            publishers
                .node
                .send_modify(|st| st.lease = Some(node_lease(&held, ttl)));
            if held.subnet == before {
                info!(subnet = %held.subnet, "holding the subnet lease again");
            } else {
                warn!(from = %before, to = %held.subnet, "the node's subnet changed");
                if let Some(dataplane) = &dataplane {
                    move_attachments(dataplane, &publishers.attacher, held.subnet).await;
                }
            }
            renew_in = ttl - margin;
        }
    }
}

/// After the node's subnet changed: the bridge takes the new gateway, and a
/// new address book replaces the old one; the namespaces `attach` plugged
/// in move over now, and the containers follow the published attacher.
async fn move_attachments(
    dataplane: &NodeDataplane,
    attacher: &watch::Sender<Option<Arc<Attacher>>>,
    subnet: Ipv4Network,
) {
    let Some(old) = attacher.borrow().clone() else {
        return;
    };
    // Containers need their gateway on the bridge before they move; the
    // reconciler retries a failure here.
    if let Err(err) = dataplane.ensure_devices(subnet).await {
        warn!(error = %format!("{err:#}"), "could not move the bridge to the new subnet");
    }
    let new = match old.successor(subnet) {
        Ok(new) => Arc::new(new),
        Err(err) => {
            warn!(error = %format!("{err:#}"), "no address book for the new subnet: attachments stay on the old one");
            return;
        }
    };
    // Attachments being made finish first; new ones wait for the successor.
    let _handover = old.hold_for_handover().await;
    old.retire();
    log_moves(new.adopt_attached(old.bookings().await).await);
    if let Err(err) = new.persist().await {
        warn!(error = %format!("{err:#}"), "could not save the new subnet's addresses");
    }
    attacher.send_replace(Some(new));
}

fn log_moves((moved, errors): (Vec<(String, Ipv4Addr, Ipv4Network)>, Vec<anyhow::Error>)) {
    for (who, from, to) in moved {
        info!(container = %who, from = %from, to = %to, "moved an attached namespace to the new subnet");
    }
    for err in errors {
        warn!(error = %format!("{err:#}"), "could not move an attached namespace");
    }
}

fn node_lease(held: &HeldLease, ttl: Duration) -> NodeLease {
    NodeLease {
        lease: held.clone(),
        expires_at: (!held.is_reservation()).then(|| SystemTime::now() + ttl),
    }
}

/// Reads the config until it is valid; waits on a watch of the key between tries.
async fn wait_for_config(
    registry: &Registry,
    health: &EtcdMonitor,
) -> (NetworkConfig, Arc<dyn OverlayBackend>) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut last_error = String::new();
    loop {
        let stored = match registry.get_config().await {
            Ok(stored) => stored,
            Err(err) => {
                if is_unreachable(&err) {
                    health.unreachable(&err);
                } else {
                    report_once(&mut last_error, format!("{err:#}"));
                }
                tokio::time::sleep(backoff.next()).await;
                continue;
            }
        };
        health.reachable();
        let problem = match stored.value.as_deref().map(parse_config) {
            Some(Ok(config)) => return config,
            Some(Err(err)) => format!(
                "invalid network config at {}/config: {err}",
                registry.prefix()
            ),
            None => format!(
                "waiting for the network config at {}/config",
                registry.prefix()
            ),
        };
        report_once(&mut last_error, problem);
        if let Err(err) = registry
            .wait_config_change(stored.revision, Duration::from_secs(30))
            .await
        {
            // Read again after a pause; the read reports an outage.
            debug!(error = %format!("{err:#}"), "watching the config key");
            tokio::time::sleep(backoff.next()).await;
        }
    }
}

async fn acquire_with_backoff(
    registry: &Registry,
    health: &EtcdMonitor,
    config: &NetworkConfig,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Network>,
    ttl: Duration,
) -> HeldLease {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut last_error = String::new();
    loop {
        match acquire(registry, &config.range, attrs, previous, ttl).await {
            Ok(held) => {
                health.reachable();
                return held;
            }
            Err(err) if is_unreachable(&err) => health.unreachable(&err),
            Err(err) => report_once(
                &mut last_error,
                format!("could not acquire a subnet lease: {err:#}"),
            ),
        }
        tokio::time::sleep(backoff.next()).await;
    }
}

fn report_once(last: &mut String, problem: String) {
    if *last != problem {
        warn!("{problem}");
        *last = problem;
    }
}

/// Keeps the peers in the node's state current: list, then watch from the
/// listing's revision. A broken stream is resumed from the last revision
/// seen, so an etcd blip costs no re-list; a compaction that overtook us, or
/// a change of our own subnet (which changes which leases are peers), forces
/// a re-list, and the table turns it into the difference.
async fn watch_peers(
    registry: Registry,
    node: watch::Sender<NodeState>,
    health: EtcdMonitor,
    range: tartan_ipam::SubnetRange,
    lost: mpsc::Sender<()>,
) {
    let mut table = PeerTable::new(registry.subnets_prefix(), range);
    let mut own = node.subscribe();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut resume_from: Option<i64> = None;
    loop {
        // A subnet change the watch did not see (it broke, or was being
        // listed) still needs the re-list.
        if resume_from.is_some() && own.borrow().subnet() != table.own() {
            info!("the node's subnet changed; listing the leases again");
            resume_from = None;
        }
        let from = match resume_from {
            Some(revision) => revision,
            None => {
                // Logged, not published: the listing below publishes the
                // whole table, and before the first one nothing is withdrawn.
                log_events(&table.set_own(own.borrow_and_update().subnet()));
                match relist(&registry, &node, &mut table, &lost).await {
                    Ok(revision) => {
                        health.reachable();
                        revision + 1
                    }
                    Err(err) => {
                        // An outage is the monitor's to tell, once.
                        if is_unreachable(&err) {
                            health.unreachable(&err);
                            debug!(error = %format!("{err:#}"), "could not list subnet leases");
                        } else {
                            warn!(error = %format!("{err:#}"), "could not list subnet leases");
                        }
                        tokio::time::sleep(backoff.next()).await;
                        continue;
                    }
                }
            }
        };
        let mut next = from;
        let mut watch = Follow {
            registry: &registry,
            node: &node,
            table: &mut table,
            lost: &lost,
            health: &health,
        };
        match watch.follow(&mut own, &mut next, &mut backoff).await {
            Ok(WatchEnd::Compacted) => resume_from = None,
            Ok(WatchEnd::OwnSubnetChanged) => {
                info!("the node's subnet changed; listing the leases again");
                resume_from = None;
            }
            Err(err) => {
                // An outage is the monitor's to tell, once.
                if is_unreachable(&err) {
                    health.unreachable(&err);
                    debug!(error = %format!("{err:#}"), resume_from = next, "subnet watch broke");
                } else {
                    warn!(error = %format!("{err:#}"), resume_from = next, "subnet watch broke");
                }
                resume_from = Some(next);
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Lists every lease and replaces the table with it; returns the revision.
async fn relist(
    registry: &Registry,
    node: &watch::Sender<NodeState>,
    table: &mut PeerTable,
    lost: &mpsc::Sender<()>,
) -> Result<i64> {
    let (listing, revision) = registry.list_leases().await?;
    if own_lease_missing(node, registry, &listing) {
        signal_lost(lost);
    }
    let (changes, rejected) = table.resync(listing);
    info!(peers = table.len(), revision, "listed subnet leases");
    publish(node, table, changes, rejected);
    Ok(revision)
}

/// Why a watch ended without an error.
enum WatchEnd {
    /// The start revision was compacted away: re-list.
    Compacted,
    /// The node's subnet changed: leases refused as overlapping the old one
    /// may be peers now, and the old one's holder is one: re-list.
    OwnSubnetChanged,
}

/// One watch of the subnet leases and what it feeds.
struct Follow<'a> {
    registry: &'a Registry,
    node: &'a watch::Sender<NodeState>,
    table: &'a mut PeerTable,
    lost: &'a mpsc::Sender<()>,
    health: &'a EtcdMonitor,
}

impl Follow<'_> {
    /// Follows the watch from `*next`, advancing it past every event applied.
    async fn follow(
        &mut self,
        own: &mut watch::Receiver<NodeState>,
        next: &mut i64,
        backoff: &mut Backoff,
    ) -> Result<WatchEnd> {
        // What the table was listed for; a change since then is news.
        let watching = self.table.own();
        let mut stream = self.registry.watch_subnets(*next).await?;
        loop {
            if own.borrow_and_update().subnet() != watching {
                return Ok(WatchEnd::OwnSubnetChanged);
            }
            // The stream is dropped when the subnet changes, so an
            // interrupted read loses nothing that the re-list does not see.
            let message = tokio::select! {
                message = stream.message() => message
                    .map_err(crate::control::etcd::etcd_failure)
                    .context("reading the subnet watch")?,
                changed = own.changed() => {
                    if changed.is_err() {
                        bail!("the node's state is gone: the agent is stopping");
                    }
                    // Compared at the top of the loop.
                    continue;
                }
            };
            let Some(resp) = message else {
                bail!("etcd closed the subnet watch")
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    info!(
                        from = *next,
                        compacted_to = resp.compact_revision(),
                        "subnet watch fell behind a compaction; listing again"
                    );
                    return Ok(WatchEnd::Compacted);
                }
                bail!("etcd cancelled the subnet watch: {}", resp.cancel_reason());
            }
            if resp.created() {
                backoff.reset();
                self.health.reachable();
            }
            let mut changes = Vec::with_capacity(resp.events().len());
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                *next = (*next).max(kv.mod_revision() + 1);
                match event.event_type() {
                    etcd_client::EventType::Put => changes.push(RawChange::Put(RawLease {
                        key: kv.key().to_vec(),
                        value: kv.value().to_vec(),
                        etcd_lease: kv.lease(),
                        mod_revision: kv.mod_revision(),
                    })),
                    etcd_client::EventType::Delete => changes.push(RawChange::Delete {
                        key: kv.key().to_vec(),
                    }),
                }
            }
            if changes.is_empty() {
                continue;
            }
            if own_lease_lost_in(self.node, self.registry, &changes) {
                signal_lost(self.lost);
            }
            let (changes, rejected) = self.table.apply(changes);
            publish(self.node, self.table, changes, rejected);
        }
    }
}

/// Tells the lease keeper the lease is gone; one pending notice is enough.
fn signal_lost(lost: &mpsc::Sender<()>) {
    // Full: a notice is already pending. Closed: the keeper is shutting down.
    let _ = lost.try_send(());
}

/// The key and value of this node's lease, if it holds one.
fn own_key_and_ip(
    node: &watch::Sender<NodeState>,
    registry: &Registry,
) -> Option<(String, Ipv4Addr)> {
    let st = node.borrow();
    let lease = st.lease.as_ref()?;
    Some((
        lease_key(registry.prefix(), &lease.lease.subnet),
        lease.lease.attrs.public_ip,
    ))
}

fn own_lease_missing(
    node: &watch::Sender<NodeState>,
    registry: &Registry,
    listing: &[RawLease],
) -> bool {
    let Some((key, ip)) = own_key_and_ip(node, registry) else {
        return false;
    };
    !listing
        .iter()
        .any(|raw| raw.key == key.as_bytes() && value_has_ip(&raw.value, ip))
}

fn own_lease_lost_in(
    node: &watch::Sender<NodeState>,
    registry: &Registry,
    changes: &[RawChange],
) -> bool {
    let Some((key, ip)) = own_key_and_ip(node, registry) else {
        return false;
    };
    changes.iter().any(|change| match change {
        RawChange::Delete { key: k } => k == key.as_bytes(),
        RawChange::Put(raw) => raw.key == key.as_bytes() && !value_has_ip(&raw.value, ip),
    })
}

fn value_has_ip(value: &[u8], ip: Ipv4Addr) -> bool {
    serde_json::from_slice::<LeaseAttrs>(value).is_ok_and(|attrs| attrs.public_ip == ip)
}

/// Logs what changed and publishes the table as the node's peers (marking
/// them listed).
fn publish(
    node: &watch::Sender<NodeState>,
    table: &PeerTable,
    changes: Vec<LeaseEvent>,
    rejected: Vec<Rejected>,
) {
    for Rejected { key, reason } in rejected {
        warn!(key, %reason, "ignoring subnet lease");
    }
    log_events(&changes);
    let peers: Vec<_> = table.peers().cloned().collect();
    node.send_if_modified(|st| {
        let unchanged = st.peers.as_deref() == Some(&peers);
        if !unchanged {
            st.peers = Some(Arc::new(peers));
        }
        !unchanged
    });
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

/// Capped exponential backoff with jitter, so that a fleet of agents does not
/// reconnect to a recovering etcd in lock-step.
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    pub fn next(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = rand::random_range(0.8..1.2);
        base.mul_f64(jitter).min(self.max)
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next();
        assert!(first >= Duration::from_millis(80) && first <= Duration::from_millis(120));
        for _ in 0..10 {
            assert!(b.next() <= Duration::from_secs(1));
        }
        assert!(b.next() >= Duration::from_millis(800));
        b.reset();
        assert!(b.next() <= Duration::from_millis(120));
    }

    #[test]
    fn ip_check_reads_flannel_values() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        assert!(value_has_ip(br#"{"PublicIP":"10.0.0.1"}"#, ip));
        assert!(!value_has_ip(br#"{"PublicIP":"10.0.0.2"}"#, ip));
        assert!(!value_has_ip(b"junk", ip));
    }
}
