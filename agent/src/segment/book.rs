//! The segment's peers, without I/O: who they are and why (etcd leases,
//! `connect`), when each is due to be contacted, what each holds on the
//! segment, and which of them are live. The caller does the talking and
//! reports each outcome (`heard`, `failed`) with the time it happened.
//!
//! A peer is live while it was heard within the timeout: only live peers
//! get the segment's broadcast and their containers' MACs in the FDB, so a
//! peer that went away stops being sent traffic once the timeout passes,
//! and comes back at its next answer. `forget` takes a peer out at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::Ipv4Network;

/// The peer port, weave's: control traffic between the hosts of the segment.
pub const DEFAULT_PEER_PORT: u16 = 6783;

/// Why a host is a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// It holds a subnet lease in the same etcd prefix.
    Etcd,
    /// `tartan connect` named it, here or on its side.
    Manual,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Etcd => "etcd",
            Source::Manual => "manual",
        })
    }
}

/// How the last contact with a peer went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Not tried yet.
    Connecting,
    Connected,
    /// The last try failed, for this reason; the next waits for the back-off.
    Retrying(String),
}

/// An address on the segment and what holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Claim {
    pub address: Ipv4Network,
    pub mac: [u8; 6],
    /// The container, as its host names it.
    pub container: String,
    /// The holding host's public address.
    pub host: Ipv4Addr,
}

impl Claim {
    /// "c1 on 10.170.0.3": the holder, for an operator.
    pub fn holder(&self) -> String {
        format!("{} on {}", self.container, self.host)
    }
}

/// How often peers are contacted, and how long a silent one stays live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Between two exchanges with a connected peer.
    pub interval: Duration,
    /// A peer not heard for this long is no longer sent anything.
    pub timeout: Duration,
    /// The first retry after a failure; doubled at each failure up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
struct Peer {
    sources: BTreeSet<Source>,
    state: LinkState,
    /// When it last answered or called: for liveness, and for people.
    last_heard: Option<(Instant, SystemTime)>,
    claims: Vec<Claim>,
    next_try: Instant,
    /// The wait after the next failure.
    backoff: Duration,
}

/// One peer as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub address: SocketAddrV4,
    pub sources: Vec<Source>,
    pub state: LinkState,
    pub last_heard: Option<SystemTime>,
    pub claims: usize,
}

/// Two or more holders of one address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub address: Ipv4Addr,
    /// "c1 on 10.170.0.2", sorted.
    pub holders: Vec<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is held by {}",
            self.address,
            self.holders.join(" and by ")
        )
    }
}

#[derive(Debug, Clone)]
pub struct PeerBook {
    local: SocketAddrV4,
    timing: Timing,
    peers: BTreeMap<SocketAddrV4, Peer>,
}

impl PeerBook {
    /// The peers of the host reached at `local`.
    pub fn new(local: SocketAddrV4, timing: Timing) -> PeerBook {
        PeerBook {
            local,
            timing,
            peers: BTreeMap::new(),
        }
    }

    pub fn local(&self) -> SocketAddrV4 {
        self.local
    }

    fn add_source(&mut self, address: SocketAddrV4, source: Source, now: Instant) -> bool {
        if address == self.local {
            return false;
        }
        let backoff = self.timing.backoff_min;
        let peer = self.peers.entry(address).or_insert_with(|| Peer {
            sources: BTreeSet::new(),
            state: LinkState::Connecting,
            last_heard: None,
            claims: Vec::new(),
            next_try: now,
            backoff,
        });
        peer.sources.insert(source)
    }

    fn drop_source(&mut self, address: SocketAddrV4, source: Source) -> bool {
        let Some(peer) = self.peers.get_mut(&address) else {
            return false;
        };
        let had = peer.sources.remove(&source);
        if peer.sources.is_empty() {
            self.peers.remove(&address);
        }
        had
    }

    /// The hosts holding leases: they replace the etcd-sourced peers.
    pub fn set_etcd(&mut self, hosts: &BTreeSet<SocketAddrV4>, now: Instant) {
        let gone: Vec<SocketAddrV4> = self
            .peers
            .iter()
            .filter(|(address, peer)| {
                peer.sources.contains(&Source::Etcd) && !hosts.contains(address)
            })
            .map(|(address, _)| *address)
            .collect();
        for address in gone {
            self.drop_source(address, Source::Etcd);
        }
        for address in hosts {
            self.add_source(*address, Source::Etcd, now);
        }
    }

    /// Adds a manual peer, to be contacted at once; true if it was not one.
    /// A known peer that was backing off is tried again now: an operator's
    /// `connect`, or the peer calling us, says it is worth it.
    pub fn add_manual(&mut self, address: SocketAddrV4, now: Instant) -> bool {
        let added = self.add_source(address, Source::Manual, now);
        self.retry_now(address, now);
        added
    }

    /// Contact `address` at once, with the back-off started over.
    pub fn retry_now(&mut self, address: SocketAddrV4, now: Instant) {
        let min = self.timing.backoff_min;
        if let Some(peer) = self.peers.get_mut(&address) {
            if peer.state != LinkState::Connected {
                peer.next_try = now;
                peer.backoff = min;
            }
        }
    }

    /// Every connected peer is due now: this host's claims changed, and
    /// the peers should hear it before their next round.
    pub fn all_due_now(&mut self, now: Instant) {
        for peer in self.peers.values_mut() {
            if peer.state == LinkState::Connected {
                peer.next_try = peer.next_try.min(now);
            }
        }
    }

    /// Drops a manual peer; one etcd also names stays. True if it was manual.
    pub fn forget(&mut self, address: SocketAddrV4) -> bool {
        self.drop_source(address, Source::Manual)
    }

    /// Makes `addresses` the manual peers; returns the ones dropped.
    pub fn replace_manual(
        &mut self,
        addresses: &BTreeSet<SocketAddrV4>,
        now: Instant,
    ) -> Vec<SocketAddrV4> {
        let dropped: Vec<SocketAddrV4> = self
            .manual()
            .into_iter()
            .filter(|address| !addresses.contains(address))
            .collect();
        for address in &dropped {
            self.forget(*address);
        }
        for address in addresses {
            self.add_manual(*address, now);
        }
        dropped
    }

    pub fn manual(&self) -> Vec<SocketAddrV4> {
        self.peers
            .iter()
            .filter(|(_, peer)| peer.sources.contains(&Source::Manual))
            .map(|(address, _)| *address)
            .collect()
    }

    pub fn contains(&self, address: SocketAddrV4) -> bool {
        self.peers.contains_key(&address)
    }

    /// Whether this host keeps `address` as a manual peer (it asks it to
    /// keep this host too).
    pub fn is_manual(&self, address: SocketAddrV4) -> bool {
        self.peers
            .get(&address)
            .is_some_and(|peer| peer.sources.contains(&Source::Manual))
    }

    /// The peers to contact now. Each is then not due again until its
    /// outcome is reported, or the timeout passes.
    pub fn take_due(&mut self, now: Instant) -> Vec<SocketAddrV4> {
        let guard = self.timing.timeout;
        self.peers
            .iter_mut()
            .filter(|(_, peer)| peer.next_try <= now)
            .map(|(address, peer)| {
                peer.next_try = now + guard;
                *address
            })
            .collect()
    }

    /// When the next peer falls due.
    pub fn next_due(&self) -> Option<Instant> {
        self.peers.values().map(|peer| peer.next_try).min()
    }

    /// `address` answered, or called us, holding `claims`. Claims carry
    /// their holder's address: a peer speaks only for itself.
    pub fn heard(
        &mut self,
        address: SocketAddrV4,
        mut claims: Vec<Claim>,
        now: Instant,
        wall: SystemTime,
    ) {
        let (interval, min) = (self.timing.interval, self.timing.backoff_min);
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        for claim in &mut claims {
            claim.host = *address.ip();
        }
        claims.sort();
        peer.state = LinkState::Connected;
        peer.last_heard = Some((now, wall));
        peer.claims = claims;
        peer.next_try = now + interval;
        peer.backoff = min;
    }

    /// A try at `address` failed; it is tried again after the back-off.
    pub fn failed(&mut self, address: SocketAddrV4, reason: String, now: Instant) {
        let max = self.timing.backoff_max;
        let Some(peer) = self.peers.get_mut(&address) else {
            return;
        };
        peer.state = LinkState::Retrying(reason);
        peer.next_try = now + peer.backoff;
        peer.backoff = (peer.backoff * 2).min(max);
    }

    fn is_live(&self, peer: &Peer, now: Instant) -> bool {
        peer.last_heard
            .is_some_and(|(heard, _)| now.saturating_duration_since(heard) < self.timing.timeout)
    }

    /// The peers heard within the timeout: the FDB's destinations.
    pub fn live(&self, now: Instant) -> Vec<Ipv4Addr> {
        let hosts: BTreeSet<Ipv4Addr> = self
            .peers
            .iter()
            .filter(|(_, peer)| self.is_live(peer, now))
            .map(|(address, _)| *address.ip())
            .collect();
        hosts.into_iter().collect()
    }

    /// The MACs of live peers' containers, and where they are.
    pub fn known_macs(&self, now: Instant) -> Vec<([u8; 6], Ipv4Addr)> {
        self.peers
            .values()
            .filter(|peer| self.is_live(peer, now))
            .flat_map(|peer| peer.claims.iter().map(|claim| (claim.mac, claim.host)))
            .collect()
    }

    /// What every peer in the book holds, live or not: an address a silent
    /// peer holds is still its own.
    pub fn remote_claims(&self) -> impl Iterator<Item = &Claim> {
        self.peers.values().flat_map(|peer| peer.claims.iter())
    }

    /// The addresses held by more than one container, counting this host's
    /// own claims `local`.
    pub fn conflicts(&self, local: &[Claim]) -> Vec<Conflict> {
        let mut holders: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
        for claim in local.iter().chain(self.remote_claims()) {
            holders
                .entry(claim.address.ip())
                .or_default()
                .insert(claim.holder());
        }
        holders
            .into_iter()
            .filter(|(_, holders)| holders.len() > 1)
            .map(|(address, holders)| Conflict {
                address,
                holders: holders.into_iter().collect(),
            })
            .collect()
    }

    pub fn view(&self) -> Vec<PeerView> {
        self.peers
            .iter()
            .map(|(address, peer)| PeerView {
                address: *address,
                sources: peer.sources.iter().copied().collect(),
                state: peer.state.clone(),
                last_heard: peer.last_heard.map(|(_, wall)| wall),
                claims: peer.claims.len(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(host: u8) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, host), DEFAULT_PEER_PORT)
    }

    fn claim(ip: [u8; 4], container: &str) -> Claim {
        Claim {
            address: Ipv4Network::new(ip.into(), 24).expect("prefix"),
            mac: [2, 0x42, ip[0], ip[1], ip[2], ip[3]],
            container: container.into(),
            host: Ipv4Addr::UNSPECIFIED,
        }
    }

    fn timing() -> Timing {
        Timing {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(16),
        }
    }

    #[test]
    fn a_new_peer_is_due_at_once_and_not_again_until_its_outcome() {
        let now = Instant::now();
        let mut book = PeerBook::new(at(1), timing());
        assert!(book.add_manual(at(2), now));
        assert!(!book.add_manual(at(2), now), "already manual");
        assert!(!book.add_manual(at(1), now), "this host is no peer");
        assert_eq!(book.take_due(now), vec![at(2)]);
        assert!(book.take_due(now).is_empty(), "in flight");
        book.heard(at(2), vec![], now, SystemTime::now());
        assert!(book.take_due(now + Duration::from_secs(4)).is_empty());
        assert_eq!(book.take_due(now + Duration::from_secs(5)), vec![at(2)]);
    }

    #[test]
    fn failures_back_off_up_to_the_cap_and_an_answer_resets_it() {
        let mut now = Instant::now();
        let mut book = PeerBook::new(at(1), timing());
        book.add_manual(at(2), now);
        let mut waits = Vec::new();
        for _ in 0..5 {
            assert_eq!(book.take_due(now), vec![at(2)]);
            book.failed(at(2), "refused".into(), now);
            let next = book.next_due().expect("due later");
            waits.push(next - now);
            now = next;
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 16]);
        assert_eq!(book.view()[0].state, LinkState::Retrying("refused".into()));
        book.take_due(now);
        book.heard(at(2), vec![], now, SystemTime::now());
        book.take_due(now + Duration::from_secs(5));
        book.failed(at(2), "gone".into(), now + Duration::from_secs(5));
        assert_eq!(
            book.next_due().expect("due") - (now + Duration::from_secs(5)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn a_change_here_makes_connected_peers_due_at_once() {
        let now = Instant::now();
        let mut book = PeerBook::new(at(1), timing());
        book.add_manual(at(2), now);
        book.add_manual(at(3), now);
        book.take_due(now);
        book.heard(at(2), vec![], now, SystemTime::now());
        book.failed(at(3), "refused".into(), now);
        book.all_due_now(now);
        assert_eq!(book.take_due(now), vec![at(2)], "not the one backing off");
    }

    #[test]
    fn connect_again_retries_a_backing_off_peer_at_once() {
        let now = Instant::now();
        let mut book = PeerBook::new(at(1), timing());
        book.add_manual(at(2), now);
        book.take_due(now);
        book.failed(at(2), "refused".into(), now);
        assert!(book.take_due(now).is_empty());
        book.add_manual(at(2), now);
        assert_eq!(book.take_due(now), vec![at(2)]);
    }

    #[test]
    fn a_silent_peer_stays_live_until_the_timeout_and_comes_back_when_heard() {
        let now = Instant::now();
        let mut book = PeerBook::new(at(1), timing());
        book.add_manual(at(2), now);
        assert!(book.live(now).is_empty(), "not heard yet");
        book.heard(
            at(2),
            vec![claim([10, 32, 0, 2], "c1")],
            now,
            SystemTime::now(),
        );
        assert_eq!(book.live(now), vec![Ipv4Addr::new(10, 0, 0, 2)]);
        let macs = book.known_macs(now);
        assert_eq!(
            macs,
            vec![([2, 0x42, 10, 32, 0, 2], Ipv4Addr::new(10, 0, 0, 2))]
        );
        let later = now + Duration::from_secs(29);
        book.failed(at(2), "timed out".into(), later);
        assert_eq!(book.live(later).len(), 1, "within the timeout");
        let gone = now + Duration::from_secs(30);
        assert!(book.live(gone).is_empty());
        assert!(book.known_macs(gone).is_empty());
        assert_eq!(book.remote_claims().count(), 1, "its address stays its own");
        book.heard(
            at(2),
            vec![claim([10, 32, 0, 2], "c1")],
            gone,
            SystemTime::now(),
        );
        assert_eq!(book.live(gone).len(), 1);
    }

    #[test]
    fn forget_drops_a_manual_peer_at_once_but_not_one_etcd_names() {
        let now = Instant::now();
        let mut book = PeerBook::new(at(1), timing());
        book.add_manual(at(2), now);
        book.add_manual(at(3), now);
        book.set_etcd(&BTreeSet::from([at(3)]), now);
        book.heard(at(2), vec![], now, SystemTime::now());
        book.heard(at(3), vec![], now, SystemTime::now());
        assert!(book.forget(at(2)));
        assert!(book.forget(at(3)));
        assert!(!book.forget(at(4)));
        assert_eq!(book.live(now), vec![Ipv4Addr::new(10, 0, 0, 3)]);
        assert_eq!(book.view()[0].sources, vec![Source::Etcd]);
        book.set_etcd(&BTreeSet::new(), now);
        assert!(book.view().is_empty());
    }

    #[test]
    fn replace_makes_the_manual_list_exactly_the_given_hosts() {
        let now = Instant::now();
        let mut book = PeerBook::new(at(1), timing());
        book.add_manual(at(2), now);
        book.add_manual(at(3), now);
        let dropped = book.replace_manual(&BTreeSet::from([at(3), at(4)]), now);
        assert_eq!(dropped, vec![at(2)]);
        assert_eq!(book.manual(), vec![at(3), at(4)]);
    }

    #[test]
    fn claims_speak_for_their_sender_and_conflicts_name_every_holder() {
        let now = Instant::now();
        let mut book = PeerBook::new(at(1), timing());
        book.add_manual(at(2), now);
        let mut forged = claim([10, 1, 1, 1], "c1");
        forged.host = Ipv4Addr::new(10, 0, 0, 9);
        book.heard(at(2), vec![forged], now, SystemTime::now());
        let theirs: Vec<&Claim> = book.remote_claims().collect();
        assert_eq!(theirs[0].host, Ipv4Addr::new(10, 0, 0, 2));
        let mut ours = claim([10, 1, 1, 1], "c1");
        ours.host = Ipv4Addr::new(10, 0, 0, 1);
        let conflicts = book.conflicts(&[ours.clone()]);
        assert_eq!(conflicts.len(), 1);
        assert_eq!(
            conflicts[0].to_string(),
            "10.1.1.1 is held by c1 on 10.0.0.1 and by c1 on 10.0.0.2"
        );
        let mut other = ours;
        other.address = Ipv4Network::new(Ipv4Addr::new(10, 1, 1, 2), 24).expect("prefix");
        assert!(book.conflicts(&[other]).is_empty());
    }
}
