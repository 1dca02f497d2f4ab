//! The byte-stream baselines: a Unix stream socket (blocking, and tokio), a pipe pair and
//! TCP over 127.0.0.1, all carrying the same framing: a 4-byte little-endian length, then
//! the payload.
//!
//! Every message is written with one `write_all` of its frame as soon as it is made (no
//! coalescing of several messages in user space, which would hold messages back: shmrpc
//! publishes each record when it is committed, too). The reader takes whatever the kernel
//! has, up to 256 KiB per `read`, through a buffer, and copies each payload out and checks
//! its stamps, as the channel's consumer does. Socket and pipe buffers are the system's
//! defaults, as a user gets them; TCP has `TCP_NODELAY` on both ends.
//!
//! Connections are made once, when the run starts: the lead listens (a Unix socket in the
//! temporary directory, removed as soon as the peer has connected, and a TCP port on
//! 127.0.0.1 chosen by the kernel); the peer connects; the pipes are made by the lead and
//! their peer ends passed over the Unix socket (`SCM_RIGHTS`).

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::raw::{stamp, stamped};
use crate::error::{BenchError, Result};

/// Bytes the reader asks the kernel for at most, per `read`.
pub const READ_BUF: usize = 256 << 10;
/// Bytes of the length prefix.
const PREFIX: usize = 4;

/// Which byte-stream baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// Unix stream socket, blocking calls.
    Uds,
    /// Unix stream socket from tokio tasks (current-thread runtime in each process).
    UdsTokio,
    /// Two pipes, one per direction, blocking calls.
    Pipe,
    /// TCP over 127.0.0.1, `TCP_NODELAY`, blocking calls.
    Tcp,
}

impl Link {
    /// Every baseline.
    pub const ALL: [Link; 4] = [Link::Uds, Link::UdsTokio, Link::Pipe, Link::Tcp];

    /// Short name (commands; the word of case ids).
    pub fn as_str(self) -> &'static str {
        match self {
            Link::Uds => "uds",
            Link::UdsTokio => "uds_tokio",
            Link::Pipe => "pipe",
            Link::Tcp => "tcp",
        }
    }

    /// For the table and the chart.
    pub fn label(self) -> &'static str {
        match self {
            Link::Uds => "Unix socket",
            Link::UdsTokio => "Unix socket, tokio",
            Link::Pipe => "pipe pair",
            Link::Tcp => "TCP loopback",
        }
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Link {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self> {
        Link::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| BenchError::protocol("a byte-stream baseline's name", Some(s)))
    }
}

/// One end of a blocking byte stream: a buffered reader and a writer.
pub struct Blocking {
    r: BufReader<Box<dyn Read + Send>>,
    w: Box<dyn Write + Send>,
}

impl Blocking {
    fn new(r: impl Read + Send + 'static, w: impl Write + Send + 'static) -> Self {
        Self {
            r: BufReader::with_capacity(READ_BUF, Box::new(r)),
            w: Box::new(w),
        }
    }

    fn from_unix(s: UnixStream) -> Result<Self> {
        let r = s
            .try_clone()
            .map_err(BenchError::io("dup of a Unix socket"))?;
        Ok(Self::new(r, s))
    }

    fn from_tcp(s: TcpStream) -> Result<Self> {
        s.set_nodelay(true).map_err(BenchError::io("TCP_NODELAY"))?;
        let r = s
            .try_clone()
            .map_err(BenchError::io("dup of a TCP socket"))?;
        Ok(Self::new(r, s))
    }
}

/// One end of the tokio Unix socket.
pub struct Tokio {
    r: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Tokio {
    /// Registers `s` with the runtime `rt`.
    fn new(s: UnixStream, rt: &tokio::runtime::Runtime) -> Result<Self> {
        s.set_nonblocking(true)
            .map_err(BenchError::io("O_NONBLOCK"))?;
        let _enter = rt.enter();
        let s = tokio::net::UnixStream::from_std(s)
            .map_err(BenchError::io("registering with tokio"))?;
        let (r, w) = s.into_split();
        Ok(Self {
            r: tokio::io::BufReader::with_capacity(READ_BUF, r),
            w,
        })
    }
}

/// The four baselines' ends in one process.
pub struct Links {
    uds: Blocking,
    uds_tokio: Tokio,
    pipe: Blocking,
    tcp: Blocking,
}

/// What the lead holds until the peer has connected.
pub struct Listening {
    uds: UnixListener,
    /// The Unix socket's file (removed once the peer has connected).
    pub path: PathBuf,
    tcp: TcpListener,
    /// The TCP port on 127.0.0.1.
    pub port: u16,
}

/// The lead's listeners: a Unix socket at `path`, a TCP port on 127.0.0.1.
pub fn listen(path: &Path) -> Result<Listening> {
    let _ = std::fs::remove_file(path);
    let uds =
        UnixListener::bind(path).map_err(BenchError::io(format!("binding {}", path.display())))?;
    let tcp = TcpListener::bind(("127.0.0.1", 0)).map_err(BenchError::io("binding 127.0.0.1:0"))?;
    let port = tcp.local_addr().map_err(BenchError::io("TCP port"))?.port();
    Ok(Listening {
        uds,
        path: path.to_owned(),
        tcp,
        port,
    })
}

/// The raw connections of the lead, before the runtime registration.
pub struct Accepted {
    uds: UnixStream,
    uds_tokio: UnixStream,
    tcp: TcpStream,
}

impl Listening {
    /// Accepts the peer's three connections (blocking: run it on a thread with a timeout),
    /// then removes the socket file.
    pub fn accept(self) -> Result<Accepted> {
        let r = (|| {
            let (uds, _) = self
                .uds
                .accept()
                .map_err(BenchError::io("accepting the Unix socket"))?;
            let (uds_tokio, _) = self
                .uds
                .accept()
                .map_err(BenchError::io("accepting the Unix socket"))?;
            let (tcp, _) = self.tcp.accept().map_err(BenchError::io("accepting TCP"))?;
            Ok::<_, BenchError>(Accepted {
                uds,
                uds_tokio,
                tcp,
            })
        })();
        let _ = std::fs::remove_file(&self.path);
        r
    }
}

impl Accepted {
    /// Makes the pipes, passes their peer ends over the Unix socket, and registers the
    /// tokio socket with `rt`.
    pub fn finish(self, rt: &tokio::runtime::Runtime) -> Result<Links> {
        // to_peer: we write, the peer reads; from_peer: the peer writes, we read.
        let (to_peer_r, to_peer_w) = rustix::pipe::pipe().map_err(BenchError::io("pipe"))?;
        let (from_peer_r, from_peer_w) = rustix::pipe::pipe().map_err(BenchError::io("pipe"))?;
        shmrpc::lowlevel::sys::fdpass::send_with_fds(
            self.uds.as_fd(),
            b"pipes",
            &[to_peer_r.as_fd(), from_peer_w.as_fd()],
        )
        .map_err(BenchError::io("passing the pipes to the peer"))?;
        // Our copies of the peer's ends close here, so that the peer's death is an EOF.
        drop((to_peer_r, from_peer_w));
        Ok(Links {
            uds: Blocking::from_unix(self.uds)?,
            uds_tokio: Tokio::new(self.uds_tokio, rt)?,
            pipe: Blocking::new(File::from(from_peer_r), File::from(to_peer_w)),
            tcp: Blocking::from_tcp(self.tcp)?,
        })
    }
}

/// The peer's side of the setup: connect to the lead's Unix socket twice and to its TCP
/// port, then take the pipes that come over the first socket.
pub fn connect(path: &Path, port: u16, rt: &tokio::runtime::Runtime) -> Result<Links> {
    let uds = UnixStream::connect(path)
        .map_err(BenchError::io(format!("connecting to {}", path.display())))?;
    let uds_tokio = UnixStream::connect(path)
        .map_err(BenchError::io(format!("connecting to {}", path.display())))?;
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .map_err(BenchError::io(format!("connecting to 127.0.0.1:{port}")))?;
    let mut buf = [0u8; 16];
    let (n, mut fds) = shmrpc::lowlevel::sys::fdpass::recv_with_fds(uds.as_fd(), &mut buf)
        .map_err(BenchError::io("receiving the pipes"))?;
    if &buf[..n] != b"pipes" || fds.len() != 2 {
        return Err(BenchError::WrongData(format!(
            "expected two pipe fds, got {} bytes and {} fds",
            n,
            fds.len()
        )));
    }
    let w = fds.pop().expect("two fds");
    let r = fds.pop().expect("two fds");
    Ok(Links {
        uds: Blocking::from_unix(uds)?,
        uds_tokio: Tokio::new(uds_tokio, rt)?,
        pipe: Blocking::new(File::from(r), File::from(w)),
        tcp: Blocking::from_tcp(tcp)?,
    })
}

impl Links {
    /// A blocking baseline's ends (`None` for the tokio one).
    fn blocking(&mut self, link: Link) -> Option<&mut Blocking> {
        match link {
            Link::Uds => Some(&mut self.uds),
            Link::Pipe => Some(&mut self.pipe),
            Link::Tcp => Some(&mut self.tcp),
            Link::UdsTokio => None,
        }
    }

    /// Lead side of `total` round trips of `size` bytes; the time of each of the last
    /// `total - warm`.
    pub fn rtt_lead(
        &mut self,
        rt: &tokio::runtime::Runtime,
        link: Link,
        size: usize,
        total: u64,
        warm: u64,
    ) -> Result<Vec<u64>> {
        match self.blocking(link) {
            Some(b) => rtt_lead(b, size, total, warm),
            None => rt.block_on(rtt_lead_async(&mut self.uds_tokio, size, total, warm)),
        }
    }

    /// Peer side of [`rtt_lead`](Self::rtt_lead).
    pub fn rtt_echo(
        &mut self,
        rt: &tokio::runtime::Runtime,
        link: Link,
        size: usize,
        total: u64,
    ) -> Result<()> {
        match self.blocking(link) {
            Some(b) => rtt_echo(b, size, total),
            None => rt.block_on(rtt_echo_async(&mut self.uds_tokio, size, total)),
        }
    }

    /// Lead side of a one-way stream of `total` messages of `size` bytes; the time until
    /// the peer reported that it had everything.
    pub fn stream_lead(
        &mut self,
        rt: &tokio::runtime::Runtime,
        link: Link,
        size: usize,
        total: u64,
    ) -> Result<Duration> {
        match self.blocking(link) {
            Some(b) => stream_lead(b, size, total),
            None => rt.block_on(stream_lead_async(&mut self.uds_tokio, size, total)),
        }
    }

    /// Peer side of [`stream_lead`](Self::stream_lead); returns the number of bad messages.
    pub fn stream_sink(
        &mut self,
        rt: &tokio::runtime::Runtime,
        link: Link,
        size: usize,
        total: u64,
    ) -> Result<u64> {
        match self.blocking(link) {
            Some(b) => stream_sink(b, size, total),
            None => rt.block_on(stream_sink_async(&mut self.uds_tokio, size, total)),
        }
    }
}

/// A frame buffer: the length prefix, then room for the payload.
fn frame(size: usize) -> Vec<u8> {
    let mut f = vec![0x77u8; PREFIX + size];
    f[..PREFIX].copy_from_slice(&(size as u32).to_le_bytes());
    f
}

fn prefix_len(p: [u8; PREFIX]) -> usize {
    u32::from_le_bytes(p) as usize
}

fn rtt_lead(b: &mut Blocking, size: usize, total: u64, warm: u64) -> Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
    let mut out = frame(size);
    let mut back = vec![0u8; size];
    for i in 0..total {
        stamp(&mut out[PREFIX..], i);
        let t0 = Instant::now();
        b.w.write_all(&out).map_err(BenchError::io("write"))?;
        let mut p = [0u8; PREFIX];
        b.r.read_exact(&mut p).map_err(BenchError::io("read"))?;
        if prefix_len(p) != size {
            return Err(BenchError::WrongData(format!(
                "echo of {} bytes, expected {size}",
                prefix_len(p)
            )));
        }
        b.r.read_exact(&mut back).map_err(BenchError::io("read"))?;
        let dt = t0.elapsed();
        if !stamped(&back, i) {
            return Err(BenchError::WrongData(format!("echo {i} came back wrong")));
        }
        if i >= warm {
            samples.push(dt.as_nanos() as u64);
        }
    }
    Ok(samples)
}

fn rtt_echo(b: &mut Blocking, size: usize, total: u64) -> Result<()> {
    let mut f = frame(size);
    for _ in 0..total {
        let mut p = [0u8; PREFIX];
        b.r.read_exact(&mut p).map_err(BenchError::io("read"))?;
        if prefix_len(p) != size {
            return Err(BenchError::WrongData(format!(
                "request of {} bytes, expected {size}",
                prefix_len(p)
            )));
        }
        b.r.read_exact(&mut f[PREFIX..])
            .map_err(BenchError::io("read"))?;
        b.w.write_all(&f).map_err(BenchError::io("write"))?;
    }
    Ok(())
}

async fn rtt_lead_async(t: &mut Tokio, size: usize, total: u64, warm: u64) -> Result<Vec<u64>> {
    let mut samples = Vec::with_capacity(total.saturating_sub(warm) as usize);
    let mut out = frame(size);
    let mut back = vec![0u8; size];
    for i in 0..total {
        stamp(&mut out[PREFIX..], i);
        let t0 = Instant::now();
        t.w.write_all(&out).await.map_err(BenchError::io("write"))?;
        let mut p = [0u8; PREFIX];
        t.r.read_exact(&mut p)
            .await
            .map_err(BenchError::io("read"))?;
        if prefix_len(p) != size {
            return Err(BenchError::WrongData(format!(
                "echo of {} bytes, expected {size}",
                prefix_len(p)
            )));
        }
        t.r.read_exact(&mut back)
            .await
            .map_err(BenchError::io("read"))?;
        let dt = t0.elapsed();
        if !stamped(&back, i) {
            return Err(BenchError::WrongData(format!("echo {i} came back wrong")));
        }
        if i >= warm {
            samples.push(dt.as_nanos() as u64);
        }
    }
    Ok(samples)
}

async fn rtt_echo_async(t: &mut Tokio, size: usize, total: u64) -> Result<()> {
    let mut f = frame(size);
    for _ in 0..total {
        let mut p = [0u8; PREFIX];
        t.r.read_exact(&mut p)
            .await
            .map_err(BenchError::io("read"))?;
        if prefix_len(p) != size {
            return Err(BenchError::WrongData(format!(
                "request of {} bytes, expected {size}",
                prefix_len(p)
            )));
        }
        t.r.read_exact(&mut f[PREFIX..])
            .await
            .map_err(BenchError::io("read"))?;
        t.w.write_all(&f).await.map_err(BenchError::io("write"))?;
    }
    Ok(())
}

fn stream_lead(b: &mut Blocking, size: usize, total: u64) -> Result<Duration> {
    let mut out = frame(size);
    let t0 = Instant::now();
    for i in 0..total {
        stamp(&mut out[PREFIX..], i);
        b.w.write_all(&out).map_err(BenchError::io("write"))?;
    }
    let mut report = [0u8; PREFIX + 16];
    b.r.read_exact(&mut report)
        .map_err(BenchError::io("waiting for the consumer's report"))?;
    let dt = t0.elapsed();
    check_report(&report, total)?;
    Ok(dt)
}

/// Reads `total` frames, copying each payload out of the reader's buffer and checking it.
fn stream_sink(b: &mut Blocking, size: usize, total: u64) -> Result<u64> {
    let mut dst = vec![0u8; size];
    let mut errors = 0u64;
    for i in 0..total {
        let mut p = [0u8; PREFIX];
        b.r.read_exact(&mut p).map_err(BenchError::io("read"))?;
        if prefix_len(p) != size {
            return Err(BenchError::WrongData(format!(
                "message of {} bytes, expected {size}",
                prefix_len(p)
            )));
        }
        b.r.read_exact(&mut dst).map_err(BenchError::io("read"))?;
        errors += u64::from(!stamped(&dst, i));
    }
    if !b.r.buffer().is_empty() {
        return Err(BenchError::WrongData(format!(
            "{} bytes after the last message",
            b.r.buffer().len()
        )));
    }
    b.w.write_all(&report(total, errors))
        .map_err(BenchError::io("write"))?;
    Ok(errors)
}

async fn stream_lead_async(t: &mut Tokio, size: usize, total: u64) -> Result<Duration> {
    let mut out = frame(size);
    let t0 = Instant::now();
    for i in 0..total {
        stamp(&mut out[PREFIX..], i);
        t.w.write_all(&out).await.map_err(BenchError::io("write"))?;
    }
    let mut report = [0u8; PREFIX + 16];
    t.r.read_exact(&mut report)
        .await
        .map_err(BenchError::io("waiting for the consumer's report"))?;
    let dt = t0.elapsed();
    check_report(&report, total)?;
    Ok(dt)
}

async fn stream_sink_async(t: &mut Tokio, size: usize, total: u64) -> Result<u64> {
    let mut dst = vec![0u8; size];
    let mut errors = 0u64;
    for i in 0..total {
        let mut p = [0u8; PREFIX];
        t.r.read_exact(&mut p)
            .await
            .map_err(BenchError::io("read"))?;
        if prefix_len(p) != size {
            return Err(BenchError::WrongData(format!(
                "message of {} bytes, expected {size}",
                prefix_len(p)
            )));
        }
        t.r.read_exact(&mut dst)
            .await
            .map_err(BenchError::io("read"))?;
        errors += u64::from(!stamped(&dst, i));
    }
    if !t.r.buffer().is_empty() {
        return Err(BenchError::WrongData(format!(
            "{} bytes after the last message",
            t.r.buffer().len()
        )));
    }
    t.w.write_all(&report(total, errors))
        .await
        .map_err(BenchError::io("write"))?;
    Ok(errors)
}

/// The consumer's report, framed: count and bad messages.
fn report(count: u64, errors: u64) -> [u8; PREFIX + 16] {
    let mut r = [0u8; PREFIX + 16];
    r[..PREFIX].copy_from_slice(&16u32.to_le_bytes());
    r[PREFIX..PREFIX + 8].copy_from_slice(&count.to_le_bytes());
    r[PREFIX + 8..].copy_from_slice(&errors.to_le_bytes());
    r
}

fn check_report(r: &[u8; PREFIX + 16], total: u64) -> Result<()> {
    let word = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().expect("8 bytes"));
    let (len, got, errors) = (
        prefix_len(r[..PREFIX].try_into().expect("4 bytes")),
        word(PREFIX),
        word(PREFIX + 8),
    );
    if len != 16 || got != total || errors != 0 {
        return Err(BenchError::WrongData(format!("stream: the consumer got {got} of {total} messages, {errors} bad (report of {len} bytes)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_round_trips_and_streams_between_two_threads() {
        let path =
            std::env::temp_dir().join(format!("shmrpc-linktest-{}.sock", std::process::id()));
        let l = listen(&path).unwrap();
        let port = l.port;
        let peer = {
            let path = path.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut links = connect(&path, port, &rt).unwrap();
                let mut bad = 0;
                for link in Link::ALL {
                    for size in [64, 70_000] {
                        links.rtt_echo(&rt, link, size, 20).unwrap();
                        bad += links.stream_sink(&rt, link, size, 50).unwrap();
                    }
                }
                bad
            })
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut links = l.accept().unwrap().finish(&rt).unwrap();
        assert!(!path.exists(), "the socket file is removed once connected");
        for link in Link::ALL {
            for size in [64, 70_000] {
                assert_eq!(links.rtt_lead(&rt, link, size, 20, 5).unwrap().len(), 15);
                links.stream_lead(&rt, link, size, 50).unwrap();
            }
        }
        assert_eq!(peer.join().unwrap(), 0);
    }
}
