//! The bytes of stored keys and values: length-prefixed fields, big-endian
//! numbers (so byte order is numeric order), `\0`-separated names, and a
//! reader that checks every length instead of trusting it.

use super::{Result, StoreError};

pub(super) fn u32_len(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32_len(b.len()).to_be_bytes());
    out.extend_from_slice(b);
}

pub(super) fn put_opt_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        Some(b) => put_bytes(out, b),
        None => out.extend_from_slice(&u32::MAX.to_be_bytes()),
    }
}

/// A bounds-checked reader over stored bytes.
pub(super) struct Reader<'a>(pub(super) &'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_be_bytes(self.array()?);
        self.take(n as usize)
    }
    pub(super) fn opt_bytes(&mut self) -> Option<Option<&'a [u8]>> {
        let n = u32::from_be_bytes(self.array()?);
        if n == u32::MAX {
            Some(None)
        } else {
            self.take(n as usize).map(Some)
        }
    }
}

/// Names joined with `\\0` (a key prefix when the last part is empty).
pub(super) fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// `name \\0 n`: a pipeline's numbered entry (change, dead letter).
pub(super) fn seq_key(pipeline: &str, seq: u64) -> Vec<u8> {
    let mut k = join(&[pipeline.as_bytes(), b""]);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn u64_of(bytes: &[u8], what: &str) -> Result<u64> {
    Reader(bytes)
        .array()
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt { what: what.into() })
}

/// The number a key ends with.
pub(super) fn u64_suffix(key: &[u8], what: &str) -> Result<u64> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key.get(at..))
        .map_or_else(
            || Err(StoreError::Corrupt { what: what.into() }),
            |tail| u64_of(tail, what),
        )
}

pub(super) fn split_at_zero(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b == 0)?;
    Some((bytes.get(..at)?, bytes.get(at + 1..)?))
}
