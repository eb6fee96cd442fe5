//! `tartan run`'s request, checked once where it enters the agent: the
//! typed [`RunSpec`] that [`super::Containers::run`] makes a container of,
//! and the conversions between the API's messages and the container's
//! [`ContainerSpec`] (which is stored in its record and given to its
//! supervisor as it is).

use anyhow::{bail, Context, Result};
use tartan_proto::v1::{
    run_request::Network as PbRunNetwork, RunRequest, Seccomp as PbSeccomp, Security as PbSecurity,
    Sysctl as PbSysctl,
};
use tartan_runtime::container::ContainerSpec;
use tartan_runtime::security::{SeccompChoice, Security};

use super::image_config::ImageOverrides;
use super::volumes::{parse_volume, parse_volumes_from, VolumeRequest};
use super::NetworkRequest;

/// What `tartan run` asks for, checked: names, environment entries, the
/// working directory and the privileges are valid here, and only what
/// depends on the agent's state (the image, the network, the address) is
/// left to check.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    pub image: String,
    pub name: Option<String>,
    /// Given, or the short id once there is one.
    pub hostname: Option<String>,
    pub network: NetworkRequest,
    /// `--ip`, as given: its subnet is known only once the network is.
    pub ip: Option<String>,
    pub detach: bool,
    pub auto_remove: bool,
    /// `-p`, parsed.
    pub ports: Vec<tartan_runtime::container::ports::PortBinding>,
    /// `-P`.
    pub publish_all: bool,
    /// What runs; its `env` as given (Docker's defaults are added once the
    /// hostname is known) and its `hostname` empty.
    pub container: ContainerSpec,
    /// `--entrypoint`, `-u` and `-w`, applied over the image's own settings
    /// once the image is known (`args` is then the given command, maybe empty).
    pub image_overrides: ImageOverrides,
    /// `-v`, checked; made into mounts once the agent's volumes are at hand.
    pub volumes: Vec<VolumeRequest>,
    /// `--volumes-from` as given (the containers are looked up at run).
    pub volumes_from: Vec<String>,
    /// `--link`, parsed (the containers are looked up at run).
    pub links: Vec<super::hosts::Link>,
    /// `--add-host` as given, checked.
    pub add_hosts: Vec<String>,
    /// `--network-alias`, checked as names.
    pub network_aliases: Vec<String>,
}

impl RunSpec {
    pub fn from_pb(request: RunRequest) -> Result<RunSpec> {
        let name = nonempty(request.name);
        if let Some(name) = &name {
            super::check_name(name)?;
        }
        let workdir = nonempty(request.workdir);
        if let Some(workdir) = workdir.as_ref().filter(|w| !w.starts_with('/')) {
            bail!("the working directory {workdir:?} is not absolute");
        }
        let user = nonempty(request.user);
        if let Some(user) = &user {
            check_user(user)?;
        }
        for entry in &request.env {
            if entry.is_empty() || entry.starts_with('=') || !entry.contains('=') {
                bail!("invalid environment entry {entry:?}: use KEY=VALUE");
            }
        }
        let network = network_from_pb(request.network)?;
        let volumes = request
            .volumes
            .iter()
            .map(|text| parse_volume(text))
            .collect::<Result<Vec<_>>>()?;
        for text in &request.volumes_from {
            parse_volumes_from(text)?;
        }
        let restart = super::restart::parse_restart(&request.restart, request.auto_remove)?;
        let links = request
            .links
            .iter()
            .map(|text| super::hosts::Link::parse(text))
            .collect::<Result<Vec<_>>>()?;
        for text in &request.add_hosts {
            super::hosts::add_host_line(text)?;
        }
        for alias in &request.network_aliases {
            if super::check_name(alias).is_err() {
                bail!("invalid --network-alias {alias:?}: use letters, digits and _ . - (starting with a letter or digit)");
            }
        }
        let security = security_from_pb(request.security.unwrap_or_default())?;
        let resources = super::limits::resources_from_pb(request.resources)?;
        // As Docker: a net.* sysctl would change the host's or another container's network.
        if security.sets_network_sysctls()
            && matches!(network, NetworkRequest::Host | NetworkRequest::Container(_))
        {
            bail!("a net.* sysctl needs the container's own network namespace (not --net host or container:)");
        }
        Ok(RunSpec {
            image: request.image,
            name,
            hostname: nonempty(request.hostname),
            ip: nonempty(request.ip),
            network,
            detach: request.detach,
            auto_remove: request.auto_remove,
            ports: request
                .publish
                .iter()
                .map(|p| super::ports::parse_publish(p))
                .collect::<Result<_>>()?,
            publish_all: request.publish_all,
            container: ContainerSpec {
                args: request.args,
                env: request.env,
                hostname: String::new(),
                tty: request.tty,
                open_stdin: request.interactive,
                security,
                mounts: Vec::new(),
                restart,
                resources,
                ..ContainerSpec::default()
            },
            image_overrides: ImageOverrides {
                entrypoint: request.entrypoint,
                user,
                workdir: workdir.map(Into::into),
            },
            volumes,
            volumes_from: request.volumes_from,
            links,
            add_hosts: request.add_hosts,
            network_aliases: request.network_aliases,
        })
    }
}

/// `name`, `uid`, `name:group` or `uid:gid`: what can be looked up at the
/// container's start (where unknown names are refused).
fn check_user(user: &str) -> Result<()> {
    let valid_part = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
    };
    let valid = match user.split_once(':') {
        Some((name, group)) => valid_part(name) && valid_part(group),
        None => valid_part(user),
    };
    if !valid {
        bail!("invalid user {user:?}: use NAME, UID, NAME:GROUP or UID:GID");
    }
    Ok(())
}

fn nonempty(text: String) -> Option<String> {
    (!text.is_empty()).then_some(text)
}

/// The typed `--net` as the API carries it.
pub fn network_to_pb(network: &NetworkRequest) -> Option<PbRunNetwork> {
    Some(match network {
        // Unset: the agent knows its default.
        NetworkRequest::Default => return None,
        NetworkRequest::Overlay => PbRunNetwork::Overlay(true),
        NetworkRequest::Host => PbRunNetwork::Host(true),
        NetworkRequest::None => PbRunNetwork::None(true),
        NetworkRequest::Container(name) => PbRunNetwork::Container(name.clone()),
        NetworkRequest::Named(name) => PbRunNetwork::Named(name.clone()),
    })
}

fn network_from_pb(network: Option<PbRunNetwork>) -> Result<NetworkRequest> {
    Ok(match network {
        None => NetworkRequest::Default,
        Some(PbRunNetwork::Overlay(_)) => NetworkRequest::Overlay,
        Some(PbRunNetwork::Host(_)) => NetworkRequest::Host,
        Some(PbRunNetwork::None(_)) => NetworkRequest::None,
        Some(PbRunNetwork::Container(name)) if name.is_empty() => {
            bail!("invalid --net container:: name the container")
        }
        Some(PbRunNetwork::Container(name)) => NetworkRequest::Container(name),
        Some(PbRunNetwork::Named(name)) => {
            crate::networks::store::check_name(&name)
                .with_context(|| format!("invalid --net {name:?}"))?;
            NetworkRequest::Named(name)
        }
    })
}

/// The privileges as the API carries them, checked: unknown capabilities,
/// sysctls Docker does not allow and profiles that do not compile are refused.
pub fn security_from_pb(pb: PbSecurity) -> Result<Security> {
    let seccomp = match pb.seccomp() {
        PbSeccomp::Default => SeccompChoice::Default,
        PbSeccomp::Unconfined => SeccompChoice::Unconfined,
        PbSeccomp::Profile => SeccompChoice::Profile(pb.seccomp_profile),
    };
    let security = Security {
        privileged: pb.privileged,
        no_new_privileges: pb.no_new_privileges,
        cap_add: pb.cap_add,
        cap_drop: pb.cap_drop,
        seccomp,
        sysctls: pb.sysctls.into_iter().map(|s| (s.key, s.value)).collect(),
    };
    security.check()?;
    Ok(security)
}

pub fn security_to_pb(security: &Security) -> PbSecurity {
    let (seccomp, seccomp_profile) = match &security.seccomp {
        SeccompChoice::Default => (PbSeccomp::Default, String::new()),
        SeccompChoice::Unconfined => (PbSeccomp::Unconfined, String::new()),
        SeccompChoice::Profile(text) => (PbSeccomp::Profile, text.clone()),
    };
    PbSecurity {
        privileged: security.privileged,
        no_new_privileges: security.no_new_privileges,
        seccomp: seccomp.into(),
        seccomp_profile,
        cap_add: security.cap_add.clone(),
        cap_drop: security.cap_drop.clone(),
        sysctls: security
            .sysctls
            .iter()
            .map(|(key, value)| PbSysctl {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RunRequest {
        RunRequest {
            image: "busybox".into(),
            ..RunRequest::default()
        }
    }

    #[test]
    fn a_bare_request_gets_dockers_defaults() {
        let mut spec = RunSpec::from_pb(request()).expect("valid");
        super::super::image_config::apply(&mut spec.container, None, &spec.image_overrides)
            .expect("applied");
        assert_eq!(spec.container.args, ["/bin/sh"]);
        assert_eq!(spec.container.cwd, std::path::Path::new("/"));
        assert_eq!(spec.container.security, Security::default());
        assert_eq!(spec.network, NetworkRequest::Default);
        assert_eq!((spec.name, spec.hostname, spec.ip), (None, None, None));
    }

    #[test]
    fn what_cannot_run_is_refused_at_the_api() {
        let sysctl = |key: &str| {
            Some(PbSecurity {
                sysctls: vec![PbSysctl {
                    key: key.into(),
                    value: "1".into(),
                }],
                ..PbSecurity::default()
            })
        };
        let refused = [
            RunRequest {
                workdir: "srv".into(),
                ..request()
            },
            RunRequest {
                env: vec!["=x".into()],
                ..request()
            },
            RunRequest {
                user: "app:".into(),
                ..request()
            },
            RunRequest {
                user: "a b".into(),
                ..request()
            },
            RunRequest {
                env: vec!["KEY".into()],
                ..request()
            },
            RunRequest {
                name: "-web".into(),
                ..request()
            },
            RunRequest {
                network: Some(PbRunNetwork::Named("a/b".into())),
                ..request()
            },
            RunRequest {
                network: Some(PbRunNetwork::Container(String::new())),
                ..request()
            },
            RunRequest {
                security: sysctl("vm.swappiness"),
                ..request()
            },
            RunRequest {
                network: Some(PbRunNetwork::Host(true)),
                security: sysctl("net.ipv4.ip_forward"),
                ..request()
            },
            RunRequest {
                security: Some(PbSecurity {
                    cap_add: vec!["FLY".into()],
                    ..PbSecurity::default()
                }),
                ..request()
            },
            RunRequest {
                security: Some(PbSecurity {
                    seccomp: PbSeccomp::Profile.into(),
                    seccomp_profile: "not json".into(),
                    ..PbSecurity::default()
                }),
                ..request()
            },
        ];
        for bad in refused {
            let shown = format!("{bad:?}");
            assert!(RunSpec::from_pb(bad).is_err(), "accepted: {shown}");
        }
        let own_netns = RunRequest {
            security: sysctl("net.ipv4.ip_forward"),
            ..request()
        };
        assert!(RunSpec::from_pb(own_netns).is_ok());
    }

    #[test]
    fn privileges_travel_unchanged() {
        let security = Security {
            privileged: false,
            no_new_privileges: true,
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["ALL".into()],
            seccomp: SeccompChoice::Unconfined,
            sysctls: [("kernel.shmmax".to_string(), "9".to_string())].into(),
        };
        assert_eq!(
            security_from_pb(security_to_pb(&security)).expect("valid"),
            security
        );
        let network = NetworkRequest::Container("web".into());
        assert_eq!(
            network_from_pb(network_to_pb(&network)).expect("valid"),
            network
        );
    }
}
