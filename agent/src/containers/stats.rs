//! `tartan stats`: one sample of a container's use, from its cgroup and
//! from the interface counters of its network namespace.

use anyhow::Result;
use tartan_proto::v1::ContainerStats;
use tartan_runtime::cgroups::Cgroup;

/// A sample of container `id`; `pid` is its first process while it runs,
/// and `own_netns` whether its interfaces are its own (not the host's or
/// another container's).
pub fn sample(id: &str, name: &str, pid: Option<u32>, own_netns: bool) -> Result<ContainerStats> {
    let sampled_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut stats = ContainerStats {
        id: id.to_string(),
        name: name.to_string(),
        sampled_ns,
        ..ContainerStats::default()
    };
    let Some(pid) = pid else {
        return Ok(stats);
    };
    let usage = Cgroup::for_container(id)?.usage()?;
    stats.cpu_ns = usage.cpu_ns;
    stats.memory = usage.memory;
    // As Docker: no limit shows the host's memory.
    stats.memory_limit = match usage.memory_limit {
        0 => host_memory().unwrap_or(0),
        limit => limit.min(host_memory().unwrap_or(u64::MAX)),
    };
    stats.block_read = usage.block_read;
    stats.block_write = usage.block_write;
    stats.pids = usage.pids;
    if own_netns {
        // /proc/PID/net/dev lists the interfaces of PID's network namespace.
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/dev")) {
            (stats.net_rx, stats.net_tx) = net_counters(&text);
        }
    }
    Ok(stats)
}

/// Bytes received and sent through every interface but loopback.
fn net_counters(net_dev: &str) -> (u64, u64) {
    let mut total = (0, 0);
    for line in net_dev.lines().skip(2) {
        let Some((name, counters)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let fields: Vec<u64> = counters
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        if fields.len() >= 9 {
            total.0 += fields[0];
            total.1 += fields[8];
        }
    }
    total
}

fn host_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_counters_leave_loopback_out() {
        let dev = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0:    2048      20    0    0    0     0          0         0      512       5    0    0    0     0       0          0
  eth1:       2       1    0    0    0     0          0         0        3       1    0    0    0     0       0          0
";
        assert_eq!(net_counters(dev), (2050, 515));
    }
}
