//! The peer service, on the peer port: other hosts' agents say hello
//! (with their claims) and goodbye. Every call proves the shared secret
//! when there is one; a call that does not is refused before anything
//! about the caller is kept.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use tartan_proto::v1::peer_server::{Peer, PeerServer};
use tartan_proto::v1::PeerHello;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::{wire, Segment};

struct PeerService {
    segment: Arc<Segment>,
}

impl PeerService {
    /// The caller's verified hello, and where it is reached.
    fn check(&self, request: &Request<PeerHello>) -> Result<std::net::SocketAddrV4, Status> {
        let hello = request.get_ref();
        let from = request
            .remote_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string());
        if let Err(err) = wire::verify(hello, self.segment.secret(), SystemTime::now()) {
            warn!(%from, claimed = %hello.host, error = %format!("{err:#}"), "refused a segment peer");
            return Err(Status::permission_denied(format!("{err:#}")));
        }
        wire::sender(hello).map_err(|err| Status::invalid_argument(format!("{err:#}")))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn exchange(&self, request: Request<PeerHello>) -> Result<Response<PeerHello>, Status> {
        let sender = self.check(&request)?;
        let hello = request.into_inner();
        let (claims, bad) = wire::claims_from_proto(&hello.claims, *sender.ip());
        for problem in bad {
            warn!(peer = %sender, %problem, "ignoring a segment claim");
        }
        self.segment
            .heard_from(sender, hello.add_back, claims)
            .map_err(|err| Status::internal(format!("{err:#}")))?;
        let ours = self.segment.own_claims().await;
        Ok(Response::new(wire::hello(
            self.segment.local(),
            false,
            &ours,
            self.segment.secret(),
        )))
    }

    async fn goodbye(&self, request: Request<PeerHello>) -> Result<Response<PeerHello>, Status> {
        let sender = self.check(&request)?;
        self.segment
            .forgotten_by(sender)
            .map_err(|err| Status::internal(format!("{err:#}")))?;
        Ok(Response::new(wire::hello(
            self.segment.local(),
            false,
            &[],
            self.segment.secret(),
        )))
    }
}

/// The peer service while it runs; dropping it stops it.
pub struct PeerServerHandle {
    _stop: oneshot::Sender<()>,
}

/// Listens on `listen` and serves the peer service until the handle drops.
pub async fn serve(listen: SocketAddr, segment: Arc<Segment>) -> Result<PeerServerHandle> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on the peer port {listen}"))?;
    info!(%listen, "serving the segment's peers");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(PeerServer::new(PeerService { segment }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    // A dropped handle means shutdown too.
                    let _ = stopped.await;
                },
            )
            .await;
        if let Err(err) = result {
            warn!(error = %err, "the peer service stopped");
        }
    });
    Ok(PeerServerHandle { _stop: stop })
}
