//! A quick look at unary RPC latency with server and client in one process (tasks of one
//! runtime). Cross-process figures come from `shmrpc bench`.
//!
//! Run: `cargo run --release -p shmrpc --example rpc_pingpong`

use std::time::{Duration, Instant};

use shmrpc::{CallOptions, Client, ClientConfig, Server};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let name = format!("rpc-pingpong-{}", std::process::id());
    let server = Server::builder()
        .unary_raw("echo", |_ctx, req| async move { Ok(req) })
        .bind(&name)?;
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());
    let client = Client::connect(&name, ClientConfig::default()).await?;
    let payload = [7u8; 64];
    for _ in 0..2_000 {
        client
            .call_raw("echo", &payload, CallOptions::default())
            .await?;
    }
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        client
            .call_raw("echo", &payload, CallOptions::default())
            .await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    let q = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "unary 64 B call, one process: p50 {:?}  p99 {:?}  p99.9 {:?}",
        q(0.5),
        q(0.99),
        q(0.999)
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5_000 {
                c.call_raw("echo", &[1u8; 64], CallOptions::default())
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "pipelined, 16 tasks on one connection: {:.0} calls/s",
        80_000.0 / secs
    );
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(5), serving).await??;
    Ok(())
}
