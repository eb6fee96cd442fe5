//! The node bridge (`tartan0`): containers' veths hang off it and it holds
//! the node subnet's gateway address.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rtnetlink::LinkBridge;

use crate::link::{check_ifname, Ensured};
use crate::{DataplaneError, Netlink, Result};

/// What the node bridge must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub mtu: u32,
    /// The gateway address with the node subnet's prefix, e.g. 10.5.34.1/24.
    pub gateway: Ipv4Network,
    /// A fixed MAC: without one the kernel gives the bridge the lowest MAC
    /// of its ports, so a container leaving changes the gateway's MAC under
    /// the neighbour caches of the others, whose frames the bridge then drops.
    pub mac: [u8; 6],
}

/// A stable, locally administered MAC for the node bridge of the node
/// publishing `public_ip`.
pub fn stable_bridge_mac(public_ip: Ipv4Addr) -> [u8; 6] {
    let ip = public_ip.octets();
    // 0x0a: locally administered (bit 1), unicast (bit 0 clear); distinct from the VTEP's 0x0e.
    [0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]]
}

impl Netlink {
    /// Creates the bridge if missing, then sets its MTU, address and state. Idempotent.
    pub async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<u32> {
        let link = match self.link(&spec.name).await? {
            Some(link) if link.kind.as_deref() == Some("bridge") => link,
            Some(other) => {
                return Err(DataplaneError::Conflict(format!(
                    "{} exists but is a {} device, not a bridge",
                    other.name,
                    other.kind.as_deref().unwrap_or("plain")
                )))
            }
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(&spec.name).mtu(spec.mtu).build())
                    .execute()
                    .await
                    .map_err(|source| DataplaneError::Netlink {
                        op: "bridge add",
                        source,
                    })?;
                self.link(&spec.name).await?.ok_or_else(|| {
                    DataplaneError::Conflict(format!("{} vanished after creation", spec.name))
                })?
            }
        };
        if link.mac != Some(spec.mac) {
            self.set_mac(link.index, spec.mac, "bridge set mac").await?;
        }
        self.ensure_sole_ipv4(link.index, spec.gateway.ip(), spec.gateway.prefix())
            .await?;
        if !link.up || link.mtu != spec.mtu {
            self.set_up_with_mtu(link.index, spec.mtu).await?;
        }
        Ok(link.index)
    }

    /// Makes a Linux bridge with no address, up, unless one of that name
    /// exists; another kind of device by that name is a conflict.
    pub async fn ensure_plain_bridge(&self, name: &str) -> Result<Ensured> {
        check_ifname(name)?;
        let (link, made) = match self.link(name).await? {
            Some(link) if link.kind.as_deref() == Some("bridge") => (link, Ensured::AlreadyThere),
            Some(other) => {
                return Err(DataplaneError::Conflict(format!(
                    "{} exists but is a {} device, not a bridge",
                    other.name,
                    other.kind.as_deref().unwrap_or("plain")
                )))
            }
            None => {
                self.handle
                    .link()
                    .add(LinkBridge::new(name).build())
                    .execute()
                    .await
                    .map_err(|source| DataplaneError::Netlink {
                        op: "bridge add",
                        source,
                    })?;
                let link = self.link(name).await?.ok_or_else(|| {
                    DataplaneError::Conflict(format!("{name} vanished after creation"))
                })?;
                (link, Ensured::Created)
            }
        };
        if !link.up {
            self.set_up_with_mtu(link.index, link.mtu).await?;
        }
        Ok(made)
    }

    /// Deletes the Linux bridge `name` when no interface is its port any
    /// more. Returns whether it was deleted.
    pub async fn remove_bridge_if_unused(&self, name: &str) -> Result<bool> {
        let Some(bridge) = self.link(name).await? else {
            return Ok(false);
        };
        if bridge.kind.as_deref() != Some("bridge") {
            return Ok(false);
        }
        let in_use = self
            .links_state()
            .await?
            .iter()
            .any(|link| link.controller == Some(bridge.index));
        if in_use {
            return Ok(false);
        }
        self.delete_link(bridge.index).await?;
        Ok(true)
    }
}
