//! `tartan agent`: the node agent's main loop.
//!
//! Start-up order: find the public address, serve the local API, wait for a
//! valid network config, take a lease, write the subnet file, tell systemd
//! we are ready, then keep the lease alive and the peer table current until
//! SIGTERM. The lease is kept on shutdown so that a restart gets it back.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use tartan_dataplane::{stable_vtep_mac, HostInterface, InterfaceSelector, Netlink};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::acquire::{acquire, HeldLease};
use crate::api::SharedAttacher;
use crate::attach::Attacher;
use crate::backend::{lease_data, Underlay};
use crate::config::{Backend, NetworkConfig};
use crate::containers::Containers;
use crate::etcd::{EtcdOptions, Registry};
use crate::images::Images;
use crate::lease::{lease_key, LeaseAttrs};
use crate::node::{NodeDataplane, FIREWALL_TABLE};
use crate::peers::{LeaseEvent, PeerTable, RawChange, RawLease, Rejected};
use crate::subnet_file::{previous_subnet, SubnetFile};
use crate::{api, node, notify};

/// Everything `tartan agent` is told on its command line.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub etcd: EtcdOptions,
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
}

/// This node's lease as the agent holds it.
#[derive(Debug, Clone)]
pub struct NodeLease {
    pub lease: HeldLease,
    /// None for a reservation, which never expires.
    pub expires_at: Option<SystemTime>,
}

/// What the agent knows, shared between its tasks and the API.
#[derive(Default)]
pub struct AgentState {
    pub config: Option<NetworkConfig>,
    pub node: Option<NodeLease>,
    pub peers: Option<PeerTable>,
    /// Whether the peer table has been filled by a full listing at least once.
    pub peers_listed: bool,
    pub etcd_reachable: bool,
    /// Other tables' forward chains whose drop policy may drop our traffic.
    pub forward_dropped_by: Vec<String>,
}

pub type SharedState = Arc<Mutex<AgentState>>;

/// Locks the state; a panic elsewhere while holding it leaves data that is still usable.
pub fn lock(state: &SharedState) -> MutexGuard<'_, AgentState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let netlink = Netlink::connect().context("opening netlink")?;
    let (public_ip, iface) = public_address(&netlink, &opts).await?;
    info!(%public_ip, iface = iface.as_ref().map(|i| i.name.as_str()), "using public address");
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("creating --state-dir {}", opts.state_dir.display()))?;

    let connect = Registry::connect_options(&opts.etcd)?;
    let registry = connect_with_backoff(&opts.etcd, connect).await;
    let state: SharedState = Arc::new(Mutex::new(AgentState::default()));
    let attacher: SharedAttacher = Arc::new(OnceLock::new());
    let images = Images::open(&opts.state_dir)?;
    let containers = Containers::open(&opts.state_dir, images.clone(), attacher.clone())?;
    containers.recover().await;
    let server = api::serve(
        &opts.api_socket,
        state.clone(),
        registry.clone(),
        attacher.clone(),
        images,
        containers,
    )
    .await?;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let node = run_node(
        &opts,
        registry,
        state.clone(),
        netlink,
        public_ip,
        iface,
        attacher,
    );
    let outcome = tokio::select! {
        result = node => result,
        _ = sigterm.recv() => { info!("SIGTERM: shutting down, keeping the lease"); Ok(()) }
        _ = tokio::signal::ctrl_c() => { info!("SIGINT: shutting down, keeping the lease"); Ok(()) }
    };
    let _ = notify::notify("STOPPING=1");
    server.shutdown().await;
    // Only a backend that programs the kernel made the table (alloc makes none).
    let programmed = lock(&state)
        .config
        .as_ref()
        .is_some_and(|c| c.backend != Backend::Alloc);
    if programmed && (opts.ip_masq || opts.forward_rules) {
        // The rules go with the agent; the next start puts them back.
        match tokio::task::spawn_blocking(|| tartan_dataplane::remove_firewall(FIREWALL_TABLE))
            .await
        {
            Ok(Ok(())) => info!("removed the firewall rules"),
            Ok(Err(err)) => warn!(error = %err, "could not remove the firewall rules"),
            Err(err) => warn!(error = %err, "could not remove the firewall rules"),
        }
    }
    outcome
}

/// Builds the etcd client, retrying while etcd is unreachable (only
/// authentication needs a round trip at this point).
async fn connect_with_backoff(
    etcd: &EtcdOptions,
    connect: etcd_client::ConnectOptions,
) -> Registry {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut last_error = String::new();
    loop {
        match Registry::connect(etcd, connect.clone()).await {
            Ok(registry) => return registry,
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
    state: SharedState,
    netlink: Netlink,
    public_ip: Ipv4Addr,
    iface: Option<HostInterface>,
    attacher: SharedAttacher,
) -> Result<()> {
    let config = wait_for_config(&registry, &state).await;
    info!(%config, "network config");
    for note in &config.notes {
        warn!(note = %note, "network config");
    }
    let underlay = underlay_of(iface.as_ref(), public_ip);
    let dataplane = match (&config.backend, underlay) {
        (Backend::Alloc, _) => None,
        (backend, Some(underlay)) => Some(NodeDataplane {
            netlink: netlink.clone(),
            backend: backend.clone(),
            underlay,
            masquerade: opts.ip_masq,
            forward_accept: opts.forward_rules,
            network: config.network(),
            bridge: (!opts.external_bridge).then(|| opts.bridge.clone()),
            udp: std::sync::Mutex::new(None),
            vtep_mac: match backend {
                Backend::Vxlan(vx) => Some(stable_vtep_mac(public_ip, vx.vni)),
                _ => None,
            },
        }),
        (backend, None) => bail!(
            "the {} backend needs an underlay interface; pass --iface",
            backend.type_name()
        ),
    };
    let underlay_mtu = underlay.map(|u| u.mtu).unwrap_or(1500);
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: config.backend.lease_type().to_string(),
        backend_data: lease_data(&config.backend, dataplane.as_ref().and_then(|d| d.vtep_mac)),
    };
    let previous = previous_subnet(&opts.subnet_file);
    let mut held = acquire_with_backoff(
        &registry,
        &state,
        &config,
        &attrs,
        previous,
        opts.subnet_lease_ttl,
    )
    .await;
    let subnet_file = |subnet: Ipv4Network| SubnetFile {
        network: config.network(),
        subnet,
        mtu: config.backend.mtu(underlay_mtu),
        ip_masq: opts.ip_masq,
    };
    if let Some(dataplane) = &dataplane {
        let devices = dataplane.ensure_devices(held.subnet).await?;
        // An external bridge's consumer hands out its addresses: nothing to attach.
        if let Some(bridge) = devices.bridge {
            let node_attacher = Attacher::new(
                netlink.clone(),
                held.subnet,
                dataplane.mtu(),
                bridge,
                &opts.state_dir,
            )?;
            node_attacher.finish_releases().await;
            let _ = attacher.set(node_attacher);
        } else {
            info!(bridge = %opts.bridge, "the bridge is external: left to its consumer");
        }
    }
    subnet_file(held.subnet).write(&opts.subnet_file)?;
    {
        let mut st = lock(&state);
        st.peers = Some(PeerTable::new(
            registry.subnets_prefix(),
            config.range.clone(),
        ));
        st.config = Some(config.clone());
    }
    // The table is still empty here, so there is nothing to withdraw.
    let _ = set_node(&state, &held, opts.subnet_lease_ttl);
    if let Err(err) = notify::notify("READY=1") {
        warn!(error = %format!("{err:#}"), "could not notify systemd");
    }
    info!(subnet = %held.subnet, file = %opts.subnet_file.display(), "ready");

    let (events_tx, events_rx) = mpsc::channel(64);
    let own_events = events_tx.clone();
    let (lost_tx, mut lost_rx) = mpsc::channel(1);
    let watcher = tokio::spawn(watch_peers(
        registry.clone(),
        state.clone(),
        events_tx,
        lost_tx,
    ));
    let consumer = match dataplane {
        Some(dataplane) => tokio::spawn(node::reconcile_loop(dataplane, state.clone(), events_rx)),
        None => tokio::spawn(node::log_only(events_rx)),
    };
    let _tasks = AbortOnDrop(vec![watcher, consumer]);

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
        };
        let lost = lost
            || {
                match registry.keep_alive(held.etcd_lease).await {
                    Ok(remaining) if remaining > 0 => {
                        backoff.reset();
                        let remaining = Duration::from_secs(remaining.unsigned_abs());
                        lock(&state)
                            .node
                            .iter_mut()
                            .for_each(|n| n.expires_at = Some(SystemTime::now() + remaining));
                        renew_in = remaining
                            .saturating_sub(margin)
                            .max(Duration::from_millis(500));
                        debug!(subnet = %held.subnet, ttl = ?remaining, "renewed the subnet lease");
                        false
                    }
                    Ok(_) => true,
                    Err(err) => {
                        renew_in = backoff.next();
                        warn!(error = %format!("{err:#}"), retry_in = ?renew_in, "could not renew the subnet lease");
                        false
                    }
                }
            };
        if lost {
            warn!(subnet = %held.subnet, "the subnet lease is gone from etcd; acquiring again");
            held = acquire_with_backoff(&registry, &state, &config, &attrs, Some(held.subnet), ttl)
                .await;
            subnet_file(held.subnet).write(&opts.subnet_file)?;
            let withdrawn = set_node(&state, &held, ttl);
            publish(&own_events, withdrawn, Vec::new()).await;
            info!(subnet = %held.subnet, "holding the subnet lease again");
            renew_in = ttl - margin;
        }
    }
}

/// Records the lease this node holds. Returns the peers withdrawn because
/// they overlap it (possible only after a re-acquisition to a new subnet).
fn set_node(state: &SharedState, held: &HeldLease, ttl: Duration) -> Vec<LeaseEvent> {
    let mut st = lock(state);
    st.node = Some(NodeLease {
        lease: held.clone(),
        expires_at: (!held.is_reservation()).then(|| SystemTime::now() + ttl),
    });
    match st.peers.as_mut() {
        Some(peers) => peers.set_own(Some(held.subnet)),
        None => Vec::new(),
    }
}

/// Reads the config until it is valid; waits on a watch of the key between tries.
async fn wait_for_config(registry: &Registry, state: &SharedState) -> NetworkConfig {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let mut last_error = String::new();
    loop {
        let problem = match registry.get_config().await {
            Ok(stored) => {
                lock(state).etcd_reachable = true;
                match stored.value.as_deref().map(NetworkConfig::parse) {
                    Some(Ok(config)) => return config,
                    Some(Err(err)) => {
                        let problem = format!(
                            "invalid network config at {}/config: {err}",
                            registry.prefix()
                        );
                        report_once(&mut last_error, problem);
                        let _ = registry
                            .wait_config_change(stored.revision, Duration::from_secs(30))
                            .await;
                        continue;
                    }
                    None => {
                        let problem = format!(
                            "waiting for the network config at {}/config",
                            registry.prefix()
                        );
                        report_once(&mut last_error, problem);
                        let _ = registry
                            .wait_config_change(stored.revision, Duration::from_secs(30))
                            .await;
                        continue;
                    }
                }
            }
            Err(err) => format!("etcd unreachable: {err:#}"),
        };
        lock(state).etcd_reachable = false;
        report_once(&mut last_error, problem);
        tokio::time::sleep(backoff.next()).await;
    }
}

async fn acquire_with_backoff(
    registry: &Registry,
    state: &SharedState,
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
                lock(state).etcd_reachable = true;
                return held;
            }
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

/// Keeps the peer table current: list, then watch from the listing's
/// revision. A broken stream is resumed from the last revision seen, so an
/// etcd blip costs no re-list; a compaction that overtook us forces a re-list,
/// and the table turns it into the difference.
async fn watch_peers(
    registry: Registry,
    state: SharedState,
    events: mpsc::Sender<Vec<LeaseEvent>>,
    lost: mpsc::Sender<()>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut resume_from: Option<i64> = None;
    loop {
        let from = match resume_from {
            Some(revision) => revision,
            None => match relist(&registry, &state, &events, &lost).await {
                Ok(revision) => revision + 1,
                Err(err) => {
                    lock(&state).etcd_reachable = false;
                    warn!(error = %format!("{err:#}"), "could not list subnet leases");
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            },
        };
        let mut next = from;
        match follow(&registry, &state, &events, &lost, &mut next, &mut backoff).await {
            Ok(WatchEnd::Compacted) => resume_from = None,
            Err(err) => {
                lock(&state).etcd_reachable = false;
                warn!(error = %format!("{err:#}"), resume_from = next, "subnet watch broke");
                resume_from = Some(next);
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

/// Lists every lease and replaces the table with it; returns the revision.
async fn relist(
    registry: &Registry,
    state: &SharedState,
    events: &mpsc::Sender<Vec<LeaseEvent>>,
    lost: &mpsc::Sender<()>,
) -> Result<i64> {
    let (listing, revision) = registry.list_leases().await?;
    lock(state).etcd_reachable = true;
    if own_lease_missing(state, registry, &listing) {
        let _ = lost.try_send(());
    }
    let (changes, rejected, peers) = {
        let mut st = lock(state);
        st.peers_listed = true;
        match st.peers.as_mut() {
            Some(table) => {
                let (changes, rejected) = table.resync(listing);
                (changes, rejected, table.len())
            }
            None => (Vec::new(), Vec::new(), 0),
        }
    };
    info!(peers, revision, "listed subnet leases");
    publish(events, changes, rejected).await;
    Ok(revision)
}

/// Why a watch ended without an error.
enum WatchEnd {
    /// The start revision was compacted away: re-list.
    Compacted,
}

/// Follows the watch from `*next`, advancing it past every event applied.
async fn follow(
    registry: &Registry,
    state: &SharedState,
    events: &mpsc::Sender<Vec<LeaseEvent>>,
    lost: &mpsc::Sender<()>,
    next: &mut i64,
    backoff: &mut Backoff,
) -> Result<WatchEnd> {
    let mut stream = registry.watch_subnets(*next).await?;
    while let Some(resp) = stream.message().await.context("reading the subnet watch")? {
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
            let mut st = lock(state);
            if !st.etcd_reachable {
                info!("etcd is reachable again; watching subnet leases");
            }
            st.etcd_reachable = true;
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
        if own_lease_lost_in(state, registry, &changes) {
            let _ = lost.try_send(());
        }
        let (changes, rejected) = match lock(state).peers.as_mut() {
            Some(table) => table.apply(changes),
            None => (Vec::new(), Vec::new()),
        };
        publish(events, changes, rejected).await;
    }
    bail!("etcd closed the subnet watch")
}

/// The key and value of this node's lease, if it holds one.
fn own_key_and_ip(state: &SharedState, registry: &Registry) -> Option<(String, Ipv4Addr)> {
    let st = lock(state);
    let node = st.node.as_ref()?;
    Some((
        lease_key(registry.prefix(), &node.lease.subnet),
        node.lease.attrs.public_ip,
    ))
}

fn own_lease_missing(state: &SharedState, registry: &Registry, listing: &[RawLease]) -> bool {
    let Some((key, ip)) = own_key_and_ip(state, registry) else {
        return false;
    };
    !listing
        .iter()
        .any(|raw| raw.key == key.as_bytes() && value_has_ip(&raw.value, ip))
}

fn own_lease_lost_in(state: &SharedState, registry: &Registry, changes: &[RawChange]) -> bool {
    let Some((key, ip)) = own_key_and_ip(state, registry) else {
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

async fn publish(
    events: &mpsc::Sender<Vec<LeaseEvent>>,
    changes: Vec<LeaseEvent>,
    rejected: Vec<Rejected>,
) {
    for Rejected { key, reason } in rejected {
        warn!(key, %reason, "ignoring subnet lease");
    }
    if !changes.is_empty() {
        let _ = events.send(changes).await;
    }
}

/// Aborts background tasks when the node loop ends, so none outlives it.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
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
