//! The socket engine: one io_uring ring of our own per shard, driven by a task on the shard's
//! glommio executor.
//!
//! # Why a second ring
//! glommio 0.9 builds its rings without COOP_TASKRUN or DEFER_TASKRUN, so every socket completion
//! interrupts the shard (measured: 12.5 µs of CPU per request against nginx's 5.2 µs). This ring is
//! created on the shard's thread with SINGLE_ISSUER | DEFER_TASKRUN | TASKRUN_FLAG: the kernel
//! queues completion work and runs it only when we enter the ring with GETEVENTS, in batches.
//! glommio keeps scheduling, timers and channels.
//!
//! # What runs on it
//! - multishot accept on each of the shard's listening sockets;
//! - multishot recv into a *provided buffer ring* of `buffers` × `buffer_size` bytes registered per
//!   shard: the kernel copies received bytes straight into one of our buffers and the connection
//!   parses them in place ([`RecvBuf`]); a buffer goes back to the ring when its handle drops;
//! - sends of whole write buffers, one per connection at a time, with everything written meanwhile
//!   queued behind it and sent in the next batch;
//! - connects (the client side, used by the load generator), cancels.
//!
//! # Driving
//! [`Engine::drive`] is a task: it submits and reaps with one `io_uring_enter(GETEVENTS)` per turn,
//! wakes the connection tasks whose operations completed, and requeues itself behind them so they
//! run first (`futures_lite::future::yield_now`: it wakes itself and returns once). Unlike
//! glommio's `yield_task_queue_now`, the shard's one task queue keeps running, so a turn does not
//! pay for leaving and re-entering it (two clock reads and the queue's accounting); glommio's
//! reactor still gets the CPU when its preemption timer fires.
//! When a turn finds nothing, it optionally spins (`idle_spin`) and then parks: it enables an eventfd
//! registered on the ring, re-checks for completions (no lost wake-up) and awaits the eventfd through
//! glommio, so the executor sleeps in its own ring and timers and channels keep working. While busy
//! the eventfd stays disabled (under DEFER_TASKRUN it would fire on every queued completion).
//!
//! # Invariants
//! - Only the shard thread touches the ring (SINGLE_ISSUER); everything here is `Rc`/`RefCell`.
//! - `user_data` = opcode (8 bits) | slot generation (24 bits) | slot index (32 bits); a completion
//!   whose generation is stale is dropped, but a buffer it carries is always returned to the ring.
//! - A slot, its fd and the memory an operation points to (send buffer, connect address) live until
//!   every operation on it has completed; only then is the fd closed and the slot freed.
//! - A received buffer is owned by exactly one of: the kernel (in the ring), a connection's receive
//!   queue, or one [`RecvBuf`] handle.

use std::{
    cell::{Cell, RefCell, UnsafeCell},
    collections::VecDeque,
    future::poll_fn,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd},
    rc::{Rc, Weak},
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, OnceLock,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use futures_lite::future::yield_now;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::{
    buf::BufferPool,
    error::{Error, Result},
    slab::{GenSlab, Key},
    sys,
    watchdog::Throttle,
};

/// `IORING_ENTER_GETEVENTS`: run deferred completion work and post CQEs.
const ENTER_GETEVENTS: u32 = 1;

/// Default submission queue size; the completion queue is twice this.
pub const DEFAULT_RING_ENTRIES: u32 = 1024;
/// Default number of provided receive buffers per shard.
pub const DEFAULT_RECV_BUFFERS: u16 = 512;
/// Default size of one provided receive buffer.
pub const DEFAULT_RECV_BUFFER_SIZE: u32 = 16 * 1024;
/// Default busy-poll window of an idle driver, before it naps: bridges the short gaps between
/// requests of a loaded server without a sleep and a wake-up. Measured against nginx in the same
/// runs (server CPU per request): closed loop, 64 connections, 0.88× with it and 0.97× without;
/// at a fixed half load the two are within noise (~1.05×). `IdleStrategy::Spin` lengthens it.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(20);
/// Default longest single wait of a recently busy driver in its own ring (see [`EngineConfig::nap`]):
/// the whole nap window, so that a lull costs one sleep rather than one per 250 µs. At a fixed
/// 40k and 52k requests/s (2-CPU VM, 3–4 alternating rounds): 13.6 → 11.7 and 11.5 → 9.7 µs of
/// CPU per request against 250 µs (nginx 12.3 and 10.3 in the same runs).
pub const DEFAULT_NAP: Duration = DEFAULT_NAP_FOR;
/// Default time a driver keeps napping in its own ring after its last completion before it parks
/// through glommio (see [`EngineConfig::nap_for`]).
pub const DEFAULT_NAP_FOR: Duration = Duration::from_millis(2);
/// Most completions handled per driver turn before the connection tasks get to run.
const MAX_CQES_PER_TURN: usize = 1024;
/// Buffer group id of the shard's provided buffer ring.
const BGID: u16 = 0;
/// Back-off after EMFILE/ENFILE on accept, so a full fd table does not spin the shard.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
/// At most one line on stderr about failing accepts per listener in this long.
pub const ACCEPT_ERROR_REPORT_EVERY: Duration = Duration::from_secs(10);

const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;
const OP_CANCEL: u64 = 3;

/// Received buffers a connection may hold before its receive pauses (16 KiB each by default).
pub const RX_QUEUE_MAX: u16 = 4;
/// A paused receive resumes when the connection holds this many or fewer.
const RX_QUEUE_RESUME: u16 = 1;
const OP_CONNECT: u64 = 4;
const OP_ACCEPT: u64 = 5;
const OP_NOP: u64 = 6;
const OP_BELL: u64 = 7;
const NO_BID: u16 = u16::MAX;

fn ud(op: u64, key: Key) -> u64 {
    op << 56 | key.pack()
}

/// A shard's mesh doorbell: peers ring it after putting a batch in the shard's queues.
///
/// glommio delivers mesh messages when its reactor runs: when the shard has nothing else to run,
/// or when the preemption timer fires (every millisecond) while the engine keeps it busy, and not
/// at all while the engine's driver naps in its own ring. The doorbell replaces that path for
/// shards with an engine: a ring counts the batch in `sent` and sets the sender's bit in
/// `pending`, and the first ring since the driver last looked wakes a sleeping driver: a napping
/// one through an eventfd whose read sits in the engine's ring, a parked one through the eventfd
/// glommio waits on for it (a read completing in the ring while parked was seen not to fire the
/// ring's registered eventfd). The driver sees the bits on its next turn and wakes the
/// mesh receive tasks of those senders itself ([`MeshWakers`]); a receive task takes exactly as
/// many batches from glommio's channel as `sent` says are there, so it never waits inside glommio
/// (whose reactor keeps one waker per such wait until a message happens to be waiting when it
/// looks: with the doorbell waking the task first, they piled up until the task's reference count
/// overflowed).
pub struct Doorbell {
    /// One bit per sending shard; shards from 63 on share the last bit.
    pending: AtomicU64,
    /// Batches each shard has put in its queue to this one.
    sent: Box<[AtomicU64]>,
    /// [`AWAKE`], [`NAPPING`] or [`PARKED`].
    sleeping: AtomicU8,
    /// Read in the engine's ring while it naps. None when no eventfd could be made: then a ring
    /// is only seen at the driver's next turn.
    efd: Option<OwnedFd>,
    /// A copy of the eventfd the parked driver waits on, set when the engine attaches.
    park_efd: OnceLock<OwnedFd>,
}

const AWAKE: u8 = 0;
const NAPPING: u8 = 1;
const PARKED: u8 = 2;

fn bell_bit(from: usize) -> u64 {
    1 << from.min(63)
}

impl Doorbell {
    /// A doorbell with its own eventfd, for a mesh of `shards`.
    pub fn new(shards: usize) -> Doorbell {
        Doorbell {
            pending: AtomicU64::new(0),
            sent: (0..shards).map(|_| AtomicU64::new(0)).collect(),
            sleeping: AtomicU8::new(AWAKE),
            efd: sys::eventfd().ok(),
            park_efd: OnceLock::new(),
        }
    }

    /// Batches shard `from` has sent to this one so far.
    pub fn sent_by(&self, from: usize) -> u64 {
        self.sent[from].load(Ordering::Acquire)
    }
}

/// Rings shard `to`'s doorbell for one batch shard `from` has just put in its queue: three
/// atomics, plus one eventfd write when `to` sleeps. Any thread.
///
/// (Queueing that write in the ringing shard's own ring instead of making a syscall was tried:
/// io_uring hands eventfd writes to its worker threads, and `/kv` on 2 shards fell from 130k to
/// 90k requests/s.)
pub fn ring_bell(bells: &[Arc<Doorbell>], to: usize, from: usize) {
    let bell = &bells[to];
    bell.sent[from].fetch_add(1, Ordering::Release);
    if bell.pending.fetch_or(bell_bit(from), Ordering::SeqCst) != 0 {
        // Rung since the driver last looked: that ring woke it if it slept, and a driver about
        // to sleep sees the bits first and stays up (bits rung before the bell was attached
        // included: `attach_doorbell` wakes a parked driver for them). A second write would only
        // cost a syscall and a spurious wake-up.
        return;
    }
    let fd = match bell.sleeping.load(Ordering::SeqCst) {
        NAPPING => bell.efd.as_ref(),
        PARKED => bell.park_efd.get(),
        _ => None,
    };
    if let Some(fd) = fd {
        sys::eventfd_signal(fd.as_raw_fd());
    }
}

/// The wakers of a shard's mesh receive tasks, one slot per sending shard: the engine's driver
/// wakes the ones whose senders rang the doorbell (also after a park: the ring wakes a parked
/// driver), so that a batch is handled in the turn it is seen in, without glommio's reactor.
#[derive(Clone, Default)]
pub struct MeshWakers {
    tasks: Rc<RefCell<Vec<Option<Waker>>>>,
}

impl MeshWakers {
    /// Registers the receive task for messages from shard `from`.
    pub fn register(&self, from: usize, waker: &Waker) {
        let mut v = self.tasks.borrow_mut();
        if v.len() <= from {
            v.resize(from + 1, None);
        }
        match &mut v[from] {
            Some(w) if w.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
    }

    /// Wakes the receive tasks of the senders in `mask` (see [`bell_bit`]).
    fn wake(&self, mask: u64) {
        for (from, slot) in self.tasks.borrow_mut().iter_mut().enumerate() {
            if mask & bell_bit(from) != 0 {
                if let Some(w) = slot.take() {
                    w.wake();
                }
            }
        }
    }
}

thread_local! {
    /// The engine of the shard running on this thread.
    static CURRENT: RefCell<Weak<Inner>> = const { RefCell::new(Weak::new()) };
}

/// Attaches shard `me`'s doorbell in `bells` to the engine of the calling shard: from then on a
/// ring wakes its driver, which wakes the receive tasks registered in the returned
/// [`MeshWakers`]. None off a shard with an engine (the mesh then relies on glommio's reactor
/// alone). Called when the shard joins a mesh.
pub fn attach_doorbell(me: usize, bells: &[Arc<Doorbell>]) -> Option<MeshWakers> {
    let inner = CURRENT.with(|c| c.borrow().upgrade())?;
    let first = inner.bell.borrow().is_none();
    if let Ok(fd) = inner.efd.try_clone() {
        let _ = bells[me].park_efd.set(fd);
    }
    // The driver may have parked before there was a doorbell to mark (it cannot be napping: this
    // runs on its thread).
    let state = if inner.parked.get() { PARKED } else { AWAKE };
    bells[me].sleeping.store(state, Ordering::SeqCst);
    *inner.bell.borrow_mut() = Some(bells[me].clone());
    if first {
        inner.arm_bell();
    }
    // Peers may have rung before the bell was attached, when it read AWAKE and nobody was woken.
    // A parked driver must see those bits now: a ring that finds bits pending writes no eventfd.
    if state == PARKED && bells[me].pending.load(Ordering::SeqCst) != 0 {
        if let Some(fd) = bells[me].park_efd.get() {
            sys::eventfd_signal(fd.as_raw_fd());
        }
    }
    Some(inner.mesh_wakers.clone())
}

/// What an idle shard does.
///
/// By default the driver never busy-waits: when a turn finds nothing, a recently busy driver naps
/// in its own ring ([`EngineConfig::nap`]) and an idle one enables the eventfd and waits through
/// glommio. With `Spin`, the driver watches its ring's TASKRUN flag and glommio's executor polls
/// its rings (which include that eventfd read, its timers and channels) for up to the given time
/// before sleeping, so a completion, a timer or a mesh message is picked up without a sleep/wake
/// cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleStrategy {
    /// Sleep at once (the default).
    Park,
    /// Poll for up to this long before sleeping, naps included: lowest latency at low load, at
    /// the cost of a busy CPU (each sleep/wake cycle costs ~20 µs in a VM). Also the engine's
    /// busy-poll window ([`EngineConfig::busy_poll`]). One connection (`wrk -c1`, 2-CPU VM,
    /// 3 alternating rounds): mean latency 34–38 µs with 50 µs of spin, 70–85 µs without,
    /// nginx 84–93 µs.
    Spin(Duration),
}

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Submission queue entries.
    pub ring_entries: u32,
    /// Provided receive buffers (a power of two, at most 32768).
    pub recv_buffers: u16,
    /// Size of each provided receive buffer.
    pub recv_buffer_size: u32,
    /// What to do when idle.
    pub idle: IdleStrategy,
    /// Granularity of connection deadlines.
    pub timer_tick: Duration,
    /// How long an idle driver watches for new completions (no syscall) before parking.
    pub busy_poll: Duration,
    /// Longest single wait in the engine's own ring (`io_uring_enter` with a timeout) when a
    /// recently busy driver finds nothing to do. Waiting there is one syscall that returns with
    /// the completions; parking through glommio costs its reactor's submit, timer re-arm and
    /// wake-up path, which at half load was a third of the shard's CPU time. A completion or a
    /// mesh doorbell ends a nap at once; glommio's own timers and cross-thread channel messages
    /// wait for at most this long on top of the preemption timer. Zero turns napping off.
    pub nap: Duration,
    /// How long after its last completion a driver keeps napping before it parks through
    /// glommio (an idle shard sleeps there, woken at once by timers and mesh messages).
    pub nap_for: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            ring_entries: DEFAULT_RING_ENTRIES,
            recv_buffers: DEFAULT_RECV_BUFFERS,
            recv_buffer_size: DEFAULT_RECV_BUFFER_SIZE,
            idle: IdleStrategy::Park,
            timer_tick: Duration::from_millis(50),
            busy_poll: DEFAULT_BUSY_POLL,
            nap: DEFAULT_NAP,
            nap_for: DEFAULT_NAP_FOR,
        }
    }
}

/// Counters of one shard's engine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Client connections established.
    pub connected: u64,
    /// Connections fully closed (fd closed, slot freed).
    pub closed: u64,
    /// Connections open now.
    pub open: u64,
    /// Accept errors (EMFILE, ENFILE, ...), each followed by a back-off.
    pub accept_errors: u64,
    /// Times the receive buffer ring ran dry (a connection was re-armed later, nothing lost).
    pub recv_nobufs: u64,
    /// Times a connection's receive was paused because it held [`RX_QUEUE_MAX`] buffers it had
    /// not taken.
    pub recv_paused: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Receive buffers held by connections or handles now.
    pub recv_buffers_in_use: u64,
    /// Receive buffers in the ring.
    pub recv_buffers_total: u64,
    /// Driver turns that found work.
    pub busy_turns: u64,
    /// Times the driver parked (through glommio).
    pub parks: u64,
    /// Times the driver waited in its own ring.
    pub naps: u64,
}

/// Receive side state of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RxState {
    /// Not armed yet (a client still connecting).
    Idle,
    /// A multishot recv is armed.
    Armed,
    /// The connection holds [`RX_QUEUE_MAX`] received buffers it has not taken: its recv is
    /// cancelled (or being cancelled), and armed again once the connection has taken most of them.
    Paused,
    /// The ring ran dry; the recv must be re-armed when buffers return.
    NeedRearm,
    /// The peer closed its side.
    Eof,
    /// The socket failed (errno).
    Failed(i32),
}

struct Slot {
    fd: RawFd,
    rx: RxState,
    /// Received buffers not yet handed out, as a list threaded through `Bufs::next`.
    rx_head: u16,
    rx_tail: u16,
    /// How many buffers that list holds.
    rx_queued: u16,
    /// A multishot recv of this slot is in the kernel (armed, or cancelled but not yet ended).
    recv_live: bool,
    /// The connection asked not to receive for now ([`Conn::hold_recv`]).
    held: bool,
    reader: Option<Waker>,
    /// The buffer the kernel is sending now, and how much of it went.
    sending: Option<Vec<u8>>,
    sent: usize,
    /// Bytes written while `sending` was in flight, sent next.
    queued: Option<Vec<u8>>,
    write_err: Option<i32>,
    writer: Option<Waker>,
    /// Operations the kernel still holds (recv, send, cancel, connect).
    ops: u8,
    /// The `Conn` handle is gone: close when `ops` reaches zero.
    dropped: bool,
    deadline: Option<Instant>,
    timed_out: bool,
    /// Between requests: a drain may close it.
    idle: bool,
    /// Closed by a drain while idle.
    drained: bool,
    /// When the slot was opened (accept or connect).
    opened: Instant,
    /// Connect target, kept alive while the connect is in flight.
    connect_addr: Option<Box<socket2::SockAddr>>,
    connect_res: Option<i32>,
}

impl Slot {
    fn new(fd: RawFd) -> Self {
        Slot {
            fd,
            rx: RxState::Idle,
            rx_head: NO_BID,
            rx_tail: NO_BID,
            rx_queued: 0,
            recv_live: false,
            held: false,
            reader: None,
            sending: None,
            sent: 0,
            queued: None,
            write_err: None,
            writer: None,
            ops: 0,
            dropped: false,
            deadline: None,
            timed_out: false,
            idle: false,
            drained: false,
            opened: Instant::now(),
            connect_addr: None,
            connect_res: None,
        }
    }
}

struct ListenerSlot {
    fd: OwnedFd,
    local: SocketAddr,
    queue: VecDeque<RawFd>,
    armed: bool,
    stopped: bool,
    /// The `Acceptor` is gone: close whatever still arrives.
    dropped: bool,
    error: Option<i32>,
    waker: Option<Waker>,
    /// Reports of failed accepts on stderr: at most one per `ACCEPT_ERROR_REPORT_EVERY`.
    error_reports: Throttle,
}

/// The provided buffer ring: `count` buffers of `size` bytes and the ring of entries the kernel
/// takes them from.
struct Bufs {
    mem: *mut u8,
    mem_len: usize,
    ring: *mut types::BufRingEntry,
    ring_len: usize,
    count: u16,
    size: u32,
    tail: Cell<u16>,
    /// Per buffer: received length, and next buffer in a connection's receive queue.
    len: Vec<Cell<u32>>,
    next: Vec<Cell<u16>>,
    in_use: Cell<u64>,
}

impl Bufs {
    fn new(count: u16, size: u32) -> io::Result<Bufs> {
        assert!(
            count.is_power_of_two() && count <= 32768,
            "recv_buffers must be a power of two <= 32768"
        );
        let mem_len = count as usize * size as usize;
        let ring_len = count as usize * std::mem::size_of::<types::BufRingEntry>();
        let mem = mmap(mem_len)?;
        let ring = match mmap(ring_len) {
            Ok(r) => r as *mut types::BufRingEntry,
            Err(e) => {
                munmap(mem, mem_len);
                return Err(e);
            }
        };
        let b = Bufs {
            mem,
            mem_len,
            ring,
            ring_len,
            count,
            size,
            tail: Cell::new(0),
            len: (0..count).map(|_| Cell::new(0)).collect(),
            next: (0..count).map(|_| Cell::new(NO_BID)).collect(),
            in_use: Cell::new(count as u64),
        };
        for bid in 0..count {
            b.put(bid);
        }
        Ok(b)
    }

    /// Returns buffer `bid` to the ring's tail.
    fn put(&self, bid: u16) {
        let tail = self.tail.get();
        let idx = (tail & (self.count - 1)) as usize;
        // SAFETY: idx < count, so the entry is inside the ring mapping; the kernel only reads
        // entries between its head and our published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.ring.add(idx) };
        // SAFETY: bid < count, so the buffer lies inside `mem`.
        entry.set_addr(unsafe { self.mem.add(bid as usize * self.size as usize) } as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        let new_tail = tail.wrapping_add(1);
        self.tail.set(new_tail);
        // SAFETY: the tail field overlays the first entry's `resv`, inside the mapping; the kernel
        // reads it with acquire semantics, so publish with a release store.
        unsafe {
            let tail_ptr =
                types::BufRingEntry::tail(self.ring) as *const std::sync::atomic::AtomicU16;
            (*tail_ptr).store(new_tail, std::sync::atomic::Ordering::Release);
        }
        self.in_use.set(self.in_use.get() - 1);
    }

    fn slice(&self, bid: u16, start: u32, end: u32) -> &[u8] {
        debug_assert!(bid < self.count && start <= end && end <= self.size);
        // SAFETY: bid < count and end <= size keep the range inside `mem`; the buffer is out of
        // the ring (the kernel will not write it) until `put` is called for it, which only the
        // owner of the bid does.
        unsafe {
            std::slice::from_raw_parts(
                self.mem
                    .add(bid as usize * self.size as usize + start as usize),
                (end - start) as usize,
            )
        }
    }
}

impl Drop for Bufs {
    fn drop(&mut self) {
        munmap(self.mem, self.mem_len);
        munmap(self.ring as *mut u8, self.ring_len);
    }
}

/// Anonymous memory, pre-faulted (MAP_POPULATE): the kernel copies received bytes into it from
/// inside `io_uring_enter`, and first-touch page faults there would stall the shard.
fn mmap(len: usize) -> io::Result<*mut u8> {
    // SAFETY: an anonymous private mapping with no address hint; the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

fn munmap(p: *mut u8, len: usize) {
    // SAFETY: `p`/`len` describe a mapping made by `mmap` above that nothing refers to any more
    // (the ring that used it is unregistered or destroyed first).
    unsafe { libc::munmap(p.cast(), len) };
}

struct State {
    conns: GenSlab<Slot>,
    listeners: GenSlab<ListenerSlot>,
    rearm: VecDeque<Key>,
    with_deadline: usize,
    stats: EngineStats,
    draining: bool,
    /// Idle connections are being closed.
    closing_idle: bool,
    /// Woken when the last connection's slot is freed.
    on_empty: Option<Waker>,
}

/// The shared inside of an [`Engine`].
pub(crate) struct Inner {
    // Field order matters for drop: the ring goes before the buffer memory it points to.
    ring: RefCell<IoUring>,
    bufs: Bufs,
    st: RefCell<State>,
    efd: OwnedFd,
    parked: Cell<bool>,
    stopping: Cell<bool>,
    /// The shard's clock: read once per driver turn (see [`Engine::now`]).
    now: Cell<Instant>,
    /// This shard's mesh doorbell, once the shard joined a mesh.
    bell: RefCell<Option<Arc<Doorbell>>>,
    /// Where the kernel puts the doorbell's counter (outlives the ring: declared after it).
    bell_buf: Box<UnsafeCell<u64>>,
    /// The mesh receive tasks the driver wakes when the doorbell rings.
    mesh_wakers: MeshWakers,
    config: EngineConfig,
    pool: BufferPool,
}

/// A shard's socket engine. Cheap to clone (an `Rc`); never leaves its shard.
#[derive(Clone)]
pub struct Engine {
    inner: Rc<Inner>,
}

impl Engine {
    /// Builds the ring and the provided buffer ring on the calling thread (the shard's: a
    /// SINGLE_ISSUER ring used from another thread fails).
    pub fn new(mut config: EngineConfig, pool: BufferPool) -> Result<Engine> {
        if let IdleStrategy::Spin(d) = config.idle {
            // Spinning for latency: watch the ring's TASKRUN flag for that long first.
            config.busy_poll = config.busy_poll.max(d);
        }
        let unsupported = |what: &str, e: io::Error| {
            Error::Unsupported(format!(
                "io_uring {what}: {e} (percore needs Linux >= 6.1 with io_uring enabled)"
            ))
        };
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_cqsize(config.ring_entries * 2)
            .build(config.ring_entries)
            .map_err(|e| unsupported("setup with SINGLE_ISSUER|DEFER_TASKRUN", e))?;
        let bufs = Bufs::new(config.recv_buffers, config.recv_buffer_size)
            .map_err(|e| Error::io("mmap buffers", e))?;
        // SAFETY: the ring memory stays mapped until `Inner` drops, and `ring` (declared first in
        // `Inner`) is destroyed before `bufs`.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(bufs.ring as u64, bufs.count, BGID, 0)
        }
        .map_err(|e| unsupported("provided buffer ring (Linux >= 5.19)", e))?;
        let efd = sys::eventfd().map_err(|e| Error::io("eventfd", e))?;
        ring.submitter()
            .register_eventfd(efd.as_raw_fd())
            .map_err(|e| unsupported("register eventfd", e))?;
        ring.completion_shared_disable_eventfd();
        let engine = Engine {
            inner: Rc::new(Inner {
                ring: RefCell::new(ring),
                bufs,
                st: RefCell::new(State {
                    conns: GenSlab::with_capacity(1024),
                    listeners: GenSlab::new(),
                    rearm: VecDeque::new(),
                    with_deadline: 0,
                    draining: false,
                    closing_idle: false,
                    on_empty: None,
                    stats: EngineStats {
                        recv_buffers_total: config.recv_buffers as u64,
                        ..Default::default()
                    },
                }),
                efd,
                parked: Cell::new(false),
                stopping: Cell::new(false),
                now: Cell::new(Instant::now()),
                bell: RefCell::new(None),
                bell_buf: Box::new(UnsafeCell::new(0)),
                mesh_wakers: MeshWakers::default(),
                config,
                pool,
            }),
        };
        CURRENT.with(|c| *c.borrow_mut() = Rc::downgrade(&engine.inner));
        Ok(engine)
    }

    /// The shard's clock: the time of the engine's latest turn, at most one turn old (under
    /// load a few microseconds; when the driver is parked, as old as the park). Deadlines and
    /// per-request timings read this instead of the system clock: one `clock_gettime` per turn
    /// rather than several per request.
    pub fn now(&self) -> Instant {
        self.inner.clock()
    }

    /// The engine's counters.
    pub fn stats(&self) -> EngineStats {
        let mut s = self.inner.st.borrow().stats;
        s.open = self.inner.st.borrow().conns.len() as u64;
        s.recv_buffers_in_use = self.inner.bufs.in_use.get();
        s
    }

    /// The shard's buffer pool (write and reassembly buffers).
    pub fn pool(&self) -> &BufferPool {
        &self.inner.pool
    }

    /// Age of the oldest open connection (a leak shows as an ever-growing age).
    pub fn oldest_connection_age(&self) -> Option<Duration> {
        let st = self.inner.st.borrow();
        st.conns
            .iter()
            .filter(|(_, s)| !s.dropped)
            .map(|(_, s)| s.opened.elapsed())
            .max()
    }

    /// Keys of the open connections (for drain and listings).
    pub fn connections(&self) -> Vec<ConnId> {
        self.inner
            .st
            .borrow()
            .conns
            .iter()
            .filter(|(_, s)| !s.dropped)
            .map(|(k, _)| ConnId(k))
            .collect()
    }

    /// Starts draining: from now on every response is the connection's last (see
    /// [`Engine::is_draining`]). Returns how many connections are open.
    pub fn begin_drain(&self) -> usize {
        let mut st = self.inner.st.borrow_mut();
        st.draining = true;
        st.conns.iter().filter(|(_, s)| !s.dropped).count()
    }

    /// Closes idle connections (see [`Conn::set_idle`]): their `recv` fails with
    /// [`Error::Closed`]; a connection that goes idle later is closed at once.
    pub fn close_idle(&self) {
        let mut st = self.inner.st.borrow_mut();
        st.draining = true;
        st.closing_idle = true;
        for (_, s) in st.conns.iter_mut() {
            if s.idle && s.rx_head == NO_BID && !s.dropped {
                s.drained = true;
                if let Some(w) = s.reader.take() {
                    w.wake();
                }
            }
        }
    }

    /// Whether a drain has begun: a server answers its last response with `Connection: close`.
    pub fn is_draining(&self) -> bool {
        self.inner.st.borrow().draining
    }

    /// Shuts down every open connection's socket (both directions): their tasks see end of stream
    /// or an error and finish. Returns how many were open.
    pub fn force_close_all(&self) -> usize {
        let st = self.inner.st.borrow();
        let mut n = 0;
        for (_, s) in st.conns.iter() {
            if !s.dropped {
                sys::shutdown(s.fd, libc::SHUT_RDWR);
                n += 1;
            }
        }
        n
    }

    /// Waits until no connection is open (every slot freed) and no stopped listener can still
    /// produce one: its multishot accept has ended (a connection the kernel accepted while the
    /// cancel was in flight is served, not left to be reset when the process exits).
    pub async fn all_closed(&self) {
        poll_fn(|cx| {
            let mut st = self.inner.st.borrow_mut();
            let settled = st
                .listeners
                .iter()
                .all(|(_, l)| !l.stopped || (!l.armed && l.queue.is_empty()));
            if st.conns.is_empty() && settled {
                Poll::Ready(())
            } else {
                st.on_empty = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// Waits until no connection is open, or until `by`; true if they all closed.
    pub async fn all_closed_by(&self, by: Instant) -> bool {
        futures_lite::future::or(
            async {
                self.all_closed().await;
                true
            },
            async {
                glommio::timer::sleep(by.saturating_duration_since(Instant::now())).await;
                false
            },
        )
        .await
    }

    /// Drains: stops the acceptors, closes idle connections, lets busy ones finish until
    /// `deadline`, then force-closes (shuts down) the sockets of what is left.
    ///
    /// Idle keep-alive connections get `idle_grace` to send one more request (answered with
    /// `Connection: close`) before they are closed: closing one at the instant its client sends a
    /// request would lose that request.
    pub async fn drain(
        &self,
        acceptors: &[Acceptor],
        deadline: Instant,
        idle_grace: Duration,
    ) -> DrainReport {
        for a in acceptors {
            a.stop();
        }
        let open = self.begin_drain();
        let grace = (Instant::now() + idle_grace).min(deadline);
        let all_gone = self.all_closed_by(grace).await;
        if !all_gone {
            self.close_idle();
        }
        let graceful = all_gone || self.all_closed_by(deadline).await;
        let mut forced = 0;
        if !graceful {
            // Sockets are shut down now (peers see the close at once); tasks still holding a
            // `Conn` find the error the next time they touch it. Nothing waits for them.
            forced = self.force_close_all();
        }
        DrainReport {
            open_at_start: open,
            force_closed: forced,
        }
    }

    /// Asks the driver to stop after its current turn.
    pub fn stop(&self) {
        self.inner.stopping.set(true);
        sys::eventfd_signal(self.inner.efd.as_raw_fd());
    }

    /// Starts accepting on a listening socket (multishot accept).
    pub fn listen(&self, fd: OwnedFd, local: SocketAddr) -> Acceptor {
        let key = self.inner.st.borrow_mut().listeners.insert(ListenerSlot {
            fd,
            local,
            queue: VecDeque::new(),
            armed: false,
            stopped: false,
            dropped: false,
            error: None,
            waker: None,
            error_reports: Throttle::default(),
        });
        self.inner.arm_accept(key);
        Acceptor {
            eng: self.inner.clone(),
            key,
        }
    }

    /// Opens a client connection to `addr` (TCP_NODELAY), with the same receive and send path as
    /// accepted ones.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.cloexec(),
            None,
        )
        .map_err(|e| Error::io("socket", e))?;
        sock.set_nodelay(true)
            .map_err(|e| Error::io("setsockopt", e))?;
        let fd = sock.into_raw_fd();
        let sa = Box::new(socket2::SockAddr::from(addr));
        let key = {
            let mut st = self.inner.st.borrow_mut();
            let mut slot = Slot::new(fd);
            slot.ops = 1;
            let key = st.conns.insert(slot);
            let s = st.conns.get_mut(key).expect("just inserted");
            let sqe = opcode::Connect::new(types::Fd(fd), sa.as_ptr(), sa.len())
                .build()
                .user_data(ud(OP_CONNECT, key));
            s.connect_addr = Some(sa);
            drop(st);
            self.inner.push(sqe);
            key
        };
        let conn = Conn {
            eng: self.inner.clone(),
            key,
            wbuf: Vec::new(),
        };
        let res = poll_fn(|cx| {
            let mut st = conn.eng.st.borrow_mut();
            let s = st
                .conns
                .get_mut(key)
                .expect("slot lives while its Conn does");
            match s.connect_res {
                Some(r) => Poll::Ready(r),
                None => {
                    s.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        if res < 0 {
            return Err(Error::from_cqe("connect", res));
        }
        self.inner.st.borrow_mut().stats.connected += 1;
        self.inner.arm_recv(key);
        Ok(conn)
    }

    /// Runs the engine until [`Engine::stop`]: the shard spawns this as a task.
    pub async fn drive(self) {
        let inner = self.inner.clone();
        let dup = match inner.efd.try_clone() {
            Ok(d) => d,
            Err(e) => {
                eprintln!("percore: engine: dup eventfd: {e}");
                return;
            }
        };
        // SAFETY: `dup` is a fresh descriptor we own; the BufferedFile takes ownership and closes it.
        let efile = unsafe { glommio::io::BufferedFile::from_raw_fd(dup.into_raw_fd()) };
        let ticker = glommio::spawn_local(deadline_ticker(Rc::downgrade(&inner))).detach();
        // The watchdog wakes this task if glommio strands it (see `watchdog`), and glommio wakes
        // it from a park through `unpark`, which marks it active first: a driver stranded right
        // after its park ended is rescued too.
        let unpark = poll_fn(|cx| {
            crate::watchdog::attach_engine(cx.waker(), inner.config.timer_tick);
            Poll::Ready(Waker::from(Arc::new(Unpark(cx.waker().clone()))))
        })
        .await;
        crate::watchdog::set_active(true);
        let mut polled_in_vain = false;
        // When the driver last reaped a completion, while it may nap.
        let mut last_work: Option<Instant> = None;
        // The driver's previous step let the shard's other runnable tasks run.
        let mut others_ran = false;
        // Request-path polls (`probe::polls`) when the driver last yielded.
        let mut polls_at_yield = crate::probe::polls();
        loop {
            crate::watchdog::beat();
            if inner.stopping.get() {
                break;
            }
            let rang = inner.bell_rang();
            if rang != 0 {
                // Peer shards sent mesh messages: wake their receive tasks and let them run now,
                // rather than when glommio's reactor next looks at its channels. Mesh traffic is
                // work: the driver keeps napping (the doorbell wakes a nap) rather than parking.
                last_work = Some(inner.now.get());
                inner.mesh_wakers.wake(rang);
                polls_at_yield = crate::probe::polls();
                yield_now().await;
                others_ran = true;
                continue;
            }
            if others_ran && crate::probe::polls() != polls_at_yield {
                // Tasks ran during the last yield, and may have woken others that glommio
                // queued behind this one (a connection task posting a mesh message wakes the
                // flush task; a mesh reply wakes the connection task). Let those run before
                // this turn may block the thread in a nap or a spin: a nap ran first and held
                // each cross-shard call on an idle server for two whole naps (~4.4 ms).
                polls_at_yield = crate::probe::polls();
                yield_now().await;
                continue;
            }
            // Recently busy and nothing else of ours is runnable: this turn may wait in our own
            // ring (one syscall that submits the queued sends, sleeps until a completion or the
            // nap's end, and runs the deferred completion work) instead of parking via glommio.
            // Mesh messages wake a nap through the doorbell (`/kv` on 2 shards: 120k requests/s
            // napping, 100k when shards trading mesh messages did not nap).
            let lately = |t: Option<Instant>| {
                t.is_some_and(|t| {
                    inner.now.get().saturating_duration_since(t) < inner.config.nap_for
                })
            };
            let nap = inner.config.nap;
            let nap_allowed = !nap.is_zero() && lately(last_work);
            // `IdleStrategy::Spin`: a nap is a sleep too. This turn then sends what is queued and
            // reaps without waiting; if it finds nothing, the driver watches the ring and the
            // doorbell for the spin window before it naps.
            let spin_first = others_ran && nap_allowed && !polled_in_vain && inner.spins();
            let may_nap = others_ran && nap_allowed && !spin_first;
            if may_nap && !inner.set_sleeping(NAPPING) {
                inner.set_sleeping(AWAKE);
                continue; // rung meanwhile: see to the mesh first
            }
            let (reaped, submitted) = inner.turn_wait(may_nap.then_some(nap));
            if may_nap {
                inner.set_sleeping(AWAKE);
                inner.st.borrow_mut().stats.naps += 1;
            }
            if reaped > 0 {
                // Completions woke connection tasks: let them run.
                polled_in_vain = false;
                last_work = Some(inner.now.get());
                inner.st.borrow_mut().stats.busy_turns += 1;
                polls_at_yield = crate::probe::polls();
                yield_now().await;
                others_ran = true;
                continue;
            }
            if may_nap {
                // The nap ended empty: glommio's reactor (timers, mesh) gets its turn when its
                // preemption timer says so, then the driver naps again until `nap_for` is over.
                glommio::yield_if_needed().await;
                continue;
            }
            if spin_first {
                // Whatever shows up in the window is taken by the next turn (whose nap then
                // returns at once); a window that stays empty, or holds only a spurious wake-up,
                // ends in a nap.
                polled_in_vain = true;
                inner.poll_briefly();
                continue;
            }
            others_ran = false;
            if submitted > 0 {
                // Only submissions: nobody new to run, so the queue is kept unless glommio's
                // reactor is due.
                glommio::yield_if_needed().await;
                continue;
            }
            // Nothing right now. Optionally watch the ring's TASKRUN flag (set by the kernel when
            // completion work is queued, read without a syscall) for a short while before
            // paying for a sleep and a wake-up. Deferred work that produced no completion (a
            // spurious socket wake-up) also raises the flag, so one fruitless round of polling
            // sends the driver on next time: it must never spin without giving glommio's timers
            // and channels a turn.
            if !polled_in_vain && inner.poll_briefly() {
                polled_in_vain = true;
                glommio::yield_if_needed().await;
                continue;
            }
            polled_in_vain = false;
            if nap_allowed {
                // Recently busy: let every other runnable task of the shard run, then nap.
                polls_at_yield = crate::probe::polls();
                yield_now().await;
                others_ran = true;
                continue;
            }
            last_work = None;
            // Park: enable the eventfd, look once more (a completion may have raced the enable),
            // then sleep in glommio's ring until the eventfd fires.
            // Marked parked, a mesh ring from now on writes that eventfd directly.
            inner.ring.borrow().completion_shared_enable_eventfd();
            inner.parked.set(true);
            if !inner.set_sleeping(PARKED)
                || inner.turn() > 0
                || inner.work_left()
                || inner.stopping.get()
            {
                inner.set_sleeping(AWAKE);
                inner.parked.set(false);
                inner.ring.borrow().completion_shared_disable_eventfd();
                continue;
            }
            inner.st.borrow_mut().stats.parks += 1;
            crate::watchdog::set_active(false);
            let r = {
                let mut read = std::pin::pin!(efile.read_at(0, 8));
                poll_fn(|_| {
                    std::future::Future::poll(
                        read.as_mut(),
                        &mut std::task::Context::from_waker(&unpark),
                    )
                })
                .await
            };
            crate::watchdog::set_active(true);
            inner.set_sleeping(AWAKE);
            inner.parked.set(false);
            inner.ring.borrow().completion_shared_disable_eventfd();
            if let Err(e) = r {
                eprintln!("percore: engine: eventfd read failed: {e}");
                break;
            }
        }
        crate::watchdog::detach_engine();
        ticker.cancel();
        let _ = efile.close().await;
    }
}

/// Wakes the driver from a park, marking it active for the watchdog first (see
/// [`crate::watchdog`]): glommio runs this on the shard thread when the eventfd read completes.
struct Unpark(Waker);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        crate::watchdog::set_active(true);
        self.0.wake_by_ref();
    }
}

/// Ticks every `timer_tick`: wakes connections whose deadline passed (when any is set), and tells
/// the watchdog that the shard's executor runs its tasks ([`crate::watchdog::tick`]). Its timer is
/// also what gets a stranded executor going again when nothing else would (see
/// [`crate::watchdog`]), so it ticks with no deadline set too.
async fn deadline_ticker(weak: std::rc::Weak<Inner>) {
    loop {
        let tick = match weak.upgrade() {
            Some(i) => i.config.timer_tick,
            None => return,
        };
        glommio::timer::sleep(tick).await;
        crate::watchdog::tick();
        let Some(inner) = weak.upgrade() else { return };
        let mut st = inner.st.borrow_mut();
        if st.with_deadline == 0 {
            continue;
        }
        let now = Instant::now();
        for (_, s) in st.conns.iter_mut() {
            if let Some(d) = s.deadline {
                if d <= now && !s.timed_out {
                    s.timed_out = true;
                    if let Some(w) = s.reader.take() {
                        w.wake();
                    }
                    if let Some(w) = s.writer.take() {
                        w.wake();
                    }
                }
            }
        }
    }
}

trait EventfdToggle {
    fn completion_shared_enable_eventfd(&self);
    fn completion_shared_disable_eventfd(&self);
}

impl EventfdToggle for IoUring {
    fn completion_shared_enable_eventfd(&self) {
        // SAFETY: single-threaded shard; the shared view only touches the CQ flags word here.
        unsafe { self.completion_shared() }.enable_eventfd();
    }
    fn completion_shared_disable_eventfd(&self) {
        // SAFETY: as above.
        unsafe { self.completion_shared() }.disable_eventfd();
    }
}

impl Inner {
    /// Queues an SQE. When the driver is parked it is submitted at once, so the kernel starts it
    /// and the completion wakes the driver through the eventfd.
    fn push(&self, sqe: squeue::Entry) {
        let mut ring = self.ring.borrow_mut();
        loop {
            // SAFETY: every SQE built in this module points only at memory owned by a slot (send
            // buffers, connect addresses), by `bufs` or by `bell_buf`, which outlive the
            // operation (module invariants; `Inner` drops the ring first).
            let full = unsafe { ring.submission().push(&sqe) }.is_err();
            if !full {
                break;
            }
            if let Err(e) = ring.submit() {
                eprintln!("percore: engine: submit failed with a full queue: {e}");
                return;
            }
        }
        if self.parked.get() {
            let _ = ring.submit();
        }
    }

    /// The turn clock; read fresh while the driver is parked (nothing advances it then, and a task
    /// woken by a timer or a channel may be the first to run in a long while).
    fn clock(&self) -> Instant {
        if self.parked.get() {
            self.now.set(Instant::now());
        }
        self.now.get()
    }

    /// Whether the kernel holds completion work this ring has not run yet. An
    /// `io_uring_enter(GETEVENTS)` that does not wait runs a bounded batch of it (20 items on
    /// Linux 6.13+) and leaves the rest queued with the TASKRUN flag set again: that rest does not
    /// fire the eventfd, and if it produced no completion it does not show in the turn's count
    /// either, so a driver that parked on it would sleep until unrelated traffic came.
    fn work_left(&self) -> bool {
        self.ring.borrow_mut().submission().taskrun()
    }

    /// Whether the driver spins before it sleeps in any way, naps included.
    fn spins(&self) -> bool {
        matches!(self.config.idle, IdleStrategy::Spin(d) if !d.is_zero())
    }

    /// Watches the TASKRUN flag and the mesh doorbell for up to `busy_poll`; true if completion
    /// work or a mesh batch showed up.
    fn poll_briefly(&self) -> bool {
        if self.config.busy_poll.is_zero() {
            return false;
        }
        let until = Instant::now() + self.config.busy_poll;
        loop {
            if self.work_left() || self.bell_pending() {
                return true;
            }

            if Instant::now() >= until {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// One driver turn: submit what is queued, run deferred completion work, handle the CQEs.
    /// Returns how many completions it handled plus how many SQEs it submitted.
    fn turn(&self) -> usize {
        let (reaped, submitted) = self.turn_counts();
        reaped + submitted
    }

    /// One driver turn; returns (completions handled, SQEs submitted).
    fn turn_counts(&self) -> (usize, usize) {
        self.turn_wait(None)
    }

    /// One driver turn; with `wait`, the first `io_uring_enter` sleeps until a completion
    /// arrives or `wait` passes (ETIME). Returns (completions handled, SQEs submitted).
    fn turn_wait(&self, mut wait: Option<Duration>) -> (usize, usize) {
        let mut cqes = [(0u64, 0i32, 0u32); 128];
        let mut total = 0;
        let mut submitted = 0;
        loop {
            let mut n = 0;
            {
                let mut ring = self.ring.borrow_mut();
                let to_submit = ring.submission().len() as u32;
                submitted += to_submit as usize;
                let r = match wait.take() {
                    Some(d) => {
                        let ts = io_uring::types::Timespec::from(d);
                        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
                        let r = ring.submitter().submit_with_args(1, &args);
                        self.now.set(Instant::now());
                        r
                    }
                    None => {
                        self.now.set(Instant::now());
                        // SAFETY: no extended argument is passed; flags are a valid enter flag
                        // set.
                        unsafe {
                            ring.submitter().enter::<libc::sigset_t>(
                                to_submit,
                                0,
                                ENTER_GETEVENTS,
                                None,
                            )
                        }
                    }
                };
                match r {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EINTR)
                                | Some(libc::EAGAIN)
                                | Some(libc::EBUSY)
                                | Some(libc::ETIME)
                        ) => {}
                    Err(e) => eprintln!("percore: engine: io_uring_enter: {e}"),
                }
                let mut cq = ring.completion();
                for cqe in cq.by_ref() {
                    cqes[n] = (cqe.user_data(), cqe.result(), cqe.flags());
                    n += 1;
                    if n == cqes.len() {
                        break;
                    }
                }
            }
            for &(u, res, flags) in &cqes[..n] {
                self.complete(u, res, flags);
            }
            total += n;
            if n < cqes.len() || total >= MAX_CQES_PER_TURN {
                break;
            }
        }
        (total, submitted)
    }

    fn complete(&self, user_data: u64, res: i32, flags: u32) {
        let op = user_data >> 56;
        let key = Key::unpack(user_data);
        match op {
            OP_RECV => self.on_recv(key, res, flags),
            OP_SEND => self.on_send(key, res),
            OP_CANCEL => self.op_done(key),
            OP_CONNECT => {
                let mut st = self.st.borrow_mut();
                if let Some(s) = st.conns.get_mut(key) {
                    s.connect_res = Some(res);
                    s.connect_addr = None;
                    if let Some(w) = s.writer.take() {
                        w.wake();
                    }
                }
                drop(st);
                self.op_done(key);
            }
            OP_ACCEPT => self.on_accept(key, res, flags),
            // Rung (the counter was read): arm again unless the ring is going away.
            OP_BELL if res >= 0 && !self.stopping.get() => self.arm_bell(),
            _ => {}
        }
    }

    /// Queues a read of the doorbell's eventfd, so that a peer's ring wakes a napping driver.
    fn arm_bell(&self) {
        let fd = match self.bell.borrow().as_ref().and_then(|b| b.efd.as_ref()) {
            Some(fd) => fd.as_raw_fd(),
            None => return,
        };
        let sqe = opcode::Read::new(types::Fd(fd), self.bell_buf.get().cast(), 8)
            .build()
            .user_data(ud(OP_BELL, Key::unpack(0)));
        self.push(sqe);
    }

    /// Whether a peer shard rang since the last look (without clearing it).
    fn bell_pending(&self) -> bool {
        match &*self.bell.borrow() {
            Some(b) => b.pending.load(Ordering::Relaxed) != 0,
            None => false,
        }
    }

    /// The shards that rang since the last look (bits, see [`bell_bit`]), clearing them.
    fn bell_rang(&self) -> u64 {
        match &*self.bell.borrow() {
            Some(b) if b.pending.load(Ordering::Relaxed) != 0 => {
                b.pending.swap(0, Ordering::AcqRel)
            }
            _ => 0,
        }
    }

    /// Marks the driver sleeping (napping or parked) or not; false if a ring came in first, so
    /// the sleep is skipped.
    fn set_sleeping(&self, state: u8) -> bool {
        match &*self.bell.borrow() {
            Some(b) => {
                b.sleeping.store(state, Ordering::SeqCst);
                !(state != AWAKE && b.pending.load(Ordering::SeqCst) != 0)
            }
            None => true,
        }
    }

    fn on_accept(&self, key: Key, res: i32, flags: u32) {
        let mut st = self.st.borrow_mut();
        let Some(l) = st.listeners.get_mut(key) else {
            if res >= 0 {
                sys::close(res);
            }
            return;
        };
        if !cqueue::more(flags) {
            l.armed = false;
        }
        if res >= 0 {
            if l.dropped {
                sys::close(res);
            } else {
                l.queue.push_back(res);
            }
        } else if res != -libc::ECANCELED && !l.stopped {
            // (A stopped listener's accept ends with ECANCELED, or with EINVAL once
            // `stop_listening` shut the socket down: neither is an error worth counting.)
            l.error = Some(-res);
            st.stats.accept_errors += 1;
        }
        let l = st.listeners.get_mut(key).expect("checked above");
        if let Some(w) = l.waker.take() {
            w.wake();
        }
        let rearm = !l.armed && !l.stopped && l.error.is_none();
        if l.stopped && !l.armed {
            // A drain waiting in `all_closed` looks again.
            if let Some(w) = st.on_empty.take() {
                w.wake();
            }
        }
        drop(st);
        if rearm {
            self.arm_accept(key);
        }
    }

    fn arm_accept(&self, key: Key) {
        let fd = {
            let mut st = self.st.borrow_mut();
            let Some(l) = st.listeners.get_mut(key) else {
                return;
            };
            if l.armed || l.stopped {
                return;
            }
            l.armed = true;
            l.fd.as_raw_fd()
        };
        let sqe = opcode::AcceptMulti::new(types::Fd(fd))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud(OP_ACCEPT, key));
        self.push(sqe);
    }

    fn on_recv(&self, key: Key, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let mut st = self.st.borrow_mut();
        let Some(s) = st.conns.get_mut(key) else {
            drop(st);
            if let Some(b) = bid {
                self.bufs.in_use.set(self.bufs.in_use.get() + 1);
                self.bufs.put(b);
            }
            return;
        };
        if let Some(b) = bid {
            self.bufs.in_use.set(self.bufs.in_use.get() + 1);
            if s.dropped || res <= 0 {
                drop(st);
                self.bufs.put(b);
                st = self.st.borrow_mut();
            } else {
                self.bufs.len[b as usize].set(res as u32);
                self.bufs.next[b as usize].set(NO_BID);
                if s.rx_tail == NO_BID {
                    s.rx_head = b;
                } else {
                    self.bufs.next[s.rx_tail as usize].set(b);
                }
                s.rx_tail = b;
                s.rx_queued += 1;
                st.stats.bytes_in += res as u64;
            }
        }
        let s = st.conns.get_mut(key).expect("checked above");
        // A connection that does not take what it receives (it waits for a client that does not
        // read its responses) stops receiving: the shard's buffer ring is shared, and one
        // connection must not hold all of it. The kernel's receive window then pushes back.
        let mut pause = false;
        if more && s.rx == RxState::Armed && s.rx_queued >= RX_QUEUE_MAX && !s.dropped {
            s.rx = RxState::Paused;
            s.ops += 1;
            st.stats.recv_paused += 1;
            pause = true;
        }
        let s = st.conns.get_mut(key).expect("checked above");
        if res == 0 {
            s.rx = RxState::Eof;
        } else if res == -libc::ENOBUFS {
            s.rx = RxState::NeedRearm;
        } else if res < 0 && res != -libc::ECANCELED {
            s.rx = RxState::Failed(-res);
        }
        if pause {
            drop(st);
            let sqe = opcode::AsyncCancel::new(ud(OP_RECV, key))
                .build()
                .user_data(ud(OP_CANCEL, key));
            self.push(sqe);
            st = self.st.borrow_mut();
        }
        let s = st.conns.get_mut(key).expect("checked above");
        if !more {
            s.recv_live = false;
            // Paused, and the connection took its buffers while the cancel was on its way.
            let resume =
                s.rx == RxState::Paused && s.rx_queued <= RX_QUEUE_RESUME && !s.held && !s.dropped;
            let rearm_now = (s.rx == RxState::Armed || resume) && !s.dropped;
            if s.rx == RxState::Armed && s.dropped {
                s.rx = RxState::Eof;
            }
            if let Some(w) = s.reader.take() {
                w.wake();
            }
            let need = s.rx == RxState::NeedRearm && !s.dropped;
            if need {
                st.stats.recv_nobufs += 1;
                st.rearm.push_back(key);
            }
            drop(st);
            // The multishot ended: its op is done; re-arm right away if it simply ran out (a
            // buffer-less wake-up that was not an error).
            self.op_done(key);
            if rearm_now {
                self.arm_recv(key);
            }
            if need && self.bufs.in_use.get() < self.bufs.count as u64 {
                self.rearm_waiting();
            }
            return;
        }
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    fn arm_recv(&self, key: Key) {
        let fd = {
            let mut st = self.st.borrow_mut();
            let Some(s) = st.conns.get_mut(key) else {
                return;
            };
            if s.dropped {
                return;
            }
            s.rx = RxState::Armed;
            s.recv_live = true;
            s.ops += 1;
            s.fd
        };
        let sqe = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(ud(OP_RECV, key));
        self.push(sqe);
    }

    /// Re-arms connections that hit an empty buffer ring, as buffers come back.
    fn rearm_waiting(&self) {
        loop {
            let key = {
                let mut st = self.st.borrow_mut();
                if self.bufs.in_use.get() >= self.bufs.count as u64 {
                    return;
                }
                match st.rearm.pop_front() {
                    Some(k) => k,
                    None => return,
                }
            };
            let ok = matches!(self.st.borrow().conns.get(key), Some(s) if s.rx == RxState::NeedRearm && !s.dropped);
            if ok {
                self.arm_recv(key);
                return;
            }
        }
    }

    fn recycle(&self, bid: u16) {
        self.bufs.put(bid);
        if !self.st.borrow().rearm.is_empty() {
            self.rearm_waiting();
        }
    }

    fn on_send(&self, key: Key, res: i32) {
        let mut st = self.st.borrow_mut();
        let Some(s) = st.conns.get_mut(key) else {
            return;
        };
        let mut resubmit = None;
        if res < 0 {
            s.write_err = Some(-res);
            if peer_gone(-res) {
                // The receive side is dead too: see `poll_recv_slot`.
                if let Some(w) = s.reader.take() {
                    w.wake();
                }
            }
            if let Some(b) = s.sending.take() {
                self.pool.give(b);
            }
            if let Some(b) = s.queued.take() {
                self.pool.give(b);
            }
        } else {
            s.sent += res as usize;
            let buf = s
                .sending
                .as_ref()
                .expect("a send completes only while a buffer is in flight");
            if s.sent < buf.len() && !s.dropped {
                resubmit = Some((s.fd, buf[s.sent..].as_ptr(), (buf.len() - s.sent) as u32));
            } else {
                let done = s.sending.take().expect("checked");
                s.sent = 0;
                self.pool.give(done);
                if let Some(next) = s.queued.take() {
                    if !s.dropped {
                        resubmit = Some((s.fd, next.as_ptr(), next.len() as u32));
                        s.sending = Some(next);
                    } else {
                        self.pool.give(next);
                    }
                }
            }
            st.stats.bytes_out += res as u64;
        }
        let s = st.conns.get_mut(key).expect("checked above");
        if resubmit.is_none() {
            if let Some(w) = s.writer.take() {
                w.wake();
            }
        }
        drop(st);
        match resubmit {
            Some((fd, ptr, len)) => {
                let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(ud(OP_SEND, key));
                self.push(sqe);
            }
            None => self.op_done(key),
        }
    }

    /// One kernel operation on `key` finished; closes and frees a dropped slot with none left.
    fn op_done(&self, key: Key) {
        let mut st = self.st.borrow_mut();
        let Some(s) = st.conns.get_mut(key) else {
            return;
        };
        s.ops = s.ops.saturating_sub(1);
        if s.dropped && s.ops == 0 {
            let s = st.conns.remove(key).expect("checked");
            if s.deadline.is_some() {
                st.with_deadline -= 1;
            }
            st.stats.closed += 1;
            if st.conns.is_empty() {
                if let Some(w) = st.on_empty.take() {
                    w.wake();
                }
            }
            drop(st);
            sys::close(s.fd);
            self.free_slot_buffers(s);
        }
    }

    fn free_slot_buffers(&self, mut s: Slot) {
        let mut b = s.rx_head;
        while b != NO_BID {
            let next = self.bufs.next[b as usize].get();
            self.bufs.put(b);
            b = next;
        }
        s.rx_head = NO_BID;
        if let Some(buf) = s.sending.take() {
            self.pool.give(buf);
        }
        if let Some(buf) = s.queued.take() {
            self.pool.give(buf);
        }
    }

    /// The `Conn` handle dropped: cancel what the kernel holds, close when it is all back.
    fn release(&self, key: Key) {
        let mut st = self.st.borrow_mut();
        let Some(s) = st.conns.get_mut(key) else {
            return;
        };
        s.dropped = true;
        s.reader = None;
        s.writer = None;
        let mut cancels = Vec::new();
        if s.rx == RxState::Armed {
            cancels.push(ud(OP_RECV, key));
        }
        if s.sending.is_some() {
            cancels.push(ud(OP_SEND, key));
        }
        if s.connect_addr.is_some() {
            cancels.push(ud(OP_CONNECT, key));
        }
        // Buffers waiting in the receive queue go back now.
        let mut b = s.rx_head;
        s.rx_head = NO_BID;
        s.rx_tail = NO_BID;
        s.rx_queued = 0;
        s.ops += cancels.len() as u8;
        // Count the release itself as an op so the slot cannot vanish under us below.
        s.ops += 1;
        drop(st);
        while b != NO_BID {
            let next = self.bufs.next[b as usize].get();
            self.recycle(b);
            b = next;
        }
        for target in cancels {
            let sqe = opcode::AsyncCancel::new(target)
                .build()
                .user_data(ud(OP_CANCEL, key));
            self.push(sqe);
        }
        self.op_done(key);
    }
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when the drain began.
    pub open_at_start: usize,
    /// Connections still open at the deadline, closed by force.
    pub force_closed: usize,
}

/// What a failed accept says, and so what the acceptor does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptFailure {
    /// That one connection failed (aborted while queued, refused by a firewall, or a network
    /// error accept(2) passes on for it): take the next one at once.
    Connection,
    /// The listening socket itself is unusable: not listening (EINVAL, e.g. shut down by a
    /// process that shares it), closed (EBADF), not a socket. Re-arming would fail at once,
    /// for ever: stop.
    Listener,
    /// Out of descriptors or memory, or an error not known here: retry after a back-off.
    Other,
}

impl AcceptFailure {
    fn of(errno: i32) -> AcceptFailure {
        match errno {
            libc::ECONNABORTED
            | libc::EPERM
            | libc::EINTR
            | libc::EPROTO
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::ETIMEDOUT => AcceptFailure::Connection,
            libc::EINVAL | libc::EBADF | libc::ENOTSOCK => AcceptFailure::Listener,
            _ => AcceptFailure::Other,
        }
    }
}

/// A connection's generation-checked id within its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(Key);

impl ConnId {
    /// The slot key.
    pub fn key(self) -> Key {
        self.0
    }
}

/// Accepts connections from one listening socket of a shard.
pub struct Acceptor {
    eng: Rc<Inner>,
    key: Key,
}

impl Acceptor {
    /// The address this socket listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.eng
            .st
            .borrow()
            .listeners
            .get(self.key)
            .map(|l| l.local)
            .expect("listener lives while its Acceptor does")
    }

    /// Waits for the next connection. After EMFILE/ENFILE (or an error it does not know) it backs
    /// off for [`ACCEPT_BACKOFF`] and re-arms, without spinning. Returns `Err(Closed)` once
    /// [`Acceptor::stop`] was called and the multishot accept has ended (every connection the
    /// kernel accepted before that returned), and the error itself when the listening socket is
    /// unusable (shut down, by this process or another that shares it, or not a socket): the
    /// acceptor then stops, with one line on stderr, since re-arming would fail at once, forever.
    pub async fn accept(&self) -> Result<Conn> {
        loop {
            let got = poll_fn(|cx| {
                let mut st = self.eng.st.borrow_mut();
                let l = st
                    .listeners
                    .get_mut(self.key)
                    .expect("listener lives while its Acceptor does");
                if let Some(fd) = l.queue.pop_front() {
                    return Poll::Ready(Ok(fd));
                }
                if l.stopped && !l.armed {
                    return Poll::Ready(Err(None));
                }
                if let Some(e) = l.error.take() {
                    return Poll::Ready(Err(Some(e)));
                }
                l.waker = Some(cx.waker().clone());
                Poll::Pending
            })
            .await;
            match got {
                Ok(fd) => {
                    let key = {
                        let mut st = self.eng.st.borrow_mut();
                        st.stats.accepted += 1;
                        st.conns.insert(Slot::new(fd))
                    };
                    self.eng.arm_recv(key);
                    return Ok(Conn {
                        eng: self.eng.clone(),
                        key,
                        wbuf: Vec::new(),
                    });
                }
                Err(None) => return Err(Error::Closed),
                Err(Some(errno)) => match AcceptFailure::of(errno) {
                    AcceptFailure::Connection => {
                        self.eng.arm_accept(self.key);
                    }
                    AcceptFailure::Listener => {
                        self.stop();
                        self.report_dead_listener(errno);
                        return Err(Error::from_cqe("accept", -errno));
                    }
                    AcceptFailure::Other => {
                        self.report_accept_error(errno);
                        glommio::timer::sleep(ACCEPT_BACKOFF).await;
                        self.eng.arm_accept(self.key);
                    }
                },
            }
        }
    }

    /// Says on stderr, once (the acceptor stops), that the listening socket can no longer accept.
    fn report_dead_listener(&self, errno: i32) {
        let local = self.local_addr();
        let thread = std::thread::current();
        eprintln!(
            "percore: {}: accepting on {local} failed: {}; the listening socket is unusable \
             (shut down or closed), this shard stops accepting on it",
            thread.name().unwrap_or("shard"),
            std::io::Error::from_raw_os_error(errno),
        );
    }

    /// Says on stderr that accepting failed for want of file descriptors or memory (or for a
    /// reason not known here), and that it will be retried: at most once
    /// per [`ACCEPT_ERROR_REPORT_EVERY`] per listener (a full fd table fails every back-off),
    /// with the failures since the last report. All of them are counted in
    /// [`EngineStats::accept_errors`].
    fn report_accept_error(&self, errno: i32) {
        let now = self.eng.clock();
        let (local, unlogged) = {
            let mut st = self.eng.st.borrow_mut();
            let l = st
                .listeners
                .get_mut(self.key)
                .expect("listener lives while its Acceptor does");
            match l.error_reports.admit(now, ACCEPT_ERROR_REPORT_EVERY) {
                Some(held) => (l.local, held),
                None => return,
            }
        };
        let thread = std::thread::current();
        let hint = if matches!(errno, libc::EMFILE | libc::ENFILE) {
            match crate::sys::open_files_limit() {
                Some(n) => format!(" (open files limit {n}: raise LimitNOFILE / ulimit -n)"),
                None => String::new(),
            }
        } else {
            String::new()
        };
        let since = if unlogged > 0 {
            format!("; {unlogged} more since the last report")
        } else {
            String::new()
        };
        eprintln!(
            "percore: {}: accepting on {local} failed: {}{hint}; retrying every {} ms{since}",
            thread.name().unwrap_or("shard"),
            std::io::Error::from_raw_os_error(errno),
            ACCEPT_BACKOFF.as_millis(),
        );
    }

    /// Stops accepting: cancels the multishot accept. Connections the kernel already handed us
    /// (queued, or completing while the cancel is in flight) are still returned by `accept` —
    /// they are clients that connected, and closing them would reset them — after which it
    /// fails with `Closed`. The listening socket itself stays open in the listener table.
    pub fn stop(&self) {
        self.stop_with(false);
    }

    /// Stops accepting and, when `custody` says this process alone holds the socket, stops it
    /// listening; returns whether it did.
    ///
    /// `shutdown(2)` on a listening socket takes it out of its SO_REUSEPORT group, so that new
    /// connections are refused at once instead of waiting in an accept queue nobody reads until
    /// the process exits. It acts on the socket, not the descriptor: every copy (the listener
    /// table's, one sent to a hot-restart successor) stops listening. So while a successor
    /// holds the socket, or is being handed it, this only stops accepting and the socket goes on
    /// listening in the successor.
    ///
    /// Shutting down also resets the connections waiting in the accept queue. Those are taken
    /// first, in the same shard turn, and returned by [`Acceptor::accept`] like any other: only
    /// a handshake that completes in the microseconds between that last accept and the
    /// shutdown is reset.
    pub fn stop_listening(&self, custody: &crate::listener::Custody) -> bool {
        self.stop_with(false);
        if !custody.close() {
            return false;
        }
        let mut st = self.eng.st.borrow_mut();
        let Some(l) = st.listeners.get_mut(self.key) else {
            return false;
        };
        let sock = socket2::SockRef::from(&l.fd);
        // Ours alone now: make sure the loop below ends when the queue is empty.
        let _ = sock.set_nonblocking(true);
        let mut taken = 0u64;
        loop {
            match sock.accept() {
                Ok((c, _)) => {
                    l.queue.push_back(c.into_raw_fd());
                    taken += 1;
                }
                // A connection that failed in the queue: the next one.
                Err(e)
                    if e.raw_os_error()
                        .is_some_and(|n| AcceptFailure::of(n) == AcceptFailure::Connection) => {}
                // Empty (EAGAIN), or unusable already.
                Err(_) => break,
            }
        }
        let _ = sock.shutdown(std::net::Shutdown::Both);
        if taken > 0 {
            if let Some(w) = l.waker.take() {
                w.wake();
            }
        }
        true
    }

    fn stop_with(&self, dropping: bool) {
        let armed = {
            let mut st = self.eng.st.borrow_mut();
            let Some(l) = st.listeners.get_mut(self.key) else {
                return;
            };
            l.stopped = true;
            if dropping {
                // Nobody will take them any more.
                l.dropped = true;
                for fd in l.queue.drain(..) {
                    sys::close(fd);
                }
            }
            if let Some(w) = l.waker.take() {
                w.wake();
            }
            l.armed
        };
        if armed {
            let sqe = opcode::AsyncCancel::new(ud(OP_ACCEPT, self.key))
                .build()
                .user_data(ud(OP_NOP, self.key));
            self.eng.push(sqe);
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop_with(true);
    }
}

/// Bytes the kernel received into one of the shard's buffers, borrowed until the handle drops;
/// then the buffer goes back to the ring.
pub struct RecvBuf {
    eng: Rc<Inner>,
    bid: u16,
    start: u32,
    end: u32,
}

impl RecvBuf {
    /// Drops the first `n` bytes from the view.
    pub fn advance(&mut self, n: usize) {
        self.start = (self.start as usize + n).min(self.end as usize) as u32;
    }

    /// The buffer's id in the ring (for diagnostics).
    pub fn buffer_id(&self) -> u16 {
        self.bid
    }
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.eng.bufs.slice(self.bid, self.start, self.end)
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        self.eng.recycle(self.bid);
    }
}

/// One TCP connection on the engine (accepted or connected). Dropping it closes the connection.
pub struct Conn {
    eng: Rc<Inner>,
    key: Key,
    wbuf: Vec<u8>,
}

impl Conn {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        ConnId(self.key)
    }

    /// The shard's clock (see [`Engine::now`]): fresh when the connection task was woken by a
    /// completion, which is when connection code asks for it.
    pub fn now(&self) -> Instant {
        self.eng.clock()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> Result<SocketAddr> {
        let fd = self.fd();
        sys::peer_addr(fd).map_err(|e| Error::io("getpeername", e))
    }

    fn fd(&self) -> RawFd {
        self.eng
            .st
            .borrow()
            .conns
            .get(self.key)
            .map(|s| s.fd)
            .expect("slot lives while its Conn does")
    }

    /// Whether TCP_NODELAY is set (accepted sockets inherit it from the listener).
    pub fn nodelay(&self) -> Result<bool> {
        sys::nodelay(self.fd()).map_err(|e| Error::io("getsockopt", e))
    }

    /// The next received bytes, `Ok(None)` at end of stream. Fails with [`Error::TimedOut`] once
    /// the deadline passed, or with the socket's error.
    pub async fn recv(&mut self) -> Result<Option<RecvBuf>> {
        poll_fn(|cx| self.poll_recv(Some(cx.waker()))).await
    }

    /// Like [`Conn::recv`] but never waits: `Poll::Pending` when nothing is queued.
    pub fn try_recv(&mut self) -> Poll<Result<Option<RecvBuf>>> {
        self.poll_recv(None)
    }

    /// Stops receiving (`true`) until called with `false`: for a connection that waits for its
    /// client to read and must not hold the shard's receive buffers meanwhile (take what is
    /// already queued with [`Conn::try_recv`] and keep it elsewhere). Bytes the kernel had
    /// already delivered before the stop still queue, a few at most.
    pub fn hold_recv(&mut self, hold: bool) {
        let cancel = {
            let mut st = self.eng.st.borrow_mut();
            let Some(s) = st.conns.get_mut(self.key) else {
                return;
            };
            s.held = hold;
            if s.dropped {
                return;
            }
            if hold && s.rx == RxState::Armed && s.recv_live {
                s.rx = RxState::Paused;
                s.ops += 1;
                st.stats.recv_paused += 1;
                true
            } else {
                if !hold && s.rx == RxState::Paused && !s.recv_live {
                    drop(st);
                    self.eng.arm_recv(self.key);
                }
                false
            }
        };
        if cancel {
            let sqe = opcode::AsyncCancel::new(ud(OP_RECV, self.key))
                .build()
                .user_data(ud(OP_CANCEL, self.key));
            self.eng.push(sqe);
        }
    }

    fn poll_recv(&mut self, waker: Option<&Waker>) -> Poll<Result<Option<RecvBuf>>> {
        poll_recv_slot(&self.eng, self.key, waker)
    }

    /// A handle that receives on this connection while someone else holds the `Conn` (an HTTP
    /// handler streaming a request body while the connection task keeps the `Conn` for the
    /// response). Only one of them may receive at a time; once the connection is gone the handle
    /// gets [`Error::Closed`].
    pub fn reader(&self) -> ConnReader {
        ConnReader {
            eng: self.eng.clone(),
            key: self.key,
        }
    }

    /// The buffer responses are written into; it comes from the shard's pool on first use.
    pub fn write_buf(&mut self) -> &mut Vec<u8> {
        if self.wbuf.capacity() == 0 {
            self.wbuf = self.eng.pool.take();
        }
        &mut self.wbuf
    }

    /// Hands everything written so far to the kernel: sent at once if nothing is in flight,
    /// otherwise right after the send in flight. Never waits; see [`Conn::flushed`].
    pub fn flush(&mut self) -> Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let mut st = self.eng.st.borrow_mut();
        let s = st
            .conns
            .get_mut(self.key)
            .expect("slot lives while its Conn does");
        if let Some(e) = s.write_err {
            return Err(Error::from_cqe("send", -e));
        }
        if s.sending.is_none() {
            let buf = std::mem::take(&mut self.wbuf);
            let sqe = opcode::Send::new(types::Fd(s.fd), buf.as_ptr(), buf.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud(OP_SEND, self.key));
            s.sending = Some(buf);
            s.sent = 0;
            s.ops += 1;
            drop(st);
            self.eng.push(sqe);
        } else {
            match &mut s.queued {
                Some(q) => {
                    q.extend_from_slice(&self.wbuf);
                    self.wbuf.clear();
                }
                None => s.queued = Some(std::mem::take(&mut self.wbuf)),
            }
        }
        Ok(())
    }

    /// Bytes handed to [`Conn::flush`] that the kernel has not taken yet.
    pub fn unsent(&self) -> usize {
        let st = self.eng.st.borrow();
        let s = st
            .conns
            .get(self.key)
            .expect("slot lives while its Conn does");
        s.sending.as_ref().map_or(0, |b| b.len() - s.sent)
            + s.queued.as_ref().map_or(0, |b| b.len())
    }

    /// Bytes written (flushed or not) that the kernel has not taken yet: [`Conn::unsent`] plus
    /// what is still in the write buffer.
    pub fn output_pending(&self) -> usize {
        self.wbuf.len() + self.unsent()
    }

    /// Flushes and waits until the kernel has taken every byte (backpressure, or before a
    /// graceful close). Fails on a send error or when the deadline passes.
    pub async fn flushed(&mut self) -> Result<()> {
        self.flush()?;
        poll_fn(|cx| self.poll_flushed(cx, false)).await.map(|_| ())
    }

    /// Like [`Conn::flushed`], but also returns (with `Ok(false)`) as soon as received bytes are
    /// queued: a connection that holds its receive ([`Conn::hold_recv`]) takes them while it
    /// waits, so that it holds none of the shard's receive buffers. `Ok(true)` once flushed.
    pub async fn flushed_or_received(&mut self) -> Result<bool> {
        self.flush()?;
        poll_fn(|cx| self.poll_flushed(cx, true)).await
    }

    /// Ready with `Ok(true)` once everything is sent or, with `or_received`, with `Ok(false)` once
    /// received bytes are queued; an error on a send error or after the deadline.
    fn poll_flushed(&self, cx: &mut Context<'_>, or_received: bool) -> Poll<Result<bool>> {
        let mut st = self.eng.st.borrow_mut();
        let s = st
            .conns
            .get_mut(self.key)
            .expect("slot lives while its Conn does");
        if let Some(e) = s.write_err {
            return Poll::Ready(Err(Error::from_cqe("send", -e)));
        }
        if s.sending.is_none() && s.queued.is_none() {
            return Poll::Ready(Ok(true));
        }
        if or_received && s.rx_head != NO_BID {
            return Poll::Ready(Ok(false));
        }
        if s.timed_out {
            return Poll::Ready(Err(Error::TimedOut));
        }
        s.writer = Some(cx.waker().clone());
        if or_received {
            s.reader = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Sets (or clears) the deadline after which `recv` and `flushed` fail with `TimedOut`.
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        set_deadline_slot(&self.eng, self.key, deadline);
    }

    /// Marks the connection idle (waiting for a new request, nothing in progress) or busy. A drain
    /// closes idle connections at once and lets busy ones finish.
    pub fn set_idle(&mut self, idle: bool) {
        let mut st = self.eng.st.borrow_mut();
        let closing = st.closing_idle;
        let s = st
            .conns
            .get_mut(self.key)
            .expect("slot lives while its Conn does");
        s.idle = idle;
        if idle && closing && s.rx_head == NO_BID {
            s.drained = true;
        }
    }

    /// Whether the shard is draining (answer with `Connection: close` and stop).
    pub fn is_draining(&self) -> bool {
        self.eng.st.borrow().draining
    }

    /// Sends FIN after what is queued (half close); receiving goes on.
    pub async fn shutdown_write(&mut self) -> Result<()> {
        self.flushed().await?;
        sys::shutdown(self.fd(), libc::SHUT_WR);
        Ok(())
    }
}

fn poll_recv_slot(
    eng: &Rc<Inner>,
    key: Key,
    waker: Option<&Waker>,
) -> Poll<Result<Option<RecvBuf>>> {
    let mut st = eng.st.borrow_mut();
    let Some(s) = st.conns.get_mut(key) else {
        return Poll::Ready(Err(Error::Closed));
    };
    if s.rx_head != NO_BID {
        let bid = s.rx_head;
        let next = eng.bufs.next[bid as usize].get();
        s.rx_head = next;
        if next == NO_BID {
            s.rx_tail = NO_BID;
        }
        s.rx_queued -= 1;
        let len = eng.bufs.len[bid as usize].get();
        // A paused receive resumes once the connection has taken most of what it held (if the
        // cancelled recv has ended; else its end re-arms it).
        if s.rx == RxState::Paused
            && !s.recv_live
            && s.rx_queued <= RX_QUEUE_RESUME
            && !s.held
            && !s.dropped
        {
            drop(st);
            eng.arm_recv(key);
        }
        return Poll::Ready(Ok(Some(RecvBuf {
            eng: eng.clone(),
            bid,
            start: 0,
            end: len,
        })));
    }
    if s.timed_out {
        return Poll::Ready(Err(Error::TimedOut));
    }
    if s.drained {
        return Poll::Ready(Err(Error::Closed));
    }
    // A send failed because the peer reset the connection: nothing more will arrive. The
    // multishot recv may not say so: after a reset that came with data, Linux (seen on 6.18)
    // can deliver the data and leave the recv armed without ever reporting the reset, whose
    // error the failed send has consumed. 1 to 10 of 20,000 clients that sent a request and
    // reset waited for their keep-alive timeout that way.
    if let Some(e) = s.write_err.filter(|&e| peer_gone(e)) {
        return Poll::Ready(Err(Error::from_cqe("recv", -e)));
    }
    match s.rx {
        RxState::Eof => Poll::Ready(Ok(None)),
        RxState::Failed(e) => Poll::Ready(Err(Error::from_cqe("recv", -e))),
        _ => {
            if let Some(w) = waker {
                match &s.reader {
                    Some(old) if old.will_wake(w) => {}
                    _ => s.reader = Some(w.clone()),
                }
            }
            Poll::Pending
        }
    }
}

/// Whether a send's errno means the peer has gone (reset or closed), so receiving is over too.
fn peer_gone(errno: i32) -> bool {
    matches!(errno, libc::ECONNRESET | libc::EPIPE)
}

fn set_deadline_slot(eng: &Inner, key: Key, deadline: Option<Instant>) {
    let mut st = eng.st.borrow_mut();
    let Some(s) = st.conns.get_mut(key) else {
        return;
    };
    let had = s.deadline.is_some();
    s.deadline = deadline;
    s.timed_out = false;
    match (had, deadline.is_some()) {
        (false, true) => st.with_deadline += 1,
        (true, false) => st.with_deadline -= 1,
        _ => {}
    }
}

/// Receives on a connection whose `Conn` is held elsewhere (see [`Conn::reader`]).
pub struct ConnReader {
    eng: Rc<Inner>,
    key: Key,
}

impl ConnReader {
    /// The next buffer of received bytes, as [`Conn::recv`].
    pub async fn recv(&mut self) -> Result<Option<RecvBuf>> {
        poll_fn(|cx| poll_recv_slot(&self.eng, self.key, Some(cx.waker()))).await
    }

    /// Sets the connection's deadline, as [`Conn::set_deadline`].
    pub fn set_deadline(&mut self, deadline: Option<Instant>) {
        set_deadline_slot(&self.eng, self.key, deadline);
    }

    /// The shard's clock, as [`Conn::now`].
    pub fn now(&self) -> Instant {
        self.eng.clock()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.wbuf.capacity() != 0 {
            self.eng.pool.give(std::mem::take(&mut self.wbuf));
        }
        self.eng.release(self.key);
    }
}
