//! Reading objects back: the walk that streams an object's leaves in order.

use crate::record::{self, Rec};
use crate::{corrupt, Inner};
use hart_store::StoreError;
use std::io::Write;

/// Depth-first walk writing leaf values in order.
pub(crate) fn cat_at(inner: &Inner, off: u64, w: &mut dyn Write) -> Result<u64, StoreError> {
    let mut total = 0u64;
    let mut stack: Vec<record::Children<'_>> = Vec::new();
    let mut next = Some(off);
    loop {
        if let Some(o) = next.take() {
            match inner.rec(o)?.0 {
                Rec::Leaf { value, .. } => {
                    w.write_all(value).map_err(|e| StoreError::io("write", "output", e))?;
                    total += value.len() as u64;
                }
                Rec::Node { children, .. } => stack.push(children),
                _ => return Err(corrupt(&inner.dir, o, "offset does not hold an atom")),
            }
        }
        match stack.last_mut() {
            None => return Ok(total),
            Some(top) => match top.next() {
                Some(c) => next = Some(c),
                None => {
                    stack.pop();
                }
            },
        }
    }
}

pub(crate) struct HashWriter(pub(crate) blake3::Hasher);

impl Write for HashWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
