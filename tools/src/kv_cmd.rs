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

use crate::kv::client::{parse_addrs, Attempt, KvClient};
use crate::kv::proto::{Request, Response};
use crate::kv::state::Session;
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `paxring kv`.
#[derive(clap::Args, Debug)]
pub struct KvArgs {
    /// Client addresses of one or more nodes: `ip:port[,ip:port...]`.
    #[arg(long, global = true)]
    addr: Option<String>,
    /// How long to wait for one answer before the outcome is unknown, in milliseconds.
    #[arg(long, global = true, default_value_t = 12_000)]
    reply_timeout_ms: u64,
    /// How long to keep retrying answers that say "not proposed" (not_leader, overloaded).
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

#[derive(clap::Subcommand, Debug)]
enum KvCommand {
    /// Sets KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Reads KEY (through the log: linearizable).
    Get {
        /// The key.
        key: String,
    },
    /// Removes KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// `cas KEY EXPECTED NEW`, or `cas --absent KEY NEW` (swap only if KEY is absent).
    Cas {
        /// Expect the key to be absent (then give only KEY NEW).
        #[arg(long)]
        absent: bool,
        /// The key.
        key: String,
        /// EXPECTED NEW, or NEW with --absent.
        #[arg(num_args = 1..=2, required = true)]
        values: Vec<String>,
    },
    /// Asks every given node for its id, groups and leader hints.
    Id,
    /// Asks every given node for its counters.
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
    /// Where to write the history (one JSON line per operation).
    #[arg(long)]
    history: PathBuf,
    /// Seed of the workload's random choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Longest time one operation keeps retrying not_leader/overloaded, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    op_retry_ms: u64,
}

/// Runs `paxring kv`.
pub fn run(args: KvArgs) -> ExitCode {
    match run_kv(args) {
        Ok(code) => code,
        Err(reason) => {
            eprintln!("paxring kv: {reason}");
            ExitCode::from(2)
        }
    }
}

fn run_kv(args: KvArgs) -> Result<ExitCode, String> {
    let addrs = parse_addrs(args.addr.as_deref().unwrap_or(""))?;
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
    let request = match args.command {
        KvCommand::Load(load) => return run_load(&addrs, reply_timeout, &load),
        KvCommand::Id => return Ok(ask_all(&addrs, reply_timeout, &Request::Id)),
        KvCommand::Stats => return Ok(ask_all(&addrs, reply_timeout, &Request::Stats)),
        KvCommand::Digest => return Ok(ask_all(&addrs, reply_timeout, &Request::Digest)),
        KvCommand::Put { key, value } => Request::Put { key, value },
        KvCommand::Get { key } => Request::Get { key },
        KvCommand::Delete { key } => Request::Delete { key },
        KvCommand::Cas {
            absent,
            key,
            mut values,
        } => {
            let (expected, new) = match (absent, values.len()) {
                (true, 1) => (None, values.remove(0)),
                (false, 2) => {
                    let new = values.remove(1);
                    (Some(values.remove(0)), new)
                }
                _ => return Err("cas takes KEY EXPECTED NEW, or --absent KEY NEW".into()),
            };
            Request::Cas { key, expected, new }
        }
    };
    let mut client = KvClient::connect(&addrs, reply_timeout, 0)?;
    let session = session.unwrap_or_else(|| client.next_session());
    match client.execute_as(&request, session, retry_for) {
        Attempt::Done(response) => {
            let mut json = serde_json::to_value(&response).expect("serializes");
            // An absent value is part of the answer ("the key was absent"): print it.
            if json.get("value").is_none() {
                json["value"] = serde_json::Value::Null;
            }
            println!("{json}");
            Ok(ExitCode::SUCCESS)
        }
        Attempt::Fail(reason) => {
            eprintln!("paxring kv: failed (did not take effect): {reason}");
            Ok(ExitCode::from(1))
        }
        Attempt::Unknown(reason) => {
            eprintln!("paxring kv: outcome unknown (may or may not take effect): {reason}");
            eprintln!(
                "paxring kv: to resend it so that it applies at most once, repeat the same command with --client-id {} --seq {}",
                session.client, session.seq
            );
            Ok(ExitCode::from(3))
        }
    }
}

fn ask_all(addrs: &[SocketAddr], reply_timeout: Duration, request: &Request) -> ExitCode {
    let mut failed = false;
    for addr in addrs {
        let answer =
            KvClient::connect(&[*addr], reply_timeout, 0).and_then(|mut c| c.ask(0, request));
        match answer {
            Ok(response) => {
                let line = serde_json::json!({ "addr": addr, "response": response });
                println!("{line}");
            }
            Err(e) => {
                failed = true;
                eprintln!("paxring kv: {addr}: {e}");
            }
        }
    }
    if failed {
        ExitCode::from(1)
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
    value: Option<&'a str>,
    expected: Option<&'a str>,
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
        let thread = std::thread::Builder::new()
            .name(format!("load-{client}"))
            .spawn(move || {
                let worker = Worker {
                    client,
                    rng: fastrand::Rng::with_seed(
                        seed ^ (u64::from(client) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                    ),
                    keys,
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
    println!(
        "load: {} clients, {elapsed:.1} s, seed {seed}: {} ops, ok {ok} ({ops_per_s:.0} ops/s), fail {fail}, unknown {unknown}",
        args.clients,
        ok + fail + unknown
    );
    println!("latency of ok ops: p50 {p50_us:.0} us, p99 {p99_us:.0} us");
    println!(
        "{}",
        serde_json::json!({
            "clients": args.clients, "seconds": elapsed, "seed": seed,
            "ok": ok, "fail": fail, "unknown": unknown,
            "ok_per_s": ops_per_s, "p50_us": p50_us, "p99_us": p99_us,
        })
    );
    Ok(ExitCode::SUCCESS)
}

struct Worker {
    client: u32,
    rng: fastrand::Rng,
    keys: u32,
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
            match KvClient::connect(addrs, self.reply_timeout, self.client as usize) {
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
        let mut seen: std::collections::HashMap<String, Option<String>> = Default::default();
        let mut sequence = 0u64;
        while Instant::now() < self.deadline {
            let key = format!("k{}", self.rng.u32(0..self.keys));
            sequence += 1;
            // Unique per operation: client and sequence number.
            let fresh = format!("c{}-{sequence}", self.client);
            let choice = self.rng.u32(0..10);
            let request = if choice < 4 {
                Request::Put {
                    key: key.clone(),
                    value: fresh,
                }
            } else if choice < 8 {
                Request::Get { key: key.clone() }
            } else {
                Request::Cas {
                    key: key.clone(),
                    expected: seen.get(&key).cloned().flatten(),
                    new: fresh,
                }
            };
            let call_ns = self.start.elapsed().as_nanos() as u64;
            let attempt = client.execute(&request, self.retry_for);
            let return_ns = self.start.elapsed().as_nanos() as u64;
            self.record(&request, &attempt, call_ns, return_ns, &mut seen);
        }
    }

    fn record(
        &self,
        request: &Request,
        attempt: &Attempt,
        call_ns: u64,
        return_ns: u64,
        seen: &mut std::collections::HashMap<String, Option<String>>,
    ) {
        let response: Option<&Response> = match attempt {
            Attempt::Done(response) => Some(response),
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
                ("put", key, Some(value.as_str()), None, ok)
            }
            Request::Get { key } => {
                let read = response.and_then(|r| r.value.as_deref());
                if response.is_some() {
                    seen.insert(key.clone(), read.map(String::from));
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
                ("cas", key, Some(new.as_str()), expected.as_deref(), swapped)
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
            let _ = self
                .latencies
                .lock()
                .expect("lock")
                .record((return_ns - call_ns).max(1));
        }
    }
}
