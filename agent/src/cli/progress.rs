//! Progress of an archive going through the CLI (`import`, `load`,
//! `export`): bytes so far and the rate, on one line of standard error
//! redrawn in place, as Docker shows a layer's progress. Only on a
//! terminal: a log or a pipe gets nothing.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::cli::status::human_size;

/// How often the line is redrawn at most.
const REDRAW: Duration = Duration::from_millis(100);

pub struct Progress {
    verb: &'static str,
    /// The whole size, when known (a file rather than a pipe).
    size: Option<u64>,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
    shown: bool,
}

impl Progress {
    /// Progress that is drawn only if standard error is a terminal.
    pub fn on_terminal(verb: &'static str, size: Option<u64>) -> Progress {
        Progress {
            verb,
            size,
            done: 0,
            started: Instant::now(),
            drawn: None,
            shown: std::io::stderr().is_terminal(),
        }
    }

    /// Counts `bytes` more, redrawing the line now and then.
    pub fn add(&mut self, bytes: u64) {
        self.done += bytes;
        if self.drawn.is_none_or(|at| at.elapsed() >= REDRAW) {
            self.draw("");
        }
    }

    /// The last redraw, ending the line.
    pub fn finish(mut self) {
        self.draw("\n");
        self.shown = false;
    }

    fn draw(&mut self, end: &str) {
        if !self.shown {
            return;
        }
        self.drawn = Some(Instant::now());
        let text = line(self.verb, self.done, self.size, self.started.elapsed());
        // \r and "erase to the end of the line": the line is redrawn in place.
        // A terminal that went away has no one to show it to.
        let _ = write!(std::io::stderr().lock(), "\r{text}\x1b[K{end}");
    }
}

impl Drop for Progress {
    /// Cut short (an error follows): the error goes on a line of its own.
    fn drop(&mut self) {
        if self.shown && self.drawn.is_some() {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

/// "Importing  12.3MB/45.6MB  4.1MB/s": bytes done, of the size if known,
/// and the mean rate so far.
pub fn line(verb: &str, done: u64, size: Option<u64>, elapsed: Duration) -> String {
    let mut text = format!("{verb}  {}", human_size(done));
    if let Some(size) = size {
        text.push('/');
        text.push_str(&human_size(size));
    }
    if !elapsed.is_zero() {
        let rate = done as f64 / elapsed.as_secs_f64();
        text.push_str(&format!("  {}/s", human_size(rate as u64)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_has_bytes_size_and_rate() {
        assert_eq!(
            line(
                "Importing",
                12_300_000,
                Some(45_600_000),
                Duration::from_secs(3)
            ),
            "Importing  12.3MB/45.6MB  4.1MB/s"
        );
        assert_eq!(
            line("Loading", 2_000, None, Duration::from_secs(2)),
            "Loading  2.0kB  1.0kB/s"
        );
        assert_eq!(line("Exporting", 0, None, Duration::ZERO), "Exporting  0B");
    }
}
