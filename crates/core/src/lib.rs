//! Hartonomous domain core: the atom model and everything derived from content alone.
//!
//! This crate does no I/O. Every function is deterministic: the same content gives the same
//! hash, position, Hilbert key and geometry on every machine, backend and run.

pub mod atom;
pub mod features;
pub mod geom;
pub mod hash;
pub mod hilbert;
pub mod key;
pub mod many;
pub mod modality;
pub mod position;
pub mod tree;

pub use atom::{AtomKind, LEAF_MAX, TAG_LEAF, TAG_NODE};
pub use hash::{Hash, HashParseError};
pub use key::HilbertKey;
pub use modality::{Modality, UnknownModality};
pub use position::{Position, COORD_BITS, FEATURE_BITS, HASH_BITS};
pub use tree::{Child, NodeOut, TreeBuilder, MAX_FANOUT};

/// Version of the canonical encoding, position layout and key layout (see docs/FORMAT.md).
pub const FORMAT_VERSION: u32 = 1;

/// Ask the CPU to start loading the cache line holding `*p` (a hint: it never faults and has
/// no effect on results). Hot loops over tables much larger than the caches use it to overlap
/// the memory latency of the next few items with the work on the current one.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it does not dereference the pointer or fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
