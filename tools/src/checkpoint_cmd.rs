//! `paxring checkpoint`: list and verify the checkpoint files of a checkpoint directory
//! (`DIR/group-G/ckpt-<instance>.pxc`), of one group's directory, or one file.
//!
//! Owns: the human-readable report of what `paxring_wal::checkpoint` finds and the exit status
//! (0 every checkpoint valid, 1 one is not, 2 the path cannot be read). Must never write to the
//! directory: it only reads and verifies.
use clap::{Args, Subcommand};
use paxring_wal::checkpoint::{self, CheckpointError, CheckpointMeta, Listed, ListedStatus};
use paxring_wal::{GroupId, Instance};
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

fn stdout_result(written: std::io::Result<()>) {
    if let Err(error) = written {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("paxring checkpoint: cannot write to stdout: {error}");
        std::process::exit(2);
    }
}

const EXIT_STATUS: &str = "Exit status: 0 when every checkpoint is valid, 1 when one is not \
(each line says what failed), 2 when the path does not exist or cannot be read.";

/// Arguments of `paxring checkpoint`: each subcommand takes a checkpoint directory DIR (holding
/// `group-G/ckpt-<instance>.pxc`), one group's directory `DIR/group-G`, or one file.
#[derive(Args, Debug)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    command: CheckpointCommand,
}

#[derive(Subcommand, Debug)]
enum CheckpointCommand {
    /// Print one line per file: group, instance, payload bytes, chunks and OK or what is
    /// wrong; temp files of unfinished writes and partial receives are listed as such.
    #[command(after_help = EXIT_STATUS)]
    List {
        /// A checkpoint directory (DIR/group-G/ckpt-*.pxc), one group's directory, or a file.
        path: PathBuf,
    },
    /// Read every checkpoint in full and check every checksum; print one line per checkpoint.
    /// A path without any checkpoint is an error (exit 2).
    #[command(after_help = EXIT_STATUS)]
    Verify {
        /// A checkpoint directory (DIR/group-G/ckpt-*.pxc), one group's directory, or a file.
        path: PathBuf,
    },
}

/// Runs `paxring checkpoint`.
pub fn run(args: CheckpointArgs) -> ExitCode {
    let result = match args.command {
        CheckpointCommand::List { path } => report(&path, false),
        CheckpointCommand::Verify { path } => report(&path, true),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("paxring checkpoint: {message}");
            ExitCode::from(2)
        }
    }
}

/// The group a directory named `group-G` holds.
fn group_of_dir(path: &Path) -> Option<GroupId> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_prefix("group-")?;
    let group: u32 = digits.parse().ok()?;
    (group.to_string() == digits).then_some(GroupId(group))
}

/// One file to report: `Listed` with the group unknown when a single file is not in a
/// `group-G` directory.
struct Entry {
    path: PathBuf,
    group: Option<GroupId>,
    instance: Option<Instance>,
    status: ListedStatus,
}

impl From<Listed> for Entry {
    fn from(listed: Listed) -> Self {
        Entry {
            path: listed.path,
            group: Some(listed.group),
            instance: listed.instance,
            status: listed.status,
        }
    }
}

/// The files `path` names: a single file (verified as a checkpoint whatever its name), a
/// checkpoint directory, or one group's directory.
fn files(path: &Path) -> Result<Vec<Entry>, String> {
    let metadata = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{} does not exist", path.display())
        } else {
            format!("cannot read {}: {e}", path.display())
        }
    })?;
    if !metadata.is_dir() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        return Ok(vec![Entry {
            path: path.to_path_buf(),
            group: path.parent().and_then(group_of_dir),
            instance: checkpoint::parse_checkpoint_name(name),
            status: ListedStatus::Checkpoint(checkpoint::verify(path)),
        }]);
    }
    let listed = checkpoint::list(path).map_err(|e| e.to_string())?;
    if listed.is_empty() {
        // One group's directory: list its parent, keep that group.
        if let (Some(group), Some(parent)) = (group_of_dir(path), path.parent()) {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            let listed = checkpoint::list(parent).map_err(|e| e.to_string())?;
            return Ok(listed
                .into_iter()
                .filter(|l| l.group == group)
                .map(Entry::from)
                .collect());
        }
    }
    Ok(listed.into_iter().map(Entry::from).collect())
}

fn or_unknown<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// One line for a checkpoint: its description and OK, or CORRUPT (or ERROR for a failed system
/// call) and what is wrong (the error names the file).
fn checkpoint_line(entry: &Entry, status: &Result<CheckpointMeta, CheckpointError>) -> String {
    match status {
        Ok(meta) => format!(
            "group {} instance {}: {} payload bytes, {} chunks of {}: OK: {}",
            meta.group,
            meta.instance,
            meta.payload_bytes,
            meta.chunks,
            meta.chunk_bytes,
            entry.path.display()
        ),
        Err(error) => format!(
            "group {} instance {}: {}: {error}",
            or_unknown(entry.group),
            or_unknown(entry.instance),
            if error.is_corruption() {
                "CORRUPT"
            } else {
                "ERROR"
            }
        ),
    }
}

fn report(path: &Path, verify_only: bool) -> Result<ExitCode, String> {
    let entries = files(path)?;
    let mut checkpoints = 0usize;
    let mut bad = 0usize;
    for entry in &entries {
        let what = match &entry.status {
            ListedStatus::Checkpoint(status) => {
                checkpoints += 1;
                if status.is_err() {
                    bad += 1;
                }
                out!("{}", checkpoint_line(entry, status));
                continue;
            }
            _ if verify_only => continue,
            ListedStatus::Temp => "temp file of an unfinished write",
            ListedStatus::PartialReceive => "partial receive",
        };
        out!(
            "group {} instance {}: {what}, not a checkpoint: {}",
            or_unknown(entry.group),
            or_unknown(entry.instance),
            entry.path.display()
        );
    }
    if checkpoints == 0 {
        let message = format!(
            "{} holds no checkpoint files (expected DIR/group-G/ckpt-<instance>.pxc)",
            path.display()
        );
        if verify_only {
            return Err(message);
        }
        eprintln!("paxring checkpoint: {message}");
    }
    if bad > 0 {
        eprintln!("paxring checkpoint: {bad} of {checkpoints} checkpoint files are not valid");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
