//! Subnet leases as flannel writes them: the key `<prefix>/subnets/10.5.34.0-24`
//! holding `{"PublicIP":…,"PublicIPv6":…,"BackendType":…,"BackendData":…}`.
//!
//! Everything read from etcd is untrusted: another node, an older flannel or a
//! hand-written `etcdctl put` may have put anything there, so parsing checks
//! every field and never panics.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tartan_ipam::SubnetRange;

use crate::control::gojson::field;

/// Values larger than this are not leases anybody wrote by honest means.
pub const MAX_LEASE_VALUE_BYTES: usize = 64 * 1024;

/// The JSON value of a lease key, field names as flannel spells them. It is
/// written as flannel writes it (`BackendType` and `BackendData` left out
/// when empty, as Go's `omitempty` does) and read as flannel reads it (keys
/// in any case).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6")]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", skip_serializing_if = "String::is_empty")]
    pub backend_type: String,
    #[serde(rename = "BackendData", skip_serializing_if = "Value::is_null")]
    pub backend_data: Value,
}

impl<'de> Deserialize<'de> for LeaseAttrs {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let obj = Map::<String, Value>::deserialize(deserializer)?;
        let text = |name: &str| -> Result<Option<&str>, D::Error> {
            match field(&obj, name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(D::Error::custom(format!(
                    "{name} must be a string, not {other}"
                ))),
            }
        };
        let public_ip = text("PublicIP")?
            .ok_or_else(|| D::Error::custom("no PublicIP"))?
            .parse()
            .map_err(|_| D::Error::custom("PublicIP is not an IPv4 address"))?;
        let public_ipv6 = text("PublicIPv6")?
            .map(|s| s.parse())
            .transpose()
            .map_err(|_| D::Error::custom("PublicIPv6 is not an IPv6 address"))?;
        Ok(LeaseAttrs {
            public_ip,
            public_ipv6,
            backend_type: text("BackendType")?.unwrap_or_default().to_string(),
            backend_data: field(&obj, "BackendData").cloned().unwrap_or(Value::Null),
        })
    }
}

/// A lease as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to (0: none).
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// Why a key under `subnets/` was not taken as a lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRejection {
    #[error("key is not a subnet key like 10.5.34.0-24 or 10.5.34.0-24&fc00::-64: {0}")]
    BadKey(String),
    #[error("value is {0} bytes, more than the {MAX_LEASE_VALUE_BYTES} a lease may hold")]
    TooLarge(usize),
    #[error("value is not a lease: {0}")]
    BadValue(String),
    #[error("subnet {subnet} lies outside the network {network}")]
    OutsideNetwork {
        subnet: Ipv4Network,
        network: Ipv4Network,
    },
    #[error("subnet {subnet} overlaps this node's subnet {own}")]
    OverlapsOwn {
        subnet: Ipv4Network,
        own: Ipv4Network,
    },
}

/// The etcd key of the lease for `subnet` under `prefix`.
pub fn lease_key(prefix: &str, subnet: &Ipv4Network) -> String {
    format!(
        "{}{}",
        subnets_prefix(prefix),
        tartan_ipam::subnet_to_key(subnet)
    )
}

/// The key prefix all leases live under, with its trailing slash.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// The config key.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

/// Parses the IPv4 subnet out of a full key under `subnets_prefix`. A
/// dual-stack key (`10.5.34.0-24&fc00::-64`, flannel's with IPv6 on) names
/// the IPv4 subnet it holds like any other.
pub fn parse_key(subnets_prefix: &str, key: &[u8]) -> Result<Ipv4Network, LeaseRejection> {
    let text = String::from_utf8_lossy(key);
    let name = text
        .strip_prefix(subnets_prefix)
        .ok_or_else(|| LeaseRejection::BadKey(text.to_string()))?;
    tartan_ipam::parse_lease_key(name)
        .map(|key| key.ipv4)
        .map_err(|_| LeaseRejection::BadKey(name.chars().take(80).collect()))
}

/// Parses and checks one key/value pair of the subnets key space.
pub fn parse_lease(
    subnets_prefix: &str,
    key: &[u8],
    value: &[u8],
    etcd_lease: i64,
    mod_revision: i64,
) -> Result<Lease, LeaseRejection> {
    let subnet = parse_key(subnets_prefix, key)?;
    if value.len() > MAX_LEASE_VALUE_BYTES {
        return Err(LeaseRejection::TooLarge(value.len()));
    }
    let attrs: LeaseAttrs =
        serde_json::from_slice(value).map_err(|e| LeaseRejection::BadValue(e.to_string()))?;
    if !(attrs.backend_data.is_null() || attrs.backend_data.is_object()) {
        return Err(LeaseRejection::BadValue(
            "BackendData must be an object".into(),
        ));
    }
    if attrs.public_ip.is_unspecified()
        || attrs.public_ip.is_broadcast()
        || attrs.public_ip.is_multicast()
    {
        return Err(LeaseRejection::BadValue(format!(
            "PublicIP {} is not a host address",
            attrs.public_ip
        )));
    }
    Ok(Lease {
        subnet,
        attrs,
        etcd_lease,
        mod_revision,
    })
}

/// Checks a peer's lease against the network and this node's own subnet.
pub fn check_peer(
    lease: &Lease,
    range: &SubnetRange,
    own: Option<&Ipv4Network>,
) -> Result<(), LeaseRejection> {
    if !range.in_network(&lease.subnet) {
        return Err(LeaseRejection::OutsideNetwork {
            subnet: lease.subnet,
            network: range.network(),
        });
    }
    if let Some(own) = own {
        if tartan_ipam::overlaps(&lease.subnet, own) {
            return Err(LeaseRejection::OverlapsOwn {
                subnet: lease.subnet,
                own: *own,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/coreos.com/network/subnets/";

    fn range() -> SubnetRange {
        SubnetRange::new("10.5.0.0/16".parse().expect("cidr"), None, None, None).expect("range")
    }

    #[test]
    fn reads_a_flannel_lease() {
        let value = br#"{"PublicIP":"192.168.1.10","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6e:a4:3c:0e:21:9a"}}"#;
        let lease = parse_lease(
            PREFIX,
            b"/coreos.com/network/subnets/10.5.34.0-24",
            value,
            7,
            9,
        )
        .expect("lease");
        assert_eq!(
            lease.subnet,
            "10.5.34.0/24".parse::<Ipv4Network>().expect("cidr")
        );
        assert_eq!(lease.attrs.public_ip, Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(lease.attrs.backend_type, "vxlan");
        assert_eq!(lease.attrs.backend_data["VtepMAC"], "6e:a4:3c:0e:21:9a");
        assert_eq!((lease.etcd_lease, lease.mod_revision), (7, 9));
        assert_eq!(check_peer(&lease, &range(), None), Ok(()));
    }

    #[test]
    fn reads_keys_in_any_case_and_dual_stack_keys() {
        let value = br#"{"publicip":"192.168.1.10","backendtype":"vxlan","backenddata":{"VNI":1}}"#;
        let lease = parse_lease(
            PREFIX,
            b"/coreos.com/network/subnets/10.5.34.0-24&fc00::-64",
            value,
            0,
            1,
        )
        .expect("lease");
        assert_eq!(
            lease.subnet,
            "10.5.34.0/24".parse::<Ipv4Network>().expect("cidr")
        );
        assert_eq!(lease.attrs.public_ip, Ipv4Addr::new(192, 168, 1, 10));
        assert_eq!(lease.attrs.backend_type, "vxlan");
        assert_eq!(lease.attrs.backend_data["VNI"], 1);
    }

    #[test]
    fn a_udp_lease_is_written_as_flannel_writes_it() {
        // flannel's udp backend sets neither BackendType nor BackendData.
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::new(10, 0, 0, 1),
            public_ipv6: None,
            backend_type: String::new(),
            backend_data: Value::Null,
        };
        let text = serde_json::to_string(&attrs).expect("json");
        assert_eq!(text, r#"{"PublicIP":"10.0.0.1","PublicIPv6":null}"#);
        let back: LeaseAttrs = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, attrs);
    }

    #[test]
    fn serialises_with_flannel_field_names() {
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::new(10, 0, 0, 1),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: serde_json::json!({"VNI": 1}),
        };
        let text = serde_json::to_string(&attrs).expect("json");
        assert_eq!(
            text,
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1}}"#
        );
    }

    #[test]
    fn hostile_values_are_rejected() {
        let key = b"/coreos.com/network/subnets/10.5.34.0-24";
        let huge = vec![b' '; MAX_LEASE_VALUE_BYTES + 1];
        let cases: [&[u8]; 9] = [
            b"",
            b"null",
            b"not json",
            br#"{"PublicIP":"300.1.1.1"}"#,
            br#"{"PublicIP":"0.0.0.0","BackendType":"vxlan"}"#,
            br#"{"PublicIP":12}"#,
            br#"{"PublicIP":"10.0.0.1","BackendData":[1,2]}"#,
            b"\xff\xfe\x00",
            &huge,
        ];
        for value in cases {
            assert!(
                parse_lease(PREFIX, key, value, 0, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
    }

    #[test]
    fn hostile_keys_are_rejected() {
        let value = br#"{"PublicIP":"10.0.0.1","BackendType":"vxlan"}"#;
        for key in [
            "/coreos.com/network/subnets/",
            "/coreos.com/network/subnets/10.5.34.0",
            "/coreos.com/network/subnets/10.5.34.0-24/../../config",
            "/coreos.com/network/subnets/10.5.34.1-24",
            "/coreos.com/network/subnets/10.5.34.0-33",
            "/coreos.com/network/other/10.5.34.0-24",
        ] {
            assert!(
                matches!(
                    parse_lease(PREFIX, key.as_bytes(), value, 0, 1),
                    Err(LeaseRejection::BadKey(_))
                ),
                "{key}"
            );
        }
    }

    #[test]
    fn peers_outside_the_network_or_over_our_subnet_are_refused() {
        let value = br#"{"PublicIP":"10.0.0.1","BackendType":"vxlan"}"#;
        let outside = parse_lease(
            PREFIX,
            b"/coreos.com/network/subnets/10.6.1.0-24",
            value,
            0,
            1,
        )
        .expect("lease");
        assert!(matches!(
            check_peer(&outside, &range(), None),
            Err(LeaseRejection::OutsideNetwork { .. })
        ));
        let wide = parse_lease(
            PREFIX,
            b"/coreos.com/network/subnets/10.5.0.0-20",
            value,
            0,
            1,
        )
        .expect("lease");
        let own: Ipv4Network = "10.5.3.0/24".parse().expect("cidr");
        assert!(matches!(
            check_peer(&wide, &range(), Some(&own)),
            Err(LeaseRejection::OverlapsOwn { .. })
        ));
    }

    #[test]
    fn keys_round_trip() {
        let subnet: Ipv4Network = "10.5.34.0/24".parse().expect("cidr");
        let key = lease_key("/coreos.com/network/", &subnet);
        assert_eq!(key, "/coreos.com/network/subnets/10.5.34.0-24");
        assert_eq!(
            parse_key(&subnets_prefix("/coreos.com/network"), key.as_bytes()),
            Ok(subnet)
        );
        assert_eq!(
            config_key("/coreos.com/network"),
            "/coreos.com/network/config"
        );
    }
}
