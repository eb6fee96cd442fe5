//! The harness itself: if these fail, every other integration test's verdict is suspect.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tartan_tests::etcd::EtcdServer;
use tartan_tests::netns::{Netns, Underlay};
use tartan_tests::ovs::Ovs;
use tartan_tests::proxy::TcpProxy;
use tartan_tests::wait::wait_until;
use tartan_tests::{compact, prereq, put_flannel_config, put_lease, unique_prefix};

fn prerequisites() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("etcd")?;
    prereq::require_binary("ip")?;
    Ok(())
}

fn netns_list() -> Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restarts_with_its_data_on_the_same_port() -> Result<()> {
    prerequisites()?;
    let mut etcd = EtcdServer::start()?;
    let other = EtcdServer::start()?;
    ensure!(
        etcd.endpoint() != other.endpoint(),
        "two etcds share {}",
        etcd.endpoint()
    );
    let prefix = unique_prefix("restart");
    etcd.client()
        .await?
        .put(format!("{prefix}/k"), "v", None)
        .await?;
    let endpoint = etcd.endpoint();
    etcd.kill()?;
    ensure!(etcd.pid().is_none(), "killed etcd still has a pid");
    etcd.restart()?;
    assert_eq!(etcd.endpoint(), endpoint, "restart keeps the port");
    let resp = etcd
        .client()
        .await?
        .get(format!("{prefix}/k"), None)
        .await?;
    assert_eq!(
        resp.kvs().first().map(|kv| kv.value().to_vec()),
        Some(b"v".to_vec()),
        "restart keeps the data"
    );
    // The other one never noticed.
    other
        .client()
        .await?
        .get(format!("{prefix}/k"), None)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_etcd_answers_nothing_until_resumed() -> Result<()> {
    prerequisites()?;
    let etcd = EtcdServer::start()?;
    let mut client = etcd.client().await?;
    let prefix = unique_prefix("pause");
    client.put(format!("{prefix}/k"), "v", None).await?;
    etcd.pause()?;
    let stalled = tokio::time::timeout(
        Duration::from_secs(2),
        client.get(format!("{prefix}/k"), None),
    )
    .await;
    ensure!(stalled.is_err(), "a stopped etcd answered: {stalled:?}");
    etcd.resume()?;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(format!("{prefix}/k"), None),
    )
    .await
    .context("no answer within 10s of SIGCONT")??;
    assert_eq!(resp.kvs().len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_helpers_write_flannel_keys_and_compact() -> Result<()> {
    prerequisites()?;
    let etcd = EtcdServer::start()?;
    let mut client = etcd.client().await?;
    let prefix = unique_prefix("helpers");
    put_flannel_config(&mut client, &prefix, r#"{"Network":"10.5.0.0/16"}"#).await?;
    let lease = r#"{"PublicIP":"10.0.0.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;
    put_lease(&mut client, &prefix, "10.5.34.0-24", lease, Some(60)).await?;
    put_lease(&mut client, &prefix, "10.5.35.0-24", lease, None).await?;
    let with_ttl = client
        .get(format!("{prefix}/subnets/10.5.34.0-24"), None)
        .await?;
    let kv = with_ttl.kvs().first().context("lease written")?;
    assert_eq!(kv.value_str()?, lease);
    ensure!(kv.lease() != 0, "a TTL attaches an etcd lease");
    let without = client
        .get(format!("{prefix}/subnets/10.5.35.0-24"), None)
        .await?;
    assert_eq!(without.kvs().first().map(|kv| kv.lease()), Some(0));
    let config = client.get(format!("{prefix}/config"), None).await?;
    assert_eq!(config.kvs().len(), 1);

    let revision = compact(&mut client).await?;
    let old = client
        .get(
            format!("{prefix}/config"),
            Some(etcd_client::GetOptions::new().with_revision(revision - 1)),
        )
        .await;
    ensure!(old.is_err(), "a compacted revision is still readable");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_forwards_cuts_and_restores() -> Result<()> {
    prerequisites()?;
    let etcd = EtcdServer::start()?;
    let proxy = TcpProxy::start(etcd.client_addr())?;
    assert_eq!(proxy.endpoint(), format!("http://{}", proxy.addr()));
    // A request timeout: under load, tonic may hold a request while it
    // reconnects rather than fail it; through a cut proxy it must not succeed.
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(3));
    let mut client =
        etcd_client::Client::connect([proxy.endpoint()], Some(options.clone())).await?;
    client.put("/p", "1", None).await?;
    proxy.cut();
    let cut = tokio::time::timeout(Duration::from_secs(10), client.get("/p", None)).await;
    ensure!(
        matches!(cut, Ok(Err(_))),
        "a request through a cut proxy must fail, and fail fast: {cut:?}"
    );
    // New connections are closed at once too: etcd itself stays up meanwhile.
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        etcd_client::Client::connect([proxy.endpoint()], Some(options))
            .await?
            .get("/p", None)
            .await
    })
    .await;
    ensure!(
        matches!(fresh, Ok(Err(_))),
        "a fresh client through a cut proxy must fail: {fresh:?}"
    );
    etcd.client().await?.put("/p", "2", None).await?;

    proxy.restore();
    let mut fresh = etcd_client::Client::connect([proxy.endpoint()], None).await?;
    let resp = tokio::time::timeout(Duration::from_secs(10), fresh.get("/p", None)).await??;
    assert_eq!(resp.kvs().first().map(|kv| kv.value()), Some(&b"2"[..]));
    // The first client reconnects by itself.
    let again = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(resp) = client.get("/p", None).await {
                return resp;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .context("the original client never got through the restored proxy")?;
    assert_eq!(again.kvs().len(), 1);
    Ok(())
}

#[test]
fn underlay_hosts_reach_each_other_and_vanish_on_drop() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("ip")?;
    prereq::require_binary("ping")?;
    let names;
    {
        let underlay = Underlay::create("hs", ("10.233.0.0".parse()?, 24))?;
        let a = underlay.add_host("a")?;
        let b = underlay.add_host("b")?;
        assert_eq!(a.ip.to_string(), "10.233.0.1");
        assert_eq!(b.ip.to_string(), "10.233.0.2");
        assert_eq!(underlay.hub_ip().to_string(), "10.233.0.254");
        let ping = a
            .netns
            .exec("ping", &["-c", "1", "-W", "2", &b.ip.to_string()])?;
        ensure!(
            ping.status.success(),
            "ping failed: {}{}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr)
        );
        let hub = underlay
            .hub()
            .exec("ping", &["-c", "1", "-W", "2", &a.ip.to_string()])?;
        ensure!(hub.status.success(), "the hub reaches the hosts");
        let route = a.netns.exec("ip", &["route", "show", "default"])?;
        ensure!(
            String::from_utf8_lossy(&route.stdout).contains("via 10.233.0.254 dev eth0"),
            "default route: {}",
            String::from_utf8_lossy(&route.stdout)
        );
        names = [
            a.netns.name().to_string(),
            b.netns.name().to_string(),
            underlay.hub().name().to_string(),
        ];
        ensure!(
            a.netns.path().exists(),
            "{} missing",
            a.netns.path().display()
        );
    }
    let list = netns_list()?;
    for name in names {
        ensure!(!list.contains(&name), "{name} left behind");
    }
    Ok(())
}

#[test]
fn dropping_the_underlay_takes_surviving_hosts_with_it() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("ip")?;
    let underlay = Underlay::create("hd", ("10.233.1.0".parse()?, 24))?;
    let host = underlay.add_host("a")?;
    // A process left running in the host must not keep it alive.
    let mut sleeper = host.netns.command("sleep").arg("60").spawn()?;
    let name = host.netns.name().to_string();
    // `ip netns exec` enters the namespace after the spawn returns: wait
    // until it has, or the drop below could miss a process not yet inside.
    let pid = sleeper.id().to_string();
    wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &name])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line.trim() == pid))
    })?;
    drop(underlay);
    ensure!(
        !netns_list()?.contains(&name),
        "{name} outlived its underlay"
    );
    let status = sleeper.wait()?;
    ensure!(!status.success(), "the process in the namespace was killed");
    drop(host);
    Ok(())
}

#[test]
fn a_thread_can_enter_a_namespace() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("ip")?;
    let ns = Netns::create("enter")?;
    ns.run("ip", &["addr", "add", "10.233.2.1/32", "dev", "lo"], &[])?;
    // The thread is in the namespace (same inode), the address it added is there to bind.
    let (inside, port) = ns.enter(|| -> Result<_> {
        let inside = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
        let listener = std::net::TcpListener::bind(("10.233.2.1", 0))?;
        Ok((inside, listener.local_addr()?.port()))
    })??;
    ensure!(port != 0);
    assert_eq!(inside, std::fs::metadata(ns.path())?.ino());
    // …and the rest of the process stayed where it was.
    ensure!(std::fs::metadata("/proc/self/ns/net")?.ino() != inside);
    ensure!(std::fs::metadata("/proc/thread-self/ns/net")?.ino() != inside);
    Ok(())
}

#[test]
fn etcd_in_the_hub_is_reachable_from_a_host() -> Result<()> {
    prerequisites()?;
    prereq::require_binary("etcdctl")?;
    let underlay = Underlay::create("he", ("10.233.3.0".parse()?, 24))?;
    let etcd = EtcdServer::start_on(underlay.hub_ip(), Some(underlay.hub().name()))?;
    ensure!(
        etcd.endpoint()
            .starts_with(&format!("http://{}:", underlay.hub_ip())),
        "{}",
        etcd.endpoint()
    );
    let host = underlay.add_host("a")?;
    let key = format!("{}/k", unique_prefix("hub"));
    let etcdctl = |args: &[&str]| -> Result<String> {
        let mut full = vec!["--endpoints", &etcd.endpoint(), "--dial-timeout", "3s"]
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        full.extend(args.iter().map(|a| a.to_string()));
        let out = host
            .netns
            .command("etcdctl")
            .args(&full)
            .env("ETCDCTL_API", "3")
            .output()?;
        ensure!(
            out.status.success(),
            "etcdctl {args:?} from the host failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    etcdctl(&["endpoint", "health"])?;
    etcdctl(&["put", &key, "from-host"])?;
    let got = etcdctl(&["get", "--print-value-only", &key])?;
    assert_eq!(got.trim(), "from-host");
    Ok(())
}

#[test]
fn a_private_ovs_runs_in_its_namespace_and_goes_on_drop() -> Result<()> {
    let ns = Netns::create("ovs")?;
    let ovs = Ovs::start(&ns)?;
    let run_dir = ovs.run_dir().to_path_buf();
    ensure!(ovs.socket().starts_with(&run_dir), "{:?}", ovs.socket());
    let pids = ovs.pids()?;
    for pid in &pids {
        ensure!(
            tartan_tests::ovs::process_running(*pid),
            "daemon {pid} is not running"
        );
    }
    let netns_inode = std::fs::metadata(ns.path())?.ino();
    for pid in &pids {
        let inode = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
        ensure!(
            inode == netns_inode,
            "daemon {pid} runs outside {}",
            ns.name()
        );
    }
    // The switch makes the bridge's device, a TAP on the userspace datapath,
    // in its own namespace.
    ovs.vsctl(&[
        "add-br",
        "ovs0",
        "--",
        "set",
        "Bridge",
        "ovs0",
        "datapath_type=netdev",
    ])?;
    wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        Ok(ns.exec("ip", &["link", "show", "ovs0"])?.status.success())
    })
    .context("ovs0 never appeared in the namespace")?;
    ensure!(ovs.vsctl(&["list-br"])?.trim() == "ovs0");

    drop(ovs);
    for pid in pids {
        ensure!(
            !tartan_tests::ovs::process_running(pid),
            "daemon {pid} outlived the switch"
        );
    }
    ensure!(
        !run_dir.exists(),
        "{} outlived the switch",
        run_dir.display()
    );
    Ok(())
}
