//! End-to-end tests of the socket engine: echo through real sockets on 127.0.0.1:0.

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use percore_runtime::EngineConfig;

mod support;
use support::{echo, start};

/// xorshift: deterministic split points and payloads.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn roundtrip(stream: &mut TcpStream, rng: &mut Rng, len: usize) {
    let payload: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
    // Write in random pieces, read everything back, compare.
    let mut off = 0;
    let mut back = vec![0u8; len];
    let mut got = 0;
    while off < len {
        let piece = (1 + rng.next() as usize % 20_000).min(len - off);
        stream.write_all(&payload[off..off + piece]).unwrap();
        off += piece;
        // Drain what is available so large payloads cannot deadlock on full socket buffers.
        while got < off {
            let n = stream.read(&mut back[got..]).unwrap();
            assert!(n > 0, "server closed early");
            got += n;
        }
    }
    assert_eq!(back, payload);
}

#[test]
fn echo_keeps_every_byte_in_order_over_keepalive_and_fresh_connections() {
    let srv = start(2, EngineConfig::default(), echo);
    // 64 keep-alive connections, 10,048 exchanges in all, sizes spanning several 16 KiB buffers.
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let addr = srv.addr;
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E3779B97F4A7C15 ^ i);
                let mut s = TcpStream::connect(addr).unwrap();
                for _ in 0..157 {
                    let len = 1 + rng.next() as usize % 40_000;
                    roundtrip(&mut s, &mut rng, len);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // Fresh connections: 2,000 of them, one exchange each.
    let mut rng = Rng(7);
    for _ in 0..2000 {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        let len = 1 + rng.next() as usize % 3000;
        roundtrip(&mut s, &mut rng, len);
    }
    let stats = srv.wait_closed();
    let accepted: u64 = stats.iter().map(|(s, _)| s.accepted).sum();
    let closed: u64 = stats.iter().map(|(s, _)| s.closed).sum();
    assert_eq!(accepted, 2064);
    assert_eq!(closed, 2064, "every accepted connection closed cleanly");
    for (s, pool) in &stats {
        assert_eq!(
            s.recv_buffers_in_use, 0,
            "receive buffers back in the ring: {s:?}"
        );
        assert_eq!(pool.in_use, 0, "write buffers back in the pool: {pool:?}");
    }
}

#[test]
fn an_exhausted_buffer_ring_loses_nothing() {
    // 8 buffers of 1 KiB for 100 connections that all send at once.
    let cfg = EngineConfig {
        recv_buffers: 8,
        recv_buffer_size: 1024,
        ..EngineConfig::default()
    };
    let srv = start(1, cfg, echo);
    let mut streams: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(srv.addr).unwrap())
        .collect();
    let payloads: Vec<Vec<u8>> = (0..100u32)
        .map(|i| (0..5000u32).map(|j| (i * 31 + j) as u8).collect())
        .collect();
    for (s, p) in streams.iter_mut().zip(&payloads) {
        s.write_all(p).unwrap();
    }
    for (s, p) in streams.iter_mut().zip(&payloads) {
        let mut back = vec![0u8; p.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, p);
    }
    drop(streams);
    let stats = srv.wait_closed();
    assert!(
        stats[0].0.recv_nobufs > 0,
        "the ring really ran dry: {:?}",
        stats[0]
    );
    assert_eq!(stats[0].0.recv_buffers_in_use, 0);
}

#[test]
fn half_close_is_handled() {
    let srv = start(1, EngineConfig::default(), echo);
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(b"last words").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(
        back, b"last words",
        "echo completes after the client's FIN, then the server closes"
    );
    srv.wait_closed();
}
