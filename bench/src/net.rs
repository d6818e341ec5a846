//! `paxring-bench net`: the network thread against raw loopback TCP, measured in the same run.
//!
//! Owns the network benchmark on 127.0.0.1. Every contender is set up once and then measured in
//! alternating slices, so the noise of a shared machine falls on paxring and its baselines alike.
//!
//! Latency (half of `--seconds`), one small frame in flight:
//! - paxring: a "core" thread on node A hands a frame to its network thread with `send_batch`;
//!   node B's core thread, blocked on its inbox eventfd, replies the same way; A's core blocks on
//!   its inbox. HDR histogram of the round trips.
//! - baseline: the same bytes ping-ponged over one plain TCP connection (TCP_NODELAY) between two
//!   threads with blocking reads and writes.
//! - hand-off floor: the baseline plus, at each end, a hand-off core -> writer thread and reader
//!   thread -> core through blocking channels: what any design with a separate I/O thread pays.
//!
//! Throughput (the other half), fan-out to P peers:
//! - paxring: a core thread sends each frame to all peers (`Dest::AllPeers`, one shared `Bytes`)
//!   in batches of about 256 KiB, with at most `WINDOW_FRAMES` in flight; each peer node's core
//!   thread drains its inbox. Frames are encoded before the run (4096 distinct frames, cycled):
//!   encoding is the caller's cost, reported on its own as `encode_mb_per_s` (one thread).
//! - baseline: one thread writes the same encoded frames, 256 KiB per write, to P plain TCP
//!   connections (TCP_NODELAY); P threads read them.
//!
//! A slice counts payload bytes delivered from its start until everything it sent has arrived.
//! `rtt_ratio` = paxring p50 / baseline p50; `throughput_ratio` = paxring MB/s / baseline MB/s.
//! It must never report a figure it did not measure in this run.

use crate::rss::{self, RssLog, RssReport};
use hdrhistogram::Histogram;
use paxring_net::{
    encode_frame, encode_frame_into, Bytes, BytesMut, Dest, Frame, Inbox, NetConfig, NetHandle,
    NetThread, FRAME_HEADER_BYTES,
};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Arguments of `paxring-bench net`.
#[derive(clap::Args, Debug)]
pub struct NetBenchArgs {
    /// Total run time in seconds: half latency, half throughput.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Body bytes of each frame in the throughput measurement.
    #[arg(long, default_value_t = 4096)]
    frame_bytes: usize,
    /// Peers to fan out to in the throughput measurement.
    #[arg(long, default_value_t = 2)]
    peers: usize,
    /// Body bytes of the round-trip frames.
    #[arg(long, default_value_t = 64)]
    rtt_frame_bytes: usize,
    /// Alternating slices per measurement.
    #[arg(long, default_value_t = 10)]
    slices: u32,
    /// I/O backend of the network threads: auto, io_uring or epoll.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Write the results as JSON to this path (else print them).
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
    slices: u32,
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
    encode_mb_per_s: f64,
    outbound_dropped_frames: u64,
    send_batches_refused: u64,
    /// This process's memory: at the start, after the measurements, at the end.
    rss: RssReport,
}

const CLUSTER_ID: u64 = 0x00be_7c4a;
/// Frames sent and not yet drained by every peer's core, at most (the sender's window).
const WINDOW_FRAMES: u64 = 16_384;
/// Bytes per hand-off batch (paxring) and per write (baseline).
const BATCH_BYTES: usize = 256 * 1024;
/// Round trips at the start of each slice that are not recorded (warm-up after a switch).
const WARMUP_PINGS: u32 = 20;

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
    let mut rss_log = RssLog::start();
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
    if args.slices == 0 || args.slices > 1000 {
        return Err("--slices must be in 1..=1000".into());
    }
    let backend = match args.backend.as_str() {
        "auto" => paxring_net::Backend::Auto,
        "io_uring" => paxring_net::Backend::IoUring,
        "epoll" => paxring_net::Backend::Epoll,
        other => return Err(format!("--backend {other}: use auto, io_uring or epoll").into()),
    };
    let half = Duration::from_secs_f64(args.seconds / 2.0);

    // Latency: three contenders, alternating slices.
    let slice = half / (3 * args.slices);
    let mut paxring_rtt = PaxringPinger::start(args.rtt_frame_bytes, backend)?;
    let backend_name = paxring_rtt.backend;
    let mut tcp_rtt = TcpPinger::start(args.rtt_frame_bytes)?;
    let mut floor_rtt = HandoffPinger::start(args.rtt_frame_bytes)?;
    let mut hists = [new_histogram(), new_histogram(), new_histogram()];
    for _ in 0..args.slices {
        measure_rtt(&mut paxring_rtt, slice, &mut hists[0])?;
        measure_rtt(&mut tcp_rtt, slice, &mut hists[1])?;
        measure_rtt(&mut floor_rtt, slice, &mut hists[2])?;
    }
    paxring_rtt.stop()?;
    tcp_rtt.stop()?;
    floor_rtt.stop()?;
    let [rtt, baseline_rtt, floor] = hists.map(|h| percentiles(&h));

    // Throughput: two contenders, alternating slices.
    let slice = half / (2 * args.slices);
    let mut paxring_pump = PaxringPump::start(args.frame_bytes, args.peers, backend)?;
    let mut tcp_pump = TcpPump::start(args.frame_bytes, args.peers)?;
    let (mut ours, mut theirs) = (Delivered::default(), Delivered::default());
    for _ in 0..args.slices {
        ours.add(paxring_pump.run(slice)?);
        theirs.add(tcp_pump.run(slice)?);
    }
    let encode_mb_per_s = paxring_pump.encode_mb_per_s;
    rss_log.after_load();
    let pump_stats = paxring_pump.stop()?;
    tcp_pump.stop()?;

    let mb_per_s = ours.payload_bytes as f64 / ours.seconds / 1e6;
    let baseline_mb_per_s = theirs.payload_bytes as f64 / theirs.seconds / 1e6;
    let report = Report {
        backend: backend_name,
        seconds: args.seconds,
        slices: args.slices,
        frame_bytes: args.frame_bytes,
        rtt_frame_bytes: args.rtt_frame_bytes,
        peers: args.peers,
        rtt_us: rtt,
        baseline_rtt_us: baseline_rtt,
        rtt_ratio: rtt.p50 / baseline_rtt.p50,
        rtt_p99_ratio: rtt.p99 / baseline_rtt.p99,
        handoff_floor_rtt_us: floor,
        rtt_vs_handoff_floor_ratio: rtt.p50 / floor.p50,
        frames_per_s: ours.frames as f64 / ours.seconds,
        mb_per_s,
        baseline_mb_per_s,
        throughput_ratio: mb_per_s / baseline_mb_per_s,
        frames_per_write: pump_stats.totals.frames_sent as f64
            / pump_stats.totals.writes.max(1) as f64,
        encode_mb_per_s,
        outbound_dropped_frames: pump_stats.totals.outbound_dropped_frames,
        send_batches_refused: pump_stats.send_batches_refused,
        rss: rss_log.finish(),
    };
    println!(
        "net [{}]: rtt p50 {:.1} us p99 {:.1} us p999 {:.1} us | baseline p50 {:.1} us p99 {:.1} us | rtt_ratio {:.2} (target <= 1.5)",
        report.backend, rtt.p50, rtt.p99, rtt.p999, baseline_rtt.p50, baseline_rtt.p99, report.rtt_ratio
    );
    println!(
        "net: hand-off floor (TCP ping-pong plus a core<->I/O thread hand-off at each end) p50 {:.1} us p99 {:.1} us | paxring / floor {:.2}",
        floor.p50, floor.p99, report.rtt_vs_handoff_floor_ratio
    );
    println!(
        "net [{}]: fan-out to {} peers, {} B frames: {:.0} frames/s, {:.1} MB/s ({:.1} frames/write) | baseline {:.1} MB/s | throughput_ratio {:.2} (target >= 0.8)",
        report.backend,
        args.peers,
        args.frame_bytes,
        report.frames_per_s,
        mb_per_s,
        report.frames_per_write,
        baseline_mb_per_s,
        report.throughput_ratio
    );
    println!("net: {}", rss::summary_line(&report.rss));
    let json = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(path) => std::fs::write(path, &json)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Helpers

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
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

fn tcp_pair() -> BenchResult<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

fn join(handle: JoinHandle<()>, what: &str) -> BenchResult<()> {
    handle
        .join()
        .map_err(|_| format!("{what} thread panicked").into())
}

struct Cluster {
    threads: Vec<NetThread>,
    handles: Vec<NetHandle>,
    inboxes: Vec<Inbox>,
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
        let (thread, handle, mut inboxes) = NetThread::start(cfg, 1, Arc::new(|_| Some(0)))?;
        cluster.threads.push(thread);
        cluster.handles.push(handle);
        cluster.inboxes.push(inboxes.pop().expect("one core"));
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

/// Hands a batch over, waiting while the network thread pushes back.
fn send_all(handle: &NetHandle, mut batch: Vec<(Dest, Bytes)>) {
    while let Err(back) = handle.send_batch(batch) {
        batch = back;
        std::thread::sleep(Duration::from_micros(20));
    }
}

// ---------------------------------------------------------------------------------------------
// Latency

/// One contender of the latency measurement: one round trip per call.
trait Pinger {
    fn ping(&mut self) -> BenchResult<()>;
}

fn measure_rtt(
    pinger: &mut dyn Pinger,
    slice: Duration,
    hist: &mut Histogram<u64>,
) -> BenchResult<()> {
    for _ in 0..WARMUP_PINGS {
        pinger.ping()?;
    }
    let end = Instant::now() + slice;
    while Instant::now() < end {
        let start = Instant::now();
        pinger.ping()?;
        hist.record(start.elapsed().as_nanos() as u64)?;
    }
    Ok(())
}

struct PaxringPinger {
    cluster: Cluster,
    inbox: Inbox,
    handle: NetHandle,
    body: Vec<u8>,
    group: u32,
    frames: Vec<Frame>,
    stop: Arc<AtomicBool>,
    echo: JoinHandle<()>,
    backend: &'static str,
}

impl PaxringPinger {
    fn start(body_bytes: usize, backend: paxring_net::Backend) -> BenchResult<Self> {
        let mut cluster = start_cluster(2, backend)?;
        let mut inbox_b = cluster.inboxes.pop().expect("node B");
        let inbox = cluster.inboxes.pop().expect("node A");
        let handle_b = cluster.handles[1].clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_b = stop.clone();
        let echo = std::thread::spawn(move || {
            let mut frames = Vec::new();
            while !stop_b.load(Ordering::Relaxed) {
                if !inbox_b.wait(Duration::from_millis(20)) {
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
        Ok(PaxringPinger {
            backend: cluster.handles[0].backend(),
            handle: cluster.handles[0].clone(),
            cluster,
            inbox,
            body: vec![0x5a; body_bytes],
            group: 0,
            frames: Vec::new(),
            stop,
            echo,
        })
    }

    fn stop(self) -> BenchResult<()> {
        self.stop.store(true, Ordering::Relaxed);
        join(self.echo, "echo")?;
        for thread in self.cluster.threads {
            thread.shutdown();
        }
        Ok(())
    }
}

impl Pinger for PaxringPinger {
    fn ping(&mut self) -> BenchResult<()> {
        self.group = self.group.wrapping_add(1);
        let frame = encode_frame(1, self.group, 1, &self.body);
        send_all(&self.handle, vec![(Dest::Peer(2), frame)]);
        self.frames.clear();
        while self.frames.is_empty() {
            if !self.inbox.wait(Duration::from_secs(5)) {
                return Err("no round-trip reply within 5 s".into());
            }
            self.inbox.drain(&mut self.frames, 16);
        }
        if self.frames.len() != 1 || self.frames[0].group != self.group {
            return Err("round-trip reply out of step".into());
        }
        Ok(())
    }
}

struct TcpPinger {
    client: TcpStream,
    frame: Bytes,
    buf: Vec<u8>,
    echo: JoinHandle<()>,
}

impl TcpPinger {
    fn start(body_bytes: usize) -> BenchResult<Self> {
        let (client, mut server) = tcp_pair()?;
        let len = FRAME_HEADER_BYTES + body_bytes;
        let echo = std::thread::spawn(move || {
            let mut buf = vec![0u8; len];
            while server.read_exact(&mut buf).is_ok() {
                if server.write_all(&buf).is_err() {
                    break;
                }
            }
        });
        Ok(TcpPinger {
            client,
            frame: encode_frame(1, 1, 1, &vec![0x5a; body_bytes]),
            buf: vec![0u8; len],
            echo,
        })
    }

    fn stop(self) -> BenchResult<()> {
        self.client.shutdown(std::net::Shutdown::Both)?;
        join(self.echo, "baseline echo")
    }
}

impl Pinger for TcpPinger {
    fn ping(&mut self) -> BenchResult<()> {
        self.client.write_all(&self.frame)?;
        self.client.read_exact(&mut self.buf)?;
        Ok(())
    }
}

/// The hand-off floor: TCP ping-pong where each end's "core" thread talks to a writer thread
/// and a reader thread through blocking channels. Six thread wake-ups per round trip.
struct HandoffPinger {
    to_writer: Sender<Vec<u8>>,
    from_reader: Receiver<Vec<u8>>,
    closer: TcpStream,
    frame: Vec<u8>,
    threads: Vec<JoinHandle<()>>,
}

/// One end's I/O threads: (frames to its writer, frames from its reader, the threads).
type IoEnds = (Sender<Vec<u8>>, Receiver<Vec<u8>>, Vec<JoinHandle<()>>);

fn io_threads(stream: TcpStream, len: usize) -> BenchResult<IoEnds> {
    let (to_writer, from_core) = channel::<Vec<u8>>();
    let (to_core, from_reader) = channel::<Vec<u8>>();
    let mut writer = stream.try_clone()?;
    let mut reader = stream;
    let write_thread = std::thread::spawn(move || {
        while let Ok(frame) = from_core.recv() {
            if writer.write_all(&frame).is_err() {
                break;
            }
        }
    });
    let read_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; len];
        while reader.read_exact(&mut buf).is_ok() {
            if to_core.send(buf.clone()).is_err() {
                break;
            }
        }
    });
    Ok((to_writer, from_reader, vec![write_thread, read_thread]))
}

impl HandoffPinger {
    fn start(body_bytes: usize) -> BenchResult<Self> {
        let len = FRAME_HEADER_BYTES + body_bytes;
        let (a_stream, b_stream) = tcp_pair()?;
        let closer = a_stream.try_clone()?;
        let (to_writer, from_reader, mut threads) = io_threads(a_stream, len)?;
        let (b_send, b_recv, b_threads) = io_threads(b_stream, len)?;
        threads.extend(b_threads);
        threads.push(std::thread::spawn(move || {
            while let Ok(frame) = b_recv.recv() {
                if b_send.send(frame).is_err() {
                    break;
                }
            }
        }));
        Ok(HandoffPinger {
            to_writer,
            from_reader,
            closer,
            frame: encode_frame(1, 1, 1, &vec![0x5a; body_bytes]).to_vec(),
            threads,
        })
    }

    fn stop(self) -> BenchResult<()> {
        // Shutting the socket down ends both readers (EOF), which ends the echo and the writers.
        self.closer.shutdown(std::net::Shutdown::Both)?;
        drop(self.to_writer);
        drop(self.from_reader);
        for thread in self.threads {
            join(thread, "hand-off")?;
        }
        Ok(())
    }
}

impl Pinger for HandoffPinger {
    fn ping(&mut self) -> BenchResult<()> {
        self.to_writer
            .send(self.frame.clone())
            .map_err(|_| "hand-off writer gone")?;
        self.from_reader
            .recv()
            .map_err(|_| "hand-off reader gone")?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput

/// What slices delivered, summed.
#[derive(Default, Clone, Copy)]
struct Delivered {
    frames: u64,
    payload_bytes: u64,
    seconds: f64,
}

impl Delivered {
    fn add(&mut self, other: Delivered) {
        self.frames += other.frames;
        self.payload_bytes += other.payload_bytes;
        self.seconds += other.seconds;
    }
}

/// Waits until `done()` or 10 s; the slice's clock keeps running meanwhile.
fn wait_drained(mut done: impl FnMut() -> bool) -> BenchResult<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return Err("frames still in flight 10 s after the slice ended".into());
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

struct PaxringPump {
    cluster: Cluster,
    handle: NetHandle,
    received: Vec<Arc<AtomicU64>>,
    consumers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    body_bytes: usize,
    /// Distinct frames encoded before the run (each `Bytes` clone is a reference, no copy).
    encoded: Vec<Bytes>,
    frames_per_batch: usize,
    encode_mb_per_s: f64,
    sent: u64,
    next: usize,
}

/// Distinct pre-encoded frames the paxring sender cycles through.
const ENCODED_FRAMES: usize = 4096;

/// Encodes `count` frames of `body_bytes` the way a core would (one shared allocation per
/// batch); returns them and the encoding rate in MB/s of payload, for the report.
fn encode_pool(body_bytes: usize, count: usize, frames_per_batch: usize) -> (Vec<Bytes>, f64) {
    let body = vec![0xa5; body_bytes];
    let start = Instant::now();
    let mut frames = Vec::with_capacity(count);
    let mut pool = BytesMut::new();
    for index in 0..count {
        if index % frames_per_batch == 0 {
            pool = BytesMut::with_capacity(frames_per_batch * (FRAME_HEADER_BYTES + body_bytes));
        }
        frames.push(encode_frame_into(
            &mut pool,
            1,
            (index % 1024) as u32,
            1,
            &body,
        ));
    }
    let seconds = start.elapsed().as_secs_f64();
    (frames, (count * body_bytes) as f64 / seconds / 1e6)
}

impl PaxringPump {
    fn start(body_bytes: usize, peers: usize, backend: paxring_net::Backend) -> BenchResult<Self> {
        let frames_per_batch = (BATCH_BYTES / (body_bytes + FRAME_HEADER_BYTES)).clamp(1, 256);
        let (encoded, encode_mb_per_s) = encode_pool(body_bytes, ENCODED_FRAMES, frames_per_batch);
        let mut cluster = start_cluster(peers + 1, backend)?;
        let stop = Arc::new(AtomicBool::new(false));
        let received: Vec<Arc<AtomicU64>> =
            (0..peers).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let mut consumers = Vec::new();
        let peer_inboxes: Vec<Inbox> = cluster.inboxes.drain(1..).collect();
        for (mut inbox, counter) in peer_inboxes.into_iter().zip(received.iter().cloned()) {
            let stop = stop.clone();
            consumers.push(std::thread::spawn(move || {
                let mut frames = Vec::with_capacity(4096);
                let mut count = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if !inbox.wait(Duration::from_millis(20)) {
                        continue;
                    }
                    frames.clear();
                    count += inbox.drain(&mut frames, 4096) as u64;
                    counter.store(count, Ordering::Release);
                }
            }));
        }
        Ok(PaxringPump {
            handle: cluster.handles[0].clone(),
            cluster,
            received,
            consumers,
            stop,
            body_bytes,
            encoded,
            frames_per_batch,
            encode_mb_per_s,
            sent: 0,
            next: 0,
        })
    }

    fn min_received(&self) -> u64 {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    fn total_received(&self) -> u64 {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .sum()
    }

    fn run(&mut self, slice: Duration) -> BenchResult<Delivered> {
        let start = Instant::now();
        let received_start = self.total_received();
        let end = start + slice;
        while Instant::now() < end {
            if self.sent - self.min_received() + self.frames_per_batch as u64 > WINDOW_FRAMES {
                // Window full (tens of MB in flight): sleep rather than spin; 2 vCPUs are shared.
                std::thread::sleep(Duration::from_micros(500));
                continue;
            }
            let mut batch = Vec::with_capacity(self.frames_per_batch);
            for _ in 0..self.frames_per_batch {
                self.next = (self.next + 1) % self.encoded.len();
                batch.push((Dest::AllPeers, self.encoded[self.next].clone()));
            }
            self.sent += self.frames_per_batch as u64;
            send_all(&self.handle, batch);
        }
        let dropped = || self.handle.stats().totals.outbound_dropped_frames;
        if dropped() > 0 {
            return Err(
                "frames were dropped by the outbound queue; the window is too large".into(),
            );
        }
        let sent = self.sent;
        wait_drained(|| self.min_received() >= sent)?;
        let seconds = start.elapsed().as_secs_f64();
        let frames = self.total_received() - received_start;
        Ok(Delivered {
            frames,
            payload_bytes: frames * self.body_bytes as u64,
            seconds,
        })
    }

    fn stop(self) -> BenchResult<paxring_net::NetStats> {
        let stats = self.handle.stats();
        self.stop.store(true, Ordering::Relaxed);
        for consumer in self.consumers {
            join(consumer, "consumer")?;
        }
        for thread in self.cluster.threads {
            thread.shutdown();
        }
        Ok(stats)
    }
}

struct TcpPump {
    writers: Vec<TcpStream>,
    readers: Vec<JoinHandle<()>>,
    received: Vec<Arc<AtomicU64>>,
    chunk: Vec<u8>,
    frame_bytes: usize,
    body_bytes: usize,
    written_per_peer: u64,
}

impl TcpPump {
    fn start(body_bytes: usize, peers: usize) -> BenchResult<Self> {
        let frame = encode_frame(1, 1, 1, &vec![0xa5; body_bytes]);
        let frames_per_write = (BATCH_BYTES / frame.len()).clamp(1, 256);
        let chunk: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * frames_per_write)
            .collect();
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        let received: Vec<Arc<AtomicU64>> =
            (0..peers).map(|_| Arc::new(AtomicU64::new(0))).collect();
        for counter in &received {
            let (client, mut server) = tcp_pair()?;
            writers.push(client);
            let counter = counter.clone();
            readers.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; BATCH_BYTES];
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
        Ok(TcpPump {
            writers,
            readers,
            received,
            chunk,
            frame_bytes: frame.len(),
            body_bytes,
            written_per_peer: 0,
        })
    }

    fn total_received(&self) -> u64 {
        self.received
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .sum()
    }

    fn run(&mut self, slice: Duration) -> BenchResult<Delivered> {
        let start = Instant::now();
        let received_start = self.total_received();
        let end = start + slice;
        while Instant::now() < end {
            for writer in self.writers.iter_mut() {
                writer.write_all(&self.chunk)?;
            }
            self.written_per_peer += self.chunk.len() as u64;
        }
        let written = self.written_per_peer;
        let received = &self.received;
        wait_drained(|| {
            received
                .iter()
                .all(|c| c.load(Ordering::Acquire) >= written)
        })?;
        let seconds = start.elapsed().as_secs_f64();
        let wire_bytes = self.total_received() - received_start;
        let frames = wire_bytes / self.frame_bytes as u64;
        Ok(Delivered {
            frames,
            payload_bytes: frames * self.body_bytes as u64,
            seconds,
        })
    }

    fn stop(self) -> BenchResult<()> {
        drop(self.writers);
        for reader in self.readers {
            join(reader, "baseline reader")?;
        }
        Ok(())
    }
}
