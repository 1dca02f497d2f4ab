//! One watchdog thread per process: every wait of the harness runs under an armed deadline,
//! so a hang (a peer that never answers, a blocking `recv` of a library without timeouts)
//! ends the process with a message instead of hanging forever.
//!
//! Most of the libraries compared here have blocking calls without a timeout (ipc-channel's
//! `recv`, shmrpc's `Listener::accept`, iceoryx2's busy-poll loops): the watchdog is the one
//! mechanism that covers all of them. When it fires it prints what hung, runs the cleanup
//! hooks (the lead kills the child and removes the run's files) and exits with status 3.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type Hook = Box<dyn Fn() + Send>;

struct State {
    armed: Mutex<Option<(Instant, String, Duration)>>,
    hooks: Mutex<Vec<Hook>>,
    /// For the child process: the parent's pid (a change means the parent died).
    parent: Mutex<Option<u32>>,
}

static STATE: OnceLock<State> = OnceLock::new();

fn state() -> &'static State {
    STATE.get_or_init(|| {
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(run)
            .expect("spawning the watchdog thread");
        State {
            armed: Mutex::new(None),
            hooks: Mutex::new(Vec::new()),
            parent: Mutex::new(None),
        }
    })
}

fn run() {
    loop {
        std::thread::sleep(Duration::from_millis(25));
        let s = state();
        if let Some(parent) = *s.parent.lock().expect("watchdog lock") {
            if std::os::unix::process::parent_id() != parent {
                fire("the lead process is gone".to_owned());
            }
        }
        let expired = s
            .armed
            .lock()
            .expect("watchdog lock")
            .as_ref()
            .filter(|(deadline, _, _)| Instant::now() >= *deadline)
            .map(|(_, what, limit)| format!("{what} did not finish within {limit:?}"));
        if let Some(msg) = expired {
            fire(msg);
        }
    }
}

fn fire(msg: String) -> ! {
    let who = if state().parent.lock().map(|p| p.is_some()).unwrap_or(false) {
        "child"
    } else {
        "lead"
    };
    eprintln!("shmrpc-peers ({who}): watchdog: {msg}; giving up");
    if let Ok(hooks) = state().hooks.lock() {
        for h in hooks.iter() {
            h();
        }
    }
    std::process::exit(3);
}

/// Starts the watchdog thread (idempotent).
pub fn init() {
    let _ = state();
}

/// In the child: also give up when the lead process dies.
pub fn watch_parent() {
    *state().parent.lock().expect("watchdog lock") = Some(std::os::unix::process::parent_id());
}

/// Runs `hook` when the watchdog fires (before the process exits).
pub fn on_fire(hook: impl Fn() + Send + 'static) {
    state()
        .hooks
        .lock()
        .expect("watchdog lock")
        .push(Box::new(hook));
}

/// A deadline for one step; dropping the guard disarms it. Guards do not nest: arming
/// replaces the previous deadline.
pub struct Armed(());

/// Arms the watchdog: `what` must finish within `limit`.
pub fn arm(what: impl Into<String>, limit: Duration) -> Armed {
    *state().armed.lock().expect("watchdog lock") =
        Some((Instant::now() + limit, what.into(), limit));
    Armed(())
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Ok(mut a) = state().armed.lock() {
            *a = None;
        }
    }
}
