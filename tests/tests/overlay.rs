//! End to end across simulated hosts: containers on different hosts reach
//! each other by their overlay addresses, for each kernel backend, and the
//! overlay follows hosts that leave, agents that restart and routes that
//! someone deletes.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::wait::wait_until;

const CONVERGE: Duration = Duration::from_secs(20);

fn subnet_of(cluster: &Cluster, host: usize) -> Result<String> {
    cluster.agents[host].subnet()
}

/// The whole scenario for one backend.
fn scenario(name: &str, octet: u8, config: &str) -> Result<()> {
    let mut cluster = Cluster::start(name, octet, config, 3)?;
    let a = cluster.container(0, &format!("{name}a"))?;
    let b = cluster.container(1, &format!("{name}b"))?;
    let subnet_a = subnet_of(&cluster, 0)?;
    let subnet_b = subnet_of(&cluster, 1)?;
    let subnet_c = subnet_of(&cluster, 2)?;
    ensure!(subnet_a != subnet_b, "distinct subnets");

    // Container to container, both directions: ICMP and a TCP transfer.
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&a, b.address)
    })
    .with_context(|| {
        format!(
            "{} cannot ping {}:\n{}",
            a.address,
            b.address,
            cluster.agents[0].log_tail(20)
        )
    })?;
    ensure!(
        cluster.ping(&b, a.address)?,
        "{} cannot ping {}",
        b.address,
        a.address
    );
    cluster.tcp_transfer(&a, &b, 1 << 20)?;
    cluster.tcp_transfer(&b, &a, 1 << 20)?;

    // A deleted route comes back within seconds.
    let host0 = cluster.hosts[0].netns.name().to_string();
    let out = std::process::Command::new("ip")
        .args(["-n", &host0, "route", "del", &subnet_b])
        .output()?;
    ensure!(
        out.status.success(),
        "deleting the route: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(!cluster.route(0, &subnet_b)?.is_empty())
    })
    .context("the deleted route was not restored")?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&a, b.address)
    })?;

    // An agent restart keeps the subnet and the connectivity.
    cluster.agents[1].terminate()?;
    cluster.agents[1].restart()?;
    cluster.agents[1].wait_ready(READY)?;
    assert_eq!(subnet_of(&cluster, 1)?, subnet_b);
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&a, b.address)
    })?;
    ensure!(
        cluster.ping(&b, a.address)?,
        "connectivity after the restart"
    );

    // A host that stops and whose lease is deleted disappears from the others' routes.
    ensure!(
        !cluster.route(0, &subnet_c)?.is_empty(),
        "host 0 routes to host 2 first"
    );
    cluster.agents[2].terminate()?;
    cluster.etcdctl(&[
        "del",
        &format!("{}/subnets/{}", cluster.prefix, subnet_c.replace('/', "-")),
    ])?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(cluster.route(0, &subnet_c)?.is_empty() && cluster.route(1, &subnet_c)?.is_empty())
    })
    .context("host 2's subnet is still routed")?;
    Ok(())
}

#[test]
fn vxlan_connects_containers_across_hosts() -> Result<()> {
    scenario(
        "vx",
        235,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
}

#[test]
fn host_gw_connects_containers_across_hosts() -> Result<()> {
    scenario(
        "hg",
        236,
        r#"{"Network":"10.6.0.0/16","Backend":{"Type":"host-gw"}}"#,
    )
}

#[test]
fn vxlan_with_direct_routing_uses_the_underlay_between_neighbours() -> Result<()> {
    let mut cluster = Cluster::start(
        "dr",
        237,
        r#"{"Network":"10.7.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
        2,
    )?;
    let a = cluster.container(0, "dra")?;
    let b = cluster.container(1, "drb")?;
    let subnet_b = subnet_of(&cluster, 1)?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&a, b.address)
    })?;
    let route = cluster.route(0, &subnet_b)?;
    ensure!(
        route.contains(&format!("via {} dev eth0", cluster.hosts[1].ip)),
        "a peer on the same segment is routed directly: {route}"
    );
    Ok(())
}

#[test]
fn ip_masq_lets_containers_reach_beyond_the_cluster_network() -> Result<()> {
    tartan_tests::prereq::require_binary("nft")?;
    let config = r#"{"Network":"10.8.0.0/16","Backend":{"Type":"vxlan"}}"#;
    // Without --ip-masq the hub (outside 10.8.0.0/16, no route back) never answers.
    let mut plain = Cluster::start("nm", 238, config, 1)?;
    let c = plain.container(0, "nmc")?;
    ensure!(
        !plain.ping(&c, plain.underlay.hub_ip())?,
        "unmasqueraded traffic must not come back"
    );
    drop(plain);

    let mut cluster = Cluster::start_with("ms", 239, config, 1, &["--ip-masq"])?;
    let env = cluster.agents[0].subnet_env()?;
    assert_eq!(env.get("FLANNEL_IPMASQ").map(String::as_str), Some("true"));
    let c = cluster.container(0, "msc")?;
    let hub = cluster.underlay.hub_ip();
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&c, hub)
    })
    .context("a masqueraded container reaches the hub")?;

    let host = &cluster.hosts[0].netns;
    let table = |host: &tartan_tests::netns::Netns| -> Result<bool> {
        Ok(host
            .exec("nft", &["list", "table", "ip", "tartan"])?
            .status
            .success())
    };
    ensure!(table(host)?, "the table exists");
    ensure!(host
        .exec("nft", &["delete", "table", "ip", "tartan"])?
        .status
        .success());
    wait_until(CONVERGE, Duration::from_millis(200), || {
        table(&cluster.hosts[0].netns)
    })
    .context("the deleted table is re-asserted")?;
    let status = cluster.agents[0].terminate()?;
    ensure!(status.success(), "clean exit");
    ensure!(
        !table(&cluster.hosts[0].netns)?,
        "the table goes with the agent"
    );
    Ok(())
}
