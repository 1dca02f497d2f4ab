//! Control commands from the lead (parent) process to the peer, one text line each.

use std::fmt;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context};

pub use super::rpc::ServerKind;

/// The channels the benchmark opens, one connection each (a channel's wait strategy is
/// fixed when it is made).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chan {
    /// Round trips, `WaitStrategy::Spin`.
    Spin,
    /// Round trips, `WaitStrategy::SpinThenPark` (the default budget).
    SpinThenPark,
    /// Round trips, `WaitStrategy::Park`.
    Park,
    /// Round trips from tokio tasks, spin-then-park.
    Async,
    /// Round trips from tokio tasks, park.
    AsyncPark,
    /// Streams of 64 B and 1 KiB, spin.
    Stream,
    /// Streams of 64 KiB through a large ring, spin.
    StreamBig,
}

impl Chan {
    /// Every channel, in connection order.
    pub const ALL: [Chan; 7] = [
        Chan::Spin,
        Chan::SpinThenPark,
        Chan::Park,
        Chan::Async,
        Chan::AsyncPark,
        Chan::Stream,
        Chan::StreamBig,
    ];

    /// Short name, used in socket names and commands.
    pub fn as_str(self) -> &'static str {
        match self {
            Chan::Spin => "spin",
            Chan::SpinThenPark => "stp",
            Chan::Park => "park",
            Chan::Async => "async",
            Chan::AsyncPark => "async-park",
            Chan::Stream => "stream",
            Chan::StreamBig => "stream-big",
        }
    }
}

impl FromStr for Chan {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Chan::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| anyhow!("unknown channel {s:?}"))
    }
}

/// What the peer runs for one case. `total` counts every message, warm-up included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// Echo `total` messages on a channel (blocking or from a tokio task).
    ChanEcho {
        chan: Chan,
        is_async: bool,
        total: u64,
    },
    /// Answer `total` cache-line pings.
    LineEcho { total: u64 },
    /// Answer `total` futex pings.
    FutexEcho { total: u64 },
    /// Echo `total` records on the record-ring baseline.
    RecEcho { fence: bool, total: u64 },
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
    /// Run an RPC (or Unix-socket baseline) echo server: answer "ready", serve until
    /// "rpc-stop", then stop it.
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
            Cmd::ChanEcho {
                chan,
                is_async,
                total,
            } => write!(
                f,
                "chan-echo {} {} {total}",
                chan.as_str(),
                u8::from(*is_async)
            ),
            Cmd::LineEcho { total } => write!(f, "line-echo {total}"),
            Cmd::FutexEcho { total } => write!(f, "futex-echo {total}"),
            Cmd::RecEcho { fence, total } => write!(f, "rec-echo {} {total}", u8::from(*fence)),
            Cmd::ChanSink {
                chan,
                size,
                total,
                read_max,
            } => write!(f, "chan-sink {} {size} {total} {read_max}", chan.as_str()),
            Cmd::SpscSink { size, slots, total } => write!(f, "spsc-sink {size} {slots} {total}"),
            Cmd::CopySink { size, slots, total } => write!(f, "copy-sink {size} {slots} {total}"),
            Cmd::RpcServe { kind } => write!(f, "rpc-serve {}", kind.as_str()),
            Cmd::RpcRestart { count } => write!(f, "rpc-restart {count}"),
            Cmd::Quit => write!(f, "quit"),
        }
    }
}

impl FromStr for Cmd {
    type Err = anyhow::Error;
    fn from_str(line: &str) -> anyhow::Result<Self> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> anyhow::Result<u64> {
            let w = words
                .get(i)
                .with_context(|| format!("{line:?}: missing field {i}"))?;
            w.parse()
                .with_context(|| format!("{line:?}: field {i} is not a number"))
        };
        let chan = |i: usize| -> anyhow::Result<Chan> {
            words
                .get(i)
                .with_context(|| format!("{line:?}: missing channel"))?
                .parse()
        };
        let expect_len = |n: usize| -> anyhow::Result<()> {
            if words.len() != n {
                bail!("{line:?}: expected {n} fields");
            }
            Ok(())
        };
        let cmd = match words.first().copied() {
            Some("chan-echo") => {
                expect_len(4)?;
                Cmd::ChanEcho {
                    chan: chan(1)?,
                    is_async: num(2)? != 0,
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
            Some("chan-sink") => {
                expect_len(5)?;
                Cmd::ChanSink {
                    chan: chan(1)?,
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
            _ => bail!("unknown command {line:?}"),
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
                chan: Chan::AsyncPark,
                is_async: true,
                total: 12,
            },
            Cmd::LineEcho { total: 5 },
            Cmd::FutexEcho { total: 6 },
            Cmd::RecEcho {
                fence: true,
                total: 4,
            },
            Cmd::ChanSink {
                chan: Chan::StreamBig,
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
            Cmd::RpcServe {
                kind: ServerKind::Park,
            },
            Cmd::RpcServe {
                kind: ServerKind::Uds,
            },
            Cmd::RpcRestart { count: 3 },
            Cmd::Quit,
        ];
        for c in cmds {
            assert_eq!(c.to_string().parse::<Cmd>().unwrap(), c);
        }
        assert!("chan-echo nope 0 1".parse::<Cmd>().is_err());
        assert!("line-echo".parse::<Cmd>().is_err());
        assert!("what".parse::<Cmd>().is_err());
    }
}
