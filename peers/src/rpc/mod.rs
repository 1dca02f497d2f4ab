//! shmrpc's RPC layer beside the RPC frameworks a user would pick instead (tarpc and tonic,
//! each over a Unix socket), between the same two processes as the raw-channel cases.
//!
//! The child runs the servers, the lead the clients; both processes run one tokio
//! multi-thread runtime with one worker thread (each process is pinned to one CPU), the same
//! for every system. The cases (ids `peer.rpc.<case>.<system>`):
//! - `unary64`, `unary4k`: sequential unary calls of 64 B / 4 KiB each way; p50 and p99;
//! - `pipe64`: 64 B calls, 64 caller tasks on one connection; calls per second, and the CPU
//!   time per call of each process;
//! - `conns16`: 64 B calls, 16 connections × 16 caller tasks; the same figures;
//! - `stream32`: one server-streaming call of 100,000 items of 32 B; items per second and
//!   the time to the first item. Its floor runs beside it (`shmrpc-channel`: the same items
//!   through a bare `shmrpc::channel` ring, written and checked in place, no RPC), so that
//!   the report can say how much of the gap to a target is the transport's.
//!
//! Payloads: a request of `size` bytes is its seed (8 bytes, little endian) followed by the
//! pattern of that seed; the server checks it and answers with the seed `^ REPLY` and its
//! pattern, which the client checks. A stream request is its first seed and the item count;
//! item `i` carries seed `seed0 + i` and its pattern. Ratios: shmrpc's figure over the
//! peer's, per round, median over rounds.

pub mod systems;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shmrpc_harness::{median, quantile};

use crate::control::Peer;
use crate::pattern::{self, REPLY};
use crate::sys::{check, RunEnv};
use systems::{RpcLead, RpcSys};

/// One workload of the RPC cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcWork {
    /// Sequential unary calls of this many bytes each way.
    Unary(usize),
    /// Unary 64 B calls: connections × caller tasks per connection.
    Pipelined { conns: usize, tasks: usize },
    /// One server-streaming call of 32 B items.
    Stream,
}

/// Every workload, in table order.
pub const WORKS: [(RpcWork, &str); 5] = [
    (RpcWork::Unary(64), "unary64"),
    (RpcWork::Unary(4096), "unary4k"),
    (
        RpcWork::Pipelined {
            conns: 1,
            tasks: 64,
        },
        "pipe64",
    ),
    (
        RpcWork::Pipelined {
            conns: 16,
            tasks: 16,
        },
        "conns16",
    ),
    (RpcWork::Stream, "stream32"),
];

/// Size of a pipelined call's request and reply.
pub const PIPE_SIZE: usize = 64;
/// Size of a stream item.
pub const ITEM_SIZE: usize = 32;

/// One measured run.
#[derive(Debug, Clone)]
pub enum RpcRound {
    /// Every call's time (ns), sorted.
    Unary(Vec<u64>),
    /// Calls per second, and CPU ns per call in the lead and the child.
    Pipelined { rate: f64, cpu: [f64; 2] },
    /// Items per second, and ns to the first item.
    Stream { rate: f64, first_ns: f64 },
}

/// A workload over one system.
#[derive(Debug)]
pub struct RpcCase {
    pub sys: RpcSys,
    pub work: RpcWork,
    pub id: String,
    pub na: Option<String>,
    pub n: u64,
    pub rounds: Vec<Option<RpcRound>>,
}

/// Everything the report needs about the RPC cases.
#[derive(Debug, Default)]
pub struct RpcRun {
    pub cases: Vec<RpcCase>,
    /// Tokio runtime of each process.
    pub runtime: String,
    /// The stream case's own work per item, alone ([`item_work`]), once per measured round.
    pub item_work: Vec<ItemWork>,
}

/// What the stream case's own code costs per item, with no RPC system at all: the rate at
/// which one thread writes items (as every server here does) and checks them (as every
/// client does). Each end of a stream does one of the two, in its own process, so no
/// system can stream faster than the slower of the two rates.
#[derive(Debug, Clone, Copy)]
pub struct ItemWork {
    /// Items written per second.
    pub fill: f64,
    /// Items checked per second.
    pub check: f64,
}

/// Measures [`ItemWork`] over `n` items in this thread, a frame's worth at a time (512
/// items, 16 KiB, which stay in the cache as a frame does): each item written in place with
/// the servers' `fill_request`, then read back with the clients' `check_item`.
///
/// # Errors
/// An item that does not check (a bug in the pattern code).
pub fn item_work(n: u64, seed0: u64) -> Result<ItemWork> {
    const FRAME: u64 = 512;
    let mut buf = vec![1u8; FRAME as usize * ITEM_SIZE];
    let (mut fill, mut check) = (Duration::ZERO, Duration::ZERO);
    let mut at = 0;
    while at < n {
        let k = (n - at).min(FRAME);
        let frame = &mut buf[..k as usize * ITEM_SIZE];
        let t0 = Instant::now();
        for (j, item) in frame.chunks_exact_mut(ITEM_SIZE).enumerate() {
            fill_request(item, seed0 + at + j as u64);
        }
        let t1 = Instant::now();
        // Read as written by someone else: not folded into the loop above.
        for (j, item) in std::hint::black_box(&*frame)
            .chunks_exact(ITEM_SIZE)
            .enumerate()
        {
            check_item("item work", item, seed0 + at + j as u64)?;
        }
        let t2 = Instant::now();
        fill += t1 - t0;
        check += t2 - t1;
        at += k;
    }
    Ok(ItemWork {
        fill: n as f64 / fill.as_secs_f64(),
        check: n as f64 / check.as_secs_f64(),
    })
}

/// Whether any RPC case is selected by `--only` prefixes (all are when there are none).
pub fn any_selected(only: &[String]) -> bool {
    all_cases().iter().any(|c| is_selected(only, c))
}

fn is_selected(only: &[String], c: &RpcCase) -> bool {
    only.is_empty() || only.iter().any(|p| c.id.starts_with(p.as_str()))
}

fn all_cases() -> Vec<RpcCase> {
    let mut v = Vec::new();
    for (work, wname) in WORKS {
        for sys in RpcSys::ALL {
            if sys == RpcSys::Channel && work != RpcWork::Stream {
                // The floor of the stream only: no rows of "n/a" elsewhere.
                continue;
            }
            v.push(RpcCase {
                sys,
                work,
                id: format!("peer.rpc.{wname}.{}", sys.name()),
                na: sys.na(work).map(str::to_owned),
                n: 0,
                rounds: Vec::new(),
            });
        }
    }
    v
}

/// The process's CPU time so far (user + system, all threads), ns.
pub fn cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// A request of `size` bytes for `seed`.
pub fn request(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size.max(8)];
    fill_request(&mut v, seed);
    v
}

/// Writes the request for `seed` into `buf` (its whole length, at least 8 bytes).
pub fn fill_request(buf: &mut [u8], seed: u64) {
    buf[..8].copy_from_slice(&seed.to_le_bytes());
    pattern::fill(&mut buf[8..], seed);
}

/// Checks a request (or a stream item) and returns its seed.
#[inline]
pub fn check_request(what: &str, got: &[u8]) -> Result<u64> {
    if got.len() < 8 {
        bail!("{what}: {} bytes, too short", got.len());
    }
    let seed = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
    check(what, &got[8..], got.len() - 8, seed)?;
    Ok(seed)
}

/// The server's reply to a checked request of `size` bytes with `seed`.
pub fn reply(size: usize, seed: u64) -> Vec<u8> {
    request(size, seed ^ REPLY)
}

/// Checks a reply to the request `seed` of `size` bytes.
pub fn check_reply(what: &str, got: &[u8], size: usize, seed: u64) -> Result<()> {
    if got.len() != size {
        bail!("{what}: {} bytes instead of {size}", got.len());
    }
    let s = check_request(what, got)?;
    if s != seed ^ REPLY {
        bail!("{what}: reply to request {s:#x} instead of {seed:#x}");
    }
    Ok(())
}

/// A stream request: first seed and item count.
pub fn stream_request(seed0: u64, n: u64) -> Vec<u8> {
    let mut v = seed0.to_le_bytes().to_vec();
    v.extend_from_slice(&n.to_le_bytes());
    v
}

/// Parses a stream request.
pub fn parse_stream_request(b: &[u8]) -> Result<(u64, u64)> {
    if b.len() != 16 {
        bail!("stream request of {} bytes instead of 16", b.len());
    }
    Ok((
        u64::from_le_bytes(b[..8].try_into().expect("8")),
        u64::from_le_bytes(b[8..].try_into().expect("8")),
    ))
}

/// Checks stream item `i` (seed `seed0 + i`).
#[inline]
pub fn check_item(what: &str, got: &[u8], seed: u64) -> Result<()> {
    if got.len() != ITEM_SIZE {
        bail!("{what}: item of {} bytes instead of {ITEM_SIZE}", got.len());
    }
    let s = check_request(what, got)?;
    if s != seed {
        bail!(
            "{what}: item {:+} arrived in place of item {seed:#x}",
            s as i64 - seed as i64
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The child

/// The child's servers, one per system, on one runtime.
pub struct ChildState {
    rt: Option<tokio::runtime::Runtime>,
    servers: Vec<Option<systems::RpcServer>>,
}

impl ChildState {
    pub fn new() -> Self {
        Self {
            rt: None,
            servers: RpcSys::ALL.iter().map(|_| None).collect(),
        }
    }
}

/// A tokio multi-thread runtime with one worker (each process is pinned to one CPU).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting a tokio runtime")
}

/// The flavour of [`runtime`], for the report.
pub const RUNTIME: &str = "tokio multi-thread runtime, 1 worker thread, in each process";

/// Runs an `rpc...` command of the control pipe; answers with one line.
pub fn child_command(
    st: &mut ChildState,
    env: &RunEnv,
    ctl: &shmrpc_harness::Control,
    words: &[&str],
) -> Result<()> {
    let sys = |w: Option<&&str>| -> Result<RpcSys> {
        let i: usize = w.context("system index")?.parse()?;
        RpcSys::ALL.get(i).copied().context("bad system index")
    };
    match words.first().copied() {
        Some("rpcsetup") => {
            let s = sys(words.get(1))?;
            if st.rt.is_none() {
                st.rt = Some(runtime()?);
            }
            let rt = st.rt.as_ref().expect("runtime");
            let server = systems::serve(s, env, rt)?;
            st.servers[s.index()] = Some(server);
            ctl.say("ok")?;
        }
        Some("rpcclose") => {
            let s = sys(words.get(1))?;
            if let (Some(srv), Some(rt)) = (st.servers[s.index()].take(), st.rt.as_ref()) {
                srv.close(rt)?;
            }
            ctl.say("ok")?;
        }
        Some("rpccpu") => ctl.say(&format!("ok {}", cpu_ns()))?,
        other => bail!("unknown rpc command {other:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The lead

const SETUP_LIMIT: Duration = Duration::from_secs(60);

fn child_cpu(peer: &mut Peer) -> Result<u64> {
    peer.send("rpccpu")?;
    let s = peer.expect("ok", SETUP_LIMIT)?;
    s.parse().with_context(|| format!("child CPU time {s:?}"))
}

/// Runs the selected RPC cases: setup, a warm-up round and `rounds` measured rounds, systems
/// rotated from round to round, teardown.
pub fn run(
    only: &[String],
    quick: bool,
    rounds: usize,
    target: Duration,
    peer: &mut Peer,
    env: &RunEnv,
    seed: &mut u64,
) -> Result<RpcRun> {
    // Selected cases plus shmrpc's (the baseline) of the same workloads.
    let all = all_cases();
    let works: Vec<RpcWork> = WORKS
        .iter()
        .map(|w| w.0)
        .filter(|w| all.iter().any(|c| c.work == *w && is_selected(only, c)))
        .collect();
    let mut cases: Vec<RpcCase> = all
        .into_iter()
        .filter(|c| works.contains(&c.work) && (is_selected(only, c) || c.sys == RpcSys::Shmrpc))
        .collect();
    let systems: Vec<RpcSys> = RpcSys::ALL
        .iter()
        .copied()
        .filter(|s| cases.iter().any(|c| c.sys == *s && c.na.is_none()))
        .collect();
    let rt = runtime()?;
    let mut leads: Vec<Option<RpcLead>> = RpcSys::ALL.iter().map(|_| None).collect();
    for &s in &systems {
        let _w = crate::watchdog::arm(format!("setting up rpc {}", s.name()), SETUP_LIMIT);
        let t = Instant::now();
        let r = peer
            .send(&format!("rpcsetup {}", s.index()))
            .and_then(|()| peer.expect("ok", SETUP_LIMIT))
            .and_then(|_| systems::connect(s, env, &rt));
        match r {
            Ok(l) => {
                leads[s.index()] = Some(l);
                eprintln!(
                    "  set up rpc {} in {:.0} ms",
                    s.name(),
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e) => {
                eprintln!("  rpc {}: setup failed: {e:#}", s.name());
                for c in cases.iter_mut().filter(|c| c.sys == s) {
                    c.na.get_or_insert_with(|| format!("setup failed: {e:#}"));
                }
            }
        }
    }
    let limit = target * 10 + Duration::from_secs(60);
    let stream_n: u64 = if quick { 5_000 } else { 100_000 };
    let mut work_alone = Vec::new();
    for round in 0..=rounds {
        let warm = round == 0;
        let t_round = Instant::now();
        for &work in &works {
            let mut idx: Vec<usize> = (0..cases.len())
                .filter(|&i| cases[i].work == work && cases[i].na.is_none())
                .filter(|&i| leads[cases[i].sys.index()].is_some())
                .collect();
            if idx.is_empty() {
                continue;
            }
            let k = round % idx.len();
            idx.rotate_left(k);
            for i in idx {
                let c = &mut cases[i];
                let lead = leads[c.sys.index()].as_mut().expect("present");
                let n = match work {
                    _ if !warm => c.n,
                    RpcWork::Unary(_) => {
                        if quick {
                            50
                        } else {
                            300
                        }
                    }
                    RpcWork::Pipelined { conns, tasks } => {
                        (conns * tasks) as u64 * if quick { 5 } else { 20 }
                    }
                    RpcWork::Stream => stream_n / 10,
                };
                let seed0 = *seed;
                *seed += n + 1;
                let _w = crate::watchdog::arm(format!("{} ({n} calls)", c.id), limit);
                let r = run_one(peer, &rt, lead, work, n, seed0)
                    .with_context(|| format!("{} (round {round}, {n} calls)", c.id));
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        // A failed check or call: no figures for this case; the others go on.
                        eprintln!("  {}: FAILED: {e:#}", c.id);
                        c.na = Some(format!("FAILED in round {round}: {e:#}"));
                        continue;
                    }
                };
                if warm {
                    c.n = size_case(quick, target, work, n, &r, stream_n);
                } else {
                    c.rounds.push(Some(r));
                }
            }
            if work == RpcWork::Stream && !warm {
                // Right after the round's stream runs, so that it sees the same machine.
                work_alone.push(item_work(stream_n, *seed)?);
            }
        }
        eprintln!(
            "  rpc {} done in {:.1} s",
            if warm {
                "warm-up round".to_owned()
            } else {
                format!("round {round}/{rounds}")
            },
            t_round.elapsed().as_secs_f64()
        );
    }
    for &s in &systems {
        if let Some(l) = leads[s.index()].take() {
            let _w = crate::watchdog::arm(format!("closing rpc {}", s.name()), SETUP_LIMIT);
            l.close(&rt);
            let r = peer
                .send(&format!("rpcclose {}", s.index()))
                .and_then(|()| peer.expect("ok", SETUP_LIMIT));
            if let Err(e) = r {
                eprintln!("  closing rpc {}: {e:#}", s.name());
            }
        }
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(RpcRun {
        cases,
        runtime: RUNTIME.to_owned(),
        item_work: work_alone,
    })
}

fn size_case(
    quick: bool,
    target: Duration,
    work: RpcWork,
    n: u64,
    r: &RpcRound,
    stream_n: u64,
) -> u64 {
    let t = target.as_secs_f64();
    match (work, r) {
        (RpcWork::Unary(_), RpcRound::Unary(s)) => {
            let p50 = quantile(s, 0.5).unwrap_or(1) as f64 * 1e-9;
            let (lo, hi) = if quick { (50, 2_000) } else { (200, 20_000) };
            ((t / p50) as u64).clamp(lo, hi)
        }
        (RpcWork::Pipelined { conns, tasks }, RpcRound::Pipelined { rate, .. }) => {
            let per = (conns * tasks) as u64;
            let (lo, hi) = if quick { (5, 50) } else { (20, 2_000) };
            // Twice the target: the runs are short against the connection count.
            let calls = (2.0 * t * rate) as u64 / per;
            calls.clamp(lo, hi) * per
        }
        (RpcWork::Stream, _) => stream_n,
        _ => n,
    }
}

fn run_one(
    peer: &mut Peer,
    rt: &tokio::runtime::Runtime,
    lead: &mut RpcLead,
    work: RpcWork,
    n: u64,
    seed0: u64,
) -> Result<RpcRound> {
    match work {
        RpcWork::Unary(size) => {
            let mut samples = lead.unary(rt, size, n, seed0)?;
            samples.sort_unstable();
            Ok(RpcRound::Unary(samples))
        }
        RpcWork::Pipelined { conns, tasks } => {
            let child0 = child_cpu(peer)?;
            let lead0 = cpu_ns();
            let t0 = Instant::now();
            lead.pipelined(rt, conns, tasks, n, seed0)?;
            let dt = t0.elapsed().as_secs_f64();
            let lead1 = cpu_ns();
            let child1 = child_cpu(peer)?;
            Ok(RpcRound::Pipelined {
                rate: n as f64 / dt,
                cpu: [
                    (lead1 - lead0) as f64 / n as f64,
                    (child1 - child0) as f64 / n as f64,
                ],
            })
        }
        RpcWork::Stream => {
            let (dt, first) = lead.stream(rt, n, seed0)?;
            Ok(RpcRound::Stream {
                rate: n as f64 / dt.as_secs_f64(),
                first_ns: first.as_nanos() as f64,
            })
        }
    }
}

// ---------------------------------------------------------------------------------------
// Figures

/// The per-round metrics of a round: the primary (p50, calls/s, items/s) and a secondary
/// (p99, lead CPU/call, time to first item).
fn metrics(r: &RpcRound) -> [f64; 2] {
    match r {
        RpcRound::Unary(s) => [
            quantile(s, 0.5).map_or(f64::NAN, |x| x as f64),
            quantile(s, 0.99).map_or(f64::NAN, |x| x as f64),
        ],
        RpcRound::Pipelined { rate, cpu } => [*rate, cpu[0] + cpu[1]],
        RpcRound::Stream { rate, first_ns } => [*rate, *first_ns],
    }
}

fn measured(c: &RpcCase) -> bool {
    c.na.is_none() && c.rounds.iter().any(Option::is_some)
}

/// Medians over rounds of shmrpc's metric over `c`'s (both metrics).
fn ratios(base: &RpcCase, c: &RpcCase) -> [Option<f64>; 2] {
    let per = |k: usize| -> Option<f64> {
        let v: Vec<f64> = base
            .rounds
            .iter()
            .zip(&c.rounds)
            .filter_map(|(b, x)| Some(metrics(b.as_ref()?)[k] / metrics(x.as_ref()?)[k]))
            .collect();
        median(&v)
    };
    [per(0), per(1)]
}

/// The figures of a case: unary [p50, p99] pooled; pipelined [calls/s, lead CPU, child CPU]
/// medians; stream [items/s, first item ns] medians.
fn figures(c: &RpcCase) -> Vec<f64> {
    let rounds: Vec<&RpcRound> = c.rounds.iter().flatten().collect();
    let med = |f: &dyn Fn(&RpcRound) -> f64| -> f64 {
        median(&rounds.iter().map(|r| f(r)).collect::<Vec<_>>()).unwrap_or(f64::NAN)
    };
    match c.work {
        RpcWork::Unary(_) => {
            let mut all: Vec<u64> = rounds
                .iter()
                .flat_map(|r| match r {
                    RpcRound::Unary(s) => s.clone(),
                    _ => Vec::new(),
                })
                .collect();
            all.sort_unstable();
            let q = |q: f64| quantile(&all, q).map_or(f64::NAN, |x| x as f64);
            vec![q(0.5), q(0.99)]
        }
        RpcWork::Pipelined { .. } => vec![
            med(&|r| match r {
                RpcRound::Pipelined { rate, .. } => *rate,
                _ => f64::NAN,
            }),
            med(&|r| match r {
                RpcRound::Pipelined { cpu, .. } => cpu[0],
                _ => f64::NAN,
            }),
            med(&|r| match r {
                RpcRound::Pipelined { cpu, .. } => cpu[1],
                _ => f64::NAN,
            }),
        ],
        RpcWork::Stream => vec![
            med(&|r| match r {
                RpcRound::Stream { rate, .. } => *rate,
                _ => f64::NAN,
            }),
            med(&|r| match r {
                RpcRound::Stream { first_ns, .. } => *first_ns,
                _ => f64::NAN,
            }),
        ],
    }
}

fn base_of<'a>(run: &'a RpcRun, c: &RpcCase) -> Option<&'a RpcCase> {
    run.cases
        .iter()
        .find(|b| b.sys == RpcSys::Shmrpc && b.work == c.work && measured(b))
}

fn fmt_ns(ns: f64) -> String {
    let us = ns / 1e3;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else if us >= 10.0 {
        format!("{us:.1} µs")
    } else {
        format!("{us:.2} µs")
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_ratio(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.2}"))
}

fn title(work: RpcWork) -> &'static str {
    match work {
        RpcWork::Unary(64) => "unary call, 64 B each way",
        RpcWork::Unary(_) => "unary call, 4 KiB each way",
        RpcWork::Pipelined { conns: 1, .. } => "pipelined 64 B calls, 64 in flight, 1 connection",
        RpcWork::Pipelined { .. } => "pipelined 64 B calls, 16 connections × 16 in flight",
        RpcWork::Stream => "server stream, 32 B items",
    }
}

/// Prints the RPC table.
pub fn print(run: &RpcRun) {
    println!();
    println!(
        "RPC frameworks ({}); ratios: shmrpc / the system, median of per-round ratios \
         (times: below 1 = shmrpc faster; rates: above 1 = shmrpc faster)",
        run.runtime
    );
    let mut works: Vec<RpcWork> = Vec::new();
    for c in &run.cases {
        if !works.contains(&c.work) {
            works.push(c.work);
        }
    }
    for work in works {
        println!();
        let head = match work {
            RpcWork::Unary(_) => ["p50", "p99", "n/round", "shm/p50", "shm/p99"],
            RpcWork::Pipelined { .. } => ["calls/s", "CPU lead", "CPU child", "n/round", "shm/x"],
            RpcWork::Stream => ["items/s", "1st item", "n/round", "shm/x", "shm/1st"],
        };
        println!(
            "{:<44}{:>10}{:>11}{:>11}{:>9}{:>9}{:>9}",
            title(work),
            head[0],
            head[1],
            head[2],
            head[3],
            head[4],
            if matches!(work, RpcWork::Pipelined { .. }) {
                "shm/CPU"
            } else {
                ""
            }
        );
        for c in run.cases.iter().filter(|c| c.work == work) {
            let name = format!("  {}", c.sys.name());
            if let Some(na) = &c.na {
                println!("{name:<44}n/a: {na}");
                continue;
            }
            if !measured(c) {
                println!("{name:<44}not measured");
                continue;
            }
            let f = figures(c);
            let r = match base_of(run, c) {
                Some(b) if c.sys != RpcSys::Shmrpc => ratios(b, c),
                _ => [None, None],
            };
            match work {
                RpcWork::Unary(_) => println!(
                    "{name:<44}{:>10}{:>11}{:>11}{:>9}{:>9}",
                    fmt_ns(f[0]),
                    fmt_ns(f[1]),
                    c.n,
                    fmt_ratio(r[0]),
                    fmt_ratio(r[1])
                ),
                RpcWork::Pipelined { .. } => println!(
                    "{name:<44}{:>10}{:>11}{:>11}{:>9}{:>9}{:>9}",
                    fmt_rate(f[0]),
                    fmt_ns(f[1]),
                    fmt_ns(f[2]),
                    c.n,
                    fmt_ratio(r[0]),
                    fmt_ratio(r[1])
                ),
                RpcWork::Stream => println!(
                    "{name:<44}{:>10}{:>11}{:>11}{:>9}{:>9}",
                    fmt_rate(f[0]),
                    fmt_ns(f[1]),
                    c.n,
                    fmt_ratio(r[0]),
                    fmt_ratio(r[1])
                ),
            }
        }
    }
    if let Some(w) = item_work_medians(run) {
        let tonic = stream_case(run, RpcSys::Tonic).map(|c| figures(c)[0]);
        println!(
            "  the stream's own item work, alone in one thread (no RPC system): writing {} items/s, \
             checking {} items/s{}",
            fmt_rate(w.fill),
            fmt_rate(w.check),
            tonic.map_or_else(String::new, |t| format!(
                "; no system streams faster than the slower, {:.1}× tonic's items/s",
                w.fill.min(w.check) / t
            ))
        );
    }
    if let Some(f) = stream_floor(run) {
        println!(
            "  the stream's floor (shmrpc-channel: the same items written and checked in place in \
             a bare ring between the two processes, no RPC): {} items/s{}; shmrpc's RPC stream \
             reaches {} of it",
            fmt_rate(f.rate),
            f.over_tonic
                .map_or_else(String::new, |t| format!(", {t:.1}× tonic's")),
            fmt_ratio(f.shmrpc_share),
        );
    }
    println!(
        "  (CPU: CPU time per call of each whole process, CLOCK_PROCESS_CPUTIME_ID around the \
         run; shm/CPU: shmrpc's lead + child CPU per call over the system's)"
    );
}

/// The medians over rounds of [`ItemWork`]'s two rates.
fn item_work_medians(run: &RpcRun) -> Option<ItemWork> {
    let fill: Vec<f64> = run.item_work.iter().map(|w| w.fill).collect();
    let check: Vec<f64> = run.item_work.iter().map(|w| w.check).collect();
    Some(ItemWork {
        fill: median(&fill)?,
        check: median(&check)?,
    })
}

/// The stream case of system `s`, if it was measured.
fn stream_case(run: &RpcRun, s: RpcSys) -> Option<&RpcCase> {
    run.cases
        .iter()
        .find(|c| c.work == RpcWork::Stream && c.sys == s && measured(c))
}

/// The stream's floor ([`RpcSys::Channel`]) in a run.
struct StreamFloor {
    /// Its items per second (median over rounds).
    rate: f64,
    /// Its items/s over tonic's (median of per-round ratios).
    over_tonic: Option<f64>,
    /// shmrpc's RPC stream over it (median of per-round ratios).
    shmrpc_share: Option<f64>,
}

fn stream_floor(run: &RpcRun) -> Option<StreamFloor> {
    let case = |s| stream_case(run, s);
    let floor = case(RpcSys::Channel)?;
    Some(StreamFloor {
        rate: figures(floor)[0],
        over_tonic: case(RpcSys::Tonic).and_then(|t| ratios(floor, t)[0]),
        shmrpc_share: case(RpcSys::Shmrpc).and_then(|b| ratios(b, floor)[0]),
    })
}

/// The RPC part of the JSON document.
pub fn json(run: &RpcRun) -> Value {
    let cases: Vec<Value> = run
        .cases
        .iter()
        .map(|c| {
            let mut o = json!({
                "id": c.id,
                "system": c.sys.name(),
                "rounds": c.rounds.iter().flatten().count(),
                "n_per_round": c.n,
                "na": c.na,
            });
            let m = o.as_object_mut().expect("object");
            if measured(c) {
                let f = figures(c);
                let r = match base_of(run, c) {
                    Some(b) if c.sys != RpcSys::Shmrpc => ratios(b, c),
                    _ => [None, None],
                };
                let keys: &[&str] = match c.work {
                    RpcWork::Unary(_) => &["p50_ns", "p99_ns"],
                    RpcWork::Pipelined { .. } => &[
                        "calls_per_s",
                        "lead_cpu_ns_per_call",
                        "child_cpu_ns_per_call",
                    ],
                    RpcWork::Stream => &["items_per_s", "first_item_ns"],
                };
                for (k, v) in keys.iter().zip(f) {
                    m.insert((*k).into(), Value::from(v));
                }
                let rk: [&str; 2] = match c.work {
                    RpcWork::Unary(_) => ["shmrpc_over_p50", "shmrpc_over_p99"],
                    RpcWork::Pipelined { .. } => {
                        ["shmrpc_over_calls_per_s", "shmrpc_over_cpu_per_call"]
                    }
                    RpcWork::Stream => ["shmrpc_over_items_per_s", "shmrpc_over_first_item"],
                };
                for (k, v) in rk.iter().zip(r) {
                    m.insert((*k).into(), v.map_or(Value::Null, Value::from));
                }
            }
            o
        })
        .collect();
    json!({
        "runtime": run.runtime,
        "ratios": "shmrpc's figure over the system's, median of per-round ratios",
        "cases": cases,
        "stream_item_work": item_work_medians(run).map(|w| json!({
            "fill_items_per_s": w.fill,
            "check_items_per_s": w.check,
        })),
        "stream_floor": stream_floor(run).map(|f| json!({
            "system": RpcSys::Channel.name(),
            "items_per_s": f.rate,
            "over_tonic": f.over_tonic,
            "shmrpc_over_floor": f.shmrpc_share,
        })),
    })
}
