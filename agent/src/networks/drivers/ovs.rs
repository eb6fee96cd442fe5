//! A veth pair whose host end is a system port of an Open vSwitch bridge,
//! an access port with `tag` when a VLAN is given. Every port made here
//! carries `tartan-owner=<owner key>` in its external_ids, so that a
//! restarted agent can tell its ports from others' and remove the orphans.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use tartan_dataplane::{Netlink, PortSpec, PortType};

use crate::networks::driver::{
    AttachStatus, AttachmentDriver, AttachmentSpec, HostSide, Registration,
};
use crate::networks::ovsdb::OvsdbHandle;
use crate::teardown::Teardown;

/// The external_ids key naming who a port or bridge Tartan made is for.
pub const OWNER_KEY: &str = "tartan-owner";

/// The external_ids of something made for `owner`.
pub fn owned_by(owner: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(OWNER_KEY.to_string(), owner.to_string())])
}

pub const REGISTRATION: Registration = Registration {
    name: "ovs",
    options: &["bridge", "vlan"],
    named_networks: true,
    network_device: Some(|short_id| format!("ovs{short_id}")),
    make: |context| {
        Arc::new(OvsDriver::new(
            context.netlink.clone(),
            context.ovsdb.clone(),
            context.host_interface.to_string(),
        ))
    },
};

pub struct OvsDriver {
    netlink: Netlink,
    ovsdb: Arc<OvsdbHandle>,
    bridge: String,
}

impl OvsDriver {
    /// The switch port of `spec`'s host end.
    fn port(&self, spec: &AttachmentSpec) -> PortSpec {
        PortSpec {
            bridge: self.bridge.clone(),
            name: spec.host_ifname.clone(),
            port_type: PortType::System,
            tag: spec.vlan,
            external_ids: owned_by(&spec.owner),
        }
    }

    pub fn new(netlink: Netlink, ovsdb: Arc<OvsdbHandle>, bridge: String) -> OvsDriver {
        OvsDriver {
            netlink,
            ovsdb,
            bridge,
        }
    }
}

#[async_trait::async_trait]
impl AttachmentDriver for OvsDriver {
    fn kind(&self) -> &'static str {
        "ovs"
    }

    async fn setup(&self, spec: &AttachmentSpec) -> Result<AttachStatus> {
        self.validate(spec)?;
        let ovsdb = self.ovsdb.get().await?;
        // A port of an earlier run names a device that went with its
        // namespace; the switch takes the new one only as a new port.
        self.teardown(&AttachStatus::of_veth(self.kind(), spec))
            .await
            .map_err(anyhow::Error::new)?;
        let veth = spec.veth(None);
        self.netlink.attach_veth(&veth).await?;
        if let Err(err) = self
            .ovsdb
            .check(ovsdb.ensure_port(&self.port(spec)).await)
            .await
        {
            let undo = self.netlink.detach_veth(&veth.host_name).await;
            return Err(crate::teardown::undone(err, undo));
        }
        Ok(AttachStatus::of_veth(self.kind(), spec))
    }

    async fn ensure_host_side(&self, side: &HostSide) -> Result<()> {
        let ovsdb = self.ovsdb.get().await?;
        self.ovsdb
            .check(
                ovsdb
                    .ensure_bridge(&self.bridge, &owned_by(&side.owner))
                    .await,
            )
            .await?;
        Ok(())
    }

    async fn remove_host_side(&self, _only_if_unused: bool) -> Result<()> {
        // A host without a reachable switch has no bridge of it (`network
        // rm` of an ovs network reaches every host); a port that could not
        // be removed for that has been reported by its teardown.
        let Ok(ovsdb) = self.ovsdb.get().await else {
            return Ok(());
        };
        self.ovsdb
            .check(ovsdb.remove_bridge(&self.bridge).await)
            .await?;
        Ok(())
    }

    async fn repair(&self, spec: &AttachmentSpec) -> Result<()> {
        // A veth that is there is left as it is, and gets its port again.
        if self.netlink.link(&spec.host_ifname).await?.is_none() {
            return self.setup(spec).await.map(|_| ());
        }
        let ovsdb = self.ovsdb.get().await?;
        self.ovsdb
            .check(ovsdb.ensure_port(&self.port(spec)).await)
            .await?;
        Ok(())
    }

    async fn teardown(&self, status: &AttachStatus) -> Result<(), Teardown> {
        let mut teardown = Teardown::new();
        if let Some(host) = &status.host_ifname {
            let removed = match self.ovsdb.get().await {
                Ok(ovsdb) => self.ovsdb.check(ovsdb.remove_port(host).await).await,
                Err(err) => Err(err),
            };
            teardown.step(&format!("removing OVS port {host}"), removed);
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
