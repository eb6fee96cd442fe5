//! The node bridge (`tartan0`): containers' veths hang off it and it holds
//! the node subnet's gateway address.

use ipnetwork::Ipv4Network;
use rtnetlink::LinkBridge;

use crate::{DataplaneError, Netlink, Result};

/// What the node bridge must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeSpec {
    pub name: String,
    pub mtu: u32,
    /// The gateway address with the node subnet's prefix, e.g. 10.5.34.1/24.
    pub gateway: Ipv4Network,
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
        self.ensure_sole_ipv4(link.index, spec.gateway.ip(), spec.gateway.prefix())
            .await?;
        if !link.up || link.mtu != spec.mtu {
            self.set_up_with_mtu(link.index, spec.mtu).await?;
        }
        Ok(link.index)
    }
}
