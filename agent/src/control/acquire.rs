//! Choosing and taking this node's subnet lease.
//!
//! The choice follows flannel: keep the lease that already carries this
//! node's public IP; else take back the subnet the previous subnet file
//! named, if nobody holds it; else a random free subnet. A key with no etcd
//! lease attached is a reservation (flannel's `reservations.md`): the node
//! whose public IP it carries keeps it as it is, permanent, and every other
//! node counts it as taken. Taking it is an etcd
//! transaction conditioned on the key's state at listing time, so of many
//! agents racing for one subnet exactly one wins and the others choose again.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use ipnetwork::Ipv4Network;
use rand::Rng;
use tartan_ipam::SubnetRange;
use tracing::{debug, info};

use crate::control::etcd::Registry;
use crate::control::lease::{parse_key, parse_lease, LeaseAttrs};
use crate::control::peers::RawLease;

/// What to do to get a lease, given a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Rewrite the lease that carries our IP (fresh TTL, current attributes).
    Reuse {
        subnet: Ipv4Network,
        mod_revision: i64,
        old_etcd_lease: i64,
    },
    /// Create a lease for a subnet nobody holds.
    Create(Ipv4Network),
    /// Every subnet in the range is held.
    Full,
}

/// Decides how to get a lease. Pure, so that the rules have unit tests.
pub fn plan<R: Rng + ?Sized>(
    range: &SubnetRange,
    subnets_prefix: &str,
    listing: &[RawLease],
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Network>,
    rng: &mut R,
) -> Plan {
    // Any key that names a subnet counts as taken, even one whose value does
    // not parse: overwriting somebody's garbled lease is not ours to do.
    let mut taken: HashMap<Ipv4Network, &RawLease> = HashMap::with_capacity(listing.len());
    for raw in listing {
        if let Ok(subnet) = parse_key(subnets_prefix, &raw.key) {
            taken.insert(subnet, raw);
        }
    }
    let ours = listing.iter().find_map(|raw| {
        let lease = parse_lease(
            subnets_prefix,
            &raw.key,
            &raw.value,
            raw.etcd_lease,
            raw.mod_revision,
        )
        .ok()?;
        // A dual-stack key is a flannel node's with IPv6: rewriting it under
        // an IPv4-only key would leave the old one behind, so it is not ours.
        let own_key = format!(
            "{subnets_prefix}{}",
            tartan_ipam::subnet_to_key(&lease.subnet)
        );
        (lease.attrs.public_ip == public_ip
            && range.contains(&lease.subnet)
            && raw.key == own_key.as_bytes())
        .then_some(lease)
    });
    if let Some(lease) = ours {
        return Plan::Reuse {
            subnet: lease.subnet,
            mod_revision: lease.mod_revision,
            old_etcd_lease: lease.etcd_lease,
        };
    }
    if let Some(previous) = previous {
        if range.contains(&previous) && !taken.keys().any(|t| tartan_ipam::overlaps(t, &previous)) {
            return Plan::Create(previous);
        }
    }
    let is_taken = |candidate: &Ipv4Network| {
        // Exact keys are the common case; a hand-written wider or narrower lease
        // must also keep us off the addresses it covers.
        taken.contains_key(candidate) || taken.keys().any(|t| tartan_ipam::overlaps(t, candidate))
    };
    let exact_only = taken.keys().all(|t| t.prefix() == range.subnet_len());
    let chosen = if exact_only {
        range.choose_free(|c| taken.contains_key(c), rng)
    } else {
        range.choose_free(is_taken, rng)
    };
    match chosen {
        Some(subnet) => Plan::Create(subnet),
        None => Plan::Full,
    }
}

/// A lease this node holds.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldLease {
    pub subnet: Ipv4Network,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to; 0 for a reservation.
    pub etcd_lease: i64,
}

impl HeldLease {
    /// A reservation never expires and is never renewed.
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }
}

/// Lists, plans and writes until this node holds a lease. Returns an error
/// for etcd failures and a full range; the caller backs off and calls again.
pub async fn acquire(
    registry: &Registry,
    range: &SubnetRange,
    attrs: &LeaseAttrs,
    previous: Option<Ipv4Network>,
    ttl: Duration,
) -> Result<HeldLease> {
    let subnets_prefix = registry.subnets_prefix();
    // Losing a race costs one round trip; many agents starting at once settle
    // in a few rounds because each loser re-lists and sees the winners.
    for attempt in 1..=64u32 {
        let (listing, _) = registry.list_leases().await?;
        let plan = plan(
            range,
            &subnets_prefix,
            &listing,
            attrs.public_ip,
            previous,
            &mut rand::rng(),
        );
        debug!(?plan, attempt, "planned subnet acquisition");
        let (subnet, expected, lease_ttl) = match plan {
            // A reservation stays one: rewritten without a TTL.
            Plan::Reuse {
                subnet,
                mod_revision,
                old_etcd_lease: 0,
            } => (subnet, Some(mod_revision), None),
            Plan::Reuse {
                subnet,
                mod_revision,
                ..
            } => (subnet, Some(mod_revision), Some(ttl)),
            Plan::Create(subnet) => (subnet, None, Some(ttl)),
            Plan::Full => {
                return Err(anyhow!(
                    "no free subnet between {} and {} ({} leases held)",
                    range.min(),
                    range.max(),
                    listing.len()
                ))
            }
        };
        if let Some(etcd_lease) = registry
            .write_lease(&subnet, attrs, lease_ttl, expected)
            .await?
        {
            if let Plan::Reuse { old_etcd_lease, .. } = plan {
                if old_etcd_lease != 0 && old_etcd_lease != etcd_lease {
                    // The key has moved to the new etcd lease; the old one now
                    // holds nothing of ours and would expire with its TTL.
                    if let Err(err) = registry.revoke(old_etcd_lease).await {
                        debug!(error = %format!("{err:#}"), "could not revoke the previous etcd lease");
                    }
                }
                if etcd_lease == 0 {
                    info!(%subnet, "using the subnet reserved for this node's public IP (no TTL)");
                } else {
                    info!(%subnet, "reusing the lease that carries this node's public IP");
                }
            } else {
                info!(%subnet, "acquired a new subnet lease");
            }
            return Ok(HeldLease {
                subnet,
                attrs: attrs.clone(),
                etcd_lease,
            });
        }
        debug!(%subnet, attempt, "lost the race for a subnet, choosing again");
        let jitter = rand::rng().random_range(0..20u64 * u64::from(attempt.min(10)));
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    Err(anyhow!(
        "could not take a subnet after 64 attempts; too many agents racing"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const PREFIX: &str = "/p/subnets/";

    fn range(cidr: &str) -> SubnetRange {
        SubnetRange::new(cidr.parse().expect("cidr"), None, None, None).expect("range")
    }

    fn raw(subnet: &str, value: &str, rev: i64) -> RawLease {
        RawLease {
            key: format!("{PREFIX}{subnet}").into_bytes(),
            value: value.as_bytes().to_vec(),
            etcd_lease: 77,
            mod_revision: rev,
        }
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().expect("cidr")
    }

    const ME: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 5);

    #[test]
    fn reuses_the_lease_with_our_ip() {
        let listing = [
            raw("10.5.3.0-24", r#"{"PublicIP":"192.168.0.9"}"#, 3),
            raw(
                "10.5.4.0-24",
                r#"{"PublicIP":"192.168.0.5","BackendType":"vxlan"}"#,
                4,
            ),
        ];
        let p = plan(
            &range("10.5.0.0/16"),
            PREFIX,
            &listing,
            ME,
            Some(net("10.5.9.0/24")),
            &mut StdRng::seed_from_u64(1),
        );
        assert_eq!(
            p,
            Plan::Reuse {
                subnet: net("10.5.4.0/24"),
                mod_revision: 4,
                old_etcd_lease: 77
            }
        );
    }

    #[test]
    fn a_reservation_is_reused_by_its_node_and_taken_for_everyone_else() {
        let mut reserved = raw("10.5.2.0-24", r#"{"PublicIP":"192.168.0.5"}"#, 4);
        reserved.etcd_lease = 0;
        let r = range("10.5.0.0/22");
        let mut rng = StdRng::seed_from_u64(4);
        assert_eq!(
            plan(
                &r,
                PREFIX,
                std::slice::from_ref(&reserved),
                ME,
                None,
                &mut rng
            ),
            Plan::Reuse {
                subnet: net("10.5.2.0/24"),
                mod_revision: 4,
                old_etcd_lease: 0
            }
        );
        let other = Ipv4Addr::new(192, 168, 0, 6);
        for _ in 0..20 {
            match plan(
                &r,
                PREFIX,
                std::slice::from_ref(&reserved),
                other,
                Some(net("10.5.2.0/24")),
                &mut rng,
            ) {
                Plan::Create(s) => assert_ne!(s, net("10.5.2.0/24")),
                p => panic!("unexpected {p:?}"),
            }
        }
    }

    #[test]
    fn dual_stack_keys_are_taken_but_never_rewritten_as_ours() {
        // 10.5.0.0/22: usable 10.5.1.0, .2.0, .3.0.
        let r = range("10.5.0.0/22");
        let listing = [
            raw("10.5.1.0-24&fc00::-64", r#"{"PublicIP":"192.168.0.5"}"#, 3),
            raw(
                "10.5.2.0-24&fc00:0:0:1::-64",
                r#"{"PublicIP":"192.168.0.9"}"#,
                4,
            ),
        ];
        let mut rng = StdRng::seed_from_u64(5);
        assert_eq!(
            plan(&r, PREFIX, &listing, ME, None, &mut rng),
            Plan::Create(net("10.5.3.0/24"))
        );
    }

    #[test]
    fn takes_back_the_previous_subnet_if_free() {
        let listing = [raw("10.5.3.0-24", r#"{"PublicIP":"192.168.0.9"}"#, 3)];
        let r = range("10.5.0.0/16");
        let mut rng = StdRng::seed_from_u64(2);
        assert_eq!(
            plan(&r, PREFIX, &listing, ME, Some(net("10.5.9.0/24")), &mut rng),
            Plan::Create(net("10.5.9.0/24"))
        );
        // Held by somebody else: a random free one instead.
        match plan(&r, PREFIX, &listing, ME, Some(net("10.5.3.0/24")), &mut rng) {
            Plan::Create(s) => assert!(s != net("10.5.3.0/24") && r.contains(&s), "{s}"),
            other => panic!("unexpected {other:?}"),
        }
        // Outside the configured range: ignored.
        match plan(&r, PREFIX, &listing, ME, Some(net("10.6.9.0/24")), &mut rng) {
            Plan::Create(s) => assert!(r.contains(&s), "{s}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn garbled_and_overlapping_keys_count_as_taken() {
        // 10.5.0.0/22 with SubnetLen 24: usable 10.5.1.0, .2.0, .3.0.
        let r = range("10.5.0.0/22");
        let listing = [
            raw("10.5.1.0-24", "{garbage", 3),
            raw("10.5.2.0-25", r#"{"PublicIP":"192.168.0.9"}"#, 4),
        ];
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..20 {
            assert_eq!(
                plan(&r, PREFIX, &listing, ME, None, &mut rng),
                Plan::Create(net("10.5.3.0/24"))
            );
        }
        let full = [
            raw("10.5.1.0-24", "{garbage", 3),
            raw("10.5.2.0-24", r#"{"PublicIP":"192.168.0.9"}"#, 4),
            raw("10.5.3.0-24", r#"{"PublicIP":"192.168.0.8"}"#, 5),
        ];
        assert_eq!(plan(&r, PREFIX, &full, ME, None, &mut rng), Plan::Full);
    }
}
