//! The userspace UDP overlay: a TUN device carrying the whole cluster
//! network, and a thread that moves packets between it and a UDP socket.
//! The rules live in [`core`]; this module is the I/O edge: one poll loop,
//! buffers allocated once, `sendmmsg`/`recvmmsg` to move up to a batch of
//! datagrams per system call.

pub mod core;

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use ipnetwork::Ipv4Network;

use crate::{DataplaneError, Netlink, Result};
pub use core::{accept_inbound, route_outbound, PeerMap};

/// Datagrams moved per system call at most.
const BATCH: usize = 32;
/// How often the loop looks at its stop flag when idle.
const POLL_MS: i32 = 200;
/// `TUNSETIFF`, from linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// What the overlay needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpOverlaySpec {
    pub tun_name: String,
    /// The underlay address and port peers send to.
    pub listen: SocketAddrV4,
    /// This node's subnet: inbound packets must be for it.
    pub own: Ipv4Network,
    /// The cluster network: the TUN device's route.
    pub network: Ipv4Network,
    pub mtu: u32,
}

/// Packet counters, for logs and tests.
#[derive(Debug, Default)]
pub struct UdpStats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub dropped: AtomicU64,
}

/// A running overlay; stopped and its device removed on drop.
pub struct UdpOverlay {
    own: Ipv4Network,
    peers: Arc<RwLock<PeerMap>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub stats: Arc<UdpStats>,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn open_tun(name: &str) -> Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(DataplaneError::Conflict(format!(
            "{name:?} is not a valid interface name"
        )));
    }
    let path = c"/dev/net/tun";
    // SAFETY: open with a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENODEV) => DataplaneError::Unsupported("tun"),
            _ => DataplaneError::Socket(err),
        });
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq lays out.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req) } < 0 {
        return Err(DataplaneError::Socket(std::io::Error::last_os_error()));
    }
    Ok(fd)
}

impl UdpOverlay {
    /// Creates the TUN device, gives it the subnet's base address with the
    /// network's prefix (so the kernel routes the whole network into it),
    /// binds the socket and starts the packet thread.
    pub async fn start(
        netlink: &Netlink,
        spec: &UdpOverlaySpec,
        peers: PeerMap,
    ) -> Result<UdpOverlay> {
        let tun = open_tun(&spec.tun_name)?;
        let link = netlink.link(&spec.tun_name).await?.ok_or_else(|| {
            DataplaneError::Conflict(format!("{} vanished after creation", spec.tun_name))
        })?;
        netlink
            .ensure_sole_ipv4(link.index, spec.own.network(), spec.network.prefix())
            .await?;
        netlink.set_up_with_mtu(link.index, spec.mtu).await?;
        let socket = UdpSocket::bind(spec.listen).map_err(DataplaneError::Socket)?;
        socket
            .set_nonblocking(true)
            .map_err(DataplaneError::Socket)?;

        let peers = Arc::new(RwLock::new(peers));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(UdpStats::default());
        let mut pump = Pump::new(
            File::from(tun),
            socket,
            spec.own,
            spec.mtu,
            peers.clone(),
            stats.clone(),
        );
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tartan-udp".into())
            .spawn(move || pump.run(&thread_stop))
            .map_err(DataplaneError::Socket)?;
        Ok(UdpOverlay {
            own: spec.own,
            peers,
            stop,
            thread: Some(thread),
            stats,
        })
    }

    /// The node subnet this overlay delivers to.
    pub fn own(&self) -> Ipv4Network {
        self.own
    }

    /// Replaces the peer map; the packet thread sees it from its next batch.
    pub fn set_peers(&self, peers: PeerMap) {
        match self.peers.write() {
            Ok(mut guard) => *guard = peers,
            Err(poisoned) => *poisoned.into_inner() = peers,
        }
    }
}

impl Drop for UdpOverlay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // Err only when the packet thread panicked, which the panic hook already reported.
            let _ = thread.join();
        }
    }
}

/// The packet thread's state: every buffer and header allocated once.
struct Pump {
    tun: File,
    socket: UdpSocket,
    own: Ipv4Network,
    peers: Arc<RwLock<PeerMap>>,
    stats: Arc<UdpStats>,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    addrs: Vec<libc::sockaddr_in>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside the headers point into buffers the Pump
// owns and never reallocates; it is used by one thread at a time.
unsafe impl Send for Pump {}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

impl Pump {
    fn new(
        tun: File,
        socket: UdpSocket,
        own: Ipv4Network,
        mtu: u32,
        peers: Arc<RwLock<PeerMap>>,
        stats: Arc<UdpStats>,
    ) -> Pump {
        // Room for anything a peer with a larger MTU might send.
        let size = (mtu as usize).max(1500) + 128;
        let mut pump = Pump {
            tun,
            socket,
            own,
            peers,
            stats,
            bufs: vec![vec![0u8; size]; BATCH],
            lens: vec![0; BATCH],
            addrs: vec![sockaddr(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)); BATCH],
            iovecs: Vec::with_capacity(BATCH),
            headers: Vec::with_capacity(BATCH),
        };
        for i in 0..BATCH {
            pump.iovecs.push(libc::iovec {
                iov_base: pump.bufs[i].as_mut_ptr().cast(),
                iov_len: size,
            });
        }
        for i in 0..BATCH {
            // SAFETY: an all-zero mmsghdr is a valid empty header.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            header.msg_hdr.msg_iov = &mut pump.iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_name = (&mut pump.addrs[i] as *mut libc::sockaddr_in).cast();
            header.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            pump.headers.push(header);
        }
        pump
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut fds = [
            libc::pollfd {
                fd: self.tun.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: poll on two valid descriptors.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_MS) };
            if ready <= 0 {
                continue;
            }
            if fds[0].revents & libc::POLLIN != 0 {
                self.tun_to_peers();
            }
            if fds[1].revents & libc::POLLIN != 0 {
                self.peers_to_tun();
            }
        }
    }

    /// Reads up to a batch of packets from the TUN device and sends them with one sendmmsg.
    fn tun_to_peers(&mut self) {
        let mut count = 0;
        let peers = match self.peers.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut dropped = 0;
        while count < BATCH {
            let n = match self.tun.read(&mut self.bufs[count]) {
                Ok(n) => n,
                Err(_) => break,
            };
            match route_outbound(&self.bufs[count][..n], &peers) {
                Ok(peer) => {
                    self.addrs[count] = sockaddr(peer);
                    self.iovecs[count].iov_len = n;
                    self.headers[count].msg_hdr.msg_namelen =
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    count += 1;
                }
                Err(_) => dropped += 1,
            }
        }
        drop(peers);
        self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        if count == 0 {
            return;
        }
        // SAFETY: the first `count` headers point at filled buffers and addresses.
        let sent = unsafe {
            libc::sendmmsg(
                self.socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                count as u32,
                0,
            )
        };
        let sent = u64::try_from(sent).unwrap_or(0);
        self.stats.sent.fetch_add(sent, Ordering::Relaxed);
        self.stats
            .dropped
            .fetch_add(count as u64 - sent.min(count as u64), Ordering::Relaxed);
    }

    /// Receives up to a batch of datagrams with one recvmmsg and writes the
    /// packets that are for this node to the TUN device.
    fn peers_to_tun(&mut self) {
        let size = self.bufs[0].len();
        for i in 0..BATCH {
            self.iovecs[i].iov_len = size;
            self.headers[i].msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        }
        // SAFETY: every header points at a buffer of `size` bytes and an address slot.
        let received = unsafe {
            libc::recvmmsg(
                self.socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let Ok(received) = usize::try_from(received) else {
            return;
        };
        for i in 0..received {
            self.lens[i] = self.headers[i].msg_len as usize;
        }
        let mut delivered = 0;
        for i in 0..received {
            let packet = &self.bufs[i][..self.lens[i]];
            let truncated = self.headers[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            if !truncated && accept_inbound(packet, &self.own).is_ok() {
                // SAFETY: writing a filled buffer to our TUN descriptor.
                let written = unsafe {
                    libc::write(self.tun.as_raw_fd(), packet.as_ptr().cast(), packet.len())
                };
                if written > 0 {
                    delivered += 1;
                    continue;
                }
            }
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.received.fetch_add(delivered, Ordering::Relaxed);
    }
}
