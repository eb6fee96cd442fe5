//! `tartan shim DIR`: the small supervisor every running container has.
//!
//! The agent starts it and may then die, restart or be killed without the
//! container noticing. The supervisor detaches (a session of its own),
//! takes the container's lock, creates
//! the container's first process in new mount, PID, UTS, IPC and (per the
//! network mode) network namespaces, and tells the agent its pid on
//! standard output. The process waits on a pipe while the agent plugs its
//! network namespace in; on the agent's `go` (standard input) it runs the
//! container's init. From then on the supervisor copies the container's
//! output to the log and to attached clients, feeds it their input, and
//! records its exit status when it ends; with a restart policy it then runs
//! the command again (see `restart`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::frame::{Frame, FrameDecoder};
use super::log::{LogRecord, Stream};
use super::restart::{Backoff, RestartPolicy, RestartRecord};
use super::{
    exit_code, now_rfc3339, read_json, write_json, ContainerDir, ExitRecord, RunState, ShimSpec,
};
use crate::cgroups::{Cgroup, DeviceAccess, OomKills};
use crate::error::io_err;
use crate::{Result, RuntimeError};

/// How long a foreground `run` may take to attach before the container starts anyway.
const ATTACH_WAIT: Duration = Duration::from_secs(30);
/// A client this far behind is dropped rather than allowed to stall the container.
const CLIENT_BACKLOG: usize = 8 << 20;
/// Input buffered for a container that does not read it.
const STDIN_BACKLOG: usize = 1 << 20;

fn os_error(op: &'static str) -> RuntimeError {
    RuntimeError::Io {
        op,
        path: "supervisor".into(),
        source: std::io::Error::last_os_error(),
    }
}

fn check(rc: libc::c_int, op: &'static str) -> Result<libc::c_int> {
    if rc < 0 {
        Err(os_error(op))
    } else {
        Ok(rc)
    }
}

/// Runs the supervisor; the return value is this process's exit code. Any
/// failure before the container starts is reported to the agent as one
/// `error:` line on standard output.
pub fn main(dir: &Path) -> i32 {
    // A session of its own: no signal meant for the agent's process group or
    // terminal reaches the supervisor. (The agent reaps it while it lives;
    // after that, whoever inherits it does.)
    // SAFETY: plain syscall.
    unsafe { libc::setsid() };
    match supervise(dir) {
        Ok(()) => 0,
        Err(err) => {
            // Before `ready` this reaches the agent; after, the supervisor's own log.
            let _ = writeln!(std::io::stdout(), "error: {err}");
            eprintln!("tartan shim: {err}");
            1
        }
    }
}

/// The container's standard streams: the supervisor's ends and the child's.
struct Stdio {
    /// Where output comes from: the terminal, or the stdout and stderr pipes.
    outputs: Vec<(OwnedFd, Stream)>,
    /// Where input goes, when the container's stdin is open.
    input: Option<OwnedFd>,
    /// The terminal's master side, for window size changes.
    master: Option<OwnedFd>,
    /// The child's 0, 1, 2.
    child: [OwnedFd; 3],
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    check(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe",
    )?;
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) -> Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) }, "fcntl")?;
    check(
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) },
        "fcntl",
    )?;
    Ok(())
}

fn dev_null() -> Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(io_err("opening", "/dev/null"))?;
    Ok(file.into())
}

impl Stdio {
    /// With `tty`, the terminal is made later, inside the container (see
    /// `Handshake::console`): until then the child writes its errors to ours.
    fn new(tty: bool, open_stdin: bool) -> Result<Stdio> {
        if tty {
            let child = [
                dev_null()?,
                dev_null()?,
                // SAFETY: dup of our own stderr, owned from here on.
                unsafe {
                    OwnedFd::from_raw_fd(check(libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3), "dup")?)
                },
            ];
            return Ok(Stdio {
                outputs: Vec::new(),
                input: None,
                master: None,
                child,
            });
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (input, child_in) = if open_stdin {
            let (in_r, in_w) = pipe()?;
            set_nonblocking(in_w.as_raw_fd())?;
            (Some(in_w), in_r)
        } else {
            (None, dev_null()?)
        };
        set_nonblocking(out_r.as_raw_fd())?;
        set_nonblocking(err_r.as_raw_fd())?;
        Ok(Stdio {
            outputs: vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            input,
            master: None,
            child: [child_in, out_w, err_w],
        })
    }

    /// Takes the terminal's master side, received from the container.
    fn take_terminal(&mut self, master: OwnedFd, open_stdin: bool) -> Result<()> {
        set_nonblocking(master.as_raw_fd())?;
        self.outputs = vec![(
            master.try_clone().map_err(io_err("dup", "pty"))?,
            Stream::Stdout,
        )];
        if open_stdin {
            self.input = Some(master.try_clone().map_err(io_err("dup", "pty"))?);
        }
        self.master = Some(master);
        Ok(())
    }
}

/// The ends of the channels between the supervisor and the container's
/// first process before its command runs.
struct Handshake {
    /// Read by the child: the go.
    go: OwnedFd,
    /// Written by the child only when its command cannot run ("CODE
    /// reason"); closed by its exec otherwise.
    exec_failure: OwnedFd,
    /// With a terminal: the child sends the master side of the terminal it
    /// made in the container's devpts over it.
    console: Option<OwnedFd>,
}

fn supervise(dir: &Path) -> Result<()> {
    let container = ContainerDir::new(dir);
    let spec: ShimSpec = read_json(&container.shim_spec_path())?;
    // Our own diagnostics go to a file beside the container's; the agent's pipes are only for the handshake.
    let diagnostics = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("shim.log"))
        .map_err(io_err("opening", dir.join("shim.log")))?;
    // SAFETY: dup2 onto our own stderr.
    unsafe { libc::dup2(diagnostics.as_raw_fd(), 2) };
    drop(diagnostics);

    let lock =
        File::create(container.lock_path()).map_err(io_err("creating", container.lock_path()))?;
    // SAFETY: flock on a descriptor we own; held until this process ends.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(RuntimeError::Protocol(
            "the container is already running".into(),
        ));
    }
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the supervisor outlives the signals meant for its agent or terminal.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }

    let socket = container.socket_path();
    // A socket left by an earlier run, if any; bind reports anything else.
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).map_err(io_err("binding", &socket))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err("restricting", &socket))?;
    listener
        .set_nonblocking(true)
        .map_err(io_err("configuring", &socket))?;

    let waiting = spawn_waiting(&spec)?;
    let pid = waiting.pid;
    let cgroup = match enter_cgroup(&spec, pid) {
        Ok(cgroup) => cgroup,
        Err(err) => {
            // SAFETY: signalling and reaping our own child, which has run nothing yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(err);
        }
    };
    // Held for the restarts, which join it: see `restart`.
    let netns = match spec.init.container.restart {
        RestartPolicy::No => None,
        _ => match held_netns(&spec, pid) {
            Ok(netns) => netns,
            Err(err) => {
                // SAFETY: signalling and reaping our own child, which has run nothing yet.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
                leave_cgroup(cgroup.as_ref());
                return Err(err);
            }
        },
    };

    // SAFETY: getpid cannot fail.
    let shim_pid = unsafe { libc::getpid() } as u32;
    // An agent that cannot be told, or does not answer, has died: no "go"
    // then, and the container is not started.
    let _ = writeln!(std::io::stdout(), "ready {pid} {shim_pid}");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = BufReader::new(std::io::stdin().lock()).read_line(&mut answer);
    if answer.trim() != "go" {
        // The agent could not set the container up (or died trying); it cleans up.
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        leave_cgroup(cgroup.as_ref());
        return Err(RuntimeError::Protocol(
            "the agent abandoned the start".into(),
        ));
    }
    let mut clients = Vec::new();
    if spec.wait_for_attach {
        if let Some(client) = accept_within(&listener, ATTACH_WAIT) {
            clients.push(Client::new(client)?);
        }
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(container.log_path())
        .map_err(io_err("opening", container.log_path()))?;
    // Release the container: it runs its init now.
    let (stdio, failure) = waiting.release(&spec, dir)?;
    // A detached start tells the agent whether the command runs, so that
    // `run -d` and `start` report a command that cannot (as Docker does).
    // A foreground one has a client that sees the error and the exit code.
    let _ = if failure.is_empty() {
        writeln!(std::io::stdout(), "running")
    } else {
        writeln!(std::io::stdout(), "failed {failure}")
    };
    let _ = std::io::stdout().flush();
    let null = dev_null()?;
    // SAFETY: dup2 over our own standard streams: nothing of the agent's stays open here.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
    }
    if !failure.is_empty() && !spec.wait_for_attach {
        // The agent reports it and discards the container: nothing to record.
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
        leave_cgroup(cgroup.as_ref());
        return Ok(());
    }
    let Stdio {
        outputs,
        input,
        master,
        child,
    } = stdio;
    drop(child);
    record_running(&container, shim_pid, pid)?;

    let mut pump = Pump {
        listener,
        clients,
        outputs,
        input,
        master,
        pending_input: Vec::new(),
        close_input: false,
        log,
        child: pid,
        reaped: false,
    };
    let code = supervise_restarts(
        &container,
        &spec,
        netns,
        cgroup.as_ref(),
        &mut pump,
        shim_pid,
    )?;
    // Its processes are gone: the cgroup goes too, as Docker's does at stop
    // (the next start makes it anew).
    leave_cgroup(cgroup.as_ref());
    pump.say_goodbye(code);
    drop(lock);
    Ok(())
}

/// Records how the container's process ended. As Docker: OOMKilled only
/// when the memory limit's killer ended it.
fn write_exit(
    container: &ContainerDir,
    code: i32,
    cgroup: Option<&Cgroup>,
    oom_kills: &mut OomKills,
) -> Result<()> {
    let counter = cgroup.map_or(0, |c| c.oom_kills().unwrap_or(0));
    let oom_killed = oom_kills.exited(code == 128 + libc::SIGKILL, counter);
    write_json(
        &container.exit_path(),
        &ExitRecord {
            code,
            finished: now_rfc3339(),
            oom_killed,
        },
        false,
    )
}

/// The container's network namespace, opened while its first process
/// (waiting for the go) surely lives; None with the host's.
fn held_netns(spec: &ShimSpec, pid: libc::pid_t) -> Result<Option<File>> {
    let path = match (&spec.join_netns, spec.new_netns) {
        (Some(path), _) => path.clone(),
        (None, true) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        (None, false) => return Ok(None),
    };
    File::open(&path)
        .map(Some)
        .map_err(io_err("holding the network namespace", path))
}

/// Waits on the container's process and runs it again for as long as its
/// restart policy says; returns the code of its last exit. The process
/// joins the network namespace the supervisor holds, so what the agent
/// plugged in at the start stays.
fn supervise_restarts(
    container: &ContainerDir,
    spec: &ShimSpec,
    netns: Option<File>,
    cgroup: Option<&Cgroup>,
    pump: &mut Pump,
    shim_pid: u32,
) -> Result<i32> {
    let policy = spec.init.container.restart;
    let mut again = spec.clone();
    again.new_netns = false;
    again.wait_for_attach = false;
    // Inherited by the clone, which opens it through its own descriptor table.
    again.join_netns = netns
        .as_ref()
        .map(|ns| PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd())));
    let mut restarts = 0;
    let mut backoff = Backoff::default();
    let mut started = Instant::now();
    // A restart that could not be made counts as an exit, as Docker's 125.
    let mut failed_start = None;
    // The cgroup was made for this start: no OOM kills yet.
    let mut oom_kills = OomKills::default();
    let code = loop {
        let code = match failed_start.take() {
            Some(code) => code,
            None => pump.run(pump.child)?,
        };
        write_exit(container, code, cgroup, &mut oom_kills)?;
        if !policy.restarts_after(code, restarts, container.stopped_by_operator()) {
            break code;
        }
        restarts += 1;
        container.write_restart(&RestartRecord {
            count: restarts,
            restarting: true,
        })?;
        if !sleep_unless_stopped(container, backoff.next(started.elapsed())) {
            break code;
        }
        started = Instant::now();
        // The files as the agent keeps them now (it rewrites /etc/hosts and
        // resolv.conf of a container whose address moved); else as before.
        if let Ok(now) = read_json::<ShimSpec>(&container.shim_spec_path()) {
            again.init.files = now.init.files;
        }
        match start_again(container, &again, cgroup) {
            Ok(Some((stdio, pid))) => {
                pump.take_process(stdio, pid);
                record_running(container, shim_pid, pid)?;
                // A file that is gone already is as good.
                let _ = std::fs::remove_file(container.exit_path());
                container.write_restart(&RestartRecord {
                    count: restarts,
                    restarting: false,
                })?;
            }
            Ok(None) => break code,
            Err(err) => {
                eprintln!("tartan shim: restarting the container: {err}");
                failed_start = Some(125);
            }
        }
    };
    if restarts > 0 {
        container.write_restart(&RestartRecord {
            count: restarts,
            restarting: false,
        })?;
    }
    Ok(code)
}

/// Waits `delay`; false as soon as the operator stops the container.
fn sleep_unless_stopped(container: &ContainerDir, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        if container.stopped_by_operator() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Makes the container's process again and runs its command; None when
/// the operator stopped the container meanwhile.
fn start_again(
    container: &ContainerDir,
    spec: &ShimSpec,
    cgroup: Option<&Cgroup>,
) -> Result<Option<(Stdio, libc::pid_t)>> {
    let waiting = spawn_waiting(spec)?;
    let pid = waiting.pid;
    // Into the container's cgroup, with its limits, before it runs anything.
    let joined = cgroup.map_or(Ok(()), |c| c.add(pid as u32));
    // A stop that came while the process was made: it never runs.
    if joined.is_err() || container.stopped_by_operator() {
        // SAFETY: signalling and reaping our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        // A cgroup it could not join is a failed restart; a stop is none.
        joined?;
        return Ok(None);
    }
    // A command that cannot run ends the process, which the pump reaps.
    let (stdio, _failure) = waiting.release(spec, container.path())?;
    Ok(Some((stdio, pid)))
}

/// A container process made in its namespaces and waiting for its go,
/// with this side's ends of its handshake.
struct Waiting {
    stdio: Stdio,
    pid: libc::pid_t,
    go: OwnedFd,
    /// Closed by the kernel when the container's command has been exec'd
    /// (or the process has died): only then is the container "running",
    /// with its root in place for `exec` to join.
    exec_done: OwnedFd,
    console: Option<OwnedFd>,
}

/// Makes the container's process, which waits for its go.
fn spawn_waiting(spec: &ShimSpec) -> Result<Waiting> {
    let stdio = Stdio::new(spec.init.container.tty, spec.init.container.open_stdin)?;
    let (go_r, go_w) = pipe()?;
    let (exec_r, exec_w) = pipe()?;
    let (console, child_console) = match spec.init.container.tty {
        true => {
            let (ours, theirs) = crate::pty::socket_pair()?;
            (Some(ours), Some(theirs))
        }
        false => (None, None),
    };
    let handshake = Handshake {
        go: go_r,
        exec_failure: exec_w,
        console: child_console,
    };
    let pid = spawn_container(spec, &stdio, &handshake)?;
    drop(handshake);
    Ok(Waiting {
        stdio,
        pid,
        go: go_w,
        exec_done: exec_r,
        console,
    })
}

impl Waiting {
    /// Lets the process run its init, takes its terminal, and waits until
    /// its command is exec'd; returns its stdio and why the command could
    /// not run (empty when it runs).
    fn release(self, spec: &ShimSpec, dir: &Path) -> Result<(Stdio, String)> {
        let Waiting {
            mut stdio,
            go,
            exec_done,
            console,
            ..
        } = self;
        (&File::from(go))
            .write_all(b"g")
            .map_err(io_err("starting", dir))?;
        if let Some(console) = &console {
            // None: the child died before making its terminal; the pump sees its exit.
            if let Some(master) = crate::pty::recv_fd(console)? {
                stdio.take_terminal(master, spec.init.container.open_stdin)?;
            }
        }
        drop(console);
        let mut failure = Vec::new();
        // The close-on-exec pipe closes: the init has exec'd, or has died,
        // after saying why when its command could not run.
        let _ = File::from(exec_done).read_to_end(&mut failure);
        Ok((stdio, String::from_utf8_lossy(&failure).trim().to_string()))
    }
}

/// `state.json`: the container's process `pid` runs, started now.
fn record_running(container: &ContainerDir, shim_pid: u32, pid: libc::pid_t) -> Result<()> {
    write_json(
        &container.state_path(),
        &RunState {
            shim_pid,
            pid: pid as u32,
            started: now_rfc3339(),
            // Read while the process is our unreaped child: the pid is surely its.
            start_time: crate::process::proc_stat(pid as u32).map(|stat| stat.start_time),
        },
        false,
    )
}

/// Makes the container's cgroup with its limits and moves its first
/// process in, before that process runs anything of the container's.
fn enter_cgroup(spec: &ShimSpec, pid: libc::pid_t) -> Result<Option<Cgroup>> {
    let Some(id) = &spec.cgroup else {
        return Ok(None);
    };
    let cgroup = Cgroup::for_container(id)?;
    let devices = if spec.init.container.security.privileged {
        DeviceAccess::All
    } else {
        DeviceAccess::Default
    };
    cgroup.create(&spec.init.container.resources, devices)?;
    if let Err(err) = cgroup.add(pid as u32) {
        let _ = cgroup.remove();
        return Err(err);
    }
    Ok(Some(cgroup))
}

/// Removes the cgroup of a start that did not happen.
fn leave_cgroup(cgroup: Option<&Cgroup>) {
    if let Some(Err(err)) = cgroup.map(Cgroup::remove) {
        eprintln!("tartan shim: {err}");
    }
}

fn accept_within(listener: &UnixListener, limit: Duration) -> Option<UnixStream> {
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Some(stream),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut fd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd.
        unsafe { libc::poll(&mut fd, 1, left.as_millis().min(1000) as libc::c_int) };
    }
}

/// Clones the container's first process into its new namespaces. It waits
/// for a byte on `go` before it runs init, and never returns here.
fn spawn_container(spec: &ShimSpec, stdio: &Stdio, handshake: &Handshake) -> Result<libc::pid_t> {
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if spec.new_netns {
        flags |= libc::CLONE_NEWNET;
    }
    // clone without a new stack behaves as fork, with namespaces: the child
    // is PID 1 of its own PID namespace and still our child, so we can wait
    // for it. Safe here because this process has one thread.
    // SAFETY: raw clone with fork semantics; the child only runs `container_child`.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        let source = std::io::Error::last_os_error();
        return Err(RuntimeError::Io {
            op: "creating the container's namespaces:",
            path: "clone".into(),
            source,
        });
    }
    if pid == 0 {
        let code = container_child(spec, stdio, handshake);
        // SAFETY: leave without running the supervisor's destructors twice.
        unsafe { libc::_exit(code) };
    }
    Ok(pid as libc::pid_t)
}

/// In the child: wait for the go, take the streams, run init. Returns only
/// the code to exit with when the container could not start, after telling
/// the supervisor why.
fn container_child(spec: &ShimSpec, stdio: &Stdio, handshake: &Handshake) -> i32 {
    // A container never outlives its supervisor: nobody could see it end.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGPIPE] {
        // SAFETY: ignored signals would stay ignored across exec.
        unsafe { libc::signal(signal, libc::SIG_DFL) };
    }
    let mut byte = [0u8; 1];
    // SAFETY: read into a one-byte buffer.
    if unsafe { libc::read(handshake.go.as_raw_fd(), byte.as_mut_ptr().cast(), 1) } != 1 {
        return 125;
    }
    let fail = |code: i32, reason: String| -> i32 {
        eprintln!("tartan: {reason}");
        let line = format!("{code} {reason}\n");
        // Nobody to tell if the supervisor is gone: then the container goes too.
        // SAFETY: write from a buffer we own.
        unsafe {
            libc::write(
                handshake.exec_failure.as_raw_fd(),
                line.as_ptr().cast(),
                line.len(),
            )
        };
        code
    };
    if let Some(path) = &spec.join_netns {
        let joined = File::open(path).and_then(|ns| {
            // SAFETY: setns on a namespace file we opened.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
        if let Err(err) = joined {
            return fail(
                125,
                format!("joining the network namespace {}: {err}", path.display()),
            );
        }
    }
    for (target, fd) in stdio.child.iter().enumerate() {
        // SAFETY: dup2 onto the standard descriptors (dup2 clears close-on-exec).
        unsafe { libc::dup2(fd.as_raw_fd(), target as RawFd) };
    }
    // Nothing of the supervisor's (its lock above all) may outlive it in the
    // container: every descriptor above stderr closes at the exec. Marked
    // rather than closed, so that the exec itself closes the pipe that
    // tells the supervisor the command runs.
    close_on_exec_from(3);
    let err = crate::init::run_with(&crate::syscall::LinuxSyscall, &spec.init, || {
        let Some(console) = &handshake.console else {
            return Ok(());
        };
        // In the container's root now: its own devpts instance.
        let (master, slave) = crate::pty::open_in(Path::new("/dev/pts/ptmx"))?;
        crate::pty::mount_console(&slave)?;
        crate::pty::send_fd(console, &master)?;
        drop(master);
        crate::pty::take_as_controlling(&slave)
    });
    fail(crate::init::failure_code(&err), crate::init::describe(&err))
}

/// Marks every descriptor from `first` up close-on-exec.
fn close_on_exec_from(first: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with the CLOEXEC flag only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Kernels before 5.11: one by one.
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<RawFd> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .filter(|fd| *fd >= first)
            .collect();
        for fd in fds {
            // SAFETY: fcntl on descriptors of this process.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

struct Client {
    stream: UnixStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
    /// The client closed its sending side: it still reads output.
    sent_all: bool,
}

impl Client {
    fn new(stream: UnixStream) -> Result<Client> {
        stream
            .set_nonblocking(true)
            .map_err(io_err("configuring", "an attach client"))?;
        Ok(Client {
            stream,
            decoder: FrameDecoder::default(),
            out: Vec::new(),
            sent_all: false,
        })
    }

    /// Writes what it can; false when the client is gone.
    fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.stream.write(&self.out) {
                Ok(0) => return false,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// The supervisor's event loop state.
struct Pump {
    listener: UnixListener,
    clients: Vec<Client>,
    outputs: Vec<(OwnedFd, Stream)>,
    input: Option<OwnedFd>,
    master: Option<OwnedFd>,
    pending_input: Vec<u8>,
    close_input: bool,
    log: File,
    /// The container's first process, and whether it has been reaped: a
    /// signal goes to it only before, while its pid cannot name another process.
    child: libc::pid_t,
    reaped: bool,
}

/// What a read of a nonblocking descriptor gave.
enum ReadOutcome {
    Data(usize),
    Again,
    Closed,
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> ReadOutcome {
    // SAFETY: read into a buffer we own.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n > 0 {
        return ReadOutcome::Data(n as usize);
    }
    if n == 0 {
        return ReadOutcome::Closed;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EINTR) => ReadOutcome::Again,
        // EIO: a terminal whose other side is closed for good.
        _ => ReadOutcome::Closed,
    }
}

impl Pump {
    /// Takes over a restarted process's streams.
    fn take_process(&mut self, stdio: Stdio, pid: libc::pid_t) {
        let Stdio {
            outputs,
            input,
            master,
            child,
        } = stdio;
        drop(child);
        self.outputs = outputs;
        self.input = input;
        self.master = master;
        self.pending_input.clear();
        self.close_input = false;
        self.child = pid;
        self.reaped = false;
    }

    /// Copies until the container's output ends, then reaps it.
    fn run(&mut self, pid: libc::pid_t) -> Result<i32> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut exited: Option<i32> = None;
        while !self.outputs.is_empty() {
            let mut fds = vec![libc::pollfd {
                fd: self.listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            let polled_clients = self.clients.len();
            for client in &self.clients {
                let mut events = if client.sent_all { 0 } else { libc::POLLIN };
                if !client.out.is_empty() {
                    events |= libc::POLLOUT;
                }
                fds.push(libc::pollfd {
                    fd: client.stream.as_raw_fd(),
                    events,
                    revents: 0,
                });
            }
            for (fd, _) in &self.outputs {
                fds.push(libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let input_slot = fds.len();
            if let Some(input) = self
                .input
                .as_ref()
                .filter(|_| !self.pending_input.is_empty())
            {
                fds.push(libc::pollfd {
                    fd: input.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                });
            }
            let timeout = if exited.is_some() { 200 } else { 1000 };
            // SAFETY: poll over a vector of pollfds we own.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(os_error("poll"));
            }
            if ready == 0 && exited.is_some() {
                // The process is gone and the output is quiet: whatever still holds it open is not ours to wait for.
                break;
            }
            if fds[0].revents != 0 {
                while let Ok((stream, _)) = self.listener.accept() {
                    if let Ok(client) = Client::new(stream) {
                        self.clients.push(client);
                    }
                }
            }
            let client_count = polled_clients;
            let client_revents: Vec<libc::c_short> =
                fds[1..1 + client_count].iter().map(|f| f.revents).collect();
            let output_revents: Vec<libc::c_short> = fds
                [1 + client_count..1 + client_count + self.outputs.len()]
                .iter()
                .map(|f| f.revents)
                .collect();
            let input_ready = fds.get(input_slot).map(|f| f.revents != 0).unwrap_or(false);

            // Output first: it is what the container is waiting on.
            let mut index = 0;
            let mut slot = 0;
            while index < self.outputs.len() {
                let revents = output_revents[slot];
                slot += 1;
                if revents == 0 {
                    index += 1;
                    continue;
                }
                let (fd, stream) = (&self.outputs[index].0, self.outputs[index].1);
                match read_fd(fd.as_raw_fd(), &mut buf) {
                    ReadOutcome::Data(n) => {
                        self.output(stream, &buf[..n]);
                        index += 1;
                    }
                    ReadOutcome::Again => index += 1,
                    ReadOutcome::Closed => {
                        self.outputs.remove(index);
                    }
                }
            }
            self.serve_clients(&client_revents, &mut buf);
            if input_ready {
                self.feed_input();
            }
            if exited.is_none() {
                let mut status = 0;
                // SAFETY: reaping our own child without blocking.
                if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                    exited = Some(exit_code(status));
                    self.reaped = true;
                }
            }
        }
        if let Some(code) = exited {
            return Ok(code);
        }
        let mut status = 0;
        loop {
            // SAFETY: reaping our own child.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            if rc == pid {
                return Ok(exit_code(status));
            }
            if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Err(os_error("waitpid"));
            }
        }
    }

    fn output(&mut self, stream: Stream, bytes: &[u8]) {
        // A full disk must not stop the container: the log loses lines, clients still get them.
        let _ = LogRecord::new(stream, bytes).write_to(&mut self.log);
        let frame = match stream {
            Stream::Stdout => Frame::Stdout(bytes.to_vec()),
            Stream::Stderr => Frame::Stderr(bytes.to_vec()),
        };
        let wire = frame.to_bytes();
        self.clients.retain_mut(|client| {
            client.out.extend_from_slice(&wire);
            client.out.len() <= CLIENT_BACKLOG && client.flush()
        });
    }

    fn serve_clients(&mut self, revents: &[libc::c_short], buf: &mut [u8]) {
        let mut keep = Vec::with_capacity(self.clients.len());
        let clients = std::mem::take(&mut self.clients);
        for (index, mut client) in clients.into_iter().enumerate() {
            // Clients accepted during this round have no revents yet.
            let events = revents.get(index).copied().unwrap_or(0);
            let mut alive = true;
            if events & libc::POLLOUT != 0 {
                alive = client.flush();
            }
            if client.sent_all && events & (libc::POLLHUP | libc::POLLERR) != 0 {
                alive = false;
            }
            if alive
                && !client.sent_all
                && events & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
            {
                match client.stream.read(buf) {
                    // A half-close: no more input from it, output still wanted.
                    Ok(0) => client.sent_all = true,
                    Ok(n) => {
                        client.decoder.push(&buf[..n]);
                        loop {
                            match client.decoder.next_frame() {
                                Ok(Some(frame)) => self.handle_client_frame(frame),
                                Ok(None) => break,
                                Err(_) => {
                                    alive = false;
                                    break;
                                }
                            }
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => alive = false,
                }
            }
            if alive {
                keep.push(client);
            }
        }
        self.clients = keep;
    }

    fn handle_client_frame(&mut self, frame: Frame) {
        match frame {
            Frame::Stdin(data) => {
                if self.input.is_some() && self.pending_input.len() + data.len() <= STDIN_BACKLOG {
                    self.pending_input.extend_from_slice(&data);
                    self.feed_input();
                }
            }
            Frame::StdinClose => {
                // On a terminal, end of input is the EOF character the client already sent.
                if self.master.is_none() {
                    self.close_input = true;
                    self.feed_input();
                }
            }
            Frame::Resize { rows, cols } => {
                if let Some(master) = &self.master {
                    let size = libc::winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    // SAFETY: TIOCSWINSZ with a winsize we own.
                    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
                }
            }
            Frame::Signal(signal) => {
                // Our own unreaped child: its pid is surely its. SIGKILL and
                // SIGSTOP are not proxied (Docker's CLI cannot catch them either).
                let proxied = (1..=libc::SIGRTMAX()).contains(&signal)
                    && signal != libc::SIGKILL
                    && signal != libc::SIGSTOP;
                if proxied && !self.reaped {
                    // SAFETY: kill with a pid we have not reaped.
                    unsafe { libc::kill(self.child, signal) };
                }
            }
            Frame::Stdout(_) | Frame::Stderr(_) | Frame::Exit(_) => {}
        }
    }

    fn feed_input(&mut self) {
        let Some(input) = &self.input else {
            self.pending_input.clear();
            return;
        };
        while !self.pending_input.is_empty() {
            // SAFETY: write from a buffer we own.
            let n = unsafe {
                libc::write(
                    input.as_raw_fd(),
                    self.pending_input.as_ptr().cast(),
                    self.pending_input.len(),
                )
            };
            if n > 0 {
                self.pending_input.drain(..n as usize);
                continue;
            }
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => return,
                Some(libc::EINTR) => {}
                _ => {
                    // The container closed its input: what is left has no reader.
                    self.pending_input.clear();
                    self.input = None;
                    return;
                }
            }
        }
        if self.close_input {
            self.input = None;
        }
    }

    /// Tells every client how the container ended, giving each a moment to read it.
    fn say_goodbye(&mut self, code: i32) {
        let wire = Frame::Exit(code).to_bytes();
        // A client that cannot be told has gone; the others still are.
        for client in &mut self.clients {
            client.out.extend_from_slice(&wire);
            let _ = client.stream.set_nonblocking(false);
            let _ = client
                .stream
                .set_write_timeout(Some(Duration::from_secs(2)));
            let _ = client.stream.write_all(&client.out);
        }
    }
}
