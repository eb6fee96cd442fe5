//! `tartan attach HOST_INTERFACE CONTAINER ADDR/LEN[@GW]|0/0 [MAC][@VLAN]`,
//! pipework's form, end to end: Open vSwitch VLANs on one host and across a
//! trunk, macvlan across hosts and the host shim, a Linux bridge created on
//! demand, interfaces with no address, idempotence, detach, agent restarts
//! and refused input.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_tests::cli::{cli_ok, import_busybox, text, VXLAN};
use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::containers::{inspect, refused_with};
use tartan_tests::netns::Netns;
use tartan_tests::ovs::Ovs;
use tartan_tests::wait::wait_until;

/// How long the agent may take to follow a namespace that went.
const FOLLOW: Duration = Duration::from_secs(10);

/// `ip -d link`, without the bridge timers that run by themselves.
fn links(ns: &Netns) -> Result<String> {
    let out = ns.exec("ip", &["-d", "-o", "link", "show"])?;
    ensure!(out.status.success(), "ip link: {}", text(&out.stderr));
    let mut kept = String::new();
    for line in text(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word.ends_with("_timer") {
                words.next();
                continue;
            }
            kept.push_str(word);
            kept.push(' ');
        }
        kept.push('\n');
    }
    Ok(kept)
}

fn addresses(ns: &Netns) -> Result<String> {
    Ok(text(&ns.exec("ip", &["-o", "-4", "addr", "show"])?.stdout))
}

/// A directory of symlinks standing for each host's OVSDB socket: the
/// agents are given the path before the switches exist.
struct OvsdbLinks {
    dir: tempfile::TempDir,
}

impl OvsdbLinks {
    fn new() -> Result<OvsdbLinks> {
        Ok(OvsdbLinks {
            dir: tempfile::Builder::new()
                .prefix("tt-ovsl-")
                .tempdir_in("/tmp")?,
        })
    }

    fn path(&self, netns: &str) -> PathBuf {
        self.dir.path().join(format!("{netns}.sock"))
    }

    fn flag(&self, netns: &str) -> String {
        format!("--ovsdb=unix:{}", self.path(netns).display())
    }

    fn point(&self, netns: &Netns, ovs: &Ovs) -> Result<()> {
        std::os::unix::fs::symlink(ovs.socket(), self.path(netns.name()))
            .context("linking the OVSDB socket")
    }
}

fn cluster_with_ovsdb(name: &str, octet: u8, hosts: usize, links: &OvsdbLinks) -> Result<Cluster> {
    Cluster::start_configured(name, octet, VXLAN, hosts, &|agent| {
        if let Some(netns) = agent.netns.clone() {
            agent.extra_args.push(links.flag(&netns));
        }
    })
}

#[test]
fn ovs_vlans_isolate_on_one_bridge_and_cross_a_trunk() -> Result<()> {
    let ovsdb = OvsdbLinks::new()?;
    let mut cluster = cluster_with_ovsdb("pwo", 218, 2, &ovsdb)?;
    let switches = [
        Ovs::start(&cluster.hosts[0].netns)?,
        Ovs::start(&cluster.hosts[1].netns)?,
    ];
    for (host, ovs) in cluster.hosts.iter().zip(&switches) {
        ovsdb.point(&host.netns, ovs)?;
    }
    // Two containers per host, one on each VLAN, all in one subnet.
    let names = [("a", 0, 100), ("b", 0, 200), ("c", 1, 100), ("d", 1, 200)];
    let mut containers = Vec::new();
    for (i, (name, host, vlan)) in names.iter().enumerate() {
        let ns = Netns::create(&format!("pwo{name}"))?;
        let address = format!("192.168.218.{}/24", i + 1);
        let out = cli_ok(
            &cluster.agents[*host],
            &["attach", "ovs0", ns.name(), &address, &format!("@{vlan}")],
        )?;
        ensure!(out.trim() == address, "attach printed {out}");
        containers.push(ns);
    }
    let [a, b, c, d] = &containers[..] else {
        unreachable!("four containers")
    };
    // Tartan made the bridge and the ports, and says whose they are.
    let ports = switches[0].vsctl(&[
        "--columns=name,tag,external_ids",
        "--format=csv",
        "list",
        "Port",
    ])?;
    ensure!(
        ports.contains(&format!("tartan-owner=\"\"netns:{}\"\"", a.name())),
        "ports carry their owner: {ports}"
    );
    ensure!(
        ports.contains(",100,") && ports.contains(",200,"),
        "{ports}"
    );
    let bridges = switches[0].vsctl(&[
        "--columns=name,external_ids",
        "--format=csv",
        "list",
        "Bridge",
    ])?;
    ensure!(
        bridges.contains("tartan-owner"),
        "the bridge carries its owner: {bridges}"
    );
    ensure!(
        addresses(a)?.contains("eth1") && addresses(a)?.contains("192.168.218.1/24"),
        "pipework's default container side is eth1: {}",
        addresses(a)?
    );

    // One host: each VLAN reaches itself only. A second container per VLAN
    // on this host, as in the seed: the positive cases first, so that the
    // negative one cannot pass for a bridge that carries nothing.
    let mut same_host = Vec::new();
    for (name, address, vlan) in [
        ("a2", "192.168.218.5/24", 100),
        ("b2", "192.168.218.6/24", 200),
    ] {
        let ns = Netns::create(&format!("pwo{name}"))?;
        let out = cli_ok(
            &cluster.agents[0],
            &["attach", "ovs0", ns.name(), address, &format!("@{vlan}")],
        )?;
        ensure!(out.trim() == address, "attach printed {out}");
        same_host.push(ns);
    }
    ensure!(a.reaches("192.168.218.5")?, "VLAN 100 on one host");
    ensure!(b.reaches("192.168.218.6")?, "VLAN 200 on one host");
    ensure!(
        !a.reaches("192.168.218.2")?,
        "VLAN 100 must not reach VLAN 200"
    );
    for ns in &same_host {
        cli_ok(&cluster.agents[0], &["detach", ns.name()])?;
    }
    drop(same_host);

    // Refused input changes nothing in OVS or on the host, a bridge
    // created for the request included.
    let spare = Netns::create("pwos")?;
    let ovs_before = switches[0].state()?;
    let host_before = links(&cluster.hosts[0].netns)?;
    let agent = &cluster.agents[0];
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "attach",
                "ovs0",
                "tt-no-such-ns",
                "192.168.218.9/24",
                "@100",
            ],
            "no container",
        ),
        (
            &["attach", "ovs0", spare.name(), "192.168.218.9/24", "zz"],
            "bad MAC",
        ),
        (
            &["attach", "ovs0", spare.name(), "192.168.218.9/24", "@4095"],
            "VLAN",
        ),
        (
            &["attach", "ovs0", spare.name(), "192.168.218.9/33", "@100"],
            "prefix length",
        ),
        (
            &[
                "attach",
                "-l",
                "averyverylonghostname",
                "ovs0",
                spare.name(),
                "192.168.218.9/24",
            ],
            "longer than 15",
        ),
        (
            &[
                "attach",
                "-i",
                "lo",
                "ovs7",
                spare.name(),
                "192.168.218.9/24",
            ],
            "already has an interface named lo",
        ),
        (
            &[
                "attach",
                "--host-shim",
                "ovs0",
                spare.name(),
                "192.168.218.9/24",
            ],
            "macvlan",
        ),
    ];
    for (args, needle) in cases {
        refused_with(agent, args, needle)?;
    }
    ensure!(
        switches[0].state()? == ovs_before,
        "OVS as it was: {}",
        switches[0].state()?
    );
    ensure!(
        links(&cluster.hosts[0].netns)? == host_before,
        "the host as it was"
    );

    // A trunk between the hosts' bridges carries both VLANs.
    let trunk = [
        cluster.hosts[0].netns.name().to_string(),
        cluster.hosts[1].netns.name().to_string(),
    ];
    tartan_tests::netns::ip(&[
        "-n", &trunk[0], "link", "add", "trk", "type", "veth", "peer", "name", "trk", "netns",
        &trunk[1],
    ])?;
    for (ns, ovs) in trunk.iter().zip(&switches) {
        tartan_tests::netns::ip(&["-n", ns, "link", "set", "trk", "up"])?;
        ovs.vsctl(&["add-port", "ovs0", "trk"])?;
    }
    ensure!(a.reaches("192.168.218.3")?, "VLAN 100 across the trunk");
    ensure!(b.reaches("192.168.218.4")?, "VLAN 200 across the trunk");
    ensure!(
        !a.pings("192.168.218.4")?,
        "VLAN 100 must not reach VLAN 200 across the trunk"
    );
    ensure!(
        !d.pings("192.168.218.3")?,
        "VLAN 200 must not reach VLAN 100 across the trunk"
    );
    let _ = c;

    // An agent restart re-applies what is recorded, and what belonged to a
    // namespace that went while it was down goes with it.
    // Ports of this form that no record has go too; another owner's stay.
    let agent = &mut cluster.agents[0];
    agent.kill()?;
    let gone = containers.remove(1);
    drop(gone);
    for (port, owner) in [("ghost0", "netns:tt-ghost"), ("keep0", "network:other")] {
        switches[0].vsctl(&[
            "add-port",
            "ovs0",
            port,
            "--",
            "set",
            "Port",
            port,
            &format!("external_ids:tartan-owner=\"{owner}\""),
        ])?;
    }
    agent.restart()?;
    agent.wait_ready(READY)?;
    wait_until(FOLLOW, Duration::from_millis(100), || {
        let ports = switches[0].vsctl(&["--columns=name,tag", "--format=csv", "list", "Port"])?;
        Ok(!ports.contains("200") && !ports.contains("ghost0"))
    })
    .context("the ports of the namespace that went and of no record are removed")?;
    let ports = switches[0].vsctl(&["list-ports", "ovs0"])?;
    ensure!(
        ports.contains("keep0"),
        "another owner's port stays: {ports}"
    );
    let listed = cli_ok(agent, &["attachments"])?;
    ensure!(
        listed.contains(containers[0].name())
            && listed.contains("ovs0 (ovs) vlan 100")
            && listed.lines().count() == 2,
        "{listed}"
    );
    ensure!(
        containers[0].reaches("192.168.218.3")?,
        "still reaches across the trunk"
    );

    // Detach undoes it all: the last user takes the bridge Tartan made.
    cli_ok(agent, &["detach", containers[0].name()])?;
    let bridges = switches[0].vsctl(&["list-br"])?;
    ensure!(
        bridges.trim().is_empty(),
        "the bridge went with its last user: {bridges}"
    );
    Ok(())
}

#[test]
fn macvlan_across_hosts_and_the_host_shim() -> Result<()> {
    let no_ovs = tempfile::Builder::new()
        .prefix("tt-noovs-")
        .tempdir_in("/tmp")?;
    let flag = format!("--ovsdb=unix:{}/db.sock", no_ovs.path().display());
    let cluster = Cluster::start_with("pwm", 219, VXLAN, 2, &[&flag])?;
    let m0 = Netns::create("pwm0")?;
    let m1 = Netns::create("pwm1")?;
    let m2 = Netns::create("pwm2")?;
    let before = links(&cluster.hosts[0].netns)?;
    cli_ok(
        &cluster.agents[0],
        &["attach", "eth0", m0.name(), "10.219.0.100/24"],
    )?;
    cli_ok(
        &cluster.agents[1],
        &["attach", "eth0", m1.name(), "10.219.0.101/24", "U:web1"],
    )?;
    let inside = links(&m1)?;
    ensure!(inside.contains("macvlan mode bridge"), "{inside}");
    // pipework's U:STRING: 02 and the first five bytes of md5("web1\n").
    ensure!(inside.contains("02:"), "{inside}");
    ensure!(
        m0.reaches("10.219.0.101")?,
        "macvlans on two hosts meet on the underlay"
    );
    ensure!(m1.reaches("10.219.0.254")?, "and reach the underlay");

    // The parent never reaches its macvlans...
    let host0 = &cluster.hosts[0].netns;
    ensure!(
        !host0.pings("10.219.0.100")?,
        "the host cannot reach its macvlan container"
    );
    // ...unless a host shim is asked for.
    cli_ok(
        &cluster.agents[0],
        &[
            "attach",
            "--host-shim",
            "eth0",
            m2.name(),
            "10.219.0.102/24",
        ],
    )?;
    ensure!(
        host0.reaches("10.219.0.102")?,
        "the host reaches it through the shim"
    );
    cli_ok(&cluster.agents[0], &["detach", m2.name()])?;
    cli_ok(&cluster.agents[0], &["detach", m0.name()])?;
    ensure!(links(host0)? == before, "detach removes the shim too");
    Ok(())
}

#[test]
fn a_linux_bridge_on_demand_idempotence_detach_and_refusals() -> Result<()> {
    // No OVS for this agent: a machine's own is never asked.
    let no_ovs = tempfile::Builder::new()
        .prefix("tt-noovs-")
        .tempdir_in("/tmp")?;
    let flag = format!("--ovsdb=unix:{}/db.sock", no_ovs.path().display());
    let mut cluster = Cluster::start_with("pwb", 220, VXLAN, 1, &[&flag])?;
    let host = cluster.hosts[0].netns.name().to_string();
    let x = Netns::create("pwbx")?;
    let y = Netns::create("pwby")?;
    let agent = &cluster.agents[0];
    cli_ok(
        agent,
        &["attach", "br1", x.name(), "192.168.220.10/24@192.168.220.1"],
    )?;
    let host_links = text(
        &cluster.hosts[0]
            .netns
            .exec("ip", &["-d", "link", "show", "br1"])?
            .stdout,
    );
    ensure!(host_links.contains("bridge"), "br1 made: {host_links}");
    tartan_tests::netns::ip(&["-n", &host, "addr", "add", "192.168.220.1/24", "dev", "br1"])?;
    let routes = text(&x.exec("ip", &["route"])?.stdout);
    ensure!(
        routes.contains("default via 192.168.220.1 dev eth1"),
        "{routes}"
    );
    ensure!(
        x.reaches("192.168.220.1")?,
        "the container reaches its gateway"
    );

    // Twice: one interface, and said so.
    let again = cli_ok(
        agent,
        &["attach", "br1", x.name(), "192.168.220.10/24@192.168.220.1"],
    )?;
    ensure!(again.contains("already attached"), "{again}");
    let inside = links(&x)?;
    ensure!(inside.matches("eth1").count() == 1, "{inside}");

    // A second interface with -i, a gateway outside the subnet, -l.
    cli_ok(
        agent,
        &[
            "attach",
            "-i",
            "eth2",
            "-l",
            "pwbhost",
            "br1",
            x.name(),
            "192.168.221.10/24@192.168.220.1",
        ],
    )?;
    ensure!(
        links(&cluster.hosts[0].netns)?.contains("pwbhost"),
        "-l names the host end"
    );
    let routes = text(&x.exec("ip", &["route"])?.stdout);
    ensure!(
        routes
            .lines()
            .any(|r| r.starts_with("192.168.220.1 dev eth2") && r.contains("scope link")),
        "a gateway outside the subnet gets a host route first: {routes}"
    );
    cli_ok(agent, &["detach", "-i", "eth2", x.name()])?;
    let inside = links(&x)?;
    ensure!(
        !inside.contains("eth2") && inside.contains("eth1"),
        "{inside}"
    );

    // Refused input: one line, and nothing changed on the host or in the container.
    let host_before = links(&cluster.hosts[0].netns)?;
    let inside_before = links(&y)?;
    let agent_pid = agent.pid().context("the agent's pid")?.to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &["attach", "br1", &agent_pid, "192.168.220.11/24"],
            "the agent's own network namespace",
        ),
        (
            &["attach", "br1", "tt-no-such-container", "192.168.220.11/24"],
            "no container",
        ),
        (
            &["attach", "nosuch0", y.name(), "192.168.220.11/24"],
            "no host interface named nosuch0",
        ),
        (
            &["attach", "br1", y.name(), "192.168.220.300/24"],
            "not an IPv4 address",
        ),
        (
            &["attach", "br1", y.name(), "192.168.220.11"],
            "prefix length",
        ),
        (
            &["attach", "br1", y.name(), "0/0@192.168.220.1"],
            "takes no gateway",
        ),
        (&["attach", "br1", y.name(), "dhcp"], "no DHCP client"),
        (
            &["attach", "--host-shim", "eth0", y.name(), "0/0"],
            "nothing for the host to route to",
        ),
        (
            &[
                "attach",
                "br1",
                y.name(),
                "192.168.220.11/24",
                "02:zz:00:00:00:01",
            ],
            "bad MAC",
        ),
        (
            &[
                "attach",
                "br1",
                y.name(),
                "192.168.220.11/24",
                "01:00:5e:00:00:01",
            ],
            "multicast",
        ),
        (
            &["attach", "br1", y.name(), "192.168.220.11/24", "@0"],
            "VLAN",
        ),
        (
            &["attach", "br1", y.name(), "192.168.220.11/24", "@4095"],
            "VLAN",
        ),
        (
            &["attach", "eth0", y.name(), "192.168.220.11/24", "@100"],
            "Open vSwitch",
        ),
        (
            &["attach", "br1", y.name(), "192.168.220.11/24", "@100"],
            "Open vSwitch",
        ),
        (
            &["attach", "br2", y.name(), "192.168.220.11/24", "@100"],
            "Open vSwitch",
        ),
        (
            &[
                "attach",
                "-i",
                "averyveryverylongname",
                "br1",
                y.name(),
                "192.168.220.11/24",
            ],
            "longer than 15",
        ),
        (
            &["attach", "br1", x.name(), "192.168.220.12/24"],
            "already has eth1",
        ),
        // The address another namespace has on the same bridge (pipework
        // would make the duplicate).
        (
            &["attach", "br1", y.name(), "192.168.220.10/24"],
            "192.168.220.10 is already attached to tt-pwbx-",
        ),
        (
            &["attach", "ovs9", y.name(), "192.168.220.11/24"],
            "Open vSwitch is needed",
        ),
        (
            &[
                "attach",
                "--host-shim",
                "br1",
                y.name(),
                "192.168.220.11/24",
            ],
            "macvlan",
        ),
        (&["detach", y.name()], "not attached"),
    ];
    for (args, needle) in cases {
        refused_with(agent, args, needle)?;
    }
    let host_after = links(&cluster.hosts[0].netns)?;
    ensure!(
        host_after == host_before,
        "nothing half-made on the host:\n{host_before}\nnow:\n{host_after}"
    );
    ensure!(
        links(&y)? == inside_before,
        "nothing half-made in the container"
    );

    // Weave's form takes -i too: a second interface on the node bridge.
    cli_ok(agent, &["attach", y.name()])?;
    cli_ok(agent, &["attach", "-i", "eth3", y.name()])?;
    let inside = addresses(&y)?;
    ensure!(
        inside.contains("eth0") && inside.contains("eth3"),
        "{inside}"
    );
    cli_ok(agent, &["detach", "-i", "eth3", y.name()])?;
    let inside = addresses(&y)?;
    ensure!(
        inside.contains("eth0") && !inside.contains("eth3"),
        "{inside}"
    );
    cli_ok(agent, &["detach", y.name()])?;
    ensure!(!addresses(&y)?.contains("eth0"), "{}", addresses(&y)?);

    // A restart re-applies an interface removed while the agent was down.
    let agent = &mut cluster.agents[0];
    agent.kill()?;
    tartan_tests::netns::ip(&["-n", x.name(), "link", "del", "eth1"])?;
    agent.restart()?;
    agent.wait_ready(READY)?;
    wait_until(FOLLOW, Duration::from_millis(100), || {
        Ok(addresses(&x)?.contains("192.168.220.10/24"))
    })
    .context("the attachment is made again")?;

    // Detaching the last user removes the bridge Tartan made.
    cli_ok(agent, &["detach", x.name()])?;
    ensure!(
        !links(&cluster.hosts[0].netns)?.contains("br1"),
        "br1 went with its last user"
    );

    // reset undoes what is recorded, as detach would, with no agent.
    cli_ok(agent, &["attach", "br1", x.name(), "192.168.220.10/24"])?;
    agent.kill()?;
    let tartan = tartan_tests::agent::tartan_bin()?;
    let out = cluster.hosts[0]
        .netns
        .command(&tartan.display().to_string())
        .arg("reset")
        .args(["--state-dir", &agent.state_dir().display().to_string()])
        .args(["--subnet-file", &agent.subnet_file().display().to_string()])
        .args(["--api-socket", &agent.api_socket().display().to_string()])
        .args(["--etcd-endpoints", &cluster.etcd.endpoint()])
        .args(["--etcd-prefix", &cluster.prefix])
        .arg(&flag)
        .output()
        .context("running tartan reset")?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("pipework-form attachments"),
        "reset: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    ensure!(
        !links(&cluster.hosts[0].netns)?.contains("br1") && !links(&x)?.contains("eth1"),
        "reset removed the attachment and its bridge"
    );
    Ok(())
}

#[test]
fn a_tartan_containers_attachment_follows_its_restarts_and_goes_with_it() -> Result<()> {
    let no_ovs = tempfile::Builder::new()
        .prefix("tt-noovs-")
        .tempdir_in("/tmp")?;
    let flag = format!("--ovsdb=unix:{}/db.sock", no_ovs.path().display());
    let cluster = Cluster::start_with("pwc", 223, VXLAN, 1, &[&flag])?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(
        agent,
        &["run", "-d", "--name", "pwweb", "busybox", "sleep", "1000"],
    )?;
    let in_web = || -> Result<String> {
        let pid = inspect(agent, "pwweb")?["state"]["pid"]
            .as_u64()
            .context("pwweb has no pid")?;
        let out = std::process::Command::new("nsenter")
            .args([
                &format!("--net=/proc/{pid}/ns/net"),
                "ip",
                "-o",
                "-4",
                "addr",
            ])
            .output()
            .context("running nsenter (util-linux)")?;
        Ok(text(&out.stdout))
    };
    cli_ok(agent, &["attach", "br5", "pwweb", "192.168.223.10/24"])?;
    ensure!(in_web()?.contains("eth1"), "{}", in_web()?);

    // A new process, a new namespace: the attachment is made again there
    // before restart returns (and before the command runs), and again at
    // a stop and start.
    for step in [
        &["restart", "-t", "0", "pwweb"][..],
        &["stop", "-t", "0", "pwweb"],
        &["start", "pwweb"],
    ] {
        cli_ok(agent, step)?;
        if step[0] == "stop" {
            continue;
        }
        let inside = in_web()?;
        ensure!(
            inside.contains("192.168.223.10/24"),
            "the attachment is back when {step:?} returns: {inside}; agent log:\n{}",
            agent.log_tail(20)
        );
    }

    // Removed with the container when rm returns, and the bridge made for it too.
    cli_ok(agent, &["rm", "-f", "pwweb"])?;
    let listed = cli_ok(agent, &["attachments", "-q"])?;
    ensure!(listed.trim().is_empty(), "rm took the attachment: {listed}");
    ensure!(
        !links(&cluster.hosts[0].netns)?.contains("br5"),
        "rm took the bridge made for it"
    );
    Ok(())
}

#[test]
fn no_address_0_0_makes_the_interface_up_on_its_bridge_and_vlan() -> Result<()> {
    let ovsdb = OvsdbLinks::new()?;
    let mut cluster = cluster_with_ovsdb("pwz", 150, 1, &ovsdb)?;
    let ovs = Ovs::start(&cluster.hosts[0].netns)?;
    ovsdb.point(&cluster.hosts[0].netns, &ovs)?;
    let agent = &cluster.agents[0];
    let bare = Netns::create("pwzbare")?;
    let peer = Netns::create("pwzpeer")?;
    let other = Netns::create("pwzother")?;

    // No address, with a MAC, a VLAN, -i and -l all still applied.
    let out = cli_ok(
        agent,
        &[
            "attach",
            "-i",
            "lan0",
            "-l",
            "pwzhost",
            "ovs0",
            bare.name(),
            "0/0",
            "02:00:00:15:00:01@100",
        ],
    )?;
    ensure!(out.trim() == "0/0", "attach printed {out}");
    let link = text(&bare.exec("ip", &["-o", "link", "show", "lan0"])?.stdout);
    ensure!(
        link.contains("state UP") && link.contains("link/ether 02:00:00:15:00:01"),
        "up, with the MAC asked for: {link}"
    );
    ensure!(
        !addresses(&bare)?.contains("lan0"),
        "no IPv4 address: {}",
        addresses(&bare)?
    );
    let routes = text(&bare.exec("ip", &["-4", "route"])?.stdout);
    ensure!(routes.trim().is_empty(), "no route: {routes}");
    let port = ovs.vsctl(&["--columns=tag", "--format=csv", "list", "Port", "pwzhost"])?;
    ensure!(port.contains("100"), "an access port of VLAN 100: {port}");
    let listed = cli_ok(agent, &["attachments"])?;
    ensure!(
        listed.contains(bare.name()) && listed.contains("0/0"),
        "{listed}"
    );

    // The interface is where it was asked to be: an address given by hand
    // (as a DHCP client would) reaches VLAN 100 and not VLAN 200.
    cli_ok(
        agent,
        &["attach", "ovs0", peer.name(), "192.168.150.2/24", "@100"],
    )?;
    cli_ok(
        agent,
        &["attach", "ovs0", other.name(), "192.168.150.3/24", "@200"],
    )?;
    tartan_tests::netns::ip(&[
        "-n",
        bare.name(),
        "addr",
        "add",
        "192.168.150.1/24",
        "dev",
        "lan0",
    ])?;
    ensure!(bare.reaches("192.168.150.2")?, "VLAN 100 reached");
    ensure!(
        !bare.pings("192.168.150.3")?,
        "VLAN 200 must not be reached"
    );
    tartan_tests::netns::ip(&[
        "-n",
        bare.name(),
        "addr",
        "del",
        "192.168.150.1/24",
        "dev",
        "lan0",
    ])?;

    // Asking again is the same request; an agent restart keeps the record.
    let again = cli_ok(
        agent,
        &[
            "attach",
            "-i",
            "lan0",
            "-l",
            "pwzhost",
            "ovs0",
            bare.name(),
            "0/0",
            "02:00:00:15:00:01@100",
        ],
    )?;
    ensure!(again.contains("already attached"), "{again}");
    let agent = &mut cluster.agents[0];
    agent.kill()?;
    tartan_tests::netns::ip(&["-n", bare.name(), "link", "del", "lan0"])?;
    agent.restart()?;
    agent.wait_ready(READY)?;
    wait_until(FOLLOW, Duration::from_millis(100), || {
        let link = text(&bare.exec("ip", &["-o", "link", "show", "lan0"])?.stdout);
        Ok(link.contains("state UP"))
    })
    .context("the attachment with no address is made again")?;
    ensure!(
        !addresses(&bare)?.contains("lan0"),
        "still no address: {}",
        addresses(&bare)?
    );

    // A Linux bridge takes one too, its host end on the bridge.
    cli_ok(
        agent,
        &["attach", "-i", "eth2", "br150", peer.name(), "0/0"],
    )?;
    let host_end = text(
        &cluster.hosts[0]
            .netns
            .exec("ip", &["-o", "link", "show", "master", "br150"])?
            .stdout,
    );
    ensure!(
        host_end.lines().count() == 1,
        "one port on br150: {host_end}"
    );
    ensure!(
        text(&peer.exec("ip", &["-o", "link", "show", "eth2"])?.stdout).contains("state UP"),
        "eth2 is up"
    );

    cli_ok(agent, &["detach", "-i", "lan0", bare.name()])?;
    ensure!(
        !links(&bare)?.contains("lan0"),
        "detach removes it: {}",
        links(&bare)?
    );
    Ok(())
}
