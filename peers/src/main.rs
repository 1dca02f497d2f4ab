//! `shmrpc-peers`: shmrpc's raw channel side by side with iceoryx2, shmipc, ipc-channel and a
//! blocking Unix socket, between two pinned processes, all measured in one run, interleaved.
//!
//! The lead (this process) drives every case; the child (this binary re-executed as
//! `__child`) runs the other side. A case is a workload (round trip or one-way stream) at a
//! message size over one system in one mode. Cases run in rounds: a warm-up round (discarded;
//! it also sizes each case so that one run of it takes about `--target-ms`), then `--rounds`
//! measured rounds. In each round the workloads and sizes come one after another, and for
//! each of them every system runs once, in an order rotated from round to round, so that
//! each figure is measured moments apart from its baselines. Ratios are medians of the
//! per-round ratios.
//!
//! See README.md for the modes and caveats.
#![forbid(unsafe_code)]

mod control;
mod pattern;
mod report;
mod rpc;
mod sys;
mod watchdog;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use control::{reported_by_child, Peer};
use sys::{RunEnv, SetupCtl, Variant, SIZES};

/// What a case measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Request, then an echo reply of the same size; latency per round trip.
    Rtt,
    /// One way, as fast as the system goes; messages and bytes per second.
    Stream,
}

impl Work {
    fn name(self) -> &'static str {
        match self {
            Work::Rtt => "rtt",
            Work::Stream => "stream",
        }
    }
}

/// One measured run of a case.
#[derive(Debug, Clone)]
pub enum RoundResult {
    /// Round trips: every sample (ns), sorted.
    Rtt(Vec<u64>),
    /// A stream: messages per second.
    Stream(f64),
}

/// A workload at a size over one variant, and what was measured.
#[derive(Debug)]
pub struct Case {
    pub v: Variant,
    pub work: Work,
    pub size: usize,
    pub id: String,
    /// Why it was not measured.
    pub na: Option<String>,
    /// Messages (or round trips) per measured round.
    pub n: u64,
    /// Per measured round (`None` where the case did not run in that round).
    pub rounds: Vec<Option<RoundResult>>,
    /// Remarks (e.g. shmipc's socket fallback).
    pub notes: Vec<String>,
    /// Messages sent in the measured rounds (both directions), and how many of them went
    /// another way than the system's shared memory (shmipc's fallback).
    pub sent: u64,
    /// Of those, sent by the lead (requests, stream messages) and by the child (replies).
    pub fell_back: [u64; 2],
}

impl Case {
    fn new(v: Variant, work: Work, size: usize) -> Self {
        Self {
            v,
            work,
            size,
            id: format!("peer.{}.{}.{}.{}", work.name(), v.system(), v.mode(), size),
            na: v.na(work == Work::Rtt, size).map(str::to_owned),
            n: 0,
            rounds: Vec::new(),
            notes: Vec::new(),
            sent: 0,
            fell_back: [0, 0],
        }
    }
}

/// Options of a run.
#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    json: Option<PathBuf>,
    only: Vec<String>,
    rounds: usize,
    target: Duration,
    pin: bool,
    big_ring: usize,
}

const USAGE: &str = "\
shmrpc-peers: shmrpc beside iceoryx2, shmipc, ipc-channel and a Unix socket, and its RPC
layer beside tarpc and tonic, two processes

USAGE: shmrpc-peers [--quick] [--json FILE] [--only PREFIX[,PREFIX...]] [--rounds N]
                    [--target-ms MS] [--no-pin]

  --quick          tiny iteration counts, 2 rounds (< 1 min): checks that it works
  --json FILE      also write the results as JSON (kind \"shmrpc-peers\", version 1)
  --only PREFIXES  only cases whose id (peer.<workload>.<system>.<mode>.<size>) starts with
                   one of these (the leading \"peer.\" may be left out); the baselines
                   (shmrpc spin-then-park and the Unix socket) of the same workloads and
                   sizes always run too; \"rpc\" (or \"rpc.<case>.<system>\", cases
                   unary64, unary4k, pipe64, conns16, stream32) selects RPC cases, whose
                   baseline is shmrpc's RPC layer
  --rounds N       measured rounds (default 9, quick 2)
  --target-ms MS   about how long one run of one case takes (default 200, quick 10)
  --no-pin         do not pin the two processes to two CPUs
  --big-ring BYTES shmrpc's ring capacity for 64 KiB and 1 MiB messages (default 8 MiB;
                   a power of two above 1 MiB)
";

fn parse_args(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        quick: false,
        json: None,
        only: Vec::new(),
        rounds: 0,
        target: Duration::ZERO,
        pin: true,
        big_ring: sys::shm::BIG_RING,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |what: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{what} needs a value"))
        };
        match a.as_str() {
            "--quick" => o.quick = true,
            "--json" => o.json = Some(PathBuf::from(val("--json")?)),
            "--only" => {
                o.only.extend(
                    val("--only")?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| {
                            if s.starts_with("peer.") {
                                s.to_owned()
                            } else {
                                format!("peer.{s}")
                            }
                        }),
                )
            }
            "--rounds" => o.rounds = val("--rounds")?.parse().context("--rounds")?,
            "--target-ms" => {
                o.target =
                    Duration::from_millis(val("--target-ms")?.parse().context("--target-ms")?)
            }
            "--no-pin" => o.pin = false,
            "--big-ring" => o.big_ring = val("--big-ring")?.parse().context("--big-ring")?,
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    if o.rounds == 0 {
        o.rounds = if o.quick { 2 } else { 9 };
    }
    if o.target.is_zero() {
        o.target = Duration::from_millis(if o.quick { 10 } else { 200 });
    }
    Ok(o)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = if args.first().map(String::as_str) == Some("__child") {
        child_main(&args[1..])
    } else {
        parse_args(&args).and_then(|o| lead_main(o, &args))
    };
    if let Err(e) = r {
        eprintln!("shmrpc-peers: error: {e:#}");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------
// Pinning

fn two_cpus() -> Option<(usize, usize)> {
    use rustix::thread::{sched_getaffinity, CpuSet};
    let set = sched_getaffinity(None).ok()?;
    let mut allowed = (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c));
    Some((allowed.next()?, allowed.next()?))
}

fn pin_to(cpu: usize) -> Result<()> {
    use rustix::thread::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu);
    sched_setaffinity(None, &set).with_context(|| format!("pinning to CPU {cpu}"))
}

// ---------------------------------------------------------------------------------------
// The child

fn child_main(args: &[String]) -> Result<()> {
    let mut dir = None;
    let mut tag = None;
    let mut cpu = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--run-dir" => dir = it.next().map(PathBuf::from),
            "--tag" => tag = it.next().cloned(),
            "--cpu" => cpu = it.next().map(|s| s.parse::<usize>()).transpose()?,
            other => bail!("child: unknown argument {other:?}"),
        }
    }
    if let Some(c) = cpu {
        pin_to(c)?;
    }
    watchdog::init();
    watchdog::watch_parent();
    let env = RunEnv {
        dir: dir.context("--run-dir")?,
        tag: tag.context("--tag")?,
        big_ring: 0,
    };
    let mut ctl = control::control();
    let mut sides: Vec<Option<Box<dyn sys::Child>>> = Variant::ALL.iter().map(|_| None).collect();
    let mut rpc_state = rpc::ChildState::new();
    while let Some(line) = ctl.next_command()? {
        let words: Vec<&str> = line.splitn(3, ' ').collect();
        let r = if words.first().is_some_and(|w| w.starts_with("rpc")) {
            let _w = watchdog::arm(format!("rpc command {line:?}"), SETUP_LIMIT);
            rpc::child_command(&mut rpc_state, &env, &ctl, &words).map(|()| true)
        } else {
            child_command(&env, &ctl, &mut sides, &words)
        };
        match r {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => ctl.say(&format!("err {e:#}"))?,
        }
    }
    // Orderly drop of whatever is left (the lead normally closed everything).
    drop(sides);
    drop(rpc_state);
    Ok(())
}

/// Runs one command; `Ok(false)` to quit.
fn child_command(
    env: &RunEnv,
    ctl: &shmrpc_harness::Control,
    sides: &mut [Option<Box<dyn sys::Child>>],
    words: &[&str],
) -> Result<bool> {
    let variant = |w: Option<&&str>| -> Result<Variant> {
        let i: usize = w.context("variant index")?.parse()?;
        Variant::from_index(i).context("bad variant index")
    };
    match words.first().copied() {
        Some("quit") => return Ok(false),
        Some("setup") => {
            let v = variant(words.get(1))?;
            let arg = words.get(2).copied().unwrap_or("");
            let _w = watchdog::arm(
                format!("setting up {} {}", v.system(), v.mode()),
                SETUP_LIMIT,
            );
            sides[v.index()] = Some(sys::setup_child(v, env, arg)?);
            ctl.say("ok")?;
        }
        Some("close") => {
            let v = variant(words.get(1))?;
            let _w = watchdog::arm(format!("closing {} {}", v.system(), v.mode()), SETUP_LIMIT);
            if let Some(s) = sides[v.index()].take() {
                s.close()?;
            }
            ctl.say("ok")?;
        }
        Some(cmd @ ("echo" | "sink")) => {
            let v = variant(words.get(1))?;
            let rest: Vec<u64> = words
                .get(2)
                .context("size n seed")?
                .split(' ')
                .map(str::parse)
                .collect::<Result<_, _>>()?;
            let [size, n, seed0, limit_ms] = rest[..] else {
                bail!("expected size, n, seed, limit");
            };
            let side = sides[v.index()]
                .as_mut()
                .with_context(|| format!("{} {} is not set up", v.system(), v.mode()))?;
            ctl.say("ready")?;
            let _w = watchdog::arm(
                format!("{cmd} {} {} {size} B × {n}", v.system(), v.mode()),
                Duration::from_millis(limit_ms),
            );
            let before = side.fallbacks();
            if cmd == "echo" {
                side.echo(size as usize, n, seed0)?;
            } else {
                side.sink(size as usize, n, seed0)?;
            }
            ctl.say(&format!("done {}", side.fallbacks() - before))?;
        }
        other => bail!("unknown command {other:?}"),
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// The lead

/// Longest setup or teardown of one variant.
const SETUP_LIMIT: Duration = Duration::from_secs(60);

/// The child, for the watchdog's cleanup hook.
static CHILD: Mutex<Option<shmrpc_harness::KillHandle>> = Mutex::new(None);

struct Ctl<'a> {
    peer: &'a mut Peer,
    v: Variant,
}

impl SetupCtl for Ctl<'_> {
    fn start(&mut self, arg: &str) -> Result<()> {
        self.peer.send(&format!("setup {} {arg}", self.v.index()))
    }

    fn finish(&mut self) -> Result<()> {
        self.peer.expect("ok", SETUP_LIMIT).map(drop)
    }
}

/// Files this run may leave behind, found by their names.
fn our_leftovers(env: &RunEnv) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let prefix = env.iox_prefix();
    if let Ok(rd) = std::fs::read_dir("/dev/shm") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(e.path());
            }
        }
    }
    if let Ok(dir) = shmrpc::lowlevel::sys::names::runtime_dir() {
        let p = sys::shm::name_prefix(env);
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&p) {
                    found.push(e.path());
                }
            }
        }
    }
    if env.dir.exists() {
        found.push(env.dir.clone());
    }
    found
}

fn remove_all(paths: &[PathBuf]) {
    for p in paths {
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(p)
        } else {
            std::fs::remove_file(p)
        };
    }
}

/// Every file (not directory) under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn list_dir(p: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn lead_main(o: Opts, argv: &[String]) -> Result<()> {
    let t_start = Instant::now();
    let cpus = if o.pin { two_cpus() } else { None };
    if let Some((a, _)) = cpus {
        pin_to(a)?;
    }
    let tag = std::process::id().to_string();
    let env = RunEnv {
        dir: PathBuf::from(format!("/tmp/shmrpc-peers.{tag}")),
        tag: tag.clone(),
        big_ring: o.big_ring,
    };
    let shm_before = list_dir(Path::new("/dev/shm"));
    let tmp_before = list_dir(Path::new("/tmp"));
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&env.dir)
            .with_context(|| format!("creating {}", env.dir.display()))?;
    }
    watchdog::init();
    {
        let env = env.clone();
        watchdog::on_fire(move || {
            let child = CHILD.lock().map(|c| c.clone()).unwrap_or_default();
            if let Some(child) = child {
                child.kill();
                std::thread::sleep(Duration::from_millis(100));
            }
            remove_all(&our_leftovers(&env));
        });
    }

    let result = run(&o, &env, cpus);

    // Whatever happened: the run's files go, and anything the libraries left is reported.
    let left = our_leftovers(&env);
    let stray: Vec<&PathBuf> = left.iter().filter(|p| **p != env.dir).collect();
    let dir_left = files_under(&env.dir);
    remove_all(&left);
    let shm_new: Vec<String> = list_dir(Path::new("/dev/shm"))
        .difference(&shm_before)
        .cloned()
        .collect();
    let tmp_new: Vec<String> = list_dir(Path::new("/tmp"))
        .difference(&tmp_before)
        .cloned()
        .collect();
    let mut cleanup = Vec::new();
    if !stray.is_empty() {
        cleanup.push(format!(
            "removed {} file(s) the libraries left outside the run directory: {}",
            stray.len(),
            stray
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !dir_left.is_empty() {
        cleanup.push(format!(
            "removed the run directory {} still holding: {}",
            env.dir.display(),
            dir_left.join(", ")
        ));
    }
    if !shm_new.is_empty() || !tmp_new.is_empty() {
        cleanup.push(format!(
            "NEW ENTRIES still there after the run (another process may have made them): \
             /dev/shm: {shm_new:?}; /tmp: {tmp_new:?}"
        ));
    }
    let mut run = result?;
    run.cleanup = cleanup;
    run.elapsed = t_start.elapsed();
    run.command = argv_string(argv);
    report::print(&run);
    if let Some(path) = &o.json {
        std::fs::write(path, report::json(&run))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    Ok(())
}

fn argv_string(args: &[String]) -> String {
    let mut s = String::from("shmrpc-peers");
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Everything a report needs.
pub struct Run {
    pub cases: Vec<Case>,
    pub pinned: Option<(usize, usize)>,
    pub rounds: usize,
    pub quick: bool,
    pub cleanup: Vec<String>,
    pub elapsed: Duration,
    pub command: String,
    /// The RPC frameworks' cases, if any ran.
    pub rpc: Option<rpc::RpcRun>,
}

fn selected(o: &Opts, c: &Case) -> bool {
    o.only.is_empty() || o.only.iter().any(|p| c.id.starts_with(p.as_str()))
}

fn is_baseline(v: Variant) -> bool {
    matches!(v, Variant::ShmrpcSpinThenPark | Variant::UnixSocket)
}

fn run(o: &Opts, env: &RunEnv, cpus: Option<(usize, usize)>) -> Result<Run> {
    // The cases: every selected one, plus the baselines of the same workloads and sizes.
    let mut cases: Vec<Case> = Vec::new();
    for work in [Work::Rtt, Work::Stream] {
        for size in SIZES {
            let group: Vec<Case> = Variant::ALL
                .iter()
                .map(|&v| Case::new(v, work, size))
                .collect();
            if !group.iter().any(|c| selected(o, c)) {
                continue;
            }
            cases.extend(
                group
                    .into_iter()
                    .filter(|c| selected(o, c) || is_baseline(c.v)),
            );
        }
    }
    let variants: Vec<Variant> = Variant::ALL
        .iter()
        .copied()
        .filter(|v| cases.iter().any(|c| c.v == *v))
        .collect();

    let mut args = vec![
        "__child".to_owned(),
        "--run-dir".to_owned(),
        env.dir.display().to_string(),
        "--tag".to_owned(),
        env.tag.clone(),
    ];
    if let Some((_, b)) = cpus {
        args.extend(["--cpu".to_owned(), b.to_string()]);
    }
    let mut peer = Peer::spawn(&args)?;
    if let Ok(mut c) = CHILD.lock() {
        *c = Some(peer.kill_handle());
    }
    eprintln!(
        "shmrpc-peers: {} raw-channel cases over {} systems/modes, {} rounds (+1 warm-up); {}",
        cases.len(),
        variants.len(),
        o.rounds,
        match cpus {
            Some((a, b)) => format!("lead on CPU {a}, child on CPU {b}"),
            None => "not pinned".to_owned(),
        }
    );

    // Set up every variant; one that fails is reported as n/a, the others go on.
    let mut leads: Vec<Option<Box<dyn sys::Lead>>> = Variant::ALL.iter().map(|_| None).collect();
    for &v in &variants {
        let _w = watchdog::arm(
            format!("setting up {} {}", v.system(), v.mode()),
            SETUP_LIMIT,
        );
        let t = Instant::now();
        match sys::setup_lead(v, env, &mut Ctl { peer: &mut peer, v }) {
            Ok(l) => {
                leads[v.index()] = Some(l);
                eprintln!(
                    "  set up {} {} in {:.0} ms",
                    v.system(),
                    v.mode(),
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e) => {
                eprintln!("  {} {}: setup failed: {e:#}", v.system(), v.mode());
                for c in cases.iter_mut().filter(|c| c.v == v) {
                    c.na.get_or_insert_with(|| format!("setup failed: {e:#}"));
                }
                // The child may still be busy with (or failed) its side: resynchronise.
                resync(&mut peer)?;
            }
        }
    }

    let mut seed = 1u64 << 32;
    let mut disabled = Vec::new();
    let mut measured = if cases.is_empty() {
        Ok(())
    } else {
        run_rounds(
            o,
            &mut peer,
            &mut leads,
            &mut disabled,
            &mut cases,
            &mut seed,
        )
    };
    // The RPC frameworks, after the raw-channel cases, with the same child.
    let mut rpc = None;
    if measured.is_ok() && rpc::any_selected(&o.only) {
        match rpc::run(
            &o.only, o.quick, o.rounds, o.target, &mut peer, env, &mut seed,
        ) {
            Ok(r) => rpc = Some(r),
            Err(e) => measured = Err(e.context("RPC cases")),
        }
    }

    // Teardown: the lead's side first, then the child's. After a failure the child may be
    // stuck in a case: kill it instead, and drop the lead's sides without a handshake.
    for (v, l) in disabled {
        leads[v.index()] = Some(l);
    }
    if measured.is_err() {
        peer.kill();
        leads.iter_mut().for_each(|l| drop(l.take()));
    }
    for &v in &variants {
        if let Some(l) = leads[v.index()].take() {
            let _w = watchdog::arm(format!("closing {} {}", v.system(), v.mode()), SETUP_LIMIT);
            let r = l
                .close()
                .and_then(|()| peer.send(&format!("close {}", v.index())))
                .and_then(|()| peer.expect("ok", SETUP_LIMIT).map(drop));
            if let Err(e) = r {
                eprintln!("  closing {} {}: {e:#}", v.system(), v.mode());
            }
        }
    }
    for c in cases.iter_mut().filter(|c| c.fell_back != [0, 0]) {
        let [lead_fb, child_fb] = c.fell_back;
        let what = if c.work == Work::Rtt {
            let each = c.sent / 2;
            format!("{lead_fb} of {each} requests and {child_fb} of {each} replies")
        } else {
            format!("{lead_fb} of {} messages", c.sent)
        };
        c.notes.push(match c.v.system() {
            "shmipc" => format!(
                "{what} went through shmipc's Unix socket instead of shared memory (its \
                 silent fallback when its shared buffers run out)"
            ),
            _ => format!(
                "{what} reached no subscriber (send() returned 0 recipients despite \
                 RetryUntilDelivered) and were sent again"
            ),
        });
    }
    if measured.is_ok() {
        let _ = peer.send("quit");
        let _w = watchdog::arm("waiting for the child to exit", Duration::from_secs(15));
        let status = peer.finish(Duration::from_secs(10))?;
        if !status.success() {
            eprintln!("shmrpc-peers: the child exited with {status}");
        }
    }
    measured?;
    Ok(Run {
        rpc,
        cases,
        pinned: cpus,
        rounds: o.rounds,
        quick: o.quick,
        cleanup: Vec::new(),
        elapsed: Duration::ZERO,
        command: String::new(),
    })
}

/// After a failed setup: asks the child for a fresh "ok" so that both sides agree again.
fn resync(peer: &mut Peer) -> Result<()> {
    // The child answers every command with one line; a failed setup may or may not have
    // produced its line yet. Drain what is there, then ping with a harmless command.
    while peer.recv(Duration::from_millis(200)).is_ok() {}
    peer.send("ping")?;
    let line = peer.recv(SETUP_LIMIT)?;
    if !line.starts_with("err unknown command") {
        bail!("could not resynchronise with the child (it said {line:?})");
    }
    Ok(())
}

/// Warm-up counts per size index (round trips, stream messages).
fn warm_n(quick: bool, work: Work, size: usize) -> u64 {
    let i = SIZES.iter().position(|&s| s == size).unwrap_or(0);
    let (rtt, stream) = if quick {
        ([50, 50, 20, 5], [2000, 1000, 100, 10])
    } else {
        ([300, 300, 100, 20], [20_000, 10_000, 1000, 50])
    };
    match work {
        Work::Rtt => rtt[i],
        Work::Stream => stream[i],
    }
}

fn run_rounds(
    o: &Opts,
    peer: &mut Peer,
    leads: &mut [Option<Box<dyn sys::Lead>>],
    disabled: &mut Vec<(Variant, Box<dyn sys::Lead>)>,
    cases: &mut [Case],
    seed: &mut u64,
) -> Result<()> {
    // Groups of cases with the same workload and size, in table order.
    let mut groups: Vec<(Work, usize)> = Vec::new();
    for c in cases.iter() {
        if !groups.contains(&(c.work, c.size)) {
            groups.push((c.work, c.size));
        }
    }
    let total_rounds = o.rounds + 1;
    for round in 0..total_rounds {
        let warm = round == 0;
        let t_round = Instant::now();
        for &(work, size) in &groups {
            let mut idx: Vec<usize> = (0..cases.len())
                .filter(|&i| cases[i].work == work && cases[i].size == size)
                .filter(|&i| cases[i].na.is_none() && leads[cases[i].v.index()].is_some())
                .collect();
            if idx.is_empty() {
                continue;
            }
            let k = round % idx.len();
            idx.rotate_left(k);
            for i in idx {
                let c = &mut cases[i];
                let vi = c.v.index();
                let Some(lead) = leads[vi].as_mut() else {
                    continue; // disabled after a failure earlier in this round
                };
                let n = if warm {
                    warm_n(o.quick, work, size)
                } else {
                    c.n
                };
                let (r, fell_back) = match run_case(o, peer, lead.as_mut(), c, n, seed) {
                    Ok(x) => x,
                    Err(e) if reported_by_child(&e) => {
                        // The child found a wrong message (or its library failed) and is
                        // ready for the next command. The system delivered something wrong:
                        // this case gets no figures, and the variant stops here (its
                        // connection may hold unread data).
                        let why = format!("FAILED in round {round} ({n} messages): {e:#}");
                        eprintln!("  {}: {why}", c.id);
                        c.na = Some(why);
                        let v = c.v;
                        for other in cases.iter_mut().filter(|o| o.v == v && o.na.is_none()) {
                            other.notes.push(format!(
                                "{} {} stopped in round {round} after a failed case; figures \
                                 from the rounds before",
                                v.system(),
                                v.mode()
                            ));
                        }
                        disabled.push((v, leads[vi].take().expect("present")));
                        continue;
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("{} (round {round}, {n} messages)", c.id))
                    }
                };
                if warm {
                    c.n = size_case(o, c.work, n, &r);
                } else {
                    c.rounds.push(Some(r));
                    c.sent += if c.work == Work::Rtt { 2 * n } else { n };
                    c.fell_back[0] += fell_back[0];
                    c.fell_back[1] += fell_back[1];
                }
            }
        }
        eprintln!(
            "  {} done in {:.1} s",
            if warm {
                "warm-up round".to_owned()
            } else {
                format!("round {round}/{}", o.rounds)
            },
            t_round.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Iterations per measured round, from the warm-up: about `--target-ms` per run.
fn size_case(o: &Opts, work: Work, n: u64, r: &RoundResult) -> u64 {
    let target = o.target.as_secs_f64();
    let per_op = match r {
        RoundResult::Rtt(s) => {
            shmrpc_harness::quantile(s, 0.5).map_or(f64::NAN, |ns| ns as f64) * 1e-9
        }
        RoundResult::Stream(rate) => 1.0 / rate,
    };
    let (lo, hi) = match (work, o.quick) {
        (Work::Rtt, true) => (20, 2_000),
        (Work::Rtt, false) => (50, 20_000),
        (Work::Stream, true) => (10, 200_000),
        (Work::Stream, false) => (30, 5_000_000),
    };
    let want = if per_op.is_finite() && per_op > 0.0 {
        (target / per_op) as u64
    } else {
        n
    };
    want.clamp(lo, hi)
}

fn run_case(
    o: &Opts,
    peer: &mut Peer,
    lead: &mut dyn sys::Lead,
    c: &Case,
    n: u64,
    seed: &mut u64,
) -> Result<(RoundResult, [u64; 2])> {
    let seed0 = *seed;
    *seed += n + 1;
    // Generous: ten times the target plus a minute (a parked round trip can be slow).
    let limit = o.target * 10 + Duration::from_secs(60);
    let limit_ms = limit.as_millis() as u64;
    let _w = watchdog::arm(
        format!("{} ({n} messages)", c.id),
        limit + Duration::from_secs(5),
    );
    let vi = c.v.index();
    let before = lead.fallbacks();
    let child_fb = |done: String| -> Result<u64> {
        done.parse::<u64>()
            .with_context(|| format!("the child's done line {done:?}"))
    };
    let r = match c.work {
        Work::Rtt => {
            peer.send(&format!("echo {vi} {} {n} {seed0} {limit_ms}", c.size))?;
            peer.expect("ready", limit)?;
            let mut samples = Vec::with_capacity(n as usize);
            lead.rtt(c.size, n, seed0, &mut samples)?;
            let fb = child_fb(peer.expect("done", limit)?)?;
            if samples.len() as u64 != n {
                bail!("{} samples for {n} round trips", samples.len());
            }
            samples.sort_unstable();
            (RoundResult::Rtt(samples), fb)
        }
        Work::Stream => {
            peer.send(&format!("sink {vi} {} {n} {seed0} {limit_ms}", c.size))?;
            peer.expect("ready", limit)?;
            let t0 = Instant::now();
            lead.stream(c.size, n, seed0)?;
            let fb = child_fb(peer.expect("done", limit)?)?;
            let dt = t0.elapsed().as_secs_f64();
            (RoundResult::Stream(n as f64 / dt), fb)
        }
    };
    Ok((r.0, [lead.fallbacks() - before, r.1]))
}
