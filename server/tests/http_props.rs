//! Property tests of the codec's public API: no panics on arbitrary input,
//! split-invariance of the chunked decoder, and request round-trips.

use percore_server::http::{
    BodyKind, ChunkedDecoder, Error, HEADER_SLOT, Limits, Status, parse_head, write_chunk,
    write_last_chunk,
};
use proptest::prelude::*;

const VALID_HEAD: &[u8] = b"POST /a?b=c HTTP/1.1\r\nHost: example.com\r\n\
Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";

/// A valid head with random bytes inserted/overwritten: reaches deeper code
/// than uniformly random bytes.
fn mutated_head() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 0..6).prop_map(
        |edits| {
            let mut v = VALID_HEAD.to_vec();
            for (pos, byte, insert) in edits {
                let p = pos % (v.len() + 1);
                if insert || p == v.len() {
                    v.insert(p, byte);
                } else {
                    v[p] = byte;
                }
            }
            v
        },
    )
}

fn small_limits() -> impl Strategy<Value = Limits> {
    (
        0usize..64,
        0usize..256,
        0usize..8,
        0u64..64,
        0usize..16,
        0usize..64,
        0usize..64,
    )
        .prop_map(|(rl, head, nh, body, el, et, tr)| Limits {
            max_request_line: rl,
            max_head: head,
            max_headers: nh,
            max_body: body,
            max_chunk_ext_line: el,
            max_chunk_ext_total: et,
            max_trailer: tr,
        })
}

fn check_head(input: &[u8], limits: &Limits) {
    let mut h = [HEADER_SLOT; 16];
    if let Ok(Status::Complete(head, n)) = parse_head(input, limits, &mut h) {
        assert!(n <= input.len());
        assert!(n <= limits.max_head);
        assert!(head.version <= 1);
        assert!(head.target.is_ascii());
        if let BodyKind::Length(len) = head.body {
            assert!(len > 0 && len <= limits.max_body);
        }
    }
}

/// Drive a decoder over `input` cut at `cuts`, checking the API contract.
/// Returns (data, consumed, done) or the error.
fn drive(input: &[u8], cuts: &[usize], limits: &Limits) -> Result<(Vec<u8>, usize, bool), Error> {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    ends.push(input.len());
    ends.sort_unstable();
    let mut d = ChunkedDecoder::new(limits);
    let mut out = Vec::new();
    let mut pos = 0;
    for end in ends {
        while pos < end && !d.is_done() {
            let avail = &input[pos..end];
            let (n, data) = d.decode(avail)?;
            assert!(n <= avail.len());
            if let Some(data) = data {
                assert!(!data.is_empty());
                // borrowed from the consumed part of the input
                let off = data.as_ptr() as usize - avail.as_ptr() as usize;
                assert!(off + data.len() <= n);
            }
            out.extend_from_slice(data.unwrap_or(&[]));
            pos += n;
            if !d.is_done() {
                assert!(n > 0, "no progress on non-empty input");
            }
        }
    }
    Ok((out, pos, d.is_done()))
}

#[derive(Debug, Clone)]
struct Body {
    chunks: Vec<Vec<u8>>,
    exts: Vec<Option<usize>>,
    trailers: Vec<(String, String)>,
}

const EXTS: &[&str] = &[
    ";a",
    ";a=b",
    ";name=\"quoted \\\" value\"",
    ";x;y=z",
    ";k=\"\"",
];

fn body() -> impl Strategy<Value = Body> {
    (
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..12),
        proptest::collection::vec(proptest::option::of(0..EXTS.len()), 13),
        proptest::collection::vec(("[A-Za-z][A-Za-z0-9-]{0,10}", "[ -~]{0,20}"), 0..3),
    )
        .prop_map(|(chunks, exts, trailers)| Body {
            chunks,
            exts,
            trailers: trailers
                .into_iter()
                .map(|(n, v)| (n, v.trim_matches(' ').to_string()))
                .collect(),
        })
}

fn encode(b: &Body) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, c) in b.chunks.iter().enumerate() {
        match b.exts[i] {
            None => write_chunk(&mut out, c),
            Some(e) => {
                out.extend_from_slice(format!("{:X}{}\r\n", c.len(), EXTS[e]).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if b.trailers.is_empty() && b.exts[12].is_none() {
        write_last_chunk(&mut out);
    } else {
        out.extend_from_slice(b"0");
        if let Some(e) = b.exts[12] {
            out.extend_from_slice(EXTS[e].as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        for (n, v) in &b.trailers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_head_never_panics_random(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_head(&input, &Limits::default());
    }

    #[test]
    fn parse_head_never_panics_mutated(input in mutated_head(), limits in small_limits()) {
        check_head(&input, &Limits::default());
        check_head(&input, &limits);
        for cut in 0..input.len() {
            check_head(&input[..cut], &Limits::default());
        }
    }

    #[test]
    fn chunked_never_panics_random(
        input in proptest::collection::vec(any::<u8>(), 0..300),
        cuts in proptest::collection::vec(any::<usize>(), 0..5),
        limits in small_limits(),
    ) {
        let _ = drive(&input, &cuts, &Limits::default());
        let _ = drive(&input, &cuts, &limits);
    }

    #[test]
    fn chunked_never_panics_mutated(
        b in body(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..5),
    ) {
        let mut input = encode(&b);
        for (pos, byte) in edits {
            let p = pos % input.len();
            input[p] = byte;
        }
        let whole = drive(&input, &[], &Limits::default());
        let split = drive(&input, &cuts, &Limits::default());
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn chunked_split_invariance(
        b in body(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
        next in proptest::collection::vec(any::<u8>(), 0..10),
    ) {
        let enc = encode(&b);
        let want: Vec<u8> = b.chunks.concat();
        let mut input = enc.clone();
        input.extend_from_slice(&next); // the next request: must not be consumed
        let whole = drive(&input, &[], &Limits::default()).unwrap();
        prop_assert_eq!(&whole, &(want.clone(), enc.len(), true));
        let split = drive(&input, &cuts, &Limits::default()).unwrap();
        prop_assert_eq!(&split, &whole);
        // bytewise
        let all: Vec<usize> = (0..input.len()).collect();
        let bytewise = drive(&input, &all, &Limits::default()).unwrap();
        prop_assert_eq!(&bytewise, &whole);
        // any strict prefix is not done and consumes everything it was given
        // up to the data it could deliver
        if enc.len() > 1 {
            let cut = cuts.first().copied().unwrap_or(0) % enc.len();
            let part = drive(&enc[..cut], &[], &Limits::default()).unwrap();
            prop_assert!(!part.2);
            prop_assert!(want.starts_with(&part.0));
        }
    }

    #[test]
    fn request_round_trip(
        method in "[A-Z]{1,8}",
        segs in proptest::collection::vec("[A-Za-z0-9._~!$&'()*+,;=:@-]{0,8}", 0..5),
        query in proptest::option::of("[A-Za-z0-9=&/?%20-]{0,12}"),
        host in "[a-z0-9]{1,10}(\\.[a-z]{2,5})?(:[0-9]{1,4})?",
        fields in proptest::collection::vec(
            ("X-[A-Za-z0-9-]{1,10}", "([!-~]([ -~]{0,20}[!-~])?)?"), 0..10),
        len in proptest::option::of(0u64..2_000_000),
        v10 in any::<bool>(),
        close in any::<bool>(),
        cut in any::<usize>(),
    ) {
        let path = format!("/{}", segs.join("/"));
        let query = query.map(|q| q.replace('%', "%25"));
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let version = if v10 { "1.0" } else { "1.1" };
        let mut req = format!("{method} {target} HTTP/{version}\r\nHost: {host}\r\n");
        for (n, v) in &fields {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(l) = len {
            req.push_str(&format!("Content-Length: {l}\r\n"));
        }
        if close {
            req.push_str("Connection: close\r\n");
        }
        req.push_str("\r\n");
        let bytes = req.as_bytes();
        let mut h = [HEADER_SLOT; 16];
        let res = parse_head(bytes, &Limits::default(), &mut h);
        if len.is_some_and(|l| l > Limits::default().max_body) {
            prop_assert_eq!(res.unwrap_err(), Error::BodyTooLarge);
            return Ok(());
        }
        let Ok(Status::Complete(head, n)) = res else {
            return Err(TestCaseError::fail(format!("{res:?} for {req:?}")));
        };
        prop_assert_eq!(n, bytes.len());
        prop_assert_eq!(head.method, method.as_str());
        prop_assert_eq!(head.target, target.as_str());
        prop_assert_eq!(head.path, path.as_str());
        prop_assert_eq!(head.query, query.as_deref());
        prop_assert_eq!(head.version, u8::from(!v10));
        prop_assert_eq!(head.host, Some(host.as_str()));
        prop_assert_eq!(head.keep_alive, !close && !v10);
        let want_body = match len { Some(0) | None => BodyKind::None, Some(l) => BodyKind::Length(l) };
        prop_assert_eq!(head.body, want_body);
        for (name, value) in &fields {
            prop_assert!(head.headers_named(name).any(|v| v == value.as_bytes()));
        }
        let c = cut % bytes.len();
        let mut h2 = [HEADER_SLOT; 16];
        prop_assert_eq!(parse_head(&bytes[..c], &Limits::default(), &mut h2), Ok(Status::Partial));
    }
}
