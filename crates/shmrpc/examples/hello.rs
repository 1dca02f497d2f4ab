//! The smallest shmrpc program: a server with one typed method, and a client in another
//! process that calls it. Both sides name the method through one descriptor, `GREET`,
//! which fixes its request and response types: a mismatch does not compile.
//!
//! Run: `cargo run --release -p shmrpc --example hello`
//! (it starts the server as a child process of itself).

use shmrpc::{CallOptions, Client, ClientConfig, Server, Unary};

/// The method: takes a name, returns a greeting. In a real program this lives in a module
/// (or crate) that the server and the client share.
const GREET: Unary<String, String> = Unary::new("greet");

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, name] = &args[..] {
        if flag == "--server" {
            // The server: `GREET` takes a String and returns a String (postcard-encoded).
            // After one greeting it shuts down gracefully (the answer still goes out), which
            // also removes its socket file.
            let done = std::sync::Arc::new(tokio::sync::Notify::new());
            let done2 = done.clone();
            let server = Server::builder()
                .method(GREET, move |_ctx, who| {
                    let done = done2.clone();
                    async move {
                        done.notify_one();
                        Ok(format!("hello, {who}!"))
                    }
                })
                .bind(name)?;
            let handle = server.handle();
            tokio::spawn(async move {
                done.notified().await;
                handle.shutdown();
            });
            server.serve().await;
            return Ok(());
        }
    }
    // The client: start the server process, then call it by name.
    let name = format!("hello-{}", std::process::id());
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .args(["--server", &name])
        .spawn()?;
    // `connect` retries until the server listens (up to `ClientConfig::reconnect_for`).
    let answer: Result<String, Box<dyn std::error::Error>> = async {
        let client = Client::connect(&name, ClientConfig::default()).await?;
        let greeting = client
            .invoke(GREET, &"world".to_string(), CallOptions::default())
            .await?;
        Ok(greeting)
    }
    .await;
    if answer.is_err() {
        server.kill()?; // it would wait for a greeting forever
    }
    println!("server said: {}", answer?);
    let status = server.wait()?;
    if !status.success() {
        return Err(format!("server exited with {status}").into());
    }
    Ok(())
}
