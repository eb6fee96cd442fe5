//! The netlink handle: cheap to clone, bound to one network namespace.

use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
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
    /// the socket registers with its reactor and the connection is driven by
    /// a task spawned on it; without one this is an error, not a panic.
    pub fn connect() -> Result<Netlink> {
        let runtime = current_runtime()?;
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(DataplaneError::Socket)?;
        runtime.spawn(connection);
        Ok(Netlink { handle })
    }

    /// Connects inside the network namespace at `path` (e.g. `/run/netns/NAME`
    /// or `/proc/PID/ns/net`).
    ///
    /// A netlink socket belongs to the namespace it was created in, so the
    /// socket is created on a short-lived thread that has entered the
    /// namespace; that thread exits afterwards, and no tokio worker ever
    /// changes namespace. The socket is then registered with the runtime here.
    ///
    /// Only the plain `netlink_sys::Socket` is made on that thread, not
    /// `rtnetlink::new_connection()`: the latter registers the descriptor
    /// with the *current* runtime's reactor at creation, so on a bare thread
    /// it would panic, and under a throw-away runtime it would be tied to a
    /// reactor that dies with that runtime.
    pub async fn connect_in_netns(path: &Path) -> Result<Netlink> {
        let runtime = current_runtime()?;
        let fd = run_in_netns(path, socket_in_netns).await?;
        Ok(Netlink::over(&runtime, fd))
    }

    /// [`Netlink::connect_in_netns`] for each of `paths`, in order: one
    /// short-lived thread enters each namespace in turn (listing every
    /// container's addresses takes one thread, not one per container).
    /// A namespace that cannot be entered fails alone.
    pub async fn connect_in_each_netns(paths: &[PathBuf]) -> Result<Vec<Result<Netlink>>> {
        let runtime = current_runtime()?;
        let owned = paths.to_vec();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("tartan-netns".into())
            .spawn(move || {
                let sockets: Vec<Result<OwnedFd>> = owned
                    .iter()
                    .map(|path| enter_netns(path).and_then(|()| socket_in_netns(path)))
                    .collect();
                // The receiver gone means the caller gave up; the sockets close here.
                let _ = tx.send(sockets);
            });
        let thread_failed = |source| DataplaneError::EnterNetns {
            path: paths.first().cloned().unwrap_or_default(),
            source,
        };
        spawned.map_err(thread_failed)?;
        let sockets = rx
            .await
            .map_err(|_| thread_failed(std::io::Error::other("namespace thread died")))?;
        Ok(sockets
            .into_iter()
            .map(|fd| fd.map(|fd| Netlink::over(&runtime, fd)))
            .collect())
    }

    /// A handle over a netlink socket made elsewhere, driven on `runtime`.
    fn over(runtime: &tokio::runtime::Handle, fd: OwnedFd) -> Netlink {
        // SAFETY: the descriptor is a netlink socket we own; TokioSocket takes
        // it over and registers it with this runtime's reactor. It is already
        // non-blocking, so the only step of from_raw_fd that can still fail
        // (it unwraps) is that registration, i.e. epoll out of memory.
        let socket = unsafe { TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        runtime.spawn(connection);
        Netlink { handle }
    }
}

/// Runs `work` on a short-lived thread that has entered the network
/// namespace at `path`, so that no tokio worker ever changes namespace.
/// `work` gets the path for its own errors.
pub(crate) async fn run_in_netns<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce(&Path) -> Result<T> + Send + 'static,
) -> Result<T> {
    let path: PathBuf = path.to_path_buf();
    let thread_path = path.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("tartan-netns".into())
        .spawn(move || {
            let result = enter_netns(&thread_path).and_then(|()| work(&thread_path));
            // The receiver gone means the caller gave up; what was made closes here.
            let _ = tx.send(result);
        })
        .map_err(|source| DataplaneError::EnterNetns {
            path: path.clone(),
            source,
        })?;
    rx.await.map_err(|_| DataplaneError::EnterNetns {
        path,
        source: std::io::Error::other("namespace thread died"),
    })?
}

/// Moves the calling thread into the network namespace at `path`.
fn enter_netns(path: &Path) -> Result<()> {
    let enter_err = |source| DataplaneError::EnterNetns {
        path: path.to_path_buf(),
        source,
    };
    // O_NONBLOCK: a FIFO at `path` must fail in setns, not hang this open.
    let ns = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(enter_err)?;
    // SAFETY: setns on a valid descriptor; it changes only this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(enter_err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs on a thread inside the namespace: opens the socket there.
fn socket_in_netns(_path: &Path) -> Result<OwnedFd> {
    let socket = Socket::new(NETLINK_ROUTE).map_err(DataplaneError::Socket)?;
    socket
        .set_non_blocking(true)
        .map_err(DataplaneError::Socket)?;
    // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(socket.into_raw_fd()) })
}

/// The runtime to drive the connection on; rtnetlink would panic without one.
fn current_runtime() -> Result<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|_| DataplaneError::NoRuntime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connecting_without_a_runtime_is_an_error_not_a_panic() {
        assert!(matches!(Netlink::connect(), Err(DataplaneError::NoRuntime)));
        let elsewhere =
            futures::executor::block_on(Netlink::connect_in_netns(Path::new("/proc/self/ns/net")));
        assert!(matches!(elsewhere, Err(DataplaneError::NoRuntime)));
    }
}
