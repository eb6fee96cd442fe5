//! Bounded waiting: every wait in the suite has a deadline, and a timeout
//! says what was last seen so a failure can be read without a rerun.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Polls `check` every `interval` until it returns true; fails after
/// `timeout`, with the last error `check` returned, if any.
pub fn wait_until(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    wait_for(timeout, interval, || Ok(check()?.then_some(())))
}

/// Polls `check` every `interval` until it returns `Some`, and returns that;
/// fails after `timeout`, with the last error `check` returned, if any.
pub fn wait_for<T>(
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let last_error = match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(err) => Some(err),
        };
        if Instant::now() >= deadline {
            match last_error {
                Some(err) => bail!(
                    "condition not met within {timeout:?} ({attempts} tries); last error: {err:#}"
                ),
                None => bail!("condition not met within {timeout:?} ({attempts} tries)"),
            }
        }
        std::thread::sleep(interval);
    }
}

/// Polls `observe` every `interval` until `accept` likes what it returns, and
/// returns that value; on timeout the error names `what` and shows the last
/// value observed (or the last error).
pub fn wait_value<T: Debug>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut observe: impl FnMut() -> Result<T>,
    mut accept: impl FnMut(&T) -> bool,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match observe() {
            Ok(value) if accept(&value) => return Ok(value),
            Ok(value) => format!("{value:?}"),
            Err(err) => format!("error: {err:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not met within {timeout:?}; last observed {last}");
        }
        std::thread::sleep(interval);
    }
}

/// As [`wait_until`], for async tests: sleeps on the runtime instead of
/// blocking one of its threads.
pub async fn wait_until_async<F, Fut>(
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last_error = match tokio::time::timeout_at(deadline.into(), check()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) | Err(_) => None,
            Ok(Err(err)) => Some(err),
        };
        if Instant::now() >= deadline {
            match last_error {
                Some(err) => bail!("condition not met within {timeout:?}; last error: {err:#}"),
                None => bail!("condition not met within {timeout:?}"),
            }
        }
        tokio::time::sleep(interval).await;
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

    #[test]
    fn wait_for_returns_the_value() {
        let mut n = 0;
        let got = wait_for(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            Ok((n == 4).then_some(n * 10))
        })
        .expect("met on the fourth try");
        assert_eq!(got, 40);
    }

    #[test]
    fn wait_value_reports_the_last_observation() {
        let mut n = 0;
        let err = wait_value(
            "the counter reaching 1000",
            Duration::from_millis(50),
            Duration::from_millis(5),
            || {
                n += 1;
                Ok(vec![n])
            },
            |v| v[0] >= 1000,
        )
        .expect_err("must time out");
        let text = err.to_string();
        assert!(text.contains("the counter reaching 1000"), "{text}");
        assert!(text.contains(&format!("[{n}]")), "{text}");
    }

    #[tokio::test]
    async fn the_async_wait_times_out_too() {
        let err = wait_until_async(
            Duration::from_millis(50),
            Duration::from_millis(5),
            || async { Ok(false) },
        )
        .await
        .expect_err("must time out");
        assert!(err.to_string().contains("not met"), "{err}");
    }
}
