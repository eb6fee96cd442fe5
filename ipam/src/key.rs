//! flannel's names for subnets in etcd keys: `10.5.34.0-24`. Keys come from
//! etcd, where anybody with write access may have put anything, so parsing
//! accepts only the one canonical spelling of each subnet.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

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

/// `0` to `32` in canonical decimal.
fn parse_prefix(text: &str) -> Option<u8> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let canonical = text == "0" || !text.starts_with('0');
    if !digits_only || !canonical || text.len() > 2 {
        return None;
    }
    text.parse().ok().filter(|&prefix| prefix <= 32)
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
