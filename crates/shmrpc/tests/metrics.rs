//! The server's metrics (cargo feature `metrics`): each series moves as calls happen.
//! Run: `cargo test -p shmrpc --features metrics --test metrics` (scripts/test.sh does).
#![cfg(feature = "metrics")]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;
use shmrpc::{CallOptions, Client, ClientConfig, Code, RpcError, ServerBuilder, ServerConfig};

/// The value of the series `name` with label `label` (if any), from a snapshot.
fn value<'a>(
    snap: &'a [(metrics_util::CompositeKey, DebugValue)],
    kind: MetricKind,
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<&'a DebugValue> {
    snap.iter()
        .find(|(k, _)| {
            k.kind() == kind
                && k.key().name() == name
                && label.is_none_or(|(lk, lv)| {
                    k.key().labels().any(|l| l.key() == lk && l.value() == lv)
                })
        })
        .map(|(_, v)| v)
}

fn counter(
    snap: &[(metrics_util::CompositeKey, DebugValue)],
    name: &str,
    label: Option<(&str, &str)>,
) -> u64 {
    match value(snap, MetricKind::Counter, name, label) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("counter {name} {label:?}: {other:?}"),
    }
}

#[test]
fn calls_errors_bytes_latency_and_connections_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = format!("metrics-{}", std::process::id());
    // The handles are registered when the server is built: build it with the recorder.
    let server = metrics::with_local_recorder(&recorder, || {
        let cfg = ServerConfig::default().with_metrics(true);
        ServerBuilder::new(cfg)
            .unary_raw("echo", |_ctx, req| async move { Ok(req) })
            .unary_raw("fail", |_ctx, _req| async move {
                Err::<Vec<u8>, _>(RpcError::handler("no"))
            })
            .unary_raw("wait", |_ctx, req| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok(req)
            })
            .unary_inline_raw("inline_echo", |_ctx, req, out| {
                out.extend_from_slice(req);
                Ok(())
            })
            .unary_inline_raw("inline_fail", |_ctx, _req, _out| {
                Err(RpcError::handler("no"))
            })
            .bind(&name)
            .unwrap()
    });
    rt.block_on(async {
        let handle = server.handle();
        let serving = tokio::spawn(server.serve());
        let c = Client::connect(&name, ClientConfig::default())
            .await
            .unwrap();
        for _ in 0..10 {
            c.call_raw("echo", &[1u8; 100], CallOptions::default())
                .await
                .unwrap();
        }
        // Answered after waiting: the spawned path is counted too.
        c.call_raw("wait", &[2u8; 10], CallOptions::default())
            .await
            .unwrap();
        let e = c
            .call_raw("fail", b"", CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::HandlerFailed);
        // Inline handlers are counted like the others.
        let mut out = Vec::new();
        for _ in 0..3 {
            c.call_raw_into("inline_echo", &[3u8; 7], &mut out, CallOptions::default())
                .await
                .unwrap();
        }
        let e = c
            .call_raw("inline_fail", b"", CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::HandlerFailed);
        let e = c
            .call_raw("nope", b"", CallOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.code, Code::UnknownMethod);

        let snap = snapshotter.snapshot().into_vec();
        let snap: Vec<_> = snap.into_iter().map(|(k, _, _, v)| (k, v)).collect();
        assert_eq!(
            counter(&snap, "shmrpc_calls_total", Some(("method", "echo"))),
            10
        );
        assert_eq!(
            counter(&snap, "shmrpc_calls_total", Some(("method", "wait"))),
            1
        );
        assert_eq!(
            counter(&snap, "shmrpc_calls_total", Some(("method", "fail"))),
            1
        );
        assert_eq!(
            counter(&snap, "shmrpc_calls_total", Some(("method", "inline_echo"))),
            3
        );
        assert_eq!(
            counter(&snap, "shmrpc_calls_total", Some(("method", "inline_fail"))),
            1
        );
        assert_eq!(
            counter(
                &snap,
                "shmrpc_errors_total",
                Some(("code", "HandlerFailed"))
            ),
            2
        );
        assert_eq!(
            counter(
                &snap,
                "shmrpc_errors_total",
                Some(("code", "UnknownMethod"))
            ),
            1
        );
        assert_eq!(
            counter(&snap, "shmrpc_errors_total", Some(("code", "Cancelled"))),
            0
        );
        assert_eq!(
            counter(&snap, "shmrpc_bytes_received_total", None),
            10 * 100 + 10 + 3 * 7
        );
        assert!(counter(&snap, "shmrpc_bytes_sent_total", None) >= 10 * 100 + 10 + 3 * 7);
        match value(
            &snap,
            MetricKind::Histogram,
            "shmrpc_call_seconds",
            Some(("method", "wait")),
        ) {
            Some(DebugValue::Histogram(v)) => {
                assert_eq!(v.len(), 1);
                assert!(v[0].into_inner() >= 0.005, "waited 5 ms: {v:?}");
            }
            other => panic!("call_seconds: {other:?}"),
        }
        match value(
            &snap,
            MetricKind::Histogram,
            "shmrpc_call_seconds",
            Some(("method", "echo")),
        ) {
            Some(DebugValue::Histogram(v)) => assert_eq!(v.len(), 10),
            other => panic!("call_seconds: {other:?}"),
        }
        match value(&snap, MetricKind::Gauge, "shmrpc_connections", None) {
            Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), 1.0),
            other => panic!("connections: {other:?}"),
        }
        drop(c);
        handle.shutdown();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .unwrap()
            .unwrap();
        let snap: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(k, _, _, v)| (k, v))
            .collect();
        // The debugging recorder's snapshots take and reset each value: since the last
        // one, the connection ended (-1).
        match value(&snap, MetricKind::Gauge, "shmrpc_connections", None) {
            Some(DebugValue::Gauge(g)) => assert_eq!(g.into_inner(), -1.0),
            other => panic!("connections: {other:?}"),
        }
    });
}

/// With `ServerConfig::metrics` off (the default), a server records nothing even with the
/// feature built in and a recorder installed.
#[test]
fn a_server_without_the_metrics_flag_records_nothing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let name = format!("metrics-off-{}", std::process::id());
    let server = metrics::with_local_recorder(&recorder, || {
        ServerBuilder::new(ServerConfig::default())
            .unary_raw("echo", |_ctx, req| async move { Ok(req) })
            .bind(&name)
            .unwrap()
    });
    rt.block_on(async {
        let handle = server.handle();
        let serving = tokio::spawn(server.serve());
        let c = Client::connect(&name, ClientConfig::default())
            .await
            .unwrap();
        c.call_raw("echo", b"x", CallOptions::default())
            .await
            .unwrap();
        assert!(
            snapshotter.snapshot().into_vec().is_empty(),
            "no series registered or recorded"
        );
        drop(c);
        handle.shutdown();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .unwrap()
            .unwrap();
    });
}
