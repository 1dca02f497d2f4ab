//! `shmrpc`: the project's command.
//!
//! - `shmrpc demo` starts a second process, talks to it through a shared-memory channel
//!   and prints what happened and the round-trip figures.
//! - `shmrpc bench` measures the channel between two processes beside raw baselines
//!   measured in the same run, and prints the ratios the project's targets are stated in
//!   (the measuring is the `shmrpc-bench` crate's).
//!
//! Both re-execute this same binary (`std::env::current_exe()`) with a hidden subcommand
//! for the second process, so what runs on each side is exactly this build.
#![forbid(unsafe_code)]

mod bench;
mod demo;
mod ops;
mod soak;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fast, trustworthy IPC over shared-memory rings.
#[derive(Debug, Parser)]
#[command(name = "shmrpc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a second process, exchange messages with it over a shared-memory channel, and
    /// print what happened and the round-trip figures.
    Demo,
    /// Measure the channel between two processes beside raw baselines from the same run.
    Bench(bench::BenchArgs),
    /// The demo's server process (started by `shmrpc demo`).
    #[command(hide = true)]
    DemoPeer {
        /// Base name of the listeners to bind.
        #[arg(long)]
        name: String,
        /// CPU to pin to, if any.
        #[arg(long)]
        cpu: Option<usize>,
    },
    /// The benchmark's second process (started by `shmrpc bench`).
    #[command(hide = true)]
    BenchPeer(bench::PeerArgs),
    /// Load and soak: many clients calling a server process for a while (checked answers,
    /// streams, cancels, reconnects), with throughput, p99 drift and memory growth.
    Soak(soak::SoakArgs),
    /// A demo RPC server (methods echo, add and the streaming chat; JSON bodies) serving
    /// until SIGINT/SIGTERM.
    Serve(ops::serve::ServeArgs),
    /// One call from the shell: `shmrpc call NAME METHOD [JSON]`, streaming with `--stream`.
    Call(ops::call::CallArgs),
    /// This user's servers and shared-memory segments: pid, alive or stale, clients, memory.
    Ls(ops::ls::LsArgs),
    /// Remove the sockets and segments left by dead processes (never a live one's).
    Cleanup(ops::cleanup::CleanupArgs),
    /// A live server's connections: peers, traffic, handlers running, ring positions,
    /// occupancy and waiting flags.
    Inspect(ops::inspect::InspectArgs),
    /// A private CA, server and client certificates signed by it and a token, for `serve
    /// --tcp` and `call --tcp` over mutual TLS.
    Keygen(ops::keygen::KeygenArgs),
    /// The soak's server process (started by `shmrpc soak`).
    #[command(hide = true)]
    SoakServer {
        /// Name to bind.
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo => demo::run(),
        Command::Bench(args) => bench::run(&args),
        Command::DemoPeer { name, cpu } => demo::peer(&name, cpu),
        Command::BenchPeer(args) => bench::peer(&args),
        Command::Soak(args) => soak::run(&args),
        Command::SoakServer { name } => soak::server(&name),
        Command::Serve(args) => ops::serve::run(&args),
        Command::Call(args) => ops::call::run(&args),
        Command::Ls(args) => ops::ls::run(&args),
        Command::Cleanup(args) => ops::cleanup::run(&args),
        Command::Inspect(args) => ops::inspect::run(&args),
        Command::Keygen(args) => ops::keygen::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmrpc: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
