//! Tartan's bundled minimal container runtime: the image store (root
//! filesystem tarballs imported into content-addressed layers that
//! containers share, never copy); the container's init (its root
//! filesystem, overlay, kernel filesystems and pivot_root, and the step
//! down to Docker's default privileges: capabilities, seccomp, masked and
//! read-only kernel paths) behind a syscall seam; and each
//! container's supervisor, log, attach protocol, exec and export, with
//! signals to its process sent by pidfd.

pub mod capabilities;
pub mod cgroups;
pub mod container;
pub mod devices;
mod error;
pub mod image;
pub mod init;
pub mod process;
pub mod pty;
pub mod rootfs;
pub mod seccomp;
mod seccomp_x86_64;
pub mod security;
pub mod syscall;
pub mod user;
pub mod volumes;

pub use error::{Result, RuntimeError};
pub use image::{Image, ImageStore, Reference};
