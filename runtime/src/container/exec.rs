//! `tartan exec`: a new process inside a running container. The caller
//! forks; the child joins the container's namespaces (the mount namespace
//! last, since it changes what `/proc` means) and forks again, because only
//! children of a process that joined a PID namespace are inside it. The
//! grandchild takes the container's privileges and execs the command.
//!
//! The child joins the container's cgroups before that second fork, so
//! the command is under the container's limits (a fork beyond
//! `--pids-limit` fails), as Docker's exec is; once the command exists
//! the child goes back to the caller's cgroups, so that an exec counts
//! one process against the limit, as in Docker.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::init::{exec_command, failure_code};
use crate::security::{Privileges, Security};
use crate::{Result, RuntimeError};

/// What to run, and in which container.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The container's first process, in the caller's PID namespace.
    pub pid: u32,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// Give the process a terminal of its own, wired to the caller's.
    pub tty: bool,
    /// Pass the caller's standard input on (otherwise /dev/null).
    pub interactive: bool,
    /// The container's (capabilities, seccomp, `no_new_privs`), as `run` set them.
    pub security: Security,
    /// The container's user (`-u` or the image's), resolved in its files; empty for root.
    pub user: String,
}

/// The namespaces joined, in order.
const NAMESPACES: [(&str, libc::c_int); 5] = [
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
];

fn last_error(op: &'static str) -> RuntimeError {
    RuntimeError::Io {
        op,
        path: "exec".into(),
        source: std::io::Error::last_os_error(),
    }
}

/// Runs the command in the container and returns its exit code. Must be
/// called from a process with a single thread: it forks.
pub fn exec_in(spec: &ExecSpec) -> Result<i32> {
    if spec.args.is_empty() {
        return Err(RuntimeError::Protocol("exec needs a command".into()));
    }
    // Compiled here, so that a bad profile is an error before anything forks.
    let privileges = spec.security.privileges()?;
    let mut namespaces = Vec::new();
    for (name, flag) in NAMESPACES {
        let path = format!("/proc/{}/ns/{name}", spec.pid);
        let file = File::open(&path).map_err(|source| RuntimeError::Io {
            op: "the container is not running:",
            path: path.into(),
            source,
        })?;
        namespaces.push((file, flag));
    }
    // `ip netns exec` gives its program a /sys without cgroupfs.
    crate::cgroups::mount::mount_privately_if_missing()?;
    let cgroups = Cgroups {
        container: open_procs(crate::cgroups::procs_files_of(spec.pid)?)?,
        // Best effort: a waiter that cannot go back only counts against the limit.
        // SAFETY: getpid cannot fail.
        caller: crate::cgroups::procs_files_of(unsafe { libc::getpid() } as u32)
            .and_then(open_procs)
            .unwrap_or_default(),
    };
    let terminal = if spec.tty {
        Some(open_terminal(spec.pid)?)
    } else {
        None
    };
    // SAFETY: the caller guarantees a single thread, so the child may allocate.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(last_error("fork"));
    }
    if child == 0 {
        let code = enter_and_run(
            spec,
            &privileges,
            &cgroups,
            &namespaces,
            terminal.as_ref().map(|(_, slave)| slave),
        );
        // SAFETY: leave the child without unwinding into the caller.
        unsafe { libc::_exit(code) };
    }
    drop(namespaces);
    drop(cgroups);
    if let Some((master, slave)) = terminal {
        drop(slave);
        relay_terminal(&master, spec.interactive);
    }
    let mut status = 0;
    loop {
        // SAFETY: reaping our own child.
        let rc = unsafe { libc::waitpid(child, &mut status, 0) };
        if rc == child {
            return Ok(super::exit_code(status));
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(last_error("waitpid"));
        }
    }
}

/// A terminal from the container's own devpts instance, reached through
/// its root, so that inside it the command sees it (`/dev/pts/N`); it gets
/// the size of ours.
fn open_terminal(pid: u32) -> Result<(OwnedFd, OwnedFd)> {
    let ptmx = format!("/proc/{pid}/root/dev/pts/ptmx");
    let (master, slave) = crate::pty::open_in(std::path::Path::new(&ptmx))?;
    copy_window_size(master.as_raw_fd());
    Ok((master, slave))
}

/// The `cgroup.procs` files the first child moves itself with, opened
/// while the caller's cgroupfs is still in view.
struct Cgroups {
    container: Vec<File>,
    caller: Vec<File>,
}

fn open_procs(paths: Vec<std::path::PathBuf>) -> Result<Vec<File>> {
    paths
        .into_iter()
        .map(|path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(crate::error::io_err("opening the container's cgroup", path))
        })
        .collect()
}

/// Moves the calling process into the cgroups (`0` is the writer itself).
fn join(procs: &[File]) -> std::io::Result<()> {
    for mut file in procs {
        file.write_all(b"0")?;
    }
    Ok(())
}

/// In the first child: join, fork into the PID namespace, wait, pass the code on.
fn enter_and_run(
    spec: &ExecSpec,
    privileges: &Privileges,
    cgroups: &Cgroups,
    namespaces: &[(File, libc::c_int)],
    slave: Option<&OwnedFd>,
) -> i32 {
    if let Err(err) = join(&cgroups.container) {
        eprintln!("tartan: joining the container's cgroup: {err}");
        return 126;
    }
    for (file, flag) in namespaces {
        // SAFETY: setns on a namespace file we opened.
        if unsafe { libc::setns(file.as_raw_fd(), *flag) } != 0 {
            eprintln!(
                "tartan: joining the container's namespaces: {}",
                std::io::Error::last_os_error()
            );
            return 126;
        }
    }
    // SAFETY: still one thread.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EAGAIN) {
            eprintln!("tartan: the container cannot have another process (its --pids-limit is reached): {err}");
        } else {
            eprintln!("tartan: starting the command in the container: {err}");
        }
        return 126;
    }
    if pid == 0 {
        // SAFETY: leave without returning into the caller.
        unsafe { libc::_exit(run_inside(spec, privileges, slave)) };
    }
    // The command is in the container's cgroups; this waiter need not count there.
    let _ = join(&cgroups.caller);
    let mut status = 0;
    // SAFETY: reaping our own child.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 126;
        }
    }
    super::exit_code(status)
}

fn run_inside(spec: &ExecSpec, privileges: &Privileges, slave: Option<&OwnedFd>) -> i32 {
    match slave {
        Some(slave) => {
            if let Err(err) = crate::pty::take_as_controlling(slave) {
                eprintln!("tartan: {}", crate::init::describe(&err));
                return 126;
            }
        }
        None if !spec.interactive => {
            if let Ok(null) = File::open("/dev/null") {
                // SAFETY: dup2 onto stdin.
                unsafe { libc::dup2(null.as_raw_fd(), 0) };
            }
        }
        None => {}
    }
    if let Err(err) = std::env::set_current_dir(&spec.cwd) {
        eprintln!("tartan: changing to {}: {err}", spec.cwd);
        return 126;
    }
    // Inside the container's mount namespace: its own passwd and group files.
    let identity = match spec.user.as_str() {
        "" => None,
        user => match crate::user::resolve_in_root(user) {
            Ok(identity) => Some(identity),
            Err(err) => {
                eprintln!("tartan: {err}");
                return 126;
            }
        },
    };
    if let Err(err) = privileges.apply() {
        eprintln!("tartan: {err}");
        return 126;
    }
    if let Some(identity) = &identity {
        if let Err(err) = crate::user::switch_to(identity) {
            eprintln!("tartan: {err}");
            return 126;
        }
    }
    let env = crate::init::with_home(&spec.env, identity.as_ref());
    // SAFETY: closes every descriptor above stderr before the command runs.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let err = exec_command(&spec.args, &env);
    eprintln!("tartan: {}", crate::init::describe(&err));
    failure_code(&err)
}

/// Copies between the caller's terminal and the process's until the
/// process closes it, with the caller's terminal in raw mode meanwhile.
fn relay_terminal(master: &OwnedFd, interactive: bool) {
    let raw = RawMode::enable(0);
    let winch = window_changes();
    let mut buf = vec![0u8; 32 * 1024];
    let mut stdin_open = interactive;
    loop {
        let mut fds = vec![libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let winch_slot = fds.len();
        if let Some(winch) = &winch {
            fds.push(libc::pollfd {
                fd: winch.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if stdin_open {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: poll over pollfds we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if fds[0].revents != 0 {
            // SAFETY: read into a buffer we own.
            let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            if write_all(1, &buf[..n as usize]).is_err() {
                break;
            }
        }
        if let Some(winch) = winch.as_ref().filter(|_| fds[winch_slot].revents != 0) {
            let mut info = [0u8; 128];
            // SAFETY: read one signalfd_siginfo into a buffer of its size.
            unsafe { libc::read(winch.as_raw_fd(), info.as_mut_ptr().cast(), info.len()) };
            copy_window_size(master.as_raw_fd());
        }
        let stdin_slot = fds.len() - 1;
        if stdin_open && fds[stdin_slot].revents != 0 {
            // SAFETY: read into a buffer we own.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                stdin_open = false;
            } else if write_all(master.as_raw_fd(), &buf[..n as usize]).is_err() {
                break;
            }
        }
    }
    drop(raw);
}

/// SIGWINCH as a descriptor to poll, so that the relay can pass a resized
/// terminal on; `None` when that cannot be set up (the size stays as it was).
fn window_changes() -> Option<OwnedFd> {
    // SAFETY: a signal set we own, SIGWINCH blocked for this single-threaded
    // process so that it arrives through the signalfd instead.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return None;
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
    }
}

/// Gives the terminal behind `master` the size of ours.
fn copy_window_size(master: RawFd) {
    // SAFETY: TIOCGWINSZ/TIOCSWINSZ with a winsize we own.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(master, libc::TIOCSWINSZ, &size);
        }
    }
}

fn write_all(fd: RawFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: write from a buffer we own.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(err);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// A terminal in raw mode until dropped; nothing when `fd` is no terminal.
pub struct RawMode {
    fd: RawFd,
    saved: Option<libc::termios>,
}

impl RawMode {
    pub fn enable(fd: RawFd) -> RawMode {
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: tcgetattr into a termios we own.
        if unsafe { libc::isatty(fd) } != 1 || unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return RawMode { fd, saved: None };
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw and tcsetattr on a termios we own.
        unsafe {
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(fd, libc::TCSANOW, &raw);
        }
        RawMode {
            fd,
            saved: Some(saved),
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restoring the attributes we saved.
            unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, saved) };
        }
    }
}
