//! Restart policies end to end: busybox commands that exit with a code,
//! restarted by their supervisor as Docker's policies say (counted by
//! `inspect`'s RestartCount), `stop` respected, the restarts going on while
//! the agent is killed, and the containers that come back when the agent
//! starts after a "reboot" (every supervisor killed, then the agent).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, import_busybox, text, VXLAN};
use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::containers::{inspect, refusal, state};
use tartan_tests::wait::wait_value;

/// Generous: the back-off before the sixth restart is 3.2 s.
const RESTARTS: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

fn restart_count(agent: &Agent, name: &str) -> Result<u64> {
    inspect(agent, name)?["RestartCount"]
        .as_u64()
        .context("inspect shows no RestartCount")
}

/// Waits until the container has been restarted at least `count` times.
fn wait_restarts(agent: &Agent, name: &str, count: u64) -> Result<u64> {
    wait_value(
        &format!("{name} restarted {count} times"),
        RESTARTS,
        POLL,
        || restart_count(agent, name),
        |n| *n >= count,
    )
}

fn wait_state(agent: &Agent, name: &str, wanted: &str) -> Result<String> {
    wait_value(
        &format!("{name} {wanted}"),
        RESTARTS,
        POLL,
        || state(agent, name),
        |s| s == wanted,
    )
}

fn run_detached(agent: &Agent, name: &str, policy: &str, script: &str) -> Result<()> {
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            name,
            "--restart",
            policy,
            "busybox",
            "sh",
            "-c",
            script,
        ],
    )?;
    Ok(())
}

/// A refused `run`: one line naming `expected`, and Docker's exit code 125,
/// which `containers::refused_with` leaves unchecked.
fn refused(agent: &Agent, args: &[&str], expected: &str) -> Result<()> {
    let out = agent.cli(args)?;
    ensure!(
        out.status.code() == Some(125),
        "tartan {args:?} left with {}",
        out.status
    );
    let err = refusal(args, &out)?;
    ensure!(err.contains(expected), "tartan {args:?} said {err}");
    Ok(())
}

#[test]
fn policies_restart_as_dockers_and_stop_is_respected() -> Result<()> {
    let cluster = Cluster::start("rp", 196, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;

    refused(
        agent,
        &["run", "-d", "--restart", "sometimes", "busybox", "true"],
        "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'",
    )?;
    refused(
        agent,
        &["run", "-d", "--restart", "on-failure:x", "busybox", "true"],
        "invalid restart policy format: maximum retry count must be an integer",
    )?;
    refused(
        agent,
        &["run", "-d", "--restart", "always:3", "busybox", "true"],
        "maximum retry count can only be used with 'on-failure'",
    )?;
    refused(
        agent,
        &["run", "--rm", "--restart", "always", "busybox", "true"],
        "Conflicting options: --restart and --rm",
    )?;
    let made = cli_ok(agent, &["ps", "-a", "-q"])?;
    ensure!(made.trim().is_empty(), "a refused run made {made:?}");

    // on-failure:2: two restarts, then it stays exited with its code.
    run_detached(agent, "twice", "on-failure:2", "exit 3")?;
    wait_restarts(agent, "twice", 2)?;
    wait_state(agent, "twice", "exited")?;
    let twice = inspect(agent, "twice")?;
    assert_eq!(twice["RestartCount"], 2);
    assert_eq!(twice["state"]["exit_code"], 3);
    assert_eq!(twice["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(twice["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 2);

    // A success is not a failure; `no` never restarts.
    run_detached(agent, "fine", "on-failure", "exit 0")?;
    run_detached(agent, "never", "no", "exit 3")?;
    wait_state(agent, "fine", "exited")?;
    wait_state(agent, "never", "exited")?;
    assert_eq!(restart_count(agent, "fine")?, 0);
    assert_eq!(restart_count(agent, "never")?, 0);
    assert_eq!(
        inspect(agent, "never")?["HostConfig"]["RestartPolicy"]["Name"],
        "no"
    );

    // always, on the overlay: every run has the same eth0 address, which
    // the supervisor keeps across restarts.
    run_detached(agent, "again", "always", "ip -o -4 addr show eth0; exit 3")?;
    wait_restarts(agent, "again", 3)?;
    let logs = cli_ok(agent, &["logs", "again"])?;
    let address = inspect(agent, "again")?["network"]["ip_address"]
        .as_str()
        .context("no address")?
        .to_string();
    let runs: Vec<&str> = logs.lines().filter(|l| l.contains("inet ")).collect();
    ensure!(runs.len() >= 3, "logs of three runs: {logs}");
    ensure!(
        runs.iter().all(|l| l.contains(&format!("inet {address}/"))),
        "every run has eth0 with {address}: {logs}"
    );

    // Docker's STATUS while it waits out the back-off (which grows to seconds).
    let table = wait_value(
        "ps showing the back-off",
        RESTARTS,
        POLL,
        || cli_ok(agent, &["ps"]),
        |t| {
            t.lines()
                .any(|l| l.contains("again") && l.contains("Restarting (3) "))
        },
    )?;
    ensure!(table.contains(" ago"), "{table}");

    // rm refuses it while it restarts (or runs, between delays), with Docker's words.
    let id = inspect(agent, "again")?["id"]
        .as_str()
        .context("no id")?
        .to_string();
    let restarting = format!("You cannot remove a restarting container {id}. Stop the container before attempting removal or force remove");
    let running = restarting.replace("a restarting", "a running");
    wait_value(
        "rm refused as for a restarting container",
        RESTARTS,
        POLL,
        || {
            let out = agent.cli(&["rm", "again"])?;
            let err = text(&out.stderr);
            ensure!(
                !out.status.success() && (err.contains(&restarting) || err.contains(&running)),
                "rm of a restarting container: {err}"
            );
            Ok(err)
        },
        |err| err.contains(&restarting),
    )?;

    // stop holds, even in the back-off.
    cli_ok(agent, &["stop", "again"])?;
    let stopped_at = restart_count(agent, "again")?;
    assert_eq!(state(agent, "again")?, "exited");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state(agent, "again")?, "exited");
    assert_eq!(restart_count(agent, "again")?, stopped_at);

    // A start counts afresh, as Docker's.
    cli_ok(agent, &["start", "again"])?;
    wait_restarts(agent, "again", 1)?;
    cli_ok(agent, &["stop", "-t", "1", "again"])?;
    assert_eq!(state(agent, "again")?, "exited");
    Ok(())
}

#[test]
fn supervisors_restart_without_the_agent_and_policies_survive_a_reboot() -> Result<()> {
    let mut cluster = Cluster::start("rr", 197, VXLAN, 1)?;
    import_busybox(&cluster.agents[0])?;
    {
        let agent = &cluster.agents[0];
        run_detached(agent, "flapping", "always", "sleep 0.2; exit 3")?;
        run_detached(agent, "always", "always", "sleep 1000")?;
        run_detached(agent, "always-stopped", "always", "sleep 1000")?;
        run_detached(agent, "unless", "unless-stopped", "sleep 1000")?;
        run_detached(agent, "unless-stopped", "unless-stopped", "sleep 1000")?;
        run_detached(agent, "never", "no", "sleep 1000")?;
        cli_ok(
            agent,
            &["stop", "-t", "1", "always-stopped", "unless-stopped"],
        )?;
        wait_restarts(agent, "flapping", 2)?;
    }

    // The agent killed: the supervisor goes on restarting.
    let before = restart_count(&cluster.agents[0], "flapping")?;
    let id = inspect(&cluster.agents[0], "flapping")?["id"]
        .as_str()
        .context("no id")?
        .to_string();
    let record = cluster.agents[0]
        .state_dir()
        .join("containers")
        .join(&id[..12])
        .join("restart.json");
    cluster.agents[0].kill()?;
    wait_value(
        "restarts while the agent is down",
        RESTARTS,
        POLL,
        || {
            let json: Value = serde_json::from_slice(&std::fs::read(&record)?)?;
            Ok(json["count"].as_u64().unwrap_or_default())
        },
        |n| *n >= before + 2,
    )?;
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    ensure!(restart_count(&cluster.agents[0], "flapping")? >= before + 2);

    // A reboot: every supervisor (and container) gone, then the agent again.
    cluster.agents[0].kill()?;
    cluster.agents[0].kill_containers();
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    let agent = &cluster.agents[0];
    // As Docker's daemon at its start: `always` even when stopped.
    // The agent brings them back one after another once it holds its lease:
    // a longer wait than one restart's.
    // `always-stopped` too: the agent's first restart above began starting
    // it, and the kill may have cut that start short.
    for name in ["always", "always-stopped", "unless", "flapping"] {
        wait_value(
            &format!("{name} back after the reboot"),
            2 * RESTARTS,
            POLL,
            || state(agent, name),
            |s| s == "running" || s == "restarting",
        )
        .with_context(|| agent.log_tail(40))?;
    }
    let address = inspect(agent, "always")?["network"]["ip_address"].clone();
    ensure!(address.is_string(), "no overlay address after the reboot");
    for name in ["unless-stopped", "never"] {
        assert_eq!(state(agent, name)?, "exited", "{name}");
    }
    let table = cli_ok(agent, &["ps"])?;
    ensure!(
        table
            .lines()
            .any(|l| l.contains("unless") && l.contains("Up ")),
        "{table}"
    );
    Ok(())
}

/// The agent (or the host) going down in the middle of a start leaves the
/// container with neither its last run's records nor a new run's: the files
/// a start clears first are removed here, as such a start leaves them.
#[test]
fn a_start_cut_short_is_made_again_when_the_agent_starts() -> Result<()> {
    let mut cluster = Cluster::start("rcut", 103, VXLAN, 1)?;
    import_busybox(&cluster.agents[0])?;
    run_detached(&cluster.agents[0], "cut", "always", "sleep 1000")?;
    cli_ok(&cluster.agents[0], &["stop", "-t", "1", "cut"])?;
    let id = inspect(&cluster.agents[0], "cut")?["id"]
        .as_str()
        .context("no id")?
        .to_string();
    let dir = cluster.agents[0]
        .state_dir()
        .join("containers")
        .join(&id[..12]);
    cluster.agents[0].kill()?;
    for file in ["state.json", "exit.json", "stopped", "restart.json"] {
        match std::fs::remove_file(dir.join(file)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(err).with_context(|| format!("removing {file}"));
            }
            _ => {}
        }
    }
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    let agent = &cluster.agents[0];
    wait_state(agent, "cut", "running").with_context(|| agent.log_tail(40))?;
    Ok(())
}

#[test]
fn a_restarted_process_keeps_its_container_s_limits() -> Result<()> {
    let cluster = Cluster::start("rpl", 253, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "limited",
            "--restart",
            "always",
            "--memory",
            "32m",
            "busybox",
            "sh",
            "-c",
            "sleep 1; exit 1",
        ],
    )?;
    let id = inspect(agent, "limited")?["id"]
        .as_str()
        .context("an id")?
        .to_string();
    wait_restarts(agent, "limited", 1)?;
    // The process of a later run is in the same cgroup, with the limit.
    let in_cgroup = wait_value(
        "the restarted process in its container's memory cgroup",
        RESTARTS,
        POLL,
        || {
            let shown = inspect(agent, "limited")?;
            let pid = shown["state"]["pid"].as_u64().unwrap_or(0);
            if pid == 0 || shown["RestartCount"].as_u64().unwrap_or(0) == 0 {
                return Ok(String::new());
            }
            Ok(std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default())
        },
        |cgroups| {
            cgroups
                .lines()
                .any(|l| l.contains("memory") && l.contains(&id))
        },
    )?;
    ensure!(in_cgroup.contains(&id), "{in_cgroup}");
    ensure!(
        inspect(agent, "limited")?["HostConfig"]["Memory"] == 32 * 1024 * 1024,
        "the limit is shown"
    );
    cli_ok(agent, &["rm", "-f", "limited"])?;
    Ok(())
}
