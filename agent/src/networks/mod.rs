//! Networks and attachments: how a network namespace gets an interface and
//! an address.

pub mod attach;
pub mod driver;
pub mod drivers;
pub mod lifecycle;
pub mod named;
pub mod ovsdb;
pub mod pipework;
pub mod store;
