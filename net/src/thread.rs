//! The network thread: listener, one outbound connection per peer, inbound connections, routing.
//!
//! Owns every socket of the node and the tasks that drive them on one thread (tokio-uring, or
//! plain tokio on epoll when io_uring is unavailable). Cores talk to it only through
//! [`NetHandle::send_batch`] and their [`Inbox`]. It must never block on a core, never buffer
//! without a bound, never drop an inbound frame silently, and never panic on peer input.

use crate::config::{Backend as BackendChoice, ConfigError, NetConfig};
use crate::frame::{
    outbound_header, Decoder, Frame, Hello, HelloStatus, FRAME_HEADER_BYTES, HELLO_BYTES,
    PROTOCOL_VERSION,
};
use crate::inbox::{inbox, Inbox, InboxSender, PushError};
use crate::stats::{add, bump, AtomicCounters, NetStats, SharedStats};
use crate::transport::{Backend, Epoll, Stream, Uring};
use bytes::{Buf, Bytes, BytesMut};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// Where an outbound frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// One peer, by node id.
    Peer(u32),
    /// Every configured peer (the same `Bytes` is shared, not re-encoded).
    AllPeers,
}

/// Why the network thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `cores` was zero.
    #[error("the network thread needs at least one core to route frames to (cores = 0)")]
    NoCores,
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// An inbox eventfd could not be created.
    #[error("cannot create the eventfd of inbox {core}: {source}")]
    EventFd {
        /// The core index.
        core: usize,
        /// The OS error.
        source: io::Error,
    },
    /// io_uring was required (`Backend::IoUring`) and is unavailable.
    #[error("io_uring is unavailable ({source}); use Backend::Auto or Backend::Epoll")]
    UringUnavailable {
        /// The OS error of the ring setup.
        source: io::Error,
    },
    /// The runtime or thread could not be created.
    #[error("cannot start the network thread: {source}")]
    Runtime {
        /// The OS error.
        source: io::Error,
    },
}

/// The network thread. Dropping it stops it too; [`NetThread::shutdown`] says so explicitly.
#[derive(Debug)]
pub struct NetThread {
    stop: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<()>>,
}

/// A batch handed to the network thread.
type Batch = Vec<(Dest, Bytes)>;

/// The cores' handle on the network thread. Cheap to clone; `Send + Sync`.
#[derive(Clone, Debug)]
pub struct NetHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    tx: mpsc::Sender<Batch>,
    stats: Arc<SharedStats>,
    backend: &'static str,
    local_addr: SocketAddr,
}

/// The route function: group id to the owning core's index (`None`: not ours).
pub type Route = Arc<dyn Fn(u32) -> Option<usize> + Send + Sync>;

impl NetThread {
    /// Starts the network thread (tokio-uring; plain tokio/epoll fallback if io_uring is
    /// unavailable, said at start and visible in stats). `route` maps a group to the owning core
    /// index, None = unknown group (count + drop). Returns one Inbox per core.
    ///
    /// The listen socket is bound before this returns, so bind errors come back here.
    /// `route` runs on the network thread for every inbound frame: keep it cheap and panic-free.
    pub fn start(
        cfg: NetConfig,
        cores: usize,
        route: Route,
    ) -> Result<(NetThread, NetHandle, Vec<Inbox>), NetError> {
        cfg.validate()?;
        if cores == 0 {
            return Err(NetError::NoCores);
        }
        let listener =
            std::net::TcpListener::bind(cfg.listen).map_err(|source| NetError::Listen {
                addr: cfg.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| NetError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| NetError::Listen {
            addr: cfg.listen,
            source,
        })?;
        let mut senders = Vec::with_capacity(cores);
        let mut inboxes = Vec::with_capacity(cores);
        for core in 0..cores {
            let (tx, rx) =
                inbox(cfg.inbox_capacity).map_err(|source| NetError::EventFd { core, source })?;
            senders.push(tx);
            inboxes.push(rx);
        }
        let stats = Arc::new(SharedStats::new(
            cfg.node_id,
            cfg.peers.iter().map(|(id, _)| *id).collect(),
        ));
        let (batch_tx, batch_rx) = mpsc::channel(cfg.send_batch_capacity);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<&'static str, NetError>>();
        let setup = Setup {
            cfg,
            listener,
            senders,
            route,
            stats: stats.clone(),
            batch_rx,
            stop_rx,
            ready_tx,
        };
        let join = std::thread::Builder::new()
            .name("paxring-net".into())
            .spawn(move || thread_main(setup))
            .map_err(|source| NetError::Runtime { source })?;
        let backend = match ready_rx.recv() {
            Ok(Ok(backend)) => backend,
            Ok(Err(err)) => {
                let _ = join.join();
                return Err(err);
            }
            Err(_) => {
                let _ = join.join();
                return Err(NetError::Runtime {
                    source: io::Error::other("the network thread exited during start"),
                });
            }
        };
        let handle = NetHandle {
            inner: Arc::new(HandleInner {
                tx: batch_tx,
                stats,
                backend,
                local_addr,
            }),
        };
        Ok((
            NetThread {
                stop: Some(stop_tx),
                join: Some(join),
            },
            handle,
            inboxes,
        ))
    }

    /// Stops the thread (closing every connection) and joins it.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(join) = self.join.take() {
            if join.join().is_err() {
                tracing::error!("the network thread panicked");
            }
        }
    }
}

impl Drop for NetThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl NetHandle {
    /// One hand-off per core round: all of that round's outbound frames. Bounded: when the queue
    /// is full returns Err(batch) back (back-pressure), nothing dropped silently. Also returns the
    /// batch when the network thread has stopped.
    ///
    /// Each `Bytes` must be one whole frame from [`crate::encode_frame`] with this node's id as
    /// sender; others are dropped and counted (`invalid_outbound_frames`).
    pub fn send_batch(&self, batch: Vec<(Dest, Bytes)>) -> Result<(), Vec<(Dest, Bytes)>> {
        if batch.is_empty() {
            return Ok(());
        }
        match self.inner.tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(batch)) => {
                bump(&self.inner.stats.send_batches_refused);
                Err(batch)
            }
            Err(mpsc::error::TrySendError::Closed(batch)) => Err(batch),
        }
    }

    /// A snapshot of the counters, per peer and in total.
    pub fn stats(&self) -> NetStats {
        self.inner.stats.snapshot(self.inner.backend)
    }

    /// The bound listen address (tests bind port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// `"io_uring"` or `"epoll"`.
    pub fn backend(&self) -> &'static str {
        self.inner.backend
    }
}

struct Setup {
    cfg: NetConfig,
    listener: std::net::TcpListener,
    senders: Vec<InboxSender>,
    route: Route,
    stats: Arc<SharedStats>,
    batch_rx: mpsc::Receiver<Batch>,
    stop_rx: oneshot::Receiver<()>,
    ready_tx: std::sync::mpsc::Sender<Result<&'static str, NetError>>,
}

fn thread_main(setup: Setup) {
    match setup.cfg.backend {
        BackendChoice::Epoll => run_epoll(setup, None),
        BackendChoice::Auto | BackendChoice::IoUring => {
            match tokio_uring::Runtime::new(&tokio_uring::builder()) {
                Ok(runtime) => {
                    tracing::info!(
                        node = setup.cfg.node_id,
                        "network thread on io_uring (tokio-uring)"
                    );
                    if !runtime.block_on(node_main::<Uring>(setup)) {
                        // Some operation may still be in flight: dropping the runtime would free
                        // its buffers under the kernel (see `Ctx::spawn_io`).
                        std::mem::forget(runtime);
                    }
                }
                Err(source) if setup.cfg.backend == BackendChoice::Auto => {
                    run_epoll(setup, Some(source))
                }
                Err(source) => {
                    let _ = setup
                        .ready_tx
                        .send(Err(NetError::UringUnavailable { source }));
                }
            }
        }
    }
}

fn run_epoll(setup: Setup, uring_error: Option<io::Error>) {
    if let Some(err) = &uring_error {
        tracing::warn!(node = setup.cfg.node_id, %err, "io_uring unavailable: network thread falls back to epoll (plain tokio)");
    } else {
        tracing::info!(
            node = setup.cfg.node_id,
            "network thread on epoll (plain tokio), as configured"
        );
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            let _ = setup.ready_tx.send(Err(NetError::Runtime { source }));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    // Readiness-based: no operation owns a buffer, so the runtime always drops safely.
    let _ = local.block_on(&runtime, node_main::<Epoll>(setup));
}

/// Per-peer outbound state, shared by the dispatcher and the peer's connection task.
struct PeerOut {
    node_id: u32,
    addr: SocketAddr,
    queue: RefCell<OutQueue>,
    /// Whether the outbound connection is up (handshake done, writer running): decides which
    /// frames a full queue drops (see [`OutQueue::push`]). Mirrors the `connected` stat.
    connected: Cell<bool>,
    /// Woken when frames are queued.
    wake: Notify,
    /// Woken when the peer opens a connection to us while our connection to it is down: it
    /// is up again, so the reconnect backoff ends at once (a restarted peer is reached in
    /// microseconds, not after up to `reconnect_backoff_max`).
    peer_back: Notify,
    /// Whether the peer loop sleeps in a reconnect backoff now (only then is `peer_back`
    /// notified: a permit stored while connected would cut the next backoff short).
    backing_off: Cell<bool>,
    /// The largest body the peer accepts (from its handshake; ours until then).
    max_frame_bytes: Cell<u32>,
    /// Rate limit of the error line for frames dropped because they exceed `max_frame_bytes`.
    oversize_log: RefCell<LogLimiter>,
    /// Rate limit of the warnings about garbage this peer sent after its handshake
    /// (undecodable bytes, a forged sender, a truncated frame).
    garbage_log: RefCell<LogLimiter>,
}

/// The bounds of one peer's outbound queue (`outbound_capacity`, `outbound_bytes_max`).
#[derive(Clone, Copy, Debug)]
struct QueueLimits {
    /// Frames queued at most.
    frames: usize,
    /// Bytes (whole frames) queued at most.
    bytes: usize,
}

/// What [`OutQueue::push`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pushed {
    /// Queued, after dropping this many of the oldest queued frames to make room (0 when it
    /// fit; more only while the peer's connection is down).
    Queued {
        /// Stale frames dropped from the front.
        dropped_stale: u64,
    },
    /// Not queued: the queue is full and the peer's connection is up (the peer is slow).
    DroppedNew,
    /// Not queued: the frame alone exceeds the byte bound (or the frame bound is zero).
    NeverFits,
}

/// One peer's outbound queue: whole frames, oldest first, and their total length in bytes.
///
/// The byte count stays exact because frames enter only through [`OutQueue::push`] and leave
/// only through [`OutQueue::pop_front`]. The writer pops the frames of a socket write before it
/// starts that write, so a frame being written (or partly written) is no longer here and no
/// push can drop it.
#[derive(Debug, Default)]
struct OutQueue {
    frames: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    /// Queues `frame` within `limits`, never waiting. When it does not fit: while the peer's
    /// connection is up the new frame is dropped (the peer is slow; what is queued goes out
    /// next); while it is down the oldest frames are dropped until the new one fits, so a
    /// returning peer gets recent frames instead of a stale backlog. Paxos tolerates loss.
    fn push(&mut self, frame: Bytes, limits: QueueLimits, connected: bool) -> Pushed {
        let len = frame.len();
        if len > limits.bytes || limits.frames == 0 {
            return Pushed::NeverFits;
        }
        let fits = |queue: &OutQueue| {
            queue.frames.len() < limits.frames && queue.bytes + len <= limits.bytes
        };
        let mut dropped_stale = 0;
        if !fits(self) {
            if connected {
                return Pushed::DroppedNew;
            }
            while !fits(self) {
                // The frame fits an empty queue (checked above), so the loop ends.
                self.pop_front()
                    .expect("a frame that fits alone fits an empty queue");
                dropped_stale += 1;
            }
        }
        self.bytes += len;
        self.frames.push_back(frame);
        Pushed::Queued { dropped_stale }
    }

    /// Takes the oldest frame.
    fn pop_front(&mut self) -> Option<Bytes> {
        let frame = self.frames.pop_front()?;
        self.bytes -= frame.len();
        Some(frame)
    }

    /// The oldest frame.
    fn front(&self) -> Option<&Bytes> {
        self.frames.front()
    }

    /// Frames queued.
    fn len(&self) -> usize {
        self.frames.len()
    }

    /// Bytes queued (the sum of the frames' lengths).
    fn bytes(&self) -> usize {
        self.bytes
    }

    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

/// How often at most one peer's oversize drops are logged.
const OVERSIZE_LOG_EVERY: Duration = Duration::from_secs(1);

/// How often at most a warning about one peer's garbage input is logged (and, shared by all
/// unauthenticated connections, about input that is not a handshake).
const GARBAGE_LOG_EVERY: Duration = Duration::from_secs(1);

/// At most one log line per `every`; counts the events it holds back, so the next line can say
/// how many were not logged.
#[derive(Debug)]
struct LogLimiter {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    fn new(every: Duration) -> LogLimiter {
        LogLimiter {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// One event at `now`: `Some(events suppressed since the last line)` when a line may be
    /// logged (the count restarts), `None` when it is too soon (the event is counted).
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The network thread's state, shared by its tasks (single thread: `Rc`, `RefCell`).
struct Ctx {
    cfg: NetConfig,
    stats: Arc<SharedStats>,
    inboxes: Vec<InboxSender>,
    route: Route,
    peers: Vec<PeerOut>,
    peer_index: HashMap<u32, usize>,
    rng: Cell<u64>,
    /// Closers of live connections, run at shutdown so pending operations complete.
    live: RefCell<HashMap<u64, Box<dyn Fn()>>>,
    next_live: Cell<u64>,
    inbound_live: Cell<usize>,
    /// Authenticated inbound connections per peer.
    inbound_per_peer: RefCell<Vec<usize>>,
    /// Set at shutdown: writers start no new write.
    stopping: Cell<bool>,
    /// Socket writes in progress, over all peers.
    writes_in_flight: Cell<usize>,
    /// Notified when `writes_in_flight` drops to zero while stopping.
    writes_idle: Notify,
    /// Rate limit of the warnings about connections that open with something other than a
    /// handshake (their sender is unknown, so one limiter serves them all).
    handshake_garbage_log: RefCell<LogLimiter>,
    /// The tasks that read or accept (see [`Ctx::spawn_io`]): all are awaited at shutdown.
    io_tasks: RefCell<Vec<tokio::task::JoinHandle<()>>>,
    /// Notified (all waiters) at shutdown: peer loops stop waiting to reconnect.
    stop_wake: Notify,
}

/// How long shutdown waits for writes in flight to complete.
const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_millis(200);
/// How long shutdown waits for every reading or accepting task to end once their sockets are
/// shut down (they end within microseconds; past this the runtime is leaked, never dropped
/// with an operation in flight: see `node_main`).
const SHUTDOWN_TASKS_GRACE: Duration = Duration::from_secs(5);

/// The most inbound connections open at once (authenticated or not); more are closed at once.
const INBOUND_CONNECTIONS_MAX: usize = 1024;
/// Read buffer growth step for an authenticated connection.
const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Removes a connection from the live set when it ends.
struct LiveGuard {
    ctx: Rc<Ctx>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.ctx.live.borrow_mut().remove(&self.id);
    }
}

impl Ctx {
    /// Spawns a task that reads from or accepts on a socket, and keeps its handle: shutdown
    /// shuts every socket down and then awaits every such task, so that no read or accept is
    /// in flight when the runtime is dropped. (tokio-uring frees the buffers of operations
    /// whose futures were dropped when its runtime drops, before the kernel is done with them:
    /// an accept or a read completing after that writes into freed memory.) So a future of
    /// such an operation is never dropped before it completes: on a timeout the socket is shut
    /// down and the operation awaited (`io_timeout`).
    fn spawn_io(&self, task: impl std::future::Future<Output = ()> + 'static) {
        let handle = tokio::task::spawn_local(task);
        let mut tasks = self.io_tasks.borrow_mut();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    fn register<S: Stream>(self: &Rc<Self>, stream: &Rc<S>) -> LiveGuard {
        let id = self.next_live.get();
        self.next_live.set(id + 1);
        let weak = Rc::downgrade(stream);
        self.live.borrow_mut().insert(
            id,
            Box::new(move || {
                if let Some(stream) = weak.upgrade() {
                    stream.close();
                }
            }),
        );
        LiveGuard {
            ctx: self.clone(),
            id,
        }
    }

    fn hello(&self, status: HelloStatus) -> [u8; HELLO_BYTES] {
        Hello {
            version: PROTOCOL_VERSION,
            status,
            cluster_id: self.cfg.cluster_id,
            node_id: self.cfg.node_id,
            max_frame_bytes: self.cfg.max_frame_bytes,
        }
        .encode()
    }

    fn counters(&self, peer: usize) -> &AtomicCounters {
        &self.stats.peers[peer].counters
    }

    /// Publishes a peer's queue length and bytes to the stats.
    fn publish_queue(&self, peer: usize, queue: &OutQueue) {
        let slot = &self.stats.peers[peer];
        slot.outbound_queued_frames
            .store(queue.len() as u64, Ordering::Relaxed);
        slot.outbound_queued_bytes
            .store(queue.bytes() as u64, Ordering::Relaxed);
    }

    /// Records whether a peer's outbound connection is up (for the push rule and the stat).
    fn set_connected(&self, peer: usize, connected: bool) {
        self.peers[peer].connected.set(connected);
        self.stats.peers[peer]
            .connected
            .store(connected, Ordering::Relaxed);
    }

    /// The next reconnect delay (see [`backoff_delay`]).
    fn backoff(&self, attempt: u32) -> Duration {
        let mut state = self.rng.get();
        let delay = backoff_delay(
            self.cfg.reconnect_backoff_min,
            self.cfg.reconnect_backoff_max,
            attempt,
            &mut state,
        );
        self.rng.set(state);
        delay
    }
}

/// Reconnect delay after `attempt` failures: `min * 2^attempt` capped at `max`, then jittered
/// into [delay/2, delay] so that nodes restarted together do not reconnect in lockstep.
/// `state` is a xorshift64* state (jitter only, not security); it must not be zero.
fn backoff_delay(min: Duration, max: Duration, attempt: u32, state: &mut u64) -> Duration {
    assert!(*state != 0, "xorshift state must not be zero");
    let delay = min.saturating_mul(1u32 << attempt.min(20)).min(max);
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    let fraction = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
    delay.mul_f64(0.5 + fraction / 2.0)
}

/// Runs the network thread until `shutdown`; returns whether every task that reads or accepts
/// ended (else the caller must not drop the runtime: see [`Ctx::spawn_io`]).
async fn node_main<B: Backend>(setup: Setup) -> bool {
    let Setup {
        cfg,
        listener,
        senders,
        route,
        stats,
        batch_rx,
        stop_rx,
        ready_tx,
    } = setup;
    let listener = match B::listener(listener) {
        Ok(listener) => listener,
        Err(source) => {
            let _ = ready_tx.send(Err(NetError::Runtime { source }));
            return true;
        }
    };
    let peers = cfg
        .peers
        .iter()
        .map(|(node_id, addr)| PeerOut {
            node_id: *node_id,
            addr: *addr,
            queue: RefCell::new(OutQueue::default()),
            connected: Cell::new(false),
            wake: Notify::new(),
            peer_back: Notify::new(),
            backing_off: Cell::new(false),
            max_frame_bytes: Cell::new(cfg.max_frame_bytes),
            oversize_log: RefCell::new(LogLimiter::new(OVERSIZE_LOG_EVERY)),
            garbage_log: RefCell::new(LogLimiter::new(GARBAGE_LOG_EVERY)),
        })
        .collect();
    let peer_index = cfg
        .peers
        .iter()
        .enumerate()
        .map(|(index, (id, _))| (*id, index))
        .collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(cfg.node_id) << 32)
        | 1;
    let peer_count = cfg.peers.len();
    let ctx = Rc::new(Ctx {
        cfg,
        stats,
        inboxes: senders,
        route,
        peers,
        peer_index,
        rng: Cell::new(seed),
        live: RefCell::new(HashMap::new()),
        next_live: Cell::new(0),
        inbound_live: Cell::new(0),
        inbound_per_peer: RefCell::new(vec![0; peer_count]),
        stopping: Cell::new(false),
        writes_in_flight: Cell::new(0),
        writes_idle: Notify::new(),
        handshake_garbage_log: RefCell::new(LogLimiter::new(GARBAGE_LOG_EVERY)),
        io_tasks: RefCell::new(Vec::new()),
        stop_wake: Notify::new(),
    });
    let listener = Rc::new(listener);
    ctx.spawn_io(accept_loop::<B>(ctx.clone(), listener.clone()));
    for peer in 0..ctx.peers.len() {
        ctx.spawn_io(peer_loop::<B>(ctx.clone(), peer));
    }
    tokio::task::spawn_local(dispatch(ctx.clone(), batch_rx));
    let _ = ready_tx.send(Ok(B::NAME));
    // Runs until `shutdown` (or the NetThread is dropped: the sender closes).
    let _ = stop_rx.await;
    tracing::debug!(node = ctx.cfg.node_id, "network thread stopping");
    // Let writes in flight finish (bounded), so peers see whole frames, not a truncated stream.
    ctx.stopping.set(true);
    for peer in &ctx.peers {
        peer.wake.notify_one();
    }
    if ctx.writes_in_flight.get() > 0 {
        let _ = tokio::time::timeout(SHUTDOWN_WRITE_GRACE, ctx.writes_idle.notified()).await;
    }
    ctx.stop_wake.notify_waiters();
    B::close_listener(&listener);
    // Every socket is shut down (again and again: a connection accepted or opened meanwhile
    // is too), so every read and accept in progress ends, and every task that reads or
    // accepts is awaited.
    let deadline = Instant::now() + SHUTDOWN_TASKS_GRACE;
    loop {
        let closers: Vec<Box<dyn Fn()>> = ctx
            .live
            .borrow_mut()
            .drain()
            .map(|(_, closer)| closer)
            .collect();
        for close in closers {
            close();
        }
        ctx.io_tasks.borrow_mut().retain(|t| !t.is_finished());
        if ctx.io_tasks.borrow().is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            tracing::error!(
                node = ctx.cfg.node_id,
                tasks = ctx.io_tasks.borrow().len(),
                "network tasks still reading or accepting {SHUTDOWN_TASKS_GRACE:?} after shutdown; the runtime is leaked rather than dropped under them"
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound

/// Takes core batches and queues each frame on its peers (bounded in frames and bytes: when a
/// queue is full a frame is dropped and counted, see [`OutQueue::push`]).
async fn dispatch(ctx: Rc<Ctx>, mut rx: mpsc::Receiver<Batch>) {
    let mut touched = vec![false; ctx.peers.len()];
    while let Some(batch) = rx.recv().await {
        enqueue_batch(&ctx, batch, &mut touched);
        // Take what else is already waiting, so writers coalesce more per write.
        while let Ok(batch) = rx.try_recv() {
            enqueue_batch(&ctx, batch, &mut touched);
        }
        for (peer, flag) in touched.iter_mut().enumerate() {
            if std::mem::take(flag) {
                ctx.peers[peer].wake.notify_one();
            }
        }
    }
}

fn enqueue_batch(ctx: &Ctx, batch: Batch, touched: &mut [bool]) {
    for (dest, frame) in batch {
        let Some((body_bytes, from)) = outbound_header(&frame) else {
            bump(&ctx.stats.invalid_outbound_frames);
            tracing::error!(
                len = frame.len(),
                "send_batch: not one whole encoded frame; dropped"
            );
            continue;
        };
        if from != ctx.cfg.node_id {
            bump(&ctx.stats.invalid_outbound_frames);
            tracing::error!(
                from,
                node = ctx.cfg.node_id,
                "send_batch: frame sender is not this node; dropped"
            );
            continue;
        }
        match dest {
            Dest::Peer(node_id) => match ctx.peer_index.get(&node_id) {
                Some(&peer) => enqueue(ctx, peer, frame, body_bytes, touched),
                None => {
                    bump(&ctx.stats.invalid_outbound_frames);
                    tracing::error!(node_id, "send_batch: no such peer; frame dropped");
                }
            },
            Dest::AllPeers => {
                for peer in 0..ctx.peers.len() {
                    enqueue(ctx, peer, frame.clone(), body_bytes, touched);
                }
            }
        }
    }
}

fn enqueue(ctx: &Ctx, peer: usize, frame: Bytes, body_bytes: u32, touched: &mut [bool]) {
    let out = &ctx.peers[peer];
    let counters = ctx.counters(peer);
    let limit = out.max_frame_bytes.get();
    if body_bytes > limit {
        bump(&counters.oversize_dropped_frames);
        // A core built a message the peer cannot take: a bug or a misconfiguration, so it is
        // logged, at most once a second per peer (a storm of them must not flood the log).
        if let Some(suppressed) = out.oversize_log.borrow_mut().admit(Instant::now()) {
            tracing::error!(
                node = ctx.cfg.node_id,
                peer = out.node_id,
                body_bytes,
                frame_bytes = frame.len(),
                max_frame_bytes = limit,
                suppressed,
                "outbound frame body of {body_bytes} bytes exceeds peer {}'s limit of {limit} bytes; dropped ({suppressed} more such drops to this peer not logged since the last line)",
                out.node_id
            );
        }
        return;
    }
    let frame_bytes = frame.len();
    let connected = out.connected.get();
    let limits = QueueLimits {
        frames: ctx.cfg.outbound_capacity,
        bytes: if connected {
            ctx.cfg.outbound_bytes_max
        } else {
            // A down peer's queue keeps a short recent backlog (at least this frame).
            ctx.cfg
                .outbound_down_bytes_max
                .max(frame_bytes)
                .min(ctx.cfg.outbound_bytes_max)
        },
    };
    let mut queue = out.queue.borrow_mut();
    // The peer is slow or down. Paxos tolerates message loss; memory must stay bounded.
    match queue.push(frame, limits, connected) {
        Pushed::Queued { dropped_stale } => {
            add(&counters.outbound_dropped_stale_frames, dropped_stale);
            ctx.publish_queue(peer, &queue);
            touched[peer] = true;
        }
        Pushed::DroppedNew => bump(&counters.outbound_dropped_frames),
        Pushed::NeverFits => {
            bump(&counters.outbound_dropped_frames);
            // No queue can ever hold it: a misconfiguration, logged like oversize frames.
            if let Some(suppressed) = out.oversize_log.borrow_mut().admit(Instant::now()) {
                tracing::error!(
                    node = ctx.cfg.node_id,
                    peer = out.node_id,
                    frame_bytes,
                    outbound_bytes_max = limits.bytes,
                    suppressed,
                    "outbound frame of {frame_bytes} bytes exceeds outbound_bytes_max ({}); dropped ({suppressed} more such drops to this peer not logged since the last line)",
                    limits.bytes
                );
            }
        }
    }
}

/// Keeps one outbound connection to `peer` up: connect, handshake, write queued frames;
/// reconnect with capped exponential backoff and jitter.
async fn peer_loop<B: Backend>(ctx: Rc<Ctx>, peer: usize) {
    let mut attempt: u32 = 0;
    let mut ever_connected = false;
    while !ctx.stopping.get() {
        match connect_peer::<B>(&ctx, peer).await {
            Ok(stream) => {
                if ever_connected {
                    bump(&ctx.counters(peer).reconnects);
                }
                ever_connected = true;
                attempt = 0;
                let stream = Rc::new(stream);
                let _live = ctx.register(&stream);
                ctx.set_connected(peer, true);
                tracing::info!(
                    node = ctx.cfg.node_id,
                    peer = ctx.peers[peer].node_id,
                    "connected to peer"
                );
                write_loop(&ctx, peer, &stream).await;
                ctx.set_connected(peer, false);
                stream.close();
            }
            Err(err) => {
                bump(&ctx.counters(peer).connect_failures);
                tracing::debug!(node = ctx.cfg.node_id, peer = ctx.peers[peer].node_id, %err, "connect failed");
            }
        }
        let stopped = ctx.stop_wake.notified();
        if ctx.stopping.get() {
            return;
        }
        let out = &ctx.peers[peer];
        out.backing_off.set(true);
        let back = tokio::select! {
            _ = tokio::time::sleep(ctx.backoff(attempt)) => false,
            _ = out.peer_back.notified() => true,
            _ = stopped => return,
        };
        out.backing_off.set(false);
        if back {
            // The peer just connected to us: it is up, so try at once and start the backoff
            // over.
            bump(&ctx.counters(peer).reconnects_early);
            tracing::debug!(
                node = ctx.cfg.node_id,
                peer = ctx.peers[peer].node_id,
                "the peer connected to us: reconnecting at once"
            );
            attempt = 0;
        } else {
            attempt = attempt.saturating_add(1);
        }
    }
}

/// Runs `io`, an operation on `stream`, for at most `limit` (`None` past it, or at shutdown).
/// Then the stream is shut down and `io` still awaited to its end, never dropped while the
/// kernel may still write into its buffer (see [`Ctx::spawn_io`]).
async fn io_timeout<S: Stream, T>(
    ctx: &Ctx,
    stream: &S,
    limit: Duration,
    io: impl std::future::Future<Output = T>,
) -> Option<T> {
    let stopped = ctx.stop_wake.notified();
    tokio::pin!(io);
    tokio::pin!(stopped);
    if !ctx.stopping.get() {
        tokio::select! {
            out = &mut io => return Some(out),
            _ = tokio::time::sleep(limit) => {}
            _ = &mut stopped => {}
        }
    }
    stream.close();
    let _ = io.await;
    None
}

/// Counts and logs an outbound handshake that did not finish in time.
fn handshake_timed_out(ctx: &Ctx, out: &PeerOut) -> io::Error {
    bump(&ctx.stats.handshake_timeouts);
    tracing::warn!(
        node = ctx.cfg.node_id,
        peer = out.node_id,
        "handshake with peer timed out"
    );
    io::ErrorKind::TimedOut.into()
}

/// Connects and completes the client side of the handshake within the handshake timeout.
async fn connect_peer<B: Backend>(ctx: &Rc<Ctx>, peer: usize) -> io::Result<B::Stream> {
    let out = &ctx.peers[peer];
    let deadline = tokio::time::Instant::now() + ctx.cfg.handshake_timeout;
    // A connect writes nothing into this process's memory: dropping it on a timeout or at
    // shutdown is safe.
    let stopped = ctx.stop_wake.notified();
    if ctx.stopping.get() {
        return Err(io::ErrorKind::Interrupted.into());
    }
    let connect = tokio::select! {
        connect = tokio::time::timeout_at(deadline, B::connect(out.addr)) => connect,
        _ = stopped => return Err(io::ErrorKind::Interrupted.into()),
    };
    let stream = match connect {
        Ok(result) => result?,
        Err(_) => return Err(handshake_timed_out(ctx, out)),
    };
    let handshake = async {
        B::set_liveness(&stream, ctx.cfg.peer_dead_timeout)?;
        let hello = Bytes::copy_from_slice(&ctx.hello(HelloStatus::Hello));
        let (result, _) = stream.write_all_vectored(vec![hello]).await;
        result?;
        read_at_least(&stream, BytesMut::with_capacity(HELLO_BYTES), HELLO_BYTES).await
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    let buf = match io_timeout(ctx, &stream, left, handshake).await {
        Some(result) => result?,
        None => return Err(handshake_timed_out(ctx, out)),
    };
    let refuse = |reason: String| {
        tracing::warn!(node = ctx.cfg.node_id, peer = out.node_id, addr = %out.addr, "peer handshake failed: {reason}");
        stream.close();
        Err(io::Error::new(io::ErrorKind::ConnectionRefused, reason))
    };
    let hello = match Hello::decode(&buf[..HELLO_BYTES]) {
        Ok(hello) => hello,
        Err(err) => return refuse(format!("bad handshake: {err}")),
    };
    if buf.len() > HELLO_BYTES {
        return refuse("bytes after the handshake on an outbound connection".into());
    }
    match hello.status {
        HelloStatus::Hello => {}
        HelloStatus::RefusedCluster => {
            return refuse(format!(
                "refused us: its cluster id is {}",
                hello.cluster_id
            ))
        }
        HelloStatus::RefusedVersion => {
            return refuse(format!("refused our protocol version {PROTOCOL_VERSION}"))
        }
        HelloStatus::RefusedNode => {
            return refuse(format!("refused our node id {}", ctx.cfg.node_id))
        }
    }
    if hello.version != PROTOCOL_VERSION {
        return refuse(format!(
            "speaks protocol version {}, we speak {PROTOCOL_VERSION}",
            hello.version
        ));
    }
    if hello.cluster_id != ctx.cfg.cluster_id {
        return refuse(format!(
            "cluster id {} is not ours ({})",
            hello.cluster_id, ctx.cfg.cluster_id
        ));
    }
    if hello.node_id != out.node_id {
        return refuse(format!(
            "answered as node {}, expected node {}",
            hello.node_id, out.node_id
        ));
    }
    out.max_frame_bytes.set(
        hello
            .max_frame_bytes
            .min(crate::frame::MAX_FRAME_BYTES_LIMIT),
    );
    Ok(stream)
}

/// Reads until `buf` holds at least `n` bytes (EOF first is `UnexpectedEof`).
async fn read_at_least<S: Stream>(stream: &S, mut buf: BytesMut, n: usize) -> io::Result<BytesMut> {
    while buf.len() < n {
        buf.reserve(n - buf.len());
        let (result, returned) = stream.read_some(buf).await;
        buf = returned;
        if result? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(buf)
}

/// Writes queued frames to a connected peer until the connection fails.
async fn write_loop<S: Stream>(ctx: &Rc<Ctx>, peer: usize, stream: &Rc<S>) {
    let out = &ctx.peers[peer];
    let counters = ctx.counters(peer);
    let dead = Rc::new(Notify::new());
    let watcher = tokio::task::spawn_local(watch_outbound(
        ctx.clone(),
        peer,
        stream.clone(),
        dead.clone(),
    ));
    loop {
        while out.queue.borrow().is_empty() && !ctx.stopping.get() {
            tokio::select! {
                biased;
                _ = dead.notified() => {
                    // The watcher's read ended (that is what it notifies).
                    let _ = watcher.await;
                    return;
                }
                _ = out.wake.notified() => {}
            }
        }
        if ctx.stopping.get() {
            // Its read ends once the stream is shut down; it is never dropped in flight.
            stream.close();
            let _ = watcher.await;
            return;
        }
        let (bufs, frames, bytes) = take_write(ctx, peer);
        ctx.writes_in_flight.set(ctx.writes_in_flight.get() + 1);
        let (result, _) = stream.write_all_vectored(bufs).await;
        ctx.writes_in_flight.set(ctx.writes_in_flight.get() - 1);
        if ctx.stopping.get() && ctx.writes_in_flight.get() == 0 {
            ctx.writes_idle.notify_one();
        }
        match result {
            Ok(()) => {
                add(&counters.frames_sent, frames);
                add(&counters.bytes_sent, bytes);
                bump(&counters.writes);
            }
            Err(err) => {
                add(&counters.lost_on_disconnect_frames, frames);
                tracing::warn!(node = ctx.cfg.node_id, peer = out.node_id, %err, frames, "write to peer failed; reconnecting");
                stream.close();
                let _ = watcher.await;
                return;
            }
        }
    }
}

/// Pops frames for one write (up to `write_batch_bytes_max`, at least one): small frames are
/// copied into one buffer, large ones go as their own iovec. Returns (buffers, frames, bytes).
/// The frames leave the queue here, before the write starts, so pushes that drop stale frames
/// while the write is in progress cannot touch them.
fn take_write(ctx: &Ctx, peer: usize) -> (Vec<Bytes>, u64, u64) {
    let out = &ctx.peers[peer];
    let mut queue = out.queue.borrow_mut();
    assert!(!queue.is_empty());
    let threshold = ctx.cfg.copy_threshold_bytes;
    let mut frames = Vec::new();
    let mut total = 0usize;
    let mut small = 0usize;
    while let Some(front) = queue.front() {
        if !frames.is_empty() && total + front.len() > ctx.cfg.write_batch_bytes_max {
            break;
        }
        let frame = queue.pop_front().expect("front exists");
        total += frame.len();
        if frame.len() < threshold {
            small += frame.len();
        }
        frames.push(frame);
    }
    ctx.publish_queue(peer, &queue);
    drop(queue);
    let frame_count = frames.len() as u64;
    if small == total && frames.len() == 1 {
        return (frames, frame_count, total as u64);
    }
    let mut chunk = BytesMut::with_capacity(small);
    let mut bufs = Vec::new();
    for frame in frames {
        if frame.len() < threshold {
            chunk.extend_from_slice(&frame);
        } else {
            if !chunk.is_empty() {
                bufs.push(chunk.split().freeze());
            }
            bufs.push(frame);
        }
    }
    if !chunk.is_empty() {
        bufs.push(chunk.freeze());
    }
    assert_eq!(bufs.iter().map(|b| b.len()).sum::<usize>(), total);
    (bufs, frame_count, total as u64)
}

/// Reads the outbound connection: the peer never sends after the handshake, so EOF or an error
/// means the connection is gone, and bytes are a protocol error. Either way `dead` is notified.
async fn watch_outbound<S: Stream>(ctx: Rc<Ctx>, peer: usize, stream: Rc<S>, dead: Rc<Notify>) {
    let (result, _) = stream.read_some(BytesMut::with_capacity(64)).await;
    match result {
        Ok(0) => tracing::info!(
            node = ctx.cfg.node_id,
            peer = ctx.peers[peer].node_id,
            "peer closed our connection"
        ),
        Ok(n) => {
            bump(&ctx.counters(peer).protocol_errors);
            tracing::warn!(
                node = ctx.cfg.node_id,
                peer = ctx.peers[peer].node_id,
                n,
                "peer sent bytes on our outbound connection; closing"
            );
        }
        Err(err) => {
            tracing::info!(node = ctx.cfg.node_id, peer = ctx.peers[peer].node_id, %err, "outbound connection failed")
        }
    }
    dead.notify_one();
}

// ---------------------------------------------------------------------------------------------
// Inbound

async fn accept_loop<B: Backend>(ctx: Rc<Ctx>, listener: Rc<B::Listener>) {
    loop {
        let accepted = B::accept(&listener).await;
        if ctx.stopping.get() {
            // Shutdown shut the listener down, which ended this accept.
            if let Ok((stream, _)) = accepted {
                stream.close();
            }
            return;
        }
        match accepted {
            Ok((stream, addr)) => {
                bump(&ctx.stats.connections_accepted);
                if ctx.inbound_live.get() >= INBOUND_CONNECTIONS_MAX {
                    tracing::warn!(node = ctx.cfg.node_id, %addr, "too many inbound connections; closing the new one");
                    stream.close();
                    continue;
                }
                ctx.spawn_io(serve_inbound::<B>(ctx.clone(), stream, addr));
            }
            Err(err) => {
                // EMFILE and friends: wait a little instead of spinning.
                tracing::warn!(node = ctx.cfg.node_id, %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Decrements the live inbound count when a connection task ends (however it ends).
struct InboundSlot(Rc<Ctx>);

impl Drop for InboundSlot {
    fn drop(&mut self) {
        self.0.inbound_live.set(self.0.inbound_live.get() - 1);
    }
}

async fn serve_inbound<B: Backend>(ctx: Rc<Ctx>, stream: B::Stream, addr: SocketAddr) {
    ctx.inbound_live.set(ctx.inbound_live.get() + 1);
    let _slot = InboundSlot(ctx.clone());
    let stream = Rc::new(stream);
    let _live = ctx.register(&stream);
    let Some((peer, buf)) = accept_handshake(&ctx, &*stream, addr).await else {
        stream.close();
        return;
    };
    if ctx.inbound_per_peer.borrow()[peer] >= INBOUND_PER_PEER_MAX {
        // A peer keeps one connection to us; a few more can linger across its restarts.
        bump(&ctx.stats.handshakes_refused);
        tracing::warn!(node = ctx.cfg.node_id, %addr, peer = ctx.peers[peer].node_id, "too many connections from this peer; closing the new one");
        stream.close();
        return;
    }
    ctx.inbound_per_peer.borrow_mut()[peer] += 1;
    let _peer_slot = PeerInboundSlot(ctx.clone(), peer);
    if ctx.peers[peer].backing_off.get() {
        // Our connection to it is down and waiting out a backoff: the peer is back.
        ctx.peers[peer].peer_back.notify_one();
    }
    if let Err(err) = B::set_liveness(&stream, ctx.cfg.peer_dead_timeout) {
        tracing::warn!(node = ctx.cfg.node_id, %addr, %err, "cannot set keepalive on an inbound connection");
    }
    read_loop(&ctx, peer, &*stream, buf).await;
    stream.close();
}

/// Authenticated inbound connections one peer may hold at once.
const INBOUND_PER_PEER_MAX: usize = 8;

/// Decrements a peer's inbound connection count when its connection task ends.
struct PeerInboundSlot(Rc<Ctx>, usize);

impl Drop for PeerInboundSlot {
    fn drop(&mut self) {
        self.0.inbound_per_peer.borrow_mut()[self.1] -= 1;
    }
}

/// The server side of the handshake. Returns the peer index and any bytes read past the hello.
async fn accept_handshake<S: Stream>(
    ctx: &Ctx,
    stream: &S,
    addr: SocketAddr,
) -> Option<(usize, BytesMut)> {
    let read = read_at_least(
        stream,
        BytesMut::with_capacity(HELLO_BYTES * 2),
        HELLO_BYTES,
    );
    let mut buf = match io_timeout(ctx, stream, ctx.cfg.handshake_timeout, read).await {
        Some(Ok(buf)) => buf,
        Some(Err(err)) => {
            bump(&ctx.stats.handshake_errors);
            tracing::warn!(node = ctx.cfg.node_id, %addr, %err, "connection closed before its handshake");
            return None;
        }
        None => {
            bump(&ctx.stats.handshake_timeouts);
            tracing::warn!(node = ctx.cfg.node_id, %addr, "handshake timed out; closing");
            return None;
        }
    };
    let hello = match Hello::decode(&buf[..HELLO_BYTES]) {
        Ok(hello) if hello.status == HelloStatus::Hello => hello,
        Ok(hello) => {
            bump(&ctx.stats.handshake_errors);
            if let Some(suppressed) = ctx.handshake_garbage_log.borrow_mut().admit(Instant::now()) {
                tracing::warn!(node = ctx.cfg.node_id, %addr, status = ?hello.status, suppressed, "handshake opened with a refusal; closing ({suppressed} more connections that opened without a handshake not logged since the last line)");
            }
            return None;
        }
        Err(err) => {
            bump(&ctx.stats.handshake_errors);
            if let Some(suppressed) = ctx.handshake_garbage_log.borrow_mut().admit(Instant::now()) {
                tracing::warn!(node = ctx.cfg.node_id, %addr, %err, suppressed, "not a paxring handshake; closing ({suppressed} more connections that opened without a handshake not logged since the last line)");
            }
            return None;
        }
    };
    let peer = ctx.peer_index.get(&hello.node_id).copied();
    let refusal = if hello.version != PROTOCOL_VERSION {
        Some((
            HelloStatus::RefusedVersion,
            format!(
                "protocol version {} is not supported (we speak {PROTOCOL_VERSION})",
                hello.version
            ),
        ))
    } else if hello.cluster_id != ctx.cfg.cluster_id {
        Some((
            HelloStatus::RefusedCluster,
            format!(
                "cluster id {} is not ours ({})",
                hello.cluster_id, ctx.cfg.cluster_id
            ),
        ))
    } else if peer.is_none() {
        Some((
            HelloStatus::RefusedNode,
            format!("node id {} is not a configured peer", hello.node_id),
        ))
    } else {
        None
    };
    let reply = Bytes::copy_from_slice(
        &ctx.hello(
            refusal
                .as_ref()
                .map_or(HelloStatus::Hello, |(status, _)| *status),
        ),
    );
    let written = io_timeout(
        ctx,
        stream,
        ctx.cfg.handshake_timeout,
        stream.write_all_vectored(vec![reply]),
    )
    .await;
    if let Some((_, reason)) = refusal {
        bump(&ctx.stats.handshakes_refused);
        tracing::warn!(node = ctx.cfg.node_id, %addr, from = hello.node_id, "handshake refused: {reason}");
        return None;
    }
    match written {
        Some((Ok(()), _)) => {}
        Some((Err(err), _)) => {
            tracing::warn!(node = ctx.cfg.node_id, %addr, %err, "handshake reply failed");
            return None;
        }
        None => {
            bump(&ctx.stats.handshake_timeouts);
            tracing::warn!(node = ctx.cfg.node_id, %addr, "handshake reply timed out");
            return None;
        }
    }
    let peer = peer.expect("checked above");
    tracing::info!(node = ctx.cfg.node_id, %addr, from = hello.node_id, "inbound peer connection authenticated");
    buf.advance(HELLO_BYTES);
    Some((peer, buf))
}

/// Reads, decodes and routes the frames of one authenticated inbound connection until it ends.
async fn read_loop<S: Stream>(ctx: &Ctx, peer: usize, stream: &S, mut buf: BytesMut) {
    let peer_id = ctx.peers[peer].node_id;
    let counters = ctx.counters(peer);
    let mut decoder = Decoder::new(ctx.cfg.max_frame_bytes);
    let mut touched = vec![false; ctx.inboxes.len()];
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    if frame.from != peer_id {
                        bump(&counters.protocol_errors);
                        if let Some(suppressed) = garbage_admit(ctx, peer) {
                            tracing::warn!(
                                node = ctx.cfg.node_id,
                                peer = peer_id,
                                claimed = frame.from,
                                suppressed,
                                "frame claims another sender than the handshake; closing ({suppressed} more warnings about garbage from this peer not logged since the last line)"
                            );
                        }
                        signal_touched(ctx, &mut touched);
                        return;
                    }
                    deliver(ctx, counters, frame, &mut touched).await;
                }
                Ok(None) => break,
                Err(err) => {
                    bump(&counters.decode_errors);
                    if let Some(suppressed) = garbage_admit(ctx, peer) {
                        tracing::warn!(node = ctx.cfg.node_id, peer = peer_id, %err, suppressed, "undecodable bytes from peer; closing ({suppressed} more warnings about garbage from this peer not logged since the last line)");
                    }
                    signal_touched(ctx, &mut touched);
                    return;
                }
            }
        }
        signal_touched(ctx, &mut touched);
        let needed = decoder.bytes_needed(&buf);
        let additional = needed.saturating_sub(buf.len()).max(READ_CHUNK_BYTES / 4);
        if buf.capacity() - buf.len() < additional {
            buf.reserve(additional.max(READ_CHUNK_BYTES));
        }
        let (result, returned) = stream.read_some(buf).await;
        buf = returned;
        match result {
            Ok(0) if buf.is_empty() => {
                tracing::info!(
                    node = ctx.cfg.node_id,
                    peer = peer_id,
                    "peer closed its connection"
                );
                return;
            }
            Ok(0) => {
                bump(&counters.decode_errors);
                if let Some(suppressed) = garbage_admit(ctx, peer) {
                    tracing::warn!(
                        node = ctx.cfg.node_id,
                        peer = peer_id,
                        bytes = buf.len(),
                        suppressed,
                        "connection ended inside a frame (truncated) ({suppressed} more warnings about garbage from this peer not logged since the last line)"
                    );
                }
                return;
            }
            Ok(_) => {}
            Err(err) => {
                tracing::info!(node = ctx.cfg.node_id, peer = peer_id, %err, "inbound connection failed");
                return;
            }
        }
    }
}

/// One warning about garbage from `peer`: `Some(warnings held back since the last line)` when
/// it may be logged now (see [`LogLimiter`]).
fn garbage_admit(ctx: &Ctx, peer: usize) -> Option<u64> {
    ctx.peers[peer]
        .garbage_log
        .borrow_mut()
        .admit(Instant::now())
}

fn signal_touched(ctx: &Ctx, touched: &mut [bool]) {
    for (core, flag) in touched.iter_mut().enumerate() {
        if std::mem::take(flag) {
            ctx.inboxes[core].signal();
        }
    }
}

/// Routes one frame to its core's inbox, waiting (and so not reading) while that inbox is full.
async fn deliver(ctx: &Ctx, counters: &AtomicCounters, frame: Frame, touched: &mut [bool]) {
    let Some(core) = (ctx.route)(frame.group) else {
        bump(&counters.unknown_group_frames);
        tracing::debug!(
            node = ctx.cfg.node_id,
            group = frame.group,
            "frame for an unknown group dropped"
        );
        return;
    };
    if core >= ctx.inboxes.len() {
        bump(&counters.unknown_group_frames);
        tracing::error!(
            group = frame.group,
            core,
            cores = ctx.inboxes.len(),
            "route returned a core that does not exist; frame dropped"
        );
        return;
    }
    let bytes = (FRAME_HEADER_BYTES + frame.body.len()) as u64;
    let inbox = &ctx.inboxes[core];
    let mut frame = frame;
    let mut stalled = false;
    loop {
        match inbox.try_push(frame) {
            Ok(()) => {
                bump(&counters.frames_received);
                add(&counters.bytes_received, bytes);
                touched[core] = true;
                return;
            }
            Err(PushError::Full(back)) => {
                frame = back;
                if !stalled {
                    stalled = true;
                    bump(&counters.queue_full_events);
                }
                // Wake every core we fed, then stop reading until this one makes room.
                signal_touched(ctx, touched);
                inbox.signal();
                inbox.space().await;
            }
            Err(PushError::Closed) => {
                bump(&ctx.stats.inbox_closed_dropped_frames);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A frame of `len` bytes whose first byte is `tag` (to tell frames apart).
    fn frame(tag: u8, len: usize) -> Bytes {
        let mut bytes = vec![0u8; len];
        bytes[0] = tag;
        Bytes::from(bytes)
    }

    fn tags(queue: &OutQueue) -> Vec<u8> {
        queue.frames.iter().map(|f| f[0]).collect()
    }

    const LIMITS: QueueLimits = QueueLimits {
        frames: 3,
        bytes: 100,
    };

    #[test]
    fn connected_full_queue_drops_the_new_frame() {
        // Frame bound reached.
        let mut queue = OutQueue::default();
        for tag in 0..3 {
            assert_eq!(
                queue.push(frame(tag, 10), LIMITS, true),
                Pushed::Queued { dropped_stale: 0 }
            );
        }
        assert_eq!(queue.push(frame(3, 10), LIMITS, true), Pushed::DroppedNew);
        assert_eq!(tags(&queue), [0, 1, 2], "what is queued is kept");
        assert_eq!((queue.len(), queue.bytes()), (3, 30));
        // Byte bound reached (the frame bound is not).
        let mut queue = OutQueue::default();
        queue.push(frame(0, 60), LIMITS, true);
        assert_eq!(queue.push(frame(1, 41), LIMITS, true), Pushed::DroppedNew);
        assert_eq!(
            queue.push(frame(2, 40), LIMITS, true),
            Pushed::Queued { dropped_stale: 0 },
            "exactly at the byte bound fits"
        );
        assert_eq!(tags(&queue), [0, 2]);
        assert_eq!(queue.bytes(), 100);
    }

    #[test]
    fn disconnected_full_queue_drops_the_oldest_frames_until_the_new_one_fits() {
        // Frame bound: one stale frame makes room.
        let mut queue = OutQueue::default();
        for tag in 0..3 {
            queue.push(frame(tag, 10), LIMITS, false);
        }
        assert_eq!(
            queue.push(frame(3, 10), LIMITS, false),
            Pushed::Queued { dropped_stale: 1 }
        );
        assert_eq!(tags(&queue), [1, 2, 3]);
        assert_eq!(queue.bytes(), 30);
        // Byte bound: a big frame pushes out as many old ones as it needs, oldest first.
        assert_eq!(
            queue.push(frame(4, 85), LIMITS, false),
            Pushed::Queued { dropped_stale: 2 }
        );
        assert_eq!(tags(&queue), [3, 4]);
        assert_eq!((queue.len(), queue.bytes()), (2, 95));
        assert_eq!(
            queue.push(frame(5, 100), LIMITS, false),
            Pushed::Queued { dropped_stale: 2 }
        );
        assert_eq!(tags(&queue), [5]);
        assert_eq!(queue.bytes(), 100);
    }

    #[test]
    fn a_frame_larger_than_the_byte_bound_never_fits_and_evicts_nothing() {
        for connected in [false, true] {
            let mut queue = OutQueue::default();
            queue.push(frame(0, 10), LIMITS, connected);
            assert_eq!(
                queue.push(frame(1, 101), LIMITS, connected),
                Pushed::NeverFits
            );
            assert_eq!(tags(&queue), [0]);
            assert_eq!(queue.bytes(), 10);
        }
    }

    #[test]
    fn a_frame_taken_by_the_writer_is_not_touched_by_later_pushes() {
        let mut queue = OutQueue::default();
        for tag in 0..3 {
            queue.push(frame(tag, 30), LIMITS, false);
        }
        // The writer takes the oldest frame for a write that is now in progress.
        let in_flight = queue.pop_front().unwrap();
        assert_eq!((queue.len(), queue.bytes()), (2, 60));
        // The peer goes down; new frames push out stale ones, never the one being written.
        for tag in 3..6 {
            queue.push(frame(tag, 50), LIMITS, false);
        }
        assert_eq!(tags(&queue), [4, 5]);
        assert_eq!(queue.bytes(), 100);
        assert_eq!((in_flight[0], in_flight.len()), (0, 30));
    }

    proptest! {
        /// Against a model: the byte count stays exact, both bounds hold, a full queue drops
        /// the new frame while connected and the oldest frames (only as many as needed) while
        /// disconnected.
        #[test]
        fn out_queue_matches_its_model(
            ops in proptest::collection::vec((0usize..4, 4usize..60, any::<bool>()), 1..200),
        ) {
            let limits = QueueLimits { frames: 5, bytes: 120 };
            let mut queue = OutQueue::default();
            // (frame id, length), oldest first.
            let mut model: VecDeque<(u32, usize)> = VecDeque::new();
            let id_of = |f: &Bytes| u32::from_le_bytes(f[..4].try_into().unwrap());
            for (next_id, (op, len, connected)) in (0u32..).zip(ops) {
                if op == 0 {
                    let popped = queue.pop_front().map(|f| (id_of(&f), f.len()));
                    prop_assert_eq!(popped, model.pop_front());
                } else {
                    let mut bytes = vec![0u8; len];
                    bytes[..4].copy_from_slice(&next_id.to_le_bytes());
                    let fits = |m: &VecDeque<(u32, usize)>| {
                        m.len() < limits.frames
                            && m.iter().map(|e| e.1).sum::<usize>() + len <= limits.bytes
                    };
                    let expected = if fits(&model) {
                        model.push_back((next_id, len));
                        Pushed::Queued { dropped_stale: 0 }
                    } else if connected {
                        Pushed::DroppedNew
                    } else {
                        let mut dropped_stale = 0;
                        while !fits(&model) {
                            model.pop_front();
                            dropped_stale += 1;
                        }
                        model.push_back((next_id, len));
                        Pushed::Queued { dropped_stale }
                    };
                    prop_assert_eq!(queue.push(Bytes::from(bytes), limits, connected), expected);
                }
                let got: Vec<(u32, usize)> =
                    queue.frames.iter().map(|f| (id_of(f), f.len())).collect();
                prop_assert_eq!(&got, &Vec::from(model.clone()));
                prop_assert_eq!(queue.bytes(), got.iter().map(|e| e.1).sum::<usize>());
                prop_assert!(queue.len() <= limits.frames);
                prop_assert!(queue.bytes() <= limits.bytes);
            }
        }
    }

    #[test]
    fn oversize_log_is_limited_to_one_line_per_second_and_counts_the_rest() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut limiter = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(limiter.admit(at(0)), Some(0), "the first drop is logged");
        assert_eq!(limiter.admit(at(1)), None);
        assert_eq!(limiter.admit(at(500)), None);
        assert_eq!(limiter.admit(at(999)), None);
        assert_eq!(
            limiter.admit(at(1000)),
            Some(3),
            "the next line counts what was held back"
        );
        assert_eq!(limiter.admit(at(1500)), None);
        assert_eq!(limiter.admit(at(5000)), Some(1));
        assert_eq!(limiter.admit(at(5001)), None);
        // Another peer has its own limiter: its first drop is logged at once.
        let mut other = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(other.admit(at(5002)), Some(0));
    }

    #[test]
    fn backoff_grows_exponentially_is_capped_and_jittered() {
        let min = Duration::from_millis(10);
        let max = Duration::from_secs(2);
        let mut state = 0x1234_5678_9abc_def1;
        let mut seen_distinct = std::collections::BTreeSet::new();
        for attempt in 0..40u32 {
            let ceiling = min.saturating_mul(1u32 << attempt.min(20)).min(max);
            for _ in 0..50 {
                let delay = backoff_delay(min, max, attempt, &mut state);
                assert!(
                    delay >= ceiling / 2,
                    "attempt {attempt}: {delay:?} below half of {ceiling:?}"
                );
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} above {ceiling:?}"
                );
                seen_distinct.insert(delay);
            }
        }
        assert!(seen_distinct.len() > 100, "jitter varies the delay");
        assert!(backoff_delay(min, max, 1000, &mut state) <= max);
    }
}
