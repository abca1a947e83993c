//! Per-shard metrics, merged at scrape time, and their Prometheus text exposition.
//!
//! Owns: [`ShardMetrics`] (one per shard, shard-local: `Cell`/`RefCell`, no atomics, no locks),
//! the owned [`MetricsSnapshot`] a shard hands over the mesh, [`MetricsSnapshot::merge`], and
//! [`render_prometheus`] (text format 0.0.4).
//!
//! What is counted: requests by (route pattern, [`Method`], status class 1xx..5xx); per-route
//! latency in an HDR histogram (microseconds, 1 µs .. 60 s, 3 significant digits) with an exact
//! sum; bytes received and sent; connections accepted, closed and rejected; config reloads by
//! outcome. Callers attach free-form per-shard gauges (buffer-pool use, mesh queue depth, stalls)
//! to a snapshot.
//!
//! Invariants:
//! - The hot path ([`ShardMetrics::record`], the byte and connection counters) never allocates,
//!   never panics and never blocks: routes are registered up front ([`ShardMetrics::register_route`]
//!   returns a [`RouteId`], an index into fixed arrays) and the histograms have fixed bounds
//!   (values outside them saturate). A test with a counting allocator proves it.
//! - Counters only grow; a route, once registered, keeps its slot (and its counts) across config
//!   reloads, so `_total` series never go backwards.
//! - Merging is associative and commutative for counters and histograms; routes are matched by
//!   pattern, not by id (ids differ between shards).
//!
//! Must not: be shared between threads (a `ShardMetrics` is `!Sync` by construction; only
//! snapshots travel), do I/O, or know about sockets and HTTP parsing.

use std::{
    cell::{Cell, RefCell},
    fmt::Write as _,
};

use hdrhistogram::Histogram;

/// Lowest latency the histograms distinguish, in microseconds.
pub const LATENCY_LOW_US: u64 = 1;
/// Highest latency the histograms track, in microseconds (60 s); slower requests are counted
/// as 60 s in the histogram (their exact time still goes into the sum).
pub const LATENCY_HIGH_US: u64 = 60_000_000;
/// Significant decimal digits the histograms keep (0.1 % relative error).
pub const LATENCY_SIGFIG: u8 = 3;

/// Upper bounds of the exported Prometheus histogram buckets, in microseconds (`+Inf` follows).
pub const BUCKETS_US: [u64; 16] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];

/// Number of [`Method`] slots.
pub const METHODS: usize = 6;
/// Number of status classes (1xx..5xx).
pub const STATUS_CLASSES: usize = 5;

/// The route label of requests that matched no route (404 before any handler).
pub const UNMATCHED_PATTERN: &str = "unmatched";

/// Request methods counted separately; everything else is [`Method::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// Any other method.
    Other,
}

impl Method {
    /// Every method, in slot order.
    pub const ALL: [Method; METHODS] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Other,
    ];

    /// The method of a request-line token (case-sensitive, as HTTP methods are).
    pub fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    /// The label value (`"GET"`, ..., `"OTHER"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Index of the status class of `status`: 0 for 1xx .. 4 for 5xx. Codes outside 100..=599 count
/// in the nearest class.
pub fn status_class(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, STATUS_CLASSES) - 1
}

/// Label value of a status class index (`"2xx"`).
pub fn status_class_label(class: usize) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx"][class.min(STATUS_CLASSES - 1)]
}

/// A registered route of one [`ShardMetrics`]: an index, valid only for the shard that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteId(u32);

impl RouteId {
    /// Requests that matched no route; pre-registered in every [`ShardMetrics`] as
    /// [`UNMATCHED_PATTERN`].
    pub const UNMATCHED: RouteId = RouteId(0);
}

fn new_histogram() -> Histogram<u64> {
    // Fails only for invalid bounds (low < 1, high < 2 * low, sigfig > 5); these constants are
    // valid, which every test that records exercises.
    Histogram::new_with_bounds(LATENCY_LOW_US, LATENCY_HIGH_US, LATENCY_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Counters and histogram of one route.
#[derive(Clone, Debug)]
pub struct RouteSnapshot {
    /// The route pattern (`/kv/{key}`), or [`UNMATCHED_PATTERN`].
    pub pattern: String,
    /// Requests by `[Method slot][status class]`.
    pub requests: [[u64; STATUS_CLASSES]; METHODS],
    /// Exact sum of the recorded latencies, in microseconds.
    pub sum_micros: u64,
    /// Latency histogram, microseconds.
    pub latency: Histogram<u64>,
}

impl RouteSnapshot {
    fn new(pattern: &str) -> RouteSnapshot {
        RouteSnapshot {
            pattern: pattern.to_string(),
            requests: [[0; STATUS_CLASSES]; METHODS],
            sum_micros: 0,
            latency: new_histogram(),
        }
    }

    /// All requests of this route.
    pub fn total(&self) -> u64 {
        self.requests.iter().flatten().sum()
    }

    fn merge(&mut self, other: &RouteSnapshot) {
        for (a, b) in self.requests.iter_mut().zip(&other.requests) {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.saturating_add(*y);
            }
        }
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
        if self.latency.add(&other.latency).is_err() {
            // Only if the bounds differ; let this side grow to hold the other's range.
            self.latency.auto(true);
            let _ = self.latency.add(&other.latency);
        }
    }
}

/// A per-shard gauge: `(name, labels, value)`. The name is prefixed with `percore_` when it
/// lacks it; render adds `shard="N"`.
pub type Gauge = (String, Vec<(String, String)>, f64);

/// An owned copy of one shard's metrics (or of several, merged): `Send + Clone`.
#[derive(Clone, Debug)]
pub struct MetricsSnapshot {
    /// The shard it came from (meaningless after merging).
    pub shard: usize,
    /// Per-route counters and histograms, in registration order.
    pub routes: Vec<RouteSnapshot>,
    /// Bytes read from client sockets.
    pub bytes_in: u64,
    /// Bytes written to client sockets.
    pub bytes_out: u64,
    /// Connections accepted.
    pub connections_accepted: u64,
    /// Connections closed (accepted ones, for whatever reason).
    pub connections_closed: u64,
    /// Connections refused right after accept (over a limit, or while draining).
    pub connections_rejected: u64,
    /// Config reloads applied.
    pub reloads_ok: u64,
    /// Config reloads rejected (invalid file, or a shard refused it).
    pub reloads_error: u64,
    /// Free-form gauges the caller attaches (see [`Gauge`]).
    pub gauges: Vec<Gauge>,
}

impl MetricsSnapshot {
    /// An empty snapshot for `shard` (e.g. the control thread's reload counters).
    pub fn new(shard: usize) -> MetricsSnapshot {
        MetricsSnapshot {
            shard,
            routes: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
            connections_accepted: 0,
            connections_closed: 0,
            connections_rejected: 0,
            reloads_ok: 0,
            reloads_error: 0,
            gauges: Vec::new(),
        }
    }

    /// Adds `other` into `self`: counters are summed, histograms added, routes matched by
    /// pattern (new ones appended), gauges with the same name and labels summed (others
    /// appended).
    pub fn merge(&mut self, other: &MetricsSnapshot) {
        for r in &other.routes {
            match self.routes.iter_mut().find(|x| x.pattern == r.pattern) {
                Some(mine) => mine.merge(r),
                None => self.routes.push(r.clone()),
            }
        }
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut self.bytes_in, other.bytes_in);
        add(&mut self.bytes_out, other.bytes_out);
        add(&mut self.connections_accepted, other.connections_accepted);
        add(&mut self.connections_closed, other.connections_closed);
        add(&mut self.connections_rejected, other.connections_rejected);
        add(&mut self.reloads_ok, other.reloads_ok);
        add(&mut self.reloads_error, other.reloads_error);
        for (name, labels, v) in &other.gauges {
            match self
                .gauges
                .iter_mut()
                .find(|(n, l, _)| n == name && l == labels)
            {
                Some((_, _, mine)) => *mine += v,
                None => self.gauges.push((name.clone(), labels.clone(), *v)),
            }
        }
    }

    /// Attaches a gauge.
    pub fn gauge(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.gauges.push((
            name.to_string(),
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            value,
        ));
    }

    /// The route with this pattern.
    pub fn route(&self, pattern: &str) -> Option<&RouteSnapshot> {
        self.routes.iter().find(|r| r.pattern == pattern)
    }

    /// Requests of `pattern` with `method` and a status in the class of `status`.
    pub fn requests(&self, pattern: &str, method: Method, status: u16) -> u64 {
        self.route(pattern)
            .map_or(0, |r| r.requests[method.index()][status_class(status)])
    }

    /// All requests.
    pub fn total_requests(&self) -> u64 {
        self.routes.iter().map(RouteSnapshot::total).sum()
    }

    /// Connections open now: accepted and not yet closed.
    pub fn connections_open(&self) -> u64 {
        self.connections_accepted
            .saturating_sub(self.connections_closed)
    }
}

impl Default for MetricsSnapshot {
    fn default() -> Self {
        MetricsSnapshot::new(0)
    }
}

/// One shard's live metrics. Keep it in an `Rc` on the shard; never share it across threads.
pub struct ShardMetrics {
    shard: usize,
    routes: RefCell<Vec<RouteSnapshot>>,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    accepted: Cell<u64>,
    closed: Cell<u64>,
    rejected: Cell<u64>,
    reloads_ok: Cell<u64>,
    reloads_error: Cell<u64>,
}

impl std::fmt::Debug for ShardMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardMetrics")
            .field("shard", &self.shard)
            .field("routes", &self.routes.try_borrow().map(|r| r.len()).ok())
            .finish_non_exhaustive()
    }
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get().saturating_add(n));
}

impl ShardMetrics {
    /// Metrics of `shard`, with [`RouteId::UNMATCHED`] registered.
    pub fn new(shard: usize) -> ShardMetrics {
        ShardMetrics {
            shard,
            routes: RefCell::new(vec![RouteSnapshot::new(UNMATCHED_PATTERN)]),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            accepted: Cell::new(0),
            closed: Cell::new(0),
            rejected: Cell::new(0),
            reloads_ok: Cell::new(0),
            reloads_error: Cell::new(0),
        }
    }

    /// The id of `pattern`, registering it if new (allocates; call when building a router,
    /// not per request). Registering the same pattern again returns the same id.
    pub fn register_route(&self, pattern: &str) -> RouteId {
        let Ok(mut routes) = self.routes.try_borrow_mut() else {
            return RouteId::UNMATCHED;
        };
        if let Some(i) = routes.iter().position(|r| r.pattern == pattern) {
            return RouteId(i as u32);
        }
        let Ok(id) = u32::try_from(routes.len()) else {
            return RouteId::UNMATCHED;
        };
        routes.push(RouteSnapshot::new(pattern));
        RouteId(id)
    }

    /// Counts one request: route, method, final status and latency in microseconds.
    /// Allocation-free; an id from another shard or a stale one is ignored.
    #[inline]
    pub fn record(&self, route: RouteId, method: Method, status: u16, micros: u64) {
        let Ok(mut routes) = self.routes.try_borrow_mut() else {
            return;
        };
        let Some(r) = routes.get_mut(route.0 as usize) else {
            return;
        };
        let slot = &mut r.requests[method.index()][status_class(status)];
        *slot = slot.saturating_add(1);
        r.sum_micros = r.sum_micros.saturating_add(micros);
        r.latency.saturating_record(micros.min(LATENCY_HIGH_US));
    }

    /// Counts bytes read from a client socket.
    #[inline]
    pub fn add_bytes_in(&self, n: u64) {
        bump(&self.bytes_in, n);
    }

    /// Counts bytes written to a client socket.
    #[inline]
    pub fn add_bytes_out(&self, n: u64) {
        bump(&self.bytes_out, n);
    }

    /// Counts an accepted connection.
    #[inline]
    pub fn connection_accepted(&self) {
        bump(&self.accepted, 1);
    }

    /// Counts a closed connection (each accepted one closes once).
    #[inline]
    pub fn connection_closed(&self) {
        bump(&self.closed, 1);
    }

    /// Counts a connection refused right after accept. Count it as accepted and closed too if
    /// it was; rejected is an extra reason, not a separate life cycle.
    #[inline]
    pub fn connection_rejected(&self) {
        bump(&self.rejected, 1);
    }

    /// Counts a config reload outcome. A reload is one event per process: count it on one
    /// shard (or in the control thread's own snapshot), not on every shard.
    pub fn reload(&self, ok: bool) {
        bump(
            if ok {
                &self.reloads_ok
            } else {
                &self.reloads_error
            },
            1,
        );
    }

    /// Connections open now on this shard.
    pub fn connections_open(&self) -> u64 {
        self.accepted.get().saturating_sub(self.closed.get())
    }

    /// An owned copy of everything (allocates; call at scrape time).
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            shard: self.shard,
            routes: self
                .routes
                .try_borrow()
                .map(|r| r.clone())
                .unwrap_or_default(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            connections_accepted: self.accepted.get(),
            connections_closed: self.closed.get(),
            connections_rejected: self.rejected.get(),
            reloads_ok: self.reloads_ok.get(),
            reloads_error: self.reloads_error.get(),
            gauges: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format 0.0.4
// ---------------------------------------------------------------------------------------------

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes `# HELP` text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A metric name made valid (`[a-zA-Z_:][a-zA-Z0-9_:]*`) and prefixed with `percore_`.
fn metric_name(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.starts_with("percore_") {
        clean
    } else {
        format!("percore_{clean}")
    }
}

/// The type and help text of a per-shard sample family the control plane adds; a family a handler
/// adds that is not listed here is a gauge.
fn describe(family: &str) -> (&'static str, &'static str) {
    match family.strip_prefix("percore_").unwrap_or(family) {
        "buffer_pool_in_use" => ("gauge", "Pooled connection buffers in use, per shard."),
        "buffer_pool_free" => ("gauge", "Pooled connection buffers free, per shard."),
        "recv_buffers_in_use" => (
            "gauge",
            "Provided receive buffers held by connections (not in the kernel's ring), per shard.",
        ),
        "open_connections" => ("gauge", "Open connections, per shard."),
        "accept_errors_total" => (
            "counter",
            "Failed accepts (EMFILE, ENFILE, ENOBUFS, ...), per shard, since the process started.",
        ),
        "mesh_pending_calls" => (
            "gauge",
            "Calls to other shards waiting for their reply, per shard.",
        ),
        "config_generation" => ("gauge", "Config generation each shard serves."),
        "connection_tasks" => ("gauge", "Live connection tasks, per shard."),
        "oldest_connection_seconds" => ("gauge", "Age of the oldest open connection, per shard."),
        _ => ("gauge", "Per-shard gauge."),
    }
}

/// A label name made valid (`[a-zA-Z_][a-zA-Z0-9_]*`).
fn label_name(name: &str) -> String {
    let mut clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
        clean.insert(0, '_');
    }
    clean
}

/// Microseconds as a decimal number of seconds, exactly (`50` → `0.00005`, `2500000` → `2.5`).
fn seconds(micros: u64) -> String {
    let (s, us) = (micros / 1_000_000, micros % 1_000_000);
    if us == 0 {
        return s.to_string();
    }
    let frac = format!("{us:06}");
    format!("{s}.{}", frac.trim_end_matches('0'))
}

/// A sample value: Prometheus spells infinities `+Inf`/`-Inf` and not-a-number `NaN`.
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// Writes `{a="x",b="y"}` (nothing for no labels).
fn labels(out: &mut String, pairs: &[(&str, &str)]) {
    if pairs.is_empty() {
        return;
    }
    out.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label_value(v));
    }
    out.push('}');
}

/// Appends one unlabelled metric (help, type and value) in the Prometheus text format.
pub fn push_metric(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    header(out, name, kind, help);
    sample(out, name, &[], &value.to_string());
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, pairs: &[(&str, &str)], value: &str) {
    out.push_str(name);
    labels(out, pairs);
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// Names of the families [`render_prometheus`] writes itself; caller gauges with these names
/// are left out (a family must appear once).
pub const BUILTIN_FAMILIES: &[&str] = &[
    "percore_requests_total",
    "percore_request_duration_seconds",
    "percore_request_duration_p50_seconds",
    "percore_request_duration_p99_seconds",
    "percore_request_duration_p999_seconds",
    "percore_received_bytes_total",
    "percore_sent_bytes_total",
    "percore_connections_accepted_total",
    "percore_connections_closed_total",
    "percore_connections_rejected_total",
    "percore_connections_open",
    "percore_reloads_total",
];

/// Renders the merged metrics and the per-shard gauges as Prometheus text format 0.0.4.
///
/// Totals (requests, latency histograms and percentiles, bytes, connections, reloads) come
/// from `merged`; `percore_connections_open` and every caller gauge come from `per_shard`,
/// labelled `shard="N"` with `N` = [`MetricsSnapshot::shard`] (when `per_shard` is empty,
/// open connections come unlabelled from `merged`). Gauges in `merged` are not rendered.
pub fn render_prometheus(merged: &MetricsSnapshot, per_shard: &[MetricsSnapshot]) -> String {
    let mut o = String::with_capacity(4096 + merged.routes.len() * 2048);

    header(
        &mut o,
        "percore_requests_total",
        "counter",
        "Requests answered, by route pattern, method and status class.",
    );
    for r in &merged.routes {
        for m in Method::ALL {
            for (class, &n) in r.requests[m.index()].iter().enumerate() {
                if n > 0 {
                    let pairs = [
                        ("route", r.pattern.as_str()),
                        ("method", m.as_str()),
                        ("status", status_class_label(class)),
                    ];
                    sample(&mut o, "percore_requests_total", &pairs, &n.to_string());
                }
            }
        }
    }

    header(
        &mut o,
        "percore_request_duration_seconds",
        "histogram",
        "Request latency by route pattern, from the request head parsed to the response queued.",
    );
    for r in &merged.routes {
        let route = r.pattern.as_str();
        let mut counts = [0u64; BUCKETS_US.len()];
        for v in r.latency.iter_recorded() {
            // The highest value equivalent to the recorded one: never reports a request as
            // faster than it was (HDR precision: 0.1 %).
            let value = v.value_iterated_to();
            if let Some(i) = BUCKETS_US.iter().position(|&le| value <= le) {
                counts[i] += v.count_at_value();
            }
        }
        let mut cumulative = 0u64;
        for (le, n) in BUCKETS_US.iter().zip(counts) {
            cumulative += n;
            let le = seconds(*le);
            sample(
                &mut o,
                "percore_request_duration_seconds_bucket",
                &[("route", route), ("le", &le)],
                &cumulative.to_string(),
            );
        }
        let count = r.latency.len();
        sample(
            &mut o,
            "percore_request_duration_seconds_bucket",
            &[("route", route), ("le", "+Inf")],
            &count.to_string(),
        );
        sample(
            &mut o,
            "percore_request_duration_seconds_sum",
            &[("route", route)],
            &seconds(r.sum_micros),
        );
        sample(
            &mut o,
            "percore_request_duration_seconds_count",
            &[("route", route)],
            &count.to_string(),
        );
    }

    for (name, q, help) in [
        (
            "percore_request_duration_p50_seconds",
            0.5,
            "Median request latency by route pattern (HDR histogram, 0.1% precision).",
        ),
        (
            "percore_request_duration_p99_seconds",
            0.99,
            "99th percentile request latency by route pattern (HDR histogram, 0.1% precision).",
        ),
        (
            "percore_request_duration_p999_seconds",
            0.999,
            "99.9th percentile request latency by route pattern (HDR histogram, 0.1% precision).",
        ),
    ] {
        header(&mut o, name, "gauge", help);
        for r in merged.routes.iter().filter(|r| !r.latency.is_empty()) {
            let v = r.latency.value_at_quantile(q);
            sample(&mut o, name, &[("route", &r.pattern)], &seconds(v));
        }
    }

    for (name, help, v) in [
        (
            "percore_received_bytes_total",
            "Bytes read from client sockets.",
            merged.bytes_in,
        ),
        (
            "percore_sent_bytes_total",
            "Bytes written to client sockets.",
            merged.bytes_out,
        ),
        (
            "percore_connections_accepted_total",
            "Connections accepted.",
            merged.connections_accepted,
        ),
        (
            "percore_connections_closed_total",
            "Connections closed.",
            merged.connections_closed,
        ),
        (
            "percore_connections_rejected_total",
            "Connections refused right after accept (over a limit, or draining).",
            merged.connections_rejected,
        ),
    ] {
        header(&mut o, name, "counter", help);
        sample(&mut o, name, &[], &v.to_string());
    }

    header(
        &mut o,
        "percore_connections_open",
        "gauge",
        "Connections open now (accepted and not closed), by shard.",
    );
    if per_shard.is_empty() {
        sample(
            &mut o,
            "percore_connections_open",
            &[],
            &merged.connections_open().to_string(),
        );
    }
    for s in per_shard {
        let shard = s.shard.to_string();
        sample(
            &mut o,
            "percore_connections_open",
            &[("shard", &shard)],
            &s.connections_open().to_string(),
        );
    }

    header(
        &mut o,
        "percore_reloads_total",
        "counter",
        "Config reloads by outcome.",
    );
    sample(
        &mut o,
        "percore_reloads_total",
        &[("outcome", "ok")],
        &merged.reloads_ok.to_string(),
    );
    sample(
        &mut o,
        "percore_reloads_total",
        &[("outcome", "error")],
        &merged.reloads_error.to_string(),
    );

    // Caller gauges: one family per name, in order of first appearance, every shard's samples
    // together.
    let mut names: Vec<String> = Vec::new();
    for s in per_shard {
        for (name, _, _) in &s.gauges {
            let n = metric_name(name);
            if !names.contains(&n) && !BUILTIN_FAMILIES.contains(&n.as_str()) {
                names.push(n);
            }
        }
    }
    for family in &names {
        let (kind, help) = describe(family);
        header(&mut o, family, kind, help);
        for s in per_shard {
            let shard = s.shard.to_string();
            for (name, extra, v) in &s.gauges {
                if metric_name(name) != *family {
                    continue;
                }
                let extra: Vec<(String, &str)> = extra
                    .iter()
                    .map(|(k, v)| (label_name(k), v.as_str()))
                    .filter(|(k, _)| k != "shard")
                    .collect();
                let mut pairs: Vec<(&str, &str)> = vec![("shard", &shard)];
                pairs.extend(extra.iter().map(|(k, v)| (k.as_str(), *v)));
                sample(&mut o, family, &pairs, &float(*v));
            }
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use prometheus_parse::{Scrape, Value};

    use super::*;

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
    }

    /// The value of the one sample named `name` whose labels include `want`.
    fn value(s: &Scrape, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let hits: Vec<f64> = s
            .samples
            .iter()
            .filter(|x| x.metric == name && want.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
            .map(|x| match &x.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
                other => panic!("{name}: unexpected {other:?}"),
            })
            .collect();
        assert!(hits.len() <= 1, "{name} {want:?}: {hits:?}");
        hits.first().copied()
    }

    /// A known set of requests on two routes; patterns without braces because prometheus-parse
    /// drops samples whose label values contain `}`.
    fn shard_with_traffic(shard: usize) -> (ShardMetrics, RouteId, RouteId) {
        let m = ShardMetrics::new(shard);
        let a = m.register_route("/a");
        let b = m.register_route("/b");
        for _ in 0..3 {
            m.record(a, Method::Get, 200, 30); // <= 50 µs
        }
        m.record(a, Method::Get, 404, 700); // <= 1 ms
        m.record(a, Method::Post, 201, 2_000); // <= 2.5 ms
        m.record(b, Method::Delete, 503, 120_000_000); // beyond 60 s: saturates
        m.record(b, Method::from_token("PATCH"), 301, 90); // <= 100 µs
        m.record(RouteId::UNMATCHED, Method::Get, 404, 10);
        m.add_bytes_in(1000);
        m.add_bytes_out(5000);
        for _ in 0..4 {
            m.connection_accepted();
        }
        m.connection_closed();
        m.connection_rejected();
        (m, a, b)
    }

    #[test]
    fn snapshots_can_cross_threads() {
        fn send_clone<T: Send + Clone + 'static>() {}
        send_clone::<MetricsSnapshot>();
    }

    #[test]
    fn method_and_status_classes() {
        for m in Method::ALL {
            if m != Method::Other {
                assert_eq!(Method::from_token(m.as_str()), m);
            }
        }
        assert_eq!(Method::from_token("get"), Method::Other);
        assert_eq!(status_class(100), 0);
        assert_eq!(status_class(204), 1);
        assert_eq!(status_class(599), 4);
        assert_eq!(status_class(0), 0);
        assert_eq!(status_class(999), 4);
        assert_eq!(status_class_label(3), "4xx");
    }

    #[test]
    fn registering_is_idempotent_and_bad_ids_are_ignored() {
        let m = ShardMetrics::new(0);
        let a = m.register_route("/a");
        assert_eq!(m.register_route("/a"), a);
        assert_ne!(a, RouteId::UNMATCHED);
        assert_eq!(m.register_route(UNMATCHED_PATTERN), RouteId::UNMATCHED);
        m.record(RouteId(99), Method::Get, 200, 1);
        assert_eq!(m.snapshot().total_requests(), 0);
    }

    #[test]
    fn rendered_counters_and_histograms_match_what_was_recorded() {
        let (m, _, _) = shard_with_traffic(0);
        let snap = m.snapshot();
        assert_eq!(snap.total_requests(), 8);
        let text = render_prometheus(&snap, std::slice::from_ref(&snap));
        let s = parse(&text);

        let req = |route: &str, method: &str, status: &str| {
            value(
                &s,
                "percore_requests_total",
                &[("route", route), ("method", method), ("status", status)],
            )
        };
        assert_eq!(req("/a", "GET", "2xx"), Some(3.0));
        assert_eq!(req("/a", "GET", "4xx"), Some(1.0));
        assert_eq!(req("/a", "POST", "2xx"), Some(1.0));
        assert_eq!(req("/b", "DELETE", "5xx"), Some(1.0));
        assert_eq!(req("/b", "OTHER", "3xx"), Some(1.0));
        assert_eq!(req("unmatched", "GET", "4xx"), Some(1.0));
        assert_eq!(req("/a", "PUT", "2xx"), None, "zero series are left out");
        let total: f64 = s
            .samples
            .iter()
            .filter(|x| x.metric == "percore_requests_total")
            .map(|x| match x.value {
                Value::Counter(v) => v,
                _ => panic!("not a counter"),
            })
            .sum();
        assert_eq!(total, 8.0);

        // Histograms: cumulative, +Inf bucket == _count == requests of the route.
        let hist = |route: &str| -> Vec<(f64, f64)> {
            let h = s
                .samples
                .iter()
                .find(|x| {
                    x.metric == "percore_request_duration_seconds"
                        && x.labels.get("route") == Some(route)
                })
                .unwrap_or_else(|| panic!("no histogram for {route}"));
            match &h.value {
                Value::Histogram(b) => b.iter().map(|c| (c.less_than, c.count)).collect(),
                other => panic!("{other:?}"),
            }
        };
        let a = hist("/a");
        assert_eq!(a.len(), BUCKETS_US.len() + 1);
        assert!(
            a.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{a:?}"
        );
        let at = |h: &[(f64, f64)], le: f64| {
            h.iter()
                .find(|(l, _)| *l == le || (*l - le).abs() < 1e-12)
                .map(|(_, c)| *c)
        };
        assert_eq!(at(&a, 0.00005), Some(3.0));
        assert_eq!(at(&a, 0.0005), Some(3.0));
        assert_eq!(at(&a, 0.001), Some(4.0));
        assert_eq!(at(&a, 0.0025), Some(5.0));
        assert_eq!(at(&a, f64::INFINITY), Some(5.0));
        let b = hist("/b");
        assert_eq!(at(&b, 0.0001), Some(1.0));
        assert_eq!(at(&b, 10.0), Some(1.0), "the 120 s request is only in +Inf");
        assert_eq!(at(&b, f64::INFINITY), Some(2.0));
        // prometheus-parse keeps _count and _sum as separate untyped samples.
        let count = |route: &str| {
            value(
                &s,
                "percore_request_duration_seconds_count",
                &[("route", route)],
            )
        };
        assert_eq!(count("/a"), Some(5.0));
        assert_eq!(count("/b"), Some(2.0));
        let sum = value(
            &s,
            "percore_request_duration_seconds_sum",
            &[("route", "/a")],
        );
        assert_eq!(sum, Some(0.00279)); // 3*30 + 700 + 2000 µs

        let p50 = value(
            &s,
            "percore_request_duration_p50_seconds",
            &[("route", "/a")],
        );
        assert_eq!(p50, Some(0.00003));
        let p999 = value(
            &s,
            "percore_request_duration_p999_seconds",
            &[("route", "/a")],
        );
        assert_eq!(p999, Some(0.002));

        assert_eq!(value(&s, "percore_received_bytes_total", &[]), Some(1000.0));
        assert_eq!(value(&s, "percore_sent_bytes_total", &[]), Some(5000.0));
        assert_eq!(
            value(&s, "percore_connections_accepted_total", &[]),
            Some(4.0)
        );
        assert_eq!(
            value(&s, "percore_connections_closed_total", &[]),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "percore_connections_rejected_total", &[]),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "percore_connections_open", &[("shard", "0")]),
            Some(3.0)
        );
        assert_eq!(
            value(&s, "percore_reloads_total", &[("outcome", "ok")]),
            Some(0.0)
        );
    }

    #[test]
    fn every_family_has_help_and_type_once_before_its_samples() {
        let (m, _, _) = shard_with_traffic(0);
        let mut snap = m.snapshot();
        snap.gauge("buffer_pool_in_use", &[], 3.0);
        let text = render_prometheus(&m.snapshot(), &[snap]);
        let mut typed: HashMap<String, String> = HashMap::new();
        let mut helped: Vec<String> = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!helped.contains(&name), "HELP twice for {name}");
                helped.push(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap(), it.next().unwrap());
                assert!(
                    typed.insert(name.into(), kind.into()).is_none(),
                    "TYPE twice"
                );
                current = name.to_string();
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = if typed.get(&current).map(String::as_str) == Some("histogram") {
                    name.trim_end_matches("_bucket")
                        .trim_end_matches("_sum")
                        .trim_end_matches("_count")
                } else {
                    name
                };
                assert_eq!(base, current, "sample {line:?} outside its family");
            }
        }
        assert_eq!(
            typed.get("percore_buffer_pool_in_use").map(String::as_str),
            Some("gauge")
        );
    }

    #[test]
    fn merging_two_shards_sums() {
        let (m0, _, _) = shard_with_traffic(0);
        let m1 = ShardMetrics::new(1);
        // Registered in another order: ids differ, patterns match.
        let c = m1.register_route("/c");
        let a = m1.register_route("/a");
        m1.record(a, Method::Get, 200, 40);
        m1.record(c, Method::Put, 500, 3_000_000);
        m1.add_bytes_in(1);
        m1.connection_accepted();
        m1.reload(true);
        m1.reload(false);
        let mut s0 = m0.snapshot();
        let mut s1 = m1.snapshot();
        s0.gauge("mesh_pending", &[("peer", "1")], 2.0);
        s1.gauge("mesh_pending", &[("peer", "1")], 5.0);
        s1.gauge("stalls", &[], 1.0);

        let mut merged = MetricsSnapshot::new(0);
        merged.merge(&s0);
        merged.merge(&s1);
        assert_eq!(merged.total_requests(), 10);
        assert_eq!(merged.requests("/a", Method::Get, 200), 4);
        assert_eq!(merged.requests("/c", Method::Put, 503), 1);
        assert_eq!(merged.route("/a").unwrap().latency.len(), 6);
        assert_eq!(merged.route("/a").unwrap().sum_micros, 2790 + 40);
        assert_eq!(merged.bytes_in, 1001);
        assert_eq!(merged.connections_accepted, 5);
        assert_eq!(merged.connections_open(), 4);
        assert_eq!((merged.reloads_ok, merged.reloads_error), (1, 1));
        assert_eq!(
            merged.gauges,
            vec![
                (
                    "mesh_pending".into(),
                    vec![("peer".into(), "1".into())],
                    7.0
                ),
                ("stalls".into(), vec![], 1.0)
            ]
        );

        // Merge order does not matter for counters and histograms.
        let mut other = MetricsSnapshot::new(0);
        other.merge(&s1);
        other.merge(&s0);
        assert_eq!(other.total_requests(), merged.total_requests());
        assert_eq!(
            other.route("/a").unwrap().latency,
            merged.route("/a").unwrap().latency
        );

        let text = render_prometheus(&merged, &[s0, s1]);
        let s = parse(&text);
        assert_eq!(
            value(
                &s,
                "percore_requests_total",
                &[("route", "/a"), ("method", "GET"), ("status", "2xx")]
            ),
            Some(4.0)
        );
        assert_eq!(
            value(
                &s,
                "percore_request_duration_seconds_count",
                &[("route", "/c")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "percore_mesh_pending", &[("shard", "0"), ("peer", "1")]),
            Some(2.0)
        );
        assert_eq!(
            value(&s, "percore_mesh_pending", &[("shard", "1"), ("peer", "1")]),
            Some(5.0)
        );
        assert_eq!(value(&s, "percore_stalls", &[("shard", "1")]), Some(1.0));
        assert_eq!(
            value(&s, "percore_connections_open", &[("shard", "1")]),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "percore_reloads_total", &[("outcome", "error")]),
            Some(1.0)
        );
    }

    /// Reads a label value back per the exposition format (the inverse of the escaping).
    fn unescape(v: &str) -> String {
        let mut out = String::new();
        let mut it = v.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                match it.next() {
                    Some('n') => out.push('\n'),
                    Some(c) => out.push(c),
                    None => out.push('\\'),
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn label_values_are_escaped() {
        let nasty = "/q\"uote\\back\nline/{x}";
        assert_eq!(escape_label_value(nasty), "/q\\\"uote\\\\back\\nline/{x}");
        assert_eq!(unescape(&escape_label_value(nasty)), nasty);

        let m = ShardMetrics::new(0);
        let r = m.register_route(nasty);
        m.record(r, Method::Get, 200, 5);
        let mut snap = m.snapshot();
        snap.gauge(
            "odd name!",
            &[("bad-label", "a\"b"), ("shard", "spoof")],
            1.5,
        );
        let text = render_prometheus(&snap, std::slice::from_ref(&snap));
        // Every sample stays on one line, with the label value quoted and escaped.
        let line = text
            .lines()
            .find(|l| l.starts_with("percore_requests_total{"))
            .expect("sample");
        assert_eq!(
            line,
            "percore_requests_total{route=\"/q\\\"uote\\\\back\\nline/{x}\",method=\"GET\",status=\"2xx\"} 1"
        );
        assert!(text.contains("percore_odd_name_{shard=\"0\",bad_label=\"a\\\"b\"} 1.5\n"));
        assert_eq!(text.matches("\"spoof\"").count(), 0);
    }

    #[test]
    fn number_formatting() {
        assert_eq!(seconds(50), "0.00005");
        assert_eq!(seconds(1_000_000), "1");
        assert_eq!(seconds(2_500_000), "2.5");
        assert_eq!(seconds(0), "0");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(3.0), "3");
        assert_eq!(metric_name("percore_x"), "percore_x");
        assert_eq!(label_name("9a"), "_9a");
    }
}
