//! The UDP overlay's encapsulation rules, free of I/O: which peer an IP
//! packet read from the TUN device goes to, and whether a datagram received
//! from a peer may be written to it. flannel's wire format: the UDP payload is
//! the inner IPv4 packet, nothing more.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use ipnetwork::Ipv4Network;

/// The smallest IPv4 header.
const IPV4_HEADER: usize = 20;

/// Where each peer subnet's packets go: the peer's public address and port.
/// Subnets all have the network's SubnetLen, so a lookup is a mask and a hash.
#[derive(Debug, Clone, Default)]
pub struct PeerMap {
    mask: u32,
    peers: HashMap<u32, SocketAddrV4>,
}

impl PeerMap {
    pub fn new(subnet_len: u8) -> PeerMap {
        PeerMap {
            mask: if subnet_len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(subnet_len))
            },
            peers: HashMap::new(),
        }
    }

    pub fn insert(&mut self, subnet: Ipv4Network, peer: SocketAddrV4) {
        self.peers
            .insert(u32::from(subnet.network()) & self.mask, peer);
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn lookup(&self, destination: Ipv4Addr) -> Option<SocketAddrV4> {
        self.peers
            .get(&(u32::from(destination) & self.mask))
            .copied()
    }
}

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Not an IPv4 packet, or shorter than its header says.
    Malformed,
    /// No lease covers the destination.
    NoPeer,
    /// A datagram whose inner destination is not this node's subnet.
    NotOurs,
}

fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < IPV4_HEADER || packet[0] >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(packet[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if header_len < IPV4_HEADER || total_len < header_len || total_len > packet.len() {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

/// The peer a packet read from the TUN device is sent to.
pub fn route_outbound(packet: &[u8], peers: &PeerMap) -> Result<SocketAddrV4, Drop> {
    let destination = ipv4_destination(packet).ok_or(Drop::Malformed)?;
    peers.lookup(destination).ok_or(Drop::NoPeer)
}

/// Whether a datagram from a peer carries a packet for this node's subnet.
pub fn accept_inbound(payload: &[u8], own: &Ipv4Network) -> Result<(), Drop> {
    let destination = ipv4_destination(payload).ok_or(Drop::Malformed)?;
    if own.contains(destination) {
        Ok(())
    } else {
        Err(Drop::NotOurs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[12..16].copy_from_slice(&[10, 5, 1, 2]);
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn peers() -> PeerMap {
        let mut map = PeerMap::new(24);
        map.insert(
            "10.5.7.0/24".parse().expect("cidr"),
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 7), 8285),
        );
        map
    }

    #[test]
    fn packets_go_to_the_peer_holding_their_destination() {
        assert_eq!(
            route_outbound(&packet([10, 5, 7, 99], 84), &peers()),
            Ok(SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 7), 8285))
        );
        assert_eq!(
            route_outbound(&packet([10, 5, 8, 1], 84), &peers()),
            Err(Drop::NoPeer)
        );
    }

    #[test]
    fn malformed_packets_are_dropped() {
        let mut v6 = packet([10, 5, 7, 1], 84);
        v6[0] = 0x60;
        let mut short_header = packet([10, 5, 7, 1], 84);
        short_header[0] = 0x44;
        let mut lying = packet([10, 5, 7, 1], 84);
        lying[2..4].copy_from_slice(&200u16.to_be_bytes());
        for bad in [
            &v6[..],
            &short_header[..],
            &lying[..],
            &[0x45u8; 10][..],
            &[][..],
        ] {
            assert_eq!(route_outbound(bad, &peers()), Err(Drop::Malformed));
        }
    }

    #[test]
    fn only_packets_for_our_subnet_are_accepted() {
        let own: Ipv4Network = "10.5.34.0/24".parse().expect("cidr");
        assert_eq!(accept_inbound(&packet([10, 5, 34, 2], 60), &own), Ok(()));
        assert_eq!(
            accept_inbound(&packet([10, 5, 35, 2], 60), &own),
            Err(Drop::NotOurs)
        );
        assert_eq!(accept_inbound(b"junk", &own), Err(Drop::Malformed));
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = route_outbound(&bytes, &peers());
            let _ = accept_inbound(&bytes, &"10.5.34.0/24".parse().expect("cidr"));
        }
    }
}
