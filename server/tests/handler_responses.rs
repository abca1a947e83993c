//! What the server makes of a handler's response when the response cannot go out as given: a
//! status that cannot end an exchange, and content on a status that has none. Routes of our own,
//! served by the real server on one shard, over raw bytes.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Arc,
    time::Duration,
};

use percore_runtime::cpus::CpuSelection;
use percore_server::{
    handler::{Response, handler_fn},
    router::RouterBuilder,
    serve::{ServeOptions, ShardContext, start},
};

/// Everything the server sends until it closes the connection.
fn until_close(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("the server closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn interim_and_out_of_range_statuses_become_500_and_205_carries_no_content() {
    let server = start(ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        cpus: CpuSelection::Count(1),
        routes: Arc::new(|_cx: &ShardContext| {
            RouterBuilder::new()
                .route("GET", "/100", handler_fn(|_| Response::new(100)))
                .route("GET", "/101", handler_fn(|_| Response::new(101)))
                .route("GET", "/600", handler_fn(|_| Response::new(600)))
                .route(
                    "GET",
                    "/205",
                    handler_fn(|_| {
                        let mut r = Response::text(b"reset");
                        r.status = 205;
                        r
                    }),
                )
        }),
        ..ServeOptions::default()
    })
    .unwrap();
    let addr = server.addrs()[0];
    let close = b"GET /205 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for path in ["/100", "/101", "/600"] {
        // A second request behind it: were the interim status sent as the answer, the client
        // would take the next response for this request's.
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes();
        let text = until_close(addr, &[&req[..], close].concat());
        assert!(text.starts_with("HTTP/1.1 500 "), "{path}: {text:?}");
        assert_eq!(
            text.matches("HTTP/1.1 ").count(),
            1,
            "{path}: one answer, then close: {text:?}"
        );
    }
    // 205: no content, said with Content-Length: 0 (RFC 9110 §15.3.6); the connection goes on.
    let text = until_close(
        addr,
        &[&b"GET /205 HTTP/1.1\r\nHost: x\r\n\r\n"[..], close].concat(),
    );
    let first = "HTTP/1.1 205 Reset Content\r\n";
    assert!(text.starts_with(first), "{text:?}");
    let (a, b) = text[first.len()..]
        .split_once(first)
        .expect("two responses");
    for part in [a, b] {
        assert!(
            part.to_ascii_lowercase().contains("content-length: 0\r\n"),
            "{text:?}"
        );
        assert!(
            part.ends_with("\r\n\r\n"),
            "no content after the head: {text:?}"
        );
    }
}

/// Middleware that needs the body (`before`) sees it, also for a client that waits for
/// `100 Continue`; middleware that needs only the head (`on_head`) answers such a client before
/// the body is asked for.
#[test]
fn before_sees_the_body_and_on_head_answers_before_it_is_sent() {
    use std::rc::Rc;

    use percore_server::handler::{Middleware, Request};

    struct BodyMustBeOk;
    impl Middleware for BodyMustBeOk {
        fn before<'r>(&self, req: &Request<'r>) -> Option<Response<'r>> {
            (req.body != b"ok").then(|| Response::status_text(403, b"body refused\n"))
        }
    }
    struct NeedsHeader;
    impl Middleware for NeedsHeader {
        fn on_head<'r>(&self, req: &Request<'r>) -> Option<Response<'r>> {
            req.header("x-key")
                .is_none()
                .then(|| Response::status_text(401, b"no key\n"))
        }
    }
    let server = start(ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        cpus: CpuSelection::Count(1),
        routes: Arc::new(|_cx: &ShardContext| {
            RouterBuilder::new()
                .route("POST", "/up", handler_fn(|_| Response::text(b"stored")))
                .layer_on("/up", Rc::new(NeedsHeader))
                .layer_on("/up", Rc::new(BodyMustBeOk))
        }),
        ..ServeOptions::default()
    })
    .unwrap();
    let addr = server.addrs()[0];
    let head = |key: bool| {
        format!(
            "POST /up HTTP/1.1\r\nHost: x\r\n{}Content-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
            if key { "X-Key: k\r\n" } else { "" }
        )
    };
    // No key: refused on the head, before the body is asked for.
    let text = until_close(addr, head(false).as_bytes());
    assert!(text.starts_with("HTTP/1.1 401 "), "{text:?}");
    // With the key: asked for the body, which `before` then sees.
    for (body, status) in [("ok", "200"), ("no", "403")] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(head(true).as_bytes()).unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(body.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{body}: {out:?}"
        );
    }
}
