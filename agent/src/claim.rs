//! What one agent holds in its network namespace, so that a second agent
//! there is refused before it touches anything, in one line naming the first.
//!
//! A claim is a listening unix socket with an abstract name: abstract names
//! belong to the network namespace, and the kernel frees them when the
//! holder dies, so a crash leaves no stale lock behind. Whoever connects is
//! told who holds it.

use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a refused agent waits for the holder to say who it is.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the holder of a claim answers.
pub struct Holder {
    pub pid: u32,
    pub state_dir: String,
    pub api_socket: String,
}

impl Holder {
    fn line(&self) -> String {
        format!(
            "pid {}, --state-dir {}, --api-socket {}\n",
            self.pid, self.state_dir, self.api_socket
        )
    }
}

/// A claim held until dropped.
pub struct Claim {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        // The listener goes with the task, and the name with the listener.
        self.task.abort();
    }
}

/// The abstract name of a claim on `what`.
fn name(what: &str) -> String {
    // FNV-1a keeps any prefix within the 107 bytes a name may have.
    let hash = what.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("tartan-agent/{hash:016x}")
}

/// Takes the claim on `what` in this network namespace, or fails with one
/// line naming its holder; `refusal` says what holding it means.
pub async fn take(what: &str, holder: &Holder, refusal: &str) -> Result<Claim> {
    let address = SocketAddr::from_abstract_name(name(what).as_bytes())
        .context("naming the agent's claim")?;
    let listener = match UnixListener::bind_addr(&address) {
        Ok(listener) => listener,
        Err(err) if err.kind() == ErrorKind::AddrInUse => {
            let first = describe_holder(&address)
                .await
                .unwrap_or_else(|err| format!("it does not say who it is: {err}"));
            bail!("another tartan agent runs in this network namespace ({first}) and {refusal}");
        }
        Err(err) => {
            return Err(err).context("claiming the agent's place in this network namespace")
        }
    };
    listener
        .set_nonblocking(true)
        .context("configuring the agent's claim")?;
    let listener =
        tokio::net::UnixListener::from_std(listener).context("serving the agent's claim")?;
    let line = holder.line();
    let task = tokio::spawn(async move {
        loop {
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors, say: the claim holds; answers wait.
                    tracing::debug!(error = %err, "could not accept on the agent's claim");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let line = line.clone();
            tokio::spawn(async move {
                // A caller that went away needs no answer.
                let _ = stream.write_all(line.as_bytes()).await;
            });
        }
    });
    Ok(Claim { task })
}

async fn describe_holder(address: &SocketAddr) -> std::io::Result<String> {
    // A unix socket connects at once; only the answer is waited for.
    let stream = UnixStream::connect_addr(address)?;
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let mut text = String::new();
    match tokio::time::timeout(
        DESCRIBE_TIMEOUT,
        stream.take(4096).read_to_string(&mut text),
    )
    .await
    {
        Ok(read) => read.map(|_| text.trim().to_string()),
        Err(_) => Err(std::io::Error::new(
            ErrorKind::TimedOut,
            "no answer within 2s",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32) -> Holder {
        Holder {
            pid,
            state_dir: "/var/lib/a".into(),
            api_socket: "/run/a.sock".into(),
        }
    }

    #[tokio::test]
    async fn a_second_claim_is_refused_naming_the_first_until_it_is_dropped() {
        let what = format!("unit-test-{}", std::process::id());
        let first = take(&what, &holder(1), "holds it")
            .await
            .expect("the first claim");
        let refused = take(&what, &holder(2), "holds it")
            .await
            .err()
            .expect("a second claim");
        assert_eq!(
            refused.to_string(),
            "another tartan agent runs in this network namespace (pid 1, --state-dir /var/lib/a, --api-socket /run/a.sock) and holds it"
        );
        assert!(
            take(&format!("{what}-other"), &holder(3), "x")
                .await
                .is_ok(),
            "other claims are free"
        );
        drop(first);
        // The abort lands at the task's next await.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match take(&what, &holder(4), "holds it").await {
                Ok(_) => break,
                Err(err) => assert!(std::time::Instant::now() < deadline, "not freed: {err}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
