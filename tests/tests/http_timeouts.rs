//! Slow clients: the absolute header deadline (408, then close), the body inactivity timeout
//! and the keep-alive idle timeout.

mod support;
use std::{
    io::{Read, Write},
    time::Instant,
};

use support::{parse_responses, Server};

#[test]
fn a_client_trickling_its_head_gets_408_at_the_header_deadline() {
    let srv = Server::start(&["--cpus", "0", "--header-timeout", "300ms"]);
    let mut s = srv.connect();
    let start = Instant::now();
    // One byte at a time, each well within any inactivity timeout; the deadline is absolute.
    let head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut out = Vec::new();
    for b in head
        .iter()
        .chain(b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter())
    {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        // The server answers and closes while we are still writing: read what it said.
        let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(20)));
        let mut buf = [0u8; 1024];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let _ = s.read_to_end(&mut out);
    let rs = parse_responses(&out);
    assert_eq!(rs.len(), 1, "{:?}", String::from_utf8_lossy(&out));
    assert_eq!(rs[0].status, 408);
    assert!(
        start.elapsed().as_secs() < 20,
        "the deadline ended it, not the client"
    );
}

/// A client that connects and never sends a byte is closed silently at the header timeout, not
/// kept for the (much longer) keep-alive timeout.
#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let srv = Server::start(&["--cpus", "0", "--header-timeout", "200ms"]);
    let mut s = srv.connect();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("closed by the server before the client's 20 s read timeout");
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
}

#[test]
fn an_idle_keepalive_connection_is_closed_silently_after_its_timeout() {
    let srv = Server::start(&["--cpus", "0", "--keepalive-timeout", "200ms"]);
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let rs = parse_responses(&out);
    assert_eq!(rs.len(), 1, "one response, then a silent close");
    assert_eq!(rs[0].status, 200);
}

/// RFC 9112 §2.2: a CRLF after a request (old clients send one after a POST body) is ignored.
/// The connection is then idle, closed silently at the keep-alive timeout; it used to count as a
/// head in progress and get a 408 at the header timeout for a request it never sent.
#[test]
fn an_empty_line_after_a_request_leaves_the_connection_idle() {
    let srv = Server::start(&[
        "--cpus",
        "0",
        "--keepalive-timeout",
        "200ms",
        "--header-timeout",
        "60s",
    ]);
    for req in [
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n",
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\r\n",
        "GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n\r\n",
    ] {
        let mut s = srv.connect();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .expect("closed at the keep-alive timeout, not the 60 s header timeout");
        let rs = parse_responses(&out);
        let want = req.matches("HTTP/1.1\r\n").count();
        assert_eq!(
            rs.len(),
            want,
            "{req:?}: {:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(rs.iter().all(|r| r.status == 200), "{req:?}");
    }
}

#[test]
fn a_body_that_stops_arriving_gets_408_at_the_body_timeout() {
    let srv = Server::start(&["--cpus", "0", "--body-timeout", "200ms"]);
    // `/echo` streams its body; `/kv/{key}` has the server buffer it: both time out alike.
    for target in ["/echo", "/kv/slow"] {
        let mut s = srv.connect();
        let req = format!(
            "{} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
            if target == "/echo" { "POST" } else { "PUT" }
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let rs = parse_responses(&out);
        assert_eq!(rs.len(), 1, "{target}: {:?}", String::from_utf8_lossy(&out));
        assert_eq!(rs[0].status, 408, "{target}");
    }
}
