//! The stall watchdog: reports a shard that runs on its CPU for longer than a threshold without
//! reaching a scheduling point.
//!
//! glommio's own stall detector arms and disarms a timerfd around every task-queue activation:
//! two syscalls each time the engine's driver yields to the connection tasks, which measured as
//! 7 % of a shard's CPU time at 130k requests/s (`perf`, `timerfd_settime`). This one costs the
//! shard nothing but a relaxed counter store per driver turn ([`beat`]):
//!
//! - one watchdog thread per runtime wakes every `threshold / 2` and reads, for each shard, the
//!   beat counter and the shard thread's CPU clock (`pthread_getcpuclockid`); while every shard
//!   sleeps it wakes only every [`IDLE_TICK`] (an idle server is not woken 200 times a second; a
//!   stall that begins then is reported up to that much later);
//! - a shard whose counter has not moved while its thread consumed `threshold` of CPU time is
//!   stalled: a task is holding it (a shard that sleeps in its reactor consumes no CPU, so an idle
//!   shard is never reported);
//! - the report is one line on stderr with the shard and how long it has run, followed by the
//!   stalled thread's backtrace, captured by a `SIGUSR1` handler on that thread and symbolised on
//!   the watchdog thread; the stall counter ([`crate::shard::stalls_total`]) counts it once per
//!   stall, not once per tick. A shard is reported at most once per `REPORT_EVERY` (10 s); the
//!   stalls in between are counted, and the next report says how many.
//!
//! Tasks beat through [`beat`]; the engine's driver does on every turn, so under network load a
//! shard beats every few microseconds.
//!
//! # Rescuing a stranded shard
//! The same thread also works around a scheduling race in glommio 0.9. Its executor's
//! `run_task_queues` checks the preemption timer before it runs anything, and returns "nothing
//! ran" when the timer has already fired; the run loop then parks in the reactor although tasks
//! are queued. That happens when the shard thread is descheduled for a whole preemption period
//! (1 ms by default) right after the reactor armed the timer: on an oversubscribed or virtual
//! CPU. The queued tasks then wait for the next glommio event (a timer, a channel message), and
//! none may come: the engine's socket completions reach glommio only while its driver is parked,
//! and a stranded driver is not. Seen as the engine echo test hanging (64 client threads on 2
//! CPUs) and as reloads timing out in the e2e tests, once the engine's ticker stopped ticking on
//! an idle shard (an experiment, not kept).
//!
//! The engine tells the watchdog what to look at ([`attach_engine`]):
//! - whether its driver is *active* ([`set_active`]): not parked, so it runs, naps in its own
//!   ring for at most a few milliseconds, or waits in glommio's queue. An active driver beats at
//!   least once a nap, so a shard whose driver is active, whose beat has not moved for a whole
//!   watchdog tick and whose thread has hardly run is stranded (5 to 10 ms by default).
//!   glommio marks the driver active as it wakes it from a park, so a driver stranded right after
//!   its park ended counts too.
//! - its ticker's progress ([`tick`]): the ticker's timer fires every `timer_tick` (50 ms) even
//!   on an idle shard, so a shard whose ticker has not ticked for three of those while its
//!   thread sleeps is stranded whatever task is queued (a control message's, a timer's).
//!
//! The watchdog then wakes the driver from its own thread, which writes glommio's eventfd and
//! gets the executor to run its queues, and counts it ([`rescues_total`]). A rescue that was not
//! needed (a shard thread that was runnable but not running) costs one spurious wake-up.
//!
//! # Giving memory back after a burst
//! A request that buffers a large body leaves its arena (and maybe a response buffer) too large
//! for the shard's pools, which free it ([`crate::buf::ARENA_KEEP_BYTES`]); glibc keeps freed
//! memory in its heaps, so a burst of large uploads used to pin its peak RSS for good (250 to
//! 540 MB after 200 concurrent 1 MB echoes, depending on the clients' pace, with no connection
//! open; 25 MB before the burst). The pools count those frees and
//! the watchdog thread, once at least `TRIM_AFTER` bytes were freed that way and none for
//! `TRIM_QUIET`, asks the allocator to give free memory back ([`crate::sys::trim_heap`]), off
//! the shards' threads and never while large requests keep coming ([`heap_trims_total`]).
//!
//! Before its engine attaches a shard has no waker to hand over, and its executor can strand its
//! very first task the same way (seen once: an engine test waited 9 minutes for a shard to
//! start). `RuntimeBuilder::spawn` therefore kicks a shard that has not reported ready after a
//! second with the trace signal, which interrupts glommio's sleep (glommio treats the EINTR as a
//! wake-up), and gives up after `SHARD_START_TIMEOUT`.

use std::{
    cell::OnceCell,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Once,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Frames kept from a stalled thread's stack.
const MAX_FRAMES: usize = 48;

/// The signal that asks a stalled shard thread for its backtrace (glommio used the same one).
const TRACE_SIGNAL: libc::c_int = libc::SIGUSR1;

/// What the watchdog knows about one shard.
pub(crate) struct Slot {
    shard: usize,
    beat: AtomicU64,
    /// Kernel thread id of the shard thread (for `tgkill`).
    tid: AtomicU64,
    /// Its CPU-time clock id (`pthread_getcpuclockid`).
    clock: AtomicU64,
    registered: AtomicBool,
    /// Return addresses captured by the signal handler; `frames_len` is written last.
    frames: [AtomicUsize; MAX_FRAMES],
    frames_len: AtomicUsize,
    trace_wanted: AtomicBool,
    /// The shard's engine driver is not parked (see the module doc).
    active: AtomicBool,
    /// Times the shard's engine ticker ticked.
    ticks: AtomicU64,
    /// The ticker's period in microseconds; 0 while no engine is attached.
    tick_us: AtomicU64,
    /// Wakes the shard's engine driver from another thread.
    rescue: std::sync::Mutex<Option<std::task::Waker>>,
}

impl Slot {
    fn new(shard: usize) -> Slot {
        Slot {
            shard,
            beat: AtomicU64::new(0),
            tid: AtomicU64::new(0),
            clock: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            frames: std::array::from_fn(|_| AtomicUsize::new(0)),
            frames_len: AtomicUsize::new(0),
            trace_wanted: AtomicBool::new(false),
            active: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            tick_us: AtomicU64::new(0),
            rescue: std::sync::Mutex::new(None),
        }
    }
}

thread_local! {
    static CURRENT: OnceCell<Arc<Slot>> = const { OnceCell::new() };
}

/// Records progress of the calling shard: the watchdog reports a shard only while its beat stands
/// still. A relaxed load and store on the shard's own counter; a no-op off a watched shard.
#[inline]
pub fn beat() {
    CURRENT.with(|c| {
        if let Some(s) = c.get() {
            s.beat.store(
                s.beat.load(Ordering::Relaxed).wrapping_add(1),
                Ordering::Relaxed,
            );
        }
    });
}

/// Marks the calling shard's engine driver active (not parked) or parked; a no-op off a watched
/// shard. The driver calls it around each park.
#[inline]
pub fn set_active(active: bool) {
    CURRENT.with(|c| {
        if let Some(s) = c.get() {
            s.active.store(active, Ordering::Release);
        }
    });
}

/// Records a tick of the calling shard's engine ticker; a no-op off a watched shard.
#[inline]
pub fn tick() {
    CURRENT.with(|c| {
        if let Some(s) = c.get() {
            s.ticks.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Attaches the calling shard's engine: the watchdog wakes `driver` when the shard looks
/// stranded, judging by [`set_active`] and by [`tick`]s expected every `tick_period`.
pub fn attach_engine(driver: &std::task::Waker, tick_period: Duration) {
    CURRENT.with(|c| {
        if let Some(s) = c.get() {
            if let Ok(mut r) = s.rescue.lock() {
                *r = Some(driver.clone());
            }
            let us = tick_period.as_micros().clamp(1, u64::MAX as u128) as u64;
            s.tick_us.store(us, Ordering::Release);
        }
    });
}

/// Detaches the calling shard's engine (its driver is stopping).
pub fn detach_engine() {
    CURRENT.with(|c| {
        if let Some(s) = c.get() {
            detach(s);
        }
    });
}

fn detach(s: &Slot) {
    s.active.store(false, Ordering::Release);
    s.tick_us.store(0, Ordering::Release);
    if let Ok(mut r) = s.rescue.lock() {
        *r = None;
    }
}

/// Interrupts whatever blocking wait the thread is in (glommio's sleep handles the EINTR and
/// looks at its queues again) by sending it the trace signal, whose handler does nothing unless
/// the watchdog asked that thread for a backtrace. Counted as a rescue.
pub(crate) fn kick_thread<T>(t: &JoinHandle<T>) {
    use std::os::unix::thread::JoinHandleExt;
    // SAFETY: the thread has not been joined (we hold its handle), so its pthread_t is valid;
    // the signal's handler is installed (`Watchdog::start`) and async-signal-safe.
    let r = unsafe { libc::pthread_kill(t.as_pthread_t(), TRACE_SIGNAL) };
    if r == 0 {
        RESCUES.fetch_add(1, Ordering::Relaxed);
    }
}

static RESCUES: AtomicU64 = AtomicU64::new(0);
static TRIMS: AtomicU64 = AtomicU64::new(0);

/// Times the heap was trimmed after a burst of large requests, in this process (see the module
/// doc).
pub fn heap_trims_total() -> u64 {
    TRIMS.load(Ordering::Relaxed)
}

/// The heap is trimmed once at least this many bytes were freed in large blocks...
const TRIM_AFTER: usize = 8 << 20;
/// ...and none for this long: a steady stream of large requests would only fault the memory in
/// again (with every large block unmapped on free, 1 MB echoes ran at half the rate).
const TRIM_QUIET: Duration = Duration::from_secs(1);

/// What the watchdog saw of the large frees (see the module doc).
#[derive(Default)]
struct Reclaim {
    freed: usize,
    changed: Option<std::time::Instant>,
}

impl Reclaim {
    fn tick(&mut self, now: std::time::Instant) {
        let freed = crate::buf::large_freed();
        if freed != self.freed {
            self.freed = freed;
            self.changed = Some(now);
            return;
        }
        let quiet = self
            .changed
            .is_some_and(|t| now.duration_since(t) >= TRIM_QUIET);
        if freed >= TRIM_AFTER && quiet {
            crate::sys::trim_heap();
            crate::buf::take_large_freed(freed);
            self.freed = crate::buf::large_freed();
            self.changed = Some(now);
            TRIMS.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Times a watchdog woke a stranded shard, in this process (see the module doc).
pub fn rescues_total() -> u64 {
    RESCUES.load(Ordering::Relaxed)
}

/// The watchdog's tick when it only rescues (no stall threshold).
const RESCUE_TICK: Duration = Duration::from_millis(5);

/// The watchdog of one runtime; stops its thread when dropped.
pub(crate) struct Watchdog {
    slots: Arc<[Arc<Slot>]>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts the watchdog thread for `shards` shards; it reports stalls only with a `threshold`.
    pub(crate) fn start(
        shards: usize,
        threshold: Option<Duration>,
        stalls: Arc<AtomicU64>,
    ) -> Watchdog {
        // Also the handler that makes `kick_thread` harmless.
        install_trace_handler();
        let slots: Arc<[Arc<Slot>]> = (0..shards).map(|i| Arc::new(Slot::new(i))).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let slots = slots.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("percore-watchdog".into())
                .spawn(move || watch(&slots, threshold, &stop, &stalls))
                .ok()
        };
        Watchdog {
            slots,
            stop,
            thread,
        }
    }

    /// Makes the calling thread shard `shard` of this watchdog. Call on the shard's thread.
    pub(crate) fn register(&self, shard: usize) {
        let slot = self.slots[shard].clone();
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let mut clock: libc::clockid_t = 0;
        // SAFETY: `me` is the calling thread, alive; `clock` is a valid out-pointer.
        if unsafe { libc::pthread_getcpuclockid(me, &mut clock) } != 0 {
            return; // no CPU clock: this shard goes unwatched rather than falsely reported
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        slot.tid.store(tid as u64, Ordering::Relaxed);
        slot.clock.store(clock as u32 as u64, Ordering::Relaxed);
        slot.registered.store(true, Ordering::Release);
        CURRENT.with(|c| {
            let _ = c.set(slot);
        });
    }

    /// Stops watching shard `shard` (its thread is about to exit).
    pub(crate) fn unregister(&self, shard: usize) {
        let slot = &self.slots[shard];
        slot.registered.store(false, Ordering::Release);
        detach(slot);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Per-shard view kept by the watchdog thread.
#[derive(Clone, Copy, Default)]
struct Seen {
    beat: u64,
    cpu: Duration,
    /// CPU time consumed since the beat last moved.
    still: Duration,
    reported: bool,
    /// When the watchdog first saw the shard registered.
    since: Option<std::time::Instant>,
    /// The ticker's count, and when the watchdog saw it move.
    ticks: u64,
    ticked: Option<std::time::Instant>,
    /// Stall reports: at most one per `REPORT_EVERY`.
    reports: Throttle,
}

/// Lets a repeated report out at most once per period, and counts the ones it holds back (for
/// the next report to mention): stall reports here, failed accepts in the engine.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Throttle {
    last: Option<std::time::Instant>,
    held: u64,
}

impl Throttle {
    /// `Some(held back since the last one)` when a report may go out now, else `None` (and
    /// this one is counted as held back).
    pub(crate) fn admit(&mut self, now: std::time::Instant, every: Duration) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < every) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// At most one stall report (a headline and a backtrace, ~60 lines) per shard in this long:
/// a shard that stalls again and again (large copies under load) would flood the log. The
/// stalls in between are counted, and the next report says how many.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// A shard is not reported during its first second: its first reactor passes submit glommio's
/// start-up work (one `io_uring_enter` was seen taking 10 ms of CPU), which is set-up, not a
/// stall.
const START_GRACE: Duration = Duration::from_secs(1);

/// The watchdog's tick while every shard is idle.
pub const IDLE_TICK: Duration = Duration::from_millis(50);

fn watch(slots: &[Arc<Slot>], threshold: Option<Duration>, stop: &AtomicBool, stalls: &AtomicU64) {
    // Half the threshold: a stall is reported 1 to 1.5 thresholds in, and the thread wakes 200
    // times a second at the default 10 ms (it shares the CPU of a pinned shard).
    let tick = threshold
        .map_or(RESCUE_TICK, |t| t / 2)
        .max(Duration::from_millis(1));
    let mut seen = vec![Seen::default(); slots.len()];
    let mut reclaim = Reclaim::default();
    let mut last = std::time::Instant::now();
    let mut next = tick;
    while !stop.load(Ordering::Relaxed) {
        std::thread::park_timeout(next);
        // Back to the short tick as soon as any shard used a noticeable share of its CPU.
        let mut busy = false;
        let now = std::time::Instant::now();
        let wall = now - last;
        last = now;
        for (slot, seen) in slots.iter().zip(seen.iter_mut()) {
            if !slot.registered.load(Ordering::Acquire) {
                continue;
            }
            let Some(cpu) =
                crate::sys::cpu_clock(slot.clock.load(Ordering::Relaxed) as libc::clockid_t)
            else {
                continue; // the thread exited
            };
            let beat = slot.beat.load(Ordering::Relaxed);
            let ran = cpu.saturating_sub(seen.cpu);
            seen.cpu = cpu;
            let active = slot.active.load(Ordering::Acquire);
            busy |= ran * 16 >= wall || active;
            // The thread slept for most of this tick. A quarter, not a half, so that a stall on
            // a CPU shared with other processes still counts as running.
            let slept = ran * 4 < wall;
            if stranded(slot, seen, now, beat, slept && wall >= tick, active) {
                if let Ok(r) = slot.rescue.lock() {
                    if let Some(w) = r.as_ref() {
                        w.wake_by_ref();
                        RESCUES.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let Some(threshold) = threshold else {
                seen.beat = beat;
                continue;
            };
            if now.duration_since(*seen.since.get_or_insert(now)) < START_GRACE {
                seen.beat = beat;
                continue;
            }
            if beat != seen.beat {
                seen.beat = beat;
                seen.still = Duration::ZERO;
                seen.reported = false;
                continue;
            }
            // A stall holds the CPU: a thread that slept for most of this tick (an idle shard
            // woken by a timer, glommio's bounded spin before parking) starts over.
            if slept {
                seen.still = Duration::ZERO;
                seen.reported = false;
                continue;
            }
            seen.still += ran;
            if seen.still >= threshold && !seen.reported {
                seen.reported = true;
                if let Some(unreported) = seen.reports.admit(now, REPORT_EVERY) {
                    report(slot, seen.still, unreported);
                }
                // Counted once the report is out (tests wait on the counter).
                stalls.fetch_add(1, Ordering::Relaxed);
            }
        }
        reclaim.tick(now);
        next = if busy { tick } else { IDLE_TICK.max(tick) };
    }
}

/// Whether a shard looks stranded (see the module doc): its thread hardly ran this tick
/// (`asleep`), and either its active driver has not beaten since the last tick, or its ticker has
/// not ticked for three periods.
fn stranded(
    slot: &Slot,
    seen: &mut Seen,
    now: std::time::Instant,
    beat: u64,
    asleep: bool,
    active: bool,
) -> bool {
    let ticks = slot.ticks.load(Ordering::Relaxed);
    let period = Duration::from_micros(slot.tick_us.load(Ordering::Acquire));
    if ticks != seen.ticks || seen.ticked.is_none() || period.is_zero() {
        seen.ticks = ticks;
        seen.ticked = Some(now);
    }
    if !asleep {
        return false;
    }
    let late = !period.is_zero() && seen.ticked.is_some_and(|t| now - t >= period * 3);
    if late {
        // One wake per three periods while it stays late.
        seen.ticked = Some(now);
    }
    (active && beat == seen.beat) || late
}

/// Prints one stall: the headline, then the stalled thread's stack as far as it can be captured.
fn report(slot: &Slot, ran: Duration, unreported: u64) {
    let also = if unreported > 0 {
        format!(" ({unreported} more stalls since the last report, not shown)")
    } else {
        String::new()
    };
    let mut out = format!(
        "percore: {}{} stalled: a task has held the shard for {} ms of CPU without yielding{also}\n",
        crate::shard::SHARD_THREAD_PREFIX,
        slot.shard,
        ran.as_millis()
    );
    slot.frames_len.store(0, Ordering::Relaxed);
    slot.trace_wanted.store(true, Ordering::Release);
    let tid = slot.tid.load(Ordering::Relaxed) as libc::pid_t;
    // SAFETY: tgkill takes plain integers; a thread of this process that exited meanwhile makes
    // it fail (ESRCH), and any other thread of ours that receives the signal ignores it (the
    // handler acts only on a thread whose slot asked for a trace).
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, TRACE_SIGNAL) } == 0;
    let mut frames = 0;
    if sent {
        // The handler runs as soon as the thread is scheduled; give it a moment.
        for _ in 0..50 {
            frames = slot.frames_len.load(Ordering::Acquire);
            if frames > 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    slot.trace_wanted.store(false, Ordering::Relaxed);
    if frames == 0 {
        out.push_str("  (no backtrace: the thread did not answer)\n");
    }
    // One line per function, inlined ones included (as Rust's own backtraces print them).
    let mut lines: Vec<(String, String)> = Vec::new();
    for f in &slot.frames[..frames] {
        let ip = f.load(Ordering::Relaxed);
        let before = lines.len();
        backtrace::resolve(ip as *mut libc::c_void, |sym| {
            let name = sym
                .name()
                .map(|n| format!("{n:#}"))
                .unwrap_or_else(|| format!("{ip:#x}"));
            let at = match (sym.filename(), sym.lineno()) {
                (Some(file), Some(n)) => format!("\n        at {}:{n}", file.display()),
                _ => String::new(),
            };
            lines.push((name, at));
        });
        if lines.len() == before {
            lines.push((format!("{ip:#x}"), String::new()));
        }
    }
    // The stalled code starts after the signal handler and the kernel's signal trampoline.
    let skip = lines
        .iter()
        .position(|(name, _)| name.starts_with("signal_hook_registry::handler"))
        .map_or(0, |i| i + 2);
    for (i, (name, at)) in lines.iter().enumerate().skip(skip) {
        out.push_str(&format!("  {:2}: {name}{at}\n", i - skip));
    }
    eprint!("{out}");
}

/// Installs the process-wide handler that captures a stalled shard's stack.
fn install_trace_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: the handler only reads a thread-local that the shard initialised before it
        // could be signalled, walks the stack without allocating (`trace_unsynchronized`, the
        // same capture glommio's detector made from its handler) and stores integers into
        // atomics. It is a no-op on a thread that has no slot or was not asked.
        let r = unsafe { signal_hook::low_level::register(TRACE_SIGNAL, capture_trace) };
        if let Err(e) = r {
            eprintln!("percore: stall watchdog: no backtraces ({e})");
        }
    });
}

fn capture_trace() {
    let _ = CURRENT.try_with(|c| {
        let Some(slot) = c.get() else { return };
        if !slot.trace_wanted.load(Ordering::Acquire) {
            return;
        }
        let mut n = 0;
        // SAFETY: we are on the stalled thread itself, inside a signal handler; no other code on
        // this thread is walking its stack concurrently (it was running a task when signalled).
        unsafe {
            backtrace::trace_unsynchronized(|frame| {
                slot.frames[n].store(frame.ip() as usize, Ordering::Relaxed);
                n += 1;
                n < MAX_FRAMES
            });
        }
        slot.frames_len.store(n, Ordering::Release);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_burning_cpu_without_beating_is_reported_once_and_a_sleeping_one_never() {
        let stalls = Arc::new(AtomicU64::new(0));
        let wd = Arc::new(Watchdog::start(
            2,
            Some(Duration::from_millis(20)),
            stalls.clone(),
        ));
        let (tx, rx) = std::sync::mpsc::channel();
        // Shard 0 sleeps (an idle shard parked in its reactor): never a stall.
        let sleeper = {
            let wd = wd.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                wd.register(0);
                tx.send(()).unwrap();
                std::thread::park_timeout(Duration::from_millis(300));
            })
        };
        // Shard 1 burns CPU without beating until the watchdog has counted it.
        let burner = {
            let wd = wd.clone();
            let stalls = stalls.clone();
            std::thread::spawn(move || {
                wd.register(1);
                tx.send(()).unwrap();
                let mut x = 0u64;
                let give_up = std::time::Instant::now() + Duration::from_secs(20);
                while stalls.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < give_up {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                // Keep burning a little longer: a second report for the same stall would show.
                let cpu0 = crate::sys::thread_cpu();
                while crate::sys::thread_cpu() - cpu0 < Duration::from_millis(100) {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                beat();
            })
        };
        rx.recv().unwrap();
        rx.recv().unwrap();
        burner.join().unwrap();
        sleeper.join().unwrap();
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_kick_interrupts_a_blocking_wait_and_does_no_harm() {
        // Installs the handler, as every runtime does before it kicks a shard.
        let _wd = Watchdog::start(1, None, Arc::new(AtomicU64::new(0)));
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send(()).unwrap();
            // SAFETY: pause has no preconditions; it returns once a handled signal arrives.
            unsafe { libc::pause() };
        });
        rx.recv().unwrap();
        // The thread may not have reached pause() yet: kick until it returns.
        while !t.is_finished() {
            kick_thread(&t);
            std::thread::yield_now();
        }
        t.join().unwrap();
    }

    /// Counts wake-ups and passes them on to a channel.
    struct Probe {
        shard: usize,
        woken: AtomicU64,
        tx: std::sync::Mutex<std::sync::mpsc::Sender<usize>>,
    }

    impl std::task::Wake for Probe {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.woken.fetch_add(1, Ordering::Relaxed);
            let _ = self.tx.lock().unwrap().send(self.shard);
        }
    }

    #[test]
    fn stranded_shards_are_woken_and_a_parked_one_is_not() {
        let wd = Arc::new(Watchdog::start(3, None, Arc::new(AtomicU64::new(0))));
        let (rescued_tx, rescued) = std::sync::mpsc::channel();
        let probe = |tx: std::sync::mpsc::Sender<usize>, shard: usize| {
            Arc::new(Probe {
                shard,
                woken: AtomicU64::new(0),
                tx: std::sync::Mutex::new(tx),
            })
        };
        // Each thread sleeps without beating or ticking, as a shard does when glommio parks it
        // with tasks queued (or when it is idle). Shard 0: driver parked, ticker due every 10 s:
        // idle, never woken. Shard 1: driver active: stranded. Shard 2: driver parked, but its
        // ticker (due every 5 ms) stopped: stranded.
        let shards = [
            (
                probe(std::sync::mpsc::channel().0, 0),
                false,
                Duration::from_secs(10),
            ),
            (probe(rescued_tx.clone(), 1), true, Duration::from_secs(10)),
            (probe(rescued_tx, 2), false, Duration::from_millis(5)),
        ];
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel::<()>();
        let done = Arc::new(std::sync::Mutex::new(done));
        let threads: Vec<_> = shards
            .iter()
            .map(|(p, active, period)| {
                let (wd, ready_tx, done) = (wd.clone(), ready_tx.clone(), done.clone());
                let (p, active, period) = (p.clone(), *active, *period);
                std::thread::spawn(move || {
                    wd.register(p.shard);
                    attach_engine(&std::task::Waker::from(p), period);
                    set_active(active);
                    ready_tx.send(()).unwrap();
                    // Sleeps until the test is over (the sender is dropped).
                    let _ = done.lock().unwrap().recv();
                })
            })
            .collect();
        for _ in 0..shards.len() {
            ready.recv().unwrap();
        }
        // Two rescues of each: by then the watchdog has looked at the idle shard several times.
        let mut woken = [0; 3];
        while woken[1] < 2 || woken[2] < 2 {
            let shard = rescued
                .recv_timeout(Duration::from_secs(20))
                .expect("both stranded shards are woken");
            woken[shard] += 1;
        }
        assert_eq!(shards[0].0.woken.load(Ordering::Relaxed), 0);
        assert!(rescues_total() >= 4);
        drop(done_tx);
        for t in threads {
            t.join().unwrap();
        }
    }
}
