//! The agent's refusals, as the CLI prints them.

/// The agent's refusal, as one line.
pub fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
