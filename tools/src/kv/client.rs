//! A blocking client of the KV protocol that finds each group's leader by following
//! `not_leader` answers among the nodes it was given, and sends every key operation under its
//! session (a random client id per client, a sequence number per operation) so that resending
//! it applies it at most once.
//!
//! Owns: one connection per node address, the leader cache, the session id and the next seq.
//! Never: resends an operation under another (client, seq) than its first send, and never
//! reports an operation as definitely failed once one send of it may have taken effect.

use super::proto::{
    code, read_line_bounded, LineRead, Request, RequestLine, Response, LINE_BYTES_MAX,
};
use super::state::{group_of_key, Session};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest response line accepted (a `digest` of 100,000 groups is about 9 MB).
const RESPONSE_BYTES_MAX: usize = 256 * LINE_BYTES_MAX;

/// The outcome of one operation, as far as the client can know it.
#[derive(Debug)]
pub enum Attempt {
    /// The node executed it (`ok: true`).
    Done(Response),
    /// It definitely did not take effect (every try was refused before proposing).
    Fail(String),
    /// It may or may not have taken effect (at most once: every send used the same session).
    Unknown(String),
}

/// A fresh session id: random, nonzero, different in every process and every call.
pub fn new_client_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    loop {
        // `RandomState` is keyed randomly per process; the pid, the clock and a counter make
        // two calls differ even where those keys might repeat.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        hasher.write_u64(CALLS.fetch_add(1, Ordering::Relaxed));
        hasher.write_u64(fastrand::u64(..));
        let id = hasher.finish();
        if id != 0 {
            return id;
        }
    }
}

enum CallError {
    /// Nothing reached the node (connect failed).
    NotSent(String),
    /// The request may have reached the node.
    Unknown(String),
}

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A client of one cluster.
pub struct KvClient {
    addrs: Vec<SocketAddr>,
    node_ids: Vec<Option<u32>>,
    connections: Vec<Option<Connection>>,
    groups: u32,
    leaders: Vec<Option<u32>>,
    next: usize,
    reply_timeout: Duration,
    client_id: u64,
    next_seq: u64,
}

/// Parses `A,B,C` into socket addresses.
pub fn parse_addrs(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut addrs = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let resolved = part
            .to_socket_addrs()
            .map_err(|e| format!("address {part:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("address {part:?} resolves to nothing"))?;
        addrs.push(resolved);
    }
    if addrs.is_empty() {
        return Err("no address given (use --addr ip:port[,ip:port...])".into());
    }
    Ok(addrs)
}

impl KvClient {
    /// Asks every address for its `id`; at least one must answer. `first` is the address tried
    /// first when no leader is known (spreads clients over nodes).
    pub fn connect(
        addrs: &[SocketAddr],
        reply_timeout: Duration,
        first: usize,
    ) -> Result<KvClient, String> {
        assert!(!addrs.is_empty(), "at least one address");
        let mut client = KvClient {
            addrs: addrs.to_vec(),
            node_ids: vec![None; addrs.len()],
            connections: (0..addrs.len()).map(|_| None).collect(),
            groups: 0,
            leaders: Vec::new(),
            next: first % addrs.len(),
            reply_timeout,
            client_id: new_client_id(),
            next_seq: 1,
        };
        let mut errors = Vec::new();
        for (index, addr) in addrs.iter().enumerate() {
            match client.call(index, &RequestLine::new(Request::Id, None)) {
                Ok(response) if response.ok => {
                    let groups = response.groups.unwrap_or(0);
                    if groups == 0 {
                        errors.push(format!("{}: id answer without groups", addr));
                        continue;
                    }
                    if client.groups != 0 && client.groups != groups {
                        return Err(format!(
                            "{} has {groups} groups, another node {}: not one cluster",
                            addr, client.groups
                        ));
                    }
                    client.groups = groups;
                    client.node_ids[index] = response.node_id;
                    if client.leaders.is_empty() {
                        client.leaders = response.leaders.unwrap_or_default();
                        client.leaders.resize(groups as usize, None);
                    }
                }
                Ok(response) => errors.push(format!("{}: {:?}", addr, response.error)),
                Err(CallError::NotSent(e)) | Err(CallError::Unknown(e)) => {
                    client.connections[index] = None;
                    errors.push(format!("{}: {e}", addr))
                }
            }
        }
        if client.groups == 0 {
            return Err(format!("no node answered: {}", errors.join("; ")));
        }
        Ok(client)
    }

    /// Sends a request that is not about a key (id, stats, digest) to address `index`.
    pub fn ask(&mut self, index: usize, request: &Request) -> Result<Response, String> {
        self.call(index, &RequestLine::new(request.clone(), None))
            .map_err(|e| match e {
                CallError::NotSent(e) | CallError::Unknown(e) => e,
            })
    }

    /// The session of the next new operation: this client's id and the next seq (1, 2, ...).
    pub fn next_session(&mut self) -> Session {
        let session = Session {
            client: self.client_id,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        session
    }

    /// Runs a new key operation under this client's next session (see [`KvClient::execute_as`]).
    pub fn execute(&mut self, request: &Request, retry_for: Duration) -> Attempt {
        let session = self.next_session();
        self.execute_as(request, session, retry_for)
    }

    /// Runs a key operation under `session`, following `not_leader` answers and resending it
    /// (always with the same `session`) for at most `retry_for` after answers that say "not
    /// proposed" and after an unknown outcome (an `unknown` answer, a timeout or a lost
    /// connection). Resending is safe because a group applies one (client, seq) at most once;
    /// once a send may have taken effect, the operation is never reported as failed. A `stale`
    /// answer (a later seq of the session was applied first) ends it as unknown.
    pub fn execute_as(
        &mut self,
        request: &Request,
        session: Session,
        retry_for: Duration,
    ) -> Attempt {
        let key = match request {
            Request::Put { key, .. }
            | Request::Get { key }
            | Request::Delete { key }
            | Request::Cas { key, .. } => key.clone(),
            _ => panic!("execute is for key operations"),
        };
        let line = RequestLine::new(request.clone(), Some(session));
        let group = group_of_key(&key, self.groups).0 as usize;
        let deadline = Instant::now() + retry_for;
        let mut last = String::from("no node was tried");
        // Why the operation may have taken effect, once a send may have.
        let mut maybe: Option<String> = None;
        let mut tries = 0u32;
        loop {
            if tries > 0 {
                if Instant::now() >= deadline {
                    return match maybe {
                        Some(why) => Attempt::Unknown(format!(
                            "{why}; resent under the same session, gave up after {tries} tries (last: {last})"
                        )),
                        None => Attempt::Fail(format!("gave up after {tries} tries: {last}")),
                    };
                }
                let backoff = Duration::from_millis((10 * u64::from(tries)).min(200));
                std::thread::sleep(backoff);
            }
            tries += 1;
            let target = self.target(group);
            match self.call(target, &line) {
                Err(CallError::NotSent(e)) => {
                    last = format!("{}: {e}", self.addrs[target]);
                    self.forget_leader(group);
                    self.advance(target);
                }
                Err(CallError::Unknown(e)) => {
                    last = format!("{}: {e}", self.addrs[target]);
                    maybe.get_or_insert_with(|| last.clone());
                    // The node may be gone or stuck: ask the others (a live leader is found
                    // again through their not_leader answers).
                    self.forget_leader(group);
                    self.advance(target);
                }
                Ok(response) if response.ok => return Attempt::Done(response),
                Ok(response) => {
                    let error = response.error.clone().unwrap_or_default();
                    last = format!(
                        "{}: {error} {}",
                        self.addrs[target],
                        response.message.clone().unwrap_or_default()
                    );
                    match error.as_str() {
                        code::NOT_LEADER => {
                            let this = self.node_ids[target];
                            match response.leader {
                                Some(leader)
                                    if Some(leader) != this && self.index_of(leader).is_some() =>
                                {
                                    self.leaders[group] = Some(leader);
                                }
                                Some(leader) if Some(leader) != this => {
                                    let reason = format!(
                                        "{last}: the leader is node {leader}, whose client address was not given (add it to --addr)"
                                    );
                                    return match maybe {
                                        Some(why) => Attempt::Unknown(format!("{why}; {reason}")),
                                        None => Attempt::Fail(reason),
                                    };
                                }
                                _ => {
                                    self.forget_leader(group);
                                    self.advance(target);
                                }
                            }
                        }
                        code::OVERLOADED => {}
                        code::STOPPED => {
                            self.forget_leader(group);
                            self.advance(target);
                        }
                        code::UNKNOWN => {
                            maybe.get_or_insert_with(|| last.clone());
                        }
                        // A later request of this session was applied first: this one can
                        // no longer be told apart from one applied earlier.
                        code::STALE => return Attempt::Unknown(last),
                        _ => {
                            return match maybe {
                                Some(why) => Attempt::Unknown(format!("{why}; then {last}")),
                                None => Attempt::Fail(last),
                            }
                        }
                    }
                }
            }
        }
    }

    fn index_of(&self, node: u32) -> Option<usize> {
        self.node_ids.iter().position(|id| *id == Some(node))
    }

    fn target(&self, group: usize) -> usize {
        self.leaders
            .get(group)
            .copied()
            .flatten()
            .and_then(|leader| self.index_of(leader))
            .unwrap_or(self.next)
    }

    fn forget_leader(&mut self, group: usize) {
        if let Some(slot) = self.leaders.get_mut(group) {
            *slot = None;
        }
    }

    fn advance(&mut self, tried: usize) {
        self.next = (tried + 1) % self.addrs.len();
    }

    fn call(&mut self, index: usize, request: &RequestLine) -> Result<Response, CallError> {
        if let Some(connection) = &self.connections[index] {
            if !still_open(connection.reader.get_ref()) {
                // The node closed it (restarted, or refused us): nothing was sent on it yet.
                self.connections[index] = None;
            }
        }
        if self.connections[index].is_none() {
            let stream = TcpStream::connect_timeout(&self.addrs[index], Duration::from_secs(1))
                .map_err(|e| CallError::NotSent(format!("connect: {e}")))?;
            let _ = stream.set_nodelay(true);
            stream
                .set_read_timeout(Some(self.reply_timeout))
                .map_err(|e| CallError::NotSent(e.to_string()))?;
            stream
                .set_write_timeout(Some(self.reply_timeout))
                .map_err(|e| CallError::NotSent(e.to_string()))?;
            let writer = stream
                .try_clone()
                .map_err(|e| CallError::NotSent(e.to_string()))?;
            self.connections[index] = Some(Connection {
                reader: BufReader::new(stream),
                writer,
            });
        }
        let connection = self.connections[index].as_mut().expect("connected above");
        let mut bytes = serde_json::to_vec(request).expect("a request always serializes");
        bytes.push(b'\n');
        let result = (|| {
            connection
                .writer
                .write_all(&bytes)
                .map_err(|e| format!("write: {e}"))?;
            let mut line = Vec::new();
            match read_line_bounded(&mut connection.reader, &mut line, RESPONSE_BYTES_MAX)
                .map_err(|e| format!("read: {e}"))?
            {
                LineRead::Line => serde_json::from_slice::<Response>(&line)
                    .map_err(|e| format!("response is not JSON: {e}")),
                LineRead::Eof => Err("connection closed before the response".into()),
                LineRead::TooLong => Err("response line too long".into()),
            }
        })();
        result.map_err(|e| {
            // The stream's state is unknown now: never reuse it.
            self.connections[index] = None;
            CallError::Unknown(e)
        })
    }
}

/// True when an idle connection has no pending EOF, error or stray bytes.
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open =
        matches!(stream.peek(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && open
}
