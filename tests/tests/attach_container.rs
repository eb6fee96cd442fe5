//! `tartan attach CONTAINER`, Docker's attach: joining a running
//! container's terminal or output, detaching with Ctrl-P Ctrl-Q or the
//! keys given, and how the container form is told from weave's netns form.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, cli_within, finish, import_busybox, text, VXLAN};
use tartan_tests::cluster::Cluster;
use tartan_tests::netns::Netns;
use tartan_tests::wait::wait_until;

const PATIENCE: Duration = Duration::from_secs(20);

/// A command running on a pseudo-terminal of its own, as an operator's
/// shell would run it; what it prints is collected as it comes.
struct Terminal {
    master: File,
    child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn spawn(mut command: Command) -> Result<Terminal> {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills two descriptors we then own.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        ensure!(rc == 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptors from openpty.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        command
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and TIOCSCTTY are async-signal-safe; the terminal
        // becomes the child's controlling one, as a login shell's is.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().context("spawning on a terminal")?;
        // Only the child holds the terminal's other side now: its end is ours to see.
        drop(command);
        let master = File::from(master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone()?;
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child and its descendants have closed the terminal.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if let Ok(mut seen) = sink.lock() {
                    seen.extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok(Terminal {
            master,
            child,
            seen,
        })
    }

    fn seen(&self) -> String {
        self.seen.lock().map(|seen| text(&seen)).unwrap_or_default()
    }

    fn type_keys(&mut self, keys: &[u8]) -> Result<()> {
        self.master.write_all(keys).context("typing")
    }

    fn wait_for_text(&self, wanted: &str) -> Result<()> {
        wait_until(PATIENCE, Duration::from_millis(20), || {
            Ok(self.seen().contains(wanted))
        })
        .with_context(|| {
            format!(
                "waiting for {wanted:?}; the terminal shows {:?}",
                self.seen()
            )
        })
    }

    /// Types a shell command whose output differs from its echo (the
    /// quotes) and waits for that output.
    fn run_shell_command(&mut self, word: &str) -> Result<()> {
        let (head, tail) = word.split_at(word.len() / 2);
        self.type_keys(format!("echo {head}''{tail}\r").as_bytes())?;
        self.wait_for_text(&format!("{word}\r\n"))
    }

    fn wait_exit(&mut self) -> Result<ExitStatus> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "still attached after {PATIENCE:?}; the terminal shows {:?}",
                    self.seen()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn status_of(agent: &Agent, name: &str) -> Result<String> {
    let ps = cli_ok(agent, &["ps", "-a"])?;
    ps.lines()
        .find(|line| line.split_whitespace().last() == Some(name))
        .map(str::to_string)
        .with_context(|| format!("{name} in ps -a: {ps}"))
}

#[test]
fn attach_joins_a_terminal_and_detaches_with_the_keys() -> Result<()> {
    let cluster = Cluster::start("atc", 193, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(agent, &["run", "-dit", "--name", "c1", "busybox", "sh"])?;

    // The seed's sequence: attach, type, see, Ctrl-P Ctrl-Q.
    let mut term = Terminal::spawn(agent.cli_command(&["attach", "c1"])?)?;
    term.run_shell_command("hello")?;
    term.type_keys(b"\x10\x11")?;
    let status = term.wait_exit()?;
    ensure!(
        status.success(),
        "detaching exits 0: {status}; {:?}",
        term.seen()
    );
    // Docker's note on a detach (read from the terminal after the exit).
    term.wait_for_text("read escape sequence")?;
    let row = status_of(agent, "c1")?;
    ensure!(row.contains(" Up "), "left running: {row}");

    // Other keys: Ctrl-P Ctrl-Q goes to the shell, the keys given detach.
    let mut term =
        Terminal::spawn(agent.cli_command(&["attach", "--detach-keys", "ctrl-a,x", "c1"])?)?;
    term.run_shell_command("again")?;
    // Ctrl-P Ctrl-Q, then Ctrl-U to clear whatever the line editor made of them.
    term.type_keys(b"\x10\x11\x15")?;
    term.run_shell_command("still")?;
    term.type_keys(b"\x01x")?;
    ensure!(term.wait_exit()?.success(), "{:?}", term.seen());
    let row = status_of(agent, "c1")?;
    ensure!(row.contains(" Up "), "left running: {row}");

    // Two at once: both see what either types.
    let mut first = Terminal::spawn(agent.cli_command(&["attach", "c1"])?)?;
    let second = Terminal::spawn(agent.cli_command(&["attach", "c1"])?)?;
    // The second is attached once it sees what the first makes: typed until it does.
    wait_until(PATIENCE, Duration::from_millis(200), || {
        first.type_keys(b"echo to''gether\r")?;
        Ok(second.seen().contains("together\r\n"))
    })
    .with_context(|| format!("the second session shows {:?}", second.seen()))?;

    // The container ending ends the sessions, with its code.
    first.type_keys(b"exit 3\r")?;
    assert_eq!(first.wait_exit()?.code(), Some(3), "{:?}", first.seen());
    let mut second = second;
    assert_eq!(second.wait_exit()?.code(), Some(3), "{:?}", second.seen());

    // run -it honours the keys too, and leaves the container running.
    let mut term = Terminal::spawn(agent.cli_command(&[
        "run",
        "-it",
        "--name",
        "c2",
        "--detach-keys",
        "ctrl-e,e",
        "busybox",
        "sh",
    ])?)?;
    term.run_shell_command("inside")?;
    term.type_keys(b"\x05e")?;
    ensure!(term.wait_exit()?.success(), "{:?}", term.seen());
    let row = status_of(agent, "c2")?;
    ensure!(row.contains(" Up "), "left running: {row}");
    let mut term = Terminal::spawn(agent.cli_command(&["run", "-it", "--rm", "busybox", "sh"])?)?;
    term.run_shell_command("default")?;
    term.type_keys(b"\x10\x11")?;
    ensure!(term.wait_exit()?.success(), "{:?}", term.seen());
    let running = cli_ok(agent, &["ps", "-q"])?;
    ensure!(
        running.lines().count() == 2,
        "c2 and the --rm one run: {running}"
    );

    // A terminal container without -i: our input is not its, so the
    // terminal stays cooked and Ctrl-C ends the session, not the container.
    cli_ok(
        agent,
        &[
            "run",
            "-dt",
            "--name",
            "c3",
            "busybox",
            "sh",
            "-c",
            "while true; do echo tick; sleep 1; done",
        ],
    )?;
    let mut term = Terminal::spawn(agent.cli_command(&["attach", "c3"])?)?;
    term.wait_for_text("tick")?;
    term.type_keys(b"\x03")?;
    let status = term.wait_exit()?;
    ensure!(!status.success(), "Ctrl-C ended attach: {status}");
    let row = status_of(agent, "c3")?;
    ensure!(row.contains(" Up "), "left running: {row}");
    cli_ok(agent, &["rm", "-f", "c3"])?;

    // A bad key spec: one line, nothing changes.
    for args in [
        &["attach", "--detach-keys", "ctrl-1", "c2"][..],
        &["run", "-dit", "--detach-keys", "alt-x", "busybox", "sh"][..],
    ] {
        let out = cli_within(agent, args, PATIENCE)?;
        let err = text(&out.stderr);
        ensure!(
            !out.status.success()
                && err.contains("invalid --detach-keys")
                && err.trim().lines().count() == 1,
            "{args:?}: {err:?}"
        );
    }
    let running = cli_ok(agent, &["ps", "-q"])?;
    ensure!(running.lines().count() == 2, "nothing changed: {running}");
    Ok(())
}

#[test]
fn attach_streams_output_refuses_stopped_and_ambiguous_containers() -> Result<()> {
    let cluster = Cluster::start("ato", 194, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    // A container without a terminal: its two streams, then its exit code.
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "ticker",
            "busybox",
            "sh",
            "-c",
            "i=0; while [ ! -e /stop ]; do echo out$i; echo err$i >&2; i=$((i+1)); sleep 1; done; exit 5",
        ],
    )?;
    let mut child = agent
        .cli_command(&["attach", "ticker"])?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = collect(child.stdout.take().context("stdout")?);
    let stderr = collect(child.stderr.take().context("stderr")?);
    wait_until(PATIENCE, Duration::from_millis(20), || {
        Ok(seen(&stdout).contains("out") && seen(&stderr).contains("err"))
    })
    .with_context(|| format!("attach shows {:?} / {:?}", seen(&stdout), seen(&stderr)))?;
    cli_ok(agent, &["exec", "ticker", "touch", "/stop"])?;
    let out = finish(child, PATIENCE)?;
    assert_eq!(out.status.code(), Some(5), "the container's code");
    ensure!(!seen(&stdout).contains("err") && !seen(&stderr).contains("out"));

    // A stopped container: Docker's words, exit 1.
    let out = cli_within(agent, &["attach", "ticker"], PATIENCE)?;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "You cannot attach to a stopped container, start it first\n"
    );

    // A name that is both a container and a netns: refused, and how to say which.
    let both = Netns::create("atb")?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            both.name(),
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let out = cli_within(agent, &["attach", both.name()], PATIENCE)?;
    let err = text(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("--netns") && err.trim().lines().count() == 1,
        "{err:?}"
    );
    let printed = cli_ok(agent, &["attach", "--netns", both.name()])?;
    ensure!(
        printed.trim().starts_with("10.5."),
        "the netns plugged in: {printed:?}"
    );
    ensure!(
        both.exec("ip", &["-4", "-o", "addr", "show", "eth0"])?
            .status
            .success(),
        "eth0 in the netns"
    );
    // A netns name alone is still weave's form.
    let plain = Netns::create("atn")?;
    let printed = cli_ok(agent, &["attach", plain.name()])?;
    ensure!(printed.trim().starts_with("10.5."), "{printed:?}");
    cli_ok(agent, &["detach", plain.name()])?;
    Ok(())
}

fn collect(mut stream: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            if let Ok(mut seen) = sink.lock() {
                seen.extend_from_slice(&buf[..n]);
            }
        }
    });
    seen
}

fn seen(buffer: &Arc<Mutex<Vec<u8>>>) -> String {
    buffer.lock().map(|b| text(&b)).unwrap_or_default()
}
