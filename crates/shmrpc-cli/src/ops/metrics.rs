//! A Prometheus endpoint for `shmrpc serve --metrics ADDR`: the library's metrics (cargo
//! feature `metrics` of `shmrpc`) go to a Prometheus recorder, rendered in the text
//! exposition format for every HTTP request (any path answers; `/metrics` is the usual one).

use std::net::SocketAddr;

use anyhow::{anyhow, Context};
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Installs the recorder and starts answering scrapes on `addr`; returns the bound address.
///
/// # Errors
/// If a recorder is already installed or `addr` cannot be bound.
pub async fn serve_prometheus(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| anyhow!("metrics recorder: {e}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let body = handle.render();
            tokio::spawn(async move {
                // Read (and ignore) the request head; one response per connection.
                let mut buf = [0u8; 2048];
                let _ =
                    tokio::time::timeout(std::time::Duration::from_secs(2), sock.read(&mut buf))
                        .await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}
