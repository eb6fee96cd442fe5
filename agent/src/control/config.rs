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

use crate::control::gojson::{field, unknown_keys};

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

/// The vxlan backend's options, as flannel reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanOptions {
    pub vni: u32,
    pub port: u16,
    pub direct_routing: bool,
    /// VXLAN Group Based Policy on the device.
    pub gbp: bool,
    /// Source-address learning on the device.
    pub learning: bool,
    /// The underlay MTU to assume instead of the interface's (flannel 0.22+).
    pub mtu: Option<u32>,
}

impl Default for VxlanOptions {
    fn default() -> Self {
        VxlanOptions {
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            direct_routing: false,
            gbp: false,
            learning: false,
            mtu: None,
        }
    }
}

/// The backend named by `Backend.Type`, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Vxlan(VxlanOptions),
    HostGw,
    Udp {
        port: u16,
    },
    /// Lease a subnet and do nothing else (flannel's `alloc`).
    Alloc,
}

impl Backend {
    /// The type string of this backend, as flannel spells it.
    pub fn type_name(&self) -> &'static str {
        match self {
            Backend::Vxlan(_) => "vxlan",
            Backend::HostGw => "host-gw",
            Backend::Udp { .. } => "udp",
            Backend::Alloc => "alloc",
        }
    }

    /// The `BackendType` this node publishes in its lease. flannel's udp
    /// and alloc backends publish none, and their peers expect none.
    pub fn lease_type(&self) -> &'static str {
        match self {
            Backend::Udp { .. } | Backend::Alloc => "",
            other => other.type_name(),
        }
    }

    /// Whether a peer lease of `lease_type` is one this backend programs,
    /// exactly as flannel decides: vxlan and host-gw want their own type,
    /// udp takes every lease (its leases carry no type), alloc programs none.
    pub fn accepts(&self, lease_type: &str) -> bool {
        match self {
            Backend::Udp { .. } => true,
            Backend::Alloc => false,
            other => lease_type == other.type_name(),
        }
    }

    /// The MTU containers get, given the MTU of the underlay interface.
    pub fn mtu(&self, underlay_mtu: u32) -> u32 {
        match self {
            Backend::Vxlan(vx) => vx
                .mtu
                .unwrap_or(underlay_mtu)
                .saturating_sub(VXLAN_OVERHEAD),
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
    /// What an operator should know about how the config was read: a
    /// defaulted backend, fields flannel ignores on Linux or does not know.
    /// Logged once when the config is taken.
    pub notes: Vec<String>,
}

/// The top-level fields flannel's `subnet.Config` has (v0.20 to today).
const TOP_LEVEL_FIELDS: &[&str] = &[
    "EnableIPv4",
    "EnableIPv6",
    "EnableNFTables",
    "Network",
    "IPv6Network",
    "Networks",
    "IPv6Networks",
    "SubnetMin",
    "SubnetMax",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "SubnetLen",
    "IPv6SubnetLen",
    "Backend",
];

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
        let mut notes = Vec::new();
        if optional_bool(&obj, "EnableIPv6", "EnableIPv6")? {
            return Err(ConfigError::new(
                "EnableIPv6",
                "IPv6 networks are not supported",
            ));
        }
        if field(&obj, "EnableIPv4").is_some() && !optional_bool(&obj, "EnableIPv4", "EnableIPv4")?
        {
            return Err(ConfigError::new(
                "EnableIPv4",
                "an IPv4 network is required (IPv6-only networks are not supported)",
            ));
        }
        for list in ["Networks", "IPv6Networks"] {
            match field(&obj, list) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) if items.is_empty() => {}
                Some(_) => {
                    return Err(ConfigError::new(
                        list,
                        "several networks in one config are not supported; use Network",
                    ))
                }
            }
        }
        if optional_bool(&obj, "EnableNFTables", "EnableNFTables")? {
            notes.push(
                "EnableNFTables: tartan's own rules are always nftables; nothing to switch".into(),
            );
        }
        let unknown = unknown_keys(&obj, TOP_LEVEL_FIELDS);
        if !unknown.is_empty() {
            notes.push(format!(
                "ignoring fields flannel does not know either: {}",
                unknown.join(", ")
            ));
        }
        let network_text = match field(&obj, "Network") {
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

        let backend_json = field(&obj, "Backend").cloned();
        let backend = match &backend_json {
            // flannel's parseBackendType: no Backend at all means udp.
            None => {
                notes.push(
                    "no Backend in the config: using udp, as flannel does; \
                     set \"Backend\":{\"Type\":\"vxlan\"} for the kernel's faster path"
                        .into(),
                );
                Backend::Udp {
                    port: DEFAULT_UDP_PORT,
                }
            }
            Some(value) => parse_backend(value, &mut notes)?,
        };
        Ok(NetworkConfig {
            range,
            backend,
            backend_json: backend_json.unwrap_or(Value::Null),
            notes,
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

fn optional_u8(obj: &Map<String, Value>, name: &str) -> Result<Option<u8>, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Ok(None),
            Some(v) if v <= 32 => Ok(Some(v as u8)),
            _ => Err(ConfigError::new(
                name,
                format!("{n} is not a prefix length (0-32)"),
            )),
        },
        Some(other) => Err(ConfigError::new(
            name,
            format!("must be a number, not {other}"),
        )),
    }
}

fn optional_ipv4(obj: &Map<String, Value>, name: &str) -> Result<Option<Ipv4Addr>, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse::<Ipv4Addr>()
            .map(Some)
            .map_err(|_| ConfigError::new(name, format!("{s:?} is not an IPv4 address"))),
        Some(other) => Err(ConfigError::new(
            name,
            format!("must be a string, not {other}"),
        )),
    }
}

/// A boolean field (absent: false); `shown` is the name errors give.
fn optional_bool(obj: &Map<String, Value>, name: &str, shown: &str) -> Result<bool, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(ConfigError::new(
            shown,
            format!("must be true or false, not {other}"),
        )),
    }
}

/// A non-negative integer field no larger than `max` (absent or null: None).
fn optional_uint(
    obj: &Map<String, Value>,
    name: &str,
    shown: &str,
    max: u64,
) -> Result<Option<u64>, ConfigError> {
    match field(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v <= max => Ok(Some(v)),
            _ => Err(ConfigError::new(shown, format!("{n} is not in 0-{max}"))),
        },
        Some(other) => Err(ConfigError::new(
            shown,
            format!("must be a number, not {other}"),
        )),
    }
}

/// flannel's backends that Tartan does not implement.
const FLANNEL_ONLY_BACKENDS: &[&str] = &[
    "ipip",
    "ipsec",
    "wireguard",
    "extension",
    "aws-vpc",
    "gce",
    "ali-vpc",
    "tencent-vpc",
];

/// The options each backend reads; anything else in `Backend` is noted.
fn backend_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "vxlan" => &[
            "Type",
            "VNI",
            "Port",
            "GBP",
            "Learning",
            "DirectRouting",
            "MTU",
            "MacPrefix",
        ],
        "udp" => &["Type", "Port"],
        _ => &["Type"],
    }
}

fn parse_backend(value: &Value, notes: &mut Vec<String>) -> Result<Backend, ConfigError> {
    let empty = Map::new();
    let obj = match value {
        // flannel decodes `"Backend":null` as a Backend without a Type.
        Value::Null => &empty,
        Value::Object(obj) => obj,
        other => {
            return Err(ConfigError::new(
                "Backend",
                format!("must be an object, not {other}"),
            ))
        }
    };
    // flannel lower-cases the type before looking its backend up.
    let kind =
        match field(obj, "Type") {
            Some(Value::String(s)) if !s.is_empty() => s.to_ascii_lowercase(),
            None | Some(Value::Null) | Some(Value::String(_)) => return Err(ConfigError::new(
                "Backend.Type",
                "missing (vxlan, host-gw, udp or alloc); flannel refuses a Backend without one too",
            )),
            Some(other) => {
                return Err(ConfigError::new(
                    "Backend.Type",
                    format!("must be a string, not {other}"),
                ))
            }
        };
    let unknown = unknown_keys(obj, backend_fields(&kind));
    if !unknown.is_empty() && !FLANNEL_ONLY_BACKENDS.contains(&kind.as_str()) {
        notes.push(format!(
            "ignoring Backend fields the {kind} backend does not read: {}",
            unknown.join(", ")
        ));
    }
    match kind.as_str() {
        "vxlan" => {
            // flannel passes VNI 0 to the kernel as it is; only an absent VNI means 1.
            let vni = optional_uint(obj, "VNI", "Backend.VNI", 0xFF_FFFF)?
                .map_or(DEFAULT_VNI, |v| v as u32);
            let mtu = match optional_uint(obj, "MTU", "Backend.MTU", 65535)? {
                None | Some(0) => None,
                Some(v) if v <= u64::from(VXLAN_OVERHEAD) + 68 => {
                    return Err(ConfigError::new(
                        "Backend.MTU",
                        format!("{v} leaves containers less than IPv4's minimum MTU of 68"),
                    ))
                }
                Some(v) => Some(v as u32),
            };
            if field(obj, "MacPrefix").is_some() {
                notes.push(
                    "Backend.MacPrefix: flannel reads it only on Windows; ignored, as on Linux flannel"
                        .into(),
                );
            }
            Ok(Backend::Vxlan(VxlanOptions {
                vni,
                port: optional_port(obj, DEFAULT_VXLAN_PORT)?,
                direct_routing: optional_bool(obj, "DirectRouting", "Backend.DirectRouting")?,
                gbp: optional_bool(obj, "GBP", "Backend.GBP")?,
                learning: optional_bool(obj, "Learning", "Backend.Learning")?,
                mtu,
            }))
        }
        "host-gw" => Ok(Backend::HostGw),
        "udp" => Ok(Backend::Udp {
            port: optional_port(obj, DEFAULT_UDP_PORT)?,
        }),
        "alloc" => Ok(Backend::Alloc),
        other if FLANNEL_ONLY_BACKENDS.contains(&other) => Err(ConfigError::new(
            "Backend.Type",
            format!("flannel's {other:?} backend is not supported by tartan (vxlan, host-gw, udp or alloc)"),
        )),
        other => Err(ConfigError::new(
            "Backend.Type",
            format!("unknown backend {other:?} (expected vxlan, host-gw, udp or alloc)"),
        )),
    }
}

fn optional_port(obj: &Map<String, Value>, default: u16) -> Result<u16, ConfigError> {
    // flannel hands Port 0 to the kernel, which then uses its default: ours.
    Ok(
        match optional_uint(obj, "Port", "Backend.Port", u64::from(u16::MAX))? {
            None | Some(0) => default,
            Some(v) => v as u16,
        },
    )
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
        // flannel's parseBackendType: no Backend means udp, with a note.
        assert_eq!(cfg.backend, Backend::Udp { port: 8285 });
        assert_eq!(cfg.notes.len(), 1);
        assert!(cfg.notes[0].contains("vxlan"), "{:?}", cfg.notes);
    }

    #[test]
    fn backend_options_are_read() {
        let cfg = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"DirectRouting":true,"GBP":true,"Learning":true,"MTU":9000}}"#)
            .expect("valid config");
        assert_eq!(
            cfg.backend,
            Backend::Vxlan(VxlanOptions {
                vni: 42,
                port: 4789,
                direct_routing: true,
                gbp: true,
                learning: true,
                mtu: Some(9000),
            })
        );
        assert!(cfg.notes.is_empty(), "{:?}", cfg.notes);
        assert_eq!(cfg.backend.mtu(1500), 8950, "MTU stands for the underlay's");
        let cfg =
            parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).expect("valid config");
        assert_eq!(cfg.backend, Backend::Vxlan(VxlanOptions::default()));
        let cfg =
            parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp"}}"#).expect("valid config");
        assert_eq!(cfg.backend, Backend::Udp { port: 8285 });
        let cfg = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw"}}"#)
            .expect("valid config");
        assert_eq!(cfg.backend, Backend::HostGw);
        // VNI 0 goes to the kernel as it is, as flannel passes it.
        let cfg = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#)
            .expect("valid config");
        assert!(matches!(
            cfg.backend,
            Backend::Vxlan(VxlanOptions { vni: 0, .. })
        ));
    }

    #[test]
    fn keys_match_in_any_case_as_go_decodes_them() {
        let cfg = parse(r#"{"network":"10.5.0.0/16","subnetlen":26,"Backend":{"type":"host-gw"}}"#)
            .expect("valid config");
        assert_eq!(
            cfg.network(),
            "10.5.0.0/16".parse::<Ipv4Network>().expect("cidr")
        );
        assert_eq!(cfg.range.subnet_len(), 26);
        assert_eq!(cfg.backend, Backend::HostGw);
        let cfg = parse(r#"{"NETWORK":"10.5.0.0/16","backend":{"Type":"VXLAN","vni":4096,"directrouting":true}}"#)
            .expect("valid config");
        assert_eq!(
            cfg.backend,
            Backend::Vxlan(VxlanOptions {
                vni: 4096,
                direct_routing: true,
                ..VxlanOptions::default()
            })
        );
    }

    #[test]
    fn fields_flannel_ignores_are_noted_not_dropped_silently() {
        let cfg = parse(r#"{"Network":"10.5.0.0/16","Colour":"red","Backend":{"Type":"vxlan","MacPrefix":"0E-2A","Speed":9}}"#)
            .expect("valid config");
        let notes = cfg.notes.join("\n");
        assert!(notes.contains("Colour"), "{notes}");
        assert!(notes.contains("Speed"), "{notes}");
        assert!(notes.contains("MacPrefix"), "{notes}");
        let cfg = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw","Port":9}}"#)
            .expect("valid config");
        assert!(cfg.notes.join("").contains("Port"), "{:?}", cfg.notes);
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
            (r#"{"Network":"10.5.0.0/16","Backend":{}}"#, "Backend.Type"),
            (
                r#"{"Network":"10.5.0.0/16","Backend":null}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"geneve"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":-1}}"#,
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
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","GBP":1}}"#,
                "Backend.GBP",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","Learning":"on"}}"#,
                "Backend.Learning",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","MTU":100}}"#,
                "Backend.MTU",
            ),
            (
                r#"{"Network":"10.5.0.0/16","EnableIPv6":true}"#,
                "EnableIPv6",
            ),
            (
                r#"{"Network":"10.5.0.0/16","EnableIPv4":false}"#,
                "EnableIPv4",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Networks":["10.6.0.0/16"]}"#,
                "Networks",
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
        let vxlan = Backend::Vxlan(VxlanOptions::default());
        assert_eq!(vxlan.mtu(1500), 1450);
        assert_eq!(Backend::Udp { port: 8285 }.mtu(1500), 1472);
        assert_eq!(Backend::HostGw.mtu(1500), 1500);
        assert_eq!(Backend::Alloc.mtu(9000), 9000);
    }
}
