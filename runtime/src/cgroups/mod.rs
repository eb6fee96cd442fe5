//! A container's cgroup: its resource limits (`--memory`, `--memory-swap`,
//! `--cpus`, `--cpu-shares`, `--pids-limit`, checked as Docker checks them),
//! the use `stats` reports, and whether the kernel's OOM killer struck.
//!
//! Written straight to cgroupfs. The host's layout decides the files:
//! cgroup v2 when `/sys/fs/cgroup` is the unified hierarchy ([`v2`]),
//! otherwise one v1 hierarchy per controller, wherever each is mounted
//! ([`v1`]; a hybrid host's v2 mount has no controllers and is not used).
//! File access goes through [`CgroupFs`], so the layouts' logic is tested
//! against a recording fake.

pub mod device_filter;
pub mod mount;
pub mod v1;
pub mod v2;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::io_err;
use crate::{Result, RuntimeError};

/// Docker's smallest `--memory`.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// The CFS period Docker uses for `--cpus`, in microseconds.
pub const CFS_PERIOD_US: i64 = 100_000;
/// Where containers' cgroups live, under each hierarchy's root.
pub const PARENT: &str = "tartan";

/// Which device nodes a container's processes may open or make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAccess {
    /// Docker's list ([`DEFAULT_DEVICE_RULES`]): a node made in the
    /// container (it has CAP_MKNOD) opens nothing else of the host's.
    Default,
    /// `--privileged`: every device.
    All,
}

/// Docker's device rules (moby's default spec), in the devices cgroup's
/// syntax: any node may be made, and these opened: null, zero, full,
/// random, urandom, tty, the container's terminals and ptmx, and TUN/TAP.
pub const DEFAULT_DEVICE_RULES: [&str; 11] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

/// The limits `run` asked for, in Docker's units (`HostConfig`): bytes,
/// billionths of a CPU, relative shares, processes. 0 is "not set";
/// `memory_swap` -1 is unlimited swap, as is `pids_limit` -1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default)]
    pub memory: i64,
    #[serde(default)]
    pub memory_swap: i64,
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub cpu_shares: i64,
    #[serde(default)]
    pub pids_limit: i64,
}

fn refused(text: impl Into<String>) -> RuntimeError {
    RuntimeError::Limits(text.into())
}

impl Resources {
    /// Checks the limits as Docker's daemon does (its error texts) and
    /// fills in what it fills in: with `--memory` and no `--memory-swap`,
    /// swap may double it. `host_cpus` bounds `--cpus`.
    pub fn checked(mut self, host_cpus: usize) -> Result<Resources> {
        if self.memory < 0 {
            return Err(refused("Invalid value for --memory: it cannot be negative"));
        }
        if self.memory > 0 && self.memory < MIN_MEMORY {
            return Err(refused("Minimum memory limit allowed is 6MB"));
        }
        if self.memory_swap != 0 && self.memory_swap != -1 {
            if self.memory == 0 {
                return Err(refused(
                    "You should always set the Memory limit when using Memoryswap limit",
                ));
            }
            if self.memory_swap < self.memory {
                return Err(refused(
                    "Minimum memoryswap limit should be larger than memory limit, see usage",
                ));
            }
        } else if self.memory_swap == -1 && self.memory == 0 {
            // Unlimited swap with unlimited memory: nothing to limit.
            self.memory_swap = 0;
        } else if self.memory_swap == 0 && self.memory > 0 {
            self.memory_swap = self.memory.saturating_mul(2);
        }
        if self.memory_swap < -1 {
            return Err(refused(
                "Invalid value for --memory-swap: use -1 for unlimited",
            ));
        }
        let max_nano = host_cpus as i64 * 1_000_000_000;
        if self.nano_cpus < 0 || self.nano_cpus > max_nano {
            return Err(refused(format!(
                "Range of CPUs is from 0.01 to {host_cpus}.00, as there are only {host_cpus} CPUs available"
            )));
        }
        if self.nano_cpus > 0 && self.nano_cpus < 10_000_000 {
            return Err(refused(format!(
                "Range of CPUs is from 0.01 to {host_cpus}.00, as there are only {host_cpus} CPUs available"
            )));
        }
        if self.cpu_shares < 0 {
            return Err(refused("invalid --cpu-shares: it cannot be negative"));
        }
        // Docker's clamping of shares to what the kernel takes.
        if self.cpu_shares > 0 {
            self.cpu_shares = self.cpu_shares.clamp(2, 262_144);
        }
        if self.pids_limit < 0 {
            self.pids_limit = -1;
        }
        Ok(self)
    }

    /// Whether no limit is set.
    pub fn is_unset(&self) -> bool {
        *self == Resources::default()
    }

    /// The CFS quota for `--cpus`, in microseconds per [`CFS_PERIOD_US`].
    pub fn cfs_quota_us(&self) -> Option<i64> {
        (self.nano_cpus > 0).then(|| self.nano_cpus * CFS_PERIOD_US / 1_000_000_000)
    }
}

/// `--memory` and `--memory-swap` in Docker's units: a number with an
/// optional b, k, m, g, t or p suffix (powers of 1024, an `i` and a `b` after
/// it allowed); `-1` for unlimited where `allow_unlimited`.
pub fn parse_bytes(flag: &str, text: &str, allow_unlimited: bool) -> Result<i64> {
    let bad = || {
        refused(format!(
            "invalid argument {text:?} for {flag}: use a size such as 512m or 1g"
        ))
    };
    let trimmed = text.trim();
    if allow_unlimited && trimmed == "-1" {
        return Ok(-1);
    }
    let lower = trimmed.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim_start();
    let unit = unit.strip_suffix('b').unwrap_or(unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        "p" => 1024f64.powi(5),
        _ => return Err(bad()),
    };
    let bytes = number * scale;
    if !bytes.is_finite() || bytes >= i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// `--cpus` as Docker takes it: a decimal number of CPUs, in billionths.
pub fn parse_cpus(text: &str) -> Result<i64> {
    let bad = || {
        refused(format!(
            "invalid argument {text:?} for \"--cpus\" flag: failed to parse {text} as a rational number"
        ))
    };
    let cpus: f64 = text.trim().parse().map_err(|_| bad())?;
    if !cpus.is_finite() {
        return Err(bad());
    }
    Ok((cpus * 1e9).round() as i64)
}

/// A cgroup's use at one moment, as `stats` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of all its processes, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, the reclaimable inactive file cache left out (as Docker's CLI).
    pub memory: u64,
    /// The memory limit; 0 when none.
    pub memory_limit: u64,
    pub block_read: u64,
    pub block_write: u64,
    pub pids: u64,
}

/// The files of cgroupfs: the seam between the layouts' logic and the kernel.
pub trait CgroupFs {
    fn create_dir(&self, path: &Path) -> Result<()>;
    /// Removes an empty cgroup; Ok when it is already gone.
    fn remove_dir(&self, path: &Path) -> Result<()>;
    fn write(&self, path: &Path, value: &str) -> Result<()>;
    /// `None` when the file does not exist.
    fn read(&self, path: &Path) -> Result<Option<String>>;
    /// Attaches the device rules `program` to the (v2) cgroup `dir`.
    fn attach_device_filter(&self, dir: &Path, program: &[device_filter::Insn]) -> Result<()>;
}

/// The real cgroupfs.
pub struct Kernel;

impl CgroupFs for Kernel {
    fn create_dir(&self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path).map_err(io_err("creating the cgroup", path))
    }

    fn remove_dir(&self, path: &Path) -> Result<()> {
        // A cgroup whose last process has just died stays busy until it is reaped everywhere.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match std::fs::remove_dir(path) {
                Ok(()) => return Ok(()),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(err)
                    if err.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(err) => return Err(io_err("removing the cgroup", path)(err)),
            }
        }
    }

    fn write(&self, path: &Path, value: &str) -> Result<()> {
        std::fs::write(path, value).map_err(|source| RuntimeError::Io {
            op: "writing the cgroup file",
            path: PathBuf::from(format!("{} ({value})", path.display())),
            source,
        })
    }

    fn read(&self, path: &Path) -> Result<Option<String>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_err("reading", path)(err)),
        }
    }

    fn attach_device_filter(&self, dir: &Path, program: &[device_filter::Insn]) -> Result<()> {
        device_filter::load_and_attach(dir, program)
    }
}

/// Where the host's cgroup controllers are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The unified hierarchy at this root.
    V2(PathBuf),
    /// One hierarchy per controller (absent when not mounted).
    V1(v1::Mounts),
}

impl Layout {
    /// Reads the host's layout from this process's mount table.
    pub fn detect() -> Result<Layout> {
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(io_err("reading", path))?;
        Ok(Layout::from_mountinfo(&text))
    }

    pub fn from_mountinfo(text: &str) -> Layout {
        let mut mounts = v1::Mounts::default();
        for line in text.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut right = right.split(' ');
            let (fstype, super_opts) = (right.next(), right.nth(1).unwrap_or_default());
            match fstype {
                Some("cgroup2") if mount_point == "/sys/fs/cgroup" => {
                    return Layout::V2(PathBuf::from(mount_point));
                }
                Some("cgroup") => mounts.note(Path::new(mount_point), super_opts),
                _ => {}
            }
        }
        Layout::V1(mounts)
    }

    /// The `cgroup.procs` files of the cgroups a process is in, read from
    /// its `/proc/PID/cgroup` text, in the hierarchies Tartan uses (other
    /// v1 hierarchies, and a hybrid host's controller-less v2 one, hold no
    /// limits). Writing a pid to them moves that process in with it.
    pub fn procs_files(&self, proc_cgroup: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = Vec::new();
        for line in proc_cgroup.lines() {
            // HIERARCHY-ID:CONTROLLERS:PATH
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let relative = path.trim().trim_start_matches('/');
            let root = match &self {
                Layout::V2(root) if id == "0" && controllers.is_empty() => Some(root),
                Layout::V2(_) => None,
                Layout::V1(mounts) => controllers
                    .split(',')
                    .find_map(|controller| mounts.root_of(controller)),
            };
            if let Some(root) = root {
                let file = root.join(relative).join("cgroup.procs");
                if !files.contains(&file) {
                    files.push(file);
                }
            }
        }
        files
    }

    /// Its name for the README's and errors' sake.
    pub fn name(&self) -> &'static str {
        match self {
            Layout::V2(_) => "cgroup v2",
            Layout::V1(_) => "cgroup v1",
        }
    }
}

/// One container's cgroup, in whichever layout the host has.
pub struct Cgroup<F: CgroupFs = Kernel> {
    fs: F,
    layout: Layout,
    /// Relative to each hierarchy's root: `tartan/ID`.
    name: PathBuf,
}

impl Cgroup<Kernel> {
    /// The container `id`'s cgroup on this host.
    pub fn for_container(id: &str) -> Result<Cgroup<Kernel>> {
        Ok(Cgroup::new(Kernel, Layout::detect()?, id))
    }
}

impl<F: CgroupFs> Cgroup<F> {
    pub fn new(fs: F, layout: Layout, id: &str) -> Cgroup<F> {
        Cgroup {
            fs,
            layout,
            name: Path::new(PARENT).join(id),
        }
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Makes the cgroup with `resources`' limits and the device rules of
    /// `devices`. On failure nothing of it is left.
    pub fn create(&self, resources: &Resources, devices: DeviceAccess) -> Result<()> {
        // An earlier run's (empty) cgroup would keep that run's limits.
        self.remove()?;
        let made = match &self.layout {
            Layout::V1(mounts) => v1::create(&self.fs, mounts, &self.name, resources, devices),
            Layout::V2(root) => v2::create(&self.fs, root, &self.name, resources, devices),
        };
        if let Err(err) = made {
            let _ = self.remove();
            return Err(err);
        }
        Ok(())
    }

    /// Moves `pid` (and the threads it will have) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        for dir in self.dirs() {
            self.fs.write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the cgroup (its processes must have ended); Ok when there is none.
    pub fn remove(&self) -> Result<()> {
        let mut first_error = None;
        for dir in self.dirs() {
            if let Err(err) = self.fs.remove_dir(&dir) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// How many of its processes the kernel's OOM killer has killed since
    /// the cgroup was made (0 without a memory controller).
    pub fn oom_kills(&self) -> Result<u64> {
        match &self.layout {
            Layout::V1(mounts) => v1::oom_kills(&self.fs, mounts, &self.name),
            Layout::V2(root) => v2::oom_kills(&self.fs, &root.join(&self.name)),
        }
    }

    /// Its use now.
    pub fn usage(&self) -> Result<Usage> {
        match &self.layout {
            Layout::V1(mounts) => v1::usage(&self.fs, mounts, &self.name),
            Layout::V2(root) => v2::usage(&self.fs, &root.join(&self.name)),
        }
    }

    fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1(mounts) => mounts.roots().map(|root| root.join(&self.name)).collect(),
            Layout::V2(root) => vec![root.join(&self.name)],
        }
    }
}

/// The `cgroup.procs` files of the cgroups process `pid` is in (see
/// [`Layout::procs_files`]), as seen from this process's mount namespace.
pub fn procs_files_of(pid: u32) -> Result<Vec<PathBuf>> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&path).map_err(io_err("reading", &path))?;
    Ok(Layout::detect()?.procs_files(&text))
}

/// Tells, exit after exit of a container's process, whether the OOM
/// killer ended it. The cgroup's `oom_kill` counter counts every kill
/// since the cgroup was made, and a restart policy runs the process again
/// in the same cgroup: only kills since the previous exit count, so that
/// after one OOM kill a later exit is not taken for another (Docker's
/// `OOMKilled` is about the last exit).
#[derive(Debug, Default)]
pub struct OomKills {
    /// The counter at the previous exit (0: the cgroup was new).
    seen: u64,
}

impl OomKills {
    /// An exit by SIGKILL (`killed`), with the counter read after it.
    pub fn exited(&mut self, killed: bool, counter: u64) -> bool {
        let new_kill = counter > self.seen;
        self.seen = self.seen.max(counter);
        killed && new_kill
    }
}

/// The number after `key` in a flat-keyed cgroup file (`key N` lines).
pub(crate) fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Records what is written and made; reads what a test put there.
    #[derive(Default)]
    pub struct Recording {
        pub dirs: RefCell<Vec<PathBuf>>,
        pub writes: RefCell<Vec<(PathBuf, String)>>,
        pub files: RefCell<BTreeMap<PathBuf, String>>,
        /// Device programs attached, by cgroup, with their length.
        pub device_filters: RefCell<Vec<(PathBuf, usize)>>,
        /// Writes to this file fail, as the kernel refuses a value.
        pub refuse: Option<PathBuf>,
    }

    impl CgroupFs for Recording {
        fn create_dir(&self, path: &Path) -> Result<()> {
            self.dirs.borrow_mut().push(path.to_path_buf());
            Ok(())
        }
        fn remove_dir(&self, path: &Path) -> Result<()> {
            self.dirs.borrow_mut().retain(|d| d != path);
            Ok(())
        }
        fn write(&self, path: &Path, value: &str) -> Result<()> {
            if self.refuse.as_deref() == Some(path) {
                return Err(RuntimeError::Io {
                    op: "writing",
                    path: path.to_path_buf(),
                    source: std::io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
            self.writes
                .borrow_mut()
                .push((path.to_path_buf(), value.to_string()));
            self.files
                .borrow_mut()
                .insert(path.to_path_buf(), value.to_string());
            Ok(())
        }
        fn read(&self, path: &Path) -> Result<Option<String>> {
            Ok(self.files.borrow().get(path).cloned())
        }
        fn attach_device_filter(&self, dir: &Path, program: &[device_filter::Insn]) -> Result<()> {
            self.device_filters
                .borrow_mut()
                .push((dir.to_path_buf(), program.len()));
            Ok(())
        }
    }

    impl Recording {
        pub fn written(&self, path: &str) -> Option<String> {
            self.writes
                .borrow()
                .iter()
                .rev()
                .find(|(p, _)| p == Path::new(path))
                .map(|(_, v)| v.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_as_docker_checks_them() {
        let check = |r: Resources| r.checked(2).map_err(|e| e.to_string());
        let mib = 1024 * 1024;
        assert_eq!(
            check(Resources {
                memory: 4 * mib,
                ..Default::default()
            })
            .unwrap_err(),
            "Minimum memory limit allowed is 6MB"
        );
        assert_eq!(
            check(Resources {
                memory: 16 * mib,
                memory_swap: 8 * mib,
                ..Default::default()
            })
            .unwrap_err(),
            "Minimum memoryswap limit should be larger than memory limit, see usage"
        );
        assert_eq!(
            check(Resources {
                memory_swap: 8 * mib,
                ..Default::default()
            })
            .unwrap_err(),
            "You should always set the Memory limit when using Memoryswap limit"
        );
        assert_eq!(
            check(Resources {
                nano_cpus: 3_000_000_000,
                ..Default::default()
            })
            .unwrap_err(),
            "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
        );
        // Swap defaults to twice the memory; -1 stays unlimited.
        let set = check(Resources {
            memory: 16 * mib,
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(set.memory_swap, 32 * mib);
        let unlimited = check(Resources {
            memory: 16 * mib,
            memory_swap: -1,
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(unlimited.memory_swap, -1);
        assert_eq!(
            check(Resources {
                cpu_shares: 1,
                pids_limit: -5,
                ..Default::default()
            })
            .expect("valid"),
            Resources {
                cpu_shares: 2,
                pids_limit: -1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn sizes_and_cpus_parse_in_dockers_units() {
        assert_eq!(parse_bytes("--memory", "16m", false).unwrap(), 16 << 20);
        assert_eq!(parse_bytes("--memory", "1G", false).unwrap(), 1 << 30);
        assert_eq!(parse_bytes("--memory", "512kb", false).unwrap(), 512 << 10);
        assert_eq!(parse_bytes("--memory", "1.5g", false).unwrap(), 3 << 29);
        assert_eq!(
            parse_bytes("--memory", "7000000", false).unwrap(),
            7_000_000
        );
        assert_eq!(parse_bytes("--memory-swap", "-1", true).unwrap(), -1);
        assert!(parse_bytes("--memory", "-1", false).is_err());
        assert!(parse_bytes("--memory", "12q", false).is_err());
        assert!(parse_bytes("--memory", "", false).is_err());
        assert_eq!(parse_cpus("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_cpus("0.25").unwrap(), 250_000_000);
        assert_eq!(
            parse_cpus("x").unwrap_err().to_string(),
            "invalid argument \"x\" for \"--cpus\" flag: failed to parse x as a rational number"
        );
    }

    #[test]
    fn a_process_cgroups_are_found_in_the_hierarchies_tartan_uses() {
        let mut mounts = v1::Mounts::default();
        mounts.note(Path::new("/cg/cpu,cpuacct"), "rw,cpu,cpuacct");
        mounts.note(Path::new("/cg/memory"), "rw,memory");
        mounts.note(Path::new("/cg/pids"), "rw,pids");
        let proc_cgroup = "\
12:name=systemd:/user.slice
9:pids:/tartan/c1
4:memory:/tartan/c1
3:cpu,cpuacct:/tartan/c1
2:devices:/tartan/c1
0::/user.slice
";
        assert_eq!(
            Layout::V1(mounts).procs_files(proc_cgroup),
            vec![
                PathBuf::from("/cg/pids/tartan/c1/cgroup.procs"),
                PathBuf::from("/cg/memory/tartan/c1/cgroup.procs"),
                PathBuf::from("/cg/cpu,cpuacct/tartan/c1/cgroup.procs"),
            ]
        );
        assert_eq!(
            Layout::V2(PathBuf::from("/sys/fs/cgroup")).procs_files("0::/tartan/c1\n"),
            vec![PathBuf::from("/sys/fs/cgroup/tartan/c1/cgroup.procs")]
        );
    }

    #[test]
    fn only_an_oom_kill_since_the_last_exit_makes_an_exit_oom_killed() {
        let mut kills = OomKills::default();
        // Killed otherwise, no OOM kill yet.
        assert!(!kills.exited(true, 0));
        // The OOM killer's.
        assert!(kills.exited(true, 1));
        // Run again, then killed otherwise: the counter still says 1.
        assert!(!kills.exited(true, 1));
        // An OOM kill of another process (an exec), then a normal exit.
        assert!(!kills.exited(false, 2));
        // The OOM killer again.
        assert!(kills.exited(true, 3));
    }

    #[test]
    fn the_layout_is_read_from_the_mount_table() {
        let hybrid = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw shared:5 - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd";
        let Layout::V1(mounts) = Layout::from_mountinfo(hybrid) else {
            panic!("a hybrid host is v1");
        };
        assert_eq!(
            mounts.cpu.as_deref(),
            Some(Path::new("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(mounts.cpuacct, mounts.cpu);
        assert_eq!(
            mounts.memory.as_deref(),
            Some(Path::new("/sys/fs/cgroup/memory"))
        );
        assert_eq!(mounts.blkio, None);
        // A shared hierarchy is one directory, made once.
        assert_eq!(mounts.roots().count(), 3);
        let unified = "40 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate";
        assert_eq!(
            Layout::from_mountinfo(unified),
            Layout::V2(PathBuf::from("/sys/fs/cgroup"))
        );
    }
}
