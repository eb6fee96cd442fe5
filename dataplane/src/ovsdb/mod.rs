//! A small OVSDB client (RFC 7047): JSON-RPC 1.0 over a unix socket, enough
//! to keep Open vSwitch bridges and ports as Tartan wants them.
//!
//! The published Rust crates were 0.0.x when this was written (`ovsdb` 0.0.6
//! generates models from a schema and is marked work in progress;
//! `ovsdb-client` 0.0.1 pulls in jsonrpsee and is barely documented), so the
//! few hundred lines we need live here.
//!
//! One task owns the socket: it writes requests, answers the server's `echo`
//! (the server drops clients that do not), and hands each reply to the caller
//! waiting on its id. The wire carries a stream of JSON values with no
//! delimiter, so replies are split by parsing, not by lines.

mod schema;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::{DataplaneError, Result};

pub use schema::{OvsPort, PortChange, PortSpec, PortType};

/// The database Open vSwitch keeps its configuration in.
pub const DATABASE: &str = "Open_vSwitch";

/// How long a request, and the switch applying a change, may take by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = std::result::Result<Value, DataplaneError>;

struct Request {
    method: &'static str,
    params: Value,
    reply: oneshot::Sender<Reply>,
}

/// A connection to an OVSDB server. Dropping it closes the connection.
pub struct Ovsdb {
    address: String,
    requests: mpsc::Sender<Request>,
    timeout: Duration,
}

impl Ovsdb {
    /// Connects to `unix:PATH` (the form `--ovsdb` takes) or a bare path.
    pub async fn connect(address: &str) -> Result<Ovsdb> {
        let path = match address.split_once(':') {
            Some(("unix", path)) => PathBuf::from(path),
            Some(_) => return Err(DataplaneError::OvsdbAddress(address.to_string())),
            None => PathBuf::from(address),
        };
        let stream =
            UnixStream::connect(&path)
                .await
                .map_err(|source| DataplaneError::OvsdbConnect {
                    address: address.to_string(),
                    source,
                })?;
        let (requests, rx) = mpsc::channel(16);
        tokio::spawn(run_connection(stream, rx));
        Ok(Ovsdb {
            address: address.to_string(),
            requests,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Bounds every request, and every wait for the switch to apply a change.
    pub fn with_timeout(mut self, timeout: Duration) -> Ovsdb {
        self.timeout = timeout;
        self
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends one request and returns its `result`; an `error` in the reply,
    /// a closed connection or the deadline passing is an error.
    pub async fn call(&self, method: &'static str, params: Value) -> Result<Value> {
        let (reply, rx) = oneshot::channel();
        let closed = || DataplaneError::OvsdbClosed(self.address.clone());
        let exchange = async {
            self.requests
                .send(Request {
                    method,
                    params,
                    reply,
                })
                .await
                .map_err(|_| closed())?;
            rx.await.map_err(|_| closed())?
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| DataplaneError::OvsdbTimeout {
                what: format!("an answer to {method} from {}", self.address),
                timeout: self.timeout,
            })?
    }

    /// Runs `operations` as one transaction on the Open_vSwitch database and
    /// returns one result per operation. The server applies all or nothing;
    /// the first failed operation (or the commit) becomes the error.
    pub async fn transact(&self, operations: Vec<Value>) -> Result<Vec<Value>> {
        let count = operations.len();
        let mut params = vec![json!(DATABASE)];
        params.extend(operations);
        let result = self.call("transact", Value::Array(params)).await?;
        let Value::Array(results) = result else {
            return Err(DataplaneError::OvsdbProtocol(format!(
                "transact answered {result} instead of an array"
            )));
        };
        // A failed operation carries "error"; an extra trailing result is
        // the commit's own failure (a constraint checked at commit time).
        if let Some(failed) = results.iter().find(|r| r.get("error").is_some()) {
            return Err(transaction_error(failed));
        }
        if results.len() < count {
            return Err(DataplaneError::OvsdbProtocol(format!(
                "transact answered {} results for {count} operations",
                results.len()
            )));
        }
        Ok(results)
    }
}

/// An OVSDB error object (`{"error": ..., "details": ...}`) as one line.
fn transaction_error(failed: &Value) -> DataplaneError {
    let text = |key: &str| {
        let value = failed.get(key);
        let text = match value.and_then(Value::as_str) {
            Some(text) => text.to_string(),
            None if key == "error" => value.map(Value::to_string).unwrap_or_default(),
            None => String::new(),
        };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    DataplaneError::OvsdbTransaction {
        error: text("error"),
        details: text("details"),
    }
}

/// Owns the socket until the `Ovsdb` is dropped or the server goes away;
/// then every caller still waiting is told the connection closed.
async fn run_connection(stream: UnixStream, mut requests: mpsc::Receiver<Request>) {
    let (mut reader, mut writer) = stream.into_split();
    let mut pending: HashMap<u64, oneshot::Sender<Reply>> = HashMap::new();
    let mut next_id: u64 = 0;
    let mut buffer: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            request = requests.recv() => {
                let Some(request) = request else { return };
                next_id += 1;
                let message = json!({"method": request.method, "params": request.params, "id": next_id});
                if let Err(err) = writer.write_all(message.to_string().as_bytes()).await {
                    let _ = request.reply.send(Err(DataplaneError::OvsdbIo { op: "sending a request", source: err }));
                    return;
                }
                // Callers that gave up (a timeout) need no answer: their slots go.
                pending.retain(|_, reply| !reply.is_closed());
                pending.insert(next_id, request.reply);
            }
            read = reader.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buffer.extend_from_slice(&chunk[..n]);
                let messages = match split_messages(&mut buffer) {
                    Ok(messages) => messages,
                    Err(err) => {
                        let text = err.to_string();
                        for (_, reply) in pending.drain() {
                            let _ = reply.send(Err(DataplaneError::OvsdbProtocol(text.clone())));
                        }
                        return;
                    }
                };
                for message in messages {
                    if let Some(answer) = handle_message(message, &mut pending) {
                        if writer.write_all(answer.to_string().as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Takes every complete JSON value off the front of `buffer`, leaving a
/// partial one for the next read.
fn split_messages(buffer: &mut Vec<u8>) -> std::result::Result<Vec<Value>, String> {
    let mut messages = Vec::new();
    let mut consumed = 0;
    {
        let mut values = serde_json::Deserializer::from_slice(buffer).into_iter::<Value>();
        loop {
            match values.next() {
                Some(Ok(value)) => {
                    messages.push(value);
                    consumed = values.byte_offset();
                }
                Some(Err(err)) if err.is_eof() => break,
                Some(Err(err)) => return Err(format!("the server sent malformed JSON: {err}")),
                None => {
                    consumed = buffer.len();
                    break;
                }
            }
        }
    }
    buffer.drain(..consumed);
    Ok(messages)
}

/// Routes a reply to its caller, or returns the answer to a server request.
fn handle_message(
    message: Value,
    pending: &mut HashMap<u64, oneshot::Sender<Reply>>,
) -> Option<Value> {
    if let Some(method) = message.get("method").and_then(Value::as_str) {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        // Notifications (id null) need no answer; echo is the one request
        // the server makes of its clients.
        if id.is_null() {
            return None;
        }
        return Some(if method == "echo" {
            json!({"result": message.get("params").cloned().unwrap_or(json!([])), "error": null, "id": id})
        } else {
            json!({"result": null, "error": format!("unknown method {method}"), "id": id})
        });
    }
    let reply = message
        .get("id")
        .and_then(Value::as_u64)
        .and_then(|id| pending.remove(&id))?;
    let outcome = match message.get("error") {
        Some(error) if error.is_object() => Err(transaction_error(error)),
        Some(error) if !error.is_null() => Err(transaction_error(&json!({"error": error}))),
        _ => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
    };
    let _ = reply.send(outcome);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_across_reads_come_out_whole() {
        let mut buffer = br#"{"id":1,"result":[],"error":null}{"id":2,"res"#.to_vec();
        let first = split_messages(&mut buffer).expect("valid");
        assert_eq!(first, vec![json!({"id":1,"result":[],"error":null})]);
        assert_eq!(buffer, br#"{"id":2,"res"#);
        buffer.extend_from_slice(br#"ult":{"a":"}{"},"error":null} "#);
        let second = split_messages(&mut buffer).expect("valid");
        assert_eq!(
            second,
            vec![json!({"id":2,"result":{"a":"}{"},"error":null})]
        );
        assert!(buffer.is_empty());
    }

    #[test]
    fn malformed_json_is_an_error() {
        let mut buffer = b"{\"id\":1]".to_vec();
        assert!(split_messages(&mut buffer).is_err());
    }

    #[test]
    fn echo_is_answered_with_its_params() {
        let mut pending = HashMap::new();
        let answer = handle_message(
            json!({"method":"echo","params":["x"],"id":"echo"}),
            &mut pending,
        );
        assert_eq!(
            answer,
            Some(json!({"result":["x"],"error":null,"id":"echo"}))
        );
        assert_eq!(
            handle_message(
                json!({"method":"update","params":[null, {}],"id":null}),
                &mut pending
            ),
            None
        );
    }

    /// A scripted server on a socket of the test's own: it asks the client
    /// for an echo in two pieces with no delimiter, insists on the answer,
    /// and only then replies to the client's transact.
    #[tokio::test]
    async fn the_connection_answers_echo_and_reassembles_split_replies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("db.sock");
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buffer = Vec::new();
            let mut read_one = async |stream: &mut UnixStream| loop {
                if let Some(value) = split_messages(&mut buffer).expect("json").pop() {
                    return value;
                }
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("read");
                assert!(n > 0, "client hung up");
                buffer.extend_from_slice(&chunk[..n]);
            };
            let request = read_one(&mut stream).await;
            assert_eq!(request["method"], "transact");
            stream
                .write_all(br#"{"method":"echo","par"#)
                .await
                .expect("write");
            stream
                .write_all(br#"ams":["ping"],"id":"echo"}"#)
                .await
                .expect("write");
            let echo = read_one(&mut stream).await;
            assert_eq!(echo, json!({"result":["ping"],"error":null,"id":"echo"}));
            let reply = json!({"id": request["id"], "result": [{"rows": []}], "error": null});
            let text = reply.to_string();
            let (head, tail) = text.split_at(text.len() / 2);
            stream.write_all(head.as_bytes()).await.expect("write");
            stream.write_all(tail.as_bytes()).await.expect("write");
        });
        let address = format!("unix:{}", socket.display());
        let db = Ovsdb::connect(&address)
            .await
            .expect("connect")
            .with_timeout(Duration::from_secs(5));
        let results = db
            .transact(vec![
                json!({"op": "select", "table": "Bridge", "where": []}),
            ])
            .await
            .expect("transact");
        assert_eq!(results, vec![json!({"rows": []})]);
        server.await.expect("server");
        // Depending on when the hangup is seen, the request is refused as
        // written or as unanswered.
        let err = db.transact(vec![]).await.expect_err("server gone");
        assert!(
            matches!(
                err,
                DataplaneError::OvsdbClosed(_) | DataplaneError::OvsdbIo { .. }
            ),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'), "{err}");
    }

    #[tokio::test]
    async fn replies_reach_their_caller_and_errors_are_one_line() {
        let mut pending = HashMap::new();
        let (tx, rx) = oneshot::channel();
        pending.insert(7, tx);
        let (other, _other_rx) = oneshot::channel();
        pending.insert(8, other);
        handle_message(
            json!({"id":7,"result":null,"error":{"error":"unknown database","details":"no database named Nope"}}),
            &mut pending,
        );
        let err = rx.await.expect("answered").expect_err("an error reply");
        assert_eq!(
            err.to_string(),
            "OVSDB transaction failed: unknown database (no database named Nope)"
        );
        assert!(pending.contains_key(&8), "other callers keep waiting");
        let (tx, rx) = oneshot::channel();
        pending.insert(9, tx);
        handle_message(
            json!({"id":9,"result":null,"error":{"error":"syntax error","details":"line one\nline two"}}),
            &mut pending,
        );
        let err = rx.await.expect("answered").expect_err("an error reply");
        assert_eq!(
            err.to_string(),
            "OVSDB transaction failed: syntax error (line one line two)"
        );
    }
}
