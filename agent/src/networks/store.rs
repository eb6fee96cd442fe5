//! Named networks as the whole fabric sees them: their definitions and the
//! addresses claimed on them, in etcd under Tartan's own prefix (never
//! inside flannel's keys).
//!
//! ```text
//! <tp>/networks                          the name of the network created last
//! <tp>/networks/<NAME>                   {name, id, driver, subnet, gateway, ip_range, options, created}
//! <tp>/networks/<NAME>/addresses/<ADDR>  {host, container, name, interface}
//! ```
//!
//! Every change is one etcd transaction: a name is created only if it does
//! not exist and no other network was created since the subnets it was
//! checked against were read (every create rewrites `<tp>/networks`), an
//! address is claimed only if nobody holds it and the network
//! is still the one it was read as, and a network is removed only while no
//! address is claimed on it. Two hosts allocating at once therefore never
//! get the same address, whatever the timing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::control::etcd::bounded;
use crate::networks::driver::Registration;
use crate::networks::drivers;

/// How often a create re-reads the networks after losing to another create.
const CREATE_ATTEMPTS: usize = 32;

/// Why a create failed, for the caller's status code.
#[derive(Debug)]
pub enum CreateError {
    /// The request is wrong, or overlaps what exists.
    Invalid(anyhow::Error),
    /// The name is taken.
    Exists(String),
    /// etcd failed, or other creates kept winning.
    Failed(anyhow::Error),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::Invalid(err) | CreateError::Failed(err) => write!(f, "{err:#}"),
            CreateError::Exists(name) => write!(f, "network with name {name} already exists"),
        }
    }
}

/// The names that are network modes rather than networks.
pub const RESERVED_NAMES: [&str; 4] = ["overlay", "bridge", "host", "none"];

/// The networks every host has, listed and inspected as Docker's `bridge`,
/// `host` and `none` are.
pub const PREDEFINED: [&str; 3] = ["overlay", "host", "none"];

/// A predefined network's id: 64 hex digits derived from its name (FNV-1a),
/// so that every host and every restart shows the same one.
pub fn predefined_id(name: &str) -> String {
    (0..4u8)
        .map(|round| {
            let hash = std::iter::once(round)
                .chain(name.bytes())
                .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
            format!("{hash:016x}")
        })
        .collect()
}

/// A named network as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkDef {
    pub name: String,
    /// 64 hex digits, as Docker's.
    pub id: String,
    pub driver: String,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// Where addresses are allocated from; the whole subnet when absent.
    #[serde(default)]
    pub ip_range: Option<Ipv4Network>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// RFC 3339.
    pub created: String,
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressHolder {
    /// The agent's public address.
    pub host: String,
    /// The container's id and name.
    pub container: String,
    #[serde(default)]
    pub name: String,
    pub interface: String,
}

/// What `network create` asks for, unchecked.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub driver: String,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    /// KEY=VALUE, as given to `-o`.
    pub options: Vec<String>,
}

/// Docker's rule for network names, and none of the modes' names.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || name.len() > 64
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        bail!("invalid network name {name:?}: use letters, digits and _ . - (starting with a letter or digit)");
    }
    if RESERVED_NAMES.contains(&name) {
        // Docker's words for its own bridge, host and none.
        bail!("{name} is a pre-defined network (a network mode) and cannot be created or removed");
    }
    Ok(())
}

fn parse_cidr(flag: &str, text: &str) -> Result<Ipv4Network> {
    let net: Ipv4Network = text
        .parse()
        .map_err(|_| anyhow!("invalid {flag} {text:?}: use an IPv4 CIDR such as 10.1.1.0/24"))?;
    if net.network() != net.ip() {
        bail!(
            "invalid {flag} {text}: it is not a network address (use {}/{})",
            net.network(),
            net.prefix()
        );
    }
    if net.prefix() > 30 {
        bail!("invalid {flag} {text}: a network needs a prefix of at most /30");
    }
    Ok(net)
}

/// Checks the driver's options: each known to it, each well-formed.
fn parse_options(
    registration: &Registration,
    given: &[String],
) -> Result<BTreeMap<String, String>> {
    let driver = registration.name;
    let mut options = BTreeMap::new();
    for entry in given {
        let Some((key, value)) = entry.split_once('=') else {
            bail!("invalid option {entry:?}: use KEY=VALUE");
        };
        if !registration.options.contains(&key) {
            bail!(
                "unknown option {key:?} for the {driver} driver: it takes {}",
                registration.options.join(", ")
            );
        }
        match key {
            "parent" | "bridge" => tartan_dataplane::check_ifname(value)
                .with_context(|| format!("invalid option {key}"))?,
            "macvlan_mode" => {
                value
                    .parse::<tartan_dataplane::MacvlanMode>()
                    .context("invalid option macvlan_mode")?;
            }
            "vlan" => {
                tartan_dataplane::parse_vlan_id(value).context("invalid option vlan")?;
            }
            _ => {}
        }
        if options.insert(key.to_string(), value.to_string()).is_some() {
            bail!("option {key} is given twice");
        }
    }
    if registration.options.contains(&"parent") && !options.contains_key("parent") {
        bail!("a {driver} network needs -o parent=INTERFACE");
    }
    Ok(options)
}

/// Docker's default pools, in its order: the /16s of 172.17-31 (172.17 is
/// Docker's own docker0), then the /20s of 192.168.
fn default_pools() -> impl Iterator<Item = Ipv4Network> {
    let private_16 =
        (18..=31u8).filter_map(|b| Ipv4Network::new(Ipv4Addr::new(172, b, 0, 0), 16).ok());
    let private_20 =
        (0..16u8).filter_map(|i| Ipv4Network::new(Ipv4Addr::new(192, 168, i * 16, 0), 20).ok());
    private_16.chain(private_20)
}

/// Checks a `network create` and makes the definition. `taken` are the
/// subnets already in use and whose they are (other networks', the
/// overlay's), which a new network must not overlap; without `--subnet`
/// it gets the first free default pool.
pub fn define(
    request: &CreateRequest,
    taken: &[(String, Ipv4Network)],
    created: String,
) -> Result<NetworkDef> {
    check_name(&request.name)?;
    let driver = if request.driver.is_empty() {
        "bridge"
    } else {
        request.driver.as_str()
    };
    let registration = drivers::for_named_network(driver)?;
    let options = parse_options(registration, &request.options)?;
    let subnet = match &request.subnet {
        Some(text) => {
            let subnet = parse_cidr("--subnet", text)?;
            if let Some((whose, other)) = taken
                .iter()
                .find(|(_, t)| tartan_ipam::overlaps(t, &subnet))
            {
                bail!("--subnet {subnet} overlaps {other} of {whose}");
            }
            subnet
        }
        None => {
            if request.gateway.is_some() || request.ip_range.is_some() {
                bail!("--gateway and --ip-range need --subnet");
            }
            default_pools()
                .find(|pool| !taken.iter().any(|(_, t)| tartan_ipam::overlaps(t, pool)))
                .ok_or_else(|| anyhow!("no default subnet is free: give --subnet"))?
        }
    };
    let gateway = match &request.gateway {
        Some(text) => {
            let gateway: Ipv4Addr = text
                .parse()
                .map_err(|_| anyhow!("invalid --gateway {text:?}: use an IPv4 address"))?;
            if !subnet.contains(gateway) {
                bail!("--gateway {gateway} is outside --subnet {subnet}");
            }
            if gateway == subnet.network() || gateway == subnet.broadcast() {
                bail!("--gateway {gateway} is the network or broadcast address of {subnet}");
            }
            gateway
        }
        None => tartan_ipam::gateway(&subnet),
    };
    let ip_range = match &request.ip_range {
        Some(text) => {
            let range = parse_cidr("--ip-range", text)?;
            if !(subnet.contains(range.network()) && range.prefix() >= subnet.prefix()) {
                bail!("--ip-range {range} is outside --subnet {subnet}");
            }
            Some(range)
        }
        None => None,
    };
    Ok(NetworkDef {
        name: request.name.clone(),
        id: (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect(),
        driver: driver.to_string(),
        subnet,
        gateway,
        ip_range,
        options,
        created,
    })
}

/// Parses `--ip` for a network: an address of its subnet that is neither
/// the network's, the broadcast nor the gateway.
pub fn parse_ip(def: &NetworkDef, text: &str) -> Result<Ipv4Addr> {
    let addr: Ipv4Addr = text
        .parse()
        .map_err(|_| anyhow!("invalid --ip {text:?}: use an IPv4 address"))?;
    if !def.subnet.contains(addr) {
        bail!(
            "--ip {addr} is outside the subnet {} of network {}",
            def.subnet,
            def.name
        );
    }
    if addr == def.subnet.network() || addr == def.subnet.broadcast() || addr == def.gateway {
        bail!(
            "--ip {addr} is the network, broadcast or gateway address of {}",
            def.name
        );
    }
    Ok(addr)
}

/// The addresses allocation may hand out, in order.
fn candidates(def: &NetworkDef) -> impl Iterator<Item = Ipv4Addr> + '_ {
    let pool = def.ip_range.unwrap_or(def.subnet);
    pool.iter().filter(move |a| {
        *a != def.subnet.network() && *a != def.subnet.broadcast() && *a != def.gateway
    })
}

/// Why a named network cannot be made or used by an agent with no store.
pub const NO_STORE: &str = "named networks are kept in etcd; this agent runs with --no-etcd";

/// The definitions and address claims in etcd.
#[derive(Clone)]
pub struct NetworkStore {
    /// None on an agent with no store (`--no-etcd`): there are no named networks.
    client: Option<Client>,
    /// `--tartan-prefix`, without a trailing slash.
    prefix: String,
}

impl NetworkStore {
    pub fn new(client: Client, prefix: &str) -> NetworkStore {
        NetworkStore {
            client: Some(client),
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    /// The store of an agent without etcd: it lists no networks and refuses
    /// everything else with [`NO_STORE`].
    pub fn none() -> NetworkStore {
        NetworkStore {
            client: None,
            prefix: String::new(),
        }
    }

    fn client(&self) -> Result<Client> {
        self.client.clone().ok_or_else(|| anyhow!(NO_STORE))
    }

    fn networks_prefix(&self) -> String {
        format!("{}/networks/", self.prefix)
    }

    fn network_key(&self, name: &str) -> String {
        format!("{}/networks/{name}", self.prefix)
    }

    fn addresses_prefix(&self, name: &str) -> String {
        format!("{}/networks/{name}/addresses/", self.prefix)
    }

    /// The key every create rewrites, so that a create checked against an
    /// older list of networks fails and is checked again.
    fn marker_key(&self) -> String {
        format!("{}/networks", self.prefix)
    }

    /// Checks the request against the networks that exist and `also_taken`
    /// (the overlay's range) and stores it. Atomic with the check: of two
    /// creates at once, the later sees the earlier's subnet, so none
    /// overlap and a default pool is never handed out twice.
    pub async fn create(
        &self,
        request: &CreateRequest,
        also_taken: &[(String, Ipv4Network)],
        created: String,
    ) -> Result<NetworkDef, CreateError> {
        let marker = self.marker_key();
        let client = self.client().map_err(CreateError::Failed)?;
        for _ in 0..CREATE_ATTEMPTS {
            // The marker first: the list read after it is at least as new.
            let mut client = client.clone();
            let resp = bounded("reading the networks", client.get(marker.as_str(), None))
                .await
                .map_err(CreateError::Failed)?;
            let seen = resp.kvs().first().map_or(0, |kv| kv.mod_revision());
            let existing = self.list().await.map_err(CreateError::Failed)?;
            if existing.iter().any(|def| def.name == request.name) {
                return Err(CreateError::Exists(request.name.clone()));
            }
            let taken: Vec<(String, Ipv4Network)> = existing
                .into_iter()
                .map(|def| (format!("network {}", def.name), def.subnet))
                .chain(also_taken.iter().cloned())
                .collect();
            let def = define(request, &taken, created.clone()).map_err(CreateError::Invalid)?;
            let key = self.network_key(&def.name);
            let value = serde_json::to_vec(&def)
                .context("encoding the network")
                .map_err(CreateError::Failed)?;
            let txn = Txn::new()
                .when([
                    Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                    // A missing key's mod revision is 0.
                    Compare::mod_revision(marker.as_str(), CompareOp::Equal, seen),
                ])
                .and_then([
                    TxnOp::put(key.as_str(), value, None),
                    TxnOp::put(marker.as_str(), def.name.as_bytes().to_vec(), None),
                ]);
            let resp = bounded("storing the network", client.txn(txn))
                .await
                .map_err(CreateError::Failed)?;
            if resp.succeeded() {
                return Ok(def);
            }
            // Another create won: check against what it made.
        }
        Err(CreateError::Failed(anyhow!(
            "network {} was not created: other networks kept being created at the same time; try again",
            request.name
        )))
    }

    /// The definition and its key's create revision (its incarnation).
    async fn get_with_revision(&self, name: &str) -> Result<Option<(NetworkDef, i64, i64)>> {
        let key = self.network_key(name);
        let mut client = self.client()?;
        let resp = bounded("reading the network", client.get(key.as_str(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let def: NetworkDef = serde_json::from_slice(kv.value())
            .with_context(|| format!("the stored network {name} is damaged"))?;
        Ok(Some((def, kv.create_revision(), kv.mod_revision())))
    }

    pub async fn get(&self, name: &str) -> Result<Option<NetworkDef>> {
        Ok(self.get_with_revision(name).await?.map(|(def, _, _)| def))
    }

    /// The definition, or an error naming the network.
    pub async fn require(&self, name: &str) -> Result<NetworkDef> {
        self.get(name)
            .await?
            .ok_or_else(|| anyhow!("network {name} not found"))
    }

    /// Every definition, by name.
    pub async fn list(&self) -> Result<Vec<NetworkDef>> {
        let Some(mut client) = self.client.clone() else {
            // No store, no networks: the predefined ones are listed apart.
            return Ok(Vec::new());
        };
        let prefix = self.networks_prefix();
        let resp = bounded(
            "listing networks",
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut defs = Vec::new();
        for kv in resp.kvs() {
            let rest = &kv.key()[prefix.len()..];
            // Address claims live below the definitions.
            if rest.contains(&b'/') {
                continue;
            }
            match serde_json::from_slice::<NetworkDef>(kv.value()) {
                Ok(def) => defs.push(def),
                Err(err) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %err, "skipping a damaged network definition")
                }
            }
        }
        Ok(defs)
    }

    /// Who holds which address on the network.
    pub async fn holders(&self, name: &str) -> Result<Vec<(Ipv4Addr, AddressHolder)>> {
        let prefix = self.addresses_prefix(name);
        let mut client = self.client()?;
        let resp = bounded(
            "listing the network's addresses",
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut holders = Vec::new();
        for kv in resp.kvs() {
            let addr = std::str::from_utf8(&kv.key()[prefix.len()..])
                .ok()
                .and_then(|a| a.parse::<Ipv4Addr>().ok());
            let holder = serde_json::from_slice::<AddressHolder>(kv.value()).ok();
            if let (Some(addr), Some(holder)) = (addr, holder) {
                holders.push((addr, holder));
            }
        }
        Ok(holders)
    }

    /// Removes the network, refused while any address is claimed on it.
    pub async fn remove(&self, name: &str) -> Result<NetworkDef> {
        check_name(name)?;
        let (def, _, mod_revision) = self
            .get_with_revision(name)
            .await?
            .ok_or_else(|| anyhow!("network {name} not found"))?;
        let key = self.network_key(name);
        let addresses = self.addresses_prefix(name);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, mod_revision),
                // Over a range: true only when no key under it exists.
                Compare::create_revision(addresses.as_str(), CompareOp::Equal, 0).with_prefix(),
            ])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut client = self.client()?;
        let resp = bounded("removing the network", client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(def);
        }
        let mut users: Vec<String> = self
            .holders(name)
            .await?
            .into_iter()
            .map(|(_, h)| {
                if h.name.is_empty() {
                    h.container
                } else {
                    h.name
                }
            })
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if users.is_empty() {
            users.push("a container that just joined".into());
        }
        bail!(
            "network {name} is in use by container{} {}",
            if users.len() == 1 { "" } else { "s" },
            users.join(", ")
        )
    }

    /// Claims an address on the network for `holder`: `requested` exactly,
    /// or the first free one of the network's range. Fails when the network
    /// was removed (or re-created) meanwhile, and names the holder of a
    /// requested address that is taken.
    pub async fn claim(
        &self,
        def: &NetworkDef,
        holder: &AddressHolder,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr> {
        let Some((current, incarnation, _)) = self.get_with_revision(&def.name).await? else {
            bail!("network {} not found", def.name);
        };
        if current.id != def.id {
            bail!("network {} was re-created meanwhile", def.name);
        }
        let value = serde_json::to_vec(holder).context("encoding the address holder")?;
        if let Some(addr) = requested {
            if self.try_claim(def, incarnation, addr, &value).await? {
                return Ok(addr);
            }
            let holders = self.holders(&def.name).await?;
            let by = holders
                .iter()
                .find(|(a, _)| *a == addr)
                .map(|(_, h)| {
                    format!(
                        "container {} on {}",
                        if h.name.is_empty() {
                            &h.container
                        } else {
                            &h.name
                        },
                        h.host
                    )
                })
                .unwrap_or_else(|| "another container".into());
            bail!("address {addr} on network {} is in use by {by}", def.name);
        }
        let used: BTreeSet<Ipv4Addr> = self
            .holders(&def.name)
            .await?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        for addr in candidates(def).filter(|a| !used.contains(a)) {
            // Lost to another claim: the next one.
            if self.try_claim(def, incarnation, addr, &value).await? {
                return Ok(addr);
            }
        }
        bail!("network {} has no free address left", def.name)
    }

    /// One claim; false when the address is taken. An error when the
    /// network is gone.
    async fn try_claim(
        &self,
        def: &NetworkDef,
        incarnation: i64,
        addr: Ipv4Addr,
        value: &[u8],
    ) -> Result<bool> {
        let network = self.network_key(&def.name);
        let key = format!("{}{addr}", self.addresses_prefix(&def.name));
        let txn = Txn::new()
            .when([
                Compare::create_revision(network.as_str(), CompareOp::Equal, incarnation),
                Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(key.as_str(), value.to_vec(), None)]);
        let mut client = self.client()?;
        let resp = bounded("claiming an address", client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        match self.get_with_revision(&def.name).await? {
            Some((_, now, _)) if now == incarnation => Ok(false),
            _ => bail!("network {} was removed meanwhile", def.name),
        }
    }

    /// Frees `addr` if `container` holds it. Returns whether it did.
    pub async fn release(&self, network: &str, addr: Ipv4Addr, container: &str) -> Result<bool> {
        let key = format!("{}{addr}", self.addresses_prefix(network));
        let mut client = self.client()?;
        let resp = bounded("reading an address claim", client.get(key.as_str(), None)).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(false);
        };
        let holder: Option<AddressHolder> = serde_json::from_slice(kv.value()).ok();
        if holder.is_some_and(|h| h.container != container) {
            return Ok(false);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let resp = bounded("freeing an address", client.txn(txn)).await?;
        Ok(resp.succeeded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str) -> CreateRequest {
        CreateRequest {
            name: name.into(),
            ..CreateRequest::default()
        }
    }

    #[test]
    fn definitions_round_trip_as_json_with_docker_s_fields() {
        let def = define(
            &CreateRequest {
                subnet: Some("10.1.1.0/24".into()),
                ip_range: Some("10.1.1.128/25".into()),
                ..request("network01")
            },
            &[],
            "2026-01-01T00:00:00Z".into(),
        )
        .expect("valid");
        let json: serde_json::Value = serde_json::to_value(&def).expect("json");
        assert_eq!(json["name"], "network01");
        assert_eq!(json["driver"], "bridge");
        assert_eq!(json["subnet"], "10.1.1.0/24");
        assert_eq!(json["gateway"], "10.1.1.1");
        assert_eq!(json["ip_range"], "10.1.1.128/25");
        assert_eq!(json["options"], serde_json::json!({}));
        assert_eq!(json["id"].as_str().map(str::len), Some(64));
        let back: NetworkDef = serde_json::from_value(json).expect("parse");
        assert_eq!(back, def);
        let holder: AddressHolder =
            serde_json::from_str(r#"{"host":"10.0.0.1","container":"ab","interface":"eth0"}"#)
                .expect("a holder without a name");
        assert_eq!(holder.interface, "eth0");
    }

    #[test]
    fn bad_definitions_are_refused_in_one_line() {
        let cases = [
            (request("overlay"), "network mode"),
            (request("a/b"), "invalid network name"),
            (
                CreateRequest {
                    driver: "weave".into(),
                    ..request("n")
                },
                "unknown driver",
            ),
            (
                CreateRequest {
                    subnet: Some("10.1.1.0/33".into()),
                    ..request("n")
                },
                "invalid --subnet",
            ),
            (
                CreateRequest {
                    subnet: Some("10.1.1.5/24".into()),
                    ..request("n")
                },
                "not a network address",
            ),
            (
                CreateRequest {
                    subnet: Some("10.1.1.0/24".into()),
                    gateway: Some("10.1.2.1".into()),
                    ..request("n")
                },
                "outside --subnet",
            ),
            (
                CreateRequest {
                    subnet: Some("10.1.1.0/24".into()),
                    ip_range: Some("10.1.0.0/16".into()),
                    ..request("n")
                },
                "outside --subnet",
            ),
            (
                CreateRequest {
                    options: vec!["mtu=9000".into()],
                    ..request("n")
                },
                "unknown option",
            ),
            (
                CreateRequest {
                    driver: "macvlan".into(),
                    options: vec!["parent=eth0".into(), "vlan=5000".into()],
                    ..request("n")
                },
                "1 to 4094",
            ),
            (
                CreateRequest {
                    driver: "macvlan".into(),
                    ..request("n")
                },
                "parent",
            ),
            (
                CreateRequest {
                    driver: "macvlan".into(),
                    options: vec!["parent=eth0".into(), "macvlan_mode=x".into()],
                    ..request("n")
                },
                "macvlan mode",
            ),
            (
                CreateRequest {
                    gateway: Some("10.1.1.1".into()),
                    ..request("n")
                },
                "need --subnet",
            ),
        ];
        for (given, expected) in cases {
            let err = define(&given, &[], String::new()).expect_err(expected);
            let text = format!("{err:#}");
            assert!(text.contains(expected), "{text} lacks {expected}");
            assert!(!text.contains('\n'), "{text}");
        }
        let taken: Ipv4Network = "10.1.0.0/16".parse().expect("cidr");
        let overlapping = CreateRequest {
            subnet: Some("10.1.1.0/24".into()),
            ..request("n")
        };
        assert!(define(&overlapping, &[("x".into(), taken)], String::new()).is_err());
    }

    #[test]
    fn default_subnets_skip_those_in_use_and_candidates_skip_the_reserved() {
        let taken: Ipv4Network = "172.18.0.0/16".parse().expect("cidr");
        let def = define(&request("n"), &[("x".into(), taken)], String::new()).expect("valid");
        assert_eq!(def.subnet.to_string(), "172.19.0.0/16");
        assert_eq!(def.gateway, Ipv4Addr::new(172, 19, 0, 1));
        let small = define(
            &CreateRequest {
                subnet: Some("10.9.0.0/29".into()),
                gateway: Some("10.9.0.6".into()),
                ..request("n")
            },
            &[],
            String::new(),
        )
        .expect("valid");
        let all: Vec<Ipv4Addr> = candidates(&small).collect();
        assert_eq!(all.first(), Some(&Ipv4Addr::new(10, 9, 0, 1)));
        assert_eq!(all.len(), 5, "{all:?}: no network, broadcast or gateway");
        assert!(parse_ip(&small, "10.9.0.6").is_err());
        assert!(parse_ip(&small, "10.9.0.7").is_err());
        assert!(parse_ip(&small, "10.9.1.2").is_err());
        assert_eq!(
            parse_ip(&small, "10.9.0.2").ok(),
            Some(Ipv4Addr::new(10, 9, 0, 2))
        );
    }
}
