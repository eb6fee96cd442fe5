//! `tartan reset`: removes everything the agent made on this host, as
//! weave's `reset` does: the bridge and the ports on it, the VXLAN and TUN
//! devices, Tartan's routes, the nf_tables table, the bridges of bridge
//! networks and the Open vSwitch bridges of ovs networks, the subnet file and the address book; on request the etcd
//! lease. It runs with no agent, and refuses while one runs in this network
//! namespace, or while containers run (unless forced, which kills them).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tartan_dataplane::{Netlink, OverlayScope, OverlayState};
use tartan_runtime::container::ContainerDir;

use crate::backends::node::FIREWALL_TABLE;
use crate::backends::registry;
use crate::claim;
use crate::control::etcd::{EtcdOptions, Registry};
use crate::control::lease::{lease_key, parse_lease};
use crate::control::subnet_file::previous_subnet;
use crate::teardown::Teardown;

/// How long a killed container may take to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// What `tartan reset` is told: the agent's own settings, so that the same
/// environment (`/etc/default/tartan`) names the same things.
pub struct ResetOptions {
    pub bridge: String,
    pub external_bridge: bool,
    pub subnet_file: PathBuf,
    pub state_dir: PathBuf,
    pub api_socket: PathBuf,
    pub public_ip: Option<Ipv4Addr>,
    pub force: bool,
    /// Release this node's lease in etcd too.
    pub release_lease: Option<EtcdOptions>,
    /// The OVSDB address, for the OVS ports of pipework-form attachments
    /// and the OVS bridges of ovs networks.
    pub ovsdb: String,
}

/// Removes what the agent made; returns one line per thing removed.
pub async fn reset(opts: &ResetOptions) -> Result<Vec<String>> {
    if tokio::net::UnixStream::connect(&opts.api_socket)
        .await
        .is_ok()
    {
        bail!(
            "an agent is serving {}: stop it first (systemctl stop tartan)",
            opts.api_socket.display()
        );
    }
    // Held while resetting, so that no agent starts here meanwhile; refused
    // with the running agent's name if there is one.
    let holder = claim::Holder {
        pid: std::process::id(),
        state_dir: opts.state_dir.display().to_string(),
        api_socket: format!("{} (tartan reset)", opts.api_socket.display()),
    };
    let _claim = claim::take(
        "dataplane",
        &holder,
        "programs its network: stop it first (systemctl stop tartan)",
    )
    .await?;

    let mut done = Vec::new();
    let mut teardown = Teardown::new();
    stop_containers(opts, &mut done, &mut teardown).await?;

    let netlink = Netlink::connect().context("opening netlink")?;
    remove_pipework(&netlink, opts, &mut done, &mut teardown).await;
    remove_links(&netlink, opts, &mut done, &mut teardown).await;
    remove_network_bridges(&netlink, opts, &mut done, &mut teardown).await;
    remove_network_ovs_bridges(opts, &mut done, &mut teardown).await;
    // The segment's devices: its attachments went with remove_pipework.
    let segment = tartan_dataplane::L2SegmentSpec::new(std::net::Ipv4Addr::UNSPECIFIED, 0, 0);
    if let Some(true) = teardown.step(
        "removing the L2 segment",
        netlink.remove_l2_segment(&segment).await,
    ) {
        done.push(format!(
            "removed the L2 segment ({} and {})",
            segment.bridge, segment.vxlan
        ));
    }
    for backend in registry::every_backend() {
        done.extend(backend.teardown(&netlink, &mut teardown).await);
    }
    if let Some(removed) = teardown.step(
        "removing tartan's routes",
        netlink
            .apply_overlay(&OverlayState::default(), OverlayScope { vxlan_index: None })
            .await,
    ) {
        if !removed.remove_routes.is_empty() {
            done.push(format!("removed {} routes", removed.remove_routes.len()));
        }
    }
    let firewall =
        tokio::task::spawn_blocking(|| tartan_dataplane::remove_firewall(FIREWALL_TABLE))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(anyhow::Error::from));
    if teardown
        .step("removing the nf_tables table", firewall)
        .is_some()
    {
        // Removing an absent table succeeds too: say what is true either way.
        done.push(format!("nf_tables table ip {FIREWALL_TABLE}: gone"));
    }
    let ports = tokio::task::spawn_blocking(|| {
        tartan_dataplane::apply_published_ports(crate::containers::ports::PORTS_TABLE, &[])
    })
    .await
    .map_err(anyhow::Error::from)
    .and_then(|r| r.map_err(anyhow::Error::from));
    if teardown
        .step("removing the published-port rules", ports)
        .is_some()
    {
        done.push(format!(
            "nf_tables table ip {}: gone",
            crate::containers::ports::PORTS_TABLE
        ));
    }

    // The subnet file names the lease: released before the file goes.
    if let Some(etcd) = &opts.release_lease {
        if let Some(line) = teardown.step(
            "releasing the subnet lease",
            release_lease(etcd, &netlink, opts).await,
        ) {
            done.push(line);
        }
    }
    for (what, path) in [
        ("the subnet file", opts.subnet_file.clone()),
        ("the address book", opts.state_dir.join("ipam.json")),
        // weave's reset forgets the peers too.
        ("the segment's peers", opts.state_dir.join("peers.json")),
    ] {
        if path.exists()
            && teardown
                .step(what, crate::teardown::remove_file(&path))
                .is_some()
        {
            done.push(format!("removed {}", path.display()));
        }
    }
    teardown.finish()?;
    Ok(done)
}

/// Undoes the recorded pipework-form attachments (their interfaces, OVS
/// ports, host shims, VLAN devices and the bridges made for them), then
/// removes the records.
async fn remove_pipework(
    netlink: &Netlink,
    opts: &ResetOptions,
    done: &mut Vec<String>,
    teardown: &mut Teardown,
) {
    let ovsdb = std::sync::Arc::new(crate::networks::ovsdb::OvsdbHandle::new(opts.ovsdb.clone()));
    let Some(pipework) = teardown.step(
        "reading the attachment records",
        crate::networks::pipework::Pipework::open(netlink.clone(), ovsdb, &opts.state_dir),
    ) else {
        return;
    };
    let owners: Vec<String> = pipework
        .records()
        .await
        .into_iter()
        .map(|r| r.owner)
        .collect();
    if owners.is_empty() {
        return;
    }
    if let Some(gone) = teardown.step(
        "removing pipework-form attachments",
        pipework.detach(&owners, None).await,
    ) {
        done.push(format!("removed {} pipework-form attachments", gone.len()));
    }
}

/// Running containers refuse the reset, unless forced: then they are killed.
async fn stop_containers(
    opts: &ResetOptions,
    done: &mut Vec<String>,
    teardown: &mut Teardown,
) -> Result<()> {
    let root = opts.state_dir.join("containers");
    let mut running = Vec::new();
    if let Ok(listing) = std::fs::read_dir(&root) {
        for entry in listing.flatten() {
            let dir = ContainerDir::new(entry.path());
            if dir.shim_alive() {
                let name = dir
                    .read_config()
                    .map(|c| c.name)
                    .unwrap_or_else(|_| entry.file_name().to_string_lossy().into_owned());
                running.push((name, dir));
            }
        }
    }
    if running.is_empty() {
        return Ok(());
    }
    if !opts.force {
        let names: Vec<&str> = running.iter().map(|(name, _)| name.as_str()).collect();
        bail!(
            "{} running: {}; stop them first, or reset -f to kill them",
            if names.len() == 1 {
                "a container is".to_string()
            } else {
                format!("{} containers are", names.len())
            },
            names.join(", ")
        );
    }
    for (name, dir) in running {
        let killed = dir
            .signal(libc::SIGKILL)
            .map_err(anyhow::Error::from)
            .and_then(|_| {
                let deadline = Instant::now() + KILL_WAIT;
                while dir.shim_alive() {
                    if Instant::now() >= deadline {
                        bail!("still running {}s after SIGKILL", KILL_WAIT.as_secs());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(())
            });
        if teardown
            .step(&format!("killing container {name}"), killed)
            .is_some()
        {
            done.push(format!("killed container {name}"));
        }
    }
    Ok(())
}

/// The ports on the bridge (containers' and attachments' host ends) and the
/// bridge; the backends remove their own devices.
async fn remove_links(
    netlink: &Netlink,
    opts: &ResetOptions,
    done: &mut Vec<String>,
    teardown: &mut Teardown,
) {
    let Some(links) = teardown.step("listing the interfaces", netlink.links_state().await) else {
        return;
    };
    let bridge = links
        .iter()
        .find(|l| l.name == opts.bridge && l.kind.as_deref() == Some("bridge"))
        .filter(|_| !opts.external_bridge);
    let mut doomed: Vec<&tartan_dataplane::LinkState> = Vec::new();
    if let Some(bridge) = bridge {
        doomed.extend(
            links
                .iter()
                .filter(|l| l.controller == Some(bridge.index) && l.name.starts_with("vt")),
        );
        doomed.push(bridge);
    }
    for link in doomed {
        if teardown
            .step(
                &format!("removing {}", link.name),
                netlink.delete_link(link.index).await,
            )
            .is_some()
        {
            done.push(format!("removed {}", link.name));
        }
    }
}

/// The Linux bridges of the bridge networks the containers here are on
/// (named by the agent, not `-o bridge=`); a start makes them again. Their
/// ports went with the killed containers' namespaces.
async fn remove_network_bridges(
    netlink: &Netlink,
    opts: &ResetOptions,
    done: &mut Vec<String>,
    teardown: &mut Teardown,
) {
    let mut bridges = std::collections::BTreeSet::new();
    if let Ok(listing) = std::fs::read_dir(opts.state_dir.join("containers")) {
        for entry in listing.flatten() {
            let Ok(config) = ContainerDir::new(entry.path()).read_config() else {
                continue;
            };
            for endpoint in config.endpoints {
                // The device the agent made for the network (not an
                // operator's `-o bridge=`); only Linux bridges go below.
                let device = crate::networks::drivers::registration(&endpoint.driver)
                    .ok()
                    .and_then(|registration| registration.network_device);
                if let (Some(device), false) = (device, endpoint.options.contains_key("bridge")) {
                    let short = &endpoint.network_id[..12.min(endpoint.network_id.len())];
                    bridges.insert(device(short));
                }
            }
        }
    }
    for name in bridges {
        let Some(link) = teardown.step(&format!("looking up {name}"), netlink.link(&name).await)
        else {
            continue;
        };
        let Some(link) = link.filter(|l| l.kind.as_deref() == Some("bridge")) else {
            continue;
        };
        if teardown
            .step(
                &format!("removing {name}"),
                netlink.delete_link(link.index).await,
            )
            .is_some()
        {
            done.push(format!("removed {name}"));
        }
    }
}

/// The Open vSwitch bridges the agent made for ovs networks: those whose
/// owner in external_ids names a network (the switch is this host's, so
/// they are this host's), with the containers' ports on them. A switch that
/// is not reachable fails the reset only when a container here was on an
/// ovs network.
async fn remove_network_ovs_bridges(
    opts: &ResetOptions,
    done: &mut Vec<String>,
    teardown: &mut Teardown,
) {
    use crate::networks::drivers::ovs::OWNER_KEY;
    use crate::networks::named::NETWORK_OWNER_PREFIX;
    let ovsdb = match tartan_dataplane::ovsdb::Ovsdb::connect(&opts.ovsdb).await {
        Ok(ovsdb) => ovsdb,
        Err(err) => {
            if uses_ovs_networks(opts) {
                teardown.step::<(), _>(
                    "removing the OVS bridges of ovs networks",
                    Err(anyhow::Error::new(err)),
                );
            }
            return;
        }
    };
    let Some(bridges) = teardown.step(
        "listing the OVS bridges of ovs networks",
        ovsdb
            .bridges_owned_with_prefix(OWNER_KEY, NETWORK_OWNER_PREFIX)
            .await,
    ) else {
        return;
    };
    for name in bridges {
        if teardown
            .step(
                &format!("removing the OVS bridge {name}"),
                ovsdb.remove_bridge(&name).await,
            )
            .is_some()
        {
            done.push(format!("removed OVS bridge {name}"));
        }
    }
}

/// Whether a container here has an endpoint on an ovs network.
fn uses_ovs_networks(opts: &ResetOptions) -> bool {
    let Ok(listing) = std::fs::read_dir(opts.state_dir.join("containers")) else {
        return false;
    };
    listing.flatten().any(|entry| {
        ContainerDir::new(entry.path())
            .read_config()
            .is_ok_and(|config| {
                config
                    .endpoints
                    .iter()
                    .any(|e| e.driver == crate::networks::drivers::ovs::REGISTRATION.name)
            })
    })
}

/// Revokes this node's lease, named by the subnet file, if it is this
/// host's (its PublicIP is an address here, or --public-ip) and not a
/// reservation.
async fn release_lease(
    etcd: &EtcdOptions,
    netlink: &Netlink,
    opts: &ResetOptions,
) -> Result<String> {
    let Some(subnet) = previous_subnet(&opts.subnet_file) else {
        bail!(
            "{} names no subnet: nothing to release",
            opts.subnet_file.display()
        );
    };
    let registry = Registry::connect(etcd, Registry::connect_options(etcd)?).await?;
    let Some((value, etcd_lease)) = registry.get_lease(&subnet).await? else {
        return Ok(format!("no lease for {subnet} in etcd"));
    };
    let key = lease_key(registry.prefix(), &subnet);
    let attrs = parse_lease(
        &registry.subnets_prefix(),
        key.as_bytes(),
        &value,
        etcd_lease,
        0,
    )
    .map_err(|reason| anyhow::anyhow!("the lease of {subnet} does not parse: {reason}"))?
    .attrs;
    let ours = Some(attrs.public_ip) == opts.public_ip
        || netlink
            .interface_by_address(attrs.public_ip)
            .await?
            .is_some();
    if !ours {
        bail!(
            "the lease of {subnet} is {}'s, not this host's: kept",
            attrs.public_ip
        );
    }
    if etcd_lease == 0 {
        return Ok(format!("kept the reservation of {subnet}"));
    }
    registry.revoke(etcd_lease).await?;
    Ok(format!("released the lease of {subnet}"))
}
