//! The local gRPC API on a unix socket: the server half inside the agent and
//! the client half used by the CLI.

mod volumes;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use futures::{stream, StreamExt};
use hyper_util::rt::TokioIo;
use ipnetwork::Ipv4Network;
use tartan_proto::v1::agent_client::AgentClient;
use tartan_proto::v1::agent_server::{Agent, AgentServer};
use tartan_proto::v1::{
    AttachRequest, AttachResponse, Attachment as PbAttachment, AttachmentsResponse,
    Container as PbContainer, ContainerRequest, ContainersResponse, DetachRequest, DetachResponse,
    ExportChunk, Image as PbImage, ImagesRequest, ImagesResponse, ImportChunk, Lease as PbLease,
    ListAttachmentsRequest, ListContainersRequest, LogEntry, LogsRequest,
    NetworkConfig as PbConfig, RemoveContainerRequest, RemoveImageRequest, RemoveImageResponse,
    RunRequest, StatusRequest, StatusResponse, StopRequest, TagImageRequest,
};
use tartan_proto::v1::{
    ConnectPeersRequest, ConnectRequest, CreateNetworkRequest, DisconnectRequest,
    ForgetPeersRequest, ListNetworksRequest, Network as PbNetwork, NetworkEndpoint,
    NetworkRequest as PbNetworkRequest, NetworksResponse, SegmentStatus, SegmentStatusRequest,
};
use tartan_proto::v1::{
    ListVolumesRequest, PruneVolumesRequest, Volume as PbVolume, VolumeRequest, VolumesResponse,
};
use tartan_proto::v1::{StatsRequest, StatsResponse};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::containers::images::{ChunkReader, Images};
use crate::containers::spec::{security_to_pb, RunSpec};
use crate::containers::{ContainerView, Containers, Status as RunStatus};
use crate::control::etcd::Registry;
use crate::control::lease::Lease;
use crate::control::node_state::{EtcdHealth, EtcdMonitor, NodeState};
use crate::networks::attach::{Attacher, AttacherWatch, ContainerRef};
use crate::networks::named::NamedNetworks;
use crate::networks::pipework::{show_address, Pipework, Target};
use crate::networks::store::{self, NetworkDef};
use crate::segment::{Segment, SegmentRequest};

/// How many lease TTL look-ups a status call keeps in flight.
const TTL_LOOKUP_CONCURRENCY: usize = 32;
/// How long `status` waits for etcd to answer whether it is there.
const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `status` spends looking up the peers' lease expiries.
const STATUS_TTL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the API serves from: the node's facts as they change, and the services.
pub struct Services {
    pub node: tokio::sync::watch::Receiver<NodeState>,
    pub etcd: EtcdMonitor,
    pub forward_dropped_by: tokio::sync::watch::Receiver<Vec<String>>,
    /// None on an agent without etcd (`--no-etcd`).
    pub registry: Option<Registry>,
    pub attacher: AttacherWatch,
    pub images: Images,
    pub containers: Containers,
    pub networks: NamedNetworks,
    pub pipework: Arc<Pipework>,
    pub segment: Arc<Segment>,
}

struct AgentService {
    node: tokio::sync::watch::Receiver<NodeState>,
    etcd: EtcdMonitor,
    forward_dropped_by: tokio::sync::watch::Receiver<Vec<String>>,
    registry: Option<Registry>,
    attacher: AttacherWatch,
    images: Images,
    containers: Containers,
    networks: NamedNetworks,
    pipework: Arc<Pipework>,
    segment: Arc<Segment>,
}

fn to_pb_container(view: ContainerView) -> PbContainer {
    let restarting = matches!(view.status, RunStatus::Restarting { .. });
    let (pid, exit_code, started, finished) = match view.status {
        RunStatus::Created => (0, None, String::new(), String::new()),
        RunStatus::Running { pid, started, .. } => (pid, None, started, String::new()),
        // Still its, as Docker's State.Running says; its exit code and when.
        RunStatus::Restarting { code, finished, .. } => (0, Some(code), String::new(), finished),
        RunStatus::Exited {
            code,
            started,
            finished,
        } => (0, Some(code), started, finished),
    };
    let config = view.config;
    let mounts = config
        .spec
        .mounts
        .iter()
        .map(volumes::to_pb_mount)
        .collect();
    let restart_count = view.restart_count;
    PbContainer {
        state: match (pid, exit_code) {
            _ if restarting => "restarting",
            (0, None) => "created",
            (_, None) => "running",
            _ => "exited",
        }
        .to_string(),
        id: config.id,
        name: config.name,
        image: config.image,
        image_id: config.image_id,
        args: config.spec.args,
        pid,
        exit_code,
        // A stopped container's address is back in the book; it shows none, as in Docker.
        // One waiting to restart keeps its network.
        address: if pid != 0 || restarting {
            config.address.unwrap_or_default()
        } else {
            String::new()
        },
        network: view.network,
        hostname: config.spec.hostname,
        created: config.created,
        started,
        finished,
        tty: config.spec.tty,
        interactive: config.spec.open_stdin,
        auto_remove: config.auto_remove,
        env: config.spec.env,
        workdir: config.spec.cwd.display().to_string(),
        attach_socket: view.attach_socket.display().to_string(),
        security: Some(security_to_pb(&config.spec.security)),
        // Read from the kernel, and only where a listing needs them.
        addresses: Vec::new(),
        mounts,
        entrypoint: config.spec.entrypoint,
        cmd: config.spec.cmd,
        user: config.spec.user,
        exposed_ports: config
            .spec
            .exposed_ports
            .iter()
            .map(|p| p.to_string())
            .collect(),
        volumes: config
            .spec
            .image_volumes
            .iter()
            .map(|v| v.display().to_string())
            .collect(),
        resources: Some(crate::containers::limits::resources_to_pb(
            &config.spec.resources,
        )),
        oom_killed: view.oom_killed,
        port_bindings: config.ports.iter().map(port_to_pb).collect(),
        // Published only while it runs, as Docker shows them.
        ports: if pid != 0 || restarting {
            config.published.iter().map(port_to_pb).collect()
        } else {
            Vec::new()
        },
        restart_policy: config.spec.restart.name().to_string(),
        restart_max_retries: config.spec.restart.max_retries(),
        restart_count,
        links: config.links,
        extra_hosts: config.add_hosts,
        network_aliases: config.network_aliases,
        link_env: config.link_env,
    }
}

fn port_to_pb(
    port: &tartan_runtime::container::ports::PortBinding,
) -> tartan_proto::v1::PortBinding {
    tartan_proto::v1::PortBinding {
        host_ip: port.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        host_port: u32::from(port.host_port),
        container_port: u32::from(port.container_port),
        protocol: port.protocol.clone(),
    }
}

fn nonempty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// A `Write` that sends what it is given down a channel in chunks.
struct ChunkSender {
    tx: tokio::sync::mpsc::Sender<Result<ExportChunk, Status>>,
    buf: Vec<u8>,
}

const EXPORT_CHUNK: usize = 256 * 1024;

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= EXPORT_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(ExportChunk { data }))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
            })
    }
}

fn to_pb_image(image: tartan_runtime::Image) -> PbImage {
    PbImage {
        id: image.id,
        name: image.name,
        tag: image.tag,
        layers: image.layers,
        size: image.size,
        created: image.created,
    }
}

/// Feeds an uploaded archive, chunk by chunk, to `work` running on a
/// blocking thread. A small queue makes the network wait for the disk rather
/// than fill memory. A broken upload is poisoned so that nothing
/// half-received is stored.
async fn receive_archive<T: Send + 'static>(
    mut stream: tonic::Streaming<ImportChunk>,
    first: Vec<u8>,
    work: impl FnOnce(ChunkReader) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Status> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let worker = tokio::task::spawn_blocking(move || work(ChunkReader::new(rx)));
    let send = |chunk: Vec<u8>| {
        let sender = tx.clone();
        async move {
            matches!(
                tokio::task::spawn_blocking(move || sender.send(chunk)).await,
                Ok(Ok(()))
            )
        }
    };
    let mut chunk = first;
    let mut broken = None;
    loop {
        // A refused send means the worker stopped early (a bad archive); its error says why.
        if !chunk.is_empty() && !send(chunk).await {
            break;
        }
        match stream.message().await {
            Ok(Some(next)) => chunk = next.data,
            Ok(None) => break,
            Err(status) => {
                broken = Some(status);
                break;
            }
        }
    }
    if let Some(status) = &broken {
        send(b"\x01 upload broken".to_vec()).await;
        tracing::debug!(error = %status, "an archive upload broke");
    }
    drop(tx);
    let result = match worker.await {
        Ok(result) => result.map_err(failed),
        Err(err) => Err(Status::internal(format!("the worker failed: {err}"))),
    };
    match broken {
        Some(status) => Err(Status::aborted(format!(
            "the upload broke: {}",
            status.message()
        ))),
        None => result,
    }
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(failed),
        Err(err) => Err(Status::internal(format!("the worker failed: {err}"))),
    }
}

impl AgentService {
    /// The cluster network, once the config is read.
    fn cluster_network(&self) -> Option<Ipv4Network> {
        self.node.borrow().config.as_ref().map(|c| c.network())
    }

    /// The weave form onto the L2 segment.
    async fn attach_segment(
        &self,
        request: AttachRequest,
    ) -> Result<Response<AttachResponse>, Status> {
        if !request.host_interface_name.is_empty()
            || request.host_shim
            || !request.gateway.is_empty()
            || request.vlan != 0
        {
            return Err(Status::invalid_argument(
                "the L2 segment takes ADDR/LEN, -i and a MAC only: no -l, --host-shim, gateway or VLAN",
            ));
        }
        let target = Target::resolve(&request.container, &self.containers).map_err(invalid)?;
        let address = segment_address(&request.address, self.segment.range()).map_err(invalid)?;
        let segment_request = SegmentRequest {
            target,
            address,
            ifname: (!request.container_interface.is_empty())
                .then(|| request.container_interface.clone()),
            mac: (!request.mac.is_empty()).then(|| request.mac.clone()),
        };
        let attached = self
            .segment
            .attach(&segment_request)
            .await
            .map_err(failed)?;
        let shown = attached
            .address
            .map_or_else(String::new, |a| a.ip().to_string());
        if attached.already {
            info!(container = %request.container, interface = %attached.ifname, address = %shown, "already on the L2 segment");
        } else {
            info!(container = %request.container, interface = %attached.ifname, address = %shown, "attached to the L2 segment");
        }
        Ok(Response::new(AttachResponse {
            address: shown,
            already_attached: attached.already,
            container_interface: attached.ifname,
        }))
    }

    async fn attach_pipework(
        &self,
        request: AttachRequest,
    ) -> Result<Response<AttachResponse>, Status> {
        let invalid = |e: anyhow::Error| Status::invalid_argument(format!("{e:#}"));
        let target = Target::resolve(&request.container, &self.containers).map_err(invalid)?;
        let gateway = match request.gateway.as_str() {
            "" => None,
            text => Some(
                text.parse()
                    .map_err(|_| Status::invalid_argument(format!("bad gateway {text:?}")))?,
            ),
        };
        let vlan = match request.vlan {
            0 => None,
            vlan => Some(u16::try_from(vlan).map_err(|_| {
                Status::invalid_argument(format!("VLAN {vlan} is out of range: use 1 to 4094"))
            })?),
        };
        let pipework = crate::networks::pipework::Request {
            host_interface: request.host_interface.clone(),
            target,
            ifname: (!request.container_interface.is_empty())
                .then(|| request.container_interface.clone()),
            host_ifname: (!request.host_interface_name.is_empty())
                .then(|| request.host_interface_name.clone()),
            address: request.address.clone(),
            gateway,
            mac: (!request.mac.is_empty()).then(|| request.mac.clone()),
            vlan,
            host_shim: request.host_shim,
        };
        let attached = self.pipework.attach(&pipework).await.map_err(failed)?;
        if attached.already {
            info!(container = %request.container, interface = %attached.ifname, "already attached");
        } else {
            info!(container = %request.container, interface = %attached.ifname, host = %request.host_interface, address = %show_address(attached.address), "attached");
        }
        Ok(Response::new(AttachResponse {
            address: show_address(attached.address),
            already_attached: attached.already,
            container_interface: attached.ifname,
        }))
    }

    async fn stop_or_restart(
        &self,
        request: StopRequest,
        restart: bool,
    ) -> Result<Response<PbContainer>, Status> {
        let id = self.container_id(&request.container)?;
        let timeout = Duration::from_secs(u64::from(request.timeout_seconds));
        let view = if restart {
            self.containers.restart(&id, timeout).await
        } else {
            self.containers.stop(&id, timeout).await
        }
        .map_err(failed)?;
        let done = if restart { "restarted" } else { "stopped" };
        info!(container = %view.config.name, "{done} a container");
        Ok(Response::new(to_pb_container(view)))
    }

    fn container_id(&self, text: &str) -> Result<String, Status> {
        self.containers
            .resolve(text)
            .map_err(|e| Status::not_found(format!("{e:#}")))
    }

    /// The current subnet's attacher.
    fn attacher(&self) -> Result<Arc<Attacher>, Status> {
        self.attacher.borrow().clone().ok_or_else(|| {
            Status::unavailable(
                "the agent holds no subnet lease yet, or keeps no bridge (the alloc backend, or --external-bridge)",
            )
        })
    }
}

/// One line for the CLI: the error and its causes.
fn invalid(err: anyhow::Error) -> Status {
    Status::invalid_argument(format!("{err:#}"))
}

/// Whether a weave-form attach goes onto the L2 segment, with a cluster
/// network: asked for with `--l2`, or an address outside the cluster
/// network (weave's model: any subnet of the operator's choosing). In peer
/// mode, which has no cluster network, everything goes there.
fn wants_segment(request: &AttachRequest, network: Option<Ipv4Network>) -> anyhow::Result<bool> {
    if request.l2 {
        return Ok(true);
    }
    let Some(network) = network else {
        return Ok(false);
    };
    if request.address.is_empty() {
        return Ok(false);
    }
    let ip = request
        .address
        .split_once('/')
        .map_or(request.address.as_str(), |(ip, _)| ip);
    let ip: Ipv4Addr = ip
        .parse()
        .map_err(|_| anyhow::anyhow!("bad address {:?}: give ADDR or ADDR/LEN", request.address))?;
    Ok(!network.contains(ip))
}

/// A segment address as given: `ADDR/LEN`, or `ADDR` inside the segment's
/// range (its length then); empty for an automatic one.
fn segment_address(text: &str, range: Ipv4Network) -> anyhow::Result<Option<Ipv4Network>> {
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || anyhow::anyhow!("bad address {text:?}: give ADDR/LEN, as in 10.1.1.1/24");
    let address = match text.split_once('/') {
        Some(_) => text.parse::<Ipv4Network>().map_err(|_| bad())?,
        None => {
            let ip: Ipv4Addr = text.parse().map_err(|_| bad())?;
            if !range.contains(ip) {
                anyhow::bail!("{text} is outside the L2 segment's range {range}: give ADDR/LEN");
            }
            Ipv4Network::new(ip, range.prefix()).map_err(|_| bad())?
        }
    };
    let ip = address.ip();
    if address.prefix() < 32
        && address.prefix() > 0
        && (ip == address.network() || ip == address.broadcast())
    {
        anyhow::bail!("{address} is its subnet's network or broadcast address");
    }
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || ip.is_broadcast() {
        anyhow::bail!("{ip} cannot be a container's address");
    }
    Ok(Some(address))
}

fn failed(err: anyhow::Error) -> Status {
    Status::failed_precondition(format!("{err:#}"))
}

/// The metadata key that carries the exit code of a container whose
/// command could not run, for the CLI to leave with (127, 126).
pub const EXIT_CODE_KEY: &str = "tartan-exit-code";

/// As `failed`, with the exit code of a command that could not run.
fn failed_to_start(err: anyhow::Error) -> Status {
    let code = err
        .downcast_ref::<crate::containers::CommandFailed>()
        .map(|failed| failed.code);
    let mut status = failed(err);
    if let Some(code) = code {
        if let Ok(value) = code.to_string().parse() {
            status.metadata_mut().insert(EXIT_CODE_KEY, value);
        }
    }
    status
}

type Streamed<T> = tokio_stream::wrappers::ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Agent for AgentService {
    type ContainerLogsStream = Streamed<LogEntry>;
    type ExportContainerStream = Streamed<ExportChunk>;

    async fn run_container(
        &self,
        request: Request<RunRequest>,
    ) -> Result<Response<PbContainer>, Status> {
        let opts = RunSpec::from_pb(request.into_inner()).map_err(failed)?;
        let view = self.containers.run(opts).await.map_err(failed_to_start)?;
        Ok(Response::new(to_pb_container(view)))
    }

    async fn start_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<PbContainer>, Status> {
        let id = self.container_id(&request.into_inner().container)?;
        let view = self.containers.start(&id).await.map_err(failed)?;
        info!(container = %view.config.name, "started a container");
        Ok(Response::new(to_pb_container(view)))
    }

    async fn stop_container(
        &self,
        request: Request<StopRequest>,
    ) -> Result<Response<PbContainer>, Status> {
        self.stop_or_restart(request.into_inner(), false).await
    }

    async fn restart_container(
        &self,
        request: Request<StopRequest>,
    ) -> Result<Response<PbContainer>, Status> {
        self.stop_or_restart(request.into_inner(), true).await
    }

    async fn remove_container(
        &self,
        request: Request<RemoveContainerRequest>,
    ) -> Result<Response<PbContainer>, Status> {
        let r = request.into_inner();
        let id = self.container_id(&r.container)?;
        let view = self.containers.remove(&id, r.force).await.map_err(|err| {
            // Removed meanwhile by another caller (the agent's own `--rm`
            // clean-up, say): gone, as the caller wanted.
            if self.containers.view(&id).is_err() {
                Status::not_found(format!("{err:#}"))
            } else {
                failed(err)
            }
        })?;
        if r.volumes {
            self.containers.remove_anonymous_volumes(&view.config);
        }
        Ok(Response::new(to_pb_container(view)))
    }

    async fn list_containers(
        &self,
        request: Request<ListContainersRequest>,
    ) -> Result<Response<ContainersResponse>, Status> {
        let all = request.into_inner().all;
        let containers = self.containers.clone();
        let views = blocking(move || Ok(containers.list(all))).await?;
        let mut listed: Vec<PbContainer> = views.into_iter().map(to_pb_container).collect();
        fill_network_addresses(&mut listed).await;
        Ok(Response::new(ContainersResponse { containers: listed }))
    }

    async fn inspect_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<PbContainer>, Status> {
        let id = self.container_id(&request.into_inner().container)?;
        let view = self.containers.view(&id).map_err(failed)?;
        Ok(Response::new(to_pb_container(view)))
    }

    async fn container_stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let names = request.into_inner().containers;
        let views = if names.is_empty() {
            self.containers.list(false)
        } else {
            let mut views = Vec::new();
            for name in &names {
                let id = self.container_id(name)?;
                views.push(self.containers.view(&id).map_err(failed)?);
            }
            views
        };
        let stats = tokio::task::spawn_blocking(move || {
            views
                .iter()
                .map(|view| {
                    let pid = match view.status {
                        RunStatus::Running { pid, .. } => Some(pid),
                        _ => None,
                    };
                    // The host's counters are not the container's (Docker shows none either).
                    let own_netns =
                        view.config.network != tartan_runtime::container::NetworkMode::Host;
                    crate::containers::stats::sample(
                        &view.config.id,
                        &view.config.name,
                        pid,
                        own_netns,
                    )
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(failed)?;
        Ok(Response::new(StatsResponse { stats }))
    }

    async fn container_logs(
        &self,
        request: Request<LogsRequest>,
    ) -> Result<Response<Self::ContainerLogsStream>, Status> {
        let r = request.into_inner();
        let id = self.container_id(&r.container)?;
        let path = self.containers.log_path(&id);
        let containers = self.containers.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut offset = 0u64;
            loop {
                // Liveness first: a container that ends now still gets its last lines read below.
                let live = containers.is_live(&id);
                let path = path.clone();
                let read = tokio::task::spawn_blocking(move || read_log_from(&path, offset)).await;
                let Ok(Ok((records, consumed))) = read else {
                    // The client may have gone; then there is no one to tell.
                    let _ = tx
                        .send(Err(Status::internal("reading the container log")))
                        .await;
                    return;
                };
                offset += consumed;
                for record in records {
                    let entry = LogEntry {
                        stderr: record.stream == tartan_runtime::container::log::Stream::Stderr,
                        data: record.log.into_bytes(),
                    };
                    if tx.send(Ok(entry)).await.is_err() {
                        return;
                    }
                }
                if !r.follow || !live {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn export_container(
        &self,
        request: Request<ContainerRequest>,
    ) -> Result<Response<Self::ExportContainerStream>, Status> {
        let id = self.container_id(&request.into_inner().container)?;
        let (layers, upper, mountpoint) = self.containers.export_parts(&id).map_err(failed)?;
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::task::spawn_blocking(move || {
            let writer = ChunkSender {
                tx: tx.clone(),
                buf: Vec::new(),
            };
            let result =
                tartan_runtime::container::export::export(&layers, &upper, &mountpoint, writer);
            if let Err(err) = std::fs::remove_dir(&mountpoint) {
                warn!(dir = %mountpoint.display(), error = %err, "could not remove the export's mount point");
            }
            if let Err(err) = result {
                // The client may have gone; then there is no one to tell.
                let _ = tx.blocking_send(Err(Status::failed_precondition(format!(
                    "exporting: {:#}",
                    anyhow::Error::from(err)
                ))));
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let Some(registry) = &self.registry else {
            return Ok(Response::new(StatusResponse {
                peer_mode: true,
                ..StatusResponse::default()
            }));
        };
        let (node, config, peers) = {
            let st = self.node.borrow();
            let config = st.config.as_ref().map(|c| PbConfig {
                network: c.network().to_string(),
                subnet_len: u32::from(c.range.subnet_len()),
                subnet_min: c.range.min().to_string(),
                subnet_max: c.range.max().to_string(),
                backend_type: c.backend.type_name().to_string(),
                backend_json: c.backend_json.to_string(),
            });
            (
                st.lease.clone(),
                config,
                st.peers.clone().unwrap_or_default(),
            )
        };
        let forward_dropped_by = self.forward_dropped_by.borrow().clone();
        // Asked now: what the agent last saw may be seconds old.
        let probe = registry.probe(STATUS_PROBE_TIMEOUT).await;
        match &probe {
            Ok(()) => self.etcd.reachable(),
            // A refusal (say, of authentication) is an answer, not an outage.
            Err(err) if crate::control::etcd::is_unreachable(err) => self.etcd.unreachable(err),
            Err(_) => {}
        }
        let etcd_reachable = probe.is_ok();
        let (etcd_error, etcd_unreachable_secs) = match (probe, self.etcd.current()) {
            (Ok(()), _) => (String::new(), 0),
            (Err(err), EtcdHealth::Unreachable { since, .. }) => {
                (format!("{err:#}"), since.elapsed().as_secs())
            }
            (Err(err), _) => (format!("{err:#}"), 0),
        };
        let expiries = if etcd_reachable {
            tokio::time::timeout(STATUS_TTL_TIMEOUT, self.peer_expiries(registry, &peers))
                .await
                .unwrap_or_default()
        } else {
            HashMap::new()
        };
        let node = node.map(|n| {
            let mut pb = to_pb(&n.lease.subnet, &n.lease.attrs);
            pb.expires_unix = n
                .expires_at
                .and_then(|at| at.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs() as i64);
            pb
        });
        let peers = peers
            .iter()
            .map(|lease| {
                let mut pb = to_pb(&lease.subnet, &lease.attrs);
                pb.expires_unix = expiries.get(&lease.etcd_lease).copied();
                pb
            })
            .collect();
        Ok(Response::new(StatusResponse {
            node,
            config,
            peers,
            etcd_reachable,
            etcd_error,
            etcd_unreachable_secs,
            forward_dropped_by,
            etcd_prefix: registry.prefix().to_string(),
            peer_mode: false,
        }))
    }

    async fn attach(
        &self,
        request: Request<AttachRequest>,
    ) -> Result<Response<AttachResponse>, Status> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        if request.host_interface == tartan_dataplane::L2_SEGMENT_BRIDGE
            || (request.host_interface.is_empty()
                && (self.registry.is_none()
                    || wants_segment(&request, self.cluster_network()).map_err(invalid)?))
        {
            return self.attach_segment(request).await;
        }
        if !request.host_interface.is_empty() {
            return self.attach_pipework(request).await;
        }
        if !request.host_interface_name.is_empty() || request.host_shim {
            return Err(Status::invalid_argument(
                "-l and --host-shim belong to the pipework form: tartan attach HOST_INTERFACE CONTAINER ADDR/LEN",
            ));
        }
        let container = ContainerRef::parse(&request.container)
            .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let requested = (!request.address.is_empty()).then_some(request.address.as_str());
        let ifname = match request.container_interface.as_str() {
            "" => "eth0",
            name => name,
        };
        let attached = self
            .attacher()?
            .attach(&container, requested, ifname)
            .await
            .map_err(failed)?;
        let address = attached.address;
        if attached.already {
            info!(container = %request.container, interface = %ifname, %address, "already attached");
        } else {
            info!(container = %request.container, %address, elapsed_us = started.elapsed().as_micros(), "attached");
            // Watched from the first attach on; a second watch would do nothing more.
            if let ContainerRef::Pid(pid) = container {
                crate::networks::attach::free_when_process_ends(self.attacher.clone(), pid);
            }
        }
        Ok(Response::new(AttachResponse {
            address: address.to_string(),
            already_attached: attached.already,
            container_interface: ifname.to_string(),
        }))
    }

    async fn import(
        &self,
        request: Request<tonic::Streaming<ImportChunk>>,
    ) -> Result<Response<PbImage>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("an import needs at least one chunk"))?;
        let reference: tartan_runtime::Reference = first
            .reference
            .parse()
            .map_err(|e: tartan_runtime::RuntimeError| Status::invalid_argument(e.to_string()))?;
        let images = self.images.clone();
        let image = receive_archive(stream, first.data, move |reader| {
            images.import(reader, &reference)
        })
        .await?;
        info!(image = %image.reference(), id = %image.id, "imported an image");
        Ok(Response::new(to_pb_image(image)))
    }

    async fn load(
        &self,
        request: Request<tonic::Streaming<ImportChunk>>,
    ) -> Result<Response<ImagesResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream.message().await?.map(|c| c.data).unwrap_or_default();
        let images = self.images.clone();
        let loaded = receive_archive(stream, first, move |reader| images.load(reader)).await?;
        for image in &loaded {
            info!(image = %image.reference(), id = %image.id, layers = image.layers.len(), "loaded an image");
        }
        Ok(Response::new(ImagesResponse {
            images: loaded.into_iter().map(to_pb_image).collect(),
        }))
    }

    async fn images(
        &self,
        _request: Request<ImagesRequest>,
    ) -> Result<Response<ImagesResponse>, Status> {
        let images = self.images.clone();
        let list = blocking(move || images.list()).await?;
        Ok(Response::new(ImagesResponse {
            images: list.into_iter().map(to_pb_image).collect(),
        }))
    }

    async fn tag_image(
        &self,
        request: Request<TagImageRequest>,
    ) -> Result<Response<PbImage>, Status> {
        let request = request.into_inner();
        let images = self.images.clone();
        let containers = self.containers.clone();
        let tagged = blocking(move || {
            let target: tartan_runtime::Reference = request.target.parse()?;
            images.tag(&request.source, &target, |image| {
                containers.user_of_image(&image.id)
            })
        })
        .await?;
        info!(image = %tagged.reference(), "tagged an image");
        Ok(Response::new(to_pb_image(tagged)))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let request = request.into_inner();
        let images = self.images.clone();
        let containers = self.containers.clone();
        let removed = blocking(move || {
            images.remove(&request.image, request.force, |image| {
                containers.user_of_image(&image.id)
            })
        })
        .await?;
        for image in &removed.untagged {
            info!(image = %image.reference(), "untagged an image");
        }
        Ok(Response::new(RemoveImageResponse {
            id: removed
                .untagged
                .first()
                .map(|i| i.id.clone())
                .unwrap_or_default(),
            deleted: removed.deleted,
            untagged: removed.untagged.into_iter().map(to_pb_image).collect(),
        }))
    }

    async fn list_attachments(
        &self,
        _request: Request<ListAttachmentsRequest>,
    ) -> Result<Response<AttachmentsResponse>, Status> {
        let current = self.attacher.borrow().clone();
        let attachments = match current {
            Some(attacher) => attacher.attachments().await,
            None => Vec::new(),
        };
        let mut listed: Vec<PbAttachment> = attachments
            .into_iter()
            .map(
                |(container, address, host_interface, ifname)| PbAttachment {
                    container,
                    address: address.to_string(),
                    host_interface,
                    driver: "bridge".to_string(),
                    container_interface: ifname,
                    ..PbAttachment::default()
                },
            )
            .collect();
        listed.extend(
            self.pipework
                .records()
                .await
                .into_iter()
                .map(|r| PbAttachment {
                    container: r.container,
                    address: show_address(r.address),
                    host_interface: r.host_ifname.unwrap_or_default(),
                    driver: r.driver,
                    attached_to: r.host_interface,
                    container_interface: r.ifname,
                    vlan: r.vlan.map_or(0, u32::from),
                    host_shim: r.host_shim.unwrap_or_default(),
                }),
        );
        Ok(Response::new(AttachmentsResponse {
            attachments: listed,
        }))
    }

    async fn detach(
        &self,
        request: Request<DetachRequest>,
    ) -> Result<Response<DetachResponse>, Status> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        let ifname = (!request.container_interface.is_empty())
            .then_some(request.container_interface.as_str());
        let keys = Target::keys_for(&request.container, &self.containers);
        let detached = self.pipework.detach(&keys, ifname).await.map_err(failed)?;
        self.segment.detached(&detached).await;
        for record in &detached {
            info!(container = %request.container, interface = %record.ifname, address = %show_address(record.address), "detached");
        }
        let weave = ContainerRef::parse(&request.container).ok();
        let current = self.attacher.borrow().clone();
        if let (Some(container), Some(attacher)) = (&weave, current) {
            let keys = attacher.keys_of(container).await;
            let wanted = keys.iter().any(|key| {
                let (name, _) = crate::networks::attach::split_interface_key(key);
                ifname.is_none_or(|want| want == name)
            });
            if wanted {
                let freed = attacher.detach(container, ifname).await.map_err(failed)?;
                for address in &freed {
                    info!(container = %request.container, %address, elapsed_us = started.elapsed().as_micros(), "detached");
                }
                let address = freed
                    .first()
                    .map(ToString::to_string)
                    .or_else(|| detached.first().map(|r| show_address(r.address)))
                    .unwrap_or_default();
                return Ok(Response::new(DetachResponse { address }));
            }
        }
        match detached.first() {
            Some(record) => Ok(Response::new(DetachResponse {
                address: show_address(record.address),
            })),
            None => Err(failed(anyhow::anyhow!(
                "{} is not attached{}",
                request.container,
                ifname.map(|name| format!(" as {name}")).unwrap_or_default()
            ))),
        }
    }

    async fn create_network(
        &self,
        request: Request<CreateNetworkRequest>,
    ) -> Result<Response<PbNetwork>, Status> {
        let r = request.into_inner();
        let ask = store::CreateRequest {
            name: r.name,
            driver: r.driver,
            subnet: nonempty(r.subnet),
            gateway: nonempty(r.gateway),
            ip_range: nonempty(r.ip_range),
            options: r.options,
        };
        // The overlay's addresses are the fabric's too.
        let overlay: Vec<(String, ipnetwork::Ipv4Network)> = self
            .node
            .borrow()
            .config
            .as_ref()
            .map(|config| ("the overlay".to_string(), config.range.network()))
            .into_iter()
            .collect();
        let def = self
            .networks
            .store()
            .create(&ask, &overlay, tartan_runtime::container::now_rfc3339())
            .await
            .map_err(|e| match e {
                store::CreateError::Invalid(_) => Status::invalid_argument(e.to_string()),
                store::CreateError::Exists(_) => Status::already_exists(e.to_string()),
                store::CreateError::Failed(_) => Status::failed_precondition(e.to_string()),
            })?;
        info!(network = %def.name, driver = %def.driver, subnet = %def.subnet, "created a network");
        Ok(Response::new(to_pb_network(def, Vec::new())))
    }

    async fn list_networks(
        &self,
        _request: Request<ListNetworksRequest>,
    ) -> Result<Response<NetworksResponse>, Status> {
        let defs = self.networks.store().list().await.map_err(failed)?;
        let mut networks: Vec<PbNetwork> = store::PREDEFINED
            .iter()
            .filter(|name| self.has_predefined(name))
            .map(|name| self.predefined_network(name))
            .chain(defs.into_iter().map(|def| to_pb_network(def, Vec::new())))
            .collect();
        // Docker lists by name.
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(NetworksResponse { networks }))
    }

    async fn inspect_network(
        &self,
        request: Request<PbNetworkRequest>,
    ) -> Result<Response<PbNetwork>, Status> {
        let name = request.into_inner().name;
        if store::PREDEFINED.contains(&name.as_str()) {
            if !self.has_predefined(&name) {
                return Err(Status::failed_precondition(
                    crate::containers::OVERLAY_NEEDS_ETCD,
                ));
            }
            return Ok(Response::new(self.predefined_network(&name)));
        }
        let networks = self.networks.store();
        let def = networks
            .get(&name)
            .await
            .map_err(failed)?
            .ok_or_else(|| Status::not_found(format!("network {name} not found")))?;
        let prefix = def.subnet.prefix();
        let endpoints = networks
            .holders(&name)
            .await
            .map_err(failed)?
            .into_iter()
            .map(|(addr, holder)| NetworkEndpoint {
                container_id: holder.container,
                container_name: holder.name,
                host: holder.host,
                interface: holder.interface,
                address: format!("{addr}/{prefix}"),
            })
            .collect();
        Ok(Response::new(to_pb_network(def, endpoints)))
    }

    async fn remove_network(
        &self,
        request: Request<PbNetworkRequest>,
    ) -> Result<Response<PbNetwork>, Status> {
        let name = request.into_inner().name;
        let def = self.networks.store().remove(&name).await.map_err(failed)?;
        // No container here is on it: it holds no address anywhere.
        if let Err(err) = self.networks.remove_bridge_of(&def).await {
            warn!(network = %name, error = %format!("{err:#}"), "could not remove the network's bridge");
        }
        info!(network = %name, "removed a network");
        Ok(Response::new(to_pb_network(def, Vec::new())))
    }

    async fn connect_network(
        &self,
        request: Request<ConnectRequest>,
    ) -> Result<Response<PbContainer>, Status> {
        let r = request.into_inner();
        // Said before the container's own reasons: no named network exists here.
        if self.registry.is_none() {
            return Err(Status::failed_precondition(store::NO_STORE));
        }
        let id = self.container_id(&r.container)?;
        let ip = nonempty(r.ip);
        let view = self
            .containers
            .connect(&id, &r.network, ip.as_deref())
            .await
            .map_err(failed)?;
        Ok(Response::new(to_pb_container(view)))
    }

    async fn disconnect_network(
        &self,
        request: Request<DisconnectRequest>,
    ) -> Result<Response<PbContainer>, Status> {
        let r = request.into_inner();
        let id = self.container_id(&r.container)?;
        let view = self
            .containers
            .disconnect(&id, &r.network)
            .await
            .map_err(failed)?;
        Ok(Response::new(to_pb_container(view)))
    }

    async fn connect_peers(
        &self,
        request: Request<ConnectPeersRequest>,
    ) -> Result<Response<SegmentStatus>, Status> {
        let r = request.into_inner();
        if r.hosts.is_empty() && !r.replace {
            return Err(Status::invalid_argument("name at least one HOST[:PORT]"));
        }
        let outcomes = self
            .segment
            .connect(&r.hosts, r.replace)
            .await
            .map_err(failed)?;
        for outcome in &outcomes {
            match &outcome.pending {
                None => info!(peer = %outcome.address, "connect: connected"),
                Some(why) => info!(peer = %outcome.address, %why, "connect: kept, retrying"),
            }
        }
        Ok(Response::new(self.segment.status().await))
    }

    async fn forget_peers(
        &self,
        request: Request<ForgetPeersRequest>,
    ) -> Result<Response<SegmentStatus>, Status> {
        let r = request.into_inner();
        if r.hosts.is_empty() {
            return Err(Status::invalid_argument("name at least one HOST[:PORT]"));
        }
        self.segment.forget(&r.hosts).await.map_err(failed)?;
        Ok(Response::new(self.segment.status().await))
    }

    async fn segment(
        &self,
        _request: Request<SegmentStatusRequest>,
    ) -> Result<Response<SegmentStatus>, Status> {
        Ok(Response::new(self.segment.status().await))
    }

    async fn create_volume(
        &self,
        request: Request<VolumeRequest>,
    ) -> Result<Response<PbVolume>, Status> {
        let name = request.into_inner().name;
        let containers = self.containers.clone();
        let view = blocking(move || containers.create_volume(&name)).await?;
        Ok(Response::new(volumes::to_pb_volume(view)))
    }

    async fn list_volumes(
        &self,
        _request: Request<ListVolumesRequest>,
    ) -> Result<Response<VolumesResponse>, Status> {
        let containers = self.containers.clone();
        let views = blocking(move || containers.list_volumes()).await?;
        Ok(Response::new(VolumesResponse {
            volumes: views.into_iter().map(volumes::to_pb_volume).collect(),
        }))
    }

    async fn inspect_volume(
        &self,
        request: Request<VolumeRequest>,
    ) -> Result<Response<PbVolume>, Status> {
        let name = request.into_inner().name;
        let containers = self.containers.clone();
        let view = blocking(move || containers.inspect_volume(&name)).await?;
        Ok(Response::new(volumes::to_pb_volume(view)))
    }

    async fn remove_volume(
        &self,
        request: Request<VolumeRequest>,
    ) -> Result<Response<PbVolume>, Status> {
        let name = request.into_inner().name;
        let containers = self.containers.clone();
        let view = blocking(move || containers.remove_volume(&name)).await?;
        Ok(Response::new(volumes::to_pb_volume(view)))
    }

    async fn prune_volumes(
        &self,
        request: Request<PruneVolumesRequest>,
    ) -> Result<Response<VolumesResponse>, Status> {
        let all = request.into_inner().all;
        let containers = self.containers.clone();
        let views = blocking(move || containers.prune_volumes(all)).await?;
        Ok(Response::new(VolumesResponse {
            volumes: views.into_iter().map(volumes::to_pb_volume).collect(),
        }))
    }
}

fn to_pb_network(def: NetworkDef, endpoints: Vec<NetworkEndpoint>) -> PbNetwork {
    PbNetwork {
        name: def.name,
        id: def.id,
        driver: def.driver,
        subnet: def.subnet.to_string(),
        gateway: def.gateway.to_string(),
        ip_range: def.ip_range.map(|r| r.to_string()).unwrap_or_default(),
        options: def.options.into_iter().collect(),
        created: def.created,
        endpoints,
    }
}

impl AgentService {
    /// Whether this agent has the predefined network `name`: the overlay
    /// needs a subnet lease, so an agent without etcd has only host and none.
    fn has_predefined(&self, name: &str) -> bool {
        name != "overlay" || self.registry.is_some()
    }

    /// A network every host has without a create, as Docker's `bridge`,
    /// `host` and `none`: the overlay (driven by the cluster's backend, on
    /// this node's subnet), the host's network and none.
    fn predefined_network(&self, name: &str) -> PbNetwork {
        let mut network = PbNetwork {
            name: name.to_string(),
            id: store::predefined_id(name),
            ..PbNetwork::default()
        };
        match name {
            "overlay" => {
                let node = self.node.borrow();
                network.driver = node
                    .config
                    .as_ref()
                    .map(|c| c.backend.type_name())
                    .filter(|t| !t.is_empty())
                    // flannel's default backend.
                    .unwrap_or("udp")
                    .to_string();
                if let Some(subnet) = node.subnet() {
                    network.subnet = subnet.to_string();
                    network.gateway = tartan_ipam::gateway(&subnet).to_string();
                }
            }
            "host" => network.driver = "host".into(),
            // Docker's driver name for no network.
            _ => network.driver = "null".into(),
        }
        network
    }

    /// Expiry times of the etcd leases behind the peers' keys. Looked up on
    /// demand: keeping thousands of TTLs current would cost etcd far more
    /// than an occasional `tartan status`.
    async fn peer_expiries(&self, registry: &Registry, peers: &[Lease]) -> HashMap<i64, i64> {
        let mut ids: Vec<i64> = peers
            .iter()
            .map(|l| l.etcd_lease)
            .filter(|id| *id != 0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let now = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        stream::iter(ids)
            .map(|id| {
                let registry = registry.clone();
                async move { (id, registry.time_to_live(id).await) }
            })
            .buffer_unordered(TTL_LOOKUP_CONCURRENCY)
            .filter_map(|(id, ttl)| async move {
                match ttl {
                    Ok(Some(ttl)) => Some((id, now + ttl)),
                    _ => None,
                }
            })
            .collect()
            .await
    }
}

/// Whole log records from `offset` on; a missing log is an empty one.
fn read_log_from(
    path: &Path,
    offset: u64,
) -> std::io::Result<(Vec<tartan_runtime::container::log::LogRecord>, u64)> {
    use std::io::{Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err),
    };
    file.seek(SeekFrom::Start(offset))?;
    tartan_runtime::container::log::read_records(&mut std::io::BufReader::new(file))
}

fn to_pb(subnet: &ipnetwork::Ipv4Network, attrs: &crate::control::lease::LeaseAttrs) -> PbLease {
    PbLease {
        subnet: subnet.to_string(),
        public_ip: attrs.public_ip.to_string(),
        public_ipv6: attrs
            .public_ipv6
            .map(|ip| ip.to_string())
            .unwrap_or_default(),
        backend_type: attrs.backend_type.clone(),
        backend_data_json: attrs.backend_data.to_string(),
        expires_unix: None,
    }
}

/// A running API server; `shutdown` stops it and removes the socket.
pub struct ApiServer {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            // Fails only when the server already stopped on its own.
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            warn!("the local API did not stop within 5s");
        }
        if let Err(err) = crate::teardown::remove_file(&self.path) {
            warn!(error = %format!("{err:#}"), "could not remove the API socket");
        }
    }
}

/// Binds the socket (mode 0600) and serves the API on it in the background.
pub async fn serve(path: &Path, services: Services) -> Result<ApiServer> {
    let listener = bind_private(path).await?;
    info!(socket = %path.display(), "serving the local API");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let Services {
        node,
        etcd,
        forward_dropped_by,
        registry,
        attacher,
        images,
        containers,
        networks,
        pipework,
        segment,
    } = services;
    let service = AgentServer::new(AgentService {
        node,
        etcd,
        forward_dropped_by,
        registry,
        attacher,
        images,
        containers,
        networks,
        pipework,
        segment,
    });
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                // A dropped sender means shutdown too.
                let _ = stop_rx.await;
            })
            .await;
        if let Err(err) = result {
            warn!(error = %err, "the local API server stopped");
        }
    });
    Ok(ApiServer {
        path: path.to_path_buf(),
        stop: Some(stop_tx),
        task,
    })
}

/// Binds a unix socket that only root can use. The socket is bound under a
/// temporary name, restricted, then renamed into place, so that it is never
/// reachable with looser permissions.
async fn bind_private(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!("another agent is already serving {}", path.display());
        }
        // A socket file left by an agent that did not shut down cleanly.
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let staging = path.with_extension(format!("{}.tmp", std::process::id()));
    crate::teardown::remove_file(&staging)?;
    let listener =
        UnixListener::bind(&staging).with_context(|| format!("binding {}", staging.display()))?;
    let setup = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(err) = setup {
        let err = anyhow::Error::from(err)
            .context(format!("installing the API socket at {}", path.display()));
        return Err(match crate::teardown::remove_file(&staging) {
            Ok(()) => err,
            Err(undo) => crate::teardown::and_undo(err, undo),
        });
    }
    Ok(listener)
}

/// The global IPv4 addresses in each running container's network
/// namespace (not the host's), listed from one thread that enters them in
/// turn and dumped all at once.
async fn fill_network_addresses(containers: &mut [PbContainer]) {
    let own_netns = |c: &PbContainer| c.pid != 0 && c.network != "host";
    let paths: Vec<PathBuf> = containers
        .iter()
        .filter(|c| own_netns(c))
        .map(|c| PathBuf::from(format!("/proc/{}/ns/net", c.pid)))
        .collect();
    if paths.is_empty() {
        return;
    }
    let handles = match tartan_dataplane::Netlink::connect_in_each_netns(&paths).await {
        Ok(handles) => handles,
        Err(err) => {
            tracing::debug!(error = %err, "could not list the containers' addresses");
            return;
        }
    };
    let listings = futures::future::join_all(
        handles
            .into_iter()
            .map(|handle| async move { handle?.global_ipv4_addresses().await }),
    )
    .await;
    for (container, listed) in containers.iter_mut().filter(|c| own_netns(c)).zip(listings) {
        match listed {
            Ok(addresses) => {
                container.addresses = addresses
                    .into_iter()
                    .map(|(ip, len)| format!("{ip}/{len}"))
                    .collect();
            }
            // It has just ended: a listing shows it without addresses.
            Err(err) => {
                tracing::debug!(container = %container.name, error = %err, "could not list its addresses");
            }
        }
    }
}

/// Connects the CLI to the agent behind `path`.
pub async fn connect(path: &Path) -> Result<AgentClient<Channel>> {
    // Fail with one clear line before tonic wraps the cause in transport errors.
    let first = match UnixStream::connect(path).await {
        Ok(stream) => stream,
        // The agent makes its socket 0600: only root may talk to it.
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "permission denied on the API socket (root only): {}",
            path.display()
        ),
        Err(err) => bail!(
            "no tartan agent is listening on {} ({err}); is `tartan agent` running?",
            path.display()
        ),
    };
    // The calls go over that first connection: dialling again would cost
    // the agent an accept and an HTTP/2 connection for nothing. Only a
    // reconnection dials anew.
    let mut first = Some(first);
    let path = path.to_path_buf();
    // The URI is required by the HTTP/2 layer but never dialled: the connector below opens the socket.
    let channel = Endpoint::from_static("http://tartan.local")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let ready = first.take();
            let path = path.clone();
            async move {
                match ready {
                    Some(stream) => Ok(TokioIo::new(stream)),
                    None => UnixStream::connect(path).await.map(TokioIo::new),
                }
            }
        }))
        .await
        .context("connecting to the tartan agent")?;
    Ok(AgentClient::new(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weave(address: &str, l2: bool) -> AttachRequest {
        AttachRequest {
            container: "c1".into(),
            address: address.into(),
            l2,
            ..Default::default()
        }
    }

    #[test]
    fn an_address_outside_the_cluster_network_goes_onto_the_segment() -> anyhow::Result<()> {
        let cluster: Ipv4Network = "10.5.0.0/16".parse()?;
        assert!(wants_segment(&weave("10.1.1.1/24", false), Some(cluster))?);
        assert!(!wants_segment(&weave("10.5.3.7", false), Some(cluster))?);
        assert!(!wants_segment(&weave("", false), Some(cluster))?);
        assert!(wants_segment(&weave("", true), Some(cluster))?);
        assert!(wants_segment(&weave("10.5.3.7/16", true), Some(cluster))?);
        assert!(wants_segment(&weave("junk", false), Some(cluster)).is_err());
        Ok(())
    }

    #[test]
    fn segment_addresses_take_the_range_s_length_when_none_is_given() -> anyhow::Result<()> {
        let range: Ipv4Network = "10.32.0.0/12".parse()?;
        assert_eq!(segment_address("", range)?, None);
        assert_eq!(
            segment_address("10.32.0.9", range)?,
            Some("10.32.0.9/12".parse()?)
        );
        assert_eq!(
            segment_address("10.1.1.1/24", range)?,
            Some("10.1.1.1/24".parse()?)
        );
        for bad in [
            "10.1.1.1",
            "10.1.1.0/24",
            "10.1.1.255/24",
            "224.0.0.1/4",
            "10.1.1.1/33",
            "x/24",
        ] {
            assert!(segment_address(bad, range).is_err(), "{bad}");
        }
        Ok(())
    }
}
