//! `tartan attach HOST_INTERFACE CONTAINER ADDR/LEN[@GW]|0/0 [MAC][@VLAN]`:
//! pipework's form. The host interface picks the driver (a Linux bridge, an
//! Open vSwitch bridge, or a macvlan parent); a missing `br*` or `ovs*`
//! name is created. Every attachment is recorded in the state dir with what
//! is needed to make it again, so that a restarted agent re-applies those
//! whose namespace lives and removes the others, and `detach` undoes
//! exactly what `attach` did.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use tartan_dataplane::{MacvlanMode, Netlink, DEFAULT_CONTAINER_IFNAME};
use tokio::sync::Mutex;

use crate::networks::attach::{host_ifname_for, refuse_own_namespace, ContainerRef};
use crate::networks::driver::{
    AttachStatus, AttachmentDriver, AttachmentSpec, DriverContext, HostSide, Registration,
};
use crate::networks::drivers::ovs::OWNER_KEY;
use crate::networks::drivers::{self, bridge};
use crate::networks::lifecycle::{ContainerLookup, LifecycleHook, RunState};
use crate::networks::ovsdb::OvsdbHandle;

/// The driver a record names: the bridge's for a name no driver has (a
/// record edited by hand), rather than failing its removal.
fn registration(kind: &str) -> &'static Registration {
    drivers::registration(kind).unwrap_or(&bridge::REGISTRATION)
}

/// The record file, in the agent's state dir.
const RECORDS: &str = "pipework.json";

/// How often namespaces with attachments are looked at: the attachments
/// of namespaces that went are removed. A Tartan container's follow its
/// starts and removal at once, through `LifecycleHook`; this catches what
/// that missed.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// The owner key prefix of a Tartan container's attachments.
const CONTAINER_KEY: &str = "ctr:";

/// The external_ids owner of bridges created for `tartan attach`.
const BRIDGE_OWNER: &str = "tartan-attach";

/// A bridge this form makes for a missing `br*` or `ovs*` name: plain, as
/// pipework's, with no address of its own.
fn made_bridge() -> HostSide {
    HostSide {
        owner: BRIDGE_OWNER.to_string(),
        gateway: None,
    }
}

/// Owner key prefixes of what this form makes, as OVS ports carry them:
/// ports of other owners (networks) are not this module's to clean up.
const ATTACH_KEYS: [&str; 4] = ["netns:", "path:", "pid:", CONTAINER_KEY];

/// The namespace an attachment goes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The owner key of its attachments (`ctr:ID`, `netns:NAME`, `pid:N`, `path:P`).
    pub key: String,
    /// As the operator named it.
    pub shown: String,
    pub netns: PathBuf,
    /// The process behind a `/proc/PID/ns/net` path, with its start time,
    /// as it was when resolved: a PID reused meanwhile is told apart
    /// (pipework's stale PID race).
    pub process: Option<(u32, u64)>,
}

impl Target {
    /// A PID, a netns path, a Tartan container's name or id (running), or
    /// a netns name, in that order.
    pub fn resolve(text: &str, containers: &dyn ContainerLookup) -> Result<Target> {
        let plain = ContainerRef::parse(text)?;
        if let ContainerRef::Netns(_) = plain {
            if let Ok(id) = containers.id_of(text) {
                let RunState::Running { pid } = containers.run_state(&id)? else {
                    bail!("container {text} is not running");
                };
                let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
                return Ok(Target {
                    key: format!("{CONTAINER_KEY}{id}"),
                    shown: text.to_string(),
                    process: process_of(&netns),
                    netns,
                });
            }
        }
        let netns = plain.netns_path();
        if !netns.exists() {
            bail!("no container, process or network namespace {text}");
        }
        Ok(Target {
            key: plain.key(),
            shown: text.to_string(),
            process: process_of(&netns),
            netns,
        })
    }

    /// The records' owner key, without resolving anything: what `detach`
    /// of a container that is gone goes by.
    pub fn keys_for(text: &str, containers: &dyn ContainerLookup) -> Vec<String> {
        let mut keys = Vec::new();
        if let Ok(plain) = ContainerRef::parse(text) {
            keys.push(plain.key());
        }
        if let Ok(id) = containers.id_of(text) {
            keys.push(format!("{CONTAINER_KEY}{id}"));
        }
        keys
    }
}

/// One pipework-form attachment as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub host_interface: String,
    pub target: Target,
    pub ifname: Option<String>,
    pub host_ifname: Option<String>,
    pub address: String,
    pub gateway: Option<Ipv4Addr>,
    /// As given: `aa:bb:..`, `U:STRING`, or None for a random one.
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    pub host_shim: bool,
}

/// One attachment as recorded: what was asked, what it resolved to, and
/// what the driver made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub owner: String,
    pub container: String,
    pub netns: PathBuf,
    /// The namespace's device and inode, to tell a namespace made anew
    /// under the same name.
    pub netns_id: Option<(u64, u64)>,
    /// For a namespace named through a process (`/proc/PID/ns/net`): the
    /// process and its start time, since a PID, and a namespace's inode,
    /// are reused.
    #[serde(default)]
    pub process: Option<(u32, u64)>,
    pub host_interface: String,
    /// `bridge`, `ovs` or `macvlan`.
    pub driver: String,
    /// The host interface was created for this attachment.
    pub made_bridge: bool,
    pub ifname: String,
    pub host_ifname: Option<String>,
    /// Whether `-l` named the host end (part of the request).
    pub host_ifname_given: bool,
    /// None: made with no address (`0/0`).
    pub address: Option<Ipv4Network>,
    pub gateway: Option<Ipv4Addr>,
    pub mac: Option<String>,
    pub vlan: Option<u16>,
    pub want_host_shim: bool,
    pub host_shim: Option<String>,
    pub mtu: u32,
}

impl Record {
    /// Whether `request` asks for what this record has.
    fn same_request(&self, request: &Request, address: Option<Ipv4Network>) -> bool {
        self.host_interface == request.host_interface
            && self.address == address
            && self.gateway == request.gateway
            && self.mac == request.mac
            && self.vlan == request.vlan
            && self.want_host_shim == request.host_shim
            && (request.host_ifname.is_none() || self.host_ifname == request.host_ifname)
    }

    fn status(&self) -> AttachStatus {
        AttachStatus {
            driver: registration(&self.driver).name,
            ifname: self.ifname.clone(),
            host_ifname: self.host_ifname.clone(),
            address: self.address,
            netns: self.netns.clone(),
            vlan: self.vlan,
            host_shim: self.host_shim.clone(),
            owner: self.owner.clone(),
        }
    }

    fn spec(&self) -> Result<AttachmentSpec> {
        Ok(AttachmentSpec {
            netns: self.netns.clone(),
            ifname: self.ifname.clone(),
            host_ifname: self
                .host_ifname
                .clone()
                .unwrap_or_else(|| default_host_ifname(&self.owner, &self.ifname)),
            address: self.address,
            gateway: self.gateway,
            mtu: self.mtu,
            mac: self
                .mac
                .as_deref()
                .map(tartan_dataplane::parse_mac)
                .transpose()?,
            vlan: self.vlan,
            owner: self.owner.clone(),
            host_shim: self.want_host_shim,
        })
    }
}

/// What the pipework form answers.
#[derive(Debug, Clone)]
pub struct Attached {
    /// None: the interface has no address (`0/0`).
    pub address: Option<Ipv4Network>,
    pub ifname: String,
    pub already: bool,
}

/// The kinds of host interface, as `attach` sorts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostKind {
    /// The L2 segment's bridge, which the segment keeps.
    Segment,
    LinuxBridge,
    OvsBridge,
    MacvlanParent,
}

/// The host end of a veth when `-l` names none: derived from the owner and
/// the container side, so it is found again without a record.
fn default_host_ifname(owner: &str, ifname: &str) -> String {
    host_ifname_for(&format!("{owner}#{ifname}"))
}

/// Parses `ADDR/LEN`, or pipework's `0/0`: an interface with no address
/// (None). `dhcp` is refused.
pub fn parse_address(text: &str) -> Result<Option<Ipv4Network>> {
    if text == "0/0" || text == "0.0.0.0/0" {
        return Ok(None);
    }
    if text.starts_with("dhcp") {
        bail!("dhcp is not supported: Tartan runs no DHCP client in the namespace; give ADDR/LEN, or 0/0 and run one there");
    }
    let Some((addr, len)) = text.split_once('/') else {
        bail!("{text:?} needs a prefix length, as in {text}/24");
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| anyhow!("{text:?} is not an IPv4 address with a prefix length"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|len| (1..=32).contains(len))
        .ok_or_else(|| anyhow!("{text:?} has a bad prefix length: use 1 to 32"))?;
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
        bail!("{addr} cannot be an interface's address");
    }
    Ok(Some(Ipv4Network::new(addr, len)?))
}

/// An address as the API shows it: pipework's `0/0` for none.
pub fn show_address(address: Option<Ipv4Network>) -> String {
    address.map_or_else(|| "0/0".to_string(), |address| address.to_string())
}

/// The process behind `/proc/PID/ns/net`, with its start time (in clock
/// ticks since boot, field 22 of `/proc/PID/stat`).
fn process_of(netns: &Path) -> Option<(u32, u64)> {
    let pid: u32 = netns
        .strip_prefix("/proc")
        .ok()?
        .to_str()?
        .strip_suffix("/ns/net")?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: count from the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let started = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some((pid, started))
}

fn netns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A driver's name and the host interface it plugs into.
type DriverKey = (&'static str, String);

/// Attaches and detaches in pipework's form, and keeps the records.
pub struct Pipework {
    netlink: Netlink,
    ovsdb: Arc<OvsdbHandle>,
    store: PathBuf,
    records: Mutex<Vec<Record>>,
    /// One per driver and host interface: a macvlan's counts the users of
    /// its parent's VLAN devices.
    drivers: std::sync::Mutex<BTreeMap<DriverKey, Arc<dyn AttachmentDriver>>>,
}

impl Pipework {
    pub fn open(netlink: Netlink, ovsdb: Arc<OvsdbHandle>, state_dir: &Path) -> Result<Pipework> {
        let store = state_dir.join(RECORDS);
        let records = match std::fs::read(&store) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", store.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => return Err(err).with_context(|| format!("reading {}", store.display())),
        };
        Ok(Pipework {
            netlink,
            ovsdb,
            store,
            records: Mutex::new(records),
            drivers: std::sync::Mutex::default(),
        })
    }

    fn save(&self, records: &[Record]) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(records)?;
        let temporary = self.store.with_extension("json.tmp");
        std::fs::write(&temporary, bytes)
            .and_then(|()| std::fs::rename(&temporary, &self.store))
            .with_context(|| format!("saving {}", self.store.display()))
    }

    /// Every attachment recorded.
    pub async fn records(&self) -> Vec<Record> {
        self.records.lock().await.clone()
    }

    /// The driver for a host interface of `kind`, made on first use.
    fn driver(&self, kind: &str, host_interface: &str) -> Arc<dyn AttachmentDriver> {
        let registration = registration(kind);
        self.drivers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry((registration.name, host_interface.to_string()))
            .or_insert_with(|| {
                (registration.make)(&DriverContext {
                    netlink: &self.netlink,
                    ovsdb: &self.ovsdb,
                    host_interface,
                    macvlan_mode: MacvlanMode::Bridge,
                })
            })
            .clone()
    }

    /// Whether OVS has a bridge `name`; an unreachable OVS has none.
    async fn is_ovs_bridge(&self, name: &str) -> bool {
        match self.ovsdb.get().await {
            Ok(ovsdb) => matches!(
                self.ovsdb.check(ovsdb.has_bridge(name).await).await,
                Ok(true)
            ),
            Err(_) => false,
        }
    }

    /// What the host interface is, and whether it must be created.
    async fn classify(&self, name: &str) -> Result<(HostKind, bool)> {
        tartan_dataplane::check_ifname(name)?;
        if name == tartan_dataplane::L2_SEGMENT_BRIDGE {
            return Ok((HostKind::Segment, false));
        }
        if let Some(link) = self.netlink.link(name).await? {
            if link.kind.as_deref() == Some("bridge") {
                return Ok((HostKind::LinuxBridge, false));
            }
            // An OVS bridge's own device is a TAP device (netdev datapath)
            // or an openvswitch one; only OVS can tell.
            if matches!(link.kind.as_deref(), Some("tun" | "openvswitch"))
                && self.is_ovs_bridge(name).await
            {
                return Ok((HostKind::OvsBridge, false));
            }
            if name.starts_with("ovs") && self.is_ovs_bridge(name).await {
                return Ok((HostKind::OvsBridge, false));
            }
            return Ok((HostKind::MacvlanParent, false));
        }
        if name.starts_with("br") {
            return Ok((HostKind::LinuxBridge, true));
        }
        if name.starts_with("ovs") {
            let ovsdb = self.ovsdb.get().await?;
            let exists = self.ovsdb.check(ovsdb.has_bridge(name).await).await?;
            return Ok((HostKind::OvsBridge, !exists));
        }
        bail!("no host interface named {name} (a missing br* or ovs* name is created as a bridge)")
    }

    /// Removes a bridge this form created, once no record uses it.
    async fn remove_bridge(&self, driver: &str, name: &str) -> Result<()> {
        self.driver(driver, name).remove_host_side(true).await
    }

    pub async fn attach(&self, request: &Request) -> Result<Attached> {
        let target = &request.target;
        refuse_own_namespace(&target.netns, &target.shown)?;
        let address = parse_address(&request.address)?;
        if address.is_none() {
            if let Some(gateway) = request.gateway {
                bail!("0/0@{gateway}: an interface with no address takes no gateway");
            }
            if request.host_shim {
                bail!("--host-shim with 0/0: an interface with no address has nothing for the host to route to");
            }
        }
        let ifname = request
            .ifname
            .clone()
            .unwrap_or_else(|| DEFAULT_CONTAINER_IFNAME.to_string());
        tartan_dataplane::check_ifname(&ifname)?;
        if let Some(host) = &request.host_ifname {
            tartan_dataplane::check_ifname(host)?;
        }
        let mac = request
            .mac
            .as_deref()
            .map(tartan_dataplane::parse_mac)
            .transpose()?;
        if let Some(vlan) = request.vlan {
            tartan_dataplane::check_vlan_id(vlan)?;
        }
        let mut records = self.records.lock().await;
        if let Some(have) = records
            .iter()
            .find(|r| r.owner == target.key && r.ifname == ifname)
        {
            if have.same_request(request, address) {
                // Made again where something was removed by hand.
                self.reapply(have).await;
                return Ok(Attached {
                    address,
                    ifname,
                    already: true,
                });
            }
            bail!(
                "{} already has {ifname} attached to {} with {}: detach it first",
                target.shown,
                have.host_interface,
                show_address(have.address)
            );
        }
        // One address per segment: on the same host interface and VLAN,
        // another namespace's address is refused (pipework makes the duplicate).
        if let Some(address) = address {
            if let Some(holder) = records.iter().find(|r| {
                r.host_interface == request.host_interface
                    && r.vlan == request.vlan
                    && r.address.map(|a| a.ip()) == Some(address.ip())
            }) {
                bail!(
                    "{} is already attached to {} on {}: choose another address",
                    address.ip(),
                    holder.container,
                    request.host_interface
                );
            }
        }
        let (kind, create) = self.classify(&request.host_interface).await?;
        let driver_kind = match kind {
            HostKind::Segment => "l2segment",
            HostKind::LinuxBridge => "bridge",
            HostKind::OvsBridge => "ovs",
            HostKind::MacvlanParent => "macvlan",
        };
        if request.host_shim && kind != HostKind::MacvlanParent {
            bail!(
                "--host-shim is for macvlan attachments: {} is a bridge, which the host reaches already",
                request.host_interface
            );
        }
        if kind == HostKind::MacvlanParent && request.host_ifname.is_some() {
            bail!(
                "-l names a veth's host end: a macvlan on {} has none",
                request.host_interface
            );
        }
        let host_ifname = request
            .host_ifname
            .clone()
            .unwrap_or_else(|| default_host_ifname(&target.key, &ifname));
        let mut record = Record {
            owner: target.key.clone(),
            container: target.shown.clone(),
            netns: target.netns.clone(),
            netns_id: netns_id(&target.netns),
            process: target.process,
            host_interface: request.host_interface.clone(),
            driver: driver_kind.to_string(),
            made_bridge: create,
            ifname: ifname.clone(),
            host_ifname: (kind != HostKind::MacvlanParent).then(|| host_ifname.clone()),
            host_ifname_given: request.host_ifname.is_some(),
            address,
            gateway: request.gateway,
            mac: request.mac.clone(),
            vlan: request.vlan,
            want_host_shim: request.host_shim,
            host_shim: None,
            mtu: 0,
        };
        let driver = self.driver(driver_kind, &request.host_interface);
        let mut spec = AttachmentSpec {
            netns: target.netns.clone(),
            ifname: ifname.clone(),
            host_ifname,
            address,
            gateway: request.gateway,
            mtu: 0,
            mac,
            vlan: request.vlan,
            owner: target.key.clone(),
            host_shim: request.host_shim,
        };
        driver.validate(&spec)?;
        if create {
            driver.ensure_host_side(&made_bridge()).await?;
        }
        let made = async {
            // The MTU follows the host interface (an OVS bridge's own
            // device may not be there yet).
            spec.mtu = self
                .netlink
                .link(&request.host_interface)
                .await?
                .map_or(1500, |link| link.mtu);
            driver.setup(&spec).await
        }
        .await;
        let made = match made {
            Ok(status)
                if target.process.is_some() && process_of(&target.netns) != target.process =>
            {
                let err = anyhow!("{} ended while it was being attached", target.shown);
                match driver.teardown(&status).await {
                    Ok(()) => Err(err),
                    Err(undo) => Err(crate::teardown::and_undo(err, undo)),
                }
            }
            other => other,
        };
        let status = match made {
            Ok(status) => status,
            Err(err) => {
                if create {
                    if let Err(undo) = self
                        .remove_bridge(driver_kind, &request.host_interface)
                        .await
                    {
                        return Err(crate::teardown::and_undo(err, undo));
                    }
                }
                return Err(err);
            }
        };
        record.mtu = spec.mtu;
        record.host_shim = status.host_shim;
        records.push(record);
        if let Err(err) = self.save(&records) {
            // Unrecorded, it would never be undone: take it back.
            let record = records.pop().expect("just pushed");
            if let Err(undo) = driver.teardown(&record.status()).await {
                return Err(crate::teardown::and_undo(err, undo));
            }
            return Err(err);
        }
        Ok(Attached {
            address,
            ifname,
            already: false,
        })
    }

    /// Undoes the attachments of the owner keys `keys` (the container side
    /// `ifname` only, when given). Returns what was detached.
    pub async fn detach(&self, keys: &[String], ifname: Option<&str>) -> Result<Vec<Record>> {
        let mut records = self.records.lock().await;
        let (gone, kept): (Vec<Record>, Vec<Record>) = records
            .drain(..)
            .partition(|r| keys.contains(&r.owner) && ifname.is_none_or(|name| r.ifname == name));
        *records = kept;
        let mut teardown = crate::teardown::Teardown::new();
        for record in &gone {
            let result = self.undo(record, &records).await;
            teardown.step(
                &format!("detaching {} of {}", record.ifname, record.container),
                result,
            );
        }
        self.save(&records)?;
        teardown.finish()?;
        Ok(gone)
    }

    /// Removes what `record` made, and the bridge made for it when no
    /// other record (`others`) uses it.
    async fn undo(&self, record: &Record, others: &[Record]) -> Result<()> {
        let driver = self.driver(&record.driver, &record.host_interface);
        let mut status = record.status();
        if record.process.is_some() && process_of(&record.netns) != record.process {
            // The process ended (its PID may be another's now): its
            // namespace, and what was inside, went with it.
            status.netns = PathBuf::new();
        }
        driver.teardown(&status).await.map_err(anyhow::Error::new)?;
        let bridge_in_use = others
            .iter()
            .any(|r| r.host_interface == record.host_interface);
        let made_by_any = record.made_bridge
            || others
                .iter()
                .any(|r| r.host_interface == record.host_interface && r.made_bridge);
        if made_by_any && !bridge_in_use {
            self.remove_bridge(&record.driver, &record.host_interface)
                .await?;
        }
        Ok(())
    }

    /// Where a record's namespace is now: None when it is gone. A Tartan
    /// container that runs again has a new one.
    fn live_netns(&self, record: &Record, containers: &dyn ContainerLookup) -> Option<Liveness> {
        if let Some(id) = record.owner.strip_prefix(CONTAINER_KEY) {
            return match containers.run_state(id).ok()? {
                RunState::Running { pid } => {
                    let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
                    // Stopping or starting: looked at again next time.
                    let Some(id) = netns_id(&path) else {
                        return Some(Liveness::Stopped);
                    };
                    let process = process_of(&path);
                    if process.is_some() && process == record.process {
                        Some(Liveness::Same)
                    } else {
                        Some(Liveness::Moved(path, id, process))
                    }
                }
                // Stopped: kept for when it starts again; only a container
                // that is gone takes its attachments with it.
                _ => Some(Liveness::Stopped),
            };
        }
        let id = netns_id(&record.netns)?;
        if record.process.is_some() && process_of(&record.netns) != record.process {
            return None;
        }
        (Some(id) == record.netns_id).then_some(Liveness::Same)
    }

    /// Brings the records and the host in line: attachments of live
    /// namespaces are made again where missing, those of namespaces that
    /// went are removed; `orphans` also removes OVS ports and bridges this
    /// form made that no record has (after an agent restart).
    pub async fn reconcile(&self, containers: &dyn ContainerLookup, orphans: bool) -> Result<()> {
        let mut records = self.records.lock().await;
        let mut changed = false;
        let mut kept = Vec::new();
        let mut dead = Vec::new();
        for mut record in records.drain(..) {
            match self.live_netns(&record, containers) {
                None => dead.push(record),
                Some(Liveness::Stopped) => {
                    kept.push(record);
                }
                Some(Liveness::Same) => {
                    if orphans {
                        self.reapply(&record).await;
                    }
                    kept.push(record);
                }
                Some(Liveness::Moved(path, id, process)) => {
                    self.move_to(&mut record, path, id, process).await;
                    changed = true;
                    kept.push(record);
                }
            }
        }
        for record in &mut dead {
            // A namespace made anew under the same name is not this one:
            // nothing in it is touched.
            record.netns = PathBuf::new();
            tracing::info!(container = %record.container, interface = %record.ifname, "removing the attachment of a namespace that is gone");
            if let Err(err) = self.undo(record, &kept).await {
                tracing::warn!(container = %record.container, error = %format!("{err:#}"), "could not remove an attachment");
            }
            changed = true;
        }
        *records = kept;
        if changed {
            self.save(&records)?;
        }
        if orphans {
            self.remove_ovs_orphans(&records).await;
        }
        Ok(())
    }

    /// Makes `record` again in the new namespace of its Tartan container.
    async fn move_to(
        &self,
        record: &mut Record,
        path: PathBuf,
        id: (u64, u64),
        process: Option<(u32, u64)>,
    ) {
        // The old namespace went with the old process: what was outside it
        // (a veth's OVS port, a shim route) too. Nothing inside the old path
        // is touched: its PID may be another's now.
        let mut old = record.clone();
        old.netns = PathBuf::new();
        self.teardown_quietly(&old).await;
        record.netns = path;
        record.netns_id = Some(id);
        record.process = process;
        self.reapply(record).await;
    }

    /// The Tartan container `id` runs as `pid` now: its attachments move
    /// into its new namespace.
    async fn container_started(&self, id: &str, pid: u32) {
        let owner = format!("{CONTAINER_KEY}{id}");
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Some(netns) = netns_id(&path) else {
            // Gone already: nothing to attach.
            return;
        };
        let process = process_of(&path);
        let mut records = self.records.lock().await;
        let mut changed = false;
        for record in records.iter_mut().filter(|r| r.owner == owner) {
            if process.is_some() && record.process == process {
                continue;
            }
            self.move_to(record, path.clone(), netns, process).await;
            changed = true;
        }
        if changed {
            if let Err(err) = self.save(&records) {
                tracing::warn!(container = %id, error = %format!("{err:#}"), "could not record where its attachments moved");
            }
        }
    }

    async fn teardown_quietly(&self, record: &Record) {
        let driver = self.driver(&record.driver, &record.host_interface);
        if let Err(err) = driver.teardown(&record.status()).await {
            err.log("removing what is left of a moved attachment");
        }
    }

    /// Makes a recorded attachment again where it is missing.
    async fn reapply(&self, record: &Record) {
        let result = async {
            let spec = record.spec()?;
            let driver = self.driver(&record.driver, &record.host_interface);
            if record.made_bridge {
                driver.ensure_host_side(&made_bridge()).await?;
            }
            driver.repair(&spec).await
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(container = %record.container, interface = %record.ifname, "attachment in place")
            }
            Err(err) => {
                tracing::warn!(container = %record.container, interface = %record.ifname, error = %format!("{err:#}"), "could not re-apply an attachment")
            }
        }
    }

    /// Removes OVS ports and bridges made by this form that no record has.
    async fn remove_ovs_orphans(&self, records: &[Record]) {
        let Ok(ovsdb) = self.ovsdb.get().await else {
            // No OVS here: nothing of it to clean.
            return;
        };
        let result = async {
            let ports = self.ovsdb.check(ovsdb.ports().await).await?;
            for port in ports {
                let Some(owner) = port.external_ids.get(OWNER_KEY) else {
                    continue;
                };
                if !ATTACH_KEYS.iter().any(|prefix| owner.starts_with(prefix)) {
                    continue;
                }
                let recorded = records
                    .iter()
                    .any(|r| r.host_ifname.as_deref() == Some(port.name.as_str()));
                if !recorded {
                    tracing::info!(port = %port.name, owner = %owner, "removing an OVS port no attachment has");
                    self.ovsdb.check(ovsdb.remove_port(&port.name).await).await?;
                    self.netlink.detach_veth(&port.name).await?;
                }
            }
            let bridges = self
                .ovsdb
                .check(ovsdb.bridges_owned_by(OWNER_KEY, BRIDGE_OWNER).await)
                .await?;
            for bridge in bridges {
                if !records.iter().any(|r| r.host_interface == bridge) {
                    tracing::info!(bridge = %bridge, "removing an OVS bridge no attachment has");
                    self.ovsdb.check(ovsdb.remove_bridge(&bridge).await).await?;
                }
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %format!("{err:#}"), "could not clean up OVS ports and bridges");
        }
    }

    /// Follows the namespaces with attachments until the agent stops: a
    /// Tartan container that starts again gets its attachments back, and
    /// the attachments of namespaces that went are removed.
    pub async fn follow(self: Arc<Self>, containers: Arc<dyn ContainerLookup>) {
        if let Err(err) = self.reconcile(containers.as_ref(), true).await {
            tracing::warn!(error = %format!("{err:#}"), "could not re-apply the recorded attachments");
        }
        loop {
            tokio::time::sleep(FOLLOW_INTERVAL).await;
            if let Err(err) = self.reconcile(containers.as_ref(), false).await {
                tracing::warn!(error = %format!("{err:#}"), "could not follow the attached namespaces");
            }
        }
    }
}

#[async_trait::async_trait]
impl LifecycleHook for Pipework {
    async fn started(&self, id: &str, pid: u32) {
        self.container_started(id, pid).await;
    }

    async fn removed(&self, id: &str) -> Result<()> {
        self.detach(&[format!("{CONTAINER_KEY}{id}")], None).await?;
        Ok(())
    }
}

enum Liveness {
    Same,
    Stopped,
    Moved(PathBuf, (u64, u64), Option<(u32, u64)>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_prefix_and_0_0_is_none() {
        assert_eq!(
            parse_address("10.1.1.1/24").ok(),
            Some(Some("10.1.1.1/24".parse().expect("cidr")))
        );
        assert_eq!(parse_address("0/0").ok(), Some(None));
        assert_eq!(parse_address("0.0.0.0/0").ok(), Some(None));
        for bad in ["10.1.1.1", "dhcp", "10.1.1.1/33", "banana/24", "0.0.0.0/8"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let pid = std::process::id();
        let own = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let (seen, started) = process_of(&own).expect("this process");
        assert_eq!(seen, pid);
        assert_eq!(process_of(&own), Some((pid, started)), "stable");
        assert_eq!(process_of(Path::new("/run/netns/c1")), None);
        assert_eq!(process_of(Path::new("/proc/self/ns/net")), None);
    }

    #[test]
    fn default_host_ends_differ_per_container_interface() {
        let a = default_host_ifname("netns:c1", "eth1");
        assert_ne!(a, default_host_ifname("netns:c1", "eth2"));
        assert!(tartan_dataplane::check_ifname(&a).is_ok());
    }
}
