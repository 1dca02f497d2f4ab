//! `shmrpc demo`: a second real process serves on a [`Listener`]; this one connects,
//! exchanges messages through the shared-memory channel it was handed, measures round
//! trips and a one-way stream, shuts the server down and checks that nothing is left.

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shmrpc::channel::{
    self, ChannelConfig, Endpoint, Listener, RecvError, Sender, TrySendError, WaitStrategy,
};
use shmrpc::lowlevel::sys::names;

use shmrpc_bench::child::{rest, spawn_self, Control};
use shmrpc_bench::pin;
use shmrpc_bench::stats::{fmt_count, fmt_gbps, fmt_mps, fmt_size, fmt_us, Latency};

/// A text request; the answer is text too.
const TAG_TEXT: u32 = 1;
/// Echo the payload as it is.
const TAG_ECHO: u32 = 2;
/// One message of a one-way stream: counted, not answered.
const TAG_DATA: u32 = 3;
/// End of a stream: the answer is (count, sum of sequence numbers, bad messages).
const TAG_END: u32 = 4;
/// End of the conversation: the answer is "bye".
const TAG_BYE: u32 = 5;

const RING: usize = 256 << 10;
const MSG: usize = 64;
const RTT_STP: u64 = 100_000;
const RTT_PARK: u64 = 20_000;
const STREAM: u64 = 1_000_000;
const BATCH: usize = 32;
const TIMEOUT: Duration = Duration::from_secs(10);

fn config(park: bool) -> ChannelConfig {
    let wait = if park {
        WaitStrategy::Park
    } else {
        WaitStrategy::default()
    };
    ChannelConfig::default().with_capacity(RING).with_wait(wait)
}

fn wait_name(park: bool) -> String {
    match (park, WaitStrategy::default()) {
        (true, _) => "park".to_owned(),
        (false, WaitStrategy::SpinThenPark { spin }) => {
            format!("spin-then-park (spin up to {} µs)", spin.as_micros())
        }
        (false, other) => format!("{other:?}"),
    }
}

/// `shmrpc demo`.
pub fn run() -> anyhow::Result<()> {
    let me = std::process::id();
    let name = format!("demo-{me}");
    let cpus = pin::two_cpus();
    if let Some((mine, _)) = cpus {
        pin::pin_to(mine)?;
    }
    let mut args = vec!["demo-peer".to_owned(), "--name".to_owned(), name.clone()];
    if let Some((_, theirs)) = cpus {
        args.extend(["--cpu".to_owned(), theirs.to_string()]);
    }
    println!("shmrpc demo: two processes talking through a shared-memory channel");
    println!();
    let mut peer = spawn_self(&args)?;
    let ready = rest(&peer.expect("ready", TIMEOUT)?, "ready");
    let sockets: Vec<PathBuf> = ready.split_whitespace().map(PathBuf::from).collect();
    if sockets.len() != 2 {
        bail!("the server announced {ready:?}, expected two socket paths");
    }

    let mut ep =
        channel::connect(&name, &config(false)).with_context(|| format!("connecting to {name}"))?;
    let server = ep.peer_pid().unwrap_or(peer.pid());
    println!("  this process     pid {me}, the client");
    println!(
        "  second process   pid {server}, the server: this binary re-run as `shmrpc demo-peer`"
    );
    println!("  {}", pin::describe(cpus));
    println!("  connection       {}", sockets[0].display());
    println!(
        "                   over it the server passed a sealed memfd segment (two rings of {})",
        fmt_size(RING)
    );
    println!("                   and 4 eventfd doorbells: both processes now map the same memory;");
    println!("                   the socket stays open only to tell each side if the other dies");
    println!();

    println!("1. Requests and responses (each read in place from the ring)");
    for text in [
        format!("hello from pid {me}"),
        "shared memory, no copies through the kernel".to_owned(),
        "ping".to_owned(),
    ] {
        ep.sender().send_tagged(TAG_TEXT, text.as_bytes())?;
        let m = ep.recv_timeout(TIMEOUT).context("waiting for a response")?;
        let reply = String::from_utf8_lossy(&m).into_owned();
        drop(m);
        println!("   -> {text:?}");
        println!("   <- {reply}");
    }
    println!();

    let stp = round_trips(&mut ep, RTT_STP, RTT_STP / 10)?;

    println!(
        "2. One-way stream: {} messages of {MSG} B, written in place, published in batches of {BATCH}",
        fmt_count(STREAM)
    );
    let (dt, count, sum, bad) = stream(&mut ep, STREAM)?;
    let want_sum = STREAM * (STREAM - 1) / 2;
    if count != STREAM || sum != want_sum || bad != 0 {
        bail!(
            "stream: the server counted {count} messages (sum {sum}, want {want_sum}), {bad} bad"
        );
    }
    let secs = dt.as_secs_f64();
    println!(
        "   {:.1} ms: {} ({}); the server counted {} in order, none damaged",
        secs * 1e3,
        fmt_mps(STREAM as f64 / secs),
        fmt_gbps((STREAM * MSG as u64) as f64 / secs),
        fmt_count(count)
    );
    println!();
    say_bye(&mut ep)?;
    drop(ep);

    let park_name = format!("{name}-park");
    let mut ep = channel::connect(&park_name, &config(true))
        .with_context(|| format!("connecting to {park_name}"))?;
    let park = round_trips(&mut ep, RTT_PARK, RTT_PARK / 10)?;
    say_bye(&mut ep)?;
    drop(ep);

    println!("3. Round trips of {MSG} B (send, the server echoes, receive)");
    println!(
        "   {:<40} {:>9} {:>10} {:>10} {:>10}",
        "wait mode (both sides)", "count", "p50", "p99", "p99.9"
    );
    for (mode, n, l) in [
        (wait_name(false), RTT_STP, stp),
        (wait_name(true), RTT_PARK, park),
    ] {
        println!(
            "   {:<40} {:>9} {:>10} {:>10} {:>10}",
            mode,
            fmt_count(n),
            fmt_us(l.p50),
            fmt_us(l.p99),
            fmt_us(l.p999)
        );
    }
    println!("   (spin-then-park keeps both sides awake while messages flow; park sleeps in the");
    println!("   kernel after every message, so each round trip pays two wake-ups)");
    println!();

    println!("4. Shutdown");
    let status = peer.finish(TIMEOUT)?;
    if !status.success() {
        bail!("the server exited with {status}");
    }
    println!("   the server answered \"bye\" on both connections and exited with status 0");
    let left: Vec<String> = sockets
        .iter()
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .chain(
            names::list_segments()
                .into_iter()
                .filter(|s| s.contains(&name)),
        )
        .collect();
    if !left.is_empty() {
        bail!("left behind: {}", left.join(", "));
    }
    println!("   nothing left behind: both socket files are removed, and the channel's memory was");
    println!("   an anonymous memfd (no /dev/shm entry), freed with the last mapping");
    println!();
    println!("demo finished: all responses, echoes and stream messages arrived intact");
    Ok(())
}

/// `total` echoed round trips of 64 bytes; the first `warm` are not recorded.
fn round_trips(ep: &mut Endpoint, total: u64, warm: u64) -> anyhow::Result<Latency> {
    let mut samples = Vec::with_capacity((total - warm) as usize);
    let mut msg = [0u8; MSG];
    for i in 0..total {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        ep.sender().send_tagged(TAG_ECHO, &msg)?;
        let m = ep.recv_timeout(TIMEOUT).context("waiting for an echo")?;
        let ok = m.tag() == TAG_ECHO && m[..] == msg[..];
        drop(m);
        let dt = t0.elapsed();
        if !ok {
            bail!("echo {i} came back wrong");
        }
        if i >= warm {
            samples.push(dt.as_nanos() as u64);
        }
    }
    Ok(Latency::from_nanos(&mut samples))
}

/// Streams `total` numbered messages, then asks the server what it got.
fn stream(ep: &mut Endpoint, total: u64) -> anyhow::Result<(Duration, u64, u64, u64)> {
    let t0 = Instant::now();
    let deadline = t0 + TIMEOUT;
    let mut i = 0u64;
    while i < total {
        let p = ep.sender().producer();
        let mut k = 0;
        while k < BATCH && i < total {
            match p.try_reserve(MSG) {
                Ok(mut g) => {
                    g[..8].copy_from_slice(&i.to_le_bytes());
                    g[8..].fill(0x5A);
                    g.commit_deferred(TAG_DATA);
                    i += 1;
                    k += 1;
                }
                Err(TrySendError::Full) => break,
                Err(e) => return Err(e).context("try_reserve"),
            }
        }
        if k > 0 {
            p.notify();
        } else if Instant::now() > deadline {
            bail!("stream: the ring stayed full for {TIMEOUT:?}");
        } else {
            std::hint::spin_loop();
        }
    }
    ep.sender().send_tagged(TAG_END, &[])?;
    let m = ep.recv_timeout(TIMEOUT).context("waiting for the count")?;
    let dt = t0.elapsed();
    if m.tag() != TAG_END || m.len() != 24 {
        bail!("unexpected answer to the end of the stream");
    }
    let word = |j: usize| u64::from_le_bytes(m[j * 8..j * 8 + 8].try_into().expect("8 bytes"));
    Ok((dt, word(0), word(1), word(2)))
}

fn say_bye(ep: &mut Endpoint) -> anyhow::Result<()> {
    ep.sender().send_tagged(TAG_BYE, b"bye")?;
    let m = ep.recv_timeout(TIMEOUT).context("waiting for bye")?;
    if m.tag() != TAG_BYE || &m[..] != b"bye" {
        bail!("the server did not say bye");
    }
    Ok(())
}

/// `shmrpc demo-peer`: the server. Binds `name` (spin-then-park) and `name-park` (park),
/// announces the socket paths on stdout, serves one client on each in turn, exits 0.
pub fn peer(name: &str, cpu: Option<usize>) -> anyhow::Result<()> {
    if let Some(cpu) = cpu {
        pin::pin_to(cpu)?;
    }
    let stp = Arc::new(Listener::bind(name, config(false))?);
    let park_name = format!("{name}-park");
    let park = Arc::new(Listener::bind(&park_name, config(true))?);
    let ctl = Control::new("");
    ctl.say(&format!(
        "ready {} {}",
        stp.path().display(),
        park.path().display()
    ))?;
    for l in [stp, park] {
        let ep = accept_within(l, TIMEOUT)?;
        serve(ep)?;
    }
    Ok(())
}

/// Accepts one client, or fails after `timeout` (removing the socket file: the listener
/// stays with the thread blocked in `accept`, and this process is about to exit).
fn accept_within(l: Arc<Listener>, timeout: Duration) -> anyhow::Result<Endpoint> {
    let (tx, rx) = mpsc::channel();
    let path = l.path().to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(l.accept());
    });
    match rx.recv_timeout(timeout) {
        Ok(r) => Ok(r?),
        Err(_) => {
            let _ = std::fs::remove_file(&path);
            bail!("no client connected within {timeout:?}")
        }
    }
}

/// Answers one client until it says bye.
fn serve(ep: Endpoint) -> anyhow::Result<()> {
    let me = std::process::id();
    let (mut tx, mut rx) = ep.split();
    let (mut count, mut sum, mut bad) = (0u64, 0u64, 0u64);
    let mut bye = false;
    let mut failed: Option<anyhow::Error> = None;
    while !bye {
        let r = rx.recv_batch(256, |tag, p| {
            if failed.is_some() || bye {
                return;
            }
            let sent = match tag {
                TAG_TEXT => {
                    let text = String::from_utf8_lossy(p);
                    let reply = format!(
                        "server pid {me} got {} bytes, reversed: {:?}",
                        p.len(),
                        text.chars().rev().collect::<String>()
                    );
                    send(&mut tx, TAG_TEXT, reply.as_bytes())
                }
                TAG_ECHO => send(&mut tx, TAG_ECHO, p),
                TAG_DATA => {
                    let seq = p
                        .get(..8)
                        .map_or(u64::MAX, |b| u64::from_le_bytes(b.try_into().expect("8")));
                    bad += u64::from(seq != count || p.len() != MSG);
                    sum = sum.wrapping_add(seq);
                    count += 1;
                    Ok(())
                }
                TAG_END => {
                    let mut r = [0u8; 24];
                    r[..8].copy_from_slice(&count.to_le_bytes());
                    r[8..16].copy_from_slice(&sum.to_le_bytes());
                    r[16..].copy_from_slice(&bad.to_le_bytes());
                    (count, sum, bad) = (0, 0, 0);
                    send(&mut tx, TAG_END, &r)
                }
                TAG_BYE => {
                    bye = true;
                    send(&mut tx, TAG_BYE, b"bye")
                }
                other => Err(anyhow::anyhow!("unknown tag {other}")),
            };
            if let Err(e) = sent {
                failed = Some(e);
            }
        });
        match r {
            Ok(_) => {}
            Err(RecvError::Closed) => bail!("the client closed the channel without saying bye"),
            Err(e) => return Err(e).context("recv"),
        }
        if let Some(e) = failed.take() {
            return Err(e);
        }
    }
    Ok(())
}

fn send(tx: &mut Sender, tag: u32, msg: &[u8]) -> anyhow::Result<()> {
    tx.send_tagged(tag, msg).context("send")
}
