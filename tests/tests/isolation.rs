//! Docker's default isolation, tried from inside busybox containers: each
//! way out (the host's kernel settings, its memory and keys, new user
//! namespaces, mounts, the kernel keyring) is refused by default and open
//! with `--privileged`; `--security-opt`, `--cap-add`, `--cap-drop` and
//! `--sysctl` change what they say, for `run` and `exec` alike.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use tartan_runtime::rootfs::{MASKED_PATHS, READONLY_PATHS};
use tartan_tests::agent::Agent;
use tartan_tests::cli::{cli_ok, text, VXLAN};
use tartan_tests::cluster::Cluster;
use tartan_tests::rootfs::{busybox_rootfs, tarball};

/// A static x86_64 executable of one page holding `code`, loaded at 4 MiB:
/// probes of single system calls that busybox has no applet for.
fn tiny_elf(code: &[u8]) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let size = HEADERS + code.len() as u64;
    let mut elf = Vec::new();
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // program headers
    elf.extend_from_slice(&0u64.to_le_bytes()); // no section headers
    elf.extend_from_slice(&0u32.to_le_bytes());
    for half in [64u16, 56, 1, 0, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    for word in [0, BASE, BASE, size, size, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

/// Exits 1 when keyctl(KEYCTL_GET_KEYRING_ID, session) is refused with
/// EPERM, else 0 (a key id, or ENOKEY: the call was let through).
const KEYCTL_PROBE: &[u8] = &[
    0xb8, 0xfa, 0x00, 0x00, 0x00, // mov eax, 250 (keyctl)
    0x31, 0xff, // xor edi, edi (KEYCTL_GET_KEYRING_ID)
    0xbe, 0xfd, 0xff, 0xff, 0xff, // mov esi, -3 (the session keyring)
    0x31, 0xd2, // xor edx, edx
    0x0f, 0x05, // syscall
    0x31, 0xff, // xor edi, edi
    0x48, 0x83, 0xf8, 0xff, // cmp rax, -EPERM
    0x75, 0x05, // jne exit
    0xbf, 0x01, 0x00, 0x00, 0x00, // mov edi, 1
    0xb8, 0x3c, 0x00, 0x00, 0x00, // exit: mov eax, 60
    0x0f, 0x05, // syscall
];

/// Exits with its effective uid (low byte): 0 when a setuid-root copy
/// took effect for another user.
const EUID_PROBE: &[u8] = &[
    0xb8, 0x6b, 0x00, 0x00, 0x00, // mov eax, 107 (geteuid)
    0x0f, 0x05, // syscall
    0x89, 0xc7, // mov edi, eax
    0xb8, 0x3c, 0x00, 0x00, 0x00, // mov eax, 60
    0x0f, 0x05, // syscall
];

/// Imports `busybox` with the applets the probes use, the two probes, and
/// a user to drop to.
fn import_image(agent: &Agent) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = busybox_rootfs(dir.path())?;
    for applet in ["unshare", "mount", "head", "su", "chmod", "cp"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    for (name, code) in [("keyctl-probe", KEYCTL_PROBE), ("euid-probe", EUID_PROBE)] {
        let path = root.join("bin").join(name);
        std::fs::write(&path, tiny_elf(code))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/:/bin/sh\n",
    )?;
    let archive = dir.path().join("busybox.tar");
    std::fs::write(&archive, tarball(&root, false)?)?;
    cli_ok(
        agent,
        &["import", &archive.display().to_string(), "busybox"],
    )?;
    Ok(())
}

/// A shell script that tries each way out and prints `NAME allowed` or
/// `NAME refused`, and the names it tries.
fn escape_script() -> (String, Vec<String>) {
    let mut script = String::from(
        "probe() { name=$1; shift; if \"$@\" >/dev/null 2>&1; then echo \"$name allowed\"; else echo \"$name refused\"; fi; }\n",
    );
    let mut names = Vec::new();
    let mut probe = |name: &str, command: &str| {
        script.push_str(&format!("probe '{name}' {command}\n"));
        names.push(name.to_string());
    };
    // The same value written back: harmless even where it is let through.
    probe(
        "write core_pattern",
        "sh -c 'v=$(cat /proc/sys/kernel/core_pattern) && echo \"$v\" > /proc/sys/kernel/core_pattern'",
    );
    probe(
        "write vm.swappiness",
        "sh -c 'v=$(cat /proc/sys/vm/swappiness) && echo \"$v\" > /proc/sys/vm/swappiness'",
    );
    probe("unshare -U", "unshare -U true");
    probe("mount", "sh -c 'mkdir -p /m && mount -t tmpfs none /m'");
    probe("keyctl", "keyctl-probe");
    // A node made in the container opens the host's device behind it,
    // unless the devices cgroup says no (Docker allows only its own list).
    let (kind, major, minor) = host_device();
    probe(
        "open a host device",
        &format!("sh -c 'mknod /dev/hostdev {kind} {major} {minor} && : < /dev/hostdev'"),
    );
    // Every masked path this kernel has (/proc/kcore only with CONFIG_PROC_KCORE):
    // a masked file is /dev/null, a masked directory an empty tmpfs.
    for path in MASKED_PATHS.map(Path::new).iter().filter(|p| p.exists()) {
        let shown = path.display();
        if path.is_dir() {
            probe(
                &format!("see {shown}"),
                &format!("sh -c '! grep -q \" {shown} tmpfs \" /proc/self/mounts'"),
            );
        } else {
            probe(
                &format!("read {shown}"),
                &format!("sh -c 'test ! -c {shown} && head -c 1 {shown} >/dev/null'"),
            );
        }
    }
    for path in READONLY_PATHS.map(Path::new).iter().filter(|p| p.exists()) {
        let shown = path.display();
        probe(
            &format!("writable {shown}"),
            &format!("sh -c '! grep -q \" {shown} proc ro,\" /proc/self/mounts'"),
        );
    }
    (script, names)
}

/// A device of the host's, outside Docker's list, that root opens with
/// no capability: the first of these the host has.
fn host_device() -> (char, u32, u32) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let candidates = ["/dev/loop-control", "/dev/vcs", "/dev/loop0", "/dev/tty1"];
    candidates
        .iter()
        .find_map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            let kind = if meta.file_type().is_block_device() {
                'b'
            } else if meta.file_type().is_char_device() {
                'c'
            } else {
                return None;
            };
            Some((kind, libc::major(meta.rdev()), libc::minor(meta.rdev())))
        })
        .unwrap_or_else(|| panic!("the host has none of {candidates:?} to try"))
}

/// Runs the escape script in a new container with `flags`; each probe's verdict.
fn try_escapes(agent: &Agent, name: &str, flags: &[&str]) -> Result<Vec<(String, String)>> {
    let (script, names) = escape_script();
    ensure!(
        names.iter().any(|n| n.starts_with("read /proc/")),
        "this kernel has none of Docker's masked /proc files to try"
    );
    let mut args = vec!["run", "--name", name];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["busybox", "sh", "-c", &script]);
    let out = cli_ok(agent, &args)?;
    let verdicts: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            let verdict = out
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{n} ")))
                .unwrap_or("missing");
            (n.clone(), verdict.to_string())
        })
        .collect();
    eprintln!("{name}: {verdicts:?}");
    Ok(verdicts)
}

fn status_field(agent: &Agent, args: &[&str], field: &str) -> Result<String> {
    let out = cli_ok(agent, args)?;
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:\t")))
        .map(str::to_string)
        .with_context(|| format!("no {field} in {out}"))
}

#[test]
fn dockers_defaults_refuse_each_escape_and_the_flags_change_them() -> Result<()> {
    let cluster = Cluster::start("is", 209, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_image(agent)?;

    for (probe, verdict) in try_escapes(agent, "confined", &[])? {
        ensure!(verdict == "refused", "{probe}: {verdict} by default");
    }

    // exec gets the container's filter and capabilities too.
    cli_ok(
        agent,
        &["run", "-d", "--name", "long", "busybox", "sleep", "1000"],
    )?;
    let unshared = agent.cli(&["exec", "long", "unshare", "-U", "true"])?;
    ensure!(
        !unshared.status.success(),
        "unshare -U from exec: {}",
        text(&unshared.stdout)
    );
    let keyctl = agent.cli(&["exec", "long", "keyctl-probe"])?;
    assert_eq!(keyctl.status.code(), Some(1), "keyctl from exec");
    let status = ["exec", "long", "cat", "/proc/self/status"];
    assert_eq!(status_field(agent, &status, "Seccomp")?, "2");
    assert_eq!(status_field(agent, &status, "NoNewPrivs")?, "0");
    assert_eq!(status_field(agent, &status, "CapEff")?, "00000000a80425fb");

    // A setuid binary works, as in Docker, unless no-new-privileges.
    let setuid = "cp /bin/euid-probe /suid && chmod 4755 /suid && su -s /bin/sh user -c /suid";
    let out = agent.cli(&["run", "--name", "suid", "busybox", "sh", "-c", setuid])?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "a setuid-root binary runs as root: {}",
        text(&out.stderr)
    );
    let out = agent.cli(&[
        "run",
        "--name",
        "nnp",
        "--security-opt",
        "no-new-privileges",
        "busybox",
        "sh",
        "-c",
        setuid,
    ])?;
    assert_eq!(
        out.status.code(),
        Some(1000 % 256),
        "no-new-privileges ignores the setuid bit: {}",
        text(&out.stderr)
    );
    let nnp = [
        "run",
        "--name",
        "nnp2",
        "--security-opt",
        "no-new-privileges",
        "busybox",
        "cat",
        "/proc/self/status",
    ];
    assert_eq!(status_field(agent, &nnp, "NoNewPrivs")?, "1");

    // --sysctl net.*: set at the start in the container's own namespace, read-only after.
    let out = cli_ok(
        agent,
        &[
            "run",
            "--name",
            "router",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "busybox",
            "sh",
            "-c",
            "cat /proc/sys/net/ipv4/ip_forward; echo 0 > /proc/sys/net/ipv4/ip_forward || echo refused",
        ],
    )?;
    assert_eq!(out.lines().collect::<Vec<_>>(), ["1", "refused"]);
    for (flags, why) in [
        (vec!["--sysctl", "kernel.core_pattern=core"], "not allowed"),
        (vec!["--sysctl", "vm.swappiness=1"], "not allowed"),
        (
            vec!["--net", "host", "--sysctl", "net.ipv4.ip_forward=1"],
            "own network namespace",
        ),
        (vec!["--cap-add", "FLY"], "unknown capability"),
        (
            vec!["--security-opt", "apparmor=unconfined"],
            "unsupported --security-opt",
        ),
        (
            vec!["--security-opt", "seccomp=/nonexistent.json"],
            "/nonexistent.json",
        ),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&["busybox", "true"]);
        let out = agent.cli(&args)?;
        let stderr = text(&out.stderr);
        ensure!(
            out.status.code() == Some(125) && stderr.contains(why) && stderr.lines().count() == 1,
            "{flags:?}: {:?} {stderr}",
            out.status.code()
        );
    }

    // seccomp=unconfined and seccomp=FILE.
    let out = agent.cli(&[
        "run",
        "--name",
        "unconfined",
        "--security-opt",
        "seccomp=unconfined",
        "busybox",
        "unshare",
        "-U",
        "true",
    ])?;
    ensure!(
        out.status.success(),
        "unshare -U unconfined: {}",
        text(&out.stderr)
    );
    let dir = tempfile::tempdir()?;
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}"#,
    )?;
    let opt = format!("seccomp={}", profile.display());
    let script = "unshare -U true && echo unshared; mkdir /made 2>&1; true";
    let out = cli_ok(
        agent,
        &[
            "run",
            "--name",
            "own",
            "--security-opt",
            &opt,
            "busybox",
            "sh",
            "-c",
            script,
        ],
    )?;
    ensure!(
        out.contains("unshared") && out.contains("Permission denied"),
        "the profile given: {out}"
    );
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--name",
            "own-long",
            "--security-opt",
            &opt,
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let out = agent.cli(&["exec", "own-long", "mkdir", "/made"])?;
    ensure!(
        text(&out.stderr).contains("Permission denied"),
        "exec follows the profile given: {}",
        text(&out.stderr)
    );

    // Capabilities: drop them all but one.
    let caps = [
        "run",
        "--name",
        "chown-only",
        "--cap-drop",
        "ALL",
        "--cap-add",
        "chown",
        "busybox",
        "cat",
        "/proc/self/status",
    ];
    assert_eq!(status_field(agent, &caps, "CapEff")?, "0000000000000001");
    Ok(())
}

#[test]
fn privileged_containers_may_do_all_of_it() -> Result<()> {
    let cluster = Cluster::start("ip", 210, VXLAN, 1)?;
    let agent = &cluster.agents[0];
    import_image(agent)?;
    for (probe, verdict) in try_escapes(agent, "privileged", &["--privileged"])? {
        ensure!(verdict == "allowed", "{probe}: {verdict} with --privileged");
    }
    let status = [
        "run",
        "--name",
        "status",
        "--privileged",
        "busybox",
        "cat",
        "/proc/self/status",
    ];
    assert_eq!(status_field(agent, &status, "Seccomp")?, "0");
    cli_ok(
        agent,
        &[
            "run",
            "-d",
            "--privileged",
            "--name",
            "long",
            "busybox",
            "sleep",
            "1000",
        ],
    )?;
    let unshared = agent.cli(&["exec", "long", "unshare", "-U", "true"])?;
    ensure!(
        unshared.status.success(),
        "unshare -U from exec: {}",
        text(&unshared.stderr)
    );
    let sys = agent.cli(&[
        "exec",
        "long",
        "grep",
        " /sys sysfs rw,",
        "/proc/self/mounts",
    ])?;
    ensure!(sys.status.success(), "/sys is writable with --privileged");
    // The host's devices, as Docker gives them (its TUN device is one
    // every host here has), and not to others.
    let tun = ["test", "-c", "/dev/net/tun"];
    let privileged = agent.cli(&[&["exec", "long"][..], &tun].concat())?;
    ensure!(
        privileged.status.success(),
        "no /dev/net/tun with --privileged"
    );
    cli_ok(
        agent,
        &["run", "-d", "--name", "plain", "busybox", "sleep", "1000"],
    )?;
    let plain = agent.cli(&[&["exec", "plain"][..], &tun].concat())?;
    ensure!(!plain.status.success(), "/dev/net/tun without --privileged");
    Ok(())
}
