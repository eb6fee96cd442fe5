//! A container and the fabric's DNS: which resolver its resolv.conf names,
//! and the addresses its names answer with while it runs.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use tartan_runtime::container::{ContainerConfig, NetworkMode};

use super::{Containers, NetworkPlan};

impl Containers {
    /// The agent's DNS address, for a container that reaches it: one on
    /// the overlay (the address is its gateway), or sharing the network of
    /// one that is. Others (host, none, named networks, which may not reach
    /// the bridge) keep the host's resolvers.
    pub(super) async fn fabric_dns(
        &self,
        config: &ContainerConfig,
        plan: &NetworkPlan,
    ) -> Option<Ipv4Addr> {
        match (&config.network, &plan.attacher) {
            (NetworkMode::Overlay, Some(attacher)) => {
                let bridge = tartan_ipam::gateway(&attacher.subnet());
                self.inner.names.dns_on(bridge).await
            }
            (NetworkMode::Container(other), _) => {
                let shares_overlay = self
                    .view(other)
                    .is_ok_and(|view| view.config.network == NetworkMode::Overlay);
                shares_overlay
                    .then(|| self.inner.names.dns_address())
                    .flatten()
            }
            _ => None,
        }
    }

    /// Records `address` (None: it ended) under the container's name and
    /// aliases, for every host's DNS.
    pub(super) fn publish_names(&self, config: &ContainerConfig, address: Option<Ipv4Network>) {
        let mut names = vec![config.name.clone()];
        names.extend(config.network_aliases.iter().cloned());
        let addresses = address.map(|a| IpAddr::V4(a.ip())).into_iter().collect();
        self.inner
            .names
            .publish_addresses(&names, &config.id, addresses);
    }
}

/// After a move to a new subnet: a running container's resolv.conf that
/// named the agent at the old bridge address names the new one.
pub(super) fn repoint_resolv_conf(
    pid: u32,
    old: Ipv4Network,
    new: Ipv4Network,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let path = std::path::PathBuf::from(format!("/proc/{pid}/root/etc/resolv.conf"));
    let conf =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let from = format!("nameserver {}", tartan_ipam::gateway(&old));
    if !conf.lines().any(|line| line.trim() == from) {
        return Ok(());
    }
    let to = format!("nameserver {}", tartan_ipam::gateway(&new));
    let repointed: String = conf
        .lines()
        .map(|line| {
            if line.trim() == from {
                to.as_str()
            } else {
                line
            }
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    std::fs::write(&path, repointed).with_context(|| format!("writing {}", path.display()))
}
