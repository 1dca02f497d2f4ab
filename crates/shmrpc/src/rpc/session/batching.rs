//! Sending the items of a stream that are ready together several to a frame
//! (`StreamItems`), for either end's stream: the callee's ([`ItemSink::send_all`]) and the
//! caller's ([`ItemSender::send_all`]).
//!
//! A frame fills up to [`BATCH_BYTES`] and `BATCH_MAX_ITEMS` and goes as soon as it is full
//! or the items run out: no timer, nothing waits for items that are not there yet. Each
//! frame takes one unit of the stream's credit (as an item sent alone does), taken once
//! it is filled, before it goes: filling waits for nothing, and a reader that keeps up
//! has a batch to read while the next is filled.
//!
//! [`ItemSink::send_all`]: super::ItemSink::send_all
//! [`ItemSender::send_all`]: super::ItemSender::send_all

use std::sync::Arc;

use super::Link;
use crate::frame::{Kind, BATCH_ITEM_HEADER, BATCH_MAX_ITEMS};
use crate::rpc::transport::Dir;
use crate::rpc::{Code, RpcError};

/// The most payload bytes in one batch (less if a frame on the connection, or a message,
/// may not be that long): 455 items of 32 bytes.
pub(super) const BATCH_BYTES: usize = 16 << 10;

/// One end's stream of items, as the batching sees it.
pub(super) trait ItemOut {
    /// The connection's sending half.
    fn link(&self) -> &Arc<Link>;
    /// The largest item.
    fn max_message(&self) -> usize;
    /// Whether items may still go (looked at before each item): the error if not.
    fn check_open(&self) -> Result<(), RpcError>;
    /// One unit of the stream's credit: at once if there is some, else once the reader
    /// grants more, unless the stream or call ends first.
    async fn take_credit(&self) -> Result<(), RpcError>;
    /// Returns a unit of credit taken for a frame that was not sent.
    fn give_back(&self);
    /// The stream's direction, method and call.
    fn route(&self) -> (Dir, u32, u64);
}

/// Where an item of [`ItemSink::send_all_with`] (or [`ItemSender::send_all_with`]) is
/// written: straight into the frame being filled, after the items before it. It can only
/// be appended to, so the items before it stay as they were.
///
/// [`ItemSink::send_all_with`]: super::ItemSink::send_all_with
/// [`ItemSender::send_all_with`]: super::ItemSender::send_all_with
pub struct ItemWriter<'a> {
    /// The frame's payload; this item's bytes start at `start`.
    buf: &'a mut Vec<u8>,
    start: usize,
}

impl std::fmt::Debug for ItemWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemWriter")
            .field("len", &self.len())
            .finish()
    }
}

impl ItemWriter<'_> {
    /// Appends `bytes` to the item.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Appends `len` zero bytes to the item and lends them, to be filled in place.
    ///
    /// # Panics
    /// If the frame would be longer than `usize::MAX` bytes (as `Vec` does).
    pub fn append_zeroed(&mut self, len: usize) -> &mut [u8] {
        let at = self.buf.len();
        let end = at.checked_add(len).expect("capacity overflow");
        self.buf.resize(end, 0);
        &mut self.buf[at..]
    }

    /// Appends `value` encoded with the default codec (as [`encode`](crate::encode)).
    ///
    /// # Errors
    /// `BadRequest` if it cannot be encoded; the item is then as it was before.
    pub fn encode<T: serde::Serialize + ?Sized>(&mut self, value: &T) -> Result<(), RpcError> {
        let before = self.buf.len();
        crate::rpc::encode_into(value, self.buf).inspect_err(|_| self.buf.truncate(before))
    }

    /// The item's length so far.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether nothing has been written to the item yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::io::Write for ItemWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `items` in order, several to a frame; `write` appends an item's bytes to the
/// frame's payload. The items before one that fails (its encoding, its size, or the
/// stream's end) are sent; the error is returned.
///
/// A frame is filled by a plain loop ([`Batch::fill`]) and only then sent and given its
/// credit: in the `async fn` itself, every variable the loop touches would live in the
/// future's state, a load and a store per use; in a plain function they stay in
/// registers.
pub(super) async fn send_batched<O, I, W>(out: &O, items: I, mut write: W) -> Result<(), RpcError>
where
    O: ItemOut,
    I: IntoIterator,
    W: FnMut(I::Item, &mut ItemWriter<'_>) -> Result<(), RpcError>,
{
    out.check_open()?;
    let max = out.max_message();
    let limit = BATCH_BYTES.min(max).min(out.link().short_limit());
    let mut batch = Batch {
        buf: out.link().buffer(),
        count: 0,
        permit: false,
        out,
    };
    let mut items = items.into_iter();
    let end = loop {
        let (upto, count, end) = match batch.fill(&mut items, &mut write, max, limit) {
            Filled::Full => (batch.buf.len(), batch.count, None),
            // The last item starts the next frame.
            Filled::Overflow { start } => (start, batch.count - 1, None),
            Filled::Done => (batch.buf.len(), batch.count, Some(Ok(()))),
            Filled::Failed(e) => (batch.buf.len(), batch.count, Some(Err(e))),
        };
        if count > 0 {
            if !batch.permit {
                // The frame's credit: at hand, or waited for (the reader has every frame
                // sent before this one to read). Without it the frame does not go, and the
                // first failure is the one returned.
                if let Err(e) = out.take_credit().await {
                    batch.buf.clear();
                    batch.count = 0;
                    break Err(end.and_then(Result::err).unwrap_or(e));
                }
                batch.permit = true;
            }
            // What the frame holds passed every check: it goes even if a later item
            // failed, as items sent one by one would have.
            batch.send(upto, count).await?;
        }
        if let Some(end) = end {
            break end;
        }
    };
    let buf = std::mem::take(&mut batch.buf);
    out.link().recycle(buf);
    end
}

/// Where [`Batch::fill`] stopped.
enum Filled {
    /// The frame is full (its item count or its bytes).
    Full,
    /// The last item, at `start`, does not fit beside the ones before it: they go as a
    /// frame, and it starts the next.
    Overflow { start: usize },
    /// The items ran out.
    Done,
    /// An item failed (its encoding, its size, or the stream ended): it is not in the
    /// frame, and no item after it is sent.
    Failed(RpcError),
}

/// The frame being filled: its payload so far, and whether it holds its unit of credit.
/// Dropped holding it (the sending future was dropped, or a send failed), it gives the
/// credit back: the stream may still send other items.
struct Batch<'a, O: ItemOut> {
    buf: Vec<u8>,
    /// Items in `buf`.
    count: usize,
    /// The frame's credit is taken.
    permit: bool,
    out: &'a O,
}

impl<O: ItemOut> Batch<'_, O> {
    /// Appends items to the frame until it is full, an item does not fit, the items run
    /// out or one fails. Waits for nothing.
    fn fill<It, W>(&mut self, items: &mut It, write: &mut W, max: usize, limit: usize) -> Filled
    where
        It: Iterator,
        W: FnMut(It::Item, &mut ItemWriter<'_>) -> Result<(), RpcError>,
    {
        // The buffer and the count as locals for the loop, given back at its end: through
        // `self` (which lives in the sending future) each item loaded and stored them.
        let mut buf = std::mem::take(&mut self.buf);
        let mut count = self.count;
        let filled = fill_frame(&mut buf, &mut count, self.out, items, write, max, limit);
        self.buf = buf;
        self.count = count;
        filled
    }

    /// Sends the first `upto` bytes of the batch, its first `items` items, as one frame;
    /// keeps only what follows them.
    async fn send(&mut self, upto: usize, items: usize) -> Result<(), RpcError> {
        let (kind, payload) = match items {
            // One item goes as a plain item: a batch of one would only add its length.
            1 => (Kind::StreamItem, &self.buf[BATCH_ITEM_HEADER..upto]),
            _ => (Kind::StreamItems, &self.buf[..upto]),
        };
        let (dir, method, call_id) = self.out.route();
        let link = self.out.link();
        match link.try_send(dir, kind, method, call_id, payload) {
            Ok(true) => {}
            Ok(false) => link.send(dir, kind, method, call_id, payload).await?,
            Err(e) => return Err(e.into()),
        }
        // Sent: the frame's credit is spent for good; what follows starts the next frame.
        self.count -= items;
        self.permit = false;
        self.buf.drain(..upto);
        Ok(())
    }
}

/// [`Batch::fill`]'s loop, over the frame's buffer and item count.
fn fill_frame<O, It, W>(
    buf: &mut Vec<u8>,
    count: &mut usize,
    out: &O,
    items: &mut It,
    write: &mut W,
    max: usize,
    limit: usize,
) -> Filled
where
    O: ItemOut,
    It: Iterator,
    W: FnMut(It::Item, &mut ItemWriter<'_>) -> Result<(), RpcError>,
{
    // An item left over from the last frame may fill this one alone.
    if *count > 0 && buf.len() >= limit {
        return Filled::Full;
    }
    for item in items {
        if let Err(e) = out.check_open() {
            return Filled::Failed(e);
        }
        // The item goes at the end of the frame, behind its length (filled in once it is
        // written).
        let start = buf.len();
        buf.extend_from_slice(&[0; BATCH_ITEM_HEADER]);
        let mut writer = ItemWriter {
            buf: &mut *buf,
            start: start + BATCH_ITEM_HEADER,
        };
        let written = write(item, &mut writer);
        // The writer only appends: what was in the frame is still there.
        let len = writer.len();
        let checked = written.and_then(|()| match u32::try_from(len) {
            Ok(len) if len as usize <= max => Ok(len),
            _ => Err(RpcError::new(
                Code::TooLarge,
                format!("item of {len} bytes exceeds the maximum message size {max}"),
            )),
        });
        let len = match checked {
            Ok(len) => len,
            Err(e) => {
                buf.truncate(start);
                return Filled::Failed(e);
            }
        };
        buf[start..start + BATCH_ITEM_HEADER].copy_from_slice(&len.to_le_bytes());
        *count += 1;
        if *count > 1 && buf.len() > limit {
            return Filled::Overflow { start };
        }
        if *count == BATCH_MAX_ITEMS || buf.len() >= limit {
            return Filled::Full;
        }
    }
    Filled::Done
}

impl<O: ItemOut> Drop for Batch<'_, O> {
    fn drop(&mut self) {
        if self.permit {
            self.out.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ItemWriter;

    /// Encodes as a `u64`, then fails: postcard has written part of it by then.
    struct FailsHalfWay;

    impl serde::Serialize for FailsHalfWay {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{Error, SerializeTuple};
            let mut t = s.serialize_tuple(2)?;
            t.serialize_element(&300u64)?;
            Err(S::Error::custom("half way"))
        }
    }

    #[test]
    fn an_item_keeps_what_was_written_before_a_value_that_failed_to_encode() {
        let mut frame = vec![9u8; 4];
        let mut item = ItemWriter {
            buf: &mut frame,
            start: 4,
        };
        item.encode(&7u32).unwrap();
        assert!(item.encode(&FailsHalfWay).is_err());
        assert_eq!(item.len(), 1);
        item.extend_from_slice(b"ab");
        std::io::Write::write_all(&mut item, b"c").unwrap();
        item.append_zeroed(2)[1] = 5;
        assert_eq!((item.len(), item.is_empty()), (6, false));
        assert_eq!(frame, [9, 9, 9, 9, 7, b'a', b'b', b'c', 0, 5]);
    }
}
