//! The reads benchmark's clients, in the coordinator's process: closed-loop clients on one
//! single-threaded runtime, each with its own loopback connection to every node, each request
//! sent to the node that leads its group (following `NotLeader` hints), one outstanding per
//! client. Every kind of request, the baseline included, takes the same connections and the
//! same code path; only the op differs.
//!
//! Owns: the connections, the per-phase histograms. Never: runs past a phase's end (plus one
//! request in flight), retries without bound (refusals are counted; a preload put is tried a
//! bounded number of times).

use super::wire::{self, Op, Status};
use bytes::Bytes;
use hdrhistogram::Histogram;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Attempts at one preload put before the preload fails.
const PRELOAD_ATTEMPTS_MAX: u32 = 2000;

/// One loopback connection to one node.
struct Conn {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
    out: Vec<u8>,
    payload: Vec<u8>,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Result<Conn, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        stream
            .set_nodelay(true)
            .map_err(|e| format!("{addr}: {e}"))?;
        let (read, write) = stream.into_split();
        Ok(Conn {
            read: BufReader::new(read),
            write,
            out: Vec::with_capacity(4096),
            payload: Vec::with_capacity(4096),
        })
    }

    /// One request and its response (the payload is left in `self.payload`).
    async fn call(
        &mut self,
        op: Op,
        group: u32,
        key: u64,
        value: &[u8],
    ) -> Result<(Status, u32), String> {
        self.out.clear();
        wire::encode_request(&mut self.out, op, group, key, value);
        self.write
            .write_all(&self.out)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let mut head = [0u8; wire::RESPONSE_HEAD];
        self.read
            .read_exact(&mut head)
            .await
            .map_err(|e| format!("receiving: {e}"))?;
        let (status, aux, len) = wire::decode_response_head(&head)?;
        self.payload.resize(len, 0);
        self.read
            .read_exact(&mut self.payload)
            .await
            .map_err(|e| format!("receiving: {e}"))?;
        Ok((status, aux))
    }
}

/// A closed-loop client: a connection to every node and its view of the leaders.
pub struct Client {
    conns: Vec<Conn>,
    /// Per group: the node (index) this client sends to.
    leaders: Vec<usize>,
    rng: u64,
}

impl Client {
    /// Connects to every node; `leaders[g]` is where group g's requests go first.
    pub async fn connect(
        addrs: &[SocketAddr],
        leaders: &[usize],
        seed: u64,
    ) -> Result<Client, String> {
        let mut conns = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            conns.push(Conn::connect(addr).await?);
        }
        Ok(Client {
            conns,
            leaders: leaders.to_vec(),
            rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        })
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Sends once to the node this client believes leads `group`; on `NotLeader` it moves
    /// the group to the hinted node (if any) for the next attempt.
    async fn once(&mut self, op: Op, group: u32, key: u64, value: &[u8]) -> Result<Status, String> {
        let node = self.leaders[group as usize];
        let (status, aux) = self.conns[node].call(op, group, key, value).await?;
        if status == Status::NotLeader {
            let hinted = aux as usize;
            if (1..=self.conns.len()).contains(&hinted) && hinted - 1 != node {
                self.leaders[group as usize] = hinted - 1;
            } else {
                // No useful hint: try the next node.
                self.leaders[group as usize] = (node + 1) % self.conns.len();
            }
        }
        Ok(status)
    }
}

/// What a phase runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Only this op (a read kind).
    Only(Op),
    /// Lease reads and puts, `write_percent` of the requests puts.
    Mix {
        /// Percent of the requests that are puts.
        write_percent: u64,
    },
}

/// One kind's figures in one phase.
#[derive(Clone, Debug)]
pub struct Tally {
    /// Latency of the answered requests completed in the window, nanoseconds.
    pub histogram: Histogram<u64>,
    /// Requests answered `Ok` in the window.
    pub ops: u64,
    /// `NotLeader` answers in the window (sent again to the hinted node, not in the latency).
    pub not_leader: u64,
    /// `Overloaded` answers in the window (sent again after 200 µs).
    pub overloaded: u64,
    /// Failed requests in the window.
    pub failed: u64,
    /// Answers whose value was not the one the key holds (0 expected; reads only).
    pub wrong_values: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            histogram: Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds"),
            ops: 0,
            not_leader: 0,
            overloaded: 0,
            failed: 0,
            wrong_values: 0,
        }
    }

    fn add(&mut self, other: &Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.ops += other.ops;
        self.not_leader += other.not_leader;
        self.overloaded += other.overloaded;
        self.failed += other.failed;
        self.wrong_values += other.wrong_values;
    }
}

/// A phase's outcome.
#[derive(Clone, Debug)]
pub struct PhaseRun {
    /// Reads (every read kind, and the mix's lease reads).
    pub reads: Tally,
    /// Puts (the mix only).
    pub writes: Tally,
    /// Length of the measurement window, seconds.
    pub seconds: f64,
}

/// The parameters every client of a phase shares.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Groups (requests spread uniformly over them).
    pub groups: u32,
    /// Keys per group (uniform).
    pub keys: u64,
    /// Bytes of a put's value.
    pub value_bytes: usize,
}

/// Runs `load` with every client for `warmup` then `seconds` (measured); returns the clients
/// (for the next phase) and the figures.
pub async fn run_phase(
    clients: Vec<Client>,
    load: Load,
    shape: Shape,
    warmup: f64,
    seconds: f64,
) -> Result<(Vec<Client>, PhaseRun), String> {
    let start = Instant::now() + Duration::from_secs_f64(warmup);
    let end = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(clients.len());
    for client in clients {
        tasks.push(tokio::task::spawn_local(client_loop(
            client, load, shape, start, end,
        )));
    }
    let mut clients = Vec::with_capacity(tasks.len());
    let mut reads = Tally::new();
    let mut writes = Tally::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok((client, r, w))) => {
                clients.push(client);
                reads.add(&r);
                writes.add(&w);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("a client task failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok((
        clients,
        PhaseRun {
            reads,
            writes,
            seconds,
        },
    ))
}

async fn client_loop(
    mut client: Client,
    load: Load,
    shape: Shape,
    start: Instant,
    end: Instant,
) -> Result<(Client, Tally, Tally), String> {
    let mut reads = Tally::new();
    let mut writes = Tally::new();
    while Instant::now() < end {
        let r = client.next();
        let group = (r % u64::from(shape.groups)) as u32;
        let key = (r >> 32) % shape.keys;
        let op = match load {
            Load::Only(op) => op,
            Load::Mix { write_percent } => {
                if client.next() % 100 < write_percent {
                    Op::Put
                } else {
                    Op::Lease
                }
            }
        };
        let value = if op == Op::Put {
            wire::preload_value(group, key, shape.value_bytes)
        } else {
            Bytes::new()
        };
        let sent = Instant::now();
        let status = client.once(op, group, key, &value).await?;
        let done = Instant::now();
        let tally = if op == Op::Put {
            &mut writes
        } else {
            &mut reads
        };
        let measuring = done >= start && done <= end;
        match status {
            Status::Ok => {
                if measuring {
                    let ns = done.duration_since(sent).as_nanos().max(1) as u64;
                    tally.histogram.saturating_record(ns);
                    tally.ops += 1;
                    if op != Op::Put {
                        let node = client.leaders[group as usize];
                        let got = &client.conns[node].payload;
                        if got[..] != wire::preload_value(group, key, shape.value_bytes)[..] {
                            tally.wrong_values += 1;
                        }
                    }
                }
            }
            Status::NotLeader => {
                if measuring {
                    tally.not_leader += 1;
                }
            }
            Status::Overloaded => {
                if measuring {
                    tally.overloaded += 1;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Status::Failed => {
                if measuring {
                    tally.failed += 1;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    Ok((client, reads, writes))
}

/// Puts every key of every group (its `preload_value`), the work shared among the clients;
/// fails when a put is refused `PRELOAD_ATTEMPTS_MAX` times or at `deadline`.
pub async fn preload(
    clients: Vec<Client>,
    shape: Shape,
    deadline: Instant,
) -> Result<Vec<Client>, String> {
    let n = clients.len() as u64;
    let total = u64::from(shape.groups) * shape.keys;
    let mut tasks = Vec::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        tasks.push(tokio::task::spawn_local(async move {
            let mut i = index as u64;
            while i < total {
                let group = (i / shape.keys) as u32;
                let key = i % shape.keys;
                let value = wire::preload_value(group, key, shape.value_bytes);
                let mut attempts = 0;
                loop {
                    if Instant::now() > deadline {
                        return Err("the preload did not finish in time".to_string());
                    }
                    match client.once(Op::Put, group, key, &value).await? {
                        Status::Ok => break,
                        Status::Failed => {
                            let text = String::from_utf8_lossy(
                                &client.conns[client.leaders[group as usize]].payload,
                            )
                            .into_owned();
                            return Err(format!("a preload put failed: {text}"));
                        }
                        Status::NotLeader | Status::Overloaded => {
                            attempts += 1;
                            if attempts >= PRELOAD_ATTEMPTS_MAX {
                                return Err(format!(
                                    "a preload put of group {group} was refused {attempts} times"
                                ));
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                i += n;
            }
            Ok(client)
        }));
    }
    let mut out = Vec::new();
    let mut first_error = None;
    for task in tasks {
        match task.await {
            Ok(Ok(client)) => out.push(client),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("a preload task failed: {e}"));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
