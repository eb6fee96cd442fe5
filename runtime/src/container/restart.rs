//! Restart policies (`run --restart`), applied by the container's
//! supervisor so that they hold while the agent is down.
//!
//! The supervisor keeps the container's network namespace open and, when
//! the policy says so, runs the command again in new mount, PID, UTS and
//! IPC namespaces that join it: the interfaces, addresses, published ports
//! and attachments the agent made at the start stay in place, as Docker
//! keeps a container's network sandbox across its restarts.
//!
//! Two files beside the container's records carry the policy's state:
//! `restart.json` (how often it was restarted, and whether it waits to be)
//! and `stopped` (an operator stopped it: no restart until the next start).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{read_json, write_json, ContainerDir};
use crate::error::io_err;
use crate::Result;

/// Docker's back-off: 100 ms, doubled at each restart up to a minute, and
/// back to 100 ms once the container ran for 10 seconds.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(60);
const RESET_AFTER: Duration = Duration::from_secs(10);

/// `--restart`, as Docker spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    /// Only after a non-zero exit; `max_retries` 0 is no limit.
    OnFailure {
        max_retries: u32,
    },
    UnlessStopped,
}

impl RestartPolicy {
    /// Docker's `Name`.
    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure { .. } => "on-failure",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }

    /// Docker's `MaximumRetryCount`.
    pub fn max_retries(&self) -> u32 {
        match self {
            RestartPolicy::OnFailure { max_retries } => *max_retries,
            _ => 0,
        }
    }

    /// Whether a process that ended with `code`, after `restarts` restarts,
    /// runs again (Docker's restart manager). A stop by the operator ends it.
    pub fn restarts_after(&self, code: i32, restarts: u32, stopped: bool) -> bool {
        if stopped {
            return false;
        }
        match self {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max_retries } => {
                code != 0 && (*max_retries == 0 || restarts < *max_retries)
            }
        }
    }
}

/// The growing delay between restarts.
#[derive(Debug, Default)]
pub struct Backoff {
    delay: Duration,
}

impl Backoff {
    /// The delay before the next restart of a process that ran for `ran`.
    pub fn next(&mut self, ran: Duration) -> Duration {
        if ran >= RESET_AFTER {
            self.delay = Duration::ZERO;
        }
        self.delay = if self.delay.is_zero() {
            FIRST_DELAY
        } else {
            (self.delay * 2).min(MAX_DELAY)
        };
        self.delay
    }
}

/// `restart.json`: written by the supervisor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// Restarts since the container was last started (Docker's `RestartCount`).
    pub count: u32,
    /// Waiting out the back-off: the process has ended and will run again.
    pub restarting: bool,
}

impl ContainerDir {
    fn restart_path(&self) -> std::path::PathBuf {
        self.path().join("restart.json")
    }
    fn stopped_path(&self) -> std::path::PathBuf {
        self.path().join("stopped")
    }
    fn started_path(&self) -> std::path::PathBuf {
        self.path().join("started")
    }

    /// Absent before the first restart.
    pub fn read_restart(&self) -> RestartRecord {
        read_json(&self.restart_path()).unwrap_or_default()
    }
    pub fn write_restart(&self, record: &RestartRecord) -> Result<()> {
        write_json(&self.restart_path(), record, false)
    }

    /// Records that the operator stopped the container; it stays (on disk)
    /// until the next start, so that `unless-stopped` survives a reboot.
    pub fn mark_stopped(&self) -> Result<()> {
        let path = self.stopped_path();
        std::fs::write(&path, b"").map_err(io_err("writing", &path))
    }
    pub fn stopped_by_operator(&self) -> bool {
        self.stopped_path().exists()
    }

    /// Records that a start was asked for; it stays until the container is
    /// removed. A start cut short (the agent or the host going down between
    /// forgetting the last run and the new process) leaves neither a state nor
    /// an exit behind, and only this tells it from a container never started.
    pub fn mark_started(&self) -> Result<()> {
        let path = self.started_path();
        std::fs::write(&path, b"").map_err(io_err("writing", &path))
    }
    pub fn started_before(&self) -> bool {
        self.started_path().exists()
    }

    /// Before a start: no stop, no restarts counted.
    pub fn clear_restart(&self) -> Result<()> {
        for path in [self.stopped_path(), self.restart_path()] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io_err("removing", &path)(err)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_restart_as_dockers() {
        let on_failure = RestartPolicy::OnFailure { max_retries: 2 };
        assert!(!RestartPolicy::No.restarts_after(1, 0, false));
        assert!(RestartPolicy::Always.restarts_after(0, 99, false));
        assert!(RestartPolicy::UnlessStopped.restarts_after(0, 0, false));
        assert!(!RestartPolicy::Always.restarts_after(1, 0, true));
        assert!(on_failure.restarts_after(3, 1, false));
        assert!(!on_failure.restarts_after(3, 2, false));
        assert!(!on_failure.restarts_after(0, 0, false));
        let unlimited = RestartPolicy::OnFailure { max_retries: 0 };
        assert!(unlimited.restarts_after(1, 1000, false));
    }

    #[test]
    fn the_backoff_doubles_to_a_minute_and_resets_after_ten_seconds() {
        let mut backoff = Backoff::default();
        let quick = Duration::from_millis(5);
        let delays: Vec<u128> = (0..4).map(|_| backoff.next(quick).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800]);
        for _ in 0..20 {
            backoff.next(quick);
        }
        assert_eq!(backoff.next(quick), MAX_DELAY);
        assert_eq!(backoff.next(Duration::from_secs(10)), FIRST_DELAY);
    }

    #[test]
    fn records_round_trip_and_older_ones_have_no_policy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let container = ContainerDir::new(dir.path());
        assert_eq!(container.read_restart(), RestartRecord::default());
        let record = RestartRecord {
            count: 3,
            restarting: true,
        };
        container.write_restart(&record).expect("write");
        assert_eq!(container.read_restart(), record);
        container.mark_stopped().expect("mark");
        assert!(container.stopped_by_operator());
        container.clear_restart().expect("clear");
        assert!(!container.stopped_by_operator());
        assert_eq!(container.read_restart().count, 0);
        let policy: RestartPolicy =
            serde_json::from_str(r#"{"on-failure":{"max_retries":5}}"#).expect("json");
        assert_eq!(policy.max_retries(), 5);
    }
}
