//! Macvlan attachments, the host shim and the VLAN refusals against a real
//! kernel, inside namespaces of the test's own: a "host" namespace whose veth
//! `hv0` is the parent, and "container" namespaces that get macvlans on it.

use std::future::Future;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use tartan_dataplane::{
    parse_mac, pipework_mac, DataplaneError, Ensured, HostShimSpec, MacvlanMode, MacvlanSpec,
    Netlink,
};
use tartan_tests::netns::{ip, Netns};

/// How long any one netlink exchange may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .with_context(|| format!("{what} took longer than {DEADLINE:?}"))
}

fn ns_output(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    let out = ns.exec(program, args)?;
    ensure!(
        out.status.success(),
        "{program} {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The links of a namespace, one line each, without counters that move.
fn links(ns: &Netns) -> Result<Vec<String>> {
    let out = ns_output(ns, "ip", &["-o", "-d", "link", "show"])?;
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| l.split(" promiscuity").next().unwrap_or(l).to_string())
        .collect();
    lines.sort();
    Ok(lines)
}

fn pings(ns: &Netns, to: &str) -> Result<bool> {
    Ok(ns
        .exec("ping", &["-c", "1", "-W", "1", to])?
        .status
        .success())
}

/// A host namespace whose parent `hv0` (MTU 1400, 10.236.0.2/24) is one end
/// of a veth pair; the other end `hv0p` stands for the wire.
fn host() -> Result<Netns> {
    let ns = Netns::create("mvh")?;
    let n = ns.name();
    ip(&[
        "-n", n, "link", "add", "hv0", "mtu", "1400", "type", "veth", "peer", "name", "hv0p",
        "mtu", "1400",
    ])?;
    ip(&["-n", n, "link", "set", "hv0", "up"])?;
    ip(&["-n", n, "link", "set", "hv0p", "up"])?;
    ip(&["-n", n, "addr", "add", "10.236.0.2/24", "dev", "hv0"])?;
    Ok(ns)
}

fn spec(container: &Netns, address: &str, gateway: Option<&str>) -> Result<MacvlanSpec> {
    Ok(MacvlanSpec {
        netns: container.path(),
        parent: "hv0".into(),
        name: "eth1".into(),
        mode: MacvlanMode::Bridge,
        mac: None,
        address: Some(address.parse()?),
        gateway: gateway.map(str::parse).transpose()?,
    })
}

/// Listens for ARP on `ifname` of `ns` on its own thread until a
/// gratuitous one for `address` (sender and target both `address`) shows or
/// the deadline passes. Returns once the socket listens.
fn watch_for_gratuitous_arp(
    ns: &Netns,
    ifname: &str,
    address: Ipv4Addr,
) -> Result<std::thread::JoinHandle<Result<bool>>> {
    let name = ns.name().to_string();
    let ifname = ifname.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || -> Result<bool> {
        tartan_tests::netns::in_netns(&name, move || -> Result<bool> {
            let ready = || ready_tx.send(());
            let protocol = (libc::ETH_P_ARP as u16).to_be();
            // SAFETY: plain socket call; the descriptor is owned right after.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol.into()) };
            ensure!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fd is a fresh descriptor nobody else owns.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            let cname = std::ffi::CString::new(ifname.clone())?;
            // SAFETY: a valid NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            ensure!(index != 0, "no {ifname} in the namespace");
            // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = protocol;
            addr.sll_ifindex = index as i32;
            // SAFETY: addr is a valid sockaddr_ll of the size given.
            let rc = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            ensure!(rc == 0, "bind: {}", std::io::Error::last_os_error());
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            // SAFETY: a timeval of the size given.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &timeout as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            let _ = ready();
            let until = Instant::now() + Duration::from_secs(5);
            let mut frame = [0u8; 1600];
            while Instant::now() < until {
                // SAFETY: the buffer is valid for its length.
                let n = unsafe {
                    libc::recv(
                        socket.as_raw_fd(),
                        frame.as_mut_ptr() as *mut libc::c_void,
                        frame.len(),
                        0,
                    )
                };
                if n < 42 {
                    continue;
                }
                // Ethernet (14) then ARP: sender IP at 28..32, target IP at 38..42.
                let arp = &frame[14..42];
                let sender = Ipv4Addr::new(arp[14], arp[15], arp[16], arp[17]);
                let target = Ipv4Addr::new(arp[24], arp[25], arp[26], arp[27]);
                if sender == address && target == address {
                    return Ok(true);
                }
            }
            Ok(false)
        })?
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the ARP watcher never started")?;
    Ok(handle)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_containers_on_one_parent_reach_each_other() -> Result<()> {
    let host = host()?;
    let (c1, c2) = (Netns::create("mvc1")?, Netns::create("mvc2")?);
    let nl = within("connect", Netlink::connect_in_netns(&host.path())).await??;

    let announced = watch_for_gratuitous_arp(&host, "hv0p", Ipv4Addr::new(10, 236, 0, 11))?;
    let first = MacvlanSpec {
        mac: Some(parse_mac("U:web1")?),
        ..spec(&c1, "10.236.0.11/24", None)?
    };
    assert_eq!(
        within("c1", nl.ensure_macvlan(&first)).await??,
        Ensured::Created
    );
    let second = spec(&c2, "10.236.0.12/24", None)?;
    within("c2", nl.ensure_macvlan(&second)).await??;
    let announced = announced
        .join()
        .map_err(|_| anyhow::anyhow!("ARP watcher panicked"))??;
    ensure!(
        announced,
        "no gratuitous ARP for 10.236.0.11 reached the wire"
    );

    let shown = ns_output(&c1, "ip", &["-d", "link", "show", "eth1"])?;
    ensure!(
        shown.contains("mtu 1400") && shown.contains("macvlan mode bridge"),
        "{shown}"
    );
    // The same string gives pipework's address: 02 and md5sum's first bytes.
    let md5sum = std::process::Command::new("sh")
        .args(["-c", "echo web1 | md5sum"])
        .output()?;
    let hex = String::from_utf8_lossy(&md5sum.stdout);
    ensure!(
        md5sum.status.success() && hex.len() >= 10,
        "md5sum is needed to check U:STRING MACs: {}",
        String::from_utf8_lossy(&md5sum.stderr)
    );
    let expected = format!(
        "02:{}:{}:{}:{}:{}",
        &hex[0..2],
        &hex[2..4],
        &hex[4..6],
        &hex[6..8],
        &hex[8..10]
    );
    ensure!(shown.contains(&format!("link/ether {expected}")), "{shown}");
    assert_eq!(parse_mac(&expected)?, pipework_mac("web1"));
    let arp_notify = ns_output(&c1, "cat", &["/proc/sys/net/ipv4/conf/eth1/arp_notify"])?;
    assert_eq!(arp_notify.trim(), "1");
    // Created inside the namespace: the host never had it.
    ensure!(
        !links(&host)?.iter().any(|l| l.contains("eth1")),
        "eth1 showed up on the host"
    );

    ensure!(pings(&c1, "10.236.0.12")?, "c1 reaches c2");
    ensure!(pings(&c2, "10.236.0.11")?, "c2 reaches c1");

    // Private mode: siblings on one parent never reach each other.
    let (p1, p2) = (Netns::create("mvp1")?, Netns::create("mvp2")?);
    for (ns, address) in [(&p1, "10.236.0.21/24"), (&p2, "10.236.0.22/24")] {
        let private = MacvlanSpec {
            mode: MacvlanMode::Private,
            ..spec(ns, address, None)?
        };
        within("private", nl.ensure_macvlan(&private)).await??;
    }
    ensure!(
        !pings(&p1, "10.236.0.22")?,
        "private siblings must not meet"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_outside_the_subnet_gets_a_host_route_first() -> Result<()> {
    let host = host()?;
    let (router, inside, outside) = (
        Netns::create("mvr")?,
        Netns::create("mvin")?,
        Netns::create("mvout")?,
    );
    let nl = within("connect", Netlink::connect_in_netns(&host.path())).await??;
    within(
        "router",
        nl.ensure_macvlan(&spec(&router, "10.236.0.1/24", None)?),
    )
    .await??;
    within(
        "inside",
        nl.ensure_macvlan(&spec(&inside, "10.236.0.40/24", Some("10.236.0.1"))?),
    )
    .await??;
    within(
        "outside",
        nl.ensure_macvlan(&spec(&outside, "10.236.9.9/32", Some("10.236.0.1"))?),
    )
    .await??;

    let routes = ns_output(&inside, "ip", &["route", "show"])?;
    ensure!(
        routes.contains("default via 10.236.0.1 dev eth1"),
        "{routes}"
    );
    ensure!(
        !routes.lines().any(|l| l.starts_with("10.236.0.1 dev eth1")),
        "no host route for a gateway inside the subnet: {routes}"
    );
    let routes = ns_output(&outside, "ip", &["route", "show"])?;
    let host_route = routes
        .lines()
        .position(|l| l.starts_with("10.236.0.1 dev eth1") && l.contains("scope link"));
    ensure!(host_route.is_some(), "{routes}");
    ensure!(
        routes.contains("default via 10.236.0.1 dev eth1"),
        "{routes}"
    );

    // The router answers both; it needs a way back to the lone /32.
    ip(&[
        "-n",
        router.name(),
        "route",
        "add",
        "10.236.9.9/32",
        "dev",
        "eth1",
    ])?;
    ensure!(pings(&inside, "10.236.0.1")?, "inside reaches its gateway");
    ensure!(
        pings(&outside, "10.236.0.1")?,
        "outside reaches its gateway"
    );
    // A second attachment with a gateway takes over the default route, as
    // in pipework.
    let other = MacvlanSpec {
        name: "eth2".into(),
        ..spec(&inside, "10.236.0.41/24", Some("10.236.0.3"))?
    };
    within("eth2", nl.ensure_macvlan(&other)).await??;
    let routes = ns_output(&inside, "ip", &["route", "show", "default"])?;
    ensure!(
        routes.lines().count() == 1 && routes.starts_with("default via 10.236.0.3 dev eth2"),
        "{routes}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn asking_twice_leaves_one_interface_and_removal_takes_exactly_it() -> Result<()> {
    let host = host()?;
    let c = Netns::create("mvid")?;
    ip(&[
        "-n",
        c.name(),
        "link",
        "add",
        "keep0",
        "type",
        "veth",
        "peer",
        "name",
        "keep1",
    ])?;
    let host_before = links(&host)?;
    let container_before = links(&c)?;
    let nl = within("connect", Netlink::connect_in_netns(&host.path())).await??;
    let attach = MacvlanSpec {
        mac: Some(pipework_mac("db")),
        ..spec(&c, "10.236.0.51/24", Some("10.236.0.1"))?
    };
    assert_eq!(
        within("first", nl.ensure_macvlan(&attach)).await??,
        Ensured::Created
    );
    let once = links(&c)?;
    let routes_once = ns_output(&c, "ip", &["route", "show"])?;
    assert_eq!(
        within("second", nl.ensure_macvlan(&attach)).await??,
        Ensured::AlreadyThere
    );
    assert_eq!(links(&c)?, once, "asking again changes nothing");
    assert_eq!(ns_output(&c, "ip", &["route", "show"])?, routes_once);
    let addresses = ns_output(&c, "ip", &["-o", "-4", "addr", "show", "dev", "eth1"])?;
    assert_eq!(addresses.lines().count(), 1, "{addresses}");

    // Something else by that name is a conflict, and stays as it was.
    let other = spec(&c, "10.236.0.52/24", None)?;
    let err = within("other address", nl.ensure_macvlan(&other))
        .await?
        .expect_err("another address under the same name");
    let line = err.to_string();
    ensure!(
        line.contains("already has an interface named eth1") && line.contains("10.236.0.52/24"),
        "{line}"
    );
    let veth = MacvlanSpec {
        name: "keep0".into(),
        ..spec(&c, "10.236.0.53/24", None)?
    };
    let err = within("a veth", nl.ensure_macvlan(&veth))
        .await?
        .expect_err("a veth by that name");
    ensure!(err.to_string().ends_with("not a macvlan"), "{err}");
    assert_eq!(links(&c)?, once);

    assert!(within("remove", Netlink::remove_macvlan(&c.path(), "eth1")).await??);
    assert!(!within("remove again", Netlink::remove_macvlan(&c.path(), "eth1")).await??);
    let err = within("remove a veth", Netlink::remove_macvlan(&c.path(), "keep0"))
        .await?
        .expect_err("a veth is not removed as a macvlan");
    ensure!(err.to_string().contains("not a macvlan"), "{err}");
    assert_eq!(links(&c)?, container_before, "exactly the macvlan went");
    assert_eq!(links(&host)?, host_before, "the host is as it was");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_one_line_and_leaves_nothing() -> Result<()> {
    let host = host()?;
    let c = Netns::create("mvbad")?;
    let host_before = links(&host)?;
    let container_before = links(&c)?;
    let nl = within("connect", Netlink::connect_in_netns(&host.path())).await??;
    let good = spec(&c, "10.236.0.61/24", None)?;
    let cases: Vec<(MacvlanSpec, &str)> = vec![
        (
            MacvlanSpec {
                parent: "nope0".into(),
                ..good.clone()
            },
            "no interface named nope0",
        ),
        (
            MacvlanSpec {
                name: "a-name-too-long0".into(),
                ..good.clone()
            },
            "interface name \"a-name-too-long0\" is longer than 15 characters (16)",
        ),
        (
            MacvlanSpec {
                parent: "hv0/x".into(),
                ..good.clone()
            },
            "interface name \"hv0/x\" has a character the kernel refuses (/, :, whitespace)",
        ),
        (
            MacvlanSpec {
                mac: Some([0x01, 0, 0x5e, 0, 0, 1]),
                ..good.clone()
            },
            "bad MAC address \"01:00:5e:00:00:01\": a multicast address cannot be an interface's",
        ),
        (
            MacvlanSpec {
                gateway: Some(Ipv4Addr::new(10, 236, 0, 61)),
                ..good.clone()
            },
            "gateway 10.236.0.61 is the container's own address",
        ),
    ];
    for (bad, expected) in cases {
        let err = within("bad input", nl.ensure_macvlan(&bad))
            .await?
            .expect_err(expected);
        assert_eq!(err.to_string(), expected);
    }
    let missing = MacvlanSpec {
        netns: "/run/netns/tt-no-such-namespace".into(),
        ..good.clone()
    };
    let err = within("missing namespace", nl.ensure_macvlan(&missing))
        .await?
        .expect_err("a missing namespace");
    ensure!(
        err.to_string().contains("tt-no-such-namespace") && !err.to_string().contains('\n'),
        "{err}"
    );
    for bad in [
        "02:42:ac:11:00",
        "01:00:5e:00:00:01",
        "zz:42:ac:11:00:02",
        "U:",
    ] {
        let err = parse_mac(bad).expect_err(bad);
        ensure!(
            matches!(err, DataplaneError::Invalid(_)) && !err.to_string().contains('\n'),
            "{err}"
        );
    }
    assert_eq!(links(&host)?, host_before);
    assert_eq!(links(&c)?, container_before);
    // And the good one still works afterwards.
    within("good", nl.ensure_macvlan(&good)).await??;
    Ok(())
}

/// 802.1Q sub-interfaces and bridge VLAN filtering: refused in one line
/// where the kernel lacks them (as on the machines this runs on), made where
/// it has them; either way the outcome is checked, and a refusal leaves the
/// links as they were.
#[tokio::test(flavor = "multi_thread")]
async fn vlans_need_kernel_support_and_are_refused_in_one_line_without_it() -> Result<()> {
    let host = host()?;
    let n = host.name();
    ip(&["-n", n, "link", "add", "brv0", "type", "bridge"])?;
    ip(&[
        "-n", n, "link", "add", "pv0", "type", "veth", "peer", "name", "pv0p",
    ])?;
    ip(&["-n", n, "link", "set", "pv0", "master", "brv0"])?;
    let before = links(&host)?;
    let nl = within("connect", Netlink::connect_in_netns(&host.path())).await??;

    match within("vlan", nl.ensure_vlan("hv0", 100)).await? {
        Err(err) => {
            assert_eq!(
                err.to_string(),
                "this kernel has no 802.1Q VLAN support (module 8021q): use an Open vSwitch bridge for VLANs"
            );
            assert_eq!(links(&host)?, before, "a refused VLAN leaves nothing");
        }
        Ok((_, made)) => {
            assert_eq!(made, Ensured::Created);
            let shown = ns_output(&host, "ip", &["-d", "link", "show", "hv0.100"])?;
            ensure!(shown.contains("vlan protocol 802.1Q id 100"), "{shown}");
            let (_, again) = within("vlan again", nl.ensure_vlan("hv0", 100)).await??;
            assert_eq!(again, Ensured::AlreadyThere);
            assert!(within("remove vlan", nl.remove_vlan("hv0", 100)).await??);
            assert_eq!(links(&host)?, before);
        }
    }
    assert!(!within("remove missing vlan", nl.remove_vlan("hv0", 100)).await??);

    let port = nl.link("pv0").await?.context("pv0")?;
    match within(
        "bridge vlan",
        nl.ensure_bridge_access_vlan("brv0", port.index, 100),
    )
    .await?
    {
        Err(err) => {
            assert_eq!(
                err.to_string(),
                "this kernel has no bridge VLAN filtering support (CONFIG_BRIDGE_VLAN_FILTERING): use an Open vSwitch bridge for VLANs"
            );
            assert_eq!(links(&host)?, before, "a refusal changes nothing");
        }
        Ok(()) => {
            let shown = ns_output(&host, "ip", &["-d", "link", "show", "brv0"])?;
            ensure!(shown.contains("vlan_filtering 1"), "{shown}");
            let vlans = ns_output(&host, "bridge", &["vlan", "show", "dev", "pv0"])?;
            ensure!(
                vlans.contains("100 PVID Egress Untagged") && !vlans.contains(" 1 "),
                "{vlans}"
            );
        }
    }

    // Bad input is one line and makes nothing, support or not.
    let before = links(&host)?;
    for (parent, vid, expected) in [
        ("hv0", 0, "VLAN 0 is out of range: use 1 to 4094"),
        ("hv0", 4095, "VLAN 4095 is out of range: use 1 to 4094"),
        ("nope0", 100, "no interface named nope0"),
        (
            "hv0-long-name",
            100,
            "interface name \"hv0-long-name.100\" is longer than 15 characters (17)",
        ),
    ] {
        let err = within("bad vlan", nl.ensure_vlan(parent, vid))
            .await?
            .expect_err(expected);
        assert_eq!(err.to_string(), expected);
    }
    let err = within(
        "not a bridge",
        nl.ensure_bridge_access_vlan("hv0", port.index, 100),
    )
    .await?
    .expect_err("hv0 is no bridge");
    assert_eq!(err.to_string(), "hv0 is not a Linux bridge");
    assert_eq!(links(&host)?, before);
    Ok(())
}

/// The host cannot reach a macvlan container through the parent; with the
/// shim it can, and removing the shim takes that away again.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_shim_lets_the_host_reach_its_macvlan_containers() -> Result<()> {
    let host = host()?;
    let (c1, c2) = (Netns::create("mvs1")?, Netns::create("mvs2")?);
    let nl = within("connect", Netlink::connect_in_netns(&host.path())).await??;
    within("c1", nl.ensure_macvlan(&spec(&c1, "10.236.0.71/24", None)?)).await??;
    within("c2", nl.ensure_macvlan(&spec(&c2, "10.236.0.72/24", None)?)).await??;
    let before = links(&host)?;
    ensure!(
        !pings(&host, "10.236.0.71")?,
        "the host must not reach c1 through the parent"
    );

    let shim = |container: &str| -> Result<HostShimSpec> {
        Ok(HostShimSpec {
            parent: "hv0".into(),
            name: "tshim0".into(),
            container: container.parse()?,
        })
    };
    assert_eq!(
        within("shim", nl.ensure_host_shim(&shim("10.236.0.71")?)).await??,
        Ensured::Created
    );
    assert_eq!(
        within("shim again", nl.ensure_host_shim(&shim("10.236.0.71")?)).await??,
        Ensured::AlreadyThere
    );
    let shown = ns_output(&host, "ip", &["-d", "link", "show", "tshim0"])?;
    ensure!(
        shown.contains("mtu 1400") && shown.contains("macvlan mode bridge"),
        "{shown}"
    );
    ensure!(
        pings(&host, "10.236.0.71")?,
        "the host reaches c1 through the shim"
    );
    ensure!(
        !pings(&host, "10.236.0.72")?,
        "only the container routed through the shim"
    );
    assert_eq!(
        within("second route", nl.ensure_host_shim(&shim("10.236.0.72")?)).await??,
        Ensured::Created
    );
    ensure!(pings(&host, "10.236.0.72")?, "the host reaches c2 too");
    let shims = links(&host)?
        .iter()
        .filter(|l| l.contains("tshim0"))
        .count();
    assert_eq!(shims, 1, "one shim per parent");

    // The first container's route goes; the shim stays for the second.
    assert!(within("remove c1", nl.remove_host_shim(&shim("10.236.0.71")?)).await??);
    ensure!(!pings(&host, "10.236.0.71")?, "c1's route is gone");
    ensure!(pings(&host, "10.236.0.72")?, "c2 still reached");
    assert!(within("remove c2", nl.remove_host_shim(&shim("10.236.0.72")?)).await??);
    assert!(!within("remove again", nl.remove_host_shim(&shim("10.236.0.72")?)).await??);
    assert_eq!(links(&host)?, before, "the shim went with its last route");
    ensure!(!pings(&host, "10.236.0.72")?, "no shim, no way");

    // Bad input: one line, nothing made.
    let bad = HostShimSpec {
        parent: "nope0".into(),
        ..shim("10.236.0.71")?
    };
    let err = within("bad parent", nl.ensure_host_shim(&bad))
        .await?
        .expect_err("missing parent");
    assert_eq!(err.to_string(), "no interface named nope0");
    let taken = HostShimSpec {
        name: "hv0p".into(),
        ..shim("10.236.0.71")?
    };
    let err = within("taken name", nl.ensure_host_shim(&taken))
        .await?
        .expect_err("a veth by that name");
    assert_eq!(
        err.to_string(),
        "hv0p exists but is not a bridge-mode macvlan on hv0"
    );
    assert_eq!(links(&host)?, before);
    Ok(())
}

/// A container back with the address (so the MAC) of one whose namespace is
/// still going: the new macvlan waits for the old one, and one that stays
/// is refused in one line naming the MAC, with nothing left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_mac_still_in_use_on_the_parent_is_waited_for_then_refused() -> Result<()> {
    let host = host()?;
    let nl = within("connect", Netlink::connect_in_netns(&host.path())).await??;
    let mac = parse_mac("02:42:0a:ec:00:15")?;
    let old = Netns::create("mvold")?;
    let with_mac = |ns: &Netns| -> Result<MacvlanSpec> {
        Ok(MacvlanSpec {
            mac: Some(mac),
            ..spec(ns, "10.236.0.21/24", None)?
        })
    };
    within("the old one", nl.ensure_macvlan(&with_mac(&old)?)).await??;

    // Held: refused after the wait, in one line.
    let held = Netns::create("mvheld")?;
    let err = within("refused", nl.ensure_macvlan(&with_mac(&held)?))
        .await?
        .expect_err("the MAC is taken");
    let text = err.to_string();
    ensure!(
        text.contains("another macvlan on hv0 has the MAC address 02:42:0a:ec:00:15")
            && !text.contains('\n'),
        "{text}"
    );
    ensure!(
        !links(&held)?.iter().any(|l| l.contains("eth1")),
        "nothing left in the container"
    );

    // Going: the old namespace is removed a moment after the new one asks.
    let remover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(old);
    });
    let new = Netns::create("mvnew")?;
    within("the new one", nl.ensure_macvlan(&with_mac(&new)?)).await??;
    remover
        .join()
        .map_err(|_| anyhow::anyhow!("the remover panicked"))?;
    let shown = ns_output(&new, "ip", &["link", "show", "eth1"])?;
    ensure!(
        shown.contains("state UP") || shown.contains(",UP"),
        "{shown}"
    );
    Ok(())
}
