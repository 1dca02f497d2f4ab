//! The helper process the cross-process tests spawn: one binary, one role per
//! [`PeerCommand`] variant (its command line is [`PeerCommand::to_args`]; see
//! [`shmrpc_tests::USAGE`]). A command line it does not understand ends it with status 2.
//!
//! Each role prints `ready ...` on stdout once set up, then does its job. The one-client
//! listeners (`stream`, `flood`, `sink`) drop their `Listener` right after accepting, so a
//! peer killed later leaves no socket file behind. Peers that stay around wait for `exit`
//! (or end of file) on stdin, so they also go away when the test process dies. A lifetime
//! limit ends a forgotten peer.
//!
//! The roles live in modules by subject: `channel` (segments, rings, channels), `rpc`
//! (servers and clients that behave), `bad_input` (malformed frames and versions, another
//! user), `hostile` (a client writing into its connection's shared memory) and `probe`
//! (file permissions).
// Raw segment access (stamps, forged records) is `unsafe`; each use is allowed where it
// happens, with what makes it sound.
#![deny(unsafe_code)]

mod bad_input;
mod channel;
mod hostile;
mod probe;
mod rpc;

use std::io::BufRead;
use std::process::exit;
use std::time::Duration;

use shmrpc::channel::{ChannelConfig, Endpoint, Listener, WaitStrategy};
use shmrpc_tests::{PeerCommand, USAGE};

/// A peer that outlives this is forgotten: end it.
const LIFETIME: Duration = Duration::from_secs(120);

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("peer {}: {msg}", std::process::id());
    exit(2)
}

fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Reads stdin lines, handing each to `on_line` until it returns false, "exit" or EOF.
fn serve_stdin(mut on_line: impl FnMut(&str) -> bool) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let line = line.trim();
        if line == "exit" || !on_line(line) {
            return;
        }
    }
}

fn wait_for_exit() {
    serve_stdin(|_| true);
}

fn config(wait: WaitStrategy, cap: usize) -> ChannelConfig {
    ChannelConfig::default().with_capacity(cap).with_wait(wait)
}

fn bind(name: &str, cfg: ChannelConfig) -> Listener {
    Listener::bind(name, cfg).unwrap_or_else(|e| fail(format!("bind {name}: {e}")))
}

fn accept(l: &Listener) -> Endpoint {
    l.accept().unwrap_or_else(|e| fail(format!("accept: {e}")))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = PeerCommand::from_args(&args).unwrap_or_else(|e| {
        eprintln!("peer: bad command line {args:?}: {e}\n{USAGE}");
        exit(2)
    });
    std::thread::spawn(|| {
        std::thread::sleep(LIFETIME);
        fail("lifetime exceeded");
    });
    match cmd {
        PeerCommand::EchoServer {
            name,
            mode,
            wait,
            conns,
            cap,
        } => channel::echo_server(&name, mode, config(wait, cap), conns),
        PeerCommand::RingWriter { name, cap, n, seed } => channel::ring_writer(&name, cap, n, seed),
        PeerCommand::RaceOpen { name, size } => channel::race_open(&name, size),
        PeerCommand::RingClaim { name, cap, end } => channel::ring_claim(&name, cap, end),
        PeerCommand::HoldSegment { name, size } => channel::hold_segment(&name, size),
        PeerCommand::Listen { name } => channel::listen(&name),
        PeerCommand::Stream {
            name,
            wait,
            cap,
            count,
            seed,
            profile,
        } => channel::stream(&name, config(wait, cap), count, seed, profile),
        PeerCommand::Flood { name, wait, cap } => channel::flood(&name, config(wait, cap)),
        PeerCommand::Sink { name, wait, cap } => channel::sink(&name, config(wait, cap)),
        PeerCommand::RpcServer {
            target,
            cap,
            heartbeat_ms,
            max_message,
            max_in_flight,
            handshake_timeout_ms,
        } => rpc::rpc_server(
            target,
            cap,
            heartbeat_ms,
            max_message,
            max_in_flight,
            handshake_timeout_ms,
        ),
        PeerCommand::RpcClients {
            name,
            clients,
            calls,
        } => rpc::rpc_clients(&name, clients, calls),
        PeerCommand::RpcCaller { name, calls } => rpc::rpc_caller(&name, calls),
        PeerCommand::RpcServingClient { dial, calls } => rpc::rpc_serving_client(&dial, calls),
        PeerCommand::RpcGarbage { name } => bad_input::rpc_garbage(&name),
        PeerCommand::RpcForeign {
            name,
            server_socket,
        } => bad_input::rpc_foreign(&name, &server_socket),
        PeerCommand::RpcBadServer { name, mode } => bad_input::rpc_bad_server(&name, mode),
        PeerCommand::RpcHostile { name } => hostile::rpc_hostile(&name),
        PeerCommand::PermProbe { probe } => probe::perm_probe(&probe),
        PeerCommand::ChaosClient { name, seed } => rpc::chaos_client(&name, seed),
    }
}
