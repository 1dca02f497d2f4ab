//! A server's settings, also from a TOML file.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

use super::net::TcpServerConfig;
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
    /// # Errors
    /// [`ConfigError::Syntax`] for bad TOML, an unknown key or a wrong type (with the line);
    /// [`ConfigError::OutOfRange`] naming the key and the allowed range.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
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

    /// Settings from a TOML file (see [`from_toml`](Self::from_toml)).
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
        Self::from_toml(&text).map_err(|e| match e {
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
}
