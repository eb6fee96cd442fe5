//! Containers: the on-disk record of each one, its supervisor (`tartan
//! shim`), the attach protocol, the log, and the ways in (exec, export).
//!
//! A container lives in a directory of its own:
//! `config.json` (what the agent asked for), `shim.json` (what the
//! supervisor runs), `state.json` (pids, written once the process runs),
//! `exit.json` (how it ended), `container.log`, `attach.sock`, `shim.lock`
//! (held by the supervisor for as long as it lives), `restart.json` and
//! `stopped` (the restart policy's state, see [`restart`]), and `upper`,
//! `work` and `rootfs` for the root filesystem.

pub mod exec;
pub mod export;
pub mod frame;
pub mod log;
pub mod ports;
pub mod restart;
pub mod shim;
pub mod spec;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::init::InitSpec;
use crate::process::{proc_stat, Pidfd, ProcStat};
use crate::{Result, RuntimeError};

pub use spec::ContainerSpec;

/// How a container is networked (`--net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// Its own network namespace on the node bridge, with an overlay address.
    Overlay,
    /// The host's network namespace.
    Host,
    /// Its own network namespace with only loopback.
    None,
    /// The network namespace of another container (by id).
    Container(String),
    /// Its own network namespace whose `eth0` is on a named network (by name).
    Named(String),
}

impl NetworkMode {
    /// Docker's spelling, for `--net` and for display.
    pub fn display(&self, name_of: impl Fn(&str) -> String) -> String {
        match self {
            NetworkMode::Overlay => "overlay".into(),
            NetworkMode::Host => "host".into(),
            NetworkMode::None => "none".into(),
            NetworkMode::Container(id) => format!("container:{}", name_of(id)),
            NetworkMode::Named(name) => name.clone(),
        }
    }
}

/// What the agent asked for; written once at creation, updated on start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    pub id: String,
    pub name: String,
    /// The image as the operator named it, and what it resolved to.
    pub image: String,
    pub image_id: String,
    /// What it runs; flattened, so that records keep the fields older
    /// agents wrote (`args`, `env`, `cwd`, `hostname`, `tty`, `open_stdin`,
    /// `security`) where they were.
    #[serde(flatten)]
    pub spec: ContainerSpec,
    pub network: NetworkMode,
    /// `--ip`, when given: the container gets this address or does not start.
    pub requested_ip: Option<String>,
    /// The overlay address of the last start, with its prefix length.
    #[serde(default)]
    pub address: Option<String>,
    pub auto_remove: bool,
    /// RFC 3339.
    pub created: String,
    /// Its interfaces on named networks, in the order they were made; kept
    /// so that every start makes the same `ethN` with the same address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// `-p`/`-P` as asked for (a host port 0 is chosen at each start).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ports::PortBinding>,
    /// The ports of the current or last start, host ports chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<ports::PortBinding>,
    /// `--link` as given, "NAME:ALIAS".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// `/etc/hosts` lines past the defaults and before the container's own,
    /// "ADDRESS\tNAMES": `--add-host`, then the links as of the last start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// `--add-host` as given, "NAME:IP".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_hosts: Vec<String>,
    /// `--network-alias`: names the fabric's DNS answers for it besides its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_aliases: Vec<String>,
    /// The environment `--link` gave at the last start (Docker's legacy
    /// link variables), which `exec` passes on too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_env: Vec<String>,
}

/// One interface of a container on a named network, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The network's name and id (the id tells a network re-created under
    /// the same name from the one the address was claimed on).
    pub network: String,
    pub network_id: String,
    /// The network's driver and options, as when the container joined.
    pub driver: String,
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// `eth0`, `eth1`, ...
    pub ifname: String,
    /// "ADDR/LEN".
    pub address: String,
    pub gateway: Option<std::net::Ipv4Addr>,
    /// Whether the default route goes through this interface's gateway.
    pub default_route: bool,
}

/// What the supervisor runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimSpec {
    /// The container's root and its [`ContainerSpec`], as recorded.
    pub init: InitSpec,
    /// A network namespace of its own (overlay, none) rather than the host's.
    pub new_netns: bool,
    /// Another container's network namespace to join (`--net container:`).
    pub join_netns: Option<PathBuf>,
    /// Hold the process until the first client attaches, so that a
    /// foreground `run` misses none of its output.
    pub wait_for_attach: bool,
    /// The container's id, naming its cgroup; absent from older agents' specs (no cgroup then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
}

/// Written by the supervisor once the container's process exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub shim_pid: u32,
    /// The container's first process, as the host's PID namespace numbers it.
    pub pid: u32,
    pub started: String,
    /// That process's start time (`/proc/PID/stat`), which tells it from a
    /// later process given the same pid. Absent from older supervisors' records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
}

impl RunState {
    /// Whether `stat` describes the container's first process: a child of
    /// the supervisor (which makes no other), started when it was.
    pub fn describes(&self, stat: &ProcStat) -> bool {
        stat.ppid == self.shim_pid && self.start_time.is_none_or(|t| t == stat.start_time)
    }
}

/// Written by the supervisor when the container's process has ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, or 128+N for a process killed by signal N.
    pub code: i32,
    pub finished: String,
    /// Killed by the kernel's OOM killer at its cgroup's memory limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub oom_killed: bool,
}

/// One container's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDir {
    path: PathBuf,
}

impl ContainerDir {
    pub fn new(path: impl Into<PathBuf>) -> ContainerDir {
        ContainerDir { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn config_path(&self) -> PathBuf {
        self.path.join("config.json")
    }
    pub fn shim_spec_path(&self) -> PathBuf {
        self.path.join("shim.json")
    }
    pub fn state_path(&self) -> PathBuf {
        self.path.join("state.json")
    }
    pub fn exit_path(&self) -> PathBuf {
        self.path.join("exit.json")
    }
    pub fn log_path(&self) -> PathBuf {
        self.path.join("container.log")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.path.join("attach.sock")
    }
    pub fn lock_path(&self) -> PathBuf {
        self.path.join("shim.lock")
    }
    pub fn upper(&self) -> PathBuf {
        self.path.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.path.join("work")
    }
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    /// Makes the directory and its root filesystem directories.
    pub fn create(&self) -> Result<()> {
        for dir in [self.upper(), self.work(), self.rootfs()] {
            std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        // The log and the container's files are its owner's business only.
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("restricting", &self.path))
    }

    pub fn read_config(&self) -> Result<ContainerConfig> {
        read_json(&self.config_path())
    }
    /// Writes the record durably (fsync), as at creation.
    pub fn write_config(&self, config: &ContainerConfig) -> Result<()> {
        write_json(&self.config_path(), config, true)
    }
    /// Rewrites the record atomically without waiting for the disk: after a
    /// power loss the earlier version is as good (only the last address
    /// would be lost, and nothing runs after a power loss).
    pub fn update_config(&self, config: &ContainerConfig) -> Result<()> {
        write_json(&self.config_path(), config, false)
    }

    /// Records the files `paths` (of those the supervisor writes at each
    /// start) as they are now in the running container's root, so that its
    /// next restart writes them so: the agent rewrites `/etc/hosts` and
    /// `/etc/resolv.conf` of a running container whose address moved.
    pub fn keep_files_of(&self, pid: u32, paths: &[&str]) -> Result<()> {
        let spec_path = self.shim_spec_path();
        let mut spec: ShimSpec = read_json(&spec_path)?;
        for file in spec
            .init
            .files
            .iter_mut()
            .filter(|file| paths.iter().any(|path| file.path == Path::new(path)))
        {
            let live = PathBuf::from(format!("/proc/{pid}/root{}", file.path.display()));
            file.contents = std::fs::read_to_string(&live).map_err(io_err("reading", &live))?;
        }
        write_json(&spec_path, &spec, false)
    }
    /// `None` when the process has not started since the last (re)start.
    pub fn read_state(&self) -> Option<RunState> {
        read_json(&self.state_path()).ok()
    }
    pub fn read_exit(&self) -> Option<ExitRecord> {
        read_json(&self.exit_path()).ok()
    }

    /// Forgets the previous run before a new one.
    pub fn clear_run(&self) -> Result<()> {
        for path in [self.state_path(), self.exit_path(), self.socket_path()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err("removing", &path)(err)),
            }
        }
        Ok(())
    }

    /// Whether a supervisor holds this container's lock, i.e. lives. A
    /// lock, unlike a pid, cannot be mistaken for a recycled process.
    pub fn shim_alive(&self) -> bool {
        let Ok(file) = File::open(self.lock_path()) else {
            return false;
        };
        // SAFETY: flock on a descriptor we own.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
        rc != 0
    }

    /// Sends `signal` to the container's first process, but only to it: the
    /// recorded pid may belong to another process once the container has
    /// ended. A pidfd is opened first; if the pid then still names a child
    /// of the live supervisor with the recorded start time, that process
    /// lived when the pidfd was opened, so the pidfd is its. Returns false,
    /// sending nothing, when the container's process is gone.
    pub fn signal(&self, signal: libc::c_int) -> Result<bool> {
        let Some(state) = self.read_state() else {
            return Ok(false);
        };
        let Some(pidfd) = Pidfd::open(state.pid)? else {
            return Ok(false);
        };
        let ours = proc_stat(state.pid).is_some_and(|stat| state.describes(&stat));
        if !ours || !self.shim_alive() {
            return Ok(false);
        }
        pidfd.send_signal(signal, state.pid)
    }
}

pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io_err("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|source| RuntimeError::Store {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes through a temporary file and a rename: readers see the old
/// content or the new, never half of it. `durable` also waits for the disk;
/// run-time records (pids, exit status) skip that, since a machine that
/// lost power runs no containers whatever they say.
pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T, durable: bool) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| RuntimeError::Store {
        path: path.to_path_buf(),
        source,
    })?;
    let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    file.write_all(&bytes).map_err(io_err("writing", &tmp))?;
    if durable {
        file.sync_all().map_err(io_err("syncing", &tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err("renaming", path))
}

/// Now, as RFC 3339 with nanoseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

/// A wait status as a container exit code: 128+N for signal N, as shells and Docker report it.
pub fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::Security;

    #[test]
    fn records_round_trip_and_a_missing_lock_means_no_supervisor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let container = ContainerDir::new(dir.path());
        container.create().expect("create");
        let mode = std::fs::metadata(dir.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let config = ContainerConfig {
            id: "ab".repeat(32),
            name: "web".into(),
            image: "busybox".into(),
            image_id: "cd".repeat(32),
            spec: ContainerSpec {
                args: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                hostname: "web".into(),
                tty: false,
                open_stdin: false,
                security: Security {
                    no_new_privileges: true,
                    ..Security::default()
                },
                mounts: Vec::new(),
                ..ContainerSpec::default()
            },
            network: NetworkMode::Container("ef".repeat(32)),
            requested_ip: None,
            address: Some("10.5.1.2/24".into()),
            auto_remove: true,
            created: now_rfc3339(),
            endpoints: Vec::new(),
            ports: Vec::new(),
            published: Vec::new(),
            links: vec!["db:mysqlone".into()],
            extra_hosts: vec!["10.5.1.3\tmysqlone 0123456789ab db".into()],
            add_hosts: vec!["gw:10.0.0.1".into()],
            network_aliases: vec!["web-alias".into()],
            link_env: vec!["MYSQLONE_NAME=/web/mysqlone".into()],
        };
        container.write_config(&config).expect("write");
        assert_eq!(container.read_config().expect("read"), config);
        assert!(container.read_state().is_none());
        assert!(!container.shim_alive());
        let held = File::create(container.lock_path()).expect("lock file");
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
        assert!(container.shim_alive(), "a held lock is a live supervisor");
        drop(held);
        assert!(!container.shim_alive());
        std::fs::write(container.config_path(), b"{").expect("corrupt");
        assert!(container.read_config().is_err());
    }

    #[test]
    fn records_of_older_agents_load() {
        // As an agent before the container spec wrote it, with privileges.
        let with_security = r#"{
            "id": "ab", "name": "web", "image": "busybox", "image_id": "cd",
            "args": ["sh"], "env": ["PATH=/bin", "HOSTNAME=h"], "cwd": "/srv",
            "hostname": "h", "tty": true, "open_stdin": false,
            "network": {"container": "ef"}, "requested_ip": null,
            "address": "10.5.1.2/24", "auto_remove": false,
            "created": "2026-01-01T00:00:00Z",
            "security": {"privileged": false, "no_new_privileges": true,
                "cap_add": ["net_admin"], "cap_drop": [], "seccomp": "unconfined",
                "sysctls": {"net.ipv4.ip_forward": "1"}}
        }"#;
        let config: ContainerConfig = serde_json::from_str(with_security).expect("older record");
        assert_eq!(config.spec.args, ["sh"]);
        assert_eq!(config.spec.cwd, Path::new("/srv"));
        assert!(config.spec.tty && !config.spec.open_stdin);
        assert_eq!(config.spec.security.cap_add, ["net_admin"]);
        assert_eq!(config.spec.security.sysctls["net.ipv4.ip_forward"], "1");
        assert!(config.spec.security.no_new_privileges);
        assert_eq!(config.network, NetworkMode::Container("ef".into()));
        // Written again, it reads the same, with the fields where they were.
        let again = serde_json::to_value(&config).expect("json");
        assert_eq!(again["cwd"], "/srv");
        assert_eq!(again["security"]["cap_add"][0], "net_admin");
        assert_eq!(
            serde_json::from_value::<ContainerConfig>(again).expect("rewritten"),
            config
        );
        // Older still: no privileges recorded, no address.
        let without = r#"{
            "id": "ab", "name": "web", "image": "busybox", "image_id": "cd",
            "args": ["sh"], "env": [], "cwd": "/", "hostname": "h", "tty": false,
            "open_stdin": false, "network": "overlay", "requested_ip": null,
            "auto_remove": true, "created": ""
        }"#;
        let config: ContainerConfig = serde_json::from_str(without).expect("oldest record");
        assert_eq!(config.spec.security, Security::default());
        assert_eq!(config.address, None);
    }

    #[test]
    fn the_state_describes_only_the_supervisors_child_started_when_recorded() {
        let state = RunState {
            shim_pid: 100,
            pid: 200,
            started: now_rfc3339(),
            start_time: Some(5000),
        };
        let same = ProcStat {
            ppid: 100,
            start_time: 5000,
        };
        assert!(state.describes(&same));
        assert!(!state.describes(&ProcStat { ppid: 1, ..same }));
        assert!(!state.describes(&ProcStat {
            start_time: 7000,
            ..same
        }));
        // An older supervisor's record: the parent alone tells.
        let older = RunState {
            start_time: None,
            ..state
        };
        assert!(older.describes(&ProcStat {
            start_time: 7000,
            ..same
        }));
        assert!(!older.describes(&ProcStat { ppid: 1, ..same }));
        let old_json = r#"{"shim_pid":100,"pid":200,"started":"2020-01-01T00:00:00Z"}"#;
        let parsed: RunState = serde_json::from_str(old_json).expect("an older record");
        assert_eq!(parsed.start_time, None);
    }

    /// Waits up to 5 s for `child` to end; whether it did.
    fn ends(child: &mut std::process::Child) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_signal_reaches_the_containers_process_and_no_stranger_with_its_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let container = ContainerDir::new(dir.path());
        container.create().expect("create");
        // This test stands in for the supervisor: `sleep` is its child, the lock is its.
        let lock = File::create(container.lock_path()).expect("lock file");
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() } as u32;
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = sleeper.id();
        let stat = proc_stat(pid).expect("stat");
        let record = |shim_pid: u32, start_time: Option<u64>| {
            let state = RunState {
                shim_pid,
                pid,
                started: now_rfc3339(),
                start_time,
            };
            write_json(&container.state_path(), &state, false).expect("state");
        };

        // A record whose pid now names someone else: another parent, or a later start.
        for (shim_pid, start_time) in [
            (1, None),
            (me, Some(stat.start_time + 1)),
            (1, Some(stat.start_time)),
        ] {
            record(shim_pid, start_time);
            assert!(!container.signal(libc::SIGTERM).expect("no error"));
        }
        // The right record, but no supervisor holds the lock.
        record(me, Some(stat.start_time));
        drop(lock);
        assert!(!container.signal(libc::SIGTERM).expect("no error"));
        assert!(
            sleeper.try_wait().expect("try_wait").is_none(),
            "a stranger was signalled"
        );

        let lock = File::create(container.lock_path()).expect("lock file");
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        assert!(container.signal(libc::SIGTERM).expect("signalled"));
        assert!(ends(&mut sleeper), "SIGTERM did not end the process");
        // Reaped and gone: nothing is sent.
        assert!(!container.signal(libc::SIGKILL).expect("no error"));
        drop(lock);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGKILL), 137);
        assert_eq!(exit_code(libc::SIGTERM), 143);
    }
}
