//! The agent's firewall through nf_tables, spoken directly over netlink: a
//! table of Tartan's own (`ip tartan`) with masquerading and forward accepts
//! for the cluster network, each when asked for,
//!
//! ```text
//! table ip tartan {
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr NETWORK ip daddr != NETWORK masquerade
//!     }
//!     chain forward {
//!         type filter hook forward priority filter; policy accept;
//!         ip saddr NETWORK accept
//!         ip daddr NETWORK accept
//!     }
//! }
//! ```
//!
//! Nothing else in the firewall is touched. The table is replaced as a whole
//! in one atomic batch whenever it is missing or not exactly ours. nf_tables
//! runs every base chain of a hook: an accept here does not overrule a drop
//! in another table's forward chain (Docker's `FORWARD` policy, say), so
//! [`forward_drop_policies`] finds such chains for the operator to see.

use ipnetwork::Ipv4Network;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use crate::{DataplaneError, Result};

mod ports;
pub use ports::{
    allow_hairpin, allow_loopback_towards, apply_published_ports, PortProtocol, PortRuleChanges,
    PublishedPort,
};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

const NFPROTO_UNSPEC: u8 = 0;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_POST_ROUTING: u32 = 4;
/// The filter priority, where `nft` and iptables-nft put their filter chains.
const NF_IP_PRI_FILTER: i32 = 0;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
/// srcnat: where `nft` puts masquerading.
const NF_IP_PRI_NAT_SRC: i32 = 100;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_REG_1: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

/// Offsets of the source and destination addresses in an IPv4 header.
const IPV4_SADDR: u32 = 12;
const IPV4_DADDR: u32 = 16;

const POSTROUTING: &str = "postrouting";
const FORWARD: &str = "forward";

/// The agent's table: what it holds for the cluster `network`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallSpec {
    pub table: String,
    pub network: Ipv4Network,
    /// Masquerade traffic from `network` to anywhere outside it.
    pub masquerade: bool,
    /// Accept forwarded traffic from and to `network` (flanneld's
    /// `-iptables-forward-rules`).
    pub forward_accept: bool,
}

impl FirewallSpec {
    /// The tags stored in the rules, in table order, by which a later check
    /// recognises the table as current.
    fn tags(&self) -> Vec<Vec<u8>> {
        let mut tags = Vec::new();
        if self.masquerade {
            tags.push(format!("tartan masquerade {}", self.network).into_bytes());
        }
        if self.forward_accept {
            tags.push(format!("tartan forward from {}", self.network).into_bytes());
            tags.push(format!("tartan forward to {}", self.network).into_bytes());
        }
        tags
    }
}

/// A netlink attribute writer: type-length-value, 4-byte aligned.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn bytes(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    fn string(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.bytes(kind, &bytes)
    }

    /// nf_tables integers are big-endian.
    fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    fn nested(&mut self, kind: u16, inner: Attrs) -> &mut Self {
        self.bytes(kind | NLA_F_NESTED, &inner.0)
    }

    fn done(&mut self) -> Attrs {
        Attrs(std::mem::take(&mut self.0))
    }
}

fn data_value(bytes: &[u8]) -> Attrs {
    Attrs::default().bytes(NFTA_DATA_VALUE, bytes).done()
}

fn expression(name: &str, data: Option<Attrs>) -> Attrs {
    let mut expr = Attrs::default();
    expr.string(NFTA_EXPR_NAME, name);
    if let Some(data) = data {
        expr.nested(NFTA_EXPR_DATA, data);
    }
    expr.done()
}

/// Expressions matching `network` at `offset` of the IPv4 header, equal or not.
fn match_network(offset: u32, network: &Ipv4Network, op: u32) -> Vec<Attrs> {
    let load = Attrs::default()
        .be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
        .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER)
        .be32(NFTA_PAYLOAD_OFFSET, offset)
        .be32(NFTA_PAYLOAD_LEN, 4)
        .done();
    let mask = Attrs::default()
        .be32(NFTA_BITWISE_SREG, NFT_REG_1)
        .be32(NFTA_BITWISE_DREG, NFT_REG_1)
        .be32(NFTA_BITWISE_LEN, 4)
        .nested(NFTA_BITWISE_MASK, data_value(&network.mask().octets()))
        .nested(NFTA_BITWISE_XOR, data_value(&[0; 4]))
        .done();
    let cmp = Attrs::default()
        .be32(NFTA_CMP_SREG, NFT_REG_1)
        .be32(NFTA_CMP_OP, op)
        .nested(NFTA_CMP_DATA, data_value(&network.network().octets()))
        .done();
    vec![
        expression("payload", Some(load)),
        expression("bitwise", Some(mask)),
        expression("cmp", Some(cmp)),
    ]
}

fn expression_list(exprs: impl IntoIterator<Item = Attrs>) -> Attrs {
    let mut list = Attrs::default();
    for expr in exprs {
        list.nested(NFTA_LIST_ELEM, expr);
    }
    list.done()
}

/// `ip saddr NETWORK ip daddr != NETWORK masquerade`
fn rule_expressions(network: &Ipv4Network) -> Attrs {
    expression_list(
        match_network(IPV4_SADDR, network, NFT_CMP_EQ)
            .into_iter()
            .chain(match_network(IPV4_DADDR, network, NFT_CMP_NEQ))
            .chain([expression("masq", None)]),
    )
}

/// `ip saddr NETWORK accept` (or `daddr`, by `offset`).
fn accept_expressions(offset: u32, network: &Ipv4Network) -> Attrs {
    let code = Attrs::default().be32(NFTA_VERDICT_CODE, NF_ACCEPT).done();
    let verdict = Attrs::default().nested(NFTA_DATA_VERDICT, code).done();
    let immediate = Attrs::default()
        .be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
        .nested(NFTA_IMMEDIATE_DATA, verdict)
        .done();
    expression_list(
        match_network(offset, network, NFT_CMP_EQ)
            .into_iter()
            .chain([expression("immediate", Some(immediate))]),
    )
}

/// A batch of nf_tables messages, applied by the kernel all or nothing.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    acked: Vec<u32>,
}

impl Batch {
    fn new(first_seq: u32) -> Batch {
        let mut batch = Batch {
            buf: Vec::new(),
            seq: first_seq,
            acked: Vec::new(),
        };
        batch.message(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            &Attrs::default(),
            false,
        );
        batch
    }

    fn message(&mut self, kind: u16, flags: u16, family: u8, attrs: &Attrs, ack: bool) {
        let len = 16 + 4 + attrs.0.len();
        let seq = self.seq;
        self.seq += 1;
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id (big-endian).
        self.buf.push(family);
        self.buf.push(0);
        let res_id = if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
            NFNL_SUBSYS_NFTABLES
        } else {
            0
        };
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(&attrs.0);
        if ack {
            self.acked.push(seq);
        }
    }

    fn nft(&mut self, msg: u16, flags: u16, attrs: Attrs) {
        self.message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            NFPROTO_IPV4,
            &attrs,
            true,
        );
    }

    fn finish(mut self) -> (Vec<u8>, Vec<u32>) {
        self.message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            0,
            &Attrs::default(),
            false,
        );
        (self.buf, self.acked)
    }
}

fn table_attrs(table: &str) -> Attrs {
    Attrs::default().string(NFTA_TABLE_NAME, table).done()
}

fn nft_error(op: &'static str, errno: i32) -> DataplaneError {
    let source = std::io::Error::from_raw_os_error(errno);
    match errno {
        libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT => {
            DataplaneError::Unsupported("nf_tables")
        }
        _ => DataplaneError::Nftables { op, source },
    }
}

/// A netlink socket to nf_tables in the calling thread's network namespace.
struct NfSocket {
    socket: Socket,
    seq: u32,
}

impl NfSocket {
    fn open() -> Result<NfSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(|e| match e.raw_os_error() {
            Some(errno) => nft_error("open", errno),
            None => DataplaneError::Socket(e),
        })?;
        socket.bind_auto().map_err(DataplaneError::Socket)?;
        // Bounded waits: a kernel that never answers is an error, not a hang.
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a valid timeval of the size given.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(DataplaneError::Socket(std::io::Error::last_os_error()));
        }
        Ok(NfSocket { socket, seq: 1 })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let kernel = SocketAddr::new(0, 0);
        self.socket
            .send_to(bytes, &kernel, 0)
            .map_err(DataplaneError::Socket)?;
        Ok(())
    }

    /// Reads messages until `done` says so; returns them as (type, payload).
    fn receive(&mut self, mut done: impl FnMut(u16, u32, &[u8]) -> Result<bool>) -> Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self
                .socket
                .recv(&mut &mut buf[..], 0)
                .map_err(DataplaneError::Socket)?;
            let mut offset = 0;
            while offset + 16 <= n {
                let len = u32::from_ne_bytes(buf[offset..offset + 4].try_into().unwrap_or([0; 4]))
                    as usize;
                let kind = u16::from_ne_bytes([buf[offset + 4], buf[offset + 5]]);
                let seq =
                    u32::from_ne_bytes(buf[offset + 8..offset + 12].try_into().unwrap_or([0; 4]));
                if len < 16 || offset + len > n {
                    return Err(DataplaneError::Socket(std::io::Error::other(
                        "truncated netlink message",
                    )));
                }
                if done(kind, seq, &buf[offset + 16..offset + len])? {
                    return Ok(());
                }
                offset += len.next_multiple_of(4);
            }
        }
    }

    /// Sends a batch and waits for an acknowledgement of each message in it.
    fn apply(&mut self, op: &'static str, batch: Batch) -> Result<()> {
        let (bytes, mut waiting) = batch.finish();
        self.seq += 100;
        self.send(&bytes)?;
        self.receive(|kind, seq, payload| {
            if kind == NLMSG_ERROR {
                let errno = ack_errno(payload);
                if errno != 0 {
                    return Err(nft_error(op, -errno));
                }
                waiting.retain(|s| *s != seq);
            }
            Ok(waiting.is_empty())
        })
    }

    /// Sends a dump request for `msg` objects of `family`, filtered by `attrs`.
    fn dump(&mut self, msg: u16, family: u8, attrs: &Attrs) -> Result<()> {
        let seq = self.seq;
        self.seq += 1;
        let mut request = Vec::new();
        request.extend_from_slice(&((16 + 4 + attrs.0.len()) as u32).to_ne_bytes());
        request.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg).to_ne_bytes());
        request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request.extend_from_slice(&seq.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        request.extend_from_slice(&[family, 0, 0, 0]);
        request.extend_from_slice(&attrs.0);
        self.send(&request)
    }

    /// The user data of every rule in `table`, in chain then rule order;
    /// None when the table does not exist.
    fn rule_tags(&mut self, table: &str) -> Result<Option<Vec<Vec<u8>>>> {
        let mut tags = Vec::new();
        for chain in [POSTROUTING, FORWARD] {
            let attrs = Attrs::default()
                .string(NFTA_RULE_TABLE, table)
                .string(NFTA_RULE_CHAIN, chain)
                .done();
            match self.chain_rule_tags(&attrs)? {
                RuleDump::NoTable => return Ok(None),
                RuleDump::NoChain => {}
                RuleDump::Tags(found) => tags.extend(found),
            }
        }
        Ok(Some(tags))
    }

    fn chain_rule_tags(&mut self, attrs: &Attrs) -> Result<RuleDump> {
        self.dump(NFT_MSG_GETRULE, NFPROTO_IPV4, attrs)?;
        let mut tags = Vec::new();
        let mut missing = false;
        self.receive(|kind, _, payload| match kind {
            NLMSG_DONE => Ok(true),
            NLMSG_ERROR => {
                let errno = ack_errno(payload);
                match -errno {
                    0 => Ok(true),
                    libc::ENOENT => {
                        missing = true;
                        Ok(true)
                    }
                    other => Err(nft_error("list rules", other)),
                }
            }
            _ if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE => {
                tags.push(
                    find_attr(payload.get(4..).unwrap_or_default(), NFTA_RULE_USERDATA)
                        .unwrap_or_default(),
                );
                Ok(false)
            }
            _ => Ok(false),
        })?;
        if !missing {
            return Ok(RuleDump::Tags(tags));
        }
        // ENOENT is the table's or the chain's absence: ask which.
        let table = find_attr(&attrs.0, NFTA_RULE_TABLE).unwrap_or_default();
        let table =
            String::from_utf8_lossy(table.strip_suffix(b"\0").unwrap_or(&table)).into_owned();
        Ok(if self.has_table(&table)? {
            RuleDump::NoChain
        } else {
            RuleDump::NoTable
        })
    }

    /// Whether `table` exists in the ip family.
    fn has_table(&mut self, table: &str) -> Result<bool> {
        let mut found = false;
        self.for_each_chain(NFPROTO_IPV4, |_, chain_table, _, _, _| {
            found |= chain_table == table;
        })?;
        Ok(found)
    }

    /// Calls `each(family, table, chain, hook, policy)` for every chain of `family`.
    fn for_each_chain(
        &mut self,
        family: u8,
        mut each: impl FnMut(u8, &str, &str, Option<u32>, Option<u32>),
    ) -> Result<()> {
        self.dump(NFT_MSG_GETCHAIN, family, &Attrs::default())?;
        self.receive(|kind, _, payload| match kind {
            NLMSG_DONE => Ok(true),
            NLMSG_ERROR => {
                let errno = ack_errno(payload);
                match -errno {
                    0 => Ok(true),
                    other => Err(nft_error("list chains", other)),
                }
            }
            _ if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN => {
                let family = payload.first().copied().unwrap_or(0);
                let attrs = payload.get(4..).unwrap_or_default();
                let text = |kind| {
                    find_attr(attrs, kind)
                        .map(|v| {
                            String::from_utf8_lossy(v.strip_suffix(b"\0").unwrap_or(&v))
                                .into_owned()
                        })
                        .unwrap_or_default()
                };
                let be32 = |bytes: Vec<u8>| bytes.try_into().ok().map(u32::from_be_bytes);
                let hook = find_attr(attrs, NFTA_CHAIN_HOOK)
                    .and_then(|hook| find_attr(&hook, NFTA_HOOK_HOOKNUM))
                    .and_then(be32);
                let policy = find_attr(attrs, NFTA_CHAIN_POLICY).and_then(be32);
                each(
                    family,
                    &text(NFTA_CHAIN_TABLE),
                    &text(NFTA_CHAIN_NAME),
                    hook,
                    policy,
                );
                Ok(false)
            }
            _ => Ok(false),
        })
    }
}

/// What a dump of one chain's rules found.
enum RuleDump {
    NoTable,
    NoChain,
    Tags(Vec<Vec<u8>>),
}

/// The (negative) errno of an NLMSG_ERROR payload; 0 is an acknowledgement.
fn ack_errno(payload: &[u8]) -> i32 {
    i32::from_ne_bytes(
        payload
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 4]),
    )
}

fn find_attr(mut attrs: &[u8], wanted: u16) -> Option<Vec<u8>> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if kind == wanted {
            return Some(attrs[4..len].to_vec());
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

/// Makes the agent's table exactly as `spec` says; with nothing asked for,
/// removes it. Returns whether it had to change anything. Blocking: call it
/// off the async runtime.
pub fn ensure_firewall(spec: &FirewallSpec) -> Result<bool> {
    let mut socket = NfSocket::open()?;
    let tags = spec.tags();
    let current = socket.rule_tags(&spec.table)?;
    if tags.is_empty() {
        if current.is_none() {
            return Ok(false);
        }
        drop(socket);
        remove_firewall(&spec.table)?;
        return Ok(true);
    }
    if current.as_ref() == Some(&tags) {
        return Ok(false);
    }
    let mut batch = Batch::new(socket.seq);
    // Create-if-missing then delete: the delete never fails, and the rebuild
    // below starts from nothing, all in one atomic batch.
    batch.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, table_attrs(&spec.table));
    batch.nft(NFT_MSG_DELTABLE, 0, table_attrs(&spec.table));
    batch.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, table_attrs(&spec.table));
    let mut tags = tags.into_iter();
    if spec.masquerade {
        add_base_chain(
            &mut batch,
            &spec.table,
            POSTROUTING,
            "nat",
            NF_INET_POST_ROUTING,
            NF_IP_PRI_NAT_SRC,
        );
        add_rule(
            &mut batch,
            &spec.table,
            POSTROUTING,
            rule_expressions(&spec.network),
            tags.next(),
        );
    }
    if spec.forward_accept {
        add_base_chain(
            &mut batch,
            &spec.table,
            FORWARD,
            "filter",
            NF_INET_FORWARD,
            NF_IP_PRI_FILTER,
        );
        add_rule(
            &mut batch,
            &spec.table,
            FORWARD,
            accept_expressions(IPV4_SADDR, &spec.network),
            tags.next(),
        );
        add_rule(
            &mut batch,
            &spec.table,
            FORWARD,
            accept_expressions(IPV4_DADDR, &spec.network),
            tags.next(),
        );
    }
    socket.apply("install the firewall rules", batch)?;
    Ok(true)
}

fn add_base_chain(
    batch: &mut Batch,
    table: &str,
    name: &str,
    kind: &str,
    hook: u32,
    priority: i32,
) {
    let hook = Attrs::default()
        .be32(NFTA_HOOK_HOOKNUM, hook)
        .be32(NFTA_HOOK_PRIORITY, priority as u32)
        .done();
    let chain = Attrs::default()
        .string(NFTA_CHAIN_TABLE, table)
        .string(NFTA_CHAIN_NAME, name)
        .nested(NFTA_CHAIN_HOOK, hook)
        .string(NFTA_CHAIN_TYPE, kind)
        .done();
    batch.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE, chain);
}

fn add_rule(batch: &mut Batch, table: &str, chain: &str, exprs: Attrs, tag: Option<Vec<u8>>) {
    let mut rule = Attrs::default();
    rule.string(NFTA_RULE_TABLE, table)
        .string(NFTA_RULE_CHAIN, chain)
        .nested(NFTA_RULE_EXPRESSIONS, exprs);
    if let Some(tag) = tag {
        rule.bytes(NFTA_RULE_USERDATA, &tag);
    }
    batch.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, rule.done());
}

/// Deletes the table if it exists. Blocking.
pub fn remove_firewall(table: &str) -> Result<()> {
    let mut socket = NfSocket::open()?;
    let mut batch = Batch::new(socket.seq);
    batch.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, table_attrs(table));
    batch.nft(NFT_MSG_DELTABLE, 0, table_attrs(table));
    socket.apply("remove the firewall rules", batch)
}

/// Forward chains of other tables (ip or inet) whose policy is drop, as
/// `family table chain`: they drop what our forward accepts let through,
/// unless a rule of theirs accepts it. Blocking.
pub fn forward_drop_policies(own_table: &str) -> Result<Vec<String>> {
    let mut socket = NfSocket::open()?;
    let mut found = Vec::new();
    socket.for_each_chain(NFPROTO_UNSPEC, |family, table, chain, hook, policy| {
        let family = match family {
            NFPROTO_IPV4 => "ip",
            NFPROTO_INET => "inet",
            _ => return,
        };
        let ours = family == "ip" && table == own_table;
        if !ours && hook == Some(NF_INET_FORWARD) && policy == Some(NF_DROP) {
            found.push(format!("{family} {table} {chain}"));
        }
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_aligned_and_big_endian() {
        let attrs = Attrs::default().be32(3, 0x0102_0304).string(1, "ab").done();
        assert_eq!(&attrs.0[..8], &[8, 0, 3, 0, 1, 2, 3, 4]);
        assert_eq!(&attrs.0[8..], &[7, 0, 1, 0, b'a', b'b', 0, 0]);
        assert_eq!(find_attr(&attrs.0, 1), Some(b"ab\0".to_vec()));
        assert_eq!(find_attr(&attrs.0, 9), None);
        assert_eq!(
            find_attr(&[200, 0, 1, 0], 1),
            None,
            "a length past the end is refused"
        );
    }

    #[test]
    fn the_rule_matches_the_network_both_ways() {
        let network: Ipv4Network = "10.5.0.0/16".parse().expect("cidr");
        let exprs = rule_expressions(&network);
        // payload+bitwise+cmp twice, then masq.
        let mut count = 0;
        let mut rest = &exprs.0[..];
        while rest.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            count += 1;
            rest = &rest[len.next_multiple_of(4)..];
        }
        assert_eq!(count, 7);
        let needle = [255u8, 255, 0, 0];
        assert!(
            exprs.0.windows(4).any(|w| w == needle),
            "the /16 mask is in the rule"
        );
        assert!(
            exprs.0.windows(4).any(|w| w == [10, 5, 0, 0]),
            "and the network"
        );
    }
}
