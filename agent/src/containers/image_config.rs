//! An image's own settings applied at `run`, with Docker's rules: the
//! command given replaces the image's `Cmd`; `--entrypoint` replaces its
//! `Entrypoint` and drops its `Cmd`; `-e` entries override the image's
//! `Env` by key; `-w` and `-u` replace `WorkingDir` and `User`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use tartan_runtime::container::ContainerSpec;
use tartan_runtime::image::ImageConfig;

/// What `run` said about the settings an image also has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageOverrides {
    /// `--entrypoint`: `Some("")` clears the image's.
    pub entrypoint: Option<String>,
    /// `-u`/`--user`.
    pub user: Option<String>,
    /// `-w`, absolute.
    pub workdir: Option<PathBuf>,
}

/// Fills `spec` (whose `args` and `env` are the operator's) from the image's
/// `config` and the overrides. An image without a config (a plain rootfs
/// from `import`) runs the given command, or `/bin/sh`.
pub fn apply(
    spec: &mut ContainerSpec,
    config: Option<&ImageConfig>,
    overrides: &ImageOverrides,
) -> Result<()> {
    let Some(config) = config else {
        if spec.args.is_empty()
            && overrides
                .entrypoint
                .as_deref()
                .unwrap_or_default()
                .is_empty()
        {
            spec.args = vec!["/bin/sh".into()];
        }
        spec.entrypoint = overrides
            .entrypoint
            .iter()
            .filter(|e| !e.is_empty())
            .cloned()
            .collect();
        spec.cmd = spec.args.clone();
        spec.args = [spec.entrypoint.clone(), spec.cmd.clone()].concat();
        spec.cwd = overrides.workdir.clone().unwrap_or_else(|| "/".into());
        spec.user = overrides.user.clone().unwrap_or_default();
        return Ok(());
    };
    spec.entrypoint = match &overrides.entrypoint {
        Some(entrypoint) if entrypoint.is_empty() => Vec::new(),
        Some(entrypoint) => vec![entrypoint.clone()],
        None => config.entrypoint.clone(),
    };
    spec.cmd = if !spec.args.is_empty() {
        spec.args.clone()
    } else if overrides.entrypoint.is_some() {
        // As Docker: a new entrypoint does not take the image's arguments.
        Vec::new()
    } else {
        config.cmd.clone()
    };
    spec.args = [spec.entrypoint.clone(), spec.cmd.clone()].concat();
    if spec.args.is_empty() {
        bail!("No command specified");
    }
    let mut env = config.env.clone();
    env.append(&mut spec.env);
    spec.env = env;
    spec.cwd = match &overrides.workdir {
        Some(dir) => dir.clone(),
        // A relative WorkingDir is taken from /, as Docker does.
        None => PathBuf::from("/").join(&config.working_dir),
    };
    spec.user = overrides
        .user
        .clone()
        .unwrap_or_else(|| config.user.clone());
    spec.exposed_ports = config.exposed_ports.clone();
    spec.image_volumes = config.volumes.clone();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into(), "-v".into()],
            cmd: vec!["serve".into()],
            env: vec!["PATH=/opt/bin".into(), "MODE=image".into()],
            working_dir: "/srv".into(),
            user: "app".into(),
            ..ImageConfig::default()
        }
    }

    fn applied(args: &[&str], overrides: ImageOverrides) -> Result<ContainerSpec> {
        let mut spec = ContainerSpec {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec!["MODE=flag".into()],
            ..ContainerSpec::default()
        };
        apply(&mut spec, Some(&image()), &overrides)?;
        Ok(spec)
    }

    #[test]
    fn dockers_rules_combine_the_image_and_the_flags() {
        let plain = applied(&[], ImageOverrides::default()).expect("plain");
        assert_eq!(plain.args, ["/entry", "-v", "serve"]);
        assert_eq!(plain.env, ["PATH=/opt/bin", "MODE=image", "MODE=flag"]);
        assert_eq!(
            (plain.cwd.to_str(), plain.user.as_str()),
            (Some("/srv"), "app")
        );
        let command = applied(&["check"], ImageOverrides::default()).expect("cmd");
        assert_eq!(command.args, ["/entry", "-v", "check"]);
        let entry = ImageOverrides {
            entrypoint: Some("/bin/echo".into()),
            user: Some("0".into()),
            workdir: Some("/tmp".into()),
        };
        let replaced = applied(&[], entry.clone()).expect("entrypoint");
        assert_eq!(replaced.args, ["/bin/echo"]);
        assert_eq!(
            (replaced.cwd.to_str(), replaced.user.as_str()),
            (Some("/tmp"), "0")
        );
        assert_eq!(
            applied(&["hi"], entry).expect("both").args,
            ["/bin/echo", "hi"]
        );
        let cleared = ImageOverrides {
            entrypoint: Some(String::new()),
            ..ImageOverrides::default()
        };
        assert_eq!(applied(&["ls"], cleared.clone()).expect("ls").args, ["ls"]);
        let none = applied(&[], cleared).expect_err("nothing to run");
        assert_eq!(none.to_string(), "No command specified");
    }

    #[test]
    fn a_plain_rootfs_runs_the_command_or_a_shell() {
        let mut spec = ContainerSpec::default();
        apply(&mut spec, None, &ImageOverrides::default()).expect("shell");
        assert_eq!(spec.args, ["/bin/sh"]);
        let mut spec = ContainerSpec {
            args: vec!["-c".into(), "true".into()],
            ..ContainerSpec::default()
        };
        let overrides = ImageOverrides {
            entrypoint: Some("/bin/sh".into()),
            ..ImageOverrides::default()
        };
        apply(&mut spec, None, &overrides).expect("entrypoint");
        assert_eq!(spec.args, ["/bin/sh", "-c", "true"]);
    }
}
