//! seccomp profiles in Docker's JSON format (`runtime/seccomp/default.json`
//! is Moby's default profile, unchanged), compiled to a classic BPF program
//! and loaded into the container's processes before they exec.
//!
//! The compiler does what Docker and libseccomp do with a profile, for the
//! x86_64 architecture: rules are kept or left out by their `includes` and
//! `excludes` (architecture, the container's capabilities, the kernel's
//! version); within a rule the argument conditions must all hold; the first
//! rule that matches a call decides, else the default action. One
//! reduction: only x86_64's own system calls are compiled, so 32-bit calls
//! (i386 and x32, which Docker's profile also lists) get the default action.

use serde::Deserialize;

use crate::{Result, RuntimeError};

/// Moby's `profiles/seccomp/default.json`.
pub const DEFAULT_PROFILE: &str = include_str!("../seccomp/default.json");

/// One classic BPF instruction, laid out as the kernel's `sock_filter`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instruction {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JEQ_K: u16 = 0x15;
const JGT_K: u16 = 0x25;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;

/// `struct seccomp_data`: nr at 0, arch at 4, args from 16, 8 bytes each,
/// the low half first on a little-endian machine.
const NR: u32 = 0;
const ARCH: u32 = 4;
const fn arg_low(index: u32) -> u32 {
    16 + 8 * index
}
const fn arg_high(index: u32) -> u32 {
    20 + 8 * index
}

/// AUDIT_ARCH_X86_64 (EM_X86_64 | 64-bit | little-endian).
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_KILL_THREAD: u32 = 0;
pub const RET_TRAP: u32 = 0x0003_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_TRACE: u32 = 0x7ff0_0000;
pub const RET_LOG: u32 = 0x7ffc_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

/// The kernel refuses longer programs (BPF_MAXINSNS).
const MAX_INSTRUCTIONS: usize = 4096;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: String,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    syscalls: Option<Vec<Rule>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    name: Option<String>,
    action: String,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<Condition>>,
    #[serde(default)]
    includes: Option<Filter>,
    #[serde(default)]
    excludes: Option<Filter>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Filter {
    #[serde(default)]
    arches: Option<Vec<String>>,
    #[serde(default)]
    caps: Option<Vec<String>>,
    #[serde(default)]
    min_kernel: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Condition {
    index: u32,
    value: u64,
    #[serde(default)]
    value_two: u64,
    op: String,
}

fn bad(message: String) -> RuntimeError {
    RuntimeError::Security(format!("seccomp profile: {message}"))
}

/// The running kernel's major and minor version; (0, 0) when unreadable,
/// which leaves out every rule that needs a minimum.
pub fn kernel_version() -> (u32, u32) {
    // SAFETY: uname fills a struct we own.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return (0, 0);
    }
    // SAFETY: uname NUL-terminates release.
    let release = unsafe { std::ffi::CStr::from_ptr(name.release.as_ptr()) };
    parse_version(&release.to_string_lossy()).unwrap_or((0, 0))
}

fn parse_version(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

fn action(name: &str, errno: Option<u32>) -> Result<u32> {
    let errno = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match name {
        "SCMP_ACT_ALLOW" => RET_ALLOW,
        "SCMP_ACT_ERRNO" => RET_ERRNO | errno,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => RET_TRAP,
        "SCMP_ACT_LOG" => RET_LOG,
        "SCMP_ACT_TRACE" => RET_TRACE | errno,
        other => return Err(bad(format!("unsupported action {other}"))),
    })
}

fn syscall_number(name: &str) -> Option<u32> {
    crate::seccomp_x86_64::SYSCALLS
        .binary_search_by(|(n, _)| n.cmp(&name))
        .ok()
        .map(|at| crate::seccomp_x86_64::SYSCALLS[at].1)
}

/// Whether the rule applies here, as Docker decides it: every `includes`
/// must hold and no `excludes` may.
fn applies(rule: &Rule, capabilities: &[u32], kernel: (u32, u32)) -> Result<bool> {
    let has_cap = |name: &String| {
        crate::capabilities::capability_number(name).is_some_and(|c| capabilities.contains(&c))
    };
    let at_least = |min: &String| -> Result<bool> {
        let wanted = parse_version(min).ok_or_else(|| bad(format!("bad minKernel {min:?}")))?;
        Ok(kernel >= wanted)
    };
    if let Some(ex) = &rule.excludes {
        if ex.arches.iter().flatten().any(|a| a == "amd64") || ex.caps.iter().flatten().any(has_cap)
        {
            return Ok(false);
        }
        if let Some(min) = &ex.min_kernel {
            if at_least(min)? {
                return Ok(false);
            }
        }
    }
    if let Some(inc) = &rule.includes {
        if let Some(arches) = &inc.arches {
            if !arches.is_empty() && !arches.iter().any(|a| a == "amd64") {
                return Ok(false);
            }
        }
        if !inc.caps.iter().flatten().all(has_cap) {
            return Ok(false);
        }
        if let Some(min) = &inc.min_kernel {
            if !at_least(min)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// A jump target: the next instruction, or a label bound later.
#[derive(Clone, Copy)]
enum Target {
    Next,
    Label(usize),
}

#[derive(Default)]
struct Assembler {
    code: Vec<(u16, Target, Target, u32)>,
    labels: Vec<Option<usize>>,
}

impl Assembler {
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }
    fn op(&mut self, code: u16, k: u32) {
        self.code.push((code, Target::Next, Target::Next, k));
    }
    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.code.push((code, jt, jf, k));
    }
    fn finish(self) -> Result<Vec<Instruction>> {
        if self.code.len() > MAX_INSTRUCTIONS {
            return Err(bad(format!(
                "{} instructions, more than the kernel's {MAX_INSTRUCTIONS}",
                self.code.len()
            )));
        }
        let offset = |at: usize, target: Target| -> Result<u8> {
            match target {
                Target::Next => Ok(0),
                Target::Label(label) => {
                    let to = self.labels[label].ok_or_else(|| bad("unbound label".into()))?;
                    u8::try_from(to - at - 1).map_err(|_| bad("a jump too far".into()))
                }
            }
        };
        self.code
            .iter()
            .enumerate()
            .map(|(at, (code, jt, jf, k))| {
                Ok(Instruction {
                    code: *code,
                    jt: offset(at, *jt)?,
                    jf: offset(at, *jf)?,
                    k: *k,
                })
            })
            .collect()
    }
}

/// Falls through when the 64-bit argument condition holds, else jumps to
/// `fail`. Clobbers the accumulator.
fn condition(asm: &mut Assembler, cond: &Condition, fail: usize) -> Result<()> {
    if cond.index > 5 {
        return Err(bad(format!("argument index {} out of range", cond.index)));
    }
    let (lo, hi) = (arg_low(cond.index), arg_high(cond.index));
    let split = |v: u64| ((v >> 32) as u32, v as u32);
    let (vh, vl) = split(cond.value);
    let pass = asm.label();
    let (f, p, n) = (Target::Label(fail), Target::Label(pass), Target::Next);
    match cond.op.as_str() {
        "SCMP_CMP_EQ" => {
            asm.op(LD_W_ABS, hi);
            asm.jump(JEQ_K, vh, n, f);
            asm.op(LD_W_ABS, lo);
            asm.jump(JEQ_K, vl, n, f);
        }
        "SCMP_CMP_NE" => {
            asm.op(LD_W_ABS, hi);
            asm.jump(JEQ_K, vh, n, p);
            asm.op(LD_W_ABS, lo);
            asm.jump(JEQ_K, vl, f, n);
        }
        "SCMP_CMP_MASKED_EQ" => {
            let (eh, el) = split(cond.value_two);
            asm.op(LD_W_ABS, hi);
            asm.op(ALU_AND_K, vh);
            asm.jump(JEQ_K, eh, n, f);
            asm.op(LD_W_ABS, lo);
            asm.op(ALU_AND_K, vl);
            asm.jump(JEQ_K, el, n, f);
        }
        "SCMP_CMP_GT" | "SCMP_CMP_GE" => {
            asm.op(LD_W_ABS, hi);
            asm.jump(JGT_K, vh, p, n);
            asm.jump(JEQ_K, vh, n, f);
            asm.op(LD_W_ABS, lo);
            let code = if cond.op == "SCMP_CMP_GT" {
                JGT_K
            } else {
                JGE_K
            };
            asm.jump(code, vl, n, f);
        }
        "SCMP_CMP_LT" | "SCMP_CMP_LE" => {
            asm.op(LD_W_ABS, hi);
            asm.jump(JGT_K, vh, f, n);
            asm.jump(JEQ_K, vh, n, p);
            asm.op(LD_W_ABS, lo);
            // a < v is !(a >= v); a <= v is !(a > v).
            let code = if cond.op == "SCMP_CMP_LT" {
                JGE_K
            } else {
                JGT_K
            };
            asm.jump(code, vl, f, n);
        }
        other => return Err(bad(format!("unsupported operator {other}"))),
    }
    asm.bind(pass);
    Ok(())
}

/// Compiles `profile` for a process holding `capabilities` on a kernel of
/// version `kernel`.
pub fn compile(
    profile: &str,
    capabilities: &[u32],
    kernel: (u32, u32),
) -> Result<Vec<Instruction>> {
    let profile: Profile =
        serde_json::from_str(profile).map_err(|err| bad(format!("not valid JSON: {err}")))?;
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut asm = Assembler::default();
    // Another architecture's calls have other numbers: the default for them.
    let native = asm.label();
    asm.op(LD_W_ABS, ARCH);
    asm.jump(
        JEQ_K,
        AUDIT_ARCH_X86_64,
        Target::Label(native),
        Target::Next,
    );
    asm.op(RET_K, default);
    asm.bind(native);
    asm.op(LD_W_ABS, NR);
    for rule in profile.syscalls.iter().flatten() {
        let ret = action(&rule.action, rule.errno_ret)?;
        if ret == default || !applies(rule, capabilities, kernel)? {
            continue;
        }
        let conditions = rule.args.as_deref().unwrap_or_default();
        let names = rule.names.iter().flatten().chain(rule.name.as_ref());
        // Names this architecture lacks are left out, as libseccomp does.
        for nr in names.filter_map(|n| syscall_number(n)) {
            let skip = asm.label();
            if conditions.is_empty() {
                asm.jump(JEQ_K, nr, Target::Next, Target::Label(skip));
                asm.op(RET_K, ret);
            } else {
                let fail = asm.label();
                asm.jump(JEQ_K, nr, Target::Next, Target::Label(skip));
                for cond in conditions {
                    condition(&mut asm, cond, fail)?;
                }
                asm.op(RET_K, ret);
                asm.bind(fail);
                asm.op(LD_W_ABS, NR);
            }
            asm.bind(skip);
        }
    }
    asm.op(RET_K, default);
    asm.finish()
}

/// Installs `program` as this process's seccomp filter; the kernel needs
/// `no_new_privs` or CAP_SYS_ADMIN for it.
pub fn load(program: &[Instruction]) -> Result<()> {
    let len = u16::try_from(program.len()).map_err(|_| bad("program too long".into()))?;
    let fprog = libc::sock_fprog {
        len,
        // Instruction has sock_filter's layout.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: a sock_fprog pointing at `program`, which outlives the call.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EINVAL) {
            return Err(RuntimeError::Security(
                "this kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER); run with --security-opt seccomp=unconfined".into(),
            ));
        }
        return Err(RuntimeError::Io {
            op: "container init: loading",
            path: "the seccomp filter".into(),
            source,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::DEFAULT_CAPABILITIES;

    /// Runs `program` on one call, as the kernel would: its return value.
    fn run(program: &[Instruction], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = Vec::new();
        data.extend_from_slice(&nr.to_le_bytes());
        data.extend_from_slice(&arch.to_le_bytes());
        data.extend_from_slice(&0u64.to_le_bytes());
        for arg in args {
            data.extend_from_slice(&arg.to_le_bytes());
        }
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = program[pc];
            pc += 1;
            let jump = |taken: bool| if taken { i.jt } else { i.jf } as usize;
            match i.code {
                LD_W_ABS => {
                    let at = i.k as usize;
                    a = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
                }
                ALU_AND_K => a &= i.k,
                JEQ_K => pc += jump(a == i.k),
                JGT_K => pc += jump(a > i.k),
                JGE_K => pc += jump(a >= i.k),
                RET_K => return i.k,
                other => panic!("unexpected instruction {other:#x}"),
            }
        }
    }

    fn nr(name: &str) -> u32 {
        syscall_number(name).expect(name)
    }

    const EPERM: u32 = RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn the_default_profile_allows_ordinary_calls_and_refuses_escapes() {
        let program = compile(DEFAULT_PROFILE, &DEFAULT_CAPABILITIES, (6, 1)).expect("compiles");
        let call = |name: &str, args: [u64; 6]| run(&program, AUDIT_ARCH_X86_64, nr(name), args);
        for name in [
            "read",
            "write",
            "execve",
            "capset",
            "prctl",
            "close_range",
            "openat",
        ] {
            assert_eq!(call(name, [0; 6]), RET_ALLOW, "{name}");
        }
        for name in [
            "unshare",
            "mount",
            "keyctl",
            "add_key",
            "setns",
            "bpf",
            "init_module",
        ] {
            assert_eq!(call(name, [0; 6]), EPERM, "{name}");
        }
        // ptrace is allowed from 4.8 on.
        assert_eq!(call("ptrace", [0; 6]), RET_ALLOW);
        let old = compile(DEFAULT_PROFILE, &DEFAULT_CAPABILITIES, (4, 4)).expect("compiles");
        assert_eq!(run(&old, AUDIT_ARCH_X86_64, nr("ptrace"), [0; 6]), EPERM);
        // clone: threads and forks yes, new namespaces no; clone3 says ENOSYS so libc falls back.
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;
        assert_eq!(call("clone", [thread, 0, 0, 0, 0, 0]), RET_ALLOW);
        let userns = libc::CLONE_NEWUSER as u64 | libc::SIGCHLD as u64;
        assert_eq!(call("clone", [userns, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(call("clone3", [0; 6]), RET_ERRNO | libc::ENOSYS as u32);
        // personality: only the values Docker lists.
        assert_eq!(call("personality", [0; 6]), RET_ALLOW);
        assert_eq!(call("personality", [0xffff_ffff, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("personality", [0x0040_0000, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(call("personality", [1 << 32, 0, 0, 0, 0, 0]), EPERM);
        // socket: every family but AF_VSOCK (40) and 38.
        assert_eq!(
            call("socket", [libc::AF_INET as u64, 0, 0, 0, 0, 0]),
            RET_ALLOW
        );
        assert_eq!(call("socket", [39, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("socket", [41, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("socket", [38, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(call("socket", [40, 0, 0, 0, 0, 0]), EPERM);
        assert_eq!(call("socket", [(1 << 32) | 2, 0, 0, 0, 0, 0]), RET_ALLOW);
        // x32 numbers and other architectures fall to the default.
        assert_eq!(
            run(
                &program,
                AUDIT_ARCH_X86_64,
                nr("read") | 0x4000_0000,
                [0; 6]
            ),
            EPERM
        );
        assert_eq!(run(&program, 0x4000_0003, 0, [0; 6]), EPERM);
    }

    #[test]
    fn capabilities_open_the_calls_they_stand_for() {
        let mut caps = DEFAULT_CAPABILITIES.to_vec();
        caps.push(21); // SYS_ADMIN
        let program = compile(DEFAULT_PROFILE, &caps, (6, 1)).expect("compiles");
        for name in ["mount", "unshare", "setns", "clone3"] {
            assert_eq!(
                run(&program, AUDIT_ARCH_X86_64, nr(name), [0; 6]),
                RET_ALLOW,
                "{name}"
            );
        }
        assert_eq!(
            run(&program, AUDIT_ARCH_X86_64, nr("keyctl"), [0; 6]),
            EPERM
        );
    }

    #[test]
    fn a_profile_of_ones_own_with_every_operator() {
        let profile = r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"name": "getpid", "action": "SCMP_ACT_ERRNO", "errnoRet": 99, "args": null},
                {"names": ["dup"], "action": "SCMP_ACT_KILL", "args": [{"index": 0, "value": 10, "op": "SCMP_CMP_NE"}]},
                {"names": ["dup2"], "action": "SCMP_ACT_ERRNO", "args": [
                    {"index": 0, "value": 5, "op": "SCMP_CMP_GE"},
                    {"index": 1, "value": 8589934592, "op": "SCMP_CMP_LT"}]},
                {"names": ["fcntl"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 3, "op": "SCMP_CMP_LE"}]},
                {"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO"}
            ]
        }"#;
        let program = compile(profile, &[], (6, 1)).expect("compiles");
        let call = |name: &str, args: [u64; 6]| run(&program, AUDIT_ARCH_X86_64, nr(name), args);
        assert_eq!(call("getpid", [0; 6]), RET_ERRNO | 99);
        assert_eq!(call("dup", [10, 0, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("dup", [11, 0, 0, 0, 0, 0]), RET_KILL_THREAD);
        assert_eq!(call("dup", [10 | 1 << 32, 0, 0, 0, 0, 0]), RET_KILL_THREAD);
        assert_eq!(call("dup2", [5, 1 << 32, 0, 0, 0, 0]), EPERM);
        assert_eq!(call("dup2", [4, 1, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("dup2", [1 << 32, 2 << 32, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("fcntl", [0, 3, 0, 0, 0, 0]), EPERM);
        assert_eq!(call("fcntl", [0, 4, 0, 0, 0, 0]), RET_ALLOW);
        assert_eq!(call("fcntl", [0, 1 << 32, 0, 0, 0, 0]), RET_ALLOW);
        assert!(compile(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#, &[], (6, 1)).is_err());
        assert!(compile("{", &[], (6, 1)).is_err());
        assert_eq!(parse_version("6.1.0-27-amd64"), Some((6, 1)));
    }
}
