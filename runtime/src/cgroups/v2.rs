//! cgroup v2: one unified hierarchy; controllers are delegated to
//! `tartan/` through each parent's `cgroup.subtree_control`.

use std::path::Path;

use super::{device_filter, keyed, CgroupFs, DeviceAccess, Resources, Usage, CFS_PERIOD_US};
use crate::{Result, RuntimeError};

const CONTROLLERS: [&str; 4] = ["memory", "cpu", "pids", "io"];

/// Makes the cgroup with its limits and device rules: v2 has no devices
/// files, so the rules are an eBPF program attached to the cgroup
/// ([`super::device_filter`]); a privileged container gets none.
pub fn create(
    fs: &impl CgroupFs,
    root: &Path,
    name: &Path,
    r: &Resources,
    devices: DeviceAccess,
) -> Result<()> {
    let available = fs
        .read(&root.join("cgroup.controllers"))?
        .unwrap_or_default();
    let available: Vec<&str> = available.split_whitespace().collect();
    for (controller, wanted) in [
        ("memory", r.memory > 0),
        ("cpu", r.nano_cpus > 0 || r.cpu_shares > 0),
        ("pids", r.pids_limit != 0),
    ] {
        if wanted && !available.contains(&controller) {
            return Err(RuntimeError::Limits(format!(
                "the kernel's {controller} cgroup controller is not available at {}",
                root.display()
            )));
        }
    }
    let enable = CONTROLLERS
        .iter()
        .filter(|c| available.contains(c))
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let leaf = root.join(name);
    // Each ancestor hands the controllers down; the leaf holds the processes.
    let mut dir = root.to_path_buf();
    for part in name.iter() {
        if !enable.is_empty() {
            fs.write(&dir.join("cgroup.subtree_control"), &enable)?;
        }
        dir.push(part);
        fs.create_dir(&dir)?;
    }
    if devices == DeviceAccess::Default {
        fs.attach_device_filter(&leaf, &device_filter::default_program()?)?;
    }
    if r.memory > 0 {
        fs.write(&leaf.join("memory.max"), &r.memory.to_string())?;
        // v2 limits swap alone; Docker's --memory-swap counts memory too.
        let swap = match r.memory_swap {
            0 => None,
            -1 => Some("max".to_string()),
            total => Some((total - r.memory).to_string()),
        };
        if let Some(swap) = swap {
            fs.write(&leaf.join("memory.swap.max"), &swap)?;
        }
    }
    if let Some(quota) = r.cfs_quota_us() {
        fs.write(&leaf.join("cpu.max"), &format!("{quota} {CFS_PERIOD_US}"))?;
    }
    if r.cpu_shares > 0 {
        // The conversion runc and Docker use from shares (2..262144) to weight (1..10000).
        let weight = 1 + ((r.cpu_shares - 2) * 9999) / 262_142;
        fs.write(&leaf.join("cpu.weight"), &weight.to_string())?;
    }
    if r.pids_limit != 0 {
        let value = match r.pids_limit {
            -1 => "max".to_string(),
            n => n.to_string(),
        };
        fs.write(&leaf.join("pids.max"), &value)?;
    }
    Ok(())
}

pub fn oom_kills(fs: &impl CgroupFs, dir: &Path) -> Result<u64> {
    let events = fs.read(&dir.join("memory.events"))?;
    Ok(events.and_then(|t| keyed(&t, "oom_kill")).unwrap_or(0))
}

pub fn usage(fs: &impl CgroupFs, dir: &Path) -> Result<Usage> {
    let read = |file: &str| fs.read(&dir.join(file));
    let mut usage = Usage::default();
    if let Some(stat) = read("cpu.stat")? {
        usage.cpu_ns = keyed(&stat, "usage_usec").unwrap_or(0) * 1000;
    }
    let current: u64 = read("memory.current")?
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let inactive = read("memory.stat")?
        .and_then(|t| keyed(&t, "inactive_file"))
        .unwrap_or(0);
    usage.memory = current.saturating_sub(inactive);
    usage.memory_limit = read("memory.max")?
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    usage.pids = read("pids.current")?
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    for line in read("io.stat")?.unwrap_or_default().lines() {
        for field in line.split_whitespace() {
            if let Some(n) = field.strip_prefix("rbytes=") {
                usage.block_read += n.parse::<u64>().unwrap_or(0);
            } else if let Some(n) = field.strip_prefix("wbytes=") {
                usage.block_write += n.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::super::fake::Recording;
    use super::super::{Cgroup, DeviceAccess, Layout};
    use super::*;

    #[test]
    fn a_privileged_container_gets_no_device_program() {
        let cgroup = Cgroup::new(Recording::default(), Layout::V2("/cg".into()), "c2");
        cgroup
            .create(&Resources::default(), DeviceAccess::All)
            .expect("create");
        assert!(cgroup.fs.device_filters.borrow().is_empty());
    }

    #[test]
    fn limits_go_to_the_unified_files_with_controllers_delegated() {
        let fs = Recording::default();
        fs.files.borrow_mut().insert(
            "/sys/fs/cgroup/cgroup.controllers".into(),
            "cpuset cpu io memory pids".into(),
        );
        let cgroup = Cgroup::new(fs, Layout::V2("/sys/fs/cgroup".into()), "c1");
        let limits = Resources {
            memory: 16 << 20,
            memory_swap: 32 << 20,
            nano_cpus: 500_000_000,
            cpu_shares: 1024,
            pids_limit: -1,
        };
        cgroup
            .create(&limits, DeviceAccess::Default)
            .expect("create");
        let fs = &cgroup.fs;
        let filters = fs.device_filters.borrow().clone();
        assert_eq!(filters.len(), 1, "Docker's device rules, as a program");
        assert_eq!(filters[0].0, Path::new("/sys/fs/cgroup/tartan/c1"));
        let at = |f: &str| fs.written(&format!("/sys/fs/cgroup/tartan/c1/{f}"));
        assert_eq!(
            fs.written("/sys/fs/cgroup/tartan/cgroup.subtree_control")
                .as_deref(),
            Some("+memory +cpu +pids +io")
        );
        assert_eq!(at("memory.max").as_deref(), Some("16777216"));
        assert_eq!(at("memory.swap.max").as_deref(), Some("16777216"));
        assert_eq!(at("cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(at("cpu.weight").as_deref(), Some("39"));
        assert_eq!(at("pids.max").as_deref(), Some("max"));
        fs.files.borrow_mut().insert(
            "/sys/fs/cgroup/tartan/c1/memory.events".into(),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n".into(),
        );
        assert_eq!(cgroup.oom_kills().expect("read"), 1);
    }
}
