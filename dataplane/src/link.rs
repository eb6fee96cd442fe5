//! Links as the dataplane sees them, and the operations common to every kind.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::LinkUnspec;

use crate::error::netlink_err;
use crate::{DataplaneError, Netlink, Result};

/// The VXLAN settings of a link, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VxlanInfo {
    pub vni: Option<u32>,
    pub port: Option<u16>,
    pub local: Option<Ipv4Addr>,
    pub underlay: Option<u32>,
    pub learning: Option<bool>,
    /// The GBP flag: present (true) or absent.
    pub gbp: bool,
}

/// One link, reduced to what reconciliation compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub up: bool,
    pub kind: Option<String>,
    pub controller: Option<u32>,
    pub vxlan: Option<VxlanInfo>,
}

pub(crate) fn parse_link(msg: &LinkMessage) -> Option<LinkState> {
    let mut state = LinkState {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        controller: None,
        vxlan: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => state.name = name.clone(),
            LinkAttribute::Mtu(mtu) => state.mtu = *mtu,
            LinkAttribute::Address(bytes) => state.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Controller(index) => state.controller = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => state.kind = Some(kind_name(kind)),
                        LinkInfo::Data(InfoData::Vxlan(items)) => {
                            let mut vx = VxlanInfo::default();
                            for item in items {
                                match item {
                                    InfoVxlan::Id(id) => vx.vni = Some(*id),
                                    InfoVxlan::Port(port) => vx.port = Some(*port),
                                    InfoVxlan::Local(ip) => vx.local = Some(*ip),
                                    InfoVxlan::Link(index) => vx.underlay = Some(*index),
                                    InfoVxlan::Learning(on) => vx.learning = Some(*on),
                                    InfoVxlan::Gbp => vx.gbp = true,
                                    _ => {}
                                }
                            }
                            state.vxlan = Some(vx);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (!state.name.is_empty()).then_some(state)
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Tun => "tun".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What an `ensure_*` call found: the thing made now, or there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Created,
    AlreadyThere,
}

/// The longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks an interface name before the kernel sees it, so that a bad one is
/// one clear line and nothing gets made.
pub fn check_ifname(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(DataplaneError::Invalid(format!(
            "interface name {name:?} {why}"
        )))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_IFNAME_LEN {
        return bad(&format!(
            "is longer than {MAX_IFNAME_LEN} characters ({})",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return bad("is reserved");
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return bad("has a character the kernel refuses (/, :, whitespace)");
    }
    Ok(())
}

/// `IFLA_LINK` of a link: the device it sits on (for macvlan and VLAN links).
pub(crate) fn lower_index(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    })
}

/// The kind-specific data (`IFLA_INFO_DATA`) of a link.
pub(crate) fn info_data(msg: &LinkMessage) -> Option<&InfoData> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
            LinkInfo::Data(data) => Some(data),
            _ => None,
        }),
        _ => None,
    })
}

impl Netlink {
    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<LinkState>> {
        Ok(self.link_message(name).await?.as_ref().and_then(parse_link))
    }

    /// The kernel's whole answer about the link called `name`.
    pub(crate) async fn link_message(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(msg)),
            Ok(None) => Ok(None),
            // ENODEV: no such link.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(source) => Err(DataplaneError::Netlink {
                op: "link get",
                source,
            }),
        }
    }

    /// Every link of the namespace.
    pub async fn links_state(&self) -> Result<Vec<LinkState>> {
        Ok(self
            .link_messages()
            .await?
            .iter()
            .filter_map(parse_link)
            .collect())
    }

    /// Every link of the namespace, as the kernel tells it.
    pub(crate) async fn link_messages(&self) -> Result<Vec<LinkMessage>> {
        crate::error::redo_interrupted(|| self.link_messages_once()).await
    }

    async fn link_messages_once(&self) -> Result<Vec<LinkMessage>> {
        let mut stream = self.handle.link().get().execute();
        let mut links = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(netlink_err("link dump"))? {
            links.push(msg);
        }
        Ok(links)
    }

    /// The IPv4 addresses of a link, with their prefix lengths.
    pub(crate) async fn link_ipv4_addresses(&self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>> {
        Ok(self
            .ipv4_address_messages(index)
            .await?
            .into_iter()
            .map(|(ip, msg)| (ip, msg.header.prefix_len))
            .collect())
    }

    /// The IPv4 addresses of a link, each with the message that names it
    /// (what a deletion takes).
    async fn ipv4_address_messages(&self, index: u32) -> Result<Vec<(Ipv4Addr, AddressMessage)>> {
        crate::error::redo_interrupted(|| self.ipv4_address_messages_once(index)).await
    }

    async fn ipv4_address_messages_once(
        &self,
        index: u32,
    ) -> Result<Vec<(Ipv4Addr, AddressMessage)>> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut found = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(netlink_err("address dump"))?
        {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(std::net::IpAddr::V4(ip))
                | AddressAttribute::Address(std::net::IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = ip {
                found.push((ip, msg));
            }
        }
        Ok(found)
    }

    /// Removes the link with this index. A link already gone counts as
    /// removed: a veth goes with its peer's namespace, between our listing
    /// and our delete.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
            other => other.map_err(netlink_err("link delete")),
        }
    }

    /// Deletes the link called `name` if there is one.
    pub(crate) async fn delete_link_named(&self, name: &str) -> Result<()> {
        match self.link(name).await? {
            Some(link) => self.delete_link(link.index).await,
            None => Ok(()),
        }
    }

    /// Sets a link's MAC address; `op` names the step in errors.
    pub(crate) async fn set_mac(&self, index: u32, mac: [u8; 6], op: &'static str) -> Result<()> {
        let msg = rtnetlink::LinkUnspec::new_with_index(index)
            .address(mac.to_vec())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|source| DataplaneError::Netlink { op, source })
    }

    /// Brings the namespace's loopback up, if it is not already.
    pub(crate) async fn set_loopback_up(&self) -> Result<()> {
        if let Some(lo) = self.link("lo").await? {
            if !lo.up {
                let up = LinkUnspec::new_with_index(lo.index).up().build();
                self.handle
                    .link()
                    .set(up)
                    .execute()
                    .await
                    .map_err(netlink_err("lo up"))?;
            }
        }
        Ok(())
    }

    /// Brings a link up and sets its MTU.
    pub(crate) async fn set_up_with_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(netlink_err("link set up"))
    }

    /// Makes `address/prefix_len` the only IPv4 address of the link.
    pub async fn ensure_sole_ipv4(
        &self,
        index: u32,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<()> {
        let mut present = false;
        let mut stale = Vec::new();
        for (ip, msg) in self.ipv4_address_messages(index).await? {
            if ip == address && msg.header.prefix_len == prefix_len {
                present = true;
            } else {
                stale.push(msg);
            }
        }
        for msg in stale {
            self.handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(netlink_err("address delete"))?;
        }
        if !present {
            self.handle
                .address()
                .add(index, address.into(), prefix_len)
                .execute()
                .await
                .map_err(netlink_err("address add"))?;
        }
        Ok(())
    }
}
