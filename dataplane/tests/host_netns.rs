//! Host discovery against a real kernel, inside a namespace of the test's own.

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use tartan_dataplane::{DataplaneError, InterfaceSelector, Netlink};
use tartan_tests::netns::{ip, Netns};

/// A namespace with a veth pair `up0`/`up0p`, 10.231.0.2/24 on `up0`, MTU
/// 1400 and a default route via 10.231.0.1, plus a second link carrying a
/// more preferred default route's rival with a worse metric.
fn host_namespace() -> Result<Netns> {
    let ns = Netns::create("dp")?;
    let n = ns.name();
    ip(&[
        "-n", n, "link", "add", "up0", "mtu", "1400", "type", "veth", "peer", "name", "up0p",
        "mtu", "1400",
    ])?;
    ip(&[
        "-n", n, "link", "add", "alt0", "type", "veth", "peer", "name", "alt0p",
    ])?;
    for link in ["up0", "up0p", "alt0", "alt0p"] {
        ip(&["-n", n, "link", "set", link, "up"])?;
    }
    ip(&["-n", n, "addr", "add", "10.231.0.2/24", "dev", "up0"])?;
    ip(&["-n", n, "addr", "add", "10.231.1.2/24", "dev", "alt0"])?;
    for (via, metric) in [("10.231.0.1", "100"), ("10.231.1.1", "900")] {
        ip(&[
            "-n", n, "route", "add", "default", "via", via, "metric", metric,
        ])?;
    }
    Ok(ns)
}

/// How long any one netlink exchange may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .with_context(|| format!("{what} took longer than {DEADLINE:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn discovers_the_public_interface_inside_a_namespace() -> Result<()> {
    let ns = host_namespace()?;
    let netlink = within("connect", Netlink::connect_in_netns(&ns.path()))
        .await?
        .context("connect in netns")?;

    let default = within("default route", netlink.default_route_interface())
        .await??
        .context("a default route")?;
    assert_eq!(default.name, "up0", "the lower metric wins");
    assert_eq!(default.ipv4, Some(Ipv4Addr::new(10, 231, 0, 2)));
    assert_eq!(default.prefix_len, 24);
    assert_eq!(default.mtu, 1400);
    let shown = ns.exec("ip", &["-o", "link", "show", "up0"])?;
    let index: u32 = String::from_utf8_lossy(&shown.stdout)
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .context("ifindex from ip link show")?;
    assert_eq!(default.index, index);

    // up0 exists only in the namespace: a handle on the test's own namespace
    // (only read from) must not see it, so the one above really is elsewhere.
    assert!(
        !std::path::Path::new("/sys/class/net/up0").exists(),
        "up0 must not exist in the test's own namespace"
    );
    let own = Netlink::connect()?;
    assert_eq!(
        within("own namespace lookup", own.interface_by_name("up0")).await??,
        None,
        "the namespace's up0 leaked into the test's own namespace"
    );

    let by_name = within("by name", netlink.interface_by_name("alt0"))
        .await??
        .context("alt0")?;
    assert_eq!(by_name.ipv4, Some(Ipv4Addr::new(10, 231, 1, 2)));
    let by_addr = within(
        "by address",
        netlink.interface_by_address(Ipv4Addr::new(10, 231, 1, 2)),
    )
    .await??
    .context("by address")?;
    assert_eq!(by_addr.name, "alt0");
    assert_eq!(
        within("public, no selector", netlink.public_interface(None))
            .await??
            .name,
        "up0",
        "no selector: the default route's interface"
    );
    let selector = "10.231.1.2".parse::<InterfaceSelector>()?;
    let selected = within(
        "public by address",
        netlink.public_interface(Some(&selector)),
    )
    .await??;
    assert_eq!(selected.name, "alt0");
    let selector = "up0".parse::<InterfaceSelector>()?;
    let selected = within("find by name", netlink.find_interface(&selector)).await??;
    assert_eq!(selected, default);

    let missing = within(
        "missing name",
        netlink.find_interface(&InterfaceSelector::Name("nope0".into())),
    )
    .await?
    .expect_err("missing name");
    assert_eq!(missing.to_string(), "no interface named nope0");
    let missing = within(
        "missing address",
        netlink.find_interface(&InterfaceSelector::Address(Ipv4Addr::new(10, 231, 9, 9))),
    )
    .await?
    .expect_err("missing address");
    assert_eq!(
        missing.to_string(),
        "no interface carries address 10.231.9.9"
    );
    let bare = within(
        "no address",
        netlink.find_interface(&InterfaceSelector::Name("up0p".into())),
    )
    .await?
    .expect_err("no address");
    assert!(
        matches!(bare, DataplaneError::NoIpv4(ref name) if name == "up0p"),
        "{bare}"
    );
    assert_eq!(bare.to_string(), "interface up0p has no IPv4 address");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handle_sees_only_its_own_namespace() -> Result<()> {
    let ns = Netns::create("dpiso")?;
    let netlink = within("connect", Netlink::connect_in_netns(&ns.path())).await??;
    // A fresh namespace has a loopback and nothing else: no default route.
    assert_eq!(
        within("default route", netlink.default_route_interface()).await??,
        None
    );
    let err = within("public interface", netlink.public_interface(None))
        .await?
        .expect_err("no default route");
    assert!(matches!(err, DataplaneError::NoDefaultRoute), "{err}");
    assert_eq!(
        err.to_string(),
        "no default route; pass --iface or --public-ip"
    );
    // Interfaces of the test's own namespace, its default route's among them,
    // are invisible from there.
    let mut own_names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name != "lo")
        .collect();
    let own = Netlink::connect()?;
    if let Some(default) = within("own default route", own.default_route_interface()).await?? {
        own_names.push(default.name);
    }
    for name in &own_names {
        assert_eq!(
            within("by name", netlink.interface_by_name(name)).await??,
            None,
            "{name} leaked into the namespace"
        );
    }
    assert!(within("lo", netlink.interface_by_name("lo"))
        .await??
        .is_some());
    // A missing namespace is a clear error, not a panic.
    let err = within(
        "missing namespace",
        Netlink::connect_in_netns(std::path::Path::new("/run/netns/tt-does-not-exist")),
    )
    .await?
    .err()
    .context("a missing namespace must fail")?;
    assert!(err.to_string().contains("tt-does-not-exist"), "{err}");
    Ok(())
}
