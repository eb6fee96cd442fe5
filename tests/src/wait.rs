//! Bounded waiting.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Polls `check` every `interval` until it returns true; fails after
/// `timeout`, with the last error `check` returned, if any.
pub fn wait_until(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(err) => bail!("condition not met within {timeout:?}; last error: {err:#}"),
                None => bail!("condition not met within {timeout:?}"),
            }
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_up_at_the_deadline_with_the_last_error() {
        let started = Instant::now();
        let err = wait_until(
            Duration::from_millis(100),
            Duration::from_millis(10),
            || anyhow::bail!("still broken"),
        )
        .expect_err("must time out");
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(err.to_string().contains("still broken"), "{err}");
        let mut n = 0;
        wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            Ok(n == 3)
        })
        .expect("met on the third try");
        assert_eq!(n, 3);
    }
}
