//! Content-defined tree building over child sequences (prolly-tree style, DESIGN.md §5).
//!
//! A chunk of children ends after a child whose hash has its boundary bits at zero (about one
//! child in [`AVG_FANOUT`]), provided the chunk holds at least two children, or when it
//! reaches [`MAX_FANOUT`]. Boundaries depend only on the children's hashes, so an edit in the
//! middle of a long sequence changes only the nodes on its path to the root. Memory is
//! bounded: at most [`MAX_FANOUT`] pending children per level.

use crate::atom::{node_hash, push_node_encoding};
use crate::many::Messages;
use crate::position::{Centroid, Position};
use crate::{Hash, Modality};

/// Most children a composite built here may have.
pub const MAX_FANOUT: usize = 64;
/// Expected number of children between content-defined boundaries (a power of two).
pub const AVG_FANOUT: u32 = 16;

/// An atom as a child: what a parent needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Child {
    pub hash: Hash,
    pub pos: Position,
}

/// A composite the builder made: hand it to the store before its parent.
#[derive(Debug)]
pub struct NodeOut<'a> {
    pub modality: Modality,
    pub hash: Hash,
    pub pos: Position,
    pub children: &'a [Child],
}

impl NodeOut<'_> {
    pub fn as_child(&self) -> Child {
        Child { hash: self.hash, pos: self.pos }
    }
}

/// True when a chunk may end after this child.
#[inline]
pub fn is_boundary(hash: &Hash) -> bool {
    hash.boundary_bits().is_multiple_of(AVG_FANOUT)
}

/// Make one composite from `children` (two or more), reporting it to `sink`.
pub fn make_node(modality: Modality, children: &[Child], sink: &mut dyn FnMut(&NodeOut<'_>)) -> Child {
    debug_assert!(children.len() >= 2);
    let hash = node_hash(modality, children.iter().map(|c| &c.hash));
    make_node_hashed(modality, children, hash, sink)
}

/// [`make_node`] for a composite whose hash is already known (computed in a batch with
/// [`crate::many::Messages`] from [`crate::atom::push_node_encoding`]).
#[inline]
pub fn make_node_hashed(
    modality: Modality,
    children: &[Child],
    hash: Hash,
    sink: &mut dyn FnMut(&NodeOut<'_>),
) -> Child {
    debug_assert!(children.len() >= 2);
    let mut centroid = Centroid::default();
    for c in children {
        centroid.add(&c.pos);
    }
    let pos = Position::from_features(centroid.features(), &hash);
    let node = NodeOut { modality, hash, pos, children };
    sink(&node);
    node.as_child()
}

/// Streaming builder of a content-defined tree over an unbounded child sequence.
#[derive(Debug)]
pub struct TreeBuilder {
    modality: Modality,
    levels: Vec<Vec<Child>>,
}

impl TreeBuilder {
    pub fn new(modality: Modality) -> Self {
        TreeBuilder { modality, levels: Vec::new() }
    }

    /// Number of children pushed and not yet finished, over all levels.
    pub fn pending(&self) -> usize {
        self.levels.iter().map(Vec::len).sum()
    }

    /// Append a child; every composite completed by it is reported to `sink`, children first.
    pub fn push(&mut self, child: Child, sink: &mut dyn FnMut(&NodeOut<'_>)) {
        self.push_at(0, child, sink);
    }

    /// [`TreeBuilder::push`] for each of `children` in turn, with the same tree and the same
    /// order of composites reported, but the lowest level's composites hashed together
    /// ([`Messages`], sixteen at a time) rather than one by one. `msgs` and `hashes` are
    /// scratch space.
    pub fn push_all(
        &mut self,
        children: &[Child],
        msgs: &mut Messages,
        hashes: &mut Vec<Hash>,
        sink: &mut dyn FnMut(&NodeOut<'_>),
    ) {
        if self.levels.is_empty() {
            self.levels.push(Vec::with_capacity(MAX_FANOUT));
        }
        // The level's pending children, then the new ones: cut where `push_at` would.
        let mut run = std::mem::take(&mut self.levels[0]);
        let carried = run.len();
        run.extend_from_slice(children);
        let mut ends = Vec::new();
        let mut start = 0;
        for (i, c) in run.iter().enumerate().skip(carried) {
            let len = i + 1 - start;
            if len >= MAX_FANOUT || (len >= 2 && is_boundary(&c.hash)) {
                ends.push(i + 1);
                start = i + 1;
            }
        }
        msgs.clear();
        hashes.clear();
        let mut from = 0;
        for &end in &ends {
            push_node_encoding(msgs, self.modality, run[from..end].iter().map(|c| &c.hash));
            from = end;
        }
        msgs.hash_all(hashes);
        let mut from = 0;
        for (&end, &hash) in ends.iter().zip(hashes.iter()) {
            let up = make_node_hashed(self.modality, &run[from..end], hash, sink);
            self.push_at(1, up, sink);
            from = end;
        }
        run.drain(..from);
        self.levels[0] = run;
    }

    fn push_at(&mut self, mut level: usize, mut child: Child, sink: &mut dyn FnMut(&NodeOut<'_>)) {
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::with_capacity(MAX_FANOUT));
            }
            let pending = &mut self.levels[level];
            pending.push(child);
            let len = pending.len();
            if !(len >= MAX_FANOUT || (len >= 2 && is_boundary(&child.hash))) {
                return;
            }
            child = make_node(self.modality, pending, sink);
            self.levels[level].clear();
            level += 1;
        }
    }

    /// Close every level and return the root: `None` for an empty sequence, the child itself
    /// for a sequence of one.
    pub fn finish(mut self, sink: &mut dyn FnMut(&NodeOut<'_>)) -> Option<Child> {
        let mut level = 0;
        while level < self.levels.len() {
            let top = level + 1 == self.levels.len();
            let pending = std::mem::take(&mut self.levels[level]);
            match pending.len() {
                0 => {}
                1 if top => return Some(pending[0]),
                1 => self.push_at(level + 1, pending[0], sink),
                _ => {
                    let up = make_node(self.modality, &pending, sink);
                    if top {
                        // A finished top level with one node is the root only if nothing is
                        // above; push it up and let the loop see a single child there.
                        self.levels.push(Vec::with_capacity(MAX_FANOUT));
                    }
                    self.push_at(level + 1, up, sink);
                }
            }
            level += 1;
        }
        None
    }
}

/// Builds one explicit group (a line, a tile row…): a single composite when it has at most
/// [`MAX_FANOUT`] children, a content-defined subtree when longer. Memory stays bounded.
#[derive(Debug)]
pub struct GroupBuilder {
    modality: Modality,
    buf: Vec<Child>,
    overflow: Option<TreeBuilder>,
}

impl GroupBuilder {
    pub fn new(modality: Modality) -> Self {
        GroupBuilder { modality, buf: Vec::with_capacity(MAX_FANOUT), overflow: None }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.overflow.is_none()
    }

    pub fn push(&mut self, child: Child, sink: &mut dyn FnMut(&NodeOut<'_>)) {
        if let Some(tree) = &mut self.overflow {
            tree.push(child, sink);
            return;
        }
        if self.buf.len() == MAX_FANOUT {
            let mut tree = TreeBuilder::new(self.modality);
            for c in self.buf.drain(..) {
                tree.push(c, sink);
            }
            tree.push(child, sink);
            self.overflow = Some(tree);
            return;
        }
        self.buf.push(child);
    }

    /// Close the group: `None` if empty, the child itself for a group of one.
    pub fn finish(&mut self, sink: &mut dyn FnMut(&NodeOut<'_>)) -> Option<Child> {
        if let Some(tree) = self.overflow.take() {
            return tree.finish(sink);
        }
        let out = match self.buf.len() {
            0 => None,
            1 => Some(self.buf[0]),
            _ => Some(make_node(self.modality, &self.buf, sink)),
        };
        self.buf.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::leaf_identity;

    fn leaves(n: usize, salt: u8) -> Vec<Child> {
        (0..n)
            .map(|i| {
                let v = [(i as u32).to_le_bytes().as_slice(), &[salt]].concat();
                let (hash, pos) = leaf_identity(Modality::Binary, &v);
                Child { hash, pos }
            })
            .collect()
    }

    fn build(children: &[Child]) -> (Option<Child>, Vec<(Hash, usize)>) {
        let mut nodes = Vec::new();
        let mut sink = |n: &NodeOut<'_>| nodes.push((n.hash, n.children.len()));
        let mut t = TreeBuilder::new(Modality::Binary);
        for c in children {
            t.push(*c, &mut sink);
        }
        let root = t.finish(&mut sink);
        (root, nodes)
    }

    /// push_all, over any split of the sequence into calls, builds the same tree as push,
    /// reporting the same composites in the same order.
    #[test]
    fn push_all_matches_push_one_by_one() {
        let kids = leaves(20_000, 7);
        let mut one = Vec::new();
        let mut t = TreeBuilder::new(Modality::Binary);
        for k in &kids {
            t.push(*k, &mut |n| one.push((n.hash, n.children.len())));
        }
        let root_one = t.finish(&mut |n| one.push((n.hash, n.children.len())));
        for split in [1usize, 2, 15, 16, 63, 64, 65, 1000, 20_000] {
            let mut all = Vec::new();
            let mut t = TreeBuilder::new(Modality::Binary);
            let (mut msgs, mut hashes) = (Messages::new(), Vec::new());
            for part in kids.chunks(split) {
                t.push_all(part, &mut msgs, &mut hashes, &mut |n| all.push((n.hash, n.children.len())));
            }
            let root = t.finish(&mut |n| all.push((n.hash, n.children.len())));
            assert_eq!(root, root_one, "split {split}");
            assert_eq!(all, one, "split {split}");
        }
    }

    #[test]
    fn empty_and_single() {
        assert_eq!(build(&[]).0, None);
        let one = leaves(1, 0);
        let (root, nodes) = build(&one);
        assert_eq!(root, Some(one[0]));
        assert!(nodes.is_empty());
    }

    #[test]
    fn fanout_is_bounded_and_root_is_last_node() {
        for n in [2, 3, 17, 64, 65, 1000, 20_000] {
            let kids = leaves(n, 1);
            let (root, nodes) = build(&kids);
            assert!(nodes.iter().all(|&(_, k)| (2..=MAX_FANOUT).contains(&k)), "n={n}");
            assert_eq!(root.unwrap().hash, nodes.last().unwrap().0, "n={n}");
            let avg = n as f64 / nodes.iter().filter(|_| true).count() as f64;
            assert!(avg > 1.0);
        }
    }

    #[test]
    fn edit_in_the_middle_changes_only_a_path() {
        let a = leaves(50_000, 2);
        let mut b = a.clone();
        b[25_000] = leaves(1, 99)[0];
        let (_, na) = build(&a);
        let (_, nb) = build(&b);
        let set: std::collections::HashSet<_> = na.iter().map(|n| n.0).collect();
        let fresh = nb.iter().filter(|n| !set.contains(&n.0)).count();
        assert!(fresh <= 8, "{fresh} new nodes for a one-child edit");
    }

    #[test]
    fn group_of_many_becomes_a_subtree() {
        let kids = leaves(300, 3);
        let mut nodes = Vec::new();
        {
            let mut sink = |n: &NodeOut<'_>| nodes.push(n.children.len());
            let mut g = GroupBuilder::new(Modality::Text);
            for c in &kids {
                g.push(*c, &mut sink);
            }
            assert!(g.finish(&mut sink).is_some());
        }
        assert!(nodes.iter().all(|&k| k <= MAX_FANOUT));
        let mut sink = |n: &NodeOut<'_>| nodes.push(n.children.len());
        let mut g = GroupBuilder::new(Modality::Text);
        for c in &kids[..5] {
            g.push(*c, &mut sink);
        }
        g.finish(&mut sink);
        assert_eq!(*nodes.last().unwrap(), 5);
    }
}
