//! Fuzzes the frame decoder and the handshake decoder with arbitrary streams and read chunkings.
//! Run: `cargo +nightly fuzz run decoder` from `net/` (needs cargo-fuzz).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use paxring_net::{encode_frame, Decoder, Hello, FRAME_HEADER_BYTES};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // The first two bytes choose the maximum frame size, the third the read chunk size.
    let max = u32::from(u16::from_le_bytes([data[0], data[1]]));
    let chunk = usize::from(data[2]).max(1);
    let stream = &data[3..];
    let _ = Hello::decode(stream);
    let mut decoder = Decoder::new(max);
    let mut buf = BytesMut::new();
    let mut offset = 0;
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            assert!(decoder.bytes_needed(&buf) <= FRAME_HEADER_BYTES + max as usize);
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let consumed = before - buf.len();
                    let again = encode_frame(frame.kind, frame.group, frame.from, &frame.body);
                    assert_eq!(&again[..], &stream[offset..offset + consumed]);
                    offset += consumed;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
