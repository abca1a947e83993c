//! Typed cross-shard messaging on glommio's channel mesh.
//!
//! `send_to(shard, msg)` and `broadcast(msg)` are one-way; `call(shard, req).await` returns the
//! handler's reply. Every pair of shards has a bounded queue (glommio's shared channels): a full
//! queue makes the sender wait, nothing is dropped and nothing grows without bound. Messages to the
//! calling shard itself never touch a queue: the handler runs inline.
//!
//! Each shard registers one [`MeshHandler`]; a receive task per peer runs it for every message
//! and sends the reply of a call back over the mesh, where the caller's pending entry (a
//! generation-checked slab slot) is completed. A call whose future was dropped before the reply
//! came leaves a stale id behind, and its late reply is discarded.

use std::{
    cell::RefCell,
    future::poll_fn,
    rc::Rc,
    sync::{Arc, Mutex},
    task::{Poll, Waker},
};

use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};

use crate::{
    engine::Doorbell,
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

/// What travels between shards.
enum Envelope<M> {
    Cast(M),
    Call(u64, M),
    Reply(u64, Option<M>),
}

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
    slots: Arc<Mutex<Vec<Option<PeerBuilder<M>>>>>,
    /// One per shard: rung after a message is queued for that shard.
    bells: Arc<[Arc<Doorbell>]>,
}

/// One shard's copy of glommio's mesh builder.
type PeerBuilder<M> = MeshBuilder<Envelope<M>, Full>;

impl<M: Send + 'static> Clone for MeshConfig<M> {
    fn clone(&self) -> Self {
        MeshConfig {
            slots: self.slots.clone(),
            bells: self.bells.clone(),
        }
    }
}

impl<M: Send + 'static> MeshConfig<M> {
    /// A full mesh of `shards` peers with `queue` slots per direction.
    pub fn new(shards: usize, queue: usize) -> Self {
        let b = MeshBuilder::full(shards, queue);
        let slots = (0..shards).map(|_| Some(b.clone())).collect();
        // The original stays alive for the life of the process, so that the clones' reference
        // count can never reach zero while another thread still holds one.
        std::mem::forget(b);
        let bells = (0..shards).map(|_| Arc::new(Doorbell::new())).collect();
        MeshConfig {
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
        crate::engine::attach_doorbell(self.bells[shard].clone());
        let inner = Rc::new(MeshInner {
            me,
            n,
            bells: self.bells.clone(),
            senders,
            pending: RefCell::new(GenSlab::new()),
            handler: Box::new(handler),
        });
        for (from, rx) in receivers.streams() {
            let weak = Rc::downgrade(&inner);
            glommio::spawn_local(crate::probe::Probed(async move {
                while let Some(env) = rx.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    inner.dispatch(from, env).await;
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
    bells: Arc<[Arc<Doorbell>]>,
    senders: Senders<Envelope<M>>,
    pending: RefCell<GenSlab<Pending<M>>>,
    handler: Box<dyn MeshHandler<M>>,
}

impl<M: Send + 'static> MeshInner<M> {
    async fn dispatch(&self, from: usize, env: Envelope<M>) {
        match env {
            Envelope::Cast(m) => {
                self.handler.handle(from, m);
            }
            Envelope::Call(id, m) => {
                let reply = self.handler.handle(from, m);
                // The caller's shard may be shutting down; a lost reply is then harmless.
                if self
                    .senders
                    .send_to(from, Envelope::Reply(id, reply))
                    .await
                    .is_ok()
                {
                    self.bells[from].ring();
                }
            }
            Envelope::Reply(id, m) => {
                let mut p = self.pending.borrow_mut();
                if let Some(slot) = p.get_mut(Key::unpack(id)) {
                    if let Pending::Waiting(Some(w)) = std::mem::replace(slot, Pending::Done(m)) {
                        w.wake();
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
        self.inner
            .senders
            .send_to(shard, Envelope::Cast(msg))
            .await
            .map_err(|e| Error::Mesh(format!("send to shard {shard}: {e}")))?;
        self.inner.bells[shard].ring();
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
        self.inner
            .senders
            .send_to(shard, Envelope::Call(key.pack(), req))
            .await
            .map_err(|e| Error::Mesh(format!("call shard {shard}: {e}")))?;
        self.inner.bells[shard].ring();
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
