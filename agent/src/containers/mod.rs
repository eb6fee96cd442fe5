//! The agent's containers: creating them from images, starting each under a
//! supervisor of its own (`tartan shim`), plugging it into the overlay,
//! stopping, removing, and finding them all again after a restart.
//!
//! The agent keeps no state of its own about a container beyond its
//! directory: `config.json` says what was asked for, the supervisor's files
//! say whether it runs, and the address book of the node subnet holds its
//! address under the key `container:ID`.

mod fabric_dns;
pub mod hosts;
pub mod image_config;
pub mod images;
pub mod limits;
pub mod link_env;
pub mod ports;
pub mod restart;
pub mod spec;
pub mod stats;
pub mod volumes;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use tartan_runtime::container::spec::ContainerSpec;
use tartan_runtime::container::{
    now_rfc3339, ContainerConfig, ContainerDir, Endpoint, NetworkMode, ShimSpec,
};
use tartan_runtime::init::{InitFile, InitSpec};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tracing::{info, warn};

use crate::containers::images::Images;
use crate::containers::spec::RunSpec;
use crate::names::registry::NameRegistry;
use crate::networks::attach::{Attacher, AttacherWatch};
use crate::networks::lifecycle::{ContainerLookup, LifecycleHook, RunState};
use crate::networks::named::NamedNetworks;
use crate::networks::store;
use crate::teardown::Teardown;

/// The PATH a container gets unless it sets its own, as Docker gives it.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long the supervisor may take to report the container's process.
const SHIM_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGKILLed container may take to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A container whose command could not be run: what `run -d` and `start`
/// report, with Docker's exit code (127 not found, 126 not runnable, 125
/// any other failure of the start).
#[derive(Debug)]
pub struct CommandFailed {
    pub code: i32,
    pub reason: String,
}

impl std::fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for CommandFailed {}

impl CommandFailed {
    /// From the supervisor's "CODE reason".
    fn parse(report: &str) -> CommandFailed {
        match report.split_once(' ') {
            Some((code, reason)) if code.parse::<i32>().is_ok() => CommandFailed {
                code: code.parse().unwrap_or(125),
                reason: reason.to_string(),
            },
            _ => CommandFailed {
                code: 125,
                reason: report.to_string(),
            },
        }
    }
}

/// A container's lifecycle state, read from its supervisor's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Made, never started (or its start was abandoned).
    Created,
    Running {
        pid: u32,
        shim_pid: u32,
        started: String,
    },
    Exited {
        code: i32,
        started: String,
        finished: String,
    },
    /// Ended with `code`, and waits for its supervisor to run it again (`--restart`).
    Restarting {
        code: i32,
        shim_pid: u32,
        finished: String,
    },
}

/// One container as the API shows it.
#[derive(Debug, Clone)]
pub struct ContainerView {
    pub config: ContainerConfig,
    pub status: Status,
    pub network: String,
    pub attach_socket: PathBuf,
    /// Restarts by its policy since its last start (Docker's `RestartCount`).
    pub restart_count: u32,
    /// Its last run was ended by the OOM killer (`State.OOMKilled`).
    pub oom_killed: bool,
}

/// How a container's network is made at its start.
struct NetworkPlan {
    address: Option<Ipv4Network>,
    /// The namespace of the container whose network is shared.
    join_netns: Option<PathBuf>,
    new_netns: bool,
    /// The overlay's attacher: the one the address is booked in.
    attacher: Option<Arc<Attacher>>,
}

struct Entry {
    config: ContainerConfig,
    /// Serializes start, stop and removal of this container.
    lifecycle: Arc<tokio::sync::Mutex<()>>,
}

/// All containers of this node; cheap to clone.
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

/// Whether containers may have the overlay: it needs the node's subnet lease,
/// and an agent without etcd has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlay {
    /// From etcd, once the agent holds its lease.
    Leased,
    /// `--no-etcd`: never.
    NoStore,
}

/// Why `--net overlay` is refused on an agent without etcd.
pub const OVERLAY_NEEDS_ETCD: &str =
    "the overlay needs etcd (a subnet lease): this agent runs with --no-etcd";

struct Inner {
    root: PathBuf,
    images: Images,
    overlay: Overlay,
    attacher: AttacherWatch,
    networks: NamedNetworks,
    hook: Arc<dyn LifecycleHook>,
    shim_binary: PathBuf,
    entries: Mutex<HashMap<String, Entry>>,
    ports: ports::Publisher,
    volumes: volumes::VolumeStore,
    names: NameRegistry,
}

impl ContainerLookup for Containers {
    fn id_of(&self, text: &str) -> Result<String> {
        self.resolve(text)
    }

    fn run_state(&self, id: &str) -> Result<RunState> {
        Ok(match self.view(id)?.status {
            Status::Running { pid, .. } => RunState::Running { pid },
            Status::Created | Status::Exited { .. } | Status::Restarting { .. } => {
                RunState::NotRunning
            }
        })
    }
}

/// The address book key of a container's overlay address.
fn address_key(id: &str) -> String {
    format!("container:{id}")
}

/// Docker's rule for names: a letter or digit, then letters, digits, `_.-`.
fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > 64
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        bail!("invalid container name {name:?}: use letters, digits and _ . - (starting with a letter or digit)");
    }
    Ok(())
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

const NAME_ADJECTIVES: [&str; 16] = [
    "brisk", "calm", "dapper", "eager", "fuzzy", "gentle", "hardy", "jolly", "keen", "lively",
    "mellow", "nimble", "plucky", "quiet", "sturdy", "witty",
];
const NAME_NOUNS: [&str; 16] = [
    "argyle", "bobbin", "check", "damask", "flannel", "gingham", "heather", "kilt", "loom",
    "madras", "plaid", "shuttle", "spindle", "tweed", "warp", "weft",
];

/// The network a container is run on (`--net`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetworkRequest {
    /// No `--net`: the overlay, or none on an agent without etcd.
    #[default]
    Default,
    Overlay,
    Host,
    None,
    /// Another container's namespace, by name or id.
    Container(String),
    /// A network made with `network create`, by name.
    Named(String),
}

impl NetworkRequest {
    /// Parses `--net`: Docker's `bridge` is the overlay.
    pub fn parse(text: &str) -> Result<NetworkRequest> {
        Ok(match text {
            "" => NetworkRequest::Default,
            "overlay" | "bridge" => NetworkRequest::Overlay,
            "host" => NetworkRequest::Host,
            "none" => NetworkRequest::None,
            other => match other.strip_prefix("container:") {
                Some(name) if !name.is_empty() => NetworkRequest::Container(name.to_string()),
                Some(_) => bail!("invalid --net {other:?}: use overlay, host, none, container:NAME or a network's name"),
                None => {
                    store::check_name(other).with_context(|| format!("invalid --net {other:?}"))?;
                    NetworkRequest::Named(other.to_string())
                }
            },
        })
    }
}

/// The first `ethN` the container does not have yet.
fn next_ifname(config: &ContainerConfig) -> String {
    let overlay_eth0 = config.network == NetworkMode::Overlay;
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|name| {
            let taken = (overlay_eth0 && name == "eth0")
                || config.endpoints.iter().any(|e| &e.ifname == name);
            !taken
        })
        .unwrap_or_else(|| "eth0".into())
}

/// The host's resolvers as a container sees them: loopback resolvers
/// (a local stub) are unreachable from another network namespace, so they
/// are dropped, and with none left the container gets public ones, as Docker
/// does.
fn resolv_conf(host: &str, own_netns: bool) -> String {
    if !own_netns {
        return host.to_string();
    }
    let mut kept = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let loopback = words
                .next()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .is_some_and(|a| a.is_loopback());
            if loopback {
                continue;
            }
            servers += 1;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    if servers == 0 {
        kept.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    kept
}

fn hosts_file(address: Option<Ipv4Addr>, hostname: &str, name: &str, extra: &[String]) -> String {
    let mut hosts = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    // --add-host and --link lines come before the container's own, as in Docker.
    for line in extra {
        hosts.push_str(line);
        hosts.push('\n');
    }
    if let Some(address) = address {
        if hostname == name {
            hosts.push_str(&format!("{address}\t{hostname}\n"));
        } else {
            hosts.push_str(&format!("{address}\t{hostname} {name}\n"));
        }
    }
    hosts
}

/// Rewrites a running container's `/etc/hosts`, through its root as its
/// process sees it.
fn write_hosts(pid: u32, address: Option<Ipv4Addr>, config: &ContainerConfig) -> Result<()> {
    let path = PathBuf::from(format!("/proc/{pid}/root/etc/hosts"));
    std::fs::write(
        &path,
        hosts_file(
            address,
            &config.spec.hostname,
            &config.name,
            &config.extra_hosts,
        ),
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// After a move: the supervisor's next restart of the container writes its
/// `/etc/hosts` and `resolv.conf` as they are now, not as at its start.
fn keep_moved_files(dir: &ContainerDir, pid: u32, name: &str) {
    if let Err(err) = dir.keep_files_of(pid, &["/etc/hosts", "/etc/resolv.conf"]) {
        warn!(container = %name, error = %format!("{err:#}"), "a restart of the container would write its old /etc/hosts and resolv.conf");
    }
}

/// The container's environment: Docker's defaults, then the operator's.
fn environment(given: &[String], hostname: &str, tty: bool) -> Vec<String> {
    let mut env: Vec<String> = vec![DEFAULT_PATH.to_string(), format!("HOSTNAME={hostname}")];
    if tty {
        env.push("TERM=xterm".into());
    }
    for entry in given {
        let key = entry.split('=').next().unwrap_or_default();
        env.retain(|e| e.split('=').next() != Some(key));
        env.push(entry.clone());
    }
    env
}

/// Waits until the process `pid` is gone, or `dir`'s supervisor lock is free.
async fn wait_for_shim_exit(pid: u32, dir: &ContainerDir) {
    // SAFETY: pidfd_open with a pid and no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd >= 0 {
        use std::os::fd::FromRawFd;
        // SAFETY: a fresh descriptor from pidfd_open.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        // The pid may have been recycled before the pidfd was opened: the lock tells.
        if !dir.shim_alive() {
            return;
        }
        // SAFETY: the AsyncFd owns the descriptor for its whole life.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        };
        if let Ok(async_fd) = registered {
            // Readable means exited; an error here means the same descriptor is unusable,
            // and the lock below still tells.
            if async_fd.readable().await.is_ok() {
                return;
            }
        }
    }
    while dir.shim_alive() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

impl Containers {
    /// Opens `state_dir/containers`, finding the containers an earlier agent
    /// left, running or not. Directories a crash left half-made are removed.
    pub fn open(
        state_dir: &Path,
        images: Images,
        overlay: Overlay,
        attacher: AttacherWatch,
        networks: NamedNetworks,
        hook: Arc<dyn LifecycleHook>,
        names: NameRegistry,
    ) -> Result<Containers> {
        let root = state_dir.join("containers");
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        let shim_binary = std::env::current_exe().context("finding the tartan binary")?;
        let containers = Containers {
            inner: Arc::new(Inner {
                root: root.clone(),
                images,
                overlay,
                attacher,
                networks,
                hook,
                shim_binary,
                entries: Mutex::new(HashMap::new()),
                ports: ports::Publisher::default(),
                volumes: volumes::VolumeStore::open(state_dir)?,
                names,
            }),
        };
        let listing =
            std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))?;
        for item in listing {
            let path = item
                .with_context(|| format!("reading {}", root.display()))?
                .path();
            let dir = ContainerDir::new(&path);
            if !dir.config_path().exists() {
                warn!(dir = %path.display(), "removing a container directory a crash left half-made");
                if let Err(err) = crate::teardown::remove_dir_all(&path) {
                    warn!(error = %format!("{err:#}"), "could not remove a half-made container directory");
                }
                continue;
            }
            match dir.read_config() {
                Ok(config) => {
                    containers.lock().insert(
                        config.id.clone(),
                        Entry {
                            config,
                            lifecycle: Arc::default(),
                        },
                    );
                }
                Err(err) => {
                    warn!(dir = %path.display(), error = %err, "skipping a container whose record is damaged");
                }
            }
        }
        Ok(containers)
    }

    /// After a restart: watches the containers still running, and settles
    /// those that ended while no agent was there (address freed, `--rm`
    /// honoured). Waits for the node's address book where it needs it.
    pub async fn recover(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        let mut running = 0;
        for id in ids {
            let dir = self.dir(&id);
            match self.status_of(&dir) {
                Status::Running { shim_pid, .. } | Status::Restarting { shim_pid, .. } => {
                    running += 1;
                    self.watch(id, shim_pid);
                }
                _ => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.settle(&id).await;
                        this.start_with_agent(&id).await;
                    });
                }
            }
        }
        info!(running, "found containers");
        // Rules of containers that ended while no agent was there go; those
        // of the running ones are put back if missing.
        let this = self.clone();
        tokio::spawn(async move { this.sync_ports_or_warn().await });
        // Names this host claimed for containers that are gone.
        let this = self.clone();
        tokio::spawn(async move {
            let alive = |id: &str| this.lock().contains_key(id);
            if let Err(err) = this.inner.names.sweep(alive).await {
                warn!(error = %format!("{err:#}"), "could not free the names of containers that no longer exist");
            }
        });
        // Addresses this host claimed for containers that are gone (removed
        // while etcd was out of reach): freed, fabric-wide.
        let this = self.clone();
        tokio::spawn(async move {
            let alive = |id: &str| this.lock().contains_key(id);
            if let Err(err) = this.inner.networks.release_orphans(alive).await {
                warn!(error = %format!("{err:#}"), "could not free the network addresses of containers that no longer exist");
            }
        });
        // OVS ports of named networks whose container is gone.
        let this = self.clone();
        tokio::spawn(async move {
            let alive = |id: &str| this.lock().contains_key(id);
            if let Err(err) = this.inner.networks.remove_orphan_ports(alive).await {
                warn!(error = %format!("{err:#}"), "could not remove the OVS ports of containers that no longer exist");
            }
        });
        // Bookings whose container is gone (a power cut can bring back an
        // older address book): freed once the node has its address book.
        let this = self.clone();
        tokio::spawn(async move {
            let Some(attacher) = this.attacher_ready().await else {
                return;
            };
            for key in attacher.owners_with_prefix("container:").await {
                let id = &key["container:".len()..];
                if !this.lock().contains_key(id) {
                    warn!(key = %key, "freeing the address of a container that no longer exists");
                    if let Err(err) = attacher.release_when_gone(&key).await {
                        warn!(key = %key, error = %format!("{err:#}"), "could not free the address");
                    }
                }
            }
        });
    }

    /// The current subnet's address book, if the node has one.
    fn attacher(&self) -> Option<Arc<Attacher>> {
        self.inner.attacher.borrow().clone()
    }

    /// The node's address book, once the node holds its lease and bridge.
    /// None when the agent is shutting down.
    async fn attacher_ready(&self) -> Option<Arc<Attacher>> {
        let mut watch = self.inner.attacher.clone();
        let ready = watch.wait_for(Option::is_some).await;
        ready.ok().and_then(|attacher| attacher.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn dir(&self, id: &str) -> ContainerDir {
        ContainerDir::new(self.inner.root.join(&id[..12]))
    }

    fn status_of(&self, dir: &ContainerDir) -> Status {
        let alive = dir.shim_alive();
        let state = dir.read_state();
        match (alive, state, dir.read_exit()) {
            (true, Some(state), Some(exit)) if dir.read_restart().restarting => {
                Status::Restarting {
                    code: exit.code,
                    shim_pid: state.shim_pid,
                    finished: exit.finished,
                }
            }
            (true, Some(state), _) => Status::Running {
                pid: state.pid,
                shim_pid: state.shim_pid,
                started: state.started,
            },
            (true, None, _) => Status::Created,
            (false, state, Some(exit)) => Status::Exited {
                code: exit.code,
                started: state.map(|s| s.started).unwrap_or_default(),
                finished: exit.finished,
            },
            // The supervisor died without a word (killed): the container went with its namespaces' owner or is beyond reach.
            (false, Some(state), None) => Status::Exited {
                code: 255,
                started: state.started,
                finished: String::new(),
            },
            (false, None, None) => Status::Created,
        }
    }

    /// A name, a full id or a unique id prefix, as Docker takes them.
    pub fn resolve(&self, text: &str) -> Result<String> {
        let entries = self.lock();
        if text.is_empty() {
            bail!("no container named");
        }
        if entries.contains_key(text) {
            return Ok(text.to_string());
        }
        if let Some(entry) = entries.values().find(|e| e.config.name == text) {
            return Ok(entry.config.id.clone());
        }
        let matches: Vec<&String> = entries.keys().filter(|id| id.starts_with(text)).collect();
        match matches.as_slice() {
            [id] => Ok((*id).clone()),
            [] => bail!("no such container: {text}"),
            _ => bail!("{text} matches more than one container; give more of the id"),
        }
    }

    /// The `/etc/hosts` lines of `links` ("NAME:ALIAS"), with Docker's
    /// errors for a linked container that is missing, stopped or has no
    /// address; `own` is the linking container's name. Also the
    /// environment the links give, as Docker's legacy links do.
    fn link_lines(&self, links: &[String], own: &str) -> Result<(Vec<String>, Vec<String>)> {
        let mut lines = Vec::new();
        let mut env = Vec::new();
        for text in links {
            let link = hosts::Link::parse(text)?;
            let view = self
                .resolve(&link.container)
                .and_then(|id| self.view(&id))
                .map_err(|_| {
                    anyhow!(
                        "could not get container for {0}: No such container: {0}",
                        link.container
                    )
                })?;
            if !matches!(view.status, Status::Running { .. }) {
                bail!(
                    "Cannot link to a non running container: /{} AS /{own}/{}",
                    view.config.name,
                    link.alias
                );
            }
            let Some(address) = view
                .config
                .address
                .as_deref()
                .and_then(|a| a.parse::<Ipv4Network>().ok())
            else {
                bail!(
                    "Cannot link to /{}, as it does not belong to the default network",
                    view.config.name
                );
            };
            lines.push(hosts::link_line(
                address.ip().into(),
                &link.alias,
                &view.config.spec.hostname,
                &view.config.name,
            ));
            // Its exposed ports are the image's and those it publishes, as in Docker.
            let exposed = view.config.spec.exposed_ports.iter().map(|p| {
                let text = p.to_string();
                let proto = text.split_once('/').map(|(_, proto)| proto.to_string());
                (p.port, proto.unwrap_or_else(|| "tcp".into()))
            });
            let published = view
                .config
                .ports
                .iter()
                .map(|p| (p.container_port, p.protocol.clone()));
            env.extend(
                link_env::Linked {
                    alias: &link.alias,
                    linking: own,
                    address: address.ip(),
                    ports: exposed.chain(published).collect(),
                    env: &view.config.spec.env,
                }
                .env(),
            );
        }
        Ok((lines, env))
    }

    fn entry_parts(&self, id: &str) -> Result<(ContainerConfig, Arc<tokio::sync::Mutex<()>>)> {
        let entries = self.lock();
        let entry = entries
            .get(id)
            // Found a moment ago by name or id prefix; the full id would mean nothing to the user.
            .ok_or_else(|| anyhow!("no such container: it has just been removed"))?;
        Ok((entry.config.clone(), entry.lifecycle.clone()))
    }

    pub fn view(&self, id: &str) -> Result<ContainerView> {
        let (config, _) = self.entry_parts(id)?;
        Ok(self.view_of(config))
    }

    fn view_of(&self, config: ContainerConfig) -> ContainerView {
        let dir = self.dir(&config.id);
        let status = self.status_of(&dir);
        let network = config.network.display(|id| {
            self.lock()
                .get(id)
                .map(|e| e.config.name.clone())
                .unwrap_or_else(|| id[..12.min(id.len())].to_string())
        });
        ContainerView {
            config,
            status,
            network,
            attach_socket: dir.socket_path(),
            restart_count: dir.read_restart().count,
            oom_killed: dir.read_exit().is_some_and(|e| e.oom_killed),
        }
    }

    /// Every container (running ones only unless `all`), newest first.
    pub fn list(&self, all: bool) -> Vec<ContainerView> {
        let configs: Vec<ContainerConfig> =
            self.lock().values().map(|e| e.config.clone()).collect();
        let mut views: Vec<ContainerView> = configs
            .into_iter()
            .map(|c| self.view_of(c))
            .filter(|v| {
                all || matches!(v.status, Status::Running { .. } | Status::Restarting { .. })
            })
            .collect();
        views.sort_by(|a, b| b.config.created.cmp(&a.config.created));
        views
    }

    /// Who uses the image `image_id`, for `rmi`: "running container web".
    pub fn user_of_image(&self, image_id: &str) -> Option<String> {
        let user = self
            .lock()
            .values()
            .find(|e| e.config.image_id == image_id)
            .map(|e| e.config.clone())?;
        let state = match self.status_of(&self.dir(&user.id)) {
            Status::Running { .. } | Status::Restarting { .. } => "running",
            Status::Exited { .. } => "stopped",
            Status::Created => "created",
        };
        Some(format!("{state} container {}", user.name))
    }

    /// `tartan run`: creates the container and starts it. Nothing stays
    /// behind when either step fails.
    pub async fn run(&self, opts: RunSpec) -> Result<ContainerView> {
        let image = {
            let images = self.inner.images.clone();
            let name = opts.image.clone();
            tokio::task::spawn_blocking(move || images.resolve(&name))
                .await
                .context("resolving the image")??
        };
        let mut named = None;
        let network = match (opts.network.clone(), self.inner.overlay) {
            (NetworkRequest::Default | NetworkRequest::Overlay, Overlay::Leased) => {
                NetworkMode::Overlay
            }
            // No lease, no overlay: the default is loopback alone, and
            // `tartan attach` adds interfaces.
            (NetworkRequest::Default, Overlay::NoStore) => NetworkMode::None,
            (NetworkRequest::Overlay, Overlay::NoStore) => bail!(OVERLAY_NEEDS_ETCD),
            (NetworkRequest::Host, _) => NetworkMode::Host,
            (NetworkRequest::None, _) => NetworkMode::None,
            (NetworkRequest::Container(name), _) => NetworkMode::Container(self.resolve(&name)?),
            (NetworkRequest::Named(name), _) => {
                let def = self.inner.networks.store().require(&name).await?;
                crate::networks::named::check_driver_available(&def.driver)?;
                named = Some(def);
                NetworkMode::Named(name)
            }
        };
        if !opts.ports.is_empty() && matches!(network, NetworkMode::Container(_)) {
            // Docker's words.
            bail!("conflicting options: port publishing and the container type network mode");
        }
        let exposed = if opts.publish_all {
            ports::image_exposed_ports(&image)
        } else {
            Vec::new()
        };
        // --net host and none publish nothing, as in Docker (the CLI warns for host).
        let requested_ports = if ports::can_publish(&network) {
            ports::requested_ports(&opts.ports, &exposed)
        } else {
            Vec::new()
        };
        if opts.ip.is_some() && !matches!(network, NetworkMode::Overlay | NetworkMode::Named(_)) {
            bail!("--ip needs --net overlay or a named network");
        }
        let named_ip = match (&named, &opts.ip) {
            (Some(def), Some(ip)) => Some(store::parse_ip(def, ip)?),
            _ => None,
        };
        if let (Some(ip), None) = (&opts.ip, &named) {
            let attacher = self.attacher().ok_or_else(|| {
                anyhow!("the agent holds no subnet lease yet, or keeps no bridge (the alloc backend, or --external-bridge)")
            })?;
            crate::networks::attach::parse_requested(ip, &attacher.subnet())?;
        }
        // The image's `Volumes` get anonymous volumes, which -v and
        // --volumes-from replace at the same path, as in Docker.
        let image_volumes: Vec<std::path::PathBuf> = image
            .config
            .as_ref()
            .map(|c| c.volumes.clone())
            .unwrap_or_default();
        let mounts = self.plan_mounts(&image_volumes, &opts.volumes, &opts.volumes_from)?;
        if !opts.links.is_empty() {
            // Docker's words.
            match network {
                NetworkMode::Host => {
                    bail!("conflicting options: host type networking can't be used with links. This would result in undefined behavior")
                }
                NetworkMode::Container(_) => {
                    bail!("conflicting options: container type network can't be used with links. This would result in undefined behavior")
                }
                _ => {}
            }
            // Refused before anything is made; without a name yet, the
            // start refuses it, naming the container, and the run is undone.
            if let Some(own) = &opts.name {
                let records: Vec<String> = opts.links.iter().map(|l| l.record()).collect();
                self.link_lines(&records, own)?;
            }
        }
        let (id, name, lifecycle) = {
            let mut entries = self.lock();
            let name = match &opts.name {
                Some(name) => {
                    if entries.values().any(|e| &e.config.name == name) {
                        bail!("the container name {name:?} is already in use");
                    }
                    name.clone()
                }
                None => loop {
                    let candidate = format!(
                        "{}_{}",
                        NAME_ADJECTIVES[rand::random_range(0..NAME_ADJECTIVES.len())],
                        NAME_NOUNS[rand::random_range(0..NAME_NOUNS.len())]
                    );
                    let candidate = if entries.values().any(|e| e.config.name == candidate) {
                        format!("{candidate}_{}", random_hex(2))
                    } else {
                        candidate
                    };
                    if !entries.values().any(|e| e.config.name == candidate) {
                        break candidate;
                    }
                },
            };
            // Directories are named by the first 12 digits, which must be unique too.
            let id = loop {
                let id = random_hex(32);
                if !entries.keys().any(|k| k[..12] == id[..12]) {
                    break id;
                }
            };
            let mut spec = opts.container.clone();
            image_config::apply(&mut spec, image.config.as_ref(), &opts.image_overrides)?;
            spec.hostname = opts
                .hostname
                .clone()
                .unwrap_or_else(|| id[..12].to_string());
            spec.env = environment(&spec.env, &spec.hostname, spec.tty);
            spec.mounts = mounts.clone();
            let config = ContainerConfig {
                id: id.clone(),
                name: name.clone(),
                image: opts.image.clone(),
                image_id: image.id.clone(),
                spec,
                network,
                requested_ip: opts.ip.clone(),
                address: None,
                auto_remove: opts.auto_remove,
                created: now_rfc3339(),
                endpoints: Vec::new(),
                ports: requested_ports.clone(),
                published: Vec::new(),
                links: opts.links.iter().map(|l| l.record()).collect(),
                extra_hosts: Vec::new(),
                add_hosts: opts.add_hosts.clone(),
                network_aliases: opts.network_aliases.clone(),
                link_env: Vec::new(),
            };
            let lifecycle: Arc<tokio::sync::Mutex<()>> = Arc::default();
            entries.insert(
                id.clone(),
                Entry {
                    config,
                    lifecycle: lifecycle.clone(),
                },
            );
            (id, name, lifecycle)
        };
        let _guard = lifecycle.lock().await;
        // Its names are the fabric's: one in use on any host refuses the run.
        let mut names = vec![name.clone()];
        names.extend(opts.network_aliases.iter().cloned());
        if let Err(err) = self.inner.names.claim(&names, &id).await {
            self.discard(&id).await;
            return Err(err);
        }
        let made = self.make_mounts(&mounts, &self.inner.images.layer_dirs(&image));
        if let Err(err) = made {
            self.discard(&id).await;
            return Err(err);
        }
        if let Some(def) = &named {
            // Claimed before the container exists: `--ip` taken fails the run.
            let joined = self
                .inner
                .networks
                .join(def, (&id, &name), "eth0", named_ip, true)
                .await;
            match joined {
                Ok(endpoint) => {
                    if let Some(entry) = self.lock().get_mut(&id) {
                        entry.config.endpoints.push(endpoint);
                    }
                }
                Err(err) => {
                    self.discard(&id).await;
                    return Err(err);
                }
            }
        }
        let created = self.create_and_start(&id, image, !opts.detach).await;
        if let Err(err) = created {
            self.discard(&id).await;
            return Err(err);
        }
        info!(container = %name, id = %&id[..12], "started a container");
        self.view(&id)
    }

    async fn create_and_start(
        &self,
        id: &str,
        image: tartan_runtime::Image,
        wait_for_attach: bool,
    ) -> Result<()> {
        let (config, _) = self.entry_parts(id)?;
        let dir = self.dir(id);
        dir.create()?;
        dir.write_config(&config)?;
        self.start_locked(id, Some(image), wait_for_attach).await
    }

    /// Undoes a failed `run`: the address, the interface, the directory,
    /// the entry. The run's own error is what the operator sees; failures
    /// here are logged.
    async fn discard(&self, id: &str) {
        let mut teardown = Teardown::new();
        let config = self.entry_parts(id).map(|(config, _)| config).ok();
        let endpoints = config
            .as_ref()
            .map(|config| config.endpoints.clone())
            .unwrap_or_default();
        for endpoint in &endpoints {
            teardown.step(
                &format!("freeing the address on {}", endpoint.network),
                self.inner.networks.leave(endpoint, id).await,
            );
        }
        if let Some(attacher) = self.attacher() {
            teardown.step(
                "freeing the address",
                attacher.release(&address_key(id)).await,
            );
        }
        teardown.step(
            "removing the container's directory",
            crate::teardown::remove_dir_all(self.dir(id).path()),
        );
        teardown.step("freeing its names", self.inner.names.release(id).await);
        self.lock().remove(id);
        if let Some(config) = &config {
            self.remove_anonymous_volumes(config);
        }
        for endpoint in &endpoints {
            self.remove_bridge_if_unused(endpoint, &mut teardown).await;
        }
        teardown.log("undoing a failed run left something behind");
    }

    /// `tartan start`.
    pub async fn start(&self, id: &str) -> Result<ContainerView> {
        let (_, lifecycle) = self.entry_parts(id)?;
        let _guard = lifecycle.lock().await;
        self.start_locked(id, None, false).await?;
        self.view(id)
    }

    /// Starts the container's supervisor and plugs the container's network
    /// in before its command runs. The caller holds the lifecycle lock;
    /// `image` is the container's image when the caller has it at hand.
    async fn start_locked(
        &self,
        id: &str,
        image: Option<tartan_runtime::Image>,
        wait_for_attach: bool,
    ) -> Result<()> {
        let (mut config, _) = self.entry_parts(id)?;
        let dir = self.dir(id);
        if let Status::Running { .. } | Status::Restarting { .. } = self.status_of(&dir) {
            bail!("container {} is already running", config.name);
        }
        let image = match image {
            Some(image) => image,
            None => {
                let images = self.inner.images.clone();
                let image_id = config.image_id.clone();
                tokio::task::spawn_blocking(move || images.resolve(&image_id))
                    .await
                    .context("resolving the image")??
            }
        };
        let layers = self.inner.images.layer_dirs(&image);
        // Links name the linked containers' addresses of now, as in Docker.
        let mut extra_hosts = Vec::new();
        for text in &config.add_hosts {
            extra_hosts.push(hosts::add_host_line(text)?);
        }
        let (link_hosts, link_env) = self.link_lines(&config.links, &config.name)?;
        extra_hosts.extend(link_hosts);
        config.extra_hosts = extra_hosts;
        config.link_env = link_env;
        // Host ports before anything is made: a port in use refuses the start.
        let (published, ports_guard) = self.reserve_ports(&config).await?;
        config.published = published;
        let publishes = !config.published.is_empty();

        // The network: an address booked before the process exists, so that /etc/hosts can name it.
        let key = address_key(id);
        // One attacher from booking to plugging, held so that a subnet
        // change waits until this start is done (and then moves it).
        let overlay = match &config.network {
            // Run on the overlay before the agent ran without etcd.
            NetworkMode::Overlay if self.inner.overlay == Overlay::NoStore => {
                bail!(OVERLAY_NEEDS_ETCD)
            }
            NetworkMode::Overlay => {
                let attacher = self.attacher().ok_or_else(|| {
                    anyhow!("the agent holds no subnet lease yet, or keeps no bridge (the alloc backend, or --external-bridge); use --net host or none")
                })?;
                let hold = attacher.hold().await;
                Some((attacher, hold))
            }
            _ => None,
        };
        let plan = match (&config.network, &overlay) {
            (NetworkMode::Overlay, Some((attacher, _))) => {
                let previous = config
                    .address
                    .as_deref()
                    .and_then(|a| a.parse::<Ipv4Network>().ok())
                    .map(|n| n.ip());
                let address = attacher
                    .reserve(&key, config.requested_ip.as_deref(), previous)
                    .await?;
                NetworkPlan {
                    address: Some(address),
                    join_netns: None,
                    new_netns: true,
                    attacher: Some(attacher.clone()),
                }
            }
            (NetworkMode::Overlay, None) | (NetworkMode::None, _) => NetworkPlan {
                address: None,
                join_netns: None,
                new_netns: true,
                attacher: None,
            },
            (NetworkMode::Named(_), _) => NetworkPlan {
                address: config
                    .endpoints
                    .iter()
                    .find(|e| e.ifname == "eth0")
                    .and_then(|e| e.address.parse().ok()),
                join_netns: None,
                new_netns: true,
                attacher: None,
            },
            (NetworkMode::Host, _) => NetworkPlan {
                address: None,
                join_netns: None,
                new_netns: false,
                attacher: None,
            },
            (NetworkMode::Container(other), _) => {
                let view = self
                    .view(other)
                    .map_err(|_| anyhow!("the container whose network was shared is gone"))?;
                let Status::Running { pid, .. } = view.status else {
                    bail!(
                        "container {} is not running: its network cannot be shared",
                        view.config.name
                    );
                };
                NetworkPlan {
                    address: view.config.address.as_deref().and_then(|a| a.parse().ok()),
                    join_netns: Some(PathBuf::from(format!("/proc/{pid}/ns/net"))),
                    new_netns: false,
                    attacher: None,
                }
            }
        };
        let started = self
            .launch(&dir, &config, &layers, &plan, wait_for_attach)
            .await;
        match started {
            Ok(()) => {
                if matches!(config.network, NetworkMode::Overlay | NetworkMode::Named(_))
                    || !config.extra_hosts.is_empty()
                {
                    config.address = plan.address.map(|a| a.to_string());
                    if let Err(err) = dir.update_config(&config) {
                        warn!(error = %err, "could not record the container's address");
                    }
                    if let Some(entry) = self.lock().get_mut(id) {
                        entry.config = config.clone();
                    }
                }
                self.publish_names(&config, plan.address);
                let shim_pid = dir.read_state().map(|s| s.shim_pid);
                match shim_pid {
                    Some(pid) => self.watch(id.to_string(), pid),
                    None => self.watch_by_lock(id.to_string()),
                }
                if publishes {
                    if let Err(err) = self.sync_ports(Some(&ports_guard)).await {
                        // Not running without the ports it was started with.
                        drop(ports_guard);
                        if let Err(undo) = self.stop_locked(id, Duration::ZERO).await {
                            return Err(crate::teardown::and_undo(err, undo));
                        }
                        return Err(err);
                    }
                }
                Ok(())
            }
            Err(err) => {
                if let Some(attacher) = &plan.attacher {
                    if let Err(undo) = attacher.release(&key).await {
                        return Err(crate::teardown::and_undo(err, undo));
                    }
                }
                Err(err)
            }
        }
    }

    async fn launch(
        &self,
        dir: &ContainerDir,
        config: &ContainerConfig,
        layers: &[PathBuf],
        plan: &NetworkPlan,
        wait_for_attach: bool,
    ) -> Result<()> {
        let address = plan.address;
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let hosts = match config.network {
            NetworkMode::Host => {
                let mut hosts = std::fs::read_to_string("/etc/hosts")
                    .unwrap_or_else(|_| hosts_file(None, &config.spec.hostname, &config.name, &[]));
                // --add-host with --net host: appended to the host's, as in Docker.
                for line in &config.extra_hosts {
                    hosts.push_str(line);
                    hosts.push('\n');
                }
                hosts
            }
            _ => hosts_file(
                address.map(|a| a.ip()),
                &config.spec.hostname,
                &config.name,
                &config.extra_hosts,
            ),
        };
        let spec = ShimSpec {
            init: InitSpec {
                layers: layers.to_vec(),
                upper: dir.upper(),
                work: dir.work(),
                merged: dir.rootfs(),
                files: vec![
                    InitFile {
                        path: "/etc/hosts".into(),
                        contents: hosts,
                    },
                    InitFile {
                        path: "/etc/hostname".into(),
                        contents: format!("{}\n", config.spec.hostname),
                    },
                    InitFile {
                        path: "/etc/resolv.conf".into(),
                        contents: match self.fabric_dns(config, plan).await {
                            Some(server) => {
                                crate::names::dns::container_resolv_conf(&host_resolv, server)
                            }
                            None => resolv_conf(&host_resolv, config.network != NetworkMode::Host),
                        },
                    },
                ],
                container: ContainerSpec {
                    env: link_env::with_link_env(&config.spec.env, &config.link_env),
                    ..config.spec.clone()
                },
            },
            new_netns: plan.new_netns,
            join_netns: plan.join_netns.clone(),
            wait_for_attach,
            cgroup: Some(config.id.clone()),
        };
        dir.mark_started()?;
        dir.clear_run()?;
        // A start undoes a stop, and counts restarts afresh, as Docker's.
        dir.clear_restart()?;
        let spec_path = dir.shim_spec_path();
        std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec)?)
            .with_context(|| format!("writing {}", spec_path.display()))?;

        let mut command = tokio::process::Command::new(&self.inner.shim_binary);
        let mut shim = crate::notify::without_service_variables(&mut command)
            .arg("shim")
            .arg(dir.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} shim", self.inner.shim_binary.display()))?;
        let mut go = shim.stdin.take().context("the supervisor's input")?;
        let mut stdout = BufReader::new(shim.stdout.take().context("the supervisor's output")?);
        let mut line = String::new();
        let read = tokio::time::timeout(SHIM_READY_TIMEOUT, stdout.read_line(&mut line)).await;
        // The supervisor is this agent's child until the agent goes: reap it when it ends.
        tokio::spawn(async move {
            if let Err(err) = shim.wait().await {
                warn!(error = %err, "could not reap a container's supervisor");
            }
        });
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => bail!("reading from the container's supervisor: {err}"),
            Err(_) => {
                bail!("the container's supervisor did not report within {SHIM_READY_TIMEOUT:?}")
            }
        }
        let ready = line.trim().to_string();
        let line = ready.as_str();
        let pid: u32 = match line.strip_prefix("ready ") {
            Some(rest) => rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow!("the container's supervisor said {line:?}"))?,
            None => bail!(
                "{}",
                line.strip_prefix("error: ").unwrap_or(if line.is_empty() {
                    "the container's supervisor failed"
                } else {
                    line
                })
            ),
        };
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let plugged = match (&config.network, &plan.attacher) {
            (NetworkMode::Overlay, Some(attacher)) => {
                attacher.plug(&address_key(&config.id), netns.clone()).await
            }
            (NetworkMode::None | NetworkMode::Named(_), _) => {
                tartan_dataplane::Netlink::loopback_up(&netns)
                    .await
                    .map_err(anyhow::Error::from)
            }
            _ => Ok(()),
        };
        let mut plugged = plugged;
        for endpoint in &config.endpoints {
            if plugged.is_err() {
                break;
            }
            plugged = self
                .inner
                .networks
                .plug(endpoint, &config.id, netns.clone())
                .await;
        }
        if let Err(err) = plugged {
            // The supervisor kills the waiting process and goes; a failed
            // write means it is gone already, and its process with it.
            let _ = go.write_all(b"abort\n").await;
            return Err(err.context("plugging the container into the network"));
        }
        // Its other attachments are back before its command runs.
        self.inner.hook.started(&config.id, pid).await;
        go.write_all(b"go\n")
            .await
            .context("starting the container's process")?;
        drop(go);
        if wait_for_attach {
            // The client attaching sees the command start, or why it could not.
            return Ok(());
        }
        // The supervisor says whether the command runs once it has been exec'd.
        let mut report = String::new();
        let read = tokio::time::timeout(SHIM_READY_TIMEOUT, stdout.read_line(&mut report)).await;
        let report = report.trim();
        if let Some(failure) = report.strip_prefix("failed ") {
            // Gone before the caller removes its directory.
            if !wait_gone(dir, KILL_TIMEOUT).await {
                warn!(container = %config.name, "the supervisor of a container that could not start still runs");
            }
            return Err(CommandFailed::parse(failure).into());
        }
        if read.is_err() {
            warn!(container = %config.name, "the container's supervisor did not report its command within {SHIM_READY_TIMEOUT:?}");
        }
        // The state file follows the report.
        let deadline = Instant::now() + SHIM_READY_TIMEOUT;
        while dir.read_state().is_none() && dir.read_exit().is_none() {
            if Instant::now() > deadline || !dir.shim_alive() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    fn watch(&self, id: String, shim_pid: u32) {
        let this = self.clone();
        tokio::spawn(async move {
            let dir = this.dir(&id);
            wait_for_shim_exit(shim_pid, &dir).await;
            this.settle(&id).await;
        });
    }

    /// For a supervisor still waiting for its client: no pid recorded yet.
    fn watch_by_lock(&self, id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let dir = this.dir(&id);
            loop {
                if let Some(state) = dir.read_state() {
                    wait_for_shim_exit(state.shim_pid, &dir).await;
                    break;
                }
                if !dir.shim_alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            this.settle(&id).await;
        });
    }

    /// After a container ended: its address goes back to the book, and a
    /// `--rm` container goes altogether.
    async fn settle(&self, id: &str) {
        let Ok((config, lifecycle)) = self.entry_parts(id) else {
            return;
        };
        let _guard = lifecycle.lock().await;
        let dir = self.dir(id);
        if dir.shim_alive() {
            // Started again meanwhile.
            return;
        }
        // As Docker's DNS: only a running container's names are answered.
        self.publish_names(&config, None);
        if !config.published.is_empty() {
            self.sync_ports_or_warn().await;
        }
        if config.network == NetworkMode::Overlay {
            match self.attacher() {
                Some(attacher) => {
                    if let Err(err) = attacher.release_when_gone(&address_key(id)).await {
                        warn!(container = %config.name, error = %format!("{err:#}"), "could not free the container's address");
                    }
                }
                // No address book yet (the agent is starting): freed once
                // there is one, without holding up this container's commands.
                None => self.release_later(id.to_string()),
            }
        }
        if config.auto_remove && self.lock().contains_key(id) {
            let mut teardown = Teardown::new();
            for endpoint in &config.endpoints {
                teardown.step(
                    &format!("freeing the address on {}", endpoint.network),
                    self.inner.networks.leave(endpoint, id).await,
                );
            }
            if let Err(err) = crate::teardown::remove_dir_all(dir.path()) {
                warn!(container = %config.name, error = %format!("{err:#}"), "could not remove a container that ended (--rm)");
                return;
            }
            self.lock().remove(id);
            teardown.step("freeing its names", self.inner.names.release(id).await);
            // As Docker's --rm: its anonymous volumes go with it.
            self.remove_anonymous_volumes(&config);
            teardown.step(
                "removing its attachments",
                self.inner.hook.removed(id).await,
            );
            info!(container = %config.name, "removed a container that ended (--rm)");
            for endpoint in &config.endpoints {
                self.remove_bridge_if_unused(endpoint, &mut teardown).await;
            }
            teardown.log("removing a container that ended (--rm) left something behind");
        }
    }

    /// At the agent's start: brings back a container that is not running
    /// if its restart policy says so (see [`restart::starts_with_agent`]).
    async fn start_with_agent(&self, id: &str) {
        let Ok((config, lifecycle)) = self.entry_parts(id) else {
            return;
        };
        let dir = self.dir(id);
        // A supervisor still waiting for the agent that died gives up as soon
        // as it sees that agent gone: its end is awaited, not raced.
        let deadline = tokio::time::Instant::now() + SHIM_READY_TIMEOUT;
        while dir.shim_alive()
            && dir.read_state().is_none()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let last_exit = match self.status_of(&dir) {
            Status::Exited { code, .. } => Some(code),
            // A start cut short by the agent's or the host's end: as a
            // process killed (Docker's 255 for a container that went with
            // its daemon), so that its policy still holds.
            Status::Created if dir.started_before() => Some(255),
            _ => None,
        };
        let starts = restart::starts_with_agent(
            config.spec.restart,
            dir.stopped_by_operator(),
            last_exit,
            dir.read_restart().count,
        );
        if !starts {
            return;
        }
        // The overlay needs the node's address book, which comes with the lease.
        if config.network == NetworkMode::Overlay
            && self.inner.overlay == Overlay::Leased
            && self.attacher_ready().await.is_none()
        {
            return;
        }
        let _guard = lifecycle.lock().await;
        match self.start_locked(id, None, false).await {
            Ok(()) => {
                info!(container = %config.name, policy = config.spec.restart.name(), "started a container by its restart policy")
            }
            Err(err) => {
                warn!(container = %config.name, error = %format!("{err:#}"), "could not start a container by its restart policy")
            }
        }
    }

    fn release_later(&self, id: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let Some(attacher) = this.attacher_ready().await else {
                return;
            };
            // Unless it started again meanwhile, with an address of its own.
            let lifecycle = this.entry_parts(&id).ok().map(|(_, lifecycle)| lifecycle);
            let _guard = match &lifecycle {
                Some(lifecycle) => Some(lifecycle.lock().await),
                None => None,
            };
            if this.dir(&id).shim_alive() {
                return;
            }
            if let Err(err) = attacher.release_when_gone(&address_key(&id)).await {
                warn!(container = %id, error = %format!("{err:#}"), "could not free the container's address");
            }
        });
    }

    /// Whether a container of this host is on the network `network_id`.
    fn is_on_network(&self, network_id: &str) -> bool {
        self.lock().values().any(|e| {
            e.config
                .endpoints
                .iter()
                .any(|other| other.network_id == network_id)
        })
    }

    /// Removes a named network's bridge on this host once no container
    /// here is on that network.
    async fn remove_bridge_if_unused(&self, endpoint: &Endpoint, teardown: &mut Teardown) {
        let in_use = self.is_on_network(&endpoint.network_id);
        if !in_use {
            let still_unused = || !self.is_on_network(&endpoint.network_id);
            teardown.step(
                &format!("removing the bridge of network {}", endpoint.network),
                self.inner
                    .networks
                    .remove_bridge(endpoint, still_unused)
                    .await,
            );
        }
    }

    /// `tartan network connect`: the container gets the next `ethN` on the
    /// network, at once if it runs, and at every start from now on.
    pub async fn connect(
        &self,
        id: &str,
        network: &str,
        ip: Option<&str>,
    ) -> Result<ContainerView> {
        let (_, lifecycle) = self.entry_parts(id)?;
        let _guard = lifecycle.lock().await;
        let (mut config, _) = self.entry_parts(id)?;
        if matches!(
            config.network,
            NetworkMode::Host | NetworkMode::None | NetworkMode::Container(_)
        ) {
            bail!(
                "container {} runs with --net {}: it cannot join other networks",
                config.name,
                config
                    .network
                    .display(|id| id[..12.min(id.len())].to_string())
            );
        }
        if config.endpoints.iter().any(|e| e.network == network) {
            bail!("container {} is already on network {network}", config.name);
        }
        let def = self.inner.networks.store().require(network).await?;
        let requested = ip.map(|ip| store::parse_ip(&def, ip)).transpose()?;
        let ifname = next_ifname(&config);
        let endpoint = self
            .inner
            .networks
            .join(&def, (id, &config.name), &ifname, requested, false)
            .await?;
        let dir = self.dir(id);
        config.endpoints.push(endpoint.clone());
        // Recorded before it is plugged: the network's bridge stays while it is.
        if let Some(entry) = self.lock().get_mut(id) {
            entry.config = config.clone();
        }
        let mut netns = None;
        let mut joined = Ok(());
        if let Status::Running { pid, .. } = self.status_of(&dir) {
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            joined = self.inner.networks.plug(&endpoint, id, path.clone()).await;
            netns = Some(path);
        }
        if joined.is_ok() {
            joined = dir.update_config(&config).map_err(anyhow::Error::from);
        }
        if let Err(err) = joined {
            config.endpoints.pop();
            if let Some(entry) = self.lock().get_mut(id) {
                entry.config = config;
            }
            let mut teardown = Teardown::new();
            if let Some(netns) = netns {
                teardown.step(
                    "removing the interface",
                    self.inner.networks.unplug(&endpoint, id, netns).await,
                );
            }
            teardown.step(
                "freeing the address",
                self.inner.networks.leave(&endpoint, id).await,
            );
            self.remove_bridge_if_unused(&endpoint, &mut teardown).await;
            teardown.log("undoing a failed connect left something behind");
            return Err(err);
        }
        info!(container = %id, network, interface = %ifname, "connected a container to a network");
        self.view(id)
    }

    /// `tartan network disconnect`: the interface goes, and its address.
    pub async fn disconnect(&self, id: &str, network: &str) -> Result<ContainerView> {
        let (_, lifecycle) = self.entry_parts(id)?;
        let _guard = lifecycle.lock().await;
        let (mut config, _) = self.entry_parts(id)?;
        let Some(index) = config.endpoints.iter().position(|e| e.network == network) else {
            bail!("container {} is not on network {network}", config.name);
        };
        let endpoint = config.endpoints.remove(index);
        if let Status::Running { pid, .. } = self.status_of(&self.dir(id)) {
            let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
            self.inner.networks.unplug(&endpoint, id, netns).await?;
        }
        self.dir(id).update_config(&config)?;
        if let Some(entry) = self.lock().get_mut(id) {
            entry.config = config;
        }
        let mut teardown = Teardown::new();
        teardown.step(
            "freeing the address",
            self.inner.networks.leave(&endpoint, id).await,
        );
        self.remove_bridge_if_unused(&endpoint, &mut teardown).await;
        teardown.finish()?;
        self.view(id)
    }

    /// `tartan stop`: SIGTERM, then SIGKILL after `timeout`. A container
    /// that is not running is left as it is.
    pub async fn stop(&self, id: &str, timeout: Duration) -> Result<ContainerView> {
        let (_, lifecycle) = self.entry_parts(id)?;
        let guard = lifecycle.lock().await;
        self.stop_locked(id, timeout).await?;
        let view = self.view(id)?;
        drop(guard);
        // Frees the address now rather than when the watcher gets to it; removes a --rm container.
        self.settle(id).await;
        Ok(view)
    }

    async fn stop_locked(&self, id: &str, timeout: Duration) -> Result<()> {
        let dir = self.dir(id);
        let (Status::Running { .. } | Status::Restarting { .. }) = self.status_of(&dir) else {
            return Ok(());
        };
        // Before any signal: its supervisor must not run it again.
        dir.mark_stopped()?;
        if signal_until_gone(&dir, libc::SIGTERM, timeout).await?
            || signal_until_gone(&dir, libc::SIGKILL, KILL_TIMEOUT).await?
        {
            return Ok(());
        }
        let name = self.entry_parts(id).map(|(config, _)| config.name)?;
        bail!("container {name} did not stop: its supervisor still runs {KILL_TIMEOUT:?} later")
    }

    /// `tartan restart`.
    pub async fn restart(&self, id: &str, timeout: Duration) -> Result<ContainerView> {
        let (_, lifecycle) = self.entry_parts(id)?;
        let _guard = lifecycle.lock().await;
        self.stop_locked(id, timeout).await?;
        self.start_locked(id, None, false).await?;
        self.view(id)
    }

    /// `tartan rm`: a running container only with `force` (SIGKILL).
    pub async fn remove(&self, id: &str, force: bool) -> Result<ContainerView> {
        let (config, lifecycle) = self.entry_parts(id)?;
        let _guard = lifecycle.lock().await;
        let dir = self.dir(id);
        let mut view = self.view(id)?;
        if matches!(view.status, Status::Running { .. }) && dir.read_exit().is_some() {
            // Its process has ended and the supervisor is finishing (telling
            // `run --rm` the exit code): as good as exited.
            if !wait_gone(&dir, KILL_TIMEOUT).await {
                bail!(
                    "container {} ended but its supervisor still runs {KILL_TIMEOUT:?} later",
                    config.name
                );
            }
            view = self.view(id)?;
        }
        if let Status::Running { .. } | Status::Restarting { .. } = view.status {
            if !force {
                // Docker's words (its daemon names the full id).
                let state = match view.status {
                    Status::Restarting { .. } => "restarting",
                    _ => "running",
                };
                bail!(
                    "You cannot remove a {state} container {}. Stop the container before attempting removal or force remove",
                    config.id
                );
            }
            // Not to be run again by its restart policy.
            dir.mark_stopped()?;
            if !signal_until_gone(&dir, libc::SIGKILL, KILL_TIMEOUT).await? {
                bail!(
                    "container {} did not die within {KILL_TIMEOUT:?}",
                    config.name
                );
            }
            view = self.view(id)?;
        }
        // Every step is tried; what failed is reported together.
        let mut teardown = Teardown::new();
        if config.network == NetworkMode::Overlay {
            if let Some(attacher) = self.attacher() {
                teardown.step(
                    "freeing the container's address",
                    attacher.release_when_gone(&address_key(id)).await,
                );
            }
        }
        for endpoint in &config.endpoints {
            teardown.step(
                &format!("freeing the address on {}", endpoint.network),
                self.inner.networks.leave(endpoint, id).await,
            );
        }
        teardown.step("removing its cgroup", limits::remove_cgroup(id).await);
        let removed = teardown.step(
            "removing the container",
            crate::teardown::remove_dir_all(dir.path()),
        );
        if removed.is_some() {
            self.lock().remove(id);
            teardown.step("freeing its names", self.inner.names.release(id).await);
            if !config.published.is_empty() {
                self.sync_ports_or_warn().await;
            }
            teardown.step(
                "removing its attachments",
                self.inner.hook.removed(id).await,
            );
            info!(container = %config.name, "removed a container");
            for endpoint in &config.endpoints {
                self.remove_bridge_if_unused(endpoint, &mut teardown).await;
            }
        }
        teardown.finish()?;
        Ok(view)
    }

    /// Keeps the running containers on the node's subnet, for as long as the
    /// agent runs: whenever an address book is published (at start, and
    /// when the subnet changes), those with an address outside it move.
    pub async fn follow_subnet(self, mut attacher: AttacherWatch) {
        loop {
            let current = attacher.borrow_and_update().clone();
            if let Some(current) = current {
                self.move_to(&current).await;
            }
            if attacher.changed().await.is_err() {
                return;
            }
        }
    }

    /// Gives every running overlay container whose address lies outside
    /// `attacher`'s subnet an address of it: a new interface with the new
    /// address and gateway route, and `/etc/hosts` rewritten. Containers
    /// sharing a moved one's network get their `/etc/hosts` rewritten too,
    /// and their resolv.conf pointed at the agent's new address.
    async fn move_to(&self, attacher: &Attacher) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        // By container: the address it had, and the one it has now.
        let mut moved: HashMap<String, (Option<Ipv4Network>, Ipv4Network)> = HashMap::new();
        for id in &ids {
            let Ok((config, lifecycle)) = self.entry_parts(id) else {
                continue;
            };
            let on_subnet = config
                .address
                .as_deref()
                .and_then(|a| a.parse::<Ipv4Network>().ok())
                .is_some_and(|a| attacher.subnet().contains(a.ip()));
            if config.network != NetworkMode::Overlay || on_subnet {
                continue;
            }
            let _guard = lifecycle.lock().await;
            match self.move_one(id, attacher).await {
                Ok(Some(address)) => {
                    info!(
                        container = %config.name,
                        from = config.address.as_deref().unwrap_or("none"),
                        to = %address,
                        "moved the container to the node's new subnet"
                    );
                    let old = config.address.as_deref().and_then(|a| a.parse().ok());
                    moved.insert(id.clone(), (old, address));
                    self.publish_names(&config, Some(address));
                }
                Ok(None) => {}
                Err(err) => {
                    warn!(container = %config.name, error = %format!("{err:#}"), "could not move the container to the node's new subnet");
                }
            }
        }
        for id in &ids {
            let Ok((config, _)) = self.entry_parts(id) else {
                continue;
            };
            let NetworkMode::Container(other) = &config.network else {
                continue;
            };
            let Some((old, address)) = moved.get(other) else {
                continue;
            };
            if let Status::Running { pid, .. } = self.status_of(&self.dir(id)) {
                if let Err(err) = write_hosts(pid, Some(address.ip()), &config) {
                    warn!(container = %config.name, error = %format!("{err:#}"), "could not rewrite /etc/hosts after a move");
                }
                if let Some(old) = old {
                    if let Err(err) = fabric_dns::repoint_resolv_conf(pid, *old, *address) {
                        warn!(container = %config.name, error = %format!("{err:#}"), "could not point /etc/resolv.conf at the new bridge address");
                    }
                }
                keep_moved_files(&self.dir(id), pid, &config.name);
            }
        }
        // Published ports follow the new addresses.
        if !moved.is_empty() {
            self.sync_ports_or_warn().await;
        }
    }

    /// Moves one container if it runs; returns its new address.
    async fn move_one(&self, id: &str, attacher: &Attacher) -> Result<Option<Ipv4Network>> {
        let (mut config, _) = self.entry_parts(id)?;
        let dir = self.dir(id);
        let Status::Running { pid, .. } = self.status_of(&dir) else {
            return Ok(None);
        };
        if let Some(requested) = config.requested_ip.take() {
            warn!(container = %config.name, ip = %requested, "the --ip address is outside the new subnet; the container gets another, and keeps it");
        }
        let key = address_key(id);
        let address = attacher.reserve(&key, None, None).await?;
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        if let Err(err) = attacher.plug(&key, netns).await {
            if let Err(undo) = attacher.release(&key).await {
                return Err(crate::teardown::and_undo(err, undo));
            }
            return Err(err);
        }
        let old = config.address.as_deref().and_then(|a| a.parse().ok());
        config.address = Some(address.to_string());
        dir.update_config(&config)?;
        write_hosts(pid, Some(address.ip()), &config)?;
        if let Some(old) = old {
            if let Err(err) = fabric_dns::repoint_resolv_conf(pid, old, address) {
                warn!(container = %config.name, error = %format!("{err:#}"), "could not point /etc/resolv.conf at the new bridge address");
            }
        }
        keep_moved_files(&dir, pid, &config.name);
        if let Some(entry) = self.lock().get_mut(id) {
            entry.config = config;
        }
        Ok(Some(address))
    }

    /// The log file, for `tartan logs`.
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).log_path()
    }

    /// Whether the container's supervisor lives (running, or about to).
    pub fn is_live(&self, id: &str) -> bool {
        self.dir(id).shim_alive()
    }

    /// Where `export` finds the container's layers.
    pub fn export_parts(&self, id: &str) -> Result<(Vec<PathBuf>, PathBuf, PathBuf)> {
        let (config, _) = self.entry_parts(id)?;
        let image = self.inner.images.resolve(&config.image_id)?;
        let dir = self.dir(id);
        let mountpoint = dir.path().join(format!("export-{}", random_hex(4)));
        Ok((
            self.inner.images.layer_dirs(&image),
            dir.upper(),
            mountpoint,
        ))
    }
}

/// Sends `signal` to the container's process, and again to each process
/// its supervisor starts meanwhile, until the supervisor is gone (true) or
/// `timeout` has passed. Nothing is sent once the process has ended.
async fn signal_until_gone(dir: &ContainerDir, signal: i32, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut signalled = None;
    loop {
        if !dir.shim_alive() {
            return Ok(true);
        }
        // By pidfd, and only while the recorded pid is still the container's.
        let pid = dir.read_state().map(|state| state.pid);
        if pid != signalled && dir.signal(signal)? {
            signalled = pid;
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_gone(dir: &ContainerDir, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !dir.shim_alive() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_docker_rules() {
        assert!(check_name("web-1.a_b").is_ok());
        assert!(check_name("-web").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn network_modes_parse() {
        for (given, expected) in [
            ("", NetworkRequest::Default),
            ("overlay", NetworkRequest::Overlay),
            ("bridge", NetworkRequest::Overlay),
            ("host", NetworkRequest::Host),
            ("none", NetworkRequest::None),
            ("container:web", NetworkRequest::Container("web".into())),
            ("network01", NetworkRequest::Named("network01".into())),
        ] {
            assert_eq!(NetworkRequest::parse(given).ok(), Some(expected), "{given}");
        }
        assert!(NetworkRequest::parse("container:").is_err());
        assert!(NetworkRequest::parse("a/b").is_err());
    }

    #[test]
    fn interfaces_are_numbered_in_order_around_the_overlay() {
        let mut config: ContainerConfig = serde_json::from_value(serde_json::json!({
            "id": "ab", "name": "c", "image": "i", "image_id": "d", "args": [], "env": [],
            "cwd": "/", "hostname": "h", "tty": false, "open_stdin": false,
            "network": "overlay", "requested_ip": null, "auto_remove": false, "created": ""
        }))
        .expect("a record without endpoints");
        assert_eq!(next_ifname(&config), "eth1");
        config.network = NetworkMode::Named("n".into());
        assert_eq!(next_ifname(&config), "eth0");
    }

    #[test]
    fn loopback_resolvers_are_replaced_in_a_namespace_of_its_own() {
        let host = "search example.org\nnameserver 127.0.0.53\noptions edns0\n";
        let own = resolv_conf(host, true);
        assert!(!own.contains("127.0.0.53"));
        assert!(own.contains("nameserver 8.8.8.8"));
        assert!(own.contains("search example.org"));
        assert_eq!(resolv_conf(host, false), host);
        let real = "nameserver 10.0.0.2\n";
        assert_eq!(resolv_conf(real, true), real);
    }

    #[test]
    fn the_environment_has_docker_defaults_the_operator_overrides() {
        let env = environment(&["PATH=/bin".into(), "A=1".into()], "h", true);
        assert_eq!(env, ["HOSTNAME=h", "TERM=xterm", "PATH=/bin", "A=1"]);
    }

    #[test]
    fn hosts_names_the_container() {
        let extra = ["10.0.0.7\tdb".to_string()];
        let hosts = hosts_file(Some(Ipv4Addr::new(10, 5, 1, 2)), "abc", "web", &extra);
        assert!(hosts.ends_with("ff02::2\tip6-allrouters\n10.0.0.7\tdb\n10.5.1.2\tabc web\n"));
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"));
    }
}
