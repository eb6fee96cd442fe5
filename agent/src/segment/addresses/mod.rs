//! Who holds which address on the segment, fabric-wide: an etcd registry
//! where there is a store (a transaction per claim), the claims exchanged
//! with peers where there is none. One module per kind; both refuse a
//! duplicate naming its holder.

pub mod etcd;
pub mod peers;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::Result;
use ipnetwork::Ipv4Network;

use crate::segment::book::Claim;

/// Where an address is registered.
#[async_trait::async_trait]
pub trait AddressRegistry: Send + Sync {
    /// "etcd" or "peers", for status and logs.
    fn kind(&self) -> &'static str;

    /// Registers `claim` for the container `owner` of this host (its owner
    /// key), or refuses naming the holder. Holding it already is fine.
    async fn claim(&self, claim: &Claim, owner: &str) -> Result<()>;

    /// Claims a free address of `range` for `owner`, none of `avoid`; the
    /// claim is `make` of the address.
    async fn allocate(
        &self,
        range: Ipv4Network,
        avoid: &BTreeSet<Ipv4Addr>,
        owner: &str,
        make: &(dyn Fn(Ipv4Network) -> Claim + Send + Sync),
    ) -> Result<Claim>;

    /// Gives up `address` if this host's `owner` holds it.
    async fn release(&self, address: Ipv4Addr, owner: &str) -> Result<()>;

    /// Gives up what this host holds beyond `kept` (owner keys by address):
    /// claims of containers that went without a detach. Returns what went.
    async fn sweep(&self, host: Ipv4Addr, kept: &[(Ipv4Addr, String)]) -> Result<Vec<Ipv4Addr>>;
}

/// The addresses of `range` a container can have (not the network's own
/// nor its broadcast address), from the one at `offset` round to the one
/// before it. Lazy: a /12 has a million.
pub fn candidates(range: Ipv4Network, offset: u32) -> impl Iterator<Item = Ipv4Addr> {
    let base = u32::from(range.network());
    let size: u64 = 1u64 << (32 - u32::from(range.prefix()));
    // /31 and /32 have no network or broadcast address to skip.
    let (first, usable) = if size <= 2 { (0, size) } else { (1, size - 2) };
    let start = u64::from(offset) % usable.max(1);
    (0..usable).map(move |i| {
        let index = first + (start + i) % usable;
        // index < size <= 2^32, so the sum stays an address of the range.
        Ipv4Addr::from(base.wrapping_add(index as u32))
    })
}

/// Where a host starts looking in `range`, from its address: hosts that
/// cannot see each other's claims (peer mode, before they connect) then
/// pick apart, which makes a later conflict unlikely rather than certain.
pub fn spread_offset(host: Ipv4Addr, range: Ipv4Network) -> u32 {
    let size: u64 = 1u64 << (32 - u32::from(range.prefix()));
    if size < 1024 {
        return 0;
    }
    // A stride per host, Knuth's multiplicative hash of its address.
    let hash = u32::from(host).wrapping_mul(2_654_435_761);
    ((u64::from(hash) * 64) % size) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_skip_the_network_and_broadcast_addresses_and_wrap() {
        let range: Ipv4Network = "10.1.1.0/30".parse().expect("cidr");
        let all: Vec<Ipv4Addr> = candidates(range, 0).collect();
        assert_eq!(
            all,
            vec![Ipv4Addr::new(10, 1, 1, 1), Ipv4Addr::new(10, 1, 1, 2)]
        );
        let from_second: Vec<Ipv4Addr> = candidates(range, 1).collect();
        assert_eq!(
            from_second,
            vec![Ipv4Addr::new(10, 1, 1, 2), Ipv4Addr::new(10, 1, 1, 1)]
        );
        let weave: Ipv4Network = "10.32.0.0/12".parse().expect("cidr");
        assert_eq!(
            candidates(weave, 0).next(),
            Some(Ipv4Addr::new(10, 32, 0, 1))
        );
        assert_eq!(candidates(weave, 0).count(), (1 << 20) - 2);
    }

    #[test]
    fn hosts_start_apart_in_a_large_range() {
        let weave: Ipv4Network = "10.32.0.0/12".parse().expect("cidr");
        let a = spread_offset(Ipv4Addr::new(192, 168, 0, 10), weave);
        let b = spread_offset(Ipv4Addr::new(192, 168, 0, 20), weave);
        assert_ne!(a, b);
        let small: Ipv4Network = "10.1.1.0/24".parse().expect("cidr");
        assert_eq!(spread_offset(Ipv4Addr::new(192, 168, 0, 10), small), 0);
    }
}
