//! Batches: several stream items of one call in one frame ([`Kind::StreamItems`]).
//!
//! A small item alone costs a whole frame: a 32-byte header, a ring record, a publish
//! (the record's cache lines moving to the reader's core), and on the reader's side a
//! decode, a call-table lookup and a wake-up. A batch pays those once for a run of items
//! that are ready together. Its payload is the items one after another, each behind its
//! length:
//!
//! ```text
//! len u32 (little-endian) | len bytes | len u32 | len bytes | ...
//! ```
//!
//! A batch holds at least one item and at most [`BATCH_MAX_ITEMS`], and its last item
//! ends exactly at the payload's end. A batch is one frame: it takes one unit of the
//! stream's credit, however many items it holds.
//! The payload is validated whole ([`batch_items`]) before any item is handed on, so a
//! malformed batch delivers nothing.
//!
//! [`Kind::StreamItems`]: super::Kind::StreamItems

use thiserror::Error;

/// Bytes in front of each item of a batch: its length.
pub const BATCH_ITEM_HEADER: usize = 4;
/// The most items in one batch. A receiver holds up to a credit window of frames per
/// stream; this bounds the items (and their per-item memory) that window can bring, also
/// when they are empty.
pub const BATCH_MAX_ITEMS: usize = 512;

/// Why a frame's payload is not a batch of items.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{batch_items, BatchError};
///
/// assert_eq!(batch_items(b"").unwrap_err(), BatchError::Empty);
/// // An item announcing 9 bytes where 2 follow.
/// assert_eq!(
///     batch_items(&[9, 0, 0, 0, b'h', b'i']).unwrap_err(),
///     BatchError::Truncated { item: 0, at: 0 },
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum BatchError {
    /// No item at all (a sender with nothing to send sends no batch).
    #[error("a batch of stream items with no item")]
    Empty,
    /// An item's length, or the item itself, runs past the payload's end.
    #[error("item {item} of a batch (at byte {at}) runs past the batch's end")]
    Truncated {
        /// The item's index in the batch.
        item: usize,
        /// Where its length field starts.
        at: usize,
    },
    /// More than [`BATCH_MAX_ITEMS`] items.
    #[error("a batch of more than {BATCH_MAX_ITEMS} stream items")]
    TooManyItems,
    /// An item longer than a frame can say (more than `u32::MAX` bytes); on encode.
    #[error("an item of {0} bytes does not fit a batch")]
    ItemTooLong(usize),
}

/// Appends one item to a batch being built in `batch`: its length, then its bytes.
///
/// # Errors
/// [`BatchError::ItemTooLong`] above `u32::MAX` bytes (`batch` is left as it was).
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{batch_items, push_batch_item};
///
/// let mut batch = Vec::new();
/// push_batch_item(&mut batch, b"one").unwrap();
/// push_batch_item(&mut batch, b"").unwrap();
/// push_batch_item(&mut batch, b"three").unwrap();
/// let items = batch_items(&batch).unwrap();
/// assert_eq!(items.len(), 3);
/// assert_eq!(items.collect::<Vec<_>>(), [&b"one"[..], b"", b"three"]);
/// ```
pub fn push_batch_item(batch: &mut Vec<u8>, item: &[u8]) -> Result<(), BatchError> {
    let len = u32::try_from(item.len()).map_err(|_| BatchError::ItemTooLong(item.len()))?;
    batch.reserve(BATCH_ITEM_HEADER + item.len());
    batch.extend_from_slice(&len.to_le_bytes());
    batch.extend_from_slice(item);
    Ok(())
}

/// The items of a batch's payload, after checking it whole: every length is read once,
/// and must leave its item inside the payload; the last item must end at its end.
///
/// # Errors
/// [`BatchError::Empty`] for an empty payload; [`BatchError::Truncated`] naming the first
/// item that runs past the end; [`BatchError::TooManyItems`] once item
/// `BATCH_MAX_ITEMS + 1` is found whole.
pub fn batch_items(payload: &[u8]) -> Result<BatchItems<'_>, BatchError> {
    if payload.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut rest = payload;
    let mut count = 0;
    while !rest.is_empty() {
        let at = payload.len() - rest.len();
        let (_, after) = split_item(rest).ok_or(BatchError::Truncated { item: count, at })?;
        rest = after;
        count += 1;
        if count > BATCH_MAX_ITEMS {
            return Err(BatchError::TooManyItems);
        }
    }
    Ok(BatchItems {
        rest: payload,
        left: count,
    })
}

/// The first item of a batch's `bytes` and what follows it; `None` if it runs past the
/// end (or `bytes` is empty). For a reader that keeps its place in a batch [`batch_items`]
/// checked.
///
/// # Examples
///
/// ```
/// use shmrpc::lowlevel::frame::{push_batch_item, split_item};
///
/// let mut batch = Vec::new();
/// push_batch_item(&mut batch, b"ab").unwrap();
/// push_batch_item(&mut batch, b"c").unwrap();
/// let (first, rest) = split_item(&batch).unwrap();
/// assert_eq!((first, split_item(rest).unwrap()), (&b"ab"[..], (&b"c"[..], &b""[..])));
/// assert_eq!(split_item(&batch[..3]), None);
/// ```
pub fn split_item(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<BATCH_ITEM_HEADER>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    rest.split_at_checked(len)
}

/// The items of a checked batch, in order ([`batch_items`]).
#[derive(Debug, Clone)]
pub struct BatchItems<'a> {
    rest: &'a [u8],
    /// Items not yet returned.
    left: usize,
}

impl<'a> Iterator for BatchItems<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // Checked by `batch_items`; split again (not trusted to be so) rather than indexed.
        let (item, rest) = split_item(self.rest)?;
        self.rest = rest;
        self.left -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for BatchItems<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: &[&[u8]]) -> Vec<u8> {
        let mut b = Vec::new();
        for i in items {
            push_batch_item(&mut b, i).unwrap();
        }
        b
    }

    #[test]
    fn items_come_back_in_order_and_count() {
        let long = vec![7u8; 1000];
        let items: [&[u8]; 4] = [b"a", b"", &long, b"zz"];
        let b = batch(&items);
        assert_eq!(b.len(), 4 * BATCH_ITEM_HEADER + 1 + 1000 + 2);
        let got = batch_items(&b).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got.collect::<Vec<_>>(), items);
    }

    #[test]
    fn every_truncation_is_refused_and_names_the_item() {
        let b = batch(&[b"abc", b"defg"]);
        // Cut anywhere but at an item boundary: refused, and the second item is named
        // once the first is whole (3 + 4 bytes in).
        for cut in 1..b.len() {
            if cut == BATCH_ITEM_HEADER + 3 {
                assert_eq!(batch_items(&b[..cut]).unwrap().len(), 1);
                continue;
            }
            let item = usize::from(cut > BATCH_ITEM_HEADER + 3);
            let at = if item == 0 { 0 } else { BATCH_ITEM_HEADER + 3 };
            assert_eq!(
                batch_items(&b[..cut]).unwrap_err(),
                BatchError::Truncated { item, at },
                "cut at {cut}"
            );
        }
        // A length past the end, however large.
        let mut huge = b.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            batch_items(&huge).unwrap_err(),
            BatchError::Truncated { item: 0, at: 0 }
        );
        assert_eq!(batch_items(&[]).unwrap_err(), BatchError::Empty);
    }

    #[test]
    fn at_most_batch_max_items() {
        let mut b = Vec::new();
        for _ in 0..BATCH_MAX_ITEMS {
            push_batch_item(&mut b, b"x").unwrap();
        }
        assert_eq!(batch_items(&b).unwrap().len(), BATCH_MAX_ITEMS);
        push_batch_item(&mut b, b"").unwrap();
        assert_eq!(batch_items(&b).unwrap_err(), BatchError::TooManyItems);
    }

    #[test]
    fn zero_length_items_are_items() {
        let b = batch(&[b"", b"", b""]);
        assert_eq!(b, [0; 12]);
        assert_eq!(batch_items(&b).unwrap().filter(|i| i.is_empty()).count(), 3);
    }
}
