//! The Docker-dialect container commands of the CLI: `run`, `ps`,
//! `inspect`, `logs`, `exec`, `stop`, `start`, `restart`, `rm`, `export`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use tartan_proto::v1::{
    ContainerRequest, ListContainersRequest, LogsRequest, RemoveContainerRequest, RunRequest,
    Seccomp, Security as PbSecurity, StopRequest, Sysctl,
};
use tartan_runtime::container::exec::{ExecSpec, RawMode};
use tartan_runtime::container::frame::{Frame, FrameDecoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api;
use crate::cli::detach_keys::{DetachKeys, EscapeMatcher};
use crate::cli::refusal::refused;
use crate::containers::{spec, NetworkRequest};

#[derive(Args)]
pub struct RunArgs {
    /// Run in the background and print the container id.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep standard input open and pass it on.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the container when it ends.
    #[arg(long)]
    rm: bool,
    /// Pass the signals this command receives on to the container (not with -t).
    #[arg(
        long = "sig-proxy",
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    sig_proxy: bool,
    /// A name (letters, digits, _ . -); one is made up otherwise.
    #[arg(long)]
    name: Option<String>,
    /// The container's hostname (default: the short id).
    #[arg(short = 'h', long)]
    hostname: Option<String>,
    /// KEY=VALUE, or KEY to pass this shell's value on. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// overlay (the default; none on an agent run with --no-etcd), host, none,
    /// container:NAME or a network made with `network create`.
    #[arg(long = "net", visible_alias = "network", value_name = "MODE")]
    net: Option<String>,
    /// An address in the node subnet (--net overlay) or the named network's subnet.
    #[arg(long)]
    ip: Option<String>,
    /// Every capability, no seccomp filter, no masked or read-only paths.
    #[arg(long)]
    privileged: bool,
    /// no-new-privileges, seccomp=unconfined or seccomp=FILE (Docker's JSON format). Repeatable.
    #[arg(long = "security-opt", value_name = "OPT")]
    security_opt: Vec<String>,
    /// A capability to add to Docker's default set (NET_ADMIN, or ALL). Repeatable.
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// A capability to drop (or ALL). Repeatable.
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// A sysctl of the container's own namespaces (net.*, kernel.shm*, ...), set at its start. Repeatable.
    #[arg(long = "sysctl", value_name = "KEY=VALUE")]
    sysctl: Vec<String>,
    /// HOST_PATH:CONTAINER_PATH[:ro|:rw], NAME:CONTAINER_PATH[:ro|:rw] or CONTAINER_PATH. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "VOLUME")]
    volume: Vec<String>,
    /// The volumes and bind mounts of another container, CONTAINER[:ro|:rw]. Repeatable.
    #[arg(long = "volumes-from", value_name = "CONTAINER")]
    volumes_from: Vec<String>,
    /// Print help (`-h` is `--hostname`, as in Docker).
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The image (NAME[:TAG] or an id), then the command and its arguments
    /// (default: the image's Cmd; /bin/sh for an imported rootfs). Options
    /// end at the image, as Docker's: `run busybox --ip` runs `--ip`.
    #[arg(
        value_name = "IMAGE",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    image_and_command: Vec<String>,
    /// [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp]: publish a container's port on the host. Repeatable.
    #[arg(short = 'p', long = "publish", value_name = "PORTS")]
    publish: Vec<String>,
    /// Publish every port the image exposes on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Replace the image's entrypoint ("" clears it; the image's Cmd is then dropped too).
    #[arg(long, value_name = "COMMAND")]
    entrypoint: Option<String>,
    /// NAME, UID, NAME:GROUP or UID:GID, looked up in the image's /etc/passwd and /etc/group.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// The keys that detach from a -t session, leaving the container running
    /// (Docker's format; default ctrl-p,ctrl-q).
    #[arg(long = "detach-keys", value_name = "KEYS")]
    detach_keys: Option<String>,
    /// Run the command again when it ends: no, always, on-failure[:MAX_RETRIES] or unless-stopped.
    #[arg(long, value_name = "POLICY")]
    restart: Option<String>,
    /// NAME[:ALIAS]: a running container of this host, written into /etc/hosts. Repeatable.
    #[arg(long = "link", value_name = "NAME[:ALIAS]")]
    link: Vec<String>,
    /// NAME:IP: a line of /etc/hosts. Repeatable.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    add_host: Vec<String>,
    /// Another name of the container, held fabric-wide as its name is. Repeatable.
    #[arg(long = "network-alias", value_name = "NAME")]
    network_alias: Vec<String>,
    /// Memory limit, e.g. 512m or 1g (at least 6m).
    #[arg(short = 'm', long, value_name = "BYTES")]
    memory: Option<String>,
    /// Memory plus swap; -1 for unlimited swap (default: twice --memory).
    #[arg(long = "memory-swap", value_name = "BYTES", allow_hyphen_values = true)]
    memory_swap: Option<String>,
    /// Number of CPUs, e.g. 1.5.
    #[arg(long, value_name = "NUMBER")]
    cpus: Option<String>,
    /// CPU shares, relative weight (default 1024).
    #[arg(
        short = 'c',
        long = "cpu-shares",
        value_name = "SHARES",
        allow_hyphen_values = true
    )]
    cpu_shares: Option<i64>,
    /// Most processes at once; -1 for unlimited.
    #[arg(long = "pids-limit", value_name = "NUMBER", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
}

#[derive(Args)]
pub struct PsArgs {
    /// Stopped containers too.
    #[arg(short = 'a', long)]
    all: bool,
    /// Only the ids.
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Args)]
pub struct NamesArgs {
    /// Names or id prefixes.
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before SIGKILL.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    time: u32,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct RmArgs {
    /// Kill running containers first.
    #[arg(short = 'f', long)]
    force: bool,
    /// Remove the containers' anonymous volumes too.
    #[arg(short = 'v', long)]
    volumes: bool,
    #[arg(required = true, value_name = "CONTAINER")]
    containers: Vec<String>,
}

#[derive(Args)]
pub struct LogsArgs {
    /// Keep following the log until the container stops.
    #[arg(short = 'f', long)]
    follow: bool,
    container: String,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Pass standard input on.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the command a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Extra KEY=VALUE environment entries. Repeatable.
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The working directory (default: the container's).
    #[arg(short = 'w', long = "workdir")]
    workdir: Option<String>,
    /// The container, then the command and its arguments. Options end at
    /// the container, as Docker's: `exec c1 --env` runs `--env`.
    #[arg(
        value_name = "CONTAINER COMMAND [ARG...]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    container_and_command: Vec<String>,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Write to this file (default: standard output).
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    container: String,
}

/// `-e KEY` takes the value from this shell, as Docker does; unset keys are dropped.
fn expand_env(given: &[String]) -> Vec<String> {
    given
        .iter()
        .filter_map(|entry| {
            if entry.contains('=') {
                Some(entry.clone())
            } else {
                std::env::var(entry).ok().map(|v| format!("{entry}={v}"))
            }
        })
        .collect()
}

/// `run`'s privilege flags in Docker's spelling, read into the API's typed
/// form: `--security-opt` (`no-new-privileges[:true|false]`,
/// `seccomp=unconfined`, `seccomp=FILE`, also with Docker's older `:`) and
/// `--sysctl KEY=VALUE`. A profile file is read here, as Docker's CLI does,
/// since the agent may not see the same files; the agent checks the rest.
fn security_flags(
    privileged: bool,
    security_opts: &[String],
    cap_add: Vec<String>,
    cap_drop: Vec<String>,
    sysctls: &[String],
) -> Result<PbSecurity> {
    let mut security = PbSecurity {
        privileged,
        cap_add,
        cap_drop,
        ..PbSecurity::default()
    };
    for opt in security_opts {
        let split = opt.find(['=', ':']).map(|at| (&opt[..at], &opt[at + 1..]));
        match split.unwrap_or((opt.as_str(), "")) {
            ("no-new-privileges", "" | "true") => security.no_new_privileges = true,
            ("no-new-privileges", "false") => security.no_new_privileges = false,
            ("seccomp", "unconfined") => {
                security.set_seccomp(Seccomp::Unconfined);
                security.seccomp_profile.clear();
            }
            ("seccomp", "") => bail!("--security-opt seccomp needs =unconfined or =FILE"),
            ("seccomp", file) => {
                security.seccomp_profile = std::fs::read_to_string(file)
                    .with_context(|| format!("reading the seccomp profile {file}"))?;
                security.set_seccomp(Seccomp::Profile);
            }
            _ => bail!(
                "unsupported --security-opt {opt:?}: use no-new-privileges, seccomp=unconfined or seccomp=FILE"
            ),
        }
    }
    for entry in sysctls {
        let Some((key, value)) = entry.split_once('=') else {
            bail!("invalid --sysctl {entry:?}: use KEY=VALUE");
        };
        // A key given twice: the last value, as Docker's map keeps it.
        security.sysctls.retain(|s| s.key != key);
        security.sysctls.push(Sysctl {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(security)
}

/// `tartan run`; returns the exit code to leave with.
pub async fn run(args: RunArgs, api_socket: &Path) -> Result<i32> {
    if args.tty && args.interactive && !std::io::stdin().is_terminal() && !args.detach {
        bail!("the input device is not a TTY; drop -t or run from a terminal");
    }
    let security = security_flags(
        args.privileged,
        &args.security_opt,
        args.cap_add,
        args.cap_drop,
        &args.sysctl,
    )?;
    let resources = crate::cli::limits::resources_flags(
        args.memory.as_deref(),
        args.memory_swap.as_deref(),
        args.cpus.as_deref(),
        args.cpu_shares,
        args.pids_limit,
    )?;
    let mut image_and_command = args.image_and_command.into_iter();
    // Clap requires one value at least.
    let image = image_and_command.next().unwrap_or_default();
    let command: Vec<String> = image_and_command.collect();
    let network = NetworkRequest::parse(args.net.as_deref().unwrap_or_default())?;
    if network == NetworkRequest::Host && (!args.publish.is_empty() || args.publish_all) {
        // Docker's warning: the container has the host's ports already.
        eprintln!("WARNING: Published ports are discarded when using host network mode");
    }
    let detach_keys = DetachKeys::or_default(args.detach_keys.as_deref())?;
    let mut client = api::connect(api_socket).await?;
    let container = client
        .run_container(RunRequest {
            image,
            args: command,
            name: args.name.unwrap_or_default(),
            hostname: args.hostname.unwrap_or_default(),
            env: expand_env(&args.env),
            workdir: args.workdir.unwrap_or_default(),
            network: spec::network_to_pb(&network),
            ip: args.ip.unwrap_or_default(),
            tty: args.tty,
            interactive: args.interactive,
            detach: args.detach,
            auto_remove: args.rm,
            security: Some(security),
            publish: args.publish,
            publish_all: args.publish_all,
            entrypoint: args.entrypoint,
            user: args.user.unwrap_or_default(),
            volumes: args.volume.iter().map(|v| absolute_source(v)).collect(),
            volumes_from: args.volumes_from,
            restart: args.restart.unwrap_or_default(),
            links: args.link,
            add_hosts: args.add_host,
            network_aliases: args.network_alias,
            resources: Some(resources),
        })
        .await;
    let container = match container {
        Ok(response) => response.into_inner(),
        Err(status) => {
            // A command that could not run leaves with its code (127, 126), as in Docker.
            let code = status
                .metadata()
                .get(api::EXIT_CODE_KEY)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok());
            match code {
                Some(code) => {
                    eprintln!("tartan: {}", status.message());
                    return Ok(code);
                }
                None => return Err(refused(status)),
            }
        }
    };
    if args.detach {
        crate::cli::stdout::println(&container.id)?;
        return Ok(0);
    }
    // As Docker's CLI: with a terminal, Ctrl-C travels through it instead.
    let sig_proxy = args.sig_proxy && !args.tty;
    let session = SessionOptions {
        tty: args.tty,
        interactive: args.interactive,
        sig_proxy,
        close_stdin_at_end: true,
        // As Docker, the keys are read only on a terminal session.
        detach_keys: args.tty.then_some(detach_keys),
        raw_terminal: args.tty,
    };
    let code = match stream_session(&container.attach_socket, session).await? {
        SessionEnd::Exited(code) => code,
        // Left running; with --rm the agent removes it when it ends.
        SessionEnd::Detached => return Ok(0),
    };
    if args.rm {
        // The agent removes it too when it sees it end; whoever is second
        // finds nothing. Either way it is gone when this returns.
        let removed = client
            .remove_container(RemoveContainerRequest {
                container: container.id,
                force: false,
                // As Docker's --rm: anonymous volumes go too.
                volumes: true,
            })
            .await;
        if let Err(status) = removed {
            if status.code() != tonic::Code::NotFound {
                eprintln!("tartan: removing the container: {}", status.message());
            }
        }
    }
    Ok(code)
}

fn window_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ into a winsize we own.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut size) } == 0
        || unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut size) } == 0
    {
        Some((size.ws_row, size.ws_col))
    } else {
        None
    }
}

/// The signals a foreground `run` passes on, as Docker's CLI does (it
/// passes all it can catch; these are the ones sent to a command in practice).
const PROXIED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// How a session with a container's supervisor goes (`run` in the
/// foreground, `attach`).
pub struct SessionOptions {
    pub tty: bool,
    /// Pass this command's standard input on.
    pub interactive: bool,
    /// Pass the signals this command receives on.
    pub sig_proxy: bool,
    /// The end of this command's input closes the container's.
    pub close_stdin_at_end: bool,
    /// Typed on the input, these end the session and leave the container running.
    pub detach_keys: Option<DetachKeys>,
    /// Put this terminal in raw mode (when it is one) for the session.
    pub raw_terminal: bool,
}

/// How a session ended.
pub enum SessionEnd {
    /// The container ended with this code.
    Exited(i32),
    /// The detach keys were typed: the container goes on.
    Detached,
}

/// Streams the container's output here and this terminal's input there,
/// until the supervisor reports the exit code or the detach keys are typed.
pub async fn stream_session(socket: &str, options: SessionOptions) -> Result<SessionEnd> {
    let SessionOptions {
        tty,
        interactive,
        sig_proxy,
        close_stdin_at_end,
        detach_keys,
        raw_terminal,
    } = options;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| format!("attaching to the container at {socket}"))?;
    let (mut from_shim, mut to_shim) = stream.into_split();
    let raw = (raw_terminal && std::io::stdin().is_terminal()).then(|| RawMode::enable(0));
    let (frames, mut outgoing) = tokio::sync::mpsc::channel::<Frame>(16);
    tokio::spawn(async move {
        while let Some(frame) = outgoing.recv().await {
            if to_shim.write_all(&frame.to_bytes()).await.is_err() {
                return;
            }
        }
    });
    if tty {
        if let Some((rows, cols)) = window_size() {
            // A closed channel means the session already ended: nothing to resize.
            let _ = frames.send(Frame::Resize { rows, cols }).await;
        }
        let resizes = frames.clone();
        if let Ok(mut winch) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
        {
            tokio::spawn(async move {
                while winch.recv().await.is_some() {
                    if let Some((rows, cols)) = window_size() {
                        if resizes.send(Frame::Resize { rows, cols }).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    }
    if sig_proxy {
        for signal in PROXIED_SIGNALS {
            let mut caught =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(signal))
                    .with_context(|| format!("catching signal {signal} to pass it on"))?;
            let proxy = frames.clone();
            tokio::spawn(async move {
                while caught.recv().await.is_some() {
                    if proxy.send(Frame::Signal(signal)).await.is_err() {
                        return;
                    }
                }
            });
        }
    }
    let (detached_tx, mut detached) = tokio::sync::mpsc::channel::<()>(1);
    if interactive {
        let input = frames.clone();
        let mut matcher = detach_keys.map(EscapeMatcher::new);
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if close_stdin_at_end {
                            // A closed channel means the session already ended.
                            let _ = input.send(Frame::StdinClose).await;
                        }
                        return;
                    }
                    Ok(n) => {
                        let (data, detach) = match &mut matcher {
                            Some(matcher) => matcher.feed(&buf[..n]),
                            None => (buf[..n].to_vec(), false),
                        };
                        if !data.is_empty() && input.send(Frame::Stdin(data)).await.is_err() {
                            return;
                        }
                        if detach {
                            let _ = detached_tx.send(()).await;
                            return;
                        }
                    }
                }
            }
        });
    }
    drop(frames);
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    let mut decoder = FrameDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let code = 'session: loop {
        let n = tokio::select! {
            read = from_shim.read(&mut buf) => read.context("reading from the container")?,
            Some(()) = detached.recv() => {
                drop(raw);
                // Docker's words on a detach.
                eprintln!("read escape sequence");
                return Ok(SessionEnd::Detached);
            }
        };
        if n == 0 {
            break 'session None;
        }
        decoder.push(&buf[..n]);
        while let Some(frame) = decoder.next_frame()? {
            match frame {
                Frame::Stdout(data) => {
                    stdout.write_all(&data).await?;
                    stdout.flush().await?;
                }
                Frame::Stderr(data) => {
                    stderr.write_all(&data).await?;
                    stderr.flush().await?;
                }
                Frame::Exit(code) => break 'session Some(code),
                _ => {}
            }
        }
    };
    drop(raw);
    code.map(SessionEnd::Exited)
        .context("the container's supervisor went away without an exit status")
}

/// `-v ./dir:/path`: a source relative to this shell's directory (starting
/// with `.`) is made absolute here, as Docker's CLI does; the agent's
/// directory would mean nothing to the operator.
fn absolute_source(volume: &str) -> String {
    match volume.split_once(':') {
        Some((source, rest)) if source.starts_with('.') => match std::env::current_dir() {
            Ok(cwd) => format!("{}:{rest}", cwd.join(source).display()),
            Err(_) => volume.to_string(),
        },
        _ => volume.to_string(),
    }
}

pub async fn ps(args: PsArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let list = client
        .list_containers(ListContainersRequest { all: args.all })
        .await
        .map_err(refused)?
        .into_inner();
    if args.quiet {
        for c in &list.containers {
            crate::cli::stdout::println(&c.id[..12.min(c.id.len())])?;
        }
    } else {
        crate::cli::stdout::print(crate::cli::status::containers_table(&list.containers))?;
    }
    Ok(())
}

pub async fn inspect(args: NamesArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let mut out = Vec::new();
    for name in args.containers {
        let c = client
            .inspect_container(ContainerRequest { container: name })
            .await
            .map_err(refused)?
            .into_inner();
        out.push(crate::cli::status::container_json(&c));
    }
    crate::cli::stdout::println(serde_json::to_string_pretty(&out)?)
}

pub async fn logs(args: LogsArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let mut entries = client
        .container_logs(LogsRequest {
            container: args.container,
            follow: args.follow,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(entry) = entries.message().await.map_err(refused)? {
        if entry.stderr {
            stderr.write_all(&entry.data).await?;
            stderr.flush().await?;
        } else {
            crate::cli::stdout::write(&mut stdout, &entry.data).await?;
        }
    }
    Ok(())
}

/// Applies `op` to each container named, printing each name done, as
/// Docker does; failures are reported one line each and make the result fail.
async fn each<F, Fut>(names: Vec<String>, mut op: F) -> Result<()>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let mut failures = 0;
    for name in names {
        match op(name.clone()).await {
            // A closed output must not leave the other containers undone.
            Ok(()) => match crate::cli::stdout::println(&name) {
                Err(err) if !crate::cli::stdout::closed(&err) => return Err(err),
                _ => {}
            },
            Err(err) => {
                eprintln!("tartan: {err:#}");
                failures += 1;
            }
        }
    }
    if failures > 0 {
        bail!("{failures} of the containers named failed");
    }
    Ok(())
}

/// `tartan stop`, or with `restart` set, `tartan restart`.
pub async fn stop(args: StopArgs, restart: bool, api_socket: &Path) -> Result<()> {
    let client = api::connect(api_socket).await?;
    each(args.containers, |container| {
        let mut client = client.clone();
        async move {
            let request = StopRequest {
                container,
                timeout_seconds: args.time,
            };
            if restart {
                client.restart_container(request).await.map_err(refused)?;
            } else {
                client.stop_container(request).await.map_err(refused)?;
            }
            Ok(())
        }
    })
    .await
}

pub async fn start(args: NamesArgs, api_socket: &Path) -> Result<()> {
    let client = api::connect(api_socket).await?;
    each(args.containers, |container| {
        let mut client = client.clone();
        async move {
            client
                .start_container(ContainerRequest { container })
                .await
                .map_err(refused)?;
            Ok(())
        }
    })
    .await
}

pub async fn rm(args: RmArgs, api_socket: &Path) -> Result<()> {
    let client = api::connect(api_socket).await?;
    each(args.containers, |container| {
        let mut client = client.clone();
        async move {
            client
                .remove_container(RemoveContainerRequest {
                    container,
                    force: args.force,
                    volumes: args.volumes,
                })
                .await
                .map_err(refused)?;
            Ok(())
        }
    })
    .await
}

pub async fn export(args: ExportArgs, api_socket: &Path) -> Result<()> {
    if args.output.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a tarball to a terminal; use -o FILE or redirect");
    }
    let mut client = api::connect(api_socket).await?;
    let mut chunks = client
        .export_container(ContainerRequest {
            container: args.container,
        })
        .await
        .map_err(refused)?
        .into_inner();
    match &args.output {
        Some(path) => {
            // Written beside the target and renamed at the end: a failed export leaves no file.
            let staging = path.with_extension(format!("partial-{}", std::process::id()));
            let result = async {
                let mut file = tokio::fs::File::create(&staging)
                    .await
                    .with_context(|| format!("creating {}", staging.display()))?;
                let mut progress = crate::cli::progress::Progress::on_terminal("Exporting", None);
                while let Some(chunk) = chunks.message().await.map_err(refused)? {
                    file.write_all(&chunk.data).await?;
                    progress.add(chunk.data.len() as u64);
                }
                file.sync_all().await?;
                progress.finish();
                tokio::fs::rename(&staging, path)
                    .await
                    .with_context(|| format!("writing {}", path.display()))
            }
            .await;
            match (result, tokio::fs::remove_file(&staging).await) {
                (Err(err), Err(undo)) if undo.kind() != std::io::ErrorKind::NotFound => {
                    Err(crate::teardown::and_undo(err, undo))
                }
                (result, _) => result,
            }
        }
        None => {
            let mut stdout = tokio::io::stdout();
            let mut progress = crate::cli::progress::Progress::on_terminal("Exporting", None);
            while let Some(chunk) = chunks.message().await.map_err(refused)? {
                crate::cli::stdout::write(&mut stdout, &chunk.data).await?;
                progress.add(chunk.data.len() as u64);
            }
            progress.finish();
            Ok(())
        }
    }
}

impl ExecArgs {
    /// Whether a command follows the container.
    pub fn has_command(&self) -> bool {
        self.container_and_command.len() > 1
    }
}

/// `tartan exec`: asks the agent where the container is, then enters it
/// from this process. Runs before any async runtime thread exists, since
/// entering namespaces needs a single-threaded process.
pub fn exec(args: ExecArgs, api_socket: &Path) -> Result<i32> {
    let mut container_and_command = args.container_and_command.into_iter();
    // Clap requires one value at least, and main a command after it.
    let container_name = container_and_command.next().unwrap_or_default();
    let command: Vec<String> = container_and_command.collect();
    let lookup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let container = lookup.block_on(async {
        let mut client = api::connect(api_socket).await?;
        let container = client
            .inspect_container(ContainerRequest {
                container: container_name,
            })
            .await
            .map_err(refused)?
            .into_inner();
        anyhow::Ok(container)
    })?;
    // The runtime and its threads must be gone before the fork.
    drop(lookup);
    if container.state != "running" || container.pid == 0 {
        bail!("container {} is not running", container.name);
    }
    if args.tty && args.interactive && !std::io::stdin().is_terminal() {
        bail!("the input device is not a TTY; drop -t or run from a terminal");
    }
    // As Docker's exec: the links' variables, under the container's own.
    let mut env = crate::containers::link_env::with_link_env(&container.env, &container.link_env);
    for entry in expand_env(&args.env) {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
    let security = spec::security_from_pb(container.security.unwrap_or_default())
        .context("the container's privileges")?;
    let spec = ExecSpec {
        security,
        pid: container.pid,
        args: command,
        env,
        cwd: args.workdir.unwrap_or(container.workdir),
        tty: args.tty,
        interactive: args.interactive,
        user: container.user,
    };
    Ok(tartan_runtime::container::exec::exec_in(&spec)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::status::{security_opt_flags, sysctl_flags};

    #[test]
    fn security_flags_read_dockers_spellings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("profile.json");
        std::fs::write(&file, r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#).expect("profile");
        let parsed = security_flags(
            false,
            &[
                "no-new-privileges:true".into(),
                format!("seccomp={}", file.display()),
            ],
            vec!["NET_ADMIN".into()],
            Vec::new(),
            &[
                "net.ipv4.ip_forward=1".into(),
                "net.ipv4.ip_forward=0".into(),
            ],
        )
        .expect("valid");
        assert!(parsed.no_new_privileges);
        assert_eq!(parsed.seccomp(), Seccomp::Profile);
        assert!(parsed.seccomp_profile.contains("SCMP_ACT_ALLOW"));
        assert_eq!(sysctl_flags(&parsed), ["net.ipv4.ip_forward=0"]);
        assert_eq!(
            security_opt_flags(&parsed),
            [
                "no-new-privileges".to_string(),
                format!("seccomp={}", parsed.seccomp_profile)
            ]
        );
        let unconfined = security_flags(
            false,
            &[
                "seccomp:unconfined".into(),
                "no-new-privileges=false".into(),
            ],
            Vec::new(),
            Vec::new(),
            &[],
        )
        .expect("valid");
        assert_eq!(security_opt_flags(&unconfined), ["seccomp=unconfined"]);
        for (opts, sysctls) in [
            (vec!["apparmor=unconfined".to_string()], vec![]),
            (vec!["seccomp".to_string()], vec![]),
            (
                vec!["seccomp=/nonexistent/profile.json".to_string()],
                vec![],
            ),
            (vec![], vec!["net.ipv4".to_string()]),
        ] {
            assert!(
                security_flags(false, &opts, Vec::new(), Vec::new(), &sysctls).is_err(),
                "{opts:?} {sysctls:?} was accepted"
            );
        }
    }
}
