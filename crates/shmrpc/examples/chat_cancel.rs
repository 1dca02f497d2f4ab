//! A streaming "chat" method, and a caller that stops listening halfway.
//!
//! The server (a second process) streams tokens with a pause between them, as a language
//! model would. The client reads a few, then drops the stream: that sends `Cancel`, and the
//! server's handler sees it on `ctx.cancelled()`, stops generating, and reports it.
//!
//! Run: `cargo run --release -p shmrpc --example chat_cancel`
//! (it starts the server as a child process of itself).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shmrpc::{CallOptions, Client, ClientConfig, Code, RpcError, Server};

async fn server(name: &str) -> Result<(), RpcError> {
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = stop.clone();
    let server = Server::builder()
        .streaming("chat", move |ctx, prompt: String, sink| {
            let stop = stop2.clone();
            async move {
                let words: Vec<&str> = prompt.split_whitespace().collect();
                for i in 0..1000 {
                    tokio::select! {
                        // The caller dropped the stream (or died, or its deadline passed).
                        _ = ctx.cancelled() => {
                            println!("server: saw the cancel after {i} tokens");
                            stop.notify_one();
                            return Err(RpcError::new(Code::Cancelled, "caller left"));
                        }
                        // "Thinking" between tokens.
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                    sink.send(&words[i % words.len()].to_string()).await?;
                }
                Ok(())
            }
        })
        .bind(name)?;
    // Once the cancel was seen, shut down gracefully (this removes the socket file).
    let handle = server.handle();
    tokio::spawn(async move {
        stop.notified().await;
        handle.shutdown();
    });
    server.serve().await;
    Ok(())
}

async fn client(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let client = Client::connect(name, ClientConfig::default()).await?;
    let prompt = "tell me about shared memory rings".to_string();
    let mut stream = client
        .call_stream("chat", &prompt, CallOptions::default())
        .await?;
    for _ in 0..5 {
        let token: String = stream.next().await.ok_or("stream ended early")??;
        println!("client <- {token}");
    }
    println!("client: enough, dropping the stream");
    drop(stream); // sends Cancel to the server
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name] = &args[..] {
        if flag == "--server" {
            return Ok(server(name).await?);
        }
    }
    let name = format!("chat-cancel-{}", std::process::id());
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--server", &name])
        .spawn()?;
    let result = client(&name).await;
    // The server exits once it has seen the cancel; give it ten seconds.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            return Err("the server never saw the cancel".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    result?;
    if !status.success() {
        return Err(format!("server exited with {status}").into());
    }
    println!("done");
    Ok(())
}
