//! The backends by flannel's type string. Adding one is a module of
//! `backends/` with its `REGISTRATION`, and a line in `BACKENDS`.

use std::sync::Arc;

use serde_json::Map;

use super::{alloc, host_gw, udp, vxlan, OverlayBackend, Registration};
use crate::control::config::{BackendSection, ConfigError, NetworkConfig};
use crate::control::gojson::unknown_keys;

/// Every backend Tartan has.
pub const BACKENDS: &[Registration] = &[
    vxlan::REGISTRATION,
    host_gw::REGISTRATION,
    udp::REGISTRATION,
    alloc::REGISTRATION,
];

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

/// Parses and validates the JSON text of the config key, the backend's
/// options included.
pub fn parse_config(text: &[u8]) -> Result<(NetworkConfig, Arc<dyn OverlayBackend>), ConfigError> {
    let mut config = NetworkConfig::parse(text)?;
    let backend = parse_backend(&config.backend, &mut config.notes)?;
    Ok((config, backend))
}

/// The backend the `Backend` object names, with its options.
pub fn parse_backend(
    section: &BackendSection,
    notes: &mut Vec<String>,
) -> Result<Arc<dyn OverlayBackend>, ConfigError> {
    let kind = section.type_name();
    if kind.is_empty() {
        return Err(ConfigError::new(
            "Backend.Type",
            format!(
                "missing ({}); flannel refuses a Backend without one too",
                known_types()
            ),
        ));
    }
    let Some(registration) = BACKENDS.iter().find(|r| r.type_name == kind) else {
        let reason = if FLANNEL_ONLY_BACKENDS.contains(&kind) {
            format!(
                "flannel's {kind:?} backend is not supported by tartan ({})",
                known_types()
            )
        } else {
            format!("unknown backend {kind:?} (expected {})", known_types())
        };
        return Err(ConfigError::new("Backend.Type", reason));
    };
    let mut known = vec!["Type"];
    known.extend(registration.fields);
    let unknown = unknown_keys(section.fields(), &known);
    if !unknown.is_empty() {
        notes.push(format!(
            "ignoring Backend fields the {kind} backend does not read: {}",
            unknown.join(", ")
        ));
    }
    (registration.parse)(section, notes)
}

/// Every backend with flannel's defaults, for removing what any of them
/// may have left behind.
pub fn every_backend() -> Vec<Arc<dyn OverlayBackend>> {
    BACKENDS
        .iter()
        .filter_map(|r| {
            (r.parse)(
                &BackendSection::new(r.type_name, Map::new()),
                &mut Vec::new(),
            )
            .ok()
        })
        .collect()
}

/// "vxlan, host-gw, udp or alloc".
fn known_types() -> String {
    let names: Vec<&str> = BACKENDS.iter().map(|r| r.type_name).collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(NetworkConfig, Arc<dyn OverlayBackend>), ConfigError> {
        parse_config(text.as_bytes())
    }

    #[test]
    fn every_type_string_finds_its_backend() {
        for (kind, expected) in [
            ("vxlan", "vxlan"),
            ("VXLAN", "vxlan"),
            ("host-gw", "host-gw"),
            ("udp", "udp"),
            ("Alloc", "alloc"),
        ] {
            let text = format!(r#"{{"Network":"10.5.0.0/16","Backend":{{"Type":"{kind}"}}}}"#);
            let (_, backend) = parse(&text).expect("valid config");
            assert_eq!(backend.type_name(), expected);
        }
        // flannel's parseBackendType: no Backend means udp.
        let (_, backend) = parse(r#"{"Network":"10.5.0.0/16"}"#).expect("valid config");
        assert_eq!(backend.type_name(), "udp");
        assert_eq!(known_types(), "vxlan, host-gw, udp or alloc");
        assert_eq!(every_backend().len(), BACKENDS.len());
    }

    #[test]
    fn each_registration_makes_its_own_backend_once() {
        for (i, registration) in BACKENDS.iter().enumerate() {
            assert!(
                !BACKENDS[..i]
                    .iter()
                    .any(|r| r.type_name == registration.type_name),
                "{} is registered twice",
                registration.type_name
            );
            assert_eq!(
                registration.type_name,
                registration.type_name.to_lowercase()
            );
            let section = BackendSection::new(registration.type_name, Map::new());
            let backend = (registration.parse)(&section, &mut Vec::new()).expect("defaults");
            assert_eq!(backend.type_name(), registration.type_name);
        }
    }

    #[test]
    fn fields_flannel_ignores_are_noted_not_dropped_silently() {
        let (cfg, _) = parse(r#"{"Network":"10.5.0.0/16","Colour":"red","Backend":{"Type":"vxlan","MacPrefix":"0E-2A","Speed":9}}"#)
            .expect("valid config");
        let notes = cfg.notes.join("\n");
        assert!(notes.contains("Colour"), "{notes}");
        assert!(notes.contains("Speed"), "{notes}");
        assert!(notes.contains("MacPrefix"), "{notes}");
        let (cfg, _) = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"host-gw","Port":9}}"#)
            .expect("valid config");
        assert!(cfg.notes.join("").contains("Port"), "{:?}", cfg.notes);
        let (cfg, _) = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":4}}"#)
            .expect("valid config");
        assert!(cfg.notes.is_empty(), "{:?}", cfg.notes);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"Network":"10.5.0.0/16","Backend":{}}"#, "Backend.Type"),
            (
                r#"{"Network":"10.5.0.0/16","Backend":null}"#,
                "Backend.Type",
            ),
            (
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":""}}"#,
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
                r#"{"Network":"10.5.0.0/16","Backend":{"Type":"udp","Port":"8285"}}"#,
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
        ];
        for (text, field) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.field, field, "{text} gave {err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
        let err = parse(r#"{"Network":"10.5.0.0/16","Backend":{}}"#).expect_err("no type");
        assert_eq!(
            err.reason,
            "missing (vxlan, host-gw, udp or alloc); flannel refuses a Backend without one too"
        );
        let err = parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}"#)
            .expect_err("wireguard");
        assert!(
            err.reason
                .contains("not supported by tartan (vxlan, host-gw, udp or alloc)"),
            "{err}"
        );
    }
}
