//! `shmrpc soak`: a bounded load-and-soak run against a server in a second process.
//!
//! Many clients (each its own connection) call a server process for `--duration`:
//! checked unary calls of random sizes (a checksum in each request and each answer,
//! verified on both sides), streams read to the end or dropped midway (a cancel), calls
//! cut short by their deadline (a cancel the handler sees), and churn (a client drops its
//! connection and connects again). Every `--every` it prints the window's calls per second,
//! p50/p99 of the unary calls, the server's resident memory, descriptors and tasks, and the
//! integrity errors so far. At the end: totals, the p99 drift (last window over the
//! first), the server's memory growth, and a non-zero exit status if any answer was wrong
//! or the server leaked connections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shmrpc::{CallOptions, Client, ClientConfig, Code, RpcError, Server};

use shmrpc_bench::child::spawn_self;
use shmrpc_bench::stats::{fmt_count, fmt_us};

/// Arguments of `shmrpc soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to run: `90s`, `10m`, `1h`, `500ms`.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Clients, each with its own connection.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Report interval (default: a tenth of the duration, at least 1 s).
    #[arg(long, value_parser = parse_duration)]
    pub every: Option<Duration>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit (ms, s, m, h)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    if !(secs > 0.0 && secs < 1e7) {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// FNV-1a over the bytes (the integrity check of requests and answers).
fn sum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `len` bytes from `seed`, then their checksum.
fn request(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut r: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    r.extend_from_slice(&sum(&r).to_le_bytes());
    r
}

/// Whether the last 8 bytes are the checksum of the rest.
fn intact(r: &[u8]) -> bool {
    r.len() >= 8 && sum(&r[..r.len() - 8]).to_le_bytes() == r[r.len() - 8..]
}

/// The server's answer to a request: its bytes reversed (checksum included), then the
/// checksum of that.
fn answer(req: &[u8]) -> Vec<u8> {
    let mut a: Vec<u8> = req.iter().rev().copied().collect();
    a.extend_from_slice(&sum(&a).to_le_bytes());
    a
}

/// The number after `key=` in a stats line (0 if absent).
fn stat(line: &str, key: &str) -> u64 {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn token(seed: u64, i: u32) -> String {
    format!("t{seed:x}.{i}")
}

/// The server process (`shmrpc soak-server`): serves until its stdin closes.
pub fn server(name: &str) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bad = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let (b1, c1, b2, c2) = (bad.clone(), calls.clone(), bad.clone(), calls.clone());
    rt.block_on(async move {
        let server = Server::builder()
            .unary_raw("check", move |_ctx, req| {
                c1.fetch_add(1, Ordering::Relaxed);
                if !intact(&req) {
                    b1.fetch_add(1, Ordering::Relaxed);
                }
                async move { Ok(answer(&req)) }
            })
            .streaming("stream", |ctx, (seed, n): (u64, u32), sink| async move {
                for i in 0..n {
                    if ctx.is_cancelled() {
                        return Err(RpcError::new(Code::Cancelled, "stream cancelled"));
                    }
                    sink.send(&(i, token(seed, i))).await?;
                    tokio::task::yield_now().await;
                }
                Ok(())
            })
            .unary_raw("slow", |ctx, req| async move {
                tokio::select! {
                    _ = ctx.cancelled() => Err(RpcError::new(Code::Cancelled, "slow cancelled")),
                    _ = tokio::time::sleep(Duration::from_secs(10)) => Ok(req),
                }
            })
            .unary("stats", move |_ctx, (): ()| {
                let line = format!(
                    "rss_kb={} fds={} tasks={} calls={} bad={}",
                    proc_status_kb("self", "VmRSS").unwrap_or(0),
                    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()),
                    tokio::runtime::Handle::current()
                        .metrics()
                        .num_alive_tasks(),
                    c2.load(Ordering::Relaxed),
                    b2.load(Ordering::Relaxed),
                );
                async move { Ok::<_, RpcError>(line) }
            })
            .bind(name)
            .context("binding the soak server")?;
        let handle = server.handle();
        let serving = tokio::spawn(server.serve());
        println!("ready");
        // Until the lead closes our stdin (or dies).
        tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            while std::io::stdin().read_line(&mut s).is_ok_and(|n| n > 0) {
                s.clear();
            }
        })
        .await?;
        handle.shutdown();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .context("the soak server did not shut down")??;
        println!("done");
        Ok(())
    })
}

fn proc_status_kb(pid: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// What the clients share.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    items: AtomicU64,
    cancels: AtomicU64,
    reconnects: AtomicU64,
    /// Wrong answers, tokens out of order, unexpected errors.
    integrity: AtomicU64,
    /// Unary latencies of the current window, in ns.
    window: Mutex<Vec<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn wrong(&self, what: String) {
        self.integrity.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().expect("poisoned");
        first.get_or_insert(what);
    }
}

async fn client_loop(name: String, seed: u64, until: Instant, t: Arc<Tally>) {
    let mut x = seed | 1;
    let mut rand = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let cfg = ClientConfig::default();
    let mut client: Option<Client> = None;
    let mut k = 0u64;
    while Instant::now() < until {
        let c = match &client {
            Some(c) => c.clone(),
            None => match Client::connect(&name, cfg.clone()).await {
                Ok(c) => {
                    t.reconnects.fetch_add(1, Ordering::Relaxed);
                    client.insert(c).clone()
                }
                Err(e) => {
                    t.wrong(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        k += 1;
        match rand(100) {
            0..=69 => {
                let req = request(seed ^ k, 16 + rand(4096) as usize);
                let start = Instant::now();
                match c.call_raw("check", &req, CallOptions::default()).await {
                    Ok(a) if a == answer(&req) && intact(&a) => {
                        let ns = start.elapsed().as_nanos() as u64;
                        t.window.lock().expect("poisoned").push(ns);
                        t.calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => t.wrong("a wrong answer".into()),
                    Err(e) => t.wrong(format!("check: {e}")),
                }
            }
            70..=84 => {
                let n = 1 + rand(50) as u32;
                let stop = rand(u64::from(n) + 20) as u32;
                match c
                    .call_stream("stream", &(k, n), CallOptions::default())
                    .await
                {
                    Ok(mut s) => {
                        let mut i = 0;
                        while i < stop {
                            match s.next::<(u32, String)>().await {
                                None => break,
                                Some(Ok((j, tok))) if j == i && tok == token(k, i) => {
                                    t.items.fetch_add(1, Ordering::Relaxed);
                                    i += 1;
                                }
                                Some(Ok(_)) => {
                                    t.wrong(format!("stream item {i} out of order"));
                                    break;
                                }
                                Some(Err(e)) => {
                                    t.wrong(format!("stream: {e}"));
                                    break;
                                }
                            }
                        }
                        if i < n {
                            t.cancels.fetch_add(1, Ordering::Relaxed); // dropped midway
                        }
                        t.calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => t.wrong(format!("stream start: {e}")),
                }
            }
            85..=94 => {
                let d = Duration::from_millis(1 + rand(5));
                match c.call_raw("slow", b"z", CallOptions::timeout(d)).await {
                    Err(e) if e.code == Code::DeadlineExceeded => {
                        t.cancels.fetch_add(1, Ordering::Relaxed);
                        t.calls.fetch_add(1, Ordering::Relaxed);
                    }
                    other => t.wrong(format!("slow: {other:?}")),
                }
            }
            _ => client = None, // churn
        }
    }
}

/// Runs the soak.
pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let every = args
        .every
        .unwrap_or(args.duration / 10)
        .max(Duration::from_secs(1))
        .min(args.duration);
    let name = format!("soak-{}", std::process::id());
    let mut peer = spawn_self(&["soak-server".to_owned(), "--name".to_owned(), name.clone()])?;
    peer.expect("ready", Duration::from_secs(10))?;
    let server_pid = peer.pid().to_string();
    println!(
        "shmrpc soak: {} clients for {:?} against server pid {server_pid}, a report every {every:?}",
        args.clients, args.duration
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let t = Arc::new(Tally::default());
    let start = Instant::now();
    let until = start + args.duration;
    let result = rt.block_on(async {
        let probe = Client::connect(&name, ClientConfig::default()).await?;
        let stats = |p: Client| async move {
            p.call::<(), String>("stats", &(), CallOptions::timeout(Duration::from_secs(10)))
                .await
        };
        let baseline = stats(probe.clone()).await?;
        let mut tasks = Vec::new();
        for i in 0..args.clients {
            let seed = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1);
            tasks.push(tokio::spawn(client_loop(
                name.clone(),
                seed,
                until,
                t.clone(),
            )));
        }
        let mut windows: Vec<(f64, u64, u64)> = Vec::new(); // (p99 ns, rss kB, calls/s)
        let mut last_calls = 0;
        let mut next = start + every;
        while Instant::now() < until {
            tokio::time::sleep_until(next.min(until).into()).await;
            next += every;
            let mut w = std::mem::take(&mut *t.window.lock().expect("poisoned"));
            w.sort_unstable();
            let q = |p: f64| w.get(((w.len() as f64 * p) as usize).min(w.len().saturating_sub(1)));
            let (p50, p99) = (q(0.5).copied().unwrap_or(0), q(0.99).copied().unwrap_or(0));
            let calls = t.calls.load(Ordering::Relaxed);
            let rate = (calls - last_calls) as f64 / every.as_secs_f64();
            last_calls = calls;
            let s = stats(probe.clone()).await?;
            let field = |k: &str| stat(&s, k);
            println!(
                "  t={:>6.1}s  {:>9} calls/s  unary p50 {:>9}  p99 {:>9}  server rss {:>6} kB  \
                 fds {:>4}  tasks {:>4}  integrity errors {}",
                start.elapsed().as_secs_f64(),
                fmt_count(rate as u64),
                fmt_us(p50 as f64 / 1000.0),
                fmt_us(p99 as f64 / 1000.0),
                field("rss_kb"),
                field("fds"),
                field("tasks"),
                t.integrity.load(Ordering::Relaxed) + field("bad"),
            );
            if !w.is_empty() {
                windows.push((p99 as f64, field("rss_kb"), rate as u64));
            }
        }
        for task in tasks {
            task.await?;
        }
        // Every churned and finished connection freed: back to the baseline's fds and tasks.
        let field = stat;
        let mut settled = stats(probe.clone()).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while (field(&settled, "fds") > field(&baseline, "fds")
            || field(&settled, "tasks") > field(&baseline, "tasks"))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
            settled = stats(probe.clone()).await?;
        }
        anyhow::Ok((baseline, settled, windows))
    });
    let (baseline, settled, windows) = result?;
    let field = stat;
    let bad_on_server = field(&settled, "bad");
    let integrity = t.integrity.load(Ordering::Relaxed) + bad_on_server;
    let leaked = field(&settled, "fds") > field(&baseline, "fds")
        || field(&settled, "tasks") > field(&baseline, "tasks");
    println!();
    println!(
        "calls {}  stream items {}  cancels {}  connections made {}  in {:.1} s",
        fmt_count(t.calls.load(Ordering::Relaxed)),
        fmt_count(t.items.load(Ordering::Relaxed)),
        fmt_count(t.cancels.load(Ordering::Relaxed)),
        fmt_count(t.reconnects.load(Ordering::Relaxed)),
        start.elapsed().as_secs_f64()
    );
    if let (Some(first), Some(last)) = (windows.first(), windows.last()) {
        let drift = if first.0 > 0.0 { last.0 / first.0 } else { 0.0 };
        println!(
            "p99 drift (last window / first) {drift:.2}x  server rss first {} kB, last {} kB \
             (growth {} kB)",
            first.1,
            last.1,
            last.1 as i64 - first.1 as i64
        );
    }
    println!(
        "server at the end: {settled} (at the start: {baseline}); leaked connections: {}",
        if leaked { "YES" } else { "none" }
    );
    println!("integrity errors {integrity}");
    // End of its input: the server shuts down gracefully.
    peer.close_input();
    peer.expect("done", Duration::from_secs(15))?;
    let status = peer.finish(Duration::from_secs(5))?;
    if !status.success() {
        bail!("the soak server exited with {status}");
    }
    if integrity > 0 {
        let first = t.first_error.lock().expect("poisoned").clone();
        bail!(
            "{integrity} integrity errors (first: {})",
            first.unwrap_or_else(|| "on the server".into())
        );
    }
    if leaked {
        bail!("the server holds more descriptors or tasks than before the soak");
    }
    Ok(())
}
