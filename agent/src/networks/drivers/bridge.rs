//! A veth pair whose host end joins a Linux bridge: the overlay's attach
//! onto `tartan0`, any bridge network, and `tartan attach BRIDGE ...`.

use std::sync::Arc;

use anyhow::{bail, Result};
use tartan_dataplane::Netlink;

use crate::networks::driver::{AttachStatus, AttachmentDriver, AttachmentSpec, Registration};
use crate::teardown::Teardown;

pub const REGISTRATION: Registration = Registration {
    name: "bridge",
    options: &["bridge"],
    named_networks: true,
    make: |context| {
        Arc::new(BridgeDriver::new(
            context.netlink.clone(),
            context.host_interface.to_string(),
        ))
    },
};

pub struct BridgeDriver {
    netlink: Netlink,
    /// Looked up on every setup: the reconciler recreates a bridge deleted by hand.
    bridge: String,
}

impl BridgeDriver {
    pub fn new(netlink: Netlink, bridge: String) -> BridgeDriver {
        BridgeDriver { netlink, bridge }
    }

    async fn bridge_index(&self) -> Result<u32> {
        match self.netlink.link(&self.bridge).await? {
            Some(link) => Ok(link.index),
            None => bail!("the bridge {} is missing", self.bridge),
        }
    }
}

#[async_trait::async_trait]
impl AttachmentDriver for BridgeDriver {
    fn kind(&self) -> &'static str {
        "bridge"
    }

    async fn setup(&self, spec: &AttachmentSpec) -> Result<AttachStatus> {
        self.validate(spec)?;
        let bridge_index = self.bridge_index().await?;
        if spec.vlan.is_some() {
            // Refused here, before the veth exists, where the kernel has no
            // bridge VLAN filtering.
            self.netlink
                .ensure_bridge_vlan_filtering(&self.bridge)
                .await?;
        }
        let veth = spec.veth(Some(bridge_index));
        // A host end left by an earlier run whose namespace is still being torn down.
        self.netlink.detach_veth(&veth.host_name).await?;
        let made = async {
            self.netlink.attach_veth(&veth).await?;
            if let Some(vlan) = spec.vlan {
                let port = self.netlink.link(&veth.host_name).await?.ok_or_else(|| {
                    anyhow::anyhow!("{} vanished while attaching", veth.host_name)
                })?;
                self.netlink
                    .ensure_bridge_access_vlan(&self.bridge, port.index, vlan)
                    .await?;
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(err) = made {
            let undo = self.netlink.detach_veth(&veth.host_name).await;
            return Err(crate::teardown::undone(err, undo));
        }
        Ok(AttachStatus::of_veth(self.kind(), spec))
    }

    async fn teardown(&self, status: &AttachStatus) -> Result<(), Teardown> {
        let mut teardown = Teardown::new();
        if let Some(host) = &status.host_ifname {
            // Deleting one end deletes the pair, wherever the other end is.
            teardown.step(
                &format!("removing {host}"),
                self.netlink.detach_veth(host).await,
            );
        }
        if teardown.is_empty() {
            Ok(())
        } else {
            Err(teardown)
        }
    }
}
