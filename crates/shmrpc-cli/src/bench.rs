//! `shmrpc bench`: its flags, handed to the `shmrpc-bench` crate, and the files it writes.

use std::path::PathBuf;

use anyhow::Context;
use shmrpc_bench::{BenchOptions, PeerOptions};

/// Options of `shmrpc bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A short run (well under a minute): fewer messages, 3 repetitions and a 1 s idle
    /// interval. For checking that the command works, not for figures.
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also draw the results as an SVG chart in this file: round-trip latency (p50, p99)
    /// and stream throughput by message size, one line per transport and mode.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Merge the figures of the peer-comparison crate (its JSON, `"kind": "shmrpc-peers"`)
    /// into the table and the chart, marked as coming from that file.
    #[arg(long, value_name = "PATH")]
    pub peers: Option<PathBuf>,
    /// Measured repetitions (rounds of all cases); default 7, or 3 with --quick.
    #[arg(long, value_name = "N")]
    pub reps: Option<usize>,
    /// Only run cases whose id contains one of these comma-separated texts at the start of
    /// one of its `.`- or `_`-separated words (`rpc.` selects the RPC cases, `rtt.` the
    /// round trips, `uds` every Unix-socket baseline; a ratio is shown only if both of its
    /// cases ran).
    #[arg(long, value_name = "TEXT,...", value_delimiter = ',')]
    pub only: Vec<String>,
    /// Ring capacity of the channel for 64 B and 1 KiB streams (and the data area of the
    /// batched SPSC baseline).
    #[arg(long, value_name = "BYTES", default_value_t = shmrpc_bench::DEFAULT_SMALL_RING)]
    pub small_ring: usize,
    /// Ring capacity of the channel for 64 KiB and 1 MiB streams.
    #[arg(long, value_name = "BYTES", default_value_t = shmrpc_bench::DEFAULT_BIG_RING)]
    pub big_ring: usize,
    /// Ring capacity of the channel for 64 KiB and 1 MiB round trips (2 MiB, the least that
    /// holds a 1 MiB record, keeps the working set small enough to stay in cache).
    #[arg(long, value_name = "BYTES", default_value_t = shmrpc_bench::DEFAULT_RTT_BIG_RING)]
    pub rtt_big_ring: usize,
    /// Bound on the bytes the channel's consumer takes per `recv_batch` (it releases the
    /// ring space once per batch).
    #[arg(long, value_name = "BYTES", default_value_t = shmrpc_bench::DEFAULT_READ_BYTES)]
    pub read_bytes: usize,
    /// Buffers of the copy floor, each 64 KiB with its own flag (default: as many as fill
    /// the big ring, so that both use the same memory; the 1 MiB floor has as many 1 MiB
    /// buffers as fit in the same memory).
    #[arg(long, value_name = "N")]
    pub copy_slots: Option<usize>,
    /// Seconds of the idle interval of the 1000-idle-connections case (default 5, or 1
    /// with --quick).
    #[arg(long, value_name = "SECS")]
    pub idle_secs: Option<f64>,
}

/// Options of the hidden `bench-peer` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// The baseline segment to open.
    #[arg(long, default_value = "")]
    pub seg: String,
    /// Prefix of the channel listeners' names.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// The Unix socket of the byte-stream baselines.
    #[arg(long)]
    pub sock: Option<PathBuf>,
    /// The TCP port (on 127.0.0.1) of the TCP baseline.
    #[arg(long)]
    pub tcp_port: Option<u16>,
    /// Run only an idle RPC server of this name (the 1000-idle-connections case).
    #[arg(long)]
    pub idle_server: Option<String>,
    /// The directory of the run's TLS certificates and token (the TLS cases).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
    /// CPU to pin to.
    #[arg(long)]
    pub cpu: Option<usize>,
}

/// `shmrpc bench`: runs the benchmark, prints the table, writes the JSON and the chart.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let report = shmrpc_bench::run(&BenchOptions {
        quick: args.quick,
        peers: args.peers.clone(),
        svg: args.svg.clone(),
        reps: args.reps,
        only: args.only.clone(),
        small_ring: args.small_ring,
        big_ring: args.big_ring,
        rtt_big_ring: args.rtt_big_ring,
        read_bytes: args.read_bytes,
        copy_slots: args.copy_slots,
        idle_secs: args.idle_secs,
    })?;
    report.print_table();
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report.to_json())? + "\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report.to_svg())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("SVG chart written to {}", path.display());
    }
    Ok(())
}

/// `shmrpc bench-peer`: the benchmark's second process.
pub fn peer(args: &PeerArgs) -> anyhow::Result<()> {
    Ok(shmrpc_bench::peer(&PeerOptions {
        seg: args.seg.clone(),
        prefix: args.prefix.clone(),
        sock: args.sock.clone(),
        tcp_port: args.tcp_port,
        idle_server: args.idle_server.clone(),
        tls_dir: args.tls_dir.clone(),
        cpu: args.cpu,
    })?)
}
