//! The control plane: configuration reloads and rollbacks, and the admin API.
//!
//! It runs on threads that are not shards (the signal thread, the config-file watcher, the admin
//! listener) and reaches the shards only through their control inboxes. A reload parses and
//! validates the file here, sends the new config to every shard and waits for each to swap it in
//! (between requests: a request sees the old or the new config, never a mix). Applied configs are
//! numbered snapshots; the last [`KEEP_SNAPSHOTS`] can be rolled back to. A lock guards this state
//! — it is the control plane, never touched by a request.
//!
//! The admin API listens on its own address (default 127.0.0.1:9090, never the public listener),
//! optionally behind a bearer token: `GET /status`, `GET /config`, `GET /metrics` (Prometheus
//! text), `POST /reload`, `POST /rollback/{n}`, `POST /drain`. One request per connection, on a
//! thread of its own; at most [`MAX_ADMIN_CONNECTIONS`] at once, each with [`ADMIN_DEADLINE`] to
//! send its request, so that clients which connect and stall cannot take the process's file
//! descriptors or threads. The token is the one of the config being served: a reload that sets,
//! rotates or removes it applies at once. Settings read only at start (listen addresses, CPUs,
//! buffers, the drain timeout, the control socket) are kept by a reload, which says so.

use std::{
    collections::VecDeque,
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use percore_runtime::{ControlHandle, EngineStats, buf::PoolStats};

use crate::{
    config_file::{Config, ConfigError},
    http::{self, HEADER_SLOT, Status},
    lifecycle::Lifecycle,
    metrics::{MetricsSnapshot, push_metric, render_prometheus},
    serve::Control,
};

/// Applied configs kept for rollback.
pub const KEEP_SNAPSHOTS: usize = 10;
/// How long a reload waits for every shard to confirm.
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections served at once; more are answered 503 and closed.
pub const MAX_ADMIN_CONNECTIONS: usize = 16;
/// How long an admin client has to send its whole request.
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(10);
/// Pause of the admin listener after a failed accept (EMFILE: the process is out of file
/// descriptors), so that it does not spin.
const ADMIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A config applied to every shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Its generation.
    pub generation: u64,
    /// Fields that differ from the config the process started with but are read only at start:
    /// they take effect at the next (hot) restart.
    pub restart_required: Vec<&'static str>,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {}", self.generation)?;
        if !self.restart_required.is_empty() {
            write!(
                f,
                "; {} changed and take{} effect at the next restart (hot restart: SIGUSR2)",
                self.restart_required.join(", "),
                if self.restart_required.len() == 1 {
                    "s"
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

/// What a shard reports to the control plane.
#[derive(Clone, Debug)]
pub struct ShardReport {
    /// Shard id.
    pub shard: usize,
    /// CPU it is pinned to.
    pub cpu: usize,
    /// Config generation it serves.
    pub generation: u64,
    /// Engine counters (connections, buffers).
    pub engine: EngineStats,
    /// Write-buffer pool.
    pub pool: PoolStats,
    /// Metrics snapshot.
    pub metrics: MetricsSnapshot,
    /// Mesh calls waiting for another shard's reply.
    pub mesh_pending: usize,
    /// Live connection tasks.
    pub connection_tasks: u64,
    /// Age of the oldest open connection, seconds.
    pub oldest_connection_s: f64,
}

/// Command-line values that win over the file, re-applied on every reload.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Vec<SocketAddr>,
    /// `--cpus`.
    pub cpus: Option<String>,
    /// `--shards`.
    pub shards: Option<usize>,
    /// `--admin`.
    pub admin: Option<SocketAddr>,
    /// `--header-timeout`, `--keepalive-timeout`, `--body-timeout`.
    pub header_timeout: Option<Duration>,
    pub keepalive_timeout: Option<Duration>,
    pub body_timeout: Option<Duration>,
}

impl Overrides {
    /// Applies the overrides to `cfg` and validates the result.
    pub fn apply(&self, cfg: Config) -> Result<Config, String> {
        self.apply_located(cfg).map_err(|e| e.to_string())
    }

    /// The flag that set `field` of the config (a [`ConfigError`]'s field), if a flag did: an
    /// error there is the command line's, not the file's.
    pub fn flag_for(&self, field: &str) -> Option<&'static str> {
        let set = |on: bool, flag| on.then_some(flag);
        match field {
            "server.listen" => set(!self.listen.is_empty(), "--listen"),
            "server.cpus" => set(self.cpus.is_some(), "--cpus"),
            "server.shards" => set(self.shards.is_some(), "--shards"),
            "admin.listen" => set(self.admin.is_some(), "--admin"),
            "timeouts.header" => set(self.header_timeout.is_some(), "--header-timeout"),
            "timeouts.keepalive" => set(self.keepalive_timeout.is_some(), "--keepalive-timeout"),
            "timeouts.body" => set(self.body_timeout.is_some(), "--body-timeout"),
            _ => None,
        }
    }

    /// [`Overrides::apply`], with the error located.
    pub fn apply_located(&self, mut cfg: Config) -> Result<Config, ConfigError> {
        if !self.listen.is_empty() {
            cfg.server.listen = self.listen.clone();
        }
        if self.cpus.is_some() {
            cfg.server.cpus = self.cpus.clone();
            cfg.server.shards = None;
        }
        if self.shards.is_some() {
            cfg.server.shards = self.shards;
            cfg.server.cpus = None;
        }
        if let Some(a) = self.admin {
            cfg.admin.listen = a;
        }
        if let Some(t) = self.header_timeout {
            cfg.timeouts.header = t;
        }
        if let Some(t) = self.keepalive_timeout {
            cfg.timeouts.keepalive = t;
        }
        if let Some(t) = self.body_timeout {
            cfg.timeouts.body = t;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

struct State {
    generation: u64,
    /// What the process started with: the settings read only at start come from it.
    started_with: Arc<Config>,
    snapshots: VecDeque<(u64, Arc<Config>, SystemTime)>,
    reloads_ok: u64,
    reloads_failed: u64,
}

/// The control plane of one server process.
pub struct ControlPlane {
    state: Mutex<State>,
    /// Held through a whole apply (numbering, the shards' confirmations, the snapshot), so that
    /// concurrent reloads and rollbacks get distinct generations in the order they were served.
    applying: Mutex<()>,
    path: Option<PathBuf>,
    overrides: Overrides,
    ctl: ControlHandle<Control>,
    started: Instant,
    cpus: Vec<usize>,
    lifecycle: Arc<Lifecycle>,
}

impl ControlPlane {
    /// The control plane for a server started with `initial` (generation 1).
    pub fn new(
        initial: Arc<Config>,
        path: Option<PathBuf>,
        overrides: Overrides,
        ctl: ControlHandle<Control>,
        cpus: Vec<usize>,
        lifecycle: Arc<Lifecycle>,
    ) -> Arc<ControlPlane> {
        let mut snapshots = VecDeque::new();
        snapshots.push_back((1, initial.clone(), SystemTime::now()));
        Arc::new(ControlPlane {
            applying: Mutex::new(()),
            state: Mutex::new(State {
                generation: 1,
                started_with: initial,
                snapshots,
                reloads_ok: 0,
                reloads_failed: 0,
            }),
            path,
            overrides,
            ctl,
            started: Instant::now(),
            cpus,
            lifecycle,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The config being served and its generation.
    pub fn current(&self) -> (u64, Arc<Config>) {
        let st = self.lock();
        let (g, c, _) = st.snapshots.back().expect("at least the initial config");
        (*g, c.clone())
    }

    /// Re-reads the config file and applies it. A bad file is rejected with its error and the
    /// running config stays.
    pub fn reload(&self) -> Result<Applied, String> {
        let Some(path) = &self.path else {
            return Err("no config file (started without --config)".into());
        };
        let parsed = Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|c| self.overrides.apply(c));
        match parsed {
            Ok(cfg) => self.apply(Arc::new(cfg)),
            Err(e) => {
                self.lock().reloads_failed += 1;
                self.broadcast_reload_outcome(false);
                Err(e)
            }
        }
    }

    /// Rolls back to snapshot `generation` (default: the one before the current), as a new
    /// generation.
    pub fn rollback(&self, generation: Option<u64>) -> Result<Applied, String> {
        let cfg = {
            let st = self.lock();
            let target = match generation {
                Some(g) => st.snapshots.iter().find(|(n, _, _)| *n == g),
                None => st.snapshots.iter().rev().nth(1),
            };
            match target {
                Some((_, c, _)) => c.clone(),
                None => {
                    let kept: Vec<u64> = st.snapshots.iter().map(|(n, _, _)| *n).collect();
                    return Err(format!("no such snapshot (kept: {kept:?})"));
                }
            }
        };
        self.apply(cfg)
    }

    /// Sends `cfg` to every shard and waits until each serves it.
    pub fn apply(&self, cfg: Arc<Config>) -> Result<Applied, String> {
        let _one_at_a_time = self.applying.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.lock().generation + 1;
        let (tx, rx) = mpsc::channel();
        self.ctl
            .broadcast(Control::Reload {
                config: cfg.clone(),
                generation,
                ack: tx,
            })
            .map_err(|e| e.to_string())?;
        for _ in 0..self.ctl.shards() {
            match rx.recv_timeout(RELOAD_TIMEOUT) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.lock().reloads_failed += 1;
                    return Err(e);
                }
                Err(_) => return Err("a shard did not confirm the reload".into()),
            }
        }
        let mut st = self.lock();
        st.generation = generation;
        st.reloads_ok += 1;
        let restart_required = st.started_with.restart_only_changes(&cfg);
        st.snapshots.push_back((generation, cfg, SystemTime::now()));
        while st.snapshots.len() > KEEP_SNAPSHOTS {
            st.snapshots.pop_front();
        }
        drop(st);
        self.broadcast_reload_outcome(true);
        Ok(Applied {
            generation,
            restart_required,
        })
    }

    fn broadcast_reload_outcome(&self, ok: bool) {
        // Counted once per process, on shard 0.
        let _ = self.ctl.send(0, Control::ReloadOutcome { ok });
    }

    /// Asks every shard for its report.
    pub fn reports(&self) -> Vec<ShardReport> {
        let (tx, rx) = mpsc::channel();
        if self.ctl.broadcast(Control::Report { reply: tx }).is_err() {
            return Vec::new();
        }
        let mut out: Vec<ShardReport> = (0..self.ctl.shards())
            .filter_map(|_| rx.recv_timeout(Duration::from_secs(5)).ok())
            .collect();
        out.sort_by_key(|r| r.shard);
        out
    }

    /// Prometheus text of all shards' metrics, merged.
    pub fn metrics(&self) -> String {
        let reports = self.reports();
        let mut merged = MetricsSnapshot::default();
        let mut per_shard = Vec::new();
        for r in &reports {
            let mut m = r.metrics.clone();
            let shard = r.shard.to_string();
            m.gauge("buffer_pool_in_use", &[], r.pool.in_use as f64);
            m.gauge("buffer_pool_free", &[], r.pool.free as f64);
            m.gauge(
                "recv_buffers_in_use",
                &[],
                r.engine.recv_buffers_in_use as f64,
            );
            m.gauge("open_connections", &[], r.engine.open as f64);
            m.gauge("accept_errors_total", &[], r.engine.accept_errors as f64);
            m.gauge("mesh_pending_calls", &[], r.mesh_pending as f64);
            m.gauge("config_generation", &[], r.generation as f64);
            m.gauge("connection_tasks", &[], r.connection_tasks as f64);
            m.gauge("oldest_connection_seconds", &[], r.oldest_connection_s);
            let _ = shard;
            merged.merge(&m);
            per_shard.push(m);
        }
        let mut text = render_prometheus(&merged, &per_shard);
        let mut counter = |name: &str, help: &str, value: u64| {
            push_metric(&mut text, name, "counter", help, value as f64);
        };
        counter(
            "percore_stalls_total",
            "Tasks that held a shard past the stall threshold.",
            percore_runtime::shard::stalls_total(),
        );
        counter(
            "percore_rescues_total",
            "Times the watchdog woke a shard whose executor slept with work queued.",
            percore_runtime::watchdog::rescues_total(),
        );
        counter(
            "percore_heap_trims_total",
            "Times free heap memory was given back to the system after a burst of large requests.",
            percore_runtime::watchdog::heap_trims_total(),
        );
        text.push_str(&process_metrics(self.started.elapsed()));
        text
    }

    /// The `/status` document (JSON).
    pub fn status_json(&self) -> String {
        let (generation, _) = self.current();
        let st = self.lock();
        let kept: Vec<String> = st.snapshots.iter().map(|(n, _, _)| n.to_string()).collect();
        let (ok, failed) = (st.reloads_ok, st.reloads_failed);
        drop(st);
        let shards: Vec<String> = self
            .reports()
            .iter()
            .map(|r| {
                format!(
                    "{{\"shard\":{},\"cpu\":{},\"generation\":{},\"connection_tasks\":{},\"oldest_connection_s\":{:.1},\"connections_open\":{},\"connections_accepted\":{},\"connections_closed\":{},\"buffers_in_use\":{},\"buffers_free\":{},\"buffers_high_water\":{},\"recv_buffers_in_use\":{},\"engine_busy_turns\":{},\"engine_naps\":{},\"engine_parks\":{},\"requests\":{}}}",
                    r.shard,
                    r.cpu,
                    r.generation,
                    r.connection_tasks,
                    r.oldest_connection_s,
                    r.engine.open,
                    r.engine.accepted,
                    r.engine.closed,
                    r.pool.in_use,
                    r.pool.free,
                    r.pool.high_water,
                    r.engine.recv_buffers_in_use,
                    r.engine.busy_turns,
                    r.engine.naps,
                    r.engine.parks,
                    r.metrics.total_requests()
                )
            })
            .collect();
        format!(
            "{{\"version\":\"{}\",\"pid\":{},\"uptime_s\":{:.1},\"draining\":{},\"config_generation\":{},\"snapshots\":[{}],\"reloads_ok\":{},\"reloads_failed\":{},\"stalls\":{},\"cpus\":[{}],\"shards\":[{}]}}",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            self.started.elapsed().as_secs_f64(),
            self.lifecycle.draining(),
            generation,
            kept.join(","),
            ok,
            failed,
            percore_runtime::shard::stalls_total(),
            self.cpus
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(","),
            shards.join(",")
        )
    }

    /// Starts a drain (as SIGTERM does).
    pub fn drain(&self) {
        self.lifecycle.drain(" on admin request");
    }
}

/// Serves the admin API on `listener` until the process ends.
pub fn serve_admin(listener: TcpListener, cp: Arc<ControlPlane>) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(s) => s,
            Err(_) => {
                // Out of file descriptors (or a connection that died in the queue): try again
                // shortly instead of at once.
                std::thread::sleep(ADMIN_ACCEPT_BACKOFF);
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_ADMIN_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            turn_away(&mut stream);
            continue;
        }
        let cp = cp.clone();
        let slot = Slot(active.clone());
        // One short-lived thread per admin request: admin traffic is rare and may wait on a
        // reload, which must not hold up the next scrape.
        let spawned = std::thread::Builder::new()
            .name("percore-admin".into())
            .spawn(move || {
                let _slot = slot;
                let _ = handle_admin(stream, &cp);
            });
        if spawned.is_err() {
            std::thread::sleep(ADMIN_ACCEPT_BACKOFF);
        }
    }
}

/// Answers a connection over the cap with 503, on the accept thread, in bounded time: the
/// request is read (briefly) before the answer and whatever follows is drained after it, so that
/// the close does not turn into a reset that destroys the answer.
fn turn_away(s: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = s.set_read_timeout(Some(TURN_AWAY_WAIT));
    let _ = s.set_write_timeout(Some(TURN_AWAY_WAIT));
    let _ = s.read(&mut sink);
    let _ = respond(s, 503, "text/plain", "too many admin connections\n");
    let _ = s.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + TURN_AWAY_WAIT;
    while Instant::now() < until && matches!(s.read(&mut sink), Ok(n) if n > 0) {}
}

/// How long the admin listener spends on one connection it turns away, per step.
const TURN_AWAY_WAIT: Duration = Duration::from_millis(100);

/// One of the [`MAX_ADMIN_CONNECTIONS`] slots, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handle_admin(mut s: TcpStream, cp: &ControlPlane) -> std::io::Result<()> {
    let deadline = Instant::now() + ADMIN_DEADLINE;
    s.set_write_timeout(Some(ADMIN_DEADLINE))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let limits = http::Limits::default();
    let (method, path, auth) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return respond(&mut s, 408, "text/plain", "request timeout\n");
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return respond(&mut s, 408, "text/plain", "request timeout\n");
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [HEADER_SLOT; 64];
        match http::parse_head(&buf, &limits, &mut headers) {
            Ok(Status::Complete(head, _)) => {
                let auth = head
                    .header("authorization")
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                break (head.method.to_string(), head.path.to_string(), auth);
            }
            Ok(Status::Partial) => continue,
            Err(e) => return respond(&mut s, e.status(), "text/plain", e.reason()),
        }
    };
    // The token of the config being served: a reload that changes it applies to the next request.
    let (_, cfg) = cp.current();
    if let Some(t) = &cfg.admin.token {
        let expected = format!("Bearer {t}");
        if auth.as_deref() != Some(expected.as_str()) {
            return respond(&mut s, 401, "text/plain", "admin token required\n");
        }
    }
    // HEAD is GET without the content (RFC 9110 §9.3.2).
    let head_only = method == "HEAD";
    let method = if head_only { "GET" } else { method.as_str() };
    let mut get = |ctype: &str, body: &str| send(&mut s, 200, ctype, body, head_only, None);
    match (method, path.as_str()) {
        ("GET", "/status") => get("application/json", &cp.status_json()),
        ("GET", "/config") => {
            let (g, c) = cp.current();
            get(
                "application/toml",
                &format!("# generation {g}\n{}", c.redacted().effective().to_toml()),
            )
        }
        ("GET", "/metrics") => get("text/plain; version=0.0.4", &cp.metrics()),
        ("POST", "/reload") => answer_generation(&mut s, cp.reload(), 422, "reload"),
        ("POST", p) if p.starts_with("/rollback") => {
            let arg = p.trim_start_matches("/rollback").trim_start_matches('/');
            let target = if arg.is_empty() {
                None
            } else {
                arg.parse().ok()
            };
            if !arg.is_empty() && target.is_none() {
                return respond(&mut s, 400, "text/plain", "bad snapshot number\n");
            }
            answer_generation(&mut s, cp.rollback(target), 404, "rollback")
        }
        ("POST", "/drain") => {
            cp.drain();
            respond(&mut s, 202, "application/json", "{\"draining\":true}")
        }
        (_, p) => {
            let allow = match p {
                "/status" | "/config" | "/metrics" => Some("GET, HEAD"),
                "/reload" | "/drain" => Some("POST"),
                p if p.starts_with("/rollback") => Some("POST"),
                _ => None,
            };
            match allow {
                Some(_) => send(
                    &mut s,
                    405,
                    "text/plain",
                    "method not allowed\n",
                    head_only,
                    allow,
                ),
                None => send(&mut s, 404, "text/plain", "not found\n", head_only, None),
            }
        }
    }
}

/// Answers a reload or rollback: the new generation, or `err_status` with the reason.
fn answer_generation(
    s: &mut TcpStream,
    r: Result<Applied, String>,
    err_status: u16,
    what: &str,
) -> std::io::Result<()> {
    match r {
        Ok(a) => {
            let fields: Vec<String> = a
                .restart_required
                .iter()
                .map(|f| format!("\"{f}\""))
                .collect();
            respond(
                s,
                200,
                "application/json",
                &format!(
                    "{{\"generation\":{},\"restart_required\":[{}]}}",
                    a.generation,
                    fields.join(",")
                ),
            )
        }
        Err(e) => respond(
            s,
            err_status,
            "text/plain",
            &format!("{what} rejected: {e}\n"),
        ),
    }
}

fn respond(s: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    send(s, status, ctype, body, false, None)
}

/// Writes one response and its `body` (only its length for a HEAD request), with `Date`
/// (RFC 9110 §6.6.1) and, for a 405, `Allow` (§15.5.6). The connection closes after it.
fn send(
    s: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &str,
    head_only: bool,
    allow: Option<&str>,
) -> std::io::Result<()> {
    let date = http::format_imf_fixdate(std::time::SystemTime::now());
    let allow = allow.map_or(String::new(), |a| format!("Allow: {a}\r\n"));
    let head = format!(
        "HTTP/1.1 {status} {}\r\nDate: {}\r\n{allow}Content-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        http::reason_phrase(status),
        String::from_utf8_lossy(&date),
        body.len()
    );
    s.write_all(head.as_bytes())?;
    if !head_only {
        s.write_all(body.as_bytes())?;
    }
    s.flush()
}

/// `percore config print`: the effective config (defaults and the built-in routes written out).
pub fn print_config(path: Option<&std::path::Path>) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    print!("{}", cfg.redacted().effective().to_toml());
    Ok(())
}

/// Reloads when the config file changes (inotify, through the `notify` crate). The directory is
/// watched, not the file, so that editors that replace the file by renaming are seen too.
pub fn watch_config(path: PathBuf, cp: Arc<ControlPlane>) {
    use notify::{RecursiveMode, Watcher};
    let Some(dir) = path
        .parent()
        .map(|d| {
            if d.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                d
            }
        })
        .map(|d| d.to_path_buf())
    else {
        return;
    };
    let name = path.file_name().map(|n| n.to_os_string());
    let (tx, rx) = mpsc::channel();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && (ev.kind.is_modify() || ev.kind.is_create())
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == name)
        {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("percore: config file watch unavailable: {e}");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        eprintln!("percore: config file watch unavailable: {e}");
        return;
    }
    let _ = std::thread::Builder::new().name("percore-watch".into()).spawn(move || {
        let _keep = watcher;
        let mut last = std::fs::read(&path).ok();
        while rx.recv().is_ok() {
            // An editor's save is several events: take them all, then look at the content.
            while rx.recv_timeout(Duration::from_millis(50)).is_ok() {}
            let now = std::fs::read(&path).ok();
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            match cp.reload() {
                Ok(a) => eprintln!("percore: config file changed, reloaded ({a})"),
                Err(e) => eprintln!("percore: config file changed but was rejected, the running config stays: {e}"),
            }
        }
    });
}

/// `percore ctl ...`: one admin request, readable output (or `--json`).
pub fn ctl(a: &crate::cli::CtlArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (method, path) = match a.action.as_str() {
        "status" => ("GET", "/status".to_string()),
        "config" => ("GET", "/config".to_string()),
        "metrics" => ("GET", "/metrics".to_string()),
        "reload" => ("POST", "/reload".to_string()),
        "rollback" => (
            "POST",
            a.arg
                .map_or("/rollback".to_string(), |n| format!("/rollback/{n}")),
        ),
        "drain" => ("POST", "/drain".to_string()),
        other => return Err(format!("unknown action {other:?}").into()),
    };
    let mut s = TcpStream::connect_timeout(&a.admin, Duration::from_secs(5))
        .map_err(|e| format!("admin {}: {e}", a.admin))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = a
        .token
        .as_ref()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
        a.admin
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        return Err(format!("{} {}", status, body.trim()).into());
    }
    if a.json || !body.trim_start().starts_with('{') {
        println!("{}", body.trim_end());
    } else {
        println!("{}", pretty_json(body));
    }
    Ok(())
}

/// Indents a compact JSON document (our own, so strings never contain braces or commas that
/// matter... and if they do, the output is still valid, only less pretty).
fn pretty_json(s: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    let mut in_str = false;
    let mut prev = ' ';
    for ch in s.trim().chars() {
        if in_str {
            out.push(ch);
            if ch == '"' && prev != '\\' {
                in_str = false;
            }
        } else {
            match ch {
                '"' => {
                    in_str = true;
                    out.push(ch);
                }
                '{' | '[' => {
                    depth += 1;
                    out.push(ch);
                    out.push('\n');
                    out.push_str(&"  ".repeat(depth));
                }
                '}' | ']' => {
                    depth = depth.saturating_sub(1);
                    out.push('\n');
                    out.push_str(&"  ".repeat(depth));
                    out.push(ch);
                }
                ',' => {
                    out.push(ch);
                    out.push('\n');
                    out.push_str(&"  ".repeat(depth));
                }
                ':' => out.push_str(": "),
                _ => out.push(ch),
            }
        }
        prev = ch;
    }
    out
}

/// The standard Prometheus process metrics (the names every client library's process collector
/// uses): CPU time, resident and virtual memory, open and allowed file descriptors, start time.
/// `uptime` is how long the server has run.
fn process_metrics(uptime: Duration) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        push_metric(&mut out, name, kind, help, value);
    };
    if let Some(cpu) = percore_runtime::sys::process_cpu() {
        metric(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of all threads, in seconds.",
            cpu.as_secs_f64(),
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bytes = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib * 1024.0)
    };
    if let Some(rss) = bytes("VmRSS:") {
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
    }
    if let Some(vsize) = bytes("VmSize:") {
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        );
    }
    // The listing's own descriptor is in it too.
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let open = dir.count().saturating_sub(1);
        metric(
            "process_open_fds",
            "gauge",
            "Open file descriptors (one per connection, plus rings, listeners and eventfds).",
            open as f64,
        );
    }
    if let Some(max) = percore_runtime::sys::open_files_limit() {
        metric(
            "process_max_fds",
            "gauge",
            "The open-files limit (RLIMIT_NOFILE, soft).",
            max as f64,
        );
    }
    if let Some(start) = SystemTime::now()
        .checked_sub(uptime)
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
    {
        metric(
            "process_start_time_seconds",
            "gauge",
            "When the server started, in seconds since the Unix epoch.",
            start.as_secs_f64(),
        );
    }
    out
}
