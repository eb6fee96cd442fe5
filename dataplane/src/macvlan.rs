//! A macvlan on a host interface, made directly inside a container's network
//! namespace and configured as pipework does it: the container side named
//! `eth1` unless asked otherwise, the parent's MTU, a given, random or
//! `U:STRING` MAC, the address, and a default route via the gateway preceded
//! by a host route to it when it lies outside the subnet.
//!
//! The address is announced with a gratuitous ARP. Rather than a raw packet
//! socket, the interface gets `arp_notify` before it comes up: the kernel then
//! sends the announcement itself when the link goes up (and again whenever
//! its MAC changes or a peer notification is due, as after a live migration).

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use netlink_packet_route::link::{InfoData, InfoMacVlan, LinkMessage, MacVlanMode};
use netlink_packet_route::route::RouteScope;
use rtnetlink::{LinkMacVlan, LinkUnspec, RouteMessageBuilder};

use crate::error::netlink_err;
use crate::link::{check_ifname, info_data, lower_index, Ensured};
use crate::netlink::run_in_netns;
use crate::{md5, DataplaneError, Netlink, Result};

/// The container side's name when none is asked for, as in pipework.
pub const DEFAULT_CONTAINER_IFNAME: &str = "eth1";

/// How long a macvlan waits for another one with its MAC to go.
const MAC_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How a macvlan forwards between its siblings on one parent (Docker's
/// `macvlan_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MacvlanMode {
    /// Siblings reach each other directly (Docker's default).
    #[default]
    Bridge,
    /// Siblings never reach each other.
    Private,
    /// Everything goes out to the switch, which may hairpin it back.
    Vepa,
    /// The one macvlan takes over the parent.
    Passthru,
}

impl MacvlanMode {
    fn kernel(self) -> MacVlanMode {
        match self {
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        }
    }
}

impl FromStr for MacvlanMode {
    type Err = DataplaneError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "bridge" => Ok(MacvlanMode::Bridge),
            "private" => Ok(MacvlanMode::Private),
            "vepa" => Ok(MacvlanMode::Vepa),
            "passthru" => Ok(MacvlanMode::Passthru),
            other => Err(DataplaneError::Invalid(format!(
                "unknown macvlan mode {other:?}: use bridge, private, vepa or passthru"
            ))),
        }
    }
}

impl fmt::Display for MacvlanMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MacvlanMode::Bridge => "bridge",
            MacvlanMode::Private => "private",
            MacvlanMode::Vepa => "vepa",
            MacvlanMode::Passthru => "passthru",
        })
    }
}

/// pipework's `U:STRING` MAC: 02 (locally administered, unicast) and the
/// first five bytes of the MD5 of the string. pipework hashes the output of
/// `echo`, so the newline is part of the input, and the same string gives
/// the same address under pipework and here.
pub fn pipework_mac(seed: &str) -> [u8; 6] {
    let mut input = seed.as_bytes().to_vec();
    input.push(b'\n');
    let hash = md5::digest(&input);
    [0x02, hash[0], hash[1], hash[2], hash[3], hash[4]]
}

/// A MAC in its usual form, `02:42:0a:20:00:05`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a MAC as pipework takes it: `aa:bb:cc:dd:ee:ff`, or `U:STRING`.
/// A multicast or all-zero address is refused: no interface can have one.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    if let Some(seed) = text.strip_prefix("U:") {
        if seed.is_empty() {
            return Err(DataplaneError::Invalid(
                "MAC U: needs a string after it, as in U:web1".into(),
            ));
        }
        return Ok(pipework_mac(seed));
    }
    let bad = |why: &str| DataplaneError::Invalid(format!("bad MAC address {text:?}: {why}"));
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(bad(
            "want six hex bytes like 02:42:ac:11:00:02, or U:STRING",
        ));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(&parts) {
        if part.len() != 2 {
            return Err(bad("want two hex digits per byte"));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad("not hexadecimal"))?;
    }
    check_mac(mac)?;
    Ok(mac)
}

/// Refuses what no interface can have: a multicast or all-zero address.
fn check_mac(mac: [u8; 6]) -> Result<()> {
    let bad = |why: &str| {
        let text: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
        Err(DataplaneError::Invalid(format!(
            "bad MAC address {:?}: {why}",
            text.join(":")
        )))
    };
    if mac[0] & 1 == 1 {
        return bad("a multicast address cannot be an interface's");
    }
    if mac == [0; 6] {
        return bad("all zeros");
    }
    Ok(())
}

/// One macvlan attachment of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanSpec {
    /// The container's network namespace (`/run/netns/NAME`, `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The host interface it sits on, in the namespace of the handle used.
    pub parent: String,
    /// The container side's name, [`DEFAULT_CONTAINER_IFNAME`] by default.
    pub name: String,
    pub mode: MacvlanMode,
    /// None: the kernel picks a random one.
    pub mac: Option<[u8; 6]>,
    /// None: the interface is made and up with no address (pipework's `0/0`).
    pub address: Option<Ipv4Network>,
    pub gateway: Option<Ipv4Addr>,
}

impl MacvlanSpec {
    /// Checks what can be checked before touching the kernel.
    fn check(&self) -> Result<()> {
        check_ifname(&self.parent)?;
        check_ifname(&self.name)?;
        if let Some(mac) = self.mac {
            check_mac(mac)?;
        }
        if let Some(gateway) = self.gateway {
            if self.address.is_some_and(|address| address.ip() == gateway) {
                return Err(DataplaneError::Invalid(format!(
                    "gateway {gateway} is the container's own address"
                )));
            }
        }
        Ok(())
    }
}

/// pipework's rule: a gateway outside the subnet needs a host route first,
/// or the default route via it is refused as unreachable.
pub fn needs_gateway_host_route(address: Ipv4Network, gateway: Ipv4Addr) -> bool {
    !address.contains(gateway)
}

/// The request creating the macvlan on `parent_index` already inside the
/// namespace behind `netns`: a device moved between namespaces waits for an
/// RCU grace period, and a name made on the host could clash there.
fn macvlan_request(spec: &MacvlanSpec, parent_index: u32, mtu: u32, netns: RawFd) -> LinkMessage {
    let mut builder = LinkMacVlan::new(&spec.name, parent_index, spec.mode.kernel())
        .mtu(mtu)
        .setns_by_fd(netns);
    if let Some(mac) = spec.mac {
        builder = builder.address(mac.to_vec());
    }
    builder.build()
}

/// The macvlan mode of a link, if it is a macvlan.
pub(crate) fn macvlan_mode(msg: &LinkMessage) -> Option<MacVlanMode> {
    match info_data(msg)? {
        InfoData::MacVlan(items) => Some(
            items
                .iter()
                .find_map(|item| match item {
                    InfoMacVlan::Mode(mode) => Some(*mode),
                    _ => None,
                })
                // The kernel's default when none was given.
                .unwrap_or(MacVlanMode::Vepa),
        ),
        _ => None,
    }
}

/// Turns on `arp_notify` for `ifname` in the namespace the calling thread is in.
pub(crate) fn enable_arp_notify(ifname: &str) -> std::io::Result<()> {
    // sysctl spells a dot in an interface name as a slash.
    let path = format!(
        "/proc/sys/net/ipv4/conf/{}/arp_notify",
        ifname.replace('.', "/")
    );
    std::fs::write(path, b"1")
}

impl Netlink {
    /// Makes the container's macvlan as `spec` says, `self` being a handle
    /// on the namespace of the parent. Asking again for the same thing finds
    /// it there and says so; an interface of that name that differs is a
    /// conflict. On any failure the macvlan is deleted: nothing half-made
    /// stays.
    pub async fn ensure_macvlan(&self, spec: &MacvlanSpec) -> Result<Ensured> {
        spec.check()?;
        let parent = self.link(&spec.parent).await?.ok_or_else(|| {
            DataplaneError::NoSuchInterface(format!("no interface named {}", spec.parent))
        })?;
        let netns =
            std::fs::File::open(&spec.netns).map_err(|source| DataplaneError::EnterNetns {
                path: spec.netns.clone(),
                source,
            })?;
        let container = Netlink::connect_in_netns(&spec.netns).await?;
        if let Some(existing) = container.link_message(&spec.name).await? {
            container
                .check_same_macvlan(spec, &existing, parent.index)
                .await?;
            container
                .configure_container_side(spec, existing.header.index, parent.mtu)
                .await?;
            return Ok(Ensured::AlreadyThere);
        }
        self.handle
            .link()
            .add(macvlan_request(
                spec,
                parent.index,
                parent.mtu,
                netns.as_raw_fd(),
            ))
            .execute()
            .await
            .map_err(|source| match source {
                rtnetlink::Error::NetlinkError(ref e) if e.raw_code() == -libc::EOPNOTSUPP => {
                    DataplaneError::Unsupported("macvlan")
                }
                source => DataplaneError::Netlink {
                    op: "macvlan add",
                    source,
                },
            })?;
        let made = async {
            let link = container.link(&spec.name).await?.ok_or_else(|| {
                DataplaneError::Conflict(format!("{} vanished while attaching", spec.name))
            })?;
            let name = spec.name.clone();
            run_in_netns(&spec.netns, move |path| {
                enable_arp_notify(&name).map_err(|source| DataplaneError::EnterNetns {
                    path: path.to_path_buf(),
                    source,
                })
            })
            .await?;
            if let Some(address) = spec.address {
                container
                    .ensure_ipv4(link.index, address.ip(), address.prefix())
                    .await?;
            }
            container
                .configure_container_side(spec, link.index, parent.mtu)
                .await
        }
        .await;
        if let Err(failed) = made {
            return Err(failed.undone(container.delete_link_named(&spec.name).await));
        }
        Ok(Ensured::Created)
    }

    /// An interface called `spec.name` is in the container already: it is
    /// this attachment only if it is a macvlan on the same parent, in the
    /// same mode, with the MAC asked for and the address.
    async fn check_same_macvlan(
        &self,
        spec: &MacvlanSpec,
        existing: &LinkMessage,
        parent_index: u32,
    ) -> Result<()> {
        let conflict = |why: String| {
            DataplaneError::Conflict(format!(
                "{} already has an interface named {}, {why}",
                spec.netns.display(),
                spec.name
            ))
        };
        let Some(mode) = macvlan_mode(existing) else {
            return Err(conflict("not a macvlan".into()));
        };
        if lower_index(existing) != Some(parent_index) {
            return Err(conflict(format!("not on {}", spec.parent)));
        }
        if mode != spec.mode.kernel() {
            return Err(conflict(format!("not in {} mode", spec.mode)));
        }
        if let Some(mac) = spec.mac {
            let state = crate::link::parse_link(existing);
            if state.and_then(|s| s.mac) != Some(mac) {
                return Err(conflict("with another MAC address".into()));
            }
        }
        if let Some(address) = spec.address {
            let addresses = self.link_ipv4_addresses(existing.header.index).await?;
            if !addresses.contains(&(address.ip(), address.prefix())) {
                return Err(conflict(format!("without address {address}")));
            }
        }
        Ok(())
    }

    /// Adds the address unless the link has it.
    async fn ensure_ipv4(&self, index: u32, address: Ipv4Addr, prefix_len: u8) -> Result<()> {
        if self
            .link_ipv4_addresses(index)
            .await?
            .contains(&(address, prefix_len))
        {
            return Ok(());
        }
        self.handle
            .address()
            .add(index, address.into(), prefix_len)
            .execute()
            .await
            .map_err(netlink_err("container address add"))
    }

    /// Up, with the parent's MTU, and the routes via the gateway.
    async fn configure_container_side(
        &self,
        spec: &MacvlanSpec,
        index: u32,
        mtu: u32,
    ) -> Result<()> {
        // The kernel refuses a macvlan up while another on the parent has its
        // MAC: the container that had this address before may still be
        // going, its namespace torn down after its last process. Waited
        // for, a while.
        let deadline = std::time::Instant::now() + MAC_BUSY_WAIT;
        loop {
            let up = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
            match self.handle.link().set(up).execute().await {
                Ok(()) => break,
                Err(rtnetlink::Error::NetlinkError(ref e))
                    if e.raw_code() == -libc::EADDRINUSE
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(rtnetlink::Error::NetlinkError(ref e)) if e.raw_code() == -libc::EADDRINUSE => {
                    return Err(DataplaneError::Conflict(format!(
                        "another macvlan on {} has the MAC address {}",
                        spec.parent,
                        spec.mac
                            .as_ref()
                            .map(format_mac)
                            .unwrap_or_else(|| "asked for".into())
                    )));
                }
                Err(source) => return Err(netlink_err("container link up")(source)),
            }
        }
        self.set_loopback_up().await?;
        match spec.gateway {
            Some(gateway) => self.route_via_gateway(index, spec.address, gateway).await,
            None => Ok(()),
        }
    }

    /// The container's default route via `gateway` on the interface
    /// `index`, preceded by a host route to the gateway when it lies outside
    /// `address`'s subnet (or there is no address), as pipework does. The
    /// default route is replaced: the latest attachment with a gateway takes
    /// over the container's default route. `self` is the container's handle.
    pub(crate) async fn route_via_gateway(
        &self,
        index: u32,
        address: Option<Ipv4Network>,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        if address.is_none_or(|address| needs_gateway_host_route(address, gateway)) {
            let host_route = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(gateway, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build();
            self.handle
                .route()
                .add(host_route)
                .replace()
                .execute()
                .await
                .map_err(netlink_err("container route to the gateway"))?;
        }
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(index)
            .build();
        self.handle
            .route()
            .add(default)
            .replace()
            .execute()
            .await
            .map_err(netlink_err("container default route"))?;
        Ok(())
    }

    /// Deletes the macvlan `name` of the namespace at `netns` (its address
    /// and routes go with it). Returns whether there was one. Any other kind
    /// of interface by that name is left alone and is an error.
    pub async fn remove_macvlan(netns: &Path, name: &str) -> Result<bool> {
        check_ifname(name)?;
        let container = Netlink::connect_in_netns(netns).await?;
        let Some(existing) = container.link_message(name).await? else {
            return Ok(false);
        };
        if macvlan_mode(&existing).is_none() {
            return Err(DataplaneError::Conflict(format!(
                "{name} in {} is not a macvlan; left alone",
                netns.display()
            )));
        }
        container.delete_link(existing.header.index).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{LinkAttribute, LinkInfo};

    fn spec() -> MacvlanSpec {
        MacvlanSpec {
            netns: PathBuf::from("/run/netns/c1"),
            parent: "eth0".into(),
            name: DEFAULT_CONTAINER_IFNAME.into(),
            mode: MacvlanMode::Bridge,
            mac: Some([0x02, 1, 2, 3, 4, 5]),
            address: Some("10.1.1.5/24".parse().unwrap()),
            gateway: Some("10.1.1.1".parse().unwrap()),
        }
    }

    #[test]
    fn modes_parse_and_print_as_docker_spells_them() {
        for text in ["bridge", "private", "vepa", "passthru"] {
            let mode: MacvlanMode = text.parse().unwrap();
            assert_eq!(mode.to_string(), text);
        }
        let err = "bridged".parse::<MacvlanMode>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown macvlan mode \"bridged\": use bridge, private, vepa or passthru"
        );
        assert_eq!(MacvlanMode::Passthru.kernel(), MacVlanMode::Passthrough);
    }

    #[test]
    fn pipework_macs_match_md5sum_of_echo() {
        // echo web1 | md5sum = 66ee606d5019d75f83836eeb295c6b6f
        assert_eq!(pipework_mac("web1"), [0x02, 0x66, 0xee, 0x60, 0x6d, 0x50]);
        assert_eq!(pipework_mac("web1"), parse_mac("U:web1").unwrap());
        assert_ne!(pipework_mac("web1"), pipework_mac("web2"));
        // echo abc | md5sum = 0bee89b07a248e27c83fc3d5951213c1
        assert_eq!(pipework_mac("abc"), [0x02, 0x0b, 0xee, 0x89, 0xb0, 0x7a]);
    }

    #[test]
    fn macs_are_checked() {
        assert_eq!(
            parse_mac("02:42:AC:11:00:02").unwrap(),
            [0x02, 0x42, 0xac, 0x11, 0, 2]
        );
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "zz:42:ac:11:00:02",
            "2:42:ac:11:00:02",
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "U:",
            "",
        ] {
            let err = parse_mac(bad).expect_err(bad).to_string();
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn the_host_route_comes_only_for_a_gateway_outside_the_subnet() {
        let inside: Ipv4Network = "10.1.1.5/24".parse().unwrap();
        assert!(!needs_gateway_host_route(
            inside,
            "10.1.1.1".parse().unwrap()
        ));
        assert!(needs_gateway_host_route(
            inside,
            "10.1.2.1".parse().unwrap()
        ));
        let alone: Ipv4Network = "10.1.1.5/32".parse().unwrap();
        assert!(needs_gateway_host_route(alone, "10.1.1.1".parse().unwrap()));
    }

    #[test]
    fn the_request_makes_the_macvlan_inside_the_namespace() {
        let msg = macvlan_request(&spec(), 4, 1400, 17);
        let attrs = &msg.attributes;
        assert!(attrs.contains(&LinkAttribute::IfName("eth1".into())));
        assert!(attrs.contains(&LinkAttribute::Link(4)));
        assert!(attrs.contains(&LinkAttribute::Mtu(1400)));
        assert!(attrs.contains(&LinkAttribute::NetNsFd(17)));
        assert!(attrs.contains(&LinkAttribute::Address(vec![0x02, 1, 2, 3, 4, 5])));
        let data = attrs.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                LinkInfo::Data(d) => Some(d.clone()),
                _ => None,
            }),
            _ => None,
        });
        assert_eq!(
            data,
            Some(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                MacVlanMode::Bridge
            )]))
        );
        assert_eq!(macvlan_mode(&msg), Some(MacVlanMode::Bridge));
        let random = macvlan_request(
            &MacvlanSpec {
                mac: None,
                ..spec()
            },
            4,
            1400,
            17,
        );
        assert!(!random
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::Address(_))));
    }

    #[test]
    fn names_are_checked_before_the_kernel() {
        let long = MacvlanSpec {
            name: "a-very-long-name0".into(),
            ..spec()
        };
        assert_eq!(
            long.check().unwrap_err().to_string(),
            "interface name \"a-very-long-name0\" is longer than 15 characters (17)"
        );
        let own_gateway = MacvlanSpec {
            gateway: Some("10.1.1.5".parse().unwrap()),
            ..spec()
        };
        assert!(own_gateway.check().is_err());
        assert!(spec().check().is_ok());
    }
}
