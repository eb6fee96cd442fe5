//! Network namespaces the tests create, and a simulated underlay: a hub
//! namespace with a bridge, and host namespaces wired to it by veth pairs.
//! Nothing here touches the test machine's own interfaces or routes: every
//! `ip` command that creates something names the namespace it works in.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use anyhow::{bail, ensure, Context, Result};

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

/// Runs `f` on a fresh thread that has entered the named network namespace,
/// so sockets `f` opens (a probe, a listener, a tokio runtime of its own and
/// the threads that runtime spawns) live there. The calling thread, and the
/// rest of the process, stay where they are.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = Path::new("/run/netns").join(name);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                // SAFETY: a valid namespace fd; CLONE_NEWNET moves only this thread.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!(
                        "entering network namespace {name}: {}",
                        std::io::Error::last_os_error()
                    );
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("a thread inside namespace {name} panicked"))?
    })
}

/// Kills every process left in a namespace, then deletes it. Best effort:
/// used from Drop, where there is nobody to report to.
fn destroy(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

/// A named network namespace, deleted (with any process left in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tt-<prefix>-<pid>-<n>`: unique within and across test
    /// processes, and recognisable if something ever leaks.
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

    /// The bind mount `ip netns` keeps, for tools that take a namespace path.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// A command that runs inside the namespace (`ip netns exec NAME program`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs a program inside the namespace and returns its output, whatever its exit status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        self.command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in {}", self.name))
    }

    /// Whether one ping from this namespace to `to` is answered within a second.
    pub fn pings(&self, to: impl std::fmt::Display) -> Result<bool> {
        let to = to.to_string();
        Ok(self
            .exec("ping", &["-c", "1", "-W", "1", &to])?
            .status
            .success())
    }

    /// Pings `to` until one answers, five times at most: the first frames
    /// of a new path wait on ARP and on switches learning.
    pub fn reaches(&self, to: impl std::fmt::Display) -> Result<bool> {
        let to = to.to_string();
        for _ in 0..5 {
            if self.pings(&to)? {
                return Ok(true);
            }
        }
        Ok(false)
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

    /// Runs `f` on a thread inside this namespace; see [`in_netns`].
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.name, f)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        destroy(&self.name);
    }
}

/// A simulated host on the underlay.
pub struct Host {
    pub netns: Netns,
    /// The address of its `eth0`.
    pub ip: Ipv4Addr,
}

/// A hub namespace whose bridge `br0` (address .254) joins the hosts.
/// Dropping it deletes the hub and any host namespace still alive.
pub struct Underlay {
    hub: Netns,
    base: Ipv4Addr,
    prefix_len: u8,
    prefix: String,
    /// Host namespaces created so far; the count also gives the next address.
    hosts: Mutex<Vec<String>>,
}

impl Underlay {
    /// Creates the hub for the `/prefix_len` segment containing `base` (a /24
    /// in practice: hosts get .1, .2, … and the hub .254).
    pub fn create(prefix: &str, (base, prefix_len): (Ipv4Addr, u8)) -> Result<Underlay> {
        ensure!(
            (1..=24).contains(&prefix_len),
            "the underlay needs a /24 or larger, not /{prefix_len}"
        );
        let hub = Netns::create(&format!("{prefix}hub"))?;
        let underlay = Underlay {
            hub,
            base,
            prefix_len,
            prefix: prefix.to_string(),
            hosts: Mutex::new(Vec::new()),
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

    /// The bridge's address, .254: the hosts' default gateway and where a hub etcd listens.
    pub fn hub_ip(&self) -> Ipv4Addr {
        let o = self.base.octets();
        Ipv4Addr::new(o[0], o[1], o[2], 254)
    }

    /// Adds a host namespace with `eth0` on the bridge, the next address and
    /// a default route via the hub.
    pub fn add_host(&self, suffix: &str) -> Result<Host> {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = u8::try_from(hosts.len() + 1)
            .ok()
            .filter(|n| *n < 254)
            .context("the underlay has no host address left")?;
        let netns = Netns::create(&format!("{}{suffix}", self.prefix))?;
        hosts.push(netns.name().to_string());
        drop(hosts);
        let o = self.base.octets();
        let host_ip = Ipv4Addr::new(o[0], o[1], o[2], n);
        let hub = self.hub.name();
        let hub_end = format!("v{n}");
        // Created in the hub, the host end moved straight into the host namespace.
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

impl Drop for Underlay {
    fn drop(&mut self) {
        // Hosts normally go first (declared later, dropped earlier); this
        // catches any that outlive the underlay. Deleting one twice is harmless:
        // names are never reused.
        let hosts = self
            .hosts
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for name in hosts.drain(..) {
            if Path::new("/run/netns").join(&name).exists() {
                destroy(&name);
            }
        }
        // The hub itself goes when its field drops, right after this.
    }
}
