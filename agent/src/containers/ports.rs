//! Published ports (`run -p`, `-P`): parsing Docker's spellings, choosing
//! free host ports, refusing a port another container holds, and keeping
//! the DNAT rules of `ip tartan-ports` in step with the running containers.
//!
//! The rules are derived, never scripted: whenever a container starts,
//! ends or goes, and when the agent starts, the set every running container
//! publishes is computed and handed to the dataplane, which makes the table
//! match it. A crashed agent therefore leaves nothing behind for long: its
//! next start removes the rules of containers that ended meanwhile.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use tartan_dataplane::{PortProtocol, PublishedPort};
use tartan_runtime::container::ports::PortBinding;
use tartan_runtime::container::{ContainerConfig, NetworkMode};
use tracing::{info, warn};

use super::Containers;

/// Tartan's nf_tables table for published ports (family ip).
pub const PORTS_TABLE: &str = "tartan-ports";

/// Docker's ephemeral range, used when the kernel's cannot be read.
const FALLBACK_EPHEMERAL: (u16, u16) = (32768, 60999);

/// Serializes choosing host ports and installing their rules, so that two
/// starts never take the same port.
#[derive(Default)]
pub struct Publisher {
    lock: tokio::sync::Mutex<()>,
}

/// Parses one `-p`: `[HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|/udp]`, as
/// Docker reads it (`HOST_IP::CONTAINER_PORT` leaves the host port free).
pub fn parse_publish(text: &str) -> Result<PortBinding> {
    let bad = |why: &str| anyhow!("invalid -p {text:?}: {why}");
    let (addresses, protocol) = match text.rsplit_once('/') {
        Some((rest, proto)) => (rest, proto.to_ascii_lowercase()),
        None => (text, "tcp".to_string()),
    };
    if protocol != "tcp" && protocol != "udp" {
        return Err(bad("the protocol is tcp or udp"));
    }
    let parts: Vec<&str> = addresses.split(':').collect();
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [container] => (None, "", *container),
        [host, container] => (None, *host, *container),
        [ip, host, container] => (Some(*ip), *host, *container),
        _ => return Err(bad("use [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/PROTO]")),
    };
    let port = |text: &str, what: &str| -> Result<u16> {
        if text.contains('-') {
            return Err(bad("port ranges are not supported"));
        }
        match text.parse::<u16>() {
            Ok(port) if port > 0 => Ok(port),
            _ => Err(bad(&format!("{text:?} is not a {what} port (1-65535)"))),
        }
    };
    let host_ip = match host_ip {
        None | Some("") => None,
        Some(ip) => {
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?;
            (!ip.is_unspecified()).then_some(ip)
        }
    };
    Ok(PortBinding {
        host_ip,
        host_port: if host_port.is_empty() {
            0
        } else {
            port(host_port, "host")?
        },
        container_port: port(container_port, "container")?,
        protocol,
    })
}

/// The ports the image exposes (its config's ExposedPorts), for `-P`, each
/// on a host port chosen at start. SCTP, which the rules do not carry, is
/// left out.
pub fn image_exposed_ports(image: &tartan_runtime::Image) -> Vec<PortBinding> {
    let Some(config) = image.config.as_ref() else {
        return Vec::new();
    };
    config
        .exposed_ports
        .iter()
        .filter_map(|exposed| {
            let protocol = match exposed.protocol {
                tartan_runtime::image::Protocol::Tcp => "tcp",
                tartan_runtime::image::Protocol::Udp => "udp",
                tartan_runtime::image::Protocol::Sctp => return None,
            };
            Some(PortBinding {
                host_ip: None,
                host_port: 0,
                container_port: exposed.port,
                protocol: protocol.to_string(),
            })
        })
        .collect()
}

/// What `-p` and `-P` add up to: the given ports, then every exposed one
/// not given, each on a free host port.
pub fn requested_ports(given: &[PortBinding], exposed: &[PortBinding]) -> Vec<PortBinding> {
    let mut ports = given.to_vec();
    for port in exposed {
        let mapped = ports
            .iter()
            .any(|p| p.container_port == port.container_port && p.protocol == port.protocol);
        if !mapped {
            ports.push(PortBinding {
                host_ip: None,
                host_port: 0,
                ..port.clone()
            });
        }
    }
    ports
}

/// Docker's refusal of a host port in use.
fn allocated(port: &PortBinding) -> anyhow::Error {
    anyhow!(
        "Bind for {}:{} failed: port is already allocated",
        port.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
        port.host_port
    )
}

/// Refuses a host address that is not the host's, as Docker's port proxy
/// fails to bind it.
fn check_host_address(port: &PortBinding) -> Result<()> {
    let Some(ip) = port.host_ip else {
        return Ok(());
    };
    match UdpSocket::bind(SocketAddrV4::new(ip, 0)) {
        Err(err) if err.kind() == std::io::ErrorKind::AddrNotAvailable => bail!(
            "cannot publish on {ip}:{}: {ip} is not an address of this host",
            port.host_port
        ),
        _ => Ok(()),
    }
}

/// Whether nothing on the host listens on the port: binding it tells.
fn is_free(ip: Option<Ipv4Addr>, port: u16, protocol: &str) -> bool {
    let address = SocketAddrV4::new(ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port);
    match protocol {
        "udp" => UdpSocket::bind(address).is_ok(),
        _ => TcpListener::bind(address).is_ok(),
    }
}

fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(low, high)| low <= high)
        .unwrap_or(FALLBACK_EPHEMERAL)
}

/// The host ports of one start: fixed ones checked against `taken`, free
/// ones chosen from the ephemeral range, clear of listeners and of `taken`.
pub fn choose_ports(wanted: &[PortBinding], taken: &[PortBinding]) -> Result<Vec<PortBinding>> {
    for port in wanted {
        check_host_address(port)?;
    }
    let mut chosen: Vec<PortBinding> = Vec::new();
    for port in wanted.iter().filter(|p| p.host_port != 0) {
        if taken.iter().chain(&chosen).any(|t| t.overlaps(port)) {
            return Err(allocated(port));
        }
        chosen.push(port.clone());
    }
    let (low, high) = ephemeral_range();
    for port in wanted.iter().filter(|p| p.host_port == 0) {
        let span = u32::from(high - low) + 1;
        let offset = rand::random_range(0..span);
        let found = (0..span)
            .map(|i| low + ((offset + i) % span) as u16)
            .map(|host_port| PortBinding {
                host_port,
                ..port.clone()
            })
            .find(|candidate| {
                !taken.iter().chain(&chosen).any(|t| t.overlaps(candidate))
                    && is_free(candidate.host_ip, candidate.host_port, &candidate.protocol)
            })
            .ok_or_else(|| anyhow!("no free host port in {low}-{high} for {}", port.display()))?;
        chosen.push(found);
    }
    // In the order asked for, as `port` lists them.
    let mut ordered = Vec::new();
    for port in wanted {
        let index = chosen
            .iter()
            .position(|c| {
                c.container_port == port.container_port
                    && c.protocol == port.protocol
                    && c.host_ip == port.host_ip
                    && (port.host_port == 0 || c.host_port == port.host_port)
            })
            .context("a chosen port went missing")?;
        ordered.push(chosen.remove(index));
    }
    Ok(ordered)
}

/// The rules a running container's ports need; none without an address.
fn rules_of(config: &ContainerConfig) -> Vec<PublishedPort> {
    let Some(address) = config
        .address
        .as_deref()
        .and_then(|a| a.parse::<Ipv4Network>().ok())
    else {
        return Vec::new();
    };
    config
        .published
        .iter()
        .map(|port| PublishedPort {
            owner: config.id.clone(),
            host_ip: port.host_ip,
            host_port: port.host_port,
            protocol: if port.protocol == "udp" {
                PortProtocol::Udp
            } else {
                PortProtocol::Tcp
            },
            container: address,
            container_port: port.container_port,
        })
        .collect()
}

/// The host end of the container's eth0, a port of its bridge.
fn bridge_port(config: &ContainerConfig) -> String {
    match &config.network {
        NetworkMode::Named(_) => {
            crate::networks::attach::host_ifname_for(&format!("net:{}:eth0", config.id))
        }
        _ => crate::networks::attach::host_ifname_for(&super::address_key(&config.id)),
    }
}

/// Whether a network mode gives the container an address ports can reach.
pub fn can_publish(network: &NetworkMode) -> bool {
    matches!(network, NetworkMode::Overlay | NetworkMode::Named(_))
}

impl Containers {
    /// The ports other running containers hold.
    fn ports_taken(&self, except: &str) -> Vec<PortBinding> {
        let configs: Vec<ContainerConfig> = self
            .lock()
            .values()
            .filter(|e| e.config.id != except && !e.config.published.is_empty())
            .map(|e| e.config.clone())
            .collect();
        configs
            .into_iter()
            .filter(|c| self.dir(&c.id).shim_alive())
            .flat_map(|c| c.published)
            .collect()
    }

    /// Before a start: the host ports this start will publish, refused
    /// when another running container holds one. Hold the guard until the
    /// rules are in ([`Self::sync_ports`]).
    pub(super) async fn reserve_ports(
        &self,
        config: &ContainerConfig,
    ) -> Result<(Vec<PortBinding>, tokio::sync::MutexGuard<'_, ()>)> {
        let guard = self.inner.ports.lock.lock().await;
        if config.ports.is_empty() || !can_publish(&config.network) {
            return Ok((Vec::new(), guard));
        }
        let taken = self.ports_taken(&config.id);
        let wanted = config.ports.clone();
        let chosen = tokio::task::spawn_blocking(move || choose_ports(&wanted, &taken))
            .await
            .context("choosing host ports")??;
        Ok((chosen, guard))
    }

    /// Makes the port table match the running containers. The caller holds
    /// the publisher's lock when `locked` is given.
    pub(super) async fn sync_ports(
        &self,
        locked: Option<&tokio::sync::MutexGuard<'_, ()>>,
    ) -> Result<()> {
        let _guard = match locked {
            Some(_) => None,
            None => Some(self.inner.ports.lock.lock().await),
        };
        let configs: Vec<ContainerConfig> =
            self.lock().values().map(|e| e.config.clone()).collect();
        let publishing: Vec<&ContainerConfig> = configs
            .iter()
            .filter(|c| !c.published.is_empty() && self.dir(&c.id).shim_alive())
            .collect();
        let desired: Vec<PublishedPort> = publishing.iter().flat_map(|c| rules_of(c)).collect();
        let bridge_ports: Vec<String> = publishing.iter().map(|c| bridge_port(c)).collect();
        let changes = tokio::task::spawn_blocking(move || -> Result<_> {
            for port in &desired {
                tartan_dataplane::allow_loopback_towards(port.container.ip())?;
            }
            for port in &bridge_ports {
                tartan_dataplane::allow_hairpin(port)?;
            }
            Ok(tartan_dataplane::apply_published_ports(
                PORTS_TABLE,
                &desired,
            )?)
        })
        .await
        .context("updating the published-port rules")?
        .context("updating the published-port rules")?;
        if !changes.is_empty() {
            info!(
                added = changes.added,
                removed = changes.removed,
                "updated the published-port rules"
            );
        }
        Ok(())
    }

    /// As [`Self::sync_ports`], logging a failure: for paths that go on.
    pub(super) async fn sync_ports_or_warn(&self) {
        if let Err(err) = self.sync_ports(None).await {
            warn!(error = %format!("{err:#}"), "could not update the published-port rules");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(ip: Option<[u8; 4]>, host: u16, container: u16, proto: &str) -> PortBinding {
        PortBinding {
            host_ip: ip.map(Ipv4Addr::from),
            host_port: host,
            container_port: container,
            protocol: proto.into(),
        }
    }

    #[test]
    fn dockers_spellings_parse() {
        assert_eq!(
            parse_publish("8080:80").expect("parse"),
            binding(None, 8080, 80, "tcp")
        );
        assert_eq!(
            parse_publish("192.168.0.10:9090:22").expect("parse"),
            binding(Some([192, 168, 0, 10]), 9090, 22, "tcp")
        );
        assert_eq!(
            parse_publish("53/udp").expect("parse"),
            binding(None, 0, 53, "udp")
        );
        assert_eq!(
            parse_publish("127.0.0.1::80").expect("parse"),
            binding(Some([127, 0, 0, 1]), 0, 80, "tcp")
        );
        assert_eq!(
            parse_publish("0.0.0.0:81:80/TCP").expect("parse"),
            binding(None, 81, 80, "tcp")
        );
        for bad in [
            "",
            "80/sctp",
            "x:80",
            "1:2:3:4",
            "8080-8081:80",
            "0:80",
            "70000",
            "::1:80:80",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad:?} is refused");
        }
        assert_eq!(
            binding(None, 8080, 80, "tcp").display(),
            "0.0.0.0:8080->80/tcp"
        );
    }

    #[test]
    fn overlapping_ports_are_refused_and_free_ones_chosen() {
        let taken = [binding(None, 8080, 80, "tcp")];
        let err = choose_ports(&[binding(Some([127, 0, 0, 1]), 8080, 81, "tcp")], &taken)
            .expect_err("0.0.0.0 covers every address");
        assert_eq!(
            err.to_string(),
            "Bind for 127.0.0.1:8080 failed: port is already allocated"
        );
        assert!(choose_ports(&[binding(None, 8080, 80, "udp")], &taken).is_ok());
        let err = choose_ports(&[binding(Some([192, 0, 2, 1]), 9090, 22, "tcp")], &[])
            .expect_err("not this host's address");
        assert!(
            err.to_string().contains("not an address of this host"),
            "{err}"
        );
        let chosen = choose_ports(
            &[binding(None, 0, 80, "tcp"), binding(None, 9091, 22, "tcp")],
            &taken,
        )
        .expect("choose");
        let (low, high) = ephemeral_range();
        assert!((low..=high).contains(&chosen[0].host_port));
        assert_eq!(chosen[1].host_port, 9091);
        assert_eq!(
            requested_ports(
                &[binding(None, 1, 80, "tcp")],
                &[binding(None, 0, 80, "tcp"), binding(None, 0, 443, "tcp")]
            ),
            vec![binding(None, 1, 80, "tcp"), binding(None, 0, 443, "tcp")]
        );
    }
}
