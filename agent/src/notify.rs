//! systemd's readiness protocol (`Type=notify`): one datagram to `$NOTIFY_SOCKET`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use anyhow::{Context, Result};

/// What systemd hands the service itself: its notify socket, its socket
/// activation and its watchdog. A child that inherited them could report
/// for the agent (or claim its sockets), so children are started without.
pub const SERVICE_VARIABLES: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// `command` without the service's own variables.
pub fn without_service_variables(
    command: &mut tokio::process::Command,
) -> &mut tokio::process::Command {
    for name in SERVICE_VARIABLES {
        command.env_remove(name);
    }
    command
}

/// Sends `state` (e.g. "READY=1") to systemd; does nothing when not run by systemd.
pub fn notify(state: &str) -> Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    }
    .with_context(|| format!("NOTIFY_SOCKET {path:?} is not a socket address"))?;
    let socket = UnixDatagram::unbound().context("creating the notify socket")?;
    socket
        .send_to_addr(state.as_bytes(), &addr)
        .with_context(|| format!("notifying systemd at {path}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_started_without_the_service_variables() {
        let mut command = tokio::process::Command::new("true");
        without_service_variables(&mut command);
        let removed: Vec<String> = command
            .as_std()
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key.to_string_lossy().into_owned())
            .collect();
        for name in ["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "WATCHDOG_USEC"] {
            assert!(removed.iter().any(|r| r == name), "{name}: {removed:?}");
        }
    }

    #[test]
    fn sends_the_state_to_the_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        // The variable is process-wide; this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1").expect("notify");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
