//! Plugging a container's network namespace into the node bridge with a
//! veth pair, and unplugging it.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{LinkUnspec, LinkVeth};

use crate::error::netlink_err;
use crate::macvlan::enable_arp_notify;
use crate::netlink::run_in_netns;
use crate::{DataplaneError, Netlink, Result};

/// Puts the veth request's peer into the namespace behind `netns`, with
/// `mtu` and, when given, `mac`.
fn place_peer(request: &mut LinkMessage, netns: RawFd, mtu: u32, mac: Option<[u8; 6]>) {
    for attribute in &mut request.attributes {
        let LinkAttribute::LinkInfo(infos) = attribute else {
            continue;
        };
        for info in infos {
            if let LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = info {
                peer.attributes.push(LinkAttribute::NetNsFd(netns));
                peer.attributes.push(LinkAttribute::Mtu(mtu));
                if let Some(mac) = mac {
                    peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
                }
            }
        }
    }
}

/// One container interface: a veth pair whose host end joins a Linux
/// bridge, or stays unenslaved for Open vSwitch to take as a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethSpec {
    /// The container's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The host end.
    pub host_name: String,
    /// The container end, e.g. `eth0`.
    pub container_name: String,
    /// None: the interface is made and up with no address (pipework's `0/0`).
    pub address: Option<Ipv4Network>,
    /// The default route's next hop; one outside the subnet (or with no
    /// address) gets a host route first, as pipework does.
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
    /// The Linux bridge the host end joins; None leaves it on its own, up.
    pub bridge_index: Option<u32>,
    /// The container end's MAC; None lets the kernel pick one.
    pub mac: Option<[u8; 6]>,
}

impl Netlink {
    /// Creates the pair with one end already inside the container and
    /// configures both. On any failure the pair is deleted again: nothing
    /// half-made stays.
    ///
    /// The container end is created in the container's namespace (the
    /// peer's IFLA_NET_NS_FD) rather than created on the host and moved:
    /// moving a device between namespaces waits for an RCU grace period,
    /// which costs tens of milliseconds per container.
    pub async fn attach_veth(&self, spec: &VethSpec) -> Result<()> {
        let netns =
            std::fs::File::open(&spec.netns).map_err(|source| DataplaneError::EnterNetns {
                path: spec.netns.clone(),
                source,
            })?;
        let container = Netlink::connect_in_netns(&spec.netns).await?;
        if container.link(&spec.container_name).await?.is_some() {
            return Err(DataplaneError::Conflict(format!(
                "{} already has an interface named {}",
                spec.netns.display(),
                spec.container_name
            )));
        }
        if self.link(&spec.host_name).await?.is_some() {
            return Err(DataplaneError::Conflict(format!(
                "{} exists already: the container is attached",
                spec.host_name
            )));
        }
        let mut request = LinkVeth::new(&spec.host_name, &spec.container_name)
            .mtu(spec.mtu)
            .build();
        place_peer(&mut request, netns.as_raw_fd(), spec.mtu, spec.mac);
        self.handle
            .link()
            .add(request)
            .execute()
            .await
            .map_err(netlink_err("veth add"))?;
        let result = self.finish_attach(spec, &container).await;
        if let Err(failed) = result {
            // The pair goes with its host end, wherever the other end got to.
            return Err(failed.undone(self.delete_link_named(&spec.host_name).await));
        }
        result
    }

    async fn finish_attach(&self, spec: &VethSpec, container: &Netlink) -> Result<()> {
        let missing =
            |name: &str| DataplaneError::Conflict(format!("{name} vanished while attaching"));
        let inner = container
            .link(&spec.container_name)
            .await?
            .ok_or_else(|| missing(&spec.container_name))?;
        // The kernel announces the address itself (a gratuitous ARP) when
        // the link comes up.
        let name = spec.container_name.clone();
        run_in_netns(&spec.netns, move |path| {
            enable_arp_notify(&name).map_err(|source| DataplaneError::EnterNetns {
                path: path.to_path_buf(),
                source,
            })
        })
        .await?;
        if let Some(address) = spec.address {
            container
                .handle
                .address()
                .add(inner.index, address.ip().into(), address.prefix())
                .execute()
                .await
                .map_err(netlink_err("container address add"))?;
        }
        container.set_up_with_mtu(inner.index, spec.mtu).await?;
        container.set_loopback_up().await?;
        if let Some(gateway) = spec.gateway {
            container
                .route_via_gateway(inner.index, spec.address, gateway)
                .await?;
        }

        let host = self
            .link(&spec.host_name)
            .await?
            .ok_or_else(|| missing(&spec.host_name))?;
        let mut plug = LinkUnspec::new_with_index(host.index).mtu(spec.mtu).up();
        if let Some(bridge) = spec.bridge_index {
            plug = plug.controller(bridge);
        }
        let plug = plug.build();
        self.handle
            .link()
            .set(plug)
            .execute()
            .await
            .map_err(netlink_err("veth to bridge"))?;
        Ok(())
    }

    /// Brings `lo` up in the network namespace at `netns`: all a container
    /// with no network (`--net none`) gets.
    pub async fn loopback_up(netns: &Path) -> Result<()> {
        Netlink::connect_in_netns(netns)
            .await?
            .set_loopback_up()
            .await
    }

    /// Deletes the host end (the container end goes with it). Returns
    /// whether there was anything to delete.
    pub async fn detach_veth(&self, host_name: &str) -> Result<bool> {
        match self.link(host_name).await? {
            Some(link) => {
                self.delete_link(link.index).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}
