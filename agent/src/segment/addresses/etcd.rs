//! Segment addresses registered in etcd, one key per address under
//! `<tartan-prefix>/segment/addresses/`, each made by a transaction that
//! succeeds only if the key does not exist: two hosts asking for one
//! address at once get it once.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::{candidates, AddressRegistry};
use crate::control::etcd::bounded;
use crate::segment::book::Claim;

/// How many taken addresses an allocation skips before it lists again:
/// others allocating at once take the ones it saw free.
const TRIES_PER_LISTING: usize = 32;

/// An address's key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Holder {
    address: Ipv4Network,
    mac: String,
    container: String,
    host: Ipv4Addr,
    /// The container's owner key on its host, to tell two containers of
    /// one name apart over time.
    owner: String,
}

impl Holder {
    fn of(claim: &Claim, owner: &str) -> Holder {
        Holder {
            address: claim.address,
            mac: tartan_dataplane::format_mac(&claim.mac),
            container: claim.container.clone(),
            host: claim.host,
            owner: owner.to_string(),
        }
    }
}

pub struct EtcdAddresses {
    client: Client,
    /// `<tartan-prefix>/segment/addresses/`.
    prefix: String,
}

impl EtcdAddresses {
    pub fn new(client: Client, tartan_prefix: &str) -> EtcdAddresses {
        EtcdAddresses {
            client,
            prefix: format!("{}/segment/addresses/", tartan_prefix.trim_end_matches('/')),
        }
    }

    fn key(&self, address: Ipv4Addr) -> String {
        format!("{}{address}", self.prefix)
    }

    /// Makes the key if it is free: false if someone holds it.
    async fn try_create(&self, holder: &Holder) -> Result<bool> {
        let key = self.key(holder.address.ip());
        let value = serde_json::to_vec(holder).context("encoding an address claim")?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        let mut client = self.client.clone();
        let resp = bounded("claiming a segment address", client.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    /// The holder of `address`, with the key's mod revision.
    async fn holder(&self, address: Ipv4Addr) -> Result<Option<(Holder, i64)>> {
        let key = self.key(address);
        let mut client = self.client.clone();
        let resp = bounded(
            "reading a segment address claim",
            client.get(key.as_str(), None),
        )
        .await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let holder = serde_json::from_slice(kv.value())
            .with_context(|| format!("the claim on {address} in etcd ({key}) does not parse"))?;
        Ok(Some((holder, kv.mod_revision())))
    }

    /// Deletes the key if it has not changed since `revision`.
    async fn delete_if_unchanged(&self, address: Ipv4Addr, revision: i64) -> Result<bool> {
        let key = self.key(address);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut client = self.client.clone();
        let resp = bounded("freeing a segment address", client.txn(txn)).await?;
        Ok(resp.succeeded())
    }

    async fn list(&self) -> Result<Vec<(Holder, i64)>> {
        let mut client = self.client.clone();
        let resp = bounded(
            "listing segment addresses",
            client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        // A value that does not parse still holds its address: it is
        // skipped by allocation through `taken`, and left alone here.
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                serde_json::from_slice::<Holder>(kv.value())
                    .ok()
                    .map(|h| (h, kv.mod_revision()))
            })
            .collect())
    }

    async fn taken(&self) -> Result<BTreeSet<Ipv4Addr>> {
        let mut client = self.client.clone();
        let resp = bounded(
            "listing segment addresses",
            client.get(
                self.prefix.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = std::str::from_utf8(kv.key()).ok()?;
                key.strip_prefix(self.prefix.as_str())?.parse().ok()
            })
            .collect())
    }
}

fn refusal(address: Ipv4Addr, holder: &Holder) -> anyhow::Error {
    anyhow::anyhow!(
        "{address} is already on the L2 segment: {} on {} holds it",
        holder.container,
        holder.host
    )
}

#[async_trait::async_trait]
impl AddressRegistry for EtcdAddresses {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn claim(&self, claim: &Claim, owner: &str) -> Result<()> {
        let wanted = Holder::of(claim, owner);
        if self.try_create(&wanted).await? {
            return Ok(());
        }
        match self.holder(claim.address.ip()).await? {
            Some((holder, _)) if holder.host == claim.host && holder.owner == owner => Ok(()),
            Some((holder, _)) => Err(refusal(claim.address.ip(), &holder)),
            // Freed in between: try once more, for a plain answer.
            None if self.try_create(&wanted).await? => Ok(()),
            None => bail!(
                "{} was claimed and freed meanwhile: try again",
                claim.address.ip()
            ),
        }
    }

    async fn allocate(
        &self,
        range: Ipv4Network,
        avoid: &BTreeSet<Ipv4Addr>,
        owner: &str,
        make: &(dyn Fn(Ipv4Network) -> Claim + Send + Sync),
    ) -> Result<Claim> {
        // Listing, then trying the free ones in order; when others took
        // them meanwhile, listing again.
        for _ in 0..8 {
            let mut taken = self.taken().await?;
            taken.extend(avoid);
            let mut tries = 0;
            for address in candidates(range, 0).filter(|a| !taken.contains(a)) {
                let claim = make(Ipv4Network::new(address, range.prefix())?);
                if self.try_create(&Holder::of(&claim, owner)).await? {
                    return Ok(claim);
                }
                tries += 1;
                if tries == TRIES_PER_LISTING {
                    break;
                }
            }
            if tries == 0 {
                bail!("the L2 segment's range {range} has no free address left");
            }
        }
        bail!("could not claim an address of {range}: others kept taking the free ones; try again")
    }

    async fn release(&self, address: Ipv4Addr, owner: &str) -> Result<()> {
        if let Some((holder, revision)) = self.holder(address).await? {
            if holder.owner == owner {
                self.delete_if_unchanged(address, revision).await?;
            }
        }
        Ok(())
    }

    async fn sweep(&self, host: Ipv4Addr, kept: &[(Ipv4Addr, String)]) -> Result<Vec<Ipv4Addr>> {
        let mut swept = Vec::new();
        for (holder, revision) in self.list().await? {
            let address = holder.address.ip();
            let ours = holder.host == host;
            if ours
                && !kept
                    .iter()
                    .any(|(a, owner)| *a == address && *owner == holder.owner)
                && self.delete_if_unchanged(address, revision).await?
            {
                swept.push(address);
            }
        }
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tartan_tests::etcd::EtcdServer;

    use super::*;

    fn claim_maker(host: [u8; 4], container: String) -> impl Fn(Ipv4Network) -> Claim {
        move |address| Claim {
            address,
            mac: [2, 0x42, 0, 0, 0, 1],
            container: container.clone(),
            host: host.into(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hosts_allocating_at_once_never_share_an_address_and_claims_name_holders(
    ) -> anyhow::Result<()> {
        let etcd = EtcdServer::start()?;
        let client = Client::connect([etcd.endpoint()], None).await?;
        let prefix = tartan_tests::unique_prefix("segaddr");
        let range: Ipv4Network = "10.40.0.0/26".parse()?;
        let hosts: Vec<Arc<EtcdAddresses>> = (0..3)
            .map(|_| Arc::new(EtcdAddresses::new(client.clone(), &prefix)))
            .collect();
        let mut tasks = Vec::new();
        for (h, registry) in hosts.iter().enumerate() {
            for c in 0..8 {
                let registry = registry.clone();
                tasks.push(tokio::spawn(async move {
                    let make = claim_maker([10, 0, 0, h as u8 + 1], format!("c{h}-{c}"));
                    registry
                        .allocate(range, &BTreeSet::new(), &format!("ctr:{h}-{c}"), &make)
                        .await
                }));
            }
        }
        let mut got = BTreeSet::new();
        for task in tasks {
            assert!(
                got.insert(task.await??.address.ip()),
                "an address given twice"
            );
        }
        assert_eq!(got.len(), 24);

        let held = *got.iter().next().expect("one");
        let refused = hosts[0]
            .claim(
                &claim_maker([10, 0, 0, 9], "late".into())(Ipv4Network::new(held, 26)?),
                "ctr:late",
            )
            .await
            .expect_err("held");
        assert!(
            refused.to_string().contains("holds it") && refused.to_string().contains(" on 10.0.0."),
            "{refused}"
        );

        // Released by its owner only; swept when its container went.
        let (holder, _) = hosts[0].holder(held).await?.expect("held");
        hosts[0].release(held, "ctr:someone-else").await?;
        assert!(hosts[0].holder(held).await?.is_some());
        hosts[0].release(held, &holder.owner).await?;
        assert!(hosts[0].holder(held).await?.is_none());
        let swept = hosts[0].sweep(Ipv4Addr::new(10, 0, 0, 1), &[]).await?;
        assert_eq!(
            swept.len(),
            8 - usize::from(holder.host == Ipv4Addr::new(10, 0, 0, 1))
        );
        Ok(())
    }
}
