//! The container's first process (`tartan init`), run inside namespaces its
//! parent created (mount, PID, UTS, IPC and, per network mode, network): it
//! builds the root filesystem, pivots into it, closes Docker's read-only and
//! masked kernel paths, sets the hostname, takes the container's privileges
//! (capabilities, seccomp, `no_new_privs` on request) and execs its command.

use std::ffi::CString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::container::spec::ContainerSpec;
use crate::rootfs::{mount_rootfs, pivot_into, restrict_kernel_paths, RootfsLayout};
use crate::syscall::Syscall;
use crate::user::Identity;
use crate::volumes::mount_volumes;
use crate::{Result, RuntimeError};

/// Everything init needs, written by the parent as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
    /// Files written into the container once it is the root (`/etc/hosts`,
    /// `/etc/resolv.conf`, `/etc/hostname`), so that a symlink in the image
    /// cannot point them at the host.
    #[serde(default)]
    pub files: Vec<InitFile>,
    /// What runs, as the agent recorded it.
    pub container: ContainerSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitFile {
    /// Absolute, inside the container.
    pub path: PathBuf,
    pub contents: String,
}

/// Builds the container and execs its command; returns only on failure.
pub fn run(sys: &dyn Syscall, spec: &InitSpec) -> RuntimeError {
    run_with(sys, spec, || Ok(()))
}

/// As `run`, with `in_root` run once the container's root is in place and
/// before privileges are given up (the terminal is made there).
pub fn run_with(
    sys: &dyn Syscall,
    spec: &InitSpec,
    in_root: impl FnOnce() -> Result<()>,
) -> RuntimeError {
    match prepare(sys, spec, in_root) {
        Ok(identity) => exec(spec, identity.as_ref()),
        Err(err) => err,
    }
}

fn prepare(
    sys: &dyn Syscall,
    spec: &InitSpec,
    in_root: impl FnOnce() -> Result<()>,
) -> Result<Option<Identity>> {
    build_root(sys, spec)?;
    in_root()?;
    // Resolved inside the container's root: its own passwd and group files.
    let identity = match spec.container.user.as_str() {
        "" => None,
        user => Some(crate::user::resolve_in_root(user)?),
    };
    spec.container.security.privileges()?.apply()?;
    // After the privileges, which need root to be set; leaving root drops
    // the capabilities, as Docker gives a non-root user none.
    if let Some(identity) = &identity {
        crate::user::switch_to(identity)?;
    }
    Ok(identity)
}

/// The container's root, its files, hostname and working directory.
fn build_root(sys: &dyn Syscall, spec: &InitSpec) -> Result<()> {
    let layout = RootfsLayout {
        layers: spec.layers.clone(),
        upper: spec.upper.clone(),
        work: spec.work.clone(),
        merged: spec.merged.clone(),
        privileged: spec.container.security.privileged,
        // Listed while the host's /dev is still this mount namespace's.
        host_devices: if spec.container.security.privileged {
            crate::devices::host_devices(std::path::Path::new("/dev"))?
        } else {
            Vec::new()
        },
    };
    mount_rootfs(sys, &layout)?;
    // While the host's paths are still in reach.
    mount_volumes(sys, &spec.merged, &spec.container.mounts)?;
    pivot_into(sys, &spec.merged)?;
    restrict_kernel_paths(
        sys,
        &spec.container.security.sysctls,
        spec.container.security.privileged,
    )?;
    for file in &spec.files {
        if let Some(parent) = file.path.parent() {
            sys.mkdir_all(parent)?;
        }
        sys.write_file(&file.path, file.contents.as_bytes())?;
    }
    // A missing working directory is made, as Docker does.
    sys.mkdir_all(&spec.container.cwd)?;
    sys.sethostname(&spec.container.hostname)?;
    sys.chdir(&spec.container.cwd)
}

fn exec(spec: &InitSpec, identity: Option<&Identity>) -> RuntimeError {
    exec_command(
        &spec.container.args,
        &with_home(&spec.container.env, identity),
    )
}

/// `env` with HOME added unless it sets one, as Docker does: the user's home
/// from the container's passwd file (root's without `identity`), else `/`.
/// Run inside the container's root.
pub(crate) fn with_home(env: &[String], identity: Option<&Identity>) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = match identity {
            Some(identity) => identity.home.clone(),
            None => crate::user::resolve_in_root("0").map_or_else(|_| "/".into(), |i| i.home),
        };
        env.push(format!("HOME={home}"));
    }
    env
}

/// The exit code for a container that could not start, as Docker gives it:
/// 127 when the command is missing, 126 when it cannot be run, 125 otherwise.
pub fn failure_code(err: &RuntimeError) -> i32 {
    match err {
        RuntimeError::Io {
            op: "running",
            source,
            ..
        } => match source.raw_os_error() {
            Some(libc::ENOENT) => 127,
            Some(libc::EACCES) | Some(libc::ENOEXEC) => 126,
            _ => 125,
        },
        _ => 125,
    }
}

/// An error of a container's start as one line with its cause, in the
/// words a shell would use: "running /x: no such file or directory".
pub fn describe(err: &RuntimeError) -> String {
    match err {
        RuntimeError::Io { source, .. } => {
            let cause = match source.raw_os_error() {
                Some(libc::ENOENT) => "no such file or directory".to_string(),
                Some(libc::EACCES) => "permission denied".to_string(),
                Some(libc::ENOEXEC) => "exec format error: not an executable".to_string(),
                Some(libc::ENOTDIR) => "not a directory".to_string(),
                _ => source.to_string(),
            };
            format!("{err}: {cause}")
        }
        other => {
            let mut line = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(next) = cause {
                line.push_str(&format!(": {next}"));
                cause = next.source();
            }
            line
        }
    }
}

/// Replaces this process with `args`, searching `PATH` from `env`; returns only on failure.
pub(crate) fn exec_command(args: &[String], env: &[String]) -> RuntimeError {
    let to_c = |items: &[String]| -> Option<Vec<CString>> {
        items
            .iter()
            .map(|s| CString::new(s.as_str()).ok())
            .collect()
    };
    let (Some(c_args), Some(c_env)) = (to_c(args), to_c(env)) else {
        return RuntimeError::BadReference(
            "a command or environment entry holds a NUL byte".into(),
        );
    };
    if c_args.is_empty() {
        return RuntimeError::BadReference("no command to run".into());
    }
    let mut argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = c_env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let mut failure = std::io::Error::from_raw_os_error(libc::ENOENT);
    for candidate in search_path(&args[0], env) {
        let Ok(program) = CString::new(candidate.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: NUL-terminated argument and environment arrays of valid strings.
        unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let err = std::io::Error::last_os_error();
        // As a shell does: a file that exists but cannot run is the error to report.
        if err.raw_os_error() != Some(libc::ENOENT) || failure.raw_os_error() == Some(libc::ENOENT)
        {
            failure = err;
        }
    }
    RuntimeError::Io {
        op: "running",
        path: PathBuf::from(&args[0]),
        source: failure,
    }
}

/// Where to look for `program`: itself when it names a path, otherwise each
/// directory of the container's `PATH` (not the caller's, which libc's
/// execvpe would use).
fn search_path(program: &str, env: &[String]) -> Vec<PathBuf> {
    if program.contains('/') {
        return vec![PathBuf::from(program)];
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| PathBuf::from(dir).join(program))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::{Call, RecordingSyscall};
    use std::path::Path;

    #[test]
    fn a_failure_to_run_says_why() {
        for (errno, code, cause) in [
            (libc::ENOENT, 127, "no such file or directory"),
            (libc::EACCES, 126, "permission denied"),
            (libc::ENOEXEC, 126, "not an executable"),
        ] {
            let err = RuntimeError::Io {
                op: "running",
                path: "/x".into(),
                source: std::io::Error::from_raw_os_error(errno),
            };
            assert_eq!(failure_code(&err), code);
            let line = describe(&err);
            assert!(
                line.starts_with("running /x: ") && line.contains(cause),
                "{line}"
            );
        }
    }

    #[test]
    fn commands_are_found_on_the_containers_path_not_the_callers() {
        let env = vec!["PATH=/opt/bin:/bin".to_string()];
        assert_eq!(
            search_path("true", &env),
            [PathBuf::from("/opt/bin/true"), PathBuf::from("/bin/true")]
        );
        assert_eq!(search_path("./run.sh", &env), [PathBuf::from("./run.sh")]);
        assert_eq!(
            search_path("sh", &[]).last(),
            Some(&PathBuf::from("/bin/sh"))
        );
    }

    #[test]
    fn the_spec_round_trips_and_preparation_ends_in_the_container() {
        let spec = InitSpec {
            layers: vec!["/l/base".into()],
            upper: "/c/upper".into(),
            work: "/c/work".into(),
            merged: "/c/rootfs".into(),
            files: vec![InitFile {
                path: "/etc/hostname".into(),
                contents: "web\n".into(),
            }],
            container: ContainerSpec {
                args: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                hostname: "web".into(),
                mounts: vec![crate::volumes::Mount {
                    kind: crate::volumes::MountKind::Bind,
                    name: String::new(),
                    source: "/data".into(),
                    destination: "/tmp/data".into(),
                    read_only: false,
                    anonymous: false,
                }],
                ..ContainerSpec::default()
            },
        };
        let text = serde_json::to_string(&spec).expect("json");
        assert_eq!(
            serde_json::from_str::<InitSpec>(&text).expect("parse"),
            spec
        );
        let sys = RecordingSyscall::default();
        build_root(&sys, &spec).expect("root");
        let calls = sys.calls.borrow();
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot(..)))
            .expect("pivot");
        let written = calls
            .iter()
            .position(
                |c| matches!(c, Call::WriteFile(path, _) if path == Path::new("/etc/hostname")),
            )
            .expect("hostname file");
        assert!(
            written > pivot,
            "files are written inside the new root only"
        );
        let bound = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { target, .. } if target == Path::new("/c/rootfs/tmp/data")))
            .expect("the volume is bound");
        assert!(
            bound < pivot,
            "volumes are bound while the host is in reach"
        );
        assert_eq!(calls[calls.len() - 3], Call::MkdirAll("/".into()));
        assert_eq!(calls[calls.len() - 2], Call::Sethostname("web".into()));
        assert_eq!(calls.last(), Some(&Call::Chdir("/".into())));
    }
}
