//! The KV client protocol server of one node: accepts TCP connections on the client port, reads
//! request lines, proposes commands to the key's group (or, for a `get` in mode `lease` or
//! `index`, asks the runtime for a linearizable read without a log write) and writes one
//! response line each.
//!
//! Owns: the listener, one thread per connection (bounded count), the wait on each proposal or
//! read (bounded in time). Never: answers a write before the runtime says it committed, answers
//! a read from the local map without the runtime's confirmation, records a read served without
//! the log in the session table, crashes on a malformed line, holds more than the line limit
//! ([`line_bytes_max`]) of a request, or proposes a command over the command limit
//! ([`command_bytes_max`]).

use super::proto::{
    code, line_bytes_max, read_line_bounded, GetMode, GroupDigest, LineRead, NodeAddr, Request,
    RequestLine, Response,
};
use super::state::{command_bytes_max, group_of_key, Command, Outcome, SharedView};
use paxring_engine::runtime::{Committed, Error, Node, Proposal, ReadMode};
use paxring_wal::GroupId;
use std::collections::BTreeMap;
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
    /// Longest wait for a proposal's outcome (or a read's answer) before answering `unknown`.
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
    /// The other nodes' client addresses (from the node file), named in `not_leader` answers.
    client_addrs: BTreeMap<u32, SocketAddr>,
    /// The command limit: most bytes of key and values in one command.
    command_bytes_max: usize,
    /// The longest request line accepted.
    line_bytes_max: usize,
}

/// A running client protocol server.
pub struct KvServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

impl KvServer {
    /// Serves `listener` for `node`; `views[g]` is group g's published state; `client_addrs`
    /// names the other nodes' client addresses (given to clients in `not_leader` and `id`
    /// answers).
    pub fn start(
        listener: TcpListener,
        node: Arc<Node>,
        views: Arc<Vec<SharedView>>,
        limits: ServerLimits,
        client_addrs: BTreeMap<u32, SocketAddr>,
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
        let batch_bytes_max = node.config().batch_bytes_max;
        let context = Arc::new(ServerShared {
            node,
            views,
            limits,
            stop: stop.clone(),
            active: active.clone(),
            client_addrs,
            command_bytes_max: command_bytes_max(batch_bytes_max),
            line_bytes_max: line_bytes_max(batch_bytes_max),
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
        match read_line_bounded(&mut reader, &mut line, context.line_bytes_max) {
            Ok(LineRead::Line) => {
                let response = handle_line(&line, context);
                line.clear();
                write_response(&mut writer, &response)?;
            }
            Ok(LineRead::Eof) => return Ok(()),
            Ok(LineRead::TooLong) => {
                let response = Response::error(
                    code::BAD_REQUEST,
                    format!(
                        "request line longer than {} bytes (this node's line limit); closing",
                        context.line_bytes_max
                    ),
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
            let client_addrs: Vec<NodeAddr> = context
                .client_addrs
                .iter()
                .map(|(id, addr)| NodeAddr {
                    id: *id,
                    addr: *addr,
                })
                .collect();
            let memberships: Vec<Option<crate::kv::proto::GroupMembers>> = (0..groups)
                .map(|g| {
                    node.membership(GroupId(g))
                        .map(|m| crate::kv::proto::GroupMembers {
                            voters: m.voters,
                            followers: m.followers,
                            from: m.from,
                        })
                })
                .collect();
            return serde_json::json!({
                "ok": true,
                "node_id": node.config().node_id,
                "groups": groups,
                "leaders": leaders,
                "memberships": memberships,
                "client_addrs": client_addrs,
                "command_bytes_max": context.command_bytes_max,
                "line_bytes_max": context.line_bytes_max,
            });
        }
        Request::Stats => {
            let mut stats = serde_json::to_value(node.stats()).expect("stats serialize");
            null_what_was_not_measured(&mut stats);
            return serde_json::json!({ "ok": true, "stats": stats });
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
        Request::Membership {
            group,
            voters,
            followers,
        } => {
            if group >= groups {
                return response_json(&Response::error(
                    code::BAD_REQUEST,
                    format!("group {group} does not exist (groups are 0..{groups})"),
                ));
            }
            let proposal = node.change_membership(GroupId(group), &voters, &followers);
            return match wait_timeout(proposal, context.limits.proposal_timeout) {
                Some(Ok(committed)) => serde_json::json!({
                    "ok": true,
                    "group": group,
                    "instance": committed.instance.0,
                    "governs_from": committed.instance.0 + paxring_engine::core::MEMBERSHIP_DELAY,
                }),
                Some(Err(error)) => response_json(&error_response(error, &context.client_addrs)),
                None => response_json(&Response::error(
                    code::UNKNOWN,
                    "no outcome within the proposal timeout: the change may or may not be chosen"
                        .to_string(),
                )),
            };
        }
        Request::Put { key, value } => Command::Put { key, value },
        Request::Get {
            key,
            mode,
            max_stale_ms,
        } => match mode.unwrap_or_default() {
            GetMode::Stale => {
                let max = Duration::from_millis(max_stale_ms.unwrap_or(1000));
                return read(context, key, ReadHow::Stale(max));
            }
            GetMode::Log => Command::Get { key },
            // A read without the log: the session (validated above) is not recorded, since
            // nothing is written; a resend simply reads again (docs/CLIENT.md).
            GetMode::Index => return read(context, key, ReadHow::Mode(ReadMode::Index)),
            GetMode::Lease => return read(context, key, ReadHow::Mode(ReadMode::Lease)),
        },
        Request::Delete { key } => Command::Delete { key },
        Request::Cas { key, expected, new } => Command::Cas { key, expected, new },
    };
    if let Some(refusal) = too_large(context, &command) {
        return refusal;
    }
    let group = group_of_key(command.key(), groups);
    let is_cas = matches!(command, Command::Cas { .. });
    // The runtime takes commands of up to batch_bytes_max - 16 bytes.
    let max_bytes = (node.config().batch_bytes_max as usize).saturating_sub(16);
    let proposal = node.propose(group, command.encode_for_log(session, max_bytes));
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
        Err(error) => response_json(&error_response(error, &context.client_addrs)),
    }
}

/// The `too_large` answer when `command`'s key and values exceed this cluster's limit.
fn too_large(context: &ServerShared, command: &Command) -> Option<serde_json::Value> {
    let payload = command.payload_bytes();
    (payload > context.command_bytes_max).then(|| {
        response_json(&Response::error(
            code::TOO_LARGE,
            too_large_message(
                payload,
                context.command_bytes_max,
                context.node.config().batch_bytes_max,
            ),
        ))
    })
}

/// Answers a get of `key` by a linearizable read without a log write (`Node::read` in `mode`):
/// the state machine's `query` answers what the logged get would (`KvState::query`), so the
/// response is the same but for `instance`, which is the applied point the read was served at.
/// How a `get` that writes nothing is served.
enum ReadHow {
    /// Linearizable: by lease or read index.
    Mode(ReadMode),
    /// Within a staleness bound, by this node whatever its role.
    Stale(Duration),
}

fn read(context: &ServerShared, key: String, how: ReadHow) -> serde_json::Value {
    let node = &context.node;
    let command = Command::Get { key };
    if let Some(refusal) = too_large(context, &command) {
        return refusal;
    }
    let group = group_of_key(command.key(), node.config().groups);
    let max_bytes = (node.config().batch_bytes_max as usize).saturating_sub(16);
    let query = command.encode_for_log(None, max_bytes);
    let answer = match how {
        ReadHow::Mode(mode) => node.read(group, query, mode),
        ReadHow::Stale(max) => node.read_stale(group, query, max),
    };
    match wait_timeout(answer, context.limits.proposal_timeout) {
        Some(Ok(committed)) => committed_json(&committed, false),
        Some(Err(error)) => response_json(&error_response(error, &context.client_addrs)),
        None => response_json(&Response::error(
            code::UNKNOWN,
            format!(
                "no answer to the read within {} ms; a read changes nothing: it may be resent",
                context.limits.proposal_timeout.as_millis()
            ),
        )),
    }
}

/// The `too_large` message: the size, the limit and where the limit comes from.
pub fn too_large_message(payload: usize, limit: usize, batch_bytes_max: u32) -> String {
    format!(
        "key and values are {payload} bytes together; this node's command limit is {limit} bytes \
         (batch_bytes_max {batch_bytes_max} minus {} bytes of overhead); nothing was proposed",
        super::state::COMMAND_OVERHEAD_BYTES
    )
}

/// Replaces the ratios of the stats' `totals` whose denominator is still 0 by `null` (nothing
/// measured yet), so that a fresh node does not show a ratio of 0.
fn null_what_was_not_measured(stats: &mut serde_json::Value) {
    let commit_instances: u64 = stats["cores"]
        .as_array()
        .map(|cores| {
            cores
                .iter()
                .filter_map(|c| c["protocol"]["commit_instances"].as_u64())
                .sum()
        })
        .unwrap_or(0);
    let totals = &mut stats["totals"];
    if totals["write_rounds"].as_u64() == Some(0) {
        for ratio in [
            "durable_writes_per_round",
            "groups_per_round",
            "records_per_round",
        ] {
            totals[ratio] = serde_json::Value::Null;
        }
    }
    if commit_instances == 0 {
        totals["rtts_per_commit"] = serde_json::Value::Null;
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

/// Who leads, for a message: "node 3" or "unknown".
pub fn leader_text(leader: Option<u32>) -> String {
    match leader {
        Some(id) => format!("node {id}"),
        None => "unknown".into(),
    }
}

/// Maps a runtime error to the protocol's error codes (docs/CLIENT.md#errors); a `not_leader`
/// answer names the leader's client address when `client_addrs` holds it.
pub fn error_response(error: Error, client_addrs: &BTreeMap<u32, SocketAddr>) -> Response {
    let message = error.to_string();
    match error {
        Error::NotLeader { leader } => {
            let leader_addr = leader.and_then(|id| client_addrs.get(&id).copied());
            let message = match leader_addr {
                Some(addr) => format!(
                    "not the leader of this group (leader: {}, client address {addr})",
                    leader_text(leader)
                ),
                None => format!(
                    "not the leader of this group (leader: {})",
                    leader_text(leader)
                ),
            };
            Response {
                leader,
                leader_addr,
                ..Response::error(code::NOT_LEADER, message)
            }
        }
        Error::Overloaded => Response::error(code::OVERLOADED, message),
        Error::TooLarge { .. } => Response::error(code::TOO_LARGE, message),
        Error::NoSuchGroup(..) | Error::WrongCore { .. } => {
            Response::error(code::BAD_REQUEST, message)
        }
        Error::Stopped(_) => Response::error(code::STOPPED, message),
        // A read the state machine refused changed nothing: the caller may retry.
        Error::Query(_) => Response::error(code::BAD_REQUEST, message),
        // A refused membership change changed nothing.
        Error::Membership(_) => Response::error(code::MEMBERSHIP, message),
        Error::TooStale { .. } => Response::error(code::TOO_STALE, message),
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

/// Waits for a proposal's outcome (or a read's answer) for at most `timeout` (`None`: still
/// unknown).
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

#[cfg(test)]
mod tests {
    //! Proves that errors name the leader as "node N" or "unknown" (never a debug form), that
    //! a not_leader answer carries the leader's client address when configured, and that the
    //! stats' ratios are null until something was measured.
    use super::*;

    #[test]
    fn not_leader_names_the_node_and_its_address() {
        let addrs: BTreeMap<u32, SocketAddr> = [(3, "127.0.0.1:7103".parse().unwrap())].into();
        let known = error_response(Error::NotLeader { leader: Some(3) }, &addrs);
        assert_eq!(known.error.as_deref(), Some(code::NOT_LEADER));
        assert_eq!(known.leader, Some(3));
        assert_eq!(known.leader_addr, addrs.get(&3).copied());
        let message = known.message.unwrap();
        assert!(
            message.contains("leader: node 3, client address 127.0.0.1:7103"),
            "{message}"
        );
        let unknown = error_response(Error::NotLeader { leader: None }, &addrs);
        assert_eq!(unknown.leader_addr, None);
        let message = unknown.message.unwrap();
        assert!(message.contains("leader: unknown"), "{message}");
        let unlisted = error_response(Error::NotLeader { leader: Some(2) }, &addrs);
        assert_eq!(unlisted.leader_addr, None);
        for message in [&message, unlisted.message.as_ref().unwrap()] {
            assert!(
                !message.contains("Some(") && !message.contains("None"),
                "{message}"
            );
        }
    }

    #[test]
    fn ratios_are_null_until_measured() {
        let mut fresh = serde_json::json!({
            "cores": [{"protocol": {"commit_instances": 0}}],
            "totals": serde_json::to_value(paxring_engine::runtime::NodeTotals::default()).unwrap(),
        });
        null_what_was_not_measured(&mut fresh);
        for ratio in [
            "durable_writes_per_round",
            "groups_per_round",
            "records_per_round",
            "rtts_per_commit",
        ] {
            assert!(fresh["totals"][ratio].is_null(), "{ratio}: {fresh}");
        }
        let mut measured = serde_json::json!({
            "cores": [{"protocol": {"commit_instances": 4}}],
            "totals": {"write_rounds": 2, "durable_writes_per_round": 1.0,
                       "groups_per_round": 1.0, "records_per_round": 2.0, "rtts_per_commit": 1.0},
        });
        null_what_was_not_measured(&mut measured);
        assert_eq!(measured["totals"]["durable_writes_per_round"], 1.0);
        assert_eq!(measured["totals"]["rtts_per_commit"], 1.0);
    }
}
