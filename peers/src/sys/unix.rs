//! The common baseline: a blocking std Unix stream socket, each message preceded by its
//! length (4 bytes, little endian). One `write_all` per message (prefix and payload from one
//! buffer), two `read_exact` per message (prefix, payload).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{check, Child, Lead, RunEnv, SetupCtl};
use crate::pattern::{self, REPLY};

struct Sock {
    s: UnixStream,
    /// Length prefix and payload of the next message out.
    out: Vec<u8>,
    /// Payload of the last message in.
    inb: Vec<u8>,
}

impl Sock {
    fn new(s: UnixStream) -> Self {
        Self {
            s,
            out: Vec::new(),
            inb: Vec::new(),
        }
    }

    /// Fills the outgoing buffer with message `seed` of `size` bytes.
    fn prepare(&mut self, size: usize, seed: u64) {
        self.out.resize(4 + size, 0);
        self.out[..4].copy_from_slice(&(size as u32).to_le_bytes());
        pattern::fill(&mut self.out[4..], seed);
    }

    fn send(&mut self) -> Result<()> {
        self.s.write_all(&self.out).context("socket write")
    }

    fn recv(&mut self) -> Result<&[u8]> {
        let mut len = [0u8; 4];
        self.s
            .read_exact(&mut len)
            .context("socket read (length)")?;
        let len = u32::from_le_bytes(len) as usize;
        if len > 64 << 20 {
            bail!("socket: length prefix {len} is implausible");
        }
        self.inb.resize(len, 0);
        self.s
            .read_exact(&mut self.inb)
            .context("socket read (payload)")?;
        Ok(&self.inb)
    }
}

/// The lead binds a socket in the run directory and accepts the child's connection.
pub fn lead(env: &RunEnv, ctl: &mut dyn SetupCtl) -> Result<Box<dyn Lead>> {
    let path = env.path("unix.sock");
    let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    ctl.start(path.to_str().context("path is not UTF-8")?)?;
    let (s, _) = listener.accept().context("accept")?;
    drop(listener);
    std::fs::remove_file(&path).context("removing the socket file")?;
    ctl.finish()?;
    Ok(Box::new(Sock::new(s)))
}

/// The child connects to the lead's socket.
pub fn child(path: &Path) -> Result<Box<dyn Child>> {
    let s = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
    Ok(Box::new(Sock::new(s)))
}

impl Lead for Sock {
    fn rtt(&mut self, size: usize, n: u64, seed0: u64, samples: &mut Vec<u64>) -> Result<()> {
        for i in 0..n {
            let seed = seed0 + i;
            self.prepare(size, seed);
            let t0 = Instant::now();
            self.send()?;
            let reply = self.recv()?;
            check("unix-socket reply", reply, size, seed ^ REPLY)?;
            samples.push(t0.elapsed().as_nanos() as u64);
        }
        Ok(())
    }

    fn stream(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        for i in 0..n {
            self.prepare(size, seed0 + i);
            self.send()?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

impl Child for Sock {
    fn echo(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        for i in 0..n {
            let seed = seed0 + i;
            self.prepare(size, seed ^ REPLY);
            let req = self.recv()?;
            check("unix-socket request", req, size, seed)?;
            self.send()?;
        }
        Ok(())
    }

    fn sink(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        for i in 0..n {
            let m = self.recv()?;
            check("unix-socket stream", m, size, seed0 + i)?;
        }
        Ok(())
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
