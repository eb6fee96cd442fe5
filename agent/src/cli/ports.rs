//! Published ports on the client side: `tartan port`, the PORTS column of
//! `ps` and the Docker-shaped port maps of `inspect`.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::{json, Map, Value};
use tartan_proto::v1::{Container, ContainerRequest, PortBinding};

use crate::api;
use crate::cli::refusal::refused;

#[derive(Args)]
pub struct PortArgs {
    /// A name or id prefix.
    container: String,
    /// PRIVATE_PORT[/PROTO]: only this port's host addresses.
    #[arg(value_name = "PRIVATE_PORT[/PROTO]")]
    private_port: Option<String>,
}

fn host_ip(port: &PortBinding) -> &str {
    if port.host_ip.is_empty() {
        "0.0.0.0"
    } else {
        &port.host_ip
    }
}

/// `80/tcp`: the key Docker's port maps use.
fn private_key(port: &PortBinding) -> String {
    format!("{}/{}", port.container_port, port.protocol)
}

/// `tartan port`: `docker port`'s lines.
pub fn port_lines(c: &Container, private_port: Option<&str>) -> Result<String> {
    let wanted = match private_port {
        None => None,
        Some(text) => {
            let (port, proto) = text.split_once('/').unwrap_or((text, "tcp"));
            let port: u32 = match port.parse() {
                Ok(port) if (1..=65535).contains(&port) => port,
                _ => bail!("invalid port {text:?}: use PRIVATE_PORT[/PROTO]"),
            };
            Some((port, proto.to_ascii_lowercase()))
        }
    };
    let mut out = String::new();
    for port in &c.ports {
        match &wanted {
            None => out.push_str(&format!(
                "{} -> {}:{}\n",
                private_key(port),
                host_ip(port),
                port.host_port
            )),
            Some((p, proto)) if port.container_port == *p && port.protocol == *proto => {
                out.push_str(&format!("{}:{}\n", host_ip(port), port.host_port))
            }
            Some(_) => {}
        }
    }
    if let (Some((port, proto)), true) = (&wanted, out.is_empty()) {
        // Docker's words.
        bail!("No public port '{port}/{proto}' published for {}", c.name);
    }
    Ok(out)
}

pub async fn port(args: PortArgs, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    let c = client
        .inspect_container(ContainerRequest {
            container: args.container,
        })
        .await
        .map_err(refused)?
        .into_inner();
    crate::cli::stdout::print(port_lines(&c, args.private_port.as_deref())?)
}

/// `ps`'s PORTS cell: `0.0.0.0:8080->80/tcp, 127.0.0.1:9090->22/tcp`.
pub fn ports_cell(c: &Container) -> String {
    c.ports
        .iter()
        .map(|p| format!("{}:{}->{}", host_ip(p), p.host_port, private_key(p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `HostConfig.PortBindings`: what was asked for, an empty HostPort for a
/// port chosen at start, as Docker records it.
pub fn port_bindings_json(c: &Container) -> Value {
    port_map(&c.port_bindings, |p| {
        json!({
            "HostIp": p.host_ip,
            "HostPort": if p.host_port == 0 { String::new() } else { p.host_port.to_string() },
        })
    })
}

/// `NetworkSettings.Ports`: what is published now.
pub fn network_ports_json(c: &Container) -> Value {
    port_map(
        &c.ports,
        |p| json!({ "HostIp": host_ip(p), "HostPort": p.host_port.to_string() }),
    )
}

fn port_map(ports: &[PortBinding], each: impl Fn(&PortBinding) -> Value) -> Value {
    let mut map = Map::new();
    for port in ports {
        let entry = map
            .entry(private_key(port))
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = entry {
            list.push(each(port));
        }
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_as_in_docker() {
        let c = Container {
            name: "web".into(),
            port_bindings: vec![PortBinding {
                host_ip: String::new(),
                host_port: 0,
                container_port: 80,
                protocol: "tcp".into(),
            }],
            ports: vec![
                PortBinding {
                    host_ip: String::new(),
                    host_port: 8080,
                    container_port: 80,
                    protocol: "tcp".into(),
                },
                PortBinding {
                    host_ip: "192.168.0.10".into(),
                    host_port: 9090,
                    container_port: 22,
                    protocol: "tcp".into(),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            ports_cell(&c),
            "0.0.0.0:8080->80/tcp, 192.168.0.10:9090->22/tcp"
        );
        assert_eq!(
            port_lines(&c, None).expect("lines"),
            "80/tcp -> 0.0.0.0:8080\n22/tcp -> 192.168.0.10:9090\n"
        );
        assert_eq!(
            port_lines(&c, Some("22")).expect("one"),
            "192.168.0.10:9090\n"
        );
        assert_eq!(
            port_lines(&c, Some("53/udp"))
                .expect_err("none")
                .to_string(),
            "No public port '53/udp' published for web"
        );
        assert_eq!(
            port_bindings_json(&c),
            json!({"80/tcp": [{"HostIp": "", "HostPort": ""}]})
        );
        assert_eq!(
            network_ports_json(&c)["22/tcp"],
            json!([{"HostIp": "192.168.0.10", "HostPort": "9090"}])
        );
    }
}
