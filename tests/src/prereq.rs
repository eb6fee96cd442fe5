//! Prerequisites the tests check first, failing with one clear line: a test
//! that cannot run must say so, not pass by skipping.

use std::os::unix::fs::PermissionsExt;

use anyhow::{bail, Result};

/// Network namespaces, veth pairs and the agent's devices all need root.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this test needs root (it creates network namespaces); run the suite as root");
    }
    Ok(())
}

/// An executable `name` somewhere on PATH.
pub fn require_binary(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|dir| {
                std::fs::metadata(dir.join(name))
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
        })
        .unwrap_or(false);
    if !found {
        bail!("this test needs `{name}` on PATH (Debian: scripts/test.sh installs the packages)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_fails_with_one_line() {
        let err = require_binary("tartan-no-such-program").expect_err("not installed");
        let text = err.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("tartan-no-such-program"), "{text}");
        require_binary("sh").expect("sh is everywhere");
    }
}
