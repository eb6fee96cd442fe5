//! Splitting a network into equal node subnets with flannel's rules and
//! defaults, so that a tartan node and a flannel node reading the same
//! config agree on every subnet.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rand::Rng;

use crate::IpamError;

/// Random probes before a free-subnet search falls back to a full scan.
/// Plenty when the range is mostly free (a range that is half taken fails
/// all of them with odds 2^-64); the scan keeps the answer right when it is
/// nearly full.
const RANDOM_PROBES: u32 = 64;

/// The longest node subnet flannel allows: a /30 still holds a gateway and
/// one container.
const MAX_SUBNET_LEN: u8 = 30;

/// The node subnets one network config hands out: `SubnetLen`-sized blocks
/// of `Network` from `SubnetMin` to `SubnetMax`, both included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetRange {
    network: Ipv4Network,
    subnet_len: u8,
    /// Base of the first subnet handed out.
    min: u32,
    /// Base of the last subnet handed out.
    max: u32,
}

fn invalid(field: &'static str, reason: String) -> IpamError {
    IpamError::InvalidConfig { field, reason }
}

/// flannel's default: a /24 per node when the network is big enough for
/// that, else four subnets of the network.
fn default_subnet_len(network: &Ipv4Network) -> Result<u8, IpamError> {
    let prefix = network.prefix();
    match prefix {
        0..22 => Ok(24),
        22..=28 => Ok(prefix + 2),
        _ => Err(invalid(
            "Network",
            format!("{network} is too small; the minimum useful network prefix is /28"),
        )),
    }
}

fn checked_subnet_len(network: &Ipv4Network, len: u8) -> Result<u8, IpamError> {
    if len > MAX_SUBNET_LEN {
        return Err(invalid(
            "SubnetLen",
            format!("/{len} is too long; a node subnet needs at least four addresses (/30)"),
        ));
    }
    // The first subnet is never handed out, so fewer than four would leave
    // at most two nodes.
    let shortest = u16::from(network.prefix()) + 2;
    if u16::from(len) < shortest {
        return Err(invalid(
            "SubnetLen",
            format!(
                "/{len} is too short; Network {network} must be able to accommodate \
                 at least four subnets (use /{shortest} or longer)"
            ),
        ));
    }
    Ok(len)
}

impl SubnetRange {
    /// Validates a network config and fills in flannel's defaults:
    /// `SubnetLen` /24 for networks wider than /22, else the network's
    /// prefix + 2; `SubnetMin` one subnet above the network base (flannel
    /// skips the first subnet, whose base is the network address);
    /// `SubnetMax` the last subnet.
    pub fn new(
        network: Ipv4Network,
        subnet_len: Option<u8>,
        subnet_min: Option<Ipv4Addr>,
        subnet_max: Option<Ipv4Addr>,
    ) -> Result<SubnetRange, IpamError> {
        if network.ip() != network.network() {
            return Err(invalid(
                "Network",
                format!(
                    "{network} is not a network address (did you mean {}/{}?)",
                    network.network(),
                    network.prefix()
                ),
            ));
        }
        let subnet_len = match subnet_len {
            Some(len) => checked_subnet_len(&network, len)?,
            None => default_subnet_len(&network)?,
        };
        let size = subnet_size(subnet_len);
        let bound = |field: &'static str, addr: Ipv4Addr| -> Result<u32, IpamError> {
            if !network.contains(addr) {
                return Err(invalid(
                    field,
                    format!("{addr} is outside Network {network}"),
                ));
            }
            if u32::from(addr) % size != 0 {
                return Err(invalid(
                    field,
                    format!("{addr} is not on a SubnetLen (/{subnet_len}) boundary"),
                ));
            }
            Ok(u32::from(addr))
        };
        let min = match subnet_min {
            Some(addr) => bound("SubnetMin", addr)?,
            None => u32::from(network.network()) + size,
        };
        let max = match subnet_max {
            Some(addr) => bound("SubnetMax", addr)?,
            None => u32::from(network.broadcast()) - (size - 1),
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

    /// The prefix length of every node subnet.
    pub fn subnet_len(&self) -> u8 {
        self.subnet_len
    }

    /// Base address of the first subnet handed out.
    pub fn min(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.min)
    }

    /// Base address of the last subnet handed out.
    pub fn max(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.max)
    }

    fn size(&self) -> u32 {
        subnet_size(self.subnet_len)
    }

    /// How many subnets lie between min and max, both included.
    pub fn len(&self) -> u64 {
        u64::from((self.max - self.min) / self.size()) + 1
    }

    /// Always false: `new` refuses a range without subnets. Here because a
    /// `len` without it surprises readers (and clippy).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `subnet` is one this range hands out: exactly `subnet_len`
    /// long, aligned, with its base between min and max.
    pub fn contains(&self, subnet: &Ipv4Network) -> bool {
        let base = u32::from(subnet.ip());
        subnet.prefix() == self.subnet_len
            && base % self.size() == 0
            && (self.min..=self.max).contains(&base)
    }

    /// Whether `subnet` lies entirely inside the network, whatever its
    /// length; peers' leases are checked against this, not `contains`, since
    /// other nodes may have been configured with other lengths or bounds.
    pub fn in_network(&self, subnet: &Ipv4Network) -> bool {
        subnet.prefix() >= self.network.prefix() && self.network.contains(subnet.network())
    }

    /// The `index`-th subnet counted from min, if there is one.
    pub fn nth(&self, index: u64) -> Option<Ipv4Network> {
        if index >= self.len() {
            return None;
        }
        // index < len <= 2^30, and min + index * size <= max.
        let offset = u32::try_from(index).ok()? * self.size();
        Ipv4Network::new(Ipv4Addr::from(self.min + offset), self.subnet_len).ok()
    }

    /// Every subnet from min to max, in address order.
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Network> + '_ {
        (0..self.len()).filter_map(|index| self.nth(index))
    }

    /// A uniformly random subnet for which `is_taken` is false, or None
    /// when every subnet is taken.
    ///
    /// Random probing answers at once while the range is mostly free, even
    /// for the four million /30s of a /8. When the probes all hit taken
    /// subnets a scan of the whole range decides, picking by reservoir
    /// sampling so every free subnet stays equally likely without
    /// collecting them. Both steps are uniform over the free subnets, so
    /// their combination is too.
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
        let mut chosen = None;
        let free = self.iter().filter(|s| !is_taken(s));
        for (seen, candidate) in (1u64..).zip(free) {
            // Keep the k-th free subnet with probability 1/k.
            if rng.random_range(0..seen) == 0 {
                chosen = Some(candidate);
            }
        }
        chosen
    }
}

/// Addresses in a subnet of prefix `len`; `len` is at least 2 here.
fn subnet_size(len: u8) -> u32 {
    1u32 << (32 - u32::from(len))
}

/// Whether two networks share any address. CIDR blocks either nest or are
/// disjoint, so it is enough to ask whether either holds the other's base.
pub fn overlaps(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// The first usable address of a subnet (base + 1): the node's own address
/// on the bridge and its containers' default gateway. Wraps for the
/// meaningless 255.255.255.255/32 rather than panicking.
pub fn gateway(subnet: &Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// The gateway with the subnet's prefix, as flannel writes `FLANNEL_SUBNET`
/// (e.g. `10.5.34.1/24`).
pub fn gateway_cidr(subnet: &Ipv4Network) -> String {
    format!("{}/{}", gateway(subnet), subnet.prefix())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn net(text: &str) -> Ipv4Network {
        text.parse().expect("test CIDR")
    }

    fn ip(text: &str) -> Ipv4Addr {
        text.parse().expect("test address")
    }

    fn defaults(network: &str) -> Result<SubnetRange, IpamError> {
        SubnetRange::new(net(network), None, None, None)
    }

    /// The field and message of a config error; anything else fails the test.
    fn config_error(result: Result<SubnetRange, IpamError>) -> (&'static str, String) {
        match result {
            Err(err @ IpamError::InvalidConfig { field, .. }) => (field, err.to_string()),
            Err(other) => panic!("expected a config error, got {other}"),
            Ok(range) => panic!("expected a config error, got {range:?}"),
        }
    }

    #[test]
    fn flannel_defaults_for_a_slash_16() {
        let r = defaults("10.5.0.0/16").expect("valid");
        assert_eq!(r.network(), net("10.5.0.0/16"));
        assert_eq!(r.subnet_len(), 24);
        assert_eq!(r.min(), ip("10.5.1.0"));
        assert_eq!(r.max(), ip("10.5.255.0"));
        assert_eq!(r.len(), 255);
        assert!(!r.is_empty());
    }

    #[test]
    fn default_subnet_len_follows_the_network_size() {
        for (network, len, min, max, count) in [
            ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0", 65535),
            ("10.5.0.0/21", 24, "10.5.1.0", "10.5.7.0", 7),
            ("10.5.0.0/22", 24, "10.5.1.0", "10.5.3.0", 3),
            ("10.5.0.0/23", 25, "10.5.0.128", "10.5.1.128", 3),
            ("10.5.0.0/28", 30, "10.5.0.4", "10.5.0.12", 3),
        ] {
            let r = defaults(network).expect(network);
            assert_eq!(r.subnet_len(), len, "{network}");
            assert_eq!(r.min(), ip(min), "{network}");
            assert_eq!(r.max(), ip(max), "{network}");
            assert_eq!(r.len(), count, "{network}");
        }
    }

    #[test]
    fn networks_longer_than_28_are_too_small() {
        for network in ["10.5.0.0/29", "10.5.0.0/30", "10.5.0.0/32"] {
            let (field, message) = config_error(defaults(network));
            assert_eq!(field, "Network");
            assert!(message.contains(network), "{message}");
        }
    }

    #[test]
    fn network_must_be_its_base_address() {
        let (field, message) = config_error(defaults("10.5.0.1/16"));
        assert_eq!(field, "Network");
        assert_eq!(
            message,
            "Network: 10.5.0.1/16 is not a network address (did you mean 10.5.0.0/16?)"
        );
    }

    #[test]
    fn subnet_len_limits() {
        let n = net("10.5.0.0/16");
        for len in [31, 32, 200] {
            let (field, message) = config_error(SubnetRange::new(n, Some(len), None, None));
            assert_eq!(field, "SubnetLen");
            assert!(message.contains(&format!("/{len}")), "{message}");
        }
        for len in [0, 8, 16, 17] {
            let (field, message) = config_error(SubnetRange::new(n, Some(len), None, None));
            assert_eq!(field, "SubnetLen");
            assert!(message.contains(&format!("/{len} ")), "{message}");
            assert!(message.contains("at least four subnets"), "{message}");
        }
        let shortest = SubnetRange::new(n, Some(18), None, None).expect("/18 is prefix + 2");
        assert_eq!(
            (shortest.min(), shortest.max(), shortest.len()),
            (ip("10.5.64.0"), ip("10.5.192.0"), 3)
        );
        let longest = SubnetRange::new(n, Some(30), None, None).expect("/30 is allowed");
        assert_eq!(
            (longest.min(), longest.max(), longest.len()),
            (ip("10.5.0.4"), ip("10.5.255.252"), 16383)
        );
        // An explicit length lifts the /28 limit of the default.
        let tiny = SubnetRange::new(net("10.5.0.0/28"), Some(30), None, None).expect("/28");
        assert_eq!(tiny.len(), 3);
    }

    #[test]
    fn bounds_must_be_inside_the_network_and_aligned() {
        let n = net("10.5.0.0/16");
        let cases = [
            (Some("10.6.0.0"), None, "SubnetMin", "10.6.0.0"),
            (Some("10.5.0.128"), None, "SubnetMin", "10.5.0.128"),
            (None, Some("10.4.255.0"), "SubnetMax", "10.4.255.0"),
            (None, Some("10.5.9.1"), "SubnetMax", "10.5.9.1"),
            (Some("10.5.9.0"), Some("10.5.8.0"), "SubnetMin", "10.5.9.0"),
        ];
        for (min, max, expected_field, value) in cases {
            let result = SubnetRange::new(n, Some(24), min.map(ip), max.map(ip));
            let (field, message) = config_error(result);
            assert_eq!(field, expected_field, "{message}");
            assert!(message.starts_with(&format!("{field}: ")), "{message}");
            assert!(message.contains(value), "{message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn explicit_bounds_replace_the_defaults() {
        let r = SubnetRange::new(
            net("10.5.0.0/16"),
            Some(26),
            Some(ip("10.5.8.0")),
            Some(ip("10.5.9.192")),
        )
        .expect("valid");
        assert_eq!(
            (r.min(), r.max(), r.len()),
            (ip("10.5.8.0"), ip("10.5.9.192"), 8)
        );
        // The network base itself may be chosen explicitly.
        let from_base =
            SubnetRange::new(net("10.5.0.0/16"), None, Some(ip("10.5.0.0")), None).expect("valid");
        assert_eq!((from_base.min(), from_base.len()), (ip("10.5.0.0"), 256));
        let single = SubnetRange::new(
            net("10.5.0.0/16"),
            None,
            Some(ip("10.5.7.0")),
            Some(ip("10.5.7.0")),
        )
        .expect("min == max");
        assert_eq!(single.iter().collect::<Vec<_>>(), vec![net("10.5.7.0/24")]);
    }

    #[test]
    fn contains_and_in_network() {
        let r = SubnetRange::new(
            net("10.5.0.0/16"),
            Some(26),
            Some(ip("10.5.8.0")),
            Some(ip("10.5.9.192")),
        )
        .expect("valid");
        assert!(r.contains(&net("10.5.8.0/26")));
        assert!(r.contains(&net("10.5.9.192/26")));
        assert!(!r.contains(&net("10.5.8.0/24")), "wrong length");
        assert!(!r.contains(&net("10.5.8.32/26")), "not aligned");
        assert!(!r.contains(&net("10.5.7.192/26")), "below min");
        assert!(!r.contains(&net("10.5.10.0/26")), "above max");
        assert!(!r.contains(&net("10.6.8.0/26")), "other network");

        assert!(r.in_network(&net("10.5.0.0/16")));
        assert!(
            r.in_network(&net("10.5.200.0/24")),
            "outside min..max is fine"
        );
        assert!(r.in_network(&net("10.5.255.255/32")));
        assert!(!r.in_network(&net("10.6.0.0/24")));
        assert!(!r.in_network(&net("10.4.255.0/24")));
        assert!(!r.in_network(&net("10.0.0.0/8")), "wider than the network");
    }

    #[test]
    fn nth_and_iter_walk_min_to_max() {
        let r = defaults("10.5.0.0/23").expect("valid");
        assert_eq!(r.nth(0), Some(net("10.5.0.128/25")));
        assert_eq!(r.nth(2), Some(net("10.5.1.128/25")));
        assert_eq!(r.nth(3), None);
        assert_eq!(r.nth(u64::MAX), None);
        assert_eq!(
            r.iter().collect::<Vec<_>>(),
            vec![
                net("10.5.0.128/25"),
                net("10.5.1.0/25"),
                net("10.5.1.128/25")
            ]
        );
    }

    #[test]
    fn the_widest_network_works() {
        let r = defaults("0.0.0.0/0").expect("valid");
        assert_eq!((r.min(), r.max()), (ip("0.0.1.0"), ip("255.255.255.0")));
        assert_eq!(r.len(), (1 << 24) - 1);
        assert_eq!(r.nth(r.len() - 1), Some(net("255.255.255.0/24")));
    }

    #[test]
    fn choose_free_on_a_mostly_free_huge_range_probes_once() {
        let r = SubnetRange::new(net("10.0.0.0/8"), Some(30), None, None).expect("valid");
        assert_eq!(r.len(), (1 << 22) - 1);
        let calls = Cell::new(0u32);
        let mut rng = StdRng::seed_from_u64(1);
        let chosen = r
            .choose_free(
                |_| {
                    calls.set(calls.get() + 1);
                    false
                },
                &mut rng,
            )
            .expect("all free");
        assert!(r.contains(&chosen));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn choose_free_finds_the_last_hole_and_reports_full() {
        let r = SubnetRange::new(net("10.0.0.0/8"), Some(30), None, None).expect("valid");
        let hole = net("10.77.3.8/30");
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(r.choose_free(|s| *s != hole, &mut rng), Some(hole));
        assert_eq!(r.choose_free(|_| true, &mut rng), None);
    }

    /// Counts how often each free subnet is chosen and checks every count is
    /// within 15% of the mean (far beyond chance at these sample sizes).
    fn assert_uniform(r: &SubnetRange, free: &BTreeSet<Ipv4Network>, draws: u32, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts: HashMap<Ipv4Network, u32> = HashMap::new();
        for _ in 0..draws {
            let chosen = r
                .choose_free(|s| !free.contains(s), &mut rng)
                .expect("some are free");
            assert!(free.contains(&chosen), "{chosen} is taken");
            *counts.entry(chosen).or_default() += 1;
        }
        assert_eq!(counts.len(), free.len(), "every free subnet is chosen");
        let mean = f64::from(draws) / free.len() as f64;
        for (subnet, count) in counts {
            let deviation = (f64::from(count) - mean).abs() / mean;
            assert!(
                deviation < 0.15,
                "{subnet} chosen {count} times, mean {mean}"
            );
        }
    }

    #[test]
    fn choose_free_is_uniform_while_probing() {
        let r = defaults("10.5.0.0/16").expect("valid");
        // Every fourth subnet free: the probes nearly always succeed.
        let free: BTreeSet<_> = r.iter().step_by(4).collect();
        assert_uniform(&r, &free, 64 * 400, 11);
    }

    #[test]
    fn choose_free_is_uniform_while_scanning() {
        let r = SubnetRange::new(net("10.5.0.0/16"), Some(26), None, None).expect("valid");
        // Five free among 1023, clustered after one long taken run, so a scan
        // from a random offset would favour the first of them.
        let free: BTreeSet<_> = [1000, 1001, 1002, 1003, 10]
            .into_iter()
            .map(|i| r.nth(i).expect("in range"))
            .collect();
        assert_uniform(&r, &free, 5 * 600, 12);
    }

    #[test]
    fn overlap_gateway_and_flannel_subnet_format() {
        assert!(overlaps(&net("10.5.0.0/16"), &net("10.5.34.0/24")));
        assert!(overlaps(&net("10.5.34.0/24"), &net("10.5.0.0/16")));
        assert!(overlaps(&net("10.5.34.0/24"), &net("10.5.34.0/24")));
        assert!(overlaps(&net("0.0.0.0/0"), &net("192.168.1.7/32")));
        assert!(!overlaps(&net("10.5.34.0/24"), &net("10.5.35.0/24")));
        assert!(!overlaps(&net("10.5.34.0/25"), &net("10.5.34.128/25")));

        assert_eq!(gateway(&net("10.5.34.0/24")), ip("10.5.34.1"));
        assert_eq!(gateway(&net("10.5.34.77/24")), ip("10.5.34.1"));
        assert_eq!(gateway(&net("10.5.0.128/25")), ip("10.5.0.129"));
        assert_eq!(gateway_cidr(&net("10.5.34.0/24")), "10.5.34.1/24");
        assert_eq!(gateway_cidr(&net("10.5.0.128/25")), "10.5.0.129/25");
    }

    /// A valid range of at most 16 subnets inside 10.9.0.0/16.
    fn small_range() -> impl Strategy<Value = SubnetRange> {
        (16u8..=28, 2u8..=4, any::<u32>(), 0u64..16).prop_filter_map(
            "subnet length beyond /30",
            |(prefix, extra, start, span)| {
                let subnet_len = prefix + extra;
                if subnet_len > 30 {
                    return None;
                }
                let network = Ipv4Network::new(Ipv4Addr::new(10, 9, 0, 0), prefix).ok()?;
                let all =
                    SubnetRange::new(network, Some(subnet_len), Some(network.ip()), None).ok()?;
                let first = u64::from(start) % all.len();
                let last = (first + span).min(all.len() - 1);
                SubnetRange::new(
                    network,
                    Some(subnet_len),
                    Some(all.nth(first)?.ip()),
                    Some(all.nth(last)?.ip()),
                )
                .ok()
            },
        )
    }

    proptest! {
        #[test]
        fn choose_free_returns_a_free_subnet_or_none_when_full(
            r in small_range(),
            taken_bits in any::<u16>(),
            all_taken in any::<bool>(),
            seed in any::<u64>(),
        ) {
            // Forcing a full range half of the time exercises the None case.
            let bits = if all_taken { u16::MAX } else { taken_bits };
            let taken: BTreeSet<Ipv4Network> = r
                .iter()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, s)| s)
                .collect();
            let mut rng = StdRng::seed_from_u64(seed);
            let chosen = r.choose_free(|s| taken.contains(s), &mut rng);
            let any_free = r.iter().any(|s| !taken.contains(&s));
            prop_assert_eq!(chosen.is_some(), any_free);
            if let Some(s) = chosen {
                prop_assert!(r.contains(&s));
                prop_assert!(r.in_network(&s));
                prop_assert!(!taken.contains(&s));
                prop_assert_eq!(s.ip(), s.network(), "aligned");
                prop_assert_eq!(s.prefix(), r.subnet_len());
            }
        }

        #[test]
        fn iter_yields_len_distinct_contained_subnets(r in small_range()) {
            let all: Vec<_> = r.iter().collect();
            prop_assert_eq!(all.len() as u64, r.len());
            prop_assert_eq!(all.first().map(|s| s.ip()), Some(r.min()));
            prop_assert_eq!(all.last().map(|s| s.ip()), Some(r.max()));
            for pair in all.windows(2) {
                prop_assert!(!overlaps(&pair[0], &pair[1]));
                prop_assert!(pair[0].ip() < pair[1].ip());
            }
            for (i, s) in all.iter().enumerate() {
                prop_assert!(r.contains(s));
                prop_assert!(r.in_network(s));
                prop_assert_eq!(r.nth(i as u64), Some(*s));
            }
        }

        #[test]
        fn iter_of_default_ranges_stays_contained(prefix in 0u8..=28) {
            let network = Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), prefix)
                .expect("prefix <= 32");
            let network = Ipv4Network::new(network.network(), prefix).expect("prefix <= 32");
            let r = SubnetRange::new(network, None, None, None).expect("defaults are valid");
            let size = 1u32 << (32 - r.subnet_len());
            // The first subnet is skipped, the last one is used.
            prop_assert_eq!(u32::from(r.min()), u32::from(network.network()) + size);
            prop_assert_eq!(u32::from(r.max()) + (size - 1), u32::from(network.broadcast()));
            for s in r.iter().take(50) {
                prop_assert!(r.contains(&s));
            }
            let last = r.nth(r.len() - 1).expect("last subnet");
            prop_assert!(r.contains(&last));
            prop_assert_eq!(last.ip(), r.max());
        }

        #[test]
        fn contains_agrees_with_iter(r in small_range(), addr in any::<u32>(), prefix in 0u8..=32) {
            let candidate = Ipv4Network::new(Ipv4Addr::from(addr), prefix).expect("prefix <= 32");
            let listed = r.iter().any(|s| s == candidate);
            prop_assert_eq!(r.contains(&candidate), listed);
            // Also for candidates near the range, which random ones rarely are.
            let near = Ipv4Network::new(
                Ipv4Addr::from(u32::from(r.min()).wrapping_add(addr % 4096)),
                r.subnet_len(),
            ).expect("prefix <= 32");
            prop_assert_eq!(r.contains(&near), r.iter().any(|s| s == near));
        }
    }
}
