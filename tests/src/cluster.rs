//! A small Tartan cluster on one machine: an underlay bridge in a hub
//! namespace, etcd in the hub, and N hosts (namespaces) each running an
//! agent; containers are namespaces attached through an agent's API.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};

use crate::agent::{Agent, AgentConfig};
use crate::etcd::EtcdServer;
use crate::netns::{Host, Netns, Underlay};
use crate::{prereq, unique_prefix};

/// How long an agent may take to be ready.
pub const READY: Duration = Duration::from_secs(30);

pub struct Cluster {
    // Field order is drop order: agents first, then etcd, then the namespaces.
    pub agents: Vec<Agent>,
    pub etcd: EtcdServer,
    pub hosts: Vec<Host>,
    pub underlay: Underlay,
    pub prefix: String,
    containers: Vec<Netns>,
}

/// A container namespace attached to a host's bridge.
pub struct Container {
    pub name: String,
    pub address: Ipv4Addr,
}

impl Cluster {
    /// Starts etcd, writes `config`, and brings up `hosts` agents on the
    /// underlay `10.<octet>.0.0/24`.
    pub fn start(name: &str, octet: u8, config: &str, hosts: usize) -> Result<Cluster> {
        Self::start_with(name, octet, config, hosts, &[])
    }

    /// As `start`, with extra `tartan agent` arguments for every agent.
    pub fn start_with(
        name: &str,
        octet: u8,
        config: &str,
        hosts: usize,
        agent_args: &[&str],
    ) -> Result<Cluster> {
        Self::start_configured(name, octet, config, hosts, &|agent| {
            agent
                .extra_args
                .extend(agent_args.iter().map(|a| a.to_string()));
        })
    }

    /// As `start`, with each agent's configuration adjusted by `configure`
    /// (its environment, its arguments) before it starts.
    pub fn start_configured(
        name: &str,
        octet: u8,
        config: &str,
        hosts: usize,
        configure: &dyn Fn(&mut AgentConfig),
    ) -> Result<Cluster> {
        prereq::require_root()?;
        prereq::require_binary("ip")?;
        let underlay = Underlay::create(name, (Ipv4Addr::new(10, octet, 0, 0), 24))?;
        let etcd = EtcdServer::start_on(underlay.hub_ip(), Some(underlay.hub().name()))?;
        let mut cluster = Cluster {
            agents: Vec::new(),
            etcd,
            hosts: Vec::new(),
            underlay,
            prefix: unique_prefix(name),
            containers: Vec::new(),
        };
        cluster.etcdctl(&["put", &format!("{}/config", cluster.prefix), config])?;
        for i in 0..hosts {
            let host = cluster.underlay.add_host(&format!("h{i}"))?;
            let mut agent_config = AgentConfig {
                etcd_endpoints: cluster.etcd.endpoint(),
                etcd_prefix: cluster.prefix.clone(),
                netns: Some(host.netns.name().to_string()),
                ..AgentConfig::default()
            };
            configure(&mut agent_config);
            let agent = Agent::start(agent_config)?;
            cluster.hosts.push(host);
            cluster.agents.push(agent);
        }
        for agent in &cluster.agents {
            agent.wait_ready(READY)?;
        }
        Ok(cluster)
    }

    /// etcdctl against the cluster's etcd, run in the hub; returns stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let endpoint = self.etcd.endpoint();
        let mut cmd = self.underlay.hub().command("etcdctl");
        cmd.args(["--endpoints", &endpoint])
            .args(args)
            .env("ETCDCTL_API", "3");
        let out = cmd.output().context("running etcdctl")?;
        if !out.status.success() {
            bail!(
                "etcdctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A new container namespace attached to host `host` through its agent's API.
    pub fn container(&mut self, host: usize, name: &str) -> Result<Container> {
        let ns = Netns::create(name)?;
        let out = self.agents[host].cli(&["attach", ns.name()])?;
        ensure!(
            out.status.success(),
            "tartan attach {} failed: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let address: Ipv4Addr = printed
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .with_context(|| format!("attach printed {printed:?}"))?;
        let container = Container {
            name: ns.name().to_string(),
            address,
        };
        self.containers.push(ns);
        Ok(container)
    }

    /// Runs a program inside a container namespace.
    pub fn in_container(
        &self,
        container: &Container,
        program: &str,
        args: &[&str],
    ) -> Result<std::process::Output> {
        let ns = self
            .containers
            .iter()
            .find(|ns| ns.name() == container.name)
            .context("no such container")?;
        ns.exec(program, args)
    }

    /// One ping from `from` to `to`; Ok(true) when it was answered.
    pub fn ping(&self, from: &Container, to: Ipv4Addr) -> Result<bool> {
        let out = self.in_container(from, "ping", &["-c", "1", "-W", "1", &to.to_string()])?;
        Ok(out.status.success())
    }

    /// The route to `destination` in host `host`'s namespace, as `ip route` prints it.
    pub fn route(&self, host: usize, destination: &str) -> Result<String> {
        let out = self.hosts[host]
            .netns
            .exec("ip", &["route", "show", destination])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

/// Receives one connection and prints how many bytes came and their SHA-256.
const TCP_SINK: &str = r#"
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
s.settimeout(20)
c, _ = s.accept()
c.settimeout(20)
h, n = hashlib.sha256(), 0
while True:
    d = c.recv(65536)
    if not d:
        break
    h.update(d)
    n += len(d)
print(n, h.hexdigest())
"#;

/// Connects (retrying while the sink starts), sends N pseudo-random bytes, prints count and SHA-256.
const TCP_SOURCE: &str = r#"
import hashlib, random, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = random.Random(7).randbytes(n)
deadline = time.time() + 10
while True:
    try:
        c = socket.create_connection((host, port), timeout=5)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.1)
c.settimeout(20)
c.sendall(data)
c.shutdown(socket.SHUT_WR)
c.recv(1)
print(n, hashlib.sha256(data).hexdigest())
"#;

impl Cluster {
    /// Sends `bytes` over TCP from one container to another and checks that
    /// exactly those bytes arrived.
    pub fn tcp_transfer(&self, from: &Container, to: &Container, bytes: usize) -> Result<()> {
        prereq::require_binary("python3")?;
        let sink_ns = self
            .containers
            .iter()
            .find(|ns| ns.name() == to.name)
            .context("no such container")?;
        let mut sink = sink_ns
            .command("python3")
            .args(["-c", TCP_SINK, "5201"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("starting the TCP sink")?;
        let sent = self.in_container(
            from,
            "python3",
            &[
                "-c",
                TCP_SOURCE,
                &to.address.to_string(),
                "5201",
                &bytes.to_string(),
            ],
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while sink.try_wait()?.is_none() {
            if std::time::Instant::now() > deadline {
                let _ = sink.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let received = sink.wait_with_output()?;
        let sent = sent?;
        let sent_text = String::from_utf8_lossy(&sent.stdout).trim().to_string();
        let received_text = String::from_utf8_lossy(&received.stdout).trim().to_string();
        ensure!(
            sent.status.success() && !sent_text.is_empty() && sent_text == received_text,
            "TCP transfer {} -> {} failed: sent {sent_text:?} ({}), received {received_text:?} ({})",
            from.address,
            to.address,
            String::from_utf8_lossy(&sent.stderr).trim(),
            String::from_utf8_lossy(&received.stderr).trim()
        );
        Ok(())
    }
}
