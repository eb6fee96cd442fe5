//! Container addresses inside the node subnet: `.1` is the gateway, the
//! rest are handed out lowest first, each to one owner.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::{gateway, IpamError};

/// The address book of one node subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAllocator {
    subnet: Ipv4Network,
    by_addr: BTreeMap<Ipv4Addr, String>,
}

impl HostAllocator {
    pub fn new(subnet: Ipv4Network) -> Result<HostAllocator, IpamError> {
        if subnet.prefix() > 30 {
            return Err(IpamError::SubnetTooSmall { subnet });
        }
        let subnet = Ipv4Network::new(subnet.network(), subnet.prefix())
            .map_err(|_| IpamError::SubnetTooSmall { subnet })?;
        Ok(HostAllocator {
            subnet,
            by_addr: BTreeMap::new(),
        })
    }

    pub fn subnet(&self) -> Ipv4Network {
        self.subnet
    }

    pub fn gateway(&self) -> Ipv4Addr {
        gateway(&self.subnet)
    }

    fn first_host(&self) -> u32 {
        u32::from(self.subnet.network()) + 2
    }

    fn last_host(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - 1
    }

    /// The owner's address, or the lowest free one, now the owner's.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = self.address_of(owner) {
            return Ok(addr);
        }
        let free = (self.first_host()..=self.last_host())
            .map(Ipv4Addr::from)
            .find(|addr| !self.by_addr.contains_key(addr))
            .ok_or(IpamError::Exhausted {
                subnet: self.subnet,
            })?;
        self.by_addr.insert(free, owner.to_string());
        Ok(free)
    }

    /// Gives `addr` to `owner` if it is a free host address of the subnet.
    pub fn allocate_specific(
        &mut self,
        owner: &str,
        addr: Ipv4Addr,
    ) -> Result<Ipv4Addr, IpamError> {
        if !self.subnet.contains(addr) {
            return Err(IpamError::OutsideSubnet {
                addr,
                subnet: self.subnet,
            });
        }
        let value = u32::from(addr);
        if value < self.first_host() || value > self.last_host() {
            return Err(IpamError::Reserved { addr });
        }
        match self.by_addr.get(&addr) {
            Some(holder) if holder == owner => return Ok(addr),
            Some(holder) => {
                return Err(IpamError::InUse {
                    addr,
                    owner: holder.clone(),
                })
            }
            None => {}
        }
        if let Some(previous) = self.address_of(owner) {
            self.by_addr.remove(&previous);
        }
        self.by_addr.insert(addr, owner.to_string());
        Ok(addr)
    }

    /// Frees the owner's address; returns it.
    pub fn release(&mut self, owner: &str) -> Option<Ipv4Addr> {
        let addr = self.address_of(owner)?;
        self.by_addr.remove(&addr);
        Some(addr)
    }

    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }

    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.by_addr
            .iter()
            .find(|(_, o)| *o == owner)
            .map(|(addr, _)| *addr)
    }

    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> {
        self.by_addr
            .iter()
            .map(|(addr, owner)| (*addr, owner.as_str()))
    }

    /// Restores one recorded allocation; used when loading.
    pub(crate) fn restore(&mut self, addr: Ipv4Addr, owner: String) -> Result<(), IpamError> {
        self.allocate_specific(&owner, addr).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn alloc(s: &str) -> HostAllocator {
        HostAllocator::new(s.parse().expect("cidr")).expect("allocator")
    }

    #[test]
    fn hands_out_from_two_up_and_is_idempotent() {
        let mut a = alloc("10.5.34.0/24");
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 5, 34, 1));
        assert_eq!(a.allocate("c1").expect("c1"), Ipv4Addr::new(10, 5, 34, 2));
        assert_eq!(a.allocate("c2").expect("c2"), Ipv4Addr::new(10, 5, 34, 3));
        assert_eq!(
            a.allocate("c1").expect("again"),
            Ipv4Addr::new(10, 5, 34, 2)
        );
        assert_eq!(a.release("c1"), Some(Ipv4Addr::new(10, 5, 34, 2)));
        assert_eq!(a.release("c1"), None);
        assert_eq!(
            a.allocate("c3").expect("c3"),
            Ipv4Addr::new(10, 5, 34, 2),
            "lowest free"
        );
        assert_eq!(a.owner_of(Ipv4Addr::new(10, 5, 34, 3)), Some("c2"));
    }

    #[test]
    fn specific_addresses_are_checked() {
        let mut a = alloc("10.5.34.0/24");
        let err = a
            .allocate_specific("c", Ipv4Addr::new(10, 5, 35, 9))
            .expect_err("outside");
        assert!(matches!(err, IpamError::OutsideSubnet { .. }));
        for reserved in [0, 1, 255] {
            let err = a
                .allocate_specific("c", Ipv4Addr::new(10, 5, 34, reserved))
                .expect_err("reserved");
            assert!(matches!(err, IpamError::Reserved { .. }), "{reserved}");
        }
        a.allocate_specific("c1", Ipv4Addr::new(10, 5, 34, 9))
            .expect("free");
        a.allocate_specific("c1", Ipv4Addr::new(10, 5, 34, 9))
            .expect("idempotent");
        let err = a
            .allocate_specific("c2", Ipv4Addr::new(10, 5, 34, 9))
            .expect_err("taken");
        assert_eq!(err.to_string(), "10.5.34.9 is already in use by c1");
    }

    #[test]
    fn a_full_subnet_says_so() {
        let mut a = alloc("10.5.34.0/30");
        assert_eq!(
            a.allocate("c1").expect("only host"),
            Ipv4Addr::new(10, 5, 34, 2)
        );
        assert!(matches!(a.allocate("c2"), Err(IpamError::Exhausted { .. })));
        assert!(HostAllocator::new("10.5.34.0/31".parse().expect("cidr")).is_err());
    }

    proptest! {
        #[test]
        fn never_hands_out_reserved_or_duplicate_addresses(
            prefix in 24u8..=30,
            ops in proptest::collection::vec((0u8..40, any::<bool>()), 1..200),
        ) {
            let subnet: Ipv4Network = format!("10.5.34.0/{prefix}").parse().expect("cidr");
            let mut a = HostAllocator::new(subnet).expect("allocator");
            for (owner, release) in ops {
                let owner = format!("c{owner}");
                if release {
                    a.release(&owner);
                } else if let Ok(addr) = a.allocate(&owner) {
                    prop_assert!(subnet.contains(addr));
                    prop_assert!(addr != subnet.network() && addr != a.gateway() && addr != subnet.broadcast());
                }
                let addrs: Vec<_> = a.allocations().map(|(addr, _)| addr).collect();
                let owners: std::collections::HashSet<_> = a.allocations().map(|(_, o)| o).collect();
                prop_assert_eq!(owners.len(), addrs.len(), "one address per owner");
            }
        }
    }
}
