//! The network config stored at `<prefix>/config`, in flannel's JSON format.
//!
//! Parsing is strict about types and ranges and every error names the field,
//! because an operator reads these messages in `journalctl` and must be able
//! to fix the key without reading our source.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::{Map, Value};
use tartan_ipam::SubnetRange;

/// VXLAN's encapsulation overhead on IPv4: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
const VXLAN_OVERHEAD: u32 = 50;
/// The UDP backend's overhead: outer IP 20 + UDP 8.
const UDP_OVERHEAD: u32 = 28;

/// flannel's defaults for the ports of the encapsulating backends.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
pub const DEFAULT_UDP_PORT: u16 = 8285;
pub const DEFAULT_VNI: u32 = 1;

/// A config error: the flannel field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// The backend named by `Backend.Type`, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Vxlan {
        vni: u32,
        port: u16,
        direct_routing: bool,
    },
    HostGw,
    Udp {
        port: u16,
    },
    /// Lease a subnet and do nothing else (flannel's `alloc`).
    Alloc,
}

impl Backend {
    /// The type string published in leases, as flannel spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan { .. } => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Udp { .. } => "udp",
            Backend::Alloc => "alloc",
        }
    }

    /// The MTU containers get, given the MTU of the underlay interface.
    pub fn mtu(&self, underlay_mtu: u32) -> u32 {
        match self {
            Backend::Vxlan { .. } => underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
            Backend::Udp { .. } => underlay_mtu.saturating_sub(UDP_OVERHEAD),
            Backend::HostGw | Backend::Alloc => underlay_mtu,
        }
    }
}

/// A validated network config with flannel's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub range: SubnetRange,
    pub backend: Backend,
    /// The `Backend` object as it was written, for display.
    pub backend_json: Value,
}

impl NetworkConfig {
    pub fn network(&self) -> Ipv4Network {
        self.range.network()
    }

    /// Parses and validates the JSON text of the config key.
    pub fn parse(text: &[u8]) -> Result<NetworkConfig, ConfigError> {
        let value: Value = serde_json::from_slice(text)
            .map_err(|e| ConfigError::new("config", format!("not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(ConfigError::new("config", "must be a JSON object"));
        };
        if obj.contains_key("EnableIPv6") && obj.get("EnableIPv6") == Some(&Value::Bool(true)) {
            return Err(ConfigError::new(
                "EnableIPv6",
                "IPv6 networks are not supported",
            ));
        }
        let network_text = match obj.get("Network") {
            Some(Value::String(s)) => s,
            Some(_) => {
                return Err(ConfigError::new(
                    "Network",
                    "must be a string like \"10.5.0.0/16\"",
                ))
            }
            None => return Err(ConfigError::new("Network", "missing")),
        };
        let network: Ipv4Network = network_text.parse().map_err(|_| {
            ConfigError::new("Network", format!("{network_text:?} is not an IPv4 CIDR"))
        })?;
        let subnet_len = optional_u8(&obj, "SubnetLen")?;
        let subnet_min = optional_ipv4(&obj, "SubnetMin")?;
        let subnet_max = optional_ipv4(&obj, "SubnetMax")?;
        let range = SubnetRange::new(network, subnet_len, subnet_min, subnet_max)
            .map_err(ipam_to_config_error)?;

        let backend_json = obj.get("Backend").cloned().unwrap_or(Value::Null);
        let backend = parse_backend(&backend_json)?;
        Ok(NetworkConfig {
            range,
            backend,
            backend_json,
        })
    }
}

impl fmt::Display for NetworkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Network {} SubnetLen {} SubnetMin {} SubnetMax {} Backend {}",
            self.range.network(),
            self.range.subnet_len(),
            self.range.min(),
            self.range.max(),
            self.backend.type_name()
        )
    }
}

fn ipam_to_config_error(err: tartan_ipam::IpamError) -> ConfigError {
    match err {
        tartan_ipam::IpamError::InvalidConfig { field, reason } => ConfigError::new(field, reason),
        other => ConfigError::new("config", other.to_string()),
    }
}

fn optional_u8(obj: &Map<String, Value>, field: &str) -> Result<Option<u8>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Ok(None),
            Some(v) if v <= 32 => Ok(Some(v as u8)),
            _ => Err(ConfigError::new(
                field,
                format!("{n} is not a prefix length (0-32)"),
            )),
        },
        Some(other) => Err(ConfigError::new(
            field,
            format!("must be a number, not {other}"),
        )),
    }
}

fn optional_ipv4(obj: &Map<String, Value>, field: &str) -> Result<Option<Ipv4Addr>, ConfigError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse::<Ipv4Addr>()
            .map(Some)
            .map_err(|_| ConfigError::new(field, format!("{s:?} is not an IPv4 address"))),
        Some(other) => Err(ConfigError::new(
            field,
            format!("must be a string, not {other}"),
        )),
    }
}

fn parse_backend(value: &Value) -> Result<Backend, ConfigError> {
    let empty = Map::new();
    let obj = match value {
        Value::Null => &empty,
        Value::Object(obj) => obj,
        other => {
            return Err(ConfigError::new(
                "Backend",
                format!("must be an object, not {other}"),
            ))
        }
    };
    // flannel's default is udp; Tartan's is vxlan, the fast path every kernel we target has.
    let kind = match obj.get("Type") {
        None | Some(Value::Null) => "vxlan".to_string(),
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(other) => {
            return Err(ConfigError::new(
                "Backend.Type",
                format!("must be a string, not {other}"),
            ))
        }
    };
    match kind.as_str() {
        "vxlan" => {
            let vni = match obj.get("VNI") {
                None | Some(Value::Null) => DEFAULT_VNI,
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(v) if (1..=0xFF_FFFF).contains(&v) => v as u32,
                    _ => {
                        return Err(ConfigError::new(
                            "Backend.VNI",
                            format!("{n} is not in 1-16777215"),
                        ))
                    }
                },
                Some(other) => {
                    return Err(ConfigError::new(
                        "Backend.VNI",
                        format!("must be a number, not {other}"),
                    ))
                }
            };
            let port = optional_port(obj, DEFAULT_VXLAN_PORT)?;
            let direct_routing = match obj.get("DirectRouting") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(ConfigError::new(
                        "Backend.DirectRouting",
                        format!("must be true or false, not {other}"),
                    ))
                }
            };
            Ok(Backend::Vxlan {
                vni,
                port,
                direct_routing,
            })
        }
        "host-gw" => Ok(Backend::HostGw),
        "udp" => Ok(Backend::Udp {
            port: optional_port(obj, DEFAULT_UDP_PORT)?,
        }),
        "alloc" => Ok(Backend::Alloc),
        other => Err(ConfigError::new(
            "Backend.Type",
            format!("unknown backend {other:?} (expected vxlan, host-gw, udp or alloc)"),
        )),
    }
}

fn optional_port(obj: &Map<String, Value>, default: u16) -> Result<u16, ConfigError> {
    match obj.get("Port") {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Ok(default),
            Some(v) if v <= u64::from(u16::MAX) => Ok(v as u16),
            _ => Err(ConfigError::new(
                "Backend.Port",
                format!("{n} is not a UDP port"),
            )),
        },
        Some(other) => Err(ConfigError::new(
            "Backend.Port",
            format!("must be a number, not {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetworkConfig, ConfigError> {
        NetworkConfig::parse(text.as_bytes())
    }

    #[test]
    fn flannel_defaults_are_filled_in() {
        let cfg = parse(r#"{"Network":"10.5.0.0/16"}"#).expect("valid config");
        assert_eq!(cfg.range.subnet_len(), 24);
        assert_eq!(cfg.range.min(), Ipv4Addr::new(10, 5, 1, 0));
        assert_eq!(cfg.range.max(), Ipv4Addr::new(10, 5, 255, 0));
        assert_eq!(
            cfg.backend,
            Backend::Vxlan {
                vni: 1,
                port: 8472,
                direct_routing: false
            }
        );
    }

    #[test]
    fn backend_options_are_read() {
        let cfg = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"DirectRouting":true}}"#)
            .expect("valid config");
        assert_eq!(
            cfg.backend,
            Backend::Vxlan {
                vni: 42,
                port: 4789,
                direct_routing: true
            }
        );
        let cfg =
            parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#).expect("valid config");
        assert_eq!(cfg.backend, Backend::Udp { port: 8285 });
        let cfg = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#)
            .expect("valid config");
        assert_eq!(cfg.backend, Backend::HostGw);
    }

    #[test]
    fn explicit_range_is_honoured() {
        let cfg = parse(r#"{"Network":"10.5.0.0/16","SubnetLen":26,"SubnetMin":"10.5.8.0","SubnetMax":"10.5.9.192"}"#)
            .expect("valid config");
        assert_eq!(cfg.range.subnet_len(), 26);
        assert_eq!(cfg.range.len(), 8);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("not json", "config"),
            ("[]", "config"),
            ("{}", "Network"),
            (r#"{"Network":5}"#, "Network"),
            (r#"{"Network":"10.5.0.0/33"}"#, "Network"),
            (r#"{"Network":"fd00::/64"}"#, "Network"),
            (r#"{"Network":"10.5.0.0/16","SubnetLen":"24"}"#, "SubnetLen"),
            (r#"{"Network":"10.5.0.0/16","SubnetLen":31}"#, "SubnetLen"),
            (r#"{"Network":"10.5.0.0/16","SubnetLen":17}"#, "SubnetLen"),
            (
                r#"{"Network":"10.5.0.0/16","SubnetMin":"10.6.0.0"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network":"10.5.0.0/16","SubnetMin":"10.5.0.7"}"#,
                "SubnetMin",
            ),
            (
                r#"{"Network":"10.5.0.0/16","SubnetMax":"banana"}"#,
                "SubnetMax",
            ),
            (r#"{"Network":"10.5.0.0/16","Backend":"vxlan"}"#, "Backend"),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"geneve"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
                "Backend.Port",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","DirectRouting":"yes"}}"#,
                "Backend.DirectRouting",
            ),
            (
                r#"{"Network":"10.5.0.0/16","EnableIPv6":true}"#,
                "EnableIPv6",
            ),
        ];
        for (text, field) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.field, field, "{text} gave {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn mtu_follows_the_backend() {
        let vxlan = Backend::Vxlan {
            vni: 1,
            port: 8472,
            direct_routing: false,
        };
        assert_eq!(vxlan.mtu(1500), 1450);
        assert_eq!(Backend::Udp { port: 8285 }.mtu(1500), 1472);
        assert_eq!(Backend::HostGw.mtu(1500), 1500);
        assert_eq!(Backend::Alloc.mtu(9000), 9000);
    }
}
