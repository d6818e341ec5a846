//! Proves the frame codec never trusts its input: every frame round-trips; every truncation of
//! a frame is an error (never a panic, never a wrong frame); every single bit flip of a frame is
//! an error; any stream split at any points decodes to the same frames; arbitrary bytes never
//! panic and never make the decoder ask for more than one maximum frame. The seeded fuzz loop
//! at the end runs the same checks on mutated streams and prints the seed that reproduces a
//! failure.

use bytes::BytesMut;
use paxring_net::{
    encode_frame, DecodeError, Decoder, Frame, Hello, HelloStatus, FRAME_HEADER_BYTES, HELLO_BYTES,
};
use proptest::prelude::*;

const MAX: u32 = 4096;

fn frame_strategy() -> impl Strategy<Value = (u8, u32, u32, Vec<u8>)> {
    (
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trip((kind, group, from, body) in frame_strategy()) {
        let encoded = encode_frame(kind, group, from, &body);
        prop_assert_eq!(encoded.len(), FRAME_HEADER_BYTES + body.len());
        let frame = Decoder::new(MAX).decode_exact(&encoded).unwrap();
        prop_assert_eq!(frame, Frame { kind, group, from, body: body.into() });
    }

    #[test]
    fn every_truncation_is_an_error((kind, group, from, body) in frame_strategy()) {
        let encoded = encode_frame(kind, group, from, &body);
        let mut decoder = Decoder::new(MAX);
        for cut in 0..encoded.len() {
            let result = decoder.decode_exact(&encoded[..cut]);
            let is_truncated = matches!(result, Err(DecodeError::Truncated { have_bytes, .. }) if have_bytes == cut);
            prop_assert!(is_truncated, "cut at {}: {:?}", cut, result);
            // The incremental decoder waits for more and consumes nothing.
            let mut buf = BytesMut::from(&encoded[..cut]);
            prop_assert_eq!(decoder.decode(&mut buf), Ok(None));
            prop_assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn every_bit_flip_is_an_error((kind, group, from, body) in frame_strategy()) {
        let encoded = encode_frame(kind, group, from, &body).to_vec();
        let mut decoder = Decoder::new(MAX);
        for bit in 0..encoded.len() * 8 {
            let mut flipped = encoded.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = decoder.decode_exact(&flipped);
            prop_assert!(result.is_err(), "bit {} flipped decoded as {:?}", bit, result);
            if bit < FRAME_HEADER_BYTES * 8 {
                // A damaged header is caught by its own checksum, before any body is awaited.
                let mut buf = BytesMut::from(&flipped[..FRAME_HEADER_BYTES]);
                prop_assert!(decoder.decode(&mut buf).is_err(), "header bit {}", bit);
            }
        }
    }

    #[test]
    fn stream_split_anywhere_decodes_the_same(
        frames in proptest::collection::vec(frame_strategy(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut stream = Vec::new();
        for (kind, group, from, body) in &frames {
            stream.extend_from_slice(&encode_frame(*kind, *group, *from, body));
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        let mut decoder = Decoder::new(MAX);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for point in points {
            buf.extend_from_slice(&stream[at..point]);
            at = point;
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                out.push(frame);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out.len(), frames.len());
        for (got, (kind, group, from, body)) in out.iter().zip(&frames) {
            prop_assert_eq!(got, &Frame { kind: *kind, group: *group, from: *from, body: body.clone().into() });
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        check_stream(&bytes, MAX)?;
        let _ = Hello::decode(&bytes);
    }

    #[test]
    fn oversize_is_refused_from_the_header((kind, group, from) in (any::<u8>(), any::<u32>(), any::<u32>()), extra in 1u32..64) {
        let body = vec![0u8; (MAX + extra) as usize];
        let encoded = encode_frame(kind, group, from, &body);
        let mut buf = BytesMut::from(&encoded[..FRAME_HEADER_BYTES]);
        prop_assert_eq!(
            Decoder::new(MAX).decode(&mut buf),
            Err(DecodeError::Oversize { body_bytes: MAX + extra, max_frame_bytes: MAX })
        );
    }

    #[test]
    fn hello_bit_flips_and_truncations_are_errors(cluster_id in any::<u64>(), node_id in any::<u32>(), max in any::<u32>()) {
        let hello = Hello { version: 1, status: HelloStatus::Hello, cluster_id, node_id, max_frame_bytes: max };
        let encoded = hello.encode();
        prop_assert_eq!(Hello::decode(&encoded), Ok(hello));
        for cut in 0..HELLO_BYTES {
            prop_assert!(Hello::decode(&encoded[..cut]).is_err());
        }
        for bit in 0..HELLO_BYTES * 8 {
            let mut flipped = encoded;
            flipped[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Hello::decode(&flipped).is_err(), "bit {}", bit);
        }
    }
}

/// Feeds `bytes` to a decoder in one go and checks its promises: no panic, frames it returns
/// re-encode to exactly the bytes they came from, and it never asks for more than one frame.
fn check_stream(bytes: &[u8], max: u32) -> Result<(), TestCaseError> {
    let mut decoder = Decoder::new(max);
    let mut buf = BytesMut::from(bytes);
    let mut offset = 0;
    loop {
        prop_assert!(decoder.bytes_needed(&buf) <= FRAME_HEADER_BYTES + max as usize);
        let before = buf.len();
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let consumed = before - buf.len();
                let again = encode_frame(frame.kind, frame.group, frame.from, &frame.body);
                prop_assert_eq!(&again[..], &bytes[offset..offset + consumed]);
                offset += consumed;
            }
            Ok(None) | Err(_) => return Ok(()),
        }
    }
}

/// xorshift64*: the fuzz loop's reproducible randomness.
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One fuzz case: a few valid frames, then mutations (bit flips, byte overwrites, cuts,
/// duplicated or inserted spans, random tails), decoded with a random read chunking.
fn fuzz_case(seed: u64) -> Result<(usize, bool), TestCaseError> {
    let mut rng = Prng(seed | 1);
    let max = 16 + rng.below(2048) as u32;
    let mut stream = Vec::new();
    for _ in 0..rng.below(6) {
        let len = rng.below(max as usize + 8);
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        stream.extend_from_slice(&encode_frame(
            rng.next() as u8,
            rng.next() as u32,
            rng.next() as u32,
            &body,
        ));
    }
    for _ in 0..rng.below(4) {
        if stream.is_empty() {
            break;
        }
        match rng.below(5) {
            0 => {
                let at = rng.below(stream.len());
                stream[at] ^= 1 << rng.below(8);
            }
            1 => {
                let at = rng.below(stream.len());
                stream[at] = rng.next() as u8;
            }
            2 => stream.truncate(rng.below(stream.len())),
            3 => {
                let from = rng.below(stream.len());
                let to = (from + rng.below(64)).min(stream.len());
                let span = stream[from..to].to_vec();
                let at = rng.below(stream.len());
                stream.splice(at..at, span);
            }
            _ => {
                for _ in 0..rng.below(64) {
                    stream.push(rng.next() as u8);
                }
            }
        }
    }
    check_stream(&stream, max)?;
    // The same stream read in random chunks gives the same frames and the same verdict.
    let mut whole = Decoder::new(max);
    let mut all = BytesMut::from(&stream[..]);
    let mut expected = Vec::new();
    let expected_end = loop {
        match whole.decode(&mut all) {
            Ok(Some(frame)) => expected.push(frame),
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    let mut chunked = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut at = 0;
    let got_end = 'outer: loop {
        let step = 1 + rng.below(300);
        let end = (at + step).min(stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        loop {
            match chunked.decode(&mut buf) {
                Ok(Some(frame)) => got.push(frame),
                Ok(None) => break,
                Err(err) => break 'outer Err(err),
            }
        }
        if at == stream.len() {
            break Ok(());
        }
    };
    prop_assert_eq!(&got, &expected);
    prop_assert_eq!(got_end.is_err(), expected_end.is_err());
    let _ = Hello::decode(&stream);
    Ok((got.len(), got_end.is_err()))
}

#[test]
fn seeded_fuzz_loop() {
    // Bounded: a fixed number of cases; PAXRING_FUZZ_CASES raises it, PAXRING_FUZZ_SEED replays one.
    if let Ok(seed) = std::env::var("PAXRING_FUZZ_SEED") {
        let seed: u64 = seed.parse().expect("PAXRING_FUZZ_SEED is a u64");
        fuzz_case(seed).unwrap();
        return;
    }
    let cases: u64 = std::env::var("PAXRING_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let (mut frames, mut errors) = (0usize, 0usize);
    for case in 0..cases {
        let seed = 0x5eed_0000_0000_0000 ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        match fuzz_case(seed) {
            Ok((decoded, errored)) => {
                frames += decoded;
                errors += usize::from(errored);
            }
            Err(err) => panic!(
                "fuzz case failed: {err}; replay with PAXRING_FUZZ_SEED={seed} cargo test -p paxring-net --test codec seeded_fuzz_loop"
            ),
        }
    }
    // The loop exercised both sides: valid frames decoded and corrupt streams refused.
    eprintln!("seeded fuzz loop: {cases} cases, {frames} frames decoded, {errors} streams refused");
    assert!(cases < 100 || (frames > cases as usize && errors > cases as usize / 10));
}
