//! Hartonomous decoders: streaming, lossless turning of a byte stream into leaves and groups.
//!
//! A decoder is fed the bytes of one object in pieces of any size, split anywhere, and reports
//! what it finds to a [`LeafSink`], in order: leaf values of 1..=[`LEAF_MAX`] bytes and the ends
//! of explicit groups (lines, for text). Concatenating the leaves gives the input back exactly,
//! and the leaves never depend on where the stream was split. Decoders do not hash: hashing,
//! positions and tree building happen downstream (`hart_core::tree`).
//!
//! **API boundary:** [`LeafSink`], [`Decoder`], the decoders ([`BinaryChunker`],
//! [`TextTokenizer`]), [`Utf8Validator`], [`choose_modality`], [`decoder_for`] and
//! [`StaticDecoder`].
//!
//! **Architecture invariant:** the leaves a decoder emits are part of the on-disk format (they
//! decide the atoms). Changing a token rule or the chunker's gear table or constants is a
//! format change: the golden tests in `tests/` must then be updated on purpose.

pub mod binary;
pub mod detect;
pub mod text;

pub use binary::BinaryChunker;
pub use detect::{choose_modality, Utf8Validator};
pub use hart_core::LEAF_MAX;
pub use text::{Kernel, TextTokenizer};

use hart_core::Modality;

/// Receives what a decoder finds, in order.
pub trait LeafSink {
    /// A leaf value, 1..=64 bytes (never empty). Borrowed: copy if you keep it.
    fn leaf(&mut self, value: &[u8]);
    /// The leaf `data[start..end]`, given with the bytes around it so that a sink may read
    /// past its end (inside `data`) to load it in whole words. Same as
    /// `leaf(&data[start..end])`, which is what it does unless a sink says otherwise.
    #[inline]
    fn leaf_at(&mut self, data: &[u8], start: usize, end: usize) {
        self.leaf(&data[start..end])
    }
    /// The end of an explicit group (for text: the end of a line, after its newline token).
    fn end_group(&mut self);
}

impl<S: LeafSink + ?Sized> LeafSink for &mut S {
    #[inline]
    fn leaf(&mut self, value: &[u8]) {
        (**self).leaf(value)
    }
    #[inline]
    fn leaf_at(&mut self, data: &[u8], start: usize, end: usize) {
        (**self).leaf_at(data, start, end)
    }
    #[inline]
    fn end_group(&mut self) {
        (**self).end_group()
    }
}

/// A streaming, lossless decoder of one object. Create one per object.
pub trait Decoder {
    fn modality(&self) -> Modality;
    /// Feed the next bytes of the stream (any length, any split point; including 0 bytes).
    fn feed(&mut self, data: &[u8], sink: &mut dyn LeafSink);
    /// End of stream: flush what is pending (and end the last group if it is non-empty).
    fn finish(&mut self, sink: &mut dyn LeafSink);
}

/// The decoder for a modality. Only text has its own decoder so far; every other modality
/// (code, image, audio, video, model) is chunked as binary until its decoder exists.
pub fn decoder_for(m: Modality) -> Box<dyn Decoder + Send> {
    match m {
        Modality::Text => Box::new(TextTokenizer::new()),
        _ => Box::new(BinaryChunker::new()),
    }
}

/// [`decoder_for`] as a value rather than a trait object: the sink's methods are called
/// directly in the decoder's loop (and inlined there), which matters at one call per token.
#[derive(Clone, Debug)]
pub enum StaticDecoder {
    Text(TextTokenizer),
    Binary(BinaryChunker),
}

impl StaticDecoder {
    /// The decoder [`decoder_for`] would give for `m`.
    pub fn for_modality(m: Modality) -> Self {
        match m {
            Modality::Text => StaticDecoder::Text(TextTokenizer::new()),
            _ => StaticDecoder::Binary(BinaryChunker::new()),
        }
    }

    /// [`Decoder::feed`].
    #[inline]
    pub fn feed_with<S: LeafSink + ?Sized>(&mut self, data: &[u8], sink: &mut S) {
        match self {
            StaticDecoder::Text(d) => d.feed_with(data, sink),
            StaticDecoder::Binary(d) => d.feed_with(data, sink),
        }
    }

    /// [`Decoder::finish`].
    pub fn finish_with<S: LeafSink + ?Sized>(&mut self, sink: &mut S) {
        match self {
            StaticDecoder::Text(d) => d.finish_with(sink),
            StaticDecoder::Binary(d) => d.finish_with(sink),
        }
    }
}

/// A sink that keeps everything: each leaf copied, and after how many leaves each group ended.
/// Allocates per leaf; meant for tests and tools, not the ingest path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    pub leaves: Vec<Vec<u8>>,
    /// For each `end_group`, the number of leaves emitted before it.
    pub group_ends: Vec<usize>,
}

impl Collected {
    /// The leaves concatenated: the decoded input.
    pub fn concat(&self) -> Vec<u8> {
        self.leaves.concat()
    }
}

impl LeafSink for Collected {
    fn leaf(&mut self, value: &[u8]) {
        self.leaves.push(value.to_vec());
    }
    fn end_group(&mut self) {
        self.group_ends.push(self.leaves.len());
    }
}

/// Run a whole byte slice through a fresh decoder for `m` and collect the result.
pub fn decode_all(m: Modality, data: &[u8]) -> Collected {
    let mut d = decoder_for(m);
    let mut out = Collected::default();
    d.feed(data, &mut out);
    d.finish(&mut out);
    out
}
