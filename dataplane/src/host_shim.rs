//! The host shim: a macvlan of the host's own on a macvlan parent, in bridge
//! mode, with a /32 route to each macvlan container the host must reach.
//!
//! A macvlan parent never hands frames between itself and its macvlans, so
//! the host cannot reach containers on them through the parent (pipework's
//! oldest complaint). A sibling macvlan in bridge mode can: the host talks
//! to the container through the shim, and the container's ARP for the host's
//! address is answered on the shim.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::link::MacVlanMode;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use netlink_packet_route::AddressFamily;
use rtnetlink::{LinkMacVlan, LinkUnspec, RouteMessageBuilder};

use crate::error::netlink_err;
use crate::link::{check_ifname, lower_index, Ensured};
use crate::macvlan::macvlan_mode;
use crate::{DataplaneError, Netlink, Result};

/// A host shim on `parent` carrying the route to one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostShimSpec {
    /// The macvlan parent the containers sit on.
    pub parent: String,
    /// The shim's name, one per parent.
    pub name: String,
    /// The container address the host must reach.
    pub container: Ipv4Addr,
}

fn shim_route(shim_index: u32, container: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(container, 32)
        .output_interface(shim_index)
        .scope(RouteScope::Link)
        .build()
}

/// The IPv4 destination and prefix length of a route, and its device.
fn route_target(msg: &RouteMessage) -> (Option<Ipv4Addr>, u8, Option<u32>) {
    let mut destination = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = Some(*ip),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    (destination, msg.header.destination_prefix_length, oif)
}

impl Netlink {
    /// Makes the shim if missing (up, the parent's MTU) and the route to
    /// the container through it. Says `AlreadyThere` when both were.
    pub async fn ensure_host_shim(&self, spec: &HostShimSpec) -> Result<Ensured> {
        check_ifname(&spec.parent)?;
        check_ifname(&spec.name)?;
        let parent = self.link(&spec.parent).await?.ok_or_else(|| {
            DataplaneError::NoSuchInterface(format!("no interface named {}", spec.parent))
        })?;
        let mut made = false;
        let index = match self.link_message(&spec.name).await? {
            Some(existing) => {
                if macvlan_mode(&existing) != Some(MacVlanMode::Bridge)
                    || lower_index(&existing) != Some(parent.index)
                {
                    return Err(DataplaneError::Conflict(format!(
                        "{} exists but is not a bridge-mode macvlan on {}",
                        spec.name, spec.parent
                    )));
                }
                existing.header.index
            }
            None => {
                let request = LinkMacVlan::new(&spec.name, parent.index, MacVlanMode::Bridge)
                    .mtu(parent.mtu)
                    .up()
                    .build();
                self.handle
                    .link()
                    .add(request)
                    .execute()
                    .await
                    .map_err(netlink_err("host shim add"))?;
                made = true;
                self.link(&spec.name)
                    .await?
                    .ok_or_else(|| {
                        DataplaneError::Conflict(format!("{} vanished after creation", spec.name))
                    })?
                    .index
            }
        };
        let routed = async {
            let up = LinkUnspec::new_with_index(index).up().build();
            self.handle
                .link()
                .set(up)
                .execute()
                .await
                .map_err(netlink_err("host shim up"))?;
            if self.shim_routes(index).await?.contains(&spec.container) {
                return Ok(false);
            }
            self.handle
                .route()
                .add(shim_route(index, spec.container))
                .execute()
                .await
                .map_err(netlink_err("host shim route add"))?;
            Ok(true)
        }
        .await;
        match routed {
            Ok(added) if made || added => Ok(Ensured::Created),
            Ok(_) => Ok(Ensured::AlreadyThere),
            Err(failed) if made => Err(match self.delete_link(index).await {
                Ok(()) => failed,
                Err(undo) => DataplaneError::UndoFailed {
                    failed: Box::new(failed),
                    undo: Box::new(undo),
                },
            }),
            Err(failed) => Err(failed),
        }
    }

    /// Removes the route to the container, and the shim with its last
    /// route. Returns whether anything was removed.
    pub async fn remove_host_shim(&self, spec: &HostShimSpec) -> Result<bool> {
        check_ifname(&spec.name)?;
        let Some(existing) = self.link_message(&spec.name).await? else {
            return Ok(false);
        };
        if macvlan_mode(&existing).is_none() {
            return Err(DataplaneError::Conflict(format!(
                "{} is not a macvlan; left alone",
                spec.name
            )));
        }
        let index = existing.header.index;
        let mut removed = false;
        if self.shim_routes(index).await?.contains(&spec.container) {
            self.handle
                .route()
                .del(shim_route(index, spec.container))
                .execute()
                .await
                .map_err(netlink_err("host shim route delete"))?;
            removed = true;
        }
        if self.shim_routes(index).await?.is_empty() {
            self.delete_link(index).await?;
            removed = true;
        }
        Ok(removed)
    }

    /// The /32 destinations routed through the shim, in the main table.
    async fn shim_routes(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        crate::error::redo_interrupted(|| self.shim_routes_once(index)).await
    }

    async fn shim_routes_once(&self, index: u32) -> Result<Vec<Ipv4Addr>> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(request).execute();
        let mut found = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(netlink_err("route dump"))? {
            if msg.header.address_family != AddressFamily::Inet {
                continue;
            }
            if let (Some(destination), 32, Some(oif)) = route_target(&msg) {
                if oif == index {
                    found.push(destination);
                }
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_route_is_a_link_scope_host_route_through_the_shim() {
        let container = Ipv4Addr::new(10, 1, 1, 5);
        let msg = shim_route(7, container);
        assert_eq!(route_target(&msg), (Some(container), 32, Some(7)));
        assert_eq!(msg.header.scope, RouteScope::Link);
    }
}
