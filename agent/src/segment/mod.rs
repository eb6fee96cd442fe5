//! The weave-style flat L2 segment's control plane: keeps this host's
//! segment devices up, keeps in touch with the peers (etcd's lease holders
//! and `connect`'s hosts) over the peer port, programs the VXLAN FDB towards
//! the live ones, and registers the segment's addresses fabric-wide.
//!
//! The peer book and the wire format are pure (`book`, `wire`); the
//! talking happens here and in `server`.

pub mod addresses;
pub mod book;
pub mod manual;
pub mod server;
pub mod wire;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use tartan_dataplane::{desired_l2_fdb, L2SegmentSpec, Netlink, L2_SEGMENT_BRIDGE};
use tartan_proto::v1::peer_client::PeerClient;
use tartan_proto::v1::{
    SegmentClaim as PbClaim, SegmentConflict as PbConflict, SegmentPeer as PbPeer,
    SegmentStatus as PbStatus,
};
use tokio::sync::{mpsc, watch, Notify};
use tracing::{debug, info, warn};

use crate::control::node_state::NodeState;
use crate::networks::driver::container_mac;
use crate::networks::pipework::{self, Pipework, Record, Target};
use addresses::AddressRegistry;
use book::{Claim, Conflict, LinkState, PeerBook, Timing};
use manual::ManualPeers;
use wire::PeerSecret;

/// The default range of automatic segment addresses: weave's.
pub const DEFAULT_RANGE: &str = "10.32.0.0/12";

/// How long one exchange with a peer may take, connection included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How often the loop looks again with nothing to wake it: timeouts to
/// notice, and devices removed by hand to make again.
const TICK: Duration = Duration::from_secs(1);
/// How often this host's etcd claims are matched against its attachments.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Why an exchange with a peer failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFailure {
    /// No connection, or no answer in time: worth retrying.
    Unreachable(String),
    /// It answered no, or its answer failed our checks (a secret that does
    /// not match): retrying will not change it.
    Refused(String),
}

impl std::fmt::Display for PeerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerFailure::Unreachable(why) => write!(f, "not reached: {why}"),
            PeerFailure::Refused(why) => write!(f, "refused: {why}"),
        }
    }
}

/// Everything the segment is told at start.
#[derive(Debug, Clone)]
pub struct SegmentOptions {
    pub public_ip: Ipv4Addr,
    /// The underlay interface's index and MTU; None: no segment here.
    pub underlay: Option<(u32, u32)>,
    /// Where the peer service listens (all addresses), and what peers are told.
    pub peer_port: u16,
    pub secret: Option<PeerSecret>,
    /// Automatic addresses come from here.
    pub range: Ipv4Network,
    pub timing: Timing,
    pub state_dir: PathBuf,
    /// Another agent in this network namespace keeps the segment: why this
    /// one has none.
    pub kept_elsewhere: Option<String>,
}

/// A weave-form attachment onto the segment, as asked.
#[derive(Debug, Clone)]
pub struct SegmentRequest {
    pub target: Target,
    /// None: an automatic one from the range.
    pub address: Option<Ipv4Network>,
    pub ifname: Option<String>,
    pub mac: Option<String>,
}

/// The segment's health, for status.
#[derive(Debug, Clone, Default)]
struct Health {
    up: bool,
    error: String,
    conflicts: Vec<Conflict>,
}

/// What `connect` found for each host it was given.
#[derive(Debug, Clone)]
pub struct Connected {
    pub address: SocketAddrV4,
    /// None: connected; Some: why not yet (it is kept and retried).
    pub pending: Option<String>,
}

pub struct Segment {
    netlink: Netlink,
    opts: SegmentOptions,
    spec: Option<L2SegmentSpec>,
    registry: Arc<dyn AddressRegistry>,
    pipework: Arc<Pipework>,
    book: Mutex<PeerBook>,
    health: watch::Sender<Health>,
    wake: Notify,
    /// One segment attachment at a time on this host: an address checked
    /// free stays free until it is recorded.
    attaching: tokio::sync::Mutex<()>,
    manual: ManualPeers,
}

/// The etcd store, when there is one: the segment's addresses are registered there.
pub struct Store {
    pub client: etcd_client::Client,
    pub tartan_prefix: String,
}

impl Segment {
    pub fn new(
        netlink: Netlink,
        opts: SegmentOptions,
        pipework: Arc<Pipework>,
        store: Option<Store>,
    ) -> Result<Arc<Segment>> {
        let local = SocketAddrV4::new(opts.public_ip, opts.peer_port);
        let mut book = PeerBook::new(local, opts.timing);
        let manual = ManualPeers::in_state_dir(&opts.state_dir);
        let now = Instant::now();
        for peer in manual.load()? {
            book.add_manual(peer, now);
        }
        let registry: Arc<dyn AddressRegistry> = match store {
            Some(store) => Arc::new(addresses::etcd::EtcdAddresses::new(
                store.client,
                &store.tartan_prefix,
            )),
            None => Arc::new(addresses::peers::PeerAddresses),
        };
        let spec = opts
            .underlay
            .map(|(index, mtu)| L2SegmentSpec::new(opts.public_ip, index, mtu));
        let health = Health {
            error: opts.kept_elsewhere.clone().unwrap_or_default(),
            ..Health::default()
        };
        Ok(Arc::new(Segment {
            netlink,
            spec,
            registry,
            pipework,
            book: Mutex::new(book),
            health: watch::Sender::new(health),
            wake: Notify::new(),
            attaching: tokio::sync::Mutex::new(()),
            manual,
            opts,
        }))
    }

    fn book(&self) -> MutexGuard<'_, PeerBook> {
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn local(&self) -> SocketAddrV4 {
        self.book().local()
    }

    /// Where automatic addresses come from.
    pub fn range(&self) -> Ipv4Network {
        self.opts.range
    }

    pub fn secret(&self) -> Option<&PeerSecret> {
        self.opts.secret.as_ref()
    }

    /// This host's claims: its segment attachments, with their owner keys.
    pub async fn local_claims(&self) -> Vec<(Claim, String)> {
        let host = self.opts.public_ip;
        self.pipework
            .records()
            .await
            .iter()
            .filter_map(|record| claim_of(record, host).map(|c| (c, record.owner.clone())))
            .collect()
    }

    /// This host's claims, without their owners: what peers are told.
    pub async fn own_claims(&self) -> Vec<Claim> {
        self.local_claims()
            .await
            .into_iter()
            .map(|(claim, _)| claim)
            .collect()
    }

    /// Makes or repairs the bridge and VXLAN device; records why not.
    async fn ensure_up(&self) -> Option<u32> {
        let result = match &self.spec {
            Some(spec) => self.netlink.ensure_l2_segment(spec).await.map_err(anyhow::Error::from),
            None => Err(anyhow!(
                "the L2 segment needs an underlay interface; pass --iface or --public-ip of an interface"
            )),
        };
        match result {
            Ok(devices) => {
                self.health.send_if_modified(|h| {
                    let changed = !h.up;
                    h.up = true;
                    h.error.clear();
                    changed
                });
                Some(devices.vxlan_index)
            }
            Err(err) => {
                let error = format!("{err:#}");
                self.health.send_if_modified(|h| {
                    if h.error == error {
                        return false;
                    }
                    warn!(error = %error, "the L2 segment is not up");
                    h.up = false;
                    h.error = error.clone();
                    true
                });
                None
            }
        }
    }

    /// Brings the segment up once, before its attachments are made again.
    pub async fn start(&self) {
        info!(
            local = %self.local(),
            range = %self.opts.range,
            addresses = self.registry.kind(),
            "starting the L2 segment"
        );
        self.ensure_up().await;
    }

    /// Keeps the segment going until the agent stops. `node` carries the
    /// etcd leases whose holders are peers (None in peer mode).
    pub async fn run(self: Arc<Self>, mut node: Option<watch::Receiver<NodeState>>) {
        let (done_tx, mut done_rx) =
            mpsc::channel::<(SocketAddrV4, Result<Vec<Claim>, PeerFailure>)>(64);
        let mut last_sweep = Instant::now();
        loop {
            if let Some(node) = &mut node {
                let hosts = etcd_peers(&node.borrow_and_update(), self.opts.peer_port);
                if let Some(hosts) = hosts {
                    self.book().set_etcd(&hosts, Instant::now());
                }
            }
            let due = self.book().take_due(Instant::now());
            if !due.is_empty() {
                let claims: Vec<Claim> = self.own_claims().await;
                for peer in due {
                    let this = self.clone();
                    let claims = claims.clone();
                    let done = done_tx.clone();
                    tokio::spawn(async move {
                        let outcome = this.exchange(peer, &claims).await;
                        // Closed only when the loop has ended.
                        let _ = done.send((peer, outcome)).await;
                    });
                }
            }
            self.reconcile().await;
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                self.sweep().await;
            }
            let node_changed = async {
                match &mut node {
                    Some(node) => {
                        if node.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            // The next peer due, or a tick for timeouts and repairs.
            let next_due = self.book().next_due();
            let wait = next_due.map_or(TICK, |due| {
                due.saturating_duration_since(Instant::now()).min(TICK)
            });
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = node_changed => {}
                Some((peer, outcome)) = done_rx.recv() => self.record(peer, &outcome),
            }
        }
    }

    /// Notes how an exchange went; a change of state is logged once.
    fn record(&self, peer: SocketAddrV4, outcome: &Result<Vec<Claim>, PeerFailure>) {
        let mut book = self.book();
        let before = book
            .view()
            .into_iter()
            .find(|p| p.address == peer)
            .map(|p| p.state);
        match outcome {
            Ok(claims) => {
                book.heard(peer, claims.clone(), Instant::now(), SystemTime::now());
                if before != Some(LinkState::Connected) {
                    info!(%peer, "segment peer connected");
                }
            }
            Err(err) => {
                let reason = err.to_string();
                if before != Some(LinkState::Retrying(reason.clone())) {
                    warn!(%peer, error = %reason, "segment peer not reached; retrying with back-off");
                }
                book.failed(peer, reason, Instant::now());
            }
        }
    }

    /// One exchange with `peer`: our claims for theirs.
    async fn exchange(
        &self,
        peer: SocketAddrV4,
        claims: &[Claim],
    ) -> Result<Vec<Claim>, PeerFailure> {
        let (local, add_back) = {
            let book = self.book();
            (book.local(), book.is_manual(peer))
        };
        let hello = wire::hello(local, add_back, claims, self.secret());
        let answer = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            let mut client = peer_client(peer).await?;
            client
                .exchange(hello)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|status| match status.code() {
                    tonic::Code::PermissionDenied | tonic::Code::InvalidArgument => {
                        PeerFailure::Refused(status.message().to_string())
                    }
                    _ => PeerFailure::Unreachable(status.message().to_string()),
                })
        })
        .await
        .map_err(|_| {
            PeerFailure::Unreachable(format!(
                "no answer within {}",
                humantime::format_duration(EXCHANGE_TIMEOUT)
            ))
        })??;
        wire::verify(&answer, self.secret(), SystemTime::now())
            .map_err(|err| PeerFailure::Refused(format!("its answer: {err:#}")))?;
        let (claims, bad) = wire::claims_from_proto(&answer.claims, *peer.ip());
        for problem in bad {
            warn!(%peer, %problem, "ignoring a segment claim");
        }
        Ok(claims)
    }

    /// Tells `peer` this host dropped it; best effort.
    async fn say_goodbye(&self, peer: SocketAddrV4) {
        let hello = wire::hello(self.local(), false, &[], self.secret());
        let result = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
            let mut client = peer_client(peer).await?;
            client
                .goodbye(hello)
                .await
                .map_err(|status| PeerFailure::Refused(status.message().to_string()))
        })
        .await;
        match result {
            Ok(Ok(_)) => debug!(%peer, "told the forgotten peer"),
            Ok(Err(err)) => {
                warn!(%peer, error = %err, "could not tell the forgotten peer; it drops this host when it next fails to reach it")
            }
            Err(_) => warn!(%peer, "the forgotten peer did not answer the goodbye"),
        }
    }

    /// The FDB towards the live peers, the remote claims for the registry,
    /// and the conflicts, all from the book as it is now.
    async fn reconcile(&self) {
        let vxlan = self.ensure_up().await;
        let local: Vec<Claim> = self.own_claims().await;
        let (live, known, conflicts) = {
            let book = self.book();
            let now = Instant::now();
            (book.live(now), book.known_macs(now), book.conflicts(&local))
        };
        self.health.send_if_modified(|h| {
            if h.conflicts == conflicts {
                return false;
            }
            for conflict in conflicts.iter().filter(|c| !h.conflicts.contains(c)) {
                warn!(address = %conflict.address, holders = %conflict.holders.join(", "), "address conflict on the L2 segment: {conflict}");
            }
            h.conflicts = conflicts;
            true
        });
        let Some(vxlan) = vxlan else { return };
        let desired = desired_l2_fdb(self.opts.public_ip, &live, &known);
        match self.netlink.apply_l2_fdb(vxlan, &desired).await {
            Ok(changes) if !changes.is_empty() => {
                debug!(
                    added = changes.add.len(),
                    removed = changes.remove.len(),
                    "segment FDB updated"
                );
            }
            Ok(_) => {}
            Err(err) => warn!(error = %err, "could not update the segment's FDB"),
        }
    }

    /// Brings the registry to this host's attachments: registers what is
    /// not (a store that lost it), and frees the claims of attachments
    /// that went without a detach. A claim someone else took meanwhile is
    /// a conflict, logged here.
    async fn sweep(&self) {
        let local = self.local_claims().await;
        for (claim, owner) in &local {
            if let Err(err) = self.registry.claim(claim, owner).await {
                warn!(address = %claim.address.ip(), error = %format!("{err:#}"), "a segment address of this host is registered to another holder");
            }
        }
        let kept: Vec<(Ipv4Addr, String)> = local
            .into_iter()
            .map(|(claim, owner)| (claim.address.ip(), owner))
            .collect();
        match self.registry.sweep(self.opts.public_ip, &kept).await {
            Ok(swept) => {
                for address in swept {
                    info!(%address, "freed the segment address of a container that went");
                }
            }
            Err(err) => {
                debug!(error = %format!("{err:#}"), "could not sweep the segment's addresses")
            }
        }
    }

    /// A peer called: `hello` is verified by the caller.
    pub fn heard_from(&self, peer: SocketAddrV4, add_back: bool, claims: Vec<Claim>) -> Result<()> {
        let mut book = self.book();
        if add_back && !book.is_manual(peer) && peer != book.local() {
            book.add_manual(peer, Instant::now());
            self.manual.save(&book.manual())?;
            info!(%peer, "segment peer connected to this host; keeping it");
        }
        if book.contains(peer) {
            book.heard(peer, claims, Instant::now(), SystemTime::now());
        }
        drop(book);
        self.wake.notify_one();
        Ok(())
    }

    /// A peer forgot this host.
    pub fn forgotten_by(&self, peer: SocketAddrV4) -> Result<()> {
        let mut book = self.book();
        if book.forget(peer) {
            self.manual.save(&book.manual())?;
            info!(%peer, "segment peer forgot this host; dropped it");
        }
        drop(book);
        self.wake.notify_one();
        Ok(())
    }

    /// Resolves `HOST[:PORT]`s; any bad one fails the lot.
    async fn resolve_all(&self, hosts: &[String]) -> Result<Vec<SocketAddrV4>> {
        let mut resolved = Vec::new();
        for text in hosts {
            let (host, port) = wire::split_peer(text)?;
            let address = match host.parse::<Ipv4Addr>() {
                Ok(ip) => SocketAddrV4::new(ip, port),
                Err(_) => {
                    let found = tokio::time::timeout(
                        Duration::from_secs(5),
                        tokio::net::lookup_host((host.as_str(), port)),
                    )
                    .await
                    .map_err(|_| anyhow!("cannot resolve peer {host:?}: no answer within 5s"))?
                    .with_context(|| format!("cannot resolve peer {host:?}"))?;
                    found
                        .filter_map(|a| match a {
                            std::net::SocketAddr::V4(v4) => Some(v4),
                            std::net::SocketAddr::V6(_) => None,
                        })
                        .next()
                        .ok_or_else(|| anyhow!("peer {host:?} has no IPv4 address"))?
                }
            };
            let ip = address.ip();
            if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
                bail!("bad peer address {text:?}: {ip} is no host");
            }
            if address == self.local() || (*ip == self.opts.public_ip) {
                bail!("{text} is this host");
            }
            resolved.push(address);
        }
        Ok(resolved)
    }

    /// `connect [--replace] HOST…`: adds them, tries each at once, and says
    /// how it went. A host that refuses this one (a secret that does not
    /// match) is dropped again; one not reached is kept and retried.
    pub async fn connect(&self, hosts: &[String], replace: bool) -> Result<Vec<Connected>> {
        let wanted = self.resolve_all(hosts).await?;
        let (added, dropped) = {
            let mut book = self.book();
            let now = Instant::now();
            let before: BTreeSet<SocketAddrV4> = book.manual().into_iter().collect();
            let dropped = if replace {
                book.replace_manual(&wanted.iter().copied().collect(), now)
            } else {
                for address in &wanted {
                    book.add_manual(*address, now);
                }
                Vec::new()
            };
            let added: Vec<SocketAddrV4> = wanted
                .iter()
                .copied()
                .filter(|a| !before.contains(a))
                .collect();
            self.manual.save(&book.manual())?;
            (added, dropped)
        };
        for peer in dropped {
            info!(%peer, "segment peer replaced");
            self.say_goodbye(peer).await;
        }
        let claims: Vec<Claim> = self.own_claims().await;
        let tries = wanted.iter().map(|peer| {
            let claims = claims.clone();
            async move { (*peer, self.exchange(*peer, &claims).await) }
        });
        let outcomes = futures::future::join_all(tries).await;
        let mut report = Vec::new();
        let mut refused = Vec::new();
        for (peer, outcome) in outcomes {
            self.record(peer, &outcome);
            match outcome {
                // A refusal will not change by itself: a new peer that
                // refuses is not kept half-connected.
                Err(PeerFailure::Refused(why)) if added.contains(&peer) => {
                    refused.push((peer, why));
                }
                Err(failure) => report.push(Connected {
                    address: peer,
                    pending: Some(failure.to_string()),
                }),
                Ok(_) => report.push(Connected {
                    address: peer,
                    pending: None,
                }),
            }
        }
        if !refused.is_empty() {
            let mut book = self.book();
            for (peer, _) in &refused {
                book.forget(*peer);
            }
            self.manual.save(&book.manual())?;
            drop(book);
            self.wake.notify_one();
            let lines: Vec<String> = refused
                .iter()
                .map(|(peer, why)| format!("{peer} refused this host: {why}"))
                .collect();
            bail!("{}", lines.join("; "));
        }
        self.wake.notify_one();
        Ok(report)
    }

    /// `forget HOST…`: drops them from the manual peers and tells them.
    pub async fn forget(&self, hosts: &[String]) -> Result<Vec<SocketAddrV4>> {
        let wanted = self.resolve_all(hosts).await?;
        {
            let book = self.book();
            if let Some(unknown) = wanted.iter().find(|a| !book.is_manual(**a)) {
                bail!("{unknown} is not a manual peer of this host (see tartan status)");
            }
        }
        {
            let mut book = self.book();
            for address in &wanted {
                book.forget(*address);
            }
            self.manual.save(&book.manual())?;
        }
        self.wake.notify_one();
        for peer in &wanted {
            info!(peer = %peer, "segment peer forgotten");
            self.say_goodbye(*peer).await;
        }
        Ok(wanted)
    }

    /// Attaches a namespace to the segment: the address registered
    /// fabric-wide first (or an automatic one), then plugged in; a failure
    /// gives the address back.
    pub async fn attach(&self, request: &SegmentRequest) -> Result<pipework::Attached> {
        let _one_at_a_time = self.attaching.lock().await;
        if !self.health.borrow().up {
            let error = self.health.borrow().error.clone();
            bail!(
                "the L2 segment is not up on this host{}",
                if error.is_empty() {
                    String::new()
                } else {
                    format!(": {error}")
                }
            );
        }
        let ifname = request
            .ifname
            .clone()
            .unwrap_or_else(|| tartan_dataplane::L2_SEGMENT_IFNAME.to_string());
        let owner = request.target.key.clone();
        let local = self.local_claims().await;
        // The same interface again: the same attachment, whatever address
        // was automatic the first time.
        let records = self.pipework.records().await;
        if let Some(have) = records.iter().find(|r| {
            r.owner == owner && r.ifname == ifname && r.host_interface == L2_SEGMENT_BRIDGE
        }) {
            if request.address.is_none() || request.address == have.address {
                return self
                    .plug(request, &ifname, have.address, have.mac.clone())
                    .await;
            }
        }
        let host = self.opts.public_ip;
        let make = |address: Ipv4Network| Claim {
            address,
            mac: match &request.mac {
                Some(text) => tartan_dataplane::parse_mac(text)
                    .unwrap_or_else(|_| container_mac(address.ip())),
                None => container_mac(address.ip()),
            },
            container: request.target.shown.clone(),
            host,
        };
        if let Some(text) = &request.mac {
            tartan_dataplane::parse_mac(text)?;
        }
        // Every claim this host knows of: its own, and its peers' (those
        // of hosts outside the etcd registry's reach, too).
        let remote: Vec<Claim> = self.book().remote_claims().cloned().collect();
        let known = local
            .iter()
            .filter(|(_, o)| *o != owner)
            .map(|(c, _)| c)
            .chain(remote.iter());
        let claim = match request.address {
            Some(address) => {
                if let Some(other) = known.clone().find(|c| c.address.ip() == address.ip()) {
                    bail!(
                        "{} is already on the L2 segment: {} holds it",
                        address.ip(),
                        other.holder()
                    );
                }
                let claim = make(address);
                self.registry.claim(&claim, &owner).await?;
                claim
            }
            None => {
                let avoid: BTreeSet<Ipv4Addr> = known.map(|c| c.address.ip()).collect();
                self.registry
                    .allocate(self.opts.range, &avoid, &owner, &make)
                    .await?
            }
        };
        let mac = Some(
            request
                .mac
                .clone()
                .unwrap_or_else(|| tartan_dataplane::format_mac(&claim.mac)),
        );
        match self.plug(request, &ifname, Some(claim.address), mac).await {
            Ok(attached) => {
                self.book().all_due_now(Instant::now());
                self.wake.notify_one();
                Ok(attached)
            }
            Err(err) => match self.registry.release(claim.address.ip(), &owner).await {
                Ok(()) => Err(err),
                Err(undo) => Err(err.context(format!(
                    "and {} stays registered: {undo:#}",
                    claim.address.ip()
                ))),
            },
        }
    }

    async fn plug(
        &self,
        request: &SegmentRequest,
        ifname: &str,
        address: Option<Ipv4Network>,
        mac: Option<String>,
    ) -> Result<pipework::Attached> {
        self.pipework
            .attach(&pipework::Request {
                host_interface: L2_SEGMENT_BRIDGE.to_string(),
                target: request.target.clone(),
                ifname: Some(ifname.to_string()),
                host_ifname: None,
                address: address.map_or_else(|| "0/0".to_string(), |a| a.to_string()),
                gateway: None,
                mac,
                vlan: None,
                host_shim: false,
            })
            .await
    }

    /// Gives back the registered addresses of detached segment attachments.
    pub async fn detached(&self, records: &[Record]) {
        for record in records {
            let Some(claim) = claim_of(record, self.opts.public_ip) else {
                continue;
            };
            if let Err(err) = self
                .registry
                .release(claim.address.ip(), &record.owner)
                .await
            {
                warn!(address = %claim.address.ip(), error = %format!("{err:#}"), "could not free a segment address; the sweep retries");
            }
        }
        self.book().all_due_now(Instant::now());
        self.wake.notify_one();
    }

    /// The segment as `status` shows it.
    pub async fn status(&self) -> PbStatus {
        let local: Vec<Claim> = self.own_claims().await;
        let health = self.health.borrow().clone();
        let peers = self.book().view();
        PbStatus {
            up: health.up,
            local: self.local().to_string(),
            range: self.opts.range.to_string(),
            peers: peers
                .into_iter()
                .map(|peer| {
                    let (state, error) = match peer.state {
                        LinkState::Connecting => ("connecting", String::new()),
                        LinkState::Connected => ("connected", String::new()),
                        LinkState::Retrying(why) => ("retrying", why),
                    };
                    PbPeer {
                        address: peer.address.to_string(),
                        source: peer
                            .sources
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        state: state.to_string(),
                        error,
                        last_heard_unix: peer
                            .last_heard
                            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
                        claims: u32::try_from(peer.claims).unwrap_or(u32::MAX),
                    }
                })
                .collect(),
            conflicts: health
                .conflicts
                .iter()
                .map(|c| PbConflict {
                    address: c.address.to_string(),
                    holders: c.holders.clone(),
                })
                .collect(),
            claims: local
                .iter()
                .map(wire::claim_to_proto)
                .collect::<Vec<PbClaim>>(),
            error: health.error,
        }
    }
}

/// A record's claim, if it is a segment attachment with an address.
fn claim_of(record: &Record, host: Ipv4Addr) -> Option<Claim> {
    if record.host_interface != L2_SEGMENT_BRIDGE {
        return None;
    }
    let address = record.address?;
    let mac = record
        .mac
        .as_deref()
        .and_then(|m| tartan_dataplane::parse_mac(m).ok())
        .unwrap_or_else(|| container_mac(address.ip()));
    Some(Claim {
        address,
        mac,
        container: record.container.clone(),
        host,
    })
}

/// The hosts holding leases, at the peer port; None before the first listing.
fn etcd_peers(node: &NodeState, port: u16) -> Option<BTreeSet<SocketAddrV4>> {
    let peers = node.peers.as_ref()?;
    Some(
        peers
            .iter()
            .map(|lease| SocketAddrV4::new(lease.attrs.public_ip, port))
            .collect(),
    )
}

async fn peer_client(
    peer: SocketAddrV4,
) -> Result<PeerClient<tonic::transport::Channel>, PeerFailure> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{peer}"))
        .map_err(|err| PeerFailure::Unreachable(err.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXCHANGE_TIMEOUT)
        .connect()
        .await
        .map_err(|err| {
            // The innermost cause says it: "Connection refused (os error 111)".
            let mut text = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                text = cause.to_string();
                source = cause.source();
            }
            PeerFailure::Unreachable(text)
        })?;
    Ok(PeerClient::new(channel))
}
