//! The configurable middleware: access log, request id with W3C `traceparent` propagation, a
//! per-shard token-bucket rate limit, bearer-token auth and fixed response headers (the last two
//! live in [`crate::handler`]). Everything per request is written into the request's arena.

use std::{
    cell::Cell,
    io::Write,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use crate::handler::{Middleware, Request, Response};

/// Adds headers owned by the middleware (copied into the request arena per response).
pub struct SetHeaders {
    headers: Vec<(String, Vec<u8>)>,
}

impl SetHeaders {
    /// Sets each `(name, value)` on every response.
    pub fn new(headers: Vec<(String, Vec<u8>)>) -> Self {
        SetHeaders { headers }
    }
}

impl Middleware for SetHeaders {
    fn after<'r>(&self, req: &Request<'r>, resp: &mut Response<'r>) {
        for (n, v) in &self.headers {
            resp.add_header(req.arena.alloc_str(n), req.arena.alloc_slice_copy(v));
        }
    }
}

/// `x-request-id`: propagated from the request or generated (`<shard>-<counter>`), echoed on the
/// response; a valid W3C `traceparent` is echoed too, so logs and clients can join the trace.
pub struct RequestId {
    shard: usize,
    next: Cell<u64>,
    seed: u64,
}

impl RequestId {
    /// Generates ids on `shard`.
    pub fn new(shard: usize) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        RequestId {
            shard,
            next: Cell::new(0),
            seed,
        }
    }
}

/// Whether `v` is a W3C traceparent (`00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero).
pub fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| {
        s.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    v.len() == 55
        && v[2] == b'-'
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[..2])
        && &v[..2] != b"ff"
        && hex(&v[3..35])
        && v[3..35].iter().any(|&c| c != b'0')
        && hex(&v[36..52])
        && v[36..52].iter().any(|&c| c != b'0')
        && hex(&v[53..55])
}

impl Middleware for RequestId {
    fn after<'r>(&self, req: &Request<'r>, resp: &mut Response<'r>) {
        let id: &'r [u8] = match req.header("x-request-id") {
            Some(v)
                if !v.is_empty() && v.len() <= 128 && v.iter().all(|c| c.is_ascii_graphic()) =>
            {
                v
            }
            _ => {
                let n = self.next.get();
                self.next.set(n + 1);
                bumpalo::format!(in req.arena, "{:x}-{}-{:x}", self.seed & 0xffff_ffff, self.shard, n).into_bump_str().as_bytes()
            }
        };
        resp.add_header("x-request-id", id);
        if let Some(tp) = req.header("traceparent")
            && valid_traceparent(tp)
        {
            resp.add_header("traceparent", tp);
        }
    }
}

/// One JSON line per request on stdout: time, shard, method, path, status, request id, trace id.
pub struct AccessLog;

fn json_escape<'a>(arena: &'a bumpalo::Bump, s: &[u8]) -> &'a str {
    let mut out = bumpalo::collections::String::new_in(arena);
    for &b in s {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("\\u{:04x}", b));
            }
        }
    }
    out.into_bump_str()
}

impl Middleware for AccessLog {
    fn after<'r>(&self, req: &Request<'r>, resp: &mut Response<'r>) {
        let a = req.arena;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let rid = resp
            .headers()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("x-request-id"))
            .map(|(_, v)| *v);
        let tp = req.header("traceparent").filter(|v| valid_traceparent(v));
        let line = bumpalo::format!(in a,
            "{{\"ts\":{ts:.6},\"shard\":{},\"method\":\"{}\",\"path\":\"{}\",\"status\":{},\"request_id\":\"{}\",\"trace_id\":\"{}\"}}\n",
            req.shard,
            json_escape(a, req.method().as_bytes()),
            json_escape(a, req.path().as_bytes()),
            resp.status,
            json_escape(a, rid.unwrap_or(b"")),
            json_escape(a, tp.map(|t| &t[3..35]).unwrap_or(b"")),
        );
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// A token bucket per shard: each of `shards` shards admits `rps / shards` requests per second
/// with a burst of `burst / shards`, so the whole server admits about `rps` when load is spread
/// over the shards (SO_REUSEPORT spreads connections by hash). Over the limit: 429 with
/// `Retry-After`.
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: Cell<f64>,
    last: Cell<Instant>,
}

impl RateLimit {
    /// This shard's share of a global `rps` and `burst`.
    pub fn new(rps: u64, burst: u64, shards: usize) -> Self {
        let shards = shards.max(1) as f64;
        let rate = rps as f64 / shards;
        let burst = (burst as f64 / shards).max(1.0);
        RateLimit {
            rate,
            burst,
            tokens: Cell::new(burst),
            last: Cell::new(Instant::now()),
        }
    }
}

impl Middleware for RateLimit {
    fn before<'r>(&self, _req: &Request<'r>) -> Option<Response<'r>> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last.get()).as_secs_f64();
        self.last.set(now);
        let tokens = (self.tokens.get() + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            None
        } else {
            self.tokens.set(tokens);
            Some(
                Response::status_text(429, b"too many requests\n").with_header("retry-after", b"1"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_validated() {
        assert!(valid_traceparent(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent(b"garbage"));
    }
}
