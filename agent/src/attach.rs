//! `tartan attach` / `tartan detach`: plugging a network namespace into the
//! node bridge with an address from the node subnet (weave's argument form).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use tartan_dataplane::{Netlink, VethSpec};
use tartan_ipam::HostAllocator;
use tokio::sync::Mutex;

/// The interface name containers get.
const CONTAINER_IFNAME: &str = "eth0";

/// What the operator named as the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerRef {
    /// A name `ip netns` knows (`/run/netns/NAME`).
    Netns(String),
    /// A network namespace file.
    Path(PathBuf),
    /// A process whose network namespace is meant.
    Pid(u32),
}

impl ContainerRef {
    pub fn parse(text: &str) -> Result<ContainerRef> {
        if text.is_empty() {
            bail!("empty container name");
        }
        if text.starts_with('/') {
            return Ok(ContainerRef::Path(PathBuf::from(text)));
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(ContainerRef::Pid)
                .map_err(|_| anyhow!("{text} is not a process id"));
        }
        if text.contains('/') || text == "." || text == ".." {
            bail!("{text:?} is not a netns name");
        }
        Ok(ContainerRef::Netns(text.to_string()))
    }

    pub fn netns_path(&self) -> PathBuf {
        match self {
            ContainerRef::Netns(name) => Path::new("/run/netns").join(name),
            ContainerRef::Path(path) => path.clone(),
            ContainerRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }

    /// The owner key of the container's address in the allocator.
    pub fn key(&self) -> String {
        match self {
            ContainerRef::Netns(name) => format!("netns:{name}"),
            ContainerRef::Path(path) => format!("path:{}", path.display()),
            ContainerRef::Pid(pid) => format!("pid:{pid}"),
        }
    }

    /// The host end's name: derived from the key, so detach finds it again
    /// after an agent restart without any other record.
    pub fn host_ifname(&self) -> String {
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let hash = self.key().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("vt{:010x}", hash & 0xff_ffff_ffff)
    }
}

/// Parses the optional `ADDR[/LEN]` argument against the node subnet.
pub fn parse_requested(text: &str, subnet: &Ipv4Network) -> Result<Ipv4Addr> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| anyhow!("{text:?} is not an IPv4 address"))?;
    if let Some(len) = len {
        let len: u8 = len
            .parse()
            .map_err(|_| anyhow!("{text:?} has a bad prefix length"))?;
        if len != subnet.prefix() {
            bail!("{text} does not match the node subnet {subnet}");
        }
    }
    if !subnet.contains(addr) {
        bail!("{addr} is outside the node subnet {subnet}");
    }
    Ok(addr)
}

/// Attaches and detaches containers; owns the node subnet's address book.
pub struct Attacher {
    netlink: Netlink,
    subnet: Ipv4Network,
    mtu: u32,
    bridge_index: u32,
    allocations: Mutex<HostAllocator>,
    store: PathBuf,
}

impl Attacher {
    pub fn new(
        netlink: Netlink,
        subnet: Ipv4Network,
        mtu: u32,
        bridge_index: u32,
        state_dir: &Path,
    ) -> Result<Attacher> {
        let store = state_dir.join("ipam.json");
        let allocations = match HostAllocator::load_or_new(&store, subnet) {
            Ok(allocator) => allocator,
            Err(tartan_ipam::IpamError::SubnetChanged { stored, .. }) => {
                tracing::warn!(%stored, %subnet, "the node subnet changed; forgetting the old container addresses");
                HostAllocator::new(subnet)?
            }
            Err(err) => return Err(err).context("loading container addresses"),
        };
        Ok(Attacher {
            netlink,
            subnet,
            mtu,
            bridge_index,
            allocations: Mutex::new(allocations),
            store,
        })
    }

    /// Plugs the container in; returns its address with the subnet's prefix.
    pub async fn attach(
        &self,
        container: &ContainerRef,
        requested: Option<&str>,
    ) -> Result<Ipv4Network> {
        let path = container.netns_path();
        if !path.exists() {
            bail!(
                "no network namespace at {} (from {container:?})",
                path.display()
            );
        }
        let requested = requested
            .map(|text| parse_requested(text, &self.subnet))
            .transpose()?;
        let key = container.key();
        let mut book = self.allocations.lock().await;
        if let Some(addr) = book.address_of(&key) {
            bail!("{} is already attached with {addr}", describe(container));
        }
        let addr = match requested {
            Some(addr) => book.allocate_specific(&key, addr)?,
            None => book.allocate(&key)?,
        };
        let address = Ipv4Network::new(addr, self.subnet.prefix())?;
        let spec = VethSpec {
            netns: path,
            host_name: container.host_ifname(),
            container_name: CONTAINER_IFNAME.to_string(),
            address,
            gateway: book.gateway(),
            mtu: self.mtu,
            bridge_index: self.bridge_index,
        };
        let plugged = match self.netlink.attach_veth(&spec).await {
            Ok(()) => book.save(&self.store).context("saving container addresses"),
            Err(err) => Err(err.into()),
        };
        if let Err(err) = plugged {
            book.release(&key);
            let _ = self.netlink.detach_veth(&spec.host_name).await;
            return Err(err);
        }
        Ok(address)
    }

    /// Unplugs the container and frees its address. Returns the address it had.
    pub async fn detach(&self, container: &ContainerRef) -> Result<Ipv4Addr> {
        let key = container.key();
        let mut book = self.allocations.lock().await;
        let Some(addr) = book.address_of(&key) else {
            bail!("{} is not attached", describe(container));
        };
        self.netlink.detach_veth(&container.host_ifname()).await?;
        book.release(&key);
        book.save(&self.store)
            .context("saving container addresses")?;
        Ok(addr)
    }
}

fn describe(container: &ContainerRef) -> String {
    match container {
        ContainerRef::Netns(name) => format!("netns {name}"),
        ContainerRef::Path(path) => path.display().to_string(),
        ContainerRef::Pid(pid) => format!("pid {pid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_references_parse() {
        assert_eq!(
            ContainerRef::parse("c1").ok(),
            Some(ContainerRef::Netns("c1".into()))
        );
        assert_eq!(
            ContainerRef::parse("4242").ok(),
            Some(ContainerRef::Pid(4242))
        );
        assert_eq!(
            ContainerRef::parse("/proc/1/ns/net").ok(),
            Some(ContainerRef::Path("/proc/1/ns/net".into()))
        );
        assert!(ContainerRef::parse("").is_err());
        assert!(ContainerRef::parse("a/b").is_err());
        assert!(ContainerRef::parse("..").is_err());
        assert_eq!(
            ContainerRef::Pid(7).netns_path(),
            PathBuf::from("/proc/7/ns/net")
        );
        assert_eq!(
            ContainerRef::Netns("c1".into()).netns_path(),
            PathBuf::from("/run/netns/c1")
        );
    }

    #[test]
    fn host_interface_names_are_stable_short_and_distinct() {
        let a = ContainerRef::Netns("c1".into()).host_ifname();
        assert_eq!(a, ContainerRef::Netns("c1".into()).host_ifname());
        assert_ne!(a, ContainerRef::Netns("c2".into()).host_ifname());
        assert!(
            a.len() <= 13,
            "{a}: leaves room for the temporary peer suffix"
        );
    }

    #[test]
    fn requested_addresses_must_fit_the_subnet() {
        let subnet: Ipv4Network = "10.5.34.0/24".parse().expect("cidr");
        assert_eq!(
            parse_requested("10.5.34.9/24", &subnet).ok(),
            Some(Ipv4Addr::new(10, 5, 34, 9))
        );
        assert_eq!(
            parse_requested("10.5.34.9", &subnet).ok(),
            Some(Ipv4Addr::new(10, 5, 34, 9))
        );
        assert!(parse_requested("10.5.35.9/24", &subnet).is_err());
        assert!(parse_requested("10.5.34.9/16", &subnet).is_err());
        assert!(parse_requested("banana", &subnet).is_err());
    }
}
