//! The built-in key-value store: every key belongs to one shard (by hash), other shards forward
//! over the mesh. No lock anywhere: a shard's map is touched only by its own thread.
//!
//! Keys and small values travel inline in mesh messages ([`Bytes`]), so a remote `GET` of a
//! small value allocates nothing. For comparison, [`MutexKv`] is the same store behind one
//! `Mutex<HashMap>` shared by all shards (`/kv-mutex/{key}`), the design this replaces.

use std::{
    cell::RefCell,
    collections::HashMap,
    rc::Rc,
    sync::{Arc, Mutex},
};

use percore_runtime::Mesh;

/// Keys and values up to this size travel inline in mesh messages.
pub const INLINE: usize = 62;

/// Bytes that are inline when small.
#[derive(Clone, Debug)]
pub enum Bytes {
    /// At most [`INLINE`] bytes, no heap.
    Inline { len: u8, data: [u8; INLINE] },
    /// Larger.
    Heap(Box<[u8]>),
}

impl Bytes {
    /// Copies `b`.
    pub fn new(b: &[u8]) -> Self {
        if b.len() <= INLINE {
            let mut data = [0u8; INLINE];
            data[..b.len()].copy_from_slice(b);
            Bytes::Inline {
                len: b.len() as u8,
                data,
            }
        } else {
            Bytes::Heap(b.into())
        }
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, data } => &data[..*len as usize],
            Bytes::Heap(b) => b,
        }
    }
}

/// Messages between shards (the server's mesh type).
#[derive(Clone, Debug)]
pub enum ShardMsg {
    /// Read a key on its owner.
    KvGet(Bytes),
    /// Store a value on the key's owner.
    KvPut(Bytes, Box<[u8]>),
    /// Remove a key on its owner.
    KvDelete(Bytes),
    /// Reply to `KvGet`.
    KvValue(Option<Bytes>),
    /// Reply to `KvPut` (true: created) and `KvDelete` (true: existed).
    KvDone(bool),
    /// A rate limiter's demand on the sending shard over the last interval (one-way).
    Demand { key: u64, demand: u64 },
}

/// FNV-1a: a fixed hash every shard computes alike.
pub fn owner_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in key {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The shard that owns `key`.
pub fn owner(key: &[u8], shards: usize) -> usize {
    (owner_hash(key) % shards as u64) as usize
}

/// Key to value.
type Map = HashMap<Box<[u8]>, Box<[u8]>>;

/// One shard's part of the store.
pub struct Kv {
    shard: usize,
    shards: usize,
    map: RefCell<Map>,
    mesh: RefCell<Option<Mesh<ShardMsg>>>,
}

/// Errors of remote operations.
pub type KvResult<T> = Result<T, percore_runtime::Error>;

impl Kv {
    /// An empty store part for `shard` of `shards`.
    pub fn new(shard: usize, shards: usize) -> Rc<Kv> {
        Rc::new(Kv {
            shard,
            shards,
            map: RefCell::new(HashMap::new()),
            mesh: RefCell::new(None),
        })
    }

    /// Connects the store to the mesh once joined.
    pub fn set_mesh(&self, mesh: Mesh<ShardMsg>) {
        *self.mesh.borrow_mut() = Some(mesh);
    }

    /// Handles a mesh message addressed to this shard's part.
    pub fn handle(&self, msg: ShardMsg) -> Option<ShardMsg> {
        match msg {
            ShardMsg::KvGet(k) => Some(ShardMsg::KvValue(
                self.map.borrow().get(k.as_slice()).map(|v| Bytes::new(v)),
            )),
            ShardMsg::KvPut(k, v) => Some(ShardMsg::KvDone(
                self.map
                    .borrow_mut()
                    .insert(k.as_slice().into(), v)
                    .is_none(),
            )),
            ShardMsg::KvDelete(k) => Some(ShardMsg::KvDone(
                self.map.borrow_mut().remove(k.as_slice()).is_some(),
            )),
            _ => None,
        }
    }

    /// Calls from this shard waiting for another shard's reply.
    pub fn mesh_pending(&self) -> usize {
        self.mesh.borrow().as_ref().map_or(0, |m| m.pending_calls())
    }

    fn mesh(&self) -> Option<Mesh<ShardMsg>> {
        self.mesh.borrow().clone()
    }

    /// Reads `key`, locally or from its owner; `f` sees the value and produces the result.
    pub async fn get<T>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> T) -> KvResult<T> {
        let o = owner(key, self.shards);
        if o == self.shard {
            return Ok(f(self.map.borrow().get(key).map(|v| &v[..])));
        }
        let mesh = self
            .mesh()
            .ok_or_else(|| percore_runtime::Error::Mesh("not joined".into()))?;
        match mesh.call(o, ShardMsg::KvGet(Bytes::new(key))).await? {
            ShardMsg::KvValue(v) => Ok(f(v.as_ref().map(|b| b.as_slice()))),
            other => Err(percore_runtime::Error::Mesh(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Stores `value` under `key`; true if the key was new.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> KvResult<bool> {
        let o = owner(key, self.shards);
        if o == self.shard {
            return Ok(self
                .map
                .borrow_mut()
                .insert(key.into(), value.into())
                .is_none());
        }
        self.remote(o, ShardMsg::KvPut(Bytes::new(key), value.into()))
            .await
    }

    /// Removes `key`; true if it existed.
    pub async fn delete(&self, key: &[u8]) -> KvResult<bool> {
        let o = owner(key, self.shards);
        if o == self.shard {
            return Ok(self.map.borrow_mut().remove(key).is_some());
        }
        self.remote(o, ShardMsg::KvDelete(Bytes::new(key))).await
    }

    async fn remote(&self, o: usize, msg: ShardMsg) -> KvResult<bool> {
        let mesh = self
            .mesh()
            .ok_or_else(|| percore_runtime::Error::Mesh("not joined".into()))?;
        match mesh.call(o, msg).await? {
            ShardMsg::KvDone(b) => Ok(b),
            other => Err(percore_runtime::Error::Mesh(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }
}

/// The lock-based peer: one map behind a mutex shared by every shard.
#[derive(Clone, Default)]
pub struct MutexKv {
    map: Arc<Mutex<Map>>,
}

impl MutexKv {
    /// Reads `key` under the lock.
    pub fn get<T>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> T) -> T {
        let m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        f(m.get(key).map(|v| &v[..]))
    }
    /// Stores under the lock; true if new.
    pub fn put(&self, key: &[u8], value: &[u8]) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.into(), value.into())
            .is_none()
    }
    /// Removes under the lock; true if it existed.
    pub fn delete(&self, key: &[u8]) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key)
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_stable_and_spread() {
        let mut counts = [0usize; 4];
        for i in 0..1000 {
            let k = format!("key-{i}");
            let o = owner(k.as_bytes(), 4);
            assert_eq!(o, owner(k.as_bytes(), 4));
            counts[o] += 1;
        }
        assert!(counts.iter().all(|&c| c > 150), "{counts:?}");
    }

    #[test]
    fn small_bytes_are_inline() {
        assert!(matches!(Bytes::new(b"abc"), Bytes::Inline { .. }));
        assert_eq!(Bytes::new(&[7u8; 100]).as_slice(), &[7u8; 100][..]);
    }
}
