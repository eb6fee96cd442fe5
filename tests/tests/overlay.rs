//! End to end across simulated hosts: containers on different hosts reach
//! each other by their overlay addresses, for each backend, and the overlay
//! follows hosts that leave, agents that restart and routes that someone
//! deletes.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_tests::agent::{Agent, AgentConfig};
use tartan_tests::cluster::{Cluster, Container, READY};
use tartan_tests::wait::wait_until;

const CONVERGE: Duration = Duration::from_secs(20);

fn subnet_of(cluster: &Cluster, host: usize) -> Result<String> {
    cluster.agents[host].subnet()
}

fn peers_of(cluster: &Cluster, host: usize) -> Result<Vec<String>> {
    let status = cluster.agents[host].status_json()?;
    Ok(status["peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .filter_map(|l| l["subnet"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// The whole scenario for one backend. `per_peer_routes`: whether the
/// backend installs a kernel route per peer subnet (udp routes the whole
/// network into its TUN device instead).
fn scenario(name: &str, octet: u8, config: &str, per_peer_routes: bool) -> Result<()> {
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

    if per_peer_routes {
        deleted_route_comes_back(&cluster, &a, &b, &subnet_b)?;
    } else {
        deleted_tun_device_comes_back(&cluster, &a, &b)?;
    }

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
    // ...without withdrawing a route it is about to confirm.
    let log = cluster.agents[1].log();
    let since_restart = log
        .rsplit("using public address")
        .next()
        .unwrap_or_default();
    let withdrew = since_restart
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("routes_removed="))
        .any(|n| n != "0");
    ensure!(
        !withdrew,
        "the restarted agent withdrew routes:\n{since_restart}"
    );

    // A host that stops and whose lease is deleted disappears from the others.
    ensure!(
        peers_of(&cluster, 0)?.contains(&subnet_c),
        "host 0 knows host 2 first"
    );
    if per_peer_routes {
        ensure!(
            !cluster.route(0, &subnet_c)?.is_empty(),
            "host 0 routes to host 2 first"
        );
    }
    cluster.agents[2].terminate()?;
    let key = format!("{}/subnets/{}", cluster.prefix, subnet_c.replace('/', "-"));
    cluster.etcdctl(&["del", &key])?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        let routed = per_peer_routes
            && !(cluster.route(0, &subnet_c)?.is_empty()
                && cluster.route(1, &subnet_c)?.is_empty());
        let known = peers_of(&cluster, 0)?.contains(&subnet_c)
            || peers_of(&cluster, 1)?.contains(&subnet_c);
        Ok(!routed && !known)
    })
    .context("host 2 is still known or routed")?;
    Ok(())
}

/// Somebody deletes the udp backend's TUN device: it is recreated and
/// traffic flows again.
fn deleted_tun_device_comes_back(cluster: &Cluster, a: &Container, b: &Container) -> Result<()> {
    let out = cluster.hosts[0]
        .netns
        .exec("ip", &["link", "del", "tartan-udp"])?;
    ensure!(
        out.status.success(),
        "deleting the TUN device: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(a, b.address)
    })
    .context("traffic flows again once the TUN device is back")?;
    Ok(())
}

/// Somebody deletes the route to a peer, then the VXLAN or host device:
/// both are back within seconds and traffic flows again.
fn deleted_route_comes_back(
    cluster: &Cluster,
    a: &Container,
    b: &Container,
    subnet_b: &str,
) -> Result<()> {
    let host0 = cluster.hosts[0].netns.name().to_string();
    let out = std::process::Command::new("ip")
        .args(["-n", &host0, "route", "del", subnet_b])
        .output()?;
    ensure!(
        out.status.success(),
        "deleting the route: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(CONVERGE, Duration::from_millis(200), || {
        Ok(!cluster.route(0, subnet_b)?.is_empty())
    })
    .context("the deleted route was not restored")?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(a, b.address)
    })?;
    Ok(())
}

#[test]
fn vxlan_connects_containers_across_hosts() -> Result<()> {
    scenario(
        "vx",
        235,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
        true,
    )
}

#[test]
fn host_gw_connects_containers_across_hosts() -> Result<()> {
    scenario(
        "hg",
        236,
        r#"{"Network":"10.6.0.0/16","Backend":{"Type":"host-gw"}}"#,
        true,
    )
}

#[test]
fn udp_connects_containers_across_hosts() -> Result<()> {
    scenario(
        "ud",
        234,
        r#"{"Network":"10.9.0.0/16","Backend":{"Type":"udp"}}"#,
        false,
    )
}

#[test]
fn a_deleted_vxlan_device_is_recreated() -> Result<()> {
    let mut cluster = Cluster::start(
        "vd",
        233,
        r#"{"Network":"10.4.0.0/16","Backend":{"Type":"vxlan"}}"#,
        2,
    )?;
    let a = cluster.container(0, "vda")?;
    let b = cluster.container(1, "vdb")?;
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&a, b.address)
    })?;
    let out = cluster.hosts[0]
        .netns
        .exec("ip", &["link", "del", "tartan.1"])?;
    ensure!(out.status.success(), "deleting the device");
    wait_until(CONVERGE, Duration::from_millis(200), || {
        cluster.ping(&a, b.address)
    })
    .context("traffic flows again once the device and its entries are back")?;
    ensure!(!cluster.route(0, &subnet_of(&cluster, 1)?)?.is_empty());
    Ok(())
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

/// Runs the CLI against host 0's agent: (success, stdout, stderr).
fn cli(cluster: &Cluster, args: &[&str]) -> Result<(bool, String, String)> {
    let out = cluster.agents[0].cli(args)?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// The three forms of CONTAINER, explicit addresses, and bad input: one
/// line each, and nothing left half-made.
#[test]
fn attach_and_detach_take_every_container_form_and_refuse_bad_input() -> Result<()> {
    let mut cluster = Cluster::start(
        "at",
        232,
        r#"{"Network":"10.3.0.0/16","Backend":{"Type":"vxlan"}}"#,
        1,
    )?;
    let subnet = cluster.agents[0].subnet()?;
    let base = subnet.split('/').next().context("subnet")?.to_string();
    let prefix: String = base
        .rsplit_once('.')
        .map(|(p, _)| p.to_string())
        .context("prefix")?;
    let host_links = |cluster: &Cluster| -> Result<usize> {
        let out = cluster.hosts[0].netns.exec("ip", &["-o", "link", "show"])?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().count())
    };

    // By netns name, with an explicit address.
    let named = tartan_tests::netns::Netns::create("atn")?;
    let wanted = format!("{prefix}.77/24");
    let (ok, out, err) = cli(&cluster, &["attach", &wanted, named.name()])?;
    ensure!(ok && out == wanted, "attach {wanted}: {out} {err}");

    // By path and by PID, next free addresses.
    let by_path = tartan_tests::netns::Netns::create("atp")?;
    let (ok, out, err) = cli(&cluster, &["attach", &by_path.path().to_string_lossy()])?;
    ensure!(
        ok && out == format!("{prefix}.2/24"),
        "attach by path: {out} {err}"
    );
    let mut sleeper = by_path.command("sleep").arg("60").spawn()?;
    let pid_ns = tartan_tests::netns::Netns::create("atq")?;
    let mut pid_sleeper = pid_ns.command("sleep").arg("60").spawn()?;
    let (ok, out, err) = cli(&cluster, &["attach", &pid_sleeper.id().to_string()])?;
    ensure!(
        ok && out == format!("{prefix}.3/24"),
        "attach by pid: {out} {err}"
    );

    // The same request again changes nothing and says so.
    for args in [
        vec!["attach", named.name()],
        vec!["attach", &wanted, named.name()],
    ] {
        let (ok, out, err) = cli(&cluster, &args)?;
        ensure!(
            ok && out == format!("{} already attached: eth0 {wanted}", named.name()),
            "{args:?} again: {out} {err}"
        );
    }
    let named_links = named.exec("ip", &["-o", "link", "show"])?;
    let named_links = String::from_utf8_lossy(&named_links.stdout).to_string();
    ensure!(
        named_links.lines().count() == 2 && named_links.contains(": eth0@"),
        "lo and one eth0 after attaching twice:\n{named_links}"
    );

    // Bad input: one line, non-zero, and no new interface on the host.
    let links_before = host_links(&cluster)?;
    // The agent runs in a host namespace of the harness; PID 1 is the
    // machine's init, whose namespace the refusal must leave untouched. The
    // test's own namespace is the machine's as far as the harness can see
    // (PID 1's may be closed to it).
    let machine_state = || -> Result<String> {
        let mut state = String::new();
        for what in [
            &["-o", "link", "show"][..],
            &["-o", "address", "show"],
            &["route", "show", "table", "all"],
        ] {
            let out = std::process::Command::new("ip")
                .args(what)
                .output()
                .context("ip")?;
            ensure!(
                out.status.success(),
                "ip {what:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            state.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        Ok(state)
    };
    let machine_before = machine_state()?;
    let spare = tartan_tests::netns::Netns::create("ats")?;
    let agent_pid = cluster.agents[0].pid().context("the agent's pid")?;
    for (args, needle) in [
        (
            vec!["attach".into(), agent_pid.to_string()],
            "the agent's own network namespace",
        ),
        (
            vec!["attach".into(), format!("/proc/{agent_pid}/ns/net")],
            "the agent's own network namespace",
        ),
        (
            vec!["attach".into(), "1".into()],
            "the host's network namespace",
        ),
        (
            vec!["attach".into(), "/proc/1/ns/net".into()],
            "the host's network namespace",
        ),
        (
            vec![
                "attach".into(),
                format!("{prefix}.78/24"),
                named.name().into(),
            ],
            "already attached as eth0 with",
        ),
        (
            // Inside the cluster network, outside this node's subnet (an
            // address outside the cluster network is the L2 segment's).
            vec![
                "attach".to_string(),
                if prefix == "10.3.250" {
                    "10.3.251.5/24".into()
                } else {
                    "10.3.250.5/24".into()
                },
                spare.name().into(),
            ],
            "outside the node subnet",
        ),
        (
            vec!["attach".into(), wanted.clone(), spare.name().into()],
            "already in use",
        ),
        (
            vec![
                "attach".into(),
                format!("{prefix}.1/24"),
                spare.name().into(),
            ],
            "reserved",
        ),
        (
            vec!["attach".into(), "tt-no-such-netns".into()],
            "no network namespace",
        ),
        (vec!["detach".into(), spare.name().into()], "not attached"),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = cli(&cluster, &args)?;
        ensure!(
            !ok && err.lines().count() == 1 && err.contains(needle),
            "{args:?}: {err}"
        );
    }
    ensure!(
        host_links(&cluster)? == links_before,
        "nothing half-made on the host"
    );
    ensure!(
        machine_state()? == machine_before,
        "the machine's interfaces, addresses and routes are untouched"
    );

    // Detach frees the address and the interface; the next attach reuses it.
    let (ok, _, err) = cli(&cluster, &["detach", &by_path.path().to_string_lossy()])?;
    ensure!(ok, "detach: {err}");
    ensure!(
        by_path.exec("ip", &["link", "show", "eth0"])?.status.code() != Some(0),
        "eth0 gone"
    );
    let (ok, out, _) = cli(&cluster, &["attach", spare.name()])?;
    ensure!(
        ok && out == format!("{prefix}.2/24"),
        "the freed address is reused: {out}"
    );

    // Addresses survive an agent restart.
    cluster.agents[0].terminate()?;
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    let (ok, out, err) = cli(&cluster, &["attach", named.name()])?;
    ensure!(
        ok && out == format!("{} already attached: eth0 {wanted}", named.name()),
        "attach after a restart: {out} {err}"
    );

    // Attachments are listed as they were named (weave's `ps`).
    let (ok, listed, err) = cli(&cluster, &["attachments"])?;
    ensure!(ok, "attachments: {err}");
    let pid = pid_sleeper.id().to_string();
    for (who, address) in [
        (named.name().to_string(), format!("{prefix}.77/24")),
        (pid.clone(), format!("{prefix}.3/24")),
        (spare.name().to_string(), format!("{prefix}.2/24")),
    ] {
        ensure!(
            listed.lines().any(|l| l
                .split_whitespace()
                .take(2)
                .eq([who.as_str(), address.as_str()])),
            "{who} with {address} in:\n{listed}"
        );
    }
    let attached = |who: &str| -> Result<bool> {
        let (ok, names, err) = cli(&cluster, &["attachments", "-q"])?;
        ensure!(ok, "attachments -q: {err}");
        Ok(names.lines().any(|l| l == who))
    };

    // A process attached by PID gives its address back when it ends, with
    // no detach: one attached before the restart, and one after it.
    pid_sleeper.kill()?;
    pid_sleeper.wait()?;
    wait_until(CONVERGE, Duration::from_millis(100), || {
        Ok(!attached(&pid)?)
    })
    .context("the address of an ended process attached before the restart is freed")?;
    let late_ns = tartan_tests::netns::Netns::create("atl")?;
    let mut late = late_ns.command("sleep").arg("60").spawn()?;
    let late_pid = late.id().to_string();
    let (ok, _, err) = cli(&cluster, &["attach", &late_pid])?;
    ensure!(ok, "attach by pid after the restart: {err}");
    ensure!(attached(&late_pid)?);
    late.kill()?;
    late.wait()?;
    wait_until(CONVERGE, Duration::from_millis(100), || {
        Ok(!attached(&late_pid)?)
    })
    .context("the address of an ended process attached after the restart is freed")?;
    ensure!(attached(named.name())?, "other attachments stay");

    sleeper.kill().ok();
    sleeper.wait().ok();
    Ok(())
}

/// A second agent in a network namespace that already has one is refused
/// before it leases or programs anything, in one line naming the first,
/// which carries on untouched.
#[test]
fn a_second_agent_in_one_network_namespace_is_refused() -> Result<()> {
    let cluster = Cluster::start(
        "dup",
        242,
        r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#,
        1,
    )?;
    let first = &cluster.agents[0];
    let subnet = subnet_of(&cluster, 0)?;
    let first_dir = first.state_dir().display().to_string();
    let same_namespace = |public_ip: Option<&str>| -> Result<Agent> {
        Agent::start(AgentConfig {
            etcd_endpoints: cluster.etcd.endpoint(),
            etcd_prefix: cluster.prefix.clone(),
            netns: Some(cluster.hosts[0].netns.name().to_string()),
            public_ip: public_ip.map(str::parse).transpose()?,
            ..AgentConfig::default()
        })
    };

    // Its own --state-dir, --subnet-file and --api-socket, the same address.
    let mut second = same_namespace(None)?;
    let exit = second.wait_exit(READY)?;
    ensure!(!exit.success(), "the second agent must fail: {exit}");
    let log = second.log();
    ensure!(
        log.contains("another tartan agent runs in this network namespace (pid ")
            && log.contains(&format!("--state-dir {first_dir},"))
            && log.contains("leases the subnet of"),
        "{log}"
    );

    // Another address: a lease of its own, but the namespace's devices are the first's.
    let mut third = same_namespace(Some("10.242.0.77"))?;
    let exit = third.wait_exit(READY)?;
    ensure!(!exit.success(), "the third agent must fail: {exit}");
    let log = third.log();
    ensure!(
        log.contains(&format!("--state-dir {first_dir},")) && log.contains("programs its network"),
        "{log}"
    );
    let leases = cluster.etcdctl(&[
        "get",
        "--prefix",
        "--keys-only",
        &format!("{}/subnets/", cluster.prefix),
    ])?;
    ensure!(
        leases.lines().filter(|l| !l.trim().is_empty()).count() == 1,
        "only the first agent holds a lease: {leases}"
    );

    ensure!(first.is_running(), "{}", first.log_tail(20));
    ensure!(subnet_of(&cluster, 0)? == subnet);
    ensure!(first.status_json()?["node"]["subnet"] == subnet.as_str());
    Ok(())
}
