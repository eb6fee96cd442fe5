//! The install script and the systemd unit: installed into a staging root
//! (never the machine's own), checked with systemd's own verifier.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use tartan_tests::agent::tartan_bin;
use tartan_tests::prereq;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn mode(path: &Path) -> Result<u32> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("{} was not installed", path.display()))?
        .permissions()
        .mode()
        & 0o7777)
}

fn install_into(root: &Path) -> Result<String> {
    let out = Command::new(repo_root().join("scripts/install.sh"))
        .env("DESTDIR", root)
        .env("TARTAN_BIN", tartan_bin()?)
        .output()
        .context("running scripts/install.sh")?;
    ensure!(
        out.status.success(),
        "install.sh: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_unit_installs_as_the_readme_says_and_systemd_accepts_it() -> Result<()> {
    prereq::require_root()?;
    prereq::require_binary("systemd-analyze")?;
    let root = tempfile::tempdir()?;
    install_into(root.path())?;
    ensure!(mode(&root.path().join("usr/local/bin/tartan"))? == 0o755);
    ensure!(
        mode(&root.path().join("etc/default/tartan"))? == 0o600,
        "the settings may hold the etcd password"
    );
    let unit = std::fs::read_to_string(root.path().join("etc/systemd/system/tartan.service"))?;
    for line in [
        "Type=notify",
        "Delegate=yes",
        "TasksMax=infinity",
        "LimitNOFILE=1048576",
        "KillMode=process",
        "TimeoutStartSec=infinity",
    ] {
        ensure!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }

    // The verifier resolves the unit's dependencies (sysinit.target, …)
    // under the root it is given: lend it the system's own unit files.
    let units = Path::new("/usr/lib/systemd/system");
    ensure!(
        units.is_dir(),
        "this test needs systemd's unit files in {}",
        units.display()
    );
    let staged = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&staged)?;
    let copied = Command::new("cp")
        .arg("-a")
        .arg(units)
        .arg(&staged)
        .status()?;
    ensure!(copied.success(), "copying {}", units.display());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("tartan.service")
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    Ok(())
}

#[test]
fn settings_holding_a_password_are_made_private() -> Result<()> {
    prereq::require_root()?;
    let root = tempfile::tempdir()?;
    let settings = root.path().join("etc/default/tartan");
    std::fs::create_dir_all(settings.parent().context("a parent")?)?;
    std::fs::write(&settings, "TARTAN_ETCD_PASSWORD=secret\n")?;
    std::fs::set_permissions(&settings, std::fs::Permissions::from_mode(0o644))?;
    let said = install_into(root.path())?;
    ensure!(mode(&settings)? == 0o600, "still {:o}", mode(&settings)?);
    ensure!(said.contains("made it 0600"), "{said}");
    ensure!(
        std::fs::read_to_string(&settings)? == "TARTAN_ETCD_PASSWORD=secret\n",
        "the settings are kept"
    );
    Ok(())
}
