//! The request path allocates nothing in steady state: 10,000 keep-alive requests to `GET /`,
//! `GET /json` and `GET /kv/{key}` (half of the keys owned by the other shard, so half the kv
//! requests cross the mesh) after a warm-up, with a counting global allocator that counts the
//! allocations made while a connection task or a mesh dispatch task is being polled
//! (`percore_runtime::probe`). That is the whole per-request path: receive, parse, route,
//! handler, mesh round trip, encode, send. What it leaves out is glommio's sleep/wake machinery
//! of an idle shard, which is per idle period, not per request.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::{AtomicU64, Ordering},
};

use percore_runtime::cpus::CpuSelection;
use percore_server::serve::{ServeOptions, start};

struct Counting;

static REQUEST_PATH_ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if percore_runtime::probe::active() {
            REQUEST_PATH_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if percore_runtime::probe::active() {
            REQUEST_PATH_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).unwrap();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head[9..12].parse().unwrap();
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn steady_state_requests_allocate_nothing() {
    let shards = percore_runtime::cpus::allowed_cpus().len().min(2);
    let server = start(ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        cpus: CpuSelection::Count(shards),
        ..ServeOptions::default()
    })
    .unwrap();
    let addr = server.addrs()[0];
    let mut s = TcpStream::connect(addr).unwrap();
    let mut buf = Vec::with_capacity(1 << 16);
    let keys: Vec<String> = (0..8).map(|i| format!("key{i}")).collect();
    for k in &keys {
        s.write_all(
            format!("PUT /kv/{k} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nvalue").as_bytes(),
        )
        .unwrap();
        assert_eq!(read_response(&mut s, &mut buf), 201);
    }
    let reqs: Vec<Vec<u8>> = ["/", "/json"]
        .iter()
        .map(|p| p.to_string())
        .chain(keys.iter().map(|k| format!("/kv/{k}")))
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes())
        .collect();
    let mut run = |n: usize| {
        for i in 0..n {
            s.write_all(&reqs[i % reqs.len()]).unwrap();
            assert_eq!(read_response(&mut s, &mut buf), 200);
        }
    };
    run(2_000);
    let before = REQUEST_PATH_ALLOCS.load(Ordering::Relaxed);
    run(10_000);
    let after = REQUEST_PATH_ALLOCS.load(Ordering::Relaxed);
    assert_eq!(
        after - before,
        0,
        "allocations on the request path over 10,000 requests"
    );
}
