//! A host's part of the named networks: claiming a container's address on
//! one (fabric-wide, in etcd), making its interface with the network's
//! driver, and undoing both.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use ipnetwork::Ipv4Network;
use tartan_dataplane::{MacvlanMode, Netlink};
use tartan_runtime::container::Endpoint;

use crate::networks::attach::host_ifname_for;
use crate::networks::driver::{
    container_mac, AttachStatus, AttachmentDriver, AttachmentSpec, DriverContext, HostSide,
};
use crate::networks::drivers;
use crate::networks::drivers::ovs::OWNER_KEY;
use crate::networks::ovsdb::OvsdbHandle;
use crate::networks::store::{AddressHolder, NetworkDef, NetworkStore};

/// What the owner of a container's attachment on a named network starts
/// with (an OVS port's `tartan-owner`); the container's id follows.
const CONTAINER_OWNER_PREFIX: &str = "container:";

/// The MTU of a bridge network's bridge and interfaces, as Docker's.
const BRIDGE_MTU: u32 = 1500;

/// The drivers a named network may have.
pub fn check_driver_available(driver: &str) -> Result<()> {
    drivers::for_named_network(driver).map(|_| ())
}

/// The host end of a container's interface: derived from the container and
/// interface, so that it is found again without a record.
fn host_ifname(container: &str, ifname: &str) -> String {
    host_ifname_for(&format!("net:{container}:{ifname}"))
}

/// A stable, locally administered MAC for a network's bridge.
fn bridge_mac(id: &str) -> [u8; 6] {
    let mut mac = [0x02, 0x42, 0, 0, 0, 0];
    for (i, byte) in mac.iter_mut().skip(2).enumerate() {
        *byte = id
            .get(i * 2..i * 2 + 2)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .unwrap_or(0);
    }
    mac
}

/// The device an endpoint's driver hangs off, and whether the agent made
/// it (and may remove it): a bridge named with `-o bridge=` is the
/// operator's, and a driver without a device of its own (macvlan) has
/// none. The name is the driver's, from the network id (Docker's `br-` and
/// the id's first 12 digits for a Linux bridge).
fn endpoint_bridge(endpoint: &Endpoint) -> Result<Option<(String, bool)>> {
    let registration = drivers::registration(&endpoint.driver)?;
    let Some(device_name) = registration.network_device else {
        return Ok(None);
    };
    Ok(Some(match endpoint.options.get("bridge") {
        Some(name) => (name.clone(), false),
        None => (
            device_name(&endpoint.network_id[..12.min(endpoint.network_id.len())]),
            true,
        ),
    }))
}

/// What the external_ids owner of an OVS bridge made for a network starts
/// with; the network's id follows.
pub const NETWORK_OWNER_PREFIX: &str = "tartan-network:";

/// The external_ids owner of an OVS bridge made for a network.
fn network_owner(network_id: &str) -> String {
    format!("{NETWORK_OWNER_PREFIX}{network_id}")
}

/// Named networks on this host; cheap to clone.
#[derive(Clone)]
pub struct NamedNetworks {
    store: NetworkStore,
    netlink: Netlink,
    /// This agent's public address, recorded with its claims.
    host: String,
    /// One driver per network, by id: a driver keeps track of what its
    /// attachments share (a macvlan's VLAN device).
    drivers: Arc<std::sync::Mutex<HashMap<String, Arc<dyn AttachmentDriver>>>>,
    /// Open vSwitch, shared with `tartan attach`; connected when first needed.
    ovsdb: Arc<OvsdbHandle>,
    /// Held while a bridge is made or removed, so that two containers
    /// joining at once do not both make it, nor one remove it under the other.
    bridges: Arc<tokio::sync::Mutex<()>>,
}

impl NamedNetworks {
    pub fn new(
        store: NetworkStore,
        netlink: Netlink,
        ovsdb: Arc<OvsdbHandle>,
        host: String,
    ) -> NamedNetworks {
        NamedNetworks {
            store,
            netlink,
            ovsdb,
            host,
            drivers: Arc::default(),
            bridges: Arc::default(),
        }
    }

    /// The network's driver, made on first use.
    fn driver(&self, endpoint: &Endpoint) -> Result<Arc<dyn AttachmentDriver>> {
        let mut made = self
            .drivers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(driver) = made.get(&endpoint.network_id) {
            return Ok(driver.clone());
        }
        let registration = drivers::registration(&endpoint.driver)?;
        // A driver taking `parent` sits on it; the others plug into a bridge.
        let host_interface = if registration.options.contains(&"parent") {
            endpoint.options.get("parent").cloned().ok_or_else(|| {
                anyhow!(
                    "{} network {} has no parent",
                    registration.name,
                    endpoint.network
                )
            })?
        } else {
            endpoint_bridge(endpoint)?
                .map(|(bridge, _)| bridge)
                .ok_or_else(|| {
                    anyhow!(
                        "{} network {} has neither a parent nor a bridge",
                        registration.name,
                        endpoint.network
                    )
                })?
        };
        let macvlan_mode = match endpoint.options.get("macvlan_mode") {
            Some(mode) => mode.parse()?,
            None => MacvlanMode::Bridge,
        };
        let driver = (registration.make)(&DriverContext {
            netlink: &self.netlink,
            ovsdb: &self.ovsdb,
            host_interface: &host_interface,
            macvlan_mode,
        });
        made.insert(endpoint.network_id.clone(), driver.clone());
        Ok(driver)
    }

    fn spec(&self, endpoint: &Endpoint, container: &str, netns: PathBuf) -> Result<AttachmentSpec> {
        let address = endpoint_address(endpoint)?;
        let vlan = match endpoint.options.get("vlan") {
            Some(vlan) => Some(tartan_dataplane::parse_vlan_id(vlan)?),
            None => None,
        };
        Ok(AttachmentSpec {
            netns,
            ifname: endpoint.ifname.clone(),
            host_ifname: host_ifname(container, &endpoint.ifname),
            address: Some(address),
            gateway: if endpoint.default_route {
                endpoint.gateway
            } else {
                None
            },
            mtu: BRIDGE_MTU,
            mac: Some(container_mac(address.ip())),
            vlan,
            owner: format!("{CONTAINER_OWNER_PREFIX}{container}"),
            host_shim: false,
        })
    }

    pub fn store(&self) -> &NetworkStore {
        &self.store
    }

    /// Claims the container's address on `def` for its interface `ifname`;
    /// returns the endpoint to record.
    pub async fn join(
        &self,
        def: &NetworkDef,
        container: (&str, &str),
        ifname: &str,
        requested: Option<Ipv4Addr>,
        default_route: bool,
    ) -> Result<Endpoint> {
        check_driver_available(&def.driver)?;
        let (id, name) = container;
        let holder = AddressHolder {
            host: self.host.clone(),
            container: id.to_string(),
            name: name.to_string(),
            interface: ifname.to_string(),
        };
        let addr = self.store.claim(def, &holder, requested).await?;
        Ok(Endpoint {
            network: def.name.clone(),
            network_id: def.id.clone(),
            driver: def.driver.clone(),
            options: def.options.clone(),
            ifname: ifname.to_string(),
            address: Ipv4Network::new(addr, def.subnet.prefix())?.to_string(),
            gateway: Some(def.gateway),
            default_route,
        })
    }

    /// Frees the endpoint's address.
    pub async fn leave(&self, endpoint: &Endpoint, container: &str) -> Result<()> {
        let addr = endpoint_address(endpoint)?;
        self.store
            .release(&endpoint.network, addr.ip(), container)
            .await?;
        Ok(())
    }

    /// Removes the OVS ports (and their host ends) of named networks made
    /// for containers that `alive` says are gone: a crash between removing
    /// a container and its port leaves one. Without a reachable switch
    /// there is nothing of it here.
    pub async fn remove_orphan_ports(&self, alive: impl Fn(&str) -> bool) -> Result<()> {
        let Ok(ovsdb) = self.ovsdb.get().await else {
            return Ok(());
        };
        for port in self.ovsdb.check(ovsdb.ports().await).await? {
            let Some(id) = port
                .external_ids
                .get(OWNER_KEY)
                .and_then(|owner| owner.strip_prefix(CONTAINER_OWNER_PREFIX))
            else {
                continue;
            };
            if alive(id) {
                continue;
            }
            tracing::warn!(port = %port.name, container = %id, "removing the OVS port of a container that no longer exists");
            self.ovsdb
                .check(ovsdb.remove_port(&port.name).await)
                .await
                .with_context(|| format!("removing the OVS port {}", port.name))?;
            self.netlink
                .detach_veth(&port.name)
                .await
                .with_context(|| format!("removing {}", port.name))?;
        }
        Ok(())
    }

    /// Frees the addresses this host claimed for containers that `alive`
    /// says are gone.
    pub async fn release_orphans(&self, alive: impl Fn(&str) -> bool) -> Result<()> {
        for def in self.store.list().await? {
            for (addr, holder) in self.store.holders(&def.name).await? {
                if holder.host != self.host || alive(&holder.container) {
                    continue;
                }
                if self
                    .store
                    .release(&def.name, addr, &holder.container)
                    .await?
                {
                    tracing::warn!(network = %def.name, address = %addr, container = %holder.name, "freed the address of a container that no longer exists");
                }
            }
        }
        Ok(())
    }

    /// Makes the endpoint's interface in the namespace `netns`.
    pub async fn plug(&self, endpoint: &Endpoint, container: &str, netns: PathBuf) -> Result<()> {
        check_driver_available(&endpoint.driver)?;
        let spec = self.spec(endpoint, container, netns)?;
        let driver = self.driver(endpoint)?;
        let _bridges = self.bridges.lock().await;
        if let Some((bridge, _)) = endpoint_bridge(endpoint)? {
            // The network's gateway, for a driver whose device carries it
            // (a Linux bridge, as Docker's).
            let gateway = match endpoint.gateway {
                Some(gateway) => Some((
                    Ipv4Network::new(gateway, endpoint_address(endpoint)?.prefix())?,
                    bridge_mac(&endpoint.network_id),
                )),
                None => None,
            };
            driver
                .ensure_host_side(&HostSide {
                    owner: network_owner(&endpoint.network_id),
                    gateway,
                })
                .await
                .with_context(|| {
                    format!(
                        "making {bridge}, the bridge of network {}",
                        endpoint.network
                    )
                })?;
        }
        driver
            .setup(&spec)
            .await
            .with_context(|| format!("joining network {}", endpoint.network))?;
        Ok(())
    }

    /// Removes the endpoint's interface from the namespace `netns`, if it
    /// is there.
    pub async fn unplug(&self, endpoint: &Endpoint, container: &str, netns: PathBuf) -> Result<()> {
        let driver = self.driver(endpoint)?;
        let spec = self.spec(endpoint, container, netns)?;
        let made = AttachStatus {
            driver: driver.kind(),
            ifname: spec.ifname,
            host_ifname: driver.has_host_end().then_some(spec.host_ifname),
            address: spec.address,
            netns: spec.netns,
            vlan: spec.vlan,
            host_shim: None,
            owner: spec.owner,
        };
        driver.teardown(&made).await.map_err(anyhow::Error::new)?;
        Ok(())
    }

    /// Removes the network's bridge on this host, when the agent made it
    /// and `still_unused` says, under the bridges' lock, that no container
    /// here is on the network.
    pub async fn remove_bridge(
        &self,
        endpoint: &Endpoint,
        still_unused: impl FnOnce() -> bool,
    ) -> Result<()> {
        let Some((bridge, true)) = endpoint_bridge(endpoint)? else {
            return Ok(());
        };
        let _bridges = self.bridges.lock().await;
        if !still_unused() {
            return Ok(());
        }
        self.driver(endpoint)?
            .remove_host_side(false)
            .await
            .with_context(|| format!("removing the bridge {bridge}"))?;
        Ok(())
    }

    /// Removes a network's bridge on this host after `network rm`.
    pub async fn remove_bridge_of(&self, def: &NetworkDef) -> Result<()> {
        let endpoint = Endpoint {
            network: def.name.clone(),
            network_id: def.id.clone(),
            driver: def.driver.clone(),
            options: def.options.clone(),
            ifname: String::new(),
            address: String::new(),
            gateway: None,
            default_route: false,
        };
        self.remove_bridge(&endpoint, || true).await
    }
}

fn endpoint_address(endpoint: &Endpoint) -> Result<Ipv4Network> {
    endpoint.address.parse().map_err(|_| {
        anyhow!(
            "the recorded address {:?} on {} is not ADDR/LEN",
            endpoint.address,
            endpoint.network
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridges_get_docker_s_names_and_a_stable_local_mac() {
        let id = "0123456789abcdef".repeat(4);
        let mac = bridge_mac(&id);
        assert_eq!(mac, [0x02, 0x42, 0x01, 0x23, 0x45, 0x67]);
        assert_eq!(mac[0] & 0x03, 0x02, "locally administered unicast");
        let endpoint = Endpoint {
            network: "n".into(),
            network_id: id,
            driver: "bridge".into(),
            options: Default::default(),
            ifname: "eth1".into(),
            address: "10.1.1.2/24".into(),
            gateway: None,
            default_route: false,
        };
        let bridge = |driver: &str, options: &[(&str, &str)]| {
            let endpoint = Endpoint {
                driver: driver.into(),
                options: options
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..endpoint.clone()
            };
            endpoint_bridge(&endpoint).expect("a registered driver")
        };
        assert_eq!(
            bridge("bridge", &[]),
            Some(("br-0123456789ab".into(), true))
        );
        assert_eq!(bridge("ovs", &[]), Some(("ovs0123456789ab".into(), true)));
        assert_eq!(
            bridge("bridge", &[("bridge", "br0")]),
            Some(("br0".into(), false)),
            "the operator's"
        );
        assert_eq!(bridge("macvlan", &[("parent", "eth0")]), None);
        assert_ne!(host_ifname("a", "eth0"), host_ifname("a", "eth1"));
        assert_eq!(
            container_mac(Ipv4Addr::new(10, 1, 1, 10)),
            [0x02, 0x42, 10, 1, 1, 10]
        );
    }
}
