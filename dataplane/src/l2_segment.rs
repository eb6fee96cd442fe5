//! The flat L2 segment (weave's model): every host has a bridge
//! `tartan-l2` whose uplink is a VXLAN device of its own (`tartan-l2vx`),
//! with its own VNI and UDP port, apart from the routed overlay. Containers
//! on different hosts with addresses in one subnet meet as on one switch.
//!
//! Broadcast and unknown unicast are replicated by this host to every peer
//! (head-end replication: one all-zero-MAC FDB entry per peer, appended);
//! MACs known to live behind a peer get a static FDB entry. The VXLAN
//! device does not learn: its FDB is exactly what is programmed, so that a
//! peer taken out of the set receives nothing more at once, rather than
//! when a learnt entry ages out, and a MAC that moves follows the caller.
//! The cost is that unicast to a MAC nobody has announced is flooded.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::link::InfoVxlan;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::RouteType;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVxlan};

use crate::error::netlink_err;
use crate::link::{check_ifname, Ensured, LinkState};
use crate::overlay::{neighbour_ip, neighbour_mac, pipelined};
use crate::{DataplaneError, Netlink, Result};

/// The segment's bridge: containers' veths and the VXLAN device are its ports.
pub const L2_SEGMENT_BRIDGE: &str = "tartan-l2";
/// The segment's VXLAN device.
pub const L2_SEGMENT_VXLAN: &str = "tartan-l2vx";
/// The segment's VNI: "L2" in ASCII, far from flannel's default of 1.
pub const L2_SEGMENT_VNI: u32 = 0x4c32;
/// The segment's UDP port: weave's data port, so that firewalls opened for
/// a weave segment let this one through. It is not wire-compatible with
/// weave, and differs from the routed overlay's 8472 and IANA's 4789.
pub const L2_SEGMENT_PORT: u16 = 6784;
/// The container side's name when none is asked for, as in weave.
pub const L2_SEGMENT_IFNAME: &str = "ethwe";
/// What VXLAN over IPv4 adds to a frame: outer IPv4, UDP, VXLAN and Ethernet headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// What the segment's devices must look like on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L2SegmentSpec {
    pub bridge: String,
    pub vxlan: String,
    pub vni: u32,
    pub port: u16,
    /// The underlay address encapsulated frames leave from.
    pub local: Ipv4Addr,
    /// The underlay interface.
    pub underlay_index: u32,
    /// Of the VXLAN device, the bridge, and the containers' interfaces.
    pub mtu: u32,
}

impl L2SegmentSpec {
    /// The default names, VNI and port over an underlay interface of `underlay_mtu`.
    pub fn new(local: Ipv4Addr, underlay_index: u32, underlay_mtu: u32) -> L2SegmentSpec {
        L2SegmentSpec {
            bridge: L2_SEGMENT_BRIDGE.into(),
            vxlan: L2_SEGMENT_VXLAN.into(),
            vni: L2_SEGMENT_VNI,
            port: L2_SEGMENT_PORT,
            local,
            underlay_index,
            mtu: underlay_mtu.saturating_sub(VXLAN_OVERHEAD),
        }
    }
}

/// The segment's devices, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Segment {
    pub bridge_index: u32,
    pub vxlan_index: u32,
}

/// One FDB entry of the VXLAN device: frames for `mac` go to the peer at
/// `destination`. The all-zero MAC is the flood entry: broadcast and
/// unknown unicast go to every peer holding one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L2FdbEntry {
    pub mac: [u8; 6],
    pub destination: Ipv4Addr,
}

/// The all-zero MAC: the VXLAN FDB's default entry.
pub const FLOOD_MAC: [u8; 6] = [0; 6];

impl L2FdbEntry {
    /// The entry that sends broadcast and unknown unicast to `peer`.
    pub fn flood(peer: Ipv4Addr) -> L2FdbEntry {
        L2FdbEntry {
            mac: FLOOD_MAC,
            destination: peer,
        }
    }

    pub fn is_flood(&self) -> bool {
        self.mac == FLOOD_MAC
    }
}

/// The VXLAN device's FDB, as it should be or as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2FdbState {
    pub entries: BTreeSet<L2FdbEntry>,
}

/// What `apply_l2_fdb` has to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct L2FdbChanges {
    pub add: Vec<L2FdbEntry>,
    pub remove: Vec<L2FdbEntry>,
}

impl L2FdbChanges {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    pub fn count(&self) -> usize {
        self.add.len() + self.remove.len()
    }
}

fn is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != FLOOD_MAC
}

/// The FDB for the live peers `peers` and the MACs `known` to live behind
/// them. Pure.
///
/// Nothing points at a peer outside `peers`: a known MAC whose peer is not
/// in the set is left out, so a peer that goes away receives nothing. How
/// long a gone peer's MACs are remembered, so that they come back with it,
/// is the caller's. This host (`local`) is never a destination: its own
/// containers are on the bridge. A MAC listed twice goes to the later peer
/// (the latest announcement); multicast and all-zero MACs are not MACs a
/// container has, and are ignored.
pub fn desired_l2_fdb(
    local: Ipv4Addr,
    peers: &[Ipv4Addr],
    known: &[([u8; 6], Ipv4Addr)],
) -> L2FdbState {
    let live: BTreeSet<Ipv4Addr> = peers.iter().copied().filter(|p| *p != local).collect();
    let mut entries: BTreeSet<L2FdbEntry> = live.iter().copied().map(L2FdbEntry::flood).collect();
    let mut latest = std::collections::BTreeMap::new();
    for (mac, peer) in known {
        if is_unicast(mac) {
            latest.insert(*mac, *peer);
        }
    }
    entries.extend(
        latest
            .into_iter()
            .filter(|(_, peer)| live.contains(peer))
            .map(|(mac, destination)| L2FdbEntry { mac, destination }),
    );
    L2FdbState { entries }
}

/// The difference between what should be and what is. Pure. A MAC that
/// moved to another peer is a removal and an addition.
pub fn diff_l2_fdb(desired: &L2FdbState, observed: &L2FdbState) -> L2FdbChanges {
    L2FdbChanges {
        add: desired
            .entries
            .difference(&observed.entries)
            .copied()
            .collect(),
        remove: observed
            .entries
            .difference(&desired.entries)
            .copied()
            .collect(),
    }
}

/// A VXLAN device whose identity differs cannot be changed in place.
fn needs_recreate(link: &LinkState, spec: &L2SegmentSpec) -> bool {
    let Some(vx) = &link.vxlan else { return true };
    link.kind.as_deref() != Some("vxlan")
        || vx.vni != Some(spec.vni)
        || vx.port != Some(spec.port)
        || vx.local != Some(spec.local)
        || vx.underlay != Some(spec.underlay_index)
        || vx.learning != Some(false)
}

/// The netlink flags of an FDB addition: the flood entry takes one more
/// destination (`bridge fdb append`); a MAC's entry is replaced.
fn fdb_add_flags(entry: &L2FdbEntry) -> u16 {
    let how = if entry.is_flood() {
        NLM_F_APPEND
    } else {
        NLM_F_REPLACE
    };
    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | how
}

/// The RTM_NEWNEIGH message for an FDB entry on the VXLAN device. NTF_SELF:
/// without it the kernel gives the entry to the bridge the device is a port of.
fn fdb_message(vxlan_index: u32, entry: &L2FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = vxlan_index;
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.kind = RouteType::Unspec;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            entry.destination,
        )));
    msg
}

impl Netlink {
    /// Creates or repairs the segment's bridge and VXLAN device, the latter
    /// a port of the former, both up with the segment's MTU. Idempotent.
    pub async fn ensure_l2_segment(&self, spec: &L2SegmentSpec) -> Result<L2Segment> {
        check_ifname(&spec.bridge)?;
        check_ifname(&spec.vxlan)?;
        let made_bridge = self.ensure_plain_bridge(&spec.bridge).await? == Ensured::Created;
        let mut made_vxlan = false;
        let result = self.finish_l2_segment(spec, &mut made_vxlan).await;
        let Err(err) = result else {
            return result;
        };
        // Nothing this call made stays behind a failure (a taken port).
        let vxlan_undo = match made_vxlan {
            true => self.delete_link_named(&spec.vxlan).await,
            false => Ok(()),
        };
        let bridge_undo = match made_bridge {
            true => self.delete_link_named(&spec.bridge).await,
            false => Ok(()),
        };
        let undo = match (vxlan_undo, bridge_undo) {
            (Ok(()), other) | (other, Ok(())) => other,
            (Err(vxlan), Err(bridge)) => Err(bridge.undone(Err(vxlan))),
        };
        Err(err.undone(undo))
    }

    /// The bridge exists: its MTU, and the VXLAN device made or remade as
    /// `spec` says and up on the bridge. `made_vxlan` says whether it was made here.
    async fn finish_l2_segment(
        &self,
        spec: &L2SegmentSpec,
        made_vxlan: &mut bool,
    ) -> Result<L2Segment> {
        let bridge = self.link(&spec.bridge).await?.ok_or_else(|| {
            DataplaneError::Conflict(format!("{} vanished after creation", spec.bridge))
        })?;
        if bridge.mtu != spec.mtu {
            self.set_up_with_mtu(bridge.index, spec.mtu).await?;
        }
        let vxlan = match self.link(&spec.vxlan).await? {
            Some(link) if !needs_recreate(&link, spec) => link,
            other => {
                if let Some(stale) = other {
                    self.delete_link(stale.index).await?;
                }
                self.add_l2_vxlan(spec).await?;
                *made_vxlan = true;
                self.link(&spec.vxlan).await?.ok_or_else(|| {
                    DataplaneError::Conflict(format!("{} vanished after creation", spec.vxlan))
                })?
            }
        };
        if !vxlan.up || vxlan.mtu != spec.mtu || vxlan.controller != Some(bridge.index) {
            let plug = LinkUnspec::new_with_index(vxlan.index)
                .mtu(spec.mtu)
                .controller(bridge.index)
                .up()
                .build();
            self.handle
                .link()
                .set(plug)
                .execute()
                .await
                .map_err(|source| match source {
                    // The UDP socket is bound when the device comes up.
                    rtnetlink::Error::NetlinkError(ref e) if e.raw_code() == -libc::EADDRINUSE => {
                        DataplaneError::Conflict(format!(
                            "UDP port {} is taken on this host, so {} cannot come up",
                            spec.port, spec.vxlan
                        ))
                    }
                    source => DataplaneError::Netlink {
                        op: "l2 vxlan set up on its bridge",
                        source,
                    },
                })?;
        }
        Ok(L2Segment {
            bridge_index: bridge.index,
            vxlan_index: vxlan.index,
        })
    }

    async fn add_l2_vxlan(&self, spec: &L2SegmentSpec) -> Result<()> {
        let msg = LinkMessageBuilder::<LinkVxlan>::new(&spec.vxlan)
            .id(spec.vni)
            .port(spec.port)
            .local(spec.local)
            .dev(spec.underlay_index)
            .learning(false)
            .append_info_data(InfoVxlan::Ttl(0))
            .mtu(spec.mtu)
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|source| match source {
                rtnetlink::Error::NetlinkError(ref e) if e.raw_code() == -libc::EOPNOTSUPP => {
                    DataplaneError::Unsupported("vxlan")
                }
                source => DataplaneError::Netlink {
                    op: "l2 vxlan add",
                    source,
                },
            })
    }

    /// Deletes the segment's VXLAN device and bridge; containers' veths on
    /// the bridge stay, unplugged. Returns whether anything was there.
    pub async fn remove_l2_segment(&self, spec: &L2SegmentSpec) -> Result<bool> {
        let mut removed = false;
        for (name, kind) in [(&spec.vxlan, "vxlan"), (&spec.bridge, "bridge")] {
            if let Some(link) = self.link(name).await? {
                if link.kind.as_deref() != Some(kind) {
                    return Err(DataplaneError::Conflict(format!(
                        "{name} is a {} device, not the segment's {kind}",
                        link.kind.as_deref().unwrap_or("plain")
                    )));
                }
                self.delete_link(link.index).await?;
                removed = true;
            }
        }
        Ok(removed)
    }

    /// Reads the permanent FDB entries of the segment's VXLAN device (its
    /// own, not the bridge's entries for it, which carry no destination).
    pub async fn observe_l2_fdb(&self, vxlan_index: u32) -> Result<L2FdbState> {
        crate::error::redo_interrupted(|| self.observe_l2_fdb_once(vxlan_index)).await
    }

    async fn observe_l2_fdb_once(&self, vxlan_index: u32) -> Result<L2FdbState> {
        let mut state = L2FdbState::default();
        let mut fdb = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = fdb.try_next().await.map_err(netlink_err("l2 fdb dump"))? {
            if msg.header.ifindex != vxlan_index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(destination), Some(mac)) = (neighbour_ip(&msg), neighbour_mac(&msg)) {
                state.entries.insert(L2FdbEntry { mac, destination });
            }
        }
        Ok(state)
    }

    /// Brings the VXLAN device's FDB to `desired`, touching only what
    /// differs: removals first (a moved MAC's old entry), then additions.
    /// Every change is attempted; the first error is returned after the rest ran.
    pub async fn apply_l2_fdb(
        &self,
        vxlan_index: u32,
        desired: &L2FdbState,
    ) -> Result<L2FdbChanges> {
        let observed = self.observe_l2_fdb(vxlan_index).await?;
        let changes = diff_l2_fdb(desired, &observed);
        let mut errors = pipelined(changes.remove.iter().map(|entry| {
            // With a destination, only that one goes from a flood entry's list.
            self.delete_neighbour(
                vxlan_index,
                AddressFamily::Bridge,
                entry.destination,
                entry.mac,
            )
        }))
        .await;
        errors.extend(
            pipelined(
                changes
                    .add
                    .iter()
                    .map(|entry| self.add_l2_fdb_entry(vxlan_index, entry)),
            )
            .await,
        );
        match errors.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(changes),
        }
    }

    /// rtnetlink's neighbour request sends NLM_F_EXCL or NLM_F_REPLACE, and
    /// the kernel refuses both for a second destination of the flood entry:
    /// that takes NLM_F_APPEND, so the request is made here.
    async fn add_l2_fdb_entry(&self, vxlan_index: u32, entry: &L2FdbEntry) -> Result<()> {
        let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(fdb_message(
            vxlan_index,
            entry,
        )));
        request.header.flags = fdb_add_flags(entry);
        let mut handle = self.handle.clone();
        let mut response = handle.request(request).map_err(netlink_err("l2 fdb add"))?;
        while let Some(message) = futures::StreamExt::next(&mut response).await {
            if let NetlinkPayload::Error(err) = message.payload {
                return Err(DataplaneError::Netlink {
                    op: "l2 fdb add",
                    source: rtnetlink::Error::NetlinkError(err),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::VxlanInfo;

    const LOCAL: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);
    const C: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 3);
    const MAC_B: [u8; 6] = [0x02, 0x42, 10, 0, 0, 2];
    const MAC_C: [u8; 6] = [0x02, 0x42, 10, 0, 0, 3];

    fn entry(mac: [u8; 6], destination: Ipv4Addr) -> L2FdbEntry {
        L2FdbEntry { mac, destination }
    }

    #[test]
    fn every_live_peer_gets_a_flood_entry_and_its_known_macs() {
        let desired = desired_l2_fdb(LOCAL, &[C, B, LOCAL, B], &[(MAC_B, B), (MAC_C, C)]);
        let expected: BTreeSet<_> = [
            L2FdbEntry::flood(B),
            L2FdbEntry::flood(C),
            entry(MAC_B, B),
            entry(MAC_C, C),
        ]
        .into();
        assert_eq!(desired.entries, expected, "no entry towards this host");
    }

    #[test]
    fn nothing_points_at_a_peer_that_is_not_live() {
        let desired = desired_l2_fdb(LOCAL, &[B], &[(MAC_B, B), (MAC_C, C)]);
        assert!(desired.entries.iter().all(|e| e.destination == B));
        assert_eq!(desired.entries.len(), 2);
        assert!(desired_l2_fdb(LOCAL, &[], &[(MAC_B, B)]).entries.is_empty());
    }

    #[test]
    fn a_mac_goes_to_its_latest_peer_and_only_unicast_macs_count() {
        let moved = desired_l2_fdb(LOCAL, &[B, C], &[(MAC_B, B), (MAC_B, C)]);
        assert!(moved.entries.contains(&entry(MAC_B, C)));
        assert!(!moved.entries.contains(&entry(MAC_B, B)));
        let odd = desired_l2_fdb(
            LOCAL,
            &[B],
            &[
                (FLOOD_MAC, C),
                ([0x01, 0, 0x5e, 0, 0, 1], B),
                ([0xff; 6], B),
            ],
        );
        assert_eq!(odd.entries, [L2FdbEntry::flood(B)].into());
    }

    #[test]
    fn the_diff_adds_what_is_missing_and_removes_what_is_stale() {
        let desired = desired_l2_fdb(LOCAL, &[B, C], &[(MAC_B, C)]);
        let observed = desired_l2_fdb(LOCAL, &[B], &[(MAC_B, B)]);
        let changes = diff_l2_fdb(&desired, &observed);
        assert_eq!(changes.add, vec![L2FdbEntry::flood(C), entry(MAC_B, C)]);
        assert_eq!(changes.remove, vec![entry(MAC_B, B)]);
        assert!(diff_l2_fdb(&desired, &desired).is_empty());
    }

    #[test]
    fn flood_entries_are_appended_and_mac_entries_replaced() {
        let flood = fdb_add_flags(&L2FdbEntry::flood(B));
        assert_ne!(flood & NLM_F_APPEND, 0);
        assert_eq!(flood & NLM_F_REPLACE, 0);
        let mac = fdb_add_flags(&entry(MAC_B, B));
        assert_ne!(mac & NLM_F_REPLACE, 0);
        assert_eq!(mac & NLM_F_APPEND, 0);
        let msg = fdb_message(7, &L2FdbEntry::flood(B));
        assert!(msg.header.flags.contains(NeighbourFlags::Own), "NTF_SELF");
        assert_eq!(neighbour_ip(&msg), Some(B));
    }

    #[test]
    fn the_defaults_fit_and_identity_changes_force_recreation() {
        let spec = L2SegmentSpec::new(LOCAL, 2, 1500);
        assert_eq!(spec.mtu, 1450);
        check_ifname(&spec.bridge).expect("bridge name");
        check_ifname(&spec.vxlan).expect("vxlan name");
        check_ifname(L2_SEGMENT_IFNAME).expect("container side");
        let good = VxlanInfo {
            vni: Some(L2_SEGMENT_VNI),
            port: Some(L2_SEGMENT_PORT),
            local: Some(LOCAL),
            underlay: Some(2),
            learning: Some(false),
            gbp: false,
        };
        let link = |vx: VxlanInfo| LinkState {
            index: 9,
            name: L2_SEGMENT_VXLAN.into(),
            mtu: 1450,
            mac: None,
            up: true,
            kind: Some("vxlan".into()),
            controller: None,
            vxlan: Some(vx),
        };
        assert!(!needs_recreate(&link(good.clone()), &spec));
        for bad in [
            VxlanInfo {
                vni: Some(1),
                ..good.clone()
            },
            VxlanInfo {
                port: Some(8472),
                ..good.clone()
            },
            VxlanInfo {
                local: Some(B),
                ..good.clone()
            },
            VxlanInfo {
                underlay: Some(3),
                ..good.clone()
            },
            VxlanInfo {
                learning: Some(true),
                ..good.clone()
            },
        ] {
            assert!(needs_recreate(&link(bad.clone()), &spec), "{bad:?}");
        }
    }
}
