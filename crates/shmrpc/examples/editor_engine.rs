//! An editor and its AI engine, as two processes.
//!
//! The engine serves a streaming `chat` method that yields tokens over time and a unary
//! `stats` method; the editor asks for a completion, shows tokens as they arrive, and
//! abandons the request halfway (the user typed on), which cancels the engine's handler.
//!
//! Run: `cargo run --release -p shmrpc --example editor_engine`
//! (it starts the engine as a child process of itself).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmrpc::rpc::{CallOptions, Client, ClientConfig, Code, RpcError, Server};

#[derive(Default)]
struct EngineStats {
    cancelled: AtomicU64,
    tokens: AtomicU64,
}

async fn engine(name: &str) -> Result<(), RpcError> {
    let stats = Arc::new(EngineStats::default());
    let s2 = stats.clone();
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = stop.clone();
    let server = Server::builder()
        .streaming("chat", move |ctx, prompt: String, sink| {
            let stats = s2.clone();
            async move {
                for (i, word) in prompt.split_whitespace().cycle().take(1000).enumerate() {
                    tokio::select! {
                        _ = ctx.cancelled() => {
                            stats.cancelled.fetch_add(1, Ordering::SeqCst);
                            return Err(RpcError::new(Code::Cancelled, "editor moved on"));
                        }
                        // "Thinking" between tokens.
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                    sink.send(&format!("{i}:{word}")).await?;
                    stats.tokens.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            }
        })
        .unary("stats", move |_ctx, (): ()| {
            let stats = stats.clone();
            async move {
                Ok((
                    stats.cancelled.load(Ordering::SeqCst),
                    stats.tokens.load(Ordering::SeqCst),
                ))
            }
        })
        .unary("quit", move |_ctx, (): ()| {
            let stop = stop2.clone();
            async move {
                stop.notify_one();
                Ok(())
            }
        })
        .bind(name)?;
    // A graceful shutdown: finish calls in flight, then remove the socket on the way out.
    let handle = server.handle();
    tokio::spawn(async move {
        stop.notified().await;
        handle.shutdown();
    });
    println!("ready");
    server.serve().await;
    Ok(())
}

async fn editor(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(name, ClientConfig::default()).await?;
    let mut stream = client
        .call_stream(
            "chat",
            &"fn main ( ) { }".to_string(),
            CallOptions::default(),
        )
        .await?;
    for expect in 0..20 {
        let token: String = stream.next().await.ok_or("stream ended early")??;
        let index: u32 = token.split(':').next().unwrap_or("").parse()?;
        assert_eq!(index, expect, "tokens out of order");
        println!("editor <- {token}");
    }
    println!("editor: user typed on; abandoning the completion");
    drop(stream);
    for _ in 0..100 {
        let (cancelled, tokens): (u64, u64) = client
            .call("stats", &(), CallOptions::timeout(Duration::from_secs(5)))
            .await?;
        if cancelled > 0 {
            println!("engine saw the cancel after {tokens} tokens");
            let () = client.call("quit", &(), CallOptions::default()).await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the engine never saw the cancel".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let name = format!("editor-engine-{}", std::process::id());
    match args.get(1).map(String::as_str) {
        Some("engine") => Ok(engine(&args[2]).await?),
        _ => {
            let mut child = std::process::Command::new(std::env::current_exe()?)
                .args(["engine", &name])
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            // Wait for "ready" so the first connect finds the engine.
            let mut line = String::new();
            std::io::BufRead::read_line(
                &mut std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?),
                &mut line,
            )?;
            let result = editor(&name).await;
            let status = child.wait()?;
            result?;
            if !status.success() {
                return Err(format!("engine exited with {status}").into());
            }
            println!("done");
            Ok(())
        }
    }
}
