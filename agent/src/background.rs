//! The agent's long-running tasks (following the subnet, keeping the
//! segment, reconciling the dataplane, …). Each runs for the agent's life,
//! so one that ends, by a panic above all, is a fault: the agent then stops
//! with an error naming it, and systemd starts it afresh, rather than
//! running on with a part of it silently gone.

use std::collections::HashMap;
use std::future::Future;

use anyhow::{anyhow, Error};
use tokio::task::{Id, JoinSet};

/// Tasks that end with their owner: dropping this aborts them all.
#[derive(Default)]
pub struct Background {
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

impl Background {
    pub fn new() -> Background {
        Background::default()
    }

    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Waits until a task ends, and says which and how; never returns while
    /// every task runs (or when there are none).
    pub async fn ended(&mut self) -> Error {
        let Some(joined) = self.tasks.join_next_with_id().await else {
            return std::future::pending().await;
        };
        let (id, why) = match joined {
            Ok((id, ())) => (id, "ended".to_string()),
            Err(err) => {
                let id = err.id();
                let why = if err.is_panic() {
                    format!("panicked: {}", panic_message(err.into_panic()))
                } else {
                    "was cancelled".to_string()
                };
                (id, why)
            }
        };
        let name = self.names.remove(&id).unwrap_or("background");
        anyhow!("the agent's {name} task {why}")
    }
}

/// The text a panic carried, as the panic hook prints it.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_task_is_named_with_its_message() {
        let mut background = Background::new();
        background.spawn("forever", std::future::pending());
        background.spawn("broken", async { panic!("the bridge vanished") });
        let error = background.ended().await.to_string();
        assert_eq!(
            error,
            "the agent's broken task panicked: the bridge vanished"
        );
    }

    #[tokio::test]
    async fn a_task_that_returns_is_reported_too() {
        let mut background = Background::new();
        background.spawn("follower", async {});
        assert_eq!(
            background.ended().await.to_string(),
            "the agent's follower task ended"
        );
    }

    #[tokio::test]
    async fn nothing_is_reported_while_the_tasks_run() {
        let mut empty = Background::new();
        let waited = tokio::time::timeout(Duration::from_millis(50), empty.ended()).await;
        assert!(waited.is_err(), "no tasks: never ends");
        let mut running = Background::new();
        running.spawn("forever", std::future::pending());
        let waited = tokio::time::timeout(Duration::from_millis(50), running.ended()).await;
        assert!(waited.is_err(), "a running task is not reported");
    }
}
