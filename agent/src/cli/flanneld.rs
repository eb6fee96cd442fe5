//! `tartan` as a drop-in for `flanneld`: flanneld's flags in Go's form
//! (`-iface=eth0`, `-etcd-endpoints=…`, `-ip-masq`, single or double dash,
//! `-name value` or `-name=value`) and its `FLANNELD_*` environment, turned
//! into `tartan agent` arguments before clap sees them. Pure, so the rules
//! have unit tests.
//!
//! Invoked as `flanneld` (a link or a copy named so), the binary is the
//! agent with flanneld's defaults: the subnet file at
//! `/run/flannel/subnet.env`, and no bridge of its own (flannel makes none;
//! `dockerd --bip=$FLANNEL_SUBNET` makes docker0). The seed's
//! `/etc/sysconfig/flanneld` variables `FLANNEL_ETCD_ENDPOINTS` and
//! `FLANNEL_ETCD_PREFIX` are read too.

use std::ffi::OsString;

/// How one flanneld flag maps onto `tartan agent`.
enum Mapping {
    /// A flag that takes a value: tartan's long name.
    Value(&'static str),
    /// A boolean flag: tartan's long name.
    Bool(&'static str),
    /// Accepted for compatibility; it changes nothing in tartan. The reason is logged.
    Ignored(&'static str),
    /// Refused in one line: what tartan cannot do.
    Refused(&'static str),
}

/// flanneld's flags (v0.20 to today) and what each becomes.
fn mapping(name: &str) -> Option<Mapping> {
    use Mapping::*;
    Some(match name {
        "etcd-endpoints" => Value("etcd-endpoints"),
        "etcd-prefix" => Value("etcd-prefix"),
        "etcd-keyfile" => Value("etcd-keyfile"),
        "etcd-certfile" => Value("etcd-certfile"),
        "etcd-cafile" => Value("etcd-cafile"),
        "etcd-username" => Value("etcd-username"),
        "etcd-password" => Value("etcd-password"),
        "iface" => Value("iface"),
        "public-ip" => Value("public-ip"),
        "subnet-file" => Value("subnet-file"),
        // flanneld's margin is a number of minutes; tartan reads a bare number so too.
        "subnet-lease-renew-margin" => Value("subnet-lease-renew-margin"),
        "ip-masq" => Bool("ip-masq"),
        "iptables-forward-rules" => Bool("forward-rules"),
        "version" => Bool("version"),
        "healthz-ip" | "healthz-port" => {
            Ignored("tartan serves no healthz port; use `tartan status`")
        }
        "iptables-resync" => Ignored("tartan re-asserts its nftables rules every 3 s"),
        "v" | "log_dir" | "logtostderr" | "alsologtostderr" | "stderrthreshold" => {
            Ignored("tartan logs to stderr; set TARTAN_LOG for the level")
        }
        "public-ipv6" => Refused("IPv6 is not supported"),
        "iface-regex" => Refused("pick the interface with -iface NAME or -iface ADDRESS"),
        "iface-can-reach" => Refused("pick the interface with -iface NAME or -iface ADDRESS"),
        "kube-subnet-mgr"
        | "kube-api-url"
        | "kube-annotation-prefix"
        | "kubeconfig-file"
        | "net-config-path"
        | "set-node-network-unavailable" => {
            Refused("the Kubernetes subnet manager is not supported; tartan leases from etcd")
        }
        _ => return None,
    })
}

/// The flags whose values `FLANNELD_*` variables may give.
const FROM_ENVIRONMENT: &[&str] = &[
    "etcd-endpoints",
    "etcd-prefix",
    "etcd-keyfile",
    "etcd-certfile",
    "etcd-cafile",
    "etcd-username",
    "etcd-password",
    "iface",
    "public-ip",
    "subnet-file",
    "subnet-lease-renew-margin",
    "ip-masq",
    "iptables-forward-rules",
    "public-ipv6",
    "kube-subnet-mgr",
];

/// The environment variable flanneld reads a flag from: `FLANNELD_` and the
/// name upper-cased with `_` for `-`.
fn env_name(flag: &str) -> String {
    format!("FLANNELD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// tartan's own variable for one of its flags.
fn tartan_env_name(flag: &str) -> String {
    format!("TARTAN_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Go's `strconv.ParseBool`, which the flag package uses.
fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The result of translating a command line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Translated {
    /// The arguments for clap, program name first.
    pub args: Vec<OsString>,
    /// One line per accepted-but-ignored flag, to log once the agent logs.
    pub notes: Vec<String>,
}

/// Whether the program was invoked under flanneld's name.
pub fn invoked_as_flanneld(argv0: &std::ffi::OsStr) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .is_some_and(|name| name == "flanneld")
}

/// tartan's global options that take a value in the next word (clap's
/// `global = true` arguments; a unit test in main.rs keeps the two lists equal).
pub const GLOBAL_VALUE_OPTIONS: &[&str] = &["--api-socket"];

/// Where the subcommand stands in `argv`: the first word that is neither an
/// option nor the value of a global option before it.
fn subcommand_at(argv: &[OsString]) -> Option<usize> {
    let mut at = 1;
    while let Some(arg) = argv.get(at) {
        let text = arg.to_string_lossy();
        if text == "--" {
            return None;
        }
        if GLOBAL_VALUE_OPTIONS.contains(&text.as_ref()) {
            at += 2;
        } else if text.starts_with('-') {
            at += 1;
        } else {
            return Some(at);
        }
    }
    None
}

/// Rewrites `argv` for clap. Invoked as `flanneld`, everything is agent
/// arguments with flanneld's defaults; invoked as `tartan agent …`,
/// single-dash flanneld flags are accepted after `agent`. Anything else
/// passes through untouched. `env` looks variables up.
pub fn translate(
    argv: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Translated, String> {
    let Some(argv0) = argv.first().cloned() else {
        return Ok(Translated::default());
    };
    let as_flanneld = invoked_as_flanneld(&argv0);
    let (mut out, rest) = if as_flanneld {
        (vec![argv0, "agent".into()], &argv[1..])
    } else {
        match subcommand_at(&argv) {
            // Global options may stand before the subcommand; they are clap's.
            Some(at) if argv[at] == "agent" => (argv[..=at].to_vec(), &argv[at + 1..]),
            _ => {
                return Ok(Translated {
                    args: argv,
                    notes: Vec::new(),
                })
            }
        }
    };
    let mut notes = Vec::new();
    let mut given: Vec<&'static str> = Vec::new();
    let mut args = rest.iter();
    while let Some(arg) = args.next() {
        let Some(text) = arg.to_str() else {
            out.push(arg.clone());
            continue;
        };
        // Only Go-style flags are ours to rewrite: `-x`, `--x`, `-x=v`, `--x=v`.
        let stripped = text
            .strip_prefix("--")
            .or_else(|| text.strip_prefix('-'))
            .filter(|s| !s.is_empty() && !text.starts_with("---"));
        let Some(flag) = stripped else {
            out.push(arg.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (flag, None),
        };
        // A one-letter flag with one dash is clap's short form (`-h`, `-V`).
        let go_style = name.len() > 1 || text.starts_with("--") || inline.is_some();
        let Some(map) = mapping(name).filter(|_| go_style) else {
            out.push(arg.clone());
            continue;
        };
        match map {
            Mapping::Value(long) => {
                let value = match inline {
                    Some(value) => value,
                    None => match args.next().and_then(|v| v.to_str()) {
                        Some(value) => value.to_string(),
                        None => return Err(format!("flag -{name} needs a value")),
                    },
                };
                given.push(long);
                out.push(format!("--{long}").into());
                out.push(value.into());
            }
            Mapping::Bool(long) => {
                let on = match inline {
                    Some(value) => go_bool(&value)
                        .ok_or_else(|| format!("flag -{name}: {value:?} is not true or false"))?,
                    None => true,
                };
                given.push(long);
                push_bool(&mut out, long, on);
            }
            Mapping::Ignored(why) => {
                if inline.is_none() && !matches!(name, "logtostderr" | "alsologtostderr") {
                    // Value flags given as `-name value` take the next word.
                    if args
                        .as_slice()
                        .first()
                        .is_some_and(|v| !v.to_string_lossy().starts_with('-'))
                    {
                        args.next();
                    }
                }
                notes.push(format!("ignoring flanneld flag -{name}: {why}"));
            }
            Mapping::Refused(why) => {
                let off = inline.as_deref().and_then(go_bool) == Some(false)
                    || inline.as_deref() == Some("");
                if !off {
                    return Err(format!("flanneld flag -{name} is not supported: {why}"));
                }
            }
        }
    }
    // An agent without etcd ignores etcd settings from the environment (a
    // shared environment file); only the command line's are refused.
    let no_etcd = out.iter().any(|a| a == "--no-etcd")
        || env("TARTAN_NO_ETCD").is_some_and(|v| go_bool(&v) == Some(true));
    // FLANNELD_* fills in what the command line did not say, as flanneld's
    // SetFlagsFromEnv does; tartan's own TARTAN_* variables come first.
    for flag in FROM_ENVIRONMENT {
        if no_etcd && flag.starts_with("etcd-") {
            continue;
        }
        let Some(value) = env(&env_name(flag)).filter(|v| !v.is_empty()) else {
            continue;
        };
        match mapping(flag) {
            Some(Mapping::Value(long))
                if !given.contains(&long) && env(&tartan_env_name(long)).is_none() =>
            {
                given.push(long);
                out.push(format!("--{long}").into());
                out.push(value.into());
            }
            Some(Mapping::Bool(long)) if !given.contains(&long) => {
                let on = go_bool(&value)
                    .ok_or_else(|| format!("{}: {value:?} is not true or false", env_name(flag)))?;
                if env(&tartan_env_name(long)).is_none() {
                    given.push(long);
                    push_bool(&mut out, long, on);
                }
            }
            Some(Mapping::Refused(why)) if go_bool(&value) != Some(false) => {
                return Err(format!("{} is not supported: {why}", env_name(flag)));
            }
            _ => {}
        }
    }
    if as_flanneld {
        // The seed's /etc/sysconfig/flanneld, for units that pass it through the environment.
        for (variable, long) in [
            ("FLANNEL_ETCD_ENDPOINTS", "etcd-endpoints"),
            ("FLANNEL_ETCD_PREFIX", "etcd-prefix"),
        ] {
            if let Some(value) = env(variable).filter(|v| !v.is_empty() && !no_etcd) {
                if !given.contains(&long) && env(&tartan_env_name(long)).is_none() {
                    given.push(long);
                    out.push(format!("--{long}").into());
                    out.push(value.into());
                }
            }
        }
        // flanneld's defaults where they differ from tartan's.
        if !given.contains(&"subnet-file") && env("TARTAN_SUBNET_FILE").is_none() {
            out.push("--subnet-file".into());
            out.push("/run/flannel/subnet.env".into());
        }
        if env("TARTAN_EXTERNAL_BRIDGE").is_none() && !out.iter().any(|a| a == "--bridge") {
            out.push("--external-bridge".into());
        }
    }
    Ok(Translated { args: out, notes })
}

/// A boolean flag as tartan's clap takes it: present, `--no-…` where tartan
/// has one, or absent.
fn push_bool(out: &mut Vec<OsString>, long: &str, on: bool) {
    match (long, on) {
        (_, true) => out.push(format!("--{long}").into()),
        // forward-rules is on by default; the others are off unless given.
        ("forward-rules", false) => out.push("--no-forward-rules".into()),
        (_, false) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn strings(t: &Translated) -> Vec<String> {
        t.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn go_style_flags_become_tartan_flags() {
        let t = translate(
            args(&[
                "tartan",
                "agent",
                "-etcd-endpoints=http://10.0.0.1:2379",
                "-etcd-prefix",
                "/atomic.io/network",
                "--iface=eth1",
                "-iface",
                "10.0.0.5",
                "-ip-masq",
                "-subnet-file=/run/x.env",
                "-subnet-lease-renew-margin=30",
                "-iptables-forward-rules=false",
            ]),
            &no_env,
        )
        .expect("valid");
        assert_eq!(
            strings(&t),
            [
                "tartan",
                "agent",
                "--etcd-endpoints",
                "http://10.0.0.1:2379",
                "--etcd-prefix",
                "/atomic.io/network",
                "--iface",
                "eth1",
                "--iface",
                "10.0.0.5",
                "--ip-masq",
                "--subnet-file",
                "/run/x.env",
                "--subnet-lease-renew-margin",
                "30",
                "--no-forward-rules",
            ]
        );
    }

    #[test]
    fn tartan_flags_and_other_commands_pass_through() {
        let line = args(&["tartan", "agent", "--state-dir", "/s", "--ip-masq", "-h"]);
        assert_eq!(translate(line.clone(), &no_env).expect("valid").args, line);
        let line = args(&["tartan", "status", "-o", "json"]);
        assert_eq!(translate(line.clone(), &no_env).expect("valid").args, line);
    }

    #[test]
    fn global_options_may_stand_before_agent() {
        let t = translate(
            args(&["tartan", "--api-socket", "/s", "agent", "-iface=eth1"]),
            &no_env,
        )
        .expect("valid");
        assert_eq!(
            strings(&t),
            ["tartan", "--api-socket", "/s", "agent", "--iface", "eth1"]
        );
        let t = translate(
            args(&["tartan", "--api-socket=/s", "agent", "-ip-masq"]),
            &no_env,
        )
        .expect("valid");
        assert_eq!(
            strings(&t),
            ["tartan", "--api-socket=/s", "agent", "--ip-masq"]
        );
    }

    #[test]
    fn agent_elsewhere_than_the_subcommand_is_left_alone() {
        for line in [
            // A container's command, and a socket that happens to be called agent.
            &["tartan", "run", "busybox", "agent", "-iface=eth0"][..],
            &["tartan", "exec", "web", "agent", "-v=2"],
            &["tartan", "--api-socket", "agent", "status"],
        ] {
            let line = args(line);
            assert_eq!(translate(line.clone(), &no_env).expect("valid").args, line);
        }
    }

    #[test]
    fn as_flanneld_it_is_the_agent_with_flanneld_defaults() {
        let env = |name: &str| match name {
            "FLANNEL_ETCD_ENDPOINTS" => Some("http://etcd:2379".to_string()),
            "FLANNEL_ETCD_PREFIX" => Some("/atomic.io/network".to_string()),
            "FLANNELD_IP_MASQ" => Some("true".to_string()),
            "FLANNELD_IFACE" => Some("eth0".to_string()),
            _ => None,
        };
        let t = translate(
            args(&["/usr/bin/flanneld", "-iface=eth2", "-healthz-port=8471"]),
            &env,
        )
        .expect("valid");
        assert_eq!(
            strings(&t),
            [
                "/usr/bin/flanneld",
                "agent",
                "--iface",
                "eth2",
                "--ip-masq",
                "--etcd-endpoints",
                "http://etcd:2379",
                "--etcd-prefix",
                "/atomic.io/network",
                "--subnet-file",
                "/run/flannel/subnet.env",
                "--external-bridge",
            ]
        );
        assert_eq!(t.notes.len(), 1, "{:?}", t.notes);
        assert!(t.notes[0].contains("healthz"), "{:?}", t.notes);
    }

    #[test]
    fn an_agent_without_etcd_takes_no_etcd_settings_from_the_environment() {
        let env = |name: &str| match name {
            "FLANNELD_ETCD_ENDPOINTS" => Some("http://etcd:2379".to_string()),
            "FLANNELD_IFACE" => Some("eth1".to_string()),
            _ => None,
        };
        let t = translate(args(&["tartan", "agent", "--no-etcd"]), &env).expect("valid");
        assert_eq!(
            strings(&t),
            ["tartan", "agent", "--no-etcd", "--iface", "eth1"]
        );
    }

    #[test]
    fn tartan_variables_win_over_flanneld_ones() {
        let env = |name: &str| match name {
            "FLANNELD_ETCD_PREFIX" => Some("/flannel".to_string()),
            "TARTAN_ETCD_PREFIX" => Some("/tartan".to_string()),
            _ => None,
        };
        let t = translate(args(&["tartan", "agent"]), &env).expect("valid");
        assert_eq!(strings(&t), ["tartan", "agent"]);
    }

    #[test]
    fn what_tartan_cannot_do_is_refused_in_one_line() {
        for line in [
            &["flanneld", "-kube-subnet-mgr"][..],
            &["flanneld", "-public-ipv6=fd00::1"],
            &["flanneld", "-iface-regex=eth.*"],
            &["flanneld", "-ip-masq=maybe"],
            &["flanneld", "-etcd-prefix"],
        ] {
            let err = translate(args(line), &no_env).expect_err("refused");
            assert!(!err.contains('\n'), "{err}");
        }
        let env = |name: &str| (name == "FLANNELD_KUBE_SUBNET_MGR").then(|| "true".to_string());
        assert!(translate(args(&["flanneld"]), &env).is_err());
        // Turned off explicitly is fine.
        assert!(translate(args(&["flanneld", "-kube-subnet-mgr=false"]), &no_env).is_ok());
    }
}
