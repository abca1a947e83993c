//! A generation-checked slab: the shard's table of connections.
//!
//! An id is a slot index plus the generation the slot had when the entry was inserted. Removing an
//! entry bumps the slot's generation, so an id kept by a stale task, timer or late io_uring
//! completion never reaches the connection that reuses the slot: lookups with it return `None`.
//! Generations are 24 bits wide so that an id packs into an io_uring `user_data` with an opcode.

use slab::Slab;

/// Generations wrap at 2^24; a stale id would need 16 million reuses of one slot to alias.
pub const GEN_BITS: u32 = 24;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// A generation-checked key into a [`GenSlab`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    index: u32,
    gen: u32,
}

impl Key {
    /// The slot index.
    pub fn index(self) -> usize {
        self.index as usize
    }
    /// The generation.
    pub fn generation(self) -> u32 {
        self.gen
    }
    /// Packs into 56 bits (index in the low 32, generation above).
    pub fn pack(self) -> u64 {
        (self.gen as u64) << 32 | self.index as u64
    }
    /// Unpacks what [`Key::pack`] made (ignores bits above 56).
    pub fn unpack(v: u64) -> Key {
        Key {
            index: v as u32,
            gen: (v >> 32) as u32 & GEN_MASK,
        }
    }
}

struct Entry<T> {
    gen: u32,
    value: T,
}

/// A slab whose keys carry generations. Single-threaded by construction (shard-local).
pub struct GenSlab<T> {
    slots: Slab<Entry<T>>,
    /// Next generation per slot index, kept after removal so reuse gets a new one.
    gens: Vec<u32>,
}

impl<T> Default for GenSlab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> GenSlab<T> {
    /// An empty slab.
    pub fn new() -> Self {
        GenSlab {
            slots: Slab::new(),
            gens: Vec::new(),
        }
    }

    /// An empty slab with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        GenSlab {
            slots: Slab::with_capacity(n),
            gens: Vec::with_capacity(n),
        }
    }

    /// Inserts `value`, returning its key.
    pub fn insert(&mut self, value: T) -> Key {
        let entry = self.slots.vacant_entry();
        let index = entry.key();
        if index >= self.gens.len() {
            self.gens.resize(index + 1, 0);
        }
        let gen = self.gens[index];
        entry.insert(Entry { gen, value });
        Key {
            index: index as u32,
            gen,
        }
    }

    /// The entry for `key`, if it is still the one the key was made for.
    pub fn get(&self, key: Key) -> Option<&T> {
        match self.slots.get(key.index()) {
            Some(e) if e.gen == key.gen => Some(&e.value),
            _ => None,
        }
    }

    /// Mutable access, generation-checked.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        match self.slots.get_mut(key.index()) {
            Some(e) if e.gen == key.gen => Some(&mut e.value),
            _ => None,
        }
    }

    /// Removes and returns the entry if `key` is current; bumps the slot's generation.
    pub fn remove(&mut self, key: Key) -> Option<T> {
        match self.slots.get(key.index()) {
            Some(e) if e.gen == key.gen => {
                self.gens[key.index()] = (key.gen + 1) & GEN_MASK;
                Some(self.slots.remove(key.index()).value)
            }
            _ => None,
        }
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether there are no live entries.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Iterates live entries with their keys (for drain and listings).
    pub fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().map(|(i, e)| {
            (
                Key {
                    index: i as u32,
                    gen: e.gen,
                },
                &e.value,
            )
        })
    }

    /// Iterates live entries mutably with their keys.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Key, &mut T)> {
        self.slots.iter_mut().map(|(i, e)| {
            (
                Key {
                    index: i as u32,
                    gen: e.gen,
                },
                &mut e.value,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_never_reach_a_new_entry() {
        let mut s = GenSlab::new();
        let a = s.insert("a");
        assert_eq!(s.get(a), Some(&"a"));
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b");
        assert_eq!(a.index(), b.index(), "slot is reused");
        assert_ne!(a, b);
        assert_eq!(s.get(a), None);
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn keys_pack_and_unpack() {
        let mut s = GenSlab::new();
        for _ in 0..5 {
            let k = s.insert(());
            s.remove(k);
        }
        let k = s.insert(());
        assert_eq!(Key::unpack(k.pack()), k);
        assert_eq!(
            Key::unpack(k.pack() | 0xAB << 56),
            k,
            "opcode bits are ignored"
        );
    }

    #[test]
    fn iteration_lists_live_entries() {
        let mut s = GenSlab::new();
        let keys: Vec<_> = (0..4).map(|i| s.insert(i)).collect();
        s.remove(keys[1]);
        let live: Vec<_> = s.iter().map(|(k, v)| (k, *v)).collect();
        assert_eq!(live, vec![(keys[0], 0), (keys[2], 2), (keys[3], 3)]);
    }
}
