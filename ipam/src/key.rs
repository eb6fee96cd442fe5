//! flannel's names for subnets in etcd keys: `10.5.34.0-24`. Keys come from
//! etcd, where anybody with write access may have put anything, so parsing
//! accepts only the one canonical spelling of each subnet.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::IpamError;

/// The longest valid key, `255.255.255.255-32`; anything longer is refused
/// before it is looked at.
const MAX_KEY_LEN: usize = 18;

/// How much of a refused key an error repeats.
const ECHO_CHARS: usize = 40;

/// The key name of a subnet, from its base address.
pub fn subnet_to_key(subnet: &Ipv4Network) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix())
}

/// Parses a key name strictly: a dotted quad without leading zeros that is
/// the base address for the prefix, a dash, and a prefix length from 0 to 32
/// without sign or leading zeros; nothing before, between or after. So
/// `parse_subnet_key(k)` succeeds only when `subnet_to_key` would give `k`
/// back.
pub fn parse_subnet_key(key: &str) -> Result<Ipv4Network, IpamError> {
    let bad = |reason: &'static str| IpamError::BadSubnetKey {
        key: key.chars().take(ECHO_CHARS).collect(),
        reason,
    };
    if key.len() > MAX_KEY_LEN {
        return Err(bad("too long"));
    }
    let (addr, prefix) = key
        .split_once('-')
        .ok_or_else(|| bad("no '-' before the prefix length"))?;
    let prefix = parse_prefix(prefix).ok_or_else(|| bad("bad prefix length"))?;
    // std's parser takes exactly four decimal octets and refuses signs,
    // spaces and leading zeros.
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("bad IPv4 address"))?;
    let subnet = Ipv4Network::new(addr, prefix).map_err(|_| bad("bad prefix length"))?;
    if subnet.network() != addr {
        return Err(bad("address is not the subnet's base"));
    }
    Ok(subnet)
}

/// The subnets a lease key names: flannel's dual-stack nodes write
/// `10.5.34.0-24&fc00::-64`, an IPv4 subnet and an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseKey {
    pub ipv4: Ipv4Network,
    pub ipv6: Option<Ipv6Network>,
}

/// Parses a lease key, IPv4-only or dual-stack, each part as strictly as
/// [`parse_subnet_key`]: the IPv6 part must be the base address in its
/// canonical (RFC 5952) spelling and a prefix length from 0 to 128.
pub fn parse_lease_key(key: &str) -> Result<LeaseKey, IpamError> {
    let Some((v4, v6)) = key.split_once('&') else {
        return Ok(LeaseKey {
            ipv4: parse_subnet_key(key)?,
            ipv6: None,
        });
    };
    let bad = |reason: &'static str| IpamError::BadSubnetKey {
        key: key.chars().take(ECHO_CHARS).collect(),
        reason,
    };
    let ipv4 = parse_subnet_key(v4)?;
    // The longest canonical IPv6 address is 39 characters, plus "-128".
    if v6.len() > 43 {
        return Err(bad("too long"));
    }
    let (addr, prefix) = v6
        .rsplit_once('-')
        .ok_or_else(|| bad("no '-' before the IPv6 prefix length"))?;
    let prefix = parse_prefix_upto(prefix, 128).ok_or_else(|| bad("bad IPv6 prefix length"))?;
    let addr: Ipv6Addr = addr.parse().map_err(|_| bad("bad IPv6 address"))?;
    if addr.to_string() != v6[..v6.len() - prefix.to_string().len() - 1] {
        return Err(bad("IPv6 address not in canonical form"));
    }
    let ipv6 = Ipv6Network::new(addr, prefix).map_err(|_| bad("bad IPv6 prefix length"))?;
    if ipv6.network() != addr {
        return Err(bad("IPv6 address is not the subnet's base"));
    }
    Ok(LeaseKey {
        ipv4,
        ipv6: Some(ipv6),
    })
}

/// `0` to `32` in canonical decimal.
fn parse_prefix(text: &str) -> Option<u8> {
    parse_prefix_upto(text, 32)
}

/// `0` to `max` in canonical decimal.
fn parse_prefix_upto(text: &str, max: u8) -> Option<u8> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let canonical = text == "0" || !text.starts_with('0');
    if !digits_only || !canonical || text.len() > 3 {
        return None;
    }
    text.parse().ok().filter(|&prefix| prefix <= max)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn net(text: &str) -> Ipv4Network {
        text.parse().expect("test CIDR")
    }

    #[test]
    fn reads_and_writes_flannel_keys() {
        assert_eq!(
            parse_subnet_key("10.5.34.0-24").expect("valid"),
            net("10.5.34.0/24")
        );
        assert_eq!(subnet_to_key(&net("10.5.34.0/24")), "10.5.34.0-24");
        assert_eq!(subnet_to_key(&net("10.5.0.128/25")), "10.5.0.128-25");
        assert_eq!(
            parse_subnet_key("0.0.0.0-0").expect("valid"),
            net("0.0.0.0/0")
        );
        assert_eq!(
            parse_subnet_key("255.255.255.255-32").expect("valid"),
            net("255.255.255.255/32")
        );
        assert_eq!(
            parse_subnet_key("10.5.34.4-30").expect("valid"),
            net("10.5.34.4/30")
        );
    }

    #[test]
    fn a_key_names_the_base_even_for_a_host_address() {
        assert_eq!(subnet_to_key(&net("10.5.34.7/24")), "10.5.34.0-24");
    }

    #[test]
    fn refuses_anything_but_the_canonical_spelling() {
        let long_digits = "1".repeat(10_000);
        let long_unicode = "é".repeat(10_000);
        for key in [
            "",
            "-",
            "-24",
            "10.5.34.0",
            "10.5.34.0-",
            "10.5.34.0-33",
            "10.5.34.0-255",
            "10.5.34.0-256",
            "10.5.34.0--24",
            "10.5.34.0-+4",
            "+10.5.34.0-24",
            "10.5.34.0--4",
            "10.0.0.0-08",
            "0.0.0.0-00",
            "0.0.0.0-01",
            "0.0.0.0-+0",
            "10.5.34.0-024",
            "10.5.34.1-24",
            "10.5.34.128-24",
            "10.5.34.0-24 ",
            " 10.5.34.0-24",
            "10.5.34.0 -24",
            "10.5.34.0- 24",
            "10.5.34.0-24\n",
            "10.5.34.0-24\0",
            "10.5.34.0-24/../x",
            "../10.5.34.0-24",
            "10.5.34.0-24/",
            "/10.5.34.0-24",
            "10.5.034.0-24",
            "10.5.34.0/24",
            "10.5.34.0-2-4",
            "10.5.34-24",
            "10.5.34.0.0-24",
            "256.5.34.0-24",
            "0x0a.5.34.0-24",
            "10.5.34.0-0x18",
            "١٠.5.34.0-24",
            "10.5.34.0-２４",
            "10.5.34.0-24\u{200b}",
            "::1-128",
            "::ffff:10.5.34.0-24",
            long_digits.as_str(),
            long_unicode.as_str(),
        ] {
            let err = parse_subnet_key(key).expect_err(key);
            assert!(
                matches!(err, IpamError::BadSubnetKey { .. }),
                "{key:?}: {err}"
            );
        }
    }

    #[test]
    fn reads_dual_stack_keys() {
        let key = parse_lease_key("10.5.34.0-24&fc00::-64").expect("dual-stack");
        assert_eq!(key.ipv4, net("10.5.34.0/24"));
        assert_eq!(key.ipv6, Some("fc00::/64".parse().expect("v6")));
        let key = parse_lease_key("10.5.34.0-24").expect("v4 only");
        assert_eq!((key.ipv4, key.ipv6), (net("10.5.34.0/24"), None));
        for bad in [
            "10.5.34.0-24&",
            "10.5.34.0-24&fc00::",
            "10.5.34.0-24&fc00::-129",
            "10.5.34.0-24&fc00::1-64",
            "10.5.34.0-24&FC00::-64",
            "10.5.34.0-24&fc00:0::-64",
            "10.5.34.0-24&fc00::-064",
            "10.5.34.1-24&fc00::-64",
            "10.5.34.0-24&fc00::-64&fc01::-64",
            "&fc00::-64",
        ] {
            assert!(parse_lease_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_echo_a_bounded_escaped_key() {
        let hostile = format!("{}\n{}", "é".repeat(5000), "x");
        let message = parse_subnet_key(&hostile)
            .expect_err("too long")
            .to_string();
        assert!(!message.contains('\n'), "{message}");
        assert!(message.len() < 200, "{message}");
        let message = parse_subnet_key("10.5.34.1-24")
            .expect_err("not the base")
            .to_string();
        assert!(message.contains("\"10.5.34.1-24\""), "{message}");
        assert!(message.contains("base"), "{message}");
    }

    proptest! {
        #[test]
        fn round_trips(addr in any::<u32>(), prefix in 0u8..=32) {
            let subnet = Ipv4Network::new(Ipv4Addr::from(addr), prefix).expect("prefix <= 32");
            let subnet = Ipv4Network::new(subnet.network(), prefix).expect("prefix <= 32");
            let key = subnet_to_key(&subnet);
            prop_assert_eq!(parse_subnet_key(&key).expect("own keys parse"), subnet);
        }

        #[test]
        fn only_canonical_keys_parse(key in "\\PC{0,24}") {
            if let Ok(subnet) = parse_subnet_key(&key) {
                prop_assert_eq!(subnet_to_key(&subnet), key);
            }
        }

        #[test]
        fn near_misses_only_parse_when_canonical(key in "[0-9.+ /-]{1,20}") {
            match parse_subnet_key(&key) {
                Ok(subnet) => prop_assert_eq!(subnet_to_key(&subnet), key),
                Err(err) => prop_assert!(
                    matches!(err, IpamError::BadSubnetKey { .. }),
                    "unexpected error {}", err
                ),
            }
        }
    }
}
