//! The connection handshake of a TCP connection: TLS (when configured), then the hello.
//!
//! ```text
//! client -> server  magic "SRPCTCP\0" | version u8 | flags u8 | client nonce [32]
//!                   flags: bit 0 asks for lz4, bit 1 has a token
//! server -> client  magic | version u8 | status u8
//!                   status 1 (refused): reason len u16 | reason (UTF-8, <= 512 bytes); end
//!                   status 0: flags u8 | server nonce [32]
//!                   flags: bit 0 lz4 on, bit 1 a token is required
//! if a token is required:
//!   client -> server  proof [32] = HMAC-SHA256(token, "shmrpc client" | s nonce | c nonce)
//! server -> client  status u8
//!                   status 1: reason len u16 | reason; end
//!                   status 0 with a token: proof [32] = HMAC(token, "shmrpc server" | c | s)
//! ```
//!
//! Each end's proof covers both nonces, fresh for each connection, so a recorded proof
//! proves nothing later, and the server proves the token too: a client that holds one
//! never talks to a server that does not. Frames follow only after this.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Compression, Token};

const MAGIC: [u8; 8] = *b"SRPCTCP\0";
/// Version of this handshake.
pub(crate) const HELLO_VERSION: u8 = 1;
const WANTS_LZ4: u8 = 1;
const HAS_TOKEN: u8 = 2;
const NONCE: usize = 32;
const MAX_REASON: usize = 512;

/// The reading half of a connection after its handshake.
pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half.
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection whose handshake succeeded.
pub(crate) struct Conn {
    pub(crate) read: BoxRead,
    pub(crate) write: BoxWrite,
    /// Whether both ends agreed on lz4.
    pub(crate) lz4: bool,
    /// `"tls"` or `"tcp"`.
    pub(crate) transport: &'static str,
}

/// Why the connection handshake failed. On the server, the connection is closed and no
/// frame of it is read; on the client, the connect fails with this as its source.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The TLS handshake failed (a certificate refused by either end, a peer that does
    /// not speak TLS, ...). rustls's reason is the source.
    #[error("TLS handshake failed")]
    Tls(#[source] io::Error),
    /// Reading or writing the hello failed (the peer closed, ...).
    #[error("connection lost during the handshake")]
    Io(#[source] io::Error),
    /// The peer's first bytes are not an shmrpc hello.
    #[error("the peer is not an shmrpc endpoint (bad hello)")]
    NotShmrpc,
    /// The peer speaks another version of the handshake.
    #[error("the peer speaks handshake version {0}, this end speaks version {HELLO_VERSION}")]
    Version(u8),
    /// The server requires a token and the client has none.
    #[error("the server requires a token and the client has none")]
    NoToken,
    /// The client's proof of the token is wrong.
    #[error("the client's token is wrong")]
    WrongToken,
    /// The client has a token and the server did not ask for it, or proved it wrong.
    #[error("the server could not prove it knows the token")]
    ServerProof,
    /// The server refused the connection, for the reason it gave (on the server: the
    /// reason it gave).
    #[error("the server refused the connection: {0}")]
    Refused(String),
    /// The peer sent something the handshake does not allow.
    #[error("malformed handshake from the peer")]
    Malformed,
    /// The handshake took longer than allowed.
    #[error("the handshake took longer than {0:?}")]
    Timeout(Duration),
}

fn io_err(e: io::Error) -> HandshakeError {
    HandshakeError::Io(e)
}

fn nonce() -> Result<[u8; NONCE], HandshakeError> {
    use ring::rand::SecureRandom;
    let mut n = [0u8; NONCE];
    ring::rand::SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| HandshakeError::Io(io::Error::other("the system random source failed")))?;
    Ok(n)
}

fn proof(token: &Token, label: &[u8], a: &[u8; NONCE], b: &[u8; NONCE]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(label);
    ctx.update(a);
    ctx.update(b);
    ctx.sign()
}

fn verify(token: &Token, label: &[u8], a: &[u8; NONCE], b: &[u8; NONCE], tag: &[u8]) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.bytes());
    let msg = [label, &a[..], &b[..]].concat();
    // Constant time in the tag's bytes.
    hmac::verify(&key, &msg, tag).is_ok()
}

const CLIENT_LABEL: &[u8] = b"shmrpc client";
const SERVER_LABEL: &[u8] = b"shmrpc server";

/// What a server requires of its TCP clients.
pub(crate) struct ServerSide {
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    pub(crate) token: Option<Token>,
    pub(crate) compression: Compression,
    /// For a server that authenticates nobody (loopback only): the uids whose connections
    /// it serves, as a shared-memory server checks `SO_PEERCRED` (its own and the
    /// configured `allowed_uids`). `None` when clients authenticate.
    pub(crate) uids: Option<Vec<u32>>,
}

/// Whether the loopback peer of the connection `local` ↔ `peer` may connect: `None` if
/// so, else why not. Reads the whole socket table (`/proc/net/tcp`): a blocking call.
fn refusal(
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    uids: &[u32],
) -> Option<String> {
    // The client's socket, seen from here: its local address is our peer's.
    match crate::sys::proc::tcp_socket_uid(peer, local) {
        Some(uid) if uids.contains(&uid) => None,
        Some(uid) => Some(format!(
            "uid {uid} is not allowed on this unauthenticated server"
        )),
        None => Some(format!("the owner of {peer} is unknown")),
    }
}

/// What a client presents and checks.
pub(crate) struct ClientSide {
    pub(crate) tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    pub(crate) token: Option<Token>,
    pub(crate) compression: Compression,
}

async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, status_prefix: &[u8], reason: &str) {
    let r = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
    let mut out = status_prefix.to_vec();
    out.push(1);
    out.extend_from_slice(&(r.len() as u16).to_le_bytes());
    out.extend_from_slice(r);
    // Best effort: the connection is closed next whatever happens.
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    let _ = s.shutdown().await;
}

async fn read_refusal<S: AsyncRead + Unpin>(s: &mut S) -> HandshakeError {
    let mut len = [0u8; 2];
    if let Err(e) = s.read_exact(&mut len).await {
        return io_err(e);
    }
    let len = u16::from_le_bytes(len) as usize;
    if len > MAX_REASON {
        return HandshakeError::Malformed;
    }
    let mut r = vec![0u8; len];
    if let Err(e) = s.read_exact(&mut r).await {
        return io_err(e);
    }
    HandshakeError::Refused(String::from_utf8_lossy(&r).into_owned())
}

/// The server's hello on a stream (after TLS, if any).
async fn server_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    side: &ServerSide,
    refused: Option<String>,
) -> Result<bool, HandshakeError> {
    let mut hello = [0u8; 8 + 2 + NONCE];
    s.read_exact(&mut hello).await.map_err(io_err)?;
    if hello[..8] != MAGIC {
        return Err(HandshakeError::NotShmrpc);
    }
    let mut head = MAGIC.to_vec();
    head.push(HELLO_VERSION);
    let (version, flags) = (hello[8], hello[9]);
    if version != HELLO_VERSION {
        refuse(
            s,
            &head,
            &format!("handshake version {version} is not {HELLO_VERSION}"),
        )
        .await;
        return Err(HandshakeError::Version(version));
    }
    if flags & !(WANTS_LZ4 | HAS_TOKEN) != 0 {
        refuse(s, &head, "unknown hello flags").await;
        return Err(HandshakeError::Malformed);
    }
    if let Some(why) = refused {
        refuse(s, &head, &why).await;
        return Err(HandshakeError::Refused(why));
    }
    let c_nonce: [u8; NONCE] = hello[10..].try_into().expect("32 bytes");
    let lz4 = flags & WANTS_LZ4 != 0 && side.compression == Compression::Lz4;
    let s_nonce = nonce()?;
    let mut reply = head.clone();
    reply.push(0);
    reply.push(if lz4 { WANTS_LZ4 } else { 0 } | if side.token.is_some() { HAS_TOKEN } else { 0 });
    reply.extend_from_slice(&s_nonce);
    s.write_all(&reply).await.map_err(io_err)?;
    s.flush().await.map_err(io_err)?;
    let mut fin = Vec::with_capacity(1 + NONCE);
    if let Some(token) = &side.token {
        let mut p = [0u8; NONCE];
        s.read_exact(&mut p).await.map_err(io_err)?;
        if flags & HAS_TOKEN == 0 {
            refuse(s, &[], "a token is required").await;
            return Err(HandshakeError::NoToken);
        }
        if !verify(token, CLIENT_LABEL, &s_nonce, &c_nonce, &p) {
            refuse(s, &[], "wrong token").await;
            return Err(HandshakeError::WrongToken);
        }
        fin.push(0);
        fin.extend_from_slice(proof(token, SERVER_LABEL, &c_nonce, &s_nonce).as_ref());
    } else {
        fin.push(0);
    }
    s.write_all(&fin).await.map_err(io_err)?;
    s.flush().await.map_err(io_err)?;
    Ok(lz4)
}

/// The client's hello on a stream (after TLS, if any).
async fn client_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    side: &ClientSide,
) -> Result<bool, HandshakeError> {
    let c_nonce = nonce()?;
    let mut hello = MAGIC.to_vec();
    hello.push(HELLO_VERSION);
    let lz4 = if side.compression == Compression::Lz4 {
        WANTS_LZ4
    } else {
        0
    };
    hello.push(lz4 | if side.token.is_some() { HAS_TOKEN } else { 0 });
    hello.extend_from_slice(&c_nonce);
    s.write_all(&hello).await.map_err(io_err)?;
    s.flush().await.map_err(io_err)?;

    let mut head = [0u8; 10];
    s.read_exact(&mut head).await.map_err(io_err)?;
    if head[..8] != MAGIC {
        return Err(HandshakeError::NotShmrpc);
    }
    if head[8] != HELLO_VERSION {
        return Err(HandshakeError::Version(head[8]));
    }
    match head[9] {
        0 => {}
        1 => return Err(read_refusal(s).await),
        _ => return Err(HandshakeError::Malformed),
    }
    let mut rest = [0u8; 1 + NONCE];
    s.read_exact(&mut rest).await.map_err(io_err)?;
    let flags = rest[0];
    if flags & !(WANTS_LZ4 | HAS_TOKEN) != 0 || (flags & WANTS_LZ4 != 0 && lz4 == 0) {
        return Err(HandshakeError::Malformed);
    }
    let s_nonce: [u8; NONCE] = rest[1..].try_into().expect("32 bytes");
    let required = flags & HAS_TOKEN != 0;
    if required {
        let p = match &side.token {
            Some(t) => proof(t, CLIENT_LABEL, &s_nonce, &c_nonce).as_ref().to_vec(),
            // Say so with an empty proof: the server answers why it refuses.
            None => vec![0u8; NONCE],
        };
        s.write_all(&p).await.map_err(io_err)?;
        s.flush().await.map_err(io_err)?;
    }
    let mut status = [0u8; 1];
    s.read_exact(&mut status).await.map_err(io_err)?;
    match status[0] {
        0 => {}
        1 => return Err(read_refusal(s).await),
        _ => return Err(HandshakeError::Malformed),
    }
    if let Some(token) = &side.token {
        if !required {
            return Err(HandshakeError::ServerProof);
        }
        let mut p = [0u8; NONCE];
        s.read_exact(&mut p).await.map_err(io_err)?;
        if !verify(token, SERVER_LABEL, &c_nonce, &s_nonce, &p) {
            return Err(HandshakeError::ServerProof);
        }
    }
    Ok(flags & WANTS_LZ4 != 0)
}

impl Conn {
    /// A TLS stream after its hello: split (the halves share the TLS session).
    fn tls<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(s: S, lz4: bool) -> Self {
        let (r, w) = tokio::io::split(s);
        Conn {
            read: Box::new(r),
            write: Box::new(w),
            lz4,
            transport: "tls",
        }
    }

    /// A plain TCP stream after its hello: its own halves, with no lock between them.
    fn tcp(s: TcpStream, lz4: bool) -> Self {
        let (r, w) = s.into_split();
        Conn {
            read: Box::new(r),
            write: Box::new(w),
            lz4,
            transport: "tcp",
        }
    }
}

/// Runs the server's side of the handshake on an accepted TCP connection.
///
/// # Errors
/// Why the client was refused (it has been told, where the protocol allows).
pub(crate) async fn accept(tcp: TcpStream, side: Arc<ServerSide>) -> Result<Conn, HandshakeError> {
    let _ = tcp.set_nodelay(true);
    let refused = match side.uids.clone() {
        Some(uids) => {
            let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) else {
                return Err(HandshakeError::Refused(
                    "the connection's addresses are unknown".into(),
                ));
            };
            // Reading the socket table is file i/o: off the runtime's threads.
            tokio::task::spawn_blocking(move || refusal(local, peer, &uids))
                .await
                .map_err(|e| HandshakeError::Io(io::Error::other(e)))?
        }
        None => None,
    };
    finish_accept(tcp, &side, refused).await
}

/// [`accept`] once it is known whether the peer's uid is refused.
async fn finish_accept(
    tcp: TcpStream,
    side: &ServerSide,
    refused: Option<String>,
) -> Result<Conn, HandshakeError> {
    match &side.tls {
        Some(acceptor) => {
            let mut s = acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?;
            let lz4 = server_hello(&mut s, side, refused).await?;
            Ok(Conn::tls(s, lz4))
        }
        None => {
            let mut s = tcp;
            let lz4 = server_hello(&mut s, side, refused).await?;
            Ok(Conn::tcp(s, lz4))
        }
    }
}

/// Runs the client's side of the handshake on a connected TCP stream.
///
/// # Errors
/// Why the server, or this end, refused the connection.
pub(crate) async fn connect(tcp: TcpStream, side: &ClientSide) -> Result<Conn, HandshakeError> {
    let _ = tcp.set_nodelay(true);
    match &side.tls {
        Some((connector, name)) => {
            let mut s = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(HandshakeError::Tls)?;
            // Under TLS 1.3 the server's verdict on this client's certificate arrives as
            // an alert while the hello is read: a TLS failure, not a lost connection.
            let lz4 = client_hello(&mut s, side).await.map_err(|e| match e {
                HandshakeError::Io(e) if e.kind() == io::ErrorKind::InvalidData => {
                    HandshakeError::Tls(e)
                }
                e => e,
            })?;
            Ok(Conn::tls(s, lz4))
        }
        None => {
            let mut s = tcp;
            let lz4 = client_hello(&mut s, side).await?;
            Ok(Conn::tcp(s, lz4))
        }
    }
}
