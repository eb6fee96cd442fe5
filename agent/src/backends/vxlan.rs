//! flannel's vxlan backend: a VXLAN device `tartan.<VNI>`, and towards each
//! vxlan peer an FDB entry, a neighbour and an onlink route; with
//! DirectRouting, a plain route for peers on the underlay's own segment.

use std::net::Ipv4Addr;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tartan_dataplane::{
    format_mac, stable_vtep_mac, FdbSpec, NeighbourSpec, Netlink, OverlayScope, OverlayState,
    RouteSpec, VxlanSpec,
};

use super::{optional_port, NodeNet, OverlayBackend, Registration, Underlay};
use crate::control::config::{optional_bool, optional_uint, BackendSection, ConfigError};
use crate::control::gojson::field;
use crate::teardown::Teardown;

pub const REGISTRATION: Registration = Registration {
    type_name: "vxlan",
    fields: &[
        "VNI",
        "Port",
        "GBP",
        "Learning",
        "DirectRouting",
        "MTU",
        "MacPrefix",
    ],
    parse: |section, notes| Ok(Arc::new(Vxlan::parse(section, notes)?)),
};

/// Outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14, on IPv4.
const OVERHEAD: u32 = 50;
/// flannel's defaults.
const DEFAULT_PORT: u16 = 8472;
const DEFAULT_VNI: u32 = 1;

/// The device names' prefix: flannel's `flannel.<VNI>`, with ours.
const DEVICE_PREFIX: &str = "tartan.";

/// The VXLAN device's name for `vni`.
pub fn device_name(vni: u32) -> String {
    format!("{DEVICE_PREFIX}{vni}")
}

/// The vxlan backend's options, as flannel reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
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

impl Default for Vxlan {
    fn default() -> Self {
        Vxlan {
            vni: DEFAULT_VNI,
            port: DEFAULT_PORT,
            direct_routing: false,
            gbp: false,
            learning: false,
            mtu: None,
        }
    }
}

impl Vxlan {
    pub fn parse(section: &BackendSection, notes: &mut Vec<String>) -> Result<Vxlan, ConfigError> {
        let obj = section.fields();
        // flannel passes VNI 0 to the kernel as it is; only an absent VNI means 1.
        let vni =
            optional_uint(obj, "VNI", "Backend.VNI", 0xFF_FFFF)?.map_or(DEFAULT_VNI, |v| v as u32);
        let mtu = match optional_uint(obj, "MTU", "Backend.MTU", 65535)? {
            None | Some(0) => None,
            Some(v) if v <= u64::from(OVERHEAD) + 68 => {
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
        Ok(Vxlan {
            vni,
            port: optional_port(obj, DEFAULT_PORT)?,
            direct_routing: optional_bool(obj, "DirectRouting", "Backend.DirectRouting")?,
            gbp: optional_bool(obj, "GBP", "Backend.GBP")?,
            learning: optional_bool(obj, "Learning", "Backend.Learning")?,
            mtu,
        })
    }

    /// The device's MAC: stable, so that a restart keeps the peers' entries right.
    fn vtep_mac(&self, public_ip: Ipv4Addr) -> [u8; 6] {
        stable_vtep_mac(public_ip, self.vni)
    }
}

#[async_trait::async_trait]
impl OverlayBackend for Vxlan {
    fn type_name(&self) -> &'static str {
        REGISTRATION.type_name
    }

    fn lease_data(&self, public_ip: Ipv4Addr) -> Value {
        json!({ "VNI": self.vni, "VtepMAC": format_mac(&self.vtep_mac(public_ip)) })
    }

    fn mtu_overhead(&self) -> u32 {
        OVERHEAD
    }

    fn mtu(&self, underlay_mtu: u32) -> u32 {
        self.mtu
            .unwrap_or(underlay_mtu)
            .saturating_sub(self.mtu_overhead())
    }

    fn program_peer(
        &self,
        peer: &crate::control::lease::Lease,
        underlay: &Underlay,
        scope: OverlayScope,
        state: &mut OverlayState,
    ) -> Result<(), String> {
        let public_ip = peer.attrs.public_ip;
        if self.direct_routing && underlay.is_direct(public_ip) {
            state.routes.insert(RouteSpec {
                destination: peer.subnet,
                gateway: public_ip,
                oif: underlay.index,
                onlink: false,
            });
            return Ok(());
        }
        let Some(vxlan) = scope.vxlan_index else {
            return Ok(());
        };
        let mac = peer
            .attrs
            .backend_data
            .get("VtepMAC")
            .and_then(Value::as_str)
            .and_then(parse_mac)
            .ok_or("no valid VtepMAC in BackendData")?;
        let vtep = peer.subnet.network();
        state.fdb.insert(FdbSpec {
            ifindex: vxlan,
            mac,
            destination: public_ip,
        });
        state.neighbours.insert(NeighbourSpec {
            ifindex: vxlan,
            ip: vtep,
            mac,
        });
        state.routes.insert(RouteSpec {
            destination: peer.subnet,
            gateway: vtep,
            oif: vxlan,
            onlink: true,
        });
        Ok(())
    }

    async fn ensure(&self, node: &NodeNet<'_>) -> Result<OverlayScope> {
        let index = node
            .netlink
            .ensure_vxlan(&VxlanSpec {
                name: device_name(self.vni),
                vni: self.vni,
                port: self.port,
                learning: self.learning,
                gbp: self.gbp,
                local: node.underlay.ip,
                underlay_index: node.underlay.index,
                mac: self.vtep_mac(node.public_ip),
                mtu: self.mtu(node.underlay.mtu),
                address: node.own.network(),
            })
            .await
            .context("setting up the VXLAN device")?;
        Ok(OverlayScope {
            vxlan_index: Some(index),
        })
    }

    /// Every VXLAN device of ours, whatever its VNI: an earlier config may
    /// have had another.
    async fn teardown(&self, netlink: &Netlink, report: &mut Teardown) -> Vec<String> {
        let mut removed = Vec::new();
        let Some(links) = report.step("listing the interfaces", netlink.links_state().await) else {
            return removed;
        };
        for link in links
            .iter()
            .filter(|l| l.kind.as_deref() == Some("vxlan") && l.name.starts_with(DEVICE_PREFIX))
        {
            let name = &link.name;
            if report
                .step(
                    &format!("removing {name}"),
                    netlink.delete_link(link.index).await,
                )
                .is_some()
            {
                removed.push(format!("removed {name}"));
            }
        }
        removed
    }
}

pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::testing::{lease, UNDERLAY};
    use crate::control::config::NetworkConfig;

    fn vxlan(direct_routing: bool) -> Vxlan {
        Vxlan {
            direct_routing,
            ..Vxlan::default()
        }
    }

    fn parse(text: &str) -> Vxlan {
        let cfg = NetworkConfig::parse(text.as_bytes()).expect("valid config");
        Vxlan::parse(&cfg.backend, &mut Vec::new()).expect("vxlan options")
    }

    #[test]
    fn options_are_read() {
        let cfg = NetworkConfig::parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":42,"Port":4789,"DirectRouting":true,"GBP":true,"Learning":true,"MTU":9000}}"#.as_bytes())
            .expect("valid config");
        let mut notes = cfg.notes.clone();
        let options = Vxlan::parse(&cfg.backend, &mut notes).expect("vxlan options");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(
            options,
            Vxlan {
                vni: 42,
                port: 4789,
                direct_routing: true,
                gbp: true,
                learning: true,
                mtu: Some(9000),
            }
        );
        assert_eq!(options.mtu(1500), 8950, "MTU stands for the underlay's");
        assert_eq!(
            parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#),
            Vxlan::default()
        );
        // VNI 0 goes to the kernel as it is, as flannel passes it.
        assert_eq!(
            parse(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#).vni,
            0
        );
        // Keys match in any case, as Go decodes them.
        assert_eq!(
            parse(
                r#"{"NETWORK":"10.5.0.0/16","backend":{"Type":"VXLAN","vni":4096,"directrouting":true}}"#
            ),
            Vxlan {
                vni: 4096,
                direct_routing: true,
                ..Vxlan::default()
            }
        );
    }

    #[test]
    fn mtu_leaves_room_for_the_encapsulation() {
        assert_eq!(Vxlan::default().mtu(1500), 1450);
    }

    #[test]
    fn macs_round_trip() {
        let mac = [0x0e, 0xa4, 0x3c, 0x0e, 0x21, 0x9a];
        assert_eq!(format_mac(&mac), "0e:a4:3c:0e:21:9a");
        assert_eq!(parse_mac("0e:a4:3c:0e:21:9a"), Some(mac));
        for bad in [
            "",
            "0e:a4:3c:0e:21",
            "0e:a4:3c:0e:21:9a:00",
            "0e-a4-3c-0e-21-9a",
            "zz:a4:3c:0e:21:9a",
            "e:a4:3c:0e:21:9a",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        let ip = Ipv4Addr::new(192, 168, 1, 10);
        assert_eq!(
            vxlan(false).lease_data(ip),
            json!({"VNI": 1, "VtepMAC": format_mac(&stable_vtep_mac(ip, 1))})
        );
    }

    #[test]
    fn peers_get_fdb_neighbour_and_onlink_route() {
        let peers = [
            lease(
                "10.5.7.0/24",
                [192, 168, 1, 11],
                "vxlan",
                json!({"VNI":1,"VtepMAC":"0e:00:00:00:00:07"}),
            ),
            lease("10.5.8.0/24", [192, 168, 1, 12], "host-gw", Value::Null),
            lease("10.5.9.0/24", [192, 168, 1, 13], "vxlan", json!({"VNI":1})),
        ];
        let scope = OverlayScope {
            vxlan_index: Some(9),
        };
        let (state, skipped) = vxlan(false).desired(&peers, &UNDERLAY, scope);
        let mac = [0x0e, 0, 0, 0, 0, 7];
        assert_eq!(
            state.routes.iter().collect::<Vec<_>>(),
            vec![&RouteSpec {
                destination: "10.5.7.0/24".parse().expect("cidr"),
                gateway: Ipv4Addr::new(10, 5, 7, 0),
                oif: 9,
                onlink: true
            }]
        );
        assert!(state.neighbours.contains(&NeighbourSpec {
            ifindex: 9,
            ip: Ipv4Addr::new(10, 5, 7, 0),
            mac
        }));
        assert!(state.fdb.contains(&FdbSpec {
            ifindex: 9,
            mac,
            destination: Ipv4Addr::new(192, 168, 1, 11)
        }));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
    }

    #[test]
    fn direct_routing_uses_the_underlay_for_peers_on_the_same_segment() {
        let peers = [
            lease(
                "10.5.7.0/24",
                [192, 168, 1, 11],
                "vxlan",
                json!({"VtepMAC":"0e:00:00:00:00:07"}),
            ),
            lease(
                "10.5.8.0/24",
                [172, 16, 0, 8],
                "vxlan",
                json!({"VtepMAC":"0e:00:00:00:00:08"}),
            ),
        ];
        let scope = OverlayScope {
            vxlan_index: Some(9),
        };
        let (state, _) = vxlan(true).desired(&peers, &UNDERLAY, scope);
        let via: Vec<(String, Ipv4Addr, u32)> = state
            .routes
            .iter()
            .map(|r| (r.destination.to_string(), r.gateway, r.oif))
            .collect();
        assert_eq!(
            via,
            vec![
                ("10.5.7.0/24".into(), Ipv4Addr::new(192, 168, 1, 11), 2),
                ("10.5.8.0/24".into(), Ipv4Addr::new(10, 5, 8, 0), 9),
            ]
        );
        assert_eq!(
            state.fdb.len(),
            1,
            "only the routed-over-vxlan peer needs an FDB entry"
        );
    }

    #[test]
    fn only_vxlan_leases_are_taken() {
        // flannel's udp and alloc leases carry no BackendType.
        let untyped = lease("10.5.7.0/24", [192, 168, 1, 11], "", Value::Null);
        let scope = OverlayScope {
            vxlan_index: Some(9),
        };
        let (_, skipped) = vxlan(false).desired(&[untyped], &UNDERLAY, scope);
        assert_eq!(skipped.len(), 1, "vxlan wants vxlan leases only");
        assert_eq!(vxlan(false).lease_type(), "vxlan");
    }
}
