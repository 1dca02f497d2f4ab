//! The errors of connecting a client and of binding a server: each keeps the error that
//! caused it as its [`source`](std::error::Error::source).

use std::io;
use std::net::SocketAddr;

use thiserror::Error;

use super::net::hello::HandshakeError;
use super::net::{InsecureError, TlsError};
use super::{Code, RpcError};
use crate::channel;

/// Why [`Client::connect`](super::Client::connect) (or `connect_tcp`, or
/// [`BlockingClient::connect`](super::BlockingClient::connect)) failed. After retrying for
/// [`ClientConfig::reconnect_for`](super::ClientConfig::reconnect_for), the error of the
/// last attempt.
///
/// # Examples
///
/// ```
/// use shmrpc::{Client, ClientConfig, ConnectError};
/// use std::time::Duration;
///
/// # #[tokio::main] async fn main() {
/// let cfg = ClientConfig::default().with_reconnect_for(Duration::ZERO);
/// let err = Client::connect("nobody-listens-here", cfg).await.unwrap_err();
/// assert!(matches!(err, ConnectError::Shm { .. }));
/// // The cause is the source, not part of the message:
/// assert_eq!(err.to_string(), "connecting to the shared-memory server \"nobody-listens-here\"");
/// assert!(std::error::Error::source(&err).is_some());
/// # }
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The shared-memory handshake failed (no server, a refused uid, a bad handshake).
    #[error("connecting to the shared-memory server {name:?}")]
    Shm {
        /// The server's name.
        name: String,
        /// What the channel layer reported.
        #[source]
        source: channel::ConnectError,
    },
    /// The TCP connection failed.
    #[error("connecting to {addr} over TCP")]
    Tcp {
        /// The server's address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Connecting to this address with this configuration is not allowed: see
    /// [`check_connect`](crate::check_connect).
    #[error("refusing to connect to {addr}")]
    Insecure {
        /// The server's address.
        addr: SocketAddr,
        /// The rule broken.
        #[source]
        source: InsecureError,
    },
    /// The client's TLS configuration cannot be used.
    #[error("the TLS configuration for {addr}")]
    Tls {
        /// The server's address.
        addr: SocketAddr,
        /// What is wrong with it.
        #[source]
        source: TlsError,
    },
    /// The connection handshake (TLS, token) failed or was refused by the server.
    #[error("the handshake with {addr} failed")]
    Handshake {
        /// The server's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: HandshakeError,
    },
    /// The client's runtime could not start, or its connecting task failed.
    #[error("starting the client's runtime")]
    Runtime(#[source] io::Error),
}

/// Why [`ServerBuilder::bind`](super::ServerBuilder::bind) or
/// [`bind_tcp`](super::ServerBuilder::bind_tcp) failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BindError {
    /// The shared-memory name could not be taken (invalid, a live server has it, or the
    /// socket could not be created).
    #[error("listening on the shared-memory name {name:?}")]
    Shm {
        /// The name.
        name: String,
        /// What the channel layer reported.
        #[source]
        source: channel::BindError,
    },
    /// The TCP address could not be bound.
    #[error("listening on {addr} over TCP")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Listening on this address with this configuration would expose the server: see
    /// [`check_listen`](crate::check_listen).
    #[error("refusing to listen on {addr}")]
    Insecure {
        /// The address.
        addr: SocketAddr,
        /// The rule broken.
        #[source]
        source: InsecureError,
    },
    /// The TLS configuration cannot be used.
    #[error("the TLS configuration for {addr}")]
    Tls {
        /// The address.
        addr: SocketAddr,
        /// What is wrong with it.
        #[source]
        source: TlsError,
    },
}

impl ConnectError {
    /// Whether trying again cannot help: a configuration this end refuses, or a server
    /// that refused this client's credentials (certificate, token, uid) or speaks another
    /// version. A client stops retrying at such an error instead of for
    /// [`reconnect_for`](super::ClientConfig::reconnect_for).
    pub fn is_final(&self) -> bool {
        match self {
            ConnectError::Insecure { .. } | ConnectError::Tls { .. } => true,
            ConnectError::Handshake { source, .. } => match source {
                // A connection lost or slow on the way may do better next time; a TLS
                // failure is final when rustls refused something (a certificate, ...).
                HandshakeError::Io(_) | HandshakeError::Timeout(_) => false,
                HandshakeError::Tls(e) => e.kind() == io::ErrorKind::InvalidData,
                _ => true,
            },
            ConnectError::Shm { .. } | ConnectError::Tcp { .. } | ConnectError::Runtime(_) => false,
        }
    }
}

/// For callers that handle every failure as an [`RpcError`]: code `Unavailable`, the
/// connect error as source.
impl From<ConnectError> for RpcError {
    fn from(e: ConnectError) -> Self {
        RpcError::with_source(Code::Unavailable, "no connection to the server", e)
    }
}

/// For callers that handle every failure as an [`RpcError`]: code `Unavailable`, the bind
/// error as source.
impl From<BindError> for RpcError {
    fn from(e: BindError) -> Self {
        RpcError::with_source(Code::Unavailable, "the server could not listen", e)
    }
}
