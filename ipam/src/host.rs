//! Container addresses inside one node subnet. The base and broadcast
//! addresses are never usable, base + 1 is the node's gateway, and the rest
//! go out lowest first, one per owner (a container id).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::{gateway, IpamError};

/// The address book of one node subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAllocator {
    subnet: Ipv4Network,
    /// Ordered so that the lowest free address is the first gap.
    by_addr: BTreeMap<Ipv4Addr, String>,
    /// The reverse of `by_addr`, for idempotent allocation and release.
    by_owner: HashMap<String, Ipv4Addr>,
}

impl HostAllocator {
    /// An empty book for `subnet`, which needs at least four addresses
    /// (base, gateway, one container, broadcast). A subnet written with
    /// host bits set, like 10.5.34.7/24, stands for its base.
    pub fn new(subnet: Ipv4Network) -> Result<HostAllocator, IpamError> {
        let base = Ipv4Network::new(subnet.network(), subnet.prefix());
        match base {
            Ok(subnet) if subnet.prefix() <= 30 => Ok(HostAllocator {
                subnet,
                by_addr: BTreeMap::new(),
                by_owner: HashMap::new(),
            }),
            _ => Err(IpamError::SubnetTooSmall { subnet }),
        }
    }

    pub fn subnet(&self) -> Ipv4Network {
        self.subnet
    }

    /// base + 1, kept for the node's bridge and never handed out.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway(&self.subnet)
    }

    fn first_host(&self) -> u32 {
        u32::from(self.subnet.network()) + 2
    }

    fn last_host(&self) -> u32 {
        u32::from(self.subnet.broadcast()) - 1
    }

    /// The lowest address that can go out: the first gap in the sorted
    /// book, which holds only addresses from `first_host` to `last_host`.
    fn lowest_free(&self) -> Option<Ipv4Addr> {
        let mut candidate = self.first_host();
        for held in self.by_addr.keys() {
            if u32::from(*held) != candidate {
                break;
            }
            candidate += 1;
        }
        (candidate <= self.last_host()).then_some(Ipv4Addr::from(candidate))
    }

    fn record(&mut self, owner: &str, addr: Ipv4Addr) {
        self.by_addr.insert(addr, owner.to_owned());
        self.by_owner.insert(owner.to_owned(), addr);
    }

    /// The owner's address: the one it already holds (so a retried request
    /// gets the same answer), else the lowest free one.
    pub fn allocate(&mut self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(addr) = self.address_of(owner) {
            return Ok(addr);
        }
        let addr = self.lowest_free().ok_or(IpamError::Exhausted {
            subnet: self.subnet,
        })?;
        self.record(owner, addr);
        Ok(addr)
    }

    /// Gives `addr` to `owner`, for containers that ask for a fixed address.
    /// Asking again for the address one already holds succeeds; an owner
    /// holding another address gets [`IpamError::OwnerHasAddress`] rather
    /// than a silent move.
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
        if !(self.first_host()..=self.last_host()).contains(&u32::from(addr)) {
            return Err(IpamError::Reserved { addr });
        }
        if let Some(holder) = self.by_addr.get(&addr) {
            if holder == owner {
                return Ok(addr);
            }
            return Err(IpamError::InUse {
                addr,
                owner: holder.clone(),
            });
        }
        if let Some(held) = self.address_of(owner) {
            return Err(IpamError::OwnerHasAddress {
                owner: owner.to_owned(),
                addr: held,
            });
        }
        self.record(owner, addr);
        Ok(addr)
    }

    /// Frees the owner's address and returns it; None if it held none.
    pub fn release(&mut self, owner: &str) -> Option<Ipv4Addr> {
        let addr = self.by_owner.remove(owner)?;
        self.by_addr.remove(&addr);
        Some(addr)
    }

    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&addr).map(String::as_str)
    }

    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.by_owner.get(owner).copied()
    }

    /// Every allocation, lowest address first.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, &str)> {
        self.by_addr
            .iter()
            .map(|(addr, owner)| (*addr, owner.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn book(subnet: &str) -> HostAllocator {
        HostAllocator::new(subnet.parse().expect("test CIDR")).expect("valid subnet")
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("test address")
    }

    #[test]
    fn hands_out_from_base_plus_two_lowest_first() {
        let mut a = book("10.5.34.0/24");
        assert_eq!(a.subnet(), "10.5.34.0/24".parse().expect("cidr"));
        assert_eq!(a.gateway(), ip("10.5.34.1"));
        assert_eq!(a.allocate("c1").expect("free"), ip("10.5.34.2"));
        assert_eq!(a.allocate("c2").expect("free"), ip("10.5.34.3"));
        assert_eq!(a.allocate("c3").expect("free"), ip("10.5.34.4"));
        assert_eq!(a.release("c2"), Some(ip("10.5.34.3")));
        assert_eq!(
            a.allocate("c4").expect("free"),
            ip("10.5.34.3"),
            "reuses the gap"
        );
        assert_eq!(a.allocate("c5").expect("free"), ip("10.5.34.5"));
    }

    #[test]
    fn allocate_is_idempotent_per_owner() {
        let mut a = book("10.5.34.0/24");
        let first = a.allocate("c1").expect("free");
        assert_eq!(a.allocate("c1").expect("again"), first);
        assert_eq!(a.allocations().count(), 1);
        assert_eq!(a.address_of("c1"), Some(first));
        assert_eq!(a.owner_of(first), Some("c1"));
    }

    #[test]
    fn release_forgets_the_owner() {
        let mut a = book("10.5.34.0/24");
        let addr = a.allocate("c1").expect("free");
        assert_eq!(a.release("c1"), Some(addr));
        assert_eq!(a.release("c1"), None);
        assert_eq!(a.release("never-seen"), None);
        assert_eq!(a.address_of("c1"), None);
        assert_eq!(a.owner_of(addr), None);
        assert_eq!(a.allocations().count(), 0);
    }

    #[test]
    fn a_slash_30_holds_one_container() {
        let mut a = book("10.5.34.4/30");
        assert_eq!(a.gateway(), ip("10.5.34.5"));
        assert_eq!(a.allocate("c1").expect("the one host"), ip("10.5.34.6"));
        match a.allocate("c2") {
            Err(IpamError::Exhausted { subnet }) => assert_eq!(subnet, a.subnet()),
            other => panic!("expected Exhausted, got {other:?}"),
        }
        a.release("c1");
        assert_eq!(a.allocate("c2").expect("freed"), ip("10.5.34.6"));
    }

    #[test]
    fn a_full_slash_28_never_reaches_the_broadcast() {
        let mut a = book("10.5.34.16/28");
        let handed: Vec<_> = (0..13)
            .map(|i| a.allocate(&format!("c{i}")).expect("13 hosts"))
            .collect();
        let expected: Vec<_> = (18..=30)
            .map(|last| Ipv4Addr::new(10, 5, 34, last))
            .collect();
        assert_eq!(handed, expected);
        assert!(matches!(
            a.allocate("c13"),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn subnets_must_have_four_addresses() {
        for small in ["10.5.34.0/31", "10.5.34.0/32"] {
            let subnet: Ipv4Network = small.parse().expect("cidr");
            match HostAllocator::new(subnet) {
                Err(IpamError::SubnetTooSmall { subnet: s }) => assert_eq!(s, subnet),
                other => panic!("{small}: expected SubnetTooSmall, got {other:?}"),
            }
        }
        assert_eq!(book("10.5.34.8/30").subnet().prefix(), 30);
    }

    #[test]
    fn a_subnet_with_host_bits_means_its_base() {
        let mut a = book("10.5.34.77/24");
        assert_eq!(a.subnet(), "10.5.34.0/24".parse().expect("cidr"));
        assert_eq!(a.gateway(), ip("10.5.34.1"));
        assert_eq!(a.allocate("c1").expect("free"), ip("10.5.34.2"));
    }

    #[test]
    fn specific_addresses_outside_or_reserved_are_refused() {
        let mut a = book("10.5.34.0/24");
        match a.allocate_specific("c", ip("10.5.35.9")) {
            Err(IpamError::OutsideSubnet { addr, subnet }) => {
                assert_eq!(addr, ip("10.5.35.9"));
                assert_eq!(subnet, a.subnet());
            }
            other => panic!("expected OutsideSubnet, got {other:?}"),
        }
        for reserved in ["10.5.34.0", "10.5.34.1", "10.5.34.255"] {
            match a.allocate_specific("c", ip(reserved)) {
                Err(IpamError::Reserved { addr }) => assert_eq!(addr, ip(reserved)),
                other => panic!("{reserved}: expected Reserved, got {other:?}"),
            }
        }
        assert_eq!(a.allocations().count(), 0);
    }

    #[test]
    fn specific_addresses_belong_to_one_owner() {
        let mut a = book("10.5.34.0/24");
        let addr = ip("10.5.34.9");
        assert_eq!(a.allocate_specific("c1", addr).expect("free"), addr);
        assert_eq!(a.allocate_specific("c1", addr).expect("idempotent"), addr);
        let err = a.allocate_specific("c2", addr).expect_err("taken");
        assert_eq!(err.to_string(), "10.5.34.9 is already in use by c1");
        match a.allocate_specific("c1", ip("10.5.34.10")) {
            Err(IpamError::OwnerHasAddress { owner, addr: held }) => {
                assert_eq!((owner.as_str(), held), ("c1", addr));
            }
            other => panic!("expected OwnerHasAddress, got {other:?}"),
        }
        assert_eq!(a.address_of("c1"), Some(addr));
        assert_eq!(a.owner_of(ip("10.5.34.10")), None);
        // Later automatic allocations go around it.
        assert_eq!(a.allocate("c3").expect("free"), ip("10.5.34.2"));
        assert_eq!(a.allocate("c1").expect("held"), addr);
    }

    #[test]
    fn allocations_are_listed_in_address_order() {
        let mut a = book("10.5.34.0/24");
        a.allocate_specific("late", ip("10.5.34.200"))
            .expect("free");
        a.allocate("early").expect("free");
        a.allocate_specific("middle", ip("10.5.34.50"))
            .expect("free");
        let listed: Vec<_> = a.allocations().collect();
        assert_eq!(
            listed,
            vec![
                (ip("10.5.34.2"), "early"),
                (ip("10.5.34.50"), "middle"),
                (ip("10.5.34.200"), "late"),
            ]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(u8),
        Specific(u8, u8),
        Release(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..20).prop_map(Op::Allocate),
            (0u8..20, any::<u8>()).prop_map(|(o, host)| Op::Specific(o, host)),
            (0u8..20).prop_map(Op::Release),
        ]
    }

    /// What an operation came to, comparable between book and model.
    #[derive(Debug, PartialEq)]
    enum Outcome {
        Granted(Ipv4Addr),
        Exhausted,
        Outside,
        Reserved,
        InUse(String),
        OwnerHasAddress(Ipv4Addr),
        Released(Option<Ipv4Addr>),
    }

    fn owner(id: u8) -> String {
        format!("c{id}")
    }

    fn specific_addr(subnet: &Ipv4Network, host: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(subnet.network()) + u32::from(host))
    }

    fn run(book: &mut HostAllocator, op: &Op) -> Outcome {
        let result = match *op {
            Op::Allocate(o) => book.allocate(&owner(o)),
            Op::Specific(o, host) => {
                let addr = specific_addr(&book.subnet(), host);
                book.allocate_specific(&owner(o), addr)
            }
            Op::Release(o) => return Outcome::Released(book.release(&owner(o))),
        };
        match result {
            Ok(addr) => Outcome::Granted(addr),
            Err(IpamError::Exhausted { .. }) => Outcome::Exhausted,
            Err(IpamError::OutsideSubnet { .. }) => Outcome::Outside,
            Err(IpamError::Reserved { .. }) => Outcome::Reserved,
            Err(IpamError::InUse { owner, .. }) => Outcome::InUse(owner),
            Err(IpamError::OwnerHasAddress { addr, .. }) => Outcome::OwnerHasAddress(addr),
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    /// The rules restated over a plain owner -> address map.
    struct Model {
        subnet: Ipv4Network,
        held: BTreeMap<String, Ipv4Addr>,
    }

    impl Model {
        fn holder(&self, addr: Ipv4Addr) -> Option<&String> {
            self.held.iter().find(|(_, a)| **a == addr).map(|(o, _)| o)
        }

        fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
            let base = u32::from(self.subnet.network());
            let broadcast = u32::from(self.subnet.broadcast());
            (base + 2..broadcast).map(Ipv4Addr::from)
        }

        fn apply(&mut self, op: &Op) -> Outcome {
            match *op {
                Op::Allocate(o) => {
                    let owner = owner(o);
                    if let Some(addr) = self.held.get(&owner) {
                        return Outcome::Granted(*addr);
                    }
                    match self.hosts().find(|addr| self.holder(*addr).is_none()) {
                        Some(addr) => {
                            self.held.insert(owner, addr);
                            Outcome::Granted(addr)
                        }
                        None => Outcome::Exhausted,
                    }
                }
                Op::Specific(o, host) => {
                    let owner = owner(o);
                    let addr = specific_addr(&self.subnet, host);
                    if !self.subnet.contains(addr) {
                        return Outcome::Outside;
                    }
                    if !self.hosts().any(|h| h == addr) {
                        return Outcome::Reserved;
                    }
                    match (self.holder(addr), self.held.get(&owner)) {
                        (Some(holder), _) if *holder == owner => Outcome::Granted(addr),
                        (Some(holder), _) => Outcome::InUse(holder.clone()),
                        (None, Some(held)) => Outcome::OwnerHasAddress(*held),
                        (None, None) => {
                            self.held.insert(owner, addr);
                            Outcome::Granted(addr)
                        }
                    }
                }
                Op::Release(o) => Outcome::Released(self.held.remove(&owner(o))),
            }
        }
    }

    fn check_invariants(book: &HostAllocator, model: &Model) -> Result<(), TestCaseError> {
        let subnet = book.subnet();
        let reserved = [subnet.network(), book.gateway(), subnet.broadcast()];
        let listed: Vec<(Ipv4Addr, &str)> = book.allocations().collect();
        prop_assert_eq!(listed.len(), model.held.len());
        for (addr, owner) in listed {
            prop_assert!(subnet.contains(addr));
            prop_assert!(!reserved.contains(&addr), "{} handed out", addr);
            prop_assert_eq!(model.held.get(owner), Some(&addr));
            prop_assert_eq!(book.address_of(owner), Some(addr));
            prop_assert_eq!(book.owner_of(addr), Some(owner));
        }
        Ok(())
    }

    proptest! {
        /// Random operations against the model: every answer matches, and
        /// no reserved or doubly held address ever appears.
        #[test]
        fn never_hands_out_reserved_or_duplicate_addresses(
            prefix in 24u8..=30,
            ops in proptest::collection::vec(op(), 1..150),
        ) {
            let subnet: Ipv4Network = format!("10.5.34.0/{prefix}").parse().expect("cidr");
            let mut book = HostAllocator::new(subnet).expect("valid");
            let mut model = Model { subnet, held: BTreeMap::new() };
            for op in &ops {
                prop_assert_eq!(run(&mut book, op), model.apply(op), "{:?}", op);
                check_invariants(&book, &model)?;
            }
        }
    }
}
