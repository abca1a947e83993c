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

/// A token bucket per shard whose share of the global rate follows demand: each shard admits
/// `rps × share` per second, and the shares are rebalanced every [`REBALANCE_EVERY`] over the
/// mesh from the demand every shard observed (no lock, no shared counter). A shard that sees all
/// the traffic (one client connection) ends up with nearly the whole rate; evenly spread traffic
/// gives each shard `1/shards`. Over the limit: 429 with `Retry-After`.
pub struct RateLimit {
    /// Identifies the same limiter (route) on every shard.
    pub key: u64,
    global_rate: f64,
    global_burst: f64,
    shard: usize,
    rate: Cell<f64>,
    burst: Cell<f64>,
    tokens: Cell<f64>,
    last: Cell<Instant>,
    /// Requests seen since the last rebalance (admitted or not).
    demand: Cell<u64>,
    /// Smoothed demand per interval of every shard, as last heard.
    demands: std::cell::RefCell<Vec<f64>>,
}

/// How often shards exchange demand and recompute their shares.
pub const REBALANCE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl RateLimit {
    /// Shard `shard`'s limiter for a global `rps` and `burst`, starting from an even split.
    pub fn new(key: u64, rps: u64, burst: u64, shard: usize, shards: usize) -> Self {
        let n = shards.max(1);
        let l = RateLimit {
            key,
            global_rate: rps as f64,
            global_burst: burst.max(1) as f64,
            shard,
            rate: Cell::new(0.0),
            burst: Cell::new(1.0),
            tokens: Cell::new(0.0),
            last: Cell::new(Instant::now()),
            demand: Cell::new(0),
            demands: std::cell::RefCell::new(vec![1.0; n]),
        };
        l.apply_share();
        l.tokens.set(l.burst.get());
        l
    }

    /// Takes this shard's demand since the last call and records it as its own.
    pub fn take_demand(&self) -> u64 {
        let d = self.demand.replace(0);
        self.observe(self.shard, d);
        d
    }

    /// Records what shard `from` saw in its last interval and recomputes this shard's share.
    pub fn observe(&self, from: usize, demand: u64) {
        {
            let mut ds = self.demands.borrow_mut();
            if let Some(slot) = ds.get_mut(from) {
                // Smooth over a few intervals so a burst does not swing the shares.
                *slot = 0.5 * *slot + 0.5 * demand as f64;
            }
        }
        self.apply_share();
    }

    fn apply_share(&self) {
        let ds = self.demands.borrow();
        let total: f64 = ds.iter().sum();
        // A small floor keeps an idle shard able to admit its first requests.
        let floor = (total * 0.01).max(0.5);
        let share = (ds[self.shard] + floor) / (total + floor * ds.len() as f64);
        self.rate.set(self.global_rate * share);
        self.burst.set((self.global_burst * share).max(1.0));
    }

    /// This shard's current rate (requests per second).
    pub fn rate(&self) -> f64 {
        self.rate.get()
    }
}

impl Middleware for RateLimit {
    fn on_head<'r>(&self, _req: &Request<'r>) -> Option<Response<'r>> {
        self.demand.set(self.demand.get() + 1);
        let now = Instant::now();
        let elapsed = now.duration_since(self.last.get()).as_secs_f64();
        self.last.set(now);
        let tokens = (self.tokens.get() + elapsed * self.rate.get()).min(self.burst.get());
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

/// A shard's rate limiters, found by key when demand reports arrive over the mesh.
#[derive(Default)]
pub struct Limiters {
    list: std::cell::RefCell<Vec<std::rc::Rc<RateLimit>>>,
}

impl Limiters {
    /// Forgets every limiter (a reload builds new ones).
    pub fn clear(&self) {
        self.list.borrow_mut().clear();
    }
    /// Registers a limiter.
    pub fn add(&self, l: std::rc::Rc<RateLimit>) {
        self.list.borrow_mut().push(l);
    }
    /// Applies a demand report from shard `from`.
    pub fn observe(&self, from: usize, key: u64, demand: u64) {
        for l in self.list.borrow().iter().filter(|l| l.key == key) {
            l.observe(from, demand);
        }
    }
    /// Takes each limiter's demand: `(key, demand)` pairs to tell the other shards.
    pub fn take_demands(&self) -> Vec<(u64, u64)> {
        self.list
            .borrow()
            .iter()
            .map(|l| (l.key, l.take_demand()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_demand_and_sum_to_the_global_rate() {
        let a = RateLimit::new(7, 1000, 100, 0, 2);
        let b = RateLimit::new(7, 1000, 100, 1, 2);
        assert!((a.rate() - 500.0).abs() < 1.0, "even split at start");
        // Shard 0 sees all the traffic for a while.
        for _ in 0..10 {
            a.observe(0, 300);
            a.observe(1, 0);
            b.observe(0, 300);
            b.observe(1, 0);
        }
        assert!(a.rate() > 950.0, "busy shard gets nearly all: {}", a.rate());
        assert!(
            (a.rate() + b.rate() - 1000.0).abs() < 1.0,
            "shares sum to the global rate"
        );
    }

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
