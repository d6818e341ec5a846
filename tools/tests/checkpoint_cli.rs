//! Proves, with the real `paxring` binary: `paxring checkpoint list DIR` prints one line per
//! file (group, instance, payload bytes, chunks, OK or the error naming what failed; temp files
//! as such) and exits 0 when every checkpoint is valid, 1 when one is corrupt; `paxring
//! checkpoint verify` takes a directory, one group's directory or a file and exits 0/1 the same
//! way; a missing directory (and, for verify, a directory without checkpoints) is a clear error
//! with exit 2.
use paxring_wal::checkpoint::CheckpointWriter;
use paxring_wal::{GroupId, Instance};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

fn paxring(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_paxring"))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run paxring");
    (
        output.status.code().expect("an exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn write_ckpt(dir: &Path, group: u32, instance: u64, len: usize) -> PathBuf {
    let mut writer =
        CheckpointWriter::with_chunk_bytes(dir, GroupId(group), Instance(instance), 7, 100)
            .expect("create");
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    writer.write_all(&data).expect("write");
    writer.finish().expect("finish").0
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[test]
fn list_and_verify_report_each_file_and_exit_by_validity() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = write_ckpt(root, 1, 10, 250);
    let b = write_ckpt(root, 1, 20, 0);
    let c = write_ckpt(root, 2, 5, 1000);

    let (code, stdout, stderr) = paxring(&["checkpoint", "list", s(root)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("group 1 instance 10: 250 payload bytes, 3 chunks of 100: OK"),
        "{stdout}"
    );
    assert!(lines[0].ends_with(s(&a)), "{stdout}");
    assert!(
        lines[1].starts_with("group 1 instance 20: 0 payload bytes, 0 chunks of 100: OK"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("group 2 instance 5: 1000 payload bytes, 10 chunks of 100: OK"),
        "{stdout}"
    );
    let (code, stdout, stderr) = paxring(&["checkpoint", "verify", s(root)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");

    // An unfinished writer's temp file is listed as such and does not make the list fail.
    let mut unfinished =
        CheckpointWriter::with_chunk_bytes(root, GroupId(2), Instance(6), 7, 100).unwrap();
    unfinished.write_all(&[1u8; 300]).unwrap();
    let (code, stdout, stderr) = paxring(&["checkpoint", "list", s(root)]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(
        stdout.contains("group 2 instance 6: temp file of an unfinished write, not a checkpoint"),
        "{stdout}"
    );
    let (code, stdout, _) = paxring(&["checkpoint", "verify", s(root)]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.lines().count(),
        3,
        "verify reports checkpoints only: {stdout}"
    );
    drop(unfinished);

    // Corrupt a chunk of the checkpoint of group 2.
    let mut bytes = std::fs::read(&c).unwrap();
    bytes[64 + 3 * 108 + 8 + 40] ^= 0x01;
    std::fs::write(&c, &bytes).unwrap();
    let (code, stdout, stderr) = paxring(&["checkpoint", "list", s(root)]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].contains(": OK: "), "{stdout}");
    assert!(lines[1].contains(": OK: "), "{stdout}");
    assert!(
        lines[2].starts_with("group 2 instance 5: CORRUPT: "),
        "{stdout}"
    );
    assert!(lines[2].contains("chunk 3 checksum mismatch"), "{stdout}");
    assert!(lines[2].contains(s(&c)), "{stdout}");
    assert!(
        stderr.contains("1 of 3 checkpoint files are not valid"),
        "{stderr}"
    );

    let (code, stdout, _) = paxring(&["checkpoint", "verify", s(root)]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("chunk 3 checksum mismatch"), "{stdout}");
    // One file, or one group's directory.
    let (code, stdout, _) = paxring(&["checkpoint", "verify", s(&c)]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let (code, stdout, _) = paxring(&["checkpoint", "verify", s(&b)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with("group 1 instance 20: 0 payload bytes"),
        "{stdout}"
    );
    let group1 = root.join("group-1");
    let (code, stdout, _) = paxring(&["checkpoint", "verify", s(&group1)]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    let (code, stdout, _) = paxring(&["checkpoint", "list", s(&root.join("group-2"))]);
    assert_eq!(code, 1, "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");

    // A truncated file names the chunk where it was cut.
    let bytes = std::fs::read(&a).unwrap();
    std::fs::write(&a, &bytes[..64 + 108 + 20]).unwrap();
    let (code, stdout, _) = paxring(&["checkpoint", "verify", s(&a)]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("CORRUPT"), "{stdout}");
    assert!(stdout.contains("truncated at chunk 1"), "{stdout}");
}

#[test]
fn a_missing_or_empty_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere");
    for command in ["list", "verify"] {
        let (code, stdout, stderr) = paxring(&["checkpoint", command, s(&missing)]);
        assert_eq!(code, 2, "{command}: {stdout}{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert!(
            stderr.contains(&format!("{} does not exist", missing.display())),
            "{command}: {stderr}"
        );
    }
    // Nothing to verify is not a success; an empty listing is.
    let (code, _, stderr) = paxring(&["checkpoint", "verify", s(dir.path())]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("holds no checkpoint files"), "{stderr}");
    let (code, stdout, stderr) = paxring(&["checkpoint", "list", s(dir.path())]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("holds no checkpoint files"), "{stderr}");
    // The help gives the exit statuses.
    let (code, stdout, _) = paxring(&["checkpoint", "verify", "--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("Exit status: 0"), "{stdout}");
}
