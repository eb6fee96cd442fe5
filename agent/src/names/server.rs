//! The fabric's DNS on the wire: UDP and TCP port 53 on the bridge's
//! address (the overlay gateway containers already route through), moved
//! when the node's subnet changes. Container names are answered from the
//! name table; other questions go to the host's resolvers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::names::cache::NameTable;
use crate::names::dns::{self, DnsStatus, Outcome, BIND_PATIENCE};
use crate::networks::attach::AttacherWatch;

pub const DNS_PORT: u16 = 53;
/// How long one of the host's resolvers has to answer a forwarded question.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay silent between questions.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Questions being answered at once; more wait (UDP) or are refused (TCP).
const IN_FLIGHT: usize = 256;
/// Where the agent finds the host's resolvers.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// Serves DNS on the bridge address of each address book `attacher`
/// publishes. Returns where it answers (or tried to) and the task, for
/// the caller to run.
pub fn serve(
    mut attacher: AttacherWatch,
    table: watch::Receiver<NameTable>,
) -> (
    watch::Receiver<DnsStatus>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (serving, receiver) = watch::channel(DnsStatus::default());
    let task = async move {
        let mut current: Option<(Ipv4Addr, Listeners)> = None;
        loop {
            let wanted = attacher
                .borrow_and_update()
                .as_ref()
                .map(|a| tartan_ipam::gateway(&a.subnet()));
            if wanted != current.as_ref().map(|(address, _)| *address) {
                serving.send_replace(DnsStatus::default());
                // Dropping the listeners closes the old sockets.
                current = None;
                if let Some(address) = wanted {
                    let bound = match Listeners::bind(address, table.clone()).await {
                        Ok(listeners) => {
                            info!(%address, port = DNS_PORT, "answering DNS for the fabric's names");
                            current = Some((address, listeners));
                            true
                        }
                        Err(err) => {
                            warn!(
                                error = %err,
                                "no fabric DNS: could not bind {address}:{DNS_PORT}; containers use the host's resolvers"
                            );
                            false
                        }
                    };
                    serving.send_replace(DnsStatus {
                        bridge: Some(address),
                        bound,
                    });
                }
            }
            if attacher.changed().await.is_err() {
                return;
            }
        }
    };
    (receiver, task)
}

/// The UDP and TCP tasks of one address; stopped when dropped.
struct Listeners(Vec<JoinHandle<()>>);

impl Drop for Listeners {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl Listeners {
    async fn bind(
        address: Ipv4Addr,
        table: watch::Receiver<NameTable>,
    ) -> std::io::Result<Listeners> {
        let at = SocketAddr::from((address, DNS_PORT));
        let deadline = tokio::time::Instant::now() + BIND_PATIENCE;
        let (udp, tcp) = loop {
            let bound = async {
                Ok::<_, std::io::Error>((UdpSocket::bind(at).await?, TcpListener::bind(at).await?))
            }
            .await;
            match bound {
                Err(err)
                    if err.kind() == std::io::ErrorKind::AddrNotAvailable
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        let limit = Arc::new(Semaphore::new(IN_FLIGHT));
        Ok(Listeners(vec![
            tokio::spawn(serve_udp(
                Arc::new(udp),
                address,
                table.clone(),
                limit.clone(),
            )),
            tokio::spawn(serve_tcp(tcp, address, table, limit)),
        ]))
    }
}

async fn serve_udp(
    socket: Arc<UdpSocket>,
    own: Ipv4Addr,
    table: watch::Receiver<NameTable>,
    limit: Arc<Semaphore>,
) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, client) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                debug!(error = %err, "reading a DNS question");
                continue;
            }
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let query = buf[..len].to_vec();
        let socket = socket.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = answer(&query, &table, own, Transport::Udp).await {
                if let Err(err) = socket.send_to(&reply, client).await {
                    debug!(error = %err, %client, "sending a DNS answer");
                }
            }
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    own: Ipv4Addr,
    table: watch::Receiver<NameTable>,
    limit: Arc<Semaphore>,
) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                debug!(error = %err, "accepting a DNS connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            continue;
        };
        let table = table.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = serve_connection(stream, own, &table).await {
                debug!(error = %err, %client, "a DNS connection ended");
            }
        });
    }
}

/// Questions and answers on one connection, each with its two-byte length.
async fn serve_connection(
    mut stream: TcpStream,
    own: Ipv4Addr,
    table: &watch::Receiver<NameTable>,
) -> std::io::Result<()> {
    loop {
        let Ok(query) = tokio::time::timeout(TCP_IDLE, read_framed(&mut stream)).await else {
            return Ok(());
        };
        let Some(query) = query? else {
            return Ok(());
        };
        if let Some(reply) = answer(&query, table, own, Transport::Tcp).await {
            write_framed(&mut stream, &reply).await?;
        }
    }
}

/// One framed message; None at the end of the stream.
async fn read_framed(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut message).await?;
    Ok(Some(message))
}

async fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(message.len())
        .map_err(|_| std::io::Error::other("a DNS message longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    stream.write_all(&framed).await
}

#[derive(Clone, Copy)]
enum Transport {
    Udp,
    Tcp,
}

/// The answer to `query`: from the table, else from the host's resolvers,
/// else SERVFAIL.
async fn answer(
    query: &[u8],
    table: &watch::Receiver<NameTable>,
    own: Ipv4Addr,
    transport: Transport,
) -> Option<Vec<u8>> {
    let outcome = {
        let names = table.borrow().clone();
        dns::respond(query, |name| names.get(name).cloned())
    };
    match outcome {
        Outcome::Answer(reply) => Some(reply),
        Outcome::Drop => None,
        Outcome::Forward => match forward(query, own, transport).await {
            Some(reply) => Some(reply),
            None => dns::servfail(query),
        },
    }
}

/// Asks the host's resolvers in turn (read afresh each time: the host's
/// resolv.conf changes), skipping this server itself.
async fn forward(query: &[u8], own: Ipv4Addr, transport: Transport) -> Option<Vec<u8>> {
    let conf = tokio::fs::read_to_string(HOST_RESOLV_CONF)
        .await
        .unwrap_or_default();
    let servers = dns::nameservers(&conf)
        .into_iter()
        .filter(|server| *server != IpAddr::V4(own));
    for server in servers {
        let at = SocketAddr::new(server, DNS_PORT);
        let asked = match transport {
            Transport::Udp => tokio::time::timeout(FORWARD_TIMEOUT, ask_udp(query, at)).await,
            Transport::Tcp => tokio::time::timeout(FORWARD_TIMEOUT, ask_tcp(query, at)).await,
        };
        match asked {
            Ok(Ok(reply)) => return Some(reply),
            Ok(Err(err)) => debug!(%server, error = %err, "a resolver of the host did not answer"),
            Err(_) => debug!(%server, "a resolver of the host did not answer in time"),
        }
    }
    None
}

async fn ask_udp(query: &[u8], server: SocketAddr) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let len = socket.recv(&mut buf).await?;
        // Only the answer to this question (same id) will do.
        if len >= 2 && buf[..2] == query[..2] {
            buf.truncate(len);
            return Ok(buf);
        }
    }
}

async fn ask_tcp(query: &[u8], server: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    write_framed(&mut stream, query).await?;
    read_framed(&mut stream)
        .await?
        .ok_or_else(|| std::io::Error::other("the resolver closed the connection"))
}
