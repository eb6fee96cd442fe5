//! A macvlan on a host interface (the parent), made inside the namespace;
//! on a VLAN it sits on `PARENT.VLAN`, made with its first user and removed
//! with its last. A host shim, when asked for, gives the host a route to
//! the container, which a macvlan's parent never has.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tartan_dataplane::{HostShimSpec, MacvlanMode, MacvlanSpec, Netlink};

use crate::networks::driver::{AttachStatus, AttachmentDriver, AttachmentSpec, Registration};
use crate::teardown::Teardown;

pub const REGISTRATION: Registration = Registration {
    name: "macvlan",
    options: &["parent", "macvlan_mode", "vlan"],
    named_networks: true,
    network_device: None,
    make: |context| {
        Arc::new(MacvlanDriver::new(
            context.netlink.clone(),
            context.host_interface.to_string(),
            context.macvlan_mode,
        ))
    },
};

pub struct MacvlanDriver {
    netlink: Netlink,
    parent: String,
    mode: MacvlanMode,
    /// The users of each VLAN device made on the parent, by VLAN: the
    /// macvlans on it are in containers' namespaces, out of sight.
    vlan_users: Mutex<BTreeMap<u16, BTreeSet<String>>>,
}

/// The host shim of a parent: one per parent, named after it so that every
/// attachment on the parent finds the same one.
pub fn host_shim_name(parent: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = parent.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("tshim{:08x}", hash & 0xffff_ffff)
}

/// Which of a VLAN device's users an attachment is: by who it is for and
/// its container side, which stay the same when its namespace has gone
/// (two `0/0` attachments have no address to tell them apart).
fn user_of(owner: &str, ifname: &str) -> String {
    format!("{owner}#{ifname}")
}

impl MacvlanDriver {
    pub fn new(netlink: Netlink, parent: String, mode: MacvlanMode) -> MacvlanDriver {
        MacvlanDriver {
            netlink,
            parent,
            mode,
            vlan_users: Mutex::default(),
        }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, BTreeMap<u16, BTreeSet<String>>> {
        self.vlan_users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets a user of `vlan`'s device; true when it was the last one.
    fn drop_user(&self, vlan: u16, user: &str) -> bool {
        let mut users = self.users();
        let Some(set) = users.get_mut(&vlan) else {
            return true;
        };
        set.remove(user);
        if set.is_empty() {
            users.remove(&vlan);
            return true;
        }
        false
    }

    async fn make(&self, spec: &AttachmentSpec, parent: &str) -> Result<Option<String>> {
        let macvlan = MacvlanSpec {
            netns: spec.netns.clone(),
            parent: parent.to_string(),
            name: spec.ifname.clone(),
            mode: self.mode,
            mac: spec.mac,
            address: spec.address,
            gateway: spec.gateway,
        };
        let made = self.netlink.ensure_macvlan(&macvlan).await?;
        let (true, Some(address)) = (spec.host_shim, spec.address) else {
            return Ok(None);
        };
        let shim = HostShimSpec {
            parent: parent.to_string(),
            name: host_shim_name(parent),
            container: address.ip(),
        };
        if let Err(err) = self.netlink.ensure_host_shim(&shim).await {
            let err =
                anyhow::Error::from(err).context(format!("giving the host a shim on {parent}"));
            if made == tartan_dataplane::Ensured::Created {
                if let Err(undo) = Netlink::remove_macvlan(&spec.netns, &spec.ifname).await {
                    return Err(crate::teardown::and_undo(err, undo));
                }
            }
            return Err(err);
        }
        Ok(Some(shim.name))
    }
}

#[async_trait::async_trait]
impl AttachmentDriver for MacvlanDriver {
    fn kind(&self) -> &'static str {
        "macvlan"
    }

    fn has_host_end(&self) -> bool {
        false
    }

    /// A macvlan has no host end: only the container side's name counts.
    fn validate(&self, spec: &AttachmentSpec) -> Result<()> {
        tartan_dataplane::check_ifname(&spec.ifname)?;
        tartan_dataplane::check_ifname(&self.parent)?;
        if let Some(vlan) = spec.vlan {
            tartan_dataplane::vlan_ifname(&self.parent, vlan)?;
        }
        crate::networks::driver::check_gateway(spec)
    }

    async fn setup(&self, spec: &AttachmentSpec) -> Result<AttachStatus> {
        self.validate(spec)?;
        let user = user_of(&spec.owner, &spec.ifname);
        let parent = match spec.vlan {
            None => self.parent.clone(),
            Some(vlan) => {
                // Refused in one line where the kernel has no 802.1Q.
                self.netlink.ensure_vlan(&self.parent, vlan).await?;
                self.users().entry(vlan).or_default().insert(user.clone());
                tartan_dataplane::vlan_ifname(&self.parent, vlan)?
            }
        };
        match self.make(spec, &parent).await {
            Ok(host_shim) => Ok(AttachStatus {
                driver: self.kind(),
                ifname: spec.ifname.clone(),
                host_ifname: None,
                address: spec.address,
                netns: spec.netns.clone(),
                vlan: spec.vlan,
                host_shim,
                owner: spec.owner.clone(),
            }),
            Err(err) => {
                if let Some(vlan) = spec.vlan {
                    if self.drop_user(vlan, &user) {
                        if let Err(undo) = self.netlink.remove_vlan(&self.parent, vlan).await {
                            return Err(crate::teardown::and_undo(err, undo));
                        }
                    }
                }
                Err(err)
            }
        }
    }

    async fn teardown(&self, status: &AttachStatus) -> Result<(), Teardown> {
        let mut teardown = Teardown::new();
        // A namespace that is gone took its macvlan with it.
        if status.netns.exists() {
            teardown.step(
                &format!("removing {} in {}", status.ifname, status.netns.display()),
                Netlink::remove_macvlan(&status.netns, &status.ifname).await,
            );
        }
        let parent = match status.vlan {
            Some(vlan) => tartan_dataplane::vlan_ifname(&self.parent, vlan).ok(),
            None => Some(self.parent.clone()),
        };
        if let (Some(name), Some(address), Some(parent)) =
            (&status.host_shim, status.address, parent)
        {
            let shim = HostShimSpec {
                parent,
                name: name.clone(),
                container: address.ip(),
            };
            teardown.step(
                &format!("removing the host shim route to {}", address.ip()),
                self.netlink.remove_host_shim(&shim).await,
            );
        }
        if let Some(vlan) = status.vlan {
            if self.drop_user(vlan, &user_of(&status.owner, &status.ifname)) {
                teardown.step(
                    &format!("removing {}.{vlan}", self.parent),
                    self.netlink
                        .remove_vlan(&self.parent, vlan)
                        .await
                        .context("the VLAN device"),
                );
            }
        }
        if teardown.is_empty() {
            Ok(())
        } else {
            Err(teardown)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_vlan_device_goes_with_its_last_user_only() {
        // A netlink socket touches nothing until asked.
        let netlink = Netlink::connect().expect("a netlink socket");
        let driver = MacvlanDriver::new(netlink, "eth0".into(), MacvlanMode::Bridge);
        // Both without an address (pipework's 0/0), on the same side name.
        let a = user_of("netns:c1", "eth1");
        let b = user_of("netns:c2", "eth1");
        for user in [&a, &b] {
            driver.users().entry(100).or_default().insert(user.clone());
        }
        assert!(!driver.drop_user(100, &a), "b still uses it");
        assert!(driver.drop_user(100, &b), "b was the last");
        assert!(
            driver.drop_user(200, &a),
            "nobody recorded: nothing keeps it"
        );
        assert_ne!(host_shim_name("eth0"), host_shim_name("eth1"));
        assert!(tartan_dataplane::check_ifname(&host_shim_name("eth0")).is_ok());
    }
}
