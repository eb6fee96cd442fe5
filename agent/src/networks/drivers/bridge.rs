//! A veth pair whose host end joins a Linux bridge: the overlay's attach
//! onto `tartan0`, any bridge network, and `tartan attach BRIDGE ...`.

use std::sync::Arc;

use anyhow::{bail, Result};
use tartan_dataplane::{BridgeSpec, Netlink};

use crate::networks::driver::{
    AttachStatus, AttachmentDriver, AttachmentSpec, HostSide, Registration,
};
use crate::teardown::Teardown;

pub const REGISTRATION: Registration = Registration {
    name: "bridge",
    options: &["bridge"],
    named_networks: true,
    network_device: Some(|short_id| format!("br-{short_id}")),
    make: |context| {
        Arc::new(BridgeDriver::new(
            context.netlink.clone(),
            context.host_interface.to_string(),
        ))
    },
};

/// The MTU of a bridge made for a network.
const NETWORK_BRIDGE_MTU: u32 = 1500;

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

    async fn ensure_host_side(&self, side: &HostSide) -> Result<()> {
        match side.gateway {
            Some((gateway, mac)) => {
                self.netlink
                    .ensure_bridge(&BridgeSpec {
                        name: self.bridge.clone(),
                        mtu: NETWORK_BRIDGE_MTU,
                        gateway,
                        mac,
                    })
                    .await?;
            }
            None => {
                self.netlink.ensure_plain_bridge(&self.bridge).await?;
            }
        }
        Ok(())
    }

    async fn remove_host_side(&self, only_if_unused: bool) -> Result<()> {
        if only_if_unused {
            self.netlink.remove_bridge_if_unused(&self.bridge).await?;
        } else {
            self.netlink.detach_veth(&self.bridge).await?;
        }
        Ok(())
    }

    async fn repair(&self, spec: &AttachmentSpec) -> Result<()> {
        // A veth that is there is left as it is.
        if self.netlink.link(&spec.host_ifname).await?.is_none() {
            self.setup(spec).await?;
        }
        Ok(())
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
