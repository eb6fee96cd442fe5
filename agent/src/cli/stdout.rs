//! The CLI's standard output. A reader that goes away (`tartan ps | head -1`)
//! has had all it wanted: the command then ends quietly, as Unix tools do,
//! instead of panicking in `println!` (Rust ignores SIGPIPE, so a write to a
//! closed pipe fails with EPIPE rather than ending the process).

use std::io::Write;

use tokio::io::AsyncWriteExt;

/// Standard output was closed by its reader.
#[derive(Debug, thiserror::Error)]
#[error("standard output was closed")]
pub struct Closed;

/// An error of a write to standard output, with a closed pipe recognised.
fn written(err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(Closed)
    } else {
        anyhow::Error::new(err).context("writing to standard output")
    }
}

/// Writes `text` to standard output, flushed.
pub fn print(text: impl AsRef<[u8]>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_ref())
        .and_then(|()| out.flush())
        .map_err(written)
}

/// Writes `text` and a newline to standard output, flushed.
pub fn println(text: impl std::fmt::Display) -> anyhow::Result<()> {
    print(format!("{text}\n"))
}

/// Writes `data` to standard output through tokio, flushed.
pub async fn write(out: &mut tokio::io::Stdout, data: &[u8]) -> anyhow::Result<()> {
    out.write_all(data).await.map_err(written)?;
    out.flush().await.map_err(written)
}

/// Whether `err` is, or was caused by, standard output being closed.
pub fn closed(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Closed>())
}
