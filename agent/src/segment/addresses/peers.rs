//! Segment addresses without a store: each host's claims are its own
//! attachments, and peers exchange them (the segment checks a new address
//! against every claim it knows before it gets here). Two hosts that could
//! not see each other (a partition) may still pick one address; the
//! conflict shows once they meet (`status`, the log) rather than being
//! settled silently.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{bail, Result};
use ipnetwork::Ipv4Network;

use super::{candidates, spread_offset, AddressRegistry};
use crate::segment::book::Claim;

pub struct PeerAddresses;

#[async_trait::async_trait]
impl AddressRegistry for PeerAddresses {
    fn kind(&self) -> &'static str {
        "peers"
    }

    async fn claim(&self, _claim: &Claim, _owner: &str) -> Result<()> {
        // Nothing to register: the attachment is the claim.
        Ok(())
    }

    async fn allocate(
        &self,
        range: Ipv4Network,
        avoid: &BTreeSet<Ipv4Addr>,
        _owner: &str,
        make: &(dyn Fn(Ipv4Network) -> Claim + Send + Sync),
    ) -> Result<Claim> {
        let host = make(range).host;
        match candidates(range, spread_offset(host, range)).find(|a| !avoid.contains(a)) {
            Some(address) => Ok(make(Ipv4Network::new(address, range.prefix())?)),
            None => bail!("the L2 segment's range {range} has no free address left"),
        }
    }

    async fn release(&self, _address: Ipv4Addr, _owner: &str) -> Result<()> {
        // A claim is the attachment itself: it goes with it.
        Ok(())
    }

    async fn sweep(&self, _host: Ipv4Addr, _kept: &[(Ipv4Addr, String)]) -> Result<Vec<Ipv4Addr>> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn allocation_skips_what_is_known_to_be_held() {
        let range: Ipv4Network = "10.1.1.0/24".parse().expect("cidr");
        let make = |address: Ipv4Network| Claim {
            address,
            mac: [2, 0x42, 0, 0, 0, 1],
            container: "c2".into(),
            host: Ipv4Addr::new(10, 0, 0, 1),
        };
        let avoid = BTreeSet::from([Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 1, 1, 2)]);
        let got = PeerAddresses
            .allocate(range, &avoid, "ctr:y", &make)
            .await
            .expect("free one");
        assert_eq!(got.address.to_string(), "10.1.1.3/24");
        let full: BTreeSet<Ipv4Addr> = candidates(range, 0).collect();
        let refused = PeerAddresses
            .allocate(range, &full, "ctr:y", &make)
            .await
            .expect_err("full");
        assert!(refused.to_string().contains("no free address"), "{refused}");
    }
}
