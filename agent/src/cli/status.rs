//! `tartan status`: the agent's answer rendered as a table or as JSON.

use std::fmt::Write;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};
use tartan_proto::v1::{Lease, NetworkConfig, Seccomp, Security as PbSecurity, StatusResponse};

fn expires_text(expires_unix: Option<i64>) -> Option<String> {
    let secs = u64::try_from(expires_unix?).ok()?;
    Some(humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string())
}

fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn lease_json(lease: &Lease) -> Value {
    json!({
        "subnet": lease.subnet,
        "public_ip": lease.public_ip,
        "public_ipv6": (!lease.public_ipv6.is_empty()).then_some(&lease.public_ipv6),
        "backend_type": lease.backend_type,
        "backend_data": json_text(&lease.backend_data_json),
        "expires": expires_text(lease.expires_unix),
        "expires_unix": lease.expires_unix,
    })
}

fn config_json(config: &NetworkConfig) -> Value {
    json!({
        "network": config.network,
        "subnet_len": config.subnet_len,
        "subnet_min": config.subnet_min,
        "subnet_max": config.subnet_max,
        "backend_type": config.backend_type,
        "backend": json_text(&config.backend_json),
    })
}

/// The status as a JSON document (the `-o json` output). `store` says the
/// mode: "etcd", or "none" for an agent run with --no-etcd, which has no
/// etcd, lease, config or peers to show.
pub fn to_json(status: &StatusResponse) -> Value {
    if status.peer_mode {
        return json!({ "store": "none" });
    }
    json!({
        "store": "etcd",
        "etcd_prefix": status.etcd_prefix,
        "etcd_reachable": status.etcd_reachable,
        "etcd_error": (!status.etcd_reachable).then_some(&status.etcd_error),
        "etcd_unreachable_secs": (!status.etcd_reachable).then_some(status.etcd_unreachable_secs),
        "forward_dropped_by": status.forward_dropped_by,
        "node": status.node.as_ref().map(lease_json),
        "config": status.config.as_ref().map(config_json),
        "peers": status.peers.iter().map(lease_json).collect::<Vec<_>>(),
    })
}

// The tables below are written into Strings, where `writeln!` cannot fail.

/// The status as a human-readable table.
pub fn to_table(status: &StatusResponse) -> String {
    let mut out = String::new();
    if status.peer_mode {
        out.push_str("store:    none (peer mode, --no-etcd): no subnet lease, no routed overlay\n");
        return out;
    }
    let reachable = if status.etcd_reachable {
        "reachable".to_string()
    } else if status.etcd_unreachable_secs > 0 {
        format!(
            "UNREACHABLE for {}: {}",
            humantime::format_duration(Duration::from_secs(status.etcd_unreachable_secs)),
            status.etcd_error
        )
    } else {
        format!("UNREACHABLE: {}", status.etcd_error)
    };
    let _ = writeln!(out, "etcd:     {} ({reachable})", status.etcd_prefix);
    if !status.forward_dropped_by.is_empty() {
        let _ = writeln!(
            out,
            "forward:  a drop policy in {} may drop the network's traffic",
            status.forward_dropped_by.join(", ")
        );
    }
    match &status.config {
        Some(c) => {
            let _ = writeln!(
                out,
                "network:  {}  subnets /{} from {} to {}  backend {}",
                c.network, c.subnet_len, c.subnet_min, c.subnet_max, c.backend_type
            );
        }
        None => out.push_str("network:  (waiting for a valid network config)\n"),
    }
    match &status.node {
        Some(n) => {
            let _ = writeln!(
                out,
                "node:     {}  public {}  expires {}",
                n.subnet,
                n.public_ip,
                expires_text(n.expires_unix).unwrap_or_else(|| "-".into())
            );
        }
        None => out.push_str("node:     (no lease yet)\n"),
    }
    let _ = writeln!(
        out,
        "\n{:<20} {:<16} {:<10} EXPIRES",
        "SUBNET", "PUBLIC IP", "BACKEND"
    );
    for p in &status.peers {
        let _ = writeln!(
            out,
            "{:<20} {:<16} {:<10} {}",
            p.subnet,
            p.public_ip,
            // flannel's udp and alloc leases carry no type.
            if p.backend_type.is_empty() {
                "-"
            } else {
                &p.backend_type
            },
            expires_text(p.expires_unix).unwrap_or_else(|| "-".into())
        );
    }
    let _ = writeln!(out, "({} peers)", status.peers.len());
    out
}

/// `tartan images`, laid out as `docker images` does it, ages included.
pub fn images_table(images: &[tartan_proto::v1::Image]) -> String {
    images_table_at(images, std::time::SystemTime::now())
}

fn images_table_at(images: &[tartan_proto::v1::Image], now: std::time::SystemTime) -> String {
    let mut out = format!(
        "{:<30} {:<12} {:<14} {:<22} SIZE\n",
        "REPOSITORY", "TAG", "IMAGE ID", "CREATED"
    );
    for image in images {
        let created = age(&image.created, now)
            .map(|ago| format!("{ago} ago"))
            .unwrap_or_else(|| image.created.clone());
        let _ = writeln!(
            out,
            "{:<30} {:<12} {:<14} {:<22} {}",
            image.name,
            image.tag,
            image.id.get(..12).unwrap_or(&image.id),
            created,
            human_size(image.size)
        );
    }
    out
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// The `--security-opt` entries that give `security` back, as Docker's
/// inspect shows them (a profile by its contents).
pub fn security_opt_flags(security: &PbSecurity) -> Vec<String> {
    let mut opts = Vec::new();
    if security.no_new_privileges {
        opts.push("no-new-privileges".to_string());
    }
    match security.seccomp() {
        Seccomp::Default => {}
        Seccomp::Unconfined => opts.push("seccomp=unconfined".into()),
        Seccomp::Profile => opts.push(format!("seccomp={}", security.seccomp_profile)),
    }
    opts
}

/// `--sysctl` entries, `KEY=VALUE`.
pub fn sysctl_flags(security: &PbSecurity) -> Vec<String> {
    security
        .sysctls
        .iter()
        .map(|s| format!("{}={}", s.key, s.value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StatusResponse {
        StatusResponse {
            forward_dropped_by: Vec::new(),
            etcd_error: String::new(),
            etcd_unreachable_secs: 0,
            node: Some(Lease {
                subnet: "10.5.34.0/24".into(),
                public_ip: "192.168.1.10".into(),
                public_ipv6: String::new(),
                backend_type: "vxlan".into(),
                backend_data_json: r#"{"VNI":1}"#.into(),
                expires_unix: Some(1_800_000_000),
            }),
            config: Some(NetworkConfig {
                network: "10.5.0.0/16".into(),
                subnet_len: 24,
                subnet_min: "10.5.1.0".into(),
                subnet_max: "10.5.255.0".into(),
                backend_type: "vxlan".into(),
                backend_json: r#"{"Type":"vxlan"}"#.into(),
            }),
            peers: vec![Lease {
                subnet: "10.5.7.0/24".into(),
                public_ip: "192.168.1.11".into(),
                public_ipv6: String::new(),
                backend_type: "host-gw".into(),
                backend_data_json: "null".into(),
                expires_unix: None,
            }],
            etcd_reachable: true,
            etcd_prefix: "/coreos.com/network".into(),
            peer_mode: false,
        }
    }

    #[test]
    fn peer_mode_says_so_and_shows_no_etcd() {
        let status = StatusResponse {
            peer_mode: true,
            ..StatusResponse::default()
        };
        assert_eq!(
            to_table(&status),
            "store:    none (peer mode, --no-etcd): no subnet lease, no routed overlay\n"
        );
        assert_eq!(to_json(&status), json!({ "store": "none" }));
        assert_eq!(to_json(&sample())["store"], "etcd");
    }

    #[test]
    fn json_carries_every_field() {
        let v = to_json(&sample());
        assert_eq!(v["node"]["subnet"], "10.5.34.0/24");
        assert_eq!(v["node"]["backend_data"]["VNI"], 1);
        assert_eq!(v["node"]["expires"], "2027-01-15T08:00:00Z");
        assert_eq!(v["node"]["public_ipv6"], Value::Null);
        assert_eq!(v["config"]["subnet_len"], 24);
        assert_eq!(v["peers"][0]["public_ip"], "192.168.1.11");
        assert_eq!(v["peers"][0]["expires"], Value::Null);
        assert_eq!(v["etcd_reachable"], true);
        assert_eq!(v["etcd_error"], Value::Null);
    }

    #[test]
    fn an_outage_shows_its_cause_and_length() {
        let mut status = sample();
        status.etcd_reachable = false;
        status.etcd_error = "connection refused".into();
        status.etcd_unreachable_secs = 95;
        let table = to_table(&status);
        assert!(
            table.starts_with(
                "etcd:     /coreos.com/network (UNREACHABLE for 1m 35s: connection refused)\n"
            ),
            "{table}"
        );
        let v = to_json(&status);
        assert_eq!(v["etcd_reachable"], false);
        assert_eq!(v["etcd_unreachable_secs"], 95);
        assert_eq!(v["etcd_error"], "connection refused");
    }

    #[test]
    fn images_are_listed_like_docker_does() {
        let image = tartan_proto::v1::Image {
            id: "0123456789abcdef0123".into(),
            name: "busybox".into(),
            tag: "latest".into(),
            layers: vec![],
            size: 1_982_256,
            created: "2026-11-24T10:00:00Z".into(),
        };
        let now = humantime::parse_rfc3339("2026-11-24T12:00:00Z").expect("a time");
        let table = images_table_at(&[image], now);
        assert!(table.starts_with("REPOSITORY"), "{table}");
        assert!(
            table.contains("busybox") && table.contains("0123456789ab ") && table.contains("2.0MB"),
            "{table}"
        );
        assert!(table.contains(" 2 hours ago "), "{table}");
        let day = Duration::from_secs(86400);
        for (before, said) in [
            (Duration::from_secs(1), "Less than a second"),
            (Duration::from_secs(61), "1 minute"),
            (day * 13, "13 days"),
            (day * 20, "2 weeks"),
            (day * 100, "3 months"),
            (day * 1000, "2 years"),
        ] {
            let then = humantime::format_rfc3339_seconds(now - before).to_string();
            assert_eq!(age(&then, now).as_deref(), Some(said), "{before:?}");
        }
        assert_eq!(human_size(999), "999B");
    }

    #[test]
    fn table_lists_node_and_peers() {
        let t = to_table(&sample());
        assert!(
            t.contains("node:     10.5.34.0/24  public 192.168.1.10"),
            "{t}"
        );
        assert!(
            t.contains("10.5.7.0/24          192.168.1.11     host-gw"),
            "{t}"
        );
        assert!(t.ends_with("(1 peers)\n"), "{t}");
    }
}

/// "3 seconds", "5 minutes", as Docker words ages; images built long ago
/// count in weeks, months and years, with Docker's thresholds.
fn age(since: &str, now: std::time::SystemTime) -> Option<String> {
    const DAY: u64 = 86400;
    let then = humantime::parse_rfc3339_weak(since).ok()?;
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    let (n, unit) = match secs {
        0..=1 => return Some("Less than a second".into()),
        2..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ if secs < 14 * DAY => (secs / DAY, "day"),
        _ if secs < 60 * DAY => (secs / (7 * DAY), "week"),
        _ if secs < 730 * DAY => (secs / (30 * DAY), "month"),
        _ => (secs / (365 * DAY), "year"),
    };
    Some(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }))
}

/// The STATUS column: "Up 5 seconds", "Exited (0) 3 seconds ago", "Created".
fn container_status(c: &tartan_proto::v1::Container, now: std::time::SystemTime) -> String {
    match c.state.as_str() {
        "running" => format!("Up {}", age(&c.started, now).unwrap_or_default()),
        // Docker's: the code it ended with, and how long ago.
        "restarting" => {
            let code = c.exit_code.unwrap_or_default();
            let ago = age(&c.finished, now).unwrap_or_else(|| "Less than a second".into());
            format!("Restarting ({code}) {ago} ago")
        }
        "exited" => {
            let code = c.exit_code.unwrap_or_default();
            match age(&c.finished, now) {
                Some(ago) => format!("Exited ({code}) {ago} ago"),
                None => format!("Exited ({code})"),
            }
        }
        _ => "Created".into(),
    }
}

/// `tartan ps`.
pub fn containers_table(containers: &[tartan_proto::v1::Container]) -> String {
    let now = std::time::SystemTime::now();
    let rows: Vec<[String; 8]> = containers
        .iter()
        .map(|c| {
            let mut command = c.args.join(" ");
            if command.chars().count() > 20 {
                command = command.chars().take(19).collect::<String>() + "…";
            }
            [
                c.id.chars().take(12).collect(),
                c.image.clone(),
                format!("\"{command}\""),
                age(&c.created, now)
                    .map(|a| format!("{a} ago"))
                    .unwrap_or_default(),
                container_status(c, now),
                crate::cli::ports::ports_cell(c),
                c.addresses.join(","),
                c.name.clone(),
            ]
        })
        .collect();
    let header = [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "ADDRESS",
        "NAMES",
    ];
    crate::cli::columns::columns(header, &rows)
}

/// One of a container's mounts, in Docker's shape.
fn mount_json(mount: &tartan_proto::v1::VolumeMount) -> Value {
    let volume = mount.r#type == "volume";
    json!({
        "Type": mount.r#type,
        "Name": (volume).then_some(&mount.name),
        "Source": mount.source,
        "Destination": mount.destination,
        "Driver": if volume { "local" } else { "" },
        "Mode": if mount.rw { "" } else { "ro" },
        "RW": mount.rw,
        "Propagation": if volume { "" } else { "rprivate" },
    })
}

/// `tartan inspect`: one JSON object per container, in an array as Docker prints it.
/// Docker's set-as-object shape, `{"80/tcp": {}}`; null when empty.
fn keyed_set(keys: &[String]) -> Value {
    if keys.is_empty() {
        return Value::Null;
    }
    Value::Object(keys.iter().map(|k| (k.clone(), json!({}))).collect())
}

pub fn container_json(c: &tartan_proto::v1::Container) -> Value {
    let (ip, prefix) = match c.address.split_once('/') {
        Some((ip, len)) => (Some(ip), len.parse::<u8>().ok()),
        None => (None, None),
    };
    let empty_none = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let security = c.security.clone().unwrap_or_default();
    let mut host_config = json!({ "PortBindings": crate::cli::ports::port_bindings_json(c) });
    for (key, value) in crate::cli::limits::host_config_json(c) {
        host_config[key] = value;
    }
    host_config["RestartPolicy"] = json!({
        "Name": if c.restart_policy.is_empty() { "no" } else { &c.restart_policy },
        "MaximumRetryCount": c.restart_max_retries,
    });
    json!({
        "id": c.id,
        "name": c.name,
        "image": c.image,
        "image_id": format!("sha256:{}", c.image_id),
        "created": c.created,
        "args": c.args,
        "state": {
            "status": c.state,
            // As Docker's: a container waiting to restart is still running.
            "running": c.state == "running" || c.state == "restarting",
            "restarting": c.state == "restarting",
            "pid": c.pid,
            "exit_code": c.exit_code,
            "started_at": empty_none(&c.started),
            "finished_at": empty_none(&c.finished),
        },
        "config": {
            "hostname": c.hostname,
            "env": c.env,
            "working_dir": c.workdir,
            "tty": c.tty,
            "open_stdin": c.interactive,
            "auto_remove": c.auto_remove,
            // The image's settings as applied, in Docker's shapes: null when unset.
            "image": c.image,
            "user": c.user,
            "entrypoint": (!c.entrypoint.is_empty()).then_some(&c.entrypoint),
            "cmd": (!c.cmd.is_empty()).then_some(&c.cmd),
            "exposed_ports": keyed_set(&c.exposed_ports),
            "volumes": keyed_set(&c.volumes),
        },
        "network": {
            "mode": c.network,
            "ip_address": ip,
            "prefix_len": prefix,
        },
        "host_config": {
            "privileged": security.privileged,
            "security_opt": security_opt_flags(&security),
            "cap_add": security.cap_add,
            "cap_drop": security.cap_drop,
            "sysctls": sysctl_flags(&security),
            "links": c.links,
            "extra_hosts": c.extra_hosts,
            "network_aliases": c.network_aliases,
        },
        // Docker's own shapes, for tools that read them.
        "HostConfig": host_config,
        "RestartCount": c.restart_count,
        "State": { "OOMKilled": c.oom_killed, "ExitCode": c.exit_code.unwrap_or(0) },
        "NetworkSettings": { "Ports": crate::cli::ports::network_ports_json(c) },
        "Mounts": c.mounts.iter().map(mount_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod container_tests {
    use super::*;

    #[test]
    fn ps_reads_like_docker() {
        let now = std::time::SystemTime::now();
        let started = humantime::format_rfc3339_seconds(now - Duration::from_secs(125)).to_string();
        let c = tartan_proto::v1::Container {
            id: "0123456789abcdef".into(),
            name: "web".into(),
            image: "busybox".into(),
            args: vec!["sleep".into(), "1000".into()],
            state: "running".into(),
            started: started.clone(),
            created: started,
            address: "10.5.1.2/24".into(),
            addresses: vec!["10.5.1.2/24".into(), "10.5.1.9/24".into()],
            network: "overlay".into(),
            ..Default::default()
        };
        let table = containers_table(std::slice::from_ref(&c));
        let row = table.lines().nth(1).expect("a row");
        assert!(row.starts_with("0123456789ab   busybox"), "{row}");
        assert!(row.contains("Up 2 minutes"), "{row}");
        assert!(row.ends_with("10.5.1.2/24,10.5.1.9/24   web"), "{row}");
        // No network of its own: nothing, not the mode's name.
        let hosted = tartan_proto::v1::Container {
            addresses: vec![],
            network: "host".into(),
            ..c.clone()
        };
        let table = containers_table(std::slice::from_ref(&hosted));
        assert!(!table.contains("host"), "{table}");
        let exited = tartan_proto::v1::Container {
            state: "exited".into(),
            exit_code: Some(3),
            ..c
        };
        assert_eq!(container_status(&exited, now), "Exited (3)");
        assert_eq!(container_json(&exited)["network"]["ip_address"], "10.5.1.2");
        let restarting = tartan_proto::v1::Container {
            state: "restarting".into(),
            finished: humantime::format_rfc3339_seconds(now - Duration::from_secs(2)).to_string(),
            restart_policy: "always".into(),
            restart_count: 4,
            ..exited
        };
        assert_eq!(
            container_status(&restarting, now),
            "Restarting (3) 2 seconds ago"
        );
        let json = container_json(&restarting);
        assert_eq!(json["RestartCount"], 4);
        assert_eq!(json["HostConfig"]["RestartPolicy"]["Name"], "always");
        assert_eq!(json["state"]["running"], true);
    }
}

/// `tartan attachments`: one line per namespace plugged in, weave's `ps` in
/// Tartan's columns; `quiet` prints only the containers.
pub fn attachments_table(attachments: &[tartan_proto::v1::Attachment], quiet: bool) -> String {
    let mut out = String::new();
    if quiet {
        for a in attachments {
            let _ = writeln!(out, "{}", a.container);
        }
        return out;
    }
    let width = attachments
        .iter()
        .map(|a| a.container.len())
        .max()
        .unwrap_or(0)
        .max("CONTAINER".len());
    let _ = writeln!(
        out,
        "{:width$}  {:18}  {:15}  {:15}  ON",
        "CONTAINER", "ADDRESS", "HOST INTERFACE", "INTERFACE"
    );
    for a in attachments {
        let dash = |text: &str| {
            if text.is_empty() {
                "-".to_string()
            } else {
                text.to_string()
            }
        };
        // Where pipework's form plugged it: the host interface, the driver
        // and VLAN; `-` for the node bridge of weave's form.
        let mut on = dash(&a.attached_to);
        if !a.attached_to.is_empty() {
            on = format!("{on} ({})", a.driver);
            if a.vlan != 0 {
                on = format!("{on} vlan {}", a.vlan);
            }
            if !a.host_shim.is_empty() {
                on = format!("{on} shim {}", a.host_shim);
            }
        }
        let _ = writeln!(
            out,
            "{:width$}  {:18}  {:15}  {:15}  {on}",
            a.container,
            a.address,
            dash(&a.host_interface),
            dash(&a.container_interface)
        );
    }
    out
}

#[cfg(test)]
mod attachment_tests {
    use super::*;

    #[test]
    fn attachments_are_a_table_or_just_names() {
        let listed = [tartan_proto::v1::Attachment {
            container: "web".into(),
            address: "10.5.34.2/24".into(),
            host_interface: "vt0123456789".into(),
            ..Default::default()
        }];
        assert_eq!(
            attachments_table(&listed, false),
            "CONTAINER  ADDRESS             HOST INTERFACE   INTERFACE        ON\n\
             web        10.5.34.2/24        vt0123456789     -                -\n"
        );
        let macvlan = [tartan_proto::v1::Attachment {
            container: "c1".into(),
            address: "10.1.1.1/24".into(),
            driver: "macvlan".into(),
            attached_to: "eth0".into(),
            container_interface: "eth1".into(),
            host_shim: "tshim0".into(),
            ..Default::default()
        }];
        assert!(attachments_table(&macvlan, false)
            .ends_with("c1         10.1.1.1/24         -                eth1             eth0 (macvlan) shim tshim0\n"));
        assert_eq!(attachments_table(&listed, true), "web\n");
        assert_eq!(
            attachments_table(&[], false),
            "CONTAINER  ADDRESS             HOST INTERFACE   INTERFACE        ON\n"
        );
    }
}
