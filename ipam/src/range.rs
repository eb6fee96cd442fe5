//! Splitting a network into equal node subnets, with flannel's rules for the
//! defaults, so that a tartan node and a flannel node agree on every subnet.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rand::Rng;

use crate::IpamError;

/// Random probes before a free-subnet search falls back to a scan: plenty
/// when the range is mostly free, and the scan keeps it correct when it is not.
const RANDOM_PROBES: u32 = 64;

/// The subnets a network config hands out: `SubnetLen`-sized blocks of
/// `Network` from `SubnetMin` to `SubnetMax`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRange {
    network: Ipv4Network,
    subnet_len: u8,
    min: u32,
    max: u32,
}

fn invalid(field: &'static str, reason: String) -> IpamError {
    IpamError::InvalidConfig { field, reason }
}

impl SubnetRange {
    /// Validates a config and fills in flannel's defaults: a /24 per node for
    /// networks of /21 or wider, else two bits more than the network; the
    /// first subnet is skipped, the last is used.
    pub fn new(
        network: Ipv4Network,
        subnet_len: Option<u8>,
        subnet_min: Option<Ipv4Addr>,
        subnet_max: Option<Ipv4Addr>,
    ) -> Result<SubnetRange, IpamError> {
        let prefix = network.prefix();
        if network.ip() != network.network() {
            return Err(invalid(
                "Network",
                format!(
                    "{network} is not a network address (did you mean {}/{prefix}?)",
                    network.network()
                ),
            ));
        }
        let subnet_len = match subnet_len {
            Some(len) if len > 30 => {
                return Err(invalid("SubnetLen", format!("/{len} is longer than /30")));
            }
            Some(len) if u16::from(len) < u16::from(prefix) + 2 => {
                return Err(invalid(
                    "SubnetLen",
                    format!("/{len} leaves Network {network} fewer than four subnets (use /{} or longer)", prefix + 2),
                ));
            }
            Some(len) => len,
            None if prefix < 22 => 24,
            None if prefix <= 28 => prefix + 2,
            None => {
                return Err(invalid(
                    "Network",
                    format!("{network} is too small to split into subnets (use /28 or wider)"),
                ))
            }
        };
        let size = 1u32 << (32 - subnet_len);
        let base = u32::from(network.network());
        let last = u32::from(network.broadcast()) - (size - 1);
        let check = |field: &'static str, addr: Ipv4Addr| -> Result<u32, IpamError> {
            if !network.contains(addr) {
                return Err(invalid(
                    field,
                    format!("{addr} is outside Network {network}"),
                ));
            }
            let value = u32::from(addr);
            if value % size != 0 {
                return Err(invalid(
                    field,
                    format!("{addr} is not on a /{subnet_len} boundary"),
                ));
            }
            Ok(value)
        };
        let min = match subnet_min {
            Some(addr) => check("SubnetMin", addr)?,
            None => base + size,
        };
        let max = match subnet_max {
            Some(addr) => check("SubnetMax", addr)?,
            None => last,
        };
        if min > max {
            return Err(invalid(
                "SubnetMin",
                format!(
                    "{} is above SubnetMax {}",
                    Ipv4Addr::from(min),
                    Ipv4Addr::from(max)
                ),
            ));
        }
        Ok(SubnetRange {
            network,
            subnet_len,
            min,
            max,
        })
    }

    pub fn network(&self) -> Ipv4Network {
        self.network
    }

    pub fn subnet_len(&self) -> u8 {
        self.subnet_len
    }

    /// The first subnet handed out.
    pub fn min(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.min)
    }

    /// The last subnet handed out.
    pub fn max(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.max)
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.subnet_len)
    }

    /// How many subnets lie between min and max, both included.
    pub fn len(&self) -> u64 {
        u64::from((self.max - self.min) / self.size()) + 1
    }

    /// Never true: a valid range holds at least one subnet.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `subnet` is one this range hands out: right length, aligned, within min..=max.
    pub fn contains(&self, subnet: &Ipv4Network) -> bool {
        let base = u32::from(subnet.ip());
        subnet.prefix() == self.subnet_len
            && base % self.size() == 0
            && (self.min..=self.max).contains(&base)
    }

    /// Whether `subnet` lies entirely inside the network, whatever its length.
    pub fn in_network(&self, subnet: &Ipv4Network) -> bool {
        subnet.prefix() >= self.network.prefix() && self.network.contains(subnet.network())
    }

    /// The `index`-th subnet from min.
    pub fn nth(&self, index: u64) -> Option<Ipv4Network> {
        if index >= self.len() {
            return None;
        }
        let base = self.min + (index as u32) * self.size();
        Ipv4Network::new(Ipv4Addr::from(base), self.subnet_len).ok()
    }

    /// Every subnet from min to max.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        (0..self.len()).filter_map(|i| self.nth(i))
    }

    /// A uniformly random subnet that `is_taken` says is free; None when all are taken.
    pub fn choose_free<R: Rng + ?Sized>(
        &self,
        is_taken: impl Fn(&Ipv4Network) -> bool,
        rng: &mut R,
    ) -> Option<Ipv4Network> {
        let len = self.len();
        for _ in 0..RANDOM_PROBES {
            let candidate = self.nth(rng.random_range(0..len))?;
            if !is_taken(&candidate) {
                return Some(candidate);
            }
        }
        // Mostly full: collect what is free and pick among it, so every free
        // subnet stays equally likely.
        let free: Vec<u64> = (0..len)
            .filter(|&i| self.nth(i).is_some_and(|s| !is_taken(&s)))
            .collect();
        if free.is_empty() {
            return None;
        }
        self.nth(free[rng.random_range(0..free.len())])
    }
}

/// Whether two networks share any address.
pub fn overlaps(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The first usable address of a subnet: the node's gateway for its containers.
pub fn gateway(subnet: &Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// The gateway with the subnet's prefix length, as flannel writes `FLANNEL_SUBNET`.
pub fn gateway_cidr(subnet: &Ipv4Network) -> String {
    format!("{}/{}", gateway(subnet), subnet.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    fn field(err: IpamError) -> &'static str {
        match err {
            IpamError::InvalidConfig { field, .. } => field,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn flannel_defaults() {
        let r = SubnetRange::new(net("10.5.0.0/16"), None, None, None).expect("range");
        assert_eq!(r.subnet_len(), 24);
        assert_eq!(r.min(), Ipv4Addr::new(10, 5, 1, 0));
        assert_eq!(r.max(), Ipv4Addr::new(10, 5, 255, 0));
        assert_eq!(r.len(), 255);
        assert_eq!(
            SubnetRange::new(net("10.5.0.0/21"), None, None, None)
                .expect("r")
                .subnet_len(),
            24
        );
        assert_eq!(
            SubnetRange::new(net("10.5.0.0/22"), None, None, None)
                .expect("r")
                .subnet_len(),
            24
        );
        assert_eq!(
            SubnetRange::new(net("10.5.0.0/23"), None, None, None)
                .expect("r")
                .subnet_len(),
            25
        );
        let small = SubnetRange::new(net("10.5.0.0/28"), None, None, None).expect("r");
        assert_eq!((small.subnet_len(), small.len()), (30, 3));
        assert_eq!(
            field(SubnetRange::new(net("10.5.0.0/29"), None, None, None).expect_err("tiny")),
            "Network"
        );
    }

    #[test]
    fn every_error_names_its_field() {
        let n = net("10.5.0.0/16");
        let cases = [
            (
                SubnetRange::new(net("10.5.0.1/16"), None, None, None),
                "Network",
            ),
            (SubnetRange::new(n, Some(31), None, None), "SubnetLen"),
            (SubnetRange::new(n, Some(17), None, None), "SubnetLen"),
            (
                SubnetRange::new(n, Some(24), Some(Ipv4Addr::new(10, 6, 0, 0)), None),
                "SubnetMin",
            ),
            (
                SubnetRange::new(n, Some(24), Some(Ipv4Addr::new(10, 5, 0, 128)), None),
                "SubnetMin",
            ),
            (
                SubnetRange::new(n, Some(24), None, Some(Ipv4Addr::new(10, 4, 0, 0))),
                "SubnetMax",
            ),
            (
                SubnetRange::new(n, Some(24), None, Some(Ipv4Addr::new(10, 5, 9, 1))),
                "SubnetMax",
            ),
            (
                SubnetRange::new(
                    n,
                    Some(24),
                    Some(Ipv4Addr::new(10, 5, 9, 0)),
                    Some(Ipv4Addr::new(10, 5, 8, 0)),
                ),
                "SubnetMin",
            ),
        ];
        for (result, expected) in cases {
            let err = result.expect_err(expected);
            assert!(!err.to_string().contains('\n'));
            assert_eq!(field(err), expected);
        }
    }

    #[test]
    fn explicit_bounds_and_membership() {
        let r = SubnetRange::new(
            net("10.5.0.0/16"),
            Some(26),
            Some(Ipv4Addr::new(10, 5, 8, 0)),
            Some(Ipv4Addr::new(10, 5, 9, 192)),
        )
        .expect("range");
        assert_eq!(r.len(), 8);
        assert!(r.contains(&net("10.5.8.64/26")));
        assert!(!r.contains(&net("10.5.8.0/24")), "wrong length");
        assert!(!r.contains(&net("10.5.10.0/26")), "past max");
        assert!(r.in_network(&net("10.5.200.0/24")));
        assert!(!r.in_network(&net("10.6.0.0/24")));
        assert!(!r.in_network(&net("10.0.0.0/8")), "wider than the network");
        assert_eq!(r.nth(7), Some(net("10.5.9.192/26")));
        assert_eq!(r.nth(8), None);
    }

    #[test]
    fn choose_free_finds_the_last_hole_in_a_large_range() {
        let r = SubnetRange::new(net("10.0.0.0/8"), Some(30), None, None).expect("range");
        assert_eq!(r.len(), (1 << 22) - 1);
        let hole = net("10.77.3.8/30");
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(r.choose_free(|s| *s != hole, &mut rng), Some(hole));
        assert_eq!(r.choose_free(|_| true, &mut rng), None);
    }

    #[test]
    fn gateway_is_the_first_address() {
        assert_eq!(gateway(&net("10.5.34.0/24")), Ipv4Addr::new(10, 5, 34, 1));
        assert_eq!(gateway_cidr(&net("10.5.34.0/24")), "10.5.34.1/24");
        assert!(overlaps(&net("10.5.0.0/16"), &net("10.5.34.0/24")));
        assert!(overlaps(&net("10.5.34.0/24"), &net("10.5.0.0/16")));
        assert!(!overlaps(&net("10.5.34.0/24"), &net("10.5.35.0/24")));
    }

    proptest! {
        #[test]
        fn choose_free_returns_only_free_subnets(
            prefix in 16u8..=24,
            extra in 2u8..=6,
            taken_mask in proptest::collection::vec(any::<bool>(), 64),
            seed in any::<u64>(),
        ) {
            let network = Ipv4Network::new(Ipv4Addr::new(10, 9, 0, 0), prefix).expect("cidr");
            let network = Ipv4Network::new(network.network(), prefix).expect("cidr");
            let r = SubnetRange::new(network, Some(prefix + extra), None, None).expect("range");
            let taken = |s: &Ipv4Network| {
                let index = (u32::from(s.network()) - u32::from(r.min())) >> (32 - r.subnet_len());
                taken_mask[index as usize % taken_mask.len()]
            };
            let all_taken = r.iter().all(|s| taken(&s));
            let mut rng = StdRng::seed_from_u64(seed);
            match r.choose_free(taken, &mut rng) {
                Some(s) => {
                    prop_assert!(r.contains(&s));
                    prop_assert!(!taken(&s));
                }
                None => prop_assert!(all_taken),
            }
        }

        #[test]
        fn iter_yields_contained_distinct_subnets(prefix in 8u8..=26, extra in 2u8..=4) {
            let network = Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), prefix).expect("cidr");
            let len = (prefix + extra).min(30);
            let r = SubnetRange::new(network, Some(len), None, None).expect("range");
            let first: Vec<_> = r.iter().take(100).collect();
            for pair in first.windows(2) {
                prop_assert!(u32::from(pair[0].network()) < u32::from(pair[1].network()));
            }
            for s in &first {
                prop_assert!(r.contains(s));
                prop_assert!(r.in_network(s));
            }
            prop_assert_eq!(r.iter().count() as u64, r.len());
        }
    }
}
