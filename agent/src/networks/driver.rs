//! The seam between networks and the ways a namespace is plugged into one:
//! a veth onto a Linux bridge, a macvlan on a parent, a veth whose host end
//! is an Open vSwitch port; each a module of `drivers/` behind this trait.
//!
//! A driver is told exactly what to make (`AttachmentSpec`), checks it
//! before anything exists (`validate`), makes it (`setup`) and says what it
//! made (`AttachStatus`), which is what gets recorded, so that a restart or
//! a detach removes exactly that (`teardown`, which tries every step).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use ipnetwork::Ipv4Network;
use tartan_dataplane::{MacvlanMode, Netlink};

use crate::networks::ovsdb::OvsdbHandle;
use crate::teardown::Teardown;

/// One interface to make in a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentSpec {
    /// The network namespace file.
    pub netns: PathBuf,
    /// The interface's name inside the namespace (`eth0`).
    pub ifname: String,
    /// The host's end, for drivers that have one (a veth's).
    pub host_ifname: String,
    /// The address with its network's prefix; None makes the interface up
    /// with no address and no route (pipework's `0/0`).
    pub address: Option<Ipv4Network>,
    /// The default route's next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
    /// The container side's MAC; None lets the kernel pick one.
    pub mac: Option<[u8; 6]>,
    /// The VLAN the interface is an access port of, 1 to 4094.
    pub vlan: Option<u16>,
    /// Who the attachment is for (an owner key such as `netns:c1`): named
    /// on what a driver makes outside the namespace, such as OVS ports.
    pub owner: String,
    /// Give the host a way to the container where the driver keeps it
    /// from the host otherwise (a macvlan's parent).
    pub host_shim: bool,
}

/// What a driver made, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachStatus {
    /// The driver that made it (`AttachmentDriver::kind`).
    pub driver: &'static str,
    pub ifname: String,
    /// The host's end, when there is one.
    pub host_ifname: Option<String>,
    /// None when the interface has no address (pipework's `0/0`).
    pub address: Option<Ipv4Network>,
    /// The namespace the interface is in.
    pub netns: PathBuf,
    /// The VLAN it is on, if any (on a macvlan: through `PARENT.VLAN`).
    pub vlan: Option<u16>,
    /// The host shim carrying a route to it, if any.
    pub host_shim: Option<String>,
    /// Who it is for (`AttachmentSpec::owner`).
    pub owner: String,
}

impl AttachmentSpec {
    /// The veth pair this spec asks for, its host end on `bridge_index`
    /// when the bridge is a Linux one.
    pub fn veth(&self, bridge_index: Option<u32>) -> tartan_dataplane::VethSpec {
        tartan_dataplane::VethSpec {
            netns: self.netns.clone(),
            host_name: self.host_ifname.clone(),
            container_name: self.ifname.clone(),
            address: self.address,
            gateway: self.gateway,
            mtu: self.mtu,
            bridge_index,
            mac: self.mac,
        }
    }
}

impl AttachStatus {
    /// What a veth-based driver made for `spec`: the pair's two ends.
    pub fn of_veth(driver: &'static str, spec: &AttachmentSpec) -> AttachStatus {
        AttachStatus {
            driver,
            ifname: spec.ifname.clone(),
            host_ifname: Some(spec.host_ifname.clone()),
            address: spec.address,
            netns: spec.netns.clone(),
            vlan: spec.vlan,
            host_shim: None,
            owner: spec.owner.clone(),
        }
    }
}

/// A gateway needs an address beside it, and another one.
pub fn check_gateway(spec: &AttachmentSpec) -> Result<()> {
    match (spec.address, spec.gateway) {
        (None, Some(gateway)) => {
            anyhow::bail!("gateway {gateway} with no address: 0/0 takes no gateway")
        }
        (Some(address), Some(gateway)) if address.ip() == gateway => {
            anyhow::bail!("gateway {gateway} is the container's own address")
        }
        _ => Ok(()),
    }
}

/// Docker's MAC for a container address on a bridge network: 02:42 and
/// the address, so that neighbours' caches stay right when the container
/// comes back with the same address.
pub fn container_mac(addr: Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = addr.octets();
    [0x02, 0x42, a, b, c, d]
}

/// One way to put an interface into a network namespace.
#[async_trait::async_trait]
pub trait AttachmentDriver: Send + Sync {
    /// The driver's name, as networks and records name it.
    fn kind(&self) -> &'static str;

    /// Refuses what cannot be made, before anything is.
    fn validate(&self, spec: &AttachmentSpec) -> Result<()> {
        tartan_dataplane::check_ifname(&spec.ifname)?;
        tartan_dataplane::check_ifname(&spec.host_ifname)?;
        if let Some(vlan) = spec.vlan {
            tartan_dataplane::check_vlan_id(vlan)?;
        }
        check_gateway(spec)
    }

    /// Makes the interface; nothing stays half-made when it fails.
    async fn setup(&self, spec: &AttachmentSpec) -> Result<AttachStatus>;

    /// Removes what `setup` made, trying every step.
    async fn teardown(&self, status: &AttachStatus) -> Result<(), Teardown>;

    /// Whether its attachments have an end on the host (a veth's).
    fn has_host_end(&self) -> bool {
        true
    }

    /// Makes the device its attachments hang off (a bridge), for a driver
    /// that has one to make; idempotent.
    async fn ensure_host_side(&self, _side: &HostSide) -> Result<()> {
        Ok(())
    }

    /// Removes that device, once the caller knows none of its own
    /// attachments uses it; `only_if_unused` keeps it while anything else
    /// is plugged in (an operator's bridge may carry ports of others).
    async fn remove_host_side(&self, _only_if_unused: bool) -> Result<()> {
        Ok(())
    }

    /// Makes a recorded attachment whole again, leaving what is in place.
    async fn repair(&self, spec: &AttachmentSpec) -> Result<()> {
        self.setup(spec).await.map(|_| ())
    }
}

/// What the device a driver's attachments hang off is made with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSide {
    /// Whose it is, where the device can carry that (OVS external_ids).
    pub owner: String,
    /// The address the device carries as its network's gateway, and the
    /// device's MAC; none for a plain bridge (pipework's).
    pub gateway: Option<(Ipv4Network, [u8; 6])>,
}

/// What a driver is made with: the host's handles, and where it plugs in.
pub struct DriverContext<'a> {
    pub netlink: &'a Netlink,
    pub ovsdb: &'a Arc<OvsdbHandle>,
    /// The bridge the driver's veths join, or a macvlan's parent.
    pub host_interface: &'a str,
    pub macvlan_mode: MacvlanMode,
}

pub type MakeDriver = fn(&DriverContext) -> Arc<dyn AttachmentDriver>;

/// One driver, as `DRIVERS` lists it.
pub struct Registration {
    /// As networks and records name it (`AttachmentDriver::kind`).
    pub name: &'static str,
    /// The `-o` options a network of it takes; `parent`, when taken, is
    /// required (the interface a macvlan sits on has no default).
    pub options: &'static [&'static str],
    /// Whether `network create --driver` may name it.
    pub named_networks: bool,
    /// The name of the device a network of it hangs off, made by the
    /// agent, from the network id's first 12 digits (Docker's `br-` and
    /// the digits); None for a driver that plugs into an existing one.
    pub network_device: Option<fn(&str) -> String>,
    pub make: MakeDriver,
}
