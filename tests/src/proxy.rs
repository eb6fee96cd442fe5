//! A TCP forwarder that can be cut: etcd stays up (so the test can change
//! and compact it) while one agent loses its connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards 127.0.0.1:port to an upstream address, on its own thread and runtime.
pub struct TcpProxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpProxy {
    pub fn start(upstream: SocketAddr) -> Result<TcpProxy> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the proxy")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, generation_rx) = watch::channel(0u64);
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the proxy runtime")?;
        let thread_cut = cut.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                tokio::select! {
                    _ = accept_loop(listener, upstream, thread_cut, generation_rx) => {}
                    _ = stop_rx => {}
                }
            });
        });
        Ok(TcpProxy {
            addr,
            cut,
            generation,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Receiver<u64>,
) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        if cut.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let mut generation = generation.clone();
        generation.mark_unchanged();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = generation.changed() => {}
            }
        });
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
