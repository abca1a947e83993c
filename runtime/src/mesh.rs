//! Typed cross-shard messaging on glommio's channel mesh.
//!
//! `send_to(shard, msg)` and `broadcast(msg)` are one-way; `call(shard, req).await` returns the
//! handler's reply. Messages to the calling shard itself never touch a queue: the handler runs
//! inline.
//!
//! Messages to another shard are batched: they go into that shard's outbox, and a flush task,
//! woken by the first message of a batch, sends the whole outbox as one mesh message once the
//! tasks that were runnable at that point have run (a shard's engine wakes all connections with
//! new data in one turn, so their forwarded requests share a batch). The receiving shard runs its
//! [`MeshHandler`] over the batch, writes each call's reply into the same vector and sends it back
//! as one message, where the callers' pending entries (generation-checked slab slots) are
//! completed; the emptied vector is kept for the next batch, so steady traffic allocates nothing.
//! Messages from one shard to another arrive in the order they were sent. A call whose future was
//! dropped before the reply came leaves a stale id behind, and its late reply is discarded.
//!
//! Every pair of shards has a bounded queue of batches (glommio's shared channels) and each
//! outbox holds at most the queue's depth in messages: a sender finding it full waits, nothing is
//! dropped and nothing grows without bound.

use std::{
    cell::{Cell, RefCell},
    future::poll_fn,
    rc::{Rc, Weak},
    sync::{Arc, Mutex},
    task::{Poll, Waker},
};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};

use crate::{
    engine::{ring_bell, Doorbell},
    error::{Error, Result},
    slab::{GenSlab, Key},
};

/// Default depth of each shard-to-shard queue.
pub const DEFAULT_QUEUE: usize = 1024;

/// Handles messages arriving at a shard. `Some(reply)` answers a `call`; for one-way messages the
/// return value is ignored.
pub trait MeshHandler<M>: 'static {
    /// Handles `msg` from shard `from`.
    fn handle(&self, from: usize, msg: M) -> Option<M>;
}

impl<M, F: Fn(usize, M) -> Option<M> + 'static> MeshHandler<M> for F {
    fn handle(&self, from: usize, msg: M) -> Option<M> {
        self(from, msg)
    }
}

/// What travels between shards: a batch of these, in one vector.
enum Item<M> {
    Cast(M),
    Call(u64, M),
    Reply(u64, Option<M>),
    /// Taken out while the batch is handled.
    Taken,
}

/// One mesh message.
type Batch<M> = Vec<Item<M>>;

/// Emptied batch vectors kept per shard for reuse.
const SPARE_BATCHES: usize = 16;

enum Pending<M> {
    Waiting(Option<Waker>),
    Done(Option<M>),
}

/// Configures the mesh before the shards start; share it with every shard and `join` there.
///
/// glommio's `MeshBuilder` keeps an `Rc` inside and is only safe to clone on one thread, so all
/// per-shard copies are made here, on the thread that creates the config, and each shard takes
/// its own. The mutex is touched once per shard at start-up, never on the message path.
pub struct MeshConfig<M: Send + 'static> {
    depth: usize,
    slots: Arc<Mutex<Vec<Option<PeerBuilder<M>>>>>,
    /// One per shard: rung after a message is queued for that shard.
    bells: Arc<[Arc<Doorbell>]>,
}

/// One shard's copy of glommio's mesh builder.
type PeerBuilder<M> = MeshBuilder<Batch<M>, Full>;

impl<M: Send + 'static> Clone for MeshConfig<M> {
    fn clone(&self) -> Self {
        MeshConfig {
            depth: self.depth,
            slots: self.slots.clone(),
            bells: self.bells.clone(),
        }
    }
}

impl<M: Send + 'static> MeshConfig<M> {
    /// A full mesh of `shards` peers with `queue` batches per direction and at most `queue`
    /// messages per outbox.
    pub fn new(shards: usize, queue: usize) -> Self {
        let b = MeshBuilder::full(shards, queue);
        let slots = (0..shards).map(|_| Some(b.clone())).collect();
        // The original stays alive for the life of the process, so that the clones' reference
        // count can never reach zero while another thread still holds one.
        std::mem::forget(b);
        let bells = (0..shards)
            .map(|_| Arc::new(Doorbell::new(shards)))
            .collect();
        MeshConfig {
            depth: queue.max(1),
            slots: Arc::new(Mutex::new(slots)),
            bells,
        }
    }

    /// Joins the mesh from shard `shard` (every shard must, before any message flows) and starts
    /// the receive tasks that run `handler`.
    ///
    /// glommio orders mesh peers by executor id; the runtime creates executors in shard order, so
    /// peer ids equal shard ids, and this checks it.
    pub async fn join(&self, shard: usize, handler: impl MeshHandler<M>) -> Result<Mesh<M>> {
        let builder = self
            .slots
            .lock()
            .map_err(|_| Error::Mesh("mesh config poisoned".into()))?
            .get_mut(shard)
            .and_then(Option::take)
            .ok_or_else(|| {
                Error::Mesh(format!("shard {shard} has no mesh slot or joined twice"))
            })?;
        let (senders, mut receivers) = builder
            .join()
            .await
            .map_err(|e| Error::Mesh(format!("join: {e}")))?;
        let me = senders.peer_id();
        if me != shard {
            return Err(Error::Mesh(format!(
                "shard {shard} got mesh peer id {me}: executors were not created in shard order"
            )));
        }
        let n = senders.nr_consumers();
        let wakers = crate::engine::attach_doorbell(shard, &self.bells);
        let inner = Rc::new(MeshInner {
            me,
            n,
            depth: self.depth,
            bells: self.bells.clone(),
            senders,
            pending: RefCell::new(GenSlab::new()),
            handler: Box::new(handler),
            outbox: RefCell::new((0..n).map(|_| Vec::new()).collect()),
            spare: RefCell::new(Vec::new()),
            flush_due: Cell::new(false),
            flusher: RefCell::new(None),
            room_waiters: RefCell::new(Vec::new()),
        });
        glommio::spawn_local(crate::probe::Probed(flush_task(Rc::downgrade(&inner)))).detach();
        for (from, rx) in receivers.streams() {
            let weak = Rc::downgrade(&inner);
            let wakers = wakers.clone();
            let bell = self.bells[shard].clone();
            glommio::spawn_local(crate::probe::Probed(async move {
                let mut received = 0u64;
                loop {
                    if let Some(w) = &wakers {
                        // With an engine, the doorbell says how many batches are waiting and
                        // wakes this task when more come: `recv` below then never waits.
                        poll_fn(|cx| {
                            if bell.sent_by(from) > received {
                                return Poll::Ready(());
                            }
                            w.register(from, cx.waker());
                            // A batch counted before the registration rang before it too.
                            if bell.sent_by(from) > received {
                                Poll::Ready(())
                            } else {
                                Poll::Pending
                            }
                        })
                        .await;
                    }
                    let Some(batch) = rx.recv().await else { return };
                    received += 1;
                    let Some(inner) = weak.upgrade() else { return };
                    inner.dispatch(from, batch).await;
                }
            }))
            .detach();
        }
        Ok(Mesh { inner })
    }
}

struct MeshInner<M: Send + 'static> {
    me: usize,
    n: usize,
    /// Most messages an outbox holds.
    depth: usize,
    bells: Arc<[Arc<Doorbell>]>,
    senders: Senders<Batch<M>>,
    pending: RefCell<GenSlab<Pending<M>>>,
    handler: Box<dyn MeshHandler<M>>,
    /// Per destination shard: messages not yet sent.
    outbox: RefCell<Vec<Batch<M>>>,
    /// Emptied batch vectors.
    spare: RefCell<Vec<Batch<M>>>,
    /// An outbox has messages and the flush task was woken for them.
    flush_due: Cell<bool>,
    flusher: RefCell<Option<Waker>>,
    /// Senders waiting for room in a full outbox.
    room_waiters: RefCell<Vec<Waker>>,
}

impl<M: Send + 'static> MeshInner<M> {
    /// Runs the handler over a batch from shard `from` and sends the calls' replies back in it.
    async fn dispatch(&self, from: usize, mut batch: Batch<M>) {
        let mut replies = 0;
        for i in 0..batch.len() {
            match std::mem::replace(&mut batch[i], Item::Taken) {
                Item::Cast(m) => {
                    self.handler.handle(from, m);
                }
                Item::Call(id, m) => {
                    batch[replies] = Item::Reply(id, self.handler.handle(from, m));
                    replies += 1;
                }
                Item::Reply(id, m) => self.complete(id, m),
                Item::Taken => {}
            }
        }
        batch.truncate(replies);
        if replies == 0 {
            self.recycle(batch);
            return;
        }
        // The caller's shard may be shutting down; lost replies are then harmless.
        if self.senders.send_to(from, batch).await.is_ok() {
            ring_bell(&self.bells, from, self.me);
        }
    }

    fn complete(&self, id: u64, m: Option<M>) {
        let mut p = self.pending.borrow_mut();
        if let Some(slot) = p.get_mut(Key::unpack(id)) {
            if let Pending::Waiting(Some(w)) = std::mem::replace(slot, Pending::Done(m)) {
                w.wake();
                crate::probe::note_wake();
            }
        }
    }

    fn recycle(&self, mut batch: Batch<M>) {
        batch.clear();
        let mut spare = self.spare.borrow_mut();
        if spare.len() < SPARE_BATCHES && batch.capacity() > 0 {
            spare.push(batch);
        }
    }

    /// Waits for room in `shard`'s outbox, then queues `item` there and wakes the flush task
    /// if this starts a batch.
    async fn post(&self, shard: usize, item: Item<M>) {
        poll_fn(|cx| {
            if self.outbox.borrow()[shard].len() < self.depth {
                Poll::Ready(())
            } else {
                self.room_waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let mut outbox = self.outbox.borrow_mut();
        let out = &mut outbox[shard];
        if out.capacity() == 0 {
            if let Some(v) = self.spare.borrow_mut().pop() {
                *out = v;
            }
        }
        out.push(item);
        if !self.flush_due.replace(true) {
            if let Some(w) = self.flusher.borrow_mut().take() {
                w.wake();
                crate::probe::note_wake();
            }
        }
    }
}

/// Sends each shard's outbox as one batch. Woken by the first message of a batch; glommio runs
/// woken tasks in order, so the tasks already runnable at that point queue their messages first.
async fn flush_task<M: Send + 'static>(weak: Weak<MeshInner<M>>) {
    loop {
        let due = poll_fn(|cx| {
            let Some(inner) = weak.upgrade() else {
                return Poll::Ready(false);
            };
            if inner.flush_due.get() {
                return Poll::Ready(true);
            }
            *inner.flusher.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(inner) = weak.upgrade().filter(|_| due) else {
            return;
        };
        inner.flush_due.set(false);
        for shard in 0..inner.n {
            if inner.outbox.borrow()[shard].is_empty() {
                continue;
            }
            let next = inner.spare.borrow_mut().pop().unwrap_or_default();
            let batch = std::mem::replace(&mut inner.outbox.borrow_mut()[shard], next);
            for w in inner.room_waiters.borrow_mut().drain(..) {
                w.wake();
            }
            match inner.senders.send_to(shard, batch).await {
                Ok(()) => ring_bell(&inner.bells, shard, inner.me),
                Err(e) => {
                    // The shard is gone (shutting down): its calls fail now instead of hanging.
                    if let glommio::GlommioError::Closed(glommio::ResourceType::Channel(batch)) = e
                    {
                        for item in batch {
                            if let Item::Call(id, _) = item {
                                inner.complete(id, None);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A shard's end of the mesh. Cheap to clone; never leaves its shard.
pub struct Mesh<M: Send + 'static> {
    inner: Rc<MeshInner<M>>,
}

impl<M: Send + 'static> Clone for Mesh<M> {
    fn clone(&self) -> Self {
        Mesh {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Send + 'static> Mesh<M> {
    /// This shard's id.
    pub fn shard(&self) -> usize {
        self.inner.me
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inner.n
    }

    /// Sends `msg` to `shard` (waits while its queue is full).
    pub async fn send_to(&self, shard: usize, msg: M) -> Result<()> {
        if shard == self.inner.me {
            self.inner.handler.handle(shard, msg);
            return Ok(());
        }
        self.check(shard)?;
        self.inner.post(shard, Item::Cast(msg)).await;
        Ok(())
    }

    /// Sends a copy of `msg` to every shard, this one included.
    pub async fn broadcast(&self, msg: M) -> Result<()>
    where
        M: Clone,
    {
        for s in 0..self.inner.n {
            self.send_to(s, msg.clone()).await?;
        }
        Ok(())
    }

    /// Sends `req` to `shard` and waits for its handler's reply.
    pub async fn call(&self, shard: usize, req: M) -> Result<M> {
        if shard == self.inner.me {
            return self
                .inner
                .handler
                .handle(shard, req)
                .ok_or_else(|| Error::Mesh("handler gave no reply".into()));
        }
        self.check(shard)?;
        let key = self
            .inner
            .pending
            .borrow_mut()
            .insert(Pending::Waiting(None));
        let guard = PendingGuard {
            inner: &self.inner,
            key,
        };
        self.inner.post(shard, Item::Call(key.pack(), req)).await;
        let reply = poll_fn(|cx| {
            let mut p = self.inner.pending.borrow_mut();
            let slot = p
                .get_mut(key)
                .expect("pending entry lives while its call does");
            match slot {
                Pending::Done(_) => match p.remove(key) {
                    Some(Pending::Done(m)) => Poll::Ready(m),
                    _ => unreachable!("checked Done"),
                },
                Pending::Waiting(w) => {
                    *w = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        std::mem::forget(guard);
        reply.ok_or_else(|| Error::Mesh(format!("shard {shard} gave no reply")))
    }

    fn check(&self, shard: usize) -> Result<()> {
        if shard >= self.inner.n {
            return Err(Error::Mesh(format!(
                "no shard {shard} (mesh of {})",
                self.inner.n
            )));
        }
        Ok(())
    }

    /// Calls in flight from this shard.
    pub fn pending_calls(&self) -> usize {
        self.inner.pending.borrow().len()
    }
}

/// Removes a call's pending entry if its future is dropped before the reply arrives.
struct PendingGuard<'a, M: Send + 'static> {
    inner: &'a MeshInner<M>,
    key: Key,
}

impl<M: Send + 'static> Drop for PendingGuard<'_, M> {
    fn drop(&mut self) {
        self.inner.pending.borrow_mut().remove(self.key);
    }
}
