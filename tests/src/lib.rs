//! Integration-test harness for Tartan: a real etcd, network namespaces, a
//! simulated underlay, a cuttable TCP proxy, a private Open vSwitch and
//! `tartan agent` processes.
//!
//! Everything here cleans up on drop, panics included, and every wait has a
//! deadline. A missing prerequisite is an error with a message: the tests
//! fail rather than skip.

pub mod agent;
pub mod cgroups;
pub mod cli;
pub mod cluster;
pub mod containers;
pub mod dns;
pub mod etcd;
pub mod netns;
pub mod ovs;
pub mod pki;
pub mod prereq;
pub mod proxy;
pub mod rootfs;
pub mod wait;

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use etcd_client::{Client, CompactionOptions, PutOptions};

/// SIGKILLs a child process, if any, and reaps it.
pub(crate) fn kill_child(child: &mut Option<std::process::Child>, what: &str) -> Result<()> {
    if let Some(mut child) = child.take() {
        child.kill().ok();
        child
            .wait()
            .with_context(|| format!("waiting for {what}"))?;
    }
    Ok(())
}

static PREFIX_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A key prefix no other test uses, so that tests can share nothing by accident.
pub fn unique_prefix(test: &str) -> String {
    let n = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("/tartan-test/{test}-{}-{n}", std::process::id())
}

/// Writes the network config key under `prefix`.
pub async fn put_flannel_config(client: &mut Client, prefix: &str, config: &str) -> Result<()> {
    client
        .put(format!("{prefix}/config"), config, None)
        .await
        .context("writing the network config")?;
    Ok(())
}

/// Writes `<prefix>/subnets/<key>` as another node (or flannel, or a vandal) would,
/// optionally attached to a fresh etcd lease of `ttl` seconds.
pub async fn put_lease(
    client: &mut Client,
    prefix: &str,
    key: &str,
    value: &str,
    ttl: Option<i64>,
) -> Result<()> {
    let options = match ttl {
        Some(ttl) => {
            let grant = client
                .lease_grant(ttl, None)
                .await
                .context("granting a lease")?;
            Some(PutOptions::new().with_lease(grant.id()))
        }
        None => None,
    };
    client
        .put(format!("{prefix}/subnets/{key}"), value, options)
        .await
        .with_context(|| format!("writing lease {key}"))?;
    Ok(())
}

/// Compacts etcd's history up to the current revision, physically (etcd
/// drops the old revisions before answering), so a watcher that fell behind
/// gets "required revision has been compacted".
pub async fn compact(client: &mut Client) -> Result<i64> {
    let resp = client
        .get("/", None)
        .await
        .context("reading the revision")?;
    let revision = resp.header().map(|h| h.revision()).context("no header")?;
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .context("compacting")?;
    Ok(revision)
}

/// The JSON value of `key` and the etcd lease it is attached to (0: none).
pub async fn get_json(client: &mut Client, key: &str) -> Result<Option<(serde_json::Value, i64)>> {
    let resp = client.get(key, None).await?;
    match resp.kvs().first() {
        Some(kv) => Ok(Some((serde_json::from_slice(kv.value())?, kv.lease()))),
        None => Ok(None),
    }
}

/// The etcd key of the lease for `subnet` (`10.5.34.0/24`) under `prefix`.
pub fn lease_key(prefix: &str, subnet: &str) -> String {
    format!("{prefix}/subnets/{}", subnet.replace('/', "-"))
}

/// A fresh etcd with the network config `config` under a prefix of the
/// test's own, and a client of it.
pub async fn etcd_with_config(
    test: &str,
    config: &str,
) -> Result<(etcd::EtcdServer, String, Client)> {
    prereq::require_root()?;
    prereq::require_binary("etcd")?;
    let etcd = etcd::EtcdServer::start()?;
    let prefix = unique_prefix(test);
    let mut client = etcd.client().await?;
    put_flannel_config(&mut client, &prefix, config).await?;
    Ok((etcd, prefix, client))
}

/// An agent of `etcd`'s network under `prefix`, publishing `public_ip`.
pub fn agent_config(etcd: &etcd::EtcdServer, prefix: &str, public_ip: &str) -> agent::AgentConfig {
    agent::AgentConfig {
        etcd_endpoints: etcd.endpoint(),
        etcd_prefix: prefix.to_string(),
        public_ip: Some(public_ip.parse().expect("test address")),
        ..agent::AgentConfig::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefixes_are_unique_and_recognisable() {
        let a = super::unique_prefix("x");
        let b = super::unique_prefix("x");
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("/tartan-test/x-{}-", std::process::id())));
    }
}
