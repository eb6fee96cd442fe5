//! The attach protocol between a container's supervisor and a client (the
//! CLI of `tartan run` without `-d`): length-prefixed frames over a unix
//! stream socket. Sans-IO: encoding into a buffer, decoding from one.

use crate::{Result, RuntimeError};

/// Frames larger than this are refused: no honest peer sends them.
pub const MAX_PAYLOAD: usize = 1 << 20;
const HEADER: usize = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Client to supervisor: bytes for the container's standard input.
    Stdin(Vec<u8>),
    /// Client to supervisor: the client's standard input ended.
    StdinClose,
    /// Client to supervisor: the client's terminal size.
    Resize {
        rows: u16,
        cols: u16,
    },
    /// Client to supervisor: a signal the client received, for the
    /// container's process (`run --sig-proxy`).
    Signal(i32),
    /// Supervisor to client: container output.
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Supervisor to client: the container ended with this code (128+N for signal N).
    Exit(i32),
}

const STDIN: u8 = 1;
const STDIN_CLOSE: u8 = 2;
const RESIZE: u8 = 3;
const SIGNAL: u8 = 4;
const STDOUT: u8 = 11;
const STDERR: u8 = 12;
const EXIT: u8 = 20;

impl Frame {
    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, payload): (u8, std::borrow::Cow<'_, [u8]>) = match self {
            Frame::Stdin(data) => (STDIN, data.into()),
            Frame::StdinClose => (STDIN_CLOSE, Vec::new().into()),
            Frame::Resize { rows, cols } => {
                let mut bytes = rows.to_be_bytes().to_vec();
                bytes.extend_from_slice(&cols.to_be_bytes());
                (RESIZE, bytes.into())
            }
            Frame::Signal(signal) => (SIGNAL, signal.to_be_bytes().to_vec().into()),
            Frame::Stdout(data) => (STDOUT, data.into()),
            Frame::Stderr(data) => (STDERR, data.into()),
            Frame::Exit(code) => (EXIT, code.to_be_bytes().to_vec().into()),
        };
        out.push(kind);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

fn bad(reason: impl Into<String>) -> RuntimeError {
    RuntimeError::Protocol(reason.into())
}

/// Collects bytes as they arrive and hands out whole frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, `None` until one has arrived, an error for a
    /// frame no peer of ours would send (the connection is then useless).
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let kind = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(bad(format!("a frame of {len} bytes")));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        let fixed = |n: usize| -> Result<()> {
            if payload.len() == n {
                Ok(())
            } else {
                Err(bad(format!(
                    "frame kind {kind} with {} bytes",
                    payload.len()
                )))
            }
        };
        let frame = match kind {
            STDIN => Frame::Stdin(payload),
            STDIN_CLOSE => {
                fixed(0)?;
                Frame::StdinClose
            }
            RESIZE => {
                fixed(4)?;
                Frame::Resize {
                    rows: u16::from_be_bytes([payload[0], payload[1]]),
                    cols: u16::from_be_bytes([payload[2], payload[3]]),
                }
            }
            SIGNAL => {
                fixed(4)?;
                Frame::Signal(i32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]))
            }
            STDOUT => Frame::Stdout(payload),
            STDERR => Frame::Stderr(payload),
            EXIT => {
                fixed(4)?;
                Frame::Exit(i32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]))
            }
            other => return Err(bad(format!("unknown frame kind {other}"))),
        };
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_even_when_split_anywhere() {
        let frames = vec![
            Frame::Stdin(b"echo hi\n".to_vec()),
            Frame::StdinClose,
            Frame::Resize {
                rows: 40,
                cols: 132,
            },
            Frame::Signal(15),
            Frame::Stdout(vec![0, 1, 2, 255]),
            Frame::Stderr(Vec::new()),
            Frame::Exit(-3),
        ];
        let mut wire = Vec::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        for split in 0..wire.len() {
            let mut decoder = FrameDecoder::default();
            let mut got = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                decoder.push(part);
                while let Some(frame) = decoder.next_frame().expect("valid") {
                    got.push(frame);
                }
            }
            assert_eq!(got, frames, "split at {split}");
        }
    }

    #[test]
    fn nonsense_is_refused() {
        let mut decoder = FrameDecoder::default();
        decoder.push(&[99, 0, 0, 0, 0]);
        assert!(decoder.next_frame().is_err());
        let mut decoder = FrameDecoder::default();
        decoder.push(&[STDIN, 0xff, 0xff, 0xff, 0xff]);
        assert!(decoder.next_frame().is_err(), "oversized");
        let mut decoder = FrameDecoder::default();
        decoder.push(&[RESIZE, 0, 0, 0, 1, 7]);
        assert!(decoder.next_frame().is_err(), "short resize");
    }
}
