//! `tartan network`: Docker's network commands, on networks the whole
//! fabric shares.

use std::path::Path;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};
use tartan_proto::v1::{
    ConnectRequest, CreateNetworkRequest, DisconnectRequest, ListNetworksRequest, Network,
    NetworkRequest,
};

use crate::api;
use crate::cli::refusal::refused;
use crate::cli::stdout;
use crate::networks::store::PREDEFINED;

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a network: tartan network create [OPTIONS] NAME.
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "ls")]
    List(ListArgs),
    /// Show networks in detail, as JSON, with the containers on them.
    Inspect(NamesArgs),
    /// Remove networks (refused while containers are on them).
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
    /// Give a container an interface on a network: tartan network connect NETWORK CONTAINER.
    Connect(ConnectArgs),
    /// Take a container off a network.
    Disconnect(DisconnectArgs),
    /// Remove every network no container is on.
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
}

#[derive(Args)]
pub struct CreateArgs {
    /// bridge, macvlan or ovs.
    #[arg(short = 'd', long, default_value = "bridge")]
    driver: String,
    /// The network's subnet in CIDR form (default: the first free of Docker's pools).
    #[arg(long)]
    subnet: Option<String>,
    /// The gateway's address (default: the subnet's first).
    #[arg(long)]
    gateway: Option<String>,
    /// Allocate addresses from this part of the subnet only.
    #[arg(long = "ip-range")]
    ip_range: Option<String>,
    /// A driver option: parent=IF, macvlan_mode=bridge|private|vepa|passthru, vlan=ID, bridge=NAME. Repeatable.
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    opt: Vec<String>,
    name: String,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only the ids.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// name=TEXT (part of the name) or driver=DRIVER; repeatable, as Docker's.
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    filter: Vec<String>,
}

/// Docker's `network ls --filter`: values of one key are alternatives,
/// different keys must all match.
#[derive(Debug, Default)]
struct Filters {
    names: Vec<String>,
    drivers: Vec<String>,
}

impl Filters {
    fn parse(given: &[String]) -> Result<Filters> {
        let mut filters = Filters::default();
        for entry in given {
            match entry.split_once('=') {
                Some(("name", value)) => filters.names.push(value.to_string()),
                Some(("driver", value)) => filters.drivers.push(value.to_string()),
                Some((key, _)) => bail!("invalid filter '{key}': use name= or driver="),
                None => bail!("bad format of filter {entry:?} (expected name=value)"),
            }
        }
        Ok(filters)
    }

    fn matches(&self, network: &Network) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| network.name.contains(n.as_str())))
            && (self.drivers.is_empty() || self.drivers.contains(&network.driver))
    }
}

#[derive(Args)]
pub struct NamesArgs {
    #[arg(required = true, value_name = "NETWORK")]
    networks: Vec<String>,
}

#[derive(Args)]
pub struct ConnectArgs {
    /// The container's address on the network.
    #[arg(long)]
    ip: Option<String>,
    network: String,
    container: String,
}

#[derive(Args)]
pub struct DisconnectArgs {
    network: String,
    container: String,
}

pub async fn run(command: NetworkCommand, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    match command {
        NetworkCommand::Create(args) => {
            let network = client
                .create_network(CreateNetworkRequest {
                    name: args.name,
                    driver: args.driver,
                    subnet: args.subnet.unwrap_or_default(),
                    gateway: args.gateway.unwrap_or_default(),
                    ip_range: args.ip_range.unwrap_or_default(),
                    options: args.opt,
                })
                .await
                .map_err(refused)?
                .into_inner();
            stdout::println(network.id)
        }
        NetworkCommand::List(args) => {
            let filters = Filters::parse(&args.filter)?;
            let mut networks = client
                .list_networks(ListNetworksRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .networks;
            networks.retain(|n| filters.matches(n));
            if args.quiet {
                for network in &networks {
                    stdout::println(short_id(&network.id))?;
                }
                return Ok(());
            }
            stdout::print(table(&networks))
        }
        NetworkCommand::Prune(args) => {
            if !args.force && !confirm_prune()? {
                return Ok(());
            }
            let networks = client
                .list_networks(ListNetworksRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .networks;
            let mut deleted = Vec::new();
            let mut failures = 0;
            for network in networks {
                if PREDEFINED.contains(&network.name.as_str()) {
                    continue;
                }
                match client
                    .remove_network(NetworkRequest {
                        name: network.name.clone(),
                    })
                    .await
                {
                    Ok(_) => deleted.push(network.name),
                    // A container, on any host, is on it: kept, as Docker keeps it.
                    Err(status) if status.message().contains(" is in use by ") => {}
                    Err(status) => {
                        eprintln!("tartan: {}", status.message());
                        failures += 1;
                    }
                }
            }
            if !deleted.is_empty() {
                stdout::println(format!("Deleted Networks:\n{}", deleted.join("\n")))?;
            }
            if failures > 0 {
                bail!("{failures} unused networks could not be removed");
            }
            Ok(())
        }
        NetworkCommand::Inspect(args) => {
            let mut out = Vec::new();
            for name in args.networks {
                let network = client
                    .inspect_network(NetworkRequest { name })
                    .await
                    .map_err(refused)?
                    .into_inner();
                out.push(network_json(&network));
            }
            stdout::println(serde_json::to_string_pretty(&out)?)
        }
        NetworkCommand::Rm(args) => {
            if let [name] = args.networks.as_slice() {
                client
                    .remove_network(NetworkRequest { name: name.clone() })
                    .await
                    .map_err(refused)?;
                return stdout::println(name);
            }
            let mut failures = 0;
            for name in args.networks {
                match client
                    .remove_network(NetworkRequest { name: name.clone() })
                    .await
                {
                    Ok(_) => stdout::println(&name)?,
                    Err(status) => {
                        eprintln!("tartan: {}", status.message());
                        failures += 1;
                    }
                }
            }
            if failures > 0 {
                bail!("{failures} of the networks named could not be removed");
            }
            Ok(())
        }
        NetworkCommand::Connect(args) => {
            client
                .connect_network(ConnectRequest {
                    network: args.network,
                    container: args.container,
                    ip: args.ip.unwrap_or_default(),
                })
                .await
                .map_err(refused)?;
            Ok(())
        }
        NetworkCommand::Disconnect(args) => {
            client
                .disconnect_network(DisconnectRequest {
                    network: args.network,
                    container: args.container,
                })
                .await
                .map_err(refused)?;
            Ok(())
        }
    }
}

/// Docker's question before a prune; anything but y or yes is a no.
fn confirm_prune() -> Result<bool> {
    use std::io::Write;
    print!(
        "WARNING! This will remove all custom networks not used by at least one container.\n\
         Are you sure you want to continue? [y/N] "
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

fn short_id(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// Named networks and the overlay are the fabric's: every host sees the
/// same definitions. The host's network and none are each host's own.
fn scope(network: &Network) -> &'static str {
    match network.name.as_str() {
        "host" | "none" => "local",
        _ => "global",
    }
}

/// `network ls`, in Docker's columns.
pub fn table(networks: &[Network]) -> String {
    let rows: Vec<[String; 4]> = networks
        .iter()
        .map(|n| {
            [
                short_id(&n.id).to_string(),
                n.name.clone(),
                n.driver.clone(),
                scope(n).to_string(),
            ]
        })
        .collect();
    crate::cli::columns::columns(["NETWORK ID", "NAME", "DRIVER", "SCOPE"], &rows)
}

/// `network inspect`, in Docker's shape.
pub fn network_json(n: &Network) -> Value {
    let mut config = Map::new();
    config.insert("Subnet".into(), json!(n.subnet));
    if !n.ip_range.is_empty() {
        config.insert("IPRange".into(), json!(n.ip_range));
    }
    config.insert("Gateway".into(), json!(n.gateway));
    // As Docker's host and none: no addresses, no IPAM config.
    let configs = if n.subnet.is_empty() {
        Vec::new()
    } else {
        vec![Value::Object(config)]
    };
    let containers: Map<String, Value> = n
        .endpoints
        .iter()
        .map(|e| {
            (
                e.container_id.clone(),
                json!({
                    "Name": e.container_name,
                    "Host": e.host,
                    "Interface": e.interface,
                    "IPv4Address": e.address,
                    "IPv6Address": "",
                }),
            )
        })
        .collect();
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": n.created,
        "Scope": scope(n),
        "Driver": n.driver,
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": configs,
        },
        "Internal": false,
        "Attachable": true,
        "Containers": containers,
        "Options": n.options,
        "Labels": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_and_inspect_read_like_docker() {
        let network = Network {
            name: "network01".into(),
            id: "0123456789abcdef".repeat(4),
            driver: "bridge".into(),
            subnet: "10.1.1.0/24".into(),
            gateway: "10.1.1.1".into(),
            ..Network::default()
        };
        let t = table(std::slice::from_ref(&network));
        assert_eq!(
            t,
            "NETWORK ID     NAME        DRIVER   SCOPE\n0123456789ab   network01   bridge   global\n"
        );
        let j = network_json(&network);
        assert_eq!(j["IPAM"]["Config"][0]["Subnet"], "10.1.1.0/24");
        assert_eq!(j["IPAM"]["Config"][0]["Gateway"], "10.1.1.1");
        assert!(j["IPAM"]["Config"][0].get("IPRange").is_none());
        assert_eq!(j["Containers"], json!({}));
        let none = Network {
            name: "none".into(),
            id: "f".repeat(64),
            driver: "null".into(),
            ..Network::default()
        };
        assert!(
            table(std::slice::from_ref(&none)).ends_with("ffffffffffff   none   null     local\n")
        );
        assert_eq!(network_json(&none)["IPAM"]["Config"], json!([]));
    }
}
