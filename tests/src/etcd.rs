//! A real etcd server on free ports with a private data directory.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::pki::TestPki;
use crate::{prereq, wait};

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

fn free_port(ip: Ipv4Addr) -> Result<u16> {
    let listener = TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl EtcdServer {
    /// Starts etcd on 127.0.0.1 in this namespace.
    pub fn start() -> Result<EtcdServer> {
        Self::start_on(Ipv4Addr::LOCALHOST, None)
    }

    /// Starts etcd listening on `ip`, inside the named network namespace if
    /// given (where the address lives; the namespace is private, so fixed ports do).
    pub fn start_on(ip: Ipv4Addr, netns: Option<&str>) -> Result<EtcdServer> {
        Self::start_with(ip, netns, None)
    }

    /// Starts etcd on 127.0.0.1 serving clients over TLS with client certificates required.
    pub fn start_tls(pki: &TestPki) -> Result<EtcdServer> {
        Self::start_with(Ipv4Addr::LOCALHOST, None, Some(pki.clone()))
    }

    fn start_with(ip: Ipv4Addr, netns: Option<&str>, tls: Option<TestPki>) -> Result<EtcdServer> {
        prereq::require_binary("etcd")?;
        prereq::require_binary("etcdctl")?;
        let (client_port, peer_port) = match netns {
            Some(_) => (2379, 2380),
            None => (free_port(ip)?, free_port(ip)?),
        };
        let mut server = EtcdServer {
            dir: tempfile::Builder::new().prefix("tartan-etcd-").tempdir()?,
            ip,
            client_port,
            peer_port,
            netns: netns.map(str::to_string),
            tls,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.ip, self.client_port)
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.client_port))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// A client in this process's namespace.
    pub async fn client(&self) -> Result<etcd_client::Client> {
        let options = match &self.tls {
            Some(pki) => {
                let tls = etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&pki.ca)?))
                    .identity(etcd_client::Identity::from_pem(
                        std::fs::read(&pki.client_cert)?,
                        std::fs::read(&pki.client_key)?,
                    ));
                Some(etcd_client::ConnectOptions::new().with_tls(tls))
            }
            None => None,
        };
        etcd_client::Client::connect([self.endpoint()], options)
            .await
            .context("connecting to the test etcd")
    }

    fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns, program]);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let client_url = self.endpoint();
        let peer_url = format!("http://{}:{}", self.ip, self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut tls_args: Vec<std::ffi::OsString> = Vec::new();
        let mut ctl_tls: Vec<std::ffi::OsString> = Vec::new();
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
            for (flag, path) in [
                ("--cacert", &pki.ca),
                ("--cert", &pki.client_cert),
                ("--key", &pki.client_key),
            ] {
                ctl_tls.push(flag.into());
                ctl_tls.push(path.into());
            }
        }
        let child = self
            .command("etcd")
            .args(&tls_args)
            .args(["--name", "default", "--data-dir"])
            .arg(self.dir.path().join("data"))
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
        let endpoint = self.endpoint();
        let ready = wait::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("etcd exited with {status}");
                }
            }
            let out = self
                .command("etcdctl")
                .args(["--endpoints", &endpoint, "--dial-timeout", "1s"])
                .args(&ctl_tls)
                .args(["endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()?;
            Ok(out.status.success())
        });
        ready.with_context(|| {
            format!(
                "etcd did not become ready; its log ends:\n{}",
                self.log_tail()
            )
        })
    }

    /// SIGKILLs etcd and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        crate::kill_child(&mut self.child, "etcd")
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.kill()?;
        self.spawn()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
