//! Choosing a file's modality: incremental UTF-8 validation and the text-or-binary rule.
//!
//! Only text and binary are told apart so far. The rule ([`choose_modality`]): a file is text
//! when it is non-empty, has no NUL byte in its first 8 KiB, and is valid UTF-8 as a whole.
//! Anything else, including a file that is valid UTF-8 except for one byte near the end, is
//! binary as a whole: there is no per-region fallback, so an invalid byte never reaches the
//! text tokenizer.

use std::io::{ErrorKind, Read};
use std::path::Path;

use hart_core::Modality;

/// How many leading bytes must be free of NUL for a file to be text.
pub const NUL_SNIFF_LEN: usize = 8 * 1024;
/// Block size in which [`choose_modality`] reads a file.
pub const READ_BLOCK: usize = 1 << 20;

/// Validates a byte stream as UTF-8 incrementally; the stream may be split anywhere,
/// including inside a multi-byte character. Runs at `std::str::from_utf8` speed.
#[derive(Clone, Debug, Default)]
pub struct Utf8Validator {
    /// The start of a character cut by the end of the last piece (at most 3 bytes).
    pending: [u8; 4],
    pending_len: usize,
    /// Bytes accepted so far (complete characters only, pending bytes excluded).
    offset: u64,
    /// Offset of the first invalid byte, once found.
    error: Option<u64>,
}

/// Width of a UTF-8 character from its lead byte (only called on a valid lead byte).
fn char_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate the next piece of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.error.is_some() || data.is_empty() {
            return;
        }
        if self.pending_len > 0 {
            // Complete the character cut at the end of the previous piece.
            let width = char_width(self.pending[0]);
            let take = (width - self.pending_len).min(data.len());
            let have = self.pending_len;
            self.pending[have..have + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            match std::str::from_utf8(&self.pending[..self.pending_len]) {
                Ok(_) => {
                    self.offset += self.pending_len as u64;
                    self.pending_len = 0;
                }
                Err(e) if e.error_len().is_none() => return, // still incomplete: `data` used up
                Err(_) => {
                    self.error = Some(self.offset);
                    return;
                }
            }
            data = &data[take..];
        }
        match std::str::from_utf8(data) {
            Ok(_) => self.offset += data.len() as u64,
            Err(e) => {
                let good = e.valid_up_to();
                match e.error_len() {
                    Some(_) => self.error = Some(self.offset + good as u64),
                    None => {
                        let tail = &data[good..];
                        self.pending[..tail.len()].copy_from_slice(tail);
                        self.pending_len = tail.len();
                        self.offset += good as u64;
                    }
                }
            }
        }
    }

    /// No invalid sequence seen so far (a character may still be incomplete).
    pub fn is_valid_so_far(&self) -> bool {
        self.error.is_none()
    }

    /// Offset in the stream of the first byte that is not valid UTF-8: an invalid sequence, or
    /// after [`finish`](Self::finish), a character cut short by the end of the stream.
    pub fn error_offset(&self) -> Option<u64> {
        self.error
    }

    /// End of stream: true when the whole stream was valid UTF-8.
    pub fn finish(&mut self) -> bool {
        if self.error.is_none() && self.pending_len > 0 {
            self.error = Some(self.offset);
        }
        self.error.is_none()
    }
}

/// Text if the file is non-empty, has no NUL byte in its first [`NUL_SNIFF_LEN`] bytes and is
/// valid UTF-8 throughout; otherwise Binary. Invalid UTF-8 anywhere makes the whole file
/// binary. Reads in [`READ_BLOCK`] blocks (memory bounded) and stops at the first invalid byte.
pub fn choose_modality(path: &Path) -> std::io::Result<Modality> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; READ_BLOCK];
    let mut validator = Utf8Validator::new();
    let mut total = 0usize;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let block = &buf[..n];
        if total < NUL_SNIFF_LEN {
            let sniff = &block[..n.min(NUL_SNIFF_LEN - total)];
            if sniff.contains(&0) {
                return Ok(Modality::Binary);
            }
        }
        total += n;
        validator.feed(block);
        if !validator.is_valid_so_far() {
            return Ok(Modality::Binary);
        }
    }
    Ok(if total > 0 && validator.finish() { Modality::Text } else { Modality::Binary })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validate_split(data: &[u8], at: &[usize]) -> (bool, Option<u64>) {
        let mut v = Utf8Validator::new();
        let mut last = 0;
        for &a in at {
            v.feed(&data[last..a]);
            last = a;
        }
        v.feed(&data[last..]);
        (v.finish(), v.error_offset())
    }

    #[test]
    fn split_inside_characters() {
        let s = "aé中😀z".as_bytes();
        for i in 0..=s.len() {
            for j in i..=s.len() {
                assert_eq!(validate_split(s, &[i, j]), (true, None), "{i} {j}");
            }
        }
    }

    #[test]
    fn reports_the_first_invalid_byte() {
        assert_eq!(validate_split(b"ab\xffcd", &[1]), (false, Some(2)));
        assert_eq!(validate_split("é\u{e9}".as_bytes(), &[]), (true, None));
        // A lead byte followed by a non-continuation byte across the split.
        assert_eq!(validate_split(b"xy\xe4a", &[3]), (false, Some(2)));
        // Truncated at the end of the stream.
        assert_eq!(validate_split(b"xy\xe4\xb8", &[3]), (false, Some(2)));
        // Surrogates and overlongs are invalid, even when split.
        assert_eq!(validate_split(b"\xed\xa0\x80", &[1]), (false, Some(0)));
        assert_eq!(validate_split(b"\xc0\x80", &[1]), (false, Some(0)));
    }
}
