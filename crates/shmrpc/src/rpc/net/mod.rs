//! The remote transport: the same frames over TCP, made safe to expose on a network.
//!
//! A TCP connection is served only after its **connection handshake** succeeds, within
//! [`ServerConfig::handshake_timeout`](super::ServerConfig::handshake_timeout):
//!
//! 1. **TLS 1.3** (rustls), when [`TcpServerConfig::tls`] is set: the client checks the
//!    server's certificate and name against its CA; with a client CA configured
//!    ([`ServerTls::with_client_ca_pem`]), the server requires a client certificate signed
//!    by it (mutual TLS). An expired, self-signed or foreign certificate fails here.
//! 2. **The hello** ([`hello`]): protocol version, compression, and, when a [`Token`] is
//!    configured, a challenge-response proof of it in both directions (HMAC-SHA256 over
//!    both ends' fresh nonces: the token itself never travels, and a server that does not
//!    know it cannot pose as the real one).
//!
//! No frame is read, and so no handler runs, before both steps succeed. Where a server may
//! listen is decided by [`check_listen`]: a non-loopback address needs authentication (a
//! client CA or a token) and TLS, unless plaintext is opted into by name
//! ([`TcpServerConfig::insecure_plaintext`]).
//!
//! After the handshake the connection carries frames as any other, with two guards a
//! public port needs: a frame once begun must arrive whole within
//! [`TcpServerConfig::frame_timeout`] (a one-byte-per-second sender is dropped), and a
//! compressed frame may not claim to expand past the fragment limit.
#![forbid(unsafe_code)]

pub(crate) mod hello;
mod tls;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

pub use tls::{ClientTls, ServerTls, TlsError};

/// Bytes in a [`Token`].
pub const TOKEN_LEN: usize = 32;

/// A pre-shared secret both ends of a TCP connection prove they know (without sending it)
/// before any frame is exchanged. Kept in a file of mode 0600, in hex; `Debug` never shows
/// it.
///
/// # Examples
///
/// ```
/// use shmrpc::Token;
///
/// let dir = std::env::temp_dir().join(format!("token-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir)?;
/// let path = dir.join("token");
/// let token = Token::generate()?;
/// token.write_new(&path)?; // mode 0600, refused if the file exists
/// assert_eq!(Token::load(&path)?, token);
/// assert_eq!(format!("{token:?}"), "Token(..)");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Token([u8; TOKEN_LEN]);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Why a [`Token`] could not be made, read or written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// Reading or writing the file failed.
    #[error("token file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file may be read by others than its owner.
    #[error(
        "token file {path} has mode {mode:o}: it must be readable by its owner only (chmod 600)"
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The text is not 64 hex digits.
    #[error("a token is {} hex digits, found {found:?}", 2 * TOKEN_LEN)]
    Format {
        /// What was found (its first characters).
        found: String,
    },
}

impl Token {
    /// A fresh random token.
    ///
    /// # Errors
    /// [`TokenError::Random`] if the system's random source fails.
    pub fn generate() -> Result<Self, TokenError> {
        use ring::rand::SecureRandom;
        let mut b = [0u8; TOKEN_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| TokenError::Random)?;
        Ok(Token(b))
    }

    /// The token written as hex digits.
    ///
    /// # Errors
    /// [`TokenError::Format`] unless `text` (surrounding white space aside) is 64 hex
    /// digits.
    pub fn from_hex(text: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        let bad = || TokenError::Format {
            found: t.chars().take(16).collect(),
        };
        if t.len() != 2 * TOKEN_LEN || !t.is_ascii() {
            return Err(bad());
        }
        let mut b = [0u8; TOKEN_LEN];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Token(b))
    }

    /// The token as 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a token file, refusing one that others than its owner may read.
    ///
    /// # Errors
    /// [`TokenError::Io`], [`TokenError::Permissions`] (mode not 0600 or stricter), or
    /// [`TokenError::Format`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TokenError> {
        use std::os::unix::fs::PermissionsExt;
        let path = path.as_ref();
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::Permissions {
                path: path.to_owned(),
                mode,
            });
        }
        Token::from_hex(&std::fs::read_to_string(path).map_err(io)?)
    }

    /// Writes the token to a new file of mode 0600.
    ///
    /// # Errors
    /// [`TokenError::Io`], also when the file exists (it is never overwritten).
    pub fn write_new(&self, path: impl AsRef<Path>) -> Result<(), TokenError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = path.as_ref();
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(f, "{}", self.to_hex()).map_err(io)
    }

    pub(crate) fn bytes(&self) -> &[u8; TOKEN_LEN] {
        &self.0
    }
}

/// Payload compression on a TCP connection (shared memory gains nothing from it). Used
/// only when both ends ask for it; negotiated per connection in the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Compression {
    /// Never compress.
    #[default]
    None,
    /// LZ4 (block format) for frames above the threshold, when it makes them smaller.
    Lz4,
}

/// How a server takes TCP connections: security, compression and the limits a public port
/// needs. The default serves plaintext on loopback only.
///
/// # Examples
///
/// ```no_run
/// use shmrpc::{ServerConfig, ServerTls, TcpServerConfig, Token};
///
/// # fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let tcp = TcpServerConfig::default()
///     .with_tls(ServerTls::from_pem_files("server.pem", "server.key")?
///         .with_client_ca_file("ca.pem")?)
///     .with_token(Token::load("token")?);
/// let cfg = ServerConfig::default().with_tcp(tcp);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TcpServerConfig {
    /// TLS: the server's certificate and key, and optionally a CA that client
    /// certificates must be signed by. `None`: plaintext.
    pub tls: Option<ServerTls>,
    /// A token clients must prove they know.
    pub token: Option<Token>,
    /// Allow plaintext on a non-loopback address (anyone on the path reads and alters the
    /// traffic). Off by default.
    pub insecure_plaintext: bool,
    /// Compression this server accepts.
    pub compression: Compression,
    /// Frames with a larger payload are compressed (when negotiated). Default 1 KiB.
    pub compress_above: usize,
    /// TCP connections served or in their handshake at once; past it, new ones are closed
    /// at once. Default 1024.
    pub max_connections: usize,
    /// The same, per peer IP address. Default 64.
    pub max_per_address: usize,
    /// Once a frame's first byte arrives, the rest must arrive within this (a
    /// byte-at-a-time sender holds a connection no longer). Default 10 s.
    pub frame_timeout: Duration,
    /// A connection with no call open either way, and nothing but heartbeats from the
    /// client, for this long is closed, with a `Goodbye` (the client's next call takes a
    /// new connection; the server's calls to it fail `PeerGone`). Checked once per
    /// heartbeat period. `None` (the default): never.
    pub idle_timeout: Option<Duration>,
}

impl Default for TcpServerConfig {
    fn default() -> Self {
        Self {
            tls: None,
            token: None,
            insecure_plaintext: false,
            compression: Compression::None,
            compress_above: 1024,
            max_connections: 1024,
            max_per_address: 64,
            frame_timeout: Duration::from_secs(10),
            idle_timeout: None,
        }
    }
}

/// Setters, one per field.
impl TcpServerConfig {
    /// This config with another `idle_timeout`.
    #[must_use]
    pub fn with_idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self
    }

    /// This config with TLS.
    #[must_use]
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// This config requiring `token` of every client.
    #[must_use]
    pub fn with_token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    /// This config with `insecure_plaintext`: plaintext allowed on non-loopback addresses.
    #[must_use]
    pub fn with_insecure_plaintext(mut self, insecure_plaintext: bool) -> Self {
        self.insecure_plaintext = insecure_plaintext;
        self
    }

    /// This config with another `compression`.
    #[must_use]
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// This config with another `compress_above` (threshold in bytes).
    #[must_use]
    pub fn with_compress_above(mut self, compress_above: usize) -> Self {
        self.compress_above = compress_above;
        self
    }

    /// This config with another `max_connections`.
    #[must_use]
    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// This config with another `max_per_address`.
    #[must_use]
    pub fn with_max_per_address(mut self, max_per_address: usize) -> Self {
        self.max_per_address = max_per_address;
        self
    }

    /// This config with another `frame_timeout`.
    #[must_use]
    pub fn with_frame_timeout(mut self, frame_timeout: Duration) -> Self {
        self.frame_timeout = frame_timeout;
        self
    }

    /// Whether clients must authenticate (a client certificate or a token).
    pub fn authenticates(&self) -> bool {
        self.token.is_some() || self.tls.as_ref().is_some_and(ServerTls::verifies_clients)
    }
}

/// How a client connects over TCP: the server's CA and name (TLS), its own certificate or
/// a token, and compression. The default is plaintext, to loopback addresses only.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TcpClientConfig {
    /// TLS: the CA the server's certificate must be signed by, the name it must carry,
    /// and optionally this client's certificate. `None`: plaintext.
    pub tls: Option<ClientTls>,
    /// A token to prove (the server must prove it too).
    pub token: Option<Token>,
    /// Allow plaintext to a non-loopback address. Off by default.
    pub insecure_plaintext: bool,
    /// Compression this client asks for.
    pub compression: Compression,
    /// Frames with a larger payload are compressed (when negotiated). Default 1 KiB.
    pub compress_above: usize,
    /// Once a frame's first byte arrives, the rest must arrive within this. Default 10 s.
    pub frame_timeout: Duration,
    /// How long the TCP connect, TLS and hello may take together. Default 5 s.
    pub handshake_timeout: Duration,
}

impl Default for TcpClientConfig {
    fn default() -> Self {
        Self {
            tls: None,
            token: None,
            insecure_plaintext: false,
            compression: Compression::None,
            compress_above: 1024,
            frame_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// Setters, one per field.
impl TcpClientConfig {
    /// This config with TLS.
    #[must_use]
    pub fn with_tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// This config proving `token`.
    #[must_use]
    pub fn with_token(mut self, token: Token) -> Self {
        self.token = Some(token);
        self
    }

    /// This config with `insecure_plaintext`: plaintext allowed to non-loopback addresses.
    #[must_use]
    pub fn with_insecure_plaintext(mut self, insecure_plaintext: bool) -> Self {
        self.insecure_plaintext = insecure_plaintext;
        self
    }

    /// This config with another `compression`.
    #[must_use]
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// This config with another `compress_above` (threshold in bytes).
    #[must_use]
    pub fn with_compress_above(mut self, compress_above: usize) -> Self {
        self.compress_above = compress_above;
        self
    }

    /// This config with another `frame_timeout`.
    #[must_use]
    pub fn with_frame_timeout(mut self, frame_timeout: Duration) -> Self {
        self.frame_timeout = frame_timeout;
        self
    }

    /// This config with another `handshake_timeout`.
    #[must_use]
    pub fn with_handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }
}

/// Why a server may not listen, or a client may not connect, on an address with the
/// configuration given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InsecureError {
    /// Plaintext on a non-loopback address without `insecure_plaintext`.
    #[error("plaintext TCP on the non-loopback address {0}: configure TLS, or opt in with `insecure_plaintext`")]
    Plaintext(SocketAddr),
    /// A non-loopback listener that authenticates nobody.
    #[error("listening on the non-loopback address {0} without authentication: configure a client CA or a token")]
    Unauthenticated(SocketAddr),
}

/// Whether `addr` reaches only this host (127.0.0.0/8, ::1, or an IPv4-mapped loopback).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

/// Whether a server with `cfg` may listen on `addr`: on loopback, always; elsewhere only
/// with authentication (a client CA or a token) and either TLS or the explicit
/// `insecure_plaintext`.
///
/// # Errors
/// The first rule broken.
///
/// # Examples
///
/// ```
/// use shmrpc::{check_listen, InsecureError, TcpServerConfig, Token};
///
/// let open = TcpServerConfig::default();
/// assert!(check_listen(&"127.0.0.1:7000".parse()?, &open).is_ok());
/// let public = "0.0.0.0:7000".parse()?;
/// assert_eq!(check_listen(&public, &open), Err(InsecureError::Unauthenticated(public)));
/// let token_only = open.with_token(Token::generate()?);
/// assert_eq!(check_listen(&public, &token_only), Err(InsecureError::Plaintext(public)));
/// assert!(check_listen(&public, &token_only.with_insecure_plaintext(true)).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_listen(addr: &SocketAddr, cfg: &TcpServerConfig) -> Result<(), InsecureError> {
    if is_loopback(addr) {
        return Ok(());
    }
    if !cfg.authenticates() {
        return Err(InsecureError::Unauthenticated(*addr));
    }
    if cfg.tls.is_none() && !cfg.insecure_plaintext {
        return Err(InsecureError::Plaintext(*addr));
    }
    Ok(())
}

/// Whether a client with `cfg` may connect to `addr`: plaintext only to loopback or with
/// the explicit `insecure_plaintext`.
///
/// # Errors
/// [`InsecureError::Plaintext`].
pub fn check_connect(addr: &SocketAddr, cfg: &TcpClientConfig) -> Result<(), InsecureError> {
    if cfg.tls.is_none() && !cfg.insecure_plaintext && !is_loopback(addr) {
        return Err(InsecureError::Plaintext(*addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_through_hex_and_refuse_anything_else() {
        let t = Token::generate().unwrap();
        assert_eq!(Token::from_hex(&t.to_hex()).unwrap(), t);
        assert_eq!(Token::from_hex(&format!(" {}\n", t.to_hex())).unwrap(), t);
        assert_ne!(Token::generate().unwrap(), t, "two tokens alike");
        for bad in ["", "00", &"g".repeat(64), &"0".repeat(63), &"é".repeat(32)] {
            assert!(
                matches!(Token::from_hex(bad), Err(TokenError::Format { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_token_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("shmrpc-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t");
        let t = Token::generate().unwrap();
        t.write_new(&path).unwrap();
        assert!(
            t.write_new(&path).is_err(),
            "an existing token file was overwritten"
        );
        assert_eq!(Token::load(&path).unwrap(), t);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Token::load(&path).unwrap_err();
        assert!(
            matches!(e, TokenError::Permissions { mode: 0o640, .. }),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn where_plaintext_and_unauthenticated_servers_may_listen() {
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        let public: SocketAddr = "192.0.2.1:1".parse().unwrap();
        let any: SocketAddr = "[::]:1".parse().unwrap();
        let open = TcpServerConfig::default();
        for a in [v4, v6, mapped] {
            assert!(is_loopback(&a));
            assert_eq!(check_listen(&a, &open), Ok(()));
            assert_eq!(check_connect(&a, &TcpClientConfig::default()), Ok(()));
        }
        for a in [public, any] {
            assert!(!is_loopback(&a));
            assert_eq!(
                check_listen(&a, &open),
                Err(InsecureError::Unauthenticated(a))
            );
            // The opt-in names plaintext, not the absence of authentication.
            let opted = open.clone().with_insecure_plaintext(true);
            assert_eq!(
                check_listen(&a, &opted),
                Err(InsecureError::Unauthenticated(a))
            );
            let token = open.clone().with_token(Token::generate().unwrap());
            assert_eq!(check_listen(&a, &token), Err(InsecureError::Plaintext(a)));
            let token = token.with_insecure_plaintext(true);
            assert_eq!(check_listen(&a, &token), Ok(()));
            let c = TcpClientConfig::default();
            assert_eq!(check_connect(&a, &c), Err(InsecureError::Plaintext(a)));
            assert_eq!(check_connect(&a, &c.with_insecure_plaintext(true)), Ok(()));
        }
    }
}
