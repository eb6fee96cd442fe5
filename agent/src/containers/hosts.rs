//! `--link NAME[:ALIAS]` and `--add-host NAME:IP`: the container's
//! `/etc/hosts` lines past the defaults, written as Docker writes them.

use std::net::IpAddr;

use anyhow::{bail, Result};

/// A `--link`: the container linked to, and the name it is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub container: String,
    pub alias: String,
}

impl Link {
    /// `NAME[:ALIAS]`; the alias defaults to the name, as in Docker.
    pub fn parse(text: &str) -> Result<Link> {
        let (container, alias) = match text.split_once(':') {
            Some((container, alias)) => (container, alias),
            None => (text, text),
        };
        // Docker's names: the container's is checked when it is looked up.
        let container = container.trim_start_matches('/');
        if container.is_empty() || alias.is_empty() || alias.contains(char::is_whitespace) {
            bail!("invalid argument {text:?} for \"--link\" flag: use NAME[:ALIAS]");
        }
        Ok(Link {
            container: container.to_string(),
            alias: alias.to_string(),
        })
    }

    /// As recorded: "NAME:ALIAS".
    pub fn record(&self) -> String {
        format!("{}:{}", self.container, self.alias)
    }
}

/// Docker's `/etc/hosts` line for a link: the alias, the linked
/// container's hostname, and its name when the alias is not its name.
pub fn link_line(address: IpAddr, alias: &str, hostname: &str, name: &str) -> String {
    if alias == name {
        format!("{address}\t{alias} {hostname}")
    } else {
        format!("{address}\t{alias} {hostname} {name}")
    }
}

/// `--add-host NAME:IP` (or Docker's newer `NAME=IP`), as the line it writes.
pub fn add_host_line(text: &str) -> Result<String> {
    let split = match (text.find('='), text.find(':')) {
        (Some(eq), Some(colon)) if eq < colon => text.split_once('='),
        (Some(_), None) => text.split_once('='),
        _ => text.split_once(':'),
    };
    let Some((name, address)) = split.filter(|(name, _)| !name.is_empty()) else {
        // Docker's words.
        bail!(
            "invalid argument {text:?} for \"--add-host\" flag: bad format for add-host: {text:?}"
        );
    };
    if name.contains(char::is_whitespace) {
        bail!(
            "invalid argument {text:?} for \"--add-host\" flag: bad format for add-host: {text:?}"
        );
    }
    // Docker accepts an IPv6 address in brackets.
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    let Ok(address) = bare.parse::<IpAddr>() else {
        bail!("invalid argument {text:?} for \"--add-host\" flag: invalid IP address in add-host: {address:?}");
    };
    Ok(format!("{address}\t{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_read_as_in_docker() {
        let link = Link::parse("c1:mysqlone").expect("link");
        assert_eq!(link.container, "c1");
        assert_eq!(link.alias, "mysqlone");
        assert_eq!(Link::parse("c1").expect("link").alias, "c1");
        assert_eq!(Link::parse("/c1:db").expect("link").record(), "c1:db");
        for bad in ["", ":x", "c1:", "c1:a b"] {
            assert!(Link::parse(bad).is_err(), "{bad:?}");
        }
        let address: IpAddr = "10.5.1.2".parse().expect("ip");
        assert_eq!(
            link_line(address, "mysqlone", "0123456789ab", "c1"),
            "10.5.1.2\tmysqlone 0123456789ab c1"
        );
        assert_eq!(
            link_line(address, "c1", "0123456789ab", "c1"),
            "10.5.1.2\tc1 0123456789ab"
        );
    }

    #[test]
    fn add_host_reads_as_in_docker() {
        assert_eq!(add_host_line("db:10.0.0.7").expect("ok"), "10.0.0.7\tdb");
        assert_eq!(add_host_line("db=10.0.0.7").expect("ok"), "10.0.0.7\tdb");
        assert_eq!(
            add_host_line("v6:2001:db8::1").expect("ok"),
            "2001:db8::1\tv6"
        );
        assert_eq!(
            add_host_line("v6=[2001:db8::1]").expect("ok"),
            "2001:db8::1\tv6"
        );
        let err = add_host_line("nocolon").expect_err("bad").to_string();
        assert!(
            err.contains("bad format for add-host: \"nocolon\""),
            "{err}"
        );
        let err = add_host_line("db:300.1.1.1").expect_err("bad").to_string();
        assert!(
            err.contains("invalid IP address in add-host: \"300.1.1.1\""),
            "{err}"
        );
        assert!(add_host_line(":10.0.0.1").is_err());
    }
}
