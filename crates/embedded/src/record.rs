//! Log records: their exact bytes (docs/FORMAT.md, "Embedded log") and their decoding.

use crate::varint;
use hart_core::{Hash, Position};

pub const LEAF: u8 = 0x01;
pub const NODE: u8 = 0x02;
pub const OBJ_BEGIN: u8 = 0x10;
pub const OBJ_COMMIT: u8 = 0x11;
pub const OBJ_FAIL: u8 = 0x12;
pub const OBJ_DELETE: u8 = 0x13;
pub const GC: u8 = 0x20;
pub const HEAL: u8 = 0x21;

/// A decoded record, borrowing from the log.
#[derive(Debug)]
pub enum Rec<'a> {
    /// `LEAF ‖ modality ‖ len u8 ‖ value`
    Leaf { modality: u8, value: &'a [u8] },
    /// `NODE ‖ modality ‖ hash[32] ‖ x y z m (u32 LE) ‖ n varint ‖ n × varint(own offset − child offset)`
    Node { modality: u8, hash: Hash, pos: Position, children: Children<'a> },
    /// `OBJ_BEGIN ‖ id varint ‖ len varint ‖ JSON(BeginInfo)`
    ObjBegin { id: u64, json: &'a [u8] },
    /// `OBJ_COMMIT ‖ id varint ‖ root offset varint ‖ len varint ‖ JSON(CommitInfo)`
    ObjCommit { id: u64, root: u64, json: &'a [u8] },
    /// `OBJ_FAIL ‖ id varint ‖ len varint ‖ JSON {error, completed_at}`
    ObjFail { id: u64, json: &'a [u8] },
    /// `OBJ_DELETE ‖ id varint`
    ObjDelete { id: u64 },
    /// `GC ‖ n varint ‖ n × offset varint`: atoms removed, in removal order.
    Gc { offsets: Offsets<'a> },
    /// `HEAL ‖ ghost offset varint ‖ good copy offset varint`: a ghost (an atom a repair could
    /// not read) is replaced by a good copy of it written later.
    Heal { ghost: u64, good: u64 },
}

/// Children of a node: offsets, decoded lazily.
#[derive(Debug, Clone, Copy)]
pub struct Children<'a> {
    pub own: u64,
    pub n: usize,
    pub bytes: &'a [u8],
}

impl Iterator for Children<'_> {
    type Item = u64;
    #[inline]
    fn next(&mut self) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let (d, used) = varint::get(self.bytes)?;
        self.bytes = &self.bytes[used..];
        self.n -= 1;
        // A child sits strictly below its parent; a delta that says otherwise ends the list
        // (only a damaged record has one, and a verified walk then fails on the hash).
        if d == 0 {
            return None;
        }
        self.own.checked_sub(d)
    }
}

/// A composite's modality, hash and children, without checking each child's delta (the
/// iterator stops at a bad one): for verified walks, where a wrong list fails on the hash.
#[inline]
pub fn node_unchecked(b: &[u8], own: u64) -> Option<(u8, Hash, Children<'_>)> {
    if *b.first()? != NODE {
        return None;
    }
    let modality = *b.get(1)?;
    let hash = Hash(b.get(2..34)?.try_into().ok()?);
    let mut p = 50;
    let (n, used) = varint::get(b.get(p..)?)?;
    p += used;
    if n as usize > hart_core::MAX_FANOUT * 1024 {
        return None;
    }
    Some((modality, hash, Children { own, n: n as usize, bytes: b.get(p..)? }))
}

#[derive(Debug, Clone, Copy)]
pub struct Offsets<'a> {
    pub n: usize,
    pub bytes: &'a [u8],
}

impl Iterator for Offsets<'_> {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let (v, used) = varint::get(self.bytes)?;
        self.bytes = &self.bytes[used..];
        self.n -= 1;
        Some(v)
    }
}

pub fn encode_leaf(buf: &mut Vec<u8>, modality: u8, value: &[u8]) {
    buf.push(LEAF);
    buf.push(modality);
    buf.push(value.len() as u8);
    buf.extend_from_slice(value);
}

pub fn encode_node(buf: &mut Vec<u8>, own: u64, modality: u8, hash: &Hash, pos: &Position, children: &[u64]) {
    // Sized for the longest encoding, written by index, cut to length: one capacity check
    // instead of one per byte.
    let start = buf.len();
    buf.resize(start + 50 + varint::MAX_LEN * (children.len() + 1), 0);
    let out = &mut buf[start..];
    out[0] = NODE;
    out[1] = modality;
    out[2..34].copy_from_slice(&hash.0);
    for (i, c) in pos.coords().into_iter().enumerate() {
        out[34 + 4 * i..38 + 4 * i].copy_from_slice(&c.to_le_bytes());
    }
    let mut p = 50;
    p += varint::write(&mut out[p..], children.len() as u64);
    debug_assert!(children.iter().all(|&c| c < own));
    p += varint::write_deltas(&mut out[p..], own, children);
    buf.truncate(start + p);
}

pub fn encode_obj(buf: &mut Vec<u8>, tag: u8, id: u64, root: Option<u64>, json: &[u8]) {
    buf.push(tag);
    varint::put(buf, id);
    if let Some(r) = root {
        varint::put(buf, r);
    }
    if tag != OBJ_DELETE {
        varint::put(buf, json.len() as u64);
        buf.extend_from_slice(json);
    }
}

pub fn encode_heal(buf: &mut Vec<u8>, ghost: u64, good: u64) {
    buf.push(HEAL);
    varint::put(buf, ghost);
    varint::put(buf, good);
}

pub fn encode_gc(buf: &mut Vec<u8>, offsets: &[u64]) {
    buf.push(GC);
    varint::put(buf, offsets.len() as u64);
    for &o in offsets {
        varint::put(buf, o);
    }
}

/// What an atom record is, read without decoding (or checking) a composite's children: a
/// leaf's modality and value, or a composite's stored hash. For walks that decode every
/// composite they trust in full anyway.
pub enum Peek<'a> {
    Leaf { modality: u8, value: &'a [u8] },
    Node { hash: Hash },
    Other,
}

#[inline]
pub fn peek(b: &[u8]) -> Peek<'_> {
    match b.first() {
        Some(&LEAF) => match (b.get(1), b.get(2)) {
            (Some(&m), Some(&len)) if len as usize <= hart_core::LEAF_MAX => match b.get(3..3 + len as usize) {
                Some(value) => Peek::Leaf { modality: m, value },
                None => Peek::Other,
            },
            _ => Peek::Other,
        },
        Some(&NODE) => match b.get(2..34) {
            Some(h) => Peek::Node { hash: Hash(h.try_into().expect("32")) },
            None => Peek::Other,
        },
        _ => Peek::Other,
    }
}

/// Decode the record at the start of `b` (which sits at log offset `own`): the record and its
/// length. `None` means the bytes are not a well-formed record.
pub fn decode(b: &[u8], own: u64) -> Option<(Rec<'_>, usize)> {
    let tag = *b.first()?;
    let mut p = 1usize;
    let var = |p: &mut usize| -> Option<u64> {
        let (v, used) = varint::get(b.get(*p..)?)?;
        *p += used;
        Some(v)
    };
    match tag {
        LEAF => {
            let modality = *b.get(1)?;
            let len = *b.get(2)? as usize;
            if len > hart_core::LEAF_MAX {
                return None;
            }
            let value = b.get(3..3 + len)?;
            Some((Rec::Leaf { modality, value }, 3 + len))
        }
        NODE => {
            let modality = *b.get(1)?;
            let hash = Hash(b.get(2..34)?.try_into().ok()?);
            let c =
                |i: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(34 + 4 * i..38 + 4 * i)?.try_into().ok()?)) };
            let pos = Position::new(c(0)?, c(1)?, c(2)?, c(3)?);
            p = 50;
            let n = var(&mut p)? as usize;
            if n > hart_core::MAX_FANOUT * 1024 {
                return None;
            }
            let start = p;
            for _ in 0..n {
                let d = var(&mut p)?;
                if d == 0 || d > own {
                    return None;
                }
            }
            Some((Rec::Node { modality, hash, pos, children: Children { own, n, bytes: &b[start..p] } }, p))
        }
        OBJ_BEGIN | OBJ_FAIL => {
            let id = var(&mut p)?;
            let len = var(&mut p)? as usize;
            let json = b.get(p..p.checked_add(len)?)?;
            let rec = if tag == OBJ_BEGIN { Rec::ObjBegin { id, json } } else { Rec::ObjFail { id, json } };
            Some((rec, p + len))
        }
        OBJ_COMMIT => {
            let id = var(&mut p)?;
            let root = var(&mut p)?;
            let len = var(&mut p)? as usize;
            let json = b.get(p..p.checked_add(len)?)?;
            Some((Rec::ObjCommit { id, root, json }, p + len))
        }
        OBJ_DELETE => {
            let id = var(&mut p)?;
            Some((Rec::ObjDelete { id }, p))
        }
        GC => {
            let n = var(&mut p)? as usize;
            let start = p;
            for _ in 0..n {
                var(&mut p)?;
            }
            Some((Rec::Gc { offsets: Offsets { n, bytes: &b[start..p] } }, p))
        }
        HEAL => {
            let ghost = var(&mut p)?;
            let good = var(&mut p)?;
            Some((Rec::Heal { ghost, good }, p))
        }
        _ => None,
    }
}
