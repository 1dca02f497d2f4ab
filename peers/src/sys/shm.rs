//! shmrpc's own raw channel (`shmrpc::channel`), between the two processes through
//! `Listener::bind`/`accept` and `connect` (the segment and doorbells passed over a Unix
//! socket), sent with `send` (one copy into the ring, a wake-up only when the peer sleeps)
//! and received in place with `recv`.
//!
//! Two channels per mode: a 256 KiB ring for 64 B and 1 KiB messages, a bigger one
//! (`--big-ring`, 8 MiB by default) for 64 KiB and 1 MiB (a ring carries messages up to its
//! capacity less 16 bytes).

use std::time::Instant;

use anyhow::{Context, Result};
use shmrpc::channel::{connect, ChannelConfig, Endpoint, Listener, WaitStrategy};

use super::{check, message, Child, Lead, RunEnv, SetupCtl, Variant};
use crate::pattern::REPLY;

/// Ring capacity for messages up to [`SMALL_MAX`].
pub const SMALL_RING: usize = 256 << 10;
/// Default ring capacity for bigger messages (`--big-ring`).
pub const BIG_RING: usize = 8 << 20;
/// The largest message sent through the small ring.
pub const SMALL_MAX: usize = 1 << 10;

/// The name prefix of this run's shmrpc listeners (their socket and lock files live in
/// shmrpc's runtime directory).
pub fn name_prefix(env: &RunEnv) -> String {
    format!("peers-{}-", env.tag)
}

fn config(v: Variant) -> ChannelConfig {
    let wait = match v {
        Variant::ShmrpcPark => WaitStrategy::Park,
        Variant::ShmrpcSpin => WaitStrategy::Spin,
        _ => WaitStrategy::default(),
    };
    ChannelConfig::default().with_wait(wait)
}

struct Shm {
    small: Endpoint,
    big: Endpoint,
}

impl Shm {
    fn ep(&mut self, size: usize) -> &mut Endpoint {
        if size <= SMALL_MAX {
            &mut self.small
        } else {
            &mut self.big
        }
    }
}

/// The lead binds two listeners and accepts the child's two connections.
pub fn lead(v: Variant, env: &RunEnv, ctl: &mut dyn SetupCtl) -> Result<Box<dyn Lead>> {
    let cfg = config(v);
    let base = format!("{}{}", name_prefix(env), v.mode());
    let (small_name, big_name) = (format!("{base}-s"), format!("{base}-b"));
    let small_l = Listener::bind(&small_name, cfg.clone().with_capacity(SMALL_RING))
        .with_context(|| format!("bind {small_name}"))?;
    let big_l = Listener::bind(&big_name, cfg.with_capacity(env.big_ring))
        .with_context(|| format!("bind {big_name}"))?;
    ctl.start(&format!("{small_name} {big_name}"))?;
    let small = small_l.accept().context("accept (small ring)")?;
    let big = big_l.accept().context("accept (big ring)")?;
    ctl.finish()?;
    Ok(Box::new(Shm { small, big }))
}

/// The child connects to both listeners.
pub fn child(v: Variant, arg: &str) -> Result<Box<dyn Child>> {
    let cfg = config(v);
    let (small_name, big_name) = arg.split_once(' ').context("two names expected")?;
    let small = connect(small_name, &cfg).with_context(|| format!("connect {small_name}"))?;
    let big = connect(big_name, &cfg).with_context(|| format!("connect {big_name}"))?;
    Ok(Box::new(Shm { small, big }))
}

impl Lead for Shm {
    fn rtt(&mut self, size: usize, n: u64, seed0: u64, samples: &mut Vec<u64>) -> Result<()> {
        let ep = self.ep(size);
        let mut src = vec![0u8; size];
        for i in 0..n {
            let seed = seed0 + i;
            crate::pattern::fill(&mut src, seed);
            let t0 = Instant::now();
            ep.send(&src).context("shmrpc send")?;
            {
                let m = ep.recv().context("shmrpc recv")?;
                check("shmrpc reply", &m, size, seed ^ REPLY)?;
            }
            samples.push(t0.elapsed().as_nanos() as u64);
        }
        Ok(())
    }

    fn stream(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let ep = self.ep(size);
        let mut src = vec![0u8; size];
        for i in 0..n {
            crate::pattern::fill(&mut src, seed0 + i);
            ep.send(&src).context("shmrpc send")?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl Child for Shm {
    fn echo(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let ep = self.ep(size);
        let mut reply = message(size, 0);
        for i in 0..n {
            let seed = seed0 + i;
            crate::pattern::fill(&mut reply, seed ^ REPLY);
            {
                let m = ep.recv().context("shmrpc recv")?;
                check("shmrpc request", &m, size, seed)?;
            }
            ep.send(&reply).context("shmrpc send")?;
        }
        Ok(())
    }

    fn sink(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let ep = self.ep(size);
        for i in 0..n {
            let m = ep.recv().context("shmrpc recv")?;
            check("shmrpc stream", &m, size, seed0 + i)?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
