//! `tartan attach CONTAINER` (Docker's `docker attach`): which form of
//! `attach` a command line means, and the session with the container.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{bail, Result};
use tartan_proto::v1::{Container as PbContainer, ContainerRequest};

use crate::api;
use crate::cli::containers::{stream_session, SessionEnd, SessionOptions};
use crate::cli::detach_keys::DetachKeys;
use crate::cli::refusal::refused;

/// Where `ip netns` keeps its names.
const NETNS_DIR: &str = "/run/netns";

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
