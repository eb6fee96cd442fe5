//! `tartan attach` / `tartan detach`: plugging a network namespace into the
//! node bridge with an address from the node subnet (weave's argument form).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tartan_dataplane::Netlink;

use crate::networks::driver::{container_mac, AttachStatus, AttachmentDriver, AttachmentSpec};
use crate::networks::drivers::bridge::BridgeDriver;
use tartan_ipam::HostAllocator;
use tokio::sync::Mutex;

/// Owner prefix of an address whose interface is still going away.
const RELEASING: &str = "releasing:";
/// How long the kernel may take to remove a dead namespace's interface
/// before it is deleted explicitly, and how long a request waits for such an address.
const RELEASE_WAIT: Duration = Duration::from_secs(3);

/// The interface name containers get.
const CONTAINER_IFNAME: &str = "eth0";

/// The owner key prefix naming another container side than eth0 (`-i`):
/// `if=eth1:netns:c1`. Interface names hold no `:`, so it splits cleanly.
const IFNAME_PREFIX: &str = "if=";

/// The owner key of `container`'s attachment as `ifname`.
pub fn interface_key(container: &ContainerRef, ifname: &str) -> String {
    if ifname == CONTAINER_IFNAME {
        container.key()
    } else {
        format!("{IFNAME_PREFIX}{ifname}:{}", container.key())
    }
}

/// An owner key's container side and the key of the container itself.
pub fn split_interface_key(key: &str) -> (&str, &str) {
    key.strip_prefix(IFNAME_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .unwrap_or((CONTAINER_IFNAME, key))
}

/// What the operator named as the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRef {
    /// A name `ip netns` knows (`/run/netns/NAME`).
    Netns(String),
    /// A network namespace file.
    Path(PathBuf),
    /// A process whose network namespace is meant.
    Pid(u32),
}

impl ContainerRef {
    pub fn parse(text: &str) -> Result<ContainerRef> {
        if text.is_empty() {
            bail!("empty container name");
        }
        if text.starts_with('/') {
            return Ok(ContainerRef::Path(PathBuf::from(text)));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(ContainerRef::Pid)
                .map_err(|_| anyhow!("{text} is not a process id"));
        }
        if text.contains('/') || text == "." || text == ".." {
            bail!("{text:?} is not a netns name");
        }
        Ok(ContainerRef::Netns(text.to_string()))
    }

    pub fn netns_path(&self) -> PathBuf {
        match self {
            ContainerRef::Netns(name) => Path::new("/run/netns").join(name),
            ContainerRef::Path(path) => path.clone(),
            ContainerRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }

    /// The reference an owner key was made from (`key`'s inverse); None for
    /// keys of other owners, such as the runtime's `container:ID`.
    pub fn from_key(key: &str) -> Option<ContainerRef> {
        let (_, key) = split_interface_key(key);
        let (kind, rest) = key.split_once(':')?;
        match kind {
            "netns" => Some(ContainerRef::Netns(rest.to_string())),
            "path" => Some(ContainerRef::Path(PathBuf::from(rest))),
            "pid" => rest.parse().ok().map(ContainerRef::Pid),
            _ => None,
        }
    }

    /// The reference as an operator types it (what `parse` takes back).
    pub fn to_arg(&self) -> String {
        match self {
            ContainerRef::Netns(name) => name.clone(),
            ContainerRef::Path(path) => path.display().to_string(),
            ContainerRef::Pid(pid) => pid.to_string(),
        }
    }

    /// The owner key of the container's address in the allocator.
    pub fn key(&self) -> String {
        match self {
            ContainerRef::Netns(name) => format!("netns:{name}"),
            ContainerRef::Path(path) => format!("path:{}", path.display()),
            ContainerRef::Pid(pid) => format!("pid:{pid}"),
        }
    }
}

/// The host end's name for an address owner key: derived from the key, so
/// that detach finds it again after an agent restart without any record.
pub fn host_ifname_for(key: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("vt{:010x}", hash & 0xff_ffff_ffff)
}

/// Parses the optional `ADDR[/LEN]` argument against the node subnet.
pub fn parse_requested(text: &str, subnet: &Ipv4Network) -> Result<Ipv4Addr> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| anyhow!("{text:?} is not an IPv4 address"))?;
    if let Some(len) = len {
        let len: u8 = len
            .parse()
            .map_err(|_| anyhow!("{text:?} has a bad prefix length"))?;
        if len != subnet.prefix() {
            bail!("{text} does not match the node subnet {subnet}");
        }
    }
    if !subnet.contains(addr) {
        bail!("{addr} is outside the node subnet {subnet}");
    }
    Ok(addr)
}

/// What `Attacher::attach` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// The address, with the subnet's prefix.
    pub address: Ipv4Network,
    /// The interface was there already, and nothing was changed.
    pub already: bool,
}

/// The agent's own and the host's namespaces take no attachment: it would
/// replace the host's default route.
pub fn refuse_own_namespace(netns: &Path, shown: &str) -> Result<()> {
    const HOST: &str = "/proc/1/ns/net";
    // PID 1's by its name too: the agent may be denied a look at PID 1's
    // namespace, and then no comparison can tell.
    if netns == Path::new(HOST) {
        bail!("{shown} is the host's network namespace: refusing to give it a container interface and default route");
    }
    for (own, what) in [
        ("/proc/self/ns/net", "the agent's own"),
        (HOST, "the host's"),
    ] {
        if same_file(netns, Path::new(own)) {
            bail!("{shown} is {what} network namespace: refusing to give it a container interface and default route");
        }
    }
    Ok(())
}

/// Attaches and detaches containers; owns the node subnet's address book.
/// One exists per subnet the node holds: when the subnet changes, a new one
/// takes over the namespaces and the old one is retired.
pub struct Attacher {
    netlink: Netlink,
    subnet: Ipv4Network,
    mtu: u32,
    /// How a namespace is plugged in: a veth onto the node bridge.
    driver: Arc<dyn AttachmentDriver>,
    allocations: Arc<Mutex<HostAllocator>>,
    store: PathBuf,
    /// Set once a successor owns the store: this book must not overwrite it.
    retired: Arc<AtomicBool>,
    /// Shared by an attacher and its successors: plugging holds it to read,
    /// the hand-over to a successor to write, so that nothing is half
    /// plugged on the old subnet while its bookings move.
    handover: Arc<tokio::sync::RwLock<()>>,
    /// The bookings of the different subnet an earlier run held, to move.
    previous: std::sync::Mutex<Vec<(Ipv4Addr, String)>>,
}

fn owners_of(book: &HostAllocator) -> Vec<(Ipv4Addr, String)> {
    book.allocations()
        .map(|(addr, owner)| (addr, owner.to_string()))
        .collect()
}

/// The attacher of the node's current subnet, as it changes; None while the
/// node holds no lease or keeps no bridge.
pub type AttacherWatch = tokio::sync::watch::Receiver<Option<Arc<Attacher>>>;

/// Saves the book unless a successor owns the store.
fn save_book(book: &HostAllocator, store: &Path, retired: &AtomicBool) -> Result<()> {
    if retired.load(Ordering::Acquire) {
        return Ok(());
    }
    book.save_unsynced(store)
        .context("saving container addresses")
}

impl Attacher {
    pub fn new(
        netlink: Netlink,
        subnet: Ipv4Network,
        mtu: u32,
        bridge: String,
        state_dir: &Path,
    ) -> Result<Attacher> {
        let store = state_dir.join("ipam.json");
        let mut previous = Vec::new();
        let allocations = match HostAllocator::load_or_new(&store, subnet) {
            Ok(allocator) => allocator,
            Err(tartan_ipam::IpamError::SubnetChanged { stored, .. }) => {
                // An earlier run held another subnet: what it booked is to be moved.
                match HostAllocator::load_or_new(&store, stored) {
                    Ok(old) => previous = owners_of(&old),
                    Err(err) => {
                        tracing::warn!(%stored, error = %err, "could not read the previous subnet's addresses");
                    }
                }
                tracing::warn!(%stored, %subnet, booked = previous.len(), "the saved container addresses are of another subnet: what they belong to moves to this one");
                HostAllocator::new(subnet)?
            }
            Err(err) => return Err(err).context("loading container addresses"),
        };
        Ok(Attacher {
            driver: Arc::new(BridgeDriver::new(netlink.clone(), bridge)),
            netlink,
            subnet,
            mtu,
            allocations: Arc::new(Mutex::new(allocations)),
            store,
            retired: Arc::default(),
            handover: Arc::default(),
            previous: std::sync::Mutex::new(previous),
        })
    }

    /// A fresh, empty book for `subnet` that takes this one's place; it
    /// owns the store from its first booking on.
    pub fn successor(&self, subnet: Ipv4Network) -> Result<Attacher> {
        Ok(Attacher {
            netlink: self.netlink.clone(),
            subnet,
            mtu: self.mtu,
            driver: self.driver.clone(),
            allocations: Arc::new(Mutex::new(HostAllocator::new(subnet)?)),
            store: self.store.clone(),
            retired: Arc::default(),
            handover: self.handover.clone(),
            previous: std::sync::Mutex::default(),
        })
    }

    /// Held while a booking is made and plugged in, so that a hand-over to
    /// a successor waits for it (and it for the hand-over).
    pub async fn hold(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.handover.clone().read_owned().await
    }

    /// Held by the hand-over to a successor.
    pub async fn hold_for_handover(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.handover.clone().write_owned().await
    }

    /// A retired book takes no more changes: its successor has the bookings.
    fn check_current(&self) -> Result<()> {
        if self.retired.load(Ordering::Acquire) {
            bail!("the node's subnet just changed; try again");
        }
        Ok(())
    }

    /// What an earlier run booked on the subnet it held, when that differs
    /// from this one's; for `adopt_attached`. Empty after the first call.
    pub fn take_previous(&self) -> Vec<(Ipv4Addr, String)> {
        std::mem::take(
            &mut self
                .previous
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Every booking: (address, owner key).
    pub async fn bookings(&self) -> Vec<(Ipv4Addr, String)> {
        owners_of(&*self.allocations.lock().await)
    }

    /// Moves the namespaces `tartan attach` plugged in on a previous subnet
    /// (`owners`: its bookings) to this one: each gets a new address, in
    /// place of its old interface. Namespaces that are gone are dropped;
    /// other owners' bookings (containers') are left to them. Returns each
    /// move made as (who, old address, new address), and the failures.
    pub async fn adopt_attached(
        &self,
        owners: Vec<(Ipv4Addr, String)>,
    ) -> (Vec<(String, Ipv4Addr, Ipv4Network)>, Vec<anyhow::Error>) {
        let mut moved = Vec::new();
        let mut errors = Vec::new();
        for (old_addr, key) in owners {
            let Some(container) = ContainerRef::from_key(&key) else {
                continue;
            };
            let path = container.netns_path();
            if !path.exists() {
                tracing::info!(container = %describe(&container), "not moving a namespace that is gone");
                continue;
            }
            // A pid reused by a process of the agent's own namespace would
            // have the host's network reconfigured.
            if same_file(&path, Path::new("/proc/self/ns/net")) {
                tracing::warn!(container = %describe(&container), "not moving: it now names the agent's own network namespace");
                continue;
            }
            let result = async {
                let address = self.reserve(&key, None, None).await?;
                if let Err(err) = self.plug(&key, path).await {
                    if let Err(undo) = self.release(&key).await {
                        tracing::warn!(key = %key, error = %format!("{undo:#}"), "could not free an address after a failed move");
                    }
                    return Err(err);
                }
                Ok(address)
            }
            .await;
            match result {
                Ok(address) => moved.push((describe(&container), old_addr, address)),
                Err(err) => errors.push(err.context(format!("moving {}", describe(&container)))),
            }
        }
        (moved, errors)
    }

    /// Writes the book now (a successor's store holds its predecessor's until then).
    pub async fn persist(&self) -> Result<()> {
        save_book(&*self.allocations.lock().await, &self.store, &self.retired)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// What `tartan attach` plugged in: (the reference as typed, address,
    /// host interface, container side).
    pub async fn attachments(&self) -> Vec<(String, Ipv4Network, String, String)> {
        let prefix = self.subnet.prefix();
        self.bookings()
            .await
            .into_iter()
            .filter_map(|(addr, key)| {
                let container = ContainerRef::from_key(&key)?;
                let address = Ipv4Network::new(addr, prefix).ok()?;
                let (ifname, _) = split_interface_key(&key);
                Some((
                    container.to_arg(),
                    address,
                    host_ifname_for(&key),
                    ifname.to_string(),
                ))
            })
            .collect()
    }

    /// Hands the store to a successor: from now on this book is only read.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub fn subnet(&self) -> Ipv4Network {
        self.subnet
    }

    /// Plugs the container in as `ifname`. The same request again (no
    /// address, or the one it has) changes nothing and says so; another
    /// address for an interface it has is refused.
    pub async fn attach(
        &self,
        container: &ContainerRef,
        requested: Option<&str>,
        ifname: &str,
    ) -> Result<Attached> {
        tartan_dataplane::check_ifname(ifname)?;
        let path = container.netns_path();
        refuse_own_namespace(&path, &describe(container))?;
        if !path.exists() {
            bail!(
                "no network namespace at {} (from {container:?})",
                path.display()
            );
        }
        let key = interface_key(container, ifname);
        let _hold = self.hold().await;
        if let Some(addr) = self.address_of(&key).await {
            let address = Ipv4Network::new(addr, self.subnet.prefix())?;
            if let Some(text) = requested {
                let wanted = parse_requested(text, &self.subnet)?;
                if wanted != addr {
                    bail!(
                        "{} is already attached as {ifname} with {address}: detach it before asking for {wanted}",
                        describe(container)
                    );
                }
            }
            return Ok(Attached {
                address,
                already: true,
            });
        }
        let address = self.reserve(&key, requested, None).await?;
        if let Err(err) = self.plug(&key, path).await {
            if let Err(undo) = self.release(&key).await {
                return Err(crate::teardown::and_undo(err, undo));
            }
            return Err(err);
        }
        Ok(Attached {
            address,
            already: false,
        })
    }

    /// Unplugs the container (only its `ifname`, when given) and frees
    /// the addresses. Returns the addresses it had.
    pub async fn detach(
        &self,
        container: &ContainerRef,
        ifname: Option<&str>,
    ) -> Result<Vec<Ipv4Addr>> {
        let _hold = self.hold().await;
        let keys = match ifname {
            Some(ifname) => vec![interface_key(container, ifname)],
            None => self.keys_of(container).await,
        };
        let mut freed = Vec::new();
        for key in keys {
            if let Some(addr) = self.release(&key).await? {
                freed.push(addr);
            }
        }
        if freed.is_empty() {
            bail!("{} is not attached", describe(container));
        }
        Ok(freed)
    }

    /// The owner keys of every interface `container` has from `attach`.
    pub async fn keys_of(&self, container: &ContainerRef) -> Vec<String> {
        let base = container.key();
        self.bookings()
            .await
            .into_iter()
            .map(|(_, key)| key)
            .filter(|key| split_interface_key(key).1 == base)
            .collect()
    }

    /// Owner keys with `prefix`, e.g. every container's.
    pub async fn owners_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.allocations
            .lock()
            .await
            .allocations()
            .map(|(_, owner)| owner.to_string())
            .filter(|owner| owner.starts_with(prefix))
            .collect()
    }

    pub async fn address_of(&self, key: &str) -> Option<Ipv4Addr> {
        self.allocations.lock().await.address_of(key)
    }

    /// Books an address for `key`: `requested` exactly (or fail), else
    /// `preferred` when it is free, else the next free one. Returns the
    /// address already booked when there is one.
    pub async fn reserve(
        &self,
        key: &str,
        requested: Option<&str>,
        preferred: Option<Ipv4Addr>,
    ) -> Result<Ipv4Network> {
        self.check_current()?;
        let requested = requested
            .map(|text| parse_requested(text, &self.subnet))
            .transpose()?;
        let mut book = self.allocations.lock().await;
        // An address whose interface is still going away is as good as free: wait for it.
        let deadline = Instant::now() + RELEASE_WAIT;
        while let Some(owner) = requested
            .or(preferred)
            .and_then(|addr| book.owner_of(addr))
            .filter(|owner| owner.starts_with(RELEASING))
        {
            if Instant::now() >= deadline {
                bail!("the address is still held by {owner}");
            }
            drop(book);
            tokio::time::sleep(Duration::from_millis(5)).await;
            book = self.allocations.lock().await;
        }
        let addr = match (book.address_of(key), requested) {
            (Some(have), Some(want)) if have != want => {
                bail!("{key} already has {have}, not {want}")
            }
            (Some(have), _) => have,
            (None, Some(want)) => book.allocate_specific(key, want)?,
            (None, None) => match preferred.filter(|p| self.subnet.contains(*p)) {
                Some(p) => match book.allocate_specific(key, p) {
                    Ok(addr) => addr,
                    Err(_) => book.allocate(key)?,
                },
                None => book.allocate(key)?,
            },
        };
        if let Err(err) = save_book(&book, &self.store, &self.retired) {
            book.release(key);
            return Err(err);
        }
        Ok(Ipv4Network::new(addr, self.subnet.prefix())?)
    }

    /// Gives the network namespace at `netns` its interface and the address
    /// booked for `key`. Nothing stays half-made on failure; the booking does.
    pub async fn plug(&self, key: &str, netns: PathBuf) -> Result<()> {
        let (addr, gateway) = {
            let book = self.allocations.lock().await;
            let addr = book
                .address_of(key)
                .ok_or_else(|| anyhow!("{key} has no address booked"))?;
            (addr, book.gateway())
        };
        let spec = AttachmentSpec {
            netns,
            ifname: split_interface_key(key).0.to_string(),
            host_ifname: host_ifname_for(key),
            address: Some(Ipv4Network::new(addr, self.subnet.prefix())?),
            gateway: Some(gateway),
            mtu: self.mtu,
            // Docker's, as on the named networks: a container back with
            // the same address keeps its MAC, and peers' caches stay right.
            mac: Some(container_mac(addr)),
            vlan: None,
            owner: key.to_string(),
            host_shim: false,
        };
        self.driver.setup(&spec).await?;
        Ok(())
    }

    /// For a container that ended: its network namespace is dying, and the
    /// kernel removes the interface with it, at the pace of RCU grace
    /// periods. Rather than make the caller wait, the address is held under
    /// a `releasing:` owner until the interface is gone (or, if something
    /// still holds the namespace, until it has been deleted here), and freed
    /// then. Returns the address.
    pub async fn release_when_gone(&self, key: &str) -> Result<Option<Ipv4Addr>> {
        self.check_current()?;
        let tombstone = format!("{RELEASING}{key}");
        let (addr, saved) = {
            let mut book = self.allocations.lock().await;
            let Some(addr) = book.release(key) else {
                return Ok(None);
            };
            book.allocate_specific(&tombstone, addr)?;
            (addr, save_book(&book, &self.store, &self.retired))
        };
        // The book in memory is right even when the disk is not: the
        // address is freed when the interface is gone either way.
        self.finish_release(tombstone);
        saved?;
        Ok(Some(addr))
    }

    /// Frees the addresses an earlier agent left `releasing:`.
    pub async fn finish_releases(&self) {
        let tombstones: Vec<String> = self
            .allocations
            .lock()
            .await
            .allocations()
            .map(|(_, owner)| owner.to_string())
            .filter(|owner| owner.starts_with(RELEASING))
            .collect();
        for tombstone in tombstones {
            self.finish_release(tombstone);
        }
    }

    fn finish_release(&self, tombstone: String) {
        let netlink = self.netlink.clone();
        let book = self.allocations.clone();
        let store = self.store.clone();
        let retired = self.retired.clone();
        let host_name = host_ifname_for(&tombstone[RELEASING.len()..]);
        tokio::spawn(async move {
            let deadline = Instant::now() + RELEASE_WAIT;
            loop {
                match netlink.link(&host_name).await {
                    Ok(None) => break,
                    Ok(Some(_)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    // Still there: something else holds the namespace (a container sharing it).
                    _ => {
                        if let Err(err) = netlink.detach_veth(&host_name).await {
                            tracing::warn!(interface = %host_name, error = %err, "could not remove a container interface; its address stays booked");
                            return;
                        }
                        break;
                    }
                }
            }
            let mut book = book.lock().await;
            book.release(&tombstone);
            if let Err(err) = save_book(&book, &store, &retired) {
                tracing::warn!(error = %format!("{err:#}"), "could not save container addresses");
            }
        });
    }

    /// Removes `key`'s interface (if it is still there) and frees its
    /// address. Returns the address it had, `None` when it had none.
    pub async fn release(&self, key: &str) -> Result<Option<Ipv4Addr>> {
        self.check_current()?;
        let mut book = self.allocations.lock().await;
        let made = AttachStatus {
            driver: self.driver.kind(),
            ifname: split_interface_key(key).0.to_string(),
            host_ifname: Some(host_ifname_for(key)),
            address: book
                .address_of(key)
                .and_then(|a| Ipv4Network::new(a, self.subnet.prefix()).ok()),
            netns: PathBuf::new(),
            vlan: None,
            host_shim: None,
            owner: key.to_string(),
        };
        self.driver
            .teardown(&made)
            .await
            .map_err(anyhow::Error::new)?;
        let Some(addr) = book.release(key) else {
            return Ok(None);
        };
        save_book(&book, &self.store, &self.retired)?;
        Ok(Some(addr))
    }
}

/// Frees the address of a namespace attached by its pid once that process
/// has ended, as a container's is freed when it ends, so that attachments of
/// short-lived processes do not pile up in the book. Follows the node's
/// current book, wherever the attachment moved.
pub fn free_when_process_ends(mut attachers: AttacherWatch, pid: u32) {
    tokio::spawn(async move {
        match tartan_runtime::process::Pidfd::open(pid) {
            Ok(Some(pidfd)) => {
                // SAFETY: the AsyncFd owns the descriptor for its whole life.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        pidfd.into_fd(),
                        tokio::io::Interest::READABLE,
                    )
                };
                match registered {
                    Ok(fd) => {
                        if let Err(err) = fd.readable().await {
                            tracing::warn!(pid, error = %err, "cannot follow an attached process; detach it by hand");
                            return;
                        }
                    }
                    Err(err) => {
                        tracing::warn!(pid, error = %err, "cannot follow an attached process; detach it by hand");
                        return;
                    }
                }
            }
            // Gone already.
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(pid, error = %err, "cannot follow an attached process; detach it by hand");
                return;
            }
        }
        let container = ContainerRef::Pid(pid);
        loop {
            let current = attachers.borrow_and_update().clone();
            let Some(attacher) = current else { return };
            if attacher.is_retired() {
                // A hand-over is under way: its successor has the booking.
                if attachers.changed().await.is_err() {
                    return;
                }
                continue;
            }
            // Every interface it was given (-i).
            for key in attacher.keys_of(&container).await {
                match attacher.release_when_gone(&key).await {
                    Ok(Some(address)) => {
                        tracing::info!(pid, %address, "freed the address of an attached process that ended");
                    }
                    // Detached meanwhile.
                    Ok(None) => {}
                    Err(err) => {
                        tracing::warn!(pid, error = %format!("{err:#}"), "could not free the address of an attached process that ended");
                    }
                }
            }
            return;
        }
    });
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn describe(container: &ContainerRef) -> String {
    match container {
        ContainerRef::Netns(name) => format!("netns {name}"),
        ContainerRef::Path(path) => path.display().to_string(),
        ContainerRef::Pid(pid) => format!("pid {pid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_and_the_hosts_namespaces_are_refused() {
        for (path, needle) in [
            ("/proc/self/ns/net", "the agent's own"),
            ("/proc/1/ns/net", "the host's"),
        ] {
            let refused = refuse_own_namespace(Path::new(path), path);
            assert!(
                refused.is_err_and(|e| e.to_string().contains(needle)),
                "{path}"
            );
        }
    }

    #[test]
    fn container_references_parse() {
        assert_eq!(
            ContainerRef::parse("c1").ok(),
            Some(ContainerRef::Netns("c1".into()))
        );
        assert_eq!(
            ContainerRef::parse("4242").ok(),
            Some(ContainerRef::Pid(4242))
        );
        assert_eq!(
            ContainerRef::parse("/proc/1/ns/net").ok(),
            Some(ContainerRef::Path("/proc/1/ns/net".into()))
        );
        assert!(ContainerRef::parse("").is_err());
        assert!(ContainerRef::parse("a/b").is_err());
        assert!(ContainerRef::parse("..").is_err());
        assert_eq!(
            ContainerRef::Pid(7).netns_path(),
            PathBuf::from("/proc/7/ns/net")
        );
        assert_eq!(
            ContainerRef::Netns("c1".into()).netns_path(),
            PathBuf::from("/run/netns/c1")
        );
    }

    #[test]
    fn interface_keys_split_back() {
        let c1 = ContainerRef::Netns("c1".into());
        assert_eq!(interface_key(&c1, "eth0"), "netns:c1");
        let eth1 = interface_key(&c1, "eth1");
        assert_eq!(split_interface_key(&eth1), ("eth1", "netns:c1"));
        assert_eq!(split_interface_key("netns:c1"), ("eth0", "netns:c1"));
        assert_eq!(ContainerRef::from_key(&eth1), Some(c1.clone()));
        assert_ne!(host_ifname_for(&eth1), host_ifname_for(&c1.key()));
    }

    #[test]
    fn host_interface_names_are_stable_short_and_distinct() {
        let a = host_ifname_for(&ContainerRef::Netns("c1".into()).key());
        assert_eq!(a, host_ifname_for(&ContainerRef::Netns("c1".into()).key()));
        assert_ne!(a, host_ifname_for(&ContainerRef::Netns("c2".into()).key()));
        assert!(
            a.len() <= 13,
            "{a}: leaves room for the temporary peer suffix"
        );
    }

    #[test]
    fn requested_addresses_must_fit_the_subnet() {
        let subnet: Ipv4Network = "10.5.34.0/24".parse().expect("cidr");
        assert_eq!(
            parse_requested("10.5.34.9/24", &subnet).ok(),
            Some(Ipv4Addr::new(10, 5, 34, 9))
        );
        assert_eq!(
            parse_requested("10.5.34.9", &subnet).ok(),
            Some(Ipv4Addr::new(10, 5, 34, 9))
        );
        assert!(parse_requested("10.5.35.9/24", &subnet).is_err());
        assert!(parse_requested("10.5.34.9/16", &subnet).is_err());
        assert!(parse_requested("banana", &subnet).is_err());
    }
}
