//! Capabilities: Docker's default set, names and numbers, and giving up
//! every capability outside a set.

use std::path::PathBuf;

use crate::{Result, RuntimeError};

/// Capability names by number (linux/capability.h), without `CAP_`.
pub const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// A capability's number from its name (`NET_ADMIN`, `cap_net_admin`).
pub fn capability_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|n| n as u32)
}

/// Docker's default capability set (numbers from linux/capability.h).
pub const DEFAULT_CAPABILITIES: [u32; 14] = [
    0,  // CHOWN
    1,  // DAC_OVERRIDE
    3,  // FOWNER
    4,  // FSETID
    5,  // KILL
    6,  // SETGID
    7,  // SETUID
    8,  // SETPCAP
    10, // NET_BIND_SERVICE
    13, // NET_RAW
    18, // SYS_CHROOT
    27, // MKNOD
    29, // AUDIT_WRITE
    31, // SETFCAP
];

/// The highest capability number this build knows; the kernel may know fewer.
const LAST_CAPABILITY: u32 = 63;

fn os_err(what: &str) -> RuntimeError {
    RuntimeError::Io {
        op: "container init:",
        path: PathBuf::from(what),
        source: std::io::Error::last_os_error(),
    }
}

/// The highest capability this kernel knows: asking capset for more fails.
fn kernel_last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(LAST_CAPABILITY)
}

/// Drops every capability outside `keep` from the bounding set, then sets
/// the effective, permitted and inheritable sets to `keep`.
pub(crate) fn restrict_capabilities(keep: &[u32]) -> Result<()> {
    let last = kernel_last_capability();
    let keep: Vec<u32> = keep.iter().copied().filter(|c| *c <= last).collect();
    for cap in 0..=LAST_CAPABILITY {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
        // EINVAL: the kernel has no such capability; nothing to drop.
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(os_err("dropping a capability from the bounding set"));
        }
    }
    let mut low = 0u32;
    let mut high = 0u32;
    for cap in &keep {
        if *cap < 32 {
            low |= 1 << cap;
        } else {
            high |= 1 << (cap - 32);
        }
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    let header = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let data = [
        Data {
            effective: low,
            permitted: low,
            inheritable: low,
        },
        Data {
            effective: high,
            permitted: high,
            inheritable: high,
        },
    ];
    // SAFETY: capset with a v3 header and two data words, as the kernel expects.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(os_err("setting capabilities"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockers_default_set_keeps_net_raw_and_drops_sys_admin() {
        assert!(
            DEFAULT_CAPABILITIES.contains(&13),
            "NET_RAW stays: ping works, as in Docker"
        );
        assert!(!DEFAULT_CAPABILITIES.contains(&21), "SYS_ADMIN goes");
        assert_eq!(capability_number("cap_net_raw"), Some(13));
        assert_eq!(capability_number("SYS_ADMIN"), Some(21));
        assert_eq!(capability_number("FLY"), None);
    }
}
