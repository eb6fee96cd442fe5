//! For DNS tests: a namespace's own `/etc/resolv.conf` (the file `ip netns
//! exec` bind-mounts over the host's), and a tiny UDP resolver that knows
//! one made-up name, to stand for the host's resolvers.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;

/// `/etc/netns/<NS>/resolv.conf`: what programs started with `ip netns
/// exec NS` read as `/etc/resolv.conf`. Removed on drop.
pub struct NetnsResolvConf {
    dir: PathBuf,
}

impl NetnsResolvConf {
    /// Must exist before the program starts: `ip netns exec` mounts it then.
    pub fn write(netns: &str, contents: &str) -> Result<NetnsResolvConf> {
        let dir = PathBuf::from("/etc/netns").join(netns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let guard = NetnsResolvConf { dir };
        let file = guard.dir.join("resolv.conf");
        std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))?;
        Ok(guard)
    }
}

impl Drop for NetnsResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A UDP DNS server in a namespace that answers one name's A question and
/// says NXDOMAIN to every other; stops on drop.
pub struct TestResolver {
    stop: Arc<AtomicBool>,
    questions: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TestResolver {
    /// Listens on `address:53` inside `netns`; `name` (without the final
    /// dot, any case) resolves to `answer`.
    pub fn start(
        netns: &Netns,
        address: Ipv4Addr,
        name: &str,
        answer: Ipv4Addr,
    ) -> Result<TestResolver> {
        let socket = netns
            .enter(|| UdpSocket::bind(SocketAddr::from((address, 53))))?
            .with_context(|| format!("binding {address}:53 in {}", netns.name()))?;
        // The loop looks at the stop flag this often.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let questions = Arc::new(AtomicUsize::new(0));
        let name = name.to_ascii_lowercase();
        let thread = {
            let (stop, questions) = (stop.clone(), questions.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, client)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    questions.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = reply(&buf[..len], &name, answer) {
                        let _ = socket.send_to(&reply, client);
                    }
                }
            })
        };
        Ok(TestResolver {
            stop,
            questions,
            thread: Some(thread),
        })
    }

    /// How many questions it was asked.
    pub fn questions(&self) -> usize {
        self.questions.load(Ordering::Relaxed)
    }
}

impl Drop for TestResolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer to one question: `answer` for an A question of `name`, no
/// records for its other types, NXDOMAIN for any other name.
fn reply(query: &[u8], name: &str, answer: Ipv4Addr) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let end = at + 4;
    let known = labels.join(".") == name;
    let answers = u16::from(known && qtype == 1);
    let mut reply = query[..2].to_vec();
    reply.push(0x80 | (query[2] & 0x01));
    reply.push(if known { 0x80 } else { 0x83 });
    reply.extend_from_slice(&[0, 1, 0, answers as u8, 0, 0, 0, 0]);
    reply.extend_from_slice(query.get(12..end)?);
    if answers == 1 {
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&answer.octets());
    }
    Some(reply)
}

/// An A question for `name`, recursion desired.
pub fn a_question(id: u16, name: &str) -> Vec<u8> {
    let mut query = id.to_be_bytes().to_vec();
    query.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    query
}

/// Asks `server` port 53 over TCP, from inside `netns`: the reply's rcode
/// and its A records (answers are read as this suite's servers write them:
/// the name as a pointer to the question).
pub fn ask_tcp(netns: &Netns, server: Ipv4Addr, query: &[u8]) -> Result<(u8, Vec<Ipv4Addr>)> {
    use std::io::{Read, Write};
    let reply = netns.enter(|| -> Result<Vec<u8>> {
        let at = SocketAddr::from((server, 53));
        let mut stream = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(5))
            .with_context(|| format!("connecting to {at}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed)?;
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .context("reading the reply's length")?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).context("reading the reply")?;
        Ok(reply)
    })??;
    anyhow::ensure!(
        reply.len() >= query.len() && reply[..2] == query[..2],
        "not a reply to the question: {reply:?}"
    );
    let rcode = reply[3] & 0x0f;
    let count = u16::from_be_bytes([reply[6], reply[7]]);
    let mut at = query.len();
    let mut addresses = Vec::new();
    for _ in 0..count {
        let record = reply.get(at..at + 16).context("a short answer record")?;
        if record[2..4] == [0, 1] && record[10..12] == [0, 4] {
            addresses.push(Ipv4Addr::new(
                record[12], record[13], record[14], record[15],
            ));
        }
        at += 12 + usize::from(u16::from_be_bytes([record[10], record[11]]));
    }
    Ok((rcode, addresses))
}
