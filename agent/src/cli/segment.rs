//! `tartan connect` / `forget` (weave's), and the L2 segment's part of
//! `tartan status`.

use std::fmt::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;
use serde_json::{json, Value};
use tartan_proto::v1::{ConnectPeersRequest, ForgetPeersRequest, SegmentStatus};

use crate::api;
use crate::cli::refusal::refused;
use crate::cli::stdout;

#[derive(Args)]
pub struct ConnectArgs {
    /// Make the manual peers exactly these hosts: the others are forgotten.
    #[arg(long)]
    pub replace: bool,
    /// HOST or HOST:PORT (the peer port, 6783 by default).
    #[arg(value_name = "HOST[:PORT]", required_unless_present = "replace")]
    pub hosts: Vec<String>,
}

#[derive(Args)]
pub struct ForgetArgs {
    /// HOST or HOST:PORT, as given to connect.
    #[arg(value_name = "HOST[:PORT]", required = true)]
    pub hosts: Vec<String>,
}

/// Prints a line per given host's peer: connected, or why not yet.
pub async fn connect(args: ConnectArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let status = client
        .connect_peers(ConnectPeersRequest {
            hosts: args.hosts,
            replace: args.replace,
        })
        .await
        .map_err(refused)?
        .into_inner();
    let mut out = String::new();
    for peer in status.peers.iter().filter(|p| p.source.contains("manual")) {
        let _ = match peer.state.as_str() {
            "connected" => writeln!(out, "{}: connected", peer.address),
            _ => writeln!(
                out,
                "{}: {}; kept, and retried with back-off",
                peer.address,
                if peer.error.is_empty() {
                    "not reached yet"
                } else {
                    &peer.error
                }
            ),
        };
    }
    stdout::print(out)
}

pub async fn forget(args: ForgetArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    client
        .forget_peers(ForgetPeersRequest { hosts: args.hosts })
        .await
        .map_err(refused)?;
    Ok(())
}

fn heard_text(unix: i64, now: SystemTime) -> String {
    let Ok(secs) = u64::try_from(unix) else {
        return "never".into();
    };
    if secs == 0 {
        return "never".into();
    }
    let when = UNIX_EPOCH + Duration::from_secs(secs);
    match now.duration_since(when) {
        Ok(ago) => format!(
            "{} ago",
            humantime::format_duration(Duration::from_secs(ago.as_secs()))
        ),
        Err(_) => "just now".into(),
    }
}

/// The segment's part of `status -o json`.
pub fn to_json(status: &SegmentStatus) -> Value {
    json!({
        "up": status.up,
        "error": (!status.error.is_empty()).then_some(&status.error),
        "local": status.local,
        "range": status.range,
        "claims": status.claims.iter().map(|c| json!({
            "address": c.address, "mac": c.mac, "container": c.container,
        })).collect::<Vec<_>>(),
        "peers": status.peers.iter().map(|p| json!({
            "address": p.address,
            "source": p.source.split(',').collect::<Vec<_>>(),
            "state": p.state,
            "error": (!p.error.is_empty()).then_some(&p.error),
            "last_heard_unix": (p.last_heard_unix > 0).then_some(p.last_heard_unix),
            "claims": p.claims,
        })).collect::<Vec<_>>(),
        "conflicts": status.conflicts.iter().map(|c| json!({
            "address": c.address, "holders": c.holders,
        })).collect::<Vec<_>>(),
    })
}

/// The segment's part of `status`, as a table.
pub fn to_table(status: &SegmentStatus, now: SystemTime) -> String {
    let mut out = String::new();
    let state = if status.up {
        "up".to_string()
    } else {
        format!("DOWN: {}", status.error)
    };
    let _ = writeln!(
        out,
        "\nL2 segment: {state}  peer port {}  range {}  {} address(es) here",
        status.local,
        status.range,
        status.claims.len()
    );
    for conflict in &status.conflicts {
        let _ = writeln!(
            out,
            "CONFLICT: {} is held by {}",
            conflict.address,
            conflict.holders.join(" and by ")
        );
    }
    let _ = writeln!(
        out,
        "{:<22} {:<13} {:<11} {:<16} {:<7} ERROR",
        "PEER", "SOURCE", "STATE", "LAST HEARD", "CLAIMS"
    );
    for p in &status.peers {
        let _ = writeln!(
            out,
            "{:<22} {:<13} {:<11} {:<16} {:<7} {}",
            p.address,
            p.source,
            p.state,
            heard_text(p.last_heard_unix, now),
            p.claims,
            p.error
        );
    }
    let _ = writeln!(out, "({} segment peers)", status.peers.len());
    out
}

#[cfg(test)]
mod tests {
    use tartan_proto::v1::{SegmentConflict, SegmentPeer};

    use super::*;

    #[test]
    fn the_table_shows_each_peer_and_every_conflict() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let status = SegmentStatus {
            up: true,
            local: "10.0.0.1:6783".into(),
            range: "10.32.0.0/12".into(),
            peers: vec![
                SegmentPeer {
                    address: "10.0.0.2:6783".into(),
                    source: "manual".into(),
                    state: "connected".into(),
                    last_heard_unix: 999_998,
                    claims: 1,
                    ..Default::default()
                },
                SegmentPeer {
                    address: "10.0.0.3:6783".into(),
                    source: "etcd".into(),
                    state: "retrying".into(),
                    error: "not reached: Connection refused (os error 111)".into(),
                    ..Default::default()
                },
            ],
            conflicts: vec![SegmentConflict {
                address: "10.1.1.1".into(),
                holders: vec!["c1 on 10.0.0.1".into(), "c1 on 10.0.0.2".into()],
            }],
            ..Default::default()
        };
        let table = to_table(&status, now);
        assert!(
            table.contains("CONFLICT: 10.1.1.1 is held by c1 on 10.0.0.1 and by c1 on 10.0.0.2"),
            "{table}"
        );
        assert!(
            table.contains("10.0.0.2:6783          manual        connected   2s ago"),
            "{table}"
        );
        assert!(table.contains("retrying    never"), "{table}");
        let json = to_json(&status);
        assert_eq!(json["peers"][1]["source"][0], "etcd");
        assert_eq!(json["peers"][1]["last_heard_unix"], Value::Null);
    }
}
