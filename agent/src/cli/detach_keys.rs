//! The detach keys that end a session with a container while it goes on
//! (Ctrl-P Ctrl-Q unless `--detach-keys` says otherwise), for `attach` and
//! `run -it` alike.

use anyhow::Result;

/// Docker's default detach sequence.
pub const DEFAULT_DETACH_KEYS: &str = "ctrl-p,ctrl-q";

/// A detach sequence in Docker's format: comma-separated keys, each a
/// single character or `ctrl-` and one of a-z @ [ \ ] ^ _.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachKeys(Vec<u8>);

impl DetachKeys {
    pub fn parse(spec: &str) -> Result<DetachKeys> {
        let invalid = || {
            anyhow::anyhow!(
                "invalid --detach-keys {spec:?}: use comma-separated keys, each a single character or ctrl-<a-z, @, [, \\, ], ^ or _> (as Docker's)"
            )
        };
        let mut bytes = Vec::new();
        for key in spec.split(',') {
            if key.len() == 1 {
                bytes.push(key.as_bytes()[0]);
                continue;
            }
            let lower = key.to_ascii_lowercase();
            let Some(rest) = lower.strip_prefix("ctrl-") else {
                return Err(invalid());
            };
            let code = match rest.as_bytes() {
                [c @ b'a'..=b'z'] => c - b'a' + 1,
                [b'@'] => 0,
                [b'['] => 27,
                [b'\\'] => 28,
                [b']'] => 29,
                [b'^'] => 30,
                [b'_'] => 31,
                _ => return Err(invalid()),
            };
            bytes.push(code);
        }
        Ok(DetachKeys(bytes))
    }

    /// The given sequence, or Docker's default.
    pub fn or_default(spec: Option<&str>) -> Result<DetachKeys> {
        DetachKeys::parse(spec.unwrap_or(DEFAULT_DETACH_KEYS))
    }
}

/// Watches the input for the detach sequence. Bytes that could begin it
/// are held back until it is clear whether they do; the rest pass on.
#[derive(Debug)]
pub struct EscapeMatcher {
    keys: Vec<u8>,
    held: usize,
}

impl EscapeMatcher {
    pub fn new(keys: DetachKeys) -> EscapeMatcher {
        EscapeMatcher {
            keys: keys.0,
            held: 0,
        }
    }

    /// The bytes to pass on, and whether the whole sequence has been typed
    /// (then nothing after it is passed on).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &byte in input {
            if self.keys.is_empty() {
                out.push(byte);
                continue;
            }
            if byte == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            // Not the sequence after all: what was held goes on, and this
            // byte may start it again.
            out.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if byte == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(byte);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_read_dockers_format() {
        assert_eq!(
            DetachKeys::parse("ctrl-p,ctrl-q").expect("valid").0,
            [16, 17]
        );
        assert_eq!(
            DetachKeys::parse("ctrl-@,ctrl-[,ctrl-\\,ctrl-],ctrl-^,ctrl-_,a,Z,CTRL-X")
                .expect("valid")
                .0,
            [0, 27, 28, 29, 30, 31, b'a', b'Z', 24]
        );
        for bad in [
            "",
            "ctrl-",
            "ctrl-pq",
            "ctrl-1",
            "alt-x",
            "ab",
            "ctrl-p,,ctrl-q",
        ] {
            let err = DetachKeys::parse(bad).expect_err(bad).to_string();
            assert!(
                !err.contains('\n') && err.contains("--detach-keys"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_sequence_is_held_back_and_anything_else_passes() {
        let keys = DetachKeys::parse("ctrl-p,ctrl-q").expect("valid");
        let mut matcher = EscapeMatcher::new(keys.clone());
        assert_eq!(matcher.feed(b"ls\r"), (b"ls\r".to_vec(), false));
        // Split across reads, and after other input.
        assert_eq!(matcher.feed(b"x\x10"), (b"x".to_vec(), false));
        assert_eq!(matcher.feed(b"\x11after"), (Vec::new(), true));

        let mut matcher = EscapeMatcher::new(keys.clone());
        // Ctrl-P alone, then something else: both go on.
        assert_eq!(matcher.feed(b"\x10a"), (b"\x10a".to_vec(), false));
        // Ctrl-P Ctrl-P Ctrl-Q: the first goes on, the rest detaches.
        assert_eq!(matcher.feed(b"\x10\x10\x11"), (b"\x10".to_vec(), true));

        let mut single = EscapeMatcher::new(DetachKeys::parse("ctrl-a").expect("valid"));
        assert_eq!(single.feed(b"ab\x01c"), (b"ab".to_vec(), true));
    }
}
