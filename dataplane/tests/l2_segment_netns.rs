//! The flat L2 segment against a real kernel: three simulated hosts on an
//! underlay of the test's own, each with the segment and a container on it,
//! all in one subnet.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_dataplane::{
    desired_l2_fdb, L2Segment, L2SegmentSpec, Netlink, VethSpec, L2_SEGMENT_IFNAME,
};
use tartan_tests::netns::{Host, Netns, Underlay};
use tartan_tests::wait::wait_until;

const WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

/// One simulated host: the segment, and a container plugged into it.
struct SegmentHost {
    host: Host,
    netlink: Netlink,
    spec: L2SegmentSpec,
    segment: L2Segment,
    container: Netns,
    /// The container's address on the segment.
    address: Ipv4Addr,
    mac: [u8; 6],
}

async fn segment_host(underlay: &Underlay, n: u8) -> Result<SegmentHost> {
    let host = underlay.add_host(&format!("h{n}"))?;
    let netlink = Netlink::connect_in_netns(&host.netns.path()).await?;
    let eth0 = netlink.link("eth0").await?.context("the host's eth0")?;
    let spec = L2SegmentSpec::new(host.ip, eth0.index, eth0.mtu);
    let segment = netlink.ensure_l2_segment(&spec).await?;
    let container = Netns::create("l2c")?;
    let address = Ipv4Addr::new(10, 161, 0, n);
    let mac = [0x02, 0x42, 10, 161, 0, n];
    netlink
        .attach_veth(&VethSpec {
            netns: container.path(),
            host_name: format!("vl2c{n}"),
            container_name: L2_SEGMENT_IFNAME.into(),
            address: Some(format!("{address}/24").parse()?),
            gateway: None,
            mtu: spec.mtu,
            bridge_index: Some(segment.bridge_index),
            mac: Some(mac),
        })
        .await?;
    Ok(SegmentHost {
        host,
        netlink,
        spec,
        segment,
        container,
        address,
        mac,
    })
}

fn output(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    let out = ns.exec(program, args)?;
    ensure!(
        out.status.success(),
        "{program} {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One echo request, one second to answer.
fn pings(from: &SegmentHost, to: Ipv4Addr) -> Result<bool> {
    let to = to.to_string();
    Ok(from
        .container
        .exec("ping", &["-c", "1", "-W", "1", &to])?
        .status
        .success())
}

fn wait_ping(from: &SegmentHost, to: &SegmentHost) -> Result<()> {
    wait_until(WAIT, POLL, || pings(from, to.address))
        .with_context(|| format!("{} reaching {}", from.address, to.address))
}

/// Programs `on`'s FDB for `peers` and the containers' MACs; returns how
/// many entries changed.
async fn program(on: &SegmentHost, peers: &[&SegmentHost], all: &[&SegmentHost]) -> Result<usize> {
    let ips: Vec<Ipv4Addr> = peers.iter().map(|p| p.host.ip).collect();
    let known: Vec<([u8; 6], Ipv4Addr)> = all.iter().map(|h| (h.mac, h.host.ip)).collect();
    let desired = desired_l2_fdb(on.host.ip, &ips, &known);
    let changes = on
        .netlink
        .apply_l2_fdb(on.segment.vxlan_index, &desired)
        .await?;
    ensure!(
        on.netlink.observe_l2_fdb(on.segment.vxlan_index).await? == desired,
        "the FDB of {} is not what was applied",
        on.host.netns.name()
    );
    Ok(changes.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_on_the_segment_meet_as_on_one_switch() -> Result<()> {
    let underlay = Underlay::create("l2", (Ipv4Addr::new(10, 160, 0, 0), 24))?;
    let a = segment_host(&underlay, 1).await?;
    let b = segment_host(&underlay, 2).await?;
    let c = segment_host(&underlay, 3).await?;
    let all = [&a, &b, &c];

    // The devices, as the kernel has them; a second pass changes nothing.
    assert_eq!(a.netlink.ensure_l2_segment(&a.spec).await?, a.segment);
    let vxlan = output(&a.host.netns, "ip", &["-d", "link", "show", "tartan-l2vx"])?;
    for expected in [
        "vxlan id 19506",
        "dstport 6784",
        "nolearning",
        "master tartan-l2",
        "mtu 1450",
        "local 10.160.0.1",
    ] {
        ensure!(vxlan.contains(expected), "{expected:?} in {vxlan}");
    }

    for host in all {
        // Three flood entries less the host's own, and three MACs less its own.
        assert_eq!(program(host, &all, &all).await?, 4);
        assert_eq!(program(host, &all, &all).await?, 0, "a second pass");
    }
    let fdb = output(
        &a.host.netns,
        "bridge",
        &["fdb", "show", "dev", "tartan-l2vx"],
    )?;
    for expected in [
        "00:00:00:00:00:00 dst 10.160.0.2",
        "00:00:00:00:00:00 dst 10.160.0.3",
        "02:42:0a:a1:00:02 dst 10.160.0.2",
        "02:42:0a:a1:00:03 dst 10.160.0.3",
    ] {
        ensure!(fdb.contains(expected), "{expected:?} in {fdb}");
    }
    ensure!(!fdb.contains("dst 10.160.0.1"), "nothing to itself: {fdb}");

    // ARP and unicast across hosts, every way round.
    for (from, to) in [(&a, &b), (&a, &c), (&b, &c), (&c, &a)] {
        wait_ping(from, to)?;
    }

    // A broadcast from one host reaches the containers of both others.
    for host in [&b, &c] {
        output(
            &host.container,
            "sh",
            &[
                "-c",
                "echo 0 > /proc/sys/net/ipv4/icmp_echo_ignore_broadcasts",
            ],
        )?;
    }
    wait_until(WAIT, POLL, || {
        let out = a.container.exec(
            "ping",
            &["-b", "-c", "3", "-i", "0.3", "-w", "2", "10.161.0.255"],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.contains("from 10.161.0.2") && text.contains("from 10.161.0.3"))
    })
    .context("a broadcast ping from host 1 answered by hosts 2 and 3")?;

    // An entry deleted by hand comes back, and only it.
    output(
        &a.host.netns,
        "bridge",
        &[
            "fdb",
            "del",
            "00:00:00:00:00:00",
            "dev",
            "tartan-l2vx",
            "dst",
            "10.160.0.2",
        ],
    )?;
    assert_eq!(program(&a, &all, &all).await?, 1);

    // Host 3 leaves host 1's set: nothing from host 1 reaches it any more,
    // whatever host 1's container has in its neighbour cache.
    assert_eq!(program(&a, &[&a, &b], &all).await?, 2);
    ensure!(
        !pings(&a, c.address)? && !pings(&a, c.address)?,
        "host 1 still reaches host 3's container"
    );
    wait_ping(&a, &b)?;
    let fdb = output(
        &a.host.netns,
        "bridge",
        &["fdb", "show", "dev", "tartan-l2vx"],
    )?;
    ensure!(!fdb.contains("10.160.0.3"), "host 3 is gone: {fdb}");

    // It comes back: so does the traffic.
    assert_eq!(program(&a, &all, &all).await?, 2);
    wait_ping(&a, &c)?;

    // Removing the segment removes its devices, once.
    assert!(a.netlink.remove_l2_segment(&a.spec).await?);
    ensure!(a.netlink.link("tartan-l2vx").await?.is_none());
    ensure!(a.netlink.link("tartan-l2").await?.is_none());
    assert!(!a.netlink.remove_l2_segment(&a.spec).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_udp_port_is_reported_in_one_line() -> Result<()> {
    let underlay = Underlay::create("l2p", (Ipv4Addr::new(10, 160, 0, 0), 24))?;
    let host = underlay.add_host("h")?;
    // Somebody else's socket on the segment's port, in the host's namespace.
    let taken = host
        .netns
        .enter(|| std::net::UdpSocket::bind(("0.0.0.0", 6784)))??;
    let netlink = Netlink::connect_in_netns(&host.netns.path()).await?;
    let eth0 = netlink.link("eth0").await?.context("the host's eth0")?;
    let spec = L2SegmentSpec::new(host.ip, eth0.index, eth0.mtu);
    let err = netlink
        .ensure_l2_segment(&spec)
        .await
        .expect_err("the port is taken");
    let text = err.to_string();
    ensure!(
        text.contains("UDP port 6784 is taken") && !text.contains('\n'),
        "{text}"
    );
    // Nothing is left half-made: neither device stays behind the refusal.
    ensure!(
        netlink.link("tartan-l2vx").await?.is_none(),
        "tartan-l2vx left behind"
    );
    ensure!(
        netlink.link("tartan-l2").await?.is_none(),
        "tartan-l2 left behind"
    );
    drop(taken);
    // The socket is freed with its last descriptor: a process another test
    // thread forks at that moment holds a copy until it execs, so the port
    // may stay taken for a little while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match netlink.ensure_l2_segment(&spec).await {
            Ok(_) => return Ok(()),
            Err(err)
                if std::time::Instant::now() < deadline && err.to_string().contains("is taken") =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(err) => return Err(err).context("the segment once the port is free"),
        }
    }
}
