//! Control commands from the lead (parent) process to the peer, one text line each.

use std::fmt;
use std::str::FromStr;

use shmrpc::channel::WaitStrategy;

pub use super::link::Link;
pub use super::rpc::ServerKind;
use crate::BenchError;

/// How both ends of a channel wait, and whether they run as tokio tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// `WaitStrategy::Spin`, blocking calls.
    Spin,
    /// `WaitStrategy::SpinThenPark` (the default budget), blocking calls.
    SpinThenPark,
    /// `WaitStrategy::Park`, blocking calls.
    Park,
    /// Tokio tasks (`send_async`/`recv_async`), spin-then-park.
    Async,
    /// Tokio tasks, park.
    AsyncPark,
}

impl Mode {
    /// Every mode.
    pub const ALL: [Mode; 5] = [
        Mode::Spin,
        Mode::SpinThenPark,
        Mode::Park,
        Mode::Async,
        Mode::AsyncPark,
    ];

    /// Short name, used in socket names and commands.
    pub fn short(self) -> &'static str {
        match self {
            Mode::Spin => "spin",
            Mode::SpinThenPark => "stp",
            Mode::Park => "park",
            Mode::Async => "async",
            Mode::AsyncPark => "async-park",
        }
    }

    /// Name in the JSON and the chart (`mode`).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Spin => "spin",
            Mode::SpinThenPark => "spin-then-park",
            Mode::Park => "park",
            Mode::Async => "async",
            Mode::AsyncPark => "async-park",
        }
    }

    /// The word of case ids (`rtt.shmrpc.<id>`).
    pub fn id(self) -> &'static str {
        match self {
            Mode::Spin => "spin",
            Mode::SpinThenPark => "spin_then_park",
            Mode::Park => "park",
            Mode::Async => "async",
            Mode::AsyncPark => "async_park",
        }
    }

    /// The wait strategy of both ends.
    pub fn wait(self) -> WaitStrategy {
        match self {
            Mode::Spin => WaitStrategy::Spin,
            Mode::SpinThenPark | Mode::Async => WaitStrategy::default(),
            Mode::Park | Mode::AsyncPark => WaitStrategy::Park,
        }
    }

    /// Whether the ends run as tokio tasks.
    pub fn is_async(self) -> bool {
        matches!(self, Mode::Async | Mode::AsyncPark)
    }
}

/// Which ring size a channel has (fixed when it is made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RingKind {
    /// Round trips of 64 B and 1 KiB (64 KiB rings).
    Rtt,
    /// Round trips of 64 KiB and 1 MiB (`--rtt-big-ring`).
    RttBig,
    /// Streams of 64 B and 1 KiB (`--small-ring`).
    Stream,
    /// Streams of 64 KiB and 1 MiB (`--big-ring`).
    StreamBig,
}

impl RingKind {
    fn short(self) -> &'static str {
        match self {
            RingKind::Rtt => "rtt",
            RingKind::RttBig => "rtt-big",
            RingKind::Stream => "stream",
            RingKind::StreamBig => "stream-big",
        }
    }

    /// The ring for round trips or streams of `size`-byte messages.
    pub fn for_size(stream: bool, size: usize) -> Self {
        match (stream, size > 4096) {
            (false, false) => RingKind::Rtt,
            (false, true) => RingKind::RttBig,
            (true, false) => RingKind::Stream,
            (true, true) => RingKind::StreamBig,
        }
    }
}

/// One channel the benchmark opens (one connection each: a channel's wait strategy and
/// ring size are fixed when it is made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Chan {
    /// How its ends wait.
    pub mode: Mode,
    /// Its ring size.
    pub ring: RingKind,
}

impl Chan {
    /// A channel.
    pub const fn new(mode: Mode, ring: RingKind) -> Self {
        Self { mode, ring }
    }

    /// Every channel, in connection order: round trips in every mode with both ring
    /// sizes, streams in spin, spin-then-park, park and async mode with both ring sizes.
    pub fn all() -> Vec<Chan> {
        let mut v = Vec::new();
        for ring in [RingKind::Rtt, RingKind::RttBig] {
            for mode in Mode::ALL {
                v.push(Chan::new(mode, ring));
            }
        }
        for ring in [RingKind::Stream, RingKind::StreamBig] {
            for mode in [Mode::Spin, Mode::SpinThenPark, Mode::Park, Mode::Async] {
                v.push(Chan::new(mode, ring));
            }
        }
        v
    }

    /// Short name, used in socket names and commands (`park.rtt-big`).
    pub fn as_str(self) -> String {
        format!("{}.{}", self.mode.short(), self.ring.short())
    }
}

impl FromStr for Chan {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self, BenchError> {
        Chan::all()
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| BenchError::protocol("a channel name", Some(s)))
    }
}

/// What the peer runs for one case. `total` counts every message, warm-up included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Echo `total` messages of `size` bytes on a channel (blocking, or from a tokio task
    /// in the async modes).
    ChanEcho { chan: Chan, size: usize, total: u64 },
    /// Answer `total` cache-line pings.
    LineEcho { total: u64 },
    /// Answer `total` futex pings.
    FutexEcho { total: u64 },
    /// Echo `total` records on the record-ring baseline.
    RecEcho { fence: bool, total: u64 },
    /// Echo `total` buffers of `size` bytes on the copy ping-pong floor.
    CopyEcho { size: usize, total: u64 },
    /// Consume `total` messages of `size` bytes from a channel, at most `read_max` per
    /// batch, then reply with a count.
    ChanSink {
        chan: Chan,
        size: usize,
        total: u64,
        read_max: usize,
    },
    /// Consume `total` records from the batched SPSC baseline.
    SpscSink {
        size: usize,
        slots: usize,
        total: u64,
    },
    /// Consume `total` buffers from the copy floor.
    CopySink {
        size: usize,
        slots: usize,
        total: u64,
    },
    /// Echo `total` length-prefixed messages of `size` bytes over a byte-stream baseline.
    LinkEcho { link: Link, size: usize, total: u64 },
    /// Consume `total` length-prefixed messages of `size` bytes from a byte-stream
    /// baseline, then reply with a count.
    LinkSink { link: Link, size: usize, total: u64 },
    /// Run an RPC (or Unix-socket baseline) echo server: answer "ready", serve until
    /// "rpc-stop", then stop it. "cpu" lines are answered with the peer's CPU time.
    RpcServe { kind: ServerKind },
    /// Run a spin-then-park RPC server and restart it `count` times, one per "restart"
    /// line: stop it, answer "down", wait, bind again and answer "up <CLOCK_MONOTONIC ns>".
    /// Then "rpc-stop".
    RpcRestart { count: u64 },
    /// End the peer.
    Quit,
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cmd::ChanEcho { chan, size, total } => {
                write!(f, "chan-echo {} {size} {total}", chan.as_str())
            }
            Cmd::LineEcho { total } => write!(f, "line-echo {total}"),
            Cmd::FutexEcho { total } => write!(f, "futex-echo {total}"),
            Cmd::RecEcho { fence, total } => write!(f, "rec-echo {} {total}", u8::from(*fence)),
            Cmd::CopyEcho { size, total } => write!(f, "copy-echo {size} {total}"),
            Cmd::ChanSink {
                chan,
                size,
                total,
                read_max,
            } => write!(f, "chan-sink {} {size} {total} {read_max}", chan.as_str()),
            Cmd::SpscSink { size, slots, total } => write!(f, "spsc-sink {size} {slots} {total}"),
            Cmd::CopySink { size, slots, total } => write!(f, "copy-sink {size} {slots} {total}"),
            Cmd::LinkEcho { link, size, total } => {
                write!(f, "link-echo {} {size} {total}", link.as_str())
            }
            Cmd::LinkSink { link, size, total } => {
                write!(f, "link-sink {} {size} {total}", link.as_str())
            }
            Cmd::RpcServe { kind } => write!(f, "rpc-serve {}", kind.as_str()),
            Cmd::RpcRestart { count } => write!(f, "rpc-restart {count}"),
            Cmd::Quit => write!(f, "quit"),
        }
    }
}

impl FromStr for Cmd {
    type Err = BenchError;
    fn from_str(line: &str) -> Result<Self, BenchError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = |expected: String| BenchError::protocol(expected, Some(line));
        let word = |i: usize| -> Result<&str, BenchError> {
            words
                .get(i)
                .copied()
                .ok_or_else(|| bad(format!("a field {i}")))
        };
        let num = |i: usize| -> Result<u64, BenchError> {
            word(i)?
                .parse()
                .map_err(|_| bad(format!("a number as field {i}")))
        };
        let expect_len = |n: usize| -> Result<(), BenchError> {
            if words.len() != n {
                return Err(bad(format!("{n} fields")));
            }
            Ok(())
        };
        let cmd = match words.first().copied() {
            Some("chan-echo") => {
                expect_len(4)?;
                Cmd::ChanEcho {
                    chan: word(1)?.parse()?,
                    size: num(2)? as usize,
                    total: num(3)?,
                }
            }
            Some("line-echo") => {
                expect_len(2)?;
                Cmd::LineEcho { total: num(1)? }
            }
            Some("futex-echo") => {
                expect_len(2)?;
                Cmd::FutexEcho { total: num(1)? }
            }
            Some("rec-echo") => {
                expect_len(3)?;
                Cmd::RecEcho {
                    fence: num(1)? != 0,
                    total: num(2)?,
                }
            }
            Some("copy-echo") => {
                expect_len(3)?;
                Cmd::CopyEcho {
                    size: num(1)? as usize,
                    total: num(2)?,
                }
            }
            Some("chan-sink") => {
                expect_len(5)?;
                Cmd::ChanSink {
                    chan: word(1)?.parse()?,
                    size: num(2)? as usize,
                    total: num(3)?,
                    read_max: num(4)? as usize,
                }
            }
            Some("spsc-sink") => {
                expect_len(4)?;
                Cmd::SpscSink {
                    size: num(1)? as usize,
                    slots: num(2)? as usize,
                    total: num(3)?,
                }
            }
            Some("copy-sink") => {
                expect_len(4)?;
                Cmd::CopySink {
                    size: num(1)? as usize,
                    slots: num(2)? as usize,
                    total: num(3)?,
                }
            }
            Some("link-echo") => {
                expect_len(4)?;
                Cmd::LinkEcho {
                    link: word(1)?.parse()?,
                    size: num(2)? as usize,
                    total: num(3)?,
                }
            }
            Some("link-sink") => {
                expect_len(4)?;
                Cmd::LinkSink {
                    link: word(1)?.parse()?,
                    size: num(2)? as usize,
                    total: num(3)?,
                }
            }
            Some("rpc-serve") => {
                expect_len(2)?;
                Cmd::RpcServe {
                    kind: words[1].parse()?,
                }
            }
            Some("rpc-restart") => {
                expect_len(2)?;
                Cmd::RpcRestart { count: num(1)? }
            }
            Some("quit") => {
                expect_len(1)?;
                Cmd::Quit
            }
            _ => return Err(bad("a command".to_owned())),
        };
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_text() {
        let cmds = [
            Cmd::ChanEcho {
                chan: Chan::new(Mode::AsyncPark, RingKind::Rtt),
                size: 64,
                total: 12,
            },
            Cmd::ChanEcho {
                chan: Chan::new(Mode::SpinThenPark, RingKind::RttBig),
                size: 1 << 20,
                total: 3,
            },
            Cmd::LineEcho { total: 5 },
            Cmd::FutexEcho { total: 6 },
            Cmd::RecEcho {
                fence: true,
                total: 4,
            },
            Cmd::CopyEcho {
                size: 1024,
                total: 4,
            },
            Cmd::ChanSink {
                chan: Chan::new(Mode::Spin, RingKind::StreamBig),
                size: 65536,
                total: 7,
                read_max: 1,
            },
            Cmd::SpscSink {
                size: 64,
                slots: 4096,
                total: 8,
            },
            Cmd::CopySink {
                size: 65536,
                slots: 4,
                total: 9,
            },
            Cmd::LinkEcho {
                link: Link::UdsTokio,
                size: 64,
                total: 10,
            },
            Cmd::LinkSink {
                link: Link::Pipe,
                size: 1 << 20,
                total: 11,
            },
            Cmd::RpcServe {
                kind: ServerKind::Park,
            },
            Cmd::RpcServe {
                kind: ServerKind::Uds,
            },
            Cmd::RpcServe {
                kind: ServerKind::TcpLz4,
            },
            Cmd::RpcServe {
                kind: ServerKind::Tls,
            },
            Cmd::RpcRestart { count: 3 },
            Cmd::Quit,
        ];
        for c in cmds {
            assert_eq!(c.to_string().parse::<Cmd>().unwrap(), c);
        }
        assert!("chan-echo nope 64 1".parse::<Cmd>().is_err());
        assert!("link-echo nope 64 1".parse::<Cmd>().is_err());
        assert!("line-echo".parse::<Cmd>().is_err());
        match "what".parse::<Cmd>() {
            Err(BenchError::Protocol { got, .. }) => assert_eq!(got.as_deref(), Some("what")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_channel_has_a_distinct_name() {
        let all = Chan::all();
        for c in &all {
            assert_eq!(c.as_str().parse::<Chan>().unwrap(), *c);
        }
        let mut names: Vec<String> = all.iter().map(|c| c.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
    }
}
