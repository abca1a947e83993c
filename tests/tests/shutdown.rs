//! Graceful shutdown: SIGTERM lets in-flight requests finish, `/readyz` turns 503, exit 0.

mod support;
use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

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
    // The drain accepts new connections for 5 s, so the probe below is answered even if the
    // steps before it (the idle connection's 1 s grace) are slow. The process exits only after
    // that window, idle or not.
    let mut srv = Server::start(&[
        "--cpus",
        "0",
        "--drain-timeout",
        "20",
        "--drain-accept",
        "5s",
    ]);
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
fn an_idle_server_keeps_answering_new_connections_for_drain_accept_after_sigterm() {
    // Nothing open when the signal comes: the drain has nothing to wait for, but a client (or a
    // load balancer that has not seen `/readyz` turn yet) that connects just after it must get
    // an answer, not a refusal, for all of `--drain-accept`.
    const ACCEPT_FOR: Duration = Duration::from_secs(2);
    let mut srv = Server::start(&[
        "--cpus",
        "0",
        "--drain-timeout",
        "20",
        "--drain-accept",
        "2s",
    ]);
    let signalled = Instant::now();
    srv.signal(libc::SIGTERM);
    // New connections until one is answered as draining: 503 from /readyz, with a close. (One
    // that reaches the shard before the signal's message does is answered as usual.)
    loop {
        let mut s = srv.connect();
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let r = read_responses(&mut s, 1).remove(0);
        if r.status == 200 {
            continue;
        }
        assert_eq!(r.status, 503);
        assert_eq!(r.header("connection"), Some("close"));
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "the server closed after its answer");
        break;
    }
    let status = srv.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", srv.stderr_text());
    assert!(
        signalled.elapsed() >= ACCEPT_FOR,
        "exited {:?} after SIGTERM, before its --drain-accept window ended",
        signalled.elapsed()
    );
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

/// One client that sends `GET /` in a loop, reconnecting when the server closes (as every
/// answer during a drain asks), until a connection is refused. Returns (answered, refused).
fn client_until_refused(
    addr: std::net::SocketAddr,
    started: std::sync::mpsc::Sender<()>,
) -> (u64, bool) {
    let mut answered = 0u64;
    let mut started = Some(started);
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < give_up {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return (answered, true);
        };
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        loop {
            if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").is_err() {
                break;
            }
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // One response: the head, then Content-Length bytes of body.
            let done = loop {
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let field = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    };
                    let len: usize = field("content-length:").unwrap().parse().unwrap();
                    if buf.len() >= end + 4 + len {
                        break Some(field("connection:").as_deref() == Some("close"));
                    }
                }
            };
            match done {
                Some(close) => {
                    answered += 1;
                    if let Some(tx) = started.take() {
                        let _ = tx.send(());
                    }
                    if close {
                        break;
                    }
                }
                None => break,
            }
        }
    }
    (answered, false)
}

#[test]
fn a_drain_under_steady_reconnecting_load_stops_accepting_and_ends_before_its_deadline() {
    // Clients that reconnect as soon as an answer says `Connection: close` would keep a drain
    // that never stops accepting busy until its deadline, which then cuts off the requests in
    // flight. After `--drain-accept` (default 1 s) new connections are refused instead.
    // Enough clients that some connection is always open while they reconnect.
    const CLIENTS: usize = 32;
    let mut srv = Server::start(&["--cpus", "0", "--drain-timeout", "20"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (addr, tx) = (srv.addr, tx.clone());
            std::thread::spawn(move || client_until_refused(addr, tx))
        })
        .collect();
    drop(tx);
    for _ in 0..CLIENTS {
        rx.recv().unwrap(); // every client has been answered once: the load is on
    }
    srv.signal(libc::SIGTERM);
    let status = srv.child.wait().unwrap();
    let err = srv.stderr_text();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        !err.contains("force-closed"),
        "the drain ran to its deadline: {err}"
    );
    for c in clients {
        let (answered, refused) = c.join().unwrap();
        assert!(
            answered > 0 && refused,
            "answered {answered}, refused {refused}"
        );
    }
}
