//! The harness itself: if these fail, every other integration test's verdict is suspect.

use std::time::Duration;

use anyhow::{ensure, Result};
use tartan_tests::etcd::EtcdServer;
use tartan_tests::netns::Underlay;
use tartan_tests::prereq;
use tartan_tests::proxy::TcpProxy;

#[tokio::test(flavor = "multi_thread")]
async fn etcd_restarts_with_its_data_on_the_same_port() -> Result<()> {
    prereq::require_root()?;
    let mut etcd = EtcdServer::start()?;
    let other = EtcdServer::start()?;
    ensure!(etcd.endpoint() != other.endpoint());
    etcd.client().await?.put("/k", "v", None).await?;
    etcd.kill()?;
    etcd.restart()?;
    let resp = etcd.client().await?.get("/k", None).await?;
    assert_eq!(
        resp.kvs().first().map(|kv| kv.value().to_vec()),
        Some(b"v".to_vec())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_forwards_cuts_and_restores() -> Result<()> {
    prereq::require_root()?;
    let etcd = EtcdServer::start()?;
    let proxy = TcpProxy::start(etcd.client_addr())?;
    let mut client = etcd_client::Client::connect([proxy.endpoint()], None).await?;
    client.put("/p", "1", None).await?;
    proxy.cut();
    let cut = tokio::time::timeout(Duration::from_secs(10), client.get("/p", None)).await;
    ensure!(
        !matches!(cut, Ok(Ok(_))),
        "a request through a cut proxy must fail"
    );
    proxy.restore();
    let mut fresh = etcd_client::Client::connect([proxy.endpoint()], None).await?;
    let resp = tokio::time::timeout(Duration::from_secs(10), fresh.get("/p", None)).await??;
    assert_eq!(resp.kvs().len(), 1);
    Ok(())
}

#[test]
fn underlay_hosts_reach_each_other_and_vanish_on_drop() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("ping")?;
    let names;
    {
        let underlay = Underlay::create("hs", ("10.233.0.0".parse()?, 24))?;
        let a = underlay.add_host("a")?;
        let b = underlay.add_host("b")?;
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
        names = [
            a.netns.name().to_string(),
            b.netns.name().to_string(),
            underlay.hub().name().to_string(),
        ];
    }
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    for name in names {
        ensure!(!list.contains(&name), "{name} left behind");
    }
    Ok(())
}
