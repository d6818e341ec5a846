//! The machine's ceilings, measured in the same run as the cluster benchmark: O_DIRECT writes
//! with one fdatasync each on the file system that holds the data (1 and 3 concurrent writers,
//! at the engine's typical round sizes) and the loopback TCP round trip; for the catch-up
//! benchmark, the streaming ceilings: sequential O_DIRECT reads of a file as large as the log
//! a lagging replica must fetch, and one loopback TCP stream's bulk rate.
//!
//! Owns: the baseline measurements and their figures. Never: touches files outside the
//! directory it is given (it removes what it created).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// Round sizes measured, in bytes.
pub const ROUND_SIZES: [usize; 4] = [4096, 64 * 1024, 256 * 1024, 1024 * 1024];
/// Concurrent writers measured.
pub const WRITERS: [usize; 2] = [1, 3];
/// Each writer's file, written in full once before measuring (writes into written extents).
const FILE_BYTES: u64 = 64 * 1024 * 1024;

/// One disk cell: writers x size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskCell {
    /// Concurrent writers (each its own file).
    pub writers: usize,
    /// Bytes per write.
    pub write_bytes: usize,
    /// Durable writes completed by all writers.
    pub writes: u64,
    /// Durable writes per second, all writers.
    pub writes_per_s: f64,
    /// MB/s (10^6 bytes), all writers.
    pub mb_per_s: f64,
    /// Median fdatasync time, microseconds.
    pub fsync_p50_us: u64,
    /// Median write + fdatasync time, microseconds.
    pub durable_write_p50_us: u64,
    /// 99th percentile of write + fdatasync, microseconds.
    pub durable_write_p99_us: u64,
}

/// Every ceiling of the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Ceilings {
    /// Median fdatasync after a 4 KiB O_DIRECT write with 3 concurrent writers (the three
    /// replicas write at once in every round): the latency floor's disk part.
    pub disk_fsync_p50_us: f64,
    /// Same with a single writer (on a shared virtual disk it can be much slower or faster).
    pub disk_fsync_p50_us_1w: f64,
    /// Median of the whole 4 KiB O_DIRECT write + fdatasync, 3 concurrent writers: what one
    /// durable WAL write of a small round costs (the fsync alone is only part of it).
    pub disk_durable_write_p50_us: f64,
    /// 1 MiB writes + fdatasync, 1 writer, MB/s.
    pub disk_mb_per_s_1w: f64,
    /// 1 MiB writes + fdatasync, 3 concurrent writers, MB/s in total (3 replicas share the disk).
    pub disk_mb_per_s_3w: f64,
    /// Loopback TCP ping-pong (64 B, TCP_NODELAY) round trip, median, microseconds.
    pub rtt_us_p50: f64,
    /// Same, 99th percentile.
    pub rtt_us_p99: f64,
    /// Every disk cell.
    pub disk: Vec<DiskCell>,
    /// /proc/pressure/io "some avg10" (percent of time tasks waited on I/O) after the disk
    /// cells: other programs' I/O on a shared disk makes these ceilings noisy.
    pub io_pressure_some_avg10: Option<f64>,
    /// /proc/loadavg's 1-minute load after the disk cells (CPU contention).
    pub load_avg_1m: Option<f64>,
}

impl Ceilings {
    /// The better figure of two measurements, field by field (lower latency, higher MB/s):
    /// noise from other programs only makes a ceiling look worse. The cells and the machine
    /// readings are `self`'s.
    pub fn best_of(&self, other: &Ceilings) -> Ceilings {
        Ceilings {
            disk_fsync_p50_us: self.disk_fsync_p50_us.min(other.disk_fsync_p50_us),
            disk_fsync_p50_us_1w: self.disk_fsync_p50_us_1w.min(other.disk_fsync_p50_us_1w),
            disk_durable_write_p50_us: self
                .disk_durable_write_p50_us
                .min(other.disk_durable_write_p50_us),
            disk_mb_per_s_1w: self.disk_mb_per_s_1w.max(other.disk_mb_per_s_1w),
            disk_mb_per_s_3w: self.disk_mb_per_s_3w.max(other.disk_mb_per_s_3w),
            rtt_us_p50: self.rtt_us_p50.min(other.rtt_us_p50),
            rtt_us_p99: self.rtt_us_p99.min(other.rtt_us_p99),
            disk: self.disk.clone(),
            io_pressure_some_avg10: self.io_pressure_some_avg10,
            load_avg_1m: self.load_avg_1m,
        }
    }
}

/// "some avg10" of /proc/pressure/io, if the kernel has PSI.
pub fn io_pressure_avg10() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/pressure/io").ok()?;
    let line = text.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix("avg10="))?
        .parse()
        .ok()
}

/// The 1-minute load average.
pub fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A page-aligned buffer (O_DIRECT needs aligned memory) carved out of a larger `Vec`.
struct Aligned {
    storage: Vec<u8>,
    offset: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let mut storage = vec![0u8; len + 4096];
        let offset = (4096 - (storage.as_ptr() as usize % 4096)) % 4096;
        for (i, b) in storage[offset..offset + len].iter_mut().enumerate() {
            *b = (i as u8) ^ 0x5a;
        }
        Aligned {
            storage,
            offset,
            len,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.storage[self.offset..self.offset + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.offset..self.offset + self.len]
    }
}

fn open_direct(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path)
}

/// Writes the whole file once and syncs it, so that measured writes land in written extents
/// (as the WAL's pre-written segments do).
fn prepare(path: &Path) -> Result<File, String> {
    prepare_sized(path, FILE_BYTES)
}

/// Writes `bytes` (a multiple of 1 MiB) into a new file with O_DIRECT and syncs it.
fn prepare_sized(path: &Path, bytes: u64) -> Result<File, String> {
    assert!(bytes > 0 && bytes % (1 << 20) == 0, "whole MiB: {bytes}");
    let file = open_direct(path)
        .map_err(|e| format!("cannot open {} with O_DIRECT: {e}", path.display()))?;
    let chunk = Aligned::new(1024 * 1024);
    let mut at = 0u64;
    while at < bytes {
        file.write_all_at(chunk.bytes(), at)
            .map_err(|e| format!("pre-writing {} at {at}: {e}", path.display()))?;
        at += chunk.len as u64;
    }
    file.sync_all()
        .map_err(|e| format!("fsync {}: {e}", path.display()))?;
    Ok(file)
}

struct WriterOutcome {
    writes: u64,
    fsync: Histogram<u64>,
    durable: Histogram<u64>,
}

/// Durable writes of `size` into `file` (`file_bytes` long, written) until `until`, cycling
/// through it.
fn write_loop(
    file: &File,
    file_bytes: u64,
    size: usize,
    until: Instant,
) -> Result<WriterOutcome, String> {
    let buffer = Aligned::new(size);
    let mut fsync = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut durable = fsync.clone();
    let slots = (file_bytes / size as u64).max(1);
    let mut writes = 0u64;
    while Instant::now() < until {
        let offset = (writes % slots) * size as u64;
        let t0 = Instant::now();
        file.write_all_at(buffer.bytes(), offset)
            .map_err(|e| format!("O_DIRECT write of {size} bytes at {offset}: {e}"))?;
        let t1 = Instant::now();
        file.sync_data().map_err(|e| format!("fdatasync: {e}"))?;
        let t2 = Instant::now();
        fsync.saturating_record(t2.duration_since(t1).as_micros().max(1) as u64);
        durable.saturating_record(t2.duration_since(t0).as_micros().max(1) as u64);
        writes += 1;
    }
    Ok(WriterOutcome {
        writes,
        fsync,
        durable,
    })
}

/// Measures every disk cell in `dir` (`seconds` each) and the loopback round trip.
pub fn measure(dir: &Path, seconds: f64) -> Result<Ceilings, String> {
    let scratch = tempfile::Builder::new()
        .prefix("ceilings-")
        .tempdir_in(dir)
        .map_err(|e| format!("cannot make a scratch dir in {}: {e}", dir.display()))?;
    let writers_max = *WRITERS.iter().max().expect("writers");
    let files: Vec<File> = (0..writers_max)
        .map(|i| prepare(&scratch.path().join(format!("writer-{i}"))))
        .collect::<Result<_, _>>()?;
    let mut disk = Vec::new();
    for &writers in &WRITERS {
        for &size in &ROUND_SIZES {
            let until = Instant::now() + Duration::from_secs_f64(seconds);
            let started = Instant::now();
            let outcomes: Vec<Result<WriterOutcome, String>> = std::thread::scope(|s| {
                let handles: Vec<_> = files[..writers]
                    .iter()
                    .map(|file| s.spawn(move || write_loop(file, FILE_BYTES, size, until)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("writer panicked".into())))
                    .collect()
            });
            let elapsed = started.elapsed().as_secs_f64();
            let mut fsync = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut durable = fsync.clone();
            let mut writes = 0;
            for outcome in outcomes {
                let o = outcome?;
                writes += o.writes;
                fsync.add(&o.fsync).map_err(|e| format!("{e:?}"))?;
                durable.add(&o.durable).map_err(|e| format!("{e:?}"))?;
            }
            disk.push(DiskCell {
                writers,
                write_bytes: size,
                writes,
                writes_per_s: writes as f64 / elapsed,
                mb_per_s: writes as f64 * size as f64 / elapsed / 1e6,
                fsync_p50_us: fsync.value_at_quantile(0.5),
                durable_write_p50_us: durable.value_at_quantile(0.5),
                durable_write_p99_us: durable.value_at_quantile(0.99),
            });
        }
    }
    drop(files);
    let io_pressure_some_avg10 = io_pressure_avg10();
    let load_avg_1m = load_avg();
    let cell = |writers: usize, size: usize| {
        disk.iter()
            .find(|c| c.writers == writers && c.write_bytes == size)
            .expect("every cell measured")
            .clone()
    };
    let (rtt_p50, rtt_p99) = loopback_rtt(seconds.max(0.3))?;
    Ok(Ceilings {
        disk_fsync_p50_us: cell(3, 4096).fsync_p50_us as f64,
        disk_fsync_p50_us_1w: cell(1, 4096).fsync_p50_us as f64,
        disk_durable_write_p50_us: cell(3, 4096).durable_write_p50_us as f64,
        disk_mb_per_s_1w: cell(1, 1024 * 1024).mb_per_s,
        disk_mb_per_s_3w: cell(3, 1024 * 1024).mb_per_s,
        rtt_us_p50: rtt_p50,
        rtt_us_p99: rtt_p99,
        disk,
        io_pressure_some_avg10,
        load_avg_1m,
    })
}

/// Loopback TCP ping-pong of 64 bytes with TCP_NODELAY for `seconds`: (p50, p99) in µs.
pub fn loopback_rtt(seconds: f64) -> Result<(f64, f64), String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            if let Err(e) = stream.read_exact(&mut buf) {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    return Ok(());
                }
                return Err(e);
            }
            stream.write_all(&buf)?;
        }
    });
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut buf = [7u8; 64];
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut rounds = 0u64;
    while Instant::now() < until && rounds < 1_000_000 {
        let t0 = Instant::now();
        stream
            .write_all(&buf)
            .and_then(|_| stream.read_exact(&mut buf))
            .map_err(|e| format!("loopback ping-pong: {e}"))?;
        histogram.saturating_record(t0.elapsed().as_micros().max(1) as u64);
        rounds += 1;
    }
    drop(stream);
    echo.join()
        .map_err(|_| "echo thread panicked".to_string())?
        .map_err(|e| format!("echo side: {e}"))?;
    Ok((
        histogram.value_at_quantile(0.5) as f64,
        histogram.value_at_quantile(0.99) as f64,
    ))
}

/// Bytes of each sequential O_DIRECT read of the read ceiling.
pub const READ_CHUNK_BYTES: usize = 1 << 20;
/// Bytes of each write of the loopback stream ceiling (the network thread's batches are of
/// this order).
pub const STREAM_WRITE_BYTES: usize = 256 * 1024;

/// The streaming ceilings: what moving a log's bytes from one replica's disk to another
/// replica could reach on this machine, measured in the same run as what they bound.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamCeilings {
    /// Sequential O_DIRECT reads of `READ_CHUNK_BYTES`, one reader, over a file of
    /// `disk_read_file_bytes` written just before, MB/s (10^6 bytes).
    pub disk_read_mb_per_s: f64,
    /// Size of the file read, bytes.
    pub disk_read_file_bytes: u64,
    /// Bytes per read.
    pub disk_read_chunk_bytes: usize,
    /// Sequential O_DIRECT writes of `READ_CHUNK_BYTES`, each followed by fdatasync, one
    /// writer, into the same (written) file, MB/s: what a catching-up follower's WAL, which
    /// makes every value it learns durable, could reach.
    pub disk_write_mb_per_s: f64,
    /// One loopback TCP connection (TCP_NODELAY), one writer thread writing
    /// `STREAM_WRITE_BYTES` at a time and one reader thread, MB/s delivered.
    pub loopback_mb_per_s: f64,
    /// Bytes per write of the loopback stream.
    pub loopback_write_bytes: usize,
    /// Loopback TCP ping-pong (64 B) round trip, median, µs.
    pub rtt_us_p50: f64,
    /// Same, 99th percentile.
    pub rtt_us_p99: f64,
    /// /proc/pressure/io "some avg10" after the disk measurement (other programs' I/O).
    pub io_pressure_some_avg10: Option<f64>,
    /// /proc/loadavg's 1-minute load after the disk measurement (CPU contention).
    pub load_avg_1m: Option<f64>,
}

impl StreamCeilings {
    /// The slower of the two rates (what a catch-up stream is bounded by), MB/s, and its name.
    pub fn slower(&self) -> (f64, &'static str) {
        if self.disk_read_mb_per_s <= self.loopback_mb_per_s {
            (self.disk_read_mb_per_s, "disk read")
        } else {
            (self.loopback_mb_per_s, "loopback TCP")
        }
    }

    /// The better figure of two measurements, field by field (higher rate, lower latency):
    /// other programs only ever make a ceiling look worse. Machine readings are `self`'s.
    pub fn best_of(&self, other: &StreamCeilings) -> StreamCeilings {
        StreamCeilings {
            disk_read_mb_per_s: self.disk_read_mb_per_s.max(other.disk_read_mb_per_s),
            disk_read_file_bytes: self.disk_read_file_bytes,
            disk_read_chunk_bytes: self.disk_read_chunk_bytes,
            disk_write_mb_per_s: self.disk_write_mb_per_s.max(other.disk_write_mb_per_s),
            loopback_mb_per_s: self.loopback_mb_per_s.max(other.loopback_mb_per_s),
            loopback_write_bytes: self.loopback_write_bytes,
            rtt_us_p50: self.rtt_us_p50.min(other.rtt_us_p50),
            rtt_us_p99: self.rtt_us_p99.min(other.rtt_us_p99),
            io_pressure_some_avg10: self.io_pressure_some_avg10,
            load_avg_1m: self.load_avg_1m,
        }
    }
}

/// Measures the streaming ceilings: sequential reads of a `file_bytes` file (rounded up to
/// whole MiB) written in `dir` first, then the loopback stream, then the round trip; about
/// `seconds` each. Removes the file.
pub fn measure_streams(
    dir: &Path,
    file_bytes: u64,
    seconds: f64,
) -> Result<StreamCeilings, String> {
    let scratch = tempfile::Builder::new()
        .prefix("stream-ceilings-")
        .tempdir_in(dir)
        .map_err(|e| format!("cannot make a scratch dir in {}: {e}", dir.display()))?;
    let file_bytes = file_bytes.max(1).div_ceil(1 << 20) * (1 << 20);
    let file = prepare_sized(&scratch.path().join("read-ceiling"), file_bytes)?;
    let disk_read_mb_per_s = sequential_read_mb_per_s(&file, file_bytes, seconds)?;
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let written = write_loop(&file, file_bytes, READ_CHUNK_BYTES, until)?;
    let disk_write_mb_per_s =
        written.writes as f64 * READ_CHUNK_BYTES as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(file);
    let io_pressure_some_avg10 = io_pressure_avg10();
    let load_avg_1m = load_avg();
    let loopback_mb_per_s = loopback_stream_mb_per_s(seconds)?;
    let (rtt_us_p50, rtt_us_p99) = loopback_rtt(seconds.clamp(0.1, 0.5))?;
    Ok(StreamCeilings {
        disk_read_mb_per_s,
        disk_read_file_bytes: file_bytes,
        disk_read_chunk_bytes: READ_CHUNK_BYTES,
        disk_write_mb_per_s,
        loopback_mb_per_s,
        loopback_write_bytes: STREAM_WRITE_BYTES,
        rtt_us_p50,
        rtt_us_p99,
        io_pressure_some_avg10,
        load_avg_1m,
    })
}

/// Reads `file` (opened with O_DIRECT, `file_bytes` long) from the start in
/// `READ_CHUNK_BYTES` pieces, wrapping around, for `seconds` (at least one whole pass of up to
/// 64 MiB, so a fast disk is not timed on a handful of reads); MB/s.
fn sequential_read_mb_per_s(file: &File, file_bytes: u64, seconds: f64) -> Result<f64, String> {
    let mut buffer = Aligned::new(READ_CHUNK_BYTES);
    let chunks = (file_bytes / READ_CHUNK_BYTES as u64).max(1);
    let chunks_min = chunks.min(64);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut read = 0u64;
    while read < chunks_min || Instant::now() < until {
        let offset = (read % chunks) * READ_CHUNK_BYTES as u64;
        file.read_exact_at(buffer.bytes_mut(), offset)
            .map_err(|e| format!("O_DIRECT read of {READ_CHUNK_BYTES} bytes at {offset}: {e}"))?;
        read += 1;
    }
    Ok(read as f64 * READ_CHUNK_BYTES as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// One loopback TCP connection streaming for `seconds`: MB/s delivered to the reader (the
/// clock stops when the reader has everything that was written).
pub fn loopback_stream_mb_per_s(seconds: f64) -> Result<f64, String> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let reader = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; STREAM_WRITE_BYTES];
        let mut total = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok(total),
                n => total += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; STREAM_WRITE_BYTES];
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let mut written = 0u64;
    while Instant::now() < until {
        stream
            .write_all(&chunk)
            .map_err(|e| format!("loopback stream: {e}"))?;
        written += chunk.len() as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let received = reader
        .join()
        .map_err(|_| "stream reader panicked".to_string())?
        .map_err(|e| format!("stream reader: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    if received != written {
        return Err(format!(
            "loopback stream: {written} bytes written, {received} received"
        ));
    }
    Ok(received as f64 / elapsed / 1e6)
}

#[cfg(test)]
mod tests {
    //! Proves that the aligned buffer really is page-aligned (O_DIRECT refuses otherwise) and
    //! that the loopback measurement returns ordered, positive figures.
    use super::*;

    #[test]
    fn aligned_buffers() {
        for len in [4096, 65536] {
            let b = Aligned::new(len);
            assert_eq!(b.bytes().as_ptr() as usize % 4096, 0);
            assert_eq!(b.bytes().len(), len);
        }
    }

    #[test]
    fn best_of_takes_the_better_figure() {
        let c = |fsync: f64, mb: f64, rtt: f64| Ceilings {
            disk_fsync_p50_us: fsync,
            disk_fsync_p50_us_1w: fsync,
            disk_durable_write_p50_us: fsync * 2.0,
            disk_mb_per_s_1w: mb,
            disk_mb_per_s_3w: mb * 2.0,
            rtt_us_p50: rtt,
            rtt_us_p99: rtt * 3.0,
            disk: Vec::new(),
            io_pressure_some_avg10: None,
            load_avg_1m: None,
        };
        let best = c(3000.0, 100.0, 12.0).best_of(&c(90.0, 250.0, 20.0));
        assert_eq!(best.disk_fsync_p50_us, 90.0);
        assert_eq!(best.disk_durable_write_p50_us, 180.0);
        assert_eq!(best.disk_mb_per_s_3w, 500.0);
        assert_eq!(best.rtt_us_p50, 12.0);
    }

    #[test]
    fn the_slower_stream_ceiling_bounds_catch_up() {
        let c = |disk: f64, tcp: f64| StreamCeilings {
            disk_read_mb_per_s: disk,
            disk_read_file_bytes: 1 << 20,
            disk_read_chunk_bytes: READ_CHUNK_BYTES,
            disk_write_mb_per_s: disk / 4.0,
            loopback_mb_per_s: tcp,
            loopback_write_bytes: STREAM_WRITE_BYTES,
            rtt_us_p50: 20.0,
            rtt_us_p99: 50.0,
            io_pressure_some_avg10: None,
            load_avg_1m: None,
        };
        assert_eq!(c(300.0, 2000.0).slower(), (300.0, "disk read"));
        assert_eq!(c(3000.0, 2000.0).slower(), (2000.0, "loopback TCP"));
        let best = c(300.0, 2000.0).best_of(&c(400.0, 1500.0));
        assert_eq!(best.slower(), (400.0, "disk read"));
        assert_eq!(best.loopback_mb_per_s, 2000.0);
    }

    #[test]
    fn loopback_stream_delivers_everything() {
        let mb_per_s = loopback_stream_mb_per_s(0.05).unwrap();
        assert!(mb_per_s > 0.0, "{mb_per_s}");
    }

    #[test]
    fn loopback_figures_are_ordered() {
        let (p50, p99) = loopback_rtt(0.05).unwrap();
        assert!(p50 >= 1.0 && p99 >= p50, "p50 {p50} p99 {p99}");
    }
}
