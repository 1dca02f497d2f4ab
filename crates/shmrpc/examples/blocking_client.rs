//! Calling a server from plain threads, without an async runtime in sight.
//!
//! `BlockingClient` runs the async client on a private one-thread runtime; its methods
//! block the calling thread until the answer arrives. One client can be shared by many
//! threads (its calls run concurrently on one connection).
//!
//! Run: `cargo run --release -p shmrpc --example blocking_client`
//! (it starts the server as a child process of itself).

use std::sync::Arc;
use std::time::Duration;

use shmrpc::RpcError;
use shmrpc::{BlockingClient, ClientConfig, Server};

/// The server side (an ordinary async server, in the child process).
fn server(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let stop = Arc::new(tokio::sync::Notify::new());
        let stop2 = stop.clone();
        let server = Server::builder()
            .unary("add", |_ctx, (a, b): (u64, u64)| async move { Ok(a + b) })
            .streaming("countdown", |_ctx, from: u32, sink| async move {
                for n in (0..=from).rev() {
                    sink.send(&n).await?;
                }
                Ok(())
            })
            .unary("quit", move |_ctx, (): ()| {
                let stop = stop2.clone();
                async move {
                    stop.notify_one();
                    Ok(())
                }
            })
            .bind(name)?;
        let handle = server.handle();
        tokio::spawn(async move {
            stop.notified().await;
            handle.shutdown();
        });
        server.serve().await;
        Ok(())
    })
}

/// The client side: plain `fn main` code and `std::thread`s.
fn client(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let timeout = Some(Duration::from_secs(5));
    let client = Arc::new(BlockingClient::connect(name, ClientConfig::default())?);

    // Four threads call at once through the one client.
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || -> Result<u64, RpcError> {
                let mut sum = 0;
                for i in 0..100 {
                    sum = client.call::<_, u64>("add", &(sum, t * 100 + i), timeout)?;
                }
                Ok(sum)
            })
        })
        .collect();
    for (t, thread) in threads.into_iter().enumerate() {
        let sum = thread.join().map_err(|_| "thread panicked")??;
        println!("thread {t}: sum = {sum}");
    }

    // A streaming call, collected into a Vec (raw bytes in, raw items out).
    let items = client.call_stream_collect("countdown", &shmrpc::encode(&5u32)?, timeout)?;
    let countdown: Vec<u32> = items
        .iter()
        .map(|b| shmrpc::decode(b))
        .collect::<Result<_, _>>()?;
    println!("countdown: {countdown:?}");

    client.call::<_, ()>("quit", &(), timeout)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name] = &args[..] {
        if flag == "--server" {
            return server(name);
        }
    }
    let name = format!("blocking-client-{}", std::process::id());
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--server", &name])
        .spawn()?;
    let result = client(&name);
    if result.is_err() {
        child.kill()?; // it would wait for `quit` forever
    }
    let status = child.wait()?;
    result?;
    if !status.success() {
        return Err(format!("server exited with {status}").into());
    }
    println!("done");
    Ok(())
}
