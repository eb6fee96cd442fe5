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

/// A config error: the flannel field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// The `Backend` object, as far as flannel reads it before handing it to
/// the backend: the type, lower-cased as flannel looks it up, and the
/// object's fields, which the backend itself reads (`backends::registry`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSection {
    kind: String,
    fields: Map<String, Value>,
}

impl BackendSection {
    /// A section of type `kind` (lower-case) with `fields`.
    pub fn new(kind: &str, fields: Map<String, Value>) -> BackendSection {
        BackendSection {
            kind: kind.to_ascii_lowercase(),
            fields,
        }
    }

    /// The backend's type, lower-cased; empty when the object has none.
    pub fn type_name(&self) -> &str {
        &self.kind
    }

    /// The `Backend` object's fields, `Type` included.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }
}

/// A validated network config with flannel's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub range: SubnetRange,
    /// Checked as far as flannel checks it before choosing the backend;
    /// the backend reads its options from it.
    pub backend: BackendSection,
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

    /// Parses and validates the JSON text of the config key, but for the
    /// backend's own options: `backends::registry::parse_config` reads
    /// those too.
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
                BackendSection::new("udp", Map::new())
            }
            Some(value) => parse_backend_section(value)?,
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
pub fn optional_bool(
    obj: &Map<String, Value>,
    name: &str,
    shown: &str,
) -> Result<bool, ConfigError> {
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
pub fn optional_uint(
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

fn parse_backend_section(value: &Value) -> Result<BackendSection, ConfigError> {
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
    // flannel lower-cases the type before looking its backend up; a missing
    // one is looked up as "" and refused there, as the registry refuses it.
    match field(obj, "Type") {
        Some(Value::String(s)) => Ok(BackendSection::new(s, obj.clone())),
        None | Some(Value::Null) => Ok(BackendSection::new("", obj.clone())),
        Some(other) => Err(ConfigError::new(
            "Backend.Type",
            format!("must be a string, not {other}"),
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
        // flannel's parseBackendType: no Backend means udp, with a note.
        assert_eq!(cfg.backend, BackendSection::new("udp", Map::new()));
        assert_eq!(cfg.notes.len(), 1);
        assert!(cfg.notes[0].contains("vxlan"), "{:?}", cfg.notes);
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
        assert_eq!(cfg.backend.type_name(), "host-gw");
        let cfg = parse(r#"{"NETWORK":"10.5.0.0/16","backend":{"Type":"VXLAN","vni":4096}}"#)
            .expect("valid config");
        assert_eq!(cfg.backend.type_name(), "vxlan");
        assert_eq!(cfg.backend.fields().get("vni"), Some(&Value::from(4096)));
    }

    #[test]
    fn fields_flannel_ignores_are_noted_not_dropped_silently() {
        let cfg = parse(r#"{"Network":"10.5.0.0/16","Colour":"red","Backend":{"Type":"vxlan"}}"#)
            .expect("valid config");
        assert!(cfg.notes.join("\n").contains("Colour"), "{:?}", cfg.notes);
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
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":7}}"#,
                "Backend.Type",
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
}
