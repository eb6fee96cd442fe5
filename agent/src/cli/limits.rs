//! Resource limits on the client side: `run`'s `--memory`, `--memory-swap`,
//! `--cpus`, `--cpu-shares` and `--pids-limit` in Docker's units, the limits
//! in `inspect`, and `tartan stats`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};
use tartan_proto::v1::{Container, ContainerStats, ResourceLimits, StatsRequest};
use tartan_runtime::cgroups::{parse_bytes, parse_cpus};

use crate::api;
use crate::cli::refusal::refused;

/// How often `stats` refreshes, as Docker's.
const REFRESH: Duration = Duration::from_secs(1);

/// `run`'s limit flags as typed, read into the API's form (the agent checks
/// the values against each other and the host).
pub fn resources_flags(
    memory: Option<&str>,
    memory_swap: Option<&str>,
    cpus: Option<&str>,
    cpu_shares: Option<i64>,
    pids_limit: Option<i64>,
) -> Result<ResourceLimits> {
    Ok(ResourceLimits {
        memory: memory
            .map(|m| parse_bytes("--memory", m, false))
            .transpose()?
            .unwrap_or(0),
        memory_swap: memory_swap
            .map(|m| parse_bytes("--memory-swap", m, true))
            .transpose()?
            .unwrap_or(0),
        nano_cpus: cpus.map(parse_cpus).transpose()?.unwrap_or(0),
        cpu_shares: cpu_shares.unwrap_or(0),
        pids_limit: pids_limit.unwrap_or(0),
    })
}

/// `HostConfig`'s limit fields, in Docker's names and units.
pub fn host_config_json(c: &Container) -> Vec<(&'static str, Value)> {
    let r = c.resources.unwrap_or_default();
    vec![
        ("Memory", json!(r.memory)),
        ("MemorySwap", json!(r.memory_swap)),
        ("NanoCpus", json!(r.nano_cpus)),
        ("CpuShares", json!(r.cpu_shares)),
        // Docker shows null for a limit never set.
        (
            "PidsLimit",
            if r.pids_limit == 0 {
                Value::Null
            } else {
                json!(r.pids_limit)
            },
        ),
    ]
}

#[derive(Args)]
pub struct StatsArgs {
    /// Print one sample and leave, instead of refreshing every second.
    #[arg(long = "no-stream")]
    no_stream: bool,
    /// Names or id prefixes (default: every running container).
    #[arg(value_name = "CONTAINER")]
    containers: Vec<String>,
}

/// `tartan stats`: Docker's table, refreshed every second until Ctrl-C, or once with `--no-stream`.
pub async fn stats(args: StatsArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let request = StatsRequest {
        containers: args.containers,
    };
    let mut previous: HashMap<String, ContainerStats> = HashMap::new();
    let mut first = client
        .container_stats(request.clone())
        .await
        .map_err(refused)?
        .into_inner();
    for s in first.stats.drain(..) {
        previous.insert(s.id.clone(), s);
    }
    loop {
        tokio::time::sleep(REFRESH).await;
        let now = client
            .container_stats(request.clone())
            .await
            .map_err(refused)?
            .into_inner()
            .stats;
        let table = stats_table(&now, &previous);
        if args.no_stream {
            return crate::cli::stdout::print(table);
        }
        // As Docker's: the screen cleared and the table drawn from its top.
        crate::cli::stdout::print(format!("\x1b[2J\x1b[H{table}"))?;
        previous = now.into_iter().map(|s| (s.id.clone(), s)).collect();
    }
}

/// CPU % over the time between two samples: 100% is one CPU busy, as Docker counts.
fn cpu_percent(now: &ContainerStats, before: Option<&ContainerStats>) -> f64 {
    let Some(before) = before else {
        return 0.0;
    };
    let wall = now.sampled_ns.saturating_sub(before.sampled_ns);
    let cpu = now.cpu_ns.saturating_sub(before.cpu_ns);
    if wall == 0 {
        return 0.0;
    }
    cpu as f64 / wall as f64 * 100.0
}

/// Docker's `units.HumanSize`: decimal units, four significant digits.
fn human_size(bytes: u64) -> String {
    scaled(bytes, 1000.0, &["B", "kB", "MB", "GB", "TB", "PB"])
}

/// Docker's `units.BytesSize`: binary units, four significant digits.
fn bytes_size(bytes: u64) -> String {
    scaled(bytes, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB"])
}

fn scaled(bytes: u64, base: f64, units: &[&str]) -> String {
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= base && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    // Go's %.4g: four significant digits, trailing zeros dropped.
    let digits = if value >= 1000.0 {
        0
    } else if value >= 100.0 {
        1
    } else if value >= 10.0 {
        2
    } else {
        3
    };
    let mut text = format!("{value:.digits$}");
    if text.contains('.') {
        text = text.trim_end_matches('0').trim_end_matches('.').to_string();
    }
    format!("{text}{}", units[unit])
}

pub fn stats_table(now: &[ContainerStats], before: &HashMap<String, ContainerStats>) -> String {
    let header = [
        "CONTAINER ID",
        "NAME",
        "CPU %",
        "MEM USAGE / LIMIT",
        "MEM %",
        "NET I/O",
        "BLOCK I/O",
        "PIDS",
    ];
    let rows: Vec<[String; 8]> = now
        .iter()
        .map(|s| {
            let mem_percent = if s.memory_limit == 0 {
                0.0
            } else {
                s.memory as f64 / s.memory_limit as f64 * 100.0
            };
            [
                s.id.chars().take(12).collect(),
                s.name.clone(),
                format!("{:.2}%", cpu_percent(s, before.get(&s.id))),
                format!("{} / {}", bytes_size(s.memory), bytes_size(s.memory_limit)),
                format!("{mem_percent:.2}%"),
                format!("{} / {}", human_size(s.net_rx), human_size(s.net_tx)),
                format!(
                    "{} / {}",
                    human_size(s.block_read),
                    human_size(s.block_write)
                ),
                s.pids.to_string(),
            ]
        })
        .collect();
    crate::cli::columns::columns(header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_dockers() {
        assert_eq!(bytes_size(16 << 20), "16MiB");
        assert_eq!(bytes_size(1_572_864), "1.5MiB");
        assert_eq!(bytes_size(0), "0B");
        assert_eq!(human_size(1234), "1.234kB");
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(15_000_000), "15MB");
    }

    #[test]
    fn the_table_has_dockers_columns_and_cpu_from_two_samples() {
        let before = ContainerStats {
            id: "0123456789abcdef".into(),
            name: "web".into(),
            cpu_ns: 1_000_000_000,
            sampled_ns: 10_000_000_000,
            ..ContainerStats::default()
        };
        let now = ContainerStats {
            cpu_ns: 1_500_000_000,
            sampled_ns: 11_000_000_000,
            memory: 4 << 20,
            memory_limit: 16 << 20,
            net_rx: 1234,
            pids: 3,
            ..before.clone()
        };
        let table = stats_table(
            std::slice::from_ref(&now),
            &HashMap::from([(before.id.clone(), before)]),
        );
        let mut lines = table.lines();
        assert_eq!(
            lines.next().expect("header"),
            "CONTAINER ID   NAME   CPU %    MEM USAGE / LIMIT   MEM %    NET I/O        BLOCK I/O   PIDS"
        );
        assert_eq!(
            lines.next().expect("row"),
            "0123456789ab   web    50.00%   4MiB / 16MiB        25.00%   1.234kB / 0B   0B / 0B     3"
        );
    }
}
