//! Request/response between a server and a client, two ways:
//!
//! (a) a server and a client as tokio tasks of one runtime, over `channel::pair`;
//! (b) the same server and client in two separate processes, over `Listener`/`connect`.
//!
//! Each runs 100 requests of 45 bytes, then 10,000, and counts responses that are exactly
//! `transform(request)`: all of them must be.
#![forbid(unsafe_code)]

use std::time::Duration;

use shmrpc::channel::{self, ChannelConfig, Endpoint, RecvError, SendError, WaitStrategy};
use shmrpc_tests::{
    field_parse, heavy, make_request, parse_wait, spawn_peer, transform, with_watchdog,
    PeerCommand, ServeMode, TestNames,
};

const STP: WaitStrategy = WaitStrategy::SpinThenPark {
    spin: Duration::from_micros(50),
};

/// How a client run went: correct responses, and the first wrong one (if any).
type Outcome = (u64, Option<String>);

fn judge(seq: u64, req: &[u8], resp: &[u8], correct: &mut u64, first_bad: &mut Option<String>) {
    if resp == transform(req).as_slice() {
        *correct += 1;
    } else if first_bad.is_none() {
        *first_bad = Some(format!("request {seq}: got {resp:02x?}"));
    }
}

async fn client_async(ep: &mut Endpoint, n: u64) -> Outcome {
    let (mut correct, mut first_bad) = (0, None);
    for seq in 0..n {
        let req = make_request(seq);
        ep.send_async(&req).await.expect("client send_async");
        let resp = ep.recv_async().await.expect("client recv_async");
        judge(seq, &req, &resp, &mut correct, &mut first_bad);
    }
    (correct, first_bad)
}

fn client_blocking(ep: &mut Endpoint, n: u64) -> Outcome {
    let (mut correct, mut first_bad) = (0, None);
    for seq in 0..n {
        let req = make_request(seq);
        ep.send(&req).expect("client send");
        let resp = ep.recv().expect("client recv");
        judge(seq, &req, &resp, &mut correct, &mut first_bad);
    }
    (correct, first_bad)
}

async fn server_async(mut ep: Endpoint) -> u64 {
    let mut served = 0;
    loop {
        let reply = match ep.recv_async().await {
            Ok(m) => transform(&m),
            Err(RecvError::Closed) => return served,
            Err(e) => panic!("server recv_async: {e}"),
        };
        match ep.send_async(&reply).await {
            Ok(()) => served += 1,
            Err(SendError::Closed) => return served,
            Err(e) => panic!("server send_async: {e}"),
        }
    }
}

/// Scenario (a): both ends are tasks of one runtime.
fn tasks_of_one_runtime(multi_thread: bool, wait: WaitStrategy) {
    let rt = if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .unwrap();
    rt.block_on(async {
        for n in [100u64, 10_000] {
            let cfg = ChannelConfig::default().with_capacity(4096).with_wait(wait);
            let (mut client, server) = channel::pair(&cfg).unwrap();
            let server = tokio::spawn(server_async(server));
            let client = tokio::spawn(async move {
                let out = client_async(&mut client, n).await;
                drop(client); // closes both directions: the server ends
                out
            });
            let (correct, first_bad) = tokio::time::timeout(Duration::from_secs(30), client)
                .await
                .expect("watchdog: client did not finish")
                .expect("client task");
            let served = tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .expect("watchdog: server did not see the close")
                .expect("server task");
            assert_eq!(
                correct, n,
                "{correct} of {n} responses correct (first wrong: {first_bad:?})"
            );
            assert_eq!(served, n, "server answered {served} of {n} requests");
        }
    });
}

#[test]
fn a_tasks_of_one_multi_thread_runtime_spin_then_park() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || tasks_of_one_runtime(true, STP));
}

#[test]
fn a_tasks_of_one_multi_thread_runtime_park() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        tasks_of_one_runtime(true, WaitStrategy::Park)
    });
}

#[test]
fn a_tasks_of_one_current_thread_runtime() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || tasks_of_one_runtime(false, STP));
}

/// Scenario (b): the server is a separate process (`peer echo-server`); the client here
/// connects twice (100, then 10,000 requests), blocking or from a tokio task.
fn separate_processes(client_mode: &str, server_mode: &str, wait: &str) {
    let mut names = TestNames::new();
    let name = names.name("echo");
    let mut peer = spawn_peer!(PeerCommand::EchoServer {
        name: name.clone(),
        mode: match server_mode {
            "async" => ServeMode::Async,
            _ => ServeMode::Blocking,
        },
        wait: parse_wait(wait).unwrap(),
        conns: 2,
        cap: 4096,
    });
    peer.expect("ready", Duration::from_secs(10));
    let cfg = ChannelConfig::default().with_wait(parse_wait(wait).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for n in [100u64, 10_000] {
        let mut ep = channel::connect(&name, &cfg).expect("connect");
        let (correct, first_bad) = match client_mode {
            "blocking" => client_blocking(&mut ep, n),
            _ => rt.block_on(async {
                tokio::spawn(async move { client_async(&mut ep, n).await })
                    .await
                    .expect("client task")
            }),
        };
        assert_eq!(
            correct, n,
            "{correct} of {n} responses correct (first wrong: {first_bad:?})"
        );
    }
    let done = peer.expect("done", Duration::from_secs(10));
    assert_eq!(field_parse::<u64>(&done, "served"), 10_100);
    peer.assert_exits_ok(Duration::from_secs(10));
    names.assert_clean();
}

#[test]
fn b_separate_processes_blocking_spin_then_park() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        separate_processes("blocking", "blocking", "stp")
    });
}

#[test]
fn b_separate_processes_blocking_park() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        separate_processes("blocking", "blocking", "park")
    });
}

#[test]
fn b_separate_processes_async_spin_then_park() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        separate_processes("async", "async", "stp")
    });
}

#[test]
fn b_separate_processes_async_park() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        separate_processes("async", "async", "park")
    });
}

#[test]
fn b_separate_processes_async_client_blocking_server() {
    let _g = heavy();
    with_watchdog(Duration::from_secs(60), || {
        separate_processes("async", "blocking", "stp")
    });
}
