//! Shards: one pinned glommio `LocalExecutor` per selected CPU, each with its own engine, buffer
//! pool, arena pool and listening sockets, and a control inbox for the non-shard control thread.
//!
//! # Lifecycle
//! [`RuntimeBuilder::spawn`] resolves the CPUs, starts one thread per CPU named
//! `percore-shard-<i>`, builds the executor pinned to that CPU (`Placement::Fixed`) with glommio's
//! stall detector, builds the engine on that thread (a SINGLE_ISSUER ring must be), and runs the
//! caller's per-shard future. [`Runtime::wait`] joins them.
//!
//! # Failure
//! A panic in a shard ends the whole process with the panic message and exit status 101 (unless
//! `exit_on_panic(false)`, for embedding and tests, where [`Runtime::wait`] reports it): a server
//! with a dead shard would keep its listening socket in the SO_REUSEPORT group and black-hole that
//! share of new connections.
//!
//! # Control inbox
//! The control thread (signals, config reload, hot-restart handoff) is not a shard and cannot join
//! glommio's mesh, so each shard has an inbox: a std channel plus an eventfd that a shard task
//! awaits through glommio. Nothing on the request path touches it.

use std::{
    cell::Cell,
    fmt,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Once,
    },
    thread::JoinHandle,
    time::Duration,
};

use glommio::{LocalExecutorBuilder, Placement};

use crate::{
    buf::{ArenaPool, BufferPool, DEFAULT_BUFFER_SIZE, DEFAULT_POOL_KEEP},
    cpus::{allowed_cpus, CpuSelection},
    engine::{Engine, EngineConfig, IdleStrategy},
    error::{Error, Result},
    listener::{ListenerTable, ShardListener},
    sys,
    watchdog::Watchdog,
};

/// How long a shard may take to start (ring and buffer set-up takes milliseconds) before the
/// runtime fails to start, naming it.
pub const SHARD_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a starting shard may stay silent before it is kicked (see `RuntimeBuilder::spawn`).
const START_KICK: Duration = Duration::from_secs(1);
/// Default stall threshold: a task holding its shard longer than this is logged and counted.
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_millis(10);

/// How often a busy shard returns to glommio's own reactor (timers, mesh, foreign wake-ups).
/// glommio's default is 100 ms, which would delay every timer and mesh message that long under
/// load; one poll per millisecond costs a fraction of a percent.
pub const DEFAULT_PREEMPT_TIMER: Duration = Duration::from_millis(1);

/// Prefix of shard thread names; the panic hook recognises shards by it.
pub const SHARD_THREAD_PREFIX: &str = "percore-shard-";

/// Starts shards.
#[derive(Clone, Debug)]
pub struct RuntimeBuilder {
    cpus: CpuSelection,
    stall_threshold: Option<Duration>,
    preempt_timer: Duration,
    engine: EngineConfig,
    buffer_size: usize,
    arena_chunk: usize,
    exit_on_panic: bool,
}

impl Default for RuntimeBuilder {
    fn default() -> Self {
        RuntimeBuilder {
            cpus: CpuSelection::All,
            stall_threshold: Some(DEFAULT_STALL_THRESHOLD),
            preempt_timer: DEFAULT_PREEMPT_TIMER,
            engine: EngineConfig::default(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            arena_chunk: 4096,
            exit_on_panic: true,
        }
    }
}

impl RuntimeBuilder {
    /// Which CPUs get a shard (default: the process's affinity mask).
    pub fn cpus(mut self, cpus: CpuSelection) -> Self {
        self.cpus = cpus;
        self
    }
    /// Stall threshold, or `None` to turn the detector off.
    pub fn stall_threshold(mut self, t: Option<Duration>) -> Self {
        self.stall_threshold = t;
        self
    }
    /// How often a busy shard polls glommio's reactor (default [`DEFAULT_PREEMPT_TIMER`]).
    pub fn preempt_timer(mut self, t: Duration) -> Self {
        self.preempt_timer = t;
        self
    }
    /// Engine settings (ring size, receive buffers, idle strategy).
    pub fn engine(mut self, cfg: EngineConfig) -> Self {
        self.engine = cfg;
        self
    }
    /// Size of pooled write/reassembly buffers.
    pub fn buffer_size(mut self, size: usize) -> Self {
        self.buffer_size = size;
        self
    }
    /// Whether a shard panic ends the process (default true).
    pub fn exit_on_panic(mut self, yes: bool) -> Self {
        self.exit_on_panic = yes;
        self
    }

    /// The CPUs the shards would run on.
    pub fn resolve_cpus(&self) -> Result<Vec<usize>> {
        self.cpus.resolve(&allowed_cpus())
    }

    /// Starts one shard per CPU. `listeners` (possibly empty) is split among them; `f` runs on each
    /// shard thread with that shard's context and its future is the shard's main task.
    pub fn spawn<C, F, Fut>(self, listeners: Arc<ListenerTable>, f: F) -> Result<Runtime<C>>
    where
        C: Send + 'static,
        F: Fn(Shard<C>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        sys::check_system()?;
        // Before any thread of ours exists: see `sys::register_membarrier`.
        sys::register_membarrier();
        let cpus = self.resolve_cpus()?;
        if self.exit_on_panic {
            install_panic_hook();
        }
        let n = cpus.len();
        let f = Arc::new(f);
        let stalls = stall_counter();
        // Started without a stall threshold too: it also rescues stranded shards (see
        // `watchdog`).
        let watchdog = Arc::new(Watchdog::start(n, self.stall_threshold, stalls.clone()));
        let mut threads = Vec::with_capacity(n);
        let mut inboxes = Vec::with_capacity(n);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        for (id, &cpu) in cpus.iter().enumerate() {
            let (tx, rx) = mpsc::channel::<C>();
            let efd = sys::eventfd().map_err(|e| Error::Shard {
                shard: id,
                source: e,
            })?;
            let efd_raw = efd.as_raw_fd();
            inboxes.push(Inbox {
                tx,
                efd: Arc::new(efd),
            });
            let efd_dup = rustix_dup(efd_raw).map_err(|e| Error::Shard {
                shard: id,
                source: e,
            })?;
            let my_listeners = listeners.for_shard(id, n)?;
            let builder = self.clone();
            let f = f.clone();
            let stalls = stalls.clone();
            let watchdog = watchdog.clone();
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("{SHARD_THREAD_PREFIX}{id}"))
                .spawn(move || {
                    let mut exb = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                        .name(&format!("{SHARD_THREAD_PREFIX}{id}"));
                    // While the engine's driver has work it is always runnable, and glommio polls
                    // its own ring (timers, mesh channels, foreign wake-ups) only when the
                    // preemption timer fires: keep that short.
                    exb = exb.preempt_timer(builder.preempt_timer);
                    if let IdleStrategy::Spin(d) = builder.engine.idle {
                        exb = exb.spin_before_park(d);
                    }
                    // Stalls are watched by our own watchdog, not glommio's detector: that one
                    // costs two timerfd syscalls per task-queue switch (see `watchdog`).
                    let ex = match exb.make() {
                        Ok(ex) => ex,
                        Err(e) => {
                            let _ = ready.send(Err(Error::Shard {
                                shard: id,
                                source: std::io::Error::other(e.to_string()),
                            }));
                            return;
                        }
                    };
                    let wd = watchdog.clone();
                    ex.run(async move {
                        let pool = BufferPool::new(builder.buffer_size, DEFAULT_POOL_KEEP);
                        let engine = match Engine::new(builder.engine.clone(), pool) {
                            Ok(e) => e,
                            Err(e) => {
                                let _ = ready.send(Err(e));
                                return;
                            }
                        };
                        // Watched from here on: mapping and registering the engine's buffers
                        // takes ~10 ms of CPU once, which is set-up, not a stall.
                        wd.register(id);
                        glommio::spawn_local(engine.clone().drive()).detach();
                        let shard = Shard {
                            id,
                            count: n,
                            cpu,
                            engine,
                            arenas: ArenaPool::new(builder.arena_chunk),
                            listeners: Cell::new(Some(my_listeners)),
                            inbox: ControlRx {
                                rx,
                                efd: Some(efd_dup),
                            },
                            stalls,
                        };
                        let _ = ready.send(Ok(()));
                        drop(ready);
                        f(shard).await;
                    });
                    watchdog.unregister(id);
                })
                .map_err(|e| Error::Shard {
                    shard: id,
                    source: e,
                })?;
            threads.push(t);
            // One shard at a time: glommio numbers executors in creation order and orders mesh
            // peers by that number, so creating them in shard order makes peer id = shard id.
            // A shard that has not reported after a second is kicked with a signal: its thread
            // may be asleep in glommio with its first task queued (the race in `watchdog`, which
            // cannot rescue a shard before its engine attaches); the signal interrupts that
            // sleep, which glommio handles, and its run loop goes round again.
            let give_up = std::time::Instant::now() + SHARD_START_TIMEOUT;
            let started = loop {
                match ready_rx.recv_timeout(START_KICK) {
                    Ok(r) => break Some(r),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break None,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if std::time::Instant::now() >= give_up {
                            return Err(Error::Shard {
                                shard: id,
                                source: std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    format!(
                                        "did not start within {} s",
                                        SHARD_START_TIMEOUT.as_secs()
                                    ),
                                ),
                            });
                        }
                        if let Some(t) = threads.last() {
                            crate::watchdog::kick_thread(t);
                        }
                    }
                }
            };
            match started {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                // The shard died before reporting; wait() will say why.
                None => break,
            }
        }
        drop(ready_tx);
        Ok(Runtime {
            cpus,
            threads,
            inboxes,
            stalls,
            listeners,
            _watchdog: watchdog,
        })
    }
}

fn rustix_dup(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: `fd` is a live eventfd owned by the inbox for the whole call; we only duplicate it.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// Prints glommio's warnings on stderr.
struct WarnLogger;

impl log::Log for WarnLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        let msg = r.args().to_string();
        eprintln!("percore: {name}: {}: {msg}", r.target());
    }
    fn flush(&self) {}
}

/// Stalls detected in this process so far (all shards of all runtimes).
pub fn stalls_total() -> u64 {
    stall_counter().load(Ordering::Relaxed)
}

/// The process-wide stall counter (shared by all runtimes); installs the warning logger once.
fn stall_counter() -> Arc<AtomicU64> {
    static COUNT: std::sync::OnceLock<Arc<AtomicU64>> = std::sync::OnceLock::new();
    COUNT
        .get_or_init(|| {
            let count = Arc::new(AtomicU64::new(0));
            if log::set_boxed_logger(Box::new(WarnLogger)).is_ok() {
                log::set_max_level(log::LevelFilter::Warn);
            }
            count
        })
        .clone()
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let name = std::thread::current().name().unwrap_or("").to_owned();
            if let Some(id) = name.strip_prefix(SHARD_THREAD_PREFIX) {
                eprintln!("percore: shard {id} panicked; exiting (a server with a dead shard would drop its share of connections)");
                std::process::exit(101);
            }
        }));
    });
}

struct Inbox<C> {
    tx: mpsc::Sender<C>,
    /// Shared with every [`ControlHandle`]: making a handle allocates no descriptor, so it
    /// cannot fail when the process is out of them.
    efd: Arc<OwnedFd>,
}

/// The running shards, seen from the control thread.
pub struct Runtime<C> {
    cpus: Vec<usize>,
    threads: Vec<JoinHandle<()>>,
    inboxes: Vec<Inbox<C>>,
    stalls: Arc<AtomicU64>,
    listeners: Arc<ListenerTable>,
    /// Lives until the runtime and every shard thread are gone.
    _watchdog: Arc<Watchdog>,
}

impl<C> fmt::Debug for Runtime<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime").field("cpus", &self.cpus).finish()
    }
}

impl<C: Send + 'static> Runtime<C> {
    /// The CPUs, index = shard id.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.cpus.len()
    }

    /// Stalls detected so far, all shards.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// The listener table (kept open for a hot-restart handoff).
    pub fn listeners(&self) -> &Arc<ListenerTable> {
        &self.listeners
    }

    /// Sends a control message to one shard. Fails if that shard has exited.
    pub fn send(&self, shard: usize, msg: C) -> Result<()> {
        let inbox = self
            .inboxes
            .get(shard)
            .ok_or_else(|| Error::Mesh(format!("no shard {shard}")))?;
        inbox
            .tx
            .send(msg)
            .map_err(|_| Error::Mesh(format!("shard {shard} has exited")))?;
        sys::eventfd_signal(inbox.efd.as_raw_fd());
        Ok(())
    }

    /// Sends a copy of a control message to every shard.
    pub fn broadcast(&self, msg: C) -> Result<()>
    where
        C: Clone,
    {
        for i in 0..self.inboxes.len() {
            self.send(i, msg.clone())?;
        }
        Ok(())
    }

    /// A cloneable handle that can send control messages from other threads (signal handlers'
    /// threads, the config watcher).
    pub fn control(&self) -> ControlHandle<C> {
        ControlHandle {
            inner: Arc::new(
                self.inboxes
                    .iter()
                    .map(|i| (i.tx.clone(), i.efd.clone()))
                    .collect(),
            ),
        }
    }

    /// Waits for every shard to finish. A shard that panicked (with `exit_on_panic(false)`) is
    /// reported as [`Error::ShardPanicked`].
    pub fn wait(self) -> Result<()> {
        let mut first = Ok(());
        for (shard, t) in self.threads.into_iter().enumerate() {
            if let Err(payload) = t.join() {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                if first.is_ok() {
                    first = Err(Error::ShardPanicked { shard, message });
                }
            }
        }
        first
    }
}

/// Sends control messages to shards from any thread.
pub struct ControlHandle<C> {
    inner: Arc<Vec<(mpsc::Sender<C>, Arc<OwnedFd>)>>,
}

impl<C> Clone for ControlHandle<C> {
    fn clone(&self) -> Self {
        ControlHandle {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Send> ControlHandle<C> {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.len()
    }
    /// Sends to one shard.
    pub fn send(&self, shard: usize, msg: C) -> Result<()> {
        let (tx, efd) = self
            .inner
            .get(shard)
            .ok_or_else(|| Error::Mesh(format!("no shard {shard}")))?;
        tx.send(msg)
            .map_err(|_| Error::Mesh(format!("shard {shard} has exited")))?;
        sys::eventfd_signal(efd.as_raw_fd());
        Ok(())
    }
    /// Sends a copy to every shard.
    pub fn broadcast(&self, msg: C) -> Result<()>
    where
        C: Clone,
    {
        for i in 0..self.inner.len() {
            self.send(i, msg.clone())?;
        }
        Ok(())
    }
}

/// A shard's control inbox.
pub struct ControlRx<C> {
    rx: mpsc::Receiver<C>,
    efd: Option<OwnedFd>,
}

impl<C> ControlRx<C> {
    /// Runs `handle` for every control message until the runtime's handles are all dropped.
    /// Spawn it as a task on the shard.
    pub async fn run(mut self, mut handle: impl FnMut(C)) {
        let Some(efd) = self.efd.take() else { return };
        // SAFETY: `efd` is our own duplicate of the inbox eventfd; the file takes ownership.
        let file = unsafe { glommio::io::BufferedFile::from_raw_fd(efd.into_raw_fd()) };
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(msg) => handle(msg),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        let _ = file.close().await;
                        return;
                    }
                }
            }
            if file.read_at(0, 8).await.is_err() {
                return;
            }
        }
    }
}

/// One shard's context, handed to the per-shard future.
pub struct Shard<C> {
    /// Shard index, 0-based.
    pub id: usize,
    /// Number of shards.
    pub count: usize,
    /// The CPU this shard is pinned to.
    pub cpu: usize,
    /// The shard's socket engine.
    pub engine: Engine,
    /// Per-request arenas.
    pub arenas: ArenaPool,
    listeners: Cell<Option<Vec<ShardListener>>>,
    inbox: ControlRx<C>,
    stalls: Arc<AtomicU64>,
}

impl<C> Shard<C> {
    /// This shard's listening sockets (taken once).
    pub fn take_listeners(&self) -> Vec<ShardListener> {
        self.listeners.take().unwrap_or_default()
    }

    /// The control inbox; spawn [`ControlRx::run`] to handle messages.
    pub fn take_inbox(&mut self) -> ControlRx<C> {
        ControlRx {
            rx: std::mem::replace(&mut self.inbox.rx, mpsc::channel().1),
            efd: self.inbox.efd.take(),
        }
    }

    /// Stalls detected so far on all shards.
    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control handle is made after start-up too (the server makes its own once it serves),
    /// when clients may have taken every descriptor: making one must not need a new one. It
    /// used to duplicate each inbox's eventfd and panic on EMFILE, killing the server.
    #[test]
    fn control_handles_share_the_inbox_eventfds() {
        let rt = RuntimeBuilder::default()
            .cpus(CpuSelection::Count(1))
            .spawn(
                Arc::new(ListenerTable::default()),
                |_shard: Shard<()>| async {},
            )
            .unwrap();
        let (a, b) = (rt.control(), rt.control());
        assert!(Arc::ptr_eq(&a.inner[0].1, &rt.inboxes[0].efd));
        assert!(Arc::ptr_eq(&b.inner[0].1, &rt.inboxes[0].efd));
        drop((a, b));
        rt.wait().unwrap();
    }
}
