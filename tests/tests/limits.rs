//! Resource limits end to end: `run --memory/--memory-swap/--cpus/
//! --cpu-shares/--pids-limit` read back from the container's cgroup files,
//! `inspect`'s HostConfig, `stats --no-stream`, an OOM kill reported as
//! Docker reports it, a fork loop stopped by --pids-limit, the cgroup gone
//! with the container, and bad values refused with nothing made.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, import_busybox, text, VXLAN};
use tartan_tests::cluster::Cluster;
use tartan_tests::containers::{inspect, refused};
use tartan_tests::wait::wait_value;

/// The host's cgroup layout, as the tests read it from /sys/fs/cgroup.
enum Layout {
    V2,
    /// Mount points by controller.
    V1(Vec<(String, PathBuf)>),
}

fn layout() -> Result<Layout> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut v1 = Vec::new();
    for line in table.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let point = left.split(' ').nth(4).unwrap_or_default();
        let fields: Vec<&str> = right.split(' ').collect();
        match fields.first() {
            Some(&"cgroup2") if point == "/sys/fs/cgroup" => return Ok(Layout::V2),
            Some(&"cgroup") => {
                for opt in fields.get(2).unwrap_or(&"").split(',') {
                    v1.push((opt.to_string(), PathBuf::from(point)));
                }
            }
            _ => {}
        }
    }
    ensure!(
        !v1.is_empty(),
        "no cgroupfs at /sys/fs/cgroup: these tests need the host's cgroups"
    );
    Ok(Layout::V1(v1))
}

impl Layout {
    /// The container's cgroup directory for `controller` (v1) or its only one (v2).
    fn dir(&self, controller: &str, id: &str) -> Result<PathBuf> {
        match self {
            Layout::V2 => Ok(Path::new("/sys/fs/cgroup/tartan").join(id)),
            Layout::V1(mounts) => {
                let (_, root) = mounts
                    .iter()
                    .find(|(c, _)| c == controller)
                    .with_context(|| format!("the {controller} controller is not mounted"))?;
                Ok(root.join("tartan").join(id))
            }
        }
    }

    fn read(&self, controller: &str, id: &str, file: &str) -> Result<String> {
        let path = self.dir(controller, id)?.join(file);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string())
    }

    /// Every cgroup directory of container `id` that exists.
    fn existing(&self, id: &str) -> Vec<PathBuf> {
        let dirs = match self {
            Layout::V2 => vec![Path::new("/sys/fs/cgroup/tartan").join(id)],
            Layout::V1(mounts) => mounts
                .iter()
                .map(|(_, root)| root.join("tartan").join(id))
                .collect(),
        };
        let mut dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.exists()).collect();
        dirs.dedup();
        dirs
    }

    /// Every container cgroup there is.
    fn all(&self) -> Vec<PathBuf> {
        let parents = match self {
            Layout::V2 => vec![PathBuf::from("/sys/fs/cgroup/tartan")],
            Layout::V1(mounts) => mounts.iter().map(|(_, r)| r.join("tartan")).collect(),
        };
        let mut found: Vec<PathBuf> = parents
            .iter()
            .flat_map(|p| std::fs::read_dir(p).into_iter().flatten().flatten())
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        found.sort();
        found.dedup();
        found
    }
}

/// The tests compare the set of container cgroups before and after: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Removes the cgroups of the containers a test made, even when it fails
/// (declared before the cluster, so it runs after the containers are killed).
struct CgroupCleanup(Vec<PathBuf>);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        if let Ok(layout) = layout() {
            for dir in layout.all() {
                if !self.0.contains(&dir) {
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
    }
}

fn wait_exited(agent: &Agent, name: &str) -> Result<Value> {
    wait_value(
        &format!("{name} exits"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || inspect(agent, name),
        |c| c["state"]["status"] == "exited",
    )
}

#[test]
fn limits_reach_the_cgroup_and_inspect_and_stats_show_them() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let layout = layout()?;
    let _cleanup = CgroupCleanup(layout.all());
    let cluster = Cluster::start("lim", 246, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    let id = cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "capped",
            "--net",
            "none",
            "--memory",
            "16m",
            "--memory-swap",
            "32m",
            "--cpus",
            "1.5",
            "--cpu-shares",
            "512",
            "--pids-limit",
            "10",
            "busybox",
            "sleep",
            "300",
        ],
    )?
    .trim()
    .to_string();
    let c = inspect(agent, "capped")?;
    let pid = c["state"]["pid"].as_u64().context("no pid")?.to_string();
    let host_config = &c["HostConfig"];
    assert_eq!(host_config["Memory"], 16 << 20);
    assert_eq!(host_config["MemorySwap"], 32 << 20);
    assert_eq!(host_config["NanoCpus"], 1_500_000_000u64);
    assert_eq!(host_config["CpuShares"], 512);
    assert_eq!(host_config["PidsLimit"], 10);

    match &layout {
        Layout::V1(_) => {
            assert_eq!(
                layout.read("memory", &id, "memory.limit_in_bytes")?,
                "16777216"
            );
            assert_eq!(
                layout.read("memory", &id, "memory.memsw.limit_in_bytes")?,
                "33554432"
            );
            assert_eq!(layout.read("cpu", &id, "cpu.cfs_period_us")?, "100000");
            assert_eq!(layout.read("cpu", &id, "cpu.cfs_quota_us")?, "150000");
            assert_eq!(layout.read("cpu", &id, "cpu.shares")?, "512");
            assert_eq!(layout.read("pids", &id, "pids.max")?, "10");
            for controller in ["memory", "cpu", "cpuacct", "pids"] {
                let procs = layout.read(controller, &id, "cgroup.procs")?;
                ensure!(
                    procs.lines().any(|p| p == pid),
                    "pid {pid} is not in the {controller} cgroup: {procs:?}"
                );
            }
        }
        Layout::V2 => {
            assert_eq!(layout.read("", &id, "memory.max")?, "16777216");
            assert_eq!(layout.read("", &id, "memory.swap.max")?, "16777216");
            assert_eq!(layout.read("", &id, "cpu.max")?, "150000 100000");
            assert_eq!(layout.read("", &id, "pids.max")?, "10");
            ensure!(layout
                .read("", &id, "cgroup.procs")?
                .lines()
                .any(|p| p == pid));
        }
    }

    // Without --memory-swap, swap is twice the memory, as Docker sets it.
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "doubled", "--net", "none", "-m", "8m", "busybox", "sleep",
            "300",
        ],
    )?;
    assert_eq!(
        inspect(agent, "doubled")?["HostConfig"]["MemorySwap"],
        16 << 20
    );

    let mut stats = agent.cli_command(&["stats", "--no-stream", "capped"])?;
    stats
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = tartan_tests::cli::finish(stats.spawn()?, Duration::from_secs(30))?;
    ensure!(out.status.success(), "stats failed: {}", text(&out.stderr));
    let table = text(&out.stdout);
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .context("no header")?
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "CONTAINER ID",
            "NAME",
            "CPU %",
            "MEM USAGE / LIMIT",
            "MEM %",
            "NET I/O",
            "BLOCK I/O",
            "PIDS"
        ]
    );
    let row = lines.next().context("no row")?;
    ensure!(row.starts_with(&id[..12]), "{table}");
    ensure!(row.contains(" capped "), "{table}");
    ensure!(
        row.contains(" / 16MiB "),
        "the memory limit is not --memory: {table}"
    );
    ensure!(lines.next().is_none(), "only the container named: {table}");

    // The cgroup goes with the container.
    cli_ok(agent, &["rm", "-f", "capped", "doubled"])?;
    let left = layout.existing(&id);
    ensure!(left.is_empty(), "cgroups left after rm: {left:?}");

    // Bad values: one line each, Docker's words, and nothing made.
    let before = layout.all();
    for (args, says) in [
        (
            vec!["--memory", "4m"],
            "Minimum memory limit allowed is 6MB",
        ),
        (
            vec!["--memory", "16m", "--memory-swap", "8m"],
            "Minimum memoryswap limit should be larger than memory limit",
        ),
        (
            vec!["--memory-swap", "32m"],
            "You should always set the Memory limit when using Memoryswap limit",
        ),
        (vec!["--cpus", "4096"], "Range of CPUs is from 0.01 to"),
        (
            vec!["--cpus", "lots"],
            "failed to parse lots as a rational number",
        ),
        (
            vec!["--memory", "12q"],
            "invalid argument \"12q\" for --memory",
        ),
    ] {
        let mut run = vec!["run", "-d", "--name", "bad", "--net", "none"];
        run.extend(args.iter().copied());
        run.extend(["busybox", "true"]);
        let err = refused(agent, &run)?;
        ensure!(err.contains(says), "{args:?}: {err}");
    }
    let listed = cli_ok(agent, &["ps", "-a", "-q"])?;
    ensure!(listed.trim().is_empty(), "a refused run left {listed}");
    assert_eq!(layout.all(), before, "a refused run left a cgroup");
    Ok(())
}

#[test]
fn the_oom_killer_and_the_pids_limit_stop_a_container() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let layout = layout()?;
    let _cleanup = CgroupCleanup(layout.all());
    let cluster = Cluster::start("lio", 252, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    let hog = cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "hog",
            "--net",
            "none",
            "--memory",
            "16m",
            "--memory-swap",
            "16m",
            "busybox",
            "sh",
            "-c",
            "x=a; while true; do x=$x$x; done",
        ],
    )?
    .trim()
    .to_string();
    let c = wait_exited(agent, "hog")?;
    assert_eq!(c["State"]["ExitCode"], 137, "{c:#}");
    assert_eq!(c["State"]["OOMKilled"], true, "{c:#}");
    // Its processes are gone, and so is its cgroup, as Docker's at stop.
    wait_value(
        "the ended container's cgroup goes",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || Ok(layout.existing(&hog)),
        Vec::is_empty,
    )?;

    // A container killed otherwise is not OOMKilled.
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "sleeper", "--net", "none", "--memory", "16m", "busybox",
            "sleep", "300",
        ],
    )?;
    cli_ok(agent, &["stop", "-t", "0", "sleeper"])?;
    let c = wait_exited(agent, "sleeper")?;
    assert_eq!(c["State"]["ExitCode"], 137, "{c:#}");
    assert_eq!(c["State"]["OOMKilled"], false, "{c:#}");

    // Under the limit the shell's tenth fork fails (busybox sh then gives up on the script).
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "forks",
            "--net",
            "none",
            "--pids-limit",
            "10",
            "busybox",
            "sh",
            "-c",
            "for i in $(seq 50); do sleep 300 & done; echo forked; sleep 300",
        ],
    )?;
    let log = wait_value(
        "a refused fork",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = agent.cli(&["logs", "forks"])?;
            Ok(text(&out.stdout) + &text(&out.stderr))
        },
        |log| log.contains("can't fork"),
    )?;
    ensure!(!log.contains("forked"), "every fork succeeded: {log}");
    Ok(())
}

/// A `tartan exec` left running in the background; killed when dropped.
struct Background(std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The host pid of the process whose command line is exactly `args`.
fn pid_running(args: &[&str]) -> Result<Option<u32>> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline")).ok().as_deref() == Some(&wanted[..]) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

#[test]
fn an_exec_joins_the_containers_cgroup_and_its_pids_limit() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let layout = layout()?;
    let _cleanup = CgroupCleanup(layout.all());
    let cluster = Cluster::start("lix", 115, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    let id = cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "box",
            "--net",
            "none",
            "--pids-limit",
            "3",
            "--memory",
            "32m",
            "busybox",
            "sleep",
            "300",
        ],
    )?
    .trim()
    .to_string();
    let pids_current = || layout.read("pids", &id, "pids.current");
    assert_eq!(pids_current()?, "1");

    let seconds = "301";
    let exec = Background(
        agent
            .cli_command(&["exec", "box", "sleep", seconds])?
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("spawning tartan exec")?,
    );
    {
        let pid = wait_value(
            &format!("the exec'd sleep {seconds} runs"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || pid_running(&["sleep", seconds]),
            Option::is_some,
        )?
        .context("no pid")?;
        // The command is in the container's cgroups, in every hierarchy.
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        for controller in ["pids", "memory"] {
            let line = cgroups
                .lines()
                .find(|l| l.split(':').nth(1) == Some(controller))
                .or_else(|| cgroups.lines().find(|l| l.starts_with("0::")))
                .with_context(|| format!("no {controller} line in {cgroups}"))?;
            ensure!(
                line.ends_with(&format!("/tartan/{id}")),
                "the exec'd process is not in the container's {controller} cgroup: {cgroups}"
            );
        }
    }
    // An exec counts one process, as in Docker: the one waiting on it is not there.
    wait_value(
        "the container counts its exec",
        Duration::from_secs(10),
        Duration::from_millis(100),
        pids_current,
        |n| n == "2",
    )?;

    // Without room for it and the process that makes it, an exec fails.
    let out = agent.cli(&["exec", "box", "true"])?;
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    let err = text(&out.stderr);
    ensure!(err.contains("--pids-limit"), "{err}");
    drop(exec);
    Ok(())
}

#[test]
fn after_an_oom_kill_and_a_policy_restart_a_later_kill_is_not_oom_killed() -> Result<()> {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let layout = layout()?;
    let _cleanup = CgroupCleanup(layout.all());
    let cluster = Cluster::start("lor", 118, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    // Its first run fills its memory and is OOM-killed; the run that its
    // policy starts after (the mark is in its writable layer) only sleeps.
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "once",
            "--net",
            "none",
            "--memory",
            "16m",
            "--memory-swap",
            "16m",
            "--restart",
            "on-failure",
            "busybox",
            "sh",
            "-c",
            "if [ -e /oomed ]; then exec sleep 300; fi; touch /oomed; x=a; while true; do x=$x$x; done",
        ],
    )?;
    wait_value(
        "the OOM-killed run is run again",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || inspect(agent, "once"),
        |c| c["RestartCount"] == 1 && c["state"]["status"] == "running",
    )?;
    let id = inspect(agent, "once")?["id"]
        .as_str()
        .context("no id")?
        .to_string();
    let kills = layout
        .read("memory", &id, "memory.events")
        .or_else(|_| layout.read("memory", &id, "memory.oom_control"))?;
    ensure!(
        kills.contains("oom_kill 1"),
        "the first run was OOM-killed: {kills}"
    );

    // Killed otherwise: as Docker, OOMKilled is about this last exit.
    cli_ok(agent, &["stop", "-t", "0", "once"])?;
    let c = wait_exited(agent, "once")?;
    assert_eq!(c["State"]["ExitCode"], 137, "{c:#}");
    assert_eq!(c["State"]["OOMKilled"], false, "{c:#}");
    Ok(())
}
