//! `tartan`: the node agent (`tartan agent`) and the CLI that talks to it.

mod api;
mod backends;
mod background;
mod claim;
mod cli;
mod containers;
mod control;
mod daemon;
mod names;
mod networks;
mod notify;
mod reset;
mod segment;
mod teardown;

use cli::refusal::refused;
use cli::{containers as container_cli, flanneld, progress, status, stdout};

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tartan_dataplane::InterfaceSelector;

use crate::control::etcd::EtcdOptions;
use crate::daemon::{AgentOptions, Store};

const DEFAULT_API_SOCKET: &str = "/run/tartan/tartan.sock";

#[derive(Parser)]
#[command(
    name = "tartan",
    version,
    propagate_version = true,
    about = "Tartan: a multi-host container networking fabric"
)]
struct Cli {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent: lease a subnet from etcd and keep the peer table.
    Agent(Box<AgentArgs>),
    /// Show this node's lease, the network config and every peer lease.
    Status(StatusArgs),
    /// Join a running container's terminal or output (tartan attach
    /// CONTAINER, as docker attach), or plug a container in: tartan attach
    /// [ADDR/LEN] CONTAINER (onto the node bridge), or tartan attach
    /// HOST_INTERFACE CONTAINER ADDR/LEN[@GATEWAY]|0/0 [MAC][@VLAN]
    /// (pipework's form).
    ///
    /// A single argument naming a Tartan container, with no -i, --l2 or
    /// --netns, joins the container (Ctrl-P Ctrl-Q detaches); one that is
    /// also a netns name is refused. Otherwise CONTAINER is a netns name (as
    /// `ip netns` knows it), a netns path or a PID (in the pipework form
    /// also a Tartan container). One or two arguments are the weave form,
    /// three or four pipework's. Without ADDR the next free address of the
    /// node subnet is used. Prints the address given.
    Attach(AttachArgs),
    /// Unplug a container (one interface with -i) and free its address.
    Detach(DetachArgs),
    /// Add hosts to the L2 segment's peers (weave's connect): tartan connect
    /// [--replace] HOST[:PORT]... Each is told, and adds this host back.
    Connect(cli::segment::ConnectArgs),
    /// Drop hosts from the L2 segment's manual peers (weave's forget); each is told.
    Forget(cli::segment::ForgetArgs),
    /// List the namespaces plugged in with attach, and their addresses (weave's ps).
    Attachments(AttachmentsArgs),
    /// Remove everything the agent made on this host (weave's reset); the agent must be stopped.
    ///
    /// The bridge and the ports on it, the VXLAN and TUN devices, tartan's
    /// routes, the nf_tables table, the subnet file and the address book.
    /// Refused while containers run, unless -f (which kills them).
    Reset(Box<ResetArgs>),
    /// Import a root filesystem tarball as an image: tartan import FILE|- NAME[:TAG].
    Import(ImportArgs),
    /// Load a `docker save` archive or an OCI image-layout tarball, keeping its layers.
    Load(LoadArgs),
    /// List images.
    Images,
    /// Remove an image: tartan rmi NAME[:TAG]|ID.
    Rmi(RmiArgs),
    /// Name an image with another NAME[:TAG]: tartan tag SOURCE TARGET.
    Tag(TagArgs),
    /// Create and start a container: tartan run [OPTIONS] IMAGE [COMMAND [ARG...]].
    // `-h` is `--hostname` here, as in Docker; only `--help` prints help.
    #[command(disable_help_flag = true)]
    Run(Box<container_cli::RunArgs>),
    /// List containers (running ones; -a for all).
    Ps(container_cli::PsArgs),
    /// Show containers in detail, as JSON.
    Inspect(container_cli::NamesArgs),
    /// List a container's published ports: tartan port CONTAINER [PRIVATE_PORT[/PROTO]].
    Port(cli::ports::PortArgs),
    /// Show containers' use of CPU, memory, network, disks and pids: tartan stats [--no-stream] [CONTAINER...].
    Stats(cli::limits::StatsArgs),
    /// Print a container's output (-f to follow it).
    Logs(container_cli::LogsArgs),
    /// Run a command inside a running container.
    Exec(container_cli::ExecArgs),
    /// Stop containers: SIGTERM, then SIGKILL after -t seconds.
    Stop(container_cli::StopArgs),
    /// Start stopped containers.
    Start(container_cli::NamesArgs),
    /// Stop and start containers.
    Restart(container_cli::StopArgs),
    /// Remove containers (-f kills running ones first).
    Rm(container_cli::RmArgs),
    /// Write a container's filesystem as a tarball.
    Export(container_cli::ExportArgs),
    /// Manage named networks, shared by every host of the fabric.
    #[command(subcommand)]
    Network(cli::network::NetworkCommand),
    /// Manage this host's volumes.
    #[command(subcommand)]
    Volume(cli::volume::VolumeCommand),
    /// A container's first process, inside the namespaces its parent made.
    #[command(hide = true)]
    Init(InitArgs),
    /// A container's supervisor, started by the agent.
    #[command(hide = true)]
    Shim(InitArgs),
}

#[derive(Args)]
struct InitArgs {
    /// The container's init spec (JSON), or the supervisor's container directory.
    spec: PathBuf,
}

/// The options of every command. Global, so that they go before the
/// command or after it, as `docker -H` does.
#[derive(Args)]
struct ApiArgs {
    /// Unix socket of the agent's API: where `tartan agent` serves it and
    /// where the other commands ask.
    #[arg(
        long,
        global = true,
        env = "TARTAN_API_SOCKET",
        default_value = DEFAULT_API_SOCKET
    )]
    api_socket: PathBuf,
}

#[derive(Args)]
struct ImportArgs {
    /// The tarball (`docker export`, `tar -C rootfs -c .`; gzip is fine), or - for standard input.
    file: PathBuf,
    /// NAME[:TAG]; the tag defaults to latest.
    reference: String,
}

#[derive(Args)]
struct LoadArgs {
    /// The archive; - (the default) for standard input.
    #[arg(short = 'i', long = "input", default_value = "-")]
    input: PathBuf,
}

#[derive(Args)]
struct RmiArgs {
    /// By id, remove every tag of an image that has several.
    #[arg(short = 'f', long)]
    force: bool,
    /// NAME[:TAG] or an id prefix.
    image: String,
}

#[derive(Args)]
struct TagArgs {
    /// NAME[:TAG] or an id prefix.
    source: String,
    /// NAME[:TAG] (the tag defaults to latest).
    target: String,
}

#[derive(Args)]
struct AttachArgs {
    /// The interface's name in the container (default eth0 in the weave
    /// form, eth1 in the pipework form).
    #[arg(short = 'i', value_name = "CONTAINER_IF")]
    container_interface: Option<String>,
    /// The host end's name of a veth (pipework form, bridges only).
    #[arg(short = 'l', value_name = "HOST_IF_NAME")]
    host_interface_name: Option<String>,
    /// Give the host a shim macvlan with a route to the container
    /// (pipework form, macvlan only).
    #[arg(long)]
    host_shim: bool,
    /// Weave form: onto the L2 segment even with no address (an automatic
    /// one from --l2-range) or one inside the cluster network.
    #[arg(long)]
    l2: bool,
    /// Weave form: [ADDR/LEN] CONTAINER. Pipework form: HOST_INTERFACE
    /// CONTAINER ADDR/LEN[@GATEWAY]|0/0 [MAC][@VLAN].
    #[arg(required = true, num_args = 1..=4, value_name = "ARG")]
    args: Vec<String>,
    /// Weave form: CONTAINER is a netns name, even when a Tartan container
    /// has that name too.
    #[arg(long)]
    netns: bool,
    /// Container form: the keys that detach, leaving the container running
    /// (Docker's format; default ctrl-p,ctrl-q).
    #[arg(long = "detach-keys", value_name = "KEYS")]
    detach_keys: Option<String>,
    /// Container form: do not pass standard input on.
    #[arg(long = "no-stdin")]
    no_stdin: bool,
    /// Container form: pass the signals this command receives on (not with a terminal).
    #[arg(
        long = "sig-proxy",
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    sig_proxy: bool,
}

#[derive(Args)]
struct ResetArgs {
    /// Kill running containers instead of refusing.
    #[arg(short, long)]
    force: bool,
    /// Release this node's subnet lease in etcd too (not a reservation).
    #[arg(long)]
    release_lease: bool,
    /// The node bridge, as given to the agent.
    #[arg(long, env = "TARTAN_BRIDGE", default_value = "tartan0")]
    bridge: String,
    /// The bridge is someone else's (docker0): left alone.
    #[arg(long, env = "TARTAN_EXTERNAL_BRIDGE")]
    external_bridge: bool,
    #[arg(
        long,
        env = "TARTAN_SUBNET_FILE",
        default_value = "/run/tartan/subnet.env"
    )]
    subnet_file: PathBuf,
    #[arg(long, env = "TARTAN_STATE_DIR", default_value = "/var/lib/tartan")]
    state_dir: PathBuf,
    /// The address the agent published, if not one of this host's.
    #[arg(long, env = "TARTAN_PUBLIC_IP")]
    public_ip: Option<Ipv4Addr>,
    /// The Open vSwitch database, for the OVS ports of attachments and the OVS bridges of ovs networks.
    #[arg(
        long,
        env = "TARTAN_OVSDB",
        default_value = "unix:/var/run/openvswitch/db.sock"
    )]
    ovsdb: String,
    #[command(flatten)]
    etcd: EtcdArgs,
}

#[derive(Args)]
struct AttachmentsArgs {
    /// Print only the containers, one per line.
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Args)]
struct DetachArgs {
    /// Only this interface of the container (default: all of its attachments).
    #[arg(short = 'i', value_name = "CONTAINER_IF")]
    container_interface: Option<String>,
    /// A Tartan container's name or id, a netns name, netns path or PID.
    container: String,
}

/// How to reach etcd: the agent's flags, shared by `reset --release-lease`.
#[derive(Args)]
struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "TARTAN_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        value_parser = parse_etcd_endpoint
    )]
    etcd_endpoints: Vec<String>,
    /// Key prefix of the network (flannel's default, so both can share a cluster).
    #[arg(
        long,
        env = "TARTAN_ETCD_PREFIX",
        default_value = "/coreos.com/network"
    )]
    etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd's TLS certificate.
    #[arg(long, env = "TARTAN_ETCD_CAFILE")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, env = "TARTAN_ETCD_CERTFILE")]
    etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, env = "TARTAN_ETCD_KEYFILE")]
    etcd_keyfile: Option<PathBuf>,
    #[arg(long, env = "TARTAN_ETCD_USERNAME")]
    etcd_username: Option<String>,
    #[arg(long, env = "TARTAN_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
}

impl EtcdArgs {
    fn into_options(self) -> EtcdOptions {
        EtcdOptions {
            endpoints: self.etcd_endpoints,
            prefix: self.etcd_prefix,
            ca_file: self.etcd_cafile,
            cert_file: self.etcd_certfile,
            key_file: self.etcd_keyfile,
            username: self.etcd_username,
            password: self.etcd_password,
        }
    }
}

#[derive(Args)]
struct AgentArgs {
    /// Peer mode: run with no store. No subnet lease and no routed overlay;
    /// attachments, the containers and images work. Refused together with
    /// an --etcd-* flag on the command line; TARTAN_ETCD_* and FLANNELD_ETCD_*
    /// are ignored.
    #[arg(long, env = "TARTAN_NO_ETCD")]
    no_etcd: bool,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Key prefix of Tartan's own keys (named networks and their
    /// addresses), apart from flannel's (default: /tartan followed by
    /// --etcd-prefix).
    #[arg(long, env = "TARTAN_PREFIX")]
    tartan_prefix: Option<String>,
    /// Interface (name or IPv4 address) whose address is published and whose
    /// MTU is the underlay's. Repeat it (or separate with commas) to try each
    /// in order, as flanneld does; the first that exists is used.
    #[arg(long, env = "TARTAN_IFACE", value_delimiter = ',')]
    iface: Vec<InterfaceSelector>,
    /// Address published to other nodes (default: the interface's address).
    #[arg(long, env = "TARTAN_PUBLIC_IP")]
    public_ip: Option<Ipv4Addr>,
    /// Where to write the flannel-format subnet file.
    #[arg(
        long,
        env = "TARTAN_SUBNET_FILE",
        default_value = "/run/tartan/subnet.env"
    )]
    subnet_file: PathBuf,
    /// TTL of the subnet lease in etcd (e.g. 24h, 90s).
    #[arg(long, env = "TARTAN_SUBNET_LEASE_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    subnet_lease_ttl: Duration,
    /// Renew the lease this long before it runs out (a bare number is
    /// minutes, as flanneld reads it).
    #[arg(long, env = "TARTAN_SUBNET_LEASE_RENEW_MARGIN", default_value = "1h", value_parser = parse_renew_margin)]
    subnet_lease_renew_margin: Duration,
    /// Directory for the agent's persistent state.
    #[arg(long, env = "TARTAN_STATE_DIR", default_value = "/var/lib/tartan")]
    state_dir: PathBuf,
    /// Masquerade traffic from the cluster network to destinations outside it
    /// (nftables table `ip tartan`, removed on clean shutdown).
    #[arg(long, env = "TARTAN_IP_MASQ")]
    ip_masq: bool,
    /// The node bridge: containers plug into it and it holds the subnet's
    /// first address.
    #[arg(long, env = "TARTAN_BRIDGE", default_value = "tartan0")]
    bridge: String,
    /// Leave the bridge to its consumer (`dockerd --bip=$FLANNEL_SUBNET`
    /// makes docker0): the agent neither creates nor addresses it, and
    /// attaches nothing to it. flanneld's behaviour, and the default when
    /// invoked as `flanneld`.
    #[arg(long, env = "TARTAN_EXTERNAL_BRIDGE")]
    external_bridge: bool,
    /// Accept the network's forwarded traffic in the agent's nftables table
    /// (the default, as flanneld's -iptables-forward-rules).
    #[arg(long, overrides_with = "no_forward_rules")]
    forward_rules: bool,
    /// Add no forward accepts.
    #[arg(
        long,
        env = "TARTAN_NO_FORWARD_RULES",
        overrides_with = "forward_rules"
    )]
    no_forward_rules: bool,
    /// How often an etcd outage is logged again while it lasts.
    #[arg(long, env = "TARTAN_ETCD_OUTAGE_REPORT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    etcd_outage_report_interval: Duration,
    /// The Open vSwitch database, for `tartan attach` onto OVS bridges;
    /// connected to when first needed.
    #[arg(
        long,
        env = "TARTAN_OVSDB",
        default_value = "unix:/var/run/openvswitch/db.sock"
    )]
    ovsdb: String,
    #[command(flatten)]
    segment: SegmentArgs,
}

/// The weave-style L2 segment's settings.
#[derive(Args)]
struct SegmentArgs {
    /// TCP port of the peer service, where the segment's hosts meet (weave's).
    #[arg(long, env = "TARTAN_PEER_PORT", default_value_t = segment::book::DEFAULT_PEER_PORT)]
    peer_port: u16,
    /// A secret every host of the segment shares: peers that cannot prove
    /// it are refused. Prefer the environment variable to the flag, which
    /// other users can read in the process list.
    #[arg(long, env = "TARTAN_PEER_SECRET", hide_env_values = true)]
    peer_secret: Option<String>,
    /// The range automatic segment addresses come from.
    #[arg(long, env = "TARTAN_L2_RANGE", default_value = segment::DEFAULT_RANGE)]
    l2_range: ipnetwork::Ipv4Network,
    /// A peer not heard from for this long gets no more traffic, and its
    /// containers' FDB entries go, until it answers again.
    #[arg(long, env = "TARTAN_PEER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    peer_timeout: Duration,
    /// How often connected peers are contacted.
    #[arg(long, env = "TARTAN_PEER_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, hide = true)]
    peer_interval: Duration,
}

impl SegmentArgs {
    fn into_settings(self) -> daemon::SegmentSettings {
        daemon::SegmentSettings {
            peer_port: self.peer_port,
            secret: self.peer_secret,
            range: self.l2_range,
            timing: segment::book::Timing {
                interval: self.peer_interval,
                timeout: self.peer_timeout,
                ..segment::book::Timing::default()
            },
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

#[derive(Args)]
struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
}

impl AgentArgs {
    fn into_options(self, api_socket: PathBuf) -> AgentOptions {
        let store = if self.no_etcd {
            Store::None
        } else {
            let etcd = self.etcd.into_options();
            let tartan_prefix = self
                .tartan_prefix
                .unwrap_or_else(|| format!("/tartan/{}", etcd.prefix.trim_matches('/')));
            Store::Etcd {
                etcd,
                tartan_prefix,
            }
        };
        AgentOptions {
            store,
            iface: self.iface,
            bridge: self.bridge,
            external_bridge: self.external_bridge,
            public_ip: self.public_ip,
            subnet_file: self.subnet_file,
            subnet_lease_ttl: self.subnet_lease_ttl,
            subnet_lease_renew_margin: self.subnet_lease_renew_margin,
            state_dir: self.state_dir,
            api_socket,
            ip_masq: self.ip_masq,
            forward_rules: !self.no_forward_rules,
            etcd_outage_report_interval: self.etcd_outage_report_interval,
            ovsdb: self.ovsdb,
            segment: self.segment.into_settings(),
        }
    }
}

/// `--subnet-lease-renew-margin`: a duration (`1h`, `90s`), or a bare
/// number of minutes, flanneld's unit.
fn parse_renew_margin(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(minutes) => Ok(Duration::from_secs(minutes * 60)),
        Err(_) => humantime::parse_duration(text).map_err(|e| e.to_string()),
    }
}

/// One `--etcd-endpoints` entry: `http://HOST[:PORT]` or `https://…`, as
/// flannel requires. Anything else is refused here, at start: the etcd
/// client would take it and the agent would retry it forever. The scheme
/// comes back in lower case, the form the etcd client recognises.
fn parse_etcd_endpoint(text: &str) -> Result<String, String> {
    const HINT: &str = "use http://HOST:PORT";
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("an empty endpoint; {HINT}"));
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("not a URL; {HINT}"));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "the scheme must be http or https, not {scheme:?}; {HINT}"
        ));
    }
    // A trailing slash is harmless; any other path, a query or credentials are not etcd's.
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if let Some(c) = authority
        .chars()
        .find(|c| matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(format!(
            "only a host and a port may follow {scheme}://, not {c:?}; {HINT}"
        ));
    }
    let (host, port) = match authority.strip_prefix('[') {
        // An IPv6 literal: [ADDR] or [ADDR]:PORT.
        Some(bracketed) => {
            let (address, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("an unclosed [ in the host; {HINT}"))?;
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{address:?} is not an IPv6 address; {HINT}"));
            }
            match after {
                "" => (address, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (address, Some(port)),
                    None => return Err(format!("junk after the host: {after:?}; {HINT}")),
                },
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("no host; {HINT}"));
    }
    let host_ok = authority.starts_with('[')
        || host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !host_ok {
        return Err(format!("{host:?} is not a host name or address; {HINT}"));
    }
    if let Some(port) = port {
        let valid =
            port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok_and(|p| p != 0);
        if !valid {
            return Err(format!("{port:?} is not a port; {HINT}"));
        }
    }
    Ok(format!("{scheme}://{rest}"))
}

/// `ADDR/LEN[@GATEWAY]`, split.
fn split_gateway(text: &str) -> (String, String) {
    match text.split_once('@') {
        Some((address, gateway)) => (address.to_string(), gateway.to_string()),
        None => (text.to_string(), String::new()),
    }
}

/// `[MAC][@VLAN]`, split: `@10` alone is a VLAN and no MAC, as in pipework.
fn split_mac_vlan(text: &str) -> Result<(String, u32)> {
    let (mac, vlan) = match text.rsplit_once('@') {
        Some((mac, vlan)) => (mac, Some(vlan)),
        None => (text, None),
    };
    let vlan = match vlan {
        None => 0,
        Some(text) => u32::from(tartan_dataplane::parse_vlan_id(text)?),
    };
    if !mac.is_empty() {
        tartan_dataplane::parse_mac(mac)?;
    }
    Ok((mac.to_string(), vlan))
}

async fn attach(args: AttachArgs, api_socket: &Path) -> Result<i32> {
    // One argument naming a Tartan container, and no network flag: Docker's attach.
    if let [single] = args.args.as_slice() {
        let network_flags = args.container_interface.is_some() || args.l2 || args.netns;
        if !network_flags {
            if let Some(container) = cli::attach::container_named(single, api_socket).await? {
                let options = cli::attach::ContainerAttach {
                    detach_keys: args.detach_keys,
                    no_stdin: args.no_stdin,
                    sig_proxy: args.sig_proxy,
                };
                return cli::attach::attach_container(container, options).await;
            }
        }
    }
    if args.detach_keys.is_some() || args.no_stdin {
        anyhow::bail!(
            "--detach-keys and --no-stdin belong to the container form: tartan attach CONTAINER"
        );
    }
    network_attach(args, api_socket).await.map(|()| 0)
}

async fn network_attach(args: AttachArgs, api_socket: &Path) -> Result<()> {
    // The forms differ in their number of arguments: one or two is weave's
    // ([ADDR/LEN] CONTAINER), three or four is pipework's.
    let request = match args.args.as_slice() {
        [_] | [_, _] => {
            if args.host_interface_name.is_some() || args.host_shim {
                anyhow::bail!("-l and --host-shim belong to the pipework form: tartan attach HOST_INTERFACE CONTAINER ADDR/LEN[@GATEWAY]|0/0 [MAC][@VLAN]");
            }
            let (address, container) = match args.args.as_slice() {
                [container] => (String::new(), container.clone()),
                [address, container] => (address.clone(), container.clone()),
                _ => unreachable!("matched above"),
            };
            tartan_proto::v1::AttachRequest {
                container,
                address,
                container_interface: args.container_interface.unwrap_or_default(),
                l2: args.l2,
                ..Default::default()
            }
        }
        [host, container, address, rest @ ..] => {
            if args.l2 {
                anyhow::bail!("--l2 belongs to the weave form: tartan attach --l2 [ADDR/LEN] CONTAINER");
            }
            let (address, gateway) = split_gateway(address);
            let (mac, vlan) = match rest {
                [mac_vlan] => split_mac_vlan(mac_vlan)?,
                _ => (String::new(), 0),
            };
            tartan_proto::v1::AttachRequest {
                container: container.clone(),
                address,
                host_interface: host.clone(),
                container_interface: args.container_interface.unwrap_or_default(),
                host_interface_name: args.host_interface_name.unwrap_or_default(),
                gateway,
                mac,
                vlan,
                host_shim: args.host_shim,
                l2: false,
            }
        }
        _ => anyhow::bail!("usage: tartan attach [-i IF] [ADDR/LEN] CONTAINER, or tartan attach [-i IF] [-l HOST_IF] [--host-shim] HOST_INTERFACE CONTAINER ADDR/LEN[@GATEWAY]|0/0 [MAC][@VLAN]"),
    };
    let container = request.container.clone();
    let mut client = api::connect(api_socket).await?;
    let resp = client.attach(request).await.map_err(refused)?.into_inner();
    if resp.already_attached {
        stdout::println(format!(
            "{container} already attached: {} {}",
            resp.container_interface, resp.address
        ))?;
    } else {
        stdout::println(&resp.address)?;
    }
    Ok(())
}

async fn detach(args: DetachArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    client
        .detach(tartan_proto::v1::DetachRequest {
            container: args.container,
            container_interface: args.container_interface.unwrap_or_default(),
        })
        .await
        .map_err(refused)?;
    Ok(())
}

async fn reset(args: ResetArgs, api_socket: &Path) -> Result<()> {
    let opts = reset::ResetOptions {
        bridge: args.bridge,
        external_bridge: args.external_bridge,
        subnet_file: args.subnet_file,
        state_dir: args.state_dir,
        api_socket: api_socket.to_path_buf(),
        public_ip: args.public_ip,
        force: args.force,
        release_lease: args.release_lease.then(|| args.etcd.into_options()),
        ovsdb: args.ovsdb,
    };
    for line in reset::reset(&opts).await? {
        stdout::println(line)?;
    }
    Ok(())
}

async fn attachments(args: AttachmentsArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let listed = client
        .list_attachments(tartan_proto::v1::ListAttachmentsRequest {})
        .await
        .map_err(refused)?
        .into_inner()
        .attachments;
    stdout::print(status::attachments_table(&listed, args.quiet))
}

/// An archive to send to the agent, and its size when it is a file.
struct Input {
    reader: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    size: Option<u64>,
}

/// Opens FILE, or standard input for `-`.
async fn open_input(file: &Path) -> Result<Input> {
    if file.as_os_str() == "-" {
        return Ok(Input {
            reader: Box::new(tokio::io::stdin()),
            size: None,
        });
    }
    let opened = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    // A size only for a regular file: a FIFO or device says nothing useful.
    let size = opened
        .metadata()
        .await
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok(Input {
        reader: Box::new(opened),
        size,
    })
}

/// Streams an archive to the agent in 256 KiB chunks, so that size is no
/// limit; the first chunk carries `reference`. Returns the stream and the
/// task reading the input, whose error (if any) matters more than the agent's.
fn upload(
    input: Input,
    reference: String,
    verb: &'static str,
) -> (
    tokio_stream::wrappers::ReceiverStream<tartan_proto::v1::ImportChunk>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<tartan_proto::v1::ImportChunk>(4);
    let Input { mut reader, size } = input;
    let reading = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut progress = progress::Progress::on_terminal(verb, size);
        let mut first = true;
        loop {
            let mut data = vec![0u8; 256 * 1024];
            let n = reader
                .read(&mut data)
                .await
                .context("reading the archive")?;
            if n == 0 && !first {
                progress.finish();
                return Ok(());
            }
            progress.add(n as u64);
            data.truncate(n);
            let chunk = tartan_proto::v1::ImportChunk {
                reference: if first {
                    reference.clone()
                } else {
                    String::new()
                },
                data,
            };
            first = false;
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
            if n == 0 {
                progress.finish();
                return Ok(());
            }
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(rx), reading)
}

async fn import(args: ImportArgs, api_socket: &Path) -> Result<()> {
    // Refuse a bad name before reading anything.
    let _: tartan_runtime::Reference = args.reference.parse()?;
    let input = open_input(&args.file).await?;
    let mut client = api::connect(api_socket).await?;
    let (chunks, reading) = upload(input, args.reference, "Importing");
    let image = client.import(chunks).await.map_err(refused);
    reading.await.context("reading the archive")??;
    stdout::println(format!("sha256:{}", image?.into_inner().id))?;
    Ok(())
}

async fn load(args: LoadArgs, api_socket: &Path) -> Result<()> {
    let input = open_input(&args.input).await?;
    let mut client = api::connect(api_socket).await?;
    let (chunks, reading) = upload(input, String::new(), "Loading");
    let loaded = client.load(chunks).await.map_err(refused);
    reading.await.context("reading the archive")??;
    for image in loaded?.into_inner().images {
        stdout::println(format!("Loaded image: {}:{}", image.name, image.tag))?;
    }
    Ok(())
}

async fn images(api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let list = client
        .images(tartan_proto::v1::ImagesRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    stdout::print(status::images_table(&list.images))
}

async fn rmi(args: RmiArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let image = client
        .remove_image(tartan_proto::v1::RemoveImageRequest {
            image: args.image,
            force: args.force,
        })
        .await
        .map_err(refused)?
        .into_inner();
    // As Docker prints it.
    for untagged in &image.untagged {
        stdout::println(format!("Untagged: {}:{}", untagged.name, untagged.tag))?;
    }
    if image.deleted {
        stdout::println(format!("Deleted: sha256:{}", image.id))?;
    }
    Ok(())
}

/// As `docker tag`: silent on success.
async fn tag(args: TagArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    client
        .tag_image(tartan_proto::v1::TagImageRequest {
            source: args.source,
            target: args.target,
        })
        .await
        .map_err(refused)?;
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TARTAN_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

async fn status(args: StatusArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let resp = client
        .status(tartan_proto::v1::StatusRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    let segment = client
        .segment(tartan_proto::v1::SegmentStatusRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    match args.output {
        OutputFormat::Json => {
            let mut json = status::to_json(&resp);
            json["segment"] = cli::segment::to_json(&segment);
            stdout::println(serde_json::to_string_pretty(&json).context("encoding JSON")?)
        }
        OutputFormat::Table => stdout::print(
            status::to_table(&resp)
                + &cli::segment::to_table(&segment, std::time::SystemTime::now()),
        ),
    }
}

/// The command a command line names, if it names one: the first word that
/// is neither an option nor the value of the global `--api-socket`.
fn subcommand_of(args: &[std::ffi::OsString]) -> Option<String> {
    use clap::CommandFactory;
    let mut words = args.iter().skip(1).filter_map(|a| a.to_str());
    while let Some(word) = words.next() {
        if word == "--api-socket" {
            words.next();
        } else if !word.starts_with('-') {
            return Cli::command()
                .find_subcommand(word)
                .map(|c| c.get_name().to_string());
        }
    }
    None
}

/// Help and version go out as clap writes them; a usage error becomes one
/// line, the way every other error of this binary reads, and points to the
/// help of the command it is about. `run` exits 125 on it, as `docker run`
/// does for a flag it refuses; the other commands exit 2.
fn usage_error(err: clap::Error, args: &[std::ffi::OsString]) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // Help on a closed pipe (`tartan --help | head -1`) has no one to tell.
        let _ = err.print();
        return ExitCode::SUCCESS;
    }
    let command = match subcommand_of(args) {
        Some(name) => format!("tartan {name}"),
        None => "tartan".to_string(),
    };
    let missing = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::Strings(args)) if err.kind() == ErrorKind::MissingRequiredArgument => {
            Some(args.join(", "))
        }
        _ => None,
    };
    let line = match missing {
        // clap lists them on the lines below its first, which a one-line error drops.
        Some(args) => format!("missing {args}"),
        None => {
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            first.trim_start_matches("error: ").to_string()
        }
    };
    eprintln!("tartan: {line} (see {command} --help)");
    if command == "tartan run" {
        ExitCode::from(125)
    } else {
        ExitCode::from(2)
    }
}

/// `tartan init SPEC`: returns only if the container could not be started.
fn container_init(spec: &Path) -> ExitCode {
    let spec = match std::fs::read(spec)
        .map_err(anyhow::Error::from)
        .and_then(|bytes| {
            Ok(serde_json::from_slice::<tartan_runtime::init::InitSpec>(
                &bytes,
            )?)
        }) {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("tartan init: reading {}: {err}", spec.display());
            return ExitCode::from(125);
        }
    };
    let err = tartan_runtime::init::run(&tartan_runtime::syscall::LinuxSyscall, &spec);
    let code = tartan_runtime::init::failure_code(&err);
    eprintln!("tartan init: {}", tartan_runtime::init::describe(&err));
    ExitCode::from(code as u8)
}

/// Tartan's own keys never go among flannel's: a prefix inside
/// `--etcd-prefix` would put them where flanneld reads its config and leases.
fn check_tartan_prefix(tartan: &str, flannel: &str) -> Result<(), String> {
    let tartan_trimmed = tartan.trim_end_matches('/');
    let flannel_trimmed = flannel.trim_end_matches('/');
    if !tartan_trimmed.starts_with('/') {
        return Err(format!("--tartan-prefix {tartan:?} must start with /"));
    }
    let inside = tartan_trimmed == flannel_trimmed
        || tartan_trimmed.starts_with(&format!("{flannel_trimmed}/"));
    if inside {
        return Err(format!(
            "--tartan-prefix {tartan} lies inside flannel's --etcd-prefix {flannel}: Tartan's keys stay apart from flannel's"
        ));
    }
    Ok(())
}

/// The agent's flags that only mean something with etcd.
const ETCD_FLAGS: [&str; 8] = [
    "etcd_endpoints",
    "etcd_prefix",
    "etcd_cafile",
    "etcd_certfile",
    "etcd_keyfile",
    "etcd_username",
    "etcd_password",
    "tartan_prefix",
];

/// `--no-etcd` with an etcd flag on the command line is a contradiction,
/// refused rather than guessed at. Only the command line counts: a
/// TARTAN_ETCD_* variable from a shared environment file is a default that
/// peer mode ignores.
fn check_no_etcd(args: &[std::ffi::OsString]) -> Result<(), String> {
    use clap::parser::ValueSource;
    use clap::CommandFactory;
    let Ok(matches) = Cli::command().try_get_matches_from(args) else {
        return Ok(());
    };
    let Some(("agent", agent)) = matches.subcommand() else {
        return Ok(());
    };
    if !agent.get_flag("no_etcd") {
        return Ok(());
    }
    let given: Vec<String> = ETCD_FLAGS
        .iter()
        .filter(|id| agent.value_source(id) == Some(ValueSource::CommandLine))
        .map(|id| format!("--{}", id.replace('_', "-")))
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    Err(format!(
        "--no-etcd runs the agent without etcd: {} cannot be given with it",
        given.join(", ")
    ))
}

/// An exit code of a container, as this process's own.
fn exit_with(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

fn main() -> ExitCode {
    // flanneld's flag forms and environment, and its name, become ours first.
    let translated = match flanneld::translate(std::env::args_os().collect(), &|name| {
        std::env::var(name).ok()
    }) {
        Ok(translated) => translated,
        Err(line) => {
            eprintln!("tartan: {line}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::try_parse_from(&translated.args) {
        Ok(cli) => cli,
        Err(err) => return usage_error(err, &translated.args),
    };
    // Options end at exec's container, so clap takes the command with it.
    if let Command::Exec(args) = &cli.command {
        if !args.has_command() {
            use clap::CommandFactory;
            let err = Cli::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "missing <COMMAND>",
            );
            return usage_error(err, &translated.args);
        }
    }
    if let Command::Agent(args) = &cli.command {
        // Parsed again only here: where each flag came from is clap's to say.
        if args.no_etcd {
            if let Err(line) = check_no_etcd(&translated.args) {
                eprintln!("tartan: {line}");
                return ExitCode::from(2);
            }
        }
        if let Some(tartan) = &args.tartan_prefix {
            if let Err(line) = check_tartan_prefix(tartan, &args.etcd.etcd_prefix) {
                eprintln!("tartan: {line}");
                return ExitCode::from(2);
            }
        }
    }
    // Before any runtime thread exists: these fork, enter namespaces or exec.
    let cli = match cli.command {
        Command::Init(args) => return container_init(&args.spec),
        Command::Shim(args) => {
            return exit_with(tartan_runtime::container::shim::main(&args.spec));
        }
        Command::Exec(args) => {
            return match container_cli::exec(args, &cli.api.api_socket) {
                Ok(code) => exit_with(code),
                Err(err) => {
                    eprintln!("tartan: {err:#}");
                    ExitCode::from(126)
                }
            };
        }
        command => Cli {
            api: cli.api,
            command,
        },
    };
    // The agent serves many clients at once; a CLI command is one client,
    // and a single-threaded runtime starts faster.
    let builder = match cli.command {
        Command::Agent(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match { builder }.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("tartan: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<i32> = runtime.block_on(async {
        let done = |r: Result<()>| r.map(|()| 0);
        let socket = cli.api.api_socket.as_path();
        match cli.command {
            Command::Agent(args) => {
                init_logging();
                for note in &translated.notes {
                    tracing::warn!("{note}");
                }
                done(daemon::run(args.into_options(socket.to_path_buf())).await)
            }
            Command::Status(args) => done(status(args, socket).await),
            Command::Attach(args) => attach(args, socket).await,
            Command::Detach(args) => done(detach(args, socket).await),
            Command::Connect(args) => done(cli::segment::connect(args, socket).await),
            Command::Forget(args) => done(cli::segment::forget(args, socket).await),
            Command::Attachments(args) => done(attachments(args, socket).await),
            Command::Reset(args) => done(reset(*args, socket).await),
            Command::Import(args) => done(import(args, socket).await),
            Command::Load(args) => done(load(args, socket).await),
            Command::Images => done(images(socket).await),
            Command::Rmi(args) => done(rmi(args, socket).await),
            Command::Tag(args) => done(tag(args, socket).await),
            // Docker's code for a run that failed before the container did anything: 125.
            Command::Run(args) => container_cli::run(*args, socket).await.or_else(|err| {
                eprintln!("tartan: {err:#}");
                Ok(125)
            }),
            Command::Ps(args) => done(container_cli::ps(args, socket).await),
            Command::Inspect(args) => done(container_cli::inspect(args, socket).await),
            Command::Port(args) => done(cli::ports::port(args, socket).await),
            Command::Stats(args) => done(cli::limits::stats(args, socket).await),
            Command::Logs(args) => done(container_cli::logs(args, socket).await),
            Command::Stop(args) => done(container_cli::stop(args, false, socket).await),
            Command::Start(args) => done(container_cli::start(args, socket).await),
            Command::Restart(args) => done(container_cli::stop(args, true, socket).await),
            Command::Rm(args) => done(container_cli::rm(args, socket).await),
            Command::Export(args) => done(container_cli::export(args, socket).await),
            Command::Network(command) => done(cli::network::run(command, socket).await),
            Command::Volume(command) => done(cli::volume::run(command, socket).await),
            Command::Init(_) | Command::Shim(_) | Command::Exec(_) => Err(anyhow::anyhow!(
                "this command runs before the async runtime starts"
            )),
        }
    });
    // A reader of standard input may still be blocked; it must not hold the exit up.
    runtime.shutdown_background();
    match result {
        Ok(code) => exit_with(code),
        // The reader of the output has gone (`tartan ps | head -1`): nothing is wrong.
        Err(err) if stdout::closed(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain of causes joined, as an operator reads it in a terminal or the journal.
            eprintln!("tartan: {err:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_translator_knows_every_global_option_that_takes_a_value() {
        let mut globals: Vec<String> = Cli::command()
            .get_arguments()
            .filter(|arg| arg.is_global_set() && arg.get_action().takes_values())
            .filter_map(|arg| arg.get_long().map(|long| format!("--{long}")))
            .collect();
        globals.sort();
        let mut known: Vec<String> = flanneld::GLOBAL_VALUE_OPTIONS
            .iter()
            .map(|o| o.to_string())
            .collect();
        known.sort();
        assert_eq!(globals, known);
    }

    #[test]
    fn no_etcd_refuses_etcd_flags_given_with_it() {
        let argv = |words: &[&str]| -> Vec<std::ffi::OsString> {
            words.iter().map(|w| w.into()).collect()
        };
        assert!(check_no_etcd(&argv(&["tartan", "agent", "--no-etcd"])).is_ok());
        assert!(check_no_etcd(&argv(&["tartan", "agent", "--etcd-prefix", "/x"])).is_ok());
        let err = check_no_etcd(&argv(&[
            "tartan",
            "agent",
            "--no-etcd",
            "--etcd-endpoints",
            "http://10.0.0.1:2379",
        ]))
        .expect_err("refused");
        assert_eq!(
            err,
            "--no-etcd runs the agent without etcd: --etcd-endpoints cannot be given with it"
        );
    }

    #[test]
    fn tartan_keys_stay_out_of_flannels_prefix() {
        let flannel = "/coreos.com/network";
        assert!(check_tartan_prefix("/tartan/coreos.com/network", flannel).is_ok());
        assert!(check_tartan_prefix("/coreos.com/networks", flannel).is_ok());
        for inside in [
            "/coreos.com/network",
            "/coreos.com/network/",
            "/coreos.com/network/tartan",
        ] {
            let err = check_tartan_prefix(inside, flannel).expect_err(inside);
            assert!(err.contains("inside flannel's --etcd-prefix"), "{err}");
        }
        assert!(check_tartan_prefix("tartan", flannel).is_err());
    }

    #[test]
    fn etcd_endpoints_are_http_or_https_urls() {
        for (given, taken) in [
            ("http://127.0.0.1:2379", "http://127.0.0.1:2379"),
            (
                "https://etcd.example.org:2379",
                "https://etcd.example.org:2379",
            ),
            ("http://etcd", "http://etcd"),
            ("HTTP://etcd-1.local:4001/", "http://etcd-1.local:4001/"),
            ("http://[fd00::1]:2379", "http://[fd00::1]:2379"),
            (" http://10.0.0.1:2379 ", "http://10.0.0.1:2379"),
        ] {
            assert_eq!(parse_etcd_endpoint(given).as_deref(), Ok(taken), "{given}");
        }
        for bad in [
            "notaurl",
            "127.0.0.1:2379",
            "",
            "unix:///run/etcd.sock",
            "ftp://etcd:2379",
            "http://",
            "http://:2379",
            "http://etcd:notaport",
            "http://etcd:99999",
            "http://etcd:0",
            "http://etcd:2379/v2/keys",
            "http://user:pw@etcd:2379",
            "http://etcd:2379?x=1",
            "http://et cd:2379",
            "http://[fd00::1:2379",
            "http://[nonsense]:2379",
            "http://etcd:2379:1",
        ] {
            let err = parse_etcd_endpoint(bad).expect_err(bad);
            assert!(err.ends_with("use http://HOST:PORT"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }

    #[test]
    fn bad_etcd_endpoints_are_refused_where_the_flags_are_parsed() {
        for line in [
            &["tartan", "agent", "--etcd-endpoints", "notaurl"][..],
            &[
                "tartan",
                "agent",
                "--etcd-endpoints",
                "http://a:2379,notaurl",
            ],
            &["tartan", "agent", "--etcd-endpoints", "http://a:2379,"],
        ] {
            let err = Cli::try_parse_from(line).err().expect("refused");
            let text = err.render().to_string();
            assert!(text.contains("use http://HOST:PORT"), "{line:?}: {text}");
        }
        let cli = Cli::try_parse_from([
            "tartan",
            "agent",
            "--etcd-endpoints",
            "http://a:2379,https://b:2379",
        ])
        .expect("two URLs");
        let Command::Agent(args) = cli.command else {
            panic!("not the agent");
        };
        assert_eq!(
            args.etcd.etcd_endpoints,
            ["http://a:2379", "https://b:2379"]
        );
    }

    #[test]
    fn the_api_socket_goes_before_or_after_the_command() {
        for line in [
            &["tartan", "--api-socket", "/s", "status"][..],
            &["tartan", "--api-socket=/s", "ps", "-a"],
            &["tartan", "status", "--api-socket", "/s"],
            &["tartan", "--api-socket", "/s", "agent", "--ip-masq"],
            &["tartan", "agent", "--api-socket", "/s"],
            &["tartan", "run", "--api-socket", "/s", "busybox", "true"],
        ] {
            let cli = Cli::try_parse_from(line).expect("parses");
            assert_eq!(cli.api.api_socket, Path::new("/s"), "{line:?}");
        }
        // After the image, it is the container's command's.
        let cli = Cli::try_parse_from(["tartan", "run", "busybox", "echo", "--api-socket", "/s"])
            .expect("parses");
        assert_eq!(cli.api.api_socket, Path::new(DEFAULT_API_SOCKET));
    }
}
