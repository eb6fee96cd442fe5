//! `tartan attach CONTAINER` (Docker's `docker attach`): which form of
//! `attach` a command line means, and the detach keys that end a session
//! while the container goes on (Ctrl-P Ctrl-Q unless `--detach-keys` says
//! otherwise).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Result};
use tartan_proto::v1::{Container as PbContainer, ContainerRequest};

use crate::api;
use crate::cli::containers::{stream_session, SessionEnd, SessionOptions};
use crate::cli::refusal::refused;

/// Docker's default detach sequence.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// Where `ip netns` keeps its names.
const NETNS_DIR: &str = "/run/netns";

/// A detach sequence in Docker's format: comma-separated keys, each a
/// single character or `ctrl-` and one of a-z @ [ \ ] ^ _.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys(Vec<u8>);

impl DetachKeys {
    pub fn parse(spec: &str) -> Result<DetachKeys> {
        let invalid = || {
            anyhow::anyhow!(
                "invalid --detach-keys {spec:?}: use comma-separated keys, each a single character or ctrl-<a-z, @, [, \\, ], ^ or _> (as Docker's)"
            )
        };
        let mut bytes = Vec::new();
        for key in spec.split(',') {
            if key.len() == 1 {
                bytes.push(key.as_bytes()[0]);
                continue;
            }
            let lower = key.to_ascii_lowercase();
            let Some(rest) = lower.strip_prefix("ctrl-") else {
                return Err(invalid());
            };
            let code = match rest.as_bytes() {
                [c @ b'a'..=b'z'] => c - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => return Err(invalid()),
            };
            bytes.push(code);
        }
        Ok(DetachKeys(bytes))
    }

    /// The given sequence, or Docker's default.
    pub fn or_default(spec: Option<&str>) -> Result<DetachKeys> {
        DetachKeys::parse(spec.unwrap_or(DEFAULT_DETACH_KEYS))
    }
}

/// Watches the input for the detach sequence. Bytes that could begin it
/// are held back until it is clear whether they do; the rest pass on.
#[derive(Debug)]
pub struct EscapeMatcher {
    keys: Vec<u8>,
    held: usize,
}

impl EscapeMatcher {
    pub fn new(keys: DetachKeys) -> EscapeMatcher {
        EscapeMatcher {
            keys: keys.0,
            held: 0,
        }
    }

    /// The bytes to pass on, and whether the whole sequence has been typed
    /// (then nothing after it is passed on).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if self.keys.is_empty() {
                out.push(byte);
                continue;
            }
            if byte == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            // Not the sequence after all: what was held goes on, and this
            // byte may start it again.
            out.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if byte == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(byte);
            }
        }
        (out, false)
    }
}

/// Is `name` a network namespace `ip netns` knows?
fn is_netns_name(name: &str) -> bool {
    !name.contains('/') && Path::new(NETNS_DIR).join(name).exists()
}

/// The Tartan container a single-argument `attach` names, if it names one:
/// not a path, not a PID, and no network flag given. One that is also a
/// netns name is refused, with how to say which is meant.
pub async fn container_named(arg: &str, api_socket: &Path) -> Result<Option<PbContainer>> {
    if arg.is_empty() || arg.starts_with('/') || arg.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    let mut client = api::connect(api_socket).await?;
    let container = match client
        .inspect_container(ContainerRequest {
            container: arg.to_string(),
        })
        .await
    {
        Ok(found) => found.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
        Err(status) => return Err(refused(status)),
    };
    if is_netns_name(arg) {
        bail!(
            "{arg} is both a Tartan container and a network namespace: use --netns {arg} (or {NETNS_DIR}/{arg}) to plug the namespace in, or the container's id {} to attach to the container",
            &container.id[..12.min(container.id.len())]
        );
    }
    Ok(Some(container))
}

/// The container form's options (Docker's `attach` flags).
pub struct ContainerAttach {
    pub detach_keys: Option<String>,
    pub no_stdin: bool,
    pub sig_proxy: bool,
}

/// `tartan attach CONTAINER`: joins the container's terminal or streams
/// until it ends (its exit code) or the detach keys are typed (0).
pub async fn attach_container(container: PbContainer, options: ContainerAttach) -> Result<i32> {
    let keys = DetachKeys::or_default(options.detach_keys.as_deref())?;
    if container.state != "running" {
        // Docker's words and code.
        eprintln!("You cannot attach to a stopped container, start it first");
        return Ok(1);
    }
    let stdin = container.interactive && !options.no_stdin;
    if container.tty && stdin && !std::io::stdin().is_terminal() {
        bail!("the input device is not a TTY; use --no-stdin or attach from a terminal");
    }
    let session = SessionOptions {
        tty: container.tty,
        interactive: stdin,
        // As Docker's CLI: with a terminal, Ctrl-C travels through it instead.
        sig_proxy: options.sig_proxy && !container.tty,
        // Other clients may still be typing: the end of this one's input is not the container's.
        close_stdin_at_end: false,
        // As Docker, the keys are read only on a terminal session.
        detach_keys: container.tty.then_some(keys),
        // Raw only when our input goes in, as Docker's CLI: otherwise Ctrl-C
        // must still end this command (nothing would carry it to the container).
        raw_terminal: container.tty && stdin,
    };
    match stream_session(&container.attach_socket, session).await? {
        SessionEnd::Exited(code) => Ok(code),
        SessionEnd::Detached => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_read_dockers_format() {
        assert_eq!(
            DetachKeys::parse("ctrl-p,ctrl-q").expect("valid").0,
            [16, 17]
        );
        assert_eq!(
            DetachKeys::parse("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_,a,Z,CTRL-X")
                .expect("valid")
                .0,
            [0, 27, 28, 29, 30, 31, b'a', b'Z', 24]
        );
        for bad in [
            "",
            "ctrl-",
            "ctrl-pq",
            "ctrl-1",
            "alt-x",
            "ab",
            "ctrl-p,,ctrl-q",
        ] {
            let err = DetachKeys::parse(bad).expect_err(bad).to_string();
            assert!(
                !err.contains('\n') && err.contains("--detach-keys"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_sequence_is_held_back_and_anything_else_passes() {
        let keys = DetachKeys::parse("ctrl-p,ctrl-q").expect("valid");
        let mut matcher = EscapeMatcher::new(keys.clone());
        assert_eq!(matcher.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        // Split across reads, and after other input.
        assert_eq!(matcher.feed(b"x\x10"), (b"x".to_vec(), false));
        assert_eq!(matcher.feed(b"\x11after"), (Vec::new(), true));

        let mut matcher = EscapeMatcher::new(keys.clone());
        // Ctrl-P alone, then something else: both go on.
        assert_eq!(matcher.feed(b"\x10a"), (b"\x10a".to_vec(), false));
        // Ctrl-P Ctrl-P Ctrl-Q: the first goes on, the rest detaches.
        assert_eq!(matcher.feed(b"\x10\x10\x11"), (b"\x10".to_vec(), true));

        let mut single = EscapeMatcher::new(DetachKeys::parse("ctrl-a").expect("valid"));
        assert_eq!(single.feed(b"ab\x01c"), (b"ab".to_vec(), true));
    }
}
