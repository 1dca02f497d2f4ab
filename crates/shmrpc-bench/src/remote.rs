//! The remote-transport cases: the same 64 B calls over shared memory, plain TCP loopback
//! and TLS loopback (TLS 1.3, mutual, with a token proven both ways), and one-way streams
//! of 1 MiB items over TCP with and without lz4, of a compressible and an incompressible
//! payload.
//!
//! The certificates (a CA, a server and a client certificate signed by it) and the token
//! are made in memory by the lead when a TLS case is selected, written to a directory of
//! its own (mode 0700, files 0600) for the peer to read at its start, and removed as soon
//! as the peer has read them. Servers bind 127.0.0.1:0; the peer tells the lead the port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use shmrpc::{
    CallOptions, Client, ClientConfig, ClientTls, Compression, ItemStream, RpcError, ServerTls,
    TcpClientConfig, TcpServerConfig, Token,
};

use crate::error::{BenchError, Result};
use crate::raw::{stamp, stamped};
use crate::rpc::{self, ServerKind};

/// Bytes of every item of a bulk stream.
pub const BULK_ITEM: usize = 1 << 20;
/// The client-streaming method that checks items of the compressible payload.
pub const CHECK_TEXT_METHOD: &str = "bench.check_text";
/// The client-streaming method that checks items of the incompressible payload.
pub const CHECK_RANDOM_METHOD: &str = "bench.check_random";
/// The name the server's certificate carries and the client checks.
const SERVER_NAME: &str = "localhost";
/// Bound on a bulk stream (a hung peer is an error, not a hang).
const STREAM_LIMIT: Duration = Duration::from_secs(90);

/// Over what connection a remote case calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    /// Shared memory, spin-then-park (the RPC layer's default).
    Shm,
    /// Plain TCP on loopback.
    Tcp,
    /// Plain TCP on loopback, lz4 negotiated.
    TcpLz4,
    /// TLS 1.3 on loopback, client certificate and token.
    Tls,
}

impl Net {
    /// The word of case ids.
    pub fn id(self) -> &'static str {
        match self {
            Net::Shm => "shm",
            Net::Tcp => "tcp",
            Net::TcpLz4 => "tcp_lz4",
            Net::Tls => "tls",
        }
    }

    /// The server the peer runs for it.
    pub fn server(self) -> ServerKind {
        match self {
            Net::Shm => ServerKind::SpinThenPark,
            Net::Tcp => ServerKind::Tcp,
            Net::TcpLz4 => ServerKind::TcpLz4,
            Net::Tls => ServerKind::Tls,
        }
    }
}

/// What a bulk stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// JSON-like text (lz4 shrinks it several times).
    Text,
    /// Pseudo-random bytes (lz4 cannot shrink them).
    Random,
}

impl Payload {
    /// The word of case ids.
    pub fn id(self) -> &'static str {
        match self {
            Payload::Text => "text",
            Payload::Random => "random",
        }
    }

    /// The method that receives and checks it.
    pub fn method(self) -> &'static str {
        match self {
            Payload::Text => CHECK_TEXT_METHOD,
            Payload::Random => CHECK_RANDOM_METHOD,
        }
    }

    /// The bytes of every item (each is stamped with its index at both ends), made once
    /// per process, the same in both.
    pub fn bytes(self) -> &'static [u8] {
        static TEXT: OnceLock<Vec<u8>> = OnceLock::new();
        static RANDOM: OnceLock<Vec<u8>> = OnceLock::new();
        match self {
            Payload::Text => TEXT.get_or_init(json_like),
            Payload::Random => RANDOM.get_or_init(random),
        }
    }
}

/// [`BULK_ITEM`] bytes of JSON-like records, every number different.
fn json_like() -> Vec<u8> {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(BULK_ITEM + 256);
    let mut i = 0u64;
    while s.len() < BULK_ITEM {
        let _ = writeln!(
            s,
            r#"{{"id":{i},"name":"user-{i}","email":"user{i}@example.com","active":{},"score":{}.{:03},"tags":["alpha","beta"]}},"#,
            i % 3 == 0,
            i % 100,
            (i * 37) % 1000
        );
        i += 1;
    }
    let mut v = s.into_bytes();
    v.truncate(BULK_ITEM);
    v
}

/// [`BULK_ITEM`] bytes of xorshift64* output from a fixed seed.
fn random() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(BULK_ITEM);
    while v.len() < BULK_ITEM {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(BULK_ITEM);
    v
}

/// The server's side of a bulk stream: every item must be the payload stamped with its
/// index; the answer is the bytes received (u64 LE).
pub async fn check_items(payload: Payload, mut items: ItemStream) -> Result<Vec<u8>, RpcError> {
    let want = payload.bytes();
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(item) = items.next_raw().await {
        let item = item?;
        let len = item.len();
        if len != want.len() || !stamped(&item, n) || item[8..len - 8] != want[8..len - 8] {
            return Err(RpcError::handler(format!("item {n} arrived damaged")));
        }
        n += 1;
        bytes += len as u64;
    }
    Ok(bytes.to_le_bytes().to_vec())
}

/// The TLS identities of one run and its token, as PEM text.
pub struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    token: Token,
}

/// The files of a [`Pki`] in its directory.
const FILES: [&str; 5] = [
    "ca.pem",
    "server.pem",
    "server.key",
    "client.pem",
    "client.key",
];
const TOKEN_FILE: &str = "token";

fn token_error(what: &'static str) -> impl FnOnce(shmrpc::TokenError) -> BenchError {
    move |source| BenchError::Token { what, source }
}

fn cert_error(what: &'static str) -> impl FnOnce(rcgen::Error) -> BenchError {
    move |source| BenchError::Certificate { what, source }
}

impl Pki {
    /// A fresh CA, a server certificate for [`SERVER_NAME`] and a client certificate, both
    /// signed by the CA, and a fresh token.
    ///
    /// # Errors
    /// [`BenchError::Certificate`] or a token error.
    pub fn generate() -> Result<Self> {
        let ca_key = KeyPair::generate().map_err(cert_error("a CA key"))?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(cert_error("a CA"))?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "shmrpc bench CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(cert_error("the CA"))?;
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |names: Vec<String>, cn: &str, usage| -> Result<(String, String)> {
            let key = KeyPair::generate().map_err(cert_error("a key"))?;
            let mut p = CertificateParams::new(names).map_err(cert_error("a certificate"))?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p
                .signed_by(&key, &issuer)
                .map_err(cert_error("signing a certificate"))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec![SERVER_NAME.to_owned()],
            SERVER_NAME,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "shmrpc bench client",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let token = Token::generate().map_err(token_error("making"))?;
        Ok(Self {
            ca: ca_cert.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
            token,
        })
    }

    /// Writes it to `dir`, a new directory of mode 0700, each file of mode 0600.
    ///
    /// # Errors
    /// [`BenchError::Io`] (also when `dir` exists), or a token error.
    pub fn write(&self, dir: &Path) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(BenchError::io(format!("creating {}", dir.display())))?;
        let texts = [
            &self.ca,
            &self.server_cert,
            &self.server_key,
            &self.client_cert,
            &self.client_key,
        ];
        for (name, text) in FILES.iter().zip(texts) {
            let path = dir.join(name);
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(BenchError::io(format!("writing {}", path.display())))?;
        }
        self.token
            .write_new(dir.join(TOKEN_FILE))
            .map_err(token_error("writing"))
    }

    /// Reads what [`write`](Self::write) wrote.
    ///
    /// # Errors
    /// [`BenchError::ReadFile`], or a token error.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| BenchError::ReadFile { path, source })
        };
        Ok(Self {
            ca: read(FILES[0])?,
            server_cert: read(FILES[1])?,
            server_key: read(FILES[2])?,
            client_cert: read(FILES[3])?,
            client_key: read(FILES[4])?,
            token: Token::load(dir.join(TOKEN_FILE)).map_err(token_error("reading"))?,
        })
    }

    /// The server's TCP settings: TLS requiring a client certificate, and the token.
    pub fn server_tcp(&self) -> TcpServerConfig {
        TcpServerConfig::default()
            .with_tls(
                ServerTls::from_pem(self.server_cert.clone(), self.server_key.clone())
                    .with_client_ca_pem(self.ca.clone()),
            )
            .with_token(self.token.clone())
    }

    /// The client's TCP settings: TLS with its certificate, and the token.
    pub fn client_tcp(&self) -> TcpClientConfig {
        TcpClientConfig::default()
            .with_tls(
                ClientTls::from_ca_pem(self.ca.clone(), SERVER_NAME)
                    .with_client_cert_pem(self.client_cert.clone(), self.client_key.clone()),
            )
            .with_token(self.token.clone())
    }
}

/// The directory of a run's [`Pki`], removed (with its files) when dropped.
pub struct PkiDir(pub PathBuf);

impl Drop for PkiDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server's TCP settings for `kind`, if it is a TCP server.
pub fn server_tcp(kind: ServerKind, pki: Option<&Pki>) -> Result<Option<TcpServerConfig>> {
    Ok(match kind {
        ServerKind::Tcp => Some(TcpServerConfig::default()),
        ServerKind::TcpLz4 => Some(TcpServerConfig::default().with_compression(Compression::Lz4)),
        ServerKind::Tls => Some(pki.ok_or_else(no_pki)?.server_tcp()),
        ServerKind::SpinThenPark | ServerKind::Park | ServerKind::Uds => None,
    })
}

fn no_pki() -> BenchError {
    BenchError::Inconsistent("a TLS case, but no certificates were made for the run".into())
}

/// Connects one client for `net`: to the shared-memory server `name`, or to 127.0.0.1 at
/// `port`.
pub async fn connect(net: Net, name: &str, port: Option<u16>, pki: Option<&Pki>) -> Result<Client> {
    let tcp = match net {
        Net::Shm => return Ok(rpc::connect(name, false, 1).await?.remove(0)),
        Net::Tcp => TcpClientConfig::default(),
        Net::TcpLz4 => TcpClientConfig::default().with_compression(Compression::Lz4),
        Net::Tls => pki.ok_or_else(no_pki)?.client_tcp(),
    };
    let port = port
        .ok_or_else(|| BenchError::protocol("\"ready <port>\" from a TCP server", Some("ready")))?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    Client::connect_tcp(addr, ClientConfig::default().with_tcp(tcp))
        .await
        .map_err(BenchError::shmrpc(format!(
            "connecting to {addr} ({})",
            net.id()
        )))
}

/// A client stream of `items` items of [`BULK_ITEM`] bytes of `payload`, each stamped
/// with its index, checked by the server; the time from the call's start to its answer.
pub async fn bulk(client: &Client, payload: Payload, items: u64) -> Result<(Duration, u64)> {
    let mut item = payload.bytes().to_vec();
    rpc::limited("a bulk stream", async {
        let t0 = Instant::now();
        let mut call = client
            .call_client_stream(payload.method(), CallOptions::timeout(STREAM_LIMIT))
            .await
            .map_err(BenchError::rpc("starting a bulk stream"))?;
        for i in 0..items {
            stamp(&mut item, i);
            call.send_raw(&item)
                .await
                .map_err(BenchError::rpc(format!("streaming item {i}")))?;
        }
        let r = call
            .finish_raw()
            .await
            .map_err(BenchError::rpc("finishing a bulk stream"))?;
        let dt = t0.elapsed();
        if r != (items * BULK_ITEM as u64).to_le_bytes() {
            return Err(BenchError::WrongData(
                "the server counted other bytes than were streamed".to_owned(),
            ));
        }
        Ok((dt, items))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_what_they_say() {
        for p in [Payload::Text, Payload::Random] {
            assert_eq!(p.bytes().len(), BULK_ITEM);
        }
        let text = Payload::Text.bytes();
        assert!(text.starts_with(br#"{"id":0,"name":"user-0""#));
        // Not a repetition of a few bytes: it differs from itself shifted by a word.
        let r = Payload::Random.bytes();
        assert_ne!(&r[..4096], &r[8..4104]);
    }

    #[test]
    fn tls_and_token_calls_pass_and_a_foreign_client_is_refused() {
        let dir =
            std::env::temp_dir().join(format!("shmrpc-bench-pki-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = Pki::generate().unwrap();
        made.write(&dir).unwrap();
        let guard = PkiDir(dir.clone());
        let pki = Pki::load(&dir).unwrap();
        drop(guard);
        assert!(!dir.exists(), "the directory is removed with its guard");
        let uds = rpc::uds_path(&format!("bench-remote-test-{}", std::process::id()));
        let mut servers = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for net in [Net::Tcp, Net::TcpLz4, Net::Tls] {
            let s = rpc::Running::start(net.server(), "", &uds, Some(&pki)).unwrap();
            let port = s.port;
            assert!(port.is_some_and(|p| p != 0), "{net:?}: a port");
            rt.block_on(async {
                let c = connect(net, "", port, Some(&pki)).await.unwrap();
                assert_eq!(rpc::rpc_unary(&c, 20, 5).await.unwrap().len(), 15);
                let (_, n) = rpc::rpc_pipelined(std::slice::from_ref(&c), 2 * rpc::PIPELINE as u64)
                    .await
                    .unwrap();
                assert_eq!(n, 2 * rpc::PIPELINE as u64);
                for p in [Payload::Text, Payload::Random] {
                    assert_eq!(bulk(&c, p, 3).await.unwrap().1, 3, "{net:?} {p:?}");
                }
            });
            servers.push((net, s));
        }
        // A client with another CA's certificate and token gets nowhere.
        let other = Pki::generate().unwrap();
        let tls_port = servers.iter().find(|(n, _)| *n == Net::Tls).unwrap().1.port;
        rt.block_on(async {
            assert!(connect(Net::Tls, "", tls_port, Some(&other)).await.is_err());
        });
        for (_, mut s) in servers {
            s.stop().unwrap();
        }
    }
}
