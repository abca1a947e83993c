//! Request-path accounting: a thread-local flag that is set while a request-path task (a
//! connection task, a mesh dispatch task) is being polled, and a count of those polls.
//!
//! A test's counting allocator reads [`active`] to count only the heap allocations made on the
//! request path, separately from the reactor's own machinery (glommio allocates a small record per
//! sleep/wake cycle of an idle shard, which is not per request and vanishes under load). Setting
//! the flag costs two thread-local writes per poll.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

thread_local! {
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
    static POLLS: Cell<u64> = const { Cell::new(0) };
}

/// How many times this thread has polled a request-path task or noted a wake-up
/// ([`note_wake`]): the engine's driver compares it across a yield to learn whether other tasks
/// ran meanwhile, and so may have woken more that glommio queued behind the driver.
pub fn polls() -> u64 {
    POLLS.with(|p| p.get())
}

/// Counts a task woken on this thread by another task (the mesh's flush task when a message
/// starts a batch, a caller when its reply arrives), as a poll would: for wakers that are not
/// request-path tasks themselves.
pub fn note_wake() {
    POLLS.with(|p| p.set(p.get().wrapping_add(1)));
}

/// Whether the current thread is polling a request-path task. Safe to call from an allocator.
pub fn active() -> bool {
    ACTIVE.with(|a| a.get())
}

/// Wraps a future so that [`active`] is true while it is polled.
pub struct Probed<F>(pub F);

impl<F: Future> Future for Probed<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = project(self);
        POLLS.with(|p| p.set(p.get().wrapping_add(1)));
        let was = ACTIVE.with(|a| a.replace(true));
        let r = this.poll(cx);
        ACTIVE.with(|a| a.set(was));
        r
    }
}

/// Structural pin projection to the only field.
fn project<F>(p: Pin<&mut Probed<F>>) -> Pin<&mut F> {
    // SAFETY: `Probed` never moves its field out of a pinned `Probed`, has no `Drop` impl and is
    // not `Unpin` unless `F` is: projecting the pin to its only field is sound.
    unsafe { p.map_unchecked_mut(|s| &mut s.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_set_only_inside_the_poll() {
        assert!(!active());
        let before = polls();
        let inside = futures_lite::future::block_on(Probed(async { active() }));
        assert!(inside);
        assert!(!active());
        assert_eq!(polls(), before + 1);
    }
}
