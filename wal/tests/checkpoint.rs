//! Proves the checkpoint container: payloads of 0 bytes, 1 byte, exactly one chunk and many
//! chunks come back byte for byte through `Read` and through `chunk(i)`; the worked example of
//! `docs/WAL_FORMAT.md` is the file the writer produces, byte for byte; every corruption (a
//! flipped byte anywhere, in the header, a chunk's length, CRC or body, the trailer; swapped
//! chunks; a cut at any length; bytes appended) is detected by `verify`, by `open` or the
//! stream, and the error names what failed; `newest_valid` skips a corrupt newer checkpoint;
//! an unfinished writer leaves no checkpoint and no temp file; a transfer through
//! `CheckpointReceiver` reproduces the file exactly, resumes after an interruption (and after
//! a torn or damaged partial chunk) and refuses a wrong CRC, a wrong length or an out-of-order
//! chunk; `prune` keeps the newest N valid checkpoints.
use paxring_wal::checkpoint::{
    self, chunk_crc, CheckpointError, CheckpointMeta, CheckpointReader, CheckpointReceiver,
    CheckpointWriter, ListedStatus, CHUNK_BYTES_DEFAULT,
};
use paxring_wal::{GroupId, Instance};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const G: GroupId = GroupId(3);

/// Deterministic pseudo-random bytes.
fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Writes `data` as the checkpoint of `group` at `instance`, in pieces of irregular sizes.
fn write_ckpt(
    dir: &Path,
    group: GroupId,
    instance: u64,
    chunk_bytes: u32,
    data: &[u8],
) -> (PathBuf, CheckpointMeta) {
    let mut writer = CheckpointWriter::with_chunk_bytes(
        dir,
        group,
        Instance(instance),
        0xabcd_0000 ^ instance as u32,
        chunk_bytes,
    )
    .expect("create");
    let mut rest = data;
    let mut piece = 1usize;
    while !rest.is_empty() {
        let n = piece.min(rest.len());
        writer.write_all(&rest[..n]).expect("write");
        rest = &rest[n..];
        piece = piece * 3 % 1000 + 1;
    }
    writer.finish().expect("finish")
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut reader = CheckpointReader::open(path).expect("open");
    let mut out = Vec::new();
    reader.read_to_end(&mut out).expect("read");
    out
}

fn chunks_of(path: &Path) -> Vec<u8> {
    let mut reader = CheckpointReader::open(path).expect("open");
    let mut out = Vec::new();
    for i in 0..reader.meta().chunks {
        out.extend_from_slice(&reader.chunk(i).expect("chunk"));
    }
    out
}

#[test]
fn roundtrip_of_several_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(usize, u32); 7] = [
        (0, 64),
        (1, 64),
        (64, 64),
        (1000, 64),
        (1024, 64),
        (0, CHUNK_BYTES_DEFAULT),
        (CHUNK_BYTES_DEFAULT as usize * 2 + 17, CHUNK_BYTES_DEFAULT),
    ];
    for (n, (len, chunk_bytes)) in cases.into_iter().enumerate() {
        let data = payload(len, n as u64);
        let instance = 100 + n as u64;
        let (path, meta) = write_ckpt(dir.path(), G, instance, chunk_bytes, &data);
        let context = format!("{len} bytes in chunks of {chunk_bytes}");
        assert_eq!(
            path,
            dir.path()
                .join("group-3")
                .join(format!("ckpt-{instance:020}.pxc")),
            "{context}"
        );
        assert_eq!(meta.group, G);
        assert_eq!(meta.instance, Instance(instance));
        assert_eq!(meta.log_checksum, 0xabcd_0000 ^ instance as u32);
        assert_eq!(meta.payload_bytes, len as u64, "{context}");
        assert_eq!(meta.chunk_bytes, chunk_bytes);
        assert_eq!(
            meta.chunks,
            (len as u64).div_ceil(u64::from(chunk_bytes)),
            "{context}"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            meta.file_bytes().unwrap(),
            "{context}"
        );
        assert_eq!(read_all(&path), data, "{context}");
        assert_eq!(chunks_of(&path), data, "{context}");
        assert_eq!(
            checkpoint::verify(&path).expect("verify"),
            meta,
            "{context}"
        );
        let mut reader = CheckpointReader::open(&path).unwrap();
        assert_eq!(*reader.meta(), meta);
        assert!(matches!(
            reader.chunk(meta.chunks),
            Err(CheckpointError::ChunkOutOfRange { .. })
        ));
        // chunk(i) in the middle of the stream does not disturb it.
        let mut head = vec![0u8; len.min(10)];
        reader.read_exact(&mut head).unwrap();
        if meta.chunks > 1 {
            reader.chunk(meta.chunks - 1).unwrap();
        }
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        head.extend_from_slice(&rest);
        assert_eq!(head, data, "{context}");
    }
    // Only the checkpoints are left in the group directory (no temp files).
    let names: Vec<String> = std::fs::read_dir(dir.path().join("group-3"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), cases.len(), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("ckpt-")), "{names:?}");
}

#[test]
fn the_way_bytes_are_written_does_not_change_the_file() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let data = payload(777, 9);
    let mut a = CheckpointWriter::with_chunk_bytes(dir_a.path(), G, Instance(5), 1, 100).unwrap();
    a.write_all(&data).unwrap();
    a.flush().unwrap();
    let (path_a, _) = a.finish().unwrap();
    let mut b = CheckpointWriter::with_chunk_bytes(dir_b.path(), G, Instance(5), 1, 100).unwrap();
    for byte in &data {
        b.write_all(std::slice::from_ref(byte)).unwrap();
        b.flush().unwrap();
    }
    assert_eq!(b.payload_bytes(), 777);
    let (path_b, _) = b.finish().unwrap();
    assert_eq!(
        std::fs::read(path_a).unwrap(),
        std::fs::read(path_b).unwrap()
    );
}

/// The worked example's bytes from the "Checkpoint files" section of docs/WAL_FORMAT.md.
fn documented_example() -> Vec<u8> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/WAL_FORMAT.md"),
    )
    .expect("read docs/WAL_FORMAT.md");
    let section = doc
        .split_once("## Checkpoint files")
        .expect("a Checkpoint files section")
        .1;
    let example = section
        .split_once("### Worked example")
        .expect("a worked example")
        .1;
    let block = example
        .split_once("```text\n")
        .expect("a text block")
        .1
        .split_once("```")
        .expect("the end of the block")
        .0;
    let mut bytes = Vec::new();
    for line in block.lines() {
        let Some((left, _meaning)) = line.split_once('|') else {
            continue;
        };
        let mut tokens = left.split_whitespace();
        let Some(offset) = tokens.next() else {
            continue;
        };
        let offset = usize::from_str_radix(offset, 16).expect("a hex offset");
        assert_eq!(offset, bytes.len(), "offset of line {line:?}");
        for token in tokens {
            assert_eq!(token.len(), 2, "a byte in {line:?}");
            bytes.push(u8::from_str_radix(token, 16).expect("a hex byte"));
        }
    }
    bytes
}

#[test]
fn worked_example_of_the_format_doc() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer =
        CheckpointWriter::with_chunk_bytes(dir.path(), GroupId(7), Instance(42), 0xdead_beef, 4)
            .unwrap();
    writer.write_all(b"hello").unwrap();
    let (path, meta) = writer.finish().unwrap();
    assert_eq!(
        path,
        dir.path()
            .join("group-7")
            .join("ckpt-00000000000000000042.pxc")
    );
    assert_eq!((meta.payload_bytes, meta.chunks), (5, 2));
    let written = std::fs::read(&path).unwrap();
    let documented = documented_example();
    assert_eq!(documented.len(), 117);
    assert_eq!(
        written, documented,
        "the file differs from the documented example"
    );
    assert_eq!(
        CheckpointReader::open(&path).unwrap().payload_crc(),
        crc32fast::hash(b"hello")
    );
}

/// What a corruption must produce, everywhere it is looked at.
fn assert_detected(path: &Path, what: &str, matches: impl Fn(&CheckpointError) -> bool) {
    let err = checkpoint::verify(path).expect_err(what);
    assert!(matches(&err), "{what}: verify said {err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{what}: the message names the file: {err}"
    );
    // Through the stream: open, or reading to the end, fails the same way.
    match CheckpointReader::open(path) {
        Err(err) => assert!(matches(&err), "{what}: open said {err:?}"),
        Ok(mut reader) => {
            let mut out = Vec::new();
            let err = reader.read_to_end(&mut out).expect_err(what);
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}");
            let inner = err
                .get_ref()
                .and_then(|e| e.downcast_ref::<CheckpointError>())
                .unwrap_or_else(|| panic!("{what}: the io::Error wraps a CheckpointError"));
            assert!(matches(inner), "{what}: read said {inner:?}");
            // Reading again repeats the error instead of ending the stream.
            let again = reader.read(&mut [0u8; 16]).expect_err(what);
            assert_eq!(again.kind(), std::io::ErrorKind::InvalidData, "{what}");
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    good: Vec<u8>,
    data: Vec<u8>,
}

/// 10 chunks of 100 bytes (the last of 50): 64 + 9 * 108 + 58 + 32 = 1126 bytes.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let data = payload(950, 77);
    let (path, meta) = write_ckpt(dir.path(), G, 9, 100, &data);
    assert_eq!(meta.chunks, 10);
    let good = std::fs::read(&path).unwrap();
    assert_eq!(good.len(), 1126);
    Fixture {
        _dir: dir,
        path,
        good,
        data,
    }
}

impl Fixture {
    fn with(&self, change: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = self.good.clone();
        change(&mut bytes);
        std::fs::write(&self.path, &bytes).unwrap();
    }
}

/// Offset of chunk `i` of the fixture.
fn chunk_at(i: usize) -> usize {
    64 + i * 108
}

fn set_crc(bytes: &mut [u8], covered: std::ops::Range<usize>, at: usize) {
    let crc = crc32fast::hash(&bytes[covered]);
    bytes[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn header_damage_is_detected() {
    let f = fixture();
    f.with(|b| b[20] ^= 0x01);
    assert_detected(&f.path, "a flipped instance byte", |e| {
        matches!(e, CheckpointError::HeaderChecksum { .. })
            && e.to_string().contains("header checksum")
    });
    f.with(|b| b[61] ^= 0x80);
    assert_detected(&f.path, "a flipped header CRC", |e| {
        matches!(e, CheckpointError::HeaderChecksum { .. })
    });
    f.with(|b| b[0] = b'Q');
    assert_detected(&f.path, "bad magic", |e| {
        matches!(e, CheckpointError::BadMagic { .. }) && e.to_string().contains("bad magic")
    });
    f.with(|b| {
        b[4] = 2;
        set_crc(b, 0..60, 60);
    });
    assert_detected(&f.path, "version 2", |e| {
        matches!(e, CheckpointError::UnsupportedVersion { version: 2, .. })
            && e.to_string().contains("version 2")
    });
    f.with(|b| {
        b[12..16].copy_from_slice(&0u32.to_le_bytes());
        set_crc(b, 0..60, 60);
    });
    assert_detected(&f.path, "chunk_bytes 0", |e| {
        matches!(e, CheckpointError::BadHeader { .. })
    });
}

#[test]
fn chunk_damage_is_detected_and_named() {
    let f = fixture();
    // A chunk's length field.
    f.with(|b| b[chunk_at(1)] ^= 0x01);
    assert_detected(&f.path, "chunk 1 length", |e| {
        matches!(
            e,
            CheckpointError::ChunkLength {
                chunk: 1,
                found: 101,
                expected: 100,
                ..
            }
        ) && e.to_string().contains("chunk 1 length")
    });
    // A chunk's body: nothing of the damaged chunk is returned by the stream.
    f.with(|b| b[chunk_at(2) + 8 + 50] ^= 0x10);
    assert_detected(&f.path, "chunk 2 body", |e| {
        matches!(e, CheckpointError::ChunkChecksum { chunk: 2, .. })
            && e.to_string().contains("chunk 2 checksum")
    });
    let mut reader = CheckpointReader::open(&f.path).unwrap();
    let mut out = Vec::new();
    assert!(reader.read_to_end(&mut out).is_err());
    assert_eq!(out, f.data[..200], "only the chunks before the damage");
    assert_eq!(reader.chunk(1).unwrap()[..], f.data[100..200]);
    assert!(matches!(
        reader.chunk(2),
        Err(CheckpointError::ChunkChecksum { chunk: 2, .. })
    ));
    // A chunk's CRC field.
    f.with(|b| b[chunk_at(9) + 4] ^= 0x01);
    assert_detected(&f.path, "chunk 9 CRC", |e| {
        matches!(e, CheckpointError::ChunkChecksum { chunk: 9, .. })
    });
    // Two whole chunks swapped: each passes its CRC, the payload CRC does not.
    f.with(|b| {
        let (first, second) = (chunk_at(3), chunk_at(4));
        let a = b[first..second].to_vec();
        let c = b[second..second + 108].to_vec();
        b[first..first + 108].copy_from_slice(&c);
        b[second..second + 108].copy_from_slice(&a);
    });
    assert_detected(&f.path, "swapped chunks", |e| {
        matches!(
            e,
            CheckpointError::TrailerMismatch {
                what: "payload CRC",
                ..
            }
        ) && e.to_string().contains("payload CRC")
    });
}

#[test]
fn trailer_damage_is_detected() {
    let f = fixture();
    let trailer = f.good.len() - 32;
    for (at, what) in [
        (0, "trailer magic"),
        (5, "trailer header CRC copy"),
        (8, "trailer chunk count"),
        (16, "trailer payload bytes"),
        (24, "trailer payload CRC"),
        (29, "trailer CRC"),
    ] {
        f.with(|b| b[trailer + at] ^= 0x04);
        assert_detected(&f.path, what, |e| {
            matches!(e, CheckpointError::TrailerChecksum { .. })
                && e.to_string().contains("trailer checksum")
        });
    }
    // Intact trailers that disagree with the file.
    f.with(|b| {
        b[trailer + 24] ^= 0x01;
        set_crc(b, trailer..trailer + 28, trailer + 28);
    });
    assert_detected(&f.path, "another payload CRC", |e| {
        matches!(
            e,
            CheckpointError::TrailerMismatch {
                what: "payload CRC",
                ..
            }
        )
    });
    f.with(|b| {
        b[trailer + 16..trailer + 24].copy_from_slice(&951u64.to_le_bytes());
        set_crc(b, trailer..trailer + 28, trailer + 28);
    });
    assert_detected(&f.path, "another payload length", |e| {
        matches!(
            e,
            CheckpointError::TrailerMismatch {
                what: "file length",
                ..
            }
        )
    });
    f.with(|b| {
        b[trailer + 8..trailer + 16].copy_from_slice(&11u64.to_le_bytes());
        set_crc(b, trailer..trailer + 28, trailer + 28);
    });
    assert_detected(&f.path, "another chunk count", |e| {
        matches!(
            e,
            CheckpointError::TrailerMismatch {
                what: "chunk count",
                ..
            }
        )
    });
    f.with(|b| {
        b[trailer + 4] ^= 0x01;
        set_crc(b, trailer..trailer + 28, trailer + 28);
    });
    assert_detected(&f.path, "another header's trailer", |e| {
        matches!(
            e,
            CheckpointError::TrailerMismatch {
                what: "header checksum",
                ..
            }
        )
    });
    f.with(|b| b.extend_from_slice(&[0u8; 5]));
    assert_detected(&f.path, "bytes after the trailer", |e| {
        matches!(
            e,
            CheckpointError::TrailerMismatch {
                what: "file length",
                trailer: 1126,
                found: 1131,
                ..
            }
        )
    });
}

#[test]
fn truncation_is_detected_at_the_chunk_it_cuts() {
    let f = fixture();
    let len = f.good.len();
    let cases: [(usize, Option<u64>); 9] = [
        (0, None),
        (10, None),
        (63, None),
        (64, Some(0)),
        (chunk_at(3) + 4, Some(3)),
        (chunk_at(3) + 50, Some(3)),
        (chunk_at(4), Some(4)),
        (len - 32, Some(10)),
        (len - 5, Some(10)),
    ];
    for (cut, chunk) in cases {
        f.with(|b| b.truncate(cut));
        let what = format!("cut at {cut}");
        assert_detected(&f.path, &what, |e| match chunk {
            None => matches!(e, CheckpointError::TruncatedHeader { .. }),
            Some(chunk) => {
                matches!(e, CheckpointError::Truncated { chunk: c, .. } if *c == chunk)
                    && e.to_string()
                        .contains(&format!("truncated at chunk {chunk}"))
            }
        });
    }
}

#[test]
fn every_single_byte_change_and_every_cut_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_ckpt(dir.path(), G, 1, 16, &payload(70, 5));
    let good = std::fs::read(&path).unwrap();
    for at in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bytes = good.clone();
            bytes[at] ^= flip;
            std::fs::write(&path, &bytes).unwrap();
            let err = checkpoint::verify(&path).expect_err("a changed byte");
            assert!(err.is_corruption(), "byte {at} ^ {flip:#x}: {err:?}");
            if let Ok(mut reader) = CheckpointReader::open(&path) {
                assert!(
                    reader.read_to_end(&mut Vec::new()).is_err(),
                    "byte {at} ^ {flip:#x} streamed without error"
                );
            }
        }
    }
    for cut in 0..good.len() {
        std::fs::write(&path, &good[..cut]).unwrap();
        let err = checkpoint::verify(&path).expect_err("a cut");
        assert!(
            matches!(
                err,
                CheckpointError::Truncated { .. } | CheckpointError::TruncatedHeader { .. }
            ),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn newest_valid_skips_a_corrupt_newer_checkpoint_and_list_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    assert!(checkpoint::newest_valid(dir.path(), G).unwrap().is_none());
    let (p10, _) = write_ckpt(dir.path(), G, 10, 32, &payload(100, 10));
    let (p20, m20) = write_ckpt(dir.path(), G, 20, 32, &payload(100, 20));
    let (p30, _) = write_ckpt(dir.path(), G, 30, 32, &payload(100, 30));
    write_ckpt(dir.path(), GroupId(4), 50, 32, &payload(10, 50));
    assert_eq!(
        checkpoint::newest_valid(dir.path(), G).unwrap().unwrap().0,
        p30
    );
    let mut bytes = std::fs::read(&p30).unwrap();
    bytes[64 + 8 + 3] ^= 0x01;
    std::fs::write(&p30, &bytes).unwrap();
    // A valid file under the wrong name is not a checkpoint of that instance.
    let p40 = p10.with_file_name("ckpt-00000000000000000040.pxc");
    std::fs::copy(&p10, &p40).unwrap();
    assert_eq!(
        checkpoint::newest_valid(dir.path(), G).unwrap(),
        Some((p20.clone(), m20))
    );
    let listed = checkpoint::list(dir.path()).unwrap();
    let summary: Vec<(u32, Option<u64>, bool)> = listed
        .iter()
        .map(|l| (l.group.0, l.instance.map(|i| i.0), l.is_corrupt()))
        .collect();
    assert_eq!(
        summary,
        [
            (3, Some(10), false),
            (3, Some(20), false),
            (3, Some(30), true),
            (3, Some(40), true),
            (4, Some(50), false),
        ]
    );
    match &listed[2].status {
        ListedStatus::Checkpoint(Err(CheckpointError::ChunkChecksum { chunk: 0, .. })) => {}
        other => panic!("{other:?}"),
    }
    match &listed[3].status {
        ListedStatus::Checkpoint(Err(e @ CheckpointError::NameMismatch { .. })) => {
            assert!(e.to_string().contains("instance 40"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(listed[1].meta(), Some(&m20));
    // A file named like a checkpoint but unparsable is listed as a bad one.
    std::fs::write(p10.with_file_name("ckpt-12.pxc"), b"x").unwrap();
    let listed = checkpoint::list(dir.path()).unwrap();
    assert!(listed.iter().any(|l| matches!(
        l.status,
        ListedStatus::Checkpoint(Err(CheckpointError::BadName { .. }))
    )));
    // A missing directory is an error naming it.
    let missing = dir.path().join("nowhere");
    let err = checkpoint::list(&missing).unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
}

/// A server looks up the newest valid checkpoint on every peer's request: the cache reads a
/// corrupt file once (then skips it), does not re-read a valid one, and checks a file again
/// once it changes.
#[test]
fn verify_cache_reads_each_file_once_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut cache = checkpoint::VerifyCache::default();
    assert!(cache.newest_valid(dir.path(), G).unwrap().is_none());
    let (p20, m20) = write_ckpt(dir.path(), G, 20, 32, &payload(100, 20));
    let (p30, m30) = write_ckpt(dir.path(), G, 30, 32, &payload(100, 30));
    let good = std::fs::read(&p30).unwrap();
    let mut bad = good.clone();
    bad[64 + 8 + 3] ^= 0x01;
    std::fs::write(&p30, &bad).unwrap();
    for round in 0..3 {
        assert_eq!(
            cache.newest_valid(dir.path(), G).unwrap(),
            Some((p20.clone(), m20)),
            "round {round}"
        );
        assert_eq!(cache.verifications, 2, "round {round}: each file read once");
        assert_eq!(cache.corrupt_found, 1, "round {round}");
    }
    // Repaired (a new modification time and the same length): verified again, and chosen.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&p30, &good).unwrap();
    assert_eq!(
        cache.newest_valid(dir.path(), G).unwrap(),
        Some((p30.clone(), m30))
    );
    assert_eq!(cache.verifications, 3);
}

#[test]
fn an_unfinished_writer_leaves_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = CheckpointWriter::with_chunk_bytes(dir.path(), G, Instance(8), 0, 64).unwrap();
    writer.write_all(&payload(1000, 1)).unwrap();
    assert!(!writer.path().exists(), "not published before finish");
    let listed = checkpoint::list(dir.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].status, ListedStatus::Temp));
    assert!(!listed[0].is_checkpoint());
    assert_eq!(listed[0].instance, Some(Instance(8)));
    assert!(listed[0].path.exists());
    assert!(checkpoint::newest_valid(dir.path(), G).unwrap().is_none());
    drop(writer);
    assert!(checkpoint::list(dir.path()).unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.path().join("group-3"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The temp file of a crashed writer is listed as such, never as a checkpoint.
    std::fs::write(
        dir.path()
            .join("group-3")
            .join(".ckpt-00000000000000000008.1-0.tmp"),
        b"partial",
    )
    .unwrap();
    let listed = checkpoint::list(dir.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].status, ListedStatus::Temp));
    assert!(checkpoint::newest_valid(dir.path(), G).unwrap().is_none());
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for chunk_bytes in [0, checkpoint::CHUNK_BYTES_MAX + 1] {
        let err = CheckpointWriter::with_chunk_bytes(dir.path(), G, Instance(1), 0, chunk_bytes)
            .unwrap_err();
        assert!(
            matches!(err, CheckpointError::InvalidChunkBytes { .. }),
            "{err:?}"
        );
    }
    let meta = CheckpointMeta {
        group: G,
        instance: Instance(1),
        log_checksum: 0,
        payload_bytes: 100,
        chunk_bytes: 10,
        chunks: 9,
    };
    let err = CheckpointReceiver::open(dir.path(), &meta).unwrap_err();
    assert!(
        matches!(err, CheckpointError::InvalidMeta { .. }),
        "{err:?}"
    );
}

/// Sends chunks `range` of `reader` into `receiver`.
fn send(
    reader: &mut CheckpointReader,
    receiver: &mut CheckpointReceiver,
    range: std::ops::Range<u64>,
) {
    for i in range {
        assert_eq!(receiver.next_chunk(), i);
        let bytes = reader.chunk(i).unwrap();
        receiver.accept(i, &bytes, chunk_crc(&bytes)).unwrap();
    }
}

#[test]
fn a_transfer_reproduces_the_file() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    for (len, instance) in [(0usize, 1u64), (1, 2), (1050, 3)] {
        let data = payload(len, instance);
        let (path, meta) = write_ckpt(from.path(), G, instance, 100, &data);
        let mut reader = CheckpointReader::open(&path).unwrap();
        let mut receiver = CheckpointReceiver::open(to.path(), reader.meta()).unwrap();
        assert_eq!(*receiver.meta(), meta);
        send(&mut reader, &mut receiver, 0..meta.chunks);
        let received = receiver.finish().unwrap();
        assert_eq!(
            received,
            checkpoint::checkpoint_path(to.path(), G, Instance(instance))
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&received).unwrap()
        );
        assert_eq!(checkpoint::verify(&received).unwrap(), meta);
        assert_eq!(read_all(&received), data);
    }
    // Nothing but checkpoints is left behind.
    assert!(checkpoint::list(to.path())
        .unwrap()
        .iter()
        .all(|l| l.meta().is_some()));
}

#[test]
fn an_interrupted_transfer_resumes_where_it_stopped() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    let data = payload(1050, 4);
    let (path, meta) = write_ckpt(from.path(), G, 12, 100, &data);
    let mut reader = CheckpointReader::open(&path).unwrap();

    let mut receiver = CheckpointReceiver::open(to.path(), &meta).unwrap();
    send(&mut reader, &mut receiver, 0..4);
    let part = receiver.part_path().to_path_buf();
    drop(receiver);
    let listed = checkpoint::list(to.path()).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(matches!(listed[0].status, ListedStatus::PartialReceive));
    assert!(checkpoint::newest_valid(to.path(), G).unwrap().is_none());

    let mut receiver = CheckpointReceiver::open(to.path(), &meta).unwrap();
    assert_eq!(receiver.next_chunk(), 4, "resumes after the 4 chunks held");
    send(&mut reader, &mut receiver, 4..7);
    drop(receiver);

    // A torn chunk at the end of the partial file (a crash mid-write) is dropped.
    let mut bytes = std::fs::read(&part).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&100u32.to_le_bytes());
    bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
    std::fs::write(&part, &bytes).unwrap();
    let receiver = CheckpointReceiver::open(to.path(), &meta).unwrap();
    assert_eq!(receiver.next_chunk(), 7);
    drop(receiver);
    assert_eq!(std::fs::metadata(&part).unwrap().len() as usize, whole);

    // A damaged chunk in the partial file: the receive resumes at it.
    let mut bytes = std::fs::read(&part).unwrap();
    bytes[64 + 5 * 108 + 8 + 1] ^= 0x01;
    std::fs::write(&part, &bytes).unwrap();
    let mut receiver = CheckpointReceiver::open(to.path(), &meta).unwrap();
    assert_eq!(receiver.next_chunk(), 5);
    send(&mut reader, &mut receiver, 5..meta.chunks);
    let received = receiver.finish().unwrap();
    assert!(!part.exists());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&received).unwrap()
    );
    assert_eq!(read_all(&received), data);
}

#[test]
fn a_partial_of_another_checkpoint_is_discarded() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    let (path, meta) = write_ckpt(from.path(), G, 12, 100, &payload(1050, 4));
    let mut reader = CheckpointReader::open(&path).unwrap();
    let mut receiver = CheckpointReceiver::open(to.path(), &meta).unwrap();
    send(&mut reader, &mut receiver, 0..3);
    let old_part = receiver.part_path().to_path_buf();
    drop(receiver);

    // Same instance, another log checksum: start again.
    let other = CheckpointMeta {
        log_checksum: meta.log_checksum ^ 1,
        ..meta
    };
    let receiver = CheckpointReceiver::open(to.path(), &other).unwrap();
    assert_eq!(receiver.next_chunk(), 0);
    drop(receiver);
    // Back to the first description: its chunks are gone.
    let mut receiver = CheckpointReceiver::open(to.path(), &meta).unwrap();
    assert_eq!(receiver.next_chunk(), 0);
    send(&mut reader, &mut receiver, 0..3);
    drop(receiver);

    // Another instance of the group: the old partial file is removed.
    let newer = CheckpointMeta {
        instance: Instance(13),
        ..meta
    };
    let receiver = CheckpointReceiver::open(to.path(), &newer).unwrap();
    assert_eq!(receiver.next_chunk(), 0);
    assert!(!old_part.exists());
    assert_ne!(receiver.part_path(), old_part);
}

#[test]
fn a_receiver_refuses_bad_chunks() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    let (path, meta) = write_ckpt(from.path(), G, 12, 100, &payload(1050, 4));
    let mut reader = CheckpointReader::open(&path).unwrap();
    let mut receiver = CheckpointReceiver::open(to.path(), &meta).unwrap();
    let c0 = reader.chunk(0).unwrap();
    let c1 = reader.chunk(1).unwrap();

    let err = receiver.accept(0, &c0, chunk_crc(&c0) ^ 1).unwrap_err();
    assert!(
        matches!(err, CheckpointError::ChunkChecksum { chunk: 0, .. }),
        "{err:?}"
    );
    let mut damaged = c0.to_vec();
    damaged[7] ^= 0x20;
    let err = receiver.accept(0, &damaged, chunk_crc(&c0)).unwrap_err();
    assert!(
        matches!(err, CheckpointError::ChunkChecksum { chunk: 0, .. }),
        "{err:?}"
    );
    let err = receiver.accept(1, &c1, chunk_crc(&c1)).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::OutOfOrder {
                expected: 0,
                got: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("out of order"), "{err}");
    let err = receiver
        .accept(0, &c0[..99], chunk_crc(&c0[..99]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::ChunkLength {
                found: 99,
                expected: 100,
                ..
            }
        ),
        "{err:?}"
    );
    let err = receiver.accept(11, &c0, chunk_crc(&c0)).unwrap_err();
    assert!(
        matches!(err, CheckpointError::ChunkOutOfRange { chunk: 11, .. }),
        "{err:?}"
    );
    assert_eq!(receiver.next_chunk(), 0, "nothing refused was taken");

    receiver.accept(0, &c0, chunk_crc(&c0)).unwrap();
    let err = receiver.accept(0, &c0, chunk_crc(&c0)).unwrap_err();
    assert!(matches!(err, CheckpointError::OutOfOrder { .. }), "{err:?}");
    assert_eq!(receiver.next_chunk(), 1);
    let err = receiver.finish().unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::Incomplete {
                received: 1,
                chunks: 11,
                ..
            }
        ),
        "{err:?}"
    );
    // The partial file is kept for a later resume.
    let receiver = CheckpointReceiver::open(to.path(), &meta).unwrap();
    assert_eq!(receiver.next_chunk(), 1);
}

#[test]
fn prune_keeps_the_newest_valid_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for instance in 1..=5u64 {
        paths.push(write_ckpt(dir.path(), G, instance, 32, &payload(80, instance)).0);
    }
    write_ckpt(dir.path(), GroupId(9), 1, 32, b"other group");
    for corrupt in [&paths[4], &paths[1]] {
        let mut bytes = std::fs::read(corrupt).unwrap();
        bytes[70] ^= 0x01;
        std::fs::write(corrupt, &bytes).unwrap();
    }
    // Valid: 1, 3, 4. Keeping 2 keeps 4 and 3, removes the older 2 (corrupt) and 1; the corrupt
    // newer 5 stays for inspection.
    assert_eq!(checkpoint::prune(dir.path(), G, 2).unwrap(), 2);
    let exists: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
    assert_eq!(exists, [false, false, true, true, true]);
    assert_eq!(checkpoint::prune(dir.path(), G, 2).unwrap(), 0);
    // keep = 0 still keeps the newest valid one.
    assert_eq!(checkpoint::prune(dir.path(), G, 0).unwrap(), 1);
    let exists: Vec<bool> = paths.iter().map(|p| p.exists()).collect();
    assert_eq!(exists, [false, false, false, true, true]);
    assert_eq!(
        checkpoint::newest_valid(dir.path(), G).unwrap().unwrap().0,
        paths[3]
    );
    // Another group is untouched; a group without any valid checkpoint loses nothing.
    assert_eq!(
        checkpoint::list(dir.path())
            .unwrap()
            .iter()
            .filter(|l| l.group == GroupId(9))
            .count(),
        1
    );
    let mut bytes = std::fs::read(&paths[3]).unwrap();
    bytes[70] ^= 0x01;
    std::fs::write(&paths[3], &bytes).unwrap();
    assert_eq!(checkpoint::prune(dir.path(), G, 1).unwrap(), 0);
    assert!(paths[3].exists() && paths[4].exists());
    assert_eq!(checkpoint::prune(dir.path(), GroupId(77), 1).unwrap(), 0);
}
