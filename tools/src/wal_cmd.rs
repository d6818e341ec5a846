//! `paxring wal`: not built yet (see the open issue that owns it).
use std::process::ExitCode;

/// Arguments of `paxring wal`.
#[derive(clap::Args, Debug)]
pub struct WalArgs {}

/// Runs `paxring wal`.
pub fn run(_args: WalArgs) -> ExitCode {
    eprintln!("paxring wal: not built yet");
    ExitCode::from(2)
}
