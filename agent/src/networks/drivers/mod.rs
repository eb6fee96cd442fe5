//! The attachment drivers, one module each; `driver.rs` has their trait.
//! Adding one is a module here with its `REGISTRATION`, and a line in
//! `DRIVERS`.

use anyhow::{anyhow, Result};

use crate::networks::driver::Registration;

pub mod bridge;
pub mod l2_segment;
pub mod macvlan;
pub mod ovs;

/// Every attachment driver Tartan has.
pub const DRIVERS: &[Registration] = &[
    bridge::REGISTRATION,
    macvlan::REGISTRATION,
    ovs::REGISTRATION,
    l2_segment::REGISTRATION,
];

/// The driver registered as `name`, whatever may use it.
pub fn registration(name: &str) -> Result<&'static Registration> {
    DRIVERS
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| unknown(name))
}

/// The driver a named network may have, or why not.
pub fn for_named_network(name: &str) -> Result<&'static Registration> {
    registration(name)
        .ok()
        .filter(|r| r.named_networks)
        .ok_or_else(|| unknown(name))
}

/// Names the drivers an operator can choose.
fn unknown(name: &str) -> anyhow::Error {
    anyhow!("unknown driver {name:?}: use {}", named_network_drivers())
}

/// "bridge, macvlan or ovs".
fn named_network_drivers() -> String {
    let names: Vec<&str> = DRIVERS
        .iter()
        .filter(|r| r.named_networks)
        .map(|r| r.name)
        .collect();
    match names.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tartan_dataplane::{MacvlanMode, Netlink};

    use super::*;
    use crate::networks::driver::DriverContext;
    use crate::networks::ovsdb::OvsdbHandle;

    #[tokio::test]
    async fn each_name_is_registered_once_and_makes_its_driver() {
        // A netlink socket and an OVSDB handle touch nothing until asked.
        let netlink = Netlink::connect().expect("a netlink socket");
        let ovsdb = Arc::new(OvsdbHandle::new("unix:/nonexistent".into()));
        let context = DriverContext {
            netlink: &netlink,
            ovsdb: &ovsdb,
            host_interface: "br0",
            macvlan_mode: MacvlanMode::Bridge,
        };
        for (i, r) in DRIVERS.iter().enumerate() {
            assert!(
                !DRIVERS[..i].iter().any(|other| other.name == r.name),
                "{} is registered twice",
                r.name
            );
            assert_eq!((r.make)(&context).kind(), r.name);
            assert!(registration(r.name).is_ok_and(|found| found.options == r.options));
        }
    }

    #[test]
    fn an_unknown_driver_is_refused_with_the_registered_ones() {
        let err = for_named_network("vlan").err().expect("refused");
        assert_eq!(
            err.to_string(),
            "unknown driver \"vlan\": use bridge, macvlan or ovs"
        );
        // Registered, but not for named networks: the daemon does not keep
        // the segment for them yet.
        assert!(for_named_network("l2segment").is_err());
        for name in ["bridge", "macvlan", "ovs"] {
            assert_eq!(for_named_network(name).expect(name).name, name);
        }
    }
}
