//! The KV client protocol server of one node: accepts TCP connections on the client port, reads
//! request lines, proposes commands to the key's group and writes one response line each.
//!
//! Owns: the listener, one thread per connection (bounded count), the wait on each proposal
//! (bounded in time). Never: answers a write before the runtime says it committed, crashes on a
//! malformed line, or holds more than `LINE_BYTES_MAX` of a request.

use super::proto::{
    code, read_line_bounded, GroupDigest, LineRead, Request, RequestLine, Response, LINE_BYTES_MAX,
};
use super::state::{group_of_key, Command, Outcome, SharedView};
use paxring_engine::runtime::{Committed, Error, Node, Proposal};
use paxring_wal::GroupId;
use std::future::Future;
use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Limits of the server.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more are answered `overloaded` and closed.
    pub connections_max: usize,
    /// Longest wait for a proposal's outcome before answering `unknown`.
    pub proposal_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            connections_max: 256,
            proposal_timeout: Duration::from_secs(10),
        }
    }
}

/// How often blocked threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

struct ServerShared {
    node: Arc<Node>,
    views: Arc<Vec<SharedView>>,
    limits: ServerLimits,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
}

/// A running client protocol server.
pub struct KvServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

impl KvServer {
    /// Serves `listener` for `node`; `views[g]` is group g's published state.
    pub fn start(
        listener: TcpListener,
        node: Arc<Node>,
        views: Arc<Vec<SharedView>>,
        limits: ServerLimits,
    ) -> std::io::Result<KvServer> {
        assert_eq!(
            views.len(),
            node.config().groups as usize,
            "one view per group"
        );
        let local_addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let context = Arc::new(ServerShared {
            node,
            views,
            limits,
            stop: stop.clone(),
            active: active.clone(),
        });
        let accept = std::thread::Builder::new()
            .name("kv-accept".into())
            .spawn(move || accept_loop(listener, context))?;
        Ok(KvServer {
            local_addr,
            stop,
            active,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, asks every connection thread to end, and waits up to `wait` for them;
    /// true when all ended.
    pub fn stop(mut self, wait: Duration) -> bool {
        self.stop.store(true, Ordering::Release);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let deadline = Instant::now() + wait;
        while self.active.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

fn accept_loop(listener: TcpListener, context: Arc<ServerShared>) {
    while !context.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let _ = stream.set_nonblocking(false);
                if context.active.load(Ordering::Acquire) >= context.limits.connections_max {
                    tracing::warn!(%peer, "client refused: {} connections open", context.limits.connections_max);
                    refuse(stream, context.limits.connections_max);
                    continue;
                }
                context.active.fetch_add(1, Ordering::AcqRel);
                let context = context.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("kv-conn-{peer}"))
                    .spawn({
                        let context = context.clone();
                        move || {
                            if let Err(e) = serve(stream, &context) {
                                tracing::debug!(%peer, "client connection ended: {e}");
                            }
                            context.active.fetch_sub(1, Ordering::AcqRel);
                        }
                    });
                if let Err(e) = spawned {
                    tracing::warn!("cannot start a connection thread: {e}");
                    context.active.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

fn refuse(mut stream: TcpStream, max: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let response = Response::error(
        code::OVERLOADED,
        format!("{max} client connections already open"),
    );
    let _ = write_response(&mut stream, &response_json(&response));
}

fn serve(stream: TcpStream, context: &ServerShared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let _ = stream.set_nodelay(true);
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(16 * 1024, stream);
    let mut line = Vec::with_capacity(1024);
    loop {
        if context.stop.load(Ordering::Acquire) {
            return Ok(());
        }
        match read_line_bounded(&mut reader, &mut line, LINE_BYTES_MAX) {
            Ok(LineRead::Line) => {
                let response = handle_line(&line, context);
                line.clear();
                write_response(&mut writer, &response)?;
            }
            Ok(LineRead::Eof) => return Ok(()),
            Ok(LineRead::TooLong) => {
                let response = Response::error(
                    code::BAD_REQUEST,
                    format!("request line longer than {LINE_BYTES_MAX} bytes; closing"),
                );
                write_response(&mut writer, &response_json(&response))?;
                drain_and_close(&mut reader, &writer);
                return Ok(());
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Closes our side, then reads and drops what the client still sends (at most 1 MiB, 1 s), so
/// that closing does not reset the connection before the client has read our answer.
fn drain_and_close(reader: &mut BufReader<TcpStream>, writer: &TcpStream) {
    let _ = writer.shutdown(std::net::Shutdown::Write);
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut drained = 0usize;
    let mut sink = [0u8; 16 * 1024];
    while drained < (1 << 20) && Instant::now() < deadline {
        match std::io::Read::read(reader, &mut sink) {
            Ok(0) => return,
            Ok(n) => drained += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

fn write_response(writer: &mut TcpStream, response: &serde_json::Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(response).expect("a response always serializes");
    bytes.push(b'\n');
    writer.write_all(&bytes)
}

fn response_json(response: &Response) -> serde_json::Value {
    serde_json::to_value(response).expect("a response always serializes")
}

/// Answers one request line.
fn handle_line(line: &[u8], context: &ServerShared) -> serde_json::Value {
    let line: RequestLine = match serde_json::from_slice(line) {
        Ok(line) => line,
        Err(e) => {
            return response_json(&Response::error(
                code::BAD_REQUEST,
                format!("not a request: {e}"),
            ))
        }
    };
    let session = match line.session() {
        Ok(session) => session,
        Err(e) => {
            return response_json(&Response::error(
                code::BAD_REQUEST,
                format!("not a request: {e}"),
            ))
        }
    };
    let request = line.request;
    let node = &context.node;
    let groups = node.config().groups;
    let command = match request {
        Request::Id => {
            let leaders: Vec<Option<u32>> =
                (0..groups).map(|g| node.leader_hint(GroupId(g))).collect();
            return serde_json::json!({
                "ok": true,
                "node_id": node.config().node_id,
                "groups": groups,
                "leaders": leaders,
            });
        }
        Request::Stats => {
            return serde_json::json!({ "ok": true, "stats": node.stats() });
        }
        Request::Digest => {
            let digests: Vec<GroupDigest> = context
                .views
                .iter()
                .enumerate()
                .map(|(group, view)| {
                    let view = view.lock().expect("group view lock");
                    GroupDigest {
                        group: group as u32,
                        applied_next: view.applied_next,
                        digest: view.digest,
                        checkpoint: view.checkpoint,
                        keys: view.keys,
                        sessions: view.sessions,
                    }
                })
                .collect();
            return serde_json::json!({ "ok": true, "digests": digests });
        }
        Request::Put { key, value } => Command::Put { key, value },
        Request::Get { key } => Command::Get { key },
        Request::Delete { key } => Command::Delete { key },
        Request::Cas { key, expected, new } => Command::Cas { key, expected, new },
    };
    let group = group_of_key(command.key(), groups);
    let is_cas = matches!(command, Command::Cas { .. });
    let proposal = node.propose(group, command.encode_with(session));
    let outcome = match wait_timeout(proposal, context.limits.proposal_timeout) {
        Some(outcome) => outcome,
        None => {
            return response_json(&Response::error(
                code::UNKNOWN,
                format!(
                    "no outcome within {} ms; the command may still take effect",
                    context.limits.proposal_timeout.as_millis()
                ),
            ))
        }
    };
    match outcome {
        Ok(committed) => committed_json(&committed, is_cas),
        Err(error) => response_json(&error_response(error)),
    }
}

fn committed_json(committed: &Committed, is_cas: bool) -> serde_json::Value {
    let outcome = match Outcome::decode(&committed.result) {
        Ok(outcome) => outcome,
        Err(e) => {
            return response_json(&Response::error(
                code::UNKNOWN,
                format!("committed, but {e}"),
            ))
        }
    };
    if let Some(error) = outcome.error {
        let code = if outcome.stale {
            code::STALE
        } else {
            code::BAD_REQUEST
        };
        return response_json(&Response::error(code, error));
    }
    let mut json = serde_json::json!({
        "ok": true,
        "group": committed.group.0,
        "instance": committed.instance.0,
        "value": outcome.value,
    });
    if is_cas {
        json["swapped"] = serde_json::Value::Bool(outcome.done);
    }
    json
}

/// Maps a runtime error to the protocol's error codes (docs/CLIENT.md#errors).
pub fn error_response(error: Error) -> Response {
    let message = error.to_string();
    match error {
        Error::NotLeader { leader } => Response {
            leader,
            ..Response::error(code::NOT_LEADER, message)
        },
        Error::Overloaded => Response::error(code::OVERLOADED, message),
        Error::TooLarge { .. } => Response::error(code::TOO_LARGE, message),
        Error::NoSuchGroup(..) => Response::error(code::BAD_REQUEST, message),
        Error::Stopped(_) => Response::error(code::STOPPED, message),
        Error::Unknown(_) | Error::Config(_) | Error::Start(_) => {
            Response::error(code::UNKNOWN, message)
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Waits for a proposal's outcome for at most `timeout` (`None`: still unknown).
fn wait_timeout(mut proposal: Proposal, timeout: Duration) -> Option<Result<Committed, Error>> {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let deadline = Instant::now() + timeout;
    loop {
        if let Poll::Ready(outcome) = Pin::new(&mut proposal).poll(&mut cx) {
            return Some(outcome);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}
