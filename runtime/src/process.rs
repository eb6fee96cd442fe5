//! Processes known by a pid read from a file, which may have passed to
//! another process since: a pidfd pins one process, and `/proc/PID/stat`
//! tells whether the pid still names the one meant.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::{Result, RuntimeError};

/// A descriptor for one process: signals sent through it reach that
/// process or nothing, whoever has its pid by then.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
}

impl Pidfd {
    /// A pidfd for whatever process has `pid` now; `None` when none has.
    pub fn open(pid: u32) -> Result<Option<Pidfd>> {
        let raw_pid = libc::pid_t::try_from(pid).map_err(|_| RuntimeError::Process {
            op: "opening a pidfd for",
            pid,
            source: std::io::Error::from_raw_os_error(libc::ESRCH),
        })?;
        // SAFETY: pidfd_open with a pid and no flags.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
        if fd < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::ESRCH) {
                return Ok(None);
            }
            return Err(RuntimeError::Process {
                op: "opening a pidfd for",
                pid,
                source,
            });
        }
        // SAFETY: a fresh descriptor from pidfd_open, owned from here on.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Some(Pidfd { fd }))
    }

    /// The descriptor, which turns readable when the process ends.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Sends `signal`; false when the process has ended (even if its pid lives on in another).
    pub fn send_signal(&self, signal: libc::c_int, pid: u32) -> Result<bool> {
        // SAFETY: pidfd_send_signal on a pidfd we own, with no siginfo and no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        Err(RuntimeError::Process {
            op: "signalling",
            pid,
            source,
        })
    }
}

/// What identifies a process beyond its pid, from `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub ppid: u32,
    /// Clock ticks after boot: a later process with the same pid started later.
    pub start_time: u64,
}

/// The process that has `pid` now, if any.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `/proc/PID/stat`. The command name may hold spaces and
/// parentheses, so fields are counted after its last `)`: the state is
/// field 3, the parent 4, the start time 22.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 118 0 0 0 0 0 0 0 20 0 1 0 987654 2416640 201 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                ppid: 17,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (truncated) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn a_child_is_signalled_through_its_pidfd_and_a_gone_one_is_not() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        let stat = proc_stat(pid).expect("the child's stat");
        // SAFETY: getpid cannot fail.
        assert_eq!(stat.ppid, unsafe { libc::getpid() } as u32);
        let pidfd = Pidfd::open(pid).expect("pidfd_open").expect("a live child");
        assert!(pidfd.send_signal(0, pid).expect("signal 0"));
        assert!(pidfd.send_signal(libc::SIGKILL, pid).expect("SIGKILL"));
        let status = child.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Reaped: the pidfd reaches nothing, and the pid names nobody (or a stranger).
        assert!(!pidfd.send_signal(libc::SIGKILL, pid).expect("no error"));
    }
}
