//! The container log: one JSON object per line, as Docker's json-file
//! driver writes it (`log`, `stream`, `time`), so that lines from stdout and
//! stderr keep their order and their stream.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// The bytes as read; invalid UTF-8 is replaced, as Docker does.
    pub log: String,
    pub stream: Stream,
    pub time: String,
}

impl LogRecord {
    pub fn new(stream: Stream, bytes: &[u8]) -> LogRecord {
        LogRecord {
            log: String::from_utf8_lossy(bytes).into_owned(),
            stream,
            time: super::now_rfc3339(),
        }
    }

    /// Appends the record as one line.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line)
    }
}

/// Reads whole records from `input`; a partial last line (still being
/// written) is left for the next call. Returns the records and the number of
/// bytes consumed.
pub fn read_records(input: &mut impl BufRead) -> std::io::Result<(Vec<LogRecord>, u64)> {
    let mut records = Vec::new();
    let mut consumed = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok((records, consumed));
        }
        consumed += n as u64;
        // A line torn by a crash is skipped rather than ending the log.
        if let Ok(record) = serde_json::from_slice::<LogRecord>(&line) {
            records.push(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_partial_line_waits() {
        let mut file = Vec::new();
        LogRecord::new(Stream::Stdout, b"hello\n")
            .write_to(&mut file)
            .expect("write");
        LogRecord::new(Stream::Stderr, b"\xffoops\n")
            .write_to(&mut file)
            .expect("write");
        file.extend_from_slice(b"garbage\n{\"log\":\"par");
        let (records, consumed) = read_records(&mut &file[..]).expect("read");
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].log, "hello\n");
        assert_eq!(records[1].stream, Stream::Stderr);
        assert_eq!(records[1].log, "\u{fffd}oops\n");
        assert_eq!(consumed as usize, file.len() - "{\"log\":\"par".len());
    }
}
