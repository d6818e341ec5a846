//! Proves the network thread's behaviour over real loopback sockets (127.0.0.1 only), on both
//! backends (io_uring when the kernel allows it, and epoll):
//! two nodes exchange frames for many groups, exactly once and in order per connection; a peer
//! restart is survived by reconnecting without duplicate delivery; a foreign cluster id, a
//! handshake that never finishes, random bytes, garbage frames and a frame with a forged sender
//! are refused and counted while the node keeps working; unknown groups are counted and dropped;
//! a full inbox stops reading without losing frames; a down peer costs bounded memory (frames and
//! bytes) and, when it returns, gets the newest frames rather than a stale backlog; a connected
//! peer that stops reading makes new frames drop, within the byte cap; a node
//! that shuts down mid-stream lets its stalled write finish, so peers see whole frames only; a
//! node that shuts down with reads and an accept pending shuts every socket down and ends at
//! once; one peer cannot hold more than eight connections.
//! Every wait is bounded by a deadline.

use bytes::Bytes;
use paxring_net::{
    encode_frame, Backend, Dest, Frame, Hello, HelloStatus, Inbox, NetConfig, NetError, NetHandle,
    NetThread, FRAME_HEADER_BYTES, HELLO_BYTES, PROTOCOL_VERSION,
};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}

fn config(
    cluster_id: u64,
    node_id: u32,
    listen: SocketAddr,
    peers: Vec<(u32, SocketAddr)>,
    backend: Backend,
) -> NetConfig {
    let mut cfg = NetConfig::new(cluster_id, node_id, listen, peers);
    cfg.reconnect_backoff_min = Duration::from_millis(5);
    cfg.reconnect_backoff_max = Duration::from_millis(100);
    cfg.handshake_timeout = Duration::from_secs(2);
    cfg.backend = backend;
    cfg
}

/// The backends to test: epoll always, io_uring when this kernel allows it.
fn backends() -> Vec<Backend> {
    let addr = free_addrs(1)[0];
    let mut out = vec![Backend::Epoll];
    match NetThread::start(
        config(1, 1, addr, vec![], Backend::IoUring),
        1,
        route_mod(1),
    ) {
        Ok((thread, _, _)) => {
            thread.shutdown();
            out.push(Backend::IoUring);
        }
        Err(NetError::UringUnavailable { source }) => {
            eprintln!("io_uring unavailable here ({source}); testing epoll only")
        }
        Err(err) => panic!("unexpected start error: {err}"),
    }
    out
}

fn route_mod(cores: usize) -> Arc<dyn Fn(u32) -> Option<usize> + Send + Sync> {
    Arc::new(move |group| Some(group as usize % cores))
}

struct Node {
    thread: NetThread,
    handle: NetHandle,
    inboxes: Vec<Inbox>,
}

fn start(
    cfg: NetConfig,
    cores: usize,
    route: Arc<dyn Fn(u32) -> Option<usize> + Send + Sync>,
) -> Node {
    let (thread, handle, inboxes) = NetThread::start(cfg, cores, route).expect("start");
    Node {
        thread,
        handle,
        inboxes,
    }
}

/// Drains `inboxes` until `want` frames arrived or the deadline passes.
fn collect(inboxes: &mut [Inbox], want: usize, deadline: Duration) -> Vec<Frame> {
    let end = Instant::now() + deadline;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < end {
        let mut any = false;
        for inbox in inboxes.iter_mut() {
            if inbox.drain(&mut out, 4096) > 0 {
                any = true;
            }
        }
        if !any {
            inboxes[0].wait(Duration::from_millis(2));
        }
    }
    out
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn body(seq: u64, len: usize) -> Vec<u8> {
    let mut body = seq.to_le_bytes().to_vec();
    body.resize(len.max(8), (seq % 251) as u8);
    body
}

fn seq_of(frame: &Frame) -> u64 {
    u64::from_le_bytes(frame.body[..8].try_into().unwrap())
}

/// Sends, in batches of `batch` frames, `count` frames to `dest`, group = i % groups, retrying
/// batches refused by back-pressure.
fn send_numbered(
    handle: &NetHandle,
    from: u32,
    dest: Dest,
    start_seq: u64,
    count: u64,
    groups: u32,
    batch: usize,
) {
    let mut seq = start_seq;
    while seq < start_seq + count {
        let mut frames = Vec::with_capacity(batch);
        while frames.len() < batch && seq < start_seq + count {
            let group = (seq % u64::from(groups)) as u32;
            frames.push((
                dest,
                encode_frame(3, group, from, &body(seq, 8 + (seq % 300) as usize)),
            ));
            seq += 1;
        }
        let mut pending = frames;
        while let Err(back) = handle.send_batch(pending) {
            pending = back;
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fn wait_connected(handle: &NetHandle) {
    wait_until("all peers connected", || {
        handle.stats().peers.iter().all(|p| p.connected)
    });
}

#[test]
fn two_nodes_exchange_frames_for_many_groups_exactly_once_in_order() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let mut a = start(
            config(7, 1, addrs[0], vec![(2, addrs[1])], backend),
            3,
            route_mod(3),
        );
        let mut b = start(
            config(7, 2, addrs[1], vec![(1, addrs[0])], backend),
            2,
            route_mod(2),
        );
        assert_eq!(a.handle.local_addr(), addrs[0]);
        wait_connected(&a.handle);
        wait_connected(&b.handle);
        let count = 20_000u64;
        let groups = 1000u32;
        let sender_a = a.handle.clone();
        let sender_b = b.handle.clone();
        let ta = std::thread::spawn(move || {
            send_numbered(&sender_a, 1, Dest::Peer(2), 0, count, groups, 64)
        });
        let tb = std::thread::spawn(move || {
            send_numbered(&sender_b, 2, Dest::AllPeers, 0, count, groups, 64)
        });
        let at_b = collect(&mut b.inboxes, count as usize, DEADLINE);
        let at_a = collect(&mut a.inboxes, count as usize, DEADLINE);
        ta.join().unwrap();
        tb.join().unwrap();
        for (frames, from) in [(&at_b, 1u32), (&at_a, 2u32)] {
            assert_eq!(
                frames.len(),
                count as usize,
                "{backend:?}: every frame arrives"
            );
            // Per group (so per core and connection) the sequence increases: in order, no duplicate.
            let mut last: HashMap<u32, u64> = HashMap::new();
            for frame in frames.iter() {
                assert_eq!(frame.from, from);
                assert_eq!(frame.kind, 3);
                let seq = seq_of(frame);
                assert_eq!(frame.group, (seq % u64::from(groups)) as u32);
                assert_eq!(
                    &frame.body[..],
                    &body(seq, 8 + (seq % 300) as usize)[..],
                    "body intact"
                );
                if let Some(prev) = last.insert(frame.group, seq) {
                    assert_eq!(
                        seq,
                        prev + u64::from(groups),
                        "group {} out of order",
                        frame.group
                    );
                }
            }
            assert_eq!(last.len(), groups as usize);
        }
        let sa = a.handle.stats();
        let sb = b.handle.stats();
        assert_eq!(
            sa.backend,
            if backend == Backend::Epoll {
                "epoll"
            } else {
                "io_uring"
            }
        );
        assert_eq!(sa.totals.frames_sent, count);
        assert_eq!(sb.totals.frames_received, count);
        assert_eq!(sb.totals.frames_sent, count);
        assert_eq!(sa.totals.frames_received, count);
        assert!(
            sa.totals.writes < count,
            "frames are coalesced into fewer writes"
        );
        assert_eq!(sa.totals.decode_errors + sb.totals.decode_errors, 0);
        a.thread.shutdown();
        b.thread.shutdown();
    }
}

#[test]
fn frames_reach_the_core_that_owns_their_group() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let a = start(
            config(7, 1, addrs[0], vec![(2, addrs[1])], backend),
            1,
            route_mod(1),
        );
        let mut b = start(
            config(7, 2, addrs[1], vec![(1, addrs[0])], backend),
            4,
            route_mod(4),
        );
        wait_connected(&a.handle);
        send_numbered(&a.handle, 1, Dest::Peer(2), 0, 400, 40, 16);
        let end = Instant::now() + DEADLINE;
        let mut got = 0;
        while got < 400 && Instant::now() < end {
            for (core, inbox) in b.inboxes.iter_mut().enumerate() {
                let mut out = Vec::new();
                got += inbox.drain(&mut out, 1000);
                for frame in out {
                    assert_eq!(
                        frame.group as usize % 4,
                        core,
                        "group {} on core {core}",
                        frame.group
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(got, 400);
        let _ = a.inboxes.len();
        a.thread.shutdown();
        b.thread.shutdown();
    }
}

#[test]
fn peer_restart_reconnects_without_duplicates() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let cfg_b = config(7, 2, addrs[1], vec![(1, addrs[0])], backend);
        let a = start(
            config(7, 1, addrs[0], vec![(2, addrs[1])], backend),
            1,
            route_mod(1),
        );
        let mut b = start(cfg_b.clone(), 1, route_mod(1));
        wait_connected(&a.handle);
        send_numbered(&a.handle, 1, Dest::Peer(2), 0, 1000, 10, 50);
        let first = collect(&mut b.inboxes, 1000, DEADLINE);
        assert_eq!(first.len(), 1000);
        b.thread.shutdown();
        drop(b.inboxes);
        wait_until("A notices B is gone", || {
            !a.handle.stats().peers[0].connected
        });
        // While B is down: frames queue (bounded) or are lost on the dead connection.
        send_numbered(&a.handle, 1, Dest::Peer(2), 1000, 500, 10, 50);
        let mut b2 = start(cfg_b, 1, route_mod(1));
        wait_connected(&a.handle);
        send_numbered(&a.handle, 1, Dest::Peer(2), 1500, 1000, 10, 50);
        // Everything after the reconnect arrives; what was queued during the outage may too.
        let end = Instant::now() + DEADLINE;
        let mut second = Vec::new();
        while Instant::now() < end && !second.iter().any(|f: &Frame| seq_of(f) == 2499) {
            second.extend(collect(
                &mut b2.inboxes,
                usize::MAX,
                Duration::from_millis(50),
            ));
        }
        let seqs: Vec<u64> = second.iter().map(seq_of).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "no duplicate, in order, within the new connection"
        );
        for seq in 1500..2500 {
            assert!(
                seqs.binary_search(&seq).is_ok(),
                "frame {seq} sent after reconnect arrived"
            );
        }
        let stats = a.handle.stats();
        assert!(stats.peers[0].counters.reconnects >= 1, "{stats:?}");
        let sent = stats.peers[0].counters.frames_sent;
        let lost = stats.peers[0].counters.lost_on_disconnect_frames
            + stats.peers[0].counters.outbound_dropped_frames
            + stats.peers[0].counters.outbound_dropped_stale_frames;
        assert!(
            sent + lost >= 2500,
            "every frame is sent or counted as lost: {stats:?}"
        );
        a.thread.shutdown();
        b2.thread.shutdown();
    }
}

#[test]
fn foreign_cluster_is_refused_with_reason_and_counted() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let a = start(
            config(7, 1, addrs[0], vec![(2, addrs[1])], backend),
            1,
            route_mod(1),
        );
        let b = start(
            config(8, 2, addrs[1], vec![(1, addrs[0])], backend),
            1,
            route_mod(1),
        );
        wait_until("both sides refuse", || {
            a.handle.stats().handshakes_refused >= 1 && b.handle.stats().handshakes_refused >= 1
        });
        assert!(!a.handle.stats().peers[0].connected);
        assert!(!b.handle.stats().peers[0].connected);
        wait_until("connect failures counted", || {
            a.handle.stats().peers[0].counters.connect_failures >= 1
        });

        // A raw client claiming a foreign cluster gets a refusal naming the reason, then EOF.
        let mut client = TcpStream::connect(addrs[0]).unwrap();
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            status: HelloStatus::Hello,
            cluster_id: 99,
            node_id: 2,
            max_frame_bytes: 1024,
        };
        client.write_all(&hello.encode()).unwrap();
        let mut reply = [0u8; HELLO_BYTES];
        client.read_exact(&mut reply).unwrap();
        let reply = Hello::decode(&reply).unwrap();
        assert_eq!(reply.status, HelloStatus::RefusedCluster);
        assert_eq!(reply.cluster_id, 7);
        let mut rest = Vec::new();
        assert_eq!(
            client.read_to_end(&mut rest).unwrap_or(0),
            0,
            "closed after the refusal"
        );

        // Unsupported version and unknown node are refused too.
        for (version, node_id, status) in [
            (PROTOCOL_VERSION + 1, 2, HelloStatus::RefusedVersion),
            (PROTOCOL_VERSION, 42, HelloStatus::RefusedNode),
        ] {
            let mut client = TcpStream::connect(addrs[0]).unwrap();
            client.set_read_timeout(Some(DEADLINE)).unwrap();
            let hello = Hello {
                version,
                status: HelloStatus::Hello,
                cluster_id: 7,
                node_id,
                max_frame_bytes: 1024,
            };
            client.write_all(&hello.encode()).unwrap();
            let mut reply = [0u8; HELLO_BYTES];
            client.read_exact(&mut reply).unwrap();
            assert_eq!(Hello::decode(&reply).unwrap().status, status);
        }
        a.thread.shutdown();
        b.thread.shutdown();
    }
}

#[test]
fn unknown_group_is_counted_and_dropped() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let a = start(
            config(7, 1, addrs[0], vec![(2, addrs[1])], backend),
            1,
            route_mod(1),
        );
        // B runs groups 0..100 only (a rolling upgrade may add groups on A first).
        let route: Arc<dyn Fn(u32) -> Option<usize> + Send + Sync> =
            Arc::new(|group| (group < 100).then_some(0));
        let mut b = start(
            config(7, 2, addrs[1], vec![(1, addrs[0])], backend),
            1,
            route,
        );
        wait_connected(&a.handle);
        send_numbered(&a.handle, 1, Dest::Peer(2), 0, 2000, 250, 100);
        let got = collect(&mut b.inboxes, 800, DEADLINE);
        assert_eq!(got.len(), 800);
        assert!(got.iter().all(|f| f.group < 100));
        wait_until("unknown groups counted", || {
            b.handle.stats().peers[0].counters.unknown_group_frames == 1200
        });
        assert!(collect(&mut b.inboxes, 1, Duration::from_millis(50)).is_empty());
        assert_eq!(
            b.handle.stats().peers[0].counters.decode_errors,
            0,
            "not an error"
        );
        a.thread.shutdown();
        b.thread.shutdown();
    }
}

/// A raw peer that passes the handshake as node 2, for feeding bad frames.
fn raw_peer(addr: SocketAddr, node_id: u32) -> TcpStream {
    let mut client = TcpStream::connect(addr).unwrap();
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        status: HelloStatus::Hello,
        cluster_id: 7,
        node_id,
        max_frame_bytes: 1024,
    };
    client.write_all(&hello.encode()).unwrap();
    let mut reply = [0u8; HELLO_BYTES];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(Hello::decode(&reply).unwrap().status, HelloStatus::Hello);
    client
}

fn assert_closed(mut client: TcpStream) {
    let mut sink = Vec::new();
    // EOF (Ok) or a reset (Err) both mean the server closed; a timeout would be a failure.
    match client.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(err) => assert!(
            err.kind() != std::io::ErrorKind::WouldBlock
                && err.kind() != std::io::ErrorKind::TimedOut,
            "{err}"
        ),
    }
}

#[test]
fn bad_input_closes_only_that_connection_and_is_counted() {
    for backend in backends() {
        let addrs = free_addrs(3);
        // Node 1 knows peers 2 (a real node) and 3 (played by raw test clients).
        let a_cfg = config(7, 1, addrs[0], vec![(2, addrs[1]), (3, addrs[2])], backend);
        let mut a = start(a_cfg, 1, route_mod(1));
        let b = start(
            config(7, 2, addrs[1], vec![(1, addrs[0])], backend),
            1,
            route_mod(1),
        );
        wait_until("b connected", || b.handle.stats().peers[0].connected);

        // 1. Random bytes instead of a handshake.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..20 {
            let mut client = TcpStream::connect(addrs[0]).unwrap();
            client.set_read_timeout(Some(DEADLINE)).unwrap();
            let garbage: Vec<u8> = (0..(64 + round * 97))
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = client.write_all(&garbage);
            assert_closed(client);
        }
        wait_until("garbage handshakes counted", || {
            a.handle.stats().handshake_errors >= 20
        });

        // 2. A valid handshake, then a frame with a bad body checksum.
        let mut client = raw_peer(addrs[0], 3);
        let mut frame = encode_frame(1, 5, 3, b"payload").to_vec();
        let last = frame.len() - 1;
        frame[last] ^= 0x40;
        client.write_all(&frame).unwrap();
        assert_closed(client);
        wait_until("decode error counted", || {
            a.handle.stats().peers[1].counters.decode_errors == 1
        });

        // 3. An oversize length (with a valid header checksum): refused before the body.
        let mut client = raw_peer(addrs[0], 3);
        let big = encode_frame(1, 5, 3, &vec![0u8; 5 << 20]);
        let _ = client.write_all(&big[..paxring_net::FRAME_HEADER_BYTES]);
        assert_closed(client);
        wait_until("oversize counted", || {
            a.handle.stats().peers[1].counters.decode_errors == 2
        });

        // 4. A frame claiming another sender than the handshake.
        let mut client = raw_peer(addrs[0], 3);
        client.write_all(&encode_frame(1, 5, 2, b"forged")).unwrap();
        assert_closed(client);
        wait_until("protocol error counted", || {
            a.handle.stats().peers[1].counters.protocol_errors == 1
        });

        // 5. A frame cut short at end of stream.
        let mut client = raw_peer(addrs[0], 3);
        let whole = encode_frame(1, 5, 3, b"truncated frame body");
        client.write_all(&whole[..whole.len() - 3]).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_closed(client);
        wait_until("truncation counted", || {
            a.handle.stats().peers[1].counters.decode_errors == 3
        });

        // None of the bad frames reached a core; the good peer still gets through.
        assert!(collect(&mut a.inboxes, 1, Duration::from_millis(20)).is_empty());
        send_numbered(&b.handle, 2, Dest::Peer(1), 0, 100, 10, 10);
        assert_eq!(collect(&mut a.inboxes, 100, DEADLINE).len(), 100);
        a.thread.shutdown();
        b.thread.shutdown();
    }
}

/// Shutdown with a read in flight on each side (an inbound connection that never sends its
/// handshake, an outbound one whose peer never answers) and the accept pending: every socket is
/// shut down (both silent ends see EOF) and the thread ends at once, not after a handshake
/// timeout and not by leaking its runtime (which it does only after 5 s: on io_uring a dropped
/// runtime frees the buffers of operations still in flight, see `Ctx::spawn_io`).
#[test]
fn shutdown_ends_pending_reads_and_accepts_first() {
    for backend in backends() {
        let addrs = free_addrs(1);
        let silent_peer = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut cfg = config(
            8,
            1,
            addrs[0],
            vec![(2, silent_peer.local_addr().unwrap())],
            backend,
        );
        cfg.handshake_timeout = Duration::from_secs(60);
        let a = start(cfg, 1, route_mod(1));
        // Our outbound connection: accepted, never answered.
        silent_peer.set_nonblocking(false).unwrap();
        let (mut outbound, _) = silent_peer.accept().unwrap();
        outbound.set_read_timeout(Some(DEADLINE)).unwrap();
        // An inbound connection that never sends its handshake.
        let inbound = TcpStream::connect(addrs[0]).unwrap();
        inbound.set_read_timeout(Some(DEADLINE)).unwrap();
        wait_until("the inbound connection accepted", || {
            a.handle.stats().connections_accepted == 1
        });
        let began = Instant::now();
        a.thread.shutdown();
        let took = began.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "{backend:?}: shutdown took {took:?} (a handshake timeout is 60 s; the runtime is leaked after 5 s)"
        );
        // The outbound connection had sent its hello: the silent peer reads it, then EOF.
        let mut hello = [0u8; HELLO_BYTES];
        outbound.read_exact(&mut hello).unwrap();
        assert_closed(outbound);
        assert_closed(inbound);
    }
}

#[test]
fn handshake_that_never_finishes_times_out() {
    for backend in backends() {
        let addrs = free_addrs(1);
        let mut cfg = config(7, 1, addrs[0], vec![], backend);
        cfg.handshake_timeout = Duration::from_millis(200);
        let a = start(cfg, 1, route_mod(1));
        let began = Instant::now();
        let mut client = TcpStream::connect(addrs[0]).unwrap();
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        client.write_all(b"PX").unwrap(); // a handshake that stops after 2 bytes
        assert_closed(client);
        assert!(began.elapsed() >= Duration::from_millis(200));
        wait_until("timeout counted", || {
            a.handle.stats().handshake_timeouts == 1
        });
        a.thread.shutdown();
    }
}

#[test]
fn full_inbox_stops_reading_and_loses_nothing() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let a = start(
            config(7, 1, addrs[0], vec![(2, addrs[1])], backend),
            1,
            route_mod(1),
        );
        let mut cfg_b = config(7, 2, addrs[1], vec![(1, addrs[0])], backend);
        cfg_b.inbox_capacity = 8;
        let mut b = start(cfg_b, 1, route_mod(1));
        wait_connected(&a.handle);
        send_numbered(&a.handle, 1, Dest::Peer(2), 0, 3000, 7, 100);
        wait_until("inbox full", || {
            b.handle.stats().peers[0].counters.queue_full_events >= 1
        });
        assert_eq!(b.inboxes[0].len(), 8, "bounded at its capacity");
        let got = collect(&mut b.inboxes, 3000, DEADLINE);
        let seqs: Vec<u64> = got.iter().map(seq_of).collect();
        assert_eq!(
            seqs,
            (0..3000).collect::<Vec<u64>>(),
            "all frames, in order"
        );
        a.thread.shutdown();
        b.thread.shutdown();
    }
}

#[test]
fn down_peer_costs_bounded_memory_and_drops_are_counted() {
    for backend in backends() {
        let addrs = free_addrs(2); // nobody listens on addrs[1]
        let mut cfg = config(7, 1, addrs[0], vec![(2, addrs[1])], backend);
        cfg.outbound_capacity = 100;
        let a = start(cfg, 1, route_mod(1));
        send_numbered(&a.handle, 1, Dest::AllPeers, 0, 1000, 3, 100);
        // The peer is down: the oldest frames make room for new ones.
        wait_until("drops counted", || {
            a.handle.stats().peers[0]
                .counters
                .outbound_dropped_stale_frames
                == 900
        });
        let stats = a.handle.stats();
        assert_eq!(stats.peers[0].outbound_queued_frames, 100);
        assert_eq!(stats.peers[0].counters.outbound_dropped_frames, 0);
        assert_eq!(stats.totals.outbound_dropped_stale_frames, 900);
        assert!(!stats.peers[0].connected);
        wait_until("connect failures counted", || {
            a.handle.stats().peers[0].counters.connect_failures >= 2
        });
        // Frames that are not ours or not whole are refused at the hand-off, not sent.
        a.handle
            .send_batch(vec![
                (Dest::Peer(2), encode_frame(1, 1, 9, b"x")),
                (Dest::Peer(2), Bytes::from_static(b"junk")),
                (Dest::Peer(5), encode_frame(1, 1, 1, b"x")),
            ])
            .unwrap();
        wait_until("invalid frames counted", || {
            a.handle.stats().invalid_outbound_frames == 3
        });
        let handle = a.handle.clone();
        a.thread.shutdown();
        let batch = vec![(Dest::AllPeers, encode_frame(1, 1, 1, b"late"))];
        assert_eq!(
            handle.send_batch(batch.clone()),
            Err(batch),
            "after shutdown the batch comes back"
        );
    }
}

/// Sends `count` frames of `body_len` body bytes to `dest`, numbered from `start_seq`, in
/// batches of `batch`, retrying batches refused by back-pressure.
fn send_sized(
    handle: &NetHandle,
    dest: Dest,
    start_seq: u64,
    count: u64,
    body_len: usize,
    batch: u64,
) {
    let mut seq = start_seq;
    while seq < start_seq + count {
        let end = (seq + batch).min(start_seq + count);
        let mut pending: Vec<(Dest, Bytes)> = (seq..end)
            .map(|s| (dest, encode_frame(3, 0, 1, &body(s, body_len))))
            .collect();
        while let Err(back) = handle.send_batch(pending) {
            pending = back;
            std::thread::sleep(Duration::from_micros(200));
        }
        seq = end;
    }
}

#[test]
fn down_peer_keeps_the_newest_frames_within_the_down_byte_cap() {
    for backend in backends() {
        let addrs = free_addrs(2); // nobody listens on addrs[1] until B starts
        const BODY: usize = 1000;
        const FRAME: usize = FRAME_HEADER_BYTES + BODY;
        let cap = 10 * FRAME + FRAME / 2; // room for ten frames, not eleven
        let mut cfg = config(7, 1, addrs[0], vec![(2, addrs[1])], backend);
        // A connected peer may have 1 MiB queued; a down one keeps only the newest `cap`.
        cfg.outbound_bytes_max = 1 << 20;
        cfg.outbound_down_bytes_max = cap;
        let a = start(cfg, 1, route_mod(1));
        send_sized(&a.handle, Dest::Peer(2), 0, 200, BODY, 20);
        wait_until("stale drops counted", || {
            a.handle.stats().peers[0]
                .counters
                .outbound_dropped_stale_frames
                == 190
        });
        let stats = a.handle.stats();
        let peer = &stats.peers[0];
        assert!(!peer.connected, "{stats:?}");
        assert_eq!(peer.outbound_queued_bytes, (10 * FRAME) as u64, "{stats:?}");
        assert!(peer.outbound_queued_bytes <= cap as u64, "{stats:?}");
        assert_eq!(peer.outbound_queued_frames, 10, "{stats:?}");
        assert_eq!(peer.counters.outbound_dropped_frames, 0, "{stats:?}");
        assert_eq!(stats.totals.outbound_dropped_stale_frames, 190, "{stats:?}");
        // B comes up: A reconnects and sends what it kept, the newest ten frames, in order.
        let mut b = start(
            config(7, 2, addrs[1], vec![(1, addrs[0])], backend),
            1,
            route_mod(1),
        );
        let mut got = collect(&mut b.inboxes, 10, DEADLINE);
        got.extend(collect(
            &mut b.inboxes,
            usize::MAX,
            Duration::from_millis(300),
        ));
        let seqs: Vec<u64> = got.iter().map(seq_of).collect();
        assert_eq!(seqs, (190..200).collect::<Vec<u64>>());
        wait_until("the queue is empty once written", || {
            let stats = a.handle.stats();
            stats.peers[0].outbound_queued_bytes == 0 && stats.peers[0].counters.frames_sent == 10
        });
        a.thread.shutdown();
        b.thread.shutdown();
    }
}

#[test]
fn connected_peer_that_stops_reading_drops_new_frames_within_the_byte_cap() {
    for backend in backends() {
        let addrs = free_addrs(2);
        // Peer 2 is played by this test: it completes the handshake, then never reads.
        let listener = TcpListener::bind(addrs[1]).unwrap();
        listener.set_nonblocking(true).unwrap();
        let cap = 1 << 20;
        let mut cfg = config(7, 1, addrs[0], vec![(2, addrs[1])], backend);
        cfg.outbound_bytes_max = cap;
        // Long enough that the stalled connection is not declared dead during the test.
        cfg.peer_dead_timeout = Duration::from_secs(120);
        let a = start(cfg, 1, route_mod(1));
        let end = Instant::now() + DEADLINE;
        let mut peer = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < end, "node 1 did not connect");
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(err) => panic!("accept: {err}"),
            }
        };
        peer.set_nonblocking(false).unwrap();
        peer.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut hello = [0u8; HELLO_BYTES];
        peer.read_exact(&mut hello).unwrap();
        assert_eq!(Hello::decode(&hello).unwrap().node_id, 1);
        let reply = Hello {
            version: PROTOCOL_VERSION,
            status: HelloStatus::Hello,
            cluster_id: 7,
            node_id: 2,
            max_frame_bytes: 4 << 20,
        };
        peer.write_all(&reply.encode()).unwrap();
        wait_connected(&a.handle);
        // Socket buffers fill, then the queue, then new frames are dropped.
        const BODY: usize = 64 << 10;
        let mut sent = 0u64;
        while a.handle.stats().peers[0].counters.outbound_dropped_frames == 0 {
            assert!(
                Instant::now() < end,
                "no frame dropped: {:?}",
                a.handle.stats()
            );
            send_sized(&a.handle, Dest::Peer(2), sent, 4, BODY, 4);
            sent += 4;
        }
        let stats = a.handle.stats();
        let p = &stats.peers[0];
        assert!(p.connected, "{stats:?}");
        assert!(p.counters.outbound_dropped_frames > 0, "{stats:?}");
        assert_eq!(p.counters.outbound_dropped_stale_frames, 0, "{stats:?}");
        assert!(p.outbound_queued_bytes <= cap as u64, "{stats:?}");
        assert_eq!(
            p.outbound_queued_bytes,
            p.outbound_queued_frames * (FRAME_HEADER_BYTES + BODY) as u64,
            "{stats:?}"
        );
        assert!(
            p.counters.frames_sent + p.outbound_queued_frames + p.counters.outbound_dropped_frames
                <= sent,
            "{stats:?}"
        );
        assert_eq!(
            stats.totals.outbound_dropped_frames,
            p.counters.outbound_dropped_frames
        );
        a.thread.shutdown();
        drop(peer);
    }
}

#[test]
fn start_refuses_bad_config_and_busy_port() {
    let addrs = free_addrs(1);
    let mut cfg = config(7, 1, addrs[0], vec![(1, addrs[0])], Backend::Epoll);
    assert!(matches!(
        NetThread::start(cfg.clone(), 1, route_mod(1)),
        Err(NetError::Config(_))
    ));
    let mut zero_bytes = config(7, 1, addrs[0], vec![], Backend::Epoll);
    zero_bytes.outbound_bytes_max = 0;
    match NetThread::start(zero_bytes, 1, route_mod(1)) {
        Err(NetError::Config(err)) => {
            assert!(err.to_string().contains("outbound_bytes_max = 0"), "{err}")
        }
        other => panic!("expected a config error, got {:?}", other.map(|_| ())),
    }
    cfg.peers.clear();
    assert!(matches!(
        NetThread::start(cfg.clone(), 0, route_mod(1)),
        Err(NetError::NoCores)
    ));
    let (thread, _handle, _inboxes) = NetThread::start(cfg.clone(), 1, route_mod(1)).unwrap();
    match NetThread::start(cfg, 1, route_mod(1)) {
        Err(NetError::Listen { addr, .. }) => assert_eq!(addr, addrs[0]),
        other => panic!("expected a listen error, got {:?}", other.map(|_| ())),
    }
    thread.shutdown();
}

#[test]
fn shutdown_mid_stream_leaves_whole_frames_only() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let mut cfg_a = config(7, 1, addrs[0], vec![(2, addrs[1])], backend);
        cfg_a.inbox_capacity = 64;
        let mut a = start(cfg_a, 1, route_mod(1));
        let b = start(
            config(7, 2, addrs[1], vec![(1, addrs[0])], backend),
            1,
            route_mod(1),
        );
        wait_connected(&b.handle);
        // A does not drain yet: its connection from B stops reading, B's write stalls in flight.
        send_numbered(&b.handle, 2, Dest::Peer(1), 0, 200_000, 5, 1000);
        wait_until("A stopped reading from B", || {
            a.handle.stats().peers[0].counters.queue_full_events >= 1
        });
        std::thread::sleep(Duration::from_millis(20));
        let stopper = std::thread::spawn(move || b.thread.shutdown());
        // Shutdown waits (bounded) for the stalled write; draining now lets it complete.
        std::thread::sleep(Duration::from_millis(30));
        let end = Instant::now() + DEADLINE;
        let mut got = Vec::new();
        while !stopper.is_finished() && Instant::now() < end {
            got.extend(collect(
                &mut a.inboxes,
                usize::MAX,
                Duration::from_millis(5),
            ));
        }
        stopper.join().unwrap();
        got.extend(collect(
            &mut a.inboxes,
            usize::MAX,
            Duration::from_millis(200),
        ));
        let seqs: Vec<u64> = got.iter().map(seq_of).collect();
        assert!(!seqs.is_empty());
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "a whole, ordered prefix"
        );
        let stats = a.handle.stats();
        assert_eq!(
            stats.peers[0].counters.decode_errors, 0,
            "the stream ended at a frame boundary: {stats:?}"
        );
        a.thread.shutdown();
    }
}

#[test]
fn one_peer_cannot_hold_more_than_eight_connections() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let a = start(
            config(7, 1, addrs[0], vec![(3, addrs[1])], backend),
            1,
            route_mod(1),
        );
        // Eight connections authenticated as node 3 are kept open.
        let held: Vec<TcpStream> = (0..8).map(|_| raw_peer(addrs[0], 3)).collect();
        let refused_before = a.handle.stats().handshakes_refused;
        // The ninth passes the handshake, then is closed and counted.
        assert_closed(raw_peer(addrs[0], 3));
        wait_until("ninth refused", || {
            a.handle.stats().handshakes_refused == refused_before + 1
        });
        // Once one closes, a new one is accepted again.
        drop(held);
        let mut again = Vec::new();
        wait_until("slots freed", || {
            let mut client = raw_peer(addrs[0], 3);
            client
                .set_read_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let mut byte = [0u8; 1];
            let kept = matches!(client.read(&mut byte), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut);
            again.push(client);
            kept
        });
        a.thread.shutdown();
    }
}

/// A node whose connection to a peer is down waits out a reconnect backoff; when the peer
/// comes back and connects to it, the backoff ends at once (the peer is up): here a backoff of
/// a minute or more ends within seconds, and the early reconnect is counted.
#[test]
fn a_peer_that_connects_to_us_ends_our_reconnect_backoff() {
    for backend in backends() {
        let addrs = free_addrs(2);
        let mut cfg_a = config(7, 1, addrs[0], vec![(2, addrs[1])], backend);
        cfg_a.reconnect_backoff_min = Duration::from_secs(120);
        cfg_a.reconnect_backoff_max = Duration::from_secs(120);
        let a = start(cfg_a, 1, route_mod(1));
        // Node 2 is not up yet: node 1's first attempt fails and it backs off (60-120 s).
        wait_until("a connect failure", || {
            a.handle.stats().peers[0].counters.connect_failures >= 1
        });
        assert!(!a.handle.stats().peers[0].connected);
        let b = start(
            config(7, 2, addrs[1], vec![(1, addrs[0])], backend),
            1,
            route_mod(1),
        );
        let end = Instant::now() + Duration::from_secs(10);
        while !a.handle.stats().peers[0].connected {
            assert!(
                Instant::now() < end,
                "{backend:?}: node 1 still waits out its backoff after node 2 connected to it"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(a.handle.stats().peers[0].counters.reconnects_early, 1);
        a.thread.shutdown();
        b.thread.shutdown();
    }
}
