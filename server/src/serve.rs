//! `percore serve`: bind the listeners, start one shard per CPU with the HTTP service, and run
//! until a signal says to stop.
//!
//! The lifecycle: Setup (parse, check the system) → Bootstrap (bind, start shards) → Running →
//! Draining (SIGTERM/SIGINT: `/readyz` answers 503, idle connections close, new connections are
//! accepted for `server.drain_accept` (1 s) and answered with `Connection: close`, even by an
//! idle server, then refused; in-flight requests finish until the drain deadline) → Stopped
//! (exit 0). A second SIGINT exits at once. A drain asked for during a hot restart follows its
//! outcome (see [`crate::lifecycle`]).

use std::{
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use percore_runtime::{
    Acceptor, ControlHandle, Engine, EngineConfig, IdleStrategy, MeshConfig, Runtime,
    RuntimeBuilder,
    cpus::{CpuSelection, format_cpu_list},
    handoff,
    listener::{Custody, DEFAULT_BACKLOG, ListenerTable},
    probe::Probed,
};

use crate::{
    app::App,
    builtin,
    cli::{ServeArgs, UsageError},
    config::ServerConfig,
    config_file::Config,
    control::{ControlPlane, Overrides},
    kv::{Kv, MutexKv, ShardMsg},
    lifecycle::{DrainRequest, Lifecycle},
    router::RouterBuilder,
};

/// Default address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// How long idle keep-alive connections may send one last request during a drain.
pub const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(1);
/// Default drain deadline.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages from the control thread to the shards.
#[derive(Clone, Debug)]
pub enum Control {
    /// Serve this config from the next request on; confirm on `ack`.
    Reload {
        config: Arc<Config>,
        generation: u64,
        ack: std::sync::mpsc::Sender<Result<(), String>>,
    },
    /// Count a reload outcome (sent to shard 0 only).
    ReloadOutcome { ok: bool },
    /// Report counters and metrics.
    Report {
        reply: std::sync::mpsc::Sender<crate::control::ShardReport>,
    },
    /// Drain until the deadline, then end the shard. With `handoff`, a successor serves the
    /// same sockets: stop accepting at once (also when a drain has already begun); otherwise
    /// keep accepting (answering with `Connection: close`, `/readyz` 503) for `drain_accept`,
    /// then stop listening.
    Drain { deadline: Instant, handoff: bool },
}

/// What a route factory gets on each shard.
pub struct ShardContext {
    /// Shard id.
    pub shard: usize,
    /// Number of shards.
    pub shards: usize,
    /// The shard's engine (e.g. to ask whether it is draining).
    pub engine: percore_runtime::Engine,
    /// The shard's part of the built-in key-value store.
    pub kv: Rc<Kv>,
    /// The mutex-based store shared by all shards.
    pub mutex_kv: MutexKv,
    /// The config being applied (its routes, for the default factory).
    pub config: Arc<Config>,
    /// The shard's rate limiters (the factory registers the ones it creates).
    pub limiters: Rc<crate::middleware::Limiters>,
}

/// Builds a shard's routes. Called once on every shard, so handlers may hold shard-local state.
pub type RouteFactory = Arc<dyn Fn(&ShardContext) -> RouterBuilder + Send + Sync>;

/// The built-in routes of the embedded default config.
pub fn builtin_routes() -> RouteFactory {
    Arc::new(|cx: &ShardContext| builtin::router_from_config(cx))
}

/// Everything `start` needs.
#[derive(Clone)]
pub struct ServeOptions {
    /// The routes (default: the built-in ones).
    pub routes: RouteFactory,
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Shard CPUs.
    pub cpus: CpuSelection,
    /// Idle strategy of the shards.
    pub idle: IdleStrategy,
    /// HTTP settings.
    pub config: ServerConfig,
    /// The config file's contents (routes, middleware); the default when there is no file.
    pub file: Arc<Config>,
    /// Drain deadline on SIGTERM.
    pub drain_timeout: Duration,
    /// How long a drain keeps accepting (see [`Config`]'s `server.drain_accept`).
    pub drain_accept: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            routes: builtin_routes(),
            listen: vec![DEFAULT_LISTEN.parse().expect("valid default")],
            cpus: CpuSelection::All,
            idle: IdleStrategy::Park,
            config: ServerConfig::default(),
            file: Arc::new(Config::default()),
            drain_timeout: DRAIN_TIMEOUT,
            drain_accept: crate::config_file::DEFAULT_DRAIN_ACCEPT,
        }
    }
}

/// A started server.
pub struct RunningServer {
    rt: Runtime<Control>,
    addrs: Vec<SocketAddr>,
}

impl RunningServer {
    /// The real listening addresses (ports filled in).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
    /// The shard CPUs.
    pub fn cpus(&self) -> &[usize] {
        self.rt.cpus()
    }
    /// A handle to send control messages from any thread.
    pub fn control(&self) -> ControlHandle<Control> {
        self.rt.control()
    }
    /// The listening sockets (kept for a handoff).
    pub fn listeners(&self) -> &Arc<ListenerTable> {
        self.rt.listeners()
    }
    /// Starts a drain on every shard.
    pub fn drain(&self, timeout: Duration) {
        let _ = self.rt.broadcast(Control::Drain {
            handoff: false,
            deadline: Instant::now() + timeout,
        });
    }
    /// Waits until every shard has finished.
    pub fn wait(self) -> Result<(), percore_runtime::Error> {
        self.rt.wait()
    }
}

/// Binds and starts the shards; returns once every shard is serving.
pub fn start(opts: ServeOptions) -> Result<RunningServer, percore_runtime::Error> {
    percore_runtime::sys::check_system()?;
    let cpus = RuntimeBuilder::default()
        .cpus(opts.cpus.clone())
        .resolve_cpus()?;
    let table = ListenerTable::bind(&opts.listen, &cpus, DEFAULT_BACKLOG)?;
    start_on(opts, table)
}

/// Starts the shards on listening sockets already bound or inherited.
pub fn start_on(
    opts: ServeOptions,
    table: ListenerTable,
) -> Result<RunningServer, percore_runtime::Error> {
    percore_runtime::sys::check_system()?;
    let engine = EngineConfig {
        idle: opts.idle,
        ..EngineConfig::default()
    };
    let builder = RuntimeBuilder::default()
        .cpus(opts.cpus.clone())
        .engine(engine);
    let cpus = builder.resolve_cpus()?;
    let table = Arc::new(table);
    let addrs = table.local_addrs();
    let mesh_cfg = MeshConfig::<ShardMsg>::new(cpus.len(), percore_runtime::mesh::DEFAULT_QUEUE);
    let mutex_kv = MutexKv::default();
    let config = opts.config.clone();
    let routes = opts.routes.clone();
    let file = opts.file.clone();
    let drain_accept = opts.drain_accept;
    let custody = table.custody().clone();
    let rt = builder.spawn(table, move |mut shard: percore_runtime::Shard<Control>| {
        let mesh_cfg = mesh_cfg.clone();
        let mutex_kv = mutex_kv.clone();
        let config = Rc::new(config.clone());
        let routes = routes.clone();
        let file = file.clone();
        let custody = custody.clone();
        async move {
            let id = shard.id;
            let kv = Kv::new(id, shard.count);
            let kv2 = kv.clone();
            let limiters = Rc::new(crate::middleware::Limiters::default());
            let l2 = limiters.clone();
            let mesh = match mesh_cfg
                .join(id, move |from, m| match m {
                    ShardMsg::Demand { key, demand } => {
                        l2.observe(from, key, demand);
                        None
                    }
                    other => kv2.handle(other),
                })
                .await
            {
                Ok(mesh) => mesh,
                Err(e) => panic!("shard {id}: {e}"),
            };
            kv.set_mesh(mesh.clone());
            // Rate-limit shares follow demand: tell the other shards what this one saw (a lone
            // shard has the whole rate and nobody to tell, and is not woken for it).
            if mesh.shards() > 1 {
                let limiters = limiters.clone();
                glommio::spawn_local(async move {
                    loop {
                        glommio::timer::sleep(crate::middleware::REBALANCE_EVERY).await;
                        for (key, demand) in limiters.take_demands() {
                            for s in (0..mesh.shards()).filter(|&s| s != mesh.shard()) {
                                let _ = mesh.send_to(s, ShardMsg::Demand { key, demand }).await;
                            }
                        }
                    }
                })
                .detach();
            }
            let cx = ShardContext {
                shard: id,
                shards: shard.count,
                engine: shard.engine.clone(),
                kv,
                mutex_kv,
                config: file,
                limiters,
            };
            let router = match (routes)(&cx).build() {
                Ok(r) => Rc::new(r),
                Err(e) => panic!("shard {id}: {e}"),
            };
            let app = App::new(
                id,
                shard.count,
                shard.engine.clone(),
                shard.arenas.clone(),
                config,
                router,
            );
            app.generation.set(1);
            let mut acceptors: Vec<Rc<percore_runtime::Acceptor>> = Vec::new();
            for l in shard.take_listeners() {
                let acc = Rc::new(shard.engine.listen(l.fd, l.local));
                acceptors.push(acc.clone());
                let app = app.clone();
                glommio::spawn_local(async move {
                    while let Ok(c) = acc.accept().await {
                        glommio::spawn_local(Probed(crate::conn::serve(c, app.clone()))).detach();
                    }
                })
                .detach();
            }
            let (done_tx, done_rx) = glommio::channels::local_channel::new_bounded::<()>(1);
            let done_tx = Rc::new(done_tx);
            let engine = shard.engine.clone();
            let app2 = app.clone();
            let cpu = shard.cpu;
            let drain_started = std::cell::Cell::new(false);
            glommio::spawn_local(shard.take_inbox().run(move |msg| match msg {
                Control::Reload {
                    config,
                    generation,
                    ack,
                } => {
                    let next = ShardContext {
                        shard: cx.shard,
                        shards: cx.shards,
                        engine: cx.engine.clone(),
                        kv: cx.kv.clone(),
                        mutex_kv: cx.mutex_kv.clone(),
                        config: config.clone(),
                        limiters: cx.limiters.clone(),
                    };
                    cx.limiters.clear();
                    match (routes)(&next).build() {
                        Ok(router) => {
                            app2.swap(Rc::new(config.server_config()), Rc::new(router));
                            app2.generation.set(generation);
                            let _ = ack.send(Ok(()));
                        }
                        Err(e) => {
                            let _ = ack.send(Err(format!("shard {id}: {e}")));
                        }
                    }
                }
                Control::ReloadOutcome { ok } => app2.metrics.reload(ok),
                Control::Report { reply } => {
                    let _ = reply.send(crate::control::ShardReport {
                        shard: id,
                        cpu,
                        generation: app2.generation.get(),
                        engine: app2.engine.stats(),
                        pool: app2.engine.pool().stats(),
                        metrics: app2.metrics.snapshot(),
                        mesh_pending: cx.kv.mesh_pending(),
                        connection_tasks: app2.metrics.connections_open(),
                        oldest_connection_s: app2
                            .engine
                            .oldest_connection_age()
                            .map_or(0.0, |d| d.as_secs_f64()),
                    });
                }
                Control::Drain { deadline, handoff } => {
                    if handoff {
                        // A successor accepts from now on, on the same sockets.
                        for a in &acceptors {
                            a.stop();
                        }
                    }
                    if drain_started.replace(true) {
                        return;
                    }
                    // A plain drain keeps accepting for a moment (new connections get
                    // `Connection: close`, `/readyz` says 503), so that a load balancer that has
                    // not noticed yet gets answers rather than refusals.
                    let accept_for = if handoff {
                        Duration::ZERO
                    } else {
                        deadline
                            .saturating_duration_since(Instant::now())
                            .min(drain_accept)
                    };
                    let shard = DrainingShard {
                        id,
                        engine: engine.clone(),
                        acceptors: acceptors.clone(),
                        custody: custody.clone(),
                    };
                    let done = done_tx.clone();
                    glommio::spawn_local(async move {
                        shard.drain(deadline, accept_for).await;
                        let _ = done.send(()).await;
                    })
                    .detach();
                }
            }))
            .detach();
            let _ = done_rx.recv().await;
        }
    })?;
    Ok(RunningServer { rt, addrs })
}

/// What a shard's drain works on.
struct DrainingShard {
    id: usize,
    engine: Engine,
    acceptors: Vec<Rc<Acceptor>>,
    custody: Custody,
}

impl DrainingShard {
    /// Answers every response with `Connection: close` from now on (idle keep-alive connections
    /// close after [`DRAIN_IDLE_GRACE`]), keeps accepting for `accept_for` (new connections are
    /// served, and closed, like the rest), then stops listening, and returns once every
    /// connection has closed, or at `deadline`, when the ones left are closed by force.
    ///
    /// An idle shard too keeps accepting for all of `accept_for`: a client that connects just
    /// after the signal is answered, not refused. When listening stops, the connections already
    /// waiting in the accept queue are taken and served, not reset (see
    /// [`Acceptor::stop_listening`]); if a hot-restart successor holds the sockets, they go on
    /// listening there and this shard only stops accepting.
    async fn drain(self, deadline: Instant, accept_for: Duration) {
        let DrainingShard {
            id,
            engine,
            acceptors,
            custody,
        } = self;
        let accepted_before = engine.stats().accepted;
        let accepting = async {
            glommio::timer::sleep(accept_for).await;
            for a in &acceptors {
                a.stop_listening(&custody);
            }
        };
        let (report, ()) =
            futures_lite::future::zip(engine.drain(&[], deadline, DRAIN_IDLE_GRACE), accepting)
                .await;
        // `Engine::drain` returns as soon as no connection is open, which an idle shard is at
        // once: connections accepted after that (in the window above, or by the kernel while
        // the accept was being cancelled) get until the deadline too. (If it reached the
        // deadline instead, it has closed every connection by force already.)
        let mut forced = report.force_closed;
        if forced == 0 && !engine.all_closed_by(deadline).await {
            forced = engine.force_close_all();
        }
        if forced > 0 {
            let accepted = engine.stats().accepted - accepted_before;
            eprintln!(
                "percore: shard {id}: drain deadline passed, force-closed {forced} of {} connections",
                report.open_at_start as u64 + accepted
            );
        }
    }
}

/// Runs `percore serve` in the foreground until drained.
///
/// With `--upgrade` it first takes the listening sockets from the running server over its control
/// socket, starts its shards on them, writes the pid file and only then tells the old process it
/// is ready; any failure before that is reported to the old process, which keeps serving.
pub fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    // Syntax errors in --cpus are argument errors.
    args.cpu_selection()
        .map_err(|e| UsageError(format!("--cpus: {}", e.trim_start_matches("cpus: "))))?;
    let overrides = Overrides {
        listen: args.listen.clone(),
        cpus: args.cpus.clone(),
        shards: args.shards,
        admin: args.admin,
        header_timeout: args.header_timeout,
        keepalive_timeout: args.keepalive_timeout,
        body_timeout: args.body_timeout,
    };
    let file = match &args.config {
        Some(p) => Config::load(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let mut cfg = overrides
        .apply_located(file)
        .map_err(|e| -> Box<dyn std::error::Error> {
            match overrides.flag_for(&e.field) {
                Some(flag) => Box::new(UsageError(format!("{flag}: {}", e.message))),
                None => Box::new(e),
            }
        })?;
    if let Some(d) = args.drain_timeout {
        cfg.server.drain_timeout = d;
    }
    if let Some(d) = args.drain_accept {
        cfg.server.drain_accept = d;
    }
    if args.check {
        // What start-up would refuse: CPUs outside the affinity mask, more shards than CPUs.
        cfg.cpu_selection()?
            .resolve(&percore_runtime::cpus::allowed_cpus())?;
        let origin = args
            .config
            .as_ref()
            .map_or("the embedded default config".to_string(), |p| {
                p.display().to_string()
            });
        println!("percore: {origin} is valid");
        return Ok(());
    }
    let mut opts = ServeOptions {
        listen: cfg.server.listen.clone(),
        cpus: cfg.cpu_selection()?,
        config: cfg.server_config(),
        drain_timeout: cfg.server.drain_timeout,
        drain_accept: cfg.server.drain_accept,
        ..ServeOptions::default()
    };
    if args.idle_spin_us > 0 {
        opts.idle = IdleStrategy::Spin(Duration::from_micros(args.idle_spin_us));
    }
    let drain_timeout = opts.drain_timeout;
    let cfg = Arc::new(cfg);
    opts.file = cfg.clone();
    // The control socket: explicit, or one per public port in the runtime directory (so two
    // servers on different ports never take each other's sockets). A server on port 0 without
    // --control-socket has no hot restart: its successor could not find it.
    let explicit_control = args.control_socket.is_some() || cfg.server.control_socket.is_some();
    let control_path = args
        .control_socket
        .clone()
        .or_else(|| cfg.server.control_socket.clone())
        .or_else(|| {
            let port = opts.listen.first().map(|a| a.port()).unwrap_or(0);
            (port != 0).then(|| {
                let dir = handoff::default_control_path()
                    .parent()
                    .map(|p| p.to_path_buf())
                    .unwrap_or_default();
                dir.join(format!("control-{port}.sock"))
            })
        });
    // Registered before any thread starts, so the signals reach the signal thread only.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGUSR2,
        signal_hook::consts::SIGHUP,
    ])?;
    percore_runtime::sys::check_system()?;
    let cpus = RuntimeBuilder::default()
        .cpus(opts.cpus.clone())
        .resolve_cpus()?;
    let (table, ready) = if args.upgrade {
        let Some(control_path) = &control_path else {
            return Err("--upgrade needs --control-socket (or a fixed --listen port)".into());
        };
        let (inherited, ready) = handoff::receive(control_path, cpus.len(), HANDOFF_TIMEOUT)?;
        eprintln!(
            "percore: took over {} listening socket(s) from pid {}",
            inherited
                .entries
                .iter()
                .map(|e| e.sockets.len())
                .sum::<usize>(),
            inherited.old_pid
        );
        match ListenerTable::from_inherited(inherited.entries, &cpus, DEFAULT_BACKLOG) {
            Ok(t) => (t, Some(ready)),
            Err(e) => {
                let _ = ready.fail(&e.to_string());
                return Err(e.into());
            }
        }
    } else {
        (
            ListenerTable::bind(&opts.listen, &cpus, DEFAULT_BACKLOG)?,
            None,
        )
    };
    let fail = |ready: Option<handoff::ReadyHandle>, e: &dyn std::fmt::Display| {
        if let Some(r) = ready {
            let _ = r.fail(&e.to_string());
        }
    };
    let server = match start_on(opts, table) {
        Ok(s) => s,
        Err(e) => {
            fail(ready, &e);
            return Err(e.into());
        }
    };
    let handoff_server = match &control_path {
        None => None,
        Some(path) => match if args.upgrade {
            handoff::HandoffServer::bind_replacing(path)
        } else {
            handoff::HandoffServer::bind(path)
        } {
            Ok(h) => Some(h),
            Err(e) if !explicit_control && !args.upgrade => {
                eprintln!("percore: hot restart unavailable: {e}");
                None
            }
            Err(e) => {
                fail(ready, &e);
                return Err(e.into());
            }
        },
    };
    // The admin listener before the listening line (and before a predecessor is told this
    // process is ready): a supervisor that sees the line must not then see the process exit over
    // the admin address. A default address that is taken (another server on this machine)
    // disables the admin API with a warning; an explicit one is an error. A successor finds the
    // admin port still held by its draining predecessor: it keeps trying until the predecessor
    // exits.
    let admin_listener = match std::net::TcpListener::bind(cfg.admin.listen) {
        Err(e)
            if args.admin.is_some()
                && !(args.upgrade && e.kind() == std::io::ErrorKind::AddrInUse) =>
        {
            let e = format!("admin bind {}: {e}", cfg.admin.listen);
            fail(ready, &e);
            return Err(e.into());
        }
        r => r,
    };
    // The pid file first: whoever sees the listening line can rely on it.
    if let Some(p) = &args.pid_file
        && let Err(e) = write_pid_file(p)
    {
        fail(ready, &e);
        return Err(format!("pid file {}: {e}", p.display()).into());
    }
    let mut cpus = server.cpus().to_vec();
    cpus.sort_unstable();
    eprintln!(
        "percore: pid {}, {}",
        std::process::id(),
        percore_runtime::sys::limits_summary()
    );
    for addr in server.addrs() {
        println!(
            "percore: listening on http://{addr} ({} shard{} on cpus {})",
            cpus.len(),
            if cpus.len() == 1 { "" } else { "s" },
            format_cpu_list(&cpus)
        );
    }
    if let Some(r) = ready {
        r.ready()?;
    }
    let ctl = server.control();
    let lifecycle = {
        let ctl = ctl.clone();
        Lifecycle::new(drain_timeout, move |handoff| {
            let _ = ctl.broadcast(Control::Drain {
                deadline: Instant::now() + drain_timeout,
                handoff,
            });
        })
    };
    let cp = ControlPlane::new(
        cfg.clone(),
        args.config.clone(),
        overrides,
        ctl.clone(),
        server.cpus().to_vec(),
        lifecycle.clone(),
    );
    // The admin API: its own listener (bound above), never the public one.
    match admin_listener {
        Ok(l) => {
            println!("percore: admin on http://{}", l.local_addr()?);
            let cp = cp.clone();
            std::thread::Builder::new()
                .name("percore-admin".into())
                .spawn(move || crate::control::serve_admin(l, cp))?;
        }
        Err(e) if args.upgrade && e.kind() == std::io::ErrorKind::AddrInUse => {
            let (addr, cp) = (cfg.admin.listen, cp.clone());
            let give_up = Instant::now() + drain_timeout + Duration::from_secs(10);
            std::thread::Builder::new()
                .name("percore-admin".into())
                .spawn(move || {
                    while Instant::now() < give_up {
                        if let Ok(l) = std::net::TcpListener::bind(addr) {
                            eprintln!("percore: admin on http://{addr}");
                            crate::control::serve_admin(l, cp);
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    eprintln!("percore: admin API unavailable: {addr} stayed in use");
                })?;
        }
        // An address given on the command line failed above; the default one may be taken by
        // another server on this machine.
        Err(e) => {
            eprintln!(
                "percore: admin API unavailable: bind {}: {e}",
                cfg.admin.listen
            );
        }
    }
    if let Some(path) = &args.config {
        crate::control::watch_config(path.clone(), cp.clone());
    }
    // Removed at a clean exit, unless a successor has replaced it.
    let _control_file = handoff_server.as_ref().map(|h| h.socket_file());
    // Hands the sockets to a successor that connects to the control socket.
    let can_upgrade = handoff_server.is_some();
    if let Some(handoff_server) = handoff_server {
        let table = server.listeners().clone();
        let lifecycle = lifecycle.clone();
        std::thread::Builder::new()
            .name("percore-handoff".into())
            .spawn(move || serve_handoffs(handoff_server, table, &lifecycle))?;
    }
    {
        let args = std::env::args_os().collect::<Vec<_>>();
        let cp = cp.clone();
        std::thread::Builder::new().name("percore-signals".into()).spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    match cp.reload() {
                        Ok(a) => eprintln!("percore: config reloaded ({a})"),
                        Err(e) => eprintln!("percore: reload rejected, the running config stays: {e}"),
                    }
                    continue;
                }
                if sig == signal_hook::consts::SIGUSR2 {
                    if !can_upgrade {
                        eprintln!("percore: hot restart unavailable (no control socket); SIGUSR2 ignored");
                    } else {
                        match lifecycle.begin_upgrade() {
                            Ok(()) => spawn_successor(&args),
                            Err(why) => eprintln!("percore: {why}"),
                        }
                    }
                    continue;
                }
                if lifecycle.drain("") == DrainRequest::AlreadyAsked && sig == signal_hook::consts::SIGINT {
                    eprintln!("percore: second interrupt, exiting now");
                    std::process::exit(130);
                }
            }
        })?;
    }
    server.wait()?;
    // The pid file names this process until a successor writes its own: remove it only then, so
    // that a later `kill -USR2 $(cat PIDFILE)` cannot reach a recycled pid.
    if let Some(p) = &args.pid_file
        && std::fs::read_to_string(p).is_ok_and(|s| s.trim() == std::process::id().to_string())
    {
        let _ = std::fs::remove_file(p);
    }
    eprintln!("percore: stopped");
    Ok(())
}

/// How long a successor waits to receive the sockets, and the old process for its READY.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after starting a successor this process waits for it to connect before another
/// SIGUSR2 may start one, and before a drain asked for meanwhile starts without it (one that
/// fails early, on a bad config, never connects).
pub const SUCCESSOR_CONNECT_WINDOW: Duration = Duration::from_secs(5);

/// Answers successors on the control socket: sends them the listening sockets and waits for
/// READY; the [`Lifecycle`] then drains this process. A successor that fails leaves this process
/// serving (or draining, if a drain was asked for meanwhile).
fn serve_handoffs(hs: handoff::HandoffServer, table: Arc<ListenerTable>, lifecycle: &Lifecycle) {
    loop {
        let req = match hs.accept(None) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("percore: control socket: {e}");
                continue;
            }
        };
        if !lifecycle.successor_connected() {
            let _ = req.reject("this process is already draining");
            continue;
        }
        let pid = req.pid();
        let mut successor = match req.send(&table, 0) {
            Ok(s) => s,
            Err(e) => {
                lifecycle.successor_failed(&format!("handoff to pid {pid} failed: {e}"));
                continue;
            }
        };
        match successor.wait_ready(HANDOFF_TIMEOUT) {
            Ok(pid) => {
                lifecycle.successor_ready(pid);
                return;
            }
            Err(e) => {
                lifecycle.successor_failed(&format!("successor pid {pid} failed before ready: {e}"))
            }
        }
    }
}

/// Starts `ARGS --upgrade` from the binary on disk, detached (the shell forks it and exits, so
/// the successor is not our child and a service manager sees it if it crashes later), from this
/// unpinned thread, so it gets the process's full CPU mask rather than one shard's.
fn spawn_successor(args: &[std::ffi::OsString]) {
    let Some(argv0) = args.first() else { return };
    let bin = if std::path::Path::new(argv0).components().count() > 1 {
        std::path::PathBuf::from(argv0)
    } else {
        std::env::current_exe().unwrap_or_else(|_| argv0.into())
    };
    let mut rest: Vec<&std::ffi::OsString> = args[1..]
        .iter()
        .filter(|a| a.to_str() != Some("--upgrade"))
        .collect();
    let upgrade = std::ffi::OsString::from("--upgrade");
    rest.push(&upgrade);
    eprintln!("percore: starting successor {}", bin.display());
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("\"$0\" \"$@\" </dev/null & exit 0")
        .arg(&bin)
        .args(rest)
        .status();
    if let Err(e) = status {
        eprintln!("percore: cannot start successor: {e}");
    }
}

/// Writes the pid file atomically (temporary file, then rename), so a reader never sees it empty.
pub fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}
