//! The remote transport in one process: calls over mutual TLS with a token, compression
//! seen on the wire (through a counting proxy), and the loopback uid check of a server
//! that authenticates nobody. Refusals of bad certificates and tokens, and abuse, are in
//! `shmrpc-tests/tests/remote_abuse.rs` (real processes).
#![cfg(not(shmrpc_loom))]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use shmrpc::inspect::{ServerReport, INSPECT_METHOD};
use shmrpc::{
    CallOptions, Client, ClientConfig, ClientTls, Compression, ConnectError, HandshakeError,
    ServerConfig, ServerHandle, ServerTls, TcpClientConfig, TcpServerConfig, Token,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A CA, and a certificate and key (PEM) it signed for `names`.
struct Pki {
    ca: String,
    ca_params: CertificateParams,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap().pem();
        Self {
            ca,
            ca_params,
            ca_key,
        }
    }

    fn issue(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn counting_server(cfg: ServerConfig, runs: Arc<AtomicUsize>) -> shmrpc::ServerBuilder {
    shmrpc::ServerBuilder::new(cfg).unary_raw("echo", move |_ctx, req| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(req)
        }
    })
}

async fn start(cfg: ServerConfig, runs: Arc<AtomicUsize>) -> (SocketAddr, ServerHandle) {
    let server = counting_server(cfg, runs)
        .bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    tokio::spawn(server.serve());
    (addr, handle)
}

fn client_cfg(tcp: TcpClientConfig) -> ClientConfig {
    ClientConfig::default()
        .with_tcp(tcp)
        .with_reconnect_for(std::time::Duration::ZERO)
}

#[tokio::test]
async fn calls_go_over_mutual_tls_with_a_token_and_the_connection_says_tls() {
    let pki = Pki::new();
    let (cert, key) = pki.issue(&["localhost"]);
    let (ccert, ckey) = pki.issue(&["editor"]);
    let token = Token::generate().unwrap();
    let tls = ServerTls::from_pem(cert, key).with_client_ca_pem(pki.ca.clone());
    let tcp = TcpServerConfig::default()
        .with_tls(tls)
        .with_token(token.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let (addr, handle) = start(ServerConfig::default().with_tcp(tcp), runs.clone()).await;

    let ctls =
        ClientTls::from_ca_pem(pki.ca.clone(), "localhost").with_client_cert_pem(ccert, ckey);
    let ccfg = client_cfg(TcpClientConfig::default().with_tls(ctls).with_token(token));
    let client = Client::connect_tcp(addr, ccfg).await.unwrap();
    for size in [0usize, 1, 100, 70_000, 3 << 20] {
        let body: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let back = client
            .call_raw("echo", &body, CallOptions::default())
            .await
            .unwrap();
        assert_eq!(back, body, "{size} bytes");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 5);
    let report: ServerReport = client
        .call(INSPECT_METHOD, &(), CallOptions::default())
        .await
        .unwrap();
    assert_eq!(report.connections.len(), 1);
    assert_eq!(report.connections[0].transport, "tls");
    drop(client);
    handle.shutdown();
}

#[tokio::test]
async fn a_client_that_holds_a_token_refuses_a_server_that_cannot_prove_it() {
    // A loopback server without a token would serve anyone of this uid; a client told to
    // expect a token refuses it, since it cannot be the server that knows the token.
    let runs = Arc::new(AtomicUsize::new(0));
    let (addr, handle) = start(ServerConfig::default(), runs.clone()).await;
    let token = Token::generate().unwrap();
    let ccfg = client_cfg(TcpClientConfig::default().with_token(token));
    let Err(e) = Client::connect_tcp(addr, ccfg).await else {
        panic!("a server without the token was trusted");
    };
    assert!(
        matches!(
            e,
            ConnectError::Handshake {
                source: HandshakeError::ServerProof,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    handle.shutdown();
}

/// A TCP proxy that counts the bytes going each way.
async fn counting_proxy(to: SocketAddr) -> (SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (u, d) = (up.clone(), down.clone());
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            let s = tokio::net::TcpStream::connect(to).await.unwrap();
            let (mut cr, mut cw) = c.into_split();
            let (mut sr, mut sw) = s.into_split();
            let (u, d) = (u.clone(), d.clone());
            tokio::spawn(async move {
                let mut b = vec![0u8; 1 << 16];
                while let Ok(n @ 1..) = cr.read(&mut b).await {
                    u.fetch_add(n as u64, Ordering::SeqCst);
                    if sw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                let mut b = vec![0u8; 1 << 16];
                while let Ok(n @ 1..) = sr.read(&mut b).await {
                    d.fetch_add(n as u64, Ordering::SeqCst);
                    if cw.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (at, up, down)
}

async fn wire_bytes_of_an_echo(server: Compression, client: Compression, body: &[u8]) -> u64 {
    let runs = Arc::new(AtomicUsize::new(0));
    let tcp = TcpServerConfig::default().with_compression(server);
    let (addr, handle) = start(ServerConfig::default().with_tcp(tcp), runs).await;
    let (via, up, down) = counting_proxy(addr).await;
    let ccfg = client_cfg(TcpClientConfig::default().with_compression(client));
    let c = Client::connect_tcp(via, ccfg).await.unwrap();
    let back = c
        .call_raw("echo", body, CallOptions::default())
        .await
        .unwrap();
    assert_eq!(back, body);
    drop(c);
    handle.shutdown();
    up.load(Ordering::SeqCst) + down.load(Ordering::SeqCst)
}

#[tokio::test]
async fn compression_shrinks_compressible_payloads_on_the_wire_only_when_both_ends_ask() {
    let text: Vec<u8> = (0..1 << 20)
        .map(|i: usize| b"{\"diagnostic\": \"unused variable\"}, "[i % 35])
        .collect();
    let both = wire_bytes_of_an_echo(Compression::Lz4, Compression::Lz4, &text).await;
    let server_only = wire_bytes_of_an_echo(Compression::Lz4, Compression::None, &text).await;
    let client_only = wire_bytes_of_an_echo(Compression::None, Compression::Lz4, &text).await;
    let payload = 2 * text.len() as u64;
    assert!(both < payload / 8, "compressed: {both} bytes for {payload}");
    assert!(server_only >= payload, "{server_only}");
    assert!(client_only >= payload, "{client_only}");

    // Random bytes do not shrink: they go as they are, not larger.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let noisy = wire_bytes_of_an_echo(Compression::Lz4, Compression::Lz4, &noise).await;
    let plain = wire_bytes_of_an_echo(Compression::None, Compression::None, &noise).await;
    assert!(
        noisy <= plain,
        "incompressible: {noisy} compressed vs {plain} plain"
    );
}

/// A server that authenticates nobody serves, like a shared-memory server, only its own
/// uid (and the configured `allowed_uids`): a loopback connection from another uid is
/// refused before any frame. Needs root, to run the client as another user.
#[test]
fn an_unauthenticated_loopback_server_refuses_other_uids() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to run a client under another uid");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (addr, handle) = rt.block_on(start(ServerConfig::default(), runs.clone()));
    // A client as `nobody`: bash speaks the hello's first message and prints the
    // server's answer (bash is not our binary, so no ETXTBSY risk; `/` as its directory,
    // since nobody may not enter ours).
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'SRPCTCP\\0\\1\\0' >&3; \
         head -c 32 /dev/zero >&3; cat <&3",
        port = addr.port()
    );
    use std::os::unix::process::CommandExt;
    let run_as = |uid: Option<u32>| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c").arg(&script).current_dir("/");
        if let Some(u) = uid {
            cmd.uid(u).gid(u);
        }
        cmd.output().expect("bash runs")
    };
    let out = run_as(Some(65534));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("uid 65534 is not allowed"),
        "answer to another uid: {answer:?}"
    );
    // The same bytes from this uid pass the hello (status 0, then the server waits for
    // frames: the script would wait too, so only the refusal case reads to the end).
    let own = rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut hello = b"SRPCTCP\x00\x01\x00".to_vec();
        hello.extend_from_slice(&[0u8; 32]);
        s.write_all(&hello).await.unwrap();
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).await.unwrap();
        reply[9]
    });
    assert_eq!(own, 0, "this uid's hello was refused");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    handle.shutdown();
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_never_one_with_a_call_open() {
    use std::time::Duration;
    let released = Arc::new(tokio::sync::Notify::new());
    let r2 = released.clone();
    let tcp = TcpServerConfig::default().with_idle_timeout(Some(Duration::from_millis(100)));
    let cfg = ServerConfig::default()
        .with_heartbeat(Duration::from_millis(20))
        .with_tcp(tcp);
    let server = shmrpc::ServerBuilder::new(cfg)
        .unary_raw("echo", |_ctx, req| async move { Ok(req) })
        .unary_raw("wait", move |_ctx, req| {
            let r = r2.clone();
            async move {
                r.notified().await;
                Ok(req)
            }
        })
        .bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    tokio::spawn(server.serve());
    let client = Client::connect_tcp(addr, ClientConfig::default())
        .await
        .unwrap();

    // A call open far longer than the idle timeout keeps its connection.
    let call = {
        let c = client.clone();
        tokio::spawn(async move { c.call_raw("wait", b"w", CallOptions::default()).await })
    };
    let first = loop {
        if let [p] = handle.peers().as_slice() {
            break p.conn_id();
        }
        tokio::task::yield_now().await;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    released.notify_one();
    assert_eq!(call.await.unwrap().unwrap(), b"w");
    assert!(
        handle.peers().iter().any(|p| p.conn_id() == first),
        "the connection with a call open was closed"
    );

    // Then, idle, it is closed (eventually: bounded generously, not timed).
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        while handle.peers().iter().any(|p| p.conn_id() == first) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "an idle connection stayed open");
    // The client's next call takes a new connection.
    let back = client
        .call_raw("echo", b"again", CallOptions::default())
        .await
        .unwrap();
    assert_eq!(back, b"again");
    assert!(handle.peers().iter().all(|p| p.conn_id() != first));
    handle.shutdown();
}

#[tokio::test]
async fn a_refused_client_is_told_why_and_does_not_retry() {
    let token = Token::generate().unwrap();
    let tcp = TcpServerConfig::default().with_token(token.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let (addr, handle) = start(ServerConfig::default().with_tcp(tcp), runs.clone()).await;
    // Default settings: a client retries a failed connect for 5 s, but not a refusal.
    let wrong = ClientConfig::default()
        .with_tcp(TcpClientConfig::default().with_token(Token::generate().unwrap()));
    let Err(e) = Client::connect_tcp(addr, wrong).await else {
        panic!("a wrong token was accepted");
    };
    assert!(e.is_final(), "{e:?}");
    match &e {
        ConnectError::Handshake {
            source: HandshakeError::Refused(why),
            ..
        } => assert_eq!(why, "wrong token"),
        e => panic!("{e:?}"),
    }
    let none = ClientConfig::default();
    let Err(e) = Client::connect_tcp(addr, none).await else {
        panic!("no token was accepted");
    };
    assert!(
        matches!(
            &e,
            ConnectError::Handshake { source: HandshakeError::Refused(why), .. } if why == "a token is required"
        ),
        "{e:?}"
    );

    let good = ClientConfig::default().with_tcp(TcpClientConfig::default().with_token(token));
    let client = Client::connect_tcp(addr, good).await.unwrap();
    let report: ServerReport = client
        .call(INSPECT_METHOD, &(), CallOptions::default())
        .await
        .unwrap();
    // One failure per refused client: neither tried again.
    assert_eq!(report.handshake_failures, 2);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    handle.shutdown();
}

/// A non-loopback address of this machine, if it has one (a UDP "connect" picks the
/// interface without sending anything).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[tokio::test]
async fn plaintext_or_unauthenticated_listening_off_loopback_is_refused() {
    use shmrpc::{BindError, InsecureError};
    // The wildcard address reaches the network too.
    let mut addrs: Vec<SocketAddr> = vec!["0.0.0.0:0".parse().unwrap()];
    match non_loopback_ip() {
        Some(ip) => addrs.push(SocketAddr::new(ip, 0)),
        None => eprintln!("no non-loopback address here: only the wildcard is tried"),
    }
    let pki = Pki::new();
    let (cert, key) = pki.issue(&["localhost"]);
    for addr in addrs {
        let bind = |tcp: TcpServerConfig| {
            shmrpc::ServerBuilder::new(ServerConfig::default().with_tcp(tcp)).bind_tcp(addr)
        };
        let Err(BindError::Insecure { source, .. }) = bind(TcpServerConfig::default()).await else {
            panic!("an open server bound {addr}");
        };
        assert!(
            matches!(source, InsecureError::Unauthenticated(_)),
            "{source}"
        );
        let token_only = TcpServerConfig::default().with_token(Token::generate().unwrap());
        let Err(BindError::Insecure { source, .. }) = bind(token_only.clone()).await else {
            panic!("a plaintext server bound {addr}");
        };
        assert!(matches!(source, InsecureError::Plaintext(_)), "{source}");
        // With the opt-in, or with TLS and a client CA, it binds.
        let opted = bind(token_only.with_insecure_plaintext(true)).await;
        assert!(opted.is_ok(), "{:?}", opted.err());
        let tls = ServerTls::from_pem(cert.clone(), key.clone()).with_client_ca_pem(pki.ca.clone());
        let secured = bind(TcpServerConfig::default().with_tls(tls)).await;
        assert!(secured.is_ok(), "{:?}", secured.err());
        // A client will not speak plaintext to a non-loopback address either.
        let to = SocketAddr::new(addr.ip(), 9);
        let cfg = ClientConfig::default().with_reconnect_for(std::time::Duration::ZERO);
        let Err(ConnectError::Insecure { .. }) = Client::connect_tcp(to, cfg).await else {
            panic!("a client spoke plaintext to {to}");
        };
    }
}

#[test]
fn a_blocking_client_calls_over_tls() {
    let pki = Pki::new();
    let (cert, key) = pki.issue(&["localhost"]);
    let token = Token::generate().unwrap();
    let tcp = TcpServerConfig::default()
        .with_tls(ServerTls::from_pem(cert, key))
        .with_token(token.clone());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let (addr, handle) = rt.block_on(start(ServerConfig::default().with_tcp(tcp), runs.clone()));
    let tls = ClientTls::from_ca_pem(pki.ca.clone(), "localhost");
    let cfg = client_cfg(TcpClientConfig::default().with_tls(tls).with_token(token));
    let client = shmrpc::BlockingClient::connect_tcp(addr, cfg).unwrap();
    assert_eq!(
        client.call_raw("echo", b"blocking", None).unwrap(),
        b"blocking"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    drop(client);
    handle.shutdown();
}
