//! Shard-local pools: fixed-size I/O buffers and per-request bump arenas.
//!
//! Buffers are `Vec<u8>` with a fixed capacity, taken when a connection has bytes to hold
//! (reassembly of a request that spans receive buffers, or a response being written) and given back
//! when it goes idle or closes, so an idle connection holds none. The pool keeps what it gets back
//! up to a cap and counts in-use, free and high-water buffers. Arenas are `bumpalo::Bump`s that are
//! reset, not freed, between requests.
//!
//! Both pools are `Rc`-shared inside one shard and must never cross threads.

use std::{
    cell::RefCell,
    rc::Rc,
    sync::atomic::{AtomicUsize, Ordering},
};

use bumpalo::Bump;

/// Default size of a pooled I/O buffer: 16 KiB holds any request head under the default limits.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;

/// How many free buffers a pool keeps before it lets returned ones go to the allocator.
pub const DEFAULT_POOL_KEEP: usize = 1024;

/// The most memory a pooled arena keeps between requests: an arena that grew past it (a request
/// that buffered a large body) goes back to the allocator instead of the pool, so that a burst of
/// large requests does not pin its peak memory in up to [`DEFAULT_POOL_KEEP`] arenas forever.
pub const ARENA_KEEP_BYTES: usize = 64 * 1024;

/// Bytes of large blocks (arenas and buffers that outgrew their pool) freed since the allocator
/// was last asked to give free memory back to the system: process-wide, read by the watchdog
/// thread (see [`crate::watchdog`]), which trims the heap once a burst of them has ended.
static LARGE_FREED: AtomicUsize = AtomicUsize::new(0);

/// Counts a large block handed back to the allocator.
fn note_large_free(bytes: usize) {
    LARGE_FREED.fetch_add(bytes, Ordering::Relaxed);
}

/// Bytes of large blocks freed since the last [`take_large_freed`].
pub(crate) fn large_freed() -> usize {
    LARGE_FREED.load(Ordering::Relaxed)
}

/// Forgets `bytes` of the large blocks counted so far (the heap was just trimmed).
pub(crate) fn take_large_freed(bytes: usize) {
    LARGE_FREED.fetch_sub(bytes, Ordering::Relaxed);
}

/// Counters of a buffer pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers handed out and not yet returned.
    pub in_use: usize,
    /// Buffers waiting in the pool.
    pub free: usize,
    /// Highest `in_use` seen.
    pub high_water: usize,
    /// Buffer size in bytes.
    pub buffer_size: usize,
}

struct PoolInner {
    free: Vec<Vec<u8>>,
    size: usize,
    keep: usize,
    in_use: usize,
    high_water: usize,
}

/// A shard's pool of fixed-size buffers. Cloning shares the pool.
#[derive(Clone)]
pub struct BufferPool {
    inner: Rc<RefCell<PoolInner>>,
}

impl BufferPool {
    /// A pool of `size`-byte buffers keeping up to `keep` free ones.
    pub fn new(size: usize, keep: usize) -> Self {
        BufferPool {
            inner: Rc::new(RefCell::new(PoolInner {
                free: Vec::new(),
                size,
                keep,
                in_use: 0,
                high_water: 0,
            })),
        }
    }

    /// Takes an empty buffer with at least the pool's capacity.
    pub fn take(&self) -> Vec<u8> {
        let mut p = self.inner.borrow_mut();
        p.in_use += 1;
        p.high_water = p.high_water.max(p.in_use);
        match p.free.pop() {
            Some(b) => b,
            None => Vec::with_capacity(p.size),
        }
    }

    /// Gives a buffer back. Buffers that grew past twice the pool size are dropped, so one huge
    /// request does not pin memory forever.
    pub fn give(&self, mut buf: Vec<u8>) {
        let mut p = self.inner.borrow_mut();
        p.in_use = p.in_use.saturating_sub(1);
        if buf.capacity() > 2 * p.size {
            note_large_free(buf.capacity());
        } else if p.free.len() < p.keep && buf.capacity() >= p.size {
            buf.clear();
            p.free.push(buf);
        }
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        let p = self.inner.borrow();
        PoolStats {
            in_use: p.in_use,
            free: p.free.len(),
            high_water: p.high_water,
            buffer_size: p.size,
        }
    }

    /// The size of one buffer.
    pub fn buffer_size(&self) -> usize {
        self.inner.borrow().size
    }
}

/// A shard's pool of bump arenas for per-request scratch.
#[derive(Clone)]
pub struct ArenaPool {
    free: Rc<RefCell<FreeArenas>>,
    chunk: usize,
}

struct FreeArenas {
    list: Vec<Bump>,
    /// What the arenas in `list` hold, at most [`ARENA_POOL_BYTES`].
    bytes: usize,
}

/// The most memory a shard's free arenas hold together: with [`ARENA_KEEP_BYTES`] each, a
/// full pool of [`DEFAULT_POOL_KEEP`] would otherwise keep 64 MiB after a burst of requests
/// with mid-sized bodies.
pub const ARENA_POOL_BYTES: usize = 16 << 20;

impl ArenaPool {
    /// A pool whose arenas start with `chunk` bytes.
    pub fn new(chunk: usize) -> Self {
        ArenaPool {
            free: Rc::new(RefCell::new(FreeArenas {
                list: Vec::new(),
                bytes: 0,
            })),
            chunk,
        }
    }

    /// Takes an arena (reset, with its memory kept from earlier use).
    pub fn take(&self) -> Bump {
        let mut f = self.free.borrow_mut();
        match f.list.pop() {
            Some(a) => {
                f.bytes -= a.allocated_bytes();
                a
            }
            None => Bump::with_capacity(self.chunk),
        }
    }

    /// Resets an arena and gives it back. An arena that kept more than [`ARENA_KEEP_BYTES`] (a
    /// reset keeps its largest chunk) is freed instead, and so is one that would take the pool
    /// past [`DEFAULT_POOL_KEEP`] arenas or [`ARENA_POOL_BYTES`].
    pub fn give(&self, mut arena: Bump) {
        let used = arena.allocated_bytes();
        arena.reset();
        let kept = arena.allocated_bytes();
        if kept > ARENA_KEEP_BYTES {
            // The reset freed the smaller chunks, dropping it frees the largest: count them all.
            note_large_free(used);
            return;
        }
        let mut f = self.free.borrow_mut();
        if f.list.len() < DEFAULT_POOL_KEEP && f.bytes + kept <= ARENA_POOL_BYTES {
            f.bytes += kept;
            f.list.push(arena);
        }
    }

    /// Arenas waiting in the pool.
    pub fn free(&self) -> usize {
        self.free.borrow().list.len()
    }

    /// Bytes the arenas waiting in the pool hold.
    pub fn free_bytes(&self) -> usize {
        self.free.borrow().bytes
    }
}

/// A future boxed in a request's arena, type-erased: what handlers return. It lives as long as
/// the arena borrow and is dropped (destructor run) before the arena can be reset.
pub type ArenaFuture<'a, T> =
    std::pin::Pin<bumpalo::boxed::Box<'a, dyn std::future::Future<Output = T> + 'a>>;

/// Boxes `fut` in `arena` without touching the heap and erases its type.
pub fn arena_future<'a, T, F>(arena: &'a Bump, fut: F) -> ArenaFuture<'a, T>
where
    F: std::future::Future<Output = T> + 'a,
{
    let boxed = bumpalo::boxed::Box::new_in(fut, arena);
    let raw: *mut F = bumpalo::boxed::Box::into_raw(boxed);
    // Unsizing a raw pointer is allowed on stable; bumpalo's Box cannot be coerced directly.
    let raw: *mut (dyn std::future::Future<Output = T> + 'a) = raw;
    // SAFETY: `raw` came from `Box::into_raw` on a box in `arena` a line above, and is turned
    // back into exactly one box; only its static type changed (same allocation, same layout,
    // with the vtable for `F`).
    let boxed = unsafe { bumpalo::boxed::Box::from_raw(raw) };
    std::pin::Pin::from(boxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_return_to_baseline() {
        let pool = BufferPool::new(1024, 8);
        let a = pool.take();
        let b = pool.take();
        assert_eq!(pool.stats().in_use, 2);
        assert!(a.capacity() >= 1024);
        pool.give(a);
        pool.give(b);
        let s = pool.stats();
        assert_eq!((s.in_use, s.free, s.high_water), (0, 2, 2));
        let c = pool.take();
        assert_eq!(pool.stats().free, 1, "reused from the pool");
        pool.give(c);
    }

    #[test]
    fn oversized_buffers_are_not_kept() {
        let pool = BufferPool::new(1024, 8);
        let mut a = pool.take();
        a.reserve(10_000);
        let freed = large_freed();
        pool.give(a);
        assert!(large_freed() >= freed + 10_000, "counted for the heap trim");
        assert_eq!(pool.stats().free, 0);
        assert_eq!(pool.stats().in_use, 0);
    }

    #[test]
    fn arena_futures_run_and_drop() {
        use std::{cell::Cell, rc::Rc};
        struct Flag(Rc<Cell<bool>>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        let arena = Bump::new();
        let dropped = Rc::new(Cell::new(false));
        let flag = Flag(dropped.clone());
        let fut = arena_future(&arena, async move {
            let _keep = flag;
            41 + 1
        });
        assert_eq!(futures_lite::future::block_on(fut), 42);
        assert!(dropped.get(), "the future's captures were dropped");
    }

    #[test]
    fn arenas_are_reset_not_freed() {
        let pool = ArenaPool::new(4096);
        let a = pool.take();
        let s: &mut [u8] = a.alloc_slice_fill_copy(100, 7u8);
        assert_eq!(s.len(), 100);
        let before = a.allocated_bytes();
        pool.give(a);
        let b = pool.take();
        assert_eq!(b.allocated_bytes(), before, "memory kept");
        pool.give(b);
        assert_eq!(pool.free(), 1);
    }

    #[test]
    fn an_arena_that_grew_large_is_freed_not_pooled() {
        let pool = ArenaPool::new(4096);
        let a = pool.take();
        let _big: &mut [u8] = a.alloc_slice_fill_copy(4 * ARENA_KEEP_BYTES, 1u8);
        let freed = large_freed();
        pool.give(a);
        assert_eq!(pool.free(), 0, "a large arena is not kept");
        // Other tests may free large blocks meanwhile: at least this one was counted.
        assert!(large_freed() >= freed + 4 * ARENA_KEEP_BYTES);
        let b = pool.take();
        assert!(b.allocated_bytes() <= ARENA_KEEP_BYTES);
        let _small: &mut [u8] = b.alloc_slice_fill_copy(ARENA_KEEP_BYTES / 2, 1u8);
        pool.give(b);
        assert_eq!(pool.free(), 1, "an arena within the bound is kept");
    }

    #[test]
    fn free_arenas_hold_at_most_the_pool_budget() {
        let pool = ArenaPool::new(4096);
        let arenas: Vec<Bump> = (0..DEFAULT_POOL_KEEP)
            .map(|_| {
                let a = pool.take();
                let _: &mut [u8] = a.alloc_slice_fill_copy(ARENA_KEEP_BYTES - 1024, 1u8);
                a
            })
            .collect();
        for a in arenas {
            pool.give(a);
        }
        assert!(pool.free_bytes() <= ARENA_POOL_BYTES);
        assert!(
            pool.free() < DEFAULT_POOL_KEEP,
            "the byte budget, not the count, stopped it"
        );
        let held = pool.free_bytes();
        let a = pool.take();
        assert_eq!(pool.free_bytes(), held - a.allocated_bytes());
        pool.give(a);
        assert_eq!(pool.free_bytes(), held);
    }
}
