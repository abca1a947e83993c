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
