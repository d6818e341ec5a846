//! The machine's ceilings, measured in the same run as the cluster benchmark: O_DIRECT writes
//! with one fdatasync each on the file system that holds the data (1 and 3 concurrent writers,
//! at the engine's typical round sizes) and the loopback TCP round trip.
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
    /// Median fdatasync after a 4 KiB O_DIRECT write, 1 writer (the latency floor's disk part).
    pub disk_fsync_p50_us: f64,
    /// Median of the whole 4 KiB O_DIRECT write + fdatasync, 1 writer: what one durable WAL
    /// write of a small round costs (the fsync alone is only part of it).
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
    let file = open_direct(path)
        .map_err(|e| format!("cannot open {} with O_DIRECT: {e}", path.display()))?;
    let chunk = Aligned::new(1024 * 1024);
    let mut at = 0u64;
    while at < FILE_BYTES {
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

fn write_loop(file: &File, size: usize, until: Instant) -> Result<WriterOutcome, String> {
    let buffer = Aligned::new(size);
    let mut fsync = Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut durable = fsync.clone();
    let slots = FILE_BYTES / size as u64;
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
                    .map(|file| s.spawn(move || write_loop(file, size, until)))
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
        disk_fsync_p50_us: cell(1, 4096).fsync_p50_us as f64,
        disk_durable_write_p50_us: cell(1, 4096).durable_write_p50_us as f64,
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
    fn loopback_figures_are_ordered() {
        let (p50, p99) = loopback_rtt(0.05).unwrap();
        assert!(p50 >= 1.0 && p99 >= p50, "p50 {p50} p99 {p99}");
    }
}
