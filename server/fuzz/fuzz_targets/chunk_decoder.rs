//! Fuzz target: the chunked decoder must never panic, must make progress,
//! and must give the same data / end state / error whether the input is fed
//! whole or split at a fuzzer-chosen point.
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore_server::http::{ChunkedDecoder, Error, Limits};

fn drive(input: &[u8], cut: usize, limits: &Limits) -> Result<(Vec<u8>, usize, bool), Error> {
    let mut d = ChunkedDecoder::new(limits);
    let mut out = Vec::new();
    let mut pos = 0;
    for end in [cut, input.len()] {
        while pos < end && !d.is_done() {
            let (n, data) = d.decode(&input[pos..end])?;
            assert!(n <= end - pos);
            assert!(n > 0 || d.is_done());
            if let Some(data) = data {
                out.extend_from_slice(data);
            }
            pos += n;
        }
    }
    Ok((out, pos, d.is_done()))
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let limits = Limits {
        max_body: 4096,
        max_chunk_ext_line: 64,
        max_chunk_ext_total: 256,
        max_trailer: 256,
        ..Limits::default()
    };
    let cut = usize::from(data[0]) % data.len();
    let input = &data[1..];
    let cut = cut.min(input.len());
    let whole = drive(input, input.len(), &limits);
    let split = drive(input, cut, &limits);
    assert_eq!(whole, split);
});
