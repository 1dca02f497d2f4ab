//! The resident memory of an idle RPC server: binds, serves nothing for a moment, and
//! prints its `/proc/self/status` memory lines (total, anonymous, file-backed, shared).
//!
//! Run: `cargo run --release -p shmrpc --example idle_server`

use std::time::Duration;

use shmrpc::Server;

fn status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let name = format!("idle-server-{}", std::process::id());
        let server = Server::builder()
            .unary_raw("echo", |_ctx, req| async move { Ok(req) })
            .bind(&name)?;
        let handle = server.handle();
        let serving = tokio::spawn(server.serve());
        tokio::time::sleep(Duration::from_secs(1)).await;
        for key in ["VmRSS", "RssAnon", "RssFile", "RssShmem"] {
            println!("{key:<8} {}", status(key));
        }
        handle.shutdown();
        serving.await?;
        Ok(())
    })
}
