//! `percore serve`: bind the listeners, start one shard per CPU with the HTTP service, and run
//! until a signal says to stop.
//!
//! The lifecycle: Setup (parse, check the system) → Bootstrap (bind, start shards) → Running →
//! Draining (SIGTERM/SIGINT: stop accepting, `/readyz` answers 503, idle connections close,
//! in-flight requests finish until the drain deadline) → Stopped (exit 0). A second SIGINT exits
//! at once.

use std::{
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use percore_runtime::{
    ControlHandle, EngineConfig, IdleStrategy, MeshConfig, Runtime, RuntimeBuilder,
    cpus::{CpuSelection, format_cpu_list},
    listener::{DEFAULT_BACKLOG, ListenerTable},
    probe::Probed,
};

use crate::{
    app::App,
    builtin,
    cli::ServeArgs,
    config::ServerConfig,
    kv::{Kv, MutexKv, ShardMsg},
    router::RouterBuilder,
};

/// Default address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default drain deadline.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Messages from the control thread to the shards.
#[derive(Clone, Debug)]
pub enum Control {
    /// Stop accepting and drain until the deadline, then end the shard.
    Drain { deadline: Instant },
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
}

/// Builds a shard's routes. Called once on every shard, so handlers may hold shard-local state.
pub type RouteFactory = Arc<dyn Fn(&ShardContext) -> RouterBuilder + Send + Sync>;

/// The built-in routes of the embedded default config.
pub fn builtin_routes() -> RouteFactory {
    Arc::new(|cx: &ShardContext| {
        builtin::routes(
            RouterBuilder::new(),
            cx.kv.clone(),
            cx.mutex_kv.clone(),
            cx.engine.clone(),
        )
    })
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
    /// Drain deadline on SIGTERM.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            routes: builtin_routes(),
            listen: vec![DEFAULT_LISTEN.parse().expect("valid default")],
            cpus: CpuSelection::All,
            idle: IdleStrategy::Park,
            config: ServerConfig::default(),
            drain_timeout: DRAIN_TIMEOUT,
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
    /// Starts a drain on every shard.
    pub fn drain(&self, timeout: Duration) {
        let _ = self.rt.broadcast(Control::Drain {
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
    let engine = EngineConfig {
        idle: opts.idle,
        ..EngineConfig::default()
    };
    let builder = RuntimeBuilder::default()
        .cpus(opts.cpus.clone())
        .engine(engine);
    let cpus = builder.resolve_cpus()?;
    let table = Arc::new(ListenerTable::bind(&opts.listen, &cpus, DEFAULT_BACKLOG)?);
    let addrs = table.local_addrs();
    let mesh_cfg = MeshConfig::<ShardMsg>::new(cpus.len(), percore_runtime::mesh::DEFAULT_QUEUE);
    let mutex_kv = MutexKv::default();
    let config = opts.config.clone();
    let routes = opts.routes.clone();
    let rt = builder.spawn(table, move |mut shard: percore_runtime::Shard<Control>| {
        let mesh_cfg = mesh_cfg.clone();
        let mutex_kv = mutex_kv.clone();
        let config = Rc::new(config.clone());
        let routes = routes.clone();
        async move {
            let id = shard.id;
            let kv = Kv::new(id, shard.count);
            let kv2 = kv.clone();
            match mesh_cfg.join(id, move |_from, m| kv2.handle(m)).await {
                Ok(mesh) => kv.set_mesh(mesh),
                Err(e) => panic!("shard {id}: {e}"),
            }
            let cx = ShardContext { shard: id, shards: shard.count, engine: shard.engine.clone(), kv, mutex_kv };
            let router = match (routes)(&cx).build() {
                Ok(r) => Rc::new(r),
                Err(e) => panic!("shard {id}: {e}"),
            };
            let app = App::new(id, shard.count, shard.engine.clone(), shard.arenas.clone(), config, router);
            app.start_clock();
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
            glommio::spawn_local(shard.take_inbox().run(move |msg| match msg {
                Control::Drain { deadline } => {
                    // Keep accepting while draining: new connections are answered with
                    // `Connection: close` and `/readyz` says 503, so a load balancer that has
                    // not noticed yet gets answers, not a full accept queue.
                    let engine = engine.clone();
                    let done = done_tx.clone();
                    let acceptors = acceptors.clone();
                    glommio::spawn_local(async move {
                        let r = engine.drain(&[], deadline).await;
                        for a in &acceptors {
                            a.stop();
                        }
                        if r.force_closed > 0 {
                            eprintln!(
                                "percore: shard {id}: drain deadline passed, force-closed {} of {} connections",
                                r.force_closed, r.open_at_start
                            );
                        }
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

/// Runs `percore serve` in the foreground until drained.
pub fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = ServeOptions {
        cpus: args.cpu_selection()?,
        ..ServeOptions::default()
    };
    if !args.listen.is_empty() {
        opts.listen = args.listen.clone();
    }
    if args.idle_spin_us > 0 {
        opts.idle = IdleStrategy::Spin(Duration::from_micros(args.idle_spin_us));
    }
    opts.drain_timeout = Duration::from_secs(args.drain_timeout);
    if let Some(t) = args.header_timeout {
        opts.config.header_timeout = t;
    }
    if let Some(t) = args.keepalive_timeout {
        opts.config.keepalive_timeout = t;
    }
    if let Some(t) = args.body_timeout {
        opts.config.body_timeout = t;
    }
    let drain_timeout = opts.drain_timeout;
    // Block the signals we handle before any thread starts, so they reach the signal thread only.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    let server = start(opts)?;
    let mut cpus = server.cpus().to_vec();
    cpus.sort_unstable();
    for addr in server.addrs() {
        println!(
            "percore: listening on http://{addr} ({} shard{} on cpus {})",
            cpus.len(),
            if cpus.len() == 1 { "" } else { "s" },
            format_cpu_list(&cpus)
        );
    }
    if let Some(p) = &args.pid_file {
        write_pid_file(p)?;
    }
    let ctl = server.control();
    std::thread::Builder::new()
        .name("percore-signals".into())
        .spawn(move || {
            let mut draining = false;
            for sig in signals.forever() {
                if draining {
                    if sig == signal_hook::consts::SIGINT {
                        eprintln!("percore: second interrupt, exiting now");
                        std::process::exit(130);
                    }
                    continue;
                }
                draining = true;
                eprintln!("percore: draining (deadline {}s)", drain_timeout.as_secs());
                let _ = ctl.broadcast(Control::Drain {
                    deadline: Instant::now() + drain_timeout,
                });
            }
        })?;
    server.wait()?;
    eprintln!("percore: stopped");
    Ok(())
}

/// Writes the pid file atomically (temporary file, then rename), so a reader never sees it empty.
pub fn write_pid_file(path: &std::path::Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}
