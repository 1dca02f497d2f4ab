//! A server's settings, also from a TOML file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use thiserror::Error;

use super::net::{Compression, ServerTls, TcpServerConfig, Token};
use crate::channel::{ChannelConfig, WaitStrategy};
use crate::ring::{MAX_CAPACITY, MIN_CAPACITY};

/// Server settings. The defaults suit an editor talking to a local engine.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use shmrpc::channel::WaitStrategy;
/// use shmrpc::ServerConfig;
///
/// let cfg = ServerConfig::default()
///     .with_max_in_flight(32)
///     .with_heartbeat(Duration::from_millis(500));
/// let cfg = cfg.clone().with_channel(cfg.channel.with_capacity(1 << 20).with_wait(WaitStrategy::Park));
/// assert_eq!(cfg.max_in_flight, 32);
/// assert_eq!(cfg.max_message, 16 << 20);
/// ```
///
/// Or from a file: [`ServerConfig::from_toml_file`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Ring sizes and wait strategy of each accepted connection.
    pub channel: ChannelConfig,
    /// Calls running at once per connection. Up to as many more requests wait, in arrival
    /// order, for one to finish; past that the server stops reading the connection, so the
    /// ring fills and the client's sends wait (backpressure).
    pub max_in_flight: usize,
    /// Largest message accepted or sent (default 16 MiB).
    pub max_message: usize,
    /// A ping is sent after this much silence; a peer silent for three of these is gone.
    pub heartbeat: Duration,
    /// How long a cancelled handler may run on before it is aborted.
    pub cancel_grace: Duration,
    /// Handshakes (shared memory) that may run at once, each in a task of its own. At the
    /// bound the server accepts no more connections until one finishes: clients wait in
    /// the socket's listen backlog. Default 64.
    pub max_handshakes: usize,
    /// How long a connecting client has to acknowledge the handshake before it is dropped
    /// (and counted as a handshake failure). Default 5 s.
    pub handshake_timeout: Duration,
    /// Record metrics (`rpc::obs`) for this server. Needs the library's `metrics` feature
    /// and a recorder installed by the application; off by default, and then a call costs
    /// nothing for them.
    pub metrics: bool,
    /// How [`bind_tcp`](super::ServerBuilder::bind_tcp) takes connections: TLS, token,
    /// compression, connection limits. The default serves plaintext, on loopback only.
    pub tcp: TcpServerConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            channel: ChannelConfig::default().with_capacity(64 * 1024),
            max_in_flight: 256,
            max_message: 16 << 20,
            heartbeat: Duration::from_secs(2),
            cancel_grace: Duration::from_millis(200),
            max_handshakes: 64,
            handshake_timeout: crate::channel::HANDSHAKE_TIMEOUT,
            metrics: false,
            tcp: TcpServerConfig::default(),
        }
    }
}

/// Setters, one per field (the struct is `#[non_exhaustive]`: build it from
/// [`ServerConfig::default`] with these, or from a file).
impl ServerConfig {
    /// This config with another `channel` (ring sizes, wait strategy, allowed uids).
    #[must_use]
    pub fn with_channel(mut self, channel: ChannelConfig) -> Self {
        self.channel = channel;
        self
    }

    /// This config with another `max_in_flight` (calls in flight per connection).
    #[must_use]
    pub fn with_max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight;
        self
    }

    /// This config with another `max_message` (largest message).
    #[must_use]
    pub fn with_max_message(mut self, max_message: usize) -> Self {
        self.max_message = max_message;
        self
    }

    /// This config with another `heartbeat` (ping period).
    #[must_use]
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat;
        self
    }

    /// This config with another `cancel_grace` (how long a cancelled handler may run on).
    #[must_use]
    pub fn with_cancel_grace(mut self, cancel_grace: Duration) -> Self {
        self.cancel_grace = cancel_grace;
        self
    }

    /// This config with another `max_handshakes` (handshakes at once).
    #[must_use]
    pub fn with_max_handshakes(mut self, max_handshakes: usize) -> Self {
        self.max_handshakes = max_handshakes;
        self
    }

    /// This config with another `handshake_timeout` (time a client has to acknowledge the handshake).
    #[must_use]
    pub fn with_handshake_timeout(mut self, handshake_timeout: Duration) -> Self {
        self.handshake_timeout = handshake_timeout;
        self
    }

    /// This config with another `metrics` (record metrics).
    #[must_use]
    pub fn with_metrics(mut self, metrics: bool) -> Self {
        self.metrics = metrics;
        self
    }

    /// This config with another `tcp` (how TCP connections are taken).
    #[must_use]
    pub fn with_tcp(mut self, tcp: TcpServerConfig) -> Self {
        self.tcp = tcp;
        self
    }
}

/// Why a configuration was refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("invalid configuration{}", .file.as_deref().map(|f| format!(" in {f}")).unwrap_or_default())]
    Syntax {
        /// The file, if the text came from one.
        file: Option<String>,
        /// What the TOML parser reported (with the line).
        #[source]
        source: toml::de::Error,
    },
    /// A value outside what is allowed.
    #[error("`{key}` = {value}: must be {allowed}")]
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    /// A file named by a key (a certificate, a key, a token) could not be read or used.
    #[error("`{key}` = {path:?}: {problem}")]
    File {
        /// The key.
        key: &'static str,
        /// The file, as resolved (relative paths against the configuration file's
        /// directory).
        path: PathBuf,
        /// What is wrong with it.
        problem: &'static str,
        /// The underlying error (the OS's, the token's, the TLS library's), if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
}

/// The file's shape; everything optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    ring_size: Option<u64>,
    max_in_flight: Option<u64>,
    max_message: Option<Size>,
    heartbeat: Option<String>,
    cancel_grace: Option<String>,
    wait: Option<String>,
    spin: Option<String>,
    allowed_uids: Option<Vec<u32>>,
    max_handshakes: Option<u64>,
    handshake_timeout: Option<String>,
    metrics: Option<bool>,
    tcp: Option<TcpFile>,
}

/// The `[tcp]` table: how TCP connections are taken.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpFile {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    token_file: Option<PathBuf>,
    insecure_plaintext: Option<bool>,
    compression: Option<String>,
    compress_above: Option<Size>,
    max_connections: Option<u64>,
    max_per_address: Option<u64>,
    frame_timeout: Option<String>,
    idle_timeout: Option<String>,
}

/// A size: a number of bytes, or text such as `"4 MiB"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

fn out_of_range(key: &'static str, value: impl ToString, allowed: impl ToString) -> ConfigError {
    ConfigError::OutOfRange {
        key,
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

/// `"250ms"`, `"2s"`, `"20us"`, `"1m"` (a bare number is not accepted: say the unit).
fn duration(
    key: &'static str,
    text: &str,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    let allowed = || format!("a duration from {min:?} to {max:?}, like \"250ms\" or \"2s\"");
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| out_of_range(key, format!("{text:?}"), allowed()))?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(out_of_range(key, format!("{text:?}"), allowed())),
    };
    let d = Duration::try_from_secs_f64(secs)
        .map_err(|_| out_of_range(key, format!("{text:?}"), allowed()))?;
    if d < min || d > max {
        return Err(out_of_range(key, format!("{text:?}"), allowed()));
    }
    Ok(d)
}

fn size(key: &'static str, s: &Size, min: u64, max: u64) -> Result<u64, ConfigError> {
    let allowed = || format!("a size from {min} to {max} bytes (a number, or text like \"4 MiB\")");
    let bytes = match s {
        Size::Bytes(b) => *b,
        Size::Text(t) => {
            let t = t.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let n: u64 = num
                .parse()
                .map_err(|_| out_of_range(key, format!("{t:?}"), allowed()))?;
            let mult: u64 = match unit.trim() {
                "" | "B" => 1,
                "KiB" => 1 << 10,
                "MiB" => 1 << 20,
                "GiB" => 1 << 30,
                _ => return Err(out_of_range(key, format!("{t:?}"), allowed())),
            };
            n.checked_mul(mult)
                .ok_or_else(|| out_of_range(key, format!("{t:?}"), allowed()))?
        }
    };
    if bytes < min || bytes > max {
        return Err(out_of_range(key, bytes, allowed()));
    }
    Ok(bytes)
}

/// `p` as written, or against `base` (the configuration file's directory) when relative.
fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_owned(),
    }
}

fn file_error(
    key: &'static str,
    path: &Path,
    problem: &'static str,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> ConfigError {
    ConfigError::File {
        key,
        path: path.to_owned(),
        problem,
        source,
    }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| file_error(key, path, "cannot be read", Some(Box::new(e))))
}

/// Whether `pem` holds at least one certificate and nothing unreadable.
fn has_certificates(pem: &[u8]) -> bool {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .is_ok_and(|v| !v.is_empty())
}

/// The `[tcp]` table, every file read and checked now (not at bind time), so that a
/// mistake is reported with the key that made it.
fn tcp(t: &TcpFile, base: Option<&Path>) -> Result<TcpServerConfig, ConfigError> {
    let mut c = TcpServerConfig::default();
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let cert_path = resolve(base, cert);
            let key_path = resolve(base, key);
            let cert_pem = read_file("tcp.cert", &cert_path)?;
            if !has_certificates(&cert_pem) {
                return Err(file_error(
                    "tcp.cert",
                    &cert_path,
                    "holds no PEM certificate",
                    None,
                ));
            }
            let key_pem = read_file("tcp.key", &key_path)?;
            if PrivateKeyDer::from_pem_slice(&key_pem).is_err() {
                return Err(file_error(
                    "tcp.key",
                    &key_path,
                    "holds no PEM private key",
                    None,
                ));
            }
            let mut tls = ServerTls::from_pem(cert_pem, key_pem);
            tls.build().map_err(|e| {
                file_error(
                    "tcp.key",
                    &key_path,
                    "cannot serve with the certificate of `tcp.cert`",
                    Some(Box::new(e)),
                )
            })?;
            if let Some(ca) = &t.client_ca {
                let ca_path = resolve(base, ca);
                let ca_pem = read_file("tcp.client_ca", &ca_path)?;
                if !has_certificates(&ca_pem) {
                    return Err(file_error(
                        "tcp.client_ca",
                        &ca_path,
                        "holds no PEM certificate",
                        None,
                    ));
                }
                tls = tls.with_client_ca_pem(ca_pem);
                tls.build().map_err(|e| {
                    file_error(
                        "tcp.client_ca",
                        &ca_path,
                        "cannot verify client certificates",
                        Some(Box::new(e)),
                    )
                })?;
            }
            c.tls = Some(tls);
        }
        (Some(_), None) => {
            return Err(out_of_range(
                "tcp.key",
                "missing",
                "set with `tcp.cert` (both or neither)",
            ))
        }
        (None, Some(_)) => {
            return Err(out_of_range(
                "tcp.cert",
                "missing",
                "set with `tcp.key` (both or neither)",
            ))
        }
        (None, None) => {
            if t.client_ca.is_some() {
                return Err(out_of_range(
                    "tcp.client_ca",
                    "set",
                    "set only with `tcp.cert` and `tcp.key` (client certificates need TLS)",
                ));
            }
        }
    }
    if let Some(p) = &t.token_file {
        let path = resolve(base, p);
        c.token = Some(Token::load(&path).map_err(|e| {
            file_error(
                "tcp.token_file",
                &path,
                "is not a usable token file",
                Some(Box::new(e)),
            )
        })?);
    }
    if let Some(b) = t.insecure_plaintext {
        c.insecure_plaintext = b;
    }
    match t.compression.as_deref() {
        None => {}
        Some("none") => c.compression = Compression::None,
        Some("lz4") => c.compression = Compression::Lz4,
        Some(other) => {
            return Err(out_of_range(
                "tcp.compression",
                format!("{other:?}"),
                "one of \"none\", \"lz4\"",
            ))
        }
    }
    if let Some(s) = &t.compress_above {
        c.compress_above = size("tcp.compress_above", s, 0, 1 << 30)? as usize;
    }
    if let Some(n) = t.max_connections {
        if !(1..=1_000_000).contains(&n) {
            return Err(out_of_range("tcp.max_connections", n, "from 1 to 1000000"));
        }
        c.max_connections = n as usize;
    }
    if let Some(n) = t.max_per_address {
        if !(1..=1_000_000).contains(&n) {
            return Err(out_of_range("tcp.max_per_address", n, "from 1 to 1000000"));
        }
        c.max_per_address = n as usize;
    }
    if let Some(d) = &t.frame_timeout {
        c.frame_timeout = duration(
            "tcp.frame_timeout",
            d,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
    }
    if let Some(d) = &t.idle_timeout {
        c.idle_timeout = Some(duration(
            "tcp.idle_timeout",
            d,
            Duration::from_millis(100),
            Duration::from_secs(24 * 3600),
        )?);
    }
    Ok(c)
}

impl ServerConfig {
    /// Settings from TOML text.
    ///
    /// Every key is optional (a missing one keeps [`ServerConfig::default`]); an unknown key, a
    /// wrong type or a value out of range is an error that names the key and what is allowed.
    ///
    /// ```
    /// use shmrpc::ServerConfig;
    ///
    /// let cfg = ServerConfig::from_toml(
    ///     r#"
    ///     ring_size = 131072          # bytes per ring, a power of two
    ///     max_in_flight = 64          # calls in flight per connection
    ///     max_message = "4 MiB"
    ///     heartbeat = "1s"
    ///     cancel_grace = "100ms"
    ///     wait = "spin-then-park"     # or "spin", "park"
    ///     spin = "20us"
    ///     allowed_uids = [1001]
    ///     max_handshakes = 32         # handshakes running at once
    ///     handshake_timeout = "2s"    # a client's time to acknowledge the handshake
    ///     metrics = true              # record metrics (needs the `metrics` feature)
    ///     "#,
    /// )?;
    /// assert_eq!(cfg.channel.capacity, 131072);
    ///
    /// let err = ServerConfig::from_toml("ring_size = 1000").unwrap_err();
    /// assert!(err.to_string().contains("ring_size"));
    /// # Ok::<(), shmrpc::ConfigError>(())
    /// ```
    ///
    /// The `[tcp]` table sets [`ServerConfig::tcp`], how
    /// [`bind_tcp`](super::ServerBuilder::bind_tcp) takes connections. Its files are read
    /// and checked here, not when the server binds; relative paths are taken from the
    /// current directory (from the file's directory with
    /// [`from_toml_file`](Self::from_toml_file)).
    ///
    /// ```toml
    /// [tcp]
    /// cert = "server.pem"         # TLS: certificate chain (PEM), with `key`
    /// key = "server.key"          # its private key (PEM)
    /// client_ca = "ca.pem"        # mutual TLS: client certificates must be signed by it
    /// token_file = "token"        # clients must prove this token (mode 0600, hex)
    /// insecure_plaintext = false  # allow plaintext on a non-loopback address
    /// compression = "lz4"         # or "none"
    /// compress_above = "1 KiB"    # compress larger frames (when negotiated)
    /// max_connections = 1024      # TCP connections at once
    /// max_per_address = 64        # the same, per peer IP address
    /// frame_timeout = "10s"       # a frame begun must arrive whole within this
    /// idle_timeout = "5m"         # close a connection idle this long (default: never)
    /// ```
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] for bad TOML, an unknown key or a wrong type (with the line);
    /// [`ConfigError::OutOfRange`] naming the key and the allowed range;
    /// [`ConfigError::File`] naming the key of a file that cannot be read or holds no usable
    /// certificate, key or token.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_in(text, None)
    }

    /// [`from_toml`](Self::from_toml), relative paths in `[tcp]` resolved against `base`
    /// (none: the current directory).
    fn from_toml_in(text: &str, base: Option<&Path>) -> Result<Self, ConfigError> {
        let f: File =
            toml::from_str(text).map_err(|source| ConfigError::Syntax { file: None, source })?;
        let mut cfg = ServerConfig::default();
        if let Some(r) = f.ring_size {
            if !crate::ring::valid_capacity(r) {
                return Err(out_of_range(
                    "ring_size",
                    r,
                    format!("a power of two from {MIN_CAPACITY} to {MAX_CAPACITY} bytes"),
                ));
            }
            cfg.channel.capacity = r as usize;
        }
        if let Some(n) = f.max_in_flight {
            if !(1..=65_536).contains(&n) {
                return Err(out_of_range("max_in_flight", n, "from 1 to 65536"));
            }
            cfg.max_in_flight = n as usize;
        }
        if let Some(m) = &f.max_message {
            cfg.max_message = size("max_message", m, 1024, 1 << 30)? as usize;
        }
        if let Some(h) = &f.heartbeat {
            cfg.heartbeat = duration(
                "heartbeat",
                h,
                Duration::from_millis(10),
                Duration::from_secs(3600),
            )?;
        }
        if let Some(g) = &f.cancel_grace {
            cfg.cancel_grace =
                duration("cancel_grace", g, Duration::ZERO, Duration::from_secs(60))?;
        }
        let spin = match &f.spin {
            Some(s) => Some(duration(
                "spin",
                s,
                Duration::from_micros(1),
                Duration::from_secs(1),
            )?),
            None => None,
        };
        match f.wait.as_deref() {
            None => {
                if let (Some(spin), WaitStrategy::SpinThenPark { .. }) = (spin, cfg.channel.wait) {
                    cfg.channel.wait = WaitStrategy::SpinThenPark { spin };
                }
            }
            Some("spin") => cfg.channel.wait = WaitStrategy::Spin,
            Some("park") => cfg.channel.wait = WaitStrategy::Park,
            Some("spin-then-park") => {
                let default = match WaitStrategy::default() {
                    WaitStrategy::SpinThenPark { spin } => spin,
                    _ => Duration::from_micros(50),
                };
                cfg.channel.wait = WaitStrategy::SpinThenPark {
                    spin: spin.unwrap_or(default),
                };
            }
            Some(other) => {
                return Err(out_of_range(
                    "wait",
                    format!("{other:?}"),
                    "one of \"spin\", \"spin-then-park\", \"park\"",
                ))
            }
        }
        if spin.is_some() && !matches!(cfg.channel.wait, WaitStrategy::SpinThenPark { .. }) {
            return Err(out_of_range(
                "spin",
                f.spin.unwrap_or_default(),
                "set only with wait = \"spin-then-park\"",
            ));
        }
        if let Some(u) = f.allowed_uids {
            cfg.channel.allowed_uids = u;
        }
        if let Some(n) = f.max_handshakes {
            if !(1..=4096).contains(&n) {
                return Err(out_of_range("max_handshakes", n, "from 1 to 4096"));
            }
            cfg.max_handshakes = n as usize;
        }
        if let Some(t) = &f.handshake_timeout {
            cfg.handshake_timeout = duration(
                "handshake_timeout",
                t,
                Duration::from_millis(10),
                Duration::from_secs(600),
            )?;
        }
        if let Some(m) = f.metrics {
            cfg.metrics = m;
        }
        if let Some(t) = &f.tcp {
            cfg.tcp = tcp(t, base)?;
        }
        // The largest message must fit the reassembly of at least one ring's worth.
        if cfg.max_message < cfg.channel.capacity / 2 {
            return Err(out_of_range(
                "max_message",
                cfg.max_message,
                format!(
                    "at least half the ring ({} bytes)",
                    cfg.channel.capacity / 2
                ),
            ));
        }
        Ok(cfg)
    }

    /// Settings from a TOML file (see [`from_toml`](Self::from_toml)). Relative paths in
    /// its `[tcp]` table are taken from the file's directory, so a configuration and its
    /// certificates can move together.
    ///
    /// # Errors
    /// [`ConfigError::Read`] if the file cannot be read; otherwise as `from_toml`, with
    /// the file's name in a syntax error.
    ///
    /// # Examples
    ///
    /// ```
    /// use shmrpc::{ConfigError, ServerConfig};
    ///
    /// let path = std::env::temp_dir().join(format!("doc-server-{}.toml", std::process::id()));
    /// std::fs::write(&path, "max_in_flight = 8\nheartbeat = \"500ms\"\n")?;
    /// let cfg = ServerConfig::from_toml_file(&path);
    /// std::fs::remove_file(&path)?;
    /// let cfg = cfg?;
    /// assert_eq!(cfg.max_in_flight, 8);
    /// assert_eq!(cfg.heartbeat, std::time::Duration::from_millis(500));
    ///
    /// // A missing file is an error naming the file.
    /// let err = ServerConfig::from_toml_file(&path).unwrap_err();
    /// assert!(matches!(err, ConfigError::Read { .. }));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_in(&text, path.parent()).map_err(|e| match e {
            ConfigError::Syntax { source, .. } => ConfigError::Syntax {
                file: Some(path.display().to_string()),
                source,
            },
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error and its sources, as a CLI prints them.
    fn err(text: &str) -> String {
        let e = ServerConfig::from_toml(text).unwrap_err();
        let mut s = e.to_string();
        let mut next = std::error::Error::source(&e);
        while let Some(c) = next {
            s = format!("{s}: {c}");
            next = c.source();
        }
        s
    }

    #[test]
    fn every_key_is_read() {
        let c = ServerConfig::from_toml(
            "ring_size = 4096\nmax_in_flight = 8\nmax_message = \"1 MiB\"\nheartbeat = \"250ms\"\n\
             cancel_grace = \"0s\"\nwait = \"spin-then-park\"\nspin = \"20us\"\nallowed_uids = [7, 8]\n\
             max_handshakes = 3\nhandshake_timeout = \"750ms\"",
        )
        .unwrap();
        assert_eq!(c.channel.capacity, 4096);
        assert_eq!(c.max_in_flight, 8);
        assert_eq!(c.max_message, 1 << 20);
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        assert_eq!(c.cancel_grace, Duration::ZERO);
        assert_eq!(
            c.channel.wait,
            WaitStrategy::SpinThenPark {
                spin: Duration::from_micros(20)
            }
        );
        assert_eq!(c.channel.allowed_uids, vec![7, 8]);
        assert_eq!(c.max_handshakes, 3);
        assert_eq!(c.handshake_timeout, Duration::from_millis(750));
        let park = ServerConfig::from_toml("wait = \"park\"").unwrap();
        assert_eq!(park.channel.wait, WaitStrategy::Park);
        let empty = ServerConfig::from_toml("").unwrap();
        assert_eq!(empty.max_in_flight, ServerConfig::default().max_in_flight);
    }

    #[test]
    fn errors_name_the_key_and_the_range() {
        let e = err("ring_size = 1000");
        assert!(
            e.contains("`ring_size` = 1000") && e.contains("power of two"),
            "{e}"
        );
        let e = err("max_in_flight = 0");
        assert!(
            e.contains("`max_in_flight`") && e.contains("from 1 to 65536"),
            "{e}"
        );
        let e = err("heartbeat = \"2\"");
        assert!(
            e.contains("`heartbeat`") && e.contains("like \"250ms\""),
            "{e}"
        );
        let e = err("heartbeat = \"1ms\"");
        assert!(e.contains("`heartbeat`") && e.contains("from 10ms"), "{e}");
        let e = err("max_message = \"3 furlongs\"");
        assert!(e.contains("`max_message`"), "{e}");
        let e = err("wait = \"nap\"");
        assert!(e.contains("`wait`") && e.contains("\"park\""), "{e}");
        let e = err("wait = \"park\"\nspin = \"10us\"");
        assert!(e.contains("`spin`"), "{e}");
        let e = err("ring_size = 1048576\nmax_message = 1024");
        assert!(
            e.contains("`max_message`") && e.contains("half the ring"),
            "{e}"
        );
        let e = err("rings = 4");
        assert!(e.contains("unknown field") && e.contains("rings"), "{e}");
        let e = err("max_handshakes = 0");
        assert!(
            e.contains("`max_handshakes`") && e.contains("from 1 to 4096"),
            "{e}"
        );
        let e = err("handshake_timeout = \"1h\"");
        assert!(e.contains("`handshake_timeout`"), "{e}");
        let e = err("max_in_flight = \"many\"");
        assert!(e.contains("max_in_flight"), "{e}");
    }

    /// A directory of its own for one test, removed when it ends.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(word: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("shmrpc-config-{}-{word}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A directory with `server.pem`, `server.key`, `ca.pem` (another self-signed
    /// certificate: enough for the verifier to be built) and `token` (mode 0600).
    fn tls_files(word: &str) -> (TempDir, Token) {
        let d = TempDir::new(word);
        let server = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        d.write("server.pem", &server.cert.pem());
        d.write("server.key", &server.signing_key.serialize_pem());
        let ca = rcgen::generate_simple_self_signed(vec!["ca".into()]).unwrap();
        d.write("ca.pem", &ca.cert.pem());
        let token = Token::generate().unwrap();
        token.write_new(d.0.join("token")).unwrap();
        (d, token)
    }

    /// The error of `text` read as the file `config.toml` in `d`, with its sources.
    fn file_err(d: &TempDir, text: &str) -> String {
        let path = d.write("config.toml", text);
        let e = ServerConfig::from_toml_file(&path).unwrap_err();
        let mut s = e.to_string();
        let mut next = std::error::Error::source(&e);
        while let Some(c) = next {
            s = format!("{s}: {c}");
            next = c.source();
        }
        s
    }

    #[test]
    fn every_tcp_key_is_read_with_paths_from_the_files_directory() {
        let (d, token) = tls_files("tcp-keys");
        let path = d.write(
            "config.toml",
            "[tcp]\ncert = \"server.pem\"\nkey = \"server.key\"\nclient_ca = \"ca.pem\"\n\
             token_file = \"token\"\ninsecure_plaintext = true\ncompression = \"lz4\"\n\
             compress_above = \"4 KiB\"\nmax_connections = 10\nmax_per_address = 2\n\
             frame_timeout = \"1500ms\"\nidle_timeout = \"2m\"\n",
        );
        let c = ServerConfig::from_toml_file(&path).unwrap().tcp;
        assert!(c.tls.as_ref().is_some_and(ServerTls::verifies_clients));
        assert_eq!(c.token, Some(token));
        assert!(c.insecure_plaintext);
        assert_eq!(c.compression, Compression::Lz4);
        assert_eq!(c.compress_above, 4096);
        assert_eq!(c.max_connections, 10);
        assert_eq!(c.max_per_address, 2);
        assert_eq!(c.frame_timeout, Duration::from_millis(1500));
        assert_eq!(c.idle_timeout, Some(Duration::from_secs(120)));
        assert!(c.authenticates());

        // Absolute paths from text; TLS without a client CA; compression off by name.
        let text = format!(
            "[tcp]\ncert = {:?}\nkey = {:?}\ncompression = \"none\"\n",
            d.0.join("server.pem"),
            d.0.join("server.key")
        );
        let c = ServerConfig::from_toml(&text).unwrap().tcp;
        assert!(c.tls.is_some_and(|t| !t.verifies_clients()));
        assert_eq!(c.compression, Compression::None);
        assert!(c.token.is_none());

        // No [tcp] table: the defaults.
        let c = ServerConfig::from_toml("").unwrap().tcp;
        assert!(c.tls.is_none() && c.token.is_none() && !c.insecure_plaintext);
        assert_eq!(c.idle_timeout, None);
    }

    #[test]
    fn tcp_errors_name_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let (d, _) = tls_files("tcp-errors");
        let tls = "[tcp]\ncert = \"server.pem\"\nkey = \"server.key\"\n";
        let bad = d.write("bad-token", "not a token\n");
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        let cases: Vec<(String, &[&str])> = vec![
            (
                "[tcp]\ncert = \"nope.pem\"\nkey = \"server.key\"".into(),
                &["`tcp.cert`", "nope.pem", "cannot be read", "No such file"],
            ),
            (
                "[tcp]\ncert = \"server.pem\"\nkey = \"nope.key\"".into(),
                &["`tcp.key`", "nope.key", "cannot be read"],
            ),
            (
                "[tcp]\ncert = \"server.key\"\nkey = \"server.key\"".into(),
                &["`tcp.cert`", "holds no PEM certificate"],
            ),
            (
                "[tcp]\ncert = \"server.pem\"\nkey = \"server.pem\"".into(),
                &["`tcp.key`", "holds no PEM private key"],
            ),
            (
                "[tcp]\ncert = \"server.pem\"".into(),
                &["`tcp.key`", "both or neither"],
            ),
            (
                "[tcp]\nkey = \"server.key\"".into(),
                &["`tcp.cert`", "both or neither"],
            ),
            (
                "[tcp]\nclient_ca = \"ca.pem\"".into(),
                &["`tcp.client_ca`", "need TLS"],
            ),
            (
                format!("{tls}client_ca = \"server.key\""),
                &["`tcp.client_ca`", "holds no PEM certificate"],
            ),
            (
                format!("{tls}client_ca = \"nope.pem\""),
                &["`tcp.client_ca`", "cannot be read"],
            ),
            (
                "[tcp]\ntoken_file = \"nope\"".into(),
                &["`tcp.token_file`", "nope"],
            ),
            (
                "[tcp]\ntoken_file = \"bad-token\"".into(),
                &["`tcp.token_file`", "hex digits"],
            ),
            (
                "[tcp]\ncompression = \"zstd\"".into(),
                &["`tcp.compression`", "\"lz4\""],
            ),
            (
                "[tcp]\ncompress_above = \"3 furlongs\"".into(),
                &["`tcp.compress_above`"],
            ),
            (
                "[tcp]\nmax_connections = 0".into(),
                &["`tcp.max_connections`", "from 1"],
            ),
            (
                "[tcp]\nmax_per_address = 0".into(),
                &["`tcp.max_per_address`", "from 1"],
            ),
            (
                "[tcp]\nframe_timeout = \"10\"".into(),
                &["`tcp.frame_timeout`", "like \"250ms\""],
            ),
            (
                "[tcp]\nframe_timeout = \"2ms\"".into(),
                &["`tcp.frame_timeout`", "from 10ms"],
            ),
            (
                "[tcp]\nidle_timeout = \"10ms\"".into(),
                &["`tcp.idle_timeout`", "from 100ms"],
            ),
            (
                "[tcp]\ninsecure_plaintext = \"yes\"".into(),
                &["insecure_plaintext"],
            ),
            (
                "[tcp]\ncertificate = \"server.pem\"".into(),
                &["unknown field", "certificate"],
            ),
        ];
        for (text, needles) in cases {
            let e = file_err(&d, &text);
            for n in needles {
                assert!(e.contains(n), "{text:?} gave {e:?}, lacking {n:?}");
            }
        }

        // A key that is not the certificate's.
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        d.write("other.key", &other.signing_key.serialize_pem());
        let e = file_err(&d, "[tcp]\ncert = \"server.pem\"\nkey = \"other.key\"");
        assert!(
            e.contains("`tcp.key`") && e.contains("certificate of `tcp.cert`"),
            "{e}"
        );

        // A token file others may read.
        let loose = d.0.join("loose-token");
        Token::generate().unwrap().write_new(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = file_err(&d, "[tcp]\ntoken_file = \"loose-token\"");
        assert!(
            e.contains("`tcp.token_file`") && e.contains("chmod 600"),
            "{e}"
        );
    }
}
