//! `paxring-bench net`: the network thread against raw loopback TCP, measured in the same run.
//!
//! Owns four phases on 127.0.0.1, each a share of `--seconds`:
//! 1. RTT through paxring-net: a "core" thread on node A sends a small frame to node B with
//!    `send_batch`, B's core thread (waiting on its inbox eventfd) replies, A's core waits on its
//!    inbox; one frame in flight; latency into an HDR histogram.
//! 2. Baseline RTT: the same bytes ping-ponged over one plain TCP connection (TCP_NODELAY)
//!    between two threads with blocking reads and writes.
//! 3. Fan-out throughput through paxring-net: a core thread encodes each frame once and sends it
//!    to all P peers (`Dest::AllPeers`, one shared `Bytes`), in batches, with a bounded window of
//!    frames in flight; each peer node's core thread drains its inbox.
//! 4. Baseline throughput: one thread writes the same encoded frames, in large writes, to P plain
//!    TCP connections (TCP_NODELAY); P threads read them.
//!
//! Ratios: `rtt_ratio` = paxring p50 / baseline p50; `throughput_ratio` = paxring MB/s / baseline
//! MB/s (payload bytes delivered, summed over peers). It must never report a figure it did not
//! measure in this run.

use hdrhistogram::Histogram;
use paxring_net::{encode_frame, Dest, Inbox, NetConfig, NetHandle, NetThread, FRAME_HEADER_BYTES};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `paxring-bench net`.
#[derive(clap::Args, Debug)]
pub struct NetBenchArgs {
    /// Total run time in seconds, shared by the four phases.
    #[arg(long, default_value_t = 8.0)]
    seconds: f64,
    /// Body bytes of each frame in the throughput phases.
    #[arg(long, default_value_t = 4096)]
    frame_bytes: usize,
    /// Peers to fan out to in the throughput phases.
    #[arg(long, default_value_t = 2)]
    peers: usize,
    /// Body bytes of the RTT frames.
    #[arg(long, default_value_t = 64)]
    rtt_frame_bytes: usize,
    /// I/O backend of the network threads: auto, io_uring or epoll.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Write the results as JSON to this path.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize, Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    samples: u64,
}

#[derive(Serialize, Debug)]
struct Report {
    backend: &'static str,
    seconds: f64,
    frame_bytes: usize,
    rtt_frame_bytes: usize,
    peers: usize,
    rtt_us: Percentiles,
    baseline_rtt_us: Percentiles,
    rtt_ratio: f64,
    rtt_p99_ratio: f64,
    handoff_floor_rtt_us: Percentiles,
    rtt_vs_handoff_floor_ratio: f64,
    frames_per_s: f64,
    mb_per_s: f64,
    baseline_mb_per_s: f64,
    throughput_ratio: f64,
    frames_per_write: f64,
    outbound_dropped_frames: u64,
    send_batches_refused: u64,
}

const CLUSTER_ID: u64 = 0x00be_7c4a;

/// Runs `paxring-bench net`.
pub fn run(args: NetBenchArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("paxring-bench net: {err}");
            ExitCode::FAILURE
        }
    }
}

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn run_inner(args: &NetBenchArgs) -> BenchResult<()> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".into());
    }
    if args.peers == 0 || args.peers > 16 {
        return Err("--peers must be in 1..=16".into());
    }
    if args.frame_bytes < 8 || args.frame_bytes > (4 << 20) {
        return Err("--frame-bytes must be in 8..=4194304".into());
    }
    if args.rtt_frame_bytes < 8 || args.rtt_frame_bytes > (1 << 20) {
        return Err("--rtt-frame-bytes must be in 8..=1048576".into());
    }
    let backend = match args.backend.as_str() {
        "auto" => paxring_net::Backend::Auto,
        "io_uring" => paxring_net::Backend::IoUring,
        "epoll" => paxring_net::Backend::Epoll,
        other => return Err(format!("--backend {other}: use auto, io_uring or epoll").into()),
    };
    let phase = Duration::from_secs_f64(args.seconds / 4.0);

    let (rtt, backend_name) = rtt_paxring(args.rtt_frame_bytes, phase, backend)?;
    let baseline_rtt = rtt_baseline(args.rtt_frame_bytes, phase)?;
    let handoff_rtt = rtt_handoff_floor(args.rtt_frame_bytes, phase)?;
    let fan = fanout_paxring(args.frame_bytes, args.peers, phase, backend)?;
    let baseline_mb_per_s = fanout_baseline(args.frame_bytes, args.peers, phase)?;

    let report = Report {
        backend: backend_name,
        seconds: args.seconds,
        frame_bytes: args.frame_bytes,
        rtt_frame_bytes: args.rtt_frame_bytes,
        peers: args.peers,
        rtt_us: rtt,
        baseline_rtt_us: baseline_rtt,
        rtt_ratio: rtt.p50 / baseline_rtt.p50,
        rtt_p99_ratio: rtt.p99 / baseline_rtt.p99,
        handoff_floor_rtt_us: handoff_rtt,
        rtt_vs_handoff_floor_ratio: rtt.p50 / handoff_rtt.p50,
        frames_per_s: fan.frames_per_s,
        mb_per_s: fan.mb_per_s,
        baseline_mb_per_s,
        throughput_ratio: fan.mb_per_s / baseline_mb_per_s,
        frames_per_write: fan.frames_per_write,
        outbound_dropped_frames: fan.dropped,
        send_batches_refused: fan.refused,
    };
    println!(
        "net [{}]: rtt p50 {:.1} us p99 {:.1} us p999 {:.1} us | baseline p50 {:.1} us p99 {:.1} us | rtt_ratio {:.2} (target <= 1.5)",
        report.backend,
        rtt.p50,
        rtt.p99,
        rtt.p999,
        baseline_rtt.p50,
        baseline_rtt.p99,
        report.rtt_ratio
    );
    println!(
        "net: hand-off floor (TCP ping-pong plus a core<->I/O thread hand-off at each end) p50 {:.1} us p99 {:.1} us | paxring / floor {:.2}",
        handoff_rtt.p50, handoff_rtt.p99, report.rtt_vs_handoff_floor_ratio
    );
    println!(
        "net [{}]: fan-out to {} peers, {} B frames: {:.0} frames/s, {:.1} MB/s ({:.1} frames/write) | baseline {:.1} MB/s | throughput_ratio {:.2} (target >= 0.8)",
        report.backend,
        args.peers,
        args.frame_bytes,
        fan.frames_per_s,
        fan.mb_per_s,
        fan.frames_per_write,
        baseline_mb_per_s,
        report.throughput_ratio
    );
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    } else {
        println!("{json}");
    }
    Ok(())
}

/// Loopback addresses that were free a moment ago (bound, read, released).
fn free_addrs(n: usize) -> BenchResult<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<Vec<_>, _>>()?)
}

fn percentiles(hist: &Histogram<u64>) -> Percentiles {
    // Recorded in nanoseconds; reported in microseconds.
    let us = |ns: u64| ns as f64 / 1000.0;
    Percentiles {
        p50: us(hist.value_at_quantile(0.50)),
        p99: us(hist.value_at_quantile(0.99)),
        p999: us(hist.value_at_quantile(0.999)),
        max: us(hist.max()),
        samples: hist.len(),
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

struct Cluster {
    threads: Vec<NetThread>,
    handles: Vec<NetHandle>,
    inboxes: Vec<Vec<Inbox>>,
}

/// Starts `nodes` network threads on loopback, every node a peer of every other; one core each.
fn start_cluster(nodes: usize, backend: paxring_net::Backend) -> BenchResult<Cluster> {
    let addrs = free_addrs(nodes)?;
    let mut cluster = Cluster {
        threads: Vec::new(),
        handles: Vec::new(),
        inboxes: Vec::new(),
    };
    for (index, addr) in addrs.iter().enumerate() {
        let peers = addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(i, a)| (i as u32 + 1, *a))
            .collect();
        let mut cfg = NetConfig::new(CLUSTER_ID, index as u32 + 1, *addr, peers);
        cfg.backend = backend;
        cfg.max_frame_bytes = 8 << 20;
        let (thread, handle, inboxes) = NetThread::start(cfg, 1, Arc::new(|_| Some(0)))?;
        cluster.threads.push(thread);
        cluster.handles.push(handle);
        cluster.inboxes.push(inboxes);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster
        .handles
        .iter()
        .all(|h| h.stats().peers.iter().all(|p| p.connected))
    {
        if Instant::now() > deadline {
            return Err("network threads did not connect within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(cluster)
}

fn send_all(handle: &NetHandle, mut batch: Vec<(Dest, paxring_net::Bytes)>) {
    while let Err(back) = handle.send_batch(batch) {
        batch = back;
        std::thread::yield_now();
    }
}

fn rtt_paxring(
    body_bytes: usize,
    phase: Duration,
    backend: paxring_net::Backend,
) -> BenchResult<(Percentiles, &'static str)> {
    let mut cluster = start_cluster(2, backend)?;
    let backend_name = cluster.handles[0].backend();
    let mut inbox_b = cluster
        .inboxes
        .pop()
        .expect("two nodes")
        .pop()
        .expect("one core");
    let mut inbox_a = cluster
        .inboxes
        .pop()
        .expect("two nodes")
        .pop()
        .expect("one core");
    let handle_a = cluster.handles[0].clone();
    let handle_b = cluster.handles[1].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_b = stop.clone();
    let body = vec![0x5au8; body_bytes];
    let echo = std::thread::spawn(move || {
        let mut frames = Vec::new();
        while !stop_b.load(Ordering::Relaxed) {
            if !inbox_b.wait(Duration::from_millis(50)) {
                continue;
            }
            frames.clear();
            inbox_b.drain(&mut frames, 1024);
            let replies = frames
                .iter()
                .map(|f| (Dest::Peer(1), encode_frame(2, f.group, 2, &f.body)))
                .collect();
            send_all(&handle_b, replies);
        }
    });
    let mut hist = new_histogram();
    let mut frames = Vec::new();
    let warmup = Instant::now() + phase / 10;
    let end = Instant::now() + phase;
    let mut group = 0u32;
    while Instant::now() < end {
        group = group.wrapping_add(1);
        let start = Instant::now();
        send_all(
            &handle_a,
            vec![(Dest::Peer(2), encode_frame(1, group, 1, &body))],
        );
        frames.clear();
        while frames.is_empty() {
            if !inbox_a.wait(Duration::from_secs(5)) {
                return Err("no RTT reply within 5 s".into());
            }
            inbox_a.drain(&mut frames, 16);
        }
        let elapsed = start.elapsed();
        if frames.len() != 1 || frames[0].group != group {
            return Err("RTT reply out of step".into());
        }
        if start > warmup {
            hist.record(elapsed.as_nanos() as u64)?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    echo.join().map_err(|_| "echo thread panicked")?;
    for thread in cluster.threads {
        thread.shutdown();
    }
    Ok((percentiles(&hist), backend_name))
}

fn tcp_pair() -> BenchResult<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

fn rtt_baseline(body_bytes: usize, phase: Duration) -> BenchResult<Percentiles> {
    let (mut client, mut server) = tcp_pair()?;
    let len = FRAME_HEADER_BYTES + body_bytes;
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; len];
        while server.read_exact(&mut buf).is_ok() {
            if server.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let frame = encode_frame(1, 1, 1, &vec![0x5au8; body_bytes]);
    let mut buf = vec![0u8; len];
    let mut hist = new_histogram();
    let warmup = Instant::now() + phase / 10;
    let end = Instant::now() + phase;
    while Instant::now() < end {
        let start = Instant::now();
        client.write_all(&frame)?;
        client.read_exact(&mut buf)?;
        let elapsed = start.elapsed();
        if start > warmup {
            hist.record(elapsed.as_nanos() as u64)?;
        }
    }
    drop(client);
    echo.join().map_err(|_| "baseline echo thread panicked")?;
    Ok(percentiles(&hist))
}

/// The RTT floor of any design where a core thread hands frames to a separate I/O thread:
/// the baseline ping-pong plus, at each end, a hand-off core -> writer thread and reader thread
/// -> core (blocking channels, no spinning). Six thread wake-ups per round trip instead of two.
fn rtt_handoff_floor(body_bytes: usize, phase: Duration) -> BenchResult<Percentiles> {
    use std::sync::mpsc::{channel, Receiver, Sender};
    let len = FRAME_HEADER_BYTES + body_bytes;
    let (a_stream, b_stream) = tcp_pair()?;
    let a_closer = a_stream.try_clone()?;
    /// The core's ends: frames to the writer thread, frames from the reader thread.
    type CoreEnds = (Sender<Vec<u8>>, Receiver<Vec<u8>>);
    // One node: a writer thread (core -> socket) and a reader thread (socket -> core).
    fn io_threads(stream: TcpStream, len: usize) -> BenchResult<CoreEnds> {
        let (to_writer, from_core) = channel::<Vec<u8>>();
        let (to_core, from_reader) = channel::<Vec<u8>>();
        let mut writer = stream.try_clone()?;
        let mut reader = stream;
        std::thread::spawn(move || {
            while let Ok(frame) = from_core.recv() {
                if writer.write_all(&frame).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            let mut buf = vec![0u8; len];
            while reader.read_exact(&mut buf).is_ok() {
                if to_core.send(buf.clone()).is_err() {
                    break;
                }
            }
        });
        Ok((to_writer, from_reader))
    }
    let (a_send, a_recv) = io_threads(a_stream, len)?;
    let (b_send, b_recv) = io_threads(b_stream, len)?;
    let echo = std::thread::spawn(move || {
        while let Ok(frame) = b_recv.recv() {
            if b_send.send(frame).is_err() {
                break;
            }
        }
    });
    let frame = encode_frame(1, 1, 1, &vec![0x5au8; body_bytes]).to_vec();
    let mut hist = new_histogram();
    let warmup = Instant::now() + phase / 10;
    let end = Instant::now() + phase;
    while Instant::now() < end {
        let start = Instant::now();
        a_send
            .send(frame.clone())
            .map_err(|_| "hand-off writer gone")?;
        a_recv.recv().map_err(|_| "hand-off reader gone")?;
        let elapsed = start.elapsed();
        if start > warmup {
            hist.record(elapsed.as_nanos() as u64)?;
        }
    }
    // Shutting the socket down ends both readers (EOF), which ends the echo and the writers.
    a_closer.shutdown(std::net::Shutdown::Both)?;
    drop(a_send);
    drop(a_recv);
    echo.join().map_err(|_| "hand-off echo thread panicked")?;
    Ok(percentiles(&hist))
}

struct Fanout {
    frames_per_s: f64,
    mb_per_s: f64,
    frames_per_write: f64,
    dropped: u64,
    refused: u64,
}

/// Frames in flight (sent, not yet drained by every peer's core) at most.
const WINDOW_FRAMES: u64 = 16_384;

fn fanout_paxring(
    body_bytes: usize,
    peers: usize,
    phase: Duration,
    backend: paxring_net::Backend,
) -> BenchResult<Fanout> {
    let cluster = start_cluster(peers + 1, backend)?;
    let Cluster {
        threads,
        handles,
        inboxes,
    } = cluster;
    let stop = Arc::new(AtomicBool::new(false));
    let received: Vec<Arc<AtomicU64>> = (0..peers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut consumers = Vec::new();
    for (mut inbox, counter) in inboxes
        .into_iter()
        .skip(1)
        .map(|mut v| v.pop().expect("one core"))
        .zip(received.iter().cloned())
    {
        let stop = stop.clone();
        consumers.push(std::thread::spawn(move || {
            let mut frames = Vec::with_capacity(4096);
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if !inbox.wait(Duration::from_millis(20)) {
                    continue;
                }
                frames.clear();
                let n = inbox.drain(&mut frames, 4096);
                count += n as u64;
                counter.store(count, Ordering::Release);
            }
        }));
    }
    let handle = handles[0].clone();
    let body = vec![0xa5u8; body_bytes];
    let frames_per_batch = (256 * 1024 / (body_bytes + FRAME_HEADER_BYTES)).clamp(1, 256);
    let min_received = || {
        received
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    };
    let mut sent = 0u64;
    let mut group = 0u32;
    // Warm up for a tenth of the phase, then measure delivered frames over the rest.
    let start = Instant::now();
    let warmup_end = start + phase / 10;
    let end = start + phase;
    let mut measured_from: Option<(Instant, u64)> = None;
    while Instant::now() < end {
        if measured_from.is_none() && Instant::now() >= warmup_end {
            measured_from = Some((
                Instant::now(),
                received.iter().map(|c| c.load(Ordering::Acquire)).sum(),
            ));
        }
        if sent - min_received() + frames_per_batch as u64 > WINDOW_FRAMES {
            std::thread::yield_now();
            continue;
        }
        let mut batch = Vec::with_capacity(frames_per_batch);
        for _ in 0..frames_per_batch {
            group = group.wrapping_add(1);
            batch.push((Dest::AllPeers, encode_frame(1, group % 1024, 1, &body)));
        }
        sent += frames_per_batch as u64;
        send_all(&handle, batch);
    }
    let now = Instant::now();
    let delivered_end: u64 = received.iter().map(|c| c.load(Ordering::Acquire)).sum();
    let (from, delivered_start) = measured_from.unwrap_or((start, 0));
    let seconds = now.duration_since(from).as_secs_f64();
    let frames = (delivered_end - delivered_start) as f64;
    stop.store(true, Ordering::Relaxed);
    for consumer in consumers {
        consumer.join().map_err(|_| "consumer thread panicked")?;
    }
    let stats = handles[0].stats();
    let frames_per_write = stats.totals.frames_sent as f64 / stats.totals.writes.max(1) as f64;
    let result = Fanout {
        frames_per_s: frames / seconds,
        mb_per_s: frames * body_bytes as f64 / seconds / 1e6,
        frames_per_write,
        dropped: stats.totals.outbound_dropped_frames,
        refused: stats.send_batches_refused,
    };
    for thread in threads {
        thread.shutdown();
    }
    Ok(result)
}

fn fanout_baseline(body_bytes: usize, peers: usize, phase: Duration) -> BenchResult<f64> {
    let frame = encode_frame(1, 1, 1, &vec![0xa5u8; body_bytes]);
    let frames_per_write = (256 * 1024 / frame.len()).clamp(1, 256);
    let chunk: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * frames_per_write)
        .collect();
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    let received: Vec<Arc<AtomicU64>> = (0..peers).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for counter in &received {
        let (client, mut server) = tcp_pair()?;
        writers.push(client);
        let counter = counter.clone();
        readers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            while let Ok(n) = server.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
                counter.store(total, Ordering::Release);
            }
        }));
    }
    let start = Instant::now();
    let warmup_end = start + phase / 10;
    let end = start + phase;
    let mut measured_from: Option<(Instant, u64)> = None;
    while Instant::now() < end {
        if measured_from.is_none() && Instant::now() >= warmup_end {
            measured_from = Some((
                Instant::now(),
                received.iter().map(|c| c.load(Ordering::Acquire)).sum(),
            ));
        }
        for writer in writers.iter_mut() {
            writer.write_all(&chunk)?;
        }
    }
    let now = Instant::now();
    let bytes_end: u64 = received.iter().map(|c| c.load(Ordering::Acquire)).sum();
    drop(writers);
    for reader in readers {
        reader.join().map_err(|_| "baseline reader panicked")?;
    }
    let (from, bytes_start) = measured_from.unwrap_or((start, 0));
    let seconds = now.duration_since(from).as_secs_f64();
    // Count payload bytes, as the paxring phase does: wire bytes scaled by body / frame.
    let payload = (bytes_end - bytes_start) as f64 * body_bytes as f64 / frame.len() as f64;
    Ok(payload / seconds / 1e6)
}
