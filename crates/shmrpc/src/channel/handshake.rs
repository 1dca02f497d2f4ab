//! Handing a channel to another process: a Unix socket in the per-user runtime directory,
//! a uid check, and the segment plus doorbells passed as fds with a versioned hello.
//!
//! ```text
//! server                                   client
//! bind <runtime>/<name>.sock (0600)
//! accept  ─────────────────────────────── connect
//! SO_PEERCRED: uid must be ours            SO_PEERCRED: uid must be ours
//! create memfd segment + 4 eventfds
//! send HELLO + 5 fds (SCM_RIGHTS) ───────► validate hello, seals, segment, rings
//!                               ◄──────── send ACK
//! the socket stays open: its hang-up is the kernel's word that the peer died
//! ```
//!
//! HELLO is 32 bytes, little-endian: magic `"SHMRPCH1"`, version u32, side u32 (1 = you
//! are side B), ring 0 capacity u64, ring 1 capacity u64.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use super::endpoint::Peer;
use super::{attach, create_segment, ChannelConfig, ChannelError, Endpoint, Side};
use crate::sys::{fdpass, names, Doorbell, Segment};

const HELLO_MAGIC: [u8; 8] = *b"SHMRPCH1";
/// Version of the handshake; bumped on any change to HELLO, the channel layout, or the
/// protocol spoken over the channel (so that peers of two protocol versions refuse each
/// other at connect, naming both versions, instead of exchanging frames neither reads).
/// Version 2: frames of version 2 (calls in both directions). Version 3: frames of
/// version 3 (whole messages between the fragments of a long one). Version 4: frames of
/// version 4 (no CRC on shared memory). Version 5: frames of version 5 (batches of stream
/// items).
pub const HANDSHAKE_VERSION: u32 = 5;
const HELLO_LEN: usize = 32;
const ACK: [u8; 8] = *b"SHMRPCOK";
/// How long either side waits for the other's handshake message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors of [`Listener::bind`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BindError {
    /// The name is not acceptable.
    #[error("invalid name")]
    InvalidName(#[from] names::NameError),
    /// A live server already listens on this name.
    #[error("a live server already listens on {0}")]
    AddrInUse(PathBuf),
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// Operation.
        op: &'static str,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// Errors of [`Listener::accept`] and [`PendingClient::handshake`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The connecting process runs as another user.
    #[error("client uid {found} refused (only uid {expected} may connect)")]
    WrongUid {
        /// Its uid.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The client did not acknowledge the handshake in time (or hung up first).
    #[error("client did not complete the handshake")]
    Handshake(#[source] io::Error),
    /// The client answered the hello with something other than the ack.
    #[error("client answered the handshake with {0:02x?}, not the ack")]
    BadAck([u8; 8]),
    /// Building the channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// Operation.
        op: &'static str,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// Errors of [`connect`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The name is not acceptable.
    #[error("invalid name")]
    InvalidName(#[from] names::NameError),
    /// No server listens on this name.
    #[error("no server listens on {}", .path.display())]
    NotFound {
        /// The socket the server would listen on.
        path: PathBuf,
        /// The OS error of connecting to it (`ENOENT` or `ECONNREFUSED`).
        #[source]
        source: io::Error,
    },
    /// The server runs as another user.
    #[error("server uid {found} is not ours ({expected})")]
    WrongUid {
        /// Its uid.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The server's hello is malformed or of another version.
    #[error("bad handshake: {0}")]
    BadHello(String),
    /// The channel the server passed is invalid.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// Operation.
        op: &'static str,
        /// OS error.
        #[source]
        source: io::Error,
    },
}

/// Accepts processes that connect to a name and hands each a new duplex channel.
///
/// # Examples
///
/// A server thread accepts and echoes; the client side uses [`connect`]. (The client is
/// normally another process: it finds the server by name alone.)
///
/// ```
/// use shmrpc::channel::{self, ChannelConfig, Listener};
///
/// let name = format!("doc-listener-{}", std::process::id());
/// let listener = Listener::bind(&name, ChannelConfig::default())?;
/// let server = std::thread::spawn(move || {
///     let mut conn = listener.accept().unwrap();
///     let msg = conn.recv().unwrap().to_vec();
///     conn.send(&msg).unwrap();
///     // Dropping the listener removes its socket file.
/// });
///
/// let mut conn = channel::connect(&name, &ChannelConfig::default())?;
/// conn.send(b"ping")?;
/// assert_eq!(&*conn.recv()?, b"ping");
/// server.join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
    cfg: ChannelConfig,
    /// (dev, ino) of our socket file, so Drop removes only ours.
    ident: (u64, u64),
    /// The same socket registered with tokio, on first async accept.
    async_listener: std::sync::OnceLock<tokio::net::UnixListener>,
    /// Our claim on the name; released (and its file removed) after the socket file.
    _lock: names::NameLock,
}

impl Listener {
    /// Listens on `<runtime dir>/<name>.sock` (mode 0600), holding `<name>.lock` (`flock`)
    /// while it lives. A socket file left by a dead server is replaced; a live server is an
    /// [`BindError::AddrInUse`] error (and is not disturbed).
    ///
    /// # Errors
    /// See [`BindError`].
    pub fn bind(name: &str, cfg: ChannelConfig) -> Result<Self, BindError> {
        let io = |op| move |source| BindError::Io { op, source };
        let dir = names::runtime_dir().map_err(io("runtime dir"))?;
        names::validate(name)?;
        let path = dir.join(format!("{name}.sock"));
        // The lock, not the socket file, says whether a server is alive: probing the socket
        // by connecting would hand the live server a bogus client.
        let lock = names::NameLock::try_lock(&dir.join(format!("{name}.lock")))
            .map_err(io("lock"))?
            .ok_or_else(|| BindError::AddrInUse(path.clone()))?;
        // We hold the name: any socket file left there is a dead server's.
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(BindError::Io {
                    op: "remove stale socket",
                    source,
                })
            }
        }
        let listener = UnixListener::bind(&path).map_err(io("bind"))?;
        let meta =
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .and_then(|()| std::fs::symlink_metadata(&path));
        let meta = match meta {
            Ok(m) => m,
            Err(source) => {
                let _ = std::fs::remove_file(&path);
                return Err(BindError::Io {
                    op: "chmod socket",
                    source,
                });
            }
        };
        Ok(Self {
            listener,
            path,
            cfg,
            ident: (meta.dev(), meta.ino()),
            async_listener: std::sync::OnceLock::new(),
            _lock: lock,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next client and sets up its channel. The returned endpoint is side A.
    ///
    /// # Errors
    /// See [`AcceptError`]. A failed client does not affect the listener: accept again.
    pub fn accept(&self) -> Result<Endpoint, AcceptError> {
        let sock = loop {
            match self.listener.accept() {
                Ok((sock, _)) => break sock,
                // The listener is non-blocking once an async accept registered it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    use rustix::event::{poll, PollFd, PollFlags};
                    let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
                    let _ = poll(&mut fds, None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(AcceptError::Io {
                        op: "accept",
                        source,
                    })
                }
            }
        };
        server_handshake(sock, &self.cfg, HANDSHAKE_TIMEOUT)
    }

    /// Waits (asynchronously) for the next client's connection, without its handshake:
    /// complete that with [`PendingClient::handshake`] (blocking, up to its timeout; run
    /// each in a task of its own, so that a client which never answers cannot stall the
    /// accepting of others).
    ///
    /// # Errors
    /// [`AcceptError::Io`]: the OS error of `accept`, or of registering with the runtime.
    pub async fn accept_pending_async(&self) -> Result<PendingClient, AcceptError> {
        let sock = self
            .accept_socket_async()
            .await
            .map_err(|source| AcceptError::Io {
                op: "accept",
                source,
            })?;
        Ok(PendingClient {
            sock,
            cfg: self.cfg.clone(),
            timeout: HANDSHAKE_TIMEOUT,
        })
    }

    async fn accept_socket_async(&self) -> io::Result<UnixStream> {
        let tl = match self.async_listener.get() {
            Some(l) => l,
            None => {
                let dup = self.listener.try_clone()?;
                dup.set_nonblocking(true)?;
                let l = tokio::net::UnixListener::from_std(dup)?;
                // A concurrent initialiser may have won; either listener works.
                let _ = self.async_listener.set(l);
                self.async_listener.get().expect("just set")
            }
        };
        let (sock, _) = tl.accept().await?;
        let sock = sock.into_std()?;
        sock.set_nonblocking(false)?;
        Ok(sock)
    }

    /// The configuration each accepted channel gets.
    pub fn config(&self) -> &ChannelConfig {
        &self.cfg
    }
}

/// A client whose connection was accepted ([`Listener::accept_pending_async`]) and whose
/// handshake has not run yet.
#[derive(Debug)]
pub struct PendingClient {
    sock: UnixStream,
    cfg: ChannelConfig,
    timeout: Duration,
}

impl PendingClient {
    /// How long [`handshake`](Self::handshake) waits for the client's ack (default
    /// [`HANDSHAKE_TIMEOUT`]).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The connecting process's pid, from `SO_PEERCRED` (`None` if it cannot be read).
    pub fn peer_pid(&self) -> Option<u32> {
        fdpass::peer_credentials(self.sock.as_fd())
            .ok()
            .map(|(pid, _)| pid)
    }

    /// The server's half of the handshake: checks the client's uid, creates the channel,
    /// passes it, and waits (up to the timeout) for the ack. Blocking. The returned
    /// endpoint is side A.
    ///
    /// # Errors
    /// See [`AcceptError`]: [`WrongUid`](AcceptError::WrongUid) for another user's
    /// process, [`Handshake`](AcceptError::Handshake) if no ack came in time,
    /// [`BadAck`](AcceptError::BadAck) for a wrong one.
    pub fn handshake(self) -> Result<Endpoint, AcceptError> {
        server_handshake(self.sock, &self.cfg, self.timeout)
    }
}

/// The server's half of the handshake on an accepted socket (see
/// [`PendingClient::handshake`]).
fn server_handshake(
    sock: UnixStream,
    cfg: &ChannelConfig,
    timeout: Duration,
) -> Result<Endpoint, AcceptError> {
    let (_pid, uid) = fdpass::peer_credentials(sock.as_fd()).map_err(|source| AcceptError::Io {
        op: "SO_PEERCRED",
        source,
    })?;
    if uid != names::uid() && !cfg.allowed_uids.contains(&uid) {
        return Err(AcceptError::WrongUid {
            found: uid,
            expected: names::uid(),
        });
    }
    let (seg, bells) = create_segment(cfg)?;
    let cap = cfg.capacity as u64;
    let mut hello = [0u8; HELLO_LEN];
    hello[..8].copy_from_slice(&HELLO_MAGIC);
    hello[8..12].copy_from_slice(&HANDSHAKE_VERSION.to_le_bytes());
    hello[12..16].copy_from_slice(&1u32.to_le_bytes());
    hello[16..24].copy_from_slice(&cap.to_le_bytes());
    hello[24..32].copy_from_slice(&cap.to_le_bytes());
    let fds = [
        seg.fd(),
        bells[0].as_fd(),
        bells[1].as_fd(),
        bells[2].as_fd(),
        bells[3].as_fd(),
    ];
    let io = |op| move |source| AcceptError::Io { op, source };
    fdpass::send_with_fds(sock.as_fd(), &hello, &fds).map_err(io("send hello"))?;
    // A zero timeout would mean "wait for ever" to the OS.
    sock.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(io("set timeout"))?;
    let mut ack = [0u8; 8];
    (&sock)
        .read_exact(&mut ack)
        .map_err(AcceptError::Handshake)?;
    if ack != ACK {
        return Err(AcceptError::BadAck(ack));
    }
    sock.set_read_timeout(None).map_err(io("set timeout"))?;
    Ok(attach(&seg, Side::A, bells, cfg, Peer::socket(sock))?)
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket file only if it is still ours (not a successor's).
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.ident {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Connects to the server listening on `name` and returns this process's end (side B).
/// The wait strategy comes from `cfg`; the ring sizes are the server's.
///
/// # Errors
/// See [`ConnectError`]. Everything the server sends is validated.
///
/// # Examples
///
/// ```no_run
/// use shmrpc::channel::{self, ChannelConfig, ConnectError, WaitStrategy};
///
/// let cfg = ChannelConfig::default().with_wait(WaitStrategy::Spin);
/// match channel::connect("engine", &cfg) {
///     Ok(mut conn) => conn.send(b"hello")?,
///     Err(ConnectError::NotFound { .. }) => eprintln!("no server called engine"),
///     Err(e) => return Err(e.into()),
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect(name: &str, cfg: &ChannelConfig) -> Result<Endpoint, ConnectError> {
    names::validate(name)?;
    let dir = names::runtime_dir().map_err(|source| ConnectError::Io {
        op: "runtime dir",
        source,
    })?;
    let path = dir.join(format!("{name}.sock"));
    let sock = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(source)
            if matches!(
                source.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ConnectError::NotFound { path, source })
        }
        Err(source) => {
            return Err(ConnectError::Io {
                op: "connect",
                source,
            })
        }
    };
    let io = |op| move |source| ConnectError::Io { op, source };
    let (_pid, uid) = fdpass::peer_credentials(sock.as_fd()).map_err(io("SO_PEERCRED"))?;
    if uid != names::uid() {
        return Err(ConnectError::WrongUid {
            found: uid,
            expected: names::uid(),
        });
    }
    sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
        .map_err(io("set timeout"))?;
    let mut hello = [0u8; HELLO_LEN];
    let (n, fds) = fdpass::recv_with_fds(sock.as_fd(), &mut hello).map_err(io("recv hello"))?;
    let (seg_fd, bells) = parse_hello(&hello[..n], fds)?;
    let seg = Arc::new(Segment::from_fd(seg_fd).map_err(ChannelError::from)?);
    let endpoint = attach(
        &seg,
        Side::B,
        bells,
        cfg,
        Peer::socket(sock.try_clone().map_err(io("dup"))?),
    )?;
    (&sock).write_all(&ACK).map_err(io("send ack"))?;
    Ok(endpoint)
}

/// The server's hello, as a client reads it off the socket (the fds travel beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// Handshake version (only [`HANDSHAKE_VERSION`] is accepted).
    pub version: u32,
    /// Which end of the channel the client gets (always 1).
    pub side: u32,
    /// Data capacities of the two rings.
    pub capacities: [u64; 2],
}

impl Hello {
    /// Parses and validates hello bytes: exact length, magic, version, side, ring sizes.
    ///
    /// # Errors
    /// [`ConnectError::BadHello`] naming what is wrong.
    pub fn parse(hello: &[u8]) -> Result<Self, ConnectError> {
        let bad = |m: String| ConnectError::BadHello(m);
        if hello.len() != HELLO_LEN {
            return Err(bad(format!("{} bytes, expected {HELLO_LEN}", hello.len())));
        }
        if hello[..8] != HELLO_MAGIC {
            return Err(bad(format!("magic {:02x?}", &hello[..8])));
        }
        let u32_at = |i: usize| u32::from_le_bytes(hello[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(hello[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(8) != HANDSHAKE_VERSION {
            return Err(bad(format!(
                "server speaks handshake version {}, this end speaks {HANDSHAKE_VERSION}",
                u32_at(8)
            )));
        }
        if u32_at(12) != 1 {
            return Err(bad(format!("side {} (expected 1)", u32_at(12))));
        }
        let capacities = [u64_at(16), u64_at(24)];
        for cap in capacities {
            if !crate::ring::valid_capacity(cap) {
                return Err(bad(format!("ring capacity {cap}")));
            }
        }
        Ok(Self {
            version: u32_at(8),
            side: u32_at(12),
            capacities,
        })
    }
}

/// Validates a hello and its fds: the bytes ([`Hello::parse`]), then the fd count.
fn parse_hello(hello: &[u8], fds: Vec<OwnedFd>) -> Result<(OwnedFd, [Doorbell; 4]), ConnectError> {
    let bad = |m: String| ConnectError::BadHello(m);
    Hello::parse(hello)?;
    if fds.len() != 5 {
        return Err(bad(format!("{} fds, expected 5", fds.len())));
    }
    let mut it = fds.into_iter();
    let seg = it.next().expect("5 fds");
    let mut bell = || {
        Doorbell::from_fd(it.next().expect("5 fds"))
            .map_err(|e| ConnectError::Channel(ChannelError::Doorbell(e)))
    };
    Ok((seg, [bell()?, bell()?, bell()?, bell()?]))
}
