//! The built-in routes, keep-alive, HEAD, 404/405, bodies (Content-Length, chunked,
//! `Expect: 100-continue`), over raw bytes to the real binary.

mod support;
use std::io::{Read, Write};

use support::{exchange_until_close, parse_responses, read_responses, Server};

#[test]
fn hello_json_health_and_keepalive_reuse() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = read_responses(&mut s, 1).remove(0);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"Hello, World!");
    assert_eq!(r.header("content-length"), Some("13"));
    assert_eq!(r.header("server"), Some("percore"));
    assert_eq!(r.header("date").map(|d| d.len()), Some(29));
    // Same connection, more requests.
    s.write_all(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let rs = read_responses(&mut s, 3);
    assert_eq!(rs[0].body, br#"{"message":"Hello, World!"}"#);
    assert_eq!(rs[0].header("content-type"), Some("application/json"));
    assert_eq!((rs[1].status, rs[2].status), (200, 200));
}

/// `Date` (RFC 9110 §6.6.1) is the second the response was made in, on every response: also the
/// first one after the clock moved on while the shard had nothing to do.
#[test]
fn date_is_the_current_second() {
    use percore_server::http::format_imf_fixdate;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    let mut date_now = || {
        let before = secs(SystemTime::now());
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let r = read_responses(&mut s, 1).remove(0);
        let after = secs(SystemTime::now());
        let date = r.header("date").expect("a Date header").to_owned();
        let within: Vec<String> = (before..=after)
            .map(|t| {
                let f = format_imf_fixdate(UNIX_EPOCH + Duration::from_secs(t));
                String::from_utf8(f.to_vec()).unwrap()
            })
            .collect();
        assert!(
            within.contains(&date),
            "Date {date:?} is not one of {within:?}"
        );
        (date, after)
    };
    let (first, at) = date_now();
    // Let the clock, not the server, move into a later second; the shard idles meanwhile.
    while secs(SystemTime::now()) <= at {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (second, _) = date_now();
    assert_ne!(first, second);
}

#[test]
fn head_404_and_405_with_allow() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.contains("Content-Length: 13\r\n"),
        "HEAD keeps the length: {text}"
    );
    assert!(text.ends_with("\r\n\r\n"), "HEAD has no body: {text:?}");
    s.write_all(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\nDELETE / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let rs = read_responses(&mut s, 2);
    assert_eq!(rs[0].status, 404);
    assert_eq!(rs[1].status, 405);
    assert_eq!(rs[1].header("allow"), Some("GET, HEAD, OPTIONS"));
    // OPTIONS on a path: what it allows, no content (RFC 9110 §9.3.7); on no path: 404.
    s.write_all(
        b"OPTIONS /kv/a HTTP/1.1\r\nHost: x\r\n\r\nOPTIONS /nope HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let rs = read_responses(&mut s, 2);
    assert_eq!((rs[0].status, rs[1].status), (200, 404));
    assert_eq!(
        rs[0].header("allow"),
        Some("GET, PUT, DELETE, HEAD, OPTIONS")
    );
    assert_eq!(rs[0].header("content-length"), Some("0"));
}

#[test]
fn unknown_methods_connect_and_options_asterisk() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    // A method RFC 9110 defines but the route lacks: 405. One nobody defines (methods are
    // case-sensitive, so `get` is one): 501, here and on paths that do not exist.
    s.write_all(
        b"PATCH / HTTP/1.1\r\nHost: x\r\n\r\nFOO / HTTP/1.1\r\nHost: x\r\n\r\n\
          get / HTTP/1.1\r\nHost: x\r\n\r\nFOO /nope HTTP/1.1\r\nHost: x\r\n\r\n\
          OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n\
          CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\
          GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let rs = read_responses(&mut s, 7);
    let got: Vec<u16> = rs.iter().map(|r| r.status).collect();
    assert_eq!(got, [405, 501, 501, 501, 200, 501, 200]);
    assert_eq!(rs[0].header("allow"), Some("GET, HEAD, OPTIONS"));
    // `OPTIONS *` is about the server: every method it serves, no content.
    let allow: Vec<&str> = rs[4].header("allow").unwrap().split(", ").collect();
    for m in ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(allow.contains(&m), "{m} missing from {allow:?}");
    }
    assert_eq!(rs[4].header("content-length"), Some("0"));
    // None of these is a reason to close the connection.
    assert_eq!(rs[6].body, b"Hello, World!");
}

/// RFC 9110 §9.3.2, also when empty lines come before the request line (which the server
/// skips before it knows the method).
#[test]
fn error_answers_to_head_have_no_content() {
    let srv = Server::start(&["--cpus", "0"]);
    for (req, status) in [
        ("HEAD / HTTP/1.1\r\n\r\n", "400"),
        ("\r\nHEAD / HTTP/1.1\r\n\r\n", "400"),
        ("\r\n\r\nHEAD / HTTP/1.1\r\n\r\n", "400"),
        ("HEAD / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (
            "HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n",
            "413",
        ),
    ] {
        let mut s = srv.connect();
        let out = exchange_until_close(&mut s, req.as_bytes());
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{req:?}: {text}"
        );
        assert!(text.contains("Connection: close\r\n"), "{req:?}: {text}");
        assert!(text.contains("Content-Length: "), "{req:?}: {text}");
        assert!(
            text.ends_with("\r\n\r\n"),
            "{req:?}: a body after the head: {text:?}"
        );
    }
}

#[test]
fn echo_content_length_chunked_and_continue() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world")
        .unwrap();
    assert_eq!(read_responses(&mut s, 1)[0].body, b"hello world");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n").unwrap();
    assert_eq!(read_responses(&mut s, 1)[0].body, b"hello world");
    // 100-continue: the server says Continue before the client sends the body.
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"ping").unwrap();
    assert_eq!(read_responses(&mut s, 1)[0].body, b"ping");
    // A body larger than one receive buffer.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        big.len()
    )
    .into_bytes();
    req.extend_from_slice(&big);
    s.write_all(&req).unwrap();
    assert_eq!(read_responses(&mut s, 1)[0].body, big);
}

/// Sends a POST head announcing a 1 MB body with `Expect: 100-continue`, and never the body:
/// the server must give its final answer (no `100 Continue` first), alone, and close.
fn answer_without_the_body(srv: &Server, target: &str) -> support::Resp {
    let mut s = srv.connect();
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nExpect: 100-continue\r\n\r\n"
    );
    let out = exchange_until_close(&mut s, head.as_bytes());
    let mut rs = parse_responses(&out);
    assert_eq!(rs.len(), 1, "{target}: {}", String::from_utf8_lossy(&out));
    assert_eq!(rs[0].header("connection"), Some("close"), "{target}");
    rs.remove(0)
}

/// `Expect: 100-continue` on a request no route serves: the final status comes at once, without
/// a `100 Continue` first, and the connection closes (the client may or may not send the body).
/// The same request with its body already sent is answered and the connection goes on.
#[test]
fn expect_continue_for_a_request_no_route_serves_gets_the_final_status_at_once() {
    let srv = Server::start(&["--cpus", "0"]);
    for (target, status) in [("/nowhere", 404), ("/", 405)] {
        assert_eq!(answer_without_the_body(&srv, target).status, status);
    }
    let mut s = srv.connect();
    s.write_all(
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi\
          GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let rs = read_responses(&mut s, 2);
    assert_eq!((rs[0].status, rs[1].status), (404, 200));
}

/// A route whose middleware refuses a request (here a missing token) answers an
/// `Expect: 100-continue` request at once, without asking for the body, and closes; with the
/// token, the body is asked for and the request goes through. A body sent without waiting is
/// read, and the connection stays open after the refusal.
#[test]
fn expect_continue_refused_by_middleware_gets_the_refusal_at_once() {
    let dir = support::temp_dir("expect-auth");
    let file = dir.join("percore.toml");
    std::fs::write(
        &file,
        "[[routes]]\npath = \"/up\"\nmethods = [\"POST\"]\nhandler = \"echo\"\nmiddleware = [{ kind = \"auth\", token = \"t\" }]\n\n\
         [[routes]]\npath = \"/up-buffered\"\nmethods = [\"POST\"]\nrespond = { status = 200, body = \"ok\" }\nmiddleware = [{ kind = \"auth\", token = \"t\" }]\n",
    )
    .unwrap();
    let srv = Server::start(&["--cpus", "0", "--config", file.to_str().unwrap()]);
    // A streaming handler and a buffered one.
    for target in ["/up", "/up-buffered"] {
        assert_eq!(
            answer_without_the_body(&srv, target).status,
            401,
            "{target}"
        );

        let mut s = srv.connect();
        s.write_all(
            format!(
                "POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n", "{target}");
        s.write_all(b"hi").unwrap();
        let rs = read_responses(&mut s, 1);
        assert_eq!(rs[0].status, 200, "{target}");

        // A client that sent its body without waiting is refused and the connection goes on.
        let mut s = srv.connect();
        s.write_all(
            format!(
                "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\nhi\
                 POST {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 2\r\n\r\nhi"
            )
            .as_bytes(),
        )
        .unwrap();
        let rs = read_responses(&mut s, 2);
        assert_eq!((rs[0].status, rs[1].status), (401, 200), "{target}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A chunked body that arrives in many small writes, split inside size lines, extensions, data
/// and CRLFs, is decoded across receives (from where the last one stopped) and echoes exactly;
/// the request after it on the same connection is answered too.
#[test]
fn chunked_body_in_small_pieces_echoes_exactly() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    s.set_nodelay(true).unwrap();
    let mut wire = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut want = Vec::new();
    for i in 0..300u32 {
        let data: Vec<u8> = (0..(i % 37 + 1))
            .map(|j| b'a' + ((i + j) % 26) as u8)
            .collect();
        wire.extend_from_slice(format!("{:x};n={i}\r\n", data.len()).as_bytes());
        wire.extend_from_slice(&data);
        wire.extend_from_slice(b"\r\n");
        want.extend_from_slice(&data);
    }
    wire.extend_from_slice(b"0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n");
    for piece in wire.chunks(7) {
        s.write_all(piece).unwrap();
    }
    let rs = read_responses(&mut s, 2);
    assert_eq!(rs[0].status, 200);
    assert_eq!(rs[0].body, want);
    assert_eq!(rs[1].body, b"Hello, World!");
}

/// `POST /echo` reads its body as it arrives (a streaming handler): after `100 Continue` the
/// client sends the body and the next request in one write, so the body ends inside a buffer
/// the handler received itself; the request after it is answered without more bytes coming.
/// A client that closes mid-body gets nothing, and the server serves the next connection.
#[test]
fn a_streamed_body_hands_what_follows_it_back_to_the_connection() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    for body in [&b"streamed body"[..], &[7u8; 70_000][..]] {
        s.write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
        let mut cont = [0u8; 25];
        s.read_exact(&mut cont).unwrap();
        assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
        let mut rest = body.to_vec();
        rest.extend_from_slice(b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(&rest).unwrap();
        let rs = read_responses(&mut s, 2);
        assert_eq!(rs[0].body, body);
        assert_eq!(rs[1].body, br#"{"message":"Hello, World!"}"#);
    }
    // Chunked, same shape.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n").unwrap();
    let mut cont = [0u8; 25];
    s.read_exact(&mut cont).unwrap();
    s.write_all(b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let rs = read_responses(&mut s, 2);
    assert_eq!(
        (&rs[0].body[..], &rs[1].body[..]),
        (&b"abc"[..], &b"Hello, World!"[..])
    );
    // Half a body, then the client goes away.
    let mut gone = srv.connect();
    gone.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf")
        .unwrap();
    drop(gone);
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(read_responses(&mut s, 1)[0].body, b"Hello, World!");
}

#[test]
fn kv_store_across_two_shards() {
    kv_across_two_shards(&["--shards", "2"]);
}

/// A spinning shard watches its ring and the mesh doorbell before every sleep, naps included:
/// forwarded requests and their replies must still get through while both shards spin.
#[test]
fn kv_store_across_two_spinning_shards() {
    kv_across_two_shards(&["--shards", "2", "--idle-spin-us", "200"]);
}

fn kv_across_two_shards(args: &[&str]) {
    let srv = Server::start(args);
    // Keys spread over both shards; each request may land on either shard's connection.
    for i in 0..40 {
        let mut s = srv.connect();
        let key = format!("k{i}");
        let val = format!("value-{i}");
        let req = format!(
            "PUT /kv/{key} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{val}",
            val.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        assert_eq!(read_responses(&mut s, 1)[0].status, 201);
    }
    for i in 0..40 {
        let mut s = srv.connect();
        s.write_all(format!("GET /kv/k{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_responses(&mut s, 1).remove(0);
        assert_eq!((r.status, r.body), (200, format!("value-{i}").into_bytes()));
    }
    let mut s = srv.connect();
    s.write_all(b"DELETE /kv/k1 HTTP/1.1\r\nHost: x\r\n\r\nGET /kv/k1 HTTP/1.1\r\nHost: x\r\n\r\nDELETE /kv/k1 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let rs = read_responses(&mut s, 3);
    assert_eq!(
        rs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![204, 404, 404]
    );
}

#[test]
fn http10_closes_unless_keepalive_requested() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    let out = exchange_until_close(&mut s, b"GET / HTTP/1.0\r\n\r\n");
    let rs = parse_responses(&out);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].header("connection"), Some("close"));
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap();
    let r = read_responses(&mut s, 1).remove(0);
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let out = exchange_until_close(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(parse_responses(&out)[0].header("connection"), Some("close"));
}

/// RFC 9110 §2.5: a request in a later minor version of HTTP/1 is processed as HTTP/1.1 (kept
/// alive, Host required, answered in HTTP/1.1); other versions get 505.
#[test]
fn a_later_http1_minor_version_is_served_as_http11() {
    let srv = Server::start(&["--cpus", "0"]);
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.2\r\nHost: x\r\n\r\nGET /json HTTP/1.9\r\nHost: x\r\n\r\n")
        .unwrap();
    let rs = read_responses(&mut s, 2);
    assert_eq!(rs.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200]);
    assert_eq!(rs[0].body, b"Hello, World!");
    assert!(rs.iter().all(|r| r.header("connection") != Some("close")));
    let out = exchange_until_close(&mut s, b"GET / HTTP/1.2\r\n\r\n");
    assert_eq!(parse_responses(&out)[0].status, 400, "no Host: as in 1.1");
    for req in [
        "GET / HTTP/2.0\r\nHost: x\r\n\r\n",
        "GET / HTTP/3\r\nHost: x\r\n\r\n",
    ] {
        let mut s = srv.connect();
        let out = exchange_until_close(&mut s, req.as_bytes());
        assert!(out.starts_with(b"HTTP/1.1 505 "), "{req:?}");
    }
}
