//! The client side of the binary: commands that talk to the agent, their
//! output, and the argv translation of the flanneld drop-in.

pub mod attach;
pub mod columns;
pub mod containers;
pub mod detach_keys;
pub mod flanneld;
pub mod limits;
pub mod network;
pub mod ports;
pub mod progress;
pub mod refusal;
pub mod segment;
pub mod status;
pub mod stdout;
pub mod volume;
