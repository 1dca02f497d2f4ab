//! The benchmark's errors: what failed, with the underlying error as its source. No
//! message repeats its source's text, so a printer of the whole chain (`{:#}` of `anyhow`)
//! shows each cause once.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use shmrpc::channel::{self, TryRecvError, TrySendError};
use shmrpc::lowlevel::frame::FrameError;
use shmrpc::lowlevel::sys::{self, names::NameError};
use shmrpc::RpcError;
use thiserror::Error;

use crate::stats::fmt_size;

/// The crate's results.
pub(crate) type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Why [`run`](crate::run) or [`peer`](crate::peer) (or one of the public helpers) failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The options given cannot make a run.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The peers file (`--peers`) is not one.
    #[error("peers file {}", .path.display())]
    PeersFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: PeersFileError,
    },
    /// Reading a file failed (the peers file, a process's `/proc` files).
    #[error("reading {}", .path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Pinning this process to a CPU failed.
    #[error("pinning to CPU {cpu}")]
    Pin {
        /// The CPU.
        cpu: usize,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A child process (the peer, the idle server) could not be started.
    #[error("starting {command}")]
    Spawn {
        /// Its command line.
        command: String,
        /// Why.
        #[source]
        source: shmrpc_harness::SpawnError,
    },
    /// A command could not be sent to a child process (it is gone).
    #[error(transparent)]
    ChildSend(#[from] shmrpc_harness::SendError),
    /// A child process did not answer as expected (it hung, died or reported an error).
    #[error(transparent)]
    ChildRecv(#[from] shmrpc_harness::RecvError),
    /// A child process did not exit within its bound.
    #[error(transparent)]
    ChildWait(#[from] shmrpc_harness::WaitError),
    /// A child process exited unsuccessfully.
    #[error("{child} exited with {status}")]
    ChildExit {
        /// Which.
        child: String,
        /// How.
        status: ExitStatus,
    },
    /// A line on the control pipe between the two processes is not what the protocol
    /// allows there.
    #[error("control protocol: expected {expected}, got {}", got_text(.got))]
    Protocol {
        /// What the protocol allows.
        expected: String,
        /// The line that came (`None`: the end of the input).
        got: Option<String>,
    },
    /// Setting up or using a segment, channel or frame of the shmrpc library failed.
    #[error("{what}")]
    Shmrpc {
        /// What was being done.
        what: String,
        /// The library's error (boxed: the TCP transport's errors made it the largest
        /// variant by far, and every bench function returns this type).
        #[source]
        source: Box<ShmrpcError>,
    },
    /// An RPC call (or connecting to the RPC server) failed.
    #[error("{what}")]
    Rpc {
        /// Which call.
        what: String,
        /// The call's error.
        #[source]
        source: RpcError,
    },
    /// A system call or socket operation failed (the byte-stream baselines, the runtime,
    /// the control pipe).
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A spin or futex wait passed its watchdog bound, or the lead process died.
    #[error(transparent)]
    Deadline(#[from] shmrpc_harness::Expired),
    /// Something was not done within its bound.
    #[error("{what}: not done within {limit:?}")]
    TimedOut {
        /// What.
        what: String,
        /// The bound.
        limit: Duration,
    },
    /// A transport delivered wrong, missing or extra data (every message is checked).
    #[error("{0}")]
    WrongData(String),
    /// Making, writing or reading the run's token failed.
    #[error("{what} the token")]
    Token {
        /// "making", "writing" or "reading".
        what: &'static str,
        /// The library's error.
        #[source]
        source: shmrpc::TokenError,
    },
    /// Making the run's TLS certificates failed.
    #[error("making {what}")]
    Certificate {
        /// What was being made.
        what: &'static str,
        /// The generator's error.
        #[source]
        source: rcgen::Error,
    },
    /// A thread or task of the benchmark panicked or was cancelled.
    #[error("{what} panicked or was cancelled")]
    Task {
        /// Which.
        what: &'static str,
        /// The task's error (`None`: a thread, whose panic carries none).
        #[source]
        source: Option<tokio::task::JoinError>,
    },
    /// Files were left behind after the run (sockets, segments, lock files).
    #[error("left behind: {}", list(.0))]
    LeftBehind(Vec<PathBuf>),
    /// The run's own set-up does not fit what a case asks for (a bug of the benchmark,
    /// not of the options or of a transport).
    #[error("{0}")]
    Inconsistent(String),
    /// A case failed.
    #[error("{case}{}", if *.warmup { " (warm-up)" } else { "" })]
    Case {
        /// Its id.
        case: String,
        /// Whether in the discarded warm-up round.
        warmup: bool,
        /// Why.
        #[source]
        source: Box<BenchError>,
    },
}

fn got_text(got: &Option<String>) -> String {
    match got {
        Some(line) => format!("{line:?}"),
        None => "the end of the input".to_owned(),
    }
}

fn list(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

impl BenchError {
    /// Wraps an error of the shmrpc library with what was being done.
    pub(crate) fn shmrpc<E: Into<ShmrpcError>>(what: impl Into<String>) -> impl FnOnce(E) -> Self {
        move |e| Self::Shmrpc {
            what: what.into(),
            source: Box::new(e.into()),
        }
    }

    /// Wraps an I/O error with what was being done.
    pub(crate) fn io<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> Self {
        move |e| Self::Io {
            what: what.into(),
            source: e.into(),
        }
    }

    /// Wraps an RPC error with the call.
    pub(crate) fn rpc(what: impl Into<String>) -> impl FnOnce(RpcError) -> Self {
        move |source| Self::Rpc {
            what: what.into(),
            source,
        }
    }

    /// This error, as the failure of case `case`.
    pub(crate) fn in_case(self, case: &str, warmup: bool) -> Self {
        Self::Case {
            case: case.to_owned(),
            warmup,
            source: Box::new(self),
        }
    }

    /// A control line that is not what the protocol allows.
    pub(crate) fn protocol(expected: impl Into<String>, got: Option<&str>) -> Self {
        Self::Protocol {
            expected: expected.into(),
            got: got.map(str::to_owned),
        }
    }
}

/// Options that cannot make a run.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionsError {
    /// A ring capacity that the channel does not accept.
    #[error("{option} {value}: not a valid ring capacity (a power of two, at least 128)")]
    RingCapacity {
        /// The option (`--small-ring`, …).
        option: &'static str,
        /// Its value.
        value: usize,
    },
    /// A number of copy-floor buffers out of range.
    #[error("--copy-slots {0}: must be in 1..={max}", max = crate::raw::MAX_COPY_SLOTS)]
    CopySlots(usize),
    /// `--only` selects nothing.
    #[error("--only {0:?} matches no case")]
    NothingSelected(Vec<String>),
    /// A selected case's messages do not fit in the ring its channel gets.
    #[error(
        "{case}: a ring of {} cannot carry {} messages{}; give a bigger ring",
        fmt_size(*.ring),
        fmt_size(*.size),
        if *.two_at_a_time { " two at a time" } else { "" }
    )]
    RingTooSmall {
        /// The case.
        case: String,
        /// The ring's capacity.
        ring: usize,
        /// The message size.
        size: usize,
        /// Whether the case needs two messages in the ring at once (a stream).
        two_at_a_time: bool,
    },
    /// The peer process was started without its sockets.
    #[error("{} needs --sock and --tcp-port", crate::PEER_SUBCOMMAND)]
    PeerSockets,
}

/// What is wrong with a peers file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PeersFileError {
    /// It does not parse.
    #[error("not JSON")]
    Json(#[source] serde_json::Error),
    /// It parses, but a field is missing or wrong (the message says which).
    #[error("{0}")]
    Invalid(String),
}

/// An error of the shmrpc library, by the operation that returned it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ShmrpcError {
    /// Creating a segment.
    #[error(transparent)]
    CreateSegment(#[from] sys::CreateError),
    /// Opening a segment.
    #[error(transparent)]
    OpenSegment(#[from] sys::OpenError),
    /// A segment name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// Binding a channel listener.
    #[error(transparent)]
    Bind(#[from] channel::BindError),
    /// Accepting a channel connection.
    #[error(transparent)]
    Accept(#[from] channel::AcceptError),
    /// Connecting a channel.
    #[error(transparent)]
    Connect(#[from] channel::ConnectError),
    /// Binding an RPC server.
    #[error(transparent)]
    RpcBind(#[from] shmrpc::BindError),
    /// Connecting an RPC client.
    #[error(transparent)]
    RpcConnect(#[from] shmrpc::ConnectError),
    /// A blocking or async send.
    #[error(transparent)]
    Send(#[from] channel::SendError),
    /// A blocking or async receive.
    #[error(transparent)]
    Recv(#[from] channel::RecvError),
    /// Reserving room in a ring without waiting.
    #[error(transparent)]
    TrySend(#[from] TrySendError),
    /// Receiving without waiting.
    #[error(transparent)]
    TryRecv(#[from] TryRecvError),
    /// Encoding or decoding a frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// Every message of a chain, outermost first.
    fn chain(e: &(dyn std::error::Error + 'static)) -> Vec<String> {
        let mut v = vec![e.to_string()];
        let mut s = e.source();
        while let Some(c) = s {
            v.push(c.to_string());
            s = c.source();
        }
        v
    }

    #[test]
    fn a_chain_shows_each_cause_once() {
        let io = io::Error::new(io::ErrorKind::ConnectionReset, "peer reset");
        let e = BenchError::Case {
            case: "rtt.baseline.uds.64".into(),
            warmup: true,
            source: Box::new(BenchError::io("read")(io)),
        };
        assert_eq!(
            chain(&e),
            ["rtt.baseline.uds.64 (warm-up)", "read", "peer reset"]
        );
        let e = BenchError::protocol("\"quit\"", None);
        assert_eq!(
            e.to_string(),
            "control protocol: expected \"quit\", got the end of the input"
        );
        assert!(e.source().is_none());
    }
}
