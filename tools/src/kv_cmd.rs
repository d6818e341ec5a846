//! `paxring kv`: one operation against a cluster (put, get, delete, cas, id, stats, digest) or a
//! bounded random workload that records a history (one JSON line per operation).
//!
//! Every key operation carries a session (a random client id per process, or per simulated
//! client of `load`, and a seq per operation), and a resend after an unknown outcome reuses it,
//! so an operation applies at most once.
//!
//! Owns: the command line of the KV client and the history format. Never: records an operation
//! as `fail` unless every try was refused before it was proposed (`not_leader`, `overloaded`,
//! `stopped`, no connection); anything else without an answer is `unknown`.

use crate::cluster_cmd::read_cluster;
use crate::kv::client::{parse_addrs, Attempt, KvClient};
use crate::kv::proto::{GetMode, Request, Response};
use crate::kv::state::Session;
use crate::kv::value::Value;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `paxring kv`.
#[derive(clap::Args, Debug)]
#[command(after_help = KV_HELP, after_long_help = KV_HELP)]
pub struct KvArgs {
    /// Client addresses of one or more nodes: `ip:port[,ip:port...]`. One running node is
    /// enough when the nodes' configs name each other's client addresses (as `paxring cluster
    /// up` writes them): the client learns the others and follows not_leader to the leader.
    #[arg(long, global = true, conflicts_with = "cluster")]
    addr: Option<String>,
    /// A directory made by `paxring cluster up`: every node's client address is read from its
    /// cluster.json.
    #[arg(long, global = true)]
    cluster: Option<PathBuf>,
    /// How long to wait for one answer before the outcome is unknown, in milliseconds.
    #[arg(long, global = true, default_value_t = 12_000)]
    reply_timeout_ms: u64,
    /// How long to keep retrying, in milliseconds: nodes that cannot be reached, answers that
    /// say "not proposed" (not_leader, overloaded, stopped), and resends after an unknown
    /// outcome (under the same session).
    #[arg(long, global = true, default_value_t = 10_000)]
    retry_ms: u64,
    /// Send a put/get/delete/cas under this session id (with --seq) instead of a fresh random
    /// one: to resend, with the same arguments, an operation whose outcome was unknown.
    #[arg(long, global = true, requires = "seq")]
    client_id: Option<u64>,
    /// The sequence number of the operation in the session given by --client-id.
    #[arg(long, global = true, requires = "client_id")]
    seq: Option<u64>,
    #[command(subcommand)]
    command: KvCommand,
}

const KV_HELP: &str = "\
Values are bytes, binary-safe. A command's key and values together may hold at most the
node's command limit: its batch_bytes_max minus 64 bytes, i.e. 262080 bytes with the default
batch_bytes_max of 262144 (256 KiB); larger ones are refused, naming the limit. `put KEY -`
reads the value from stdin, `put KEY --value-file F` from a file.

Exit status:
  0  done (for cas: swapped)
  1  definitely not done (refused before it was proposed, e.g. too large, no leader in time)
  2  usage error, or no node could be reached
  3  outcome unknown: it may or may not have taken effect (the message says how to resend it
     under the same session, so that it applies at most once)
  4  cas did not swap: the key held another value (printed) or was absent

The protocol and its limits: docs/CLIENT.md.";

const VALUE_HELP: &str = "\
Values are bytes (any, binary-safe). The key and values together may hold at most the node's
command limit: its batch_bytes_max minus 64 bytes, 262080 bytes with the default
batch_bytes_max of 262144 bytes (256 KiB). Exit statuses: `paxring kv --help`.";

#[derive(clap::Subcommand, Debug)]
enum KvCommand {
    /// Sets KEY to VALUE (`-`: read the value from stdin; or --value-file).
    #[command(after_help = VALUE_HELP)]
    Put {
        /// The key.
        key: String,
        /// The value; `-` reads it from stdin.
        #[arg(required_unless_present = "value_file", conflicts_with = "value_file")]
        value: Option<String>,
        /// Read the value from this file (any bytes).
        #[arg(long)]
        value_file: Option<PathBuf>,
    },
    /// Reads KEY (linearizable in every --mode but `stale`).
    Get {
        /// The key.
        key: String,
        /// How the read is served: `lease` (the master answers from its applied state, no
        /// message while its lease holds, else as `index`), `index` (one round trip to a
        /// quorum, no write) or `log` (proposed like a write: a durable write on every
        /// replica); these three answer the same value. `stale`: the node asked answers from
        /// its own applied state, follower nodes included, if it heard its leader within
        /// `--max-stale-ms` (not linearizable).
        #[arg(long, value_enum, default_value_t = GetMode::Lease)]
        mode: GetMode,
        /// With `--mode stale`: the staleness bound in milliseconds.
        #[arg(long, default_value_t = 1000)]
        max_stale_ms: u64,
        /// Print only the value's bytes, as stored (nothing for an absent key), instead of the
        /// JSON answer: for binary values, e.g. `get --value-only KEY > FILE`.
        #[arg(long)]
        value_only: bool,
    },
    /// Removes KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// `cas KEY EXPECTED NEW`, or `cas --absent KEY NEW`: swap only if KEY holds EXPECTED
    /// (or is absent). Exit status 4 when it does not swap, with the value found.
    #[command(after_help = VALUE_HELP)]
    Cas {
        /// Expect the key to be absent (then give only KEY NEW).
        #[arg(long, conflicts_with = "expected_file")]
        absent: bool,
        /// Read the expected value from this file (then give only KEY NEW).
        #[arg(long)]
        expected_file: Option<PathBuf>,
        /// Read the new value from this file (then leave NEW out).
        #[arg(long)]
        new_file: Option<PathBuf>,
        /// The key.
        key: String,
        /// EXPECTED NEW, or NEW with --absent or --expected-file, or EXPECTED with
        /// --new-file.
        #[arg(num_args = 0..=2)]
        values: Vec<String>,
    },
    /// Asks every given node for its id, groups, leader hints, the others' client addresses
    /// and its limits.
    Id,
    /// Asks every given node for its counters (ratios are null until something was measured).
    Stats,
    /// Asks every given node for its per-group applied_next and digest.
    Digest,
    /// Runs a bounded random workload and writes its history.
    Load(LoadArgs),
}

#[derive(clap::Args, Debug)]
struct LoadArgs {
    /// Concurrent clients (threads, closed loop): 1 to 256.
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// Duration of the workload in seconds (at most 3600).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Number of distinct keys (`k0`..): 1 to 1000000.
    #[arg(long, default_value_t = 16)]
    keys: u32,
    /// Where to write the history (one JSON line per operation; format in docs/CLIENT.md).
    #[arg(long)]
    history: PathBuf,
    /// Seed of the workload's random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Longest time one operation keeps retrying (unreachable nodes, not_leader, overloaded,
    /// resends after an unknown outcome), in milliseconds.
    #[arg(long, default_value_t = 2000)]
    op_retry_ms: u64,
    /// How the workload's gets are served: `lease`, `index` or `log` (as `get --mode`).
    #[arg(long, value_enum, default_value_t = GetMode::Lease)]
    get_mode: GetMode,
}

/// Writes a line to stdout; a closed pipe (e.g. `| head`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if error.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("paxring kv: cannot write to stdout: {error}");
            std::process::exit(EXIT_USAGE.into());
        }
    }};
}

/// Exit status: definitely not done.
const EXIT_FAIL: u8 = 1;
/// Exit status: usage error, or no node could be reached.
const EXIT_USAGE: u8 = 2;
/// Exit status: outcome unknown.
const EXIT_UNKNOWN: u8 = 3;
/// Exit status: a cas that did not swap.
const EXIT_NOT_SWAPPED: u8 = 4;

/// Runs `paxring kv`.
pub fn run(args: KvArgs) -> ExitCode {
    match run_kv(args) {
        Ok(code) => code,
        Err(reason) => {
            eprintln!("paxring kv: {reason}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Where a value comes from.
enum Source {
    /// The command line.
    Arg(String),
    /// Standard input (`-`).
    Stdin,
    /// A file, opened already (so that a missing file is reported before connecting).
    File(PathBuf, std::fs::File),
}

impl Source {
    fn of(
        arg: Option<String>,
        file: Option<PathBuf>,
        dash_is_stdin: bool,
    ) -> Result<Source, String> {
        match (arg, file) {
            (_, Some(path)) => {
                let file = std::fs::File::open(&path).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        format!("{} does not exist", path.display())
                    } else {
                        format!("cannot open {}: {e}", path.display())
                    }
                })?;
                Ok(Source::File(path, file))
            }
            (Some(arg), None) if dash_is_stdin && arg == "-" => Ok(Source::Stdin),
            (Some(arg), None) => Ok(Source::Arg(arg)),
            (None, None) => Err("a value is missing".into()),
        }
    }

    /// The value's bytes; `Err((status, reason))` when it cannot be read or is over `max`
    /// bytes (read no further than that).
    fn read(self, max: usize, limit_text: &str) -> Result<Value, (u8, String)> {
        use std::io::Read as _;
        let (name, reader): (String, Box<dyn std::io::Read>) = match self {
            Source::Arg(text) => return Ok(Value::from(text)),
            Source::Stdin => ("stdin".into(), Box::new(std::io::stdin().lock())),
            Source::File(path, file) => (path.display().to_string(), Box::new(file)),
        };
        let mut bytes = Vec::new();
        reader
            .take(max as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| (EXIT_USAGE, format!("cannot read {name}: {e}")))?;
        if bytes.len() > max {
            return Err((
                EXIT_FAIL,
                format!("too large: the value from {name} is more than {max} bytes; {limit_text}; nothing was sent"),
            ));
        }
        Ok(Value::new(bytes))
    }
}

/// The client addresses from --addr or --cluster.
fn addresses(addr: Option<&str>, cluster: Option<&Path>) -> Result<Vec<SocketAddr>, String> {
    match (addr, cluster) {
        (_, Some(dir)) => {
            let file = read_cluster(dir)?;
            if file.nodes.is_empty() {
                return Err(format!(
                    "{} lists no node",
                    dir.join("cluster.json").display()
                ));
            }
            Ok(file.nodes.iter().map(|n| n.client_addr).collect())
        }
        (Some(addr), None) => parse_addrs(addr),
        (None, None) => {
            Err("no address given (use --addr ip:port[,ip:port...] or --cluster DIR)".into())
        }
    }
}

/// A key operation before its values were read.
enum Pending {
    Put(String, Source),
    Get(String, GetMode, u64),
    Delete(String),
    Cas(String, Option<Source>, Source),
}

fn run_kv(args: KvArgs) -> Result<ExitCode, String> {
    let addrs = addresses(args.addr.as_deref(), args.cluster.as_deref())?;
    let reply_timeout = Duration::from_millis(args.reply_timeout_ms.max(1));
    let retry_for = Duration::from_millis(args.retry_ms);
    let session = Session::from_fields(args.client_id, args.seq)
        .map_err(|e| format!("--client-id/--seq: {e}"))?;
    if session.is_some()
        && matches!(
            args.command,
            KvCommand::Load(_) | KvCommand::Id | KvCommand::Stats | KvCommand::Digest
        )
    {
        return Err("--client-id and --seq go only with put, get, delete and cas".into());
    }
    let mut value_only = false;
    let pending = match args.command {
        KvCommand::Load(load) => return run_load(&addrs, reply_timeout, &load),
        KvCommand::Id => return Ok(ask_all(&addrs, reply_timeout, &Request::Id)),
        KvCommand::Stats => return Ok(ask_all(&addrs, reply_timeout, &Request::Stats)),
        KvCommand::Digest => return Ok(ask_all(&addrs, reply_timeout, &Request::Digest)),
        KvCommand::Put {
            key,
            value,
            value_file,
        } => Pending::Put(key.clone(), Source::of(value, value_file, true)?),
        KvCommand::Get {
            key,
            mode,
            max_stale_ms,
            value_only: only,
        } => {
            value_only = only;
            Pending::Get(key, mode, max_stale_ms)
        }
        KvCommand::Delete { key } => Pending::Delete(key),
        KvCommand::Cas {
            absent,
            expected_file,
            new_file,
            key,
            values,
        } => {
            let from_args =
                usize::from(!absent && expected_file.is_none()) + usize::from(new_file.is_none());
            if values.len() != from_args {
                return Err("cas takes KEY EXPECTED NEW, or --absent KEY NEW (--expected-file replaces EXPECTED, --new-file replaces NEW)".into());
            }
            let mut values = values.into_iter();
            let expected = if absent {
                None
            } else if expected_file.is_some() {
                Some(Source::of(None, expected_file, false)?)
            } else {
                Some(Source::Arg(values.next().expect("counted above")))
            };
            let new = Source::of(values.next(), new_file, false)?;
            Pending::Cas(key, expected, new)
        }
    };
    let mut client = KvClient::connect(&addrs, reply_timeout, 0, retry_for)?;
    let (max, limit_text) = match client.command_bytes_max() {
        Some(max) => (
            max,
            format!("this cluster's command limit is {max} bytes for key and values together (its batch_bytes_max minus 64)"),
        ),
        None => (1 << 30, "this client reads at most 1 GiB".to_string()),
    };
    let read = |source: Source| source.read(max, &limit_text);
    let request = match pending {
        Pending::Put(key, value) => match read(value) {
            Ok(value) => Request::Put { key, value },
            Err((status, reason)) => return Ok(report_not_sent(status, &reason)),
        },
        Pending::Get(key, mode, max_stale_ms) => Request::Get {
            key,
            mode: Some(mode),
            max_stale_ms: (mode == GetMode::Stale).then_some(max_stale_ms),
        },
        Pending::Delete(key) => Request::Delete { key },
        Pending::Cas(key, expected, new) => {
            let expected = match expected.map(read).transpose() {
                Ok(expected) => expected,
                Err((status, reason)) => return Ok(report_not_sent(status, &reason)),
            };
            match read(new) {
                Ok(new) => Request::Cas { key, expected, new },
                Err((status, reason)) => return Ok(report_not_sent(status, &reason)),
            }
        }
    };
    let session = session.unwrap_or_else(|| client.next_session());
    match client.execute_as(&request, session, retry_for) {
        Attempt::Done(response) => {
            if value_only {
                if let Some(value) = &response.value {
                    use std::io::Write as _;
                    let mut out = std::io::stdout().lock();
                    out.write_all(value.as_bytes())
                        .and_then(|()| out.flush())
                        .map_err(|e| format!("cannot write to stdout: {e}"))?;
                } else if let Request::Get { key, .. } = &request {
                    eprintln!("paxring kv: {key:?} is absent");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut json = serde_json::to_value(&response).expect("serializes");
            // An absent value is part of the answer ("the key was absent"): print it.
            if json.get("value").is_none() {
                json["value"] = serde_json::Value::Null;
            }
            out!("{json}");
            if let (Request::Cas { key, .. }, Some(false)) = (&request, response.swapped) {
                let found = match &response.value {
                    Some(value) => format!("{key:?} holds {}", value.describe()),
                    None => format!("{key:?} is absent"),
                };
                eprintln!("paxring kv: cas did not swap: {found}");
                return Ok(ExitCode::from(EXIT_NOT_SWAPPED));
            }
            Ok(ExitCode::SUCCESS)
        }
        Attempt::Fail(reason) => Ok(report_not_sent(EXIT_FAIL, &reason)),
        Attempt::Unknown(reason) => {
            eprintln!("paxring kv: outcome unknown (may or may not take effect): {reason}");
            eprintln!(
                "paxring kv: to resend it so that it applies at most once, repeat the same command with --client-id {} --seq {}",
                session.client, session.seq
            );
            Ok(ExitCode::from(EXIT_UNKNOWN))
        }
    }
}

/// Reports an operation that definitely did not take effect.
fn report_not_sent(status: u8, reason: &str) -> ExitCode {
    if status == EXIT_FAIL {
        eprintln!("paxring kv: failed (did not take effect): {reason}");
    } else {
        eprintln!("paxring kv: {reason}");
    }
    ExitCode::from(status)
}

fn ask_all(addrs: &[SocketAddr], reply_timeout: Duration, request: &Request) -> ExitCode {
    let mut failed = false;
    for addr in addrs {
        let answer = KvClient::connect(&[*addr], reply_timeout, 0, Duration::ZERO)
            .and_then(|mut c| c.ask(0, request));
        match answer {
            Ok(response) => {
                let line = serde_json::json!({ "addr": addr, "response": response });
                out!("{line}");
            }
            Err(e) => {
                failed = true;
                eprintln!("paxring kv: {addr}: {e}");
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_FAIL)
    } else {
        ExitCode::SUCCESS
    }
}

/// One line of the history file (field order is the documented one).
#[derive(Debug, Serialize)]
struct HistoryRecord<'a> {
    client: u32,
    op: &'static str,
    key: &'a str,
    value: Option<&'a Value>,
    expected: Option<&'a Value>,
    ok: Option<bool>,
    call_ns: u64,
    return_ns: u64,
    outcome: &'static str,
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    fail: AtomicU64,
    unknown: AtomicU64,
    /// When each successful operation returned (ns since the start), for the longest time
    /// with none (client-visible unavailability).
    ok_returns: Mutex<Vec<u64>>,
}

/// The longest interval (ns) between consecutive successful returns, the last one to the end
/// of the run included, with where it ended: (gap, end of the gap). (0, 0) with no success.
fn longest_gap(returns: &mut [u64], end_ns: u64) -> (u64, u64) {
    if returns.is_empty() {
        return (0, 0);
    }
    returns.sort_unstable();
    let mut best = (0, 0);
    let mut previous = None;
    for &at in returns.iter().chain(std::iter::once(&end_ns)) {
        if let Some(before) = previous {
            let gap = at.saturating_sub(before);
            if gap > best.0 {
                best = (gap, at);
            }
        }
        previous = Some(at);
    }
    best
}

fn run_load(
    addrs: &[SocketAddr],
    reply_timeout: Duration,
    args: &LoadArgs,
) -> Result<ExitCode, String> {
    if args.clients == 0 || args.clients > 256 {
        return Err(format!("--clients {} (fix: use 1 to 256)", args.clients));
    }
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err(format!(
            "--seconds {} (fix: use more than 0, at most 3600)",
            args.seconds
        ));
    }
    if args.keys == 0 || args.keys > 1_000_000 {
        return Err(format!("--keys {} (fix: use 1 to 1000000)", args.keys));
    }
    let file = std::fs::File::create(&args.history)
        .map_err(|e| format!("cannot create {}: {e}", args.history.display()))?;
    let history = Arc::new(Mutex::new(std::io::BufWriter::new(file)));
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let start = Instant::now();
    let duration = Duration::from_secs_f64(args.seconds);
    let tally = Arc::new(Tally::default());
    let latencies = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
    ));
    let write_error: Arc<Mutex<Option<String>>> = Arc::default();
    let mut threads = Vec::new();
    for client in 0..args.clients {
        let addrs = addrs.to_vec();
        let history = history.clone();
        let tally = tally.clone();
        let latencies = latencies.clone();
        let write_error = write_error.clone();
        let keys = args.keys;
        let retry_for = Duration::from_millis(args.op_retry_ms);
        let get_mode = args.get_mode;
        let thread = std::thread::Builder::new()
            .name(format!("load-{client}"))
            .spawn(move || {
                let worker = Worker {
                    client,
                    rng: fastrand::Rng::with_seed(
                        seed ^ (u64::from(client) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    ),
                    keys,
                    get_mode,
                    start,
                    deadline: start + duration,
                    retry_for,
                    reply_timeout,
                    history,
                    tally,
                    latencies,
                    write_error,
                };
                worker.run(&addrs);
            })
            .map_err(|e| format!("cannot start a client thread: {e}"))?;
        threads.push(thread);
    }
    for thread in threads {
        if thread.join().is_err() {
            return Err("a client thread panicked".into());
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    history
        .lock()
        .expect("history lock")
        .flush()
        .map_err(|e| format!("cannot write {}: {e}", args.history.display()))?;
    if let Some(e) = write_error.lock().expect("lock").take() {
        return Err(format!("cannot write {}: {e}", args.history.display()));
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let fail = tally.fail.load(Ordering::Relaxed);
    let unknown = tally.unknown.load(Ordering::Relaxed);
    let latencies = latencies.lock().expect("lock");
    let p50_us = latencies.value_at_quantile(0.50) as f64 / 1000.0;
    let p99_us = latencies.value_at_quantile(0.99) as f64 / 1000.0;
    let ops_per_s = ok as f64 / elapsed;
    let (gap_ns, gap_end_ns) = longest_gap(
        &mut tally.ok_returns.lock().expect("lock"),
        (elapsed * 1e9) as u64,
    );
    let longest_gap_ms = gap_ns as f64 / 1e6;
    out!(
        "load: {} clients, {elapsed:.1} s, seed {seed}, get mode {}: {} ops, ok {ok} ({ops_per_s:.0} ops/s), fail {fail}, unknown {unknown}",
        args.clients,
        args.get_mode,
        ok + fail + unknown
    );
    out!("latency of ok ops: p50 {p50_us:.0} us, p99 {p99_us:.0} us");
    out!(
        "longest time with no successful operation: {longest_gap_ms:.0} ms (ending {:.2} s into the run)",
        gap_end_ns as f64 / 1e9
    );
    out!(
        "{}",
        serde_json::json!({
            "clients": args.clients, "seconds": elapsed, "seed": seed,
            "get_mode": args.get_mode.as_str(),
            "ok": ok, "fail": fail, "unknown": unknown,
            "ok_per_s": ops_per_s, "p50_us": p50_us, "p99_us": p99_us,
            "longest_gap_ms": longest_gap_ms,
        })
    );
    Ok(ExitCode::SUCCESS)
}

struct Worker {
    client: u32,
    rng: fastrand::Rng,
    keys: u32,
    get_mode: GetMode,
    start: Instant,
    deadline: Instant,
    retry_for: Duration,
    reply_timeout: Duration,
    history: Arc<Mutex<std::io::BufWriter<std::fs::File>>>,
    tally: Arc<Tally>,
    latencies: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    write_error: Arc<Mutex<Option<String>>>,
}

impl Worker {
    fn run(mut self, addrs: &[SocketAddr]) {
        let mut client = loop {
            let retry_for = self.deadline.saturating_duration_since(Instant::now());
            match KvClient::connect(addrs, self.reply_timeout, self.client as usize, retry_for) {
                Ok(client) => break client,
                Err(e) => {
                    if Instant::now() >= self.deadline {
                        eprintln!("load client {}: no node answered: {e}", self.client);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        // The last value this client saw per key: the `expected` of its next cas.
        let mut seen: std::collections::HashMap<String, Option<Value>> = Default::default();
        let mut sequence = 0u64;
        let mut failures = 0u64;
        while Instant::now() < self.deadline {
            let key = format!("k{}", self.rng.u32(0..self.keys));
            sequence += 1;
            // Unique per operation: client and sequence number.
            let fresh = format!("c{}-{sequence}", self.client);
            let choice = self.rng.u32(0..10);
            let request = if choice < 4 {
                Request::Put {
                    key: key.clone(),
                    value: Value::from(fresh),
                }
            } else if choice < 8 {
                Request::Get {
                    key: key.clone(),
                    mode: Some(self.get_mode),
                    max_stale_ms: None,
                }
            } else {
                Request::Cas {
                    key: key.clone(),
                    expected: seen.get(&key).cloned().flatten(),
                    new: Value::from(fresh),
                }
            };
            let call_ns = self.start.elapsed().as_nanos() as u64;
            let attempt = client.execute(&request, self.retry_for);
            let return_ns = self.start.elapsed().as_nanos() as u64;
            if let Attempt::Fail(reason) = &attempt {
                failures += 1;
                if failures <= 3 {
                    eprintln!(
                        "load client {}: failed (did not take effect): {reason}",
                        self.client
                    );
                }
            }
            self.record(&request, &attempt, call_ns, return_ns, &mut seen);
        }
    }

    fn record(
        &self,
        request: &Request,
        attempt: &Attempt,
        call_ns: u64,
        return_ns: u64,
        seen: &mut std::collections::HashMap<String, Option<Value>>,
    ) {
        let response: Option<&Response> = match attempt {
            Attempt::Done(response) => Some(response.as_ref()),
            _ => None,
        };
        let outcome = match attempt {
            Attempt::Done(_) => "ok",
            Attempt::Fail(_) => "fail",
            Attempt::Unknown(_) => "unknown",
        };
        let (op, key, value, expected, ok) = match request {
            Request::Put { key, value } => {
                let ok = response.map(|_| true);
                if ok.is_some() {
                    seen.insert(key.clone(), Some(value.clone()));
                }
                ("put", key, Some(value), None, ok)
            }
            Request::Get { key, .. } => {
                let read = response.and_then(|r| r.value.as_ref());
                if response.is_some() {
                    seen.insert(key.clone(), read.cloned());
                }
                ("get", key, read, None, response.map(|_| true))
            }
            Request::Cas { key, expected, new } => {
                let swapped = response.map(|r| r.swapped.unwrap_or(false));
                match swapped {
                    Some(true) => {
                        seen.insert(key.clone(), Some(new.clone()));
                    }
                    Some(false) => {
                        seen.insert(key.clone(), response.and_then(|r| r.value.clone()));
                    }
                    None => {}
                }
                ("cas", key, Some(new), expected.as_ref(), swapped)
            }
            _ => unreachable!("the workload only issues put, get and cas"),
        };
        let ok = match outcome {
            "fail" => Some(false),
            _ => ok,
        };
        let record = HistoryRecord {
            client: self.client,
            op,
            key,
            value,
            expected,
            ok,
            call_ns,
            return_ns,
            outcome,
        };
        let mut line = serde_json::to_vec(&record).expect("a record always serializes");
        line.push(b'\n');
        if let Err(e) = self.history.lock().expect("history lock").write_all(&line) {
            self.write_error
                .lock()
                .expect("lock")
                .get_or_insert(e.to_string());
        }
        let counter = match outcome {
            "ok" => &self.tally.ok,
            "fail" => &self.tally.fail,
            _ => &self.tally.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if outcome == "ok" {
            self.tally.ok_returns.lock().expect("lock").push(return_ns);
            let _ = self
                .latencies
                .lock()
                .expect("lock")
                .record((return_ns - call_ns).max(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::longest_gap;

    #[test]
    fn the_longest_gap_is_between_successes_or_up_to_the_end() {
        assert_eq!(longest_gap(&mut [30, 10, 20], 100), (70, 100));
        assert_eq!(longest_gap(&mut [10, 500, 20, 520], 530), (480, 500));
        assert_eq!(longest_gap(&mut [], 100), (0, 0));
    }
}
