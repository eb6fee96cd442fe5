//! Published ports: DNAT from the host's ports to containers, in a table of
//! Tartan's own (`ip tartan-ports`), kept apart from the cluster firewall
//! table because that one is rebuilt whole whenever it differs from its spec.
//!
//! ```text
//! table ip tartan-ports {
//!     chain prerouting {   # from other hosts and from containers
//!         type nat hook prerouting priority dstnat; policy accept;
//!         fib daddr type local tcp dport 8080 dnat to 10.5.1.2:80   # HOST_IP 0.0.0.0
//!         ip daddr 192.168.0.10 tcp dport 9090 dnat to 10.5.1.3:22  # a HOST_IP
//!     }
//!     chain output {       # from the host itself, 127.0.0.1 included
//!         type nat hook output priority dstnat; policy accept;
//!         (the same rules)
//!     }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 127.0.0.0/8 ip daddr 10.5.1.2 tcp dport 80 masquerade
//!         ip saddr 10.5.1.0/24 ip daddr 10.5.1.2 tcp dport 80 masquerade
//!     }
//! }
//! ```
//!
//! The second masquerade makes replies come back through the host for the
//! container itself (hairpin) and its neighbours on the bridge, which would
//! otherwise answer each other directly with an address the client never
//! called. Every rule carries a tag naming what it is for, so that
//! [`apply_published_ports`] reconciles: it reads the rules there are,
//! deletes those not wanted and adds those missing, in one atomic batch; the
//! table goes when nothing is published.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::*;

const NFT_MSG_DELRULE: u16 = 8;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
/// dstnat: where `nft` puts DNAT.
const NF_IP_PRI_NAT_DST: i32 = -100;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const RTN_LOCAL: u32 = 2;
const NFT_REG_2: u32 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFTA_NAT_REG_PROTO_MAX: u16 = 6;
const NFTA_NAT_FLAGS: u16 = 7;
const NFT_NAT_DNAT: u32 = 1;
/// NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED.
const NAT_RANGE_ADDRESS_AND_PORT: u32 = 0x3;

const PREROUTING: &str = "prerouting";
const OUTPUT: &str = "output";

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }

    fn number(self) -> u8 {
        match self {
            PortProtocol::Tcp => libc::IPPROTO_TCP as u8,
            PortProtocol::Udp => libc::IPPROTO_UDP as u8,
        }
    }
}

/// One host port forwarded to a container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedPort {
    /// Who published it (a container id): part of every rule's tag.
    pub owner: String,
    /// None for every address of the host (Docker's 0.0.0.0).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub protocol: PortProtocol,
    /// The container's address and its subnet (its neighbours on the bridge).
    pub container: Ipv4Network,
    pub container_port: u16,
}

impl PublishedPort {
    fn describe(&self) -> String {
        let host_ip = self.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        format!(
            "{host_ip}:{}->{}:{}/{}",
            self.host_port,
            self.container.ip(),
            self.container_port,
            self.protocol.as_str()
        )
    }

    /// The rules it needs: (chain, tag, expressions).
    fn rules(&self) -> Vec<(&'static str, Vec<u8>, Attrs)> {
        let tag = |what: &str| format!("tartan port {} {what} {}", self.owner, self.describe());
        let container = Ipv4Network::new(self.container.ip(), 32).unwrap_or(self.container);
        let subnet = Ipv4Network::new(self.container.network(), self.container.prefix())
            .unwrap_or(self.container);
        let loopback = Ipv4Network::new(Ipv4Addr::new(127, 0, 0, 0), 8).unwrap_or(subnet);
        vec![
            (PREROUTING, tag("dnat").into_bytes(), self.dnat()),
            (OUTPUT, tag("dnat").into_bytes(), self.dnat()),
            (
                POSTROUTING,
                tag("masquerade loopback").into_bytes(),
                self.masquerade(&loopback, &container),
            ),
            (
                POSTROUTING,
                tag("masquerade bridge").into_bytes(),
                self.masquerade(&subnet, &container),
            ),
        ]
    }

    fn dnat(&self) -> Attrs {
        let mut exprs = match self.host_ip {
            Some(ip) => match_network(
                IPV4_DADDR,
                &Ipv4Network::new(ip, 32).unwrap_or_else(|_| Ipv4Network::from(ip)),
                NFT_CMP_EQ,
            ),
            None => local_destination(),
        };
        exprs.extend(match_port(self.protocol, self.host_port));
        let address = Attrs::default()
            .be32(NFTA_IMMEDIATE_DREG, NFT_REG_1)
            .nested(
                NFTA_IMMEDIATE_DATA,
                data_value(&self.container.ip().octets()),
            )
            .done();
        let port = Attrs::default()
            .be32(NFTA_IMMEDIATE_DREG, NFT_REG_2)
            .nested(
                NFTA_IMMEDIATE_DATA,
                data_value(&self.container_port.to_be_bytes()),
            )
            .done();
        let nat = Attrs::default()
            .be32(NFTA_NAT_TYPE, NFT_NAT_DNAT)
            .be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4))
            .be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1)
            .be32(NFTA_NAT_REG_ADDR_MAX, NFT_REG_1)
            .be32(NFTA_NAT_REG_PROTO_MIN, NFT_REG_2)
            .be32(NFTA_NAT_REG_PROTO_MAX, NFT_REG_2)
            .be32(NFTA_NAT_FLAGS, NAT_RANGE_ADDRESS_AND_PORT)
            .done();
        exprs.push(expression("immediate", Some(address)));
        exprs.push(expression("immediate", Some(port)));
        exprs.push(expression("nat", Some(nat)));
        expression_list(exprs)
    }

    /// `ip saddr FROM ip daddr CONTAINER PROTO dport PORT masquerade`
    fn masquerade(&self, from: &Ipv4Network, container: &Ipv4Network) -> Attrs {
        let mut exprs = match_network(IPV4_SADDR, from, NFT_CMP_EQ);
        exprs.extend(match_network(IPV4_DADDR, container, NFT_CMP_EQ));
        exprs.extend(match_port(self.protocol, self.container_port));
        exprs.push(expression("masq", None));
        expression_list(exprs)
    }
}

/// `fib daddr type local`: addressed to the host, on any of its addresses.
fn local_destination() -> Vec<Attrs> {
    let fib = Attrs::default()
        .be32(NFTA_FIB_DREG, NFT_REG_1)
        .be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
        .be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR)
        .done();
    // The address type is a host-order integer in the register.
    let cmp = Attrs::default()
        .be32(NFTA_CMP_SREG, NFT_REG_1)
        .be32(NFTA_CMP_OP, NFT_CMP_EQ)
        .nested(NFTA_CMP_DATA, data_value(&RTN_LOCAL.to_ne_bytes()))
        .done();
    vec![expression("fib", Some(fib)), expression("cmp", Some(cmp))]
}

/// `meta l4proto PROTO th dport PORT`
fn match_port(protocol: PortProtocol, port: u16) -> Vec<Attrs> {
    let meta = Attrs::default()
        .be32(NFTA_META_DREG, NFT_REG_1)
        .be32(NFTA_META_KEY, NFT_META_L4PROTO)
        .done();
    let is_protocol = Attrs::default()
        .be32(NFTA_CMP_SREG, NFT_REG_1)
        .be32(NFTA_CMP_OP, NFT_CMP_EQ)
        .nested(NFTA_CMP_DATA, data_value(&[protocol.number()]))
        .done();
    let dport = Attrs::default()
        .be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
        .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER)
        .be32(NFTA_PAYLOAD_OFFSET, 2)
        .be32(NFTA_PAYLOAD_LEN, 2)
        .done();
    let is_port = Attrs::default()
        .be32(NFTA_CMP_SREG, NFT_REG_1)
        .be32(NFTA_CMP_OP, NFT_CMP_EQ)
        .nested(NFTA_CMP_DATA, data_value(&port.to_be_bytes()))
        .done();
    vec![
        expression("meta", Some(meta)),
        expression("cmp", Some(is_protocol)),
        expression("payload", Some(dport)),
        expression("cmp", Some(is_port)),
    ]
}

/// What [`apply_published_ports`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PortRuleChanges {
    pub added: usize,
    pub removed: usize,
}

impl PortRuleChanges {
    pub fn is_empty(&self) -> bool {
        self.added == 0 && self.removed == 0
    }
}

/// A rule found in one of the table's chains.
struct FoundRule {
    chain: &'static str,
    handle: Vec<u8>,
    tag: Vec<u8>,
}

impl NfSocket {
    /// The rules of `table`'s port chains; None when the table does not exist.
    fn port_rules(&mut self, table: &str) -> Result<Option<Vec<FoundRule>>> {
        if !self.has_table(table)? {
            return Ok(None);
        }
        let mut found = Vec::new();
        for chain in [PREROUTING, OUTPUT, POSTROUTING] {
            let attrs = Attrs::default()
                .string(NFTA_RULE_TABLE, table)
                .string(NFTA_RULE_CHAIN, chain)
                .done();
            self.dump(NFT_MSG_GETRULE, NFPROTO_IPV4, &attrs)?;
            self.receive(|kind, _, payload| match kind {
                NLMSG_DONE => Ok(true),
                NLMSG_ERROR => match -ack_errno(payload) {
                    0 | libc::ENOENT => Ok(true),
                    other => Err(nft_error("list the published-port rules", other)),
                },
                _ if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                    let attrs = payload.get(4..).unwrap_or_default();
                    found.push(FoundRule {
                        chain,
                        handle: find_attr(attrs, NFTA_RULE_HANDLE).unwrap_or_default(),
                        tag: find_attr(attrs, NFTA_RULE_USERDATA).unwrap_or_default(),
                    });
                    Ok(false)
                }
                _ => Ok(false),
            })?;
        }
        Ok(Some(found))
    }
}

/// Makes `table` hold exactly the rules of `desired`: reads what is there,
/// removes rules nobody wants (a stopped container's, a foreign one) and
/// adds the missing, atomically; with nothing desired the table goes.
/// Blocking: call it off the async runtime.
pub fn apply_published_ports(table: &str, desired: &[PublishedPort]) -> Result<PortRuleChanges> {
    let mut socket = NfSocket::open()?;
    let observed = socket.port_rules(table)?;
    let Some(observed) = observed else {
        if desired.is_empty() {
            return Ok(PortRuleChanges::default());
        }
        return install(&mut socket, table, desired, &[]);
    };
    if desired.is_empty() {
        let mut batch = Batch::new(socket.seq);
        batch.nft(NFT_MSG_DELTABLE, 0, table_attrs(table));
        socket.apply("remove the published-port rules", batch)?;
        return Ok(PortRuleChanges {
            added: 0,
            removed: observed.len(),
        });
    }
    install(&mut socket, table, desired, &observed)
}

fn install(
    socket: &mut NfSocket,
    table: &str,
    desired: &[PublishedPort],
    observed: &[FoundRule],
) -> Result<PortRuleChanges> {
    let wanted: BTreeMap<(&str, Vec<u8>), Attrs> = desired
        .iter()
        .flat_map(PublishedPort::rules)
        .map(|(chain, tag, exprs)| ((chain, tag), exprs))
        .collect();
    let mut kept = BTreeSet::new();
    let mut batch = Batch::new(socket.seq);
    batch.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, table_attrs(table));
    for (chain, hook, priority) in [
        (PREROUTING, NF_INET_PRE_ROUTING, NF_IP_PRI_NAT_DST),
        (OUTPUT, NF_INET_LOCAL_OUT, NF_IP_PRI_NAT_DST),
        (POSTROUTING, NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC),
    ] {
        add_base_chain(&mut batch, table, chain, "nat", hook, priority);
    }
    let mut changes = PortRuleChanges::default();
    for rule in observed {
        let key = (rule.chain, rule.tag.clone());
        // A duplicate is removed like a stranger.
        if wanted.contains_key(&key) && kept.insert(key) {
            continue;
        }
        let attrs = Attrs::default()
            .string(NFTA_RULE_TABLE, table)
            .string(NFTA_RULE_CHAIN, rule.chain)
            .bytes(NFTA_RULE_HANDLE, &rule.handle)
            .done();
        batch.nft(NFT_MSG_DELRULE, 0, attrs);
        changes.removed += 1;
    }
    for ((chain, tag), exprs) in wanted {
        if kept.contains(&(chain, tag.clone())) {
            continue;
        }
        add_rule(&mut batch, table, chain, exprs, Some(tag));
        changes.added += 1;
    }
    if changes.is_empty() {
        return Ok(changes);
    }
    socket.apply("install the published-port rules", batch)?;
    Ok(changes)
}

/// Lets the host reach a container through 127.0.0.1: the output chain's
/// DNAT keeps the loopback source, which the kernel routes out of a
/// non-loopback interface only with `route_localnet` set on it. Sets
/// `/proc/sys/net/ipv4/conf/IFACE/route_localnet` to 1 on the interface
/// the host routes `container` through, as Docker does on its bridge.
pub fn allow_loopback_towards(container: Ipv4Addr) -> Result<()> {
    let routes =
        std::fs::read_to_string("/proc/net/route").map_err(|source| DataplaneError::Sysctl {
            path: "/proc/net/route".into(),
            source,
        })?;
    let Some(iface) = route_interface(&routes, container) else {
        return Err(DataplaneError::NoSuchInterface(format!(
            "no route to {container} for its published ports"
        )));
    };
    let path = format!("/proc/sys/net/ipv4/conf/{iface}/route_localnet");
    std::fs::write(&path, "1").map_err(|source| DataplaneError::Sysctl {
        path: path.into(),
        source,
    })
}

/// Lets a container reach itself through its published port when the
/// bridge hands routed frames to netfilter (br_netfilter): the DNAT then
/// happens on the bridge, and the frame goes back out of the port it came
/// in by, which a bridge does only in hairpin mode. Sets
/// `/sys/class/net/PORT/brport/hairpin_mode` to 1, as Docker does; a port
/// that is not on a bridge is left alone.
pub fn allow_hairpin(port: &str) -> Result<()> {
    crate::link::check_ifname(port)?;
    let path = format!("/sys/class/net/{port}/brport/hairpin_mode");
    if !std::path::Path::new(&path).exists() {
        return Ok(());
    }
    std::fs::write(&path, "1").map_err(|source| DataplaneError::Sysctl {
        path: path.into(),
        source,
    })
}

/// The interface of the most specific route of `/proc/net/route` to `to`.
fn route_interface(routes: &str, to: Ipv4Addr) -> Option<String> {
    // The file prints each address's bytes as a host-order integer.
    let hex = |text: &str| {
        u32::from_str_radix(text, 16)
            .ok()
            .map(|v| u32::from_be_bytes(v.to_ne_bytes()))
    };
    let target = u32::from(to);
    routes
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, mask) = (fields.first()?, fields.get(1)?, fields.get(7)?);
            let dest = hex(dest)?;
            let mask = hex(mask)?;
            (mask != 0 && target & mask == dest).then(|| (mask.count_ones(), iface.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_to_a_container_names_its_bridge() {
        let routes =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
            eth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            tartan0\t0001050A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            flannel.1\t0000050A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        assert_eq!(
            route_interface(routes, Ipv4Addr::new(10, 5, 1, 2)).as_deref(),
            Some("tartan0")
        );
        assert_eq!(
            route_interface(routes, Ipv4Addr::new(10, 5, 2, 2)).as_deref(),
            Some("flannel.1")
        );
        assert_eq!(route_interface(routes, Ipv4Addr::new(8, 8, 8, 8)), None);
    }

    #[test]
    fn every_publication_has_distinct_tags() {
        let port = PublishedPort {
            owner: "abc".into(),
            host_ip: None,
            host_port: 8080,
            protocol: PortProtocol::Tcp,
            container: "10.5.1.2/24".parse().expect("cidr"),
            container_port: 80,
        };
        let rules = port.rules();
        let keys: BTreeSet<_> = rules.iter().map(|(c, t, _)| (*c, t.clone())).collect();
        assert_eq!(keys.len(), rules.len());
        assert!(String::from_utf8_lossy(&rules[0].1).contains("0.0.0.0:8080->10.5.1.2:80/tcp"));
    }
}
