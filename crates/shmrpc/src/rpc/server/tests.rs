//! The server's connection logic over the in-memory transport: no segments, no sockets.
//! Time is paused (tokio's test clock), so "nothing more arrives" is decided by the
//! runtime having nothing left to run, not by a wall-clock wait.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use super::{ServerBuilder, Shared};
use crate::frame::{FrameHeader, Kind};
use crate::rpc::inspect::ConnInfo;
use crate::rpc::session::{self, Ends, Role, STREAM_WINDOW};
use crate::rpc::transport::{mem_pair, Dir, FrameRx, FrameTx};
use crate::rpc::{decode, encode, method_id, Code, RpcError, ServerConfig};

/// The client's end of a connection served in memory.
struct Peer {
    tx: FrameTx,
    rx: FrameRx,
    shared: Arc<Shared>,
}

fn config() -> ServerConfig {
    ServerConfig {
        // No pings in these tests: the paused clock would otherwise reach a heartbeat.
        heartbeat: Duration::from_secs(3600),
        ..ServerConfig::default()
    }
}

fn serve(b: ServerBuilder) -> Peer {
    let shared = Shared::new(b, None);
    let ((stx, srx), (ctx, crx)) = mem_pair(256, shared.cfg.max_message);
    let info = Arc::new(ConnInfo::new(1, None, "mem", None));
    let host = shared.host.clone();
    let (_peer, run) = session::open(host, Role::Server, stx, srx, info, Ends::default());
    tokio::spawn(run);
    Peer {
        tx: ctx,
        rx: crx,
        shared,
    }
}

impl Peer {
    async fn request(&mut self, id: u64, method: &str, body: &[u8]) {
        // The deadline prefix: 0 = none.
        self.tx
            .send_parts(
                Dir::ToCallee,
                Kind::Request,
                method_id(method),
                id,
                &[&0u32.to_le_bytes(), body],
            )
            .await
            .expect("send request");
    }

    async fn send(&mut self, kind: Kind, id: u64, payload: &[u8]) {
        self.tx
            .send(Dir::ToCallee, kind, 0, id, payload)
            .await
            .expect("send");
    }

    async fn next(&mut self) -> (FrameHeader, Vec<u8>) {
        tokio::time::timeout(Duration::from_secs(60), self.rx.recv())
            .await
            .expect("a frame from the server")
            .expect("transport")
    }

    /// Whether a frame arrives before the runtime runs out of work (paused clock: the
    /// timeout fires only once every task is idle).
    async fn quiet(&mut self) -> bool {
        tokio::time::timeout(Duration::from_secs(1), self.rx.recv())
            .await
            .is_err()
    }
}

fn error(payload: &[u8]) -> RpcError {
    RpcError::decode(payload)
}

#[tokio::test(start_paused = true)]
async fn requests_are_dispatched_by_method_and_answered_by_id() {
    let b = ServerBuilder::new(config())
        .unary_raw("echo", |_ctx, body: Vec<u8>| async move { Ok(body) })
        .unary("add", |_ctx, (a, b): (u32, u32)| async move { Ok(a + b) });
    let mut p = serve(b);
    p.request(5, "echo", b"hello").await;
    let (h, body) = p.next().await;
    assert_eq!(
        (h.kind, h.call_id, body.as_slice()),
        (Kind::Response, 5, &b"hello"[..])
    );
    p.request(6, "add", &encode(&(2u32, 40u32)).unwrap()).await;
    let (h, body) = p.next().await;
    assert_eq!((h.kind, h.call_id), (Kind::Response, 6));
    assert_eq!(decode::<u32>(&body).unwrap(), 42);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_method_is_an_error_for_that_call_only() {
    let b = ServerBuilder::new(config())
        .unary_raw("echo", |_ctx, body: Vec<u8>| async move { Ok(body) });
    let mut p = serve(b);
    p.request(1, "nope", b"").await;
    let (h, body) = p.next().await;
    assert_eq!((h.kind, h.call_id), (Kind::Error, 1));
    assert_eq!(error(&body).code, Code::UnknownMethod);
    // The connection goes on.
    p.request(2, "echo", b"x").await;
    assert_eq!(p.next().await.0.kind, Kind::Response);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_reaches_the_waiting_handler() {
    let (seen_tx, seen_rx) = oneshot::channel();
    let seen_tx = std::sync::Mutex::new(Some(seen_tx));
    let b = ServerBuilder::new(config()).unary_raw("wait", move |ctx, _body| {
        let seen = seen_tx.lock().unwrap().take();
        async move {
            ctx.cancelled().await;
            if let Some(s) = seen {
                let _ = s.send(ctx.is_cancelled());
            }
            Ok(Vec::new())
        }
    });
    let mut p = serve(b);
    p.request(9, "wait", b"").await;
    assert!(p.quiet().await, "the handler waits");
    p.send(Kind::Cancel, 9, &[]).await;
    let (h, body) = p.next().await;
    assert_eq!((h.kind, h.call_id), (Kind::Error, 9));
    assert_eq!(error(&body).code, Code::Cancelled);
    assert!(seen_rx.await.expect("the handler saw the cancel"));
}

#[tokio::test(start_paused = true)]
async fn stream_items_wait_for_the_callers_credit() {
    const ITEMS: u32 = 100;
    let b = ServerBuilder::new(config()).streaming("count", |_ctx, n: u32, sink| async move {
        for i in 0..n {
            sink.send(&i).await?;
        }
        Ok(())
    });
    let mut p = serve(b);
    p.request(3, "count", &encode(&ITEMS).unwrap()).await;
    let mut got = Vec::new();
    for _ in 0..STREAM_WINDOW {
        let (h, body) = p.next().await;
        assert_eq!((h.kind, h.call_id), (Kind::StreamItem, 3));
        got.push(decode::<u32>(&body).unwrap());
    }
    assert!(p.quiet().await, "a window's worth, then the handler waits");
    // Credit for ten: exactly ten more.
    p.send(Kind::Credit, 3, &10u32.to_le_bytes()).await;
    for _ in 0..10 {
        got.push(decode::<u32>(&p.next().await.1).unwrap());
    }
    assert!(p.quiet().await, "no more than the credit");
    // The rest (a grant is capped at a window, so give it in two).
    p.send(Kind::Credit, 3, &64u32.to_le_bytes()).await;
    let end = loop {
        let (h, body) = p.next().await;
        match h.kind {
            Kind::StreamItem => got.push(decode::<u32>(&body).unwrap()),
            _ => break h.kind,
        }
    };
    assert_eq!(end, Kind::StreamEnd);
    assert_eq!(got, (0..ITEMS).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_reused_in_flight_call_id_is_a_protocol_error_for_that_call() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let b = ServerBuilder::new(config()).unary_raw("gated", move |_ctx, body: Vec<u8>| {
        let g = g.clone();
        async move {
            g.notified().await;
            Ok(body)
        }
    });
    let mut p = serve(b);
    p.request(7, "gated", b"first").await;
    assert!(p.quiet().await, "the first call waits at the gate");
    p.request(7, "gated", b"second").await;
    let (h, body) = p.next().await;
    assert_eq!((h.kind, h.call_id), (Kind::Error, 7));
    let e = error(&body);
    assert_eq!(e.code, Code::Protocol);
    assert!(e.message.contains("already in flight"), "{e}");
    // The first call was not replaced: it still runs, and its cancel token still works.
    gate.notify_one();
    let (h, body) = p.next().await;
    assert_eq!(
        (h.kind, h.call_id, body.as_slice()),
        (Kind::Response, 7, &b"first"[..])
    );
    // Finished: the id may be used again.
    p.request(7, "gated", b"third").await;
    assert!(p.quiet().await);
    gate.notify_one();
    assert_eq!(p.next().await.1, b"third");
}

#[tokio::test(start_paused = true)]
async fn past_the_limit_requests_queue_and_then_reading_stops() {
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let b = ServerBuilder::new(ServerConfig {
        max_in_flight: 2,
        ..config()
    })
    .unary_raw("gated", move |_ctx, body: Vec<u8>| {
        let g = g.clone();
        async move {
            g.notified().await;
            Ok(body)
        }
    });
    let mut p = serve(b);
    // Two run and two wait: as many as a client configured like the server keeps open, so
    // the server still reads. A fifth (a client with more open) is read and waits too, and
    // then the server stops reading: the sixth stays unread in the transport.
    for id in 1..=6u64 {
        p.request(id, "gated", &id.to_le_bytes()).await;
    }
    assert!(p.quiet().await);
    assert!(
        p.rx_unread_by_server(),
        "the server stopped reading at 2 running + 3 waiting"
    );
    for _ in 0..6 {
        gate.notify_one();
        let _ = p.next().await;
        // Let the next queued call reach the gate before releasing it.
        tokio::task::yield_now().await;
    }
}

impl Peer {
    /// Whether the server left a frame of ours unread (the in-memory queue towards it is
    /// not empty).
    fn rx_unread_by_server(&self) -> bool {
        match &self.tx {
            FrameTx::Mem(q) => q.capacity() < q.max_capacity(),
            _ => unreachable!("in-memory transport"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_fails_its_call_and_the_connection_goes_on() {
    let b = ServerBuilder::new(config())
        .unary_raw("boom", |_ctx, _body: Vec<u8>| async move {
            tokio::task::yield_now().await; // panics in its task, not on the first poll
            panic!("boom");
        })
        .unary_raw("echo", |_ctx, body: Vec<u8>| async move { Ok(body) });
    let mut p = serve(b);
    p.request(1, "boom", b"").await;
    let (h, body) = p.next().await;
    assert_eq!((h.kind, h.call_id), (Kind::Error, 1));
    assert_eq!(error(&body).code, Code::HandlerFailed);
    p.request(2, "echo", b"ok").await;
    assert_eq!(p.next().await.1, b"ok");
    assert_eq!(p.shared.registry().report().connections.len(), 1);
}
