//! The client over the in-memory transport, against a scripted server in the test: calls
//! matched to answers by id, streams and their end, a dead connection failing its calls.

use std::time::Duration;

use super::{CallOptions, Client, ClientBuilder, ClientConfig};
use crate::frame::{FrameHeader, Kind};
use crate::rpc::transport::{mem_pair, Dir, FrameRx, FrameTx};
use crate::rpc::{decode, encode, method_id, Code, RpcError, DEADLINE_PREFIX};

fn config() -> ClientConfig {
    ClientConfig {
        heartbeat: Duration::from_secs(3600),
        ..ClientConfig::default()
    }
}

/// A client and the server's end of its connection.
fn client() -> (Client, FrameTx, FrameRx) {
    let cfg = config();
    let ((ctx, crx), (stx, srx)) = mem_pair(256, cfg.max_message);
    (Client::over(ctx, crx, ClientBuilder::new(cfg)), stx, srx)
}

async fn next(rx: &mut FrameRx) -> (FrameHeader, Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("a frame from the client")
        .expect("transport")
}

#[tokio::test(start_paused = true)]
async fn answers_reach_their_own_calls_whatever_their_order() {
    let (client, mut tx, mut rx) = client();
    let opts = CallOptions::default;
    let a = tokio::spawn({
        let c = client.clone();
        async move { c.call::<_, String>("name", &1u32, opts()).await }
    });
    let b = tokio::spawn({
        let c = client.clone();
        async move { c.call::<_, String>("name", &2u32, opts()).await }
    });
    // The scripted server reads both requests, then answers them in reverse order.
    let mut reqs = Vec::new();
    for _ in 0..2 {
        let (h, payload) = next(&mut rx).await;
        assert_eq!((h.kind, h.method), (Kind::Request, method_id("name")));
        let arg: u32 = decode(&payload[DEADLINE_PREFIX..]).unwrap();
        reqs.push((h.call_id, arg));
    }
    assert_ne!(reqs[0].0, reqs[1].0, "each call has its own id");
    for &(id, arg) in reqs.iter().rev() {
        let answer = encode(&format!("answer to {arg}")).unwrap();
        tx.send(
            Dir::ToCaller,
            Kind::Response,
            method_id("name"),
            id,
            &answer,
        )
        .await
        .unwrap();
    }
    assert_eq!(a.await.unwrap().unwrap(), "answer to 1");
    assert_eq!(b.await.unwrap().unwrap(), "answer to 2");
}

#[tokio::test(start_paused = true)]
async fn a_stream_yields_its_items_then_ends() {
    let (client, mut tx, mut rx) = client();
    let server = tokio::spawn(async move {
        let (h, _) = next(&mut rx).await;
        for i in 0..3u32 {
            tx.send(
                Dir::ToCaller,
                Kind::StreamItem,
                h.method,
                h.call_id,
                &encode(&i).unwrap(),
            )
            .await
            .unwrap();
        }
        tx.send(Dir::ToCaller, Kind::StreamEnd, h.method, h.call_id, &[])
            .await
            .unwrap();
        (tx, rx)
    });
    let mut s = client
        .call_stream("count", &3u32, CallOptions::default())
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = s.next::<u32>().await {
        items.push(item.unwrap());
    }
    assert_eq!(items, [0, 1, 2]);
    // Ended: it stays ended.
    assert!(s.next::<u32>().await.is_none());
    let _keep_open = server.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_error_frame_fails_its_call_with_the_servers_code() {
    let (client, mut tx, mut rx) = client();
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.call_raw("x", b"", CallOptions::default()).await }
    });
    let (h, _) = next(&mut rx).await;
    let e = RpcError::new(Code::BadRequest, "no");
    tx.send(Dir::ToCaller, Kind::Error, h.method, h.call_id, &e.encode())
        .await
        .unwrap();
    assert_eq!(call.await.unwrap().unwrap_err(), e);
}

#[tokio::test(start_paused = true)]
async fn a_lost_connection_fails_the_pending_call() {
    let (client, tx, mut rx) = client();
    let call = tokio::spawn({
        let c = client.clone();
        async move { c.call_raw("x", b"", CallOptions::default()).await }
    });
    let _ = next(&mut rx).await;
    drop((tx, rx)); // the server end goes away
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(err.code, Code::PeerGone);
    assert!(err.message.contains("connection closed"), "{err}");
}
