//! A private Open vSwitch for the tests: `ovsdb-server` and `ovs-vswitchd
//! --disable-system` started inside a test namespace, with the database,
//! socket, pidfiles, control sockets and logs all in a temporary directory.
//! These kernels have no openvswitch module, so bridges must use the
//! userspace `netdev` datapath. A system OVS, if any, is never touched: every
//! path is given explicitly and `OVS_RUNDIR`, `OVS_DBDIR`, `OVS_LOGDIR` and
//! `OVS_SYSCONFDIR` point into the directory as well.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::prereq;

/// Debian's openvswitch-common puts the schema here.
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The daemons, in the order they are stopped.
const DAEMONS: [&str; 2] = ["ovs-vswitchd", "ovsdb-server"];

/// A running private switch; both daemons are stopped and the directory
/// removed on drop, a failed start included.
pub struct Ovs {
    dir: tempfile::TempDir,
    netns: String,
}

impl Ovs {
    /// Starts the database and the switch inside `netns`, so the devices the
    /// switch creates or opens are that namespace's.
    pub fn start(netns: &Netns) -> Result<Ovs> {
        prereq::require_root()?;
        for binary in ["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl"] {
            prereq::require_binary(binary)?;
        }
        if !Path::new(SCHEMA).exists() {
            bail!("this test needs {SCHEMA} (Debian: openvswitch-common)");
        }
        // Short, because a unix socket path must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("tt-ovs-")
            .tempdir_in("/tmp")
            .context("creating the OVS run directory")?;
        let ovs = Ovs {
            dir,
            netns: netns.name().to_string(),
        };
        let db = ovs.path("conf.db");
        ovs.run_bounded(
            Command::new("ovsdb-tool").args(["create", &db, SCHEMA]),
            "ovsdb-tool create",
        )?;
        ovs.run_bounded(
            ovs.in_netns("ovsdb-server").args([
                db.as_str(),
                &format!("--remote=punix:{}", ovs.path("db.sock")),
                &format!("--pidfile={}", ovs.pidfile("ovsdb-server")),
                &format!("--unixctl={}", ovs.path("ovsdb-server.ctl")),
                &format!("--log-file={}", ovs.path("ovsdb-server.log")),
                "--no-chdir",
                "--detach",
            ]),
            "ovsdb-server",
        )?;
        ovs.run_bounded(
            &mut ovs.vsctl_command(&["--no-wait", "init"]),
            "ovs-vsctl init",
        )?;
        ovs.run_bounded(
            ovs.in_netns("ovs-vswitchd").args([
                &format!("unix:{}", ovs.path("db.sock")),
                "--disable-system",
                &format!("--pidfile={}", ovs.pidfile("ovs-vswitchd")),
                &format!("--unixctl={}", ovs.path("ovs-vswitchd.ctl")),
                &format!("--log-file={}", ovs.path("ovs-vswitchd.log")),
                "--no-chdir",
                "--detach",
            ]),
            "ovs-vswitchd",
        )?;
        Ok(ovs)
    }

    /// The private directory holding the database, sockets, pidfiles and logs.
    pub fn run_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemons' process ids, from their pidfiles.
    pub fn pids(&self) -> Result<Vec<i32>> {
        DAEMONS
            .iter()
            .map(|daemon| {
                let text = std::fs::read_to_string(self.pidfile(daemon))
                    .with_context(|| format!("reading {daemon}'s pidfile"))?;
                text.trim()
                    .parse()
                    .with_context(|| format!("{daemon}'s pidfile holds {text:?}"))
            })
            .collect()
    }

    /// The database socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("db.sock")
    }

    /// The address the client takes: `unix:SOCKET`.
    pub fn address(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    /// Runs `ovs-vsctl` against this switch's database (without waiting for
    /// the switch) and returns its stdout; a failure carries its stderr.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["--no-wait"];
        full.extend_from_slice(args);
        let out = self.run_bounded(&mut self.vsctl_command(&full), "ovs-vsctl")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Everything a bad request could leave behind: bridges, ports and
    /// interfaces with their tags and external_ids.
    pub fn state(&self) -> Result<String> {
        let mut state = String::new();
        for (table, columns) in [
            ("Bridge", "name,datapath_type,external_ids"),
            ("Port", "name,tag,external_ids"),
            ("Interface", "name,type,external_ids"),
        ] {
            let columns = format!("--columns={columns}");
            state += &self.vsctl(&[&columns, "--format=csv", "list", table])?;
        }
        Ok(state)
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn pidfile(&self, daemon: &str) -> String {
        self.path(&format!("{daemon}.pid"))
    }

    fn in_netns(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, program]);
        self.private_env(&mut cmd);
        cmd
    }

    fn vsctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ovs-vsctl");
        cmd.arg(format!("--db=unix:{}", self.path("db.sock")))
            .arg("--timeout=10")
            .args(args);
        self.private_env(&mut cmd);
        cmd
    }

    /// Where the tools would otherwise look for a system switch's files.
    fn private_env(&self, cmd: &mut Command) {
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            cmd.env(var, self.dir.path());
        }
    }

    /// Runs a command to completion within the start deadline; a failure
    /// carries its stderr and the daemons' last log lines.
    fn run_bounded(&self, cmd: &mut Command, what: &str) -> Result<Output> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {what}"))?;
        let deadline = Instant::now() + START_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                child.kill().ok();
                child.wait().ok();
                bail!(
                    "{what} did not finish within {START_TIMEOUT:?}{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stderr).trim(),
                self.logs()
            );
        }
        Ok(out)
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for daemon in DAEMONS {
            if let Ok(log) = std::fs::read_to_string(self.path(&format!("{daemon}.log"))) {
                let lines: Vec<_> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
                text += &format!("; {daemon} log: {tail}");
            }
        }
        text
    }

    /// SIGTERM, then SIGKILL after a grace period. Best effort: used from Drop.
    fn stop(&self, daemon: &str) {
        let Ok(pid) = std::fs::read_to_string(self.pidfile(daemon)) else {
            return;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            return;
        };
        let alive = || process_running(pid);
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// True while `pid` exists and has not exited. A daemon that detached is
/// reaped by init, which may take its time, so a zombie counts as gone.
pub fn process_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for daemon in DAEMONS {
            self.stop(daemon);
        }
    }
}
