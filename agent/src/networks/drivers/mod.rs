//! The attachment drivers, one module each; `driver.rs` has their trait.

pub mod bridge;
pub mod l2_segment;
pub mod macvlan;
pub mod ovs;
