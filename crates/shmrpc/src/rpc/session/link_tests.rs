//! The sending half over a real shared-memory ring: short messages go between the
//! fragments of a long one, and a long message abandoned half sent is finished before the
//! next one starts. The reading end is the test itself, which reads only when it chooses.

use std::sync::Arc;
use std::time::Duration;

use super::Link;
use crate::channel::{self, ChannelConfig};
use crate::frame::Kind;
use crate::rpc::inspect::ConnInfo;
use crate::rpc::obs::ServerObs;
use crate::rpc::transport::{Dir, FrameRx, FrameTx};

/// Bound for what must happen without the test reading (it hangs if the feature breaks).
const BOUND: Duration = Duration::from_secs(20);

/// A link over a 16 KiB ring and the frames' reading end.
fn link() -> (Arc<Link>, FrameRx) {
    let (a, b) = channel::pair(&ChannelConfig::default().with_capacity(16 * 1024)).unwrap();
    let (tx, _) = a.split();
    let (_, rx) = b.split();
    let link = Link::new(
        FrameTx::Shm(tx, Vec::new()),
        Arc::new(ServerObs::new(false)),
        Arc::new(ConnInfo::new(1, None, "shm", None)),
    );
    (Arc::new(link), FrameRx::shm(rx, 1 << 20))
}

/// A message sixteen rings long, different for each `seed`.
fn long(seed: u8) -> Vec<u8> {
    (0..256 * 1024u32).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn send(link: &Arc<Link>, call_id: u64, body: Vec<u8>) -> tokio::task::JoinHandle<()> {
    let link = link.clone();
    tokio::spawn(async move {
        link.send(Dir::ToCallee, Kind::Request, 1, call_id, &body)
            .await
            .unwrap();
    })
}

/// Waits, bounded, until a frame is in the ring (the long message began to go out).
async fn first_frame_out(rx: &mut FrameRx) {
    tokio::time::timeout(BOUND, async {
        while !rx.has_frame() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the long message never began");
}

#[tokio::test]
async fn a_short_message_goes_between_the_fragments_of_a_long_one() {
    let (link, mut rx) = link();
    let body = long(0);
    let sending = send(&link, 7, body.clone());
    first_frame_out(&mut rx).await;
    // The long message is thirty-two fragments; the ring holds two, and nothing reads yet.
    let short = send(&link, 8, b"completion request".to_vec());
    // Reading, the short one comes out before the long one is complete: it went between
    // two of its fragments (were long messages sent whole, it would come after).
    let (h, payload) = tokio::time::timeout(BOUND, rx.recv())
        .await
        .expect("nothing came")
        .unwrap();
    assert_eq!(h.call_id, 8, "the long message came first");
    assert_eq!(&payload[..], b"completion request");
    short.await.unwrap();
    let (h, payload) = rx.recv().await.unwrap();
    assert_eq!((h.call_id, h.len as usize), (7, body.len()));
    assert!(payload == body, "the long message came back changed");
    sending.await.unwrap();
}

#[tokio::test]
async fn a_long_message_abandoned_half_sent_is_finished_before_the_next() {
    let (link, mut rx) = link();
    let (first, second) = (long(1), long(2));
    let abandoned = send(&link, 7, first.clone());
    first_frame_out(&mut rx).await;
    abandoned.abort(); // its send future is dropped with the message half out
    assert!(abandoned.await.unwrap_err().is_cancelled());
    // Then: another long message, a short one of the abandoned message's call (say, its
    // cancel), and a short one of another call.
    let next = [
        send(&link, 9, second.clone()),
        send(&link, 7, b"after the first".to_vec()),
        send(&link, 10, b"any time".to_vec()),
    ];
    let mut got = Vec::new();
    for _ in 0..4 {
        let (h, payload) = tokio::time::timeout(BOUND, rx.recv())
            .await
            .expect("a message never came")
            .unwrap();
        got.push((h.call_id, payload));
    }
    for task in next {
        task.await.unwrap();
    }
    // The receiver got the first whole (the rest was sent before the second began, else
    // it would have refused the second's first fragment) ...
    let at = |id: u64, len: usize| {
        got.iter()
            .position(|(c, p)| *c == id && p.len() == len)
            .unwrap_or_else(|| panic!("no message of call {id} of {len} bytes"))
    };
    assert!(
        got[at(7, first.len())].1 == first,
        "the first came back changed"
    );
    assert!(
        got[at(9, second.len())].1 == second,
        "the second came back changed"
    );
    // ... and the short message of its call only after it.
    assert!(
        at(7, first.len()) < at(7, 15),
        "a later message of the call overtook it"
    );
    at(10, 8);
    assert!(!link.broken.is_cancelled());
}
