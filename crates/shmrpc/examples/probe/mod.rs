//! What the in-process performance probes (`rpc_pipelined`, `rpc_stream`,
//! `blocking_latency`) share: a server on a thread of its own, pinned like a second process.
// Each probe compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use shmrpc::{Server, ServerHandle};

/// Pins the calling thread to `cpu` (ignored where that is not allowed).
pub fn pin(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

/// A current-thread runtime, as one process's only thread would run.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `server` serving on its own thread, pinned to CPU 1.
pub struct Serving {
    handle: ServerHandle,
    thread: std::thread::JoinHandle<()>,
}

impl Serving {
    pub fn start(server: Server) -> Self {
        let handle = server.handle();
        let thread = std::thread::spawn(move || {
            pin(1);
            runtime().block_on(server.serve());
        });
        Self { handle, thread }
    }

    /// Shuts the server down and waits (up to 10 s) for its thread.
    pub fn stop(self) {
        self.handle.shutdown();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
