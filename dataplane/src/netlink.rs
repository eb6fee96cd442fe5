//! The netlink handle: cheap to clone, bound to one network namespace.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use netlink_sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};

use crate::{DataplaneError, Result};

/// A route-netlink connection. Clones share the socket.
#[derive(Clone)]
pub struct Netlink {
    pub(crate) handle: rtnetlink::Handle,
}

impl Netlink {
    /// Connects in the caller's network namespace. Needs a tokio runtime:
    /// the connection is driven by a task spawned on it.
    pub fn connect() -> Result<Netlink> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(DataplaneError::Socket)?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// Connects inside the network namespace at `path` (e.g. `/run/netns/NAME`
    /// or `/proc/PID/ns/net`).
    ///
    /// A netlink socket belongs to the namespace it was created in, so the
    /// socket is created on a short-lived thread that has entered the
    /// namespace; that thread exits afterwards, and no tokio worker ever
    /// changes namespace. The socket is then registered with the runtime here.
    pub async fn connect_in_netns(path: &Path) -> Result<Netlink> {
        let path: PathBuf = path.to_path_buf();
        let thread_path = path.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("tartan-netns".into())
            .spawn(move || {
                let _ = tx.send(socket_in_netns(&thread_path));
            })
            .map_err(|source| DataplaneError::EnterNetns {
                path: path.clone(),
                source,
            })?;
        let fd = rx.await.map_err(|_| DataplaneError::EnterNetns {
            path: path.clone(),
            source: std::io::Error::other("namespace thread died"),
        })??;
        // SAFETY: the descriptor is a netlink socket we own; TokioSocket takes
        // it over, makes it non-blocking and registers it with this runtime.
        let socket = unsafe { TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }
}

/// Runs on a dedicated thread: enter the namespace, open the socket there.
fn socket_in_netns(path: &Path) -> Result<OwnedFd> {
    let enter_err = |source| DataplaneError::EnterNetns {
        path: path.to_path_buf(),
        source,
    };
    let ns = std::fs::File::open(path).map_err(enter_err)?;
    // SAFETY: setns on a valid descriptor; it changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(enter_err(std::io::Error::last_os_error()));
    }
    let socket = Socket::new(NETLINK_ROUTE).map_err(DataplaneError::Socket)?;
    // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
}
