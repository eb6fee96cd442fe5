//! `run`'s resource limits between the API and the container's record, and
//! its cgroup's end with the container.

use anyhow::{Context, Result};
use tartan_proto::v1::ResourceLimits as PbResourceLimits;
use tartan_runtime::cgroups::{Cgroup, Resources};

/// The limits asked for, checked as Docker's daemon checks them; the
/// host's CPUs bound `--cpus`.
pub fn resources_from_pb(limits: Option<PbResourceLimits>) -> Result<Resources> {
    let limits = limits.unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(Resources {
        memory: limits.memory,
        memory_swap: limits.memory_swap,
        nano_cpus: limits.nano_cpus,
        cpu_shares: limits.cpu_shares,
        pids_limit: limits.pids_limit,
    }
    .checked(cpus)?)
}

pub fn resources_to_pb(resources: &Resources) -> PbResourceLimits {
    PbResourceLimits {
        memory: resources.memory,
        memory_swap: resources.memory_swap,
        nano_cpus: resources.nano_cpus,
        cpu_shares: resources.cpu_shares,
        pids_limit: resources.pids_limit,
    }
}

/// Removes the container's cgroup (its processes have ended); Ok when it has none.
pub async fn remove_cgroup(id: &str) -> Result<()> {
    let id = id.to_string();
    tokio::task::spawn_blocking(move || -> Result<()> {
        Cgroup::for_container(&id)?.remove()?;
        Ok(())
    })
    .await
    .context("removing the container's cgroup")?
}
