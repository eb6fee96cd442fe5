//! Teardown that tries every step and reports every failure together, so
//! that one failed step neither hides the others nor stops them.

use std::fmt;

/// The failures of one teardown, in the order the steps ran.
#[derive(Debug, Default)]
pub struct Teardown {
    errors: Vec<anyhow::Error>,
}

impl Teardown {
    pub fn new() -> Teardown {
        Teardown::default()
    }

    /// Records the outcome of one step; `what` names it.
    pub fn step<T, E>(&mut self, what: &str, result: Result<T, E>) -> Option<T>
    where
        E: Into<anyhow::Error>,
    {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.errors.push(err.into().context(what.to_string()));
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Ok when every step succeeded; otherwise one error naming them all.
    pub fn finish(self) -> anyhow::Result<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(anyhow::Error::new(self))
        }
    }

    /// For teardowns nobody waits on (after a failure already reported, or
    /// in the background): logs the failures once, with `context`.
    pub fn log(self, context: &str) {
        if !self.errors.is_empty() {
            tracing::warn!(errors = %self, "{context}");
        }
    }
}

impl fmt::Display for Teardown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{err:#}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Teardown {}

/// A failure, and the failure of undoing what it half-made, as one error.
pub fn and_undo(err: anyhow::Error, undo: impl Into<anyhow::Error>) -> anyhow::Error {
    anyhow::anyhow!("{err:#}; undoing it also failed: {:#}", undo.into())
}

/// `err`, joined by the failure of its undo if the undo failed.
pub fn undone<T, E: Into<anyhow::Error>>(err: anyhow::Error, undo: Result<T, E>) -> anyhow::Error {
    match undo {
        Ok(_) => err,
        Err(undo) => and_undo(err, undo),
    }
}

/// Removes a directory tree; one that is already gone is not a failure.
pub fn remove_dir_all(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(anyhow::Error::new(err).context(format!("removing {}", path.display()))),
    }
}

/// Removes a file; one that is already gone is not a failure.
pub fn remove_file(path: &std::path::Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(anyhow::Error::new(err).context(format!("removing {}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_is_reported_and_the_steps_go_on() {
        let mut teardown = Teardown::new();
        assert_eq!(teardown.step("first", Ok::<_, anyhow::Error>(1)), Some(1));
        assert_eq!(
            teardown.step("second", Err::<(), _>(anyhow::anyhow!("busy"))),
            None
        );
        teardown.step("third", Err::<(), _>(std::io::Error::other("gone")));
        let text = format!("{:#}", teardown.finish().expect_err("two steps failed"));
        assert_eq!(text, "second: busy; third: gone");
        assert!(Teardown::new().finish().is_ok());
    }

    #[test]
    fn missing_files_are_already_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(remove_file(&dir.path().join("absent")).is_ok());
        assert!(remove_dir_all(&dir.path().join("absent")).is_ok());
    }
}
