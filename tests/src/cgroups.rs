//! The host's cgroups of an agent's containers (`tartan/ID` under each
//! hierarchy), removed when a test's agent goes with its supervisors killed.

use std::path::{Path, PathBuf};

/// The roots of the host's cgroup hierarchies, from the mount table.
pub fn hierarchy_roots() -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Removes the (empty) cgroups of the containers recorded under `containers_dir`.
pub fn remove_container_cgroups(containers_dir: &Path) {
    let roots = hierarchy_roots();
    for entry in std::fs::read_dir(containers_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(config) = std::fs::read(entry.path().join("config.json")) else {
            continue;
        };
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(&config) else {
            continue;
        };
        let Some(id) = config["id"].as_str() else {
            continue;
        };
        for root in &roots {
            let dir = root.join("tartan").join(id);
            // Busy until the killed container's processes are reaped.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while dir.exists()
                && std::fs::remove_dir(&dir).is_err()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}
