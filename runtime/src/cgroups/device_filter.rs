//! Device rules on cgroup v2: there is no `devices.allow` file there, only
//! an eBPF program of type CGROUP_DEVICE attached to the cgroup, which the
//! kernel asks for each open or mknod of a device node. The program is
//! built here from the rules (pure, checked by a small interpreter in the
//! tests); loading and attaching it are [`super::CgroupFs`]'s.

use crate::{Result, RuntimeError};

/// One instruction, as `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    /// The 8 bytes the kernel reads (registers packed dst low, src high).
    pub fn to_bytes(self) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[0] = self.code;
        bytes[1] = (self.src << 4) | (self.dst & 0x0f);
        bytes[2..4].copy_from_slice(&self.off.to_ne_bytes());
        bytes[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        bytes
    }
}

// The opcodes used (linux/bpf.h, linux/bpf_common.h).
/// `dst = *(u32 *)(src + off)`.
const LDX_MEM_W: u8 = 0x61;
/// `dst &= imm`, 32 bits.
const AND32_K: u8 = 0x54;
/// `dst >>= imm`, 32 bits.
const RSH32_K: u8 = 0x74;
/// `dst = src`.
const MOV64_X: u8 = 0xbf;
/// `dst = imm`.
const MOV64_K: u8 = 0xb7;
/// `if dst != imm goto +off`.
const JNE_K: u8 = 0x55;
const EXIT: u8 = 0x95;

// `struct bpf_cgroup_dev_ctx` and its values.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;
pub const DEV_BLOCK: u32 = 1;
pub const DEV_CHAR: u32 = 2;
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;

/// One allow rule, as the devices cgroup writes them (`c 1:3 rwm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRule {
    /// [`DEV_CHAR`] or [`DEV_BLOCK`]; None for both (`a`).
    pub kind: Option<u32>,
    /// None for `*`.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// [`ACC_MKNOD`], [`ACC_READ`] and [`ACC_WRITE`] bits.
    pub access: u32,
}

impl DeviceRule {
    /// Parses `TYPE MAJOR:MINOR ACCESS` (`c *:* m`, `c 136:* rwm`), or `a`.
    pub fn parse(text: &str) -> Result<DeviceRule> {
        let bad = || RuntimeError::Limits(format!("bad device rule {text:?}"));
        let mut fields = text.split_whitespace();
        let kind = match fields.next() {
            Some("a") => {
                return Ok(DeviceRule {
                    kind: None,
                    major: None,
                    minor: None,
                    access: ACC_MKNOD | ACC_READ | ACC_WRITE,
                })
            }
            Some("c") => DEV_CHAR,
            Some("b") => DEV_BLOCK,
            _ => return Err(bad()),
        };
        let (major, minor) = fields
            .next()
            .and_then(|n| n.split_once(':'))
            .ok_or_else(bad)?;
        let number = |n: &str| match n {
            "*" => Ok(None),
            n => n.parse().map(Some).map_err(|_| bad()),
        };
        let mut access = 0;
        for c in fields.next().ok_or_else(bad)?.chars() {
            access |= match c {
                'm' => ACC_MKNOD,
                'r' => ACC_READ,
                'w' => ACC_WRITE,
                _ => return Err(bad()),
            };
        }
        if fields.next().is_some() {
            return Err(bad());
        }
        Ok(DeviceRule {
            kind: Some(kind),
            major: number(major)?,
            minor: number(minor)?,
            access,
        })
    }
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

/// The program allowing what one of `rules` allows and refusing the rest:
/// the context's fields into registers, then one block per rule that
/// jumps to the next block on any mismatch and returns 1 (allow) at its
/// end; 0 after the last.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut prog = vec![
        insn(LDX_MEM_W, 2, 1, CTX_ACCESS_TYPE, 0),
        insn(AND32_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, CTX_ACCESS_TYPE, 0),
        insn(RSH32_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, CTX_MAJOR, 0),
        insn(LDX_MEM_W, 5, 1, CTX_MINOR, 0),
    ];
    for rule in rules {
        // Jumps carry a placeholder offset (0): each is set to reach past
        // the block once its length is known.
        let mut block = Vec::new();
        if let Some(kind) = rule.kind {
            block.push(insn(JNE_K, 2, 0, 0, kind as i32));
        }
        let all = ACC_MKNOD | ACC_READ | ACC_WRITE;
        if rule.access & all != all {
            // Any access asked for beyond the rule's: not this rule.
            block.push(insn(MOV64_X, 1, 3, 0, 0));
            block.push(insn(AND32_K, 1, 0, 0, (!rule.access & all) as i32));
            block.push(insn(JNE_K, 1, 0, 0, 0));
        }
        if let Some(major) = rule.major {
            block.push(insn(JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor {
            block.push(insn(JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(MOV64_K, 0, 0, 0, 1));
        block.push(insn(EXIT, 0, 0, 0, 0));
        let len = block.len();
        for (i, instruction) in block.iter_mut().enumerate() {
            if instruction.code == JNE_K {
                instruction.off = (len - i - 1) as i16;
            }
        }
        prog.extend(block);
    }
    prog.push(insn(MOV64_K, 0, 0, 0, 0));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    prog
}

/// The program for Docker's rules ([`super::DEFAULT_DEVICE_RULES`]).
pub fn default_program() -> Result<Vec<Insn>> {
    let rules = super::DEFAULT_DEVICE_RULES
        .iter()
        .map(|rule| DeviceRule::parse(rule))
        .collect::<Result<Vec<_>>>()?;
    Ok(program(&rules))
}

/// Loads `program` and attaches it to the cgroup directory `dir`; the
/// attachment stays with the cgroup once the descriptors close.
pub fn load_and_attach(dir: &std::path::Path, program: &[Insn]) -> Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_ATTACH: libc::c_long = 8;
    const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
    const BPF_CGROUP_DEVICE: u32 = 6;
    /// Programs of the cgroup's ancestors (systemd's) still run too.
    const BPF_F_ALLOW_MULTI: u32 = 2;

    /// The head of `union bpf_attr` for BPF_PROG_LOAD; the kernel takes
    /// the rest as zero.
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
    }
    /// The head of `union bpf_attr` for BPF_PROG_ATTACH.
    #[repr(C)]
    struct ProgAttach {
        target_fd: u32,
        attach_bpf_fd: u32,
        attach_type: u32,
        attach_flags: u32,
    }

    let failed = |what: &'static str| {
        let source = std::io::Error::last_os_error();
        RuntimeError::Io {
            op: what,
            path: dir.to_path_buf(),
            source,
        }
    };
    let code: Vec<u8> = program.iter().flat_map(|i| i.to_bytes()).collect();
    let license = c"Apache-2.0";
    let load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
    };
    // SAFETY: bpf(2) reads `load` and the instruction and license buffers
    // it points to, all alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &load as *const ProgLoad,
            std::mem::size_of::<ProgLoad>(),
        )
    };
    if fd < 0 {
        return Err(failed("loading the device rules (a BPF program) for"));
    }
    // SAFETY: a descriptor the kernel just returned, ours alone.
    let prog = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let cgroup = std::fs::File::open(dir).map_err(crate::error::io_err("opening", dir))?;
    let attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: bpf(2) reads `attach`; both descriptors are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attach as *const ProgAttach,
            std::mem::size_of::<ProgAttach>(),
        )
    };
    if rc < 0 {
        return Err(failed("attaching the device rules to"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the subset of eBPF that [`program`] uses on a device context.
    fn run(prog: &[Insn], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [(access << 16) | kind, major, minor];
        let mut regs = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = prog[pc];
            let (dst, src) = (i.dst as usize, i.src as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1, "loads are from the context");
                    regs[dst] = u64::from(ctx[(i.off / 4) as usize]);
                }
                AND32_K => regs[dst] = u64::from(regs[dst] as u32 & i.imm as u32),
                RSH32_K => regs[dst] = u64::from((regs[dst] as u32) >> i.imm),
                MOV64_X => regs[dst] = regs[src],
                MOV64_K => regs[dst] = i.imm as i64 as u64,
                JNE_K => {
                    if regs[dst] != i.imm as i64 as u64 {
                        pc += i.off as usize;
                    }
                }
                EXIT => return regs[0],
                other => panic!("opcode {other:#x} not expected"),
            }
        }
    }

    #[test]
    fn docker_s_rules_allow_its_devices_and_nothing_else() {
        let prog = default_program().expect("the rules parse");
        let rw = ACC_READ | ACC_WRITE;
        let allowed = |kind, access, major, minor| run(&prog, kind, access, major, minor) == 1;
        // null, zero, urandom, tty, ptmx, a pts, TUN.
        for (major, minor) in [(1, 3), (1, 5), (1, 9), (5, 0), (5, 2), (136, 7), (10, 200)] {
            assert!(allowed(DEV_CHAR, rw, major, minor), "c {major}:{minor}");
        }
        // Any node may be made, of either kind...
        assert!(allowed(DEV_BLOCK, ACC_MKNOD, 8, 0));
        assert!(allowed(DEV_CHAR, ACC_MKNOD, 10, 237));
        // ...but the host's disk, loop-control, kmsg, a block null are not opened.
        assert!(!allowed(DEV_BLOCK, ACC_READ, 8, 0));
        assert!(!allowed(DEV_CHAR, ACC_READ, 10, 237));
        assert!(!allowed(DEV_CHAR, rw, 1, 11));
        assert!(!allowed(DEV_BLOCK, ACC_READ, 1, 3));
        // Making and opening at once is more than `c *:* m` gives.
        assert!(!allowed(DEV_CHAR, ACC_MKNOD | ACC_READ, 4, 1));
    }

    #[test]
    fn rules_parse_as_the_devices_cgroup_writes_them() {
        assert_eq!(
            DeviceRule::parse("c 136:* rwm").expect("parses"),
            DeviceRule {
                kind: Some(DEV_CHAR),
                major: Some(136),
                minor: None,
                access: ACC_MKNOD | ACC_READ | ACC_WRITE,
            }
        );
        assert_eq!(
            DeviceRule::parse("b *:* m").expect("parses").access,
            ACC_MKNOD
        );
        let all = program(&[DeviceRule::parse("a").expect("parses")]);
        assert_eq!(run(&all, DEV_BLOCK, ACC_READ, 8, 0), 1, "a: everything");
        for bad in [
            "x 1:3 rwm",
            "c 1 rwm",
            "c 1:3 rwx",
            "c a:3 r",
            "c 1:3 r extra",
        ] {
            assert!(DeviceRule::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn instructions_are_laid_out_as_the_kernel_reads_them() {
        let bytes = insn(LDX_MEM_W, 2, 1, 4, 0).to_bytes();
        assert_eq!(bytes[0], 0x61);
        assert_eq!(bytes[1], 0x12, "src 1 high, dst 2 low");
        assert_eq!(i16::from_ne_bytes([bytes[2], bytes[3]]), 4);
    }
}
