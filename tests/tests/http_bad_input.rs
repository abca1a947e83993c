//! Malformed and smuggling-prone requests: each gets its status and a closed connection.
//! Cases drawn from RFC 9112 and the request-smuggling literature (llhttp's tests, h1spec,
//! nginx-tests' body_chunked.t), written here by hand.

mod support;
use support::{exchange_until_close, parse_responses, Server};

/// (name, raw request, expected status)
const CASES: &[(&str, &str, u16)] = &[
    ("CL with TE", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("differing CL", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    ("CL list", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
    ("CL plus sign", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc", 400),
    ("CL negative", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    ("CL hex", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\nabc", 400),
    ("CL overflow", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
    ("TE unknown then chunked", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: zstd-magic, chunked\r\n\r\n", 501),
    // RFC 9112 §6.3: chunked not final, so the length is unknown: 400 whatever the coding.
    ("TE unknown, not chunked", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: zstd-magic\r\n\r\n", 400),
    ("TE chunked not last", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
    ("TE chunked twice", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
    ("TE in HTTP/1.0", "POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("chunk size not hex", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size empty", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size overflow", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nx\r\n0\r\n\r\n", 400),
    ("chunk ext bare LF", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\nc\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk data no CRLF", "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
    ("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400),
    ("space before colon", "GET / HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n", 400),
    ("NUL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n", 400),
    ("CTL in value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
    ("bare LF line ending", "GET / HTTP/1.1\nHost: x\n\n", 400),
    ("missing Host", "GET / HTTP/1.1\r\n\r\n", 400),
    ("duplicate Host", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("invalid Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ("Host with userinfo", "GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n", 400),
    ("invalid method", "G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("HTTP/2.0 line", "GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ("malformed version", "GET / HTTQ/1.1\r\nHost: x\r\n\r\n", 400),
    ("body over limit by CL", "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413),
    ("unsupported expectation", "POST /echo HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 1\r\n\r\nx", 417),
];

#[test]
fn each_bad_request_gets_its_status_and_a_closed_connection() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut failures = Vec::new();
    for (name, req, status) in CASES {
        let mut s = srv.connect();
        let out = exchange_until_close(&mut s, req.as_bytes());
        let rs = parse_responses(&out);
        let got: Vec<u16> = rs.iter().map(|r| r.status).collect();
        if got != vec![*status] {
            failures.push(format!("{name}: expected [{status}], got {got:?}"));
        } else if rs[0].header("connection") != Some("close") {
            failures.push(format!("{name}: no Connection: close"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn target_too_long_and_header_section_too_large() {
    let srv = Server::start(&["--cpus", "0"]);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let mut s = srv.connect();
    let rs = parse_responses(&exchange_until_close(&mut s, long_target.as_bytes()));
    assert_eq!(rs[0].status, 414);
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40_000)
    );
    let mut s = srv.connect();
    let rs = parse_responses(&exchange_until_close(&mut s, big_header.as_bytes()));
    assert_eq!(rs[0].status, 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let mut s = srv.connect();
    let rs = parse_responses(&exchange_until_close(&mut s, many.as_bytes()));
    assert_eq!(rs[0].status, 431);
    // The server still serves normally afterwards.
    let mut s = srv.connect();
    let rs = parse_responses(&exchange_until_close(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(rs[0].status, 200);
}

#[test]
fn garbage_and_binary_noise_never_hang_or_kill_the_server() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut seed = 0x243F6A8885A308D3u64;
    for i in 0..200 {
        let len = 1 + (i * 37) % 3000;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .chain(*b"\r\n\r\n")
            .collect();
        let mut s = srv.connect();
        let out = exchange_until_close(&mut s, &junk);
        // Whatever came back is at most one complete error response.
        if !out.is_empty() {
            let rs = parse_responses(&out);
            assert_eq!(rs.len(), 1);
            assert!(rs[0].status >= 400, "noise accepted: {:?}", rs[0]);
        }
    }
    let mut s = srv.connect();
    let rs = parse_responses(&exchange_until_close(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(rs[0].status, 200);
}
