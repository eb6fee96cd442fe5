//! flannel's names for subnets in etcd keys: `10.5.34.0-24`.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::IpamError;

/// The key name of a subnet.
pub fn subnet_to_key(subnet: &Ipv4Network) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix())
}

/// Parses a key name strictly: a dotted quad that is the network's base
/// address, a dash, a prefix length; nothing else. Keys come from etcd, where
/// anybody may have written anything.
pub fn parse_subnet_key(key: &str) -> Result<Ipv4Network, IpamError> {
    let bad = || IpamError::BadSubnetKey {
        key: key.chars().take(64).collect(),
    };
    // The longest valid key is "255.255.255.255-32".
    if key.len() > 18 {
        return Err(bad());
    }
    let (addr, len) = key.split_once('-').ok_or_else(bad)?;
    if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let prefix: u8 = len.parse().map_err(|_| bad())?;
    // std's parser already refuses leading zeros, signs and spaces.
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let subnet = Ipv4Network::new(addr, prefix).map_err(|_| bad())?;
    if subnet.network() != addr {
        return Err(bad());
    }
    Ok(subnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_flannel_keys() {
        let subnet = parse_subnet_key("10.5.34.0-24").expect("key");
        assert_eq!(subnet, "10.5.34.0/24".parse::<Ipv4Network>().expect("cidr"));
        assert_eq!(subnet_to_key(&subnet), "10.5.34.0-24");
        assert!(parse_subnet_key("0.0.0.0-0").is_ok());
    }

    #[test]
    fn refuses_anything_else() {
        let long = "1".repeat(10_000);
        for key in [
            "",
            "-",
            "10.5.34.0",
            "10.5.34.0-",
            "10.5.34.0-33",
            "10.5.34.0-+4",
            "10.5.34.0-024",
            "10.5.34.1-24",
            "10.5.34.0-24 ",
            " 10.5.34.0-24",
            "10.5.34.0-24/../config",
            "10.5.034.0-24",
            "10.5.34.0/24",
            "10.5.34.0-2-4",
            "١٠.5.34.0-24",
            "::1-128",
            long.as_str(),
        ] {
            assert!(parse_subnet_key(key).is_err(), "{key:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(addr in any::<u32>(), prefix in 0u8..=32) {
            let subnet = Ipv4Network::new(Ipv4Addr::from(addr), prefix).expect("cidr");
            let subnet = Ipv4Network::new(subnet.network(), prefix).expect("cidr");
            prop_assert_eq!(parse_subnet_key(&subnet_to_key(&subnet)).expect("parse"), subnet);
        }

        #[test]
        fn never_panics(key in ".{0,40}") {
            let _ = parse_subnet_key(&key);
        }
    }
}
