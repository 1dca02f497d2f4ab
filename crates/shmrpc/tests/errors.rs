//! Errors keep their causes as sources, and a printed chain says each thing once.
#![cfg(not(shmrpc_loom))]

use std::error::Error;
use std::time::Duration;

use shmrpc::{BindError, Client, ClientConfig, Code, ConnectError, RpcError, Server};

/// Every message of the chain, outermost first.
fn chain(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut next = e.source();
    while let Some(c) = next {
        out.push(c.to_string());
        next = c.source();
    }
    out
}

/// No message of the chain contains the next one (which a `{0}` + `#[source]` variant
/// would), so printing the chain (`{:#}` in anyhow) says each thing once.
fn assert_no_repeats(links: &[String]) {
    for pair in links.windows(2) {
        assert!(
            !pair[0].contains(&pair[1]),
            "{:?} repeats its source {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test]
async fn connecting_to_a_missing_server_is_a_connect_error_down_to_the_os_error() {
    let name = format!("errors-missing-{}", std::process::id());
    let cfg = ClientConfig::default().with_reconnect_for(Duration::ZERO);
    let err = Client::connect(&name, cfg).await.unwrap_err();
    let ConnectError::Shm { name: n, source } = &err else {
        panic!("not a shared-memory connect error: {err:?}");
    };
    assert_eq!(n, &name);
    assert!(
        matches!(source, shmrpc::channel::ConnectError::NotFound { .. }),
        "{source:?}"
    );
    // The chain reaches the OS error.
    let mut next: Option<&(dyn Error + 'static)> = Some(&err);
    let mut io = None;
    while let Some(e) = next {
        if let Some(i) = e.downcast_ref::<std::io::Error>() {
            io = Some(i.kind());
        }
        next = e.source();
    }
    assert!(
        matches!(
            io,
            Some(std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
        ),
        "{io:?}"
    );
    let links = chain(&err);
    assert_eq!(links.len(), 3, "{links:?}");
    assert!(links[0].contains(&name), "{links:?}");
    assert_no_repeats(&links);

    // As an `RpcError` (for callers that handle everything as one): `Unavailable`, with
    // the connect error as its source.
    let rpc = RpcError::from(err);
    assert_eq!(rpc.code, Code::Unavailable);
    let links = chain(&rpc);
    assert_eq!(links.len(), 4, "{links:?}");
    assert_no_repeats(&links);
}

#[tokio::test]
async fn binding_a_taken_name_is_a_bind_error_with_the_channel_error_as_source() {
    let name = format!("errors-taken-{}", std::process::id());
    let first = Server::builder().bind(&name).expect("first bind");
    let err = Server::builder().bind(&name).unwrap_err();
    assert!(matches!(err, BindError::Shm { .. }), "{err:?}");
    let links = chain(&err);
    assert!(links.len() >= 2, "{links:?}");
    assert!(links[1].contains("live server"), "{links:?}");
    assert_no_repeats(&links);

    // Over TCP: the OS error of `bind` is the source.
    let tcp = Server::builder()
        .bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .expect("port 0");
    let addr = tcp.local_addr().expect("a TCP server has an address");
    let err = Server::builder().bind_tcp(addr).await.unwrap_err();
    let BindError::Tcp { source, .. } = &err else {
        panic!("not a TCP bind error: {err:?}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
    assert_no_repeats(&chain(&err));

    let (h1, h2) = (first.handle(), tcp.handle());
    h1.shutdown();
    h2.shutdown();
    first.serve().await;
    tcp.serve().await;
}

#[test]
fn a_config_syntax_error_keeps_the_toml_error_as_source() {
    let err = shmrpc::ServerConfig::from_toml("rings = 4").unwrap_err();
    assert!(
        matches!(err, shmrpc::ConfigError::Syntax { file: None, .. }),
        "{err:?}"
    );
    let links = chain(&err);
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(links[1].contains("rings"), "{links:?}");
    assert_no_repeats(&links);
}
