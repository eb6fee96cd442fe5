//! Looking at containers and networks through the `tartan` CLI: `inspect`
//! as JSON, commands run inside a container, and commands that must be
//! refused.

use std::process::Output;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::agent::Agent;
use crate::cli::{cli_ok, text};

/// The first element of `tartan ARGS` printed as a JSON array.
fn first_of(agent: &Agent, args: &[&str]) -> Result<Value> {
    let out = cli_ok(agent, args)?;
    let parsed: Value =
        serde_json::from_str(&out).with_context(|| format!("inspect printed {out}"))?;
    Ok(parsed[0].clone())
}

/// `tartan inspect NAME`: the container's JSON object.
pub fn inspect(agent: &Agent, name: &str) -> Result<Value> {
    first_of(agent, &["inspect", name])
}

/// `tartan network inspect NAME`: the network's JSON object.
pub fn inspect_network(agent: &Agent, name: &str) -> Result<Value> {
    first_of(agent, &["network", "inspect", name])
}

/// The container's state as `inspect` shows it (`running`, `exited`, ...);
/// empty when it shows none.
pub fn state(agent: &Agent, name: &str) -> Result<String> {
    Ok(inspect(agent, name)?["state"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// `tartan exec NAME COMMAND...`, whatever its outcome.
pub fn exec(agent: &Agent, name: &str, command: &[&str]) -> Result<Output> {
    let mut args = vec!["exec", name];
    args.extend_from_slice(command);
    agent.cli(&args)
}

/// Whether one ping from inside container `from` to `to` is answered
/// within a second.
pub fn pings(agent: &Agent, from: &str, to: &str) -> Result<bool> {
    Ok(exec(agent, from, &["ping", "-c", "1", "-W", "1", to])?
        .status
        .success())
}

/// Runs `tartan ARGS`, insists that it fails and says why in one line on
/// stderr; returns that stderr.
pub fn refused(agent: &Agent, args: &[&str]) -> Result<String> {
    refusal(args, &agent.cli(args)?)
}

/// What `tartan ARGS` printed, `out`, is a failure that says why in one
/// line on stderr; returns that stderr. For runs [`refused`] does not make
/// (bounded, or whose exit code matters too).
pub fn refusal(args: &[&str], out: &Output) -> Result<String> {
    let err = text(&out.stderr);
    ensure!(
        !out.status.success(),
        "tartan {args:?} succeeded: {}",
        text(&out.stdout)
    );
    ensure!(
        err.trim().lines().count() == 1,
        "tartan {args:?} should complain in one line: {err}"
    );
    Ok(err)
}

/// [`refused`], and the line contains `needle`.
pub fn refused_with(agent: &Agent, args: &[&str], needle: &str) -> Result<()> {
    let err = refused(agent, args)?;
    ensure!(
        err.contains(needle),
        "tartan {args:?}: expected one line with {needle:?}, got {err:?}"
    );
    Ok(())
}
