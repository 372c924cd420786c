//! The writer's cache of recently put or found atoms, which also gathers the references they gain during a `put`.

use crate::state::State;
use crate::HOT_CACHE;
use hart_core::Hash;

/// The writer's cache of atoms recently put or found: two direct-mapped tables, one for leaves
/// (the tokens of a text repeat constantly) and a smaller one for composites (a parent follows
/// its children closely), in front of a two-generation map of atoms found in the indexes. Only
/// live atoms are cached; `gc`, the only way an atom dies, clears it (and runs with no session
/// open).
///
/// During a `put`, a slot also gathers the references its atom gains (and, for an atom created
/// in this `put`, its creation), so that a token used ten thousand times in a batch updates
/// the reference counts once. Every `put` ends with [`HotCache::flush`]: between calls the
/// state holds every count exactly.
pub(crate) struct HotCache {
    /// [`LEAF_SLOTS`] slots for leaves, then [`NODE_SLOTS`] for composites.
    direct: Vec<Slot>,
    pub(crate) map: hart_store::BoundedMap<Hash, u64>,
    /// Slots whose `pending` may be non-zero.
    dirty: Vec<u32>,
    /// Number of the composite whose children are being counted (see [`Slot::stamp`]).
    stamp: u32,
}

/// One cache line, so that a hit touches one.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Slot {
    hash: Hash,
    off: u64,
    /// The composite that last counted this atom as a child: a child repeated within one
    /// composite gains one reference.
    stamp: u32,
    /// References gained since the last flush; the top bit marks an atom created since then
    /// (its entry in the state is written at the flush).
    pending: u32,
}

const LEAF_SLOTS: usize = 1 << 15;
const NODE_SLOTS: usize = 1 << 12;
const EMPTY: Slot = Slot { hash: Hash([0xff; 32]), off: u64::MAX, stamp: 0, pending: 0 };
const FRESH: u32 = 1 << 31;

impl HotCache {
    pub(crate) fn new() -> Self {
        HotCache {
            direct: vec![EMPTY; LEAF_SLOTS + NODE_SLOTS],
            map: hart_store::BoundedMap::new(HOT_CACHE),
            dirty: Vec::new(),
            stamp: 0,
        }
    }

    /// The slot `hash` may occupy among leaves, or among composites.
    #[inline]
    pub(crate) fn slot(hash: &Hash, leaf: bool) -> usize {
        let p = hash.prefix_u64() as usize;
        if leaf {
            p & (LEAF_SLOTS - 1)
        } else {
            LEAF_SLOTS + ((p >> 32) & (NODE_SLOTS - 1))
        }
    }

    /// The slot holding `hash`, if any.
    #[inline]
    pub(crate) fn find(&self, hash: &Hash) -> Option<usize> {
        let holds = |i: usize| self.direct[i].hash == *hash && self.direct[i].off != u64::MAX;
        let i = Self::slot(hash, true);
        if holds(i) {
            return Some(i);
        }
        let i = Self::slot(hash, false);
        holds(i).then_some(i)
    }

    /// Start loading the slots [`HotCache::find`] will read for `hash` (`leaf_only`: the leaf
    /// slot alone, where a composite's children almost always are).
    #[inline]
    pub(crate) fn prefetch(&self, hash: &Hash, leaf_only: bool) {
        hart_core::prefetch(self.direct[Self::slot(hash, true)..].as_ptr());
        if !leaf_only {
            hart_core::prefetch(self.direct[Self::slot(hash, false)..].as_ptr());
        }
    }

    /// The offset of a cached atom, from the direct tables only.
    #[inline]
    pub(crate) fn direct(&self, hash: &Hash) -> Option<u64> {
        self.find(hash).map(|i| self.direct[i].off)
    }

    /// Put an atom in its direct slot (after applying what the atom there gathered).
    #[inline]
    pub(crate) fn place(
        &mut self,
        state: &mut State,
        hash: Hash,
        off: u64,
        leaf: bool,
        fresh: bool,
    ) -> Result<(), u64> {
        let i = Self::slot(&hash, leaf);
        self.settle(state, i)?;
        self.direct[i] = Slot { hash, off, stamp: 0, pending: if fresh { FRESH } else { 0 } };
        if fresh {
            self.dirty.push(i as u32);
        }
        Ok(())
    }

    /// Apply what slot `i` gathered to the state; Err(offset) if that atom was removed.
    #[inline]
    pub(crate) fn settle(&mut self, state: &mut State, i: usize) -> Result<(), u64> {
        let s = &mut self.direct[i];
        if s.pending == 0 {
            return Ok(());
        }
        let n = s.pending & !FRESH;
        let fresh = s.pending & FRESH != 0;
        s.pending = 0;
        if fresh {
            state.created_with(s.off, n);
        } else if !state.add_refs(s.off, n) {
            return Err(s.off);
        }
        Ok(())
    }

    /// Apply everything gathered since the last flush.
    pub(crate) fn flush(&mut self, state: &mut State) -> Result<(), u64> {
        let mut r = Ok(());
        for i in std::mem::take(&mut self.dirty) {
            r = r.and(self.settle(state, i as usize));
        }
        r
    }

    /// A new stamp for the next composite's children.
    #[inline]
    pub(crate) fn next_stamp(&mut self) -> u32 {
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.direct.iter_mut().for_each(|s| s.stamp = 0);
            self.stamp = 1;
        }
        self.stamp
    }

    /// Count one reference to the atom in `hash`'s direct slot, once per stamp. Returns its
    /// offset and whether it was counted now (first time under this stamp), or None if the
    /// atom is not in its slot.
    #[inline]
    pub(crate) fn count(&mut self, hash: &Hash, stamp: u32) -> Option<(u64, bool)> {
        let i = self.find(hash)?;
        let s = &mut self.direct[i];
        if s.stamp == stamp {
            return Some((s.off, false));
        }
        s.stamp = stamp;
        if s.pending == 0 {
            self.dirty.push(i as u32);
        }
        s.pending += 1;
        Some((s.off, true))
    }

    pub(crate) fn clear(&mut self) {
        debug_assert!(self.direct.iter().all(|s| s.pending == 0), "cache cleared with references pending");
        self.direct.fill(EMPTY);
        self.map.clear();
        self.dirty.clear();
    }
}
