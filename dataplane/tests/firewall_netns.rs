//! The agent's nftables table against the kernel's nf_tables, inside a namespace.

use std::os::fd::AsRawFd;

use anyhow::{ensure, Context, Result};
use tartan_dataplane::{ensure_firewall, forward_drop_policies, remove_firewall, FirewallSpec};
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
    let spec = FirewallSpec {
        table: "tartan".into(),
        network: "10.5.0.0/16".parse()?,
        masquerade: true,
        forward_accept: false,
    };
    let s = spec.clone();
    assert!(
        in_netns(&ns, move || ensure_firewall(&s))??,
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
        !in_netns(&ns, move || ensure_firewall(&s))??,
        "second pass changes nothing"
    );

    // Deleted by hand, or altered: rebuilt.
    ensure!(ns
        .exec("nft", &["delete", "table", "ip", "tartan"])?
        .status
        .success());
    let s = spec.clone();
    assert!(in_netns(&ns, move || ensure_firewall(&s))??);
    ensure!(ns
        .exec(
            "nft",
            &["add", "rule", "ip", "tartan", "postrouting", "accept"]
        )?
        .status
        .success());
    let s = spec.clone();
    assert!(
        in_netns(&ns, move || ensure_firewall(&s))??,
        "a foreign rule forces a rebuild"
    );
    let text = listing(&ns)?;
    ensure!(!text.lines().any(|l| l.trim() == "accept"), "{text}");

    // A new network replaces the rule.
    let wider = FirewallSpec {
        network: "10.0.0.0/8".parse()?,
        ..spec.clone()
    };
    assert!(in_netns(&ns, move || ensure_firewall(&wider))??);
    ensure!(listing(&ns)?.contains("ip saddr 10.0.0.0/8"));

    in_netns(&ns, || remove_firewall("tartan"))?.context("remove")?;
    ensure!(listing(&ns)?.is_empty(), "the table is gone");
    in_netns(&ns, || remove_firewall("tartan"))?.context("removing twice is fine")?;
    Ok(())
}

#[test]
fn forward_accepts_sit_beside_masquerading_and_foreign_drop_policies_are_found() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("nft")?;
    let ns = Netns::create("fwd")?;
    let spec = FirewallSpec {
        table: "tartan".into(),
        network: "10.5.0.0/16".parse()?,
        masquerade: false,
        forward_accept: true,
    };
    let s = spec.clone();
    assert!(in_netns(&ns, move || ensure_firewall(&s))??);
    let text = listing(&ns)?;
    ensure!(
        text.contains("type filter hook forward priority filter; policy accept;")
            && text.contains("ip saddr 10.5.0.0/16 accept")
            && text.contains("ip daddr 10.5.0.0/16 accept")
            && !text.contains("masquerade"),
        "{text}"
    );
    let s = spec.clone();
    assert!(!in_netns(&ns, move || ensure_firewall(&s))??, "in line");
    // Both at once.
    let both = FirewallSpec {
        masquerade: true,
        ..spec.clone()
    };
    let b = both.clone();
    assert!(in_netns(&ns, move || ensure_firewall(&b))??);
    let text = listing(&ns)?;
    ensure!(
        text.contains("masquerade") && text.contains("ip daddr 10.5.0.0/16 accept"),
        "{text}"
    );
    let b = both.clone();
    assert!(!in_netns(&ns, move || ensure_firewall(&b))??, "in line");

    // Nothing foreign yet; then a Docker-like drop policy in another table.
    ensure!(in_netns(&ns, || forward_drop_policies("tartan"))??.is_empty());
    for args in [
        &["add", "table", "ip", "filter"][..],
        &[
            "add", "chain", "ip", "filter", "FORWARD", "{", "type", "filter", "hook", "forward",
            "priority", "0", ";", "policy", "drop", ";", "}",
        ],
        &["add", "table", "inet", "other"],
        &[
            "add", "chain", "inet", "other", "pass", "{", "type", "filter", "hook", "forward",
            "priority", "10", ";", "policy", "accept", ";", "}",
        ],
    ] {
        let out = ns.exec("nft", args)?;
        ensure!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        in_netns(&ns, || forward_drop_policies("tartan"))??,
        vec!["ip filter FORWARD".to_string()]
    );

    // Nothing asked for: the table goes.
    let none = FirewallSpec {
        masquerade: false,
        forward_accept: false,
        ..spec
    };
    assert!(in_netns(&ns, move || ensure_firewall(&none))??);
    ensure!(listing(&ns)?.is_empty(), "the table is gone");
    Ok(())
}
