//! cgroup v1 (and the v1 side of a hybrid host): one hierarchy per
//! controller, or a few controllers sharing one (`cpu,cpuacct`).

use std::path::{Path, PathBuf};

use super::{keyed, CgroupFs, DeviceAccess, Resources, Usage, CFS_PERIOD_US, DEFAULT_DEVICE_RULES};
use crate::{Result, RuntimeError};

/// Where each controller Tartan uses is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mounts {
    pub memory: Option<PathBuf>,
    pub cpu: Option<PathBuf>,
    pub cpuacct: Option<PathBuf>,
    pub pids: Option<PathBuf>,
    pub blkio: Option<PathBuf>,
    pub devices: Option<PathBuf>,
}

impl Mounts {
    /// Notes a v1 mount at `path` whose super options name its controllers.
    pub fn note(&mut self, path: &Path, super_opts: &str) {
        for opt in super_opts.split(',') {
            let slot = match opt {
                "memory" => &mut self.memory,
                "cpu" => &mut self.cpu,
                "cpuacct" => &mut self.cpuacct,
                "pids" => &mut self.pids,
                "blkio" => &mut self.blkio,
                "devices" => &mut self.devices,
                _ => continue,
            };
            slot.get_or_insert_with(|| path.to_path_buf());
        }
    }

    /// The mount of `controller`'s hierarchy, when Tartan uses that controller.
    pub fn root_of(&self, controller: &str) -> Option<&PathBuf> {
        match controller {
            "memory" => self.memory.as_ref(),
            "cpu" => self.cpu.as_ref(),
            "cpuacct" => self.cpuacct.as_ref(),
            "pids" => self.pids.as_ref(),
            "blkio" => self.blkio.as_ref(),
            "devices" => self.devices.as_ref(),
            _ => None,
        }
    }

    /// Every hierarchy a container's cgroup is made in, each once.
    pub fn roots(&self) -> impl Iterator<Item = &PathBuf> {
        let mut seen: Vec<&PathBuf> = Vec::new();
        for root in [
            &self.memory,
            &self.cpu,
            &self.cpuacct,
            &self.pids,
            &self.blkio,
            &self.devices,
        ]
        .into_iter()
        .flatten()
        {
            if !seen.contains(&root) {
                seen.push(root);
            }
        }
        seen.into_iter()
    }
}

fn needed<'a>(root: &'a Option<PathBuf>, controller: &str, flag: &str) -> Result<&'a PathBuf> {
    root.as_ref().ok_or_else(|| {
        RuntimeError::Limits(format!(
            "the kernel's {controller} cgroup controller is not mounted: {flag} cannot be applied"
        ))
    })
}

pub fn create(
    fs: &impl CgroupFs,
    mounts: &Mounts,
    name: &Path,
    r: &Resources,
    devices: DeviceAccess,
) -> Result<()> {
    for root in mounts.roots() {
        fs.create_dir(&root.join(name))?;
    }
    // A new cgroup starts with its parent's list: emptied first, then
    // Docker's own, or everything for a privileged container. (A host with
    // no cgroupfs at all has no limits either; the agent warns of it.)
    if mounts.roots().next().is_none() {
        return Ok(());
    }
    let dir = needed(&mounts.devices, "devices", "the device rules")?.join(name);
    match devices {
        DeviceAccess::Default => {
            fs.write(&dir.join("devices.deny"), "a")?;
            for rule in DEFAULT_DEVICE_RULES {
                fs.write(&dir.join("devices.allow"), rule)?;
            }
        }
        DeviceAccess::All => fs.write(&dir.join("devices.allow"), "a")?,
    }
    if r.memory > 0 {
        let dir = needed(&mounts.memory, "memory", "--memory")?.join(name);
        // The memory limit first: the kernel keeps memory+swap at or above it.
        fs.write(&dir.join("memory.limit_in_bytes"), &r.memory.to_string())?;
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if r.memory_swap != 0 {
            if fs.read(&memsw)?.is_none() {
                if r.memory_swap != -1 && r.memory_swap != r.memory.saturating_mul(2) {
                    return Err(RuntimeError::Limits(
                        "the kernel does not account swap (memory.memsw): --memory-swap cannot be applied"
                            .into(),
                    ));
                }
            } else {
                fs.write(&memsw, &r.memory_swap.to_string())?;
            }
        }
    }
    if let Some(quota) = r.cfs_quota_us() {
        let dir = needed(&mounts.cpu, "cpu", "--cpus")?.join(name);
        fs.write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
        fs.write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
    }
    if r.cpu_shares > 0 {
        let dir = needed(&mounts.cpu, "cpu", "--cpu-shares")?.join(name);
        fs.write(&dir.join("cpu.shares"), &r.cpu_shares.to_string())?;
    }
    if r.pids_limit != 0 {
        let dir = needed(&mounts.pids, "pids", "--pids-limit")?.join(name);
        let value = match r.pids_limit {
            -1 => "max".to_string(),
            n => n.to_string(),
        };
        fs.write(&dir.join("pids.max"), &value)?;
    }
    Ok(())
}

pub fn oom_kills(fs: &impl CgroupFs, mounts: &Mounts, name: &Path) -> Result<u64> {
    let Some(root) = &mounts.memory else {
        return Ok(0);
    };
    let control = fs.read(&root.join(name).join("memory.oom_control"))?;
    Ok(control.and_then(|t| keyed(&t, "oom_kill")).unwrap_or(0))
}

fn number(fs: &impl CgroupFs, path: PathBuf) -> Result<u64> {
    Ok(fs
        .read(&path)?
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0))
}

/// The kernel's "no limit" is the largest page-aligned value; anything
/// beyond an exabyte is taken for it.
const UNLIMITED: u64 = 1 << 60;

pub fn usage(fs: &impl CgroupFs, mounts: &Mounts, name: &Path) -> Result<Usage> {
    let mut usage = Usage::default();
    if let Some(root) = &mounts.cpuacct {
        usage.cpu_ns = number(fs, root.join(name).join("cpuacct.usage"))?;
    }
    if let Some(root) = &mounts.memory {
        let dir = root.join(name);
        let used = number(fs, dir.join("memory.usage_in_bytes"))?;
        let inactive = fs
            .read(&dir.join("memory.stat"))?
            .and_then(|t| keyed(&t, "total_inactive_file"))
            .unwrap_or(0);
        usage.memory = used.saturating_sub(inactive);
        let limit = number(fs, dir.join("memory.limit_in_bytes"))?;
        usage.memory_limit = if limit >= UNLIMITED { 0 } else { limit };
    }
    if let Some(root) = &mounts.pids {
        usage.pids = number(fs, root.join(name).join("pids.current"))?;
    }
    if let Some(root) = &mounts.blkio {
        let text = fs
            .read(&root.join(name).join("blkio.throttle.io_service_bytes"))?
            .unwrap_or_default();
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let (Some(_device), Some(op), Some(n)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let n: u64 = n.parse().unwrap_or(0);
            match op {
                "Read" => usage.block_read += n,
                "Write" => usage.block_write += n,
                _ => {}
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::super::fake::Recording;
    use super::super::{Cgroup, Layout};
    use super::*;

    fn mounts() -> Mounts {
        let mut mounts = Mounts::default();
        for c in ["memory", "cpu", "cpuacct", "pids", "devices"] {
            mounts.note(&Path::new("/cg").join(c), &format!("rw,{c}"));
        }
        mounts
    }

    #[test]
    fn limits_go_to_each_controllers_files() {
        let fs = Recording::default();
        // The kernel has swap accounting.
        fs.files.borrow_mut().insert(
            "/cg/memory/tartan/c1/memory.memsw.limit_in_bytes".into(),
            "9223372036854771712".into(),
        );
        let cgroup = Cgroup::new(fs, Layout::V1(mounts()), "c1");
        let limits = Resources {
            memory: 16 << 20,
            memory_swap: 32 << 20,
            nano_cpus: 1_500_000_000,
            cpu_shares: 512,
            pids_limit: 10,
        };
        cgroup
            .create(&limits, DeviceAccess::Default)
            .expect("create");
        cgroup.add(42).expect("add");
        let fs = &cgroup.fs;
        assert_eq!(
            fs.written("/cg/memory/tartan/c1/memory.limit_in_bytes")
                .as_deref(),
            Some("16777216")
        );
        assert_eq!(
            fs.written("/cg/memory/tartan/c1/memory.memsw.limit_in_bytes")
                .as_deref(),
            Some("33554432")
        );
        assert_eq!(
            fs.written("/cg/cpu/tartan/c1/cpu.cfs_period_us").as_deref(),
            Some("100000")
        );
        assert_eq!(
            fs.written("/cg/cpu/tartan/c1/cpu.cfs_quota_us").as_deref(),
            Some("150000")
        );
        assert_eq!(
            fs.written("/cg/cpu/tartan/c1/cpu.shares").as_deref(),
            Some("512")
        );
        assert_eq!(
            fs.written("/cg/pids/tartan/c1/pids.max").as_deref(),
            Some("10")
        );
        for c in ["memory", "cpu", "cpuacct", "pids"] {
            assert_eq!(
                fs.written(&format!("/cg/{c}/tartan/c1/cgroup.procs"))
                    .as_deref(),
                Some("42")
            );
        }
        cgroup.remove().expect("remove");
        assert!(
            cgroup.fs.dirs.borrow().is_empty(),
            "{:?}",
            cgroup.fs.dirs.borrow()
        );
    }

    #[test]
    fn devices_are_docker_s_list_or_all_of_them_when_privileged() {
        let writes_to = |devices: DeviceAccess| {
            let cgroup = Cgroup::new(Recording::default(), Layout::V1(mounts()), "c3");
            cgroup
                .create(&Resources::default(), devices)
                .expect("create");
            let writes: Vec<(String, String)> = cgroup
                .fs
                .writes
                .borrow()
                .iter()
                .filter(|(path, _)| path.starts_with("/cg/devices/tartan/c3"))
                .map(|(path, value)| {
                    let file = path.file_name().unwrap_or_default();
                    (file.to_string_lossy().into_owned(), value.clone())
                })
                .collect();
            writes
        };
        let default = writes_to(DeviceAccess::Default);
        assert_eq!(
            default[0],
            ("devices.deny".to_string(), "a".to_string()),
            "the parent's list is emptied first"
        );
        let allowed: Vec<&str> = default[1..]
            .iter()
            .map(|(file, rule)| {
                assert_eq!(file, "devices.allow");
                rule.as_str()
            })
            .collect();
        assert_eq!(allowed, DEFAULT_DEVICE_RULES);
        assert_eq!(
            writes_to(DeviceAccess::All),
            [("devices.allow".to_string(), "a".to_string())]
        );
        // A host whose devices controller is not mounted refuses the start.
        let mut no_devices = mounts();
        no_devices.devices = None;
        let cgroup = Cgroup::new(Recording::default(), Layout::V1(no_devices), "c4");
        let err = cgroup
            .create(&Resources::default(), DeviceAccess::Default)
            .expect_err("refused");
        assert!(
            err.to_string().contains("devices cgroup controller"),
            "{err}"
        );
        assert!(cgroup.fs.dirs.borrow().is_empty(), "nothing left");
    }

    #[test]
    fn a_refused_value_leaves_no_cgroup_and_oom_kills_are_read() {
        let fs = Recording {
            refuse: Some("/cg/pids/tartan/c2/pids.max".into()),
            ..Recording::default()
        };
        let cgroup = Cgroup::new(fs, Layout::V1(mounts()), "c2");
        let limits = Resources {
            pids_limit: 5,
            ..Resources::default()
        };
        assert!(cgroup.create(&limits, DeviceAccess::Default).is_err());
        assert!(cgroup.fs.dirs.borrow().is_empty());
        assert_eq!(cgroup.oom_kills().expect("read"), 0);
        cgroup.fs.files.borrow_mut().insert(
            "/cg/memory/tartan/c2/memory.oom_control".into(),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n".into(),
        );
        assert_eq!(cgroup.oom_kills().expect("read"), 1);
    }
}
