//! Segment files on disk: names, O_DIRECT opens, creation (fallocate + full zero write),
//! recycling, zeroing of cut tails, and directory fsync.
//!
//! Owns: every system call on segment files except the log's own batch writes (those go through
//! `ring`). Must never write inside the live part of a segment: it only writes whole new
//! segments, or zeroes regions recovery declared cut.
use crate::error::WalError;
use crate::format::{encode_segment_header, SEGMENT_FLAG_RECYCLED, SEGMENT_HEADER_BYTES};
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Bytes of zeroes written per call when filling a segment.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// The file name of segment `segment` of core `core`: order and owner are in the name.
pub fn segment_name(core: u32, segment: u64) -> String {
    format!("c{core:05}-s{segment:020}.wal")
}

/// Parses a segment file name into `(core, segment)`.
pub fn parse_segment_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix('c')?.strip_suffix(".wal")?;
    let (core, segment) = rest.split_once("-s")?;
    if core.len() != 5 || segment.len() != 20 {
        return None;
    }
    if !core
        .bytes()
        .chain(segment.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    Some((core.parse().ok()?, segment.parse().ok()?))
}

/// Bytes of the segment files in `dir` (what a WAL holds on disk; spares kept for recycling
/// and segments still being prepared are not counted). A directory that cannot be read, or a
/// file that vanishes meanwhile (a purge), counts as nothing.
pub fn segment_files_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| parse_segment_name(&e.file_name().to_string_lossy()).is_some())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Name of a segment being prepared (never read by recovery; removed at open).
pub fn preparing_name(core: u32, segment: u64) -> String {
    format!("{}.preparing", segment_name(core, segment))
}

/// Parses a spare file name into `(core, serial)`.
pub fn parse_spare_name(name: &str) -> Option<(u32, u64)> {
    let rest = name.strip_prefix('c')?.strip_suffix(".wal")?;
    let (core, serial) = rest.split_once("-spare")?;
    if core.len() != 5 || serial.len() != 20 {
        return None;
    }
    Some((core.parse().ok()?, serial.parse().ok()?))
}

/// Name of a purged segment kept for recycling.
pub fn spare_name(core: u32, serial: u64) -> String {
    format!("c{core:05}-spare{serial:020}.wal")
}

fn io_err(op: &'static str, path: &Path, offset: u64, source: io::Error) -> WalError {
    WalError::Io {
        op,
        path: path.to_path_buf(),
        offset,
        source,
    }
}

/// Opens `path` read-write with O_DIRECT. EINVAL means the file system refuses O_DIRECT.
pub fn open_direct(path: &Path) -> Result<File, WalError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::EINVAL) => WalError::DirectIoUnsupported {
                path: path.to_path_buf(),
            },
            _ => io_err("open O_DIRECT", path, 0, source),
        })
}

/// fsyncs a directory (after creating, renaming or removing an entry).
pub fn fsync_dir(dir: &Path) -> Result<(), WalError> {
    let handle = File::open(dir).map_err(|e| io_err("open directory", dir, 0, e))?;
    handle
        .sync_all()
        .map_err(|e| io_err("fsync directory", dir, 0, e))
}

/// Writes zeroes over `[offset, offset + len)` of an O_DIRECT file (block aligned), then
/// fdatasyncs it.
pub fn zero_range(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), WalError> {
    let block = crate::format::BLOCK_BYTES as u64;
    assert!(offset % block == 0, "zeroing starts on a block");
    let len = len.next_multiple_of(block);
    let zeroes = MmapMut::map_anon(ZERO_CHUNK_BYTES).map_err(|e| io_err("mmap", path, 0, e))?;
    let mut at = 0u64;
    while at < len {
        let chunk = (len - at).min(ZERO_CHUNK_BYTES as u64) as usize;
        pwrite_all(file, path, &zeroes[..chunk], offset + at)?;
        at += chunk as u64;
    }
    file.sync_data()
        .map_err(|e| io_err("fdatasync", path, offset, e))
}

/// `pwrite` until all of `bytes` is written at `offset`.
pub fn pwrite_all(file: &File, path: &Path, bytes: &[u8], offset: u64) -> Result<(), WalError> {
    let mut done = 0usize;
    while done < bytes.len() {
        let rest = &bytes[done..];
        let at = offset + done as u64;
        // SAFETY: `rest` is a live borrowed slice for the duration of this synchronous call; the
        // kernel reads `rest.len()` bytes from it and keeps no reference after returning.
        let written = unsafe {
            libc::pwrite(
                file.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                at as libc::off_t,
            )
        };
        if written < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            if error.raw_os_error() == Some(libc::EINVAL) {
                return Err(WalError::DirectIoUnsupported {
                    path: path.to_path_buf(),
                });
            }
            return Err(io_err("pwrite", path, at, error));
        }
        if written == 0 {
            return Err(io_err("pwrite", path, at, io::ErrorKind::WriteZero.into()));
        }
        done += written as usize;
    }
    Ok(())
}

/// Creates segment `final_path` of `segment_bytes` and fdatasyncs it, renames it into place
/// and fsyncs the directory (a crash midway leaves only a `.preparing` file).
///
/// A new file is fallocated and written in full with zeroes (later writes then land in written
/// extents). A `spare` (a purged segment) is reused as it is: only its first block is rewritten,
/// with a segment header flagged "recycled", so recovery treats what follows its last batch as
/// stale content of its earlier life. `header` = `(core, segment)` writes that segment header
/// (a new file gets one flagged "not recycled"); `None` writes none (a plain pre-written file).
///
/// When preparing fails (say, the disk is full), the failure is logged and the `.preparing`
/// file removed (a spare that was being reused goes with it, freeing its space), so a failed
/// preparation leaves nothing behind; the error is returned.
pub fn create_segment(
    dir: &Path,
    preparing_path: &Path,
    final_path: &Path,
    segment_bytes: u64,
    spare: Option<&Path>,
    header: Option<(u32, u64)>,
) -> Result<(), WalError> {
    let result = prepare_segment(preparing_path, final_path, segment_bytes, spare, header)
        .and_then(|()| fsync_dir(dir));
    if let Err(error) = &result {
        if preparing_path.exists() {
            let removed = std::fs::remove_file(preparing_path);
            tracing::error!(
                path = %preparing_path.display(),
                %error,
                removed = removed.is_ok(),
                "preparing segment {} failed: {error}; {}",
                final_path.display(),
                match &removed {
                    Ok(()) => "removed its .preparing file".to_string(),
                    Err(e) => format!("its .preparing file could not be removed: {e}"),
                }
            );
            if removed.is_ok() {
                let _ = fsync_dir(dir);
            }
        } else {
            tracing::error!(%error, "preparing segment {} failed: {error}", final_path.display());
        }
    }
    result
}

/// The steps of [`create_segment`] up to the rename into place.
fn prepare_segment(
    preparing_path: &Path,
    final_path: &Path,
    segment_bytes: u64,
    spare: Option<&Path>,
    header: Option<(u32, u64)>,
) -> Result<(), WalError> {
    match spare {
        Some(spare) => std::fs::rename(spare, preparing_path)
            .map_err(|e| io_err("rename spare segment", spare, 0, e))?,
        None => {
            File::create(preparing_path)
                .map_err(|e| io_err("create segment", preparing_path, 0, e))?;
        }
    }
    let file = open_direct(preparing_path)?;
    let length = file
        .metadata()
        .map_err(|e| io_err("stat", preparing_path, 0, e))?
        .len();
    if length < segment_bytes {
        // SAFETY: plain system call on an owned, open descriptor; no memory is shared.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, segment_bytes as libc::off_t) };
        if rc != 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
                return Err(io_err("fallocate", preparing_path, 0, error));
            }
        }
        file.set_len(segment_bytes)
            .map_err(|e| io_err("truncate", preparing_path, segment_bytes, e))?;
    }
    let recycled = spare.is_some() && length >= segment_bytes;
    if !recycled {
        zero_range(&file, preparing_path, 0, segment_bytes)?;
    }
    if let Some((core, segment)) = header {
        let mut block = MmapMut::map_anon(SEGMENT_HEADER_BYTES)
            .map_err(|e| io_err("mmap", preparing_path, 0, e))?;
        let flags = if recycled { SEGMENT_FLAG_RECYCLED } else { 0 };
        encode_segment_header(core, segment, flags, &mut block);
        pwrite_all(&file, preparing_path, &block, 0)?;
        file.sync_data()
            .map_err(|e| io_err("fdatasync", preparing_path, 0, e))?;
    } else if recycled {
        zero_range(&file, preparing_path, 0, segment_bytes)?;
    }
    drop(file);
    std::fs::rename(preparing_path, final_path)
        .map_err(|e| io_err("rename segment", preparing_path, 0, e))
}

/// What a directory holds for one core.
#[derive(Debug, Default)]
pub struct Listing {
    /// Segment numbers and paths, sorted.
    pub segments: Vec<(u64, PathBuf)>,
    /// Spare (purged, recyclable) files.
    pub spares: Vec<PathBuf>,
    /// Leftover `.preparing` files.
    pub preparing: Vec<PathBuf>,
}

/// Lists a WAL directory; a segment of another core is an error (one directory per core).
pub fn list_dir(dir: &Path, core: u32) -> Result<Listing, WalError> {
    let mut listing = Listing::default();
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("read directory", dir, 0, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("read directory", dir, 0, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if let Some((owner, segment)) = parse_segment_name(name) {
            if owner != core {
                return Err(WalError::ForeignSegment { path, core, owner });
            }
            listing.segments.push((segment, path));
        } else if name.ends_with(".preparing") && name.starts_with(&format!("c{core:05}-")) {
            listing.preparing.push(path);
        } else if name.starts_with(&format!("c{core:05}-spare")) {
            listing.spares.push(path);
        }
    }
    listing.segments.sort();
    listing.spares.sort();
    Ok(listing)
}

/// Lists the cores that have segments in `dir` (for tools that inspect a directory).
pub fn cores_in_dir(dir: &Path) -> Result<Vec<u32>, WalError> {
    let entries = std::fs::read_dir(dir).map_err(|e| io_err("read directory", dir, 0, e))?;
    let mut cores = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_err("read directory", dir, 0, e))?;
        if let Some((core, _)) = entry.file_name().to_str().and_then(parse_segment_name) {
            if !cores.contains(&core) {
                cores.push(core);
            }
        }
    }
    cores.sort_unstable();
    Ok(cores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_files_bytes_counts_segments_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segment_name(0, 1)), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join(segment_name(0, 2)), vec![0u8; 8192]).unwrap();
        std::fs::write(dir.path().join(spare_name(0, 1)), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join(preparing_name(0, 3)), vec![0u8; 4096]).unwrap();
        std::fs::write(dir.path().join("IDENTITY"), b"x").unwrap();
        assert_eq!(segment_files_bytes(dir.path()), 12288);
        assert_eq!(segment_files_bytes(&dir.path().join("missing")), 0);
    }

    #[test]
    fn names_round_trip_and_sort_in_segment_order() {
        assert_eq!(parse_segment_name(&segment_name(7, 12)), Some((7, 12)));
        assert!(segment_name(0, 9) < segment_name(0, 10));
        assert_eq!(parse_segment_name("c00001-s1.wal"), None);
        assert_eq!(parse_segment_name(&preparing_name(1, 1)), None);
        assert_eq!(parse_segment_name(&spare_name(1, 1)), None);
        assert_eq!(parse_spare_name(&spare_name(3, 17)), Some((3, 17)));
        assert_eq!(parse_spare_name(&segment_name(3, 17)), None);
    }

    #[test]
    fn a_failed_preparation_leaves_no_preparing_file() {
        let dir = tempfile::tempdir().unwrap();
        let preparing = dir.path().join(preparing_name(0, 1));
        let final_path = dir.path().join(segment_name(0, 1));
        // No file system holds a segment of 2^62 bytes: fallocate or truncate fails (or, where
        // O_DIRECT is refused, the open does); either way nothing may be left behind.
        let result = create_segment(
            dir.path(),
            &preparing,
            &final_path,
            1 << 62,
            None,
            Some((0, 1)),
        );
        assert!(result.is_err(), "an impossible size fails");
        assert!(!preparing.exists(), "the .preparing file was removed");
        assert!(!final_path.exists());
        // A spare being reused goes too (its space is freed).
        let spare = dir.path().join(spare_name(0, 1));
        std::fs::write(&spare, b"old segment").unwrap();
        let result = create_segment(
            dir.path(),
            &preparing,
            &final_path,
            1 << 62,
            Some(&spare),
            Some((0, 1)),
        );
        assert!(result.is_err());
        assert!(!preparing.exists() && !spare.exists() && !final_path.exists());
    }
}
