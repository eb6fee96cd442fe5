//! The node's changing facts, published to their consumers as
//! `tokio::sync::watch` values: the control plane is the only writer, and
//! the dataplane, the API and the containers watch what they need.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ipnetwork::Ipv4Network;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::control::acquire::HeldLease;
use crate::control::config::NetworkConfig;
use crate::control::lease::Lease;

/// This node's lease as the agent holds it.
#[derive(Debug, Clone)]
pub struct NodeLease {
    pub lease: HeldLease,
    /// None for a reservation, which never expires.
    pub expires_at: Option<SystemTime>,
}

/// What the control plane knows of the node and its peers.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    /// None until a valid config has been read.
    pub config: Option<Arc<NetworkConfig>>,
    /// None until a lease is held.
    pub lease: Option<NodeLease>,
    /// None until the first full listing of the leases, so that nothing is
    /// withdrawn on a restart before it could be confirmed.
    pub peers: Option<Arc<Vec<Lease>>>,
}

impl NodeState {
    pub fn subnet(&self) -> Option<Ipv4Network> {
        self.lease.as_ref().map(|l| l.lease.subnet)
    }
}

/// How the agent's last exchanges with etcd went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdHealth {
    /// Nothing asked yet.
    Unknown,
    Reachable,
    Unreachable {
        since: Instant,
        error: String,
    },
}

impl EtcdHealth {
    pub fn is_reachable(&self) -> bool {
        matches!(self, EtcdHealth::Reachable)
    }
}

/// Collects every etcd success and failure into one health value, and logs
/// an outage as it starts, regularly while it lasts, and when it ends.
#[derive(Clone)]
pub struct EtcdMonitor {
    health: watch::Sender<EtcdHealth>,
}

impl Default for EtcdMonitor {
    fn default() -> Self {
        EtcdMonitor {
            health: watch::Sender::new(EtcdHealth::Unknown),
        }
    }
}

impl EtcdMonitor {
    pub fn subscribe(&self) -> watch::Receiver<EtcdHealth> {
        self.health.subscribe()
    }

    pub fn current(&self) -> EtcdHealth {
        self.health.borrow().clone()
    }

    /// An exchange with etcd succeeded.
    pub fn reachable(&self) {
        let mut outage = None;
        self.health.send_if_modified(|health| {
            if let EtcdHealth::Unreachable { since, .. } = health {
                outage = Some(since.elapsed());
            }
            let changed = !health.is_reachable();
            *health = EtcdHealth::Reachable;
            changed
        });
        if let Some(lasted) = outage {
            info!(
                outage = %humantime::format_duration(whole_seconds(lasted)),
                "etcd is reachable again"
            );
        }
    }

    /// An exchange with etcd failed for want of etcd (not for a bad answer).
    pub fn unreachable(&self, error: &anyhow::Error) {
        let error = format!("{error:#}");
        let mut started = false;
        self.health.send_if_modified(|health| match health {
            EtcdHealth::Unreachable { error: last, .. } => {
                // The outage goes on; only a new cause is worth telling.
                if *last != error {
                    *last = error.clone();
                }
                false
            }
            _ => {
                started = true;
                *health = EtcdHealth::Unreachable {
                    since: Instant::now(),
                    error: error.clone(),
                };
                true
            }
        });
        if started {
            warn!(error = %error, "etcd is unreachable");
        }
    }

    /// Logs, every `interval` while etcd stays unreachable, how long it has
    /// been out and why. Runs until the monitor goes.
    pub async fn report_outages(self, interval: Duration) {
        let mut health = self.subscribe();
        loop {
            let out_since = match &*health.borrow_and_update() {
                EtcdHealth::Unreachable { since, .. } => Some(*since),
                _ => None,
            };
            match out_since {
                None => {
                    if health.changed().await.is_err() {
                        return;
                    }
                }
                Some(since) => {
                    tokio::select! {
                        changed = health.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep(interval) => {
                            if let EtcdHealth::Unreachable { since: now_since, error } = &*health.borrow() {
                                if *now_since == since {
                                    warn!(
                                        out_for = %humantime::format_duration(whole_seconds(since.elapsed())),
                                        error = %error,
                                        "etcd is still unreachable"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn whole_seconds(duration: Duration) -> Duration {
    Duration::from_secs(duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_starts_once_and_ends_with_a_success() {
        let monitor = EtcdMonitor::default();
        let mut health = monitor.subscribe();
        assert_eq!(monitor.current(), EtcdHealth::Unknown);
        monitor.unreachable(&anyhow::anyhow!("connection refused"));
        assert!(health.has_changed().unwrap_or(false));
        let since = match health.borrow_and_update().clone() {
            EtcdHealth::Unreachable { since, error } => {
                assert_eq!(error, "connection refused");
                since
            }
            other => panic!("expected an outage, got {other:?}"),
        };
        monitor.unreachable(&anyhow::anyhow!("deadline exceeded"));
        assert!(
            !health.has_changed().unwrap_or(true),
            "the same outage is not news"
        );
        match monitor.current() {
            EtcdHealth::Unreachable {
                since: again,
                error,
            } => {
                assert_eq!(again, since, "the outage keeps its start");
                assert_eq!(error, "deadline exceeded", "the latest cause is kept");
            }
            other => panic!("expected an outage, got {other:?}"),
        }
        monitor.reachable();
        assert!(health.has_changed().unwrap_or(false));
        assert!(monitor.current().is_reachable());
    }
}
