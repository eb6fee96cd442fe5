//! `tartan volume`: Docker's volume commands, on this host's volumes.

use std::path::Path;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use tartan_proto::v1::{ListVolumesRequest, PruneVolumesRequest, Volume, VolumeRequest};

use crate::api;
use crate::cli::refusal::refused;
use crate::cli::stdout;

#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: tartan volume create [NAME] (a random name otherwise).
    Create(CreateArgs),
    /// List volumes.
    #[command(visible_alias = "list")]
    Ls(ListArgs),
    /// Show volumes in detail, as JSON.
    Inspect(NamesArgs),
    /// Remove volumes (refused while a container uses them).
    #[command(visible_alias = "remove")]
    Rm(NamesArgs),
    /// Remove the anonymous volumes no container uses (-a: every unused one).
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    name: Option<String>,
}

#[derive(Args)]
pub struct ListArgs {
    /// Only the names.
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Args)]
pub struct NamesArgs {
    #[arg(required = true, value_name = "VOLUME")]
    names: Vec<String>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Named volumes too, not only anonymous ones.
    #[arg(short = 'a', long)]
    all: bool,
    /// Do not ask for confirmation.
    #[arg(short, long)]
    force: bool,
}

/// A volume as `docker volume inspect` prints it.
fn volume_json(volume: &Volume) -> Value {
    let labels = if volume.anonymous {
        json!({ "com.docker.volume.anonymous": "" })
    } else {
        Value::Null
    };
    json!({
        "CreatedAt": volume.created,
        "Driver": "local",
        "Labels": labels,
        "Mountpoint": volume.mountpoint,
        "Name": volume.name,
        "Options": Value::Null,
        "Scope": "local",
    })
}

/// `docker volume ls`'s table.
fn table(volumes: &[Volume]) -> String {
    let mut out = format!("{:<10}{}\n", "DRIVER", "VOLUME NAME");
    for volume in volumes {
        out.push_str(&format!("{:<10}{}\n", "local", volume.name));
    }
    out
}

pub async fn run(command: VolumeCommand, api_socket: &Path) -> Result<()> {
    let mut client = api::connect(api_socket).await?;
    match command {
        VolumeCommand::Create(args) => {
            let volume = client
                .create_volume(VolumeRequest {
                    name: args.name.unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner();
            stdout::println(&volume.name)
        }
        VolumeCommand::Ls(args) => {
            let volumes = client
                .list_volumes(ListVolumesRequest {})
                .await
                .map_err(refused)?
                .into_inner()
                .volumes;
            if args.quiet {
                for volume in &volumes {
                    stdout::println(&volume.name)?;
                }
                return Ok(());
            }
            stdout::print(table(&volumes))
        }
        VolumeCommand::Inspect(args) => {
            let mut out = Vec::new();
            let mut failures = Vec::new();
            for name in args.names {
                match client.inspect_volume(VolumeRequest { name }).await {
                    Ok(volume) => out.push(volume_json(&volume.into_inner())),
                    Err(status) => failures.push(status.message().to_string()),
                }
            }
            // As Docker: what was found is printed, and what was not makes it fail.
            stdout::println(serde_json::to_string_pretty(&out)?)?;
            if !failures.is_empty() {
                bail!("{}", failures.join("; "));
            }
            Ok(())
        }
        VolumeCommand::Rm(args) => {
            let mut failures = Vec::new();
            for name in args.names {
                match client
                    .remove_volume(VolumeRequest { name: name.clone() })
                    .await
                {
                    Ok(_) => stdout::println(&name)?,
                    Err(status) => failures.push(status.message().to_string()),
                }
            }
            // The others are removed; what was refused is one line.
            if !failures.is_empty() {
                bail!("{}", failures.join("; "));
            }
            Ok(())
        }
        VolumeCommand::Prune(args) => {
            if !args.force && !confirm_prune(args.all)? {
                return Ok(());
            }
            let removed = client
                .prune_volumes(PruneVolumesRequest { all: args.all })
                .await
                .map_err(refused)?
                .into_inner()
                .volumes;
            let mut out = String::new();
            if !removed.is_empty() {
                out.push_str("Deleted Volumes:\n");
                for volume in &removed {
                    out.push_str(&volume.name);
                    out.push('\n');
                }
                out.push('\n');
            }
            out.push_str("Total reclaimed space: 0B\n");
            stdout::print(out)
        }
    }
}

/// Docker's question before a prune; anything but y or yes is a no.
fn confirm_prune(all: bool) -> Result<bool> {
    use std::io::Write;
    let which = if all { "all" } else { "anonymous" };
    print!(
        "WARNING! This will remove {which} local volumes not used by at least one container.\n\
         Are you sure you want to continue? [y/N] "
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_read_like_docker() {
        let volume = Volume {
            name: "db".into(),
            mountpoint: "/var/lib/tartan/volumes/db/_data".into(),
            anonymous: false,
            ..Volume::default()
        };
        assert_eq!(
            table(std::slice::from_ref(&volume)),
            "DRIVER    VOLUME NAME\nlocal     db\n"
        );
        let shown = volume_json(&volume);
        assert_eq!(shown["Driver"], "local");
        assert_eq!(shown["Mountpoint"], "/var/lib/tartan/volumes/db/_data");
        assert!(shown["Labels"].is_null());
    }
}
