//! CPU time and memory of processes, and the "1000 idle connections" case.
//!
//! The idle case runs an RPC server in a process of its own (this binary as
//! `bench-peer --idle-server NAME`), so that its resident memory is the server's alone and
//! not the benchmark's shared segments. The lead connects 1000 clients to it, makes one
//! call on each, lets everything settle, reads the server's `VmRSS` (and its parts) from
//! `/proc/<pid>/status`, then measures the server's CPU time over an idle interval, from
//! `/proc/<pid>/stat` (utime + stime, in clock ticks) and, finer, from the sum of
//! `/proc/<pid>/task/*/schedstat` (nanoseconds on a CPU). The clients stay connected and
//! their runtime keeps running (heartbeats and all), as in a real idle system.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use shmrpc::CallOptions;

use super::rpc;
use crate::child::{spawn_self, Control};
use crate::error::{BenchError, Result};
use crate::{CONTROL_PIPE, PEER_SUBCOMMAND};

/// Connections of the idle case.
pub const CONNECTIONS: usize = 1000;
/// Case id of the idle case (for `--only`).
pub const ID: &str = "rpc.idle.shmrpc.1000";

/// CPU time this process has used, all threads, in nanoseconds (CLOCK_PROCESS_CPUTIME_ID).
pub fn process_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rss {
    /// `VmRSS`: all resident pages.
    pub total: u64,
    /// `RssAnon`: heap, stacks.
    pub anon: u64,
    /// `RssFile`: the executable and libraries.
    pub file: u64,
    /// `RssShmem`: shared memory (the connections' rings).
    pub shmem: u64,
}

/// Reads the memory of process `pid`.
pub fn rss(pid: u32) -> Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let text = read(&path)?;
    parse_status(&text).ok_or_else(|| unparsable(&path, "no VmRSS field"))
}

fn parse_status(text: &str) -> Option<Rss> {
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:").unwrap_or(0),
        file: field("RssFile:").unwrap_or(0),
        shmem: field("RssShmem:").unwrap_or(0),
    })
}

/// utime + stime of process `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = read(&path)?;
    parse_stat(&text).ok_or_else(|| unparsable(&path, "no utime and stime fields"))
}

/// A `/proc` file without the fields it should have.
fn unparsable(path: &str, what: &str) -> BenchError {
    BenchError::ReadFile {
        path: path.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
    }
}

fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| BenchError::ReadFile {
        path: path.into(),
        source,
    })
}

fn parse_stat(text: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state is field 3 of the line, so utime (14) and stime (15) are 11 and 12 here.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Nanoseconds on a CPU of every thread of process `pid` (`/proc/<pid>/task/*/schedstat`).
pub fn cpu_ns_schedstat(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut sum = 0;
    let listing = |source| BenchError::ReadFile {
        path: dir.clone().into(),
        source,
    };
    for e in std::fs::read_dir(&dir).map_err(listing)? {
        let p = e.map_err(listing)?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(&p) {
            sum += s
                .split_whitespace()
                .next()
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(sum)
}

/// Open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Raises this process's soft limit of open files to its hard limit (a thousand
/// connections take several thousand descriptors).
pub fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    if l.current < l.maximum {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

/// The result of the idle case.
#[derive(Debug, Clone)]
pub struct IdleResult {
    /// Connected (and idle) clients.
    pub connections: usize,
    /// Server memory once bound, before any client.
    pub rss_empty: Rss,
    /// Server memory with every client connected and idle.
    pub rss: Rss,
    /// Server descriptors with every client connected.
    pub fds: usize,
    /// Server descriptors before any client.
    pub fds_empty: usize,
    /// Length of the idle interval.
    pub interval: Duration,
    /// Server CPU over the interval from utime + stime, in % of one core.
    pub cpu_percent_stat: f64,
    /// Server CPU over the interval from schedstat, in % of one core.
    pub cpu_percent: f64,
    /// Clock ticks per second (the resolution of the stat figure).
    pub ticks_per_s: u64,
    /// CPU of the lead process (the clients) over the interval, in % of one core.
    pub client_cpu_percent: f64,
    /// Time to connect every client and make one call on each.
    pub connect_s: f64,
}

impl IdleResult {
    /// Resident KiB per connection: (with clients − before) / clients.
    pub fn per_conn_kib(&self) -> f64 {
        self.rss.total.saturating_sub(self.rss_empty.total) as f64 / self.connections.max(1) as f64
    }
}

/// Runs the idle case: starts the server process (pinned to `cpu`), connects the clients
/// from this process's runtime `rt`, measures. `name` is the server's name; the caller
/// checks afterwards that its socket file is gone.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    name: &str,
    cpu: Option<usize>,
    interval: Duration,
) -> Result<IdleResult> {
    raise_fd_limit();
    let mut args = vec![
        PEER_SUBCOMMAND.to_owned(),
        "--idle-server".to_owned(),
        name.to_owned(),
    ];
    if let Some(c) = cpu {
        args.extend(["--cpu".to_owned(), c.to_string()]);
    }
    let mut server = spawn_self(&args)?;
    server.expect("ready", Duration::from_secs(30))?;
    let r = measure_server(rt, name, server.pid(), interval);
    // Stop the server gracefully whatever happened, so that it removes its socket file.
    let stopped = (|| -> Result<()> {
        server.send("quit")?;
        let status = server.finish(Duration::from_secs(30))?;
        if !status.success() {
            return Err(BenchError::ChildExit {
                child: "the idle server".to_owned(),
                status,
            });
        }
        Ok(())
    })();
    let r = r?;
    stopped?;
    Ok(r)
}

fn measure_server(
    rt: &tokio::runtime::Runtime,
    name: &str,
    pid: u32,
    interval: Duration,
) -> Result<IdleResult> {
    // Let the runtime finish starting up before the first reading.
    std::thread::sleep(Duration::from_millis(100));
    let rss_empty = rss(pid)?;
    let fds_empty = fd_count(pid);
    let t0 = Instant::now();
    let clients = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), async {
            let clients = rpc::connect(name, false, CONNECTIONS).await?;
            let msg = [0x55u8; rpc::SIZE];
            for (i, c) in clients.iter().enumerate() {
                let r = c
                    .call_raw(
                        rpc::METHOD,
                        &msg,
                        CallOptions::timeout(Duration::from_secs(10)),
                    )
                    .await
                    .map_err(|source| BenchError::Rpc {
                        what: format!("call on idle connection {i}"),
                        source,
                    })?;
                if r != msg {
                    return Err(BenchError::WrongData(format!(
                        "idle connection {i}: wrong answer"
                    )));
                }
            }
            Ok(clients)
        })
        .await
        .map_err(|_| BenchError::TimedOut {
            what: format!("connecting {CONNECTIONS} clients"),
            limit: Duration::from_secs(120),
        })?
    })?;
    let connect_s = t0.elapsed().as_secs_f64();
    // Settle: the last answers and any lazily allocated buffers.
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    let r = (|| {
        let rss_now = rss(pid)?;
        let fds = fd_count(pid);
        let (ticks0, ns0, mine0) = (cpu_ticks(pid)?, cpu_ns_schedstat(pid)?, process_cpu_ns());
        let t = Instant::now();
        // The clients' tasks (heartbeats) keep running while we wait.
        rt.block_on(async { tokio::time::sleep(interval).await });
        let dt = t.elapsed().as_secs_f64();
        let (ticks1, ns1, mine1) = (cpu_ticks(pid)?, cpu_ns_schedstat(pid)?, process_cpu_ns());
        let ticks_per_s = rustix::param::clock_ticks_per_second();
        Ok::<_, BenchError>(IdleResult {
            connections: clients.len(),
            rss_empty,
            rss: rss_now,
            fds,
            fds_empty,
            interval: Duration::from_secs_f64(dt),
            cpu_percent_stat: ticks1.saturating_sub(ticks0) as f64 / ticks_per_s.max(1) as f64 / dt
                * 100.0,
            cpu_percent: ns1.saturating_sub(ns0) as f64 / 1e9 / dt * 100.0,
            ticks_per_s,
            client_cpu_percent: mine1.saturating_sub(mine0) as f64 / 1e9 / dt * 100.0,
            connect_s,
        })
    })();
    rt.block_on(async move { drop(clients) });
    r
}

/// Where the idle server's socket file is (as `channel::Listener` names it).
pub fn socket_path(name: &str) -> PathBuf {
    shmrpc::lowlevel::sys::names::runtime_dir()
        .map(|d| d.join(format!("{name}.sock")))
        .unwrap_or_default()
}

/// `bench-peer --idle-server NAME`: an RPC echo server with the default configuration,
/// serving on its own thread until "quit" (or the end of the control pipe).
pub fn serve(name: &str) -> Result<()> {
    let unused = std::env::temp_dir().join(format!("shmrpc-idle-{}.unused", std::process::id()));
    let mut server = rpc::Running::start(rpc::ServerKind::SpinThenPark, name, &unused, None)?;
    let mut ctl = Control::new("");
    ctl.say("ready").map_err(BenchError::io(CONTROL_PIPE))?;
    match ctl
        .next_command()
        .map_err(BenchError::io(CONTROL_PIPE))?
        .as_deref()
    {
        Some("quit") | None => server.stop(),
        Some(other) => Err(BenchError::protocol("\"quit\"", Some(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let status = "Name:\tx\nVmRSS:\t    2048 kB\nRssAnon:\t     512 kB\nRssFile:\t    1024 kB\nRssShmem:\t     512 kB\n";
        assert_eq!(
            parse_status(status),
            Some(Rss {
                total: 2048,
                anon: 512,
                file: 1024,
                shmem: 512
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 1 2 3";
        assert_eq!(parse_stat(stat), Some(12));
        let me = std::process::id();
        assert!(rss(me).unwrap().total > 0);
        cpu_ticks(me).unwrap();
        assert!(fd_count(me) > 0);
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(5) {}
        assert!(cpu_ns_schedstat(me).unwrap() > 0);
        assert!(process_cpu_ns() > 0);
    }
}
