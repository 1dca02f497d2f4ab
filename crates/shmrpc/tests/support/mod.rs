//! What several test binaries share: a server on a runtime of its own.

use std::time::Duration;

use shmrpc::ServerHandle;

/// The runtime the test's server runs on, threads of its own.
pub fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// A server named `name` on its own runtime with `heartbeat`, serving `echo`, and
/// `echo_inline` from an inline handler.
pub fn echo_server(
    name: &str,
    heartbeat: Duration,
) -> (tokio::runtime::Runtime, ServerHandle, String) {
    let rt = server_runtime();
    let cfg = shmrpc::ServerConfig::default().with_heartbeat(heartbeat);
    let server = rt
        .block_on(async {
            shmrpc::ServerBuilder::new(cfg)
                .unary_raw("echo", |_ctx, body| async move { Ok(body) })
                .unary_inline_raw("echo_inline", |_ctx, body, out| {
                    out.extend_from_slice(body);
                    Ok(())
                })
                .bind(name)
        })
        .unwrap();
    let handle = server.handle();
    rt.spawn(async move {
        let _ = server.serve().await;
    });
    (rt, handle, name.to_owned())
}
