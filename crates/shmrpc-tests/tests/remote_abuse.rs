//! A TCP server under abuse: garbage instead of TLS or of the hello, decompression bombs,
//! byte-at-a-time senders, clients that never say hello, floods of connections, full
//! connection limits, and certificates or tokens that are wrong, expired or foreign.
//!
//! Each test runs a server (in this process: the abuse comes from the network, and the
//! server's configuration here is what is tested) whose one method counts its runs and
//! answers with the connection it ran for, and an honest client that calls before, during
//! and after the abuse. Every abusive connection must be closed (or its connect refused)
//! while the honest client keeps its one connection and every call of it succeeds; the
//! handler runs exactly as often as legitimate clients called it, never for the abuser.
//!
//! Timeouts are configuration here (a short `frame_timeout` or `handshake_timeout`), never
//! a verdict: a test waits for the close with a generous bound, and fails only if it never
//! comes.
#![cfg(not(shmrpc_loom))]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shmrpc::lowlevel::frame::{
    encode, FrameHeader, Kind, FLAG_COMPRESSED, FLAG_TO_CALLEE, FRAME_HEADER_LEN,
};
use shmrpc::{
    CallOptions, Client, ClientConfig, ClientTls, Compression, ConnectError, HandshakeError,
    ServerConfig, ServerHandle, ServerTls, TcpClientConfig, TcpServerConfig, Token,
};
use shmrpc_tests::certs::{Ca, Identity, Validity};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long anything that must eventually happen may take before the test fails.
const EVENTUALLY: Duration = Duration::from_secs(30);

/// Runs a test body under a whole-test watchdog.
async fn watchdog<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(Duration::from_secs(180), body)
        .await
        .expect("the test hung");
}

// ---------------------------------------------------------------------------------------
// The server, and the honest client
// ---------------------------------------------------------------------------------------

/// A server whose method `count` counts its runs and answers with the id of the
/// connection it ran for.
struct Served {
    addr: SocketAddr,
    runs: Arc<AtomicU64>,
    handle: ServerHandle,
    serving: tokio::task::JoinHandle<()>,
}

async fn serve(cfg: ServerConfig) -> Served {
    let runs = Arc::new(AtomicU64::new(0));
    let r2 = runs.clone();
    let server = shmrpc::ServerBuilder::new(cfg)
        .unary_raw("count", move |ctx, _req| {
            let runs = r2.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(ctx.peer().conn_id().to_le_bytes().to_vec())
            }
        })
        .bind_tcp("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let handle = server.handle();
    let serving = tokio::spawn(server.serve());
    Served {
        addr,
        runs,
        handle,
        serving,
    }
}

impl Served {
    fn runs(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        self.handle.shutdown();
        tokio::time::timeout(EVENTUALLY, self.serving)
            .await
            .expect("the server did not shut down")
            .unwrap();
    }
}

/// One call of `count`; the connection it ran on. The request is 2 KiB of zeros: on a
/// connection that negotiated lz4, it travels compressed.
async fn count(client: &Client) -> Result<u64, shmrpc::RpcError> {
    let r = client
        .call_raw(
            "count",
            &[0u8; 2048],
            CallOptions::timeout(Duration::from_secs(60)),
        )
        .await?;
    Ok(u64::from_le_bytes(r.try_into().expect("8 bytes")))
}

/// A client that calls all along, on one connection: a call that fails, or runs on
/// another connection (its first was closed and it reconnected), fails the test.
struct Honest {
    client: Client,
    conn: u64,
    calls: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

fn client_cfg(tcp: TcpClientConfig) -> ClientConfig {
    ClientConfig::default()
        .with_tcp(tcp)
        .with_reconnect_for(Duration::ZERO)
}

/// A client connected to `addr`, retried (within [`EVENTUALLY`]) so that a short
/// `handshake_timeout` on a loaded host does not fail the test.
async fn connected(addr: SocketAddr, tcp: TcpClientConfig) -> Client {
    tokio::time::timeout(EVENTUALLY, async {
        loop {
            match Client::connect_tcp(addr, client_cfg(tcp.clone())).await {
                Ok(c) => return c,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("an honest client could not connect")
}

async fn honest(addr: SocketAddr, tcp: TcpClientConfig) -> Honest {
    let client = connected(addr, tcp).await;
    // Before the abuse.
    let conn = count(&client)
        .await
        .expect("the honest client's first call");
    let calls = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (client, calls, stop) = (client.clone(), calls.clone(), stop.clone());
        async move {
            // During the abuse.
            while !stop.load(Ordering::SeqCst) {
                let on = count(&client).await.expect("an honest call failed");
                assert_eq!(on, conn, "the honest client's connection was closed");
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    Honest {
        client,
        conn,
        calls,
        stop,
        task,
    }
}

impl Honest {
    /// Stops calling, calls once more (after the abuse), and returns how many calls the
    /// honest client made, all on its one connection.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the honest client's calls");
        let on = count(&self.client).await.expect("the call after the abuse");
        assert_eq!(on, self.conn, "the honest client's connection was closed");
        self.calls.load(Ordering::SeqCst) + 1
    }
}

// ---------------------------------------------------------------------------------------
// Raw connections: what an abuser does
// ---------------------------------------------------------------------------------------

/// Reads (and drops) whatever comes until the peer closes; panics if it never does.
/// Returns the bytes read before the close.
async fn closed<S: AsyncRead + Unpin>(s: &mut S, what: &str) -> usize {
    let mut total = 0;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(EVENTUALLY, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the server never closed the connection"));
    total
}

/// [`closed`], keeping what came: the frames the server sent before it closed.
async fn closed_with_frames<S: AsyncRead + Unpin>(
    s: &mut S,
    what: &str,
) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(EVENTUALLY, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: the server never closed the connection"));
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while let Ok((h, payload)) = shmrpc::lowlevel::frame::decode(rest) {
        frames.push((h, payload.to_vec()));
        rest = &rest[FRAME_HEADER_LEN + payload.len()..];
    }
    frames
}

/// Some deterministic garbage.
fn garbage(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = shmrpc_tests::SplitMix64::new(seed);
    (0..n).map(|_| rng.next() as u8).collect()
}

fn token_bytes(token: &Token) -> Vec<u8> {
    let hex = token.to_hex();
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The client's side of the hello, by hand (see `rpc/net/hello.rs`): magic, version 1,
/// flags (bit 0 lz4, bit 1 token), a nonce; then the server's answer, the token proof
/// (HMAC-SHA256 over "shmrpc client" | server nonce | client nonce) when asked, and the
/// final status. Returns whether lz4 is on.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    lz4: bool,
    token: Option<&Token>,
) -> bool {
    let c_nonce = [7u8; 32];
    let mut out = b"SRPCTCP\0".to_vec();
    out.push(1);
    out.push(u8::from(lz4) | if token.is_some() { 2 } else { 0 });
    out.extend_from_slice(&c_nonce);
    s.write_all(&out).await.unwrap();
    s.flush().await.unwrap();
    let mut reply = [0u8; 10 + 1 + 32];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(
        &reply[..10],
        b"SRPCTCP\0\x01\x00",
        "the server refused the hello"
    );
    let flags = reply[10];
    let s_nonce = &reply[11..];
    if flags & 2 != 0 {
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &token_bytes(token.expect("the server asks for a token")),
        );
        let msg = [&b"shmrpc client"[..], s_nonce, &c_nonce].concat();
        s.write_all(ring::hmac::sign(&key, &msg).as_ref())
            .await
            .unwrap();
        s.flush().await.unwrap();
    }
    let mut status = [0u8; 1];
    s.read_exact(&mut status).await.unwrap();
    assert_eq!(status[0], 0, "the server refused the token");
    if flags & 2 != 0 {
        // The server's proof: this test does not check it.
        let mut proof = [0u8; 32];
        s.read_exact(&mut proof).await.unwrap();
    }
    flags & 1 != 0
}

/// A request frame (to method 1) with `flags` and `payload`, checksummed.
fn request(flags: u16, payload: &[u8]) -> Vec<u8> {
    let h = FrameHeader {
        kind: Kind::Request,
        flags: FLAG_TO_CALLEE | flags,
        method: 1,
        call_id: 1,
        len: payload.len() as u32,
    };
    encode(&h, payload).unwrap()
}

// ---------------------------------------------------------------------------------------
// Certificates and tokens
// ---------------------------------------------------------------------------------------

/// A CA, a server certificate for "localhost" and a client certificate it signed, and a
/// token.
struct Pki {
    ca: Ca,
    server: Identity,
    client: Identity,
    token: Token,
}

impl Pki {
    fn new() -> Self {
        let ca = Ca::new("shmrpc test CA");
        let server = ca.issue(&["localhost"], Validity::Valid);
        let client = ca.issue(&["client.test"], Validity::Valid);
        Self {
            ca,
            server,
            client,
            token: Token::generate().unwrap(),
        }
    }

    /// Mutual TLS and the token.
    fn server_tcp(&self) -> TcpServerConfig {
        TcpServerConfig::default()
            .with_tls(
                ServerTls::from_pem(self.server.cert_pem.clone(), self.server.key_pem.clone())
                    .with_client_ca_pem(self.ca.pem.clone()),
            )
            .with_token(self.token.clone())
    }

    /// A client that `id` identifies, proving `token`.
    fn client_tcp(&self, id: Option<&Identity>, token: Option<&Token>) -> TcpClientConfig {
        let mut tls = ClientTls::from_ca_pem(self.ca.pem.clone(), "localhost");
        if let Some(id) = id {
            tls = tls.with_client_cert_pem(id.cert_pem.clone(), id.key_pem.clone());
        }
        let mut tcp = TcpClientConfig::default().with_tls(tls);
        if let Some(t) = token {
            tcp = tcp.with_token(t.clone());
        }
        tcp
    }

    fn honest_tcp(&self) -> TcpClientConfig {
        self.client_tcp(Some(&self.client), Some(&self.token))
    }

    /// A raw TLS connector (no hello) trusting the CA and presenting the client
    /// certificate.
    fn raw_tls(&self) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.pem.as_bytes()).unwrap())
            .unwrap();
        let chain = vec![CertificateDer::from_pem_slice(self.client.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.client.key_pem.as_bytes()).unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }

    /// A TLS session with the server, as a raw stream: the hello is up to the caller.
    async fn raw_tls_session(
        &self,
        addr: SocketAddr,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.try_raw_tls_session(addr)
            .await
            .expect("the TLS handshake failed")
    }

    /// [`raw_tls_session`](Self::raw_tls_session), or `None` if the server closed the
    /// connection during TLS.
    async fn try_raw_tls_session(
        &self,
        addr: SocketAddr,
    ) -> Option<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        self.raw_tls().connect(name, tcp).await.ok()
    }
}

/// An error and its sources, as one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut at = e.source();
    while let Some(c) = at {
        s.push_str(": ");
        s.push_str(&c.to_string());
        at = c.source();
    }
    s
}

/// The handshake error of a refused connect, with its message.
async fn refused(addr: SocketAddr, tcp: TcpClientConfig) -> (HandshakeError, String) {
    match Client::connect_tcp(addr, client_cfg(tcp)).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => {
            let text = chain(&e);
            match e {
                ConnectError::Handshake { source, .. } => (source, text),
                other => panic!("not a handshake error: {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Garbage
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_tls_client_hello_is_closed() {
    watchdog(async {
        let pki = Pki::new();
        let served = serve(ServerConfig::default().with_tcp(pki.server_tcp())).await;
        let honest = honest(served.addr, pki.honest_tcp()).await;
        for seed in 0..8 {
            let mut s = TcpStream::connect(served.addr).await.unwrap();
            // A write may fail once the server has closed: that is the point.
            let _ = s.write_all(&garbage(seed, 4096)).await;
            closed(&mut s, "garbage instead of TLS").await;
        }
        // Also the shmrpc hello in the clear, to a server that wants TLS.
        let mut s = TcpStream::connect(served.addr).await.unwrap();
        let mut plain = b"SRPCTCP\0\x01\x00".to_vec();
        plain.extend_from_slice(&[0u8; 32]);
        let _ = s.write_all(&plain).await;
        closed(&mut s, "a plaintext hello to a TLS server").await;
        let calls = honest.finish().await;
        assert_eq!(served.runs(), calls, "a handler ran for an abuser");
        served.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_after_a_successful_tls_handshake_is_closed() {
    watchdog(async {
        let pki = Pki::new();
        let served = serve(ServerConfig::default().with_tcp(pki.server_tcp())).await;
        let honest = honest(served.addr, pki.honest_tcp()).await;
        // Garbage where the hello belongs.
        for seed in 0..4 {
            let mut s = pki.raw_tls_session(served.addr).await;
            let _ = s.write_all(&garbage(seed, 2048)).await;
            let _ = s.flush().await;
            closed(&mut s, "garbage instead of the hello, over TLS").await;
        }
        // A complete hello, then garbage where frames belong.
        for seed in 0..4 {
            let mut s = pki.raw_tls_session(served.addr).await;
            hello(&mut s, false, Some(&pki.token)).await;
            let _ = s.write_all(&garbage(100 + seed, 2048)).await;
            let _ = s.flush().await;
            // The server says why before it closes: an Error of call 0, code Protocol.
            let frames = closed_with_frames(&mut s, "garbage instead of frames, over TLS").await;
            let why = frames
                .iter()
                .find(|(h, _)| (h.kind, h.call_id) == (Kind::Error, 0))
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| panic!("no reason among {frames:?}"));
            let protocol = (shmrpc::Code::Protocol as u16).to_le_bytes();
            assert_eq!(why[..2], protocol, "{:?}", String::from_utf8_lossy(&why));
        }
        // A hello proving the wrong token.
        let mut s = pki.raw_tls_session(served.addr).await;
        let mut out = b"SRPCTCP\0\x01\x02".to_vec();
        out.extend_from_slice(&[1u8; 32]);
        s.write_all(&out).await.unwrap();
        s.flush().await.unwrap();
        let mut reply = [0u8; 43];
        s.read_exact(&mut reply).await.unwrap();
        let _ = s.write_all(&[0u8; 32]).await;
        let _ = s.flush().await;
        let mut refusal = [0u8; 1];
        s.read_exact(&mut refusal).await.unwrap();
        assert_eq!(refusal[0], 1, "a wrong token was not refused");
        closed(&mut s, "a wrong token").await;
        let calls = honest.finish().await;
        assert_eq!(served.runs(), calls, "a handler ran for an abuser");
        served.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Decompression bombs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_close_only_their_connection() {
    watchdog(async {
        let token = Token::generate().unwrap();
        let tcp = TcpServerConfig::default()
            .with_compression(Compression::Lz4)
            .with_token(token.clone());
        let served = serve(ServerConfig::default().with_tcp(tcp)).await;
        let honest_tcp = TcpClientConfig::default()
            .with_compression(Compression::Lz4)
            .with_token(token.clone())
            .with_compress_above(64);
        let honest = honest(served.addr, honest_tcp).await;

        // 2 MiB of zeros compress to a few KiB.
        let zeros = lz4_flex::block::compress(&vec![0u8; 2 << 20]);
        let with_claim = |claim: u32, packed: &[u8]| {
            let mut p = claim.to_le_bytes().to_vec();
            p.extend_from_slice(packed);
            p
        };
        let bombs: Vec<(&str, Vec<u8>)> = vec![
            ("claims 1 GiB", with_claim(1 << 30, &zeros)),
            (
                "claims 1 MiB, expands to 2 MiB",
                with_claim(1 << 20, &zeros),
            ),
            ("claims 1 KiB, not lz4", with_claim(1024, &garbage(9, 512))),
            ("shorter than its length prefix", vec![1, 2]),
        ];
        for (what, payload) in &bombs {
            let mut s = TcpStream::connect(served.addr).await.unwrap();
            assert!(
                hello(&mut s, true, Some(&token)).await,
                "lz4 not negotiated"
            );
            let _ = s.write_all(&request(FLAG_COMPRESSED, payload)).await;
            closed(&mut s, what).await;
        }
        // A compressed frame on a connection that did not negotiate compression.
        let mut s = TcpStream::connect(served.addr).await.unwrap();
        assert!(!hello(&mut s, false, Some(&token)).await);
        let small = lz4_flex::block::compress(&[0u8; 4096]);
        let _ = s
            .write_all(&request(FLAG_COMPRESSED, &with_claim(4096, &small)))
            .await;
        closed(&mut s, "compression not negotiated").await;

        let calls = honest.finish().await;
        assert_eq!(served.runs(), calls, "a handler ran for a bomb");
        served.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Slow senders
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_at_a_time_sender_is_closed_after_the_frame_timeout() {
    watchdog(async {
        let tcp = TcpServerConfig::default().with_frame_timeout(Duration::from_millis(300));
        let served = serve(ServerConfig::default().with_tcp(tcp)).await;
        let honest = honest(served.addr, TcpClientConfig::default()).await;

        let mut s = TcpStream::connect(served.addr).await.unwrap();
        hello(&mut s, false, None).await;
        // A frame of 1000 payload bytes, one byte every 100 ms: whole only after 100 s.
        let frame = request(0, &[0u8; 1000]);
        let (mut r, mut w) = s.into_split();
        let mut sent = 0;
        let mut buf = [0u8; 256];
        let closed_after = tokio::time::timeout(EVENTUALLY, async {
            loop {
                tokio::select! {
                    n = r.read(&mut buf) => match n {
                        Ok(0) | Err(_) => return sent,
                        Ok(_) => {}
                    },
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if sent == frame.len() || w.write_all(&frame[sent..sent + 1]).await.is_err() {
                            return sent;
                        }
                        sent += 1;
                    }
                }
            }
        })
        .await
        .expect("the byte-at-a-time sender was never closed");
        assert!(
            closed_after < frame.len(),
            "the whole frame went through before the close"
        );

        let calls = honest.finish().await;
        assert_eq!(served.runs(), calls, "a handler ran for the slow sender");
        served.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_says_hello_is_closed_after_the_handshake_timeout() {
    watchdog(async {
        let pki = Pki::new();
        // TLS and a token: the timeout bounds both steps (the honest client retries its
        // connect, should a loaded host make its handshake slower than this).
        let cfg = ServerConfig::default()
            .with_tcp(pki.server_tcp())
            .with_handshake_timeout(Duration::from_millis(500));
        let served = serve(cfg).await;
        let honest = honest(served.addr, pki.honest_tcp()).await;
        // Silent from the start.
        let mut silent = TcpStream::connect(served.addr).await.unwrap();
        // TLS done, silent in the hello; and half a hello, then silent. (Should a loaded
        // host make TLS itself outlast the timeout, the server closes the connection during
        // TLS: closed all the same.)
        let mute = pki.try_raw_tls_session(served.addr).await;
        let mut half = pki.try_raw_tls_session(served.addr).await;
        if let Some(half) = &mut half {
            let _ = half.write_all(b"SRPCTCP\0\x01").await;
            let _ = half.flush().await;
        }
        closed(&mut silent, "silent before TLS").await;
        for (s, what) in [(mute, "silent after TLS"), (half, "half a hello")] {
            if let Some(mut s) = s {
                closed(&mut s, what).await;
            }
        }
        let calls = honest.finish().await;
        assert_eq!(served.runs(), calls, "a handler ran for a silent client");
        served.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Floods and limits
// ---------------------------------------------------------------------------------------

/// Raises this process's soft limit of open files to its hard limit (at most 16384).
fn more_files() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    let want = now.maximum.map_or(16384, |m| m.min(16384));
    if now.current.is_some_and(|c| c < want) {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: now.maximum,
            },
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connection_attempts_leave_the_server_serving() {
    watchdog(async {
        more_files();
        let token = Token::generate().unwrap();
        let tcp = TcpServerConfig::default()
            .with_token(token.clone())
            .with_max_connections(4096)
            .with_max_per_address(4096);
        let served = serve(ServerConfig::default().with_tcp(tcp)).await;
        let honest_tcp = TcpClientConfig::default().with_token(token.clone());
        let honest = honest(served.addr, honest_tcp.clone()).await;

        const ATTEMPTS: u64 = 10_000;
        const IN_FLIGHT: usize = 200;
        let addr = served.addr;
        let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut tasks = tokio::task::JoinSet::new();
        let got_in = Arc::new(AtomicU64::new(0));
        for i in 0..ATTEMPTS {
            let permit = gate.clone().acquire_owned().await.unwrap();
            let got_in = got_in.clone();
            tasks.spawn(async move {
                let _permit = permit;
                // The listen backlog may overflow: a refused connect is one attempt too.
                let Ok(mut s) = TcpStream::connect(addr).await else {
                    return;
                };
                got_in.fetch_add(1, Ordering::Relaxed);
                match i % 3 {
                    // Connect and close at once.
                    0 => {}
                    // Garbage.
                    1 => {
                        let _ = s.write_all(&garbage(i, 64)).await;
                    }
                    // Half a hello.
                    _ => {
                        let _ = s.write_all(b"SRPCTCP\0\x01\x02").await;
                    }
                }
            });
            while tasks.try_join_next().is_some() {}
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let got_in = got_in.load(Ordering::Relaxed);
        assert!(
            got_in >= ATTEMPTS / 2,
            "only {got_in} of {ATTEMPTS} attempts connected"
        );
        // A new client still gets in (once the server has dropped the abusers' slots).
        let fresh = connected(addr, honest_tcp).await;
        count(&fresh).await.expect("the new client's call");
        let calls = honest.finish().await;
        assert_eq!(served.runs(), calls + 1, "a handler ran for an abuser");
        served.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_new_connection_is_closed_at_once() {
    watchdog(async {
        let tcp = TcpServerConfig::default().with_max_connections(3);
        let served = serve(ServerConfig::default().with_tcp(tcp)).await;
        // The honest client holds one place; two more clients hold the others.
        let honest = honest(served.addr, TcpClientConfig::default()).await;
        let second = Client::connect_tcp(served.addr, client_cfg(TcpClientConfig::default()))
            .await
            .unwrap();
        let third = Client::connect_tcp(served.addr, client_cfg(TcpClientConfig::default()))
            .await
            .unwrap();
        let c2 = count(&second).await.unwrap();
        count(&third).await.unwrap();

        // Full: a raw connection is closed before any byte is exchanged, and a client's
        // connect fails.
        for _ in 0..5 {
            let mut s = TcpStream::connect(served.addr).await.unwrap();
            assert_eq!(closed(&mut s, "past max_connections").await, 0);
        }
        let (e, text) = refused(served.addr, TcpClientConfig::default()).await;
        assert!(matches!(e, HandshakeError::Io(_)), "{text}");

        // The clients that hold places are still served, on their own connections.
        assert_eq!(count(&second).await.unwrap(), c2);
        // One leaves: its place is free again (once the server has seen it go).
        drop(third);
        let fourth = connected(served.addr, TcpClientConfig::default()).await;
        count(&fourth).await.unwrap();

        let calls = honest.finish().await;
        // second: 2 calls, third: 1, fourth: 1.
        assert_eq!(served.runs(), calls + 4);
        served.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_per_address_only_that_address_is_refused() {
    watchdog(async {
        // The abuser comes from 127.0.0.2, the honest clients from 127.0.0.1 (the whole of
        // 127.0.0.0/8 is this host). Held connections stay in their handshake.
        let tcp = TcpServerConfig::default().with_max_per_address(2);
        let cfg = ServerConfig::default()
            .with_tcp(tcp)
            .with_handshake_timeout(Duration::from_secs(120));
        let served = serve(cfg).await;
        let honest = honest(served.addr, TcpClientConfig::default()).await;
        let from_2 = || async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            sock.connect(served.addr).await.unwrap()
        };
        let mut held = vec![from_2().await, from_2().await];
        for _ in 0..5 {
            let mut extra = from_2().await;
            assert_eq!(closed(&mut extra, "past max_per_address").await, 0);
        }
        // Another client from 127.0.0.1 still gets in.
        let other = Client::connect_tcp(served.addr, client_cfg(TcpClientConfig::default()))
            .await
            .unwrap();
        count(&other).await.unwrap();
        // The held ones were never closed: their hellos are answered now.
        for s in &mut held {
            hello(s, false, None).await;
        }
        let calls = honest.finish().await;
        assert_eq!(served.runs(), calls + 1);
        served.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Certificates and tokens
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_or_missing_credentials_are_refused_with_a_clear_error() {
    watchdog(async {
        let pki = Pki::new();
        let served = serve(ServerConfig::default().with_tcp(pki.server_tcp())).await;
        let honest = honest(served.addr, pki.honest_tcp()).await;
        let addr = served.addr;

        // No client certificate.
        let (e, text) = refused(addr, pki.client_tcp(None, Some(&pki.token))).await;
        // TLS 1.3: the client's side of TLS is done before the server judges its
        // certificate, so the server's verdict comes as an alert while the client is
        // already in the hello; it is still reported as a TLS failure.
        assert!(
            text.contains("CertificateRequired"),
            "no certificate: {e:?}: {text}"
        );
        assert!(matches!(e, HandshakeError::Tls(_)), "a TLS refusal: {e:?}");
        // A certificate from another CA.
        let foreign = Ca::new("another CA").issue(&["client.test"], Validity::Valid);
        let (e, text) = refused(addr, pki.client_tcp(Some(&foreign), Some(&pki.token))).await;
        assert!(
            text.contains("UnknownCA"),
            "foreign certificate: {e:?}: {text}"
        );
        assert!(matches!(e, HandshakeError::Tls(_)), "a TLS refusal: {e:?}");
        // An expired certificate from the right CA.
        let expired = pki.ca.issue(&["client.test"], Validity::Expired);
        let (e, text) = refused(addr, pki.client_tcp(Some(&expired), Some(&pki.token))).await;
        assert!(
            text.contains("CertificateExpired"),
            "expired certificate: {e:?}: {text}"
        );
        // The right certificate, a wrong token.
        let wrong = Token::generate().unwrap();
        let (e, text) = refused(addr, pki.client_tcp(Some(&pki.client), Some(&wrong))).await;
        assert!(
            matches!(&e, HandshakeError::Refused(r) if r.contains("wrong token")),
            "wrong token: {e:?}: {text}"
        );
        // The right certificate, no token.
        let (e, text) = refused(addr, pki.client_tcp(Some(&pki.client), None)).await;
        assert!(
            matches!(&e, HandshakeError::Refused(r) if r.contains("token")),
            "no token: {e:?}: {text}"
        );

        let calls = honest.finish().await;
        assert_eq!(served.runs(), calls, "a handler ran for a refused client");
        served.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_certificate_from_another_ca_is_not_trusted() {
    watchdog(async {
        let pki = Pki::new();
        // A man in the middle: the right name, signed by another CA, and even the token
        // (which it cannot learn from the client: the client refuses before the hello).
        let mitm = Ca::new("mitm CA");
        let posing = mitm.issue(&["localhost"], Validity::Valid);
        let tcp = TcpServerConfig::default()
            .with_tls(
                ServerTls::from_pem(posing.cert_pem.clone(), posing.key_pem.clone())
                    .with_client_ca_pem(pki.ca.pem.clone()),
            )
            .with_token(pki.token.clone());
        let served = serve(ServerConfig::default().with_tcp(tcp)).await;
        let (e, text) = refused(served.addr, pki.honest_tcp()).await;
        assert!(matches!(e, HandshakeError::Tls(_)), "{e:?}: {text}");
        assert!(
            text.contains("invalid peer certificate: UnknownIssuer"),
            "the error does not say the certificate is not trusted: {text}"
        );
        // An expired server certificate from the right CA.
        let stale = pki.ca.issue(&["localhost"], Validity::Expired);
        let tcp = TcpServerConfig::default()
            .with_tls(ServerTls::from_pem(stale.cert_pem, stale.key_pem))
            .with_token(pki.token.clone());
        let expired = serve(ServerConfig::default().with_tcp(tcp)).await;
        let (e, text) = refused(expired.addr, pki.honest_tcp()).await;
        assert!(matches!(e, HandshakeError::Tls(_)), "{e:?}: {text}");
        assert!(text.contains("certificate expired"), "{text}");
        assert_eq!(served.runs() + expired.runs(), 0);
        served.stop().await;
        expired.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// The same flood against a server in a process of its own
// ---------------------------------------------------------------------------------------

#[test]
fn a_flood_against_a_server_process_leaves_it_serving_with_no_descriptor_held() {
    use shmrpc_tests::{field, field_parse, rpc_runtime, rpc_stats, spawn_peer, with_watchdog};
    use shmrpc_tests::{PeerCommand, RpcTarget};
    with_watchdog(Duration::from_secs(180), || {
        let _cpu = shmrpc_tests::heavy();
        more_files();
        // A plaintext loopback server, default limits; a client that never finishes its
        // hello is closed after 500 ms.
        let mut server = spawn_peer!(PeerCommand::RpcServer {
            target: RpcTarget::Tcp,
            cap: 65536,
            heartbeat_ms: 2000,
            max_message: 16 << 20,
            max_in_flight: None,
            handshake_timeout_ms: Some(500),
        });
        let ready = server.expect("ready", EVENTUALLY);
        let addr: SocketAddr = field(&ready, "addr").expect("addr=").parse().unwrap();
        let rt = rpc_runtime();
        rt.block_on(async {
            let client = connected(addr, TcpClientConfig::default()).await;
            let fds = |s: &str| field_parse::<u64>(s, "fds");
            let base = fds(&rpc_stats(&client).await);
            // The honest client's `echo` calls, all along (the server counts them).
            let stop = Arc::new(AtomicBool::new(false));
            let calling = tokio::spawn({
                let (client, stop) = (client.clone(), stop.clone());
                async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let r = client
                            .call_raw("echo", b"still here", CallOptions::timeout(EVENTUALLY))
                            .await
                            .expect("an honest call failed during the flood");
                        assert_eq!(r, b"still here");
                        n += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    n
                }
            });
            let gate = Arc::new(tokio::sync::Semaphore::new(200));
            let mut tasks = tokio::task::JoinSet::new();
            // 1,000 attempts, not 10,000: a server that authenticates nobody reads the
            // whole of /proc/net/tcp for each connection (to learn its owner's uid), and the
            // table grows with the flood's sockets in TIME_WAIT, so each accept costs more
            // than the one before (10,000 take about 90 s on two cores). The 10,000-attempt
            // flood is the in-process test, against a server with a token.
            for i in 0..1_000u64 {
                let permit = gate.clone().acquire_owned().await.unwrap();
                tasks.spawn(async move {
                    let _permit = permit;
                    let Ok(mut s) = TcpStream::connect(addr).await else {
                        return;
                    };
                    match i % 4 {
                        0 => {}
                        1 => {
                            let _ = s.write_all(&garbage(i, 64)).await;
                        }
                        // Half a hello, and the connection left open: the server must
                        // close it (handshake timeout) for the descriptors to come back.
                        2 => {
                            let _ = s.write_all(b"SRPCTCP\0\x01").await;
                            if i % 100 == 2 {
                                tokio::spawn(async move {
                                    closed(&mut s, "half a hello, left open").await;
                                });
                            }
                        }
                        _ => {
                            let _ = s.write_all(&request(0, b"no hello")).await;
                        }
                    }
                });
                while tasks.try_join_next().is_some() {}
            }
            while let Some(r) = tasks.join_next().await {
                r.unwrap();
            }
            // Every abuser's descriptor is closed again (bounded wait, not a deadline).
            let settled = tokio::time::timeout(EVENTUALLY, async {
                loop {
                    let s = rpc_stats(&client).await;
                    if fds(&s) <= base {
                        return s;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("the server still holds descriptors beyond {base}"));
            stop.store(true, Ordering::SeqCst);
            let honest_calls = calling.await.unwrap();
            // A new client gets in after the flood.
            let fresh = connected(addr, TcpClientConfig::default()).await;
            let r = fresh
                .call_raw("echo", b"after", CallOptions::timeout(EVENTUALLY))
                .await
                .unwrap();
            assert_eq!(r, b"after");
            let stats = rpc_stats(&client).await;
            assert_eq!(
                field_parse::<u64>(&stats, "calls"),
                honest_calls + 1,
                "a handler ran for an abuser: {stats} (settled at {settled})"
            );
        });
        drop(rt);
        server.send("exit");
        server.expect("done", EVENTUALLY);
        server.assert_exits_ok(EVENTUALLY);
    });
}
