//! A blocking client of the KV protocol that finds each group's leader by following
//! `not_leader` answers (which name the leader's client address when the node's config has it,
//! so one address of a running node is enough), and sends every key operation under its
//! session (a random client id per client, a sequence number per operation) so that resending
//! it applies it at most once.
//!
//! Owns: one connection per node address (the given ones and those learned from the nodes),
//! the leader cache, the session id and the next seq. Never: resends an operation under
//! another (client, seq) than its first send, reports an operation as definitely failed once
//! one send of it may have taken effect, or gives up on a node that cannot be reached before
//! the operation's retry time is over.

use super::proto::{
    code, read_line_bounded, LineRead, NodeAddr, Request, RequestLine, Response, LINE_BYTES_BASE,
};
use super::server::leader_text;
use super::state::{group_of_key, Command, Session, COMMAND_OVERHEAD_BYTES};
use std::hash::{BuildHasher, Hasher};
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Longest response line accepted at least (a `digest` of 100,000 groups is about 9 MB); more
/// when a node's line limit (its largest value) calls for it.
const RESPONSE_BYTES_MIN: usize = 256 * LINE_BYTES_BASE;

/// The outcome of one operation, as far as the client can know it.
#[derive(Debug)]
pub enum Attempt {
    /// The node executed it (`ok: true`).
    Done(Box<Response>),
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

impl CallError {
    fn text(self) -> String {
        match self {
            CallError::NotSent(e) | CallError::Unknown(e) => e,
        }
    }
}

struct Connection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A client of one cluster.
pub struct KvClient {
    /// The node addresses: those given first, then those learned from the nodes.
    addrs: Vec<SocketAddr>,
    /// The node id at each address: from its own `id` answer, or as another node named it.
    node_ids: Vec<Option<u32>>,
    connections: Vec<Option<Connection>>,
    groups: u32,
    leaders: Vec<Option<u32>>,
    next: usize,
    reply_timeout: Duration,
    client_id: u64,
    next_seq: u64,
    /// The cluster's command limit (key and values together), once a node said it.
    command_bytes_max: Option<usize>,
    response_bytes_max: usize,
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

/// The error text of a response that is not `ok`.
fn error_text(response: &Response) -> String {
    format!(
        "{} {}",
        response.error.as_deref().unwrap_or("error"),
        response.message.as_deref().unwrap_or_default()
    )
    .trim_end()
    .to_string()
}

impl KvClient {
    /// Asks every address for its `id` (and learns the other nodes' client addresses from the
    /// answers); at least one must answer. Addresses that cannot be reached are asked again
    /// until one answers or `retry_for` is over. `first` is the address tried first when no
    /// leader is known (spreads clients over nodes).
    pub fn connect(
        addrs: &[SocketAddr],
        reply_timeout: Duration,
        first: usize,
        retry_for: Duration,
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
            command_bytes_max: None,
            response_bytes_max: RESPONSE_BYTES_MIN,
        };
        let deadline = Instant::now() + retry_for;
        let mut rounds = 0u32;
        loop {
            let mut errors = Vec::new();
            // Addresses learned from an answer are asked in the same round.
            let mut index = 0;
            while index < client.addrs.len() {
                if let Err(e) = client.identify(index) {
                    errors.push(format!("{}: {e}", client.addrs[index]));
                }
                index += 1;
            }
            if client.groups != 0 {
                return Ok(client);
            }
            rounds += 1;
            if Instant::now() >= deadline {
                return Err(format!(
                    "no node answered ({rounds} rounds in {} ms): {}",
                    retry_for.as_millis(),
                    errors.join("; ")
                ));
            }
            let backoff = Duration::from_millis((50 * u64::from(rounds)).min(500));
            std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
        }
    }

    /// Asks address `index` for its `id`: records its node id, the group count, leader hints,
    /// the command limit and the client addresses it names.
    fn identify(&mut self, index: usize) -> Result<(), String> {
        let response = self
            .call(index, &RequestLine::new(Request::Id, None))
            .map_err(CallError::text)?;
        if !response.ok {
            return Err(error_text(&response));
        }
        let groups = response.groups.unwrap_or(0);
        if groups == 0 {
            return Err("id answer without groups".into());
        }
        if self.groups != 0 && self.groups != groups {
            return Err(format!(
                "{groups} groups, another node {}: not one cluster",
                self.groups
            ));
        }
        if self.groups == 0 {
            self.groups = groups;
            self.leaders = response.leaders.clone().unwrap_or_default();
            self.leaders.resize(groups as usize, None);
        }
        self.node_ids[index] = response.node_id;
        if let Some(max) = response.command_bytes_max {
            let max = max as usize;
            self.command_bytes_max = Some(self.command_bytes_max.map_or(max, |m| m.min(max)));
        }
        if let Some(line) = response.line_bytes_max {
            self.response_bytes_max = self.response_bytes_max.max(2 * line as usize);
        }
        for NodeAddr { id, addr } in response.client_addrs.unwrap_or_default() {
            self.learn(id, addr);
        }
        Ok(())
    }

    /// Notes that node `id` serves clients at `addr` (as a node's config says).
    fn learn(&mut self, id: u32, addr: SocketAddr) {
        match self.addrs.iter().position(|a| *a == addr) {
            Some(index) => {
                // A node's own answer outranks what another node's config says of it.
                if self.node_ids[index].is_none() {
                    self.node_ids[index] = Some(id);
                }
            }
            None => {
                self.addrs.push(addr);
                self.node_ids.push(Some(id));
                self.connections.push(None);
            }
        }
    }

    /// The cluster's command limit, once a node said it: the most bytes of key and values
    /// together one operation may carry.
    pub fn command_bytes_max(&self) -> Option<usize> {
        self.command_bytes_max
    }

    /// Sends a request that is not about a key (id, stats, digest) to address `index`.
    pub fn ask(&mut self, index: usize, request: &Request) -> Result<Response, String> {
        self.call(index, &RequestLine::new(request.clone(), None))
            .map_err(CallError::text)
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
    /// proposed", after a node that cannot be reached, and after an unknown outcome (an
    /// `unknown` answer, a timeout or a lost connection). Resending is safe because a group
    /// applies one (client, seq) at most once; once a send may have taken effect, the
    /// operation is never reported as failed. A `stale` answer (a later seq of the session was
    /// applied first) ends it as unknown. An operation over the command limit fails at once.
    pub fn execute_as(
        &mut self,
        request: &Request,
        session: Session,
        retry_for: Duration,
    ) -> Attempt {
        let command = match request.clone() {
            Request::Put { key, value } => Command::Put { key, value },
            Request::Get { key, .. } => Command::Get { key },
            Request::Delete { key } => Command::Delete { key },
            Request::Cas { key, expected, new } => Command::Cas { key, expected, new },
            _ => panic!("execute is for key operations"),
        };
        if let Some(max) = self.command_bytes_max {
            let payload = command.payload_bytes();
            if payload > max {
                return Attempt::Fail(format!(
                    "too large: key and values are {payload} bytes together; this cluster's command limit is {max} bytes (its batch_bytes_max minus {COMMAND_OVERHEAD_BYTES}); nothing was sent"
                ));
            }
        }
        let line = RequestLine::new(request.clone(), Some(session));
        let group = group_of_key(command.key(), self.groups).0 as usize;
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
                            "{why}; resent under the same session, gave up after {tries} tries in {} ms (last: {last})",
                            retry_for.as_millis()
                        )),
                        None => Attempt::Fail(format!(
                            "gave up after {tries} tries in {} ms: {last}",
                            retry_for.as_millis()
                        )),
                    };
                }
                let backoff = Duration::from_millis((10 * u64::from(tries)).min(200));
                std::thread::sleep(backoff.min(deadline.saturating_duration_since(Instant::now())));
            }
            tries += 1;
            let target = self.target(group);
            if self.node_ids[target].is_none() {
                // Never identified (it did not answer before): ask who it is first. An `id`
                // has no effect, so a failure here means the operation was not sent.
                if let Err(e) = self.identify(target) {
                    last = format!("{}: {e}", self.addrs[target]);
                    self.forget_leader(group);
                    self.advance(target);
                    continue;
                }
            }
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
                Ok(response) if response.ok => return Attempt::Done(Box::new(response)),
                Ok(response) => {
                    let error = response.error.clone().unwrap_or_default();
                    last = format!("{}: {}", self.addrs[target], error_text(&response));
                    match error.as_str() {
                        code::NOT_LEADER => {
                            if let Some(reason) = self.follow(group, target, &response) {
                                let reason = format!("{last}: {reason}");
                                return match maybe {
                                    Some(why) => Attempt::Unknown(format!("{why}; {reason}")),
                                    None => Attempt::Fail(reason),
                                };
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

    /// Follows a `not_leader` answer of address `target` for `group`: the next try goes to the
    /// leader it names (at the address it names, or at the address known for that node), or,
    /// when it names none or one that cannot be placed yet, to another node. `Some(reason)`
    /// only when retrying cannot help: the leader is a node whose client address nobody
    /// named and every address is identified as another node.
    fn follow(&mut self, group: usize, target: usize, response: &Response) -> Option<String> {
        let this = self.node_ids[target];
        let leader = match response.leader {
            Some(leader) if Some(leader) != this => leader,
            _ => {
                self.forget_leader(group);
                self.advance(target);
                return None;
            }
        };
        if let Some(addr) = response.leader_addr {
            self.learn(leader, addr);
        }
        if self.index_of(leader).is_some() {
            self.leaders[group] = Some(leader);
            return None;
        }
        self.forget_leader(group);
        match self.node_ids.iter().position(Option::is_none) {
            // An address that never answered may be the leader's: try it (it is identified
            // first; while it cannot be reached, the tries go on until the retry time ends).
            Some(unidentified) => {
                self.next = unidentified;
                None
            }
            None => Some(format!(
                "the leader is {}, whose client address is unknown: no given address is that node and {} does not name its address (fix: add it to --addr, or list it in the nodes' peer_client_addrs)",
                leader_text(Some(leader)),
                leader_text(this)
            )),
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
        let response_bytes_max = self.response_bytes_max;
        let connection = self.connections[index].as_mut().expect("connected above");
        let mut bytes = serde_json::to_vec(request).expect("a request always serializes");
        bytes.push(b'\n');
        let result = (|| {
            connection
                .writer
                .write_all(&bytes)
                .map_err(|e| format!("write: {e}"))?;
            let mut line = Vec::new();
            match read_line_bounded(&mut connection.reader, &mut line, response_bytes_max)
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
