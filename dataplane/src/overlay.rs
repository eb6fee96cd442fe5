//! Routes, neighbours and FDB entries towards peer subnets: the desired set
//! is computed by the caller from the leases, the observed set is read back
//! from the kernel, and only the difference is applied. Running it twice
//! changes nothing; running it after someone deleted an entry restores it.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::Ipv4Network;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use crate::error::netlink_err;
use crate::{DataplaneError, Netlink, Result};

/// The protocol number Tartan's routes carry, so that reconciliation can
/// tell them from everybody else's ("proto 84" in `ip route`).
pub const ROUTE_PROTOCOL: u8 = 84;

/// A route to a peer subnet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteSpec {
    pub destination: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub oif: u32,
    pub onlink: bool,
}

/// A permanent neighbour entry: a peer's VTEP address and MAC.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NeighbourSpec {
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

/// A permanent FDB entry: which underlay address a VTEP MAC lives behind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbSpec {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub destination: Ipv4Addr,
}

/// Everything the overlay programs towards peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayState {
    pub routes: BTreeSet<RouteSpec>,
    pub neighbours: BTreeSet<NeighbourSpec>,
    pub fdb: BTreeSet<FdbSpec>,
}

/// Which kernel entries belong to Tartan: its routes are marked by protocol;
/// neighbours and FDB entries are those on its VXLAN device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OverlayScope {
    pub vxlan_index: Option<u32>,
}

/// What `apply` has to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayChanges {
    pub add_routes: Vec<RouteSpec>,
    pub remove_routes: Vec<RouteSpec>,
    pub add_neighbours: Vec<NeighbourSpec>,
    pub remove_neighbours: Vec<NeighbourSpec>,
    pub add_fdb: Vec<FdbSpec>,
    pub remove_fdb: Vec<FdbSpec>,
}

impl OverlayChanges {
    pub fn is_empty(&self) -> bool {
        self.add_routes.is_empty()
            && self.remove_routes.is_empty()
            && self.add_neighbours.is_empty()
            && self.remove_neighbours.is_empty()
            && self.add_fdb.is_empty()
            && self.remove_fdb.is_empty()
    }

    pub fn count(&self) -> usize {
        self.add_routes.len()
            + self.remove_routes.len()
            + self.add_neighbours.len()
            + self.remove_neighbours.len()
            + self.add_fdb.len()
            + self.remove_fdb.len()
    }
}

fn split<T: Ord + Clone>(desired: &BTreeSet<T>, observed: &BTreeSet<T>) -> (Vec<T>, Vec<T>) {
    (
        desired.difference(observed).cloned().collect(),
        observed.difference(desired).cloned().collect(),
    )
}

/// The difference between what should be and what is. Pure.
pub fn diff(desired: &OverlayState, observed: &OverlayState) -> OverlayChanges {
    let (add_routes, remove_routes) = split(&desired.routes, &observed.routes);
    let (add_neighbours, remove_neighbours) = split(&desired.neighbours, &observed.neighbours);
    let (add_fdb, remove_fdb) = split(&desired.fdb, &observed.fdb);
    OverlayChanges {
        add_routes,
        remove_routes,
        add_neighbours,
        remove_neighbours,
        add_fdb,
        remove_fdb,
    }
}

/// How many netlink requests one phase keeps in flight.
const IN_FLIGHT: usize = 256;

/// Runs the requests with up to `IN_FLIGHT` outstanding; returns the errors.
pub(crate) async fn pipelined<F>(requests: impl Iterator<Item = F>) -> Vec<DataplaneError>
where
    F: std::future::Future<Output = Result<()>>,
{
    // Built eagerly so that the stream holds concrete futures (no higher-ranked
    // closure lifetimes), which keeps the caller's future Send.
    let requests: Vec<F> = requests.collect();
    let results: Vec<Result<()>> = futures::stream::iter(requests)
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().filter_map(Result::err).collect()
}

fn parse_route(msg: &RouteMessage) -> Option<RouteSpec> {
    if msg.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
        || msg.header.address_family != AddressFamily::Inet
    {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = Some(*ip),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(RouteSpec {
        destination: Ipv4Network::new(destination?, msg.header.destination_prefix_length).ok()?,
        gateway: gateway?,
        oif: oif?,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
    })
}

fn route_message(route: &RouteSpec) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.destination.ip(), route.destination.prefix())
        .gateway(route.gateway)
        .output_interface(route.oif)
        .protocol(RouteProtocol::Other(ROUTE_PROTOCOL))
        .scope(RouteScope::Universe);
    if route.onlink {
        builder = builder.onlink();
    }
    builder.build()
}

pub(crate) fn neighbour_mac(msg: &NeighbourMessage) -> Option<[u8; 6]> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
        _ => None,
    })
}

pub(crate) fn neighbour_ip(msg: &NeighbourMessage) -> Option<Ipv4Addr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        // FDB entries are AF_BRIDGE messages: their IPv4 destination arrives as raw bytes.
        NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
            <[u8; 4]>::try_from(bytes.as_slice())
                .ok()
                .map(Ipv4Addr::from)
        }
        _ => None,
    })
}

impl Netlink {
    /// Reads Tartan's routes, and the permanent neighbour and FDB entries of
    /// its VXLAN device; read again when the kernel interrupts a dump.
    pub async fn observe_overlay(&self, scope: OverlayScope) -> Result<OverlayState> {
        crate::error::redo_interrupted(|| self.observe_overlay_once(scope)).await
    }

    async fn observe_overlay_once(&self, scope: OverlayScope) -> Result<OverlayState> {
        let mut state = OverlayState::default();
        let request = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(request).execute();
        while let Some(msg) = routes.try_next().await.map_err(netlink_err("route dump"))? {
            state.routes.extend(parse_route(&msg));
        }
        let Some(vxlan) = scope.vxlan_index else {
            return Ok(state);
        };
        let mut neighbours = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        while let Some(msg) = neighbours
            .try_next()
            .await
            .map_err(netlink_err("neighbour dump"))?
        {
            if msg.header.ifindex != vxlan || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(ip), Some(mac)) = (neighbour_ip(&msg), neighbour_mac(&msg)) {
                state.neighbours.insert(NeighbourSpec {
                    ifindex: vxlan,
                    ip,
                    mac,
                });
            }
        }
        let mut fdb = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = fdb.try_next().await.map_err(netlink_err("fdb dump"))? {
            if msg.header.ifindex != vxlan || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            if let (Some(destination), Some(mac)) = (neighbour_ip(&msg), neighbour_mac(&msg)) {
                state.fdb.insert(FdbSpec {
                    ifindex: vxlan,
                    mac,
                    destination,
                });
            }
        }
        Ok(state)
    }

    /// Brings the kernel to `desired`, touching only what differs. Requests
    /// of one phase are pipelined on the socket (many in flight at once), so
    /// thousands of entries cost a few round trips' worth of waiting. Every
    /// change is attempted; the first error is returned after the rest ran,
    /// so that one bad entry does not hold back the others.
    pub async fn apply_overlay(
        &self,
        desired: &OverlayState,
        scope: OverlayScope,
    ) -> Result<OverlayChanges> {
        let observed = self.observe_overlay(scope).await?;
        let changes = diff(desired, &observed);
        let mut errors = Vec::new();
        // Removals first: a stale route may occupy the destination a new one needs.
        errors.extend(
            pipelined(changes.remove_routes.iter().map(|route| async move {
                self.handle
                    .route()
                    .del(route_message(route))
                    .execute()
                    .await
                    .map_err(netlink_err("route delete"))
            }))
            .await,
        );
        errors.extend(
            pipelined(
                changes
                    .remove_neighbours
                    .iter()
                    .map(|n| self.delete_neighbour(n.ifindex, AddressFamily::Inet, n.ip, n.mac)),
            )
            .await,
        );
        errors.extend(
            pipelined(changes.remove_fdb.iter().map(|e| {
                self.delete_neighbour(e.ifindex, AddressFamily::Bridge, e.destination, e.mac)
            }))
            .await,
        );
        // Then the layers in the order the kernel uses them: FDB and neighbour before the route.
        errors.extend(
            pipelined(changes.add_fdb.iter().map(|entry| async move {
                self.handle
                    .neighbours()
                    .add_bridge(entry.ifindex, &entry.mac)
                    .flags(NeighbourFlags::Own)
                    .destination(IpAddr::V4(entry.destination))
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink_err("fdb add"))
            }))
            .await,
        );
        errors.extend(
            pipelined(changes.add_neighbours.iter().map(|n| async move {
                self.handle
                    .neighbours()
                    .add(n.ifindex, IpAddr::V4(n.ip))
                    .link_layer_address(&n.mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink_err("neighbour add"))
            }))
            .await,
        );
        errors.extend(
            pipelined(changes.add_routes.iter().map(|route| async move {
                self.handle
                    .route()
                    .add(route_message(route))
                    .replace()
                    .execute()
                    .await
                    .map_err(netlink_err("route add"))
            }))
            .await,
        );
        match errors.into_iter().next() {
            Some(err) => Err(err),
            None => Ok(changes),
        }
    }

    pub(crate) async fn delete_neighbour(
        &self,
        ifindex: u32,
        family: AddressFamily,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family;
        msg.header.ifindex = ifindex;
        msg.header.state = NeighbourState::Permanent;
        if family == AddressFamily::Bridge {
            msg.header.flags = NeighbourFlags::Own;
        }
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(netlink_err("neighbour delete"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, via: [u8; 4]) -> RouteSpec {
        RouteSpec {
            destination: dst.parse().expect("cidr"),
            gateway: Ipv4Addr::from(via),
            oif: 5,
            onlink: true,
        }
    }

    #[test]
    fn diff_adds_what_is_missing_and_removes_what_is_stale() {
        let mut desired = OverlayState::default();
        desired.routes.insert(route("10.5.1.0/24", [10, 5, 1, 0]));
        desired.routes.insert(route("10.5.2.0/24", [10, 5, 2, 0]));
        desired.neighbours.insert(NeighbourSpec {
            ifindex: 5,
            ip: Ipv4Addr::new(10, 5, 1, 0),
            mac: [0x0e, 1, 2, 3, 4, 5],
        });
        let mut observed = OverlayState::default();
        observed.routes.insert(route("10.5.2.0/24", [10, 5, 2, 0]));
        observed.routes.insert(route("10.5.9.0/24", [10, 5, 9, 0]));
        observed.fdb.insert(FdbSpec {
            ifindex: 5,
            mac: [0x0e, 9, 9, 9, 9, 9],
            destination: Ipv4Addr::new(192, 168, 0, 9),
        });
        let changes = diff(&desired, &observed);
        assert_eq!(
            changes.add_routes,
            vec![route("10.5.1.0/24", [10, 5, 1, 0])]
        );
        assert_eq!(
            changes.remove_routes,
            vec![route("10.5.9.0/24", [10, 5, 9, 0])]
        );
        assert_eq!(changes.add_neighbours.len(), 1);
        assert_eq!(changes.remove_fdb.len(), 1);
        assert_eq!(changes.count(), 4);
        assert!(
            diff(&desired, &desired).is_empty(),
            "applying twice changes nothing"
        );
    }

    #[test]
    fn a_changed_gateway_is_a_replacement() {
        let mut desired = OverlayState::default();
        desired
            .routes
            .insert(route("10.5.1.0/24", [192, 168, 0, 2]));
        let mut observed = OverlayState::default();
        observed.routes.insert(route("10.5.1.0/24", [10, 5, 1, 0]));
        let changes = diff(&desired, &observed);
        assert_eq!(changes.remove_routes.len(), 1);
        assert_eq!(changes.add_routes.len(), 1);
    }
}
