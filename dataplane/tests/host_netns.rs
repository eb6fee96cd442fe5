//! Host discovery against a real kernel, inside a namespace of the test's own.

use std::net::Ipv4Addr;

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

#[tokio::test(flavor = "multi_thread")]
async fn discovers_the_public_interface_inside_a_namespace() -> Result<()> {
    let ns = host_namespace()?;
    let netlink = Netlink::connect_in_netns(&ns.path())
        .await
        .context("connect in netns")?;

    let default = netlink
        .default_route_interface()
        .await?
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

    let by_name = netlink.interface_by_name("alt0").await?.context("alt0")?;
    assert_eq!(by_name.ipv4, Some(Ipv4Addr::new(10, 231, 1, 2)));
    let by_addr = netlink
        .interface_by_address(Ipv4Addr::new(10, 231, 1, 2))
        .await?
        .context("by address")?;
    assert_eq!(by_addr.name, "alt0");
    assert_eq!(
        netlink.public_interface(None).await?.name,
        "up0",
        "no selector: the default route's interface"
    );
    let selected = netlink
        .public_interface(Some(&"10.231.1.2".parse::<InterfaceSelector>()?))
        .await?;
    assert_eq!(selected.name, "alt0");

    let missing = netlink
        .find_interface(&InterfaceSelector::Name("nope0".into()))
        .await
        .expect_err("missing name");
    assert_eq!(missing.to_string(), "no interface named nope0");
    let missing = netlink
        .find_interface(&InterfaceSelector::Address(Ipv4Addr::new(10, 231, 9, 9)))
        .await
        .expect_err("missing address");
    assert_eq!(
        missing.to_string(),
        "no interface carries address 10.231.9.9"
    );
    let bare = netlink
        .find_interface(&InterfaceSelector::Name("up0p".into()))
        .await
        .expect_err("no address");
    assert!(
        matches!(bare, DataplaneError::NoIpv4(ref name) if name == "up0p"),
        "{bare}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handle_sees_only_its_own_namespace() -> Result<()> {
    let ns = Netns::create("dpiso")?;
    let netlink = Netlink::connect_in_netns(&ns.path()).await?;
    // A fresh namespace has a loopback and nothing else: no default route.
    assert_eq!(netlink.default_route_interface().await?, None);
    let err = netlink
        .public_interface(None)
        .await
        .expect_err("no default route");
    assert!(matches!(err, DataplaneError::NoDefaultRoute), "{err}");
    // Interfaces of the test's own namespace are invisible from there.
    let own_names: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| name != "lo")
        .collect();
    for name in &own_names {
        assert_eq!(
            netlink.interface_by_name(name).await?,
            None,
            "{name} leaked into the namespace"
        );
    }
    assert!(netlink.interface_by_name("lo").await?.is_some());
    // A missing namespace is a clear error, not a panic.
    let err = Netlink::connect_in_netns(std::path::Path::new("/run/netns/tt-does-not-exist"))
        .await
        .err()
        .context("a missing namespace must fail")?;
    assert!(err.to_string().contains("tt-does-not-exist"), "{err}");
    Ok(())
}
