//! The masquerade table against the kernel's nf_tables, inside a namespace.

use std::os::fd::AsRawFd;

use anyhow::{ensure, Context, Result};
use tartan_dataplane::{ensure_masquerade, remove_masquerade, MasqueradeSpec};
use tartan_tests::netns::Netns;
use tartan_tests::prereq;

/// Runs `f` on a fresh thread that has entered `ns`, as the agent does: it
/// lives in its namespace for good, and no other thread is moved.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = std::fs::File::open(ns.path())?;
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace descriptor; affects this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "setns: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

fn listing(ns: &Netns) -> Result<String> {
    let out = ns.exec("nft", &["list", "table", "ip", "tartan"])?;
    Ok(if out.status.success() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        String::new()
    })
}

#[test]
fn masquerading_is_installed_repaired_and_removed() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("nft")?;
    let ns = Netns::create("nft")?;
    let spec = MasqueradeSpec {
        table: "tartan".into(),
        network: "10.5.0.0/16".parse()?,
    };
    let s = spec.clone();
    assert!(
        in_netns(&ns, move || ensure_masquerade(&s))??,
        "first pass builds the table"
    );
    let text = listing(&ns)?;
    ensure!(
        text.contains("type nat hook postrouting priority srcnat")
            && text.contains("ip saddr 10.5.0.0/16 ip daddr != 10.5.0.0/16 masquerade"),
        "{text}"
    );
    let s = spec.clone();
    assert!(
        !in_netns(&ns, move || ensure_masquerade(&s))??,
        "second pass changes nothing"
    );

    // Deleted by hand, or altered: rebuilt.
    ensure!(ns
        .exec("nft", &["delete", "table", "ip", "tartan"])?
        .status
        .success());
    let s = spec.clone();
    assert!(in_netns(&ns, move || ensure_masquerade(&s))??);
    ensure!(ns
        .exec(
            "nft",
            &["add", "rule", "ip", "tartan", "postrouting", "accept"]
        )?
        .status
        .success());
    let s = spec.clone();
    assert!(
        in_netns(&ns, move || ensure_masquerade(&s))??,
        "a foreign rule forces a rebuild"
    );
    let text = listing(&ns)?;
    ensure!(!text.lines().any(|l| l.trim() == "accept"), "{text}");

    // A new network replaces the rule.
    let wider = MasqueradeSpec {
        table: "tartan".into(),
        network: "10.0.0.0/8".parse()?,
    };
    assert!(in_netns(&ns, move || ensure_masquerade(&wider))??);
    ensure!(listing(&ns)?.contains("ip saddr 10.0.0.0/8"));

    in_netns(&ns, || remove_masquerade("tartan"))?.context("remove")?;
    ensure!(listing(&ns)?.is_empty(), "the table is gone");
    in_netns(&ns, || remove_masquerade("tartan"))?.context("removing twice is fine")?;
    Ok(())
}
