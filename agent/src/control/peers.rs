//! The table of peer leases and the event stream the dataplane consumes.
//!
//! The watcher feeds raw etcd changes in; the table answers with the changes
//! that matter (a lease appeared, changed or went away), already validated, so
//! that a consumer never sees a lease twice or a removal of something it was
//! never told about. A full re-list (after compaction or a broken stream) goes
//! through the same table and yields only the difference.

use std::collections::{BTreeMap, HashMap};

use ipnetwork::Ipv4Network;
use tartan_ipam::SubnetRange;

use crate::control::lease::{check_peer, parse_key, parse_lease, Lease, LeaseRejection};

/// A change to the set of peer leases.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// A lease appeared or its value changed.
    Upserted(Lease),
    /// A lease went away (deleted or expired).
    Removed(Ipv4Network),
}

/// One raw entry of the subnets key space, as etcd gave it.
#[derive(Debug, Clone)]
pub struct RawLease {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub etcd_lease: i64,
    pub mod_revision: i64,
}

/// One raw change from an etcd watch.
#[derive(Debug, Clone)]
pub enum RawChange {
    Put(RawLease),
    Delete { key: Vec<u8> },
}

/// A key the table refused, reported once per (key, revision).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub key: String,
    pub reason: LeaseRejection,
}

/// Valid peer leases by subnet.
pub struct PeerTable {
    subnets_prefix: String,
    range: SubnetRange,
    own: Option<Ipv4Network>,
    peers: BTreeMap<Ipv4Network, Lease>,
    /// Refused keys and the revision at which they were refused, so that each
    /// bad value is reported once rather than on every re-list.
    rejected: HashMap<Vec<u8>, i64>,
}

impl PeerTable {
    pub fn new(subnets_prefix: String, range: SubnetRange) -> PeerTable {
        PeerTable {
            subnets_prefix,
            range,
            own: None,
            peers: BTreeMap::new(),
            rejected: HashMap::new(),
        }
    }

    pub fn peers(&self) -> impl Iterator<Item = &Lease> {
        self.peers.values()
    }

    /// This node's own subnet, as last set.
    pub fn own(&self) -> Option<Ipv4Network> {
        self.own
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Sets this node's own subnet: its key is no peer, and peers overlapping it are refused.
    /// Returns the removals of peers that now overlap.
    pub fn set_own(&mut self, own: Option<Ipv4Network>) -> Vec<LeaseEvent> {
        self.own = own;
        let Some(own) = own else { return Vec::new() };
        let clashing: Vec<Ipv4Network> = self
            .peers
            .keys()
            .filter(|s| tartan_ipam::overlaps(s, &own))
            .copied()
            .collect();
        clashing
            .into_iter()
            .map(|s| {
                self.peers.remove(&s);
                LeaseEvent::Removed(s)
            })
            .collect()
    }

    /// Applies watch changes; returns the effective events and the newly refused keys.
    pub fn apply(&mut self, changes: Vec<RawChange>) -> (Vec<LeaseEvent>, Vec<Rejected>) {
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for change in changes {
            match change {
                RawChange::Put(raw) => self.put(raw, &mut events, &mut rejected),
                RawChange::Delete { key } => {
                    self.rejected.remove(&key);
                    if let Ok(subnet) = parse_key(&self.subnets_prefix, &key) {
                        if self.peers.remove(&subnet).is_some() {
                            events.push(LeaseEvent::Removed(subnet));
                        }
                    }
                }
            }
        }
        (events, rejected)
    }

    /// Replaces the table with a full listing; returns the difference as events.
    pub fn resync(&mut self, listing: Vec<RawLease>) -> (Vec<LeaseEvent>, Vec<Rejected>) {
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        let mut seen = std::collections::HashSet::with_capacity(listing.len());
        let listed_keys: std::collections::HashSet<Vec<u8>> =
            listing.iter().map(|r| r.key.clone()).collect();
        self.rejected.retain(|k, _| listed_keys.contains(k));
        for raw in listing {
            if let Ok(subnet) = parse_key(&self.subnets_prefix, &raw.key) {
                seen.insert(subnet);
            }
            self.put(raw, &mut events, &mut rejected);
        }
        let gone: Vec<Ipv4Network> = self
            .peers
            .keys()
            .filter(|s| !seen.contains(s))
            .copied()
            .collect();
        for subnet in gone {
            self.peers.remove(&subnet);
            events.push(LeaseEvent::Removed(subnet));
        }
        (events, rejected)
    }

    fn put(&mut self, raw: RawLease, events: &mut Vec<LeaseEvent>, rejected: &mut Vec<Rejected>) {
        let parsed = parse_lease(
            &self.subnets_prefix,
            &raw.key,
            &raw.value,
            raw.etcd_lease,
            raw.mod_revision,
        );
        let lease = match parsed {
            Ok(lease) if Some(lease.subnet) == self.own => return,
            Ok(lease) => match check_peer(&lease, &self.range, self.own.as_ref()) {
                Ok(()) => lease,
                Err(reason) => {
                    return self.refuse(raw, Some(lease.subnet), reason, events, rejected)
                }
            },
            Err(reason) => {
                let subnet = parse_key(&self.subnets_prefix, &raw.key).ok();
                return self.refuse(raw, subnet, reason, events, rejected);
            }
        };
        self.rejected.remove(&raw.key);
        let changed = match self.peers.get(&lease.subnet) {
            Some(old) => old.attrs != lease.attrs || old.etcd_lease != lease.etcd_lease,
            None => true,
        };
        if changed {
            events.push(LeaseEvent::Upserted(lease.clone()));
        }
        // Keep the newest revision even when nothing a consumer cares about changed.
        self.peers.insert(lease.subnet, lease);
    }

    fn refuse(
        &mut self,
        raw: RawLease,
        subnet: Option<Ipv4Network>,
        reason: LeaseRejection,
        events: &mut Vec<LeaseEvent>,
        rejected: &mut Vec<Rejected>,
    ) {
        // A valid lease overwritten with garbage is gone as far as routing goes.
        if let Some(subnet) = subnet {
            if self.peers.remove(&subnet).is_some() {
                events.push(LeaseEvent::Removed(subnet));
            }
        }
        if self.rejected.get(&raw.key) != Some(&raw.mod_revision) {
            rejected.push(Rejected {
                key: String::from_utf8_lossy(&raw.key)
                    .chars()
                    .take(200)
                    .collect(),
                reason,
            });
            self.rejected.insert(raw.key, raw.mod_revision);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "/p/subnets/";

    fn table() -> PeerTable {
        let range = SubnetRange::new("10.5.0.0/16".parse().expect("cidr"), None, None, None)
            .expect("range");
        PeerTable::new(PREFIX.to_string(), range)
    }

    fn raw(subnet: &str, ip: &str, rev: i64) -> RawLease {
        RawLease {
            key: format!("{PREFIX}{subnet}").into_bytes(),
            value: format!(r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":null}}"#)
                .into_bytes(),
            etcd_lease: 1,
            mod_revision: rev,
        }
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    #[test]
    fn puts_and_deletes_become_events_once() {
        let mut t = table();
        let (ev, rej) = t.apply(vec![RawChange::Put(raw("10.5.1.0-24", "1.1.1.1", 2))]);
        assert!(rej.is_empty());
        assert!(matches!(&ev[..], [LeaseEvent::Upserted(l)] if l.subnet == net("10.5.1.0/24")));
        // The same value again (a lease renewal re-put) is no event.
        let (ev, _) = t.apply(vec![RawChange::Put(raw("10.5.1.0-24", "1.1.1.1", 3))]);
        assert!(ev.is_empty());
        let (ev, _) = t.apply(vec![RawChange::Put(raw("10.5.1.0-24", "1.1.1.2", 4))]);
        assert_eq!(ev.len(), 1);
        let (ev, _) = t.apply(vec![RawChange::Delete {
            key: format!("{PREFIX}10.5.1.0-24").into_bytes(),
        }]);
        assert_eq!(ev, vec![LeaseEvent::Removed(net("10.5.1.0/24"))]);
        let (ev, _) = t.apply(vec![RawChange::Delete {
            key: format!("{PREFIX}10.5.1.0-24").into_bytes(),
        }]);
        assert!(ev.is_empty(), "a second delete is no event");
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn resync_yields_only_the_difference() {
        let mut t = table();
        t.resync(vec![
            raw("10.5.1.0-24", "1.1.1.1", 2),
            raw("10.5.2.0-24", "1.1.1.2", 3),
        ]);
        let (ev, _) = t.resync(vec![
            raw("10.5.2.0-24", "1.1.1.2", 3),
            raw("10.5.3.0-24", "1.1.1.3", 9),
        ]);
        assert_eq!(ev.len(), 2);
        assert!(ev.contains(&LeaseEvent::Removed(net("10.5.1.0/24"))));
        assert!(ev
            .iter()
            .any(|e| matches!(e, LeaseEvent::Upserted(l) if l.subnet == net("10.5.3.0/24"))));
        let subnets: Vec<_> = t.peers().map(|l| l.subnet).collect();
        assert_eq!(subnets, vec![net("10.5.2.0/24"), net("10.5.3.0/24")]);
    }

    #[test]
    fn own_subnet_is_no_peer_and_overlaps_are_refused() {
        let mut t = table();
        t.resync(vec![raw("10.5.7.0-24", "1.1.1.7", 2)]);
        let ev = t.set_own(Some(net("10.5.7.0/24")));
        assert_eq!(ev, vec![LeaseEvent::Removed(net("10.5.7.0/24"))]);
        let (ev, rej) = t.apply(vec![
            RawChange::Put(raw("10.5.7.0-24", "1.1.1.7", 3)),
            RawChange::Put(raw("10.5.0.0-20", "1.1.1.8", 4)),
        ]);
        assert!(ev.is_empty());
        assert_eq!(rej.len(), 1);
        assert!(matches!(rej[0].reason, LeaseRejection::OverlapsOwn { .. }));
    }

    #[test]
    fn bad_entries_are_reported_once_and_a_garbled_peer_is_removed() {
        let mut t = table();
        let bad = RawLease {
            key: format!("{PREFIX}10.5.9.0-24").into_bytes(),
            value: b"{garbage".to_vec(),
            etcd_lease: 0,
            mod_revision: 5,
        };
        t.resync(vec![raw("10.5.9.0-24", "1.1.1.9", 4)]);
        let (ev, rej) = t.apply(vec![RawChange::Put(bad.clone())]);
        assert_eq!(ev, vec![LeaseEvent::Removed(net("10.5.9.0/24"))]);
        assert_eq!(rej.len(), 1);
        let (ev, rej) = t.resync(vec![bad]);
        assert!(ev.is_empty());
        assert!(rej.is_empty(), "the same bad revision is reported once");
        let (_, rej) = t.apply(vec![RawChange::Put(raw("10.6.0.0-24", "1.1.1.1", 6))]);
        assert!(matches!(
            rej[0].reason,
            LeaseRejection::OutsideNetwork { .. }
        ));
    }
}
