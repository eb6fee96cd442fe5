//! The seam between networks and the ways a namespace is plugged into one:
//! a veth onto a Linux bridge today; macvlan, an Open vSwitch port and the
//! flat L2 segment are more modules of `drivers/` behind the same trait.
//!
//! A driver is told exactly what to make (`AttachmentSpec`), checks it
//! before anything exists (`validate`), makes it (`setup`) and says what it
//! made (`AttachStatus`), which is what gets recorded, so that a restart or
//! a detach removes exactly that (`teardown`, which tries every step).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;
use ipnetwork::Ipv4Network;

use crate::teardown::Teardown;

/// One interface to make in a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentSpec {
    /// The network namespace file.
    pub netns: PathBuf,
    /// The interface's name inside the namespace (`eth0`).
    pub ifname: String,
    /// The host's end, for drivers that have one (a veth's).
    pub host_ifname: String,
    /// The address with its network's prefix.
    pub address: Ipv4Network,
    /// The default route's next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
}

/// What a driver made, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachStatus {
    /// The driver that made it (`AttachmentDriver::kind`).
    pub driver: &'static str,
    pub ifname: String,
    /// The host's end, when there is one.
    pub host_ifname: Option<String>,
    /// None when rebuilt from a record that had none.
    pub address: Option<Ipv4Network>,
}

/// One way to put an interface into a network namespace.
#[async_trait::async_trait]
pub trait AttachmentDriver: Send + Sync {
    /// The driver's name, as networks and records name it.
    fn kind(&self) -> &'static str;

    /// Refuses what cannot be made, before anything is.
    fn validate(&self, spec: &AttachmentSpec) -> Result<()> {
        tartan_dataplane::check_ifname(&spec.ifname)?;
        tartan_dataplane::check_ifname(&spec.host_ifname)?;
        Ok(())
    }

    /// Makes the interface; nothing stays half-made when it fails.
    async fn setup(&self, spec: &AttachmentSpec) -> Result<AttachStatus>;

    /// Removes what `setup` made, trying every step.
    async fn teardown(&self, status: &AttachStatus) -> Result<(), Teardown>;
}
