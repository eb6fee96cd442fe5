//! From leases to kernel intent: what each backend publishes in its lease
//! and which routes, neighbours and FDB entries it wants towards its peers.
//! Pure, so that the rules have unit tests; the dataplane applies the result.

pub mod node;

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use tartan_dataplane::{FdbSpec, NeighbourSpec, OverlayState, RouteSpec};

use crate::control::config::Backend;
use crate::control::lease::Lease;

/// The interface encapsulated (or routed) traffic leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlay {
    pub index: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mtu: u32,
}

impl Underlay {
    /// Whether `ip` is on the underlay's own L2 segment (no router between).
    pub fn is_direct(&self, ip: Ipv4Addr) -> bool {
        Ipv4Network::new(self.ip, self.prefix_len).is_ok_and(|net| net.contains(ip))
    }
}

/// The VXLAN device's name, as flannel names it (`flannel.<VNI>`), with our prefix.
pub fn vxlan_device_name(vni: u32) -> String {
    format!("tartan.{vni}")
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
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

/// The backend's part of this node's lease value.
pub fn lease_data(backend: &Backend, vtep_mac: Option<[u8; 6]>) -> Value {
    match (backend, vtep_mac) {
        (Backend::Vxlan(vx), Some(mac)) => {
            json!({ "VNI": vx.vni, "VtepMAC": format_mac(&mac) })
        }
        (Backend::Vxlan(vx), None) => json!({ "VNI": vx.vni }),
        (Backend::HostGw | Backend::Udp { .. } | Backend::Alloc, _) => Value::Null,
    }
}

/// Why a peer lease got no kernel state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub subnet: Ipv4Network,
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subnet, self.reason)
    }
}

/// The overlay state a backend wants for `peers`.
pub fn desired_overlay<'a>(
    backend: &Backend,
    peers: impl IntoIterator<Item = &'a Lease>,
    underlay: &Underlay,
    vxlan_index: Option<u32>,
) -> (OverlayState, Vec<Skipped>) {
    let mut state = OverlayState::default();
    let mut skipped = Vec::new();
    let mut skip = |lease: &Lease, reason: String| {
        skipped.push(Skipped {
            subnet: lease.subnet,
            reason,
        })
    };
    for lease in peers {
        if !backend.accepts(&lease.attrs.backend_type) {
            skip(
                lease,
                format!("backend {:?} is not ours", lease.attrs.backend_type),
            );
            continue;
        }
        let public_ip = lease.attrs.public_ip;
        let direct_route = RouteSpec {
            destination: lease.subnet,
            gateway: public_ip,
            oif: underlay.index,
            onlink: false,
        };
        match backend {
            Backend::Vxlan(vx) => {
                if vx.direct_routing && underlay.is_direct(public_ip) {
                    state.routes.insert(direct_route);
                    continue;
                }
                let Some(vxlan) = vxlan_index else { continue };
                let mac = lease
                    .attrs
                    .backend_data
                    .get("VtepMAC")
                    .and_then(Value::as_str)
                    .and_then(parse_mac);
                let Some(mac) = mac else {
                    skip(lease, "no valid VtepMAC in BackendData".into());
                    continue;
                };
                let vtep = lease.subnet.network();
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
                    destination: lease.subnet,
                    gateway: vtep,
                    oif: vxlan,
                    onlink: true,
                });
            }
            Backend::HostGw => {
                if underlay.is_direct(public_ip) {
                    state.routes.insert(direct_route);
                } else {
                    skip(
                        lease,
                        format!(
                            "{public_ip} is not on this host's L2 segment; host-gw needs it to be"
                        ),
                    );
                }
            }
            Backend::Udp { .. } | Backend::Alloc => {}
        }
    }
    (state, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::VxlanOptions;
    use crate::control::lease::LeaseAttrs;

    const UNDERLAY: Underlay = Underlay {
        index: 2,
        ip: Ipv4Addr::new(192, 168, 1, 10),
        prefix_len: 24,
        mtu: 1500,
    };

    fn lease(subnet: &str, ip: [u8; 4], backend: &str, data: Value) -> Lease {
        Lease {
            subnet: subnet.parse().expect("cidr"),
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::from(ip),
                public_ipv6: None,
                backend_type: backend.into(),
                backend_data: data,
            },
            etcd_lease: 1,
            mod_revision: 1,
        }
    }

    fn vxlan(direct_routing: bool) -> Backend {
        Backend::Vxlan(VxlanOptions {
            direct_routing,
            ..VxlanOptions::default()
        })
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
        assert_eq!(
            lease_data(&vxlan(false), Some(mac)),
            json!({"VNI": 1, "VtepMAC": "0e:a4:3c:0e:21:9a"})
        );
    }

    #[test]
    fn vxlan_peers_get_fdb_neighbour_and_onlink_route() {
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
        let (state, skipped) = desired_overlay(&vxlan(false), &peers, &UNDERLAY, Some(9));
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
        let (state, _) = desired_overlay(&vxlan(true), &peers, &UNDERLAY, Some(9));
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
    fn host_gw_routes_via_the_peer_and_refuses_unreachable_ones() {
        let peers = [
            lease("10.5.7.0/24", [192, 168, 1, 11], "host-gw", Value::Null),
            lease("10.5.8.0/24", [172, 16, 0, 8], "host-gw", Value::Null),
        ];
        let (state, skipped) = desired_overlay(&Backend::HostGw, &peers, &UNDERLAY, None);
        assert_eq!(state.routes.len(), 1);
        assert!(state.neighbours.is_empty() && state.fdb.is_empty());
        assert_eq!(skipped.len(), 1);
        assert!(skipped[0].reason.contains("L2 segment"), "{}", skipped[0]);
    }

    #[test]
    fn peer_types_are_taken_as_flannel_takes_them() {
        // flannel's udp and alloc leases carry no BackendType.
        let untyped = lease("10.5.7.0/24", [192, 168, 1, 11], "", Value::Null);
        let (state, skipped) = desired_overlay(&Backend::HostGw, [&untyped], &UNDERLAY, None);
        assert!(state.routes.is_empty());
        assert_eq!(skipped.len(), 1, "host-gw wants host-gw leases only");
        let (_, skipped) = desired_overlay(&vxlan(false), [&untyped], &UNDERLAY, Some(9));
        assert_eq!(skipped.len(), 1, "vxlan wants vxlan leases only");
        let udp = Backend::Udp { port: 8285 };
        assert!(udp.accepts("") && udp.accepts("udp") && udp.accepts("vxlan"));
        assert_eq!(udp.lease_type(), "", "flannel's udp publishes no type");
        assert!(!Backend::Alloc.accepts(""));
        assert!(Backend::HostGw.accepts("host-gw") && !Backend::HostGw.accepts(""));
    }
}
