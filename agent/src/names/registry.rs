//! The fabric's container names, in etcd under Tartan's own prefix:
//! `<tartan-prefix>/names/<name>` holds the container and the host it runs
//! on. A container's name and its `--network-alias`es are claimed together
//! at `run`, in one transaction, so that a name is one container's across
//! every host; they go with the container.

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use std::net::{IpAddr, Ipv4Addr};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::control::etcd::{bounded, is_unreachable};
use crate::names::dns::{DnsStatus, BIND_PATIENCE};

/// How long a container's start waits for the DNS to bind its bridge
/// address: the server's own patience, and a little.
const DNS_BIND_WAIT: std::time::Duration =
    BIND_PATIENCE.saturating_add(std::time::Duration::from_secs(1));

/// What a name's key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRecord {
    /// The container's full id.
    pub container: String,
    /// The host it runs on (its public address, as the agent names itself).
    pub host: String,
    /// Its addresses while it runs, which the fabric's DNS answers with;
    /// empty before its first start and after it ends (records of older
    /// agents have none).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// The names registry; without etcd (`--no-etcd`) names are this host's alone.
#[derive(Clone)]
pub struct NameRegistry {
    client: Option<Client>,
    /// `--tartan-prefix`, without a trailing slash.
    prefix: String,
    host: String,
    /// Address changes, written in the order they are made.
    addresses: Option<mpsc::UnboundedSender<AddressUpdate>>,
    /// Where this agent answers DNS, or tried to.
    dns: watch::Receiver<DnsStatus>,
}

/// A container's addresses, for the records of its names.
struct AddressUpdate {
    names: Vec<String>,
    container: String,
    addresses: Vec<IpAddr>,
}

impl NameRegistry {
    /// The registry, and the task that writes its address changes (the
    /// caller runs it for the agent's life).
    pub fn new(
        client: Client,
        prefix: &str,
        host: &str,
    ) -> (
        NameRegistry,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (updates, queue) = mpsc::unbounded_channel();
        let registry = NameRegistry {
            client: Some(client),
            prefix: prefix.trim_end_matches('/').to_string(),
            host: host.to_string(),
            addresses: Some(updates),
            dns: watch::Sender::new(DnsStatus::default()).subscribe(),
        };
        let writer = registry.clone().write_addresses(queue);
        (registry, writer)
    }

    /// Tells `containers` where this agent answers DNS.
    pub fn with_dns(mut self, dns: watch::Receiver<DnsStatus>) -> NameRegistry {
        self.dns = dns;
        self
    }

    /// Where this agent answers DNS now, if it does.
    pub fn dns_address(&self) -> Option<Ipv4Addr> {
        self.dns.borrow().serving()
    }

    /// Whether this agent answers DNS on `bridge`, once it has tried to
    /// bind there: a container started as the agent starts (or as the
    /// subnet changes) is not given the host's resolvers for want of a
    /// moment. None in peer mode.
    pub async fn dns_on(&self, bridge: Ipv4Addr) -> Option<Ipv4Addr> {
        let mut dns = self.dns.clone();
        let tried = tokio::time::timeout(
            DNS_BIND_WAIT,
            dns.wait_for(|status| status.bridge == Some(bridge)),
        )
        .await;
        match tried {
            Ok(Ok(status)) => status.serving(),
            _ => None,
        }
    }

    /// The store and the key prefix of the names, for the cache; None in peer mode.
    pub fn store(&self) -> Option<(Client, String)> {
        self.client
            .as_ref()
            .map(|client| (client.clone(), self.names_prefix()))
    }

    /// Records `addresses` for `container` under its `names` (those it still
    /// holds), or none when it ended. Written in order in the background: a
    /// start or stop does not wait for etcd, and an outage only delays it.
    pub fn publish_addresses(&self, names: &[String], container: &str, addresses: Vec<IpAddr>) {
        if let Some(updates) = &self.addresses {
            // The receiver lives as long as the runtime.
            let _ = updates.send(AddressUpdate {
                names: names.to_vec(),
                container: container.to_string(),
                addresses,
            });
        }
    }

    async fn write_addresses(self, mut queue: mpsc::UnboundedReceiver<AddressUpdate>) {
        while let Some(update) = queue.recv().await {
            // An outage is retried until etcd answers: the update would be lost otherwise.
            let mut wait = std::time::Duration::from_millis(200);
            loop {
                match self.set_addresses(&update).await {
                    Ok(()) => break,
                    Err(err) if is_unreachable(&err) => {
                        debug!(error = %format!("{err:#}"), "could not record a container's addresses; retrying");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(5));
                    }
                    Err(err) => {
                        warn!(container = %update.container, error = %format!("{err:#}"), "could not record the container's addresses for DNS");
                        break;
                    }
                }
            }
        }
    }

    async fn set_addresses(&self, update: &AddressUpdate) -> Result<()> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        let mut client = client.clone();
        for name in &update.names {
            let key = self.key(name);
            let found = bounded("reading a container name", client.get(key.as_str(), None)).await?;
            let Some(kv) = found.kvs().first() else {
                continue;
            };
            let Ok(mut record) = serde_json::from_slice::<NameRecord>(kv.value()) else {
                continue;
            };
            // Only its own names, and only as they were read.
            if record.container != update.container || record.addresses == update.addresses {
                continue;
            }
            record.addresses = update.addresses.clone();
            let value = serde_json::to_vec(&record).context("encoding a name's record")?;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    kv.key(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(kv.key(), value, None)]);
            bounded("recording a container's addresses", client.txn(txn)).await?;
        }
        Ok(())
    }

    /// Peer mode: no registry; names are checked on this host only.
    pub fn none() -> NameRegistry {
        NameRegistry {
            client: None,
            prefix: String::new(),
            host: String::new(),
            addresses: None,
            dns: watch::Sender::new(DnsStatus::default()).subscribe(),
        }
    }

    fn names_prefix(&self) -> String {
        format!("{}/names/", self.prefix)
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.names_prefix())
    }

    /// Claims `names` for `container` on this host, all or none; a name held
    /// by another container anywhere on the fabric refuses them all.
    pub async fn claim(&self, names: &[String], container: &str) -> Result<()> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        let mut client = client.clone();
        let record = NameRecord {
            container: container.to_string(),
            host: self.host.clone(),
            addresses: Vec::new(),
        };
        let value = serde_json::to_vec(&record).context("encoding a name's record")?;
        let keys: Vec<String> = names.iter().map(|n| self.key(n)).collect();
        let txn = Txn::new()
            .when(
                keys.iter()
                    .map(|k| Compare::create_revision(k.as_str(), CompareOp::Equal, 0))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                keys.iter()
                    .map(|k| TxnOp::put(k.as_str(), value.clone(), None))
                    .collect::<Vec<_>>(),
            );
        let resp = bounded("claiming the container's names", client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(());
        }
        for (name, key) in names.iter().zip(&keys) {
            let found = bounded("reading a container name", client.get(key.as_str(), None)).await?;
            if let Some(kv) = found.kvs().first() {
                let holder: Option<NameRecord> = serde_json::from_slice(kv.value()).ok();
                let (id, host) = holder
                    .map(|h| (h.container, h.host))
                    .unwrap_or_else(|| ("?".into(), "?".into()));
                // Docker's words, with the host the holder runs on.
                bail!("Conflict. The container name \"/{name}\" is already in use by container \"{id}\" on host {host}. You have to remove (or rename) that container to be able to reuse that name.");
            }
        }
        bail!("the container's names were claimed by another container meanwhile; run it again")
    }

    /// Frees the names `container` holds (only its own: a name claimed
    /// again by another container since stays).
    /// With etcd out of reach the container still goes: its names are
    /// freed by the sweep of the agent's next start.
    pub async fn release(&self, container: &str) -> Result<()> {
        match self
            .release_where(|record| record.container == container)
            .await
        {
            Err(err) if is_unreachable(&err) => {
                warn!(error = %format!("{err:#}"), "etcd is out of reach: the container's names are freed at the agent's next start");
                Ok(())
            }
            other => other,
        }
    }

    /// Frees this host's names whose containers are gone (removed while
    /// etcd was out of reach, or before a crash).
    pub async fn sweep(&self, alive: impl Fn(&str) -> bool) -> Result<()> {
        let host = self.host.clone();
        self.release_where(|record| record.host == host && !alive(&record.container))
            .await
    }

    async fn release_where(&self, gone: impl Fn(&NameRecord) -> bool) -> Result<()> {
        let Some(client) = &self.client else {
            return Ok(());
        };
        let mut client = client.clone();
        let prefix = self.names_prefix();
        let listing = bounded(
            "listing the container names",
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        for kv in listing.kvs() {
            let Ok(record) = serde_json::from_slice::<NameRecord>(kv.value()) else {
                continue;
            };
            if !gone(&record) {
                continue;
            }
            // Deleted only as it was read.
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    kv.key(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::delete(kv.key(), None)]);
            bounded("freeing a container name", client.txn(txn)).await?;
        }
        Ok(())
    }
}
