//! shmipc 0.2.1 (CloudWeGo): the lead is the client (`SessionManager` + `get_stream`), the
//! child the server (`Listener` + `accept`), over a Unix socket in the run directory. A
//! message is `write_bytes` (a copy into shmipc's shared buffers) then `flush`; the receiver
//! takes exactly one message with `read_exact_bytes(size)` (in place when it lies in one
//! buffer slice, coalesced into owned memory when it spans several), then releases it.
//!
//! shmipc is async only and relies on background tasks (its session's receive loop, the
//! writer of socket wake-ups and fallback data), which must keep running between our calls.
//! So each process runs a tokio multi-thread runtime with one worker thread, and every
//! workload runs as a task on that worker, beside shmipc's own tasks (the calling thread
//! only waits for the task's result). Both threads are on the process's one pinned CPU.
//!
//! Modes:
//! - `default`: `Config::default()` (legacy protocol V3 on memfd; wake-ups are messages on
//!   the Unix socket);
//! - `eventfd`: `Config::default().with_v4_eventfd()` (V4, eventfd wake-ups).
//!
//! shmipc silently sends through the Unix socket instead when its shared buffers run out
//! (e.g. a stream of big messages outrunning the reader), and a stream that did so once
//! stays on the socket for good (to keep the order). The lead reads shmipc's own counters
//! after each case and the report says how many messages took that path.

use std::os::unix::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use shmipc::buffer::BufferReader;
use shmipc::config::Config;
use shmipc::session::{SessionManager, SessionManagerConfig};
use shmipc::stream::Stream;
use shmipc::transport::{DefaultUnixConnect, DefaultUnixListen};
use shmipc::{Error as ShmipcError, Listener};
use tokio::runtime::Runtime;

use super::{check, message, Child, Lead, RunEnv, SetupCtl, Variant};
use crate::pattern::{self, REPLY};

thread_local! {
    static RT: Rc<Runtime> = Rc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime"),
    );
}

fn runtime() -> Rc<Runtime> {
    RT.with(Rc::clone)
}

/// Runs `f` as a task on the runtime's worker and waits for it.
fn on_worker<T: Send + 'static>(
    rt: &Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T> {
    rt.block_on(rt.spawn(f))
        .map_err(|e| anyhow!("shmipc task: {e}"))
}

fn config(v: Variant) -> Config {
    match v {
        Variant::ShmipcEventfd => Config::default().with_v4_eventfd(),
        _ => Config::default(),
    }
}

/// Writes and flushes one message, retrying while shmipc's queue is full. Returns 1 if the
/// message went through the Unix socket (the stream is in fallback state), else 0.
async fn send(stream: &mut Stream, msg: &[u8]) -> Result<u64> {
    stream
        .write_bytes(msg)
        .map_err(|e| anyhow!("shmipc write_bytes: {e}"))?;
    loop {
        match stream.flush(false).await {
            Ok(()) => return Ok(u64::from(stream.fallback_state())),
            Err(ShmipcError::QueueFull) => tokio::task::yield_now().await,
            Err(e) => bail!("shmipc flush: {e}"),
        }
    }
}

struct LeadSide {
    stream: Option<Stream>,
    sm: SessionManager<DefaultUnixConnect>,
    /// Messages sent through the socket so far.
    fallbacks: u64,
    rt: Rc<Runtime>,
}

struct ChildSide {
    stream: Option<Stream>,
    listener: Option<Listener>,
    fallbacks: u64,
    rt: Rc<Runtime>,
}

/// Takes the stream out of shmipc's sticky fallback state (a stream that fell back once
/// would otherwise stay on the socket for every later case). Called at the start of each
/// case, when both sides have consumed everything.
fn reset(stream: &Stream) -> Result<()> {
    stream
        .reset()
        .map_err(|e| anyhow!("shmipc stream reset: {e}"))
}

/// One byte the lead sends at setup: shmipc hands the server a stream only when data
/// arrives on it.
const HELLO: &[u8] = b"h";

/// The lead asks the child to listen, connects (retrying until the socket exists), opens a
/// stream and sends a hello that makes the child's `accept` return.
pub fn lead(v: Variant, env: &RunEnv, ctl: &mut dyn SetupCtl) -> Result<Box<dyn Lead>> {
    let rt = runtime();
    let path = env.path(&format!("shmipc-{}.sock", v.mode()));
    ctl.start(path.to_str().context("path is not UTF-8")?)?;
    let addr = SocketAddr::from_pathname(&path).context("socket address")?;
    let cfg = SessionManagerConfig::new()
        .with_config(config(v))
        .with_session_num(1);
    let (sm, stream) = on_worker(&rt, async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sm = loop {
            match SessionManager::new(cfg.clone(), DefaultUnixConnect, addr.clone()).await {
                Ok(sm) => break sm,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => bail!("shmipc SessionManager::new: {e}"),
            }
        };
        let mut stream = sm
            .get_stream()
            .map_err(|e| anyhow!("shmipc get_stream: {e}"))?;
        send(&mut stream, HELLO).await?;
        Ok((sm, stream))
    })??;
    ctl.finish()?;
    Ok(Box::new(LeadSide {
        stream: Some(stream),
        sm,
        fallbacks: 0,
        rt,
    }))
}

/// The child listens, accepts the lead's stream and reads its hello.
pub fn child(v: Variant, path: &Path) -> Result<Box<dyn Child>> {
    let rt = runtime();
    let addr = SocketAddr::from_pathname(path).context("socket address")?;
    let (listener, stream) = on_worker(&rt, async move {
        let mut listener = Listener::new(DefaultUnixListen, addr, config(v))
            .await
            .context("shmipc Listener::new")?;
        let mut stream = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .context("shmipc accept timed out")?
            .context("shmipc accept")?;
        {
            let hello = stream
                .read_exact_bytes(HELLO.len())
                .await
                .map_err(|e| anyhow!("shmipc hello: {e}"))?;
            if &*hello != HELLO {
                bail!("shmipc: wrong hello");
            }
        }
        stream.recv_buf().release_previous_read();
        anyhow::Ok((listener, stream))
    })??;
    Ok(Box::new(ChildSide {
        stream: Some(stream),
        listener: Some(listener),
        fallbacks: 0,
        rt,
    }))
}

impl LeadSide {
    fn take(&mut self) -> Result<Stream> {
        self.stream
            .take()
            .context("the shmipc stream was lost in an earlier failure")
    }
}

impl Lead for LeadSide {
    fn rtt(&mut self, size: usize, n: u64, seed0: u64, samples: &mut Vec<u64>) -> Result<()> {
        let mut stream = self.take()?;
        reset(&stream)?;
        let mut out = std::mem::take(samples);
        let (stream, out, r) = on_worker(&self.rt, async move {
            let mut src = vec![0u8; size];
            let r = async {
                let mut fb = 0;
                for i in 0..n {
                    let seed = seed0 + i;
                    pattern::fill(&mut src, seed);
                    let t0 = Instant::now();
                    fb += send(&mut stream, &src).await?;
                    {
                        let reply = stream
                            .read_exact_bytes(size)
                            .await
                            .map_err(|e| anyhow!("shmipc read_exact_bytes: {e}"))?;
                        check("shmipc reply", &reply, size, seed ^ REPLY)?;
                    }
                    stream.recv_buf().release_previous_read();
                    out.push(t0.elapsed().as_nanos() as u64);
                }
                anyhow::Ok(fb)
            }
            .await;
            (stream, out, r)
        })?;
        self.stream = Some(stream);
        *samples = out;
        self.fallbacks += r?;
        Ok(())
    }

    fn stream(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let mut stream = self.take()?;
        reset(&stream)?;
        let (stream, r) = on_worker(&self.rt, async move {
            let mut src = vec![0u8; size];
            let r = async {
                let mut fb = 0;
                for i in 0..n {
                    pattern::fill(&mut src, seed0 + i);
                    fb += send(&mut stream, &src).await?;
                }
                anyhow::Ok(fb)
            }
            .await;
            (stream, r)
        })?;
        self.stream = Some(stream);
        self.fallbacks += r?;
        Ok(())
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        let stream = self.stream.take();
        let sm = self.sm.clone();
        on_worker(&self.rt, async move {
            let r = match stream {
                Some(mut s) => s
                    .close()
                    .await
                    .map_err(|e| anyhow!("shmipc stream close: {e}")),
                None => Ok(()),
            };
            sm.close().await;
            r
        })?
    }

    fn fallbacks(&self) -> u64 {
        self.fallbacks
    }
}

impl ChildSide {
    fn take(&mut self) -> Result<Stream> {
        self.stream
            .take()
            .context("the shmipc stream was lost in an earlier failure")
    }
}

impl Child for ChildSide {
    fn echo(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let mut stream = self.take()?;
        reset(&stream)?;
        let (stream, r) = on_worker(&self.rt, async move {
            let mut reply = message(size, 0);
            let r = async {
                let mut fb = 0;
                for i in 0..n {
                    let seed = seed0 + i;
                    pattern::fill(&mut reply, seed ^ REPLY);
                    {
                        let req = stream
                            .read_exact_bytes(size)
                            .await
                            .map_err(|e| anyhow!("shmipc read_exact_bytes: {e}"))?;
                        check("shmipc request", &req, size, seed)?;
                    }
                    stream.recv_buf().release_previous_read();
                    fb += send(&mut stream, &reply).await?;
                }
                anyhow::Ok(fb)
            }
            .await;
            (stream, r)
        })?;
        self.stream = Some(stream);
        self.fallbacks += r?;
        Ok(())
    }

    fn sink(&mut self, size: usize, n: u64, seed0: u64) -> Result<()> {
        let mut stream = self.take()?;
        reset(&stream)?;
        let (stream, r) = on_worker(&self.rt, async move {
            let r = async {
                for i in 0..n {
                    {
                        let m = stream
                            .read_exact_bytes(size)
                            .await
                            .map_err(|e| anyhow!("shmipc read_exact_bytes: {e}"))?;
                        check("shmipc stream", &m, size, seed0 + i)?;
                    }
                    stream.recv_buf().release_previous_read();
                }
                anyhow::Ok(())
            }
            .await;
            (stream, r)
        })?;
        self.stream = Some(stream);
        r
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        let stream = self.stream.take();
        let listener = self.listener.take();
        on_worker(&self.rt, async move {
            // The lead closed its side first: the session may already be gone, so the
            // stream's close notice can fail to send; that is not an error here.
            if let Some(mut s) = stream {
                let _ = s.close().await;
            }
            if let Some(l) = listener {
                l.close().await;
            }
        })
    }

    fn fallbacks(&self) -> u64 {
        self.fallbacks
    }
}
