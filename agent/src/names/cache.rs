//! This host's copy of the fabric's names, for its DNS: the registry's keys
//! listed once, then followed by an etcd watch from the listing's revision;
//! listed again when the watch falls behind a compaction or breaks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::control::etcd::{bounded, etcd_failure, is_unreachable};
use crate::names::registry::{NameRecord, NameRegistry};

/// Lower-case name to the addresses of the running container holding it.
pub type NameTable = Arc<HashMap<String, Vec<IpAddr>>>;

/// What the watch knows: each key's name and addresses, as etcd has them.
#[derive(Default)]
struct Records {
    by_name: HashMap<String, Vec<IpAddr>>,
}

impl Records {
    fn put(&mut self, name: &str, value: &[u8]) {
        match serde_json::from_slice::<NameRecord>(value) {
            Ok(record) => {
                self.by_name.insert(name.to_string(), record.addresses);
            }
            Err(err) => {
                debug!(name, error = %err, "ignoring a name record that does not parse");
                self.by_name.remove(name);
            }
        }
    }

    /// Names are case-sensitive in the registry but not in DNS: names
    /// differing only in case answer with all their addresses.
    fn table(&self) -> NameTable {
        let mut table: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, addresses) in &self.by_name {
            if !addresses.is_empty() {
                table
                    .entry(name.to_ascii_lowercase())
                    .or_default()
                    .extend(addresses.iter().copied());
            }
        }
        Arc::new(table)
    }
}

/// Starts following the registry; None in peer mode (no registry).
/// Returns the table and the task that keeps it, for the caller to run.
pub fn follow(
    registry: &NameRegistry,
) -> Option<(
    watch::Receiver<NameTable>,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    let (client, prefix) = registry.store()?;
    let (table, receiver) = watch::channel(NameTable::default());
    Some((receiver, run(client, prefix, table)))
}

async fn run(client: Client, prefix: String, table: watch::Sender<NameTable>) {
    let mut wait = Duration::from_millis(200);
    loop {
        let mut records = Records::default();
        let outcome = async {
            let revision = list(&client, &prefix, &mut records).await?;
            table.send_replace(records.table());
            info!(
                names = records.by_name.len(),
                revision, "listed the fabric's names"
            );
            follow_from(
                &client,
                &prefix,
                revision + 1,
                &mut records,
                &table,
                &mut wait,
            )
            .await
        }
        .await;
        match outcome {
            Ok(()) => info!("the names watch fell behind a compaction; listing again"),
            Err(err) if is_unreachable(&err) => {
                debug!(error = %format!("{err:#}"), "the names watch broke; listing again")
            }
            Err(err) => warn!(error = %format!("{err:#}"), "the names watch broke; listing again"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

/// Lists every name into `records`; returns the listing's revision.
async fn list(client: &Client, prefix: &str, records: &mut Records) -> Result<i64> {
    let mut client = client.clone();
    let listing = bounded(
        "listing the container names",
        client.get(prefix, Some(GetOptions::new().with_prefix())),
    )
    .await?;
    for kv in listing.kvs() {
        if let Some(name) = name_of(kv.key(), prefix) {
            records.put(&name, kv.value());
        }
    }
    let revision = listing
        .header()
        .map(|h| h.revision())
        .context("etcd's listing of the names has no header")?;
    Ok(revision)
}

/// Applies the watch's events until it ends: Ok when it fell behind a
/// compaction, an error when it broke.
async fn follow_from(
    client: &Client,
    prefix: &str,
    revision: i64,
    records: &mut Records,
    table: &watch::Sender<NameTable>,
    wait: &mut Duration,
) -> Result<()> {
    let mut client = client.clone();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision);
    let mut stream = bounded(
        "watching the container names",
        client.watch(prefix, Some(options)),
    )
    .await?;
    loop {
        let Some(resp) = stream
            .message()
            .await
            .map_err(etcd_failure)
            .context("reading the names watch")?
        else {
            bail!("etcd closed the names watch");
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Ok(());
            }
            bail!("etcd cancelled the names watch: {}", resp.cancel_reason());
        }
        if resp.created() {
            *wait = Duration::from_millis(200);
        }
        let mut changed = false;
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            let Some(name) = name_of(kv.key(), prefix) else {
                continue;
            };
            match event.event_type() {
                EventType::Put => records.put(&name, kv.value()),
                EventType::Delete => {
                    records.by_name.remove(&name);
                }
            }
            changed = true;
        }
        if changed {
            table.send_replace(records.table());
        }
    }
}

fn name_of(key: &[u8], prefix: &str) -> Option<String> {
    let name = std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?).ok()?;
    (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_running_containers_by_lower_case_name() {
        let mut records = Records::default();
        records.put(
            "Web",
            br#"{"container":"a","host":"10.0.0.1","addresses":["10.5.1.2"]}"#,
        );
        records.put(
            "web",
            br#"{"container":"b","host":"10.0.0.2","addresses":["10.5.2.2"]}"#,
        );
        // Written by an older agent, or ended: no addresses, not answered.
        records.put("old", br#"{"container":"c","host":"10.0.0.1"}"#);
        records.put("junk", b"not json");
        let table = records.table();
        assert_eq!(table.len(), 1);
        let mut web = table["web"].clone();
        web.sort();
        assert_eq!(
            web,
            vec![
                "10.5.1.2".parse::<IpAddr>().unwrap(),
                "10.5.2.2".parse().unwrap()
            ]
        );
        assert!(!records.by_name.contains_key("junk"));
    }

    #[test]
    fn names_are_the_keys_below_the_prefix() {
        assert_eq!(name_of(b"/t/names/web", "/t/names/"), Some("web".into()));
        assert_eq!(name_of(b"/t/names/", "/t/names/"), None);
        assert_eq!(name_of(b"/t/other/web", "/t/names/"), None);
    }
}
