//! The CLI's side of the API socket, against a stand-in for the agent.

use std::io::{ErrorKind, Read};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tartan_tests::agent::tartan_bin;

/// How long the CLI may take to reach the stand-in.
const DEADLINE: Duration = Duration::from_secs(10);

/// What an HTTP/2 client sends first on a connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A command's calls go over the connection it opened first: a second one
/// would cost the agent an accept and an HTTP/2 connection per command.
#[test]
fn a_command_opens_one_connection_to_the_agent() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("tartan.sock");
    let listener = UnixListener::bind(&socket).context("binding the stand-in's socket")?;
    listener.set_nonblocking(true)?;
    let mut cli = Command::new(tartan_bin()?)
        .arg("--api-socket")
        .arg(&socket)
        .arg("attachments")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the CLI")?;
    let counted = count_until_preface(&listener, &mut cli);
    // The stand-in never answers: the CLI waits until it is killed.
    let _ = cli.kill();
    let _ = cli.wait();
    let (connections, before) = counted?;
    ensure!(
        connections == 1,
        "the CLI opened {connections} connections; {before} closed before the one carrying HTTP/2"
    );
    Ok(())
}

/// Accepts the CLI's connections in order until one carries the HTTP/2
/// preface. Returns how many were accepted, and how many of them closed
/// without a byte before it.
fn count_until_preface(
    listener: &UnixListener,
    cli: &mut std::process::Child,
) -> Result<(usize, usize)> {
    let deadline = Instant::now() + DEADLINE;
    let mut accepted = 0;
    let mut closed_empty = 0;
    loop {
        if Instant::now() >= deadline {
            bail!("no HTTP/2 preface from the CLI within {DEADLINE:?}");
        }
        match listener.accept() {
            Ok((mut stream, _)) => {
                accepted += 1;
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(
                    deadline
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))?;
                let mut first = vec![0u8; PREFACE.len()];
                let mut got = 0;
                while got < first.len() {
                    match stream.read(&mut first[got..]) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(err) => return Err(err).context("reading from the CLI"),
                    }
                }
                if got == 0 {
                    closed_empty += 1;
                    continue;
                }
                ensure!(
                    first[..got] == PREFACE[..got] && got == PREFACE.len(),
                    "the CLI sent {:?}, not an HTTP/2 preface",
                    String::from_utf8_lossy(&first[..got])
                );
                return Ok((accepted, closed_empty));
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                if let Some(status) = cli.try_wait()? {
                    let mut err = String::new();
                    if let Some(mut stderr) = cli.stderr.take() {
                        stderr.read_to_string(&mut err)?;
                    }
                    bail!(
                        "the CLI exited ({status}) before sending HTTP/2: {}",
                        err.trim()
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(err).context("accepting the CLI's connection"),
        }
    }
}
