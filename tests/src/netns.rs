//! Network namespaces the tests create, and a simulated underlay: a hub
//! namespace with a bridge, and host namespaces wired to it by veth pairs.
//! Nothing here touches the test machine's own interfaces or routes.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

use crate::prereq;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip` with arguments; an error carries its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted (with any process left in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(prefix: &str) -> Result<Netns> {
        prereq::require_root()?;
        prereq::require_binary("ip")?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("tt-{prefix}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    /// Runs a program in the namespace and fails with its output if it fails.
    pub fn run(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.command(program);
        cmd.args(args);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let out = cmd
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        if !out.status.success() {
            bail!(
                "{program} {} in {} failed: {}{}",
                args.join(" "),
                self.name,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A simulated host on the underlay.
pub struct Host {
    pub netns: Netns,
    pub ip: Ipv4Addr,
}

/// A hub namespace whose bridge `br0` (address .254) joins the hosts.
pub struct Underlay {
    hub: Netns,
    base: Ipv4Addr,
    prefix_len: u8,
    next_host: std::cell::Cell<u8>,
    prefix: String,
}

impl Underlay {
    pub fn create(prefix: &str, (base, prefix_len): (Ipv4Addr, u8)) -> Result<Underlay> {
        let hub = Netns::create(&format!("{prefix}hub"))?;
        let underlay = Underlay {
            hub,
            base,
            prefix_len,
            next_host: std::cell::Cell::new(1),
            prefix: prefix.to_string(),
        };
        let hub = underlay.hub.name();
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        let cidr = format!("{}/{}", underlay.hub_ip(), prefix_len);
        ip(&["-n", hub, "addr", "add", &cidr, "dev", "br0"])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        Ok(underlay)
    }

    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    pub fn hub_ip(&self) -> Ipv4Addr {
        let o = self.base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 254)
    }

    /// Adds a host namespace with `eth0` on the bridge, the next address and a default route via the hub.
    pub fn add_host(&self, suffix: &str) -> Result<Host> {
        let n = self.next_host.get();
        if n >= 254 {
            bail!("the underlay has no host address left");
        }
        self.next_host.set(n + 1);
        let netns = Netns::create(&format!("{}{suffix}", self.prefix))?;
        let o = self.base.octets();
        let host_ip = Ipv4Addr::new(o[0], o[1], o[2], n);
        let hub = self.hub.name();
        let hub_end = format!("v{n}");
        ip(&[
            "-n",
            hub,
            "link",
            "add",
            &hub_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        ip(&["-n", hub, "link", "set", &hub_end, "master", "br0", "up"])?;
        let cidr = format!("{host_ip}/{}", self.prefix_len);
        ip(&["-n", netns.name(), "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", netns.name(), "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            netns.name(),
            "route",
            "add",
            "default",
            "via",
            &self.hub_ip().to_string(),
        ])?;
        Ok(Host { netns, ip: host_ip })
    }
}
