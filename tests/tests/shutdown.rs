//! Graceful shutdown: SIGTERM lets in-flight requests finish, `/readyz` turns 503, exit 0.

mod support;
use std::io::{Read, Write};

use support::{parse_responses, read_responses, Server};

/// Synchronises with the server instead of sleeping: a request on a new connection is answered
/// only after every connection queued before it was accepted (one shard, FIFO accept queue).
fn accepted_before(srv: &Server) {
    let mut probe = srv.connect();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    probe.read_to_end(&mut out).unwrap();
    assert_eq!(parse_responses(&out)[0].status, 200);
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_zero() {
    let mut srv = Server::start(&["--cpus", "0", "--drain-timeout", "20"]);
    // An idle keep-alive connection (served once) and a request whose body is half sent.
    let mut idle = srv.connect();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    read_responses(&mut idle, 1);
    let mut slow = srv.connect();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    accepted_before(&srv);
    srv.signal(libc::SIGTERM);
    // The idle connection is closed without a response.
    let mut rest = Vec::new();
    idle.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // While draining, a new connection is still answered, with 503 from /readyz and a close.
    let mut probe = srv.connect();
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = Vec::new();
    probe.read_to_end(&mut out).unwrap();
    let rs = parse_responses(&out);
    assert_eq!(rs[0].status, 503);
    assert_eq!(rs[0].header("connection"), Some("close"));
    // The slow request completes.
    slow.write_all(b"world").unwrap();
    let mut out = Vec::new();
    slow.read_to_end(&mut out).unwrap();
    let rs = parse_responses(&out);
    assert_eq!(rs[0].body, b"helloworld");
    assert_eq!(rs[0].header("connection"), Some("close"));
    let status = srv.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", srv.stderr_text());
}

#[test]
fn drain_deadline_force_closes_and_still_exits_zero() {
    let mut srv = Server::start(&["--cpus", "0", "--drain-timeout", "1"]);
    let mut slow = srv.connect();
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhel")
        .unwrap();
    accepted_before(&srv);
    srv.signal(libc::SIGTERM);
    let mut out = Vec::new();
    let _ = slow.read_to_end(&mut out);
    let status = srv.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let err = srv.stderr_text();
    assert!(err.contains("force-closed 1 of"), "{err}");
}
