//! A veth pair onto the flat L2 segment's bridge (`tartan-l2`), weave's
//! model: containers of every host in one subnet, as on one switch. The
//! container side is `ethwe` unless asked otherwise
//! (`tartan_dataplane::L2_SEGMENT_IFNAME`, for the caller to default to),
//! and it gets no default route unless a gateway is asked for: the segment
//! is an extra interface next to the container's own.
//!
//! The segment itself (bridge, VXLAN device, FDB towards the peers) is kept
//! by the daemon, not here: a missing segment fails the attachment.

use std::sync::Arc;

use anyhow::{bail, Result};
use tartan_dataplane::{Netlink, L2_SEGMENT_BRIDGE, L2_SEGMENT_VXLAN};

use crate::networks::driver::{AttachStatus, AttachmentDriver, AttachmentSpec, Registration};
use crate::networks::drivers::bridge::BridgeDriver;
use crate::teardown::Teardown;

/// Not for named networks until the daemon keeps the segment for them; its
/// bridge is always the segment's.
pub const REGISTRATION: Registration = Registration {
    name: "l2segment",
    options: &[],
    named_networks: false,
    network_device: None,
    make: |context| Arc::new(L2SegmentDriver::new(context.netlink.clone())),
};

pub struct L2SegmentDriver {
    netlink: Netlink,
    /// The segment's bridge is a Linux bridge: plugging into it is the bridge driver's.
    bridge: BridgeDriver,
}

/// The MTU of a container side: never above the segment's, whose VXLAN
/// device drops what does not fit once encapsulated.
fn container_mtu(requested: u32, segment: u32) -> u32 {
    requested.min(segment)
}

impl L2SegmentDriver {
    pub fn new(netlink: Netlink) -> L2SegmentDriver {
        L2SegmentDriver {
            bridge: BridgeDriver::new(netlink.clone(), L2_SEGMENT_BRIDGE.to_string()),
            netlink,
        }
    }

    /// The MTU of the segment on this host: its VXLAN device's.
    async fn segment_mtu(&self) -> Result<u32> {
        match self.netlink.link(L2_SEGMENT_VXLAN).await? {
            Some(vxlan) => Ok(vxlan.mtu),
            None => {
                bail!("the L2 segment is not set up on this host ({L2_SEGMENT_VXLAN} is missing)")
            }
        }
    }
}

#[async_trait::async_trait]
impl AttachmentDriver for L2SegmentDriver {
    fn kind(&self) -> &'static str {
        "l2segment"
    }

    /// The segment is one flat broadcast domain: it has no VLANs, and the
    /// host is not on it, so there is nothing for a host shim to reach.
    fn validate(&self, spec: &AttachmentSpec) -> Result<()> {
        if let Some(vlan) = spec.vlan {
            bail!("the L2 segment has no VLANs (asked for VLAN {vlan})");
        }
        if spec.host_shim {
            bail!("the L2 segment takes no host shim");
        }
        self.bridge.validate(spec)
    }

    async fn setup(&self, spec: &AttachmentSpec) -> Result<AttachStatus> {
        self.validate(spec)?;
        let spec = AttachmentSpec {
            mtu: container_mtu(spec.mtu, self.segment_mtu().await?),
            ..spec.clone()
        };
        let made = self.bridge.setup(&spec).await?;
        Ok(AttachStatus {
            driver: self.kind(),
            ..made
        })
    }

    async fn teardown(&self, status: &AttachStatus) -> Result<(), Teardown> {
        self.bridge.teardown(status).await
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tartan_dataplane::{L2SegmentSpec, L2_SEGMENT_IFNAME};
    use tartan_tests::netns::{ip, Netns};

    use super::*;

    fn spec(netns: &Netns) -> AttachmentSpec {
        AttachmentSpec {
            netns: netns.path(),
            ifname: L2_SEGMENT_IFNAME.into(),
            host_ifname: "vtl2test0".into(),
            address: Some("10.162.0.5/24".parse().expect("cidr")),
            gateway: None,
            mtu: 1500,
            mac: None,
            vlan: None,
            owner: "netns:l2test".into(),
            host_shim: false,
        }
    }

    #[test]
    fn the_container_side_never_exceeds_the_segment() {
        assert_eq!(container_mtu(1500, 1450), 1450);
        assert_eq!(container_mtu(1400, 1450), 1400);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_container_is_plugged_into_the_segment_and_unplugged() -> anyhow::Result<()> {
        let host = Netns::create("l2d")?;
        let container = Netns::create("l2dc")?;
        let netlink = Netlink::connect_in_netns(&host.path()).await?;
        let driver = L2SegmentDriver::new(netlink.clone());
        let spec = spec(&container);

        let refused = driver
            .setup(&AttachmentSpec {
                vlan: Some(10),
                ..spec.clone()
            })
            .await
            .expect_err("a VLAN on the segment");
        assert!(refused.to_string().contains("no VLANs"), "{refused}");
        let missing = driver.setup(&spec).await.expect_err("no segment yet");
        assert!(
            missing.to_string().contains("not set up on this host"),
            "{missing}"
        );

        ip(&[
            "-n",
            host.name(),
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "up0p",
        ])?;
        ip(&["-n", host.name(), "link", "set", "up0", "up"])?;
        let up0 = netlink.link("up0").await?.expect("up0");
        netlink
            .ensure_l2_segment(&L2SegmentSpec::new(
                Ipv4Addr::new(10, 162, 1, 1),
                up0.index,
                1500,
            ))
            .await?;

        let made = driver.setup(&spec).await?;
        assert_eq!(made.driver, "l2segment");
        assert_eq!(made.host_ifname.as_deref(), Some("vtl2test0"));
        let inside = container.exec("ip", &["-o", "addr", "show", "ethwe"])?;
        let inside = String::from_utf8_lossy(&inside.stdout);
        assert!(inside.contains("10.162.0.5/24"), "{inside}");
        let link = container.exec("ip", &["-o", "link", "show", "ethwe"])?;
        let link = String::from_utf8_lossy(&link.stdout);
        assert!(link.contains("mtu 1450"), "{link}");
        let routes = container.exec("ip", &["route", "show", "default"])?;
        assert!(routes.stdout.is_empty(), "no default route");
        let port = netlink.link("vtl2test0").await?.expect("host end");
        let bridge = netlink.link(L2_SEGMENT_BRIDGE).await?.expect("bridge");
        assert_eq!(port.controller, Some(bridge.index));

        driver.teardown(&made).await.map_err(anyhow::Error::new)?;
        assert!(netlink.link("vtl2test0").await?.is_none());
        let gone = container.exec("ip", &["link", "show", "ethwe"])?;
        assert!(!gone.status.success(), "ethwe went with its pair");
        Ok(())
    }
}
