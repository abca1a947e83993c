//! Metrics integration tests: the recording hot path allocates nothing once routes are
//! registered (a counting global allocator proves it), and a scrape of several shards is valid
//! Prometheus text that a real parser reads back.
//!
//! The allocator counts only on threads that turned counting on, so tests running in parallel
//! (and the harness) do not disturb the count.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use percore_server::metrics::{Method, MetricsSnapshot, RouteId, ShardMetrics, render_prometheus};

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: touching them never allocates.
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    let _ = ENABLED.try_with(|on| {
        if on.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees are ours; the counting touches only const thread-locals and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded as is; the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded as is; `ptr` was allocated by this allocator, i.e. by `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is; `ptr` was allocated by this allocator, i.e. by `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (u64, R) {
    ALLOCS.with(|n| n.set(0));
    ENABLED.with(|on| on.set(true));
    let r = f();
    ENABLED.with(|on| on.set(false));
    (ALLOCS.with(Cell::get), r)
}

#[test]
fn recording_allocates_nothing_after_registration() {
    let m = ShardMetrics::new(0);
    let routes: Vec<RouteId> = ["/", "/json", "/kv/{key}", "/echo"]
        .iter()
        .map(|p| m.register_route(p))
        .collect();
    let methods = Method::ALL;
    let statuses = [100, 200, 204, 301, 404, 429, 500, 503, 0, 999];
    let (allocs, ()) = allocations_in(|| {
        for i in 0..20_000u64 {
            let route = routes[(i % 4) as usize];
            let method = methods[(i % 6) as usize];
            let status = statuses[(i % 10) as usize];
            // From 0 µs to far beyond the 60 s histogram ceiling.
            let micros = (i * i * 7919) % 200_000_000;
            m.record(route, method, status, micros);
            m.record(RouteId::UNMATCHED, Method::from_token("BREW"), 404, i);
            m.add_bytes_in(i);
            m.add_bytes_out(2 * i);
            m.connection_accepted();
            m.connection_closed();
            m.connection_rejected();
        }
        m.reload(true);
        m.reload(false);
    });
    assert_eq!(allocs, 0, "the recording path allocated {allocs} times");
    assert_eq!(m.snapshot().total_requests(), 40_000);

    // The counter works: a snapshot does allocate.
    let (allocs, snap) = allocations_in(|| m.snapshot());
    assert!(allocs > 0);
    assert_eq!(snap.connections_open(), 0);
}

#[test]
fn a_scrape_of_several_shards_parses_and_counts_match() {
    let shards: Vec<ShardMetrics> = (0..3).map(ShardMetrics::new).collect();
    let mut sent = 0u64;
    for (i, s) in shards.iter().enumerate() {
        let hello = s.register_route("/");
        let json = s.register_route("/json");
        for n in 0..(100 * (i as u64 + 1)) {
            s.record(hello, Method::Get, 200, 20 + n);
            s.record(json, Method::Get, 200, 1_000 + n);
            sent += 2;
        }
        s.connection_accepted();
    }
    let per_shard: Vec<MetricsSnapshot> = shards
        .iter()
        .map(|s| {
            let mut snap = s.snapshot();
            snap.gauge("buffer_pool_in_use", &[], 1.0);
            snap
        })
        .collect();
    let mut merged = MetricsSnapshot::default();
    for s in &per_shard {
        merged.merge(s);
    }
    let text = render_prometheus(&merged, &per_shard);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition");
    let mut counted = 0.0;
    for s in &scrape.samples {
        if s.metric == "percore_requests_total"
            && let prometheus_parse::Value::Counter(v) = s.value
        {
            counted += v;
        }
    }
    assert_eq!(counted, sent as f64);
    let pools = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "percore_buffer_pool_in_use")
        .count();
    assert_eq!(pools, 3);
    let hist = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "percore_request_duration_seconds" && s.labels.get("route") == Some("/json")
        })
        .expect("histogram");
    let prometheus_parse::Value::Histogram(buckets) = &hist.value else {
        panic!("not a histogram");
    };
    let inf = buckets.last().expect("buckets");
    assert!(inf.less_than.is_infinite());
    assert_eq!(inf.count, 600.0);
}
