//! VLANs without Open vSwitch: a `PARENT.VLAN` 802.1Q sub-interface (the
//! parent of a macvlan on that VLAN), and an access port on a Linux bridge
//! through the bridge's VLAN filtering.
//!
//! Both need kernel support that some kernels lack (no `8021q`, no
//! `CONFIG_BRIDGE_VLAN_FILTERING`). That is detected and refused in one
//! line pointing at Open vSwitch, which tags in its own datapath; nothing is
//! left behind.

use std::ops::RangeInclusive;

use netlink_packet_route::link::{
    BridgeVlanInfoFlags, InfoBridge, InfoData, InfoVlan, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkBridgeVlan, LinkMessageBuilder, LinkUnspec, LinkVlan};

use crate::error::netlink_err;
use crate::link::{check_ifname, info_data, lower_index, Ensured};
use crate::{DataplaneError, Netlink, Result};

/// The VLAN ids a port can carry (0 and 4095 are reserved by 802.1Q).
pub const VLAN_IDS: RangeInclusive<u16> = 1..=4094;

fn no_8021q() -> DataplaneError {
    DataplaneError::NoVlanSupport {
        feature: "802.1Q VLAN",
        config: "module 8021q",
    }
}

fn no_bridge_vlan_filtering() -> DataplaneError {
    DataplaneError::NoVlanSupport {
        feature: "bridge VLAN filtering",
        config: "CONFIG_BRIDGE_VLAN_FILTERING",
    }
}

/// Refuses an id outside [`VLAN_IDS`].
pub fn check_vlan_id(vid: u16) -> Result<()> {
    if VLAN_IDS.contains(&vid) {
        Ok(())
    } else {
        Err(DataplaneError::Invalid(format!(
            "VLAN {vid} is out of range: use 1 to 4094"
        )))
    }
}

/// Parses a VLAN id as given after `@`.
pub fn parse_vlan_id(text: &str) -> Result<u16> {
    let vid = text
        .parse::<u16>()
        .map_err(|_| DataplaneError::Invalid(format!("bad VLAN {text:?}: use 1 to 4094")))?;
    check_vlan_id(vid)?;
    Ok(vid)
}

/// `PARENT.VLAN`, as pipework and `ip` name it; refused when too long.
pub fn vlan_ifname(parent: &str, vid: u16) -> Result<String> {
    check_ifname(parent)?;
    check_vlan_id(vid)?;
    let name = format!("{parent}.{vid}");
    check_ifname(&name)?;
    Ok(name)
}

fn vlan_request(name: &str, parent_index: u32, vid: u16, mtu: u32) -> LinkMessage {
    LinkVlan::new(name, parent_index, vid).mtu(mtu).up().build()
}

/// The 802.1Q id of a link, if it is a VLAN device.
fn vlan_id(msg: &LinkMessage) -> Option<u16> {
    match info_data(msg)? {
        InfoData::Vlan(items) => items.iter().find_map(|item| match item {
            InfoVlan::Id(id) => Some(*id),
            _ => None,
        }),
        _ => None,
    }
}

/// Makes `port_index` an access port of `vid` on its bridge: frames enter
/// untagged and are classified into `vid` (PVID), and leave untagged.
fn bridge_access_vlan_request(port_index: u32, vid: u16) -> LinkMessage {
    LinkBridgeVlan::new(port_index)
        .vlan(
            vid,
            BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
        )
        .build()
}

/// What a bridge says about VLAN filtering: on, possible, or not built in.
/// A kernel without it omits the VLAN protocol and default PVID from the
/// bridge's attributes, which tells it apart without changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BridgeVlanSupport {
    On,
    Off,
    Missing,
}

fn bridge_vlan_support(items: &[InfoBridge]) -> BridgeVlanSupport {
    let built_in = items.iter().any(|item| {
        matches!(
            item,
            InfoBridge::VlanDefaultPvid(_) | InfoBridge::VlanProtocol(_)
        )
    });
    let on = items.contains(&InfoBridge::VlanFiltering(true));
    match (built_in, on) {
        (_, true) => BridgeVlanSupport::On,
        (true, false) => BridgeVlanSupport::Off,
        (false, false) => BridgeVlanSupport::Missing,
    }
}

/// A kernel without the feature answers EOPNOTSUPP ("Unknown device type"
/// for a vlan link).
fn unsupported_as(
    unsupported: fn() -> DataplaneError,
    op: &'static str,
) -> impl FnOnce(rtnetlink::Error) -> DataplaneError {
    move |source| match source {
        rtnetlink::Error::NetlinkError(ref e) if e.raw_code() == -libc::EOPNOTSUPP => unsupported(),
        source => DataplaneError::Netlink { op, source },
    }
}

impl Netlink {
    /// Makes `PARENT.VLAN` on `parent`, up, with the parent's MTU, and
    /// returns its index. Idempotent; a device of that name that is not this
    /// VLAN of this parent is a conflict.
    pub async fn ensure_vlan(&self, parent: &str, vid: u16) -> Result<(u32, Ensured)> {
        let name = vlan_ifname(parent, vid)?;
        let parent_link = self.link(parent).await?.ok_or_else(|| {
            DataplaneError::NoSuchInterface(format!("no interface named {parent}"))
        })?;
        if let Some(existing) = self.link_message(&name).await? {
            if vlan_id(&existing) != Some(vid) || lower_index(&existing) != Some(parent_link.index)
            {
                return Err(DataplaneError::Conflict(format!(
                    "{name} exists but is not the VLAN {vid} device of {parent}"
                )));
            }
            let up = LinkUnspec::new_with_index(existing.header.index)
                .up()
                .build();
            self.handle
                .link()
                .set(up)
                .execute()
                .await
                .map_err(netlink_err("vlan up"))?;
            return Ok((existing.header.index, Ensured::AlreadyThere));
        }
        self.handle
            .link()
            .add(vlan_request(&name, parent_link.index, vid, parent_link.mtu))
            .execute()
            .await
            .map_err(unsupported_as(no_8021q, "vlan add"))?;
        let made = self
            .link(&name)
            .await?
            .ok_or_else(|| DataplaneError::Conflict(format!("{name} vanished after creation")))?;
        Ok((made.index, Ensured::Created))
    }

    /// Deletes `PARENT.VLAN` once nothing in this namespace sits on it.
    /// Returns whether there was one. Macvlans moved into containers'
    /// namespaces cannot be seen from here (and would go with it), so the
    /// caller removes it only with its last recorded user.
    pub async fn remove_vlan(&self, parent: &str, vid: u16) -> Result<bool> {
        let name = vlan_ifname(parent, vid)?;
        let Some(existing) = self.link_message(&name).await? else {
            return Ok(false);
        };
        if vlan_id(&existing).is_none() {
            return Err(DataplaneError::Conflict(format!(
                "{name} is not a VLAN device; left alone"
            )));
        }
        let index = existing.header.index;
        let users: Vec<String> = self
            .link_messages()
            .await?
            .iter()
            .filter(|msg| msg.header.index != index && lower_index(msg) == Some(index))
            .filter_map(crate::link::parse_link)
            .map(|link| link.name)
            .collect();
        if !users.is_empty() {
            return Err(DataplaneError::Conflict(format!(
                "{name} still carries {}",
                users.join(", ")
            )));
        }
        self.delete_link(index).await?;
        Ok(true)
    }

    /// Turns on VLAN filtering on the Linux bridge `bridge`, or refuses in
    /// one line when the kernel cannot.
    pub async fn ensure_bridge_vlan_filtering(&self, bridge: &str) -> Result<()> {
        check_ifname(bridge)?;
        let msg = self.link_message(bridge).await?.ok_or_else(|| {
            DataplaneError::NoSuchInterface(format!("no interface named {bridge}"))
        })?;
        let Some(InfoData::Bridge(items)) = info_data(&msg) else {
            return Err(DataplaneError::Conflict(format!(
                "{bridge} is not a Linux bridge"
            )));
        };
        match bridge_vlan_support(items) {
            BridgeVlanSupport::On => Ok(()),
            BridgeVlanSupport::Missing => Err(no_bridge_vlan_filtering()),
            BridgeVlanSupport::Off => {
                let on = LinkMessageBuilder::<LinkBridge>::new(bridge)
                    .index(msg.header.index)
                    .vlan_filtering(true)
                    .build();
                self.handle
                    .link()
                    .set(on)
                    .execute()
                    .await
                    .map_err(unsupported_as(
                        no_bridge_vlan_filtering,
                        "bridge vlan_filtering",
                    ))
            }
        }
    }

    /// Makes the bridge port `port_index` an access port of `vid` (untagged,
    /// PVID), and takes it out of the default VLAN 1, turning on the
    /// bridge's VLAN filtering first; refused in one line, and nothing
    /// changed, where the kernel has no VLAN filtering.
    pub async fn ensure_bridge_access_vlan(
        &self,
        bridge: &str,
        port_index: u32,
        vid: u16,
    ) -> Result<()> {
        check_vlan_id(vid)?;
        self.ensure_bridge_vlan_filtering(bridge).await?;
        self.handle
            .link()
            .set(bridge_access_vlan_request(port_index, vid))
            .execute()
            .await
            .map_err(unsupported_as(
                no_bridge_vlan_filtering,
                "bridge port vlan add",
            ))?;
        if vid != 1 {
            let default = LinkBridgeVlan::new(port_index)
                .vlan(1, BridgeVlanInfoFlags::empty())
                .build();
            match self.handle.link().del_with_message(default).execute().await {
                Ok(()) => {}
                // Already out of VLAN 1.
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => {}
                Err(source) => {
                    return Err(DataplaneError::Netlink {
                        op: "bridge port vlan 1 delete",
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{AfSpecBridge, BridgeVlanInfo, LinkAttribute, LinkInfo};
    use netlink_packet_route::AddressFamily;

    #[test]
    fn ids_and_names_are_checked() {
        assert_eq!(vlan_ifname("eth0", 100).unwrap(), "eth0.100");
        assert_eq!(vlan_ifname("enp0s31f6a", 4094).unwrap(), "enp0s31f6a.4094");
        assert_eq!(
            vlan_ifname("wlp0s20f3abc", 100).unwrap_err().to_string(),
            "interface name \"wlp0s20f3abc.100\" is longer than 15 characters (16)"
        );
        for bad in [0, 4095] {
            assert_eq!(
                check_vlan_id(bad).unwrap_err().to_string(),
                format!("VLAN {bad} is out of range: use 1 to 4094")
            );
        }
        assert_eq!(parse_vlan_id("100").unwrap(), 100);
        assert_eq!(
            parse_vlan_id("x").unwrap_err().to_string(),
            "bad VLAN \"x\": use 1 to 4094"
        );
        assert!(parse_vlan_id("70000").is_err());
    }

    #[test]
    fn the_vlan_request_names_parent_and_id() {
        let msg = vlan_request("eth0.100", 3, 100, 1500);
        assert!(msg
            .attributes
            .contains(&LinkAttribute::IfName("eth0.100".into())));
        assert!(msg.attributes.contains(&LinkAttribute::Link(3)));
        assert!(msg.attributes.contains(&LinkAttribute::Mtu(1500)));
        let kind = msg.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Kind(kind) => Some(kind.clone()),
                _ => None,
            }),
            _ => None,
        });
        assert_eq!(kind, Some(netlink_packet_route::link::InfoKind::Vlan));
        assert_eq!(vlan_id(&msg), Some(100));
        assert_eq!(lower_index(&msg), Some(3));
    }

    #[test]
    fn the_access_port_request_is_pvid_and_untagged() {
        let msg = bridge_access_vlan_request(9, 100);
        assert_eq!(msg.header.index, 9);
        assert_eq!(msg.header.interface_family, AddressFamily::Bridge);
        assert!(msg.attributes.contains(&LinkAttribute::AfSpecBridge(vec![
            AfSpecBridge::VlanInfo(BridgeVlanInfo {
                vid: 100,
                flags: BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged,
            })
        ])));
    }

    #[test]
    fn bridge_vlan_support_is_read_from_the_attributes() {
        // What this machine's kernel reports: the flag, but no VLAN protocol
        // or default PVID.
        assert_eq!(
            bridge_vlan_support(&[InfoBridge::VlanFiltering(false)]),
            BridgeVlanSupport::Missing
        );
        assert_eq!(
            bridge_vlan_support(&[
                InfoBridge::VlanFiltering(false),
                InfoBridge::VlanDefaultPvid(1)
            ]),
            BridgeVlanSupport::Off
        );
        assert_eq!(
            bridge_vlan_support(&[
                InfoBridge::VlanFiltering(true),
                InfoBridge::VlanDefaultPvid(1)
            ]),
            BridgeVlanSupport::On
        );
    }

    #[test]
    fn the_refusals_are_one_line_pointing_at_ovs() {
        assert_eq!(
            no_8021q().to_string(),
            "this kernel has no 802.1Q VLAN support (module 8021q): use an Open vSwitch bridge for VLANs"
        );
        assert_eq!(
            no_bridge_vlan_filtering().to_string(),
            "this kernel has no bridge VLAN filtering support (CONFIG_BRIDGE_VLAN_FILTERING): use an Open vSwitch bridge for VLANs"
        );
    }
}
