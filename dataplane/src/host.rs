//! Finding the host's public interface: the one named by the operator, the
//! one carrying a given address, or the one the default route leaves by.
//!
//! The choice is made by pure functions over plain snapshots of the kernel's
//! links, addresses and routes, so that the rules have tests without root.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::link::LinkAttribute;
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::RouteMessageBuilder;

use crate::error::netlink_err;
use crate::{DataplaneError, Netlink, Result};

/// Linux's limit on interface names (IFNAMSIZ less the terminating NUL).
const MAX_IFNAME_LEN: usize = 15;

/// A host interface as the agent needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInterface {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub prefix_len: u8,
}

/// How the operator names the public interface: `--iface eth0` or `--iface 192.168.1.10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSelector {
    Name(String),
    Address(Ipv4Addr),
}

impl FromStr for InterfaceSelector {
    type Err = DataplaneError;

    fn from_str(text: &str) -> Result<Self> {
        if let Ok(addr) = text.parse::<Ipv4Addr>() {
            return Ok(InterfaceSelector::Address(addr));
        }
        let valid = !text.is_empty()
            && text.len() <= MAX_IFNAME_LEN
            && text != "."
            && text != ".."
            && !text
                .bytes()
                .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0);
        if valid {
            Ok(InterfaceSelector::Name(text.to_string()))
        } else {
            Err(DataplaneError::BadSelector(text.to_string()))
        }
    }
}

impl std::fmt::Display for InterfaceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterfaceSelector::Name(name) => f.write_str(name),
            InterfaceSelector::Address(addr) => write!(f, "{addr}"),
        }
    }
}

/// A snapshot of one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkEntry {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
}

/// A snapshot of one IPv4 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AddrEntry {
    pub index: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub global: bool,
}

/// A snapshot of one IPv4 default route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DefaultRoute {
    pub oif: u32,
    pub metric: u32,
    pub pref_src: Option<Ipv4Addr>,
}

/// Builds the interface record for a link: its preferred address if it
/// carries it, else its first global address, else its first address.
pub(crate) fn describe(
    link: &LinkEntry,
    addrs: &[AddrEntry],
    preferred: Option<Ipv4Addr>,
) -> HostInterface {
    let mine: Vec<&AddrEntry> = addrs.iter().filter(|a| a.index == link.index).collect();
    let chosen = preferred
        .and_then(|p| mine.iter().find(|a| a.ip == p))
        .or_else(|| mine.iter().find(|a| a.global))
        .or_else(|| mine.first());
    HostInterface {
        name: link.name.clone(),
        index: link.index,
        mtu: link.mtu,
        ipv4: chosen.map(|a| a.ip),
        prefix_len: chosen.map(|a| a.prefix_len).unwrap_or(0),
    }
}

/// The default route with the lowest metric.
pub(crate) fn best_default(routes: &[DefaultRoute]) -> Option<&DefaultRoute> {
    routes.iter().min_by_key(|r| r.metric)
}

impl Netlink {
    async fn links(&self) -> Result<Vec<LinkEntry>> {
        crate::error::redo_interrupted(|| self.links_once()).await
    }

    async fn links_once(&self) -> Result<Vec<LinkEntry>> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(netlink_err("link dump"))? {
            let mut name = None;
            let mut mtu = 0;
            for attr in &msg.attributes {
                match attr {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::Mtu(m) => mtu = *m,
                    _ => {}
                }
            }
            if let Some(name) = name {
                links.push(LinkEntry {
                    index: msg.header.index,
                    name,
                    mtu,
                });
            }
        }
        Ok(links)
    }

    async fn ipv4_addresses(&self) -> Result<Vec<AddrEntry>> {
        crate::error::redo_interrupted(|| self.ipv4_addresses_once()).await
    }

    async fn ipv4_addresses_once(&self) -> Result<Vec<AddrEntry>> {
        let mut stream = self.handle.address().get().execute();
        let mut addrs = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(netlink_err("address dump"))?
        {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on point-to-point links.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                addrs.push(AddrEntry {
                    index: msg.header.index,
                    ip,
                    prefix_len: msg.header.prefix_len,
                    global: msg.header.scope == AddressScope::Universe,
                });
            }
        }
        Ok(addrs)
    }

    async fn default_routes(&self) -> Result<Vec<DefaultRoute>> {
        crate::error::redo_interrupted(|| self.default_routes_once()).await
    }

    async fn default_routes_once(&self) -> Result<Vec<DefaultRoute>> {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut stream = self.handle.route().get(request).execute();
        let mut routes = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(netlink_err("route dump"))? {
            if msg.header.destination_prefix_length != 0 {
                continue;
            }
            let mut table = u32::from(msg.header.table);
            let mut oif = None;
            let mut metric = 0;
            let mut pref_src = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Priority(p) => metric = *p,
                    RouteAttribute::PrefSource(RouteAddress::Inet(ip)) => pref_src = Some(*ip),
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            if let Some(oif) = oif {
                routes.push(DefaultRoute {
                    oif,
                    metric,
                    pref_src,
                });
            }
        }
        Ok(routes)
    }

    /// The global IPv4 addresses of this namespace's interfaces, with their
    /// prefix lengths, in interface order.
    pub async fn global_ipv4_addresses(&self) -> Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .ipv4_addresses()
            .await?
            .into_iter()
            .filter(|a| a.global)
            .map(|a| (a.ip, a.prefix_len))
            .collect())
    }

    /// The interface of the IPv4 default route (lowest metric), if there is one.
    pub async fn default_route_interface(&self) -> Result<Option<HostInterface>> {
        let routes = self.default_routes().await?;
        let Some(route) = best_default(&routes) else {
            return Ok(None);
        };
        let links = self.links().await?;
        let addrs = self.ipv4_addresses().await?;
        Ok(links
            .iter()
            .find(|l| l.index == route.oif)
            .map(|link| describe(link, &addrs, route.pref_src)))
    }

    pub async fn interface_by_name(&self, name: &str) -> Result<Option<HostInterface>> {
        let links = self.links().await?;
        let Some(link) = links.iter().find(|l| l.name == name) else {
            return Ok(None);
        };
        let addrs = self.ipv4_addresses().await?;
        Ok(Some(describe(link, &addrs, None)))
    }

    /// The interface that carries `ip`.
    pub async fn interface_by_address(&self, ip: Ipv4Addr) -> Result<Option<HostInterface>> {
        let addrs = self.ipv4_addresses().await?;
        let Some(index) = addrs.iter().find(|a| a.ip == ip).map(|a| a.index) else {
            return Ok(None);
        };
        let links = self.links().await?;
        Ok(links
            .iter()
            .find(|l| l.index == index)
            .map(|link| describe(link, &addrs, Some(ip))))
    }

    /// The interface the selector names; an error that says what is missing otherwise.
    pub async fn find_interface(&self, selector: &InterfaceSelector) -> Result<HostInterface> {
        let iface = match selector {
            InterfaceSelector::Name(name) => {
                self.interface_by_name(name).await?.ok_or_else(|| {
                    DataplaneError::NoSuchInterface(format!("no interface named {name}"))
                })?
            }
            InterfaceSelector::Address(ip) => {
                self.interface_by_address(*ip).await?.ok_or_else(|| {
                    DataplaneError::NoSuchInterface(format!("no interface carries address {ip}"))
                })?
            }
        };
        if iface.ipv4.is_none() {
            return Err(DataplaneError::NoIpv4(iface.name));
        }
        Ok(iface)
    }

    /// The selected interface, or the default route's.
    pub async fn public_interface(
        &self,
        selector: Option<&InterfaceSelector>,
    ) -> Result<HostInterface> {
        if let Some(selector) = selector {
            return self.find_interface(selector).await;
        }
        let iface = self
            .default_route_interface()
            .await?
            .ok_or(DataplaneError::NoDefaultRoute)?;
        if iface.ipv4.is_none() {
            return Err(DataplaneError::NoIpv4(iface.name));
        }
        Ok(iface)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str) -> LinkEntry {
        LinkEntry {
            index,
            name: name.into(),
            mtu: 1500,
        }
    }

    fn addr(index: u32, ip: [u8; 4], global: bool) -> AddrEntry {
        AddrEntry {
            index,
            ip: Ipv4Addr::from(ip),
            prefix_len: 24,
            global,
        }
    }

    #[test]
    fn selectors_parse() {
        assert_eq!(
            "10.0.0.1".parse::<InterfaceSelector>().ok(),
            Some(InterfaceSelector::Address(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(
            "eth0".parse::<InterfaceSelector>().ok(),
            Some(InterfaceSelector::Name("eth0".into()))
        );
        for bad in ["", "a-very-long-interface-name", "eth0/x", "a b", ".."] {
            assert!(bad.parse::<InterfaceSelector>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_lowest_metric_default_route_wins() {
        let routes = [
            DefaultRoute {
                oif: 2,
                metric: 600,
                pref_src: None,
            },
            DefaultRoute {
                oif: 3,
                metric: 100,
                pref_src: None,
            },
        ];
        assert_eq!(best_default(&routes).map(|r| r.oif), Some(3));
        assert_eq!(best_default(&[]), None);
    }

    #[test]
    fn the_preferred_then_global_address_is_chosen() {
        let addrs = [
            addr(2, [169, 254, 0, 1], false),
            addr(2, [192, 168, 1, 10], true),
            addr(2, [192, 168, 1, 11], true),
            addr(3, [10, 0, 0, 1], true),
        ];
        let eth = link(2, "eth0");
        assert_eq!(
            describe(&eth, &addrs, None).ipv4,
            Some(Ipv4Addr::new(192, 168, 1, 10))
        );
        assert_eq!(
            describe(&eth, &addrs, Some(Ipv4Addr::new(192, 168, 1, 11))).ipv4,
            Some(Ipv4Addr::new(192, 168, 1, 11))
        );
        assert_eq!(
            describe(&eth, &addrs, Some(Ipv4Addr::new(10, 0, 0, 1))).ipv4,
            Some(Ipv4Addr::new(192, 168, 1, 10)),
            "a preferred source on another link is not this link's"
        );
        assert_eq!(describe(&link(9, "lonely"), &addrs, None).ipv4, None);
    }
}
