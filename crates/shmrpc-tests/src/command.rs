//! What the `peer` helper binary is asked to do: one [`PeerCommand`] variant per role, with
//! typed fields. The tests build a command and spawn it ([`spawn_peer!`](crate::spawn_peer));
//! the binary parses its command line back with [`PeerCommand::from_args`], so the two
//! sides cannot disagree on argument order.

use std::path::PathBuf;
use std::str::FromStr;

use shmrpc::channel::WaitStrategy;
use shmrpc::lowlevel::ring::End;
use thiserror::Error;

use crate::{parse_wait, wait_arg, SizeProfile};

/// How `echo-server` serves its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeMode {
    /// Blocking `recv`/`send` on the main thread.
    Blocking,
    /// `recv_async`/`send_async` on a current-thread tokio runtime.
    Async,
}

/// Where `rpc-server` listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcTarget {
    /// A shared-memory name (`shm:<name>` on the command line).
    Shm(String),
    /// TCP on 127.0.0.1, any free port (`tcp`); the `ready` line says which (`addr=`).
    Tcp,
}

/// Where a client dials: a shared-memory name (`shm:<name>`) or a TCP address
/// (`tcp:<addr>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcDial {
    /// A shared-memory server's name.
    Shm(String),
    /// A TCP server's address.
    Tcp(std::net::SocketAddr),
}

impl RpcDial {
    fn to_arg(&self) -> String {
        match self {
            RpcDial::Shm(name) => format!("shm:{name}"),
            RpcDial::Tcp(addr) => format!("tcp:{addr}"),
        }
    }

    fn parse(s: &str) -> Option<Self> {
        if let Some(name) = s.strip_prefix("shm:") {
            return Some(RpcDial::Shm(name.to_owned()));
        }
        s.strip_prefix("tcp:")?.parse().ok().map(RpcDial::Tcp)
    }
}

/// How `rpc-bad-server` misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadServerMode {
    /// Answers the first request with a frame of the next frame version.
    FrameVersion,
    /// Sends each client a handshake hello of the next version.
    HelloVersion,
}

/// What `perm-probe` tries (often as another user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Open an existing file for reading and writing.
    Open {
        /// The file.
        path: PathBuf,
    },
    /// Put a file of our own where a victim will look for its segment.
    SquatFile {
        /// Where.
        path: PathBuf,
    },
    /// Put a symlink there, to a file of the victim's.
    SquatSymlink {
        /// Where.
        path: PathBuf,
        /// What it points to.
        target: PathBuf,
    },
    /// Bind a listener (the runtime directory comes from the environment).
    Bind {
        /// The listener's name.
        name: String,
    },
}

/// One role of the `peer` binary and its parameters. Every role prints `ready ...` once set
/// up (see each variant), and those that stay around leave on `exit` or end of stdin.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerCommand {
    /// Answers each request with `transform(request)`, serving `conns` connections one
    /// after the other, then prints `done served=<total>`.
    EchoServer {
        /// Listener name.
        name: String,
        /// Blocking or async serving.
        mode: ServeMode,
        /// Wait strategy of the channel.
        wait: WaitStrategy,
        /// Connections to serve.
        conns: usize,
        /// Ring capacity in bytes.
        cap: usize,
    },
    /// Creates a ring segment, writes `n` records of [`RING_WRITER_PROFILE`], detaches and
    /// stays; `more <k>` on stdin appends `k` more through a re-attached producer.
    ///
    /// [`RING_WRITER_PROFILE`]: crate::RING_WRITER_PROFILE
    RingWriter {
        /// Segment name.
        name: String,
        /// Ring capacity in bytes.
        cap: usize,
        /// Records written before `ready`.
        n: u64,
        /// Stream seed.
        seed: u64,
    },
    /// Waits for `go`, then races `open_or_create` on the name and reports what it found.
    RaceOpen {
        /// Segment name.
        name: String,
        /// Segment size.
        size: usize,
    },
    /// Opens a segment holding a ring at offset 0 and attaches one end (`ready pid=<pid>`);
    /// `try <end>` on stdin attempts to attach an end and reports `attached end=..` or
    /// `refused end=.. holder=<pid>`.
    RingClaim {
        /// Segment name.
        name: String,
        /// Ring capacity in bytes.
        cap: usize,
        /// The end it holds.
        end: End,
    },
    /// Creates a segment, stamps its pid at offset 0 and holds it (`ready pid=<pid>`).
    HoldSegment {
        /// Segment name.
        name: String,
        /// Segment size.
        size: usize,
    },
    /// Binds a listener and holds it (`ready path=<socket path>`).
    Listen {
        /// Listener name.
        name: String,
    },
    /// Accepts one client and sends it `count` messages of the stream `(seed, profile)`.
    Stream {
        /// Listener name.
        name: String,
        /// Wait strategy of the channel.
        wait: WaitStrategy,
        /// Ring capacity in bytes.
        cap: usize,
        /// Messages to send.
        count: u64,
        /// Stream seed.
        seed: u64,
        /// Message sizes.
        profile: SizeProfile,
    },
    /// Accepts one client and sends it 16-byte messages until killed.
    Flood {
        /// Listener name.
        name: String,
        /// Wait strategy of the channel.
        wait: WaitStrategy,
        /// Ring capacity in bytes.
        cap: usize,
    },
    /// Accepts one client (`accepted`) and never reads from it.
    Sink {
        /// Listener name.
        name: String,
        /// Wait strategy of the channel.
        wait: WaitStrategy,
        /// Ring capacity in bytes.
        cap: usize,
    },
    /// Serves the test RPC routes (`echo`, `chat`, `slow`, `stats`, ...).
    RpcServer {
        /// Where to listen.
        target: RpcTarget,
        /// Ring capacity in bytes.
        cap: usize,
        /// Heartbeat interval in milliseconds.
        heartbeat_ms: u64,
        /// Largest message.
        max_message: usize,
        /// Calls in flight per connection (the server's default if `None`).
        max_in_flight: Option<usize>,
        /// How long a client may take over its handshake, in milliseconds (the server's
        /// default if `None`).
        handshake_timeout_ms: Option<u64>,
    },
    /// `clients` clients in this process, each making `calls` checked calls.
    RpcClients {
        /// Server name.
        name: String,
        /// Clients.
        clients: usize,
        /// Calls per client.
        calls: u64,
    },
    /// Starts `calls` calls that never answer (`calling n=<calls>`) and waits to be killed.
    RpcCaller {
        /// Server name.
        name: String,
        /// Calls to start.
        calls: usize,
    },
    /// A client that serves methods too: `client_double` (`u64` -> `("client", 2n + 1)`),
    /// `hang` (raw; prints `hanging` and never answers), `client_sum` (client-streaming
    /// `u64` items -> their count and [`sequence_checksum`](crate::sequence_checksum)) and
    /// `client_echo` (bidirectional, `n` -> `3n + 1`). Prints `ready pid=<pid>`; on `go`,
    /// makes `calls` concurrent calls of the server's `server_triple` (`u64` ->
    /// `("server", 3n)`), checks each answer and prints `calls ok=<n> bad=<n>`; on
    /// `streams`, streams `calls` items to the server's `server_sum` and through its
    /// `server_echo` (same shapes as its own) and prints `streams sum_count=<n>
    /// sum_ok=<bool> echo_count=<n> echo_ok=<bool>`; on `notes`, sends `calls`
    /// notifications `server_note` (`u64` 0, 1, ...) while reading `calls` of the server's
    /// `client_note` and prints `notes count=<n> sum=<checksum> in_order=<bool>`; leaves on
    /// `exit` or end of stdin.
    ///
    /// Held calls, for cancel and kill tests: it serves `client_hang_stream` (one `0u64`
    /// item, then open until cancelled), `client_hold_sum` (client-streaming, open after
    /// its first item until cancelled) and `client_hold_echo` (bidirectional, echoes its
    /// first item and stays open until cancelled), each printing `holding what=<shape>` once
    /// open and `cancelled what=<shape>` when cancelled. On `hold-calls` it opens the
    /// server's `server_hold_sum` and `server_hold_echo` with one item each (the echo read
    /// back), prints `holding-calls`, and on `drop` drops them and prints `dropped`. On
    /// `open-all` it opens `server_hang` (unary), `server_hang_stream` (first item read)
    /// and those two, leaves them open and prints `opened`.
    RpcServingClient {
        /// Where the server is.
        dial: RpcDial,
        /// Calls to make on `go`.
        calls: u64,
    },
    /// Sends each kind of malformed frame on a fresh connection and reports how it ended.
    RpcGarbage {
        /// Server name.
        name: String,
    },
    /// Run as another user: tries to reach our server directly and through a socket path.
    RpcForeign {
        /// Server name.
        name: String,
        /// The server's socket file.
        server_socket: PathBuf,
    },
    /// A server that speaks a newer protocol version.
    RpcBadServer {
        /// Listener name.
        name: String,
        /// Which version is wrong.
        mode: BadServerMode,
    },
    /// Attacks a connection through its shared memory, one way after the other.
    RpcHostile {
        /// Server name.
        name: String,
    },
    /// One file-permission probe; prints `probe what=.. result=.. message=..`.
    PermProbe {
        /// The probe.
        probe: Probe,
    },
    /// Keeps an RPC server busy in every way a kill can interrupt, until killed.
    ChaosClient {
        /// Server name.
        name: String,
        /// Seed of its choices.
        seed: u64,
    },
}

/// A command line the `peer` binary does not understand.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ArgsError {
    /// No role at all.
    #[error("no role given")]
    NoRole,
    /// The first argument is not a role.
    #[error("unknown role {0:?}")]
    UnknownRole(String),
    /// Too few arguments.
    #[error("{role}: missing <{what}>")]
    Missing {
        /// The role.
        role: &'static str,
        /// The missing argument.
        what: &'static str,
    },
    /// An argument that does not parse.
    #[error("{role}: <{what}> cannot be {value:?}")]
    Invalid {
        /// The role.
        role: &'static str,
        /// The argument.
        what: &'static str,
        /// What was given.
        value: String,
    },
    /// Too many arguments.
    #[error("{role}: unexpected arguments {extra:?}")]
    Extra {
        /// The role.
        role: &'static str,
        /// The arguments left over.
        extra: Vec<String>,
    },
}

/// Reads one role's arguments in order.
struct Args<'a> {
    role: &'static str,
    rest: std::slice::Iter<'a, String>,
}

impl Args<'_> {
    fn raw(&mut self, what: &'static str) -> Result<&str, ArgsError> {
        self.rest
            .next()
            .map(String::as_str)
            .ok_or(ArgsError::Missing {
                role: self.role,
                what,
            })
    }

    fn with<T>(
        &mut self,
        what: &'static str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<T, ArgsError> {
        let role = self.role;
        let s = self.raw(what)?;
        parse(s).ok_or_else(|| ArgsError::Invalid {
            role,
            what,
            value: s.to_owned(),
        })
    }

    fn num<T: FromStr>(&mut self, what: &'static str) -> Result<T, ArgsError> {
        self.with(what, |s| s.parse().ok())
    }

    fn string(&mut self, what: &'static str) -> Result<String, ArgsError> {
        self.raw(what).map(str::to_owned)
    }

    /// An optional `key=value` argument: `None` if the next argument is not `key=...`.
    fn option<T: FromStr>(&mut self, key: &'static str) -> Result<Option<T>, ArgsError> {
        let Some(value) = self
            .rest
            .as_slice()
            .first()
            .and_then(|a| a.strip_prefix(key)?.strip_prefix('='))
        else {
            return Ok(None);
        };
        self.rest.next();
        value.parse().map(Some).map_err(|_| ArgsError::Invalid {
            role: self.role,
            what: key,
            value: value.to_owned(),
        })
    }

    fn wait(&mut self) -> Result<WaitStrategy, ArgsError> {
        self.with("wait", parse_wait)
    }

    fn end(mut self) -> Result<(), ArgsError> {
        let extra: Vec<String> = self.rest.by_ref().cloned().collect();
        if extra.is_empty() {
            Ok(())
        } else {
            Err(ArgsError::Extra {
                role: self.role,
                extra,
            })
        }
    }
}

/// One line per role, for the usage message.
pub const USAGE: &str = "\
usage: peer <role> <arguments>
  echo-server <name> <blocking|async> <wait> <conns> <cap>
  ring-writer <name> <cap> <n> <seed>              (stdin: \"more <k>\", \"exit\")
  race-open <name> <size>                          (stdin: \"go\", then \"exit\")
  ring-claim <name> <cap> <producer|consumer>      (stdin: \"try <end>\", \"exit\")
  hold-segment <name> <size>
  listen <name>
  stream <name> <wait> <cap> <count> <seed> <profile>
  flood <name> <wait> <cap>
  sink <name> <wait> <cap>
  rpc-server <shm:NAME|tcp> <cap> <heartbeat-ms> <max-message>
             [max-in-flight=<n>] [handshake-timeout-ms=<ms>]
  rpc-clients <name> <clients> <calls>             (stdin: \"check\", \"exit\")
  rpc-caller <name> <calls>
  rpc-serving-client <shm:NAME|tcp:ADDR> <calls> (stdin: \"go\", \"streams\", \"hold-calls\", \"drop\", \"open-all\", \"exit\")
  rpc-garbage <name>
  rpc-foreign <name> <server-socket-path>          (run as another user)
  rpc-bad-server <name> <frame-version|hello-version>
  rpc-hostile <name>
  perm-probe <open|squat-file> <path> | squat-symlink <path> <target> | bind <name>
  chaos-client <name> <seed>
<wait>: spin, park, stp (spin 50 µs, then park) or stp:<µs>
<profile>: mixed:<max> or large:<lo>:<max>";

/// Every role name, in [`USAGE`] order.
pub const ROLES: [&str; 19] = [
    "echo-server",
    "ring-writer",
    "race-open",
    "ring-claim",
    "hold-segment",
    "listen",
    "stream",
    "flood",
    "sink",
    "rpc-server",
    "rpc-clients",
    "rpc-caller",
    "rpc-serving-client",
    "rpc-garbage",
    "rpc-foreign",
    "rpc-bad-server",
    "rpc-hostile",
    "perm-probe",
    "chaos-client",
];

fn path_arg(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

impl PeerCommand {
    /// An RPC server at `target` with the settings most tests want: 64 KiB rings, 2 s
    /// heartbeats (far from any test's waits), 16 MiB messages, the server's defaults for
    /// the rest.
    pub fn rpc_server(target: RpcTarget) -> Self {
        Self::RpcServer {
            target,
            cap: 65536,
            heartbeat_ms: 2000,
            max_message: 16 << 20,
            max_in_flight: None,
            handshake_timeout_ms: None,
        }
    }

    /// A command running `exe` (the `peer` binary) in this role.
    pub fn command(&self, exe: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new(exe);
        cmd.args(self.to_args());
        cmd
    }

    /// The role's name: the first command-line argument.
    pub fn role(&self) -> &'static str {
        match self {
            Self::EchoServer { .. } => "echo-server",
            Self::RingWriter { .. } => "ring-writer",
            Self::RaceOpen { .. } => "race-open",
            Self::RingClaim { .. } => "ring-claim",
            Self::HoldSegment { .. } => "hold-segment",
            Self::Listen { .. } => "listen",
            Self::Stream { .. } => "stream",
            Self::Flood { .. } => "flood",
            Self::Sink { .. } => "sink",
            Self::RpcServer { .. } => "rpc-server",
            Self::RpcClients { .. } => "rpc-clients",
            Self::RpcCaller { .. } => "rpc-caller",
            Self::RpcServingClient { .. } => "rpc-serving-client",
            Self::RpcGarbage { .. } => "rpc-garbage",
            Self::RpcForeign { .. } => "rpc-foreign",
            Self::RpcBadServer { .. } => "rpc-bad-server",
            Self::RpcHostile { .. } => "rpc-hostile",
            Self::PermProbe { .. } => "perm-probe",
            Self::ChaosClient { .. } => "chaos-client",
        }
    }

    /// The command line (without the program) that [`from_args`](Self::from_args) reads
    /// back as `self`. Paths must be UTF-8, and wait strategies whole microseconds.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![self.role().to_owned()];
        let s = |v: &dyn ToString| v.to_string();
        match self {
            Self::EchoServer {
                name,
                mode,
                wait,
                conns,
                cap,
            } => {
                let mode = match mode {
                    ServeMode::Blocking => "blocking",
                    ServeMode::Async => "async",
                };
                a.extend([s(name), s(&mode), wait_arg(*wait), s(conns), s(cap)]);
            }
            Self::RingWriter { name, cap, n, seed } => a.extend([s(name), s(cap), s(n), s(seed)]),
            Self::RaceOpen { name, size } | Self::HoldSegment { name, size } => {
                a.extend([s(name), s(size)]);
            }
            Self::RingClaim { name, cap, end } => a.extend([s(name), s(cap), s(end)]),
            Self::Listen { name } | Self::RpcGarbage { name } | Self::RpcHostile { name } => {
                a.push(s(name))
            }
            Self::Stream {
                name,
                wait,
                cap,
                count,
                seed,
                profile,
            } => a.extend([
                s(name),
                wait_arg(*wait),
                s(cap),
                s(count),
                s(seed),
                profile.to_arg(),
            ]),
            Self::Flood { name, wait, cap } | Self::Sink { name, wait, cap } => {
                a.extend([s(name), wait_arg(*wait), s(cap)]);
            }
            Self::RpcServer {
                target,
                cap,
                heartbeat_ms,
                max_message,
                max_in_flight,
                handshake_timeout_ms,
            } => {
                a.push(match target {
                    RpcTarget::Shm(name) => format!("shm:{name}"),
                    RpcTarget::Tcp => "tcp".to_owned(),
                });
                a.extend([s(cap), s(heartbeat_ms), s(max_message)]);
                a.extend(max_in_flight.map(|m| format!("max-in-flight={m}")));
                a.extend(handshake_timeout_ms.map(|t| format!("handshake-timeout-ms={t}")));
            }
            Self::RpcClients {
                name,
                clients,
                calls,
            } => a.extend([s(name), s(clients), s(calls)]),
            Self::RpcCaller { name, calls } => a.extend([s(name), s(calls)]),
            Self::RpcServingClient { dial, calls } => a.extend([dial.to_arg(), s(calls)]),
            Self::RpcForeign {
                name,
                server_socket,
            } => a.extend([s(name), path_arg(server_socket)]),
            Self::RpcBadServer { name, mode } => {
                let mode = match mode {
                    BadServerMode::FrameVersion => "frame-version",
                    BadServerMode::HelloVersion => "hello-version",
                };
                a.extend([s(name), s(&mode)]);
            }
            Self::PermProbe { probe } => match probe {
                Probe::Open { path } => a.extend(["open".to_owned(), path_arg(path)]),
                Probe::SquatFile { path } => {
                    a.extend(["squat-file".to_owned(), path_arg(path)]);
                }
                Probe::SquatSymlink { path, target } => {
                    a.extend(["squat-symlink".to_owned(), path_arg(path), path_arg(target)])
                }
                Probe::Bind { name } => a.extend(["bind".to_owned(), s(name)]),
            },
            Self::ChaosClient { name, seed } => a.extend([s(name), s(seed)]),
        }
        a
    }

    /// Parses a command line (without the program): the role, then its arguments.
    ///
    /// # Errors
    /// An unknown role, or a missing, unparsable or extra argument.
    pub fn from_args(args: &[String]) -> Result<Self, ArgsError> {
        let (first, rest) = args.split_first().ok_or(ArgsError::NoRole)?;
        let role = ROLES
            .iter()
            .copied()
            .find(|r| r == first)
            .ok_or_else(|| ArgsError::UnknownRole(first.clone()))?;
        let mut a = Args {
            role,
            rest: rest.iter(),
        };
        let cmd = match role {
            "echo-server" => Self::EchoServer {
                name: a.string("name")?,
                mode: a.with("mode", |m| match m {
                    "blocking" => Some(ServeMode::Blocking),
                    "async" => Some(ServeMode::Async),
                    _ => None,
                })?,
                wait: a.wait()?,
                conns: a.num("conns")?,
                cap: a.num("cap")?,
            },
            "ring-writer" => Self::RingWriter {
                name: a.string("name")?,
                cap: a.num("cap")?,
                n: a.num("n")?,
                seed: a.num("seed")?,
            },
            "race-open" => Self::RaceOpen {
                name: a.string("name")?,
                size: a.num("size")?,
            },
            "ring-claim" => Self::RingClaim {
                name: a.string("name")?,
                cap: a.num("cap")?,
                end: a.with("producer|consumer", |e| match e {
                    "producer" => Some(End::Producer),
                    "consumer" => Some(End::Consumer),
                    _ => None,
                })?,
            },
            "hold-segment" => Self::HoldSegment {
                name: a.string("name")?,
                size: a.num("size")?,
            },
            "listen" => Self::Listen {
                name: a.string("name")?,
            },
            "stream" => Self::Stream {
                name: a.string("name")?,
                wait: a.wait()?,
                cap: a.num("cap")?,
                count: a.num("count")?,
                seed: a.num("seed")?,
                profile: a.with("profile", SizeProfile::parse)?,
            },
            "flood" => Self::Flood {
                name: a.string("name")?,
                wait: a.wait()?,
                cap: a.num("cap")?,
            },
            "sink" => Self::Sink {
                name: a.string("name")?,
                wait: a.wait()?,
                cap: a.num("cap")?,
            },
            "rpc-server" => Self::RpcServer {
                target: a.with("shm:NAME|tcp", |t| match t {
                    "tcp" => Some(RpcTarget::Tcp),
                    _ => Some(RpcTarget::Shm(t.strip_prefix("shm:")?.to_owned())),
                })?,
                cap: a.num("cap")?,
                heartbeat_ms: a.num("heartbeat-ms")?,
                max_message: a.num("max-message")?,
                max_in_flight: a.option("max-in-flight")?,
                handshake_timeout_ms: a.option("handshake-timeout-ms")?,
            },
            "rpc-clients" => Self::RpcClients {
                name: a.string("name")?,
                clients: a.num("clients")?,
                calls: a.num("calls")?,
            },
            "rpc-caller" => Self::RpcCaller {
                name: a.string("name")?,
                calls: a.num("calls")?,
            },
            "rpc-serving-client" => Self::RpcServingClient {
                dial: a.with("shm:NAME|tcp:ADDR", RpcDial::parse)?,
                calls: a.num("calls")?,
            },
            "rpc-garbage" => Self::RpcGarbage {
                name: a.string("name")?,
            },
            "rpc-foreign" => Self::RpcForeign {
                name: a.string("name")?,
                server_socket: a.string("server-socket-path")?.into(),
            },
            "rpc-bad-server" => Self::RpcBadServer {
                name: a.string("name")?,
                mode: a.with("mode", |m| match m {
                    "frame-version" => Some(BadServerMode::FrameVersion),
                    "hello-version" => Some(BadServerMode::HelloVersion),
                    _ => None,
                })?,
            },
            "rpc-hostile" => Self::RpcHostile {
                name: a.string("name")?,
            },
            "perm-probe" => {
                let probe = match a.string("probe")?.as_str() {
                    "open" => Probe::Open {
                        path: a.string("path")?.into(),
                    },
                    "squat-file" => Probe::SquatFile {
                        path: a.string("path")?.into(),
                    },
                    "squat-symlink" => Probe::SquatSymlink {
                        path: a.string("path")?.into(),
                        target: a.string("target")?.into(),
                    },
                    "bind" => Probe::Bind {
                        name: a.string("name")?,
                    },
                    other => {
                        return Err(ArgsError::Invalid {
                            role,
                            what: "probe",
                            value: other.to_owned(),
                        })
                    }
                };
                Self::PermProbe { probe }
            }
            "chaos-client" => Self::ChaosClient {
                name: a.string("name")?,
                seed: a.num("seed")?,
            },
            _ => unreachable!("every name in ROLES is handled"),
        };
        a.end()?;
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One command per role, with values that are not the parser's defaults.
    fn one_of_each() -> Vec<PeerCommand> {
        use PeerCommand::*;
        let name = || "xp-name-1".to_owned();
        let stp = WaitStrategy::SpinThenPark {
            spin: Duration::from_micros(75),
        };
        vec![
            EchoServer {
                name: name(),
                mode: ServeMode::Async,
                wait: stp,
                conns: 2,
                cap: 4096,
            },
            RingWriter {
                name: name(),
                cap: 8192,
                n: 33,
                seed: u64::MAX,
            },
            RaceOpen {
                name: name(),
                size: 4096,
            },
            RingClaim {
                name: name(),
                cap: 4096,
                end: End::Consumer,
            },
            HoldSegment {
                name: name(),
                size: 123,
            },
            Listen { name: name() },
            Stream {
                name: name(),
                wait: WaitStrategy::Spin,
                cap: 65536,
                count: 1000,
                seed: 9,
                profile: SizeProfile::Large { lo: 100, max: 200 },
            },
            Flood {
                name: name(),
                wait: WaitStrategy::Park,
                cap: 1024,
            },
            Sink {
                name: name(),
                wait: stp,
                cap: 4096,
            },
            RpcServer {
                target: RpcTarget::Shm("tcp".into()),
                cap: 65536,
                heartbeat_ms: 300,
                max_message: 1 << 20,
                max_in_flight: Some(4),
                handshake_timeout_ms: Some(600_000),
            },
            RpcClients {
                name: name(),
                clients: 3,
                calls: 10,
            },
            RpcCaller {
                name: name(),
                calls: 2,
            },
            RpcServingClient {
                dial: RpcDial::Shm(name()),
                calls: 7,
            },
            RpcGarbage { name: name() },
            RpcForeign {
                name: name(),
                server_socket: "/run/user/0/shmrpc/a b.sock".into(),
            },
            RpcBadServer {
                name: name(),
                mode: BadServerMode::HelloVersion,
            },
            RpcHostile { name: name() },
            PermProbe {
                probe: Probe::SquatSymlink {
                    path: "/dev/shm/x".into(),
                    target: "/etc/passwd".into(),
                },
            },
            ChaosClient {
                name: name(),
                seed: 42,
            },
        ]
    }

    #[test]
    fn every_role_round_trips_through_its_command_line() {
        let all = one_of_each();
        let roles: Vec<&str> = all.iter().map(PeerCommand::role).collect();
        assert_eq!(roles, ROLES, "one example per role, in ROLES order");
        let more = [
            PeerCommand::RpcServingClient {
                dial: RpcDial::Tcp("127.0.0.1:4567".parse().unwrap()),
                calls: 1000,
            },
            PeerCommand::RpcServer {
                target: RpcTarget::Tcp,
                cap: 1,
                heartbeat_ms: 2,
                max_message: 3,
                max_in_flight: None,
                handshake_timeout_ms: None,
            },
            PeerCommand::RpcServer {
                target: RpcTarget::Tcp,
                cap: 1,
                heartbeat_ms: 2,
                max_message: 3,
                max_in_flight: None,
                handshake_timeout_ms: Some(5),
            },
            PeerCommand::RingClaim {
                name: "r".into(),
                cap: 64,
                end: End::Producer,
            },
            PeerCommand::Stream {
                name: "s".into(),
                wait: WaitStrategy::default(),
                cap: 1,
                count: 0,
                seed: 0,
                profile: SizeProfile::Mixed { max: 64 },
            },
            PeerCommand::PermProbe {
                probe: Probe::Open { path: "/x".into() },
            },
            PeerCommand::PermProbe {
                probe: Probe::SquatFile { path: "/y".into() },
            },
            PeerCommand::PermProbe {
                probe: Probe::Bind { name: "n".into() },
            },
            PeerCommand::EchoServer {
                name: "e".into(),
                mode: ServeMode::Blocking,
                wait: WaitStrategy::Spin,
                conns: 1,
                cap: 2,
            },
            PeerCommand::RpcBadServer {
                name: "b".into(),
                mode: BadServerMode::FrameVersion,
            },
        ];
        for cmd in all.iter().chain(&more) {
            let args = cmd.to_args();
            assert_eq!(args[0], cmd.role());
            assert_eq!(PeerCommand::from_args(&args).as_ref(), Ok(cmd), "{args:?}");
        }
        assert!(ROLES.iter().all(|r| USAGE.contains(&format!("  {r} "))));
    }

    fn parse(args: &[&str]) -> Result<PeerCommand, ArgsError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        PeerCommand::from_args(&args)
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong() {
        assert_eq!(parse(&[]), Err(ArgsError::NoRole));
        assert_eq!(
            parse(&["fly", "x"]),
            Err(ArgsError::UnknownRole("fly".into()))
        );
        assert_eq!(
            parse(&["flood", "n", "stp"]),
            Err(ArgsError::Missing {
                role: "flood",
                what: "cap"
            })
        );
        let e = parse(&["flood", "n", "slow", "4096"]).unwrap_err();
        assert_eq!(e.to_string(), "flood: <wait> cannot be \"slow\"");
        assert_eq!(
            parse(&["listen", "n", "extra"]),
            Err(ArgsError::Extra {
                role: "listen",
                extra: vec!["extra".into()]
            })
        );
        assert!(matches!(
            parse(&["rpc-server", "name", "1", "2", "3"]),
            Err(ArgsError::Invalid {
                what: "shm:NAME|tcp",
                ..
            })
        ));
        assert!(matches!(
            parse(&["rpc-server", "tcp", "1", "2", "3", "max-in-flight=x"]),
            Err(ArgsError::Invalid {
                what: "max-in-flight",
                ..
            })
        ));
        assert!(matches!(
            parse(&["rpc-server", "tcp", "1", "2", "3", "4"]),
            Err(ArgsError::Extra { .. })
        ));
        assert!(matches!(
            parse(&["ring-claim", "r", "64", "both"]),
            Err(ArgsError::Invalid {
                what: "producer|consumer",
                ..
            })
        ));
        assert!(matches!(
            parse(&["perm-probe", "chmod", "/x"]),
            Err(ArgsError::Invalid { what: "probe", .. })
        ));
    }
}
