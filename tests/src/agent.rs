//! A `tartan agent` process with its own state dir, subnet file, API socket
//! and log, optionally inside a network namespace.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tempfile::TempDir;

use crate::wait;

/// The `tartan` binary under test: `$TARTAN_BIN`, or the one cargo built
/// beside this test executable (target/<profile>/tartan).
pub fn tartan_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("TARTAN_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("TARTAN_BIN={} does not exist", path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test> → target/<profile>/tartan
    let candidate = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("tartan"))
        .context("no target directory above the test executable")?;
    if !candidate.is_file() {
        bail!(
            "{} does not exist; build it with `cargo build -p tartan-agent` (cargo test --workspace does)",
            candidate.display()
        );
    }
    Ok(candidate)
}

/// Debug for Tartan's own crates, info for the libraries under it.
const LOG_FILTER: &str = "tartan=debug,info";

/// Parses `KEY=VALUE` lines (the subnet file's format); other lines are ignored.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The network an address with prefix belongs to: "10.5.34.1/24" → "10.5.34.0/24".
pub fn network_of(cidr: &str) -> Result<String> {
    let (addr, len) = cidr
        .split_once('/')
        .with_context(|| format!("{cidr:?} has no prefix length"))?;
    let addr: Ipv4Addr = addr
        .parse()
        .with_context(|| format!("{cidr:?}: bad address"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|len| *len <= 32)
        .with_context(|| format!("{cidr:?}: bad prefix length"))?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Ok(format!("{}/{len}", Ipv4Addr::from(u32::from(addr) & mask)))
}

/// How to start one agent.
#[derive(Debug, Clone, Default)]
pub struct AgentConfig {
    pub etcd_endpoints: String,
    pub etcd_prefix: String,
    pub public_ip: Option<Ipv4Addr>,
    pub iface: Option<String>,
    pub subnet_lease_ttl: Option<String>,
    pub subnet_lease_renew_margin: Option<String>,
    /// Run inside this network namespace (`ip netns exec`).
    pub netns: Option<String>,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run the binary under the name `flanneld` with flanneld's Go-style
    /// flags, as a swapped-in flanneld would run.
    pub as_flanneld: bool,
    /// `--no-etcd` and no etcd flags (the etcd fields are unused): ready
    /// once the API serves, with no subnet file.
    pub peer_mode: bool,
}

/// A running (or stopped) agent; killed on drop.
pub struct Agent {
    config: AgentConfig,
    dir: TempDir,
    child: Option<Child>,
    /// When the current process was started: a subnet file older than this
    /// is a previous run's, kept on purpose so the agent can read it back.
    spawned_at: SystemTime,
}

impl Agent {
    pub fn start(config: AgentConfig) -> Result<Agent> {
        let mut agent = Agent {
            config,
            dir: tempfile::Builder::new().prefix("tartan-agent-").tempdir()?,
            child: None,
            spawned_at: SystemTime::now(),
        };
        agent.spawn()?;
        Ok(agent)
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn subnet_file(&self) -> PathBuf {
        self.dir.path().join("subnet.env")
    }

    pub fn api_socket(&self) -> PathBuf {
        self.dir.path().join("tartan.sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn command(&self, program: &Path) -> Command {
        match &self.config.netns {
            Some(ns) => {
                let mut cmd = Command::new("ip");
                cmd.args(["netns", "exec", ns]).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = tartan_bin()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd;
        if self.config.as_flanneld {
            let link = self.dir.path().join("flanneld");
            if !link.exists() {
                std::os::unix::fs::symlink(&bin, &link).context("linking flanneld")?;
            }
            cmd = self.command(&link);
            cmd.arg(format!("-etcd-endpoints={}", self.config.etcd_endpoints))
                .arg(format!("-etcd-prefix={}", self.config.etcd_prefix))
                .arg(format!("-subnet-file={}", self.subnet_file().display()));
        } else if self.config.peer_mode {
            cmd = self.command(&bin);
            // The subnet file is named so that a test can see none is written.
            cmd.args(["agent", "--no-etcd", "--subnet-file"])
                .arg(self.subnet_file());
        } else {
            cmd = self.command(&bin);
            cmd.arg("agent")
                .args(["--etcd-endpoints", &self.config.etcd_endpoints])
                .args(["--etcd-prefix", &self.config.etcd_prefix])
                .arg("--subnet-file")
                .arg(self.subnet_file());
        }
        cmd.arg("--state-dir")
            .arg(self.state_dir())
            .arg("--api-socket")
            .arg(self.api_socket());
        if let Some(ip) = self.config.public_ip {
            cmd.args(["--public-ip", &ip.to_string()]);
        }
        if let Some(iface) = &self.config.iface {
            cmd.args(["--iface", iface]);
        }
        if let Some(ttl) = &self.config.subnet_lease_ttl {
            cmd.args(["--subnet-lease-ttl", ttl]);
        }
        if let Some(margin) = &self.config.subnet_lease_renew_margin {
            cmd.args(["--subnet-lease-renew-margin", margin]);
        }
        cmd.args(&self.config.extra_args);
        // Only what the test says: no TARTAN_* from the environment running the suite.
        for (key, _) in std::env::vars() {
            if key.starts_with("TARTAN_") || key.starts_with("FLANNEL") {
                cmd.env_remove(key);
            }
        }
        // TARTAN_LOG wins over RUST_LOG in the agent; set both to the same filter.
        cmd.env("RUST_LOG", LOG_FILTER)
            .env("TARTAN_LOG", LOG_FILTER);
        for (key, value) in &self.config.env {
            cmd.env(key, value);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tartan agent")?;
        self.child = Some(child);
        self.spawned_at = SystemTime::now();
        Ok(())
    }

    /// Waits until this run has written the subnet file (none in peer
    /// mode) and serves the API; fails early, with the log, if the agent exits.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // Coarse file timestamps: allow the write to land in the same tick as the spawn.
        let since = self.spawned_at - Duration::from_millis(50);
        loop {
            let written = self.config.peer_mode
                || std::fs::metadata(self.subnet_file())
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t >= since);
            if written && UnixStream::connect(self.api_socket()).is_ok() {
                return Ok(());
            }
            if !self.is_running() {
                bail!(
                    "the agent exited before it was ready; its log ends:\n{}",
                    self.log_tail(20)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the agent was not ready within {timeout:?}; its log ends:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The subnet file as a map.
    pub fn subnet_env(&self) -> Result<HashMap<String, String>> {
        let text =
            std::fs::read_to_string(self.subnet_file()).context("reading the subnet file")?;
        Ok(parse_env(&text))
    }

    /// The leased subnet, from FLANNEL_SUBNET ("10.5.34.1/24" → "10.5.34.0/24").
    pub fn subnet(&self) -> Result<String> {
        let env = self.subnet_env()?;
        let value = env
            .get("FLANNEL_SUBNET")
            .context("the subnet file has no FLANNEL_SUBNET")?;
        network_of(value)
    }

    /// Runs a `tartan` CLI command against this agent's socket, in the
    /// agent's namespace (as a user on that host would).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        // The socket goes by environment: a flag after `run IMAGE CMD…` would be the command's.
        self.command(&tartan_bin()?)
            .args(args)
            .env("TARTAN_API_SOCKET", self.api_socket())
            .output()
            .context("running the tartan CLI")
    }

    /// The `tartan` CLI with `args` against this agent, in its namespace,
    /// for callers that wire standard input or a terminal themselves.
    pub fn cli_command(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = self.command(&tartan_bin()?);
        cmd.args(args).env("TARTAN_API_SOCKET", self.api_socket());
        Ok(cmd)
    }

    /// Kills every container supervisor of this agent (their containers die
    /// with them) and waits, up to 10 s, until they are gone.
    pub fn kill_containers(&self) {
        let marker = self.state_dir().join("containers");
        let marker = marker.to_string_lossy().into_owned();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut found = false;
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let args: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                if args.get(1).map(String::as_str) == Some("shim")
                    && args.get(2).is_some_and(|dir| dir.starts_with(&marker))
                {
                    found = true;
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            if !found || Instant::now() >= deadline {
                // A killed supervisor leaves its container's cgroup behind.
                crate::cgroups::remove_container_cgroups(&self.state_dir().join("containers"));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `tartan status -o json`, parsed.
    pub fn status_json(&self) -> Result<Value> {
        let out = self.cli(&["status", "-o", "json"])?;
        if !out.status.success() {
            bail!(
                "tartan status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "parsing tartan status -o json: {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn wait_log_contains(&self, needle: &str, timeout: Duration) -> Result<()> {
        wait::wait_until(timeout, Duration::from_millis(50), || {
            Ok(self.log().contains(needle))
        })
        .with_context(|| {
            format!(
                "the agent log never said {needle:?}; it ends:\n{}",
                self.log_tail(20)
            )
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        let Some(pid) = self.pid() else { return false };
        // A zombie still answers kill(0); read the process state instead.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// Waits for the agent to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self.child.take().context("the agent is not running")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.child = Some(child);
                bail!(
                    "the agent did not exit within {timeout:?}:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits up to 10 s for a clean exit (SIGKILL after that).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().context("the agent is not running")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "the agent did not exit within 10s of SIGTERM:\n{}",
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: the agent dies without any cleanup, as in a crash.
    pub fn kill(&mut self) -> Result<()> {
        crate::kill_child(&mut self.child, "the agent")
    }

    /// What the next `restart` starts the agent with (its directories stay).
    pub fn config_mut(&mut self) -> &mut AgentConfig {
        &mut self.config
    }

    /// Starts the agent again with the same directories and flags.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("restart needs a stopped agent");
        }
        self.spawn()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.kill();
        self.kill_containers();
        // A panicking test loses the log with the temp dir: show its end first
        // (cargo test prints a failed test's stderr).
        if std::thread::panicking() {
            eprintln!(
                "--- agent log ({}), last 40 lines ---\n{}",
                self.config.etcd_prefix,
                self.log_tail(40)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subnet_file_parses() {
        let env = parse_env(
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n\n",
        );
        assert_eq!(env.len(), 4);
        assert_eq!(env["FLANNEL_SUBNET"], "10.5.34.1/24");
        assert_eq!(network_of(&env["FLANNEL_SUBNET"]).unwrap(), "10.5.34.0/24");
    }

    #[test]
    fn networks_of_odd_prefixes() {
        assert_eq!(network_of("10.5.34.129/25").unwrap(), "10.5.34.128/25");
        assert_eq!(network_of("10.5.34.1/32").unwrap(), "10.5.34.1/32");
        assert_eq!(network_of("10.5.34.1/0").unwrap(), "0.0.0.0/0");
        assert!(network_of("10.5.34.1").is_err());
        assert!(network_of("10.5.34.1/33").is_err());
        assert!(network_of("nonsense/24").is_err());
    }

    #[test]
    fn a_missing_binary_is_an_error_naming_the_fix() {
        // The default location only: TARTAN_BIN set by the runner is respected.
        if std::env::var_os("TARTAN_BIN").is_some() {
            return;
        }
        match tartan_bin() {
            Ok(path) => assert!(path.ends_with("tartan"), "{}", path.display()),
            Err(err) => assert!(
                err.to_string().contains("cargo build -p tartan-agent"),
                "{err}"
            ),
        }
    }
}
