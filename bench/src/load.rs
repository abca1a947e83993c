//! The load engine: one pinned worker per CPU on the percore runtime, each owning its share of the
//! connections; open-loop (constant rate, latency from each request's *intended* send time) and
//! closed-loop schedules; per-worker HDR histograms and counters merged at the end.
//!
//! # Schedule and what is measured
//! The run has three phases from a common start `t0`: warm-up `[t0, ws)`, the measured window
//! `[ws, we)` (`we = ws + duration`) and a drain `[we, we + timeout)`. A request belongs to the
//! measurement when its intended send time lies in the window; those requests are sent even
//! during the drain if the connection was behind, and every one of them ends as exactly one of:
//! a recorded response, an error of some kind, or *unsent* (still queued when the drain ended).
//! So `intended = requests + errors + unsent`, and nothing is lost at the end of a run.
//!
//! Open loop at total rate R over C connections: the m-th request of the whole run is due at
//! `t0 + m/R`, and connection j sends requests m = j, j + C, j + 2C, ... (each connection runs at
//! R/C with a phase offset of j/R, so the requests of all connections interleave evenly). A
//! connection with `--pipeline` requests in flight cannot send: the next due request waits, and
//! its latency (response complete − intended send time) includes that wait (wrk2's rule; the
//! schedule does not slip when the server stalls). The service time (complete − actual send) goes
//! into a second histogram. Closed loop: a connection keeps `--pipeline` requests in flight and
//! sends the next as soon as a response completes; intended = actual send time.
//!
//! # Per request, in steady state
//! A connection task copies a pre-encoded request into the connection's write buffer (a pooled
//! buffer), flushes, and parses responses straight out of the kernel-filled receive buffers; its
//! outstanding requests live in a ring reserved for `--pipeline` entries; histograms are
//! preallocated. The task sleeps on one reusable glommio timer (re-armed, not re-created) until
//! its next due time, and only when it has nothing else to wait for. No heap allocation per
//! request on this path (glommio's timer wheel is a `BTreeMap` that may allocate a node now and
//! then when a sleeping connection re-arms).

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, VecDeque},
    future::{poll_fn, Future},
    net::SocketAddr,
    pin::{pin, Pin},
    rc::Rc,
    sync::{mpsc, Arc, Condvar, Mutex},
    task::Poll,
    time::{Duration, Instant, SystemTime},
};

use glommio::timer::Timer;
use hdrhistogram::Histogram;
use percore_runtime::{
    cpus::{allowed_cpus, CpuSelection},
    Conn, Engine, EngineConfig, ListenerTable, RecvBuf, RuntimeBuilder, Shard,
};

use crate::{
    error::Error,
    hgrm::{self, US_PER_MS},
    hlog::Interval,
    http::{encode_request, ResponseParser},
    mix::MixPicker,
    summary::{ErrorCounts, RunResults},
    values::Header,
};

/// Lowest value the histograms track: 1 µs.
pub const HIST_LOW_US: u64 = 1;
/// Highest value the histograms track: 1 hour in µs (larger values are clamped to it).
pub const HIST_HIGH_US: u64 = 3_600_000_000;
/// Significant digits of the histograms.
pub const HIST_SIGFIG: u8 = 3;
/// Length of one interval of the `.hlog` and of the live line.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Pause before another connect attempt after one failed.
pub const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// How long workers wait for each other to be ready before the run is abandoned.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Margin between the moment every worker is ready and the first due request.
const START_MARGIN: Duration = Duration::from_millis(5);
/// How long an idle generator shard watches its ring before parking: bridges the gaps between
/// responses under load without the sleep/wake cost of parking.
const GENERATOR_BUSY_POLL: Duration = Duration::from_micros(20);

/// A new empty histogram with the run's bounds (1 µs .. 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// One kind of request the generator sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    /// Method token (`GET`, `POST`, ...).
    pub method: String,
    /// Request target, path plus query, starting with `/`.
    pub path: String,
    /// Body bytes (empty for none).
    pub body: Vec<u8>,
    /// Relative weight in the mix (> 0).
    pub weight: u32,
}

impl RequestSpec {
    /// A GET of `path` with weight 1.
    pub fn get(path: impl Into<String>) -> Self {
        RequestSpec {
            method: "GET".into(),
            path: path.into(),
            body: Vec::new(),
            weight: 1,
        }
    }
}

/// Everything a load run needs. Build it with [`LoadConfig::new`] and adjust the fields.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// `Host` header value (unless `headers` has one).
    pub host: String,
    /// Request kinds, picked by weight (at least one).
    pub requests: Vec<RequestSpec>,
    /// Extra headers on every request.
    pub headers: Vec<Header>,
    /// Total requests per second (open loop), or `None` for a closed loop.
    pub rate: Option<u64>,
    /// Total connections, spread over the workers.
    pub connections: usize,
    /// Length of the measured window.
    pub duration: Duration,
    /// Warm-up before the measured window (excluded from every count and histogram).
    pub warmup: Duration,
    /// CPUs for the workers (`None`: the process's affinity mask).
    pub cpus: Option<Vec<usize>>,
    /// Number of workers (`None`: one per CPU, at most one per connection).
    pub threads: Option<usize>,
    /// Requests in flight per connection (1 = no pipelining).
    pub pipeline: usize,
    /// Response timeout, counted from the actual send; also the connect timeout and the drain.
    pub timeout: Duration,
}

impl LoadConfig {
    /// Closed loop, GET `path`, 64 connections, 10 s measured after a 2 s warm-up, every CPU of
    /// the affinity mask, no pipelining, 2 s timeout.
    pub fn new(addr: SocketAddr, path: impl Into<String>) -> Self {
        LoadConfig {
            addr,
            host: addr.to_string(),
            requests: vec![RequestSpec::get(path)],
            headers: Vec::new(),
            rate: None,
            connections: 64,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            cpus: None,
            threads: None,
            pipeline: 1,
            timeout: Duration::from_secs(2),
        }
    }

    /// The worker CPUs this configuration resolves to.
    pub fn worker_cpus(&self) -> Result<Vec<usize>, Error> {
        let op = "choose worker CPUs";
        let cpus = match &self.cpus {
            Some(list) => CpuSelection::List(list.clone())
                .resolve(&allowed_cpus())
                .map_err(|e| Error::invalid(op, e.to_string()))?,
            None => allowed_cpus(),
        };
        let threads = match self.threads {
            Some(t) if t > cpus.len() => {
                return Err(Error::invalid(
                    op,
                    format!(
                        "--threads {t} is more than the {} CPU(s) available; give --cpus or fewer threads",
                        cpus.len()
                    ),
                ))
            }
            Some(t) => t,
            None => cpus.len().min(self.connections.max(1)),
        };
        Ok(cpus[..threads.max(1)].to_vec())
    }

    fn validate(&self) -> Result<(), Error> {
        let op = "check load configuration";
        let bad = |why: &str| Err(Error::invalid(op, why));
        if self.requests.is_empty() || self.requests.iter().all(|r| r.weight == 0) {
            return bad("no request to send");
        }
        if self.connections == 0 {
            return bad("connections must be at least 1");
        }
        if self.rate == Some(0) {
            return bad("rate must be > 0 (None for a closed loop)");
        }
        if self.pipeline == 0 || self.pipeline > crate::cli::MAX_PIPELINE {
            return bad("pipeline depth out of range");
        }
        if self.duration.is_zero() || self.timeout.is_zero() {
            return bad("duration and timeout must be > 0");
        }
        Ok(())
    }
}

/// What the live line shows, once per interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    /// Seconds into the measured window at the end of this interval.
    pub elapsed_s: f64,
    /// Responses recorded in this interval, per second.
    pub rps: f64,
    /// Responses recorded so far.
    pub requests: u64,
    /// Errors so far.
    pub errors: u64,
    /// Corrected p50 so far, ms.
    pub p50_ms: f64,
    /// Corrected p99 so far, ms.
    pub p99_ms: f64,
}

impl Progress {
    /// The one-line rendering used on a terminal.
    pub fn line(&self) -> String {
        format!(
            "[{:>5.0}s] {:>10.0} req/s  {:>10} requests  {:>6} errors  p50 {:>9.3}ms  p99 {:>9.3}ms",
            self.elapsed_s, self.rps, self.requests, self.errors, self.p50_ms, self.p99_ms
        )
    }
}

/// Runs a load test and returns what it measured.
pub fn run_load(cfg: LoadConfig) -> Result<RunResults, Error> {
    run_load_with(cfg, &mut |_| {})
}

/// Like [`run_load`], calling `progress` once per second of the measured window (on the calling
/// thread) with the numbers so far.
pub fn run_load_with(
    cfg: LoadConfig,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunResults, Error> {
    cfg.validate()?;
    let cpus = cfg.worker_cpus()?;
    let workers = cpus.len();
    if cfg.connections < workers {
        return Err(Error::invalid(
            "check load configuration",
            format!(
                "connections ({}) must be >= workers ({workers})",
                cfg.connections
            ),
        ));
    }
    let plan = Arc::new(Plan::new(&cfg, workers)?);
    let gate = Arc::new(Gate::default());
    let (tx, rx) = mpsc::channel::<Msg>();
    let tx = Mutex::new(tx);
    let builder = RuntimeBuilder::default()
        .cpus(CpuSelection::List(cpus.clone()))
        .engine(EngineConfig {
            // Requests go out on glommio timers, which fire only in glommio's reactor passes: a
            // driver napping in its ring would send them late (measured: open-loop p50 1.5 ms
            // instead of 0.15 ms at 50k/s). Watch the ring for a while, then park via glommio.
            nap: Duration::ZERO,
            busy_poll: GENERATOR_BUSY_POLL,
            ..EngineConfig::default()
        })
        .stall_threshold(None)
        .exit_on_panic(false);
    let spawn_plan = plan.clone();
    let spawn_gate = gate.clone();
    let rt = builder.spawn::<(), _, _>(
        Arc::new(ListenerTable::default()),
        move |shard: Shard<()>| {
            let plan = spawn_plan.clone();
            let gate = spawn_gate.clone();
            let tx = tx.lock().expect("sender lock").clone();
            worker_main(shard, plan, gate, tx)
        },
    );
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            gate.open(None);
            return Err(Error::run("start workers", e));
        }
    };

    // Wait until every worker has its connections, then give them all the same start.
    let mut ready = 0;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut early: Vec<Msg> = Vec::new();
    while ready < workers {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Msg::Ready) => ready += 1,
            Ok(other) => early.push(other),
            Err(_) => {
                gate.open(None);
                let _ = rt.wait();
                return Err(Error::invalid(
                    "start workers",
                    "a worker did not get ready within 60 s",
                ));
            }
        }
    }
    let t0 = Instant::now() + START_MARGIN;
    let ws = t0 + cfg.warmup;
    let start_time = SystemTime::now() + (ws - Instant::now());
    gate.open(Some(t0));

    let mut collector = Collector::new(workers);
    for m in early {
        collector.take(m, &mut *progress);
    }
    while let Ok(m) = rx.recv() {
        collector.take(m, &mut *progress);
        if collector.done == workers {
            break;
        }
    }
    rt.wait().map_err(|e| Error::run("run workers", e))?;
    if collector.done < workers {
        return Err(Error::invalid(
            "run workers",
            "a worker ended without reporting",
        ));
    }
    collector.finish(&cfg, workers, start_time)
}

/// The start gate: workers block on it until the main thread says when to start (or to give up).
#[derive(Default)]
struct Gate {
    state: Mutex<Option<Option<Instant>>>,
    cond: Condvar,
}

impl Gate {
    fn open(&self, t0: Option<Instant>) {
        *self.state.lock().expect("gate lock") = Some(t0);
        self.cond.notify_all();
    }

    /// Blocks the worker thread (nothing else runs on it yet) until the gate opens.
    fn wait(&self) -> Option<Instant> {
        let guard = self.state.lock().expect("gate lock");
        let (guard, _) = self
            .cond
            .wait_timeout_while(guard, START_TIMEOUT, |s| s.is_none())
            .expect("gate lock");
        guard.flatten()
    }
}

/// Read-only data shared by all workers.
struct Plan {
    addr: SocketAddr,
    /// Encoded requests and whether each is a HEAD.
    requests: Vec<(Vec<u8>, bool)>,
    weights: Vec<u32>,
    rate: Option<u64>,
    connections: usize,
    /// First global connection index of each worker, and how many it owns.
    split: Vec<(usize, usize)>,
    warmup: Duration,
    duration: Duration,
    pipeline: usize,
    timeout: Duration,
}

impl Plan {
    fn new(cfg: &LoadConfig, workers: usize) -> Result<Plan, Error> {
        let requests = cfg
            .requests
            .iter()
            .map(|r| {
                (
                    encode_request(&r.method, &r.path, &cfg.host, &cfg.headers, &r.body),
                    r.method.eq_ignore_ascii_case("HEAD"),
                )
            })
            .collect();
        let mut split = Vec::with_capacity(workers);
        let mut first = 0;
        for w in 0..workers {
            let n = cfg.connections / workers + usize::from(w < cfg.connections % workers);
            split.push((first, n));
            first += n;
        }
        Ok(Plan {
            addr: cfg.addr,
            requests,
            weights: cfg.requests.iter().map(|r| r.weight).collect(),
            rate: cfg.rate,
            connections: cfg.connections,
            split,
            warmup: cfg.warmup,
            duration: cfg.duration,
            pipeline: cfg.pipeline,
            timeout: cfg.timeout,
        })
    }
}

/// What workers tell the main thread.
enum Msg {
    /// Connections are set up; waiting at the gate.
    Ready,
    /// One interval's corrected histogram of one worker.
    Interval {
        worker: usize,
        index: u64,
        length: Duration,
        hist: Box<Histogram<u64>>,
        errors: u64,
    },
    /// The worker finished.
    Done(Box<WorkerResult>),
}

/// A worker's totals.
struct WorkerResult {
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    send_lag: Histogram<u64>,
    c: Counters,
    status: Vec<u64>,
    cpu_ns: u64,
    wall: Duration,
}

/// Plain counters of one worker.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    requests: u64,
    intended: u64,
    unsent: u64,
    errors: ErrorCounts,
    reconnects: u64,
    bytes: u64,
    warmup_requests: u64,
    /// When the last measured response arrived, after the window's start.
    last_done: Duration,
}

/// Error kinds a request can end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    Connect,
    Timeout,
    Reset,
    Parse,
}

/// The phase boundaries of the run.
#[derive(Clone, Copy, Debug)]
struct Timing {
    t0: Instant,
    ws: Instant,
    we: Instant,
    hard_end: Instant,
}

/// Per-worker mutable state shared by its connection tasks.
struct Stats {
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    /// Open loop: how late each measured request went out after it was due and its connection
    /// had room for it (µs), i.e. the generator's own lag.
    send_lag: Histogram<u64>,
    interval: Histogram<u64>,
    interval_index: u64,
    next_boundary: Instant,
    c: Counters,
    status: Vec<u64>,
    worker: usize,
    tx: mpsc::Sender<Msg>,
    /// Start of the measured window.
    ws: Instant,
}

impl Stats {
    fn fail(&mut self, kind: Fail, n: u64) {
        let e = &mut self.c.errors;
        match kind {
            Fail::Connect => e.connect += n,
            Fail::Timeout => e.timeout += n,
            Fail::Reset => e.reset += n,
            Fail::Parse => e.parse += n,
        }
    }

    /// Sends every interval that ended by `now`.
    fn rotate(&mut self, now: Instant) {
        while now >= self.next_boundary {
            self.send_interval(INTERVAL);
            self.next_boundary += INTERVAL;
        }
    }

    fn send_interval(&mut self, length: Duration) {
        let hist = Box::new(self.interval.clone());
        self.interval.reset();
        let errors = self.c.errors.total();
        let _ = self.tx.send(Msg::Interval {
            worker: self.worker,
            index: self.interval_index,
            length,
            hist,
            errors,
        });
        self.interval_index += 1;
    }

    fn record(&mut self, now: Instant, intended: Instant, sent: Instant, status: u16) {
        if now >= self.next_boundary {
            self.rotate(now);
        }
        let corrected = micros(now.saturating_duration_since(intended));
        let service = micros(now.saturating_duration_since(sent));
        self.corrected.saturating_record(corrected);
        self.interval.saturating_record(corrected);
        self.uncorrected.saturating_record(service);
        self.c.requests += 1;
        self.c.last_done = self.c.last_done.max(now.saturating_duration_since(self.ws));
        if let Some(s) = self.status.get_mut(usize::from(status)) {
            *s += 1;
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How many of the requests `m, m + step, m + 2·step, …` of a schedule of `rate` requests/s fall
/// due in `[from, to)` after its start (request `m` is due at `m / rate` s, in whole
/// nanoseconds, as `due_time` has it). Counted, not stepped through: at absurd rates a stepped
/// count took minutes.
fn due_within(m: u64, step: u64, rate: u64, from: Duration, to: Duration) -> u64 {
    // The first request due at or after `d`: floor(k·1e9 / rate) >= d  <=>  k >= d·rate / 1e9.
    let first_at = |d: Duration| -> u128 {
        let n = d.as_nanos() * u128::from(rate);
        n.div_ceil(1_000_000_000)
    };
    let (m, step) = (u128::from(m), u128::from(step.max(1)));
    let lo = first_at(from).max(m);
    let hi = first_at(to);
    if hi <= lo {
        return 0;
    }
    // Members of m + k·step in [lo, hi).
    let count = (hi - m).div_ceil(step) - (lo - m).div_ceil(step);
    u64::try_from(count).unwrap_or(u64::MAX)
}

/// A worker: shared by its connection tasks.
struct Worker {
    plan: Arc<Plan>,
    engine: Engine,
    timing: Timing,
    stats: RefCell<Stats>,
}

/// Connects with the run's timeout.
async fn connect(engine: &Engine, addr: SocketAddr, timeout: Duration) -> Option<Conn> {
    futures_lite::future::or(async { engine.connect(addr).await.ok() }, async {
        glommio::timer::sleep(timeout).await;
        None
    })
    .await
}

async fn worker_main(shard: Shard<()>, plan: Arc<Plan>, gate: Arc<Gate>, tx: mpsc::Sender<Msg>) {
    let engine = shard.engine.clone();
    let (first, count) = plan.split[shard.id];
    // Connect everything before the start, concurrently.
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let engine = engine.clone();
            let (addr, timeout) = (plan.addr, plan.timeout);
            glommio::spawn_local(async move { connect(&engine, addr, timeout).await })
        })
        .collect();
    let mut conns = Vec::with_capacity(count);
    for t in tasks {
        conns.push(t.await);
    }
    let _ = tx.send(Msg::Ready);
    let Some(t0) = gate.wait() else {
        return;
    };
    let ws = t0 + plan.warmup;
    let we = ws + plan.duration;
    let timing = Timing {
        t0,
        ws,
        we,
        hard_end: we + plan.timeout,
    };
    let cpu0 = percore_runtime::sys::thread_cpu();
    let worker = Rc::new(Worker {
        engine,
        timing,
        stats: RefCell::new(Stats {
            corrected: new_histogram(),
            uncorrected: new_histogram(),
            send_lag: new_histogram(),
            interval: new_histogram(),
            interval_index: 0,
            next_boundary: ws + INTERVAL,
            c: Counters::default(),
            status: vec![0; 1000],
            worker: shard.id,
            tx,
            ws,
        }),
        plan: plan.clone(),
    });
    let finished = Rc::new(Cell::new(false));
    {
        let (w, finished) = (worker.clone(), finished.clone());
        glommio::spawn_local(async move {
            while !finished.get() {
                let next = w.stats.borrow().next_boundary;
                let now = Instant::now();
                glommio::timer::sleep(
                    next.saturating_duration_since(now) + Duration::from_millis(1),
                )
                .await;
                w.stats.borrow_mut().rotate(Instant::now());
            }
        })
        .detach();
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let task = ConnTask::new(worker.clone(), first + i);
            glommio::spawn_local(task.run(conn))
        })
        .collect();
    for t in tasks {
        t.await;
    }
    finished.set(true);
    let end = Instant::now();
    let cpu_ns = percore_runtime::sys::thread_cpu()
        .saturating_sub(cpu0)
        .as_nanos() as u64;
    let mut st = worker.stats.borrow_mut();
    st.rotate(end);
    let started = ws + INTERVAL * (st.interval_index as u32);
    st.send_interval(end.saturating_duration_since(started));
    let result = WorkerResult {
        corrected: st.corrected.clone(),
        uncorrected: st.uncorrected.clone(),
        send_lag: st.send_lag.clone(),
        c: st.c,
        status: std::mem::take(&mut st.status),
        cpu_ns,
        wall: end.saturating_duration_since(t0),
    };
    let _ = st.tx.send(Msg::Done(Box::new(result)));
}

/// One request in flight.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    intended: Instant,
    sent: Instant,
    measured: bool,
    head: bool,
}

/// What woke a connection task.
enum Event {
    Recv(percore_runtime::Result<Option<RecvBuf>>),
    Due,
}

/// One connection's task state.
struct ConnTask {
    w: Rc<Worker>,
    /// Schedule index of the next request (open loop): global request number m.
    m: u64,
    next_intended: Instant,
    picker: Option<MixPicker>,
    out: VecDeque<Outstanding>,
    parser: ResponseParser,
    deadline: Option<Instant>,
    timer: Option<Timer>,
    timer_at: Option<Instant>,
    ever_connected: bool,
    /// When the connection last got room for another request (a response completed while it had
    /// `--pipeline` requests in flight, or it connected): a request due earlier waited for the
    /// server, not for the generator.
    free_since: Instant,
}

impl ConnTask {
    fn new(w: Rc<Worker>, index: usize) -> Self {
        let picker = (w.plan.requests.len() > 1).then(|| {
            MixPicker::new(&w.plan.weights)
                .expect("weights checked")
                .with_offset(index.wrapping_mul(7919))
        });
        let m = index as u64;
        let pipeline = w.plan.pipeline;
        let mut t = ConnTask {
            next_intended: w.timing.t0,
            free_since: w.timing.t0,
            w,
            m,
            picker,
            out: VecDeque::with_capacity(pipeline),
            parser: ResponseParser::new(),
            deadline: None,
            timer: None,
            timer_at: None,
            ever_connected: false,
        };
        t.next_intended = t.due_time(m);
        t
    }

    /// Intended send time of global request `m` (open loop).
    fn due_time(&self, m: u64) -> Instant {
        match self.w.plan.rate {
            Some(rate) => {
                let ns = u128::from(m) * 1_000_000_000 / u128::from(rate);
                self.w.timing.t0 + Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
            }
            None => self.w.timing.t0,
        }
    }

    fn advance(&mut self) {
        self.m += self.w.plan.connections as u64;
        self.next_intended = self.due_time(self.m);
    }

    fn measured(&self, intended: Instant) -> bool {
        intended >= self.w.timing.ws && intended < self.w.timing.we
    }

    fn open_loop(&self) -> bool {
        self.w.plan.rate.is_some()
    }

    /// Whether nothing more will be sent.
    fn done_issuing(&self, now: Instant) -> bool {
        if now >= self.w.timing.hard_end {
            return true;
        }
        if self.open_loop() {
            self.next_intended >= self.w.timing.we
        } else {
            now >= self.w.timing.we
        }
    }

    async fn run(mut self, mut conn: Option<Conn>) {
        if conn.is_some() {
            self.ever_connected = true;
        }
        // Wait for the start (the gate gave every worker the same t0).
        let start = self.w.timing.t0;
        let now = Instant::now();
        if start > now {
            glommio::timer::sleep(start - now).await;
        }
        loop {
            let now = Instant::now();
            if self.done_issuing(now) && (self.out.is_empty() || now >= self.w.timing.hard_end) {
                break;
            }
            let Some(c) = conn.as_mut() else {
                conn = self.reconnect(now).await;
                continue;
            };
            if !self.issue(c, now) {
                conn = None;
                continue;
            }
            if self.out.is_empty() && self.done_issuing(now) {
                break;
            }
            let want = self
                .out
                .front()
                .map(|r| (r.sent + self.w.plan.timeout).min(self.w.timing.hard_end));
            if want != self.deadline {
                c.set_deadline(want);
                self.deadline = want;
            }
            let wake = (self.open_loop()
                && self.out.len() < self.w.plan.pipeline
                && self.next_intended < self.w.timing.we)
                .then_some(self.next_intended);
            if wake != self.timer_at {
                if let Some(at) = wake {
                    let d = at.saturating_duration_since(now);
                    match &mut self.timer {
                        Some(t) => t.reset(d),
                        None => self.timer = Some(Timer::new(d)),
                    }
                }
                self.timer_at = wake;
            }
            let timer = if wake.is_some() {
                self.timer.as_mut()
            } else {
                None
            };
            let ev = wait(c, timer).await;
            let keep = match ev {
                Event::Due => true,
                Event::Recv(Ok(Some(buf))) => self.on_data(buf),
                Event::Recv(Ok(None)) => {
                    if let Some(r) = self.parser.on_eof() {
                        self.complete(r.status, Instant::now());
                    }
                    self.fail_outstanding(Fail::Reset);
                    false
                }
                Event::Recv(Err(e)) => {
                    let kind = match e {
                        percore_runtime::Error::TimedOut => Fail::Timeout,
                        _ => Fail::Reset,
                    };
                    self.fail_outstanding(kind);
                    false
                }
            };
            if !keep {
                conn = None;
            }
        }
        drop(conn);
        // Whatever is still in flight at the end of the drain timed out; whatever was due in the
        // window and never went out is unsent.
        self.fail_outstanding(Fail::Timeout);
        if let Some(rate) = self.w.plan.rate {
            let t = &self.w.timing;
            let unsent = due_within(
                self.m,
                self.w.plan.connections as u64,
                rate,
                t.ws.saturating_duration_since(t.t0),
                t.we.saturating_duration_since(t.t0),
            );
            let mut st = self.w.stats.borrow_mut();
            st.c.unsent += unsent;
            st.c.intended += unsent;
        }
    }

    /// Writes every request that is due and fits; false if the connection failed.
    fn issue(&mut self, c: &mut Conn, now: Instant) -> bool {
        let w = Rc::clone(&self.w);
        let plan = &*w.plan;
        let t = w.timing;
        let mut wrote = false;
        let mut measured = 0;
        while self.out.len() < plan.pipeline && now < t.hard_end {
            let intended = if self.open_loop() {
                if self.next_intended > now || self.next_intended >= t.we {
                    break;
                }
                self.next_intended
            } else {
                if now >= t.we {
                    break;
                }
                now
            };
            let kind = match &mut self.picker {
                Some(p) => p.next(),
                None => 0,
            };
            let (bytes, head) = &plan.requests[kind];
            c.write_buf().extend_from_slice(bytes);
            let m = self.measured(intended);
            measured += u64::from(m);
            if m && self.open_loop() {
                let ready = intended.max(self.free_since);
                let lag = micros(now.saturating_duration_since(ready));
                self.w.stats.borrow_mut().send_lag.saturating_record(lag);
            }
            self.out.push_back(Outstanding {
                intended,
                sent: now,
                measured: m,
                head: *head,
            });
            if self.open_loop() {
                self.advance();
            }
            wrote = true;
        }
        if measured > 0 {
            self.w.stats.borrow_mut().c.intended += measured;
        }
        if wrote && c.flush().is_err() {
            self.fail_outstanding(Fail::Reset);
            return false;
        }
        true
    }

    /// Parses received bytes; false if the connection must be dropped.
    fn on_data(&mut self, buf: RecvBuf) -> bool {
        let now = Instant::now();
        if now >= self.w.timing.ws {
            self.w.stats.borrow_mut().c.bytes += buf.len() as u64;
        }
        let mut data: &[u8] = &buf;
        let mut keep = true;
        while !data.is_empty() {
            let Some(head) = self.out.front().map(|r| r.head) else {
                // Bytes nobody asked for: the connection is out of step.
                keep = false;
                break;
            };
            match self.parser.feed(data, head) {
                Ok((n, resp)) => {
                    data = &data[n..];
                    if let Some(r) = resp {
                        self.complete(r.status, now);
                        if r.close {
                            keep = false;
                            break;
                        }
                    }
                }
                Err(_) => {
                    self.fail_outstanding(Fail::Parse);
                    return false;
                }
            }
        }
        drop(buf);
        if !keep {
            self.fail_outstanding(Fail::Reset);
        }
        keep
    }

    fn complete(&mut self, status: u16, now: Instant) {
        let Some(r) = self.out.pop_front() else {
            return;
        };
        if self.out.len() + 1 == self.w.plan.pipeline {
            // It was full: requests due until now waited for this response.
            self.free_since = now;
        }
        let mut st = self.w.stats.borrow_mut();
        if r.measured {
            st.record(now, r.intended, r.sent, status);
        } else if r.intended < self.w.timing.ws {
            st.c.warmup_requests += 1;
        }
    }

    /// Ends every outstanding request with `kind` (counted when measured) and resets the parser.
    fn fail_outstanding(&mut self, kind: Fail) {
        let n = self.out.drain(..).filter(|r| r.measured).count() as u64;
        if n > 0 {
            self.w.stats.borrow_mut().fail(kind, n);
        }
        self.parser.reset();
        self.deadline = None;
    }

    /// Connects again; on failure the requests due meanwhile fail as connect errors.
    async fn reconnect(&mut self, now: Instant) -> Option<Conn> {
        let plan = self.w.plan.clone();
        let left = self.w.timing.hard_end.saturating_duration_since(now);
        if let Some(c) = connect(&self.w.engine, plan.addr, plan.timeout.min(left)).await {
            if self.ever_connected {
                self.w.stats.borrow_mut().c.reconnects += 1;
            }
            self.ever_connected = true;
            self.deadline = None;
            self.timer_at = None;
            // Requests due while the connection was down waited for the server.
            self.free_since = Instant::now();
            return Some(c);
        }
        let now = Instant::now();
        let t = self.w.timing;
        let mut failed = 0;
        if let Some(rate) = self.w.plan.rate {
            // Every request due until now (within the window's end) is skipped; those in the
            // window failed.
            let step = self.w.plan.connections as u64;
            let to = (now + Duration::from_nanos(1))
                .min(t.we)
                .saturating_duration_since(t.t0);
            let skipped = due_within(self.m, step, rate, Duration::ZERO, to);
            failed = due_within(self.m, step, rate, t.ws.saturating_duration_since(t.t0), to);
            if skipped > 0 {
                self.m += skipped * step;
                self.next_intended = self.due_time(self.m);
            }
        } else if now >= t.ws && now < t.we {
            failed = 1;
        }
        if failed > 0 {
            let mut st = self.w.stats.borrow_mut();
            st.c.intended += failed;
            st.fail(Fail::Connect, failed);
        }
        if now < t.hard_end {
            glommio::timer::sleep(RECONNECT_BACKOFF.min(t.hard_end - now)).await;
        }
        None
    }
}

/// Waits for received bytes, or for the timer when one is given.
async fn wait(c: &mut Conn, mut timer: Option<&mut Timer>) -> Event {
    poll_fn(|cx| {
        if let Poll::Ready(r) = pin!(c.recv()).poll(cx) {
            return Poll::Ready(Event::Recv(r));
        }
        if let Some(t) = timer.as_mut() {
            if Pin::new(&mut **t).poll(cx).is_ready() {
                return Poll::Ready(Event::Due);
            }
        }
        Poll::Pending
    })
    .await
}

/// Gathers what the workers send: merges interval histograms per index (for the live line and
/// the `.hlog`) and the workers' totals.
struct Collector {
    workers: usize,
    done: usize,
    /// Interval index -> (workers reported, merged histogram, longest length).
    pending: BTreeMap<u64, (usize, Histogram<u64>, Duration)>,
    intervals: Vec<(u64, Histogram<u64>, Duration)>,
    so_far: Histogram<u64>,
    /// Latest cumulative error count of each worker.
    errors: Vec<u64>,
    next_report: u64,
    results: Vec<WorkerResult>,
}

impl Collector {
    fn new(workers: usize) -> Self {
        Collector {
            workers,
            done: 0,
            pending: BTreeMap::new(),
            intervals: Vec::new(),
            so_far: new_histogram(),
            errors: vec![0; workers],
            next_report: 0,
            results: Vec::new(),
        }
    }

    fn take(&mut self, m: Msg, progress: &mut dyn FnMut(&Progress)) {
        match m {
            Msg::Ready => {}
            Msg::Interval {
                worker,
                index,
                length,
                hist,
                errors,
            } => {
                if let Some(e) = self.errors.get_mut(worker) {
                    *e = errors;
                }
                let e = self
                    .pending
                    .entry(index)
                    .or_insert_with(|| (0, new_histogram(), Duration::ZERO));
                e.0 += 1;
                e.1.add(&*hist).expect("same bounds");
                e.2 = e.2.max(length);
                if e.0 == self.workers {
                    self.emit_ready(progress);
                }
            }
            Msg::Done(r) => {
                self.done += 1;
                self.results.push(*r);
            }
        }
    }

    /// Reports every interval whose workers have all reported, in order.
    fn emit_ready(&mut self, progress: &mut dyn FnMut(&Progress)) {
        while let Some(entry) = self.pending.first_key_value() {
            let (&index, (n, _, _)) = entry;
            if *n < self.workers || index != self.next_report {
                break;
            }
            let (_, h, len) = self.pending.remove(&index).expect("present");
            self.so_far.add(&h).expect("same bounds");
            let p = Progress {
                elapsed_s: index as f64 + len.as_secs_f64(),
                rps: h.len() as f64 / len.as_secs_f64().max(1e-9),
                requests: self.so_far.len(),
                errors: self.errors.iter().sum(),
                p50_ms: hgrm::value_at_percentile(&self.so_far, 50.0) as f64 / US_PER_MS,
                p99_ms: hgrm::value_at_percentile(&self.so_far, 99.0) as f64 / US_PER_MS,
            };
            // A short last interval would show a meaningless rate.
            if len >= INTERVAL / 2 {
                progress(&p);
            }
            self.intervals.push((index, h, len));
            self.next_report += 1;
        }
    }

    fn finish(
        mut self,
        cfg: &LoadConfig,
        workers: usize,
        start_time: SystemTime,
    ) -> Result<RunResults, Error> {
        // Partial last intervals: merge whatever arrived, in order.
        let rest = std::mem::take(&mut self.pending);
        for (index, (_, h, len)) in rest {
            self.intervals.push((index, h, len));
        }
        let mut corrected = new_histogram();
        let mut uncorrected = new_histogram();
        let mut send_lag = new_histogram();
        let mut c = Counters::default();
        let mut status = BTreeMap::new();
        let mut cpu_ns = 0u64;
        let mut wall = 0f64;
        for r in &self.results {
            corrected
                .add(&r.corrected)
                .map_err(|e| Error::histogram("merge worker histograms", format!("{e:?}")))?;
            uncorrected
                .add(&r.uncorrected)
                .map_err(|e| Error::histogram("merge worker histograms", format!("{e:?}")))?;
            send_lag
                .add(&r.send_lag)
                .map_err(|e| Error::histogram("merge worker histograms", format!("{e:?}")))?;
            c.requests += r.c.requests;
            c.intended += r.c.intended;
            c.unsent += r.c.unsent;
            c.reconnects += r.c.reconnects;
            c.bytes += r.c.bytes;
            c.warmup_requests += r.c.warmup_requests;
            c.last_done = c.last_done.max(r.c.last_done);
            let e = &mut c.errors;
            e.connect += r.c.errors.connect;
            e.timeout += r.c.errors.timeout;
            e.reset += r.c.errors.reset;
            e.parse += r.c.errors.parse;
            e.other += r.c.errors.other;
            for (code, &n) in r.status.iter().enumerate() {
                if n > 0 {
                    *status.entry(code as u16).or_insert(0) += n;
                }
            }
            cpu_ns += r.cpu_ns;
            wall += r.wall.as_secs_f64();
        }
        let intervals = self
            .intervals
            .into_iter()
            .map(|(index, histogram, length)| Interval {
                tag: None,
                start: INTERVAL * (index as u32),
                length,
                histogram,
            })
            .collect();
        Ok(RunResults {
            corrected,
            uncorrected,
            send_lag,
            requests: c.requests,
            // Until the last of the window's responses: a server that answers the window's
            // requests late shows as a lower rate, not as the rate they were sent at.
            duration: cfg.duration.max(c.last_done),
            target_rps: cfg.rate.map(|r| r as f64),
            status,
            errors: c.errors,
            generator_cpu: if wall > 0.0 {
                (cpu_ns as f64 / 1e9 / wall).min(1.0)
            } else {
                0.0
            },
            workers,
            connections: cfg.connections,
            bytes_read: Some(c.bytes),
            intended: c.intended,
            unsent: c.unsent,
            reconnects: c.reconnects,
            warmup: cfg.warmup,
            warmup_requests: c.warmup_requests,
            start_time,
            intervals,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::due_within;
    use std::time::Duration;

    /// The counted form agrees with stepping through the schedule one request at a time.
    #[test]
    fn due_within_counts_what_stepping_counts() {
        let due = |k: u64, rate: u64| Duration::from_nanos(k * 1_000_000_000 / rate);
        for rate in [1, 3, 7, 1000, 999_983, 10_000_000] {
            for step in [1, 2, 5, 64] {
                for m in [0, 1, 4, 63, 1000] {
                    for (from_ms, to_ms) in [(0, 0), (0, 10), (3, 10), (10, 3), (1, 2000)] {
                        let (from, to) =
                            (Duration::from_millis(from_ms), Duration::from_millis(to_ms));
                        let mut want = 0;
                        let mut k = m;
                        while due(k, rate) < to {
                            want += u64::from(due(k, rate) >= from);
                            k += step;
                        }
                        assert_eq!(
                            due_within(m, step, rate, from, to),
                            want,
                            "rate {rate} step {step} m {m} [{from_ms}, {to_ms}) ms"
                        );
                    }
                }
            }
        }
        // An absurd rate is counted at once.
        let n = due_within(
            0,
            2,
            10_000_000_000,
            Duration::ZERO,
            Duration::from_secs(10),
        );
        assert_eq!(n, 50_000_000_000);
    }
}
