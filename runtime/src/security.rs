//! A container's privileges, as `run` asks for them: Docker's defaults
//! (its capability set, its seccomp profile, no `no_new_privs`) unless
//! `--privileged`, `--cap-add`, `--cap-drop` or `--security-opt` say
//! otherwise, and the sysctls set at its start (`--sysctl`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::capabilities::{capability_number, CAPABILITY_NAMES, DEFAULT_CAPABILITIES};
use crate::seccomp::{self, Instruction};
use crate::{Result, RuntimeError};

/// The sysctls outside `net.*` that Docker lets a container set: they
/// belong to its own IPC namespace.
const IPC_SYSCTLS: [&str; 8] = [
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// Which seccomp filter the container's processes get.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompChoice {
    /// Docker's default profile (`runtime/seccomp/default.json`).
    #[default]
    Default,
    /// None (`seccomp=unconfined`).
    Unconfined,
    /// A profile in Docker's JSON format, the file's contents (`seccomp=FILE`).
    Profile(String),
}

/// What `run` asked for; the default is Docker's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Security {
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub no_new_privileges: bool,
    /// As given: names with or without `CAP_`, any case, or `ALL`.
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub seccomp: SeccompChoice,
    /// `net.ipv4.ip_forward` → `1`, written at the start.
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
}

fn invalid(message: String) -> RuntimeError {
    RuntimeError::Security(message)
}

fn all_capabilities() -> Vec<u32> {
    (0..CAPABILITY_NAMES.len() as u32).collect()
}

impl Security {
    /// Refuses what cannot be applied: unknown capabilities, sysctls Docker
    /// does not allow, a profile that does not compile.
    pub fn check(&self) -> Result<()> {
        for key in self.sysctls.keys() {
            check_sysctl(key)?;
        }
        let capabilities = self.capabilities()?;
        if let Some(caps) = &capabilities {
            if let SeccompChoice::Profile(_) | SeccompChoice::Default = self.seccomp {
                self.seccomp_program(caps)?;
            }
        }
        Ok(())
    }

    /// Whether a `net.*` sysctl is asked for: these need the container's
    /// own network namespace.
    pub fn sets_network_sysctls(&self) -> bool {
        self.sysctls.keys().any(|k| k.starts_with("net."))
    }

    /// The capabilities the container keeps, by Docker's rules: `ALL` in
    /// `--cap-add` means every one but those dropped, `ALL` in `--cap-drop`
    /// means only those added; `None` when privileged (all of them).
    pub fn capabilities(&self) -> Result<Option<Vec<u32>>> {
        if self.privileged {
            return Ok(None);
        }
        let parse = |names: &[String]| -> Result<(bool, Vec<u32>)> {
            let mut all = false;
            let mut caps = Vec::new();
            for name in names {
                if name.eq_ignore_ascii_case("ALL") {
                    all = true;
                } else {
                    caps.push(
                        capability_number(name)
                            .ok_or_else(|| invalid(format!("unknown capability {name:?}")))?,
                    );
                }
            }
            Ok((all, caps))
        };
        let (add_all, add) = parse(&self.cap_add)?;
        let (drop_all, drop) = parse(&self.cap_drop)?;
        let mut caps: Vec<u32> = if add_all {
            all_capabilities()
                .into_iter()
                .filter(|c| !drop.contains(c))
                .collect()
        } else if drop_all {
            add
        } else {
            let mut caps: Vec<u32> = DEFAULT_CAPABILITIES
                .iter()
                .copied()
                .filter(|c| !drop.contains(c))
                .collect();
            caps.extend(add);
            caps
        };
        caps.sort_unstable();
        caps.dedup();
        Ok(Some(caps))
    }

    fn seccomp_program(&self, capabilities: &[u32]) -> Result<Option<Vec<Instruction>>> {
        let profile = match &self.seccomp {
            SeccompChoice::Unconfined => return Ok(None),
            SeccompChoice::Default => seccomp::DEFAULT_PROFILE,
            SeccompChoice::Profile(text) => text.as_str(),
        };
        seccomp::compile(profile, capabilities, seccomp::kernel_version()).map(Some)
    }

    /// What to apply to a process of the container before it execs.
    pub fn privileges(&self) -> Result<Privileges> {
        let capabilities = self.capabilities()?;
        let seccomp = match &capabilities {
            Some(caps) => self.seccomp_program(caps)?,
            None => None,
        };
        Ok(Privileges {
            capabilities,
            no_new_privs: self.no_new_privileges,
            seccomp,
        })
    }
}

/// Docker's rule: `net.*` (the container's network namespace), the IPC
/// namespace's `kernel.*` and `fs.mqueue.*`; nothing that is the host's.
pub fn check_sysctl(key: &str) -> Result<()> {
    let well_formed = !key.is_empty()
        && key
            .split(['.', '/'])
            .all(|part| !part.is_empty() && part != "..");
    let namespaced =
        key.starts_with("net.") || key.starts_with("fs.mqueue.") || IPC_SYSCTLS.contains(&key);
    if !well_formed || !namespaced {
        return Err(invalid(format!(
            "sysctl {key:?} is not allowed in a container: only net.*, fs.mqueue.* and kernel.{{msg*,sem,shm*}} are its own, as in Docker"
        )));
    }
    Ok(())
}

/// What a process of the container gets, resolved from [`Security`].
#[derive(Debug, Clone)]
pub struct Privileges {
    /// `None`: every capability (privileged).
    pub capabilities: Option<Vec<u32>>,
    pub no_new_privs: bool,
    pub seccomp: Option<Vec<Instruction>>,
}

impl Privileges {
    /// Sets `no_new_privs` if asked, loads the filter while the process
    /// still holds CAP_SYS_ADMIN (the kernel needs it, or `no_new_privs`,
    /// as runc does it), then lowers the capabilities.
    pub fn apply(&self) -> Result<()> {
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(RuntimeError::Io {
                    op: "container init: setting",
                    path: "no_new_privs".into(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        if let Some(program) = &self.seccomp {
            seccomp::load(program)?;
        }
        if let Some(caps) = &self.capabilities {
            crate::capabilities::restrict_capabilities(caps)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(security: &Security) -> Vec<&'static str> {
        security
            .capabilities()
            .expect("capabilities")
            .expect("not privileged")
            .iter()
            .map(|c| CAPABILITY_NAMES[*c as usize])
            .collect()
    }

    #[test]
    fn capabilities_follow_dockers_rules() {
        let default = Security::default();
        assert_eq!(caps(&default).len(), DEFAULT_CAPABILITIES.len());
        let tweaked = Security {
            cap_add: vec!["net_admin".into()],
            cap_drop: vec!["CAP_NET_RAW".into()],
            ..Security::default()
        };
        let got = caps(&tweaked);
        assert!(got.contains(&"NET_ADMIN") && !got.contains(&"NET_RAW"));
        let only = Security {
            cap_add: vec!["CHOWN".into()],
            cap_drop: vec!["all".into()],
            ..Security::default()
        };
        assert_eq!(caps(&only), ["CHOWN"]);
        let all_but = Security {
            cap_add: vec!["ALL".into()],
            cap_drop: vec!["SYS_ADMIN".into()],
            ..Security::default()
        };
        assert_eq!(caps(&all_but).len(), CAPABILITY_NAMES.len() - 1);
        let privileged = Security {
            privileged: true,
            cap_drop: vec!["ALL".into()],
            ..Security::default()
        };
        assert_eq!(privileged.capabilities().expect("caps"), None);
        let unknown = Security {
            cap_add: vec!["FLY".into()],
            ..Security::default()
        };
        assert!(unknown.check().is_err());
    }

    #[test]
    fn what_cannot_be_applied_is_refused() {
        let sysctl = |key: &str| Security {
            sysctls: BTreeMap::from([(key.to_string(), "1".to_string())]),
            ..Security::default()
        };
        assert!(sysctl("net.ipv4.ip_forward").check().is_ok());
        assert!(sysctl("kernel.shmmax").check().is_ok());
        for key in ["kernel.core_pattern", "vm.swappiness", "net.ipv4/../../x"] {
            assert!(sysctl(key).check().is_err(), "{key} was accepted");
        }
        let profile = Security {
            seccomp: SeccompChoice::Profile("not json".into()),
            ..Security::default()
        };
        assert!(profile.check().is_err());
    }
}
