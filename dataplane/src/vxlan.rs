//! The VXLAN device (`tartan.<VNI>`), wire-compatible with flannel's: no
//! learning unless the config asks for it (flannel's `Learning`), VXLAN-GBP
//! when asked (`GBP`), a stable MAC published in the lease, the subnet's base
//! address as /32, and static neighbour and FDB entries programmed per peer.

use std::net::Ipv4Addr;

use netlink_packet_route::link::InfoVxlan;
use rtnetlink::{LinkMessageBuilder, LinkVxlan};

use crate::link::LinkState;
use crate::{DataplaneError, Netlink, Result};

/// What the VXLAN device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The underlay address encapsulated packets leave from.
    pub local: Ipv4Addr,
    pub underlay_index: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// The node subnet's base address, held as /32.
    pub address: Ipv4Addr,
    /// Source-address learning (flannel's `Learning`; off by default).
    pub learning: bool,
    /// The VXLAN Group Based Policy extension (flannel's `GBP`).
    pub gbp: bool,
}

/// A device whose identity (VNI, port, local address, underlay) differs can
/// not be changed in place: it must be recreated.
fn needs_recreate(link: &LinkState, spec: &VxlanSpec) -> bool {
    let Some(vx) = &link.vxlan else { return true };
    link.kind.as_deref() != Some("vxlan")
        || vx.vni != Some(spec.vni)
        || vx.port != Some(spec.port)
        || vx.local != Some(spec.local)
        || vx.underlay != Some(spec.underlay_index)
        || vx.learning.unwrap_or(false) != spec.learning
        || vx.gbp != spec.gbp
}

/// A locally administered unicast MAC derived from the node's public address
/// and VNI, so that restarts keep it and peers need not relearn it.
pub fn stable_vtep_mac(public_ip: Ipv4Addr, vni: u32) -> [u8; 6] {
    let ip = public_ip.octets();
    let v = vni.to_be_bytes();
    // 0x0e: locally administered (bit 1), unicast (bit 0 clear).
    [0x0e, ip[0] ^ v[1], ip[1] ^ v[2], ip[2] ^ v[3], ip[3], 0x54]
}

impl Netlink {
    /// Creates or repairs the VXLAN device. Returns its index. Idempotent.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec) -> Result<u32> {
        let existing = self.link(&spec.name).await?;
        let link = match existing {
            Some(link) if !needs_recreate(&link, spec) => link,
            other => {
                if let Some(stale) = other {
                    self.delete_link(stale.index).await?;
                }
                let mut builder = LinkMessageBuilder::<LinkVxlan>::new(&spec.name)
                    .id(spec.vni)
                    .port(spec.port)
                    .local(spec.local)
                    .dev(spec.underlay_index)
                    .learning(spec.learning)
                    .append_info_data(InfoVxlan::Ttl(0))
                    .address(spec.mac.to_vec())
                    .mtu(spec.mtu);
                if spec.gbp {
                    builder = builder.gbp();
                }
                let msg = builder.build();
                self.handle
                    .link()
                    .add(msg)
                    .execute()
                    .await
                    .map_err(|source| match source {
                        rtnetlink::Error::NetlinkError(ref e)
                            if e.raw_code() == -libc::EOPNOTSUPP =>
                        {
                            DataplaneError::Unsupported("vxlan")
                        }
                        source => DataplaneError::Netlink {
                            op: "vxlan add",
                            source,
                        },
                    })?;
                self.link(&spec.name).await?.ok_or_else(|| {
                    DataplaneError::Conflict(format!("{} vanished after creation", spec.name))
                })?
            }
        };
        if link.mac != Some(spec.mac) {
            self.set_mac(link.index, spec.mac, "vxlan set mac").await?;
        }
        self.ensure_sole_ipv4(link.index, spec.address, 32).await?;
        if !link.up || link.mtu != spec.mtu {
            self.set_up_with_mtu(link.index, spec.mtu).await?;
        }
        Ok(link.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::VxlanInfo;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "tartan.1".into(),
            vni: 1,
            port: 8472,
            local: Ipv4Addr::new(192, 168, 1, 10),
            underlay_index: 2,
            mac: stable_vtep_mac(Ipv4Addr::new(192, 168, 1, 10), 1),
            mtu: 1450,
            address: Ipv4Addr::new(10, 5, 34, 0),
            learning: false,
            gbp: false,
        }
    }

    fn link(vx: VxlanInfo) -> LinkState {
        LinkState {
            index: 7,
            name: "tartan.1".into(),
            mtu: 1450,
            mac: None,
            up: true,
            kind: Some("vxlan".into()),
            controller: None,
            vxlan: Some(vx),
        }
    }

    #[test]
    fn identity_changes_force_recreation() {
        let good = VxlanInfo {
            vni: Some(1),
            port: Some(8472),
            local: Some(Ipv4Addr::new(192, 168, 1, 10)),
            underlay: Some(2),
            learning: Some(false),
            gbp: false,
        };
        assert!(!needs_recreate(&link(good.clone()), &spec()));
        for bad in [
            VxlanInfo {
                vni: Some(2),
                ..good.clone()
            },
            VxlanInfo {
                port: Some(4789),
                ..good.clone()
            },
            VxlanInfo {
                local: Some(Ipv4Addr::new(192, 168, 1, 11)),
                ..good.clone()
            },
            VxlanInfo {
                underlay: Some(3),
                ..good.clone()
            },
            VxlanInfo {
                learning: Some(true),
                ..good.clone()
            },
            VxlanInfo {
                gbp: true,
                ..good.clone()
            },
        ] {
            assert!(needs_recreate(&link(bad.clone()), &spec()), "{bad:?}");
        }
    }

    #[test]
    fn the_vtep_mac_is_stable_local_and_unicast() {
        let a = stable_vtep_mac(Ipv4Addr::new(192, 168, 1, 10), 1);
        assert_eq!(a, stable_vtep_mac(Ipv4Addr::new(192, 168, 1, 10), 1));
        assert_ne!(a, stable_vtep_mac(Ipv4Addr::new(192, 168, 1, 11), 1));
        assert_eq!(a[0] & 0b11, 0b10, "locally administered unicast");
    }
}
