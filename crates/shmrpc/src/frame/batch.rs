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
    if let Some(items) = uniform(payload) {
        return Ok(items);
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
        uniform: None,
    })
}

/// The items of a batch whose items all have the first one's length (the common case:
/// a stream of records of one size), checked without following the lengths: each item's
/// place is known in advance, so the length checks do not wait on one another, and
/// neither does the walk over the items. `None` if the batch is not such a batch (or has
/// too many items): then [`batch_items`] follows the lengths one by one, and finds
/// the same items or names the fault. The two agree: every length field at a multiple of
/// the stride holds the same length, and the payload is a whole number of strides, so
/// following the lengths from the start lands on exactly those fields and ends at the
/// payload's end.
fn uniform(payload: &[u8]) -> Option<BatchItems<'_>> {
    let first = payload.first_chunk::<BATCH_ITEM_HEADER>()?;
    let len = usize::try_from(u32::from_le_bytes(*first)).ok()?;
    let stride = len.checked_add(BATCH_ITEM_HEADER)?;
    if payload.len() % stride != 0 {
        return None;
    }
    let count = payload.len() / stride;
    let same = payload
        .chunks_exact(stride)
        .all(|item| item.first_chunk::<BATCH_ITEM_HEADER>() == Some(first));
    (count <= BATCH_MAX_ITEMS && same).then_some(BatchItems {
        rest: payload,
        left: count,
        uniform: Some(len),
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
    /// Every item's length, if they all have the same.
    uniform: Option<usize>,
}

impl<'a> Iterator for BatchItems<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        // Checked by `batch_items`; split again (not trusted to be so) rather than indexed.
        // Items of one length are split where they are known to be, without reading their
        // lengths again: the next item's place does not wait for a load.
        let (item, rest) = match self.uniform {
            Some(len) => self.rest.get(BATCH_ITEM_HEADER..)?.split_at_checked(len)?,
            None => split_item(self.rest)?,
        };
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
        // One more of the same length: too many too, though the items are all alike.
        b.truncate(b.len() - BATCH_ITEM_HEADER);
        push_batch_item(&mut b, b"x").unwrap();
        assert!(uniform(&b).is_none());
        assert_eq!(batch_items(&b).unwrap_err(), BatchError::TooManyItems);
    }

    /// The items of `p` (or why there are none), its lengths followed one by one: the
    /// batch format read independently of `batch_items`.
    fn by_hand(p: &[u8]) -> Result<Vec<&[u8]>, BatchError> {
        if p.is_empty() {
            return Err(BatchError::Empty);
        }
        let (mut at, mut out) = (0, Vec::new());
        while at < p.len() {
            let truncated = BatchError::Truncated {
                item: out.len(),
                at,
            };
            let Some(len) = p.get(at..at + 4) else {
                return Err(truncated);
            };
            let len = u32::from_le_bytes(len.try_into().unwrap()) as usize;
            let Some(item) = p.get(at + 4..at + 4 + len) else {
                return Err(truncated);
            };
            out.push(item);
            at += 4 + len;
            if out.len() > BATCH_MAX_ITEMS {
                return Err(BatchError::TooManyItems);
            }
        }
        Ok(out)
    }

    #[test]
    fn items_of_one_length_read_the_same_as_any_others() {
        // Every batch of 1 to 4 items of 0 to 3 bytes, every cut of it, and every change
        // of one of its lengths: the same items (or error) as read by hand, whether its
        // items share one length (checked by strides) or not.
        let mut uniform_seen = 0;
        for n in 1..=4u32 {
            for code in 0..4u32.pow(n) {
                let lens: Vec<usize> = (0..n).map(|i| (code / 4u32.pow(i) % 4) as usize).collect();
                let items: Vec<Vec<u8>> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| vec![i as u8 + 1; l])
                    .collect();
                let refs: Vec<&[u8]> = items.iter().map(Vec::as_slice).collect();
                let b = batch(&refs);
                let same = lens.iter().all(|&l| l == lens[0]);
                assert_eq!(uniform(&b).is_some(), same, "{lens:?}");
                uniform_seen += usize::from(same);
                let mut variants: Vec<Vec<u8>> =
                    (0..=b.len()).map(|cut| b[..cut].to_vec()).collect();
                let mut at = 0;
                for &l in &lens {
                    for other in [0u32, 1, 2, 3, 7, u32::MAX] {
                        let mut v = b.clone();
                        v[at..at + 4].copy_from_slice(&other.to_le_bytes());
                        variants.push(v);
                    }
                    at += 4 + l;
                }
                for v in &variants {
                    let got = batch_items(v).map(|items| {
                        assert_eq!(items.len(), items.clone().count());
                        items.collect::<Vec<_>>()
                    });
                    assert_eq!(got, by_hand(v), "{lens:?}: {v:?}");
                }
            }
        }
        assert_eq!(uniform_seen, 4 * 4);
    }

    #[test]
    fn zero_length_items_are_items() {
        let b = batch(&[b"", b"", b""]);
        assert_eq!(b, [0; 12]);
        assert_eq!(batch_items(&b).unwrap().filter(|i| i.is_empty()).count(), 3);
    }
}
