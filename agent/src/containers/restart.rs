//! `run --restart`: parsing the policy as Docker does, and the containers
//! the agent starts when it starts (after a reboot, the supervisors that
//! apply the policies are gone). The restarts themselves are the
//! supervisor's (`tartan_runtime::container::restart`).

use anyhow::{bail, Result};
use tartan_runtime::container::restart::RestartPolicy;

/// Parses `--restart` with Docker's error texts; `auto_remove` is `--rm`.
pub fn parse_restart(text: &str, auto_remove: bool) -> Result<RestartPolicy> {
    let (name, count) = match text.split_once(':') {
        Some(("", _)) => {
            bail!("invalid restart policy format: no policy provided before colon")
        }
        Some((name, count)) => (name, count),
        None => (text, ""),
    };
    let count: i64 = match count {
        "" => 0,
        count => match count.parse() {
            Ok(count) => count,
            Err(_) => {
                bail!("invalid restart policy format: maximum retry count must be an integer")
            }
        },
    };
    let policy = match name {
        "" | "no" | "always" | "unless-stopped" if count != 0 => {
            let negative = if count < 0 {
                " and cannot be negative"
            } else {
                ""
            };
            bail!("invalid restart policy: maximum retry count can only be used with 'on-failure'{negative}")
        }
        "" | "no" => RestartPolicy::No,
        "always" => RestartPolicy::Always,
        "unless-stopped" => RestartPolicy::UnlessStopped,
        "on-failure" => {
            let Ok(max_retries) = u32::try_from(count) else {
                bail!("invalid restart policy: maximum retry count cannot be negative");
            };
            RestartPolicy::OnFailure { max_retries }
        }
        other => bail!(
            "invalid restart policy: unknown policy '{other}'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
        ),
    };
    if auto_remove && policy != RestartPolicy::No {
        bail!("Conflicting options: --restart and --rm");
    }
    Ok(policy)
}

/// Whether a container that is not running comes back when the agent
/// starts, as Docker's daemon brings them back at its start: `always`
/// even when it was stopped, `unless-stopped` unless it was, `on-failure`
/// after a failure with retries left (and not stopped). `last_exit` is None
/// for a container never started.
pub fn starts_with_agent(
    policy: RestartPolicy,
    stopped: bool,
    last_exit: Option<i32>,
    restarts: u32,
) -> bool {
    let Some(code) = last_exit else {
        return false;
    };
    match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => true,
        RestartPolicy::UnlessStopped => !stopped,
        RestartPolicy::OnFailure { .. } => !stopped && policy.restarts_after(code, restarts, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_with_dockers_errors() {
        assert_eq!(parse_restart("", false).ok(), Some(RestartPolicy::No));
        assert_eq!(parse_restart("no", true).ok(), Some(RestartPolicy::No));
        assert_eq!(
            parse_restart("always", false).ok(),
            Some(RestartPolicy::Always)
        );
        assert_eq!(
            parse_restart("unless-stopped", false).ok(),
            Some(RestartPolicy::UnlessStopped)
        );
        assert_eq!(
            parse_restart("on-failure", false).ok(),
            Some(RestartPolicy::OnFailure { max_retries: 0 })
        );
        assert_eq!(
            parse_restart("on-failure:3", false).ok(),
            Some(RestartPolicy::OnFailure { max_retries: 3 })
        );
        let error = |text: &str, rm: bool| {
            parse_restart(text, rm)
                .map(|_| String::new())
                .unwrap_or_else(|e| e.to_string())
        };
        assert_eq!(
            error("sometimes", false),
            "invalid restart policy: unknown policy 'sometimes'; use one of 'no', 'always', 'on-failure', or 'unless-stopped'"
        );
        assert_eq!(
            error(":3", false),
            "invalid restart policy format: no policy provided before colon"
        );
        assert_eq!(
            error("on-failure:x", false),
            "invalid restart policy format: maximum retry count must be an integer"
        );
        assert_eq!(
            error("on-failure:-1", false),
            "invalid restart policy: maximum retry count cannot be negative"
        );
        assert_eq!(
            error("always:2", false),
            "invalid restart policy: maximum retry count can only be used with 'on-failure'"
        );
        assert_eq!(
            error("always", true),
            "Conflicting options: --restart and --rm"
        );
    }

    #[test]
    fn the_agent_brings_back_what_docker_does() {
        let on_failure = RestartPolicy::OnFailure { max_retries: 2 };
        assert!(starts_with_agent(RestartPolicy::Always, true, Some(0), 0));
        assert!(!starts_with_agent(RestartPolicy::Always, false, None, 0));
        assert!(starts_with_agent(
            RestartPolicy::UnlessStopped,
            false,
            Some(255),
            0
        ));
        assert!(!starts_with_agent(
            RestartPolicy::UnlessStopped,
            true,
            Some(143),
            0
        ));
        assert!(!starts_with_agent(RestartPolicy::No, false, Some(1), 0));
        assert!(starts_with_agent(on_failure, false, Some(3), 1));
        assert!(!starts_with_agent(on_failure, false, Some(3), 2));
        assert!(!starts_with_agent(on_failure, false, Some(0), 0));
    }
}
