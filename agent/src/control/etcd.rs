//! The agent's view of etcd: flannel's key layout on top of etcd-client.
//!
//! Every unary call is bounded by a timeout, so that an etcd that has gone
//! away shows up as an error the caller can back off from, never as a hang.
//! The watch stream has no such bound; HTTP/2 keep-alives notice a dead peer.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use ipnetwork::Ipv4Network;

use tracing::debug;

use crate::control::lease::{config_key, lease_key, subnets_prefix, LeaseAttrs};
use crate::control::peers::RawLease;

/// How long one unary etcd request may take.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The network config as stored, with the revision it was read at.
pub struct StoredConfig {
    pub value: Option<Vec<u8>>,
    pub revision: i64,
}

/// A cheap cloneable handle on the flannel key space in etcd.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    prefix: String,
}

impl Registry {
    /// Checks the TLS and authentication flags and reads the certificates.
    /// Errors here are the operator's to fix, so the caller does not retry them.
    pub fn connect_options(opts: &EtcdOptions) -> Result<ConnectOptions> {
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
            .with_keep_alive_while_idle(true);
        if opts.ca_file.is_some() || opts.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &opts.ca_file {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("reading --etcd-cafile {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            match (&opts.cert_file, &opts.key_file) {
                (Some(cert), Some(key)) => {
                    let cert_pem = std::fs::read(cert)
                        .with_context(|| format!("reading --etcd-certfile {}", cert.display()))?;
                    let key_pem = std::fs::read(key)
                        .with_context(|| format!("reading --etcd-keyfile {}", key.display()))?;
                    tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
                }
                (None, None) => {}
                _ => return Err(anyhow!("--etcd-certfile and --etcd-keyfile go together")),
            }
            connect = connect.with_tls(tls);
        }
        match (&opts.username, &opts.password) {
            (Some(user), Some(password)) => {
                connect = connect.with_user(user.clone(), password.clone())
            }
            (None, None) => {}
            _ => return Err(anyhow!("--etcd-username and --etcd-password go together")),
        }
        Ok(connect)
    }

    /// Builds the client. Connections are made lazily, so this succeeds while
    /// etcd is down unless authentication is configured (which needs a round trip).
    pub async fn connect(opts: &EtcdOptions, connect: ConnectOptions) -> Result<Registry> {
        let client = Client::connect(&opts.endpoints, Some(connect))
            .await
            .map_err(etcd_failure)
            .with_context(|| format!("connecting to etcd at {}", opts.endpoints.join(",")))?;
        Ok(Registry {
            client,
            prefix: opts.prefix.trim_end_matches('/').to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The client itself, for key spaces other than flannel's (Tartan's own).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn subnets_prefix(&self) -> String {
        subnets_prefix(&self.prefix)
    }

    pub async fn get_config(&self) -> Result<StoredConfig> {
        let key = config_key(&self.prefix);
        let mut client = self.client.clone();
        let resp = bounded("reading the network config", client.get(key.as_str(), None)).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(StoredConfig {
            value: resp.kvs().first().map(|kv| kv.value().to_vec()),
            revision,
        })
    }

    /// One cheap round trip (the config key's count), answered within `limit` or failed.
    pub async fn probe(&self, limit: Duration) -> Result<()> {
        let key = config_key(&self.prefix);
        let mut client = self.client.clone();
        bounded_by(
            limit,
            "asking etcd",
            client.get(key.as_str(), Some(GetOptions::new().with_count_only())),
        )
        .await?;
        Ok(())
    }

    /// Waits until the config key changes after `revision`, or `limit` passes.
    pub async fn wait_config_change(&self, revision: i64, limit: Duration) -> Result<()> {
        let key = config_key(&self.prefix);
        let mut client = self.client.clone();
        let wait = async {
            let mut stream = client
                .watch(
                    key.as_str(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                )
                .await?;
            while let Some(resp) = stream.message().await? {
                if resp.canceled() || !resp.events().is_empty() {
                    break;
                }
            }
            Ok::<(), etcd_client::Error>(())
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(result) => result
                .map_err(etcd_failure)
                .context("watching the network config"),
            Err(_) => Ok(()),
        }
    }

    /// Every key under `subnets/`, and the revision of the listing.
    pub async fn list_leases(&self) -> Result<(Vec<RawLease>, i64)> {
        let prefix = self.subnets_prefix();
        let mut client = self.client.clone();
        let mut resp = bounded(
            "listing subnet leases",
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let leases = resp
            .take_kvs()
            .into_iter()
            .map(|kv| RawLease {
                key: kv.key().to_vec(),
                value: kv.value().to_vec(),
                etcd_lease: kv.lease(),
                mod_revision: kv.mod_revision(),
            })
            .collect();
        Ok((leases, revision))
    }

    /// Writes a lease for `subnet`, attached to a fresh etcd lease of `ttl`
    /// (None: attached to none, a permanent reservation), but only if the key
    /// does not exist (`expected_mod_revision` None) or is still at
    /// `expected_mod_revision`. Returns the etcd lease id (0 for a
    /// reservation), or None when the condition failed (someone else got
    /// there first).
    pub async fn write_lease(
        &self,
        subnet: &Ipv4Network,
        attrs: &LeaseAttrs,
        ttl: Option<Duration>,
        expected_mod_revision: Option<i64>,
    ) -> Result<Option<i64>> {
        let key = lease_key(&self.prefix, subnet);
        let value = serde_json::to_vec(attrs).context("encoding the lease")?;
        let mut client = self.client.clone();
        let id = match ttl {
            Some(ttl) => {
                let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
                bounded("granting an etcd lease", client.lease_grant(ttl_secs, None))
                    .await?
                    .id()
            }
            None => 0,
        };
        let compare = match expected_mod_revision {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some(rev) => Compare::mod_revision(key.as_str(), CompareOp::Equal, rev),
        };
        let put = if id == 0 {
            PutOptions::new()
        } else {
            PutOptions::new().with_lease(id)
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key.as_str(), value, Some(put))]);
        let resp = bounded("writing the subnet lease", client.txn(txn)).await;
        match resp {
            Ok(resp) if resp.succeeded() => Ok(Some(id)),
            other if id != 0 => {
                if let Err(err) =
                    bounded("revoking an unused etcd lease", client.lease_revoke(id)).await
                {
                    // Harmless: the unused grant expires with its TTL.
                    debug!(error = %format!("{err:#}"), "could not revoke an unused etcd lease");
                }
                other.map(|_| None)
            }
            other => other.map(|_| None),
        }
    }

    /// The lease key of `subnet` as stored: its value and the etcd lease
    /// behind it (0 for a reservation); None when there is no such key.
    pub async fn get_lease(&self, subnet: &Ipv4Network) -> Result<Option<(Vec<u8>, i64)>> {
        let key = lease_key(&self.prefix, subnet);
        let mut client = self.client.clone();
        let resp = bounded("reading a subnet lease", client.get(key.as_str(), None)).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.lease())))
    }

    /// Revokes an etcd lease; its keys go with it.
    pub async fn revoke(&self, id: i64) -> Result<()> {
        let mut client = self.client.clone();
        bounded("revoking an etcd lease", client.lease_revoke(id)).await?;
        Ok(())
    }

    /// Refreshes an etcd lease to its full TTL. Returns the new TTL in
    /// seconds, 0 when the lease no longer exists.
    pub async fn keep_alive(&self, id: i64) -> Result<i64> {
        let mut client = self.client.clone();
        let once = async move {
            let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            let resp = stream.message().await?;
            Ok::<i64, etcd_client::Error>(resp.map(|r| r.ttl()).unwrap_or(0))
        };
        bounded("renewing the subnet lease", once).await
    }

    /// Remaining seconds of an etcd lease; None when it does not exist.
    pub async fn time_to_live(&self, id: i64) -> Result<Option<i64>> {
        let mut client = self.client.clone();
        let resp = bounded("reading a lease TTL", client.lease_time_to_live(id, None)).await?;
        Ok((resp.ttl() >= 0).then_some(resp.ttl()))
    }

    /// Watches `subnets/` from `revision` on, with previous values.
    pub async fn watch_subnets(&self, revision: i64) -> Result<WatchStream> {
        let prefix = self.subnets_prefix();
        let mut client = self.client.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision);
        bounded(
            "watching subnet leases",
            client.watch(prefix.as_str(), Some(opts)),
        )
        .await
    }
}

/// etcd gave no answer in time.
#[derive(Debug)]
struct NoAnswer {
    what: &'static str,
    limit: Duration,
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: etcd did not answer within {}",
            self.what,
            humantime::format_duration(self.limit)
        )
    }
}

impl std::error::Error for NoAnswer {}

/// An etcd client error, told in one short line: the client's own text
/// nests the whole transport chain with its Debug forms.
#[derive(Debug)]
pub struct EtcdFailure(etcd_client::Error);

impl std::fmt::Display for EtcdFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (head, mut source): (String, Option<&dyn std::error::Error>) = match &self.0 {
            etcd_client::Error::GRpcStatus(status) if !status.message().is_empty() => (
                status.message().to_string(),
                std::error::Error::source(status),
            ),
            etcd_client::Error::TransportError(err) => (
                "transport error".to_string(),
                std::error::Error::source(err),
            ),
            other => return write!(f, "{other}"),
        };
        // The innermost cause says what happened (connection refused, …).
        let mut innermost = None;
        while let Some(cause) = source {
            innermost = Some(cause);
            source = cause.source();
        }
        match innermost {
            Some(cause) => write!(f, "{head}: {cause}"),
            None => f.write_str(&head),
        }
    }
}

impl std::error::Error for EtcdFailure {}

/// Wraps an etcd client error for `anyhow`, keeping it classifiable.
pub fn etcd_failure(err: etcd_client::Error) -> anyhow::Error {
    anyhow::Error::new(EtcdFailure(err))
}

/// Whether `err` says etcd could not be reached (rather than that it
/// answered with a refusal or a value that does not parse).
pub fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        if cause.is::<NoAnswer>() {
            return true;
        }
        let client_error = cause
            .downcast_ref::<EtcdFailure>()
            .map(|failure| &failure.0)
            .or_else(|| cause.downcast_ref::<etcd_client::Error>());
        match client_error {
            Some(etcd_client::Error::GRpcStatus(status)) => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Unknown
            ),
            Some(etcd_client::Error::TransportError(_)) | Some(etcd_client::Error::IoError(_)) => {
                true
            }
            _ => false,
        }
    })
}

pub(crate) async fn bounded<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    bounded_by(OP_TIMEOUT, what, fut).await
}

async fn bounded_by<T>(
    limit: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(result) => result.map_err(|err| etcd_failure(err).context(what)),
        Err(_) => Err(anyhow::Error::new(NoAnswer { what, limit })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_one_short_line_and_stay_classifiable() {
        let mut status = tonic::Status::unavailable("tcp connect error");
        status.set_source(std::sync::Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let err = etcd_failure(etcd_client::Error::GRpcStatus(status)).context("asking etcd");
        assert_eq!(
            format!("{err:#}"),
            "asking etcd: tcp connect error: connection refused"
        );
        assert!(is_unreachable(&err));
        let refused = etcd_failure(etcd_client::Error::GRpcStatus(
            tonic::Status::permission_denied("etcdserver: permission denied"),
        ));
        assert_eq!(format!("{refused:#}"), "etcdserver: permission denied");
        assert!(!is_unreachable(&refused), "a refusal is an answer");
        assert!(is_unreachable(&anyhow::Error::new(NoAnswer {
            what: "asking etcd",
            limit: Duration::from_secs(1),
        })));
    }
}
