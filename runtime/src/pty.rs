//! Terminals for containers. A container's terminal comes from its own
//! devpts instance (mounted with `newinstance`), so that inside it `tty`
//! names it (`/dev/pts/0`) and `/dev/pts` lists it, as in Docker.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::io_err;
use crate::{Result, RuntimeError};

fn os_error(op: &'static str, path: &Path) -> RuntimeError {
    RuntimeError::Io {
        op,
        path: path.to_path_buf(),
        source: std::io::Error::last_os_error(),
    }
}

/// A new terminal of the devpts instance whose multiplexer is `ptmx`:
/// (master, slave), both close-on-exec. The slave is opened through the
/// master (TIOCGPTPEER), not by a name that might resolve elsewhere.
pub fn open_in(ptmx: &Path) -> Result<(OwnedFd, OwnedFd)> {
    let master: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(ptmx)
        .map_err(io_err("opening a terminal at", ptmx))?
        .into();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK with a pointer to an int we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(os_error("unlocking the terminal at", ptmx));
    }
    // SAFETY: TIOCGPTPEER returns a new descriptor we then own.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(os_error(
            "opening the terminal's other side (TIOCGPTPEER, Linux 4.13) at",
            ptmx,
        ));
    }
    // SAFETY: a fresh descriptor from TIOCGPTPEER.
    Ok((master, unsafe { OwnedFd::from_raw_fd(slave) }))
}

/// Makes `slave` this process's controlling terminal in a new session, and
/// its standard input, output and error.
pub fn take_as_controlling(slave: &OwnedFd) -> Result<()> {
    // SAFETY: setsid, TIOCSCTTY and dup2 on descriptors we own.
    unsafe {
        libc::setsid();
        if libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) != 0 {
            return Err(os_error(
                "making the terminal controlling:",
                Path::new("TIOCSCTTY"),
            ));
        }
        for target in 0..3 {
            libc::dup2(slave.as_raw_fd(), target as RawFd);
        }
    }
    Ok(())
}

/// Bind-mounts the terminal `slave` over `/dev/console` of the current root, as Docker does with `-t`.
pub fn mount_console(slave: &OwnedFd) -> Result<()> {
    let console = Path::new("/dev/console");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(console)
        .map_err(io_err("creating", console))?;
    let source = PathBuf::from(format!("/proc/self/fd/{}", slave.as_raw_fd()));
    let c_source = std::ffi::CString::new(source.as_os_str().as_encoded_bytes())
        .map_err(|_| RuntimeError::Protocol("a descriptor path with a NUL".into()))?;
    // SAFETY: bind mount between two NUL-terminated paths.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c"/dev/console".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(os_error("mounting the terminal on", console));
    }
    Ok(())
}

/// Sends `fd` over the unix socket `socket`.
pub fn send_fd(socket: &OwnedFd, fd: &OwnedFd) -> Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a msghdr over buffers we own; the control message is filled
    // through the CMSG macros within `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd.as_raw_fd());
        if libc::sendmsg(socket.as_raw_fd(), &msg, 0) != 1 {
            return Err(os_error("passing the terminal over", Path::new("a socket")));
        }
    }
    Ok(())
}

/// Receives a descriptor sent with `send_fd`; `None` when the other side
/// closed the socket without sending one.
pub fn recv_fd(socket: &OwnedFd) -> Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a msghdr over buffers we own; the control message is read
    // through the CMSG macros within `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = loop {
            let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break n;
            }
        };
        if n < 0 {
            return Err(os_error(
                "receiving the terminal over",
                Path::new("a socket"),
            ));
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if n == 0
            || cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// A pair of connected unix sockets, close-on-exec.
pub fn socket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills two descriptors we then own.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(os_error("creating", Path::new("a socket pair")));
    }
    // SAFETY: fresh descriptors from socketpair.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminal_passes_over_a_socket() {
        let Ok((master, slave)) = open_in(Path::new("/dev/ptmx")) else {
            panic!("no terminal could be opened at /dev/ptmx");
        };
        let (ours, theirs) = socket_pair().expect("socketpair");
        send_fd(&theirs, &master).expect("send");
        drop(theirs);
        let received = recv_fd(&ours).expect("recv").expect("a descriptor");
        // SAFETY: write to the slave, read from the received master.
        unsafe {
            assert_eq!(libc::write(slave.as_raw_fd(), b"x".as_ptr().cast(), 1), 1);
            let mut byte = [0u8; 1];
            assert_eq!(
                libc::read(received.as_raw_fd(), byte.as_mut_ptr().cast(), 1),
                1
            );
            assert_eq!(&byte, b"x");
        }
        assert!(
            recv_fd(&ours).expect("recv").is_none(),
            "closed: nothing more"
        );
    }
}
