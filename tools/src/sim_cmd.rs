//! `paxring sim`: not built yet (see the open issue that owns it).
use std::process::ExitCode;

/// Arguments of `paxring sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {}

/// Runs `paxring sim`.
pub fn run(_args: SimArgs) -> ExitCode {
    eprintln!("paxring sim: not built yet");
    ExitCode::from(2)
}
