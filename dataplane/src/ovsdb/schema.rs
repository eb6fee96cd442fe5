//! Bridges and ports in the Open_vSwitch schema, as intents: each call makes
//! the database so, does nothing when it already is, and returns once
//! `ovs-vswitchd` has applied the change (`cur_cfg` reached `next_cfg`).
//!
//! Bridge, Port and Interface are not root tables: a row nobody references
//! is dropped at commit, so removing a reference removes the rows under it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::Ovsdb;
use crate::error::{DataplaneError, Result};

/// The kernel's limit on interface names (IFNAMSIZ less the NUL); OVS names
/// the device of an internal port after the port.
const MAX_NAME_LEN: usize = 15;

/// How often to look whether the switch has caught up.
const APPLY_POLL: Duration = Duration::from_millis(10);

/// What a port's single interface is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortType {
    /// A device OVS creates (a TAP device on the userspace datapath).
    Internal,
    /// An existing network device, such as one end of a veth pair.
    System,
}

impl PortType {
    fn as_ovs(self) -> &'static str {
        match self {
            PortType::Internal => "internal",
            PortType::System => "",
        }
    }
}

/// A port with one interface of the same name on `bridge`, an access port
/// when `tag` is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub bridge: String,
    pub name: String,
    pub port_type: PortType,
    /// The VLAN of an access port, 1 to 4094.
    pub tag: Option<u16>,
    /// Names the owner; written on both the Port and the Interface row.
    pub external_ids: BTreeMap<String, String>,
}

/// What `ensure_port` had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortChange {
    Created,
    Updated,
    Unchanged,
}

/// A port as the database has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvsPort {
    pub name: String,
    /// Empty if no bridge references the port.
    pub bridge: String,
    pub tag: Option<u16>,
    /// The OVS type of its first interface: `internal`, or empty for a system device.
    pub interface_type: String,
    pub external_ids: BTreeMap<String, String>,
}

impl Ovsdb {
    /// Makes sure a bridge named `name` exists. A new one uses the userspace
    /// `netdev` datapath (the only one on kernels without the openvswitch
    /// module), has its internal port of the same name and carries
    /// `external_ids`; an existing one is left as it is. True if created.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        external_ids: &BTreeMap<String, String>,
    ) -> Result<bool> {
        check_name("bridge", name)?;
        check_owner("bridge", external_ids)?;
        if self.bridge_uuid(name).await?.is_some() {
            return Ok(false);
        }
        let ids = ovs_map(external_ids);
        let mut ops = vec![
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
                   "row": {"name": name, "type": "internal", "external_ids": ids}}),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": name, "interfaces": ["named-uuid", "iface"], "external_ids": ids}}),
            json!({"op": "insert", "table": "Bridge", "uuid-name": "bridge",
                   "row": {"name": name, "datapath_type": "netdev",
                           "ports": ["named-uuid", "port"], "external_ids": ids}}),
            json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                   "mutations": [["bridges", "insert", ["set", [["named-uuid", "bridge"]]]]]}),
        ];
        self.commit(&mut ops).await?;
        Ok(true)
    }

    /// Removes the bridge `name` with all its ports. False if there was none.
    pub async fn remove_bridge(&self, name: &str) -> Result<bool> {
        let Some(uuid) = self.bridge_uuid(name).await? else {
            return Ok(false);
        };
        let mut ops = vec![json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
               "mutations": [["bridges", "delete", ["set", [["uuid", uuid]]]]]})];
        self.commit(&mut ops).await?;
        Ok(true)
    }

    /// Makes sure the port of `spec` exists as described. A port of that name
    /// on the same bridge whose `external_ids` include the spec's is brought
    /// in line; one on
    /// another bridge or of another owner is a conflict. When the switch
    /// cannot use the interface (a missing device, say), the port is
    /// removed again and the switch's reason is the error.
    pub async fn ensure_port(&self, spec: &PortSpec) -> Result<PortChange> {
        check_name("port", &spec.name)?;
        check_owner("port", &spec.external_ids)?;
        if let Some(tag) = spec.tag {
            if !(1..=4094).contains(&tag) {
                return Err(DataplaneError::BadVlan(tag));
            }
        }
        let Some(bridge_uuid) = self.bridge_uuid(&spec.bridge).await? else {
            return Err(DataplaneError::NoSuchOvsBridge(spec.bridge.clone()));
        };
        let existing = self.port_by_name(&spec.name).await?;
        let tag = spec
            .tag
            .map_or_else(|| json!(["set", []]), |tag| json!(tag));
        if let Some((port_uuid, port)) = existing {
            // Others may add their own keys; ours must all be there.
            let same_owner = spec
                .external_ids
                .iter()
                .all(|(key, value)| port.external_ids.get(key) == Some(value));
            if port.bridge != spec.bridge || !same_owner {
                return Err(DataplaneError::Conflict(format!(
                    "OVS port {} already exists on bridge {} with external_ids {}",
                    spec.name,
                    if port.bridge.is_empty() {
                        "(none)"
                    } else {
                        &port.bridge
                    },
                    describe_ids(&port.external_ids)
                )));
            }
            if port.tag == spec.tag && port.interface_type == spec.port_type.as_ovs() {
                return Ok(PortChange::Unchanged);
            }
            let mut ops = vec![
                json!({"op": "update", "table": "Port", "where": [["_uuid", "==", ["uuid", port_uuid]]],
                       "row": {"tag": tag}}),
                json!({"op": "update", "table": "Interface", "where": [["name", "==", spec.name]],
                       "row": {"type": spec.port_type.as_ovs()}}),
            ];
            self.commit(&mut ops).await?;
            self.check_interface(&spec.name).await?;
            return Ok(PortChange::Updated);
        }
        let ids = ovs_map(&spec.external_ids);
        let mut ops = vec![
            json!({"op": "insert", "table": "Interface", "uuid-name": "iface",
                   "row": {"name": spec.name, "type": spec.port_type.as_ovs(), "external_ids": ids}}),
            json!({"op": "insert", "table": "Port", "uuid-name": "port",
                   "row": {"name": spec.name, "interfaces": ["named-uuid", "iface"],
                           "tag": tag, "external_ids": ids}}),
            json!({"op": "mutate", "table": "Bridge", "where": [["_uuid", "==", ["uuid", bridge_uuid]]],
                   "mutations": [["ports", "insert", ["set", [["named-uuid", "port"]]]]]}),
        ];
        let results = self.commit(&mut ops).await?;
        // The bridge went between the lookup and the commit: the new rows,
        // referenced by nothing, were dropped at commit.
        if results
            .get(2)
            .and_then(|r| r.get("count"))
            .and_then(Value::as_u64)
            != Some(1)
        {
            return Err(DataplaneError::NoSuchOvsBridge(spec.bridge.clone()));
        }
        self.check_interface(&spec.name).await?;
        Ok(PortChange::Created)
    }

    /// Removes the port `name` from whichever bridge has it. False if there
    /// was none.
    pub async fn remove_port(&self, name: &str) -> Result<bool> {
        let Some((uuid, port)) = self.port_by_name(name).await? else {
            return Ok(false);
        };
        if port.bridge.is_empty() {
            return Ok(false);
        }
        let mut ops = vec![json!({"op": "mutate", "table": "Bridge",
               "where": [["ports", "includes", ["set", [["uuid", uuid]]]]],
               "mutations": [["ports", "delete", ["set", [["uuid", uuid]]]]]})];
        self.commit(&mut ops).await?;
        Ok(true)
    }

    /// Every port whose `external_ids` has `key=value`, by name.
    pub async fn ports_owned_by(&self, key: &str, value: &str) -> Result<Vec<OvsPort>> {
        let owner = json!(["map", [[key, value]]]);
        self.ports_where(json!([["external_ids", "includes", owner]]))
            .await
            .map(|ports| ports.into_iter().map(|(_, port)| port).collect())
    }

    /// The names of the bridges whose `external_ids` has `key=value`, sorted.
    pub async fn bridges_owned_by(&self, key: &str, value: &str) -> Result<Vec<String>> {
        let owner = json!(["map", [[key, value]]]);
        let results = self
            .transact(vec![json!({"op": "select", "table": "Bridge",
                   "where": [["external_ids", "includes", owner]], "columns": ["name"]})])
            .await?;
        let mut names: Vec<_> = rows(&results[0])
            .iter()
            .map(|row| text(row, "name"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The names of the bridges whose `external_ids` value of `key` starts
    /// with `prefix`, sorted. OVSDB matches whole values only: filtered here.
    pub async fn bridges_owned_with_prefix(&self, key: &str, prefix: &str) -> Result<Vec<String>> {
        let results = self
            .transact(vec![json!({"op": "select", "table": "Bridge",
                   "where": [], "columns": ["name", "external_ids"]})])
            .await?;
        let mut names: Vec<_> = rows(&results[0])
            .iter()
            .filter(|row| {
                map_of(row.get("external_ids"))
                    .get(key)
                    .is_some_and(|owner| owner.starts_with(prefix))
            })
            .map(|row| text(row, "name"))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether a bridge named `name` exists.
    pub async fn has_bridge(&self, name: &str) -> Result<bool> {
        Ok(self.bridge_uuid(name).await?.is_some())
    }

    /// Every port, with its bridge.
    pub async fn ports(&self) -> Result<Vec<OvsPort>> {
        self.ports_where(json!([]))
            .await
            .map(|ports| ports.into_iter().map(|(_, port)| port).collect())
    }

    async fn bridge_uuid(&self, name: &str) -> Result<Option<String>> {
        let results = self
            .transact(vec![json!({"op": "select", "table": "Bridge",
                   "where": [["name", "==", name]], "columns": ["_uuid"]})])
            .await?;
        Ok(rows(&results[0])
            .first()
            .and_then(|row| row.get("_uuid"))
            .and_then(uuid_of)
            .map(str::to_string))
    }

    async fn port_by_name(&self, name: &str) -> Result<Option<(String, OvsPort)>> {
        let mut ports = self.ports_where(json!([["name", "==", name]])).await?;
        Ok(ports.pop())
    }

    /// The ports matching `condition`, with their bridge and interface type,
    /// read in one transaction so they are consistent.
    async fn ports_where(&self, condition: Value) -> Result<Vec<(String, OvsPort)>> {
        let results = self
            .transact(vec![
                json!({"op": "select", "table": "Port", "where": condition,
                       "columns": ["_uuid", "name", "tag", "interfaces", "external_ids"]}),
                json!({"op": "select", "table": "Bridge", "where": [], "columns": ["name", "ports"]}),
                json!({"op": "select", "table": "Interface", "where": [], "columns": ["_uuid", "type"]}),
            ])
            .await?;
        let mut bridge_of = BTreeMap::new();
        for bridge in rows(&results[1]) {
            let name = text(bridge, "name");
            for port in atoms(bridge.get("ports")) {
                if let Some(uuid) = uuid_of(port) {
                    bridge_of.insert(uuid.to_string(), name.clone());
                }
            }
        }
        let mut type_of = BTreeMap::new();
        for interface in rows(&results[2]) {
            if let Some(uuid) = interface.get("_uuid").and_then(uuid_of) {
                type_of.insert(uuid.to_string(), text(interface, "type"));
            }
        }
        let mut ports = Vec::new();
        for row in rows(&results[0]) {
            let Some(uuid) = row.get("_uuid").and_then(uuid_of) else {
                continue;
            };
            let interface_type = atoms(row.get("interfaces"))
                .first()
                .and_then(|i| uuid_of(i))
                .and_then(|i| type_of.get(i).cloned())
                .unwrap_or_default();
            let tag = atoms(row.get("tag"))
                .first()
                .and_then(|t| t.as_u64())
                .and_then(|t| u16::try_from(t).ok());
            ports.push((
                uuid.to_string(),
                OvsPort {
                    name: text(row, "name"),
                    bridge: bridge_of.get(uuid).cloned().unwrap_or_default(),
                    tag,
                    interface_type,
                    external_ids: map_of(row.get("external_ids")),
                },
            ));
        }
        ports.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        Ok(ports)
    }

    /// Commits `ops` together with a bump of `next_cfg`, then waits until
    /// the switch reports (in `cur_cfg`) that it has applied that
    /// configuration. Returns the results of `ops`.
    async fn commit(&self, ops: &mut Vec<Value>) -> Result<Vec<Value>> {
        let count = ops.len();
        ops.push(json!({"op": "mutate", "table": "Open_vSwitch", "where": [],
                        "mutations": [["next_cfg", "+=", 1]]}));
        ops.push(json!({"op": "select", "table": "Open_vSwitch", "where": [],
                        "columns": ["next_cfg"]}));
        let mut results = self.transact(std::mem::take(ops)).await?;
        let target = results
            .get(count + 1)
            .map(rows)
            .and_then(|rows| rows.first())
            .and_then(|row| row.get("next_cfg"))
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                DataplaneError::OvsdbProtocol("the Open_vSwitch table has no row".to_string())
            })?;
        self.wait_applied(target).await?;
        results.truncate(count);
        Ok(results)
    }

    async fn wait_applied(&self, target: i64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let results = self
                .transact(vec![
                    json!({"op": "select", "table": "Open_vSwitch", "where": [],
                       "columns": ["cur_cfg"]}),
                ])
                .await?;
            let current = rows(&results[0])
                .first()
                .and_then(|row| row.get("cur_cfg"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if current >= target {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DataplaneError::OvsdbTimeout {
                    what: format!(
                        "ovs-vswitchd to apply configuration {target} (it is at {current}; is it running?)"
                    ),
                    timeout: self.timeout,
                });
            }
            tokio::time::sleep(APPLY_POLL).await;
        }
    }

    /// The switch records why it could not use an interface in its `error`
    /// column; such a port is taken out again, so a failure leaves nothing.
    async fn check_interface(&self, name: &str) -> Result<()> {
        let results = self
            .transact(vec![json!({"op": "select", "table": "Interface",
                   "where": [["name", "==", name]], "columns": ["error"]})])
            .await?;
        let error = rows(&results[0])
            .first()
            .and_then(|row| atoms(row.get("error")).first().copied())
            .and_then(Value::as_str)
            .map(str::to_string);
        let Some(error) = error else {
            return Ok(());
        };
        let cause = DataplaneError::OvsInterface {
            port: name.to_string(),
            error,
        };
        match self.remove_port(name).await {
            Ok(_) => Err(cause),
            Err(undo) => Err(DataplaneError::UndoFailed {
                failed: Box::new(cause),
                undo: Box::new(undo),
            }),
        }
    }
}

fn check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name.contains(['/', ' ', '\0'])
        || name == "."
        || name == ".."
    {
        return Err(DataplaneError::BadOvsName {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Every row Tartan makes names its owner, so that stale ones can be found.
fn check_owner(what: &'static str, external_ids: &BTreeMap<String, String>) -> Result<()> {
    if external_ids.is_empty() {
        return Err(DataplaneError::OvsNoOwner(what));
    }
    Ok(())
}

fn ovs_map(map: &BTreeMap<String, String>) -> Value {
    json!([
        "map",
        map.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>()
    ])
}

fn describe_ids(ids: &BTreeMap<String, String>) -> String {
    if ids.is_empty() {
        return "(none)".to_string();
    }
    ids.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn rows(result: &Value) -> &[Value] {
    result
        .get("rows")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn text(row: &Value, column: &str) -> String {
    row.get(column)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The members of an OVSDB set: `["set", [...]]`, or a lone atom for a set of one.
fn atoms(value: Option<&Value>) -> Vec<&Value> {
    match value {
        None => Vec::new(),
        Some(Value::Array(pair)) if pair.first() == Some(&json!("set")) => pair
            .get(1)
            .and_then(Value::as_array)
            .map(|members| members.iter().collect())
            .unwrap_or_default(),
        Some(atom) => vec![atom],
    }
}

fn uuid_of(value: &Value) -> Option<&str> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, Value::String(uuid)]) if tag == "uuid" => Some(uuid),
        _ => None,
    }
}

fn map_of(value: Option<&Value>) -> BTreeMap<String, String> {
    let pairs = value
        .and_then(Value::as_array)
        .filter(|pair| pair.first() == Some(&json!("map")))
        .and_then(|pair| pair.get(1))
        .and_then(Value::as_array);
    pairs
        .into_iter()
        .flatten()
        .filter_map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(k), Value::String(v)]) => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_maps_and_uuids_decode() {
        let empty = json!(["set", []]);
        assert!(atoms(Some(&empty)).is_empty());
        let one = json!(100);
        assert_eq!(atoms(Some(&one)), vec![&json!(100)]);
        let two = json!(["set", [["uuid", "a"], ["uuid", "b"]]]);
        let uuids: Vec<_> = atoms(Some(&two)).into_iter().filter_map(uuid_of).collect();
        assert_eq!(uuids, vec!["a", "b"]);
        let map = json!(["map", [["tartan-owner", "c1"], ["x", "y"]]]);
        assert_eq!(
            map_of(Some(&map)),
            BTreeMap::from([
                ("tartan-owner".to_string(), "c1".to_string()),
                ("x".to_string(), "y".to_string())
            ])
        );
        assert_eq!(describe_ids(&map_of(Some(&map))), "tartan-owner=c1,x=y");
    }

    #[test]
    fn names_the_kernel_would_refuse_are_refused() {
        assert!(check_name("port", "veth-c1-eth0").is_ok());
        for bad in ["", "a-name-longer-than-15", "a/b", "a b", "."] {
            let err = check_name("port", bad).expect_err(bad);
            assert!(!err.to_string().contains('\n'));
        }
    }
}
