//! Tartan's bundled minimal container runtime. Today: the image store
//! (root filesystem tarballs imported into content-addressed layers that
//! containers will share, never copy).

mod error;
pub mod image;

pub use error::{Result, RuntimeError};
pub use image::{Image, ImageStore, Reference};
