//! A real etcd server on free ports with a private data directory.
//!
//! Tests run against the real thing rather than a mock so that watch
//! semantics, compaction and lease expiry are etcd's own.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::pki::TestPki;
use crate::{netns, prereq};

/// How long etcd may take to answer a first request.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports tried when another process grabbed ours between probe and bind.
const START_ATTEMPTS: usize = 3;

/// An etcd process; killed and its data removed on drop.
pub struct EtcdServer {
    dir: TempDir,
    ip: Ipv4Addr,
    client_port: u16,
    peer_port: u16,
    netns: Option<String>,
    /// Serve clients over TLS, requiring client certificates.
    tls: Option<TestPki>,
    child: Option<Child>,
}

/// Two distinct free ports on `ip`: both listeners are held at once so the
/// kernel cannot hand out the same port twice, then released for etcd.
fn free_ports(ip: Ipv4Addr) -> Result<(u16, u16)> {
    let a = TcpListener::bind((ip, 0)).with_context(|| format!("finding a free port on {ip}"))?;
    let b = TcpListener::bind((ip, 0)).with_context(|| format!("finding a free port on {ip}"))?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

/// Runs `f` on a thread of its own, inside `netns` if given: a place where a
/// private tokio runtime may be built whatever runtime the caller is in.
fn on_thread<T: Send>(netns: Option<&str>, f: impl FnOnce() -> T + Send) -> Result<T> {
    match netns {
        Some(ns) => netns::in_netns(ns, f),
        None => std::thread::scope(|scope| {
            scope
                .spawn(f)
                .join()
                .map_err(|_| anyhow::anyhow!("the etcd probe thread panicked"))
        }),
    }
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl EtcdServer {
    /// Starts etcd on 127.0.0.1 in this namespace.
    pub fn start() -> Result<EtcdServer> {
        Self::start_on(Ipv4Addr::LOCALHOST, None)
    }

    /// Starts etcd listening on `ip`, inside the named network namespace if
    /// given (where `ip` lives). Such an etcd is out of this process's reach:
    /// talk to it from that namespace or one routed to it (etcdctl through
    /// `ip netns exec`, or [`netns::in_netns`]).
    pub fn start_on(ip: Ipv4Addr, netns: Option<&str>) -> Result<EtcdServer> {
        Self::start_with(ip, netns, None)
    }

    /// Starts etcd on 127.0.0.1 serving clients over TLS with client certificates required.
    pub fn start_tls(pki: &TestPki) -> Result<EtcdServer> {
        Self::start_with(Ipv4Addr::LOCALHOST, None, Some(pki.clone()))
    }

    fn start_with(ip: Ipv4Addr, netns: Option<&str>, tls: Option<TestPki>) -> Result<EtcdServer> {
        prereq::require_binary("etcd")?;
        if netns.is_some() {
            prereq::require_root()?;
        }
        let mut server = EtcdServer {
            dir: tempfile::Builder::new().prefix("tartan-etcd-").tempdir()?,
            ip,
            client_port: 0,
            peer_port: 0,
            netns: netns.map(str::to_string),
            tls,
            child: None,
        };
        let mut attempt = 1;
        loop {
            let (client_port, peer_port) = match netns {
                Some(ns) => netns::in_netns(ns, || free_ports(ip))??,
                None => free_ports(ip)?,
            };
            server.client_port = client_port;
            server.peer_port = peer_port;
            // A fresh log per attempt, so an old attempt's bind error cannot look like this one's.
            let result = server.spawn(true).and_then(|()| server.wait_ready());
            let Err(err) = result else {
                return Ok(server);
            };
            let raced = std::fs::read_to_string(server.log_path())
                .is_ok_and(|log| log.contains("address already in use"));
            let _ = server.kill();
            if !raced || attempt == START_ATTEMPTS {
                return Err(err);
            }
            // A member bootstrapped with the lost ports must not be reused with new ones.
            let _ = std::fs::remove_dir_all(server.data_dir());
            attempt += 1;
        }
    }

    /// `http://ip:port` (`https` with TLS), as etcd clients and the agent take it.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.client_port)
    }

    /// The client address, for a [`crate::proxy::TcpProxy`] in front of it.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.client_port))
    }

    /// The namespace etcd runs in, if not this process's.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// The last `lines` of etcd's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn connect_options(&self) -> Result<Option<etcd_client::ConnectOptions>> {
        let Some(pki) = &self.tls else {
            return Ok(None);
        };
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&pki.ca)?))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&pki.client_cert)?,
                std::fs::read(&pki.client_key)?,
            ));
        Ok(Some(etcd_client::ConnectOptions::new().with_tls(tls)))
    }

    /// A client in this process's namespace (so not for an etcd started in
    /// another namespace).
    pub async fn client(&self) -> Result<etcd_client::Client> {
        etcd_client::Client::connect([self.endpoint()], self.connect_options()?)
            .await
            .context("connecting to the test etcd")
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                // `ip netns exec` execs the program: the child's pid is etcd's own.
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, program]);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn spawn(&mut self, fresh_log: bool) -> Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://{}:{}", self.ip, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!fresh_log)
            .truncate(fresh_log)
            .open(self.log_path())?;
        let mut tls_args: Vec<OsString> = Vec::new();
        if let Some(pki) = &self.tls {
            for (flag, path) in [
                ("--cert-file", &pki.server_cert),
                ("--key-file", &pki.server_key),
                ("--trusted-ca-file", &pki.ca),
            ] {
                tls_args.push(flag.into());
                tls_args.push(path.into());
            }
            tls_args.push("--client-cert-auth".into());
        }
        let child = self
            .command("etcd")
            .args(&tls_args)
            .args(["--name", "default", "--data-dir"])
            .arg(self.data_dir())
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until a real client gets a key, from etcd's own namespace; fails
    /// early if etcd exits, and with its log tail either way.
    fn wait_ready(&mut self) -> Result<()> {
        let endpoint = self.endpoint();
        let options = self.connect_options()?;
        let netns = self.netns.clone();
        let child = &mut self.child;
        let result = on_thread(netns.as_deref(), move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the probe runtime")?;
            runtime.block_on(async {
                let deadline = Instant::now() + READY_TIMEOUT;
                loop {
                    if let Some(child) = child.as_mut() {
                        if let Some(status) = child.try_wait()? {
                            bail!("etcd exited with {status}");
                        }
                    }
                    let probe = async {
                        let mut client =
                            etcd_client::Client::connect([&endpoint], options.clone()).await?;
                        client.get("/tartan-test-probe", None).await?;
                        anyhow::Ok(())
                    };
                    let last = match tokio::time::timeout(Duration::from_secs(2), probe).await {
                        Ok(Ok(())) => return Ok(()),
                        Ok(Err(err)) => format!("{err:#}"),
                        Err(_) => "a get took over 2s".to_string(),
                    };
                    if Instant::now() >= deadline {
                        bail!("etcd at {endpoint} did not answer within {READY_TIMEOUT:?}; last error: {last}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .and_then(|inner| inner);
        result.with_context(|| {
            format!(
                "etcd did not become ready; its log ends:\n{}",
                self.log_tail(15)
            )
        })
    }

    /// The etcd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: i32) -> Result<()> {
        let pid = self.pid().context("etcd is not running")?;
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid as i32, signal) } != 0 {
            bail!("signalling etcd: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGSTOP: etcd keeps its sockets but answers nothing, like a hung server.
    /// Returns once every etcd thread is stopped: `kill` only queues the stop, and a
    /// thread still running could answer one more request.
    pub fn pause(&self) -> Result<()> {
        self.signal(libc::SIGSTOP)?;
        let pid = self.pid().context("etcd is not running")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if all_threads_stopped(pid)? {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd (pid {pid}) did not stop within 5s of SIGSTOP");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGCONT after [`EtcdServer::pause`].
    pub fn resume(&self) -> Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// SIGKILLs etcd and waits for it (a paused etcd too).
    pub fn kill(&mut self) -> Result<()> {
        crate::kill_child(&mut self.child, "etcd")
    }

    /// Starts etcd again on the same ports with the same data, and waits until it answers.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn(false)?;
        self.wait_ready()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        // The data directory goes with `dir`, dropped right after this.
        let _ = self.kill();
    }
}

/// Whether every thread of `pid` is in the stopped state (`T` in /proc/PID/task/*/stat).
fn all_threads_stopped(pid: u32) -> Result<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of etcd (pid {pid})"))?;
    for task in tasks {
        let stat = match std::fs::read_to_string(task?.path().join("stat")) {
            Ok(stat) => stat,
            // A thread that exited meanwhile is not running either.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err).context("reading a thread's stat"),
        };
        // The state follows the parenthesised command name, which may itself hold spaces.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if state != Some('T') {
            return Ok(false);
        }
    }
    Ok(true)
}
