//! Round-trip latency of unary calls (64 B by default) from `BlockingClient` and from the
//! async client, to a server on its own thread and runtime (pinned to CPU 1; the callers
//! are not pinned: the blocking client's background thread needs a CPU too). Each client
//! calls an async handler with `call_raw` and an inline one (`unary_inline_raw`) with
//! `call_raw_into`, interleaved call by call. Prints p50 and p99 of each.
//!
//! Run: `cargo run --release -p shmrpc --example blocking_latency [-- CALLS [SIZE]]`
//! (SIZE: bytes each way, default 64).

use std::time::{Duration, Instant};

use shmrpc::{BlockingClient, CallOptions, Client, ClientConfig, Server};

mod probe;
use probe::Serving;

fn pct(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls = std::env::args()
        .nth(1)
        .map(|a| a.parse::<usize>())
        .transpose()?
        .unwrap_or(20_000);
    let size = std::env::args()
        .nth(2)
        .map(|a| a.parse::<usize>())
        .transpose()?
        .unwrap_or(64);
    let name = format!("blocking-latency-{}", std::process::id());
    let server = Server::builder()
        .unary_raw("echo", |_ctx, req| async move { Ok(req) })
        .unary_inline_raw("echo_inline", |_ctx, req, out| {
            out.extend_from_slice(req);
            Ok(())
        })
        .bind(&name)?;
    let serving = Serving::start(server);
    let body = vec![7u8; size];
    for round in 0..3 {
        let blocking = BlockingClient::connect(&name, ClientConfig::default())?;
        let (mut lat, mut fast) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
        let mut answer = Vec::new();
        for _ in 0..calls {
            let t = Instant::now();
            let r = blocking.call_raw("echo", &body, None)?;
            lat.push(t.elapsed());
            assert_eq!(r, body);
            let t = Instant::now();
            blocking.call_raw_into("echo_inline", &body, &mut answer, None)?;
            fast.push(t.elapsed());
            assert_eq!(answer, body);
        }
        let (b50, b99) = pct(lat);
        let (bi50, bi99) = pct(fast);
        drop(blocking);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let body = body.clone();
        let ((a50, a99), (ai50, ai99)) = rt.block_on(async {
            let c = Client::connect(&name, ClientConfig::default()).await?;
            tokio::spawn(async move {
                let (mut lat, mut fast) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
                let mut answer = Vec::new();
                let opts = CallOptions::default;
                for _ in 0..calls {
                    let t = Instant::now();
                    let r = c.call_raw("echo", &body, opts()).await?;
                    lat.push(t.elapsed());
                    assert_eq!(r, body);
                    let t = Instant::now();
                    c.call_raw_into("echo_inline", &body, &mut answer, opts())
                        .await?;
                    fast.push(t.elapsed());
                    assert_eq!(answer, body);
                }
                Ok::<_, shmrpc::RpcError>((pct(lat), pct(fast)))
            })
            .await?
            .map_err(Box::<dyn std::error::Error>::from)
        })?;
        println!(
            "round {round}: blocking p50 {b50:?} p99 {b99:?}, inline+into p50 {bi50:?} p99 {bi99:?}; \
             async p50 {a50:?} p99 {a99:?}, inline+into p50 {ai50:?} p99 {ai99:?}"
        );
    }
    serving.stop();
    Ok(())
}
