//! Names on the network: `--link` and `--add-host` in `/etc/hosts`, as
//! Docker writes them.

use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;
use tartan_tests::cli::{cli_ok, import_busybox, text, VXLAN};
use tartan_tests::containers::inspect;

use tartan_tests::cluster::{Cluster, READY};
use tartan_tests::wait::wait_until;

#[test]
fn links_and_added_hosts_are_written_into_etc_hosts() -> Result<()> {
    let cluster = Cluster::start("nl", 198, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(
        agent,
        &["run", "-d", "--name", "c1", "busybox", "sleep", "1000"],
    )?;
    let c1 = inspect(agent, "c1")?;
    let (Some(c1_ip), Some(c1_hostname)) = (
        c1["network"]["ip_address"].as_str(),
        c1["config"]["hostname"].as_str(),
    ) else {
        bail!("c1 has no address or hostname: {c1}");
    };

    // The seed's sequence.
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "c2",
            "--link=c1:mysqlone",
            "--link",
            "c1",
            "--add-host",
            "db.example:10.9.8.7",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let hosts = cli_ok(agent, &["exec", "c2", "cat", "/etc/hosts"])?;
    let lines: Vec<&str> = hosts.lines().collect();
    let added = lines.iter().position(|l| *l == "10.9.8.7\tdb.example");
    let aliased = lines
        .iter()
        .position(|l| *l == format!("{c1_ip}\tmysqlone {c1_hostname} c1"));
    let named = lines
        .iter()
        .position(|l| *l == format!("{c1_ip}\tc1 {c1_hostname}"));
    ensure!(
        matches!((added, aliased, named), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "/etc/hosts of c2:\n{hosts}"
    );
    let ping = agent.cli(&["exec", "c2", "ping", "-c1", "-W2", "mysqlone"])?;
    ensure!(
        ping.status.success(),
        "ping mysqlone: {}{}",
        text(&ping.stdout),
        text(&ping.stderr)
    );

    // Docker's errors, and nothing made.
    let before = cli_ok(agent, &["ps", "-a", "-q"])?;
    let refused = [
        (
            vec!["--link", "nosuch:db"],
            "could not get container for nosuch: No such container: nosuch",
        ),
        (
            vec!["--add-host", "nocolon"],
            "bad format for add-host: \"nocolon\"",
        ),
        (
            vec!["--add-host", "db:300.1.2.3"],
            "invalid IP address in add-host: \"300.1.2.3\"",
        ),
    ];
    for (flags, wanted) in refused {
        let mut args = vec!["run", "-d", "--name", "c3"];
        args.extend(flags.iter().copied());
        args.extend(["busybox", "sleep", "1000"]);
        let out = agent.cli(&args)?;
        let stderr = text(&out.stderr);
        ensure!(
            !out.status.success() && stderr.contains(wanted) && stderr.trim().lines().count() == 1,
            "{flags:?}: {stderr}"
        );
    }
    cli_ok(agent, &["stop", "-t", "0", "c1"])?;
    let out = agent.cli(&[
        "run", "-d", "--name", "c3", "--link", "c1:db", "busybox", "sleep", "1000",
    ])?;
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("Cannot link to a non running container: /c1 AS /c3/db"),
        "a stopped link: {stderr}"
    );
    let c2 = inspect(agent, "c2")?;
    ensure!(
        c2["host_config"]["links"] == serde_json::json!(["c1:mysqlone", "c1:c1"])
            && c2["host_config"]["extra_hosts"] == serde_json::json!(["db.example:10.9.8.7"]),
        "inspect c2: {}",
        c2["host_config"]
    );
    // Without --name, the error names the container the run would have made.
    let out = agent.cli(&["run", "-d", "--link", "c1:db", "busybox", "true"])?;
    let stderr = text(&out.stderr);
    ensure!(
        !out.status.success()
            && stderr.contains("Cannot link to a non running container: /c1 AS /")
            && !stderr.contains("AS //db")
            && stderr.trim().lines().count() == 1,
        "a stopped link, no name: {stderr}"
    );
    ensure!(
        cli_ok(agent, &["ps", "-a", "-q"])? == before,
        "a refused run left a container"
    );
    Ok(())
}

/// The keys of the fabric's names registry, under Tartan's prefix.
fn name_keys(cluster: &Cluster) -> Result<Vec<String>> {
    let keys = cluster.etcdctl(&["get", "--prefix", "--keys-only", "/tartan/"])?;
    Ok(keys
        .lines()
        .filter(|k| k.contains("/names/"))
        .map(str::to_string)
        .collect())
}

#[test]
fn a_name_is_the_fabric_s_and_goes_with_its_container() -> Result<()> {
    let cluster = Cluster::start("nn", 199, VXLAN, 2)?;
    let (h0, h1) = (&cluster.agents[0], &cluster.agents[1]);
    import_busybox(h0)?;
    import_busybox(h1)?;
    cli_ok(
        h1,
        &[
            "run",
            "-d",
            "--name",
            "db",
            "--network-alias",
            "database",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let db_id = inspect(h1, "db")?["id"]
        .as_str()
        .map(str::to_string)
        .context("db has no id")?;
    let keys = name_keys(&cluster)?;
    ensure!(
        keys.iter().any(|k| k.ends_with("/names/db"))
            && keys.iter().any(|k| k.ends_with("/names/database")),
        "names in etcd: {keys:?}"
    );

    // The name and the alias are refused on the other host, nothing made.
    let before = cli_ok(h0, &["ps", "-a", "-q"])?;
    for (flags, name) in [
        (vec!["--name", "db"], "db"),
        (
            vec!["--name", "web", "--network-alias", "database"],
            "database",
        ),
    ] {
        let mut args = vec!["run", "-d"];
        args.extend(flags.iter().copied());
        args.extend(["busybox", "sleep", "1000"]);
        let out = h0.cli(&args)?;
        let stderr = text(&out.stderr);
        let wanted = format!(
            "Conflict. The container name \"/{name}\" is already in use by container \"{db_id}\""
        );
        ensure!(
            !out.status.success() && stderr.contains(&wanted) && stderr.trim().lines().count() == 1,
            "{flags:?}: {stderr}"
        );
    }
    ensure!(
        cli_ok(h0, &["ps", "-a", "-q"])? == before,
        "a refused run left a container"
    );
    let keys = name_keys(&cluster)?;
    ensure!(
        !keys.iter().any(|k| k.ends_with("/names/web")),
        "a refused run left its name: {keys:?}"
    );

    // Removed with the container: the name is free on the other host.
    cli_ok(h1, &["rm", "-f", "db"])?;
    let keys = name_keys(&cluster)?;
    ensure!(keys.is_empty(), "names left after rm: {keys:?}");
    cli_ok(
        h0,
        &["run", "-d", "--name", "db", "busybox", "sleep", "1000"],
    )?;
    Ok(())
}

#[test]
fn names_of_a_container_removed_while_etcd_is_away_are_freed_at_the_next_start() -> Result<()> {
    let mut cluster = Cluster::start("nr", 245, VXLAN, 1)?;
    import_busybox(&cluster.agents[0])?;
    cli_ok(
        &cluster.agents[0],
        &["run", "-d", "--name", "gone", "busybox", "sleep", "1000"],
    )?;
    ensure!(
        name_keys(&cluster)?
            .iter()
            .any(|k| k.ends_with("/names/gone")),
        "the name is not in etcd"
    );
    // A hung etcd (dropping the cluster kills it, paused or not).
    cluster.etcd.pause()?;
    let removed = cluster.agents[0].cli(&["rm", "-f", "gone"]);
    cluster.etcd.resume()?;
    let removed = removed?;
    ensure!(
        removed.status.success(),
        "rm with etcd away: {}",
        text(&removed.stderr)
    );
    ensure!(
        name_keys(&cluster)?
            .iter()
            .any(|k| k.ends_with("/names/gone")),
        "the name went although etcd was away"
    );
    cluster.agents[0].terminate()?;
    cluster.agents[0].restart()?;
    cluster.agents[0].wait_ready(READY)?;
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        Ok(!name_keys(&cluster)?
            .iter()
            .any(|k| k.ends_with("/names/gone")))
    })
    .context("the name of a removed container outlived the agent's restart")?;
    Ok(())
}

#[test]
fn links_give_the_linked_containers_ports_and_environment_as_variables() -> Result<()> {
    let cluster = Cluster::start("ne", 116, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_busybox(agent)?;
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "c1",
            "-p",
            "5353/udp",
            "-p",
            "80",
            "-e",
            "DB_PASSWORD=secret",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let c1 = inspect(agent, "c1")?;
    let Some(ip) = c1["network"]["ip_address"].as_str() else {
        bail!("c1 has no address: {c1}");
    };
    cli_ok(
        agent,
        &[
            "run", "-d", "--name", "c2", "--link", "c1:my-db", "busybox", "sleep", "1000",
        ],
    )?;
    let wanted = [
        format!("MY_DB_PORT=tcp://{ip}:80"),
        format!("MY_DB_PORT_80_TCP=tcp://{ip}:80"),
        format!("MY_DB_PORT_80_TCP_ADDR={ip}"),
        "MY_DB_PORT_80_TCP_PORT=80".to_string(),
        "MY_DB_PORT_80_TCP_PROTO=tcp".to_string(),
        format!("MY_DB_PORT_5353_UDP=udp://{ip}:5353"),
        format!("MY_DB_PORT_5353_UDP_ADDR={ip}"),
        "MY_DB_PORT_5353_UDP_PORT=5353".to_string(),
        "MY_DB_PORT_5353_UDP_PROTO=udp".to_string(),
        "MY_DB_NAME=/c2/my-db".to_string(),
        "MY_DB_ENV_DB_PASSWORD=secret".to_string(),
    ];
    // The container's own process has them, and so does an exec, as in Docker.
    let environ = cli_ok(agent, &["exec", "c2", "cat", "/proc/1/environ"])?;
    let environ: Vec<&str> = environ.split('\0').collect();
    let exec_env = cli_ok(agent, &["exec", "c2", "cat", "/proc/self/environ"])?;
    let exec_env: Vec<&str> = exec_env.split('\0').collect();
    for var in &wanted {
        ensure!(
            environ.contains(&var.as_str()),
            "{var} not in c2's environment: {environ:?}"
        );
        ensure!(
            exec_env.contains(&var.as_str()),
            "{var} not in an exec's environment: {exec_env:?}"
        );
    }
    // Docker passes neither PATH and HOME nor the linked container's hostname.
    ensure!(
        !environ
            .iter()
            .any(|v| v.starts_with("MY_DB_ENV_PATH=") || v.starts_with("MY_DB_ENV_HOSTNAME=")),
        "{environ:?}"
    );
    Ok(())
}
