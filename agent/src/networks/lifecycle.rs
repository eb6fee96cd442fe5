//! What networks need to know of containers, and what they are told of
//! them: traits the containers service implements and calls, so that
//! networks need not know the containers service.

use anyhow::Result;

/// Whether a container runs, as far as its network namespace goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Its process `pid` holds its network namespace.
    Running { pid: u32 },
    /// Created or exited: no namespace now.
    NotRunning,
}

/// Finds a container by name or id and tells whether it runs.
pub trait ContainerLookup: Send + Sync {
    /// The id of the container named by `text`: a name, a full id or a
    /// unique id prefix.
    fn id_of(&self, text: &str) -> Result<String>;
    /// The state of the container `id`; an error when there is none.
    fn run_state(&self, id: &str) -> Result<RunState>;
}

/// What else follows a container's lifecycle (the attachments `tartan
/// attach` gave it), told by the containers service at once rather than
/// finding out later.
#[async_trait::async_trait]
pub trait LifecycleHook: Send + Sync {
    /// The container `id` has a new process `pid`, in a new network
    /// namespace, whose command has not run yet.
    async fn started(&self, id: &str, pid: u32);
    /// The container `id` is removed.
    async fn removed(&self, id: &str) -> Result<()>;
}
