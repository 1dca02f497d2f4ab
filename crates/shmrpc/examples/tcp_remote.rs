//! The same server over shared memory and over TCP.
//!
//! Shared memory only reaches processes on this host; for a peer on another host, bind a
//! TCP address instead. The frames and the handlers are the same, so one set of routes
//! serves both. This example stays on loopback (127.0.0.1, a port the OS picks).
//!
//! Run: `cargo run --release -p shmrpc --example tcp_remote`
//! (it starts the server as a child process of itself).

use std::io::BufRead;
use std::net::SocketAddr;
use std::sync::Arc;

use shmrpc::{CallOptions, Client, ClientConfig, Server, ServerBuilder};

/// The routes, shared by both transports. `quit` stops every server of this process.
fn routes(stop: Arc<tokio::sync::Notify>) -> ServerBuilder {
    Server::builder()
        .unary(
            "upper",
            |_ctx, s: String| async move { Ok(s.to_uppercase()) },
        )
        .streaming("words", |_ctx, s: String, sink| async move {
            for w in s.split_whitespace() {
                sink.send(&w.to_string()).await?;
            }
            Ok(())
        })
        .unary("quit", move |_ctx, (): ()| {
            let stop = stop.clone();
            async move {
                stop.notify_one();
                Ok(())
            }
        })
}

async fn server(name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let stop = Arc::new(tokio::sync::Notify::new());
    let shm = routes(stop.clone()).bind(name)?;
    let tcp = routes(stop.clone())
        .bind_tcp("127.0.0.1:0".parse()?)
        .await?;
    // Tell the parent where to connect (the only line this process prints).
    println!("{}", tcp.local_addr().ok_or("no TCP address")?);
    let (h1, h2) = (shm.handle(), tcp.handle());
    tokio::spawn(async move {
        stop.notified().await;
        h1.shutdown();
        h2.shutdown();
    });
    tokio::join!(shm.serve(), tcp.serve());
    Ok(())
}

/// One client's calls; the output is the same whichever transport carries them.
async fn use_client(label: &str, client: &Client) -> Result<(), Box<dyn std::error::Error>> {
    let up: String = client
        .call(
            "upper",
            &"over the wire".to_string(),
            CallOptions::default(),
        )
        .await?;
    let mut stream = client
        .call_stream(
            "words",
            &"one two three".to_string(),
            CallOptions::default(),
        )
        .await?;
    let mut words = Vec::new();
    while let Some(w) = stream.next::<String>().await {
        words.push(w?);
    }
    println!("{label}: upper = {up}, words = {words:?}");
    Ok(())
}

async fn client(name: &str, addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let shm = Client::connect(name, ClientConfig::default()).await?;
    use_client("shm", &shm).await?;
    let tcp = Client::connect_tcp(addr, ClientConfig::default()).await?;
    use_client("tcp", &tcp).await?;
    let () = tcp.call("quit", &(), CallOptions::default()).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name] = &args[..] {
        if flag == "--server" {
            return server(name).await;
        }
    }
    let name = format!("tcp-remote-{}", std::process::id());
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(["--server", &name])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    // The server prints its TCP address once both transports listen.
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let result = match line.trim().parse::<SocketAddr>() {
        Ok(addr) => client(&name, addr).await,
        Err(e) => Err(format!("bad address line {line:?}: {e}").into()),
    };
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
