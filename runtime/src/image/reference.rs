//! Image references as Docker users type them: `NAME[:TAG]`, tag `latest` by default.

use std::fmt;
use std::str::FromStr;

use crate::RuntimeError;

/// A validated `NAME:TAG`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub name: String,
    pub tag: String,
}

pub const DEFAULT_TAG: &str = "latest";

fn valid_component(part: &str) -> bool {
    !part.is_empty()
        && part.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && part
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
}

fn valid_name(name: &str) -> bool {
    if name.is_empty() || name.len() > 255 {
        return false;
    }
    let mut parts = name.split('/');
    // The first component may be a registry with a port, as in localhost:5000/game2048.
    let first_ok = match parts.next().map(|p| p.split_once(':')) {
        Some(Some((host, port))) => {
            name.contains('/')
                && valid_component(host)
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
        }
        Some(None) => valid_component(name.split('/').next().unwrap_or_default()),
        None => false,
    };
    first_ok && parts.all(valid_component)
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && tag
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl FromStr for Reference {
    type Err = RuntimeError;

    fn from_str(text: &str) -> Result<Reference, RuntimeError> {
        // A colon after the last slash separates the tag; one before it is a registry port.
        let (name, tag) = match text.rfind(':') {
            Some(i) if !text[i..].contains('/') => (&text[..i], &text[i + 1..]),
            _ => (text, DEFAULT_TAG),
        };
        if !valid_name(name) {
            return Err(RuntimeError::BadReference(format!(
                "{text:?}: a name is lowercase letters, digits and . _ - separated by /"
            )));
        }
        if !valid_tag(tag) {
            return Err(RuntimeError::BadReference(format!(
                "{text:?}: a tag is up to 128 letters, digits and . _ -"
            )));
        }
        Ok(Reference {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_references() {
        let r: Reference = "busybox".parse().expect("ref");
        assert_eq!((r.name.as_str(), r.tag.as_str()), ("busybox", "latest"));
        let r: Reference = "library/busybox:1.36".parse().expect("ref");
        assert_eq!(
            (r.name.as_str(), r.tag.as_str()),
            ("library/busybox", "1.36")
        );
        let r: Reference = "localhost:5000/game2048".parse().expect("ref");
        assert_eq!(r.tag, "latest", "a registry port is not a tag");
        assert_eq!(r.to_string(), "localhost:5000/game2048:latest");
        let r: Reference = "localhost:5000/game2048:v2".parse().expect("ref");
        assert_eq!(
            (r.name.as_str(), r.tag.as_str()),
            ("localhost:5000/game2048", "v2")
        );
    }

    #[test]
    fn refuses_bad_names_and_tags() {
        for bad in [
            "",
            "Busybox",
            "busy box",
            "a//b",
            "/a",
            "a:",
            "a:-x",
            "-a",
            "a:x y",
            "host:port/x",
            "a:b/c",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?}");
        }
    }
}
