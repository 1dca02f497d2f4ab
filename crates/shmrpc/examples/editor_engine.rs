//! An editor and its AI engine, as two processes.
//!
//! The engine serves a streaming `chat` method that yields tokens over time, a unary
//! `stats` method, and two language-server-style requests with typed (serde) parameters:
//! `textDocument/completion` and `textDocument/hover`. The editor asks for a chat answer,
//! shows tokens as they arrive, meanwhile asks for completions and a hover on the same
//! connection, and abandons the chat halfway (the user typed on), which cancels the
//! engine's handler.
//!
//! Run: `cargo run --release -p shmrpc --example editor_engine`
//! (it starts the engine as a child process of itself).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmrpc::{CallOptions, Client, ClientConfig, Code, RpcError, Server};

/// A place in a document, as language servers count it (zero-based).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Position {
    line: u32,
    character: u32,
}

/// The parameters of both document requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TextDocumentPosition {
    uri: String,
    position: Position,
}

/// One completion suggestion.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CompletionItem {
    label: String,
    detail: String,
}

/// What the editor shows when the pointer rests on a symbol.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hover {
    contents: String,
}

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
        .unary(
            "textDocument/completion",
            |_ctx, p: TextDocumentPosition| async move {
                let items = ["println!", "print!", "panic!"]
                    .iter()
                    .map(|label| CompletionItem {
                        label: label.to_string(),
                        detail: format!("macro, {}:{}", p.position.line, p.position.character),
                    })
                    .collect::<Vec<_>>();
                Ok(items)
            },
        )
        .unary(
            "textDocument/hover",
            |_ctx, p: TextDocumentPosition| async move {
                Ok(Hover {
                    contents: format!(
                        "{}:{}:{}: fn main()",
                        p.uri, p.position.line, p.position.character
                    ),
                })
            },
        )
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
    // Meanwhile, language-server-style requests on the same connection (another task).
    let lsp = client.clone();
    let requests = tokio::spawn(async move {
        let at = TextDocumentPosition {
            uri: "file:///src/main.rs".into(),
            position: Position {
                line: 3,
                character: 7,
            },
        };
        let opts = CallOptions::timeout(Duration::from_secs(5));
        let (items, hover) = tokio::join!(
            lsp.call::<_, Vec<CompletionItem>>("textDocument/completion", &at, opts),
            lsp.call::<_, Hover>("textDocument/hover", &at, opts),
        );
        Ok::<_, RpcError>((items?, hover?))
    });
    for expect in 0..20 {
        let token: String = stream.next().await.ok_or("stream ended early")??;
        let index: u32 = token.split(':').next().unwrap_or("").parse()?;
        assert_eq!(index, expect, "tokens out of order");
        println!("editor <- {token}");
    }
    println!("editor: user typed on; abandoning the completion");
    drop(stream);
    let (items, hover) = requests.await??;
    let labels: Vec<&str> = items.iter().map(|i| i.label.as_str()).collect();
    let detail = items.first().map_or("", |i| i.detail.as_str());
    println!("editor: completion at 3:7 -> {labels:?} ({detail})");
    println!("editor: hover at 3:7 -> {}", hover.contents);
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
