//! Prerequisites the tests check first, failing with one clear line.

use anyhow::{bail, Result};

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this test needs root (it creates network namespaces); run the suite as root");
    }
    Ok(())
}

pub fn require_binary(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("this test needs `{name}` on PATH (Debian: see .ci/run for the packages)");
    }
    Ok(())
}
