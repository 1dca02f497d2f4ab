//! The blocking client's background thread, which drives its runtime between calls, must
//! not be woken by every call: a thread switched in per call sometimes ran in the caller's
//! place, and that was the blocking client's tail latency. In a test binary of its own:
//! the test finds that thread by its name, so no other blocking client may run beside it.
#![cfg(not(shmrpc_loom))]

use std::time::{Duration, Instant};

use shmrpc::{BlockingClient, ClientConfig};

mod support;

const TIMEOUT: Option<Duration> = Some(Duration::from_secs(60));

/// The thread ids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.trim_end() == name)
        })
        .collect()
}

/// How many times thread `tid` was switched out, voluntarily or not: a thread that waits
/// for a wake-up is switched out once per wake-up.
fn switches(tid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
    status
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .map(|l| l.split(':').nth(1).unwrap().trim().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn back_to_back_blocking_calls_do_not_wake_the_driver_thread_per_call() {
    let (rt, handle, name) = support::echo_server(
        &format!("blocking-driver-{}", std::process::id()),
        Duration::from_secs(5),
    );
    let client = BlockingClient::connect(&name, ClientConfig::default()).unwrap();
    let mut answer = Vec::new();
    client
        .call_raw_into("echo_inline", b"warm", &mut answer, TIMEOUT)
        .unwrap();
    // The thread names itself once it runs, which may be later.
    let since = Instant::now();
    let mut driver = threads_named("shmrpc-blocking");
    while driver.is_empty() && since.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
        driver = threads_named("shmrpc-blocking");
    }
    assert_eq!(driver.len(), 1, "one blocking client, one driver thread");
    let driver = &driver[0];

    const CALLS: u64 = 5_000;
    let (before, start) = (switches(driver), Instant::now());
    for i in 0..CALLS {
        let body = i.to_le_bytes();
        client
            .call_raw_into("echo_inline", &body, &mut answer, TIMEOUT)
            .unwrap();
        assert_eq!(answer, body, "call {i}");
    }
    let elapsed = start.elapsed();
    let woke = switches(driver) - before;
    // The driver looks at the calls every 2 ms (`QUIET`), and takes the runtime back only
    // after a gap that long: a few switches per 2 ms at most, however slow this machine
    // is (the bound grows with the time taken). Woken at the end of every call, it
    // switched at least once per call.
    let bound = 2 * elapsed.as_millis() as u64 + 50;
    assert!(
        woke <= bound,
        "the driver thread was switched in {woke} times during {CALLS} calls in {elapsed:?} \
         (at most {bound} expected)"
    );
    drop(client);
    handle.shutdown();
    drop(rt);
}
