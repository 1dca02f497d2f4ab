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
            let handle = handle.clone();
            tokio::spawn(async move {
                // Read the whole request head (it may come in several segments) before
                // answering: closing a socket with unread bytes sends a reset, which can
                // destroy the answer before the scraper reads it. Bounded in time and size.
                let mut request = Vec::with_capacity(512);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    let mut buf = [0u8; 1024];
                    while request.len() < 8192 && !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await;
                // Rendered after the request arrived: the figures as of the scrape.
                let body = handle.render();
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
