//! Typed method descriptors end to end: one `const` per method, used by the server's
//! builder and by the async and blocking clients.
#![cfg(not(shmrpc_loom))]

use std::time::Duration;

use shmrpc::{
    BlockingClient, CallOptions, Client, ClientConfig, Code, Notification, RpcError, Server,
    Streaming, Unary,
};

const ADD: Unary<(u64, u64), u64> = Unary::new("add");
const SPLIT: Unary<String, Vec<String>> = Unary::new("split");
const COUNTDOWN: Streaming<u32, String> = Streaming::new("countdown");
/// Served by an inline handler.
const MAX: Unary<Vec<i64>, Option<i64>> = Unary::new("max");
/// Same name as `ADD`, other types: what a client with a stale copy of the types would send.
const ADD_AS_TEXT: Unary<String, String> = Unary::new("add");

fn name(what: &str) -> String {
    format!("typed-{what}-{}", std::process::id())
}

fn server(name: &str) -> Result<Server, Box<dyn std::error::Error>> {
    Ok(Server::builder()
        .method(ADD, |_ctx, (a, b)| async move {
            a.checked_add(b)
                .ok_or_else(|| RpcError::new(Code::BadRequest, "overflow"))
        })
        .method(SPLIT, |_ctx, text| async move {
            Ok(text.split(' ').map(str::to_owned).collect())
        })
        .inline_method(MAX, |_ctx, v| {
            if v.len() > 1000 {
                return Err(RpcError::new(Code::TooLarge, "at most 1000 numbers"));
            }
            Ok(v.into_iter().max())
        })
        .stream_method(COUNTDOWN, |_ctx, from, sink| async move {
            for i in (1..=from).rev() {
                sink.send(&i.to_string()).await?;
            }
            sink.send(&"liftoff".to_string()).await
        })
        .bind(name)?)
}

#[test]
fn descriptors_name_the_method_and_its_id() {
    assert_eq!(ADD.name(), "add");
    assert_eq!(ADD.id(), shmrpc::method_id("add"));
    assert_eq!(COUNTDOWN.name(), "countdown");
    assert_eq!(format!("{ADD:?}"), "Unary(\"add\")");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_unary_and_streaming_calls_work_end_to_end() -> Result<(), Box<dyn std::error::Error>>
{
    let name = name("async");
    let server = server(&name)?;
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());

    let client = Client::connect(&name, ClientConfig::default()).await?;
    let opts = CallOptions::timeout(Duration::from_secs(10));
    assert_eq!(client.invoke(ADD, &(40, 2), opts).await?, 42);
    let err = client.invoke(ADD, &(u64::MAX, 1), opts).await.unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (Code::BadRequest, "overflow")
    );
    assert_eq!(
        client.invoke(SPLIT, &"a b c".to_string(), opts).await?,
        ["a", "b", "c"]
    );
    assert_eq!(
        client.invoke(MAX, &vec![3, -9, 17, 4], opts).await?,
        Some(17)
    );
    assert_eq!(client.invoke(MAX, &vec![], opts).await?, None);
    let err = client.invoke(MAX, &vec![1; 1001], opts).await.unwrap_err();
    assert_eq!(err.code, Code::TooLarge, "{err}");

    let mut items = client.invoke_stream(COUNTDOWN, &3, opts).await?;
    let mut got = Vec::new();
    while let Some(item) = items.next().await {
        got.push(item?);
    }
    assert_eq!(got, ["3", "2", "1", "liftoff"]);

    // The descriptor is only a name and types: the typed and the string API interoperate.
    let sum: u64 = client.call("add", &(1u64, 2u64), opts).await?;
    assert_eq!(sum, 3);
    // A descriptor with the wrong types for a name is caught by the codec at run time
    // (the request does not decode as the handler's type).
    let err = client
        .invoke(ADD_AS_TEXT, &"one and two".to_string(), opts)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::BadRequest, "{err}");

    drop((items, client));
    handle.shutdown();
    serving.await?;
    Ok(())
}

#[test]
fn the_blocking_client_takes_the_same_descriptors() -> Result<(), Box<dyn std::error::Error>> {
    let name = name("blocking");
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(async { server(&name) })?;
    let handle = server.handle();
    let serving = rt.spawn(server.serve());

    let client = BlockingClient::connect(&name, ClientConfig::default())?;
    let timeout = Some(Duration::from_secs(10));
    assert_eq!(client.invoke(ADD, &(5, 6), timeout)?, 11);
    assert_eq!(
        client.invoke_stream_collect(COUNTDOWN, &2, timeout)?,
        ["2", "1", "liftoff"]
    );

    drop(client);
    handle.shutdown();
    rt.block_on(serving)?;
    Ok(())
}

/// The client's side of a callback: a question the engine asks the editor.
const CURSOR: Unary<String, u32> = Unary::new("cursor");
/// And a stream the editor sends the engine: the lines of a buffer.
const LINES: Streaming<u32, String> = Streaming::new("lines");
/// What the editor asks the engine: it answers by calling the editor back.
const SUMMARY: Unary<String, String> = Unary::new("summary");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_methods_registered_on_a_client_are_called_back_by_the_server(
) -> Result<(), Box<dyn std::error::Error>> {
    let name = name("callback");
    let server = Server::builder()
        .method(SUMMARY, |ctx, file| async move {
            let opts = CallOptions::timeout(Duration::from_secs(10));
            let peer = ctx.peer();
            let cursor = peer.invoke(CURSOR, &file, opts).await?;
            let mut lines = peer.invoke_stream(LINES, &3, opts).await?;
            let mut got = Vec::new();
            while let Some(line) = lines.next().await {
                got.push(line?);
            }
            Ok(format!("{file}@{cursor}: {}", got.join("|")))
        })
        .bind(&name)?;
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());

    let client = Client::builder()
        .method(CURSOR, |_ctx, file| async move { Ok(file.len() as u32) })
        .stream_method(LINES, |_ctx, n, sink| async move {
            for i in 0..n {
                sink.send(&format!("line {i}")).await?;
            }
            Ok(())
        })
        .connect(&name)
        .await?;
    let opts = CallOptions::timeout(Duration::from_secs(10));
    let summary = client.invoke(SUMMARY, &"main.rs".to_string(), opts).await?;
    assert_eq!(summary, "main.rs@7: line 0|line 1|line 2");
    // A client without the methods: the server's callback fails, and says why.
    let plain = Client::connect(&name, ClientConfig::default()).await?;
    let err = plain
        .invoke(SUMMARY, &"x".to_string(), opts)
        .await
        .unwrap_err();
    assert_eq!(err.code, Code::UnknownMethod, "{err}");

    drop((client, plain));
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), serving).await??;
    Ok(())
}

/// A diagnostic: line and message.
const DIAGNOSTIC: Notification<(u32, String)> = Notification::new("diagnostic");
/// What the server sends back: how many diagnostics it saw.
const SEEN: Notification<u32> = Notification::new("seen");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_notifications_go_both_ways() -> Result<(), Box<dyn std::error::Error>> {
    assert_eq!(DIAGNOSTIC.id(), shmrpc::method_id("diagnostic"));
    assert_eq!(format!("{SEEN:?}"), "Notification(\"seen\")");
    let name = name("notify");
    let (diag_tx, mut diags) = tokio::sync::mpsc::unbounded_channel();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let server = Server::builder()
        .notify_method(DIAGNOSTIC, move |ctx, d| {
            let (diag_tx, count) = (diag_tx.clone(), count.clone());
            async move {
                let _ = diag_tx.send(d);
                // Relaxed: a counter read only by this handler, which runs one at a time.
                let n = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let _ = ctx.peer().send_notification(SEEN, &n).await;
            }
        })
        .bind(&name)?;
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());

    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let client = Client::builder()
        .notify_method(SEEN, move |_ctx, n| {
            let _ = seen_tx.send(n);
            async {}
        })
        .connect(&name)
        .await?;
    for line in 0..200u32 {
        client
            .send_notification(DIAGNOSTIC, &(line, format!("unused variable {line}")))
            .await?;
    }
    let bound = Duration::from_secs(30);
    for line in 0..200u32 {
        let d = tokio::time::timeout(bound, diags.recv()).await?;
        assert_eq!(d, Some((line, format!("unused variable {line}"))));
        let n = tokio::time::timeout(bound, seen.recv()).await?;
        assert_eq!(n, Some(line + 1));
    }

    drop(client);
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), serving).await??;
    Ok(())
}
