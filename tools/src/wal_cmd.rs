//! `paxring wal`: inspect a WAL directory (dump, verify, stat) without modifying it: one core's
//! WAL directory, or every core's of a node's data directory.
//!
//! Owns: the human-readable (and JSON) reports of what recovery finds. Must never write to the
//! directory: it reads segments the way recovery does and reports.
use clap::{Args, Subcommand};
use paxring_wal::recovery::{Damage, Recovery};
use paxring_wal::segfile::cores_in_dir;
use paxring_wal::{inspect_dir, GroupId};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Writes a line to stdout; a closed pipe (e.g. `| head`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let written = writeln!(std::io::stdout().lock(), $($arg)*);
        stdout_result(written);
    }};
}

/// Writes to stdout without a newline (see `out!`).
macro_rules! outp {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let written = write!(std::io::stdout().lock(), $($arg)*);
        stdout_result(written);
    }};
}

fn stdout_result(written: std::io::Result<()>) {
    if let Err(error) = written {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("paxring wal: cannot write to stdout: {error}");
        std::process::exit(2);
    }
}

/// Arguments of `paxring wal`: each subcommand takes one core's WAL directory
/// (`DATA/wal/core-N`) or a node's data directory `DATA` (all its cores).
#[derive(Args, Debug)]
pub struct WalArgs {
    #[command(subcommand)]
    command: WalCommand,
}

#[derive(Subcommand, Debug)]
enum WalCommand {
    /// Print every recovered record, then what was cut or damaged.
    Dump {
        /// One core's WAL directory (DATA/wal/core-N), or a node's data directory DATA (every
        /// core).
        dir: PathBuf,
        /// Only this core (default: every core found in DIR).
        #[arg(long)]
        core: Option<u32>,
        /// Print at most this many records per core.
        #[arg(long)]
        limit: Option<usize>,
        /// Also print up to this many payload bytes of each record, in hex.
        #[arg(long, default_value_t = 0)]
        payload_bytes: usize,
    },
    /// Check every checksum; exit 0 when clean, 1 with a report of torn tails, tail damage and
    /// corruption.
    Verify {
        /// One core's WAL directory (DATA/wal/core-N), or a node's data directory DATA (every
        /// core).
        dir: PathBuf,
        /// Only this core (default: every core found in DIR).
        #[arg(long)]
        core: Option<u32>,
    },
    /// Summarise segments, LSNs, groups and sizes.
    Stat {
        /// One core's WAL directory (DATA/wal/core-N), or a node's data directory DATA (every
        /// core).
        dir: PathBuf,
        /// Only this core (default: every core found in DIR).
        #[arg(long)]
        core: Option<u32>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `paxring wal`.
pub fn run(args: WalArgs) -> ExitCode {
    let result = match args.command {
        WalCommand::Dump {
            dir,
            core,
            limit,
            payload_bytes,
        } => dump(&dir, core, limit, payload_bytes),
        WalCommand::Verify { dir, core } => verify(&dir, core),
        WalCommand::Stat { dir, core, json } => stat(&dir, core, json),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("paxring wal: {message}");
            ExitCode::from(2)
        }
    }
}

type Inspected = Vec<(u32, Recovery, Vec<(u64, PathBuf)>)>;

/// The directories under `path` that hold WAL segments: `path` itself (one core's WAL
/// directory), or, for a node's data directory `DATA` (or its `DATA/wal`), each
/// `DATA/wal/core-N` in core order.
fn wal_dirs(path: &Path) -> Result<Vec<PathBuf>, String> {
    if !path.exists() {
        return Err(format!("{} does not exist", path.display()));
    }
    if !path.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    let read_err = |e: paxring_wal::WalError| e.to_string();
    if !cores_in_dir(path).map_err(read_err)?.is_empty() {
        return Ok(vec![path.to_path_buf()]);
    }
    let wal = if path.join("wal").is_dir() {
        path.join("wal")
    } else {
        path.to_path_buf()
    };
    let entries =
        std::fs::read_dir(&wal).map_err(|e| format!("cannot read {}: {e}", wal.display()))?;
    let mut cores: Vec<(u32, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", wal.display()))?;
        let name = entry.file_name();
        let core = name
            .to_str()
            .and_then(|n| n.strip_prefix("core-"))
            .and_then(|n| n.parse::<u32>().ok());
        if let (Some(core), true) = (core, entry.path().is_dir()) {
            cores.push((core, entry.path()));
        }
    }
    cores.sort();
    if cores.is_empty() {
        return Err(format!(
            "{} holds no WAL segments (give one core's WAL directory, such as DATA/wal/core-0, or a node's data directory DATA)",
            path.display()
        ));
    }
    Ok(cores.into_iter().map(|(_, dir)| dir).collect())
}

fn inspect(path: &Path, core: Option<u32>) -> Result<Inspected, String> {
    let mut inspected = Vec::new();
    for dir in wal_dirs(path)? {
        let cores = cores_in_dir(&dir).map_err(|e| e.to_string())?;
        for found in cores {
            if core.is_some_and(|c| c != found) {
                continue;
            }
            let (recovery, segments) = inspect_dir(&dir, found).map_err(|e| e.to_string())?;
            inspected.push((found, recovery, segments));
        }
    }
    if inspected.is_empty() {
        return Err(match core {
            Some(core) => format!("{} holds no segments of core {core}", path.display()),
            None => format!("{} holds no WAL segments", path.display()),
        });
    }
    Ok(inspected)
}

fn dump(
    dir: &Path,
    core: Option<u32>,
    limit: Option<usize>,
    payload_bytes: usize,
) -> Result<ExitCode, String> {
    for (core, recovery, _) in inspect(dir, core)? {
        out!("# core {core}");
        out!("lsn\tkind\tgroup\tinstance\tpromised\taccepted\tpayload_bytes\tsegment\toffset");
        let locations: BTreeMap<u64, (u64, u64)> = recovery
            .index
            .values()
            .flat_map(|m| m.values())
            .map(|l| (l.lsn.0, (l.segment, l.offset)))
            .collect();
        for (lsn, record) in recovery.records.iter().take(limit.unwrap_or(usize::MAX)) {
            let (segment, offset) = locations
                .get(&lsn.0)
                .map(|(s, o)| (s.to_string(), o.to_string()))
                .unwrap_or_else(|| ("-".into(), "-".into()));
            outp!(
                "{lsn}\t{:?}\t{}\t{}\t{}\t{}\t{}\t{segment}\t{offset}",
                record.kind,
                record.group,
                record.instance,
                record.promised,
                record.accepted,
                record.payload.len()
            );
            if payload_bytes > 0 {
                let shown = &record.payload[..record.payload.len().min(payload_bytes)];
                let hex: String = shown.iter().map(|b| format!("{b:02x}")).collect();
                outp!("\t{hex}");
            }
            out!();
        }
        print_problems(&recovery);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_problems(recovery: &Recovery) {
    for region in &recovery.tail_regions {
        out!(
            "torn tail: segment {} offset {} length {} bytes: {}",
            region.segment,
            region.offset,
            region.len,
            region.reason
        );
    }
    if let Some((first, last)) = recovery.torn_lsns {
        out!("torn tail: LSNs {first}..={last} were cut (their write did not complete as a whole, or was damaged)");
    }
    if let Some(line) = tail_damage_line(recovery) {
        out!("{line}");
    }
    for damage in &recovery.damaged {
        let who = describe_identities(damage);
        out!(
            "DAMAGE: LSNs {}..={} at segment {} offset {}: {}; {}",
            damage.first_lsn,
            damage.last_lsn,
            damage.segment,
            damage.offset,
            damage.reason,
            who
        );
    }
    if recovery.junk_bytes > 0 {
        out!(
            "junk: {} bytes between batches that hid no records",
            recovery.junk_bytes
        );
    }
}

/// Which records a damage report names, or that every group of the core is suspect.
fn describe_identities(damage: &Damage) -> String {
    let names: Vec<String> = damage
        .groups_instances
        .iter()
        .map(|(g, i)| format!("group {g} instance {i}"))
        .collect();
    if damage.identities_complete {
        format!("lost records: {}", names.join(", "))
    } else if names.is_empty() {
        "unknown groups (identities of the lost records unknown): every group of this core is suspect"
            .into()
    } else {
        format!(
            "some identities unknown (every group suspect); legible: {}",
            names.join(", ")
        )
    }
}

/// The LSNs of the tail damage: exact for one cut batch, open-ended when the count is unknown.
fn tail_damage_lsns(recovery: &Recovery, damage: &Damage) -> String {
    if recovery.tail_damage_open_ended() {
        format!(
            "{}.. (at least {}..={}; how many is unknown)",
            damage.first_lsn, damage.first_lsn, damage.last_lsn
        )
    } else {
        format!("{}..={}", damage.first_lsn, damage.last_lsn)
    }
}

/// The report line of a cut last write that may have held acknowledged records, if any.
fn tail_damage_line(recovery: &Recovery) -> Option<String> {
    let damage = recovery.tail_damage.as_ref()?;
    Some(format!(
        "TAIL DAMAGE: LSNs {} at segment {} offset {}: {}; cut, but its replies may have left the node (the engine re-learns them): {}",
        tail_damage_lsns(recovery, damage),
        damage.segment,
        damage.offset,
        damage.reason,
        describe_identities(damage)
    ))
}

fn verify(dir: &Path, core: Option<u32>) -> Result<ExitCode, String> {
    let mut clean = true;
    for (core, recovery, segments) in inspect(dir, core)? {
        // Tail damage counts like `damaged`: `is_clean()` is false while either is set.
        let status = if recovery.is_clean() {
            "clean"
        } else {
            "NOT CLEAN"
        };
        out!(
            "core {core}: {status}: {} segments, {} records verified, next LSN {}",
            segments.len(),
            recovery.records.len(),
            recovery.next_lsn
        );
        if !recovery.is_clean() {
            clean = false;
            print_problems(&recovery);
        }
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[derive(Serialize)]
struct GroupStat {
    group: u32,
    records: u64,
    instance_min: u64,
    instance_max: u64,
    /// The group's log base (its highest log-base record): the WAL may purge below it.
    log_base: Option<u64>,
}

/// A group that keeps the oldest segment from being purged, and why.
#[derive(Serialize)]
struct PurgeHolder {
    group: u32,
    /// Its highest instance in the oldest segment.
    instance_max: u64,
    log_base: Option<u64>,
    why: String,
}

#[derive(Serialize)]
struct GroupInstance {
    group: u32,
    instance: u64,
}

/// `Recovery::tail_damage`, for `stat`.
#[derive(Serialize)]
struct TailDamageStat {
    first_lsn: u64,
    last_lsn: u64,
    /// `last_lsn` is only a lower bound (the count of cut LSNs is unknown).
    last_lsn_is_lower_bound: bool,
    identities_complete: bool,
    groups_instances: Vec<GroupInstance>,
    /// The LSNs and the records named (or "unknown groups"), as text.
    summary: String,
}

#[derive(Serialize)]
struct CoreStat {
    core: u32,
    segments: usize,
    segment_bytes_total: u64,
    records: usize,
    payload_bytes: u64,
    first_lsn: u64,
    last_lsn: u64,
    next_lsn: u64,
    groups: Vec<GroupStat>,
    /// The oldest segment, and the groups that keep it (what a purge pass would find).
    oldest_segment: Option<u64>,
    held_back_by: Vec<PurgeHolder>,
    torn_tail_bytes: u64,
    damaged_ranges: usize,
    tail_damage: Option<TailDamageStat>,
    junk_bytes: u64,
    stale_bytes: u64,
    clean: bool,
}

fn stat(dir: &Path, core: Option<u32>, json: bool) -> Result<ExitCode, String> {
    let mut stats = Vec::new();
    for (core, recovery, segments) in inspect(dir, core)? {
        let mut groups: BTreeMap<GroupId, GroupStat> = BTreeMap::new();
        let mut payload_bytes = 0u64;
        for (_, record) in &recovery.records {
            payload_bytes += record.payload.len() as u64;
            let entry = groups.entry(record.group).or_insert(GroupStat {
                group: record.group.0,
                records: 0,
                instance_min: record.instance.0,
                instance_max: record.instance.0,
                log_base: None,
            });
            if let Some((base, _)) = paxring_engine::core::log_base_of(record) {
                entry.log_base = Some(entry.log_base.unwrap_or(0).max(base.0));
            }
            entry.records += 1;
            entry.instance_min = entry.instance_min.min(record.instance.0);
            entry.instance_max = entry.instance_max.max(record.instance.0);
        }
        let oldest = recovery.segments.iter().min_by_key(|s| s.segment);
        let oldest_segment = oldest.map(|s| s.segment);
        let held_back_by: Vec<PurgeHolder> = oldest
            .map(|s| {
                s.groups_max_instance
                    .iter()
                    .filter_map(|(group, high)| {
                        let base = groups.get(group).and_then(|g| g.log_base);
                        let why = match base {
                            Some(base) if high.0 < base => return None,
                            Some(base) => format!(
                                "its log base {base} is not past instance {}: its state machine's checkpoint is not there yet",
                                high.0
                            ),
                            None => "it has no log base yet (no checkpoint)".to_string(),
                        };
                        Some(PurgeHolder {
                            group: group.0,
                            instance_max: high.0,
                            log_base: base,
                            why,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let segment_bytes_total = segments
            .iter()
            .map(|(_, path)| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
            .sum();
        stats.push(CoreStat {
            core,
            segments: segments.len(),
            segment_bytes_total,
            records: recovery.records.len(),
            payload_bytes,
            first_lsn: recovery.records.first().map_or(0, |(l, _)| l.0),
            last_lsn: recovery.last_lsn().0,
            next_lsn: recovery.next_lsn.0,
            groups: groups.into_values().collect(),
            oldest_segment,
            held_back_by,
            torn_tail_bytes: recovery.torn_tail_bytes,
            damaged_ranges: recovery.damaged.len(),
            tail_damage: recovery.tail_damage.as_ref().map(|d| TailDamageStat {
                first_lsn: d.first_lsn.0,
                last_lsn: d.last_lsn.0,
                last_lsn_is_lower_bound: recovery.tail_damage_open_ended(),
                identities_complete: d.identities_complete,
                groups_instances: d
                    .groups_instances
                    .iter()
                    .map(|(g, i)| GroupInstance {
                        group: g.0,
                        instance: i.0,
                    })
                    .collect(),
                summary: format!(
                    "LSNs {}: {}",
                    tail_damage_lsns(&recovery, d),
                    describe_identities(d)
                ),
            }),
            junk_bytes: recovery.junk_bytes,
            stale_bytes: recovery.stale_bytes,
            clean: recovery.is_clean(),
        });
    }
    if json {
        let text = serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?;
        out!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    for s in &stats {
        out!("core {}", s.core);
        out!(
            "  segments:        {} ({} bytes)",
            s.segments,
            s.segment_bytes_total
        );
        out!(
            "  records:         {} ({} payload bytes)",
            s.records,
            s.payload_bytes
        );
        out!(
            "  LSNs:            {}..={} (next {})",
            s.first_lsn,
            s.last_lsn,
            s.next_lsn
        );
        out!("  groups:          {}", s.groups.len());
        for g in &s.groups {
            out!(
                "    group {}: {} records, instances {}..={}, log base {}",
                g.group,
                g.records,
                g.instance_min,
                g.instance_max,
                g.log_base
                    .map_or_else(|| "none".to_string(), |b| b.to_string())
            );
        }
        match s.oldest_segment {
            Some(oldest) if s.held_back_by.is_empty() => out!(
                "  purge:           oldest segment {oldest}; no group needs it (a purge pass removes it unless it is being written)"
            ),
            Some(oldest) => {
                out!("  purge:           oldest segment {oldest} is held by");
                for h in &s.held_back_by {
                    out!(
                        "    group {} (instance {} in it): {}",
                        h.group,
                        h.instance_max,
                        h.why
                    );
                }
            }
            None => out!("  purge:           no segments"),
        }
        out!("  torn tail bytes: {}", s.torn_tail_bytes);
        out!("  damaged ranges:  {}", s.damaged_ranges);
        match &s.tail_damage {
            Some(tail) => out!("  tail damage:     {}", tail.summary),
            None => out!("  tail damage:     none"),
        }
        out!("  junk bytes:      {}", s.junk_bytes);
        out!(
            "  stale bytes:     {} (earlier life of recycled segments)",
            s.stale_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    //! Proves that `verify` exits 0 on a clean WAL and 1 on a damaged one (damage followed by
    //! valid data, a damaged last write, non-zero bytes after the last write), that the tail
    //! damage report names the cut LSNs and records (or "unknown groups"), and that a directory
    //! without segments is an error (exit 2), never a silent success.
    use super::*;
    use paxring_wal::{Backend, Ballot, Instance, RecordKind, RecordRef, Wal, WalOptions};
    use std::time::Duration;

    /// The one O_DIRECT skip-or-fail decision, shared with the WAL's tests.
    mod odirect {
        #![allow(dead_code)]
        include!("../../wal/tests/common/odirect.rs");
    }

    fn write_wal(dir: &Path) -> bool {
        let mut opts = WalOptions::new(dir, 0);
        opts.segment_bytes = 256 << 10;
        opts.buffer_bytes = 16 << 10;
        opts.backend = Backend::Auto;
        let (mut wal, _) = match Wal::open(opts) {
            Ok(opened) => opened,
            Err(error @ paxring_wal::WalError::DirectIoUnsupported { .. }) => {
                odirect::skip_or_fail("wal_cmd tests", dir, &error);
                return false;
            }
            Err(other) => panic!("{other}"),
        };
        for round in 0..4u64 {
            let record = RecordRef {
                kind: RecordKind::Accept,
                group: GroupId(1),
                instance: Instance(round),
                promised: Ballot::ZERO,
                accepted: Ballot::ZERO,
                payload: b"value",
            };
            wal.append(record).expect("append");
            while wal.durable_lsn() < wal.appended_lsn() {
                wal.submit().expect("submit");
                wal.wait(&[], Some(Duration::from_secs(5))).expect("wait");
            }
        }
        true
    }

    #[test]
    fn a_node_data_dir_is_inspected_core_by_core() {
        let data = tempfile::tempdir().expect("temp dir");
        let missing = data.path().join("nowhere");
        let err = inspect(&missing, None).unwrap_err();
        assert!(err.ends_with("does not exist"), "{err}");
        let err = inspect(data.path(), None).unwrap_err();
        assert!(err.contains("holds no WAL segments"), "{err}");
        let core0 = data.path().join("wal").join("core-0");
        std::fs::create_dir_all(&core0).unwrap();
        if !write_wal(&core0) {
            return;
        }
        // The data dir, its wal/ and the core's own directory all find core 0.
        for path in [data.path().to_path_buf(), data.path().join("wal"), core0] {
            let found = inspect(&path, None).expect("inspect");
            assert_eq!(found.len(), 1, "{}", path.display());
            assert_eq!(found[0].0, 0);
            assert_eq!(found[0].1.records.len(), 4);
            assert_eq!(verify(&path, None), Ok(ExitCode::SUCCESS));
        }
        let err = inspect(data.path(), Some(1)).unwrap_err();
        assert!(err.contains("no segments of core 1"), "{err}");
    }

    #[test]
    fn verify_exit_codes() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(
            verify(dir.path(), None).is_err(),
            "an empty directory is an error"
        );
        if !write_wal(dir.path()) {
            return;
        }
        assert_eq!(verify(dir.path(), None), Ok(ExitCode::SUCCESS));
        // Flip a payload byte of the second batch (after the segment header and batch one).
        let segment = dir.path().join(paxring_wal::segfile::segment_name(0, 1));
        let mut bytes = std::fs::read(&segment).expect("read");
        bytes[2 * 4096 + 64 + 56] ^= 0x01;
        std::fs::write(&segment, &bytes).expect("write");
        assert_eq!(verify(dir.path(), None), Ok(ExitCode::from(1)));
        assert_eq!(stat(dir.path(), None, true), Ok(ExitCode::SUCCESS));
        assert_eq!(dump(dir.path(), Some(0), Some(1), 4), Ok(ExitCode::SUCCESS));
        let recovery = |dir: &Path| inspect(dir, Some(0)).expect("inspect").remove(0).1;
        assert_eq!(tail_damage_line(&recovery(dir.path())), None);

        // Undo that flip; damage the payload of the last batch (LSN 4, instance 3) instead: it
        // is cut, and reported as tail damage.
        bytes[2 * 4096 + 64 + 56] ^= 0x01;
        let undamaged = bytes.clone();
        bytes[4 * 4096 + 64 + 56] ^= 0x01;
        std::fs::write(&segment, &bytes).expect("write");
        assert_eq!(verify(dir.path(), None), Ok(ExitCode::from(1)));
        let line = tail_damage_line(&recovery(dir.path())).expect("tail damage");
        assert!(line.contains("LSNs 4..=4 "), "{line}");
        assert!(line.contains("lost records: group 1 instance 3"), "{line}");
        assert_eq!(stat(dir.path(), None, false), Ok(ExitCode::SUCCESS));

        // Non-zero bytes after the last batch: the count and the groups are unknown.
        let mut bytes = undamaged;
        bytes[5 * 4096..6 * 4096].fill(0x5a);
        std::fs::write(&segment, &bytes).expect("write");
        assert_eq!(verify(dir.path(), None), Ok(ExitCode::from(1)));
        let line = tail_damage_line(&recovery(dir.path())).expect("tail damage");
        assert!(line.contains("LSNs 5.. (at least 5..=5"), "{line}");
        assert!(line.contains("unknown groups"), "{line}");
    }
}
