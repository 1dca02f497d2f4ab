//! Chaos: client and server processes SIGKILLed at random points, over and over, while
//! they work.
//!
//! Clients (`peer chaos-client`) keep a server busy in every way a kill can interrupt:
//! connecting, large calls fragmented over several ring records, small calls, streams
//! read to the end or dropped, calls parked until their deadline, and reconnecting. Each
//! is killed after a random delay (0–60 ms, so some die while connecting). Then servers
//! are killed the same way while two such clients and this process's own client (with a
//! parked call in flight) use them, and restarted.
//!
//! Checked: every answer (checksums, on both sides: a torn or mixed-up message is never
//! delivered); no `once` call executed twice (the server keeps every token); a pending call
//! fails with `PeerGone` promptly after its server dies (watchdog on every wait); the
//! restarted server is reconnected to; after all kills the server holds no more
//! descriptors or tasks than before, and no segment, socket or lock file is left.
//!
//! The default (CI) run kills 60 clients and 12 servers. `SHMRPC_CHAOS=long` kills 500
//! clients and 100 servers: `SHMRPC_CHAOS=long cargo test --release -p shmrpc-tests --test
//! chaos -- --nocapture`. `SHMRPC_CHAOS_SEED` sets the seed (it is printed).
#![forbid(unsafe_code)]

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use shmrpc::{CallOptions, Client, ClientConfig, Code};
use shmrpc_tests::{
    field_parse, make_request, rpc_runtime, rpc_stats, rpc_wait_stats, spawn_peer, transform,
    with_watchdog, within, PeerCommand, PeerProcess, RpcTarget, SplitMix64, TestNames,
};

const WAIT: Duration = Duration::from_secs(10);

fn start_server(name: &str) -> PeerProcess {
    let mut p = spawn_peer!(PeerCommand::RpcServer {
        target: RpcTarget::Shm(name.to_owned()),
        cap: 65536,
        heartbeat_ms: 300,
        max_message: 1 << 20,
        max_in_flight: None,
        handshake_timeout_ms: None,
    });
    p.expect("ready", WAIT);
    p
}

async fn good_call(c: &Client, seq: u64) {
    let req = make_request(seq);
    let r = within(
        "a well-behaved call",
        WAIT,
        c.call_raw("transform", &req, CallOptions::default()),
    )
    .await
    .unwrap_or_else(|e| panic!("well-behaved call {seq}: {e}"));
    assert_eq!(r, transform(&req), "answer to call {seq}");
}

/// Kills a chaos client and checks it was still running and never saw a wrong answer.
fn kill_chaos_client(mut c: PeerProcess) {
    let status = c.kill_status();
    let bad: Vec<_> = c
        .lines_so_far()
        .iter()
        .filter(|l| l.starts_with("BAD"))
        .cloned()
        .collect();
    assert!(bad.is_empty(), "a chaos client saw wrong data: {bad:?}");
    assert_eq!(
        status.signal(),
        Some(9),
        "a chaos client ended on its own before the kill: {status}; it printed {:?}",
        c.lines_so_far()
    );
}

fn no_dupes_or_torn(stats: &str) {
    assert_eq!(
        field_parse::<u64>(stats, "dupes"),
        0,
        "a call ran twice: {stats}"
    );
    assert_eq!(
        field_parse::<u64>(stats, "torn"),
        0,
        "a torn request: {stats}"
    );
}

#[test]
fn kills_of_clients_and_servers_lose_nothing_and_leak_nothing() {
    let long = std::env::var("SHMRPC_CHAOS").is_ok_and(|v| v == "long");
    let (client_kills, server_kills) = if long { (500, 100) } else { (60, 12) };
    let seed = std::env::var("SHMRPC_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from(std::process::id()));
    println!("chaos: {client_kills} client kills, {server_kills} server kills, seed {seed}");
    let limit = Duration::from_secs(if long { 3600 } else { 240 });
    with_watchdog(limit, move || {
        let mut rng = SplitMix64::new(seed);
        let mut names = TestNames::new();
        let name = names.name("chaos");
        let mut server = start_server(&name);
        let rt = rpc_runtime();
        let cfg = ClientConfig::default().with_reconnect_for(Duration::from_secs(10));
        let client = rt.block_on(Client::connect(&name, cfg)).expect("connect");
        let mut seq = 0;
        rt.block_on(good_call(&client, seq));
        let baseline = rt.block_on(rpc_stats(&client));
        let (base_fds, base_tasks) = (
            field_parse::<u64>(&baseline, "fds"),
            field_parse::<u64>(&baseline, "tasks"),
        );

        // Clients killed at random points.
        let started = Instant::now();
        let mut in_work = 0;
        for k in 0..client_kills {
            let mut c = spawn_peer!(PeerCommand::ChaosClient {
                name: name.clone(),
                seed: rng.next(),
            });
            let delay = rng.range(0, 60);
            if delay >= 5 {
                // Past start-up: let it get to work first.
                c.expect("started", WAIT);
                in_work += 1;
            }
            std::thread::sleep(Duration::from_millis(delay));
            kill_chaos_client(c);
            if k % 5 == 4 {
                seq += 1;
                rt.block_on(good_call(&client, seq));
            }
        }
        // Every killed client's connection is freed, every parked handler cancelled.
        let after = rt.block_on(rpc_wait_stats(
            &client,
            "the killed clients' connections to be freed",
            Duration::from_secs(30),
            |s| {
                field_parse::<u64>(s, "fds") <= base_fds
                    && field_parse::<u64>(s, "tasks") <= base_tasks
                    && field_parse::<i64>(s, "slow_in_flight") == 0
            },
        ));
        no_dupes_or_torn(&after);
        assert!(
            field_parse::<u64>(&after, "once") > 0,
            "the chaos clients made no calls: {after}"
        );
        println!(
            "client kills: {client_kills} ({in_work} after start-up) in {:.1} s; server: {after}",
            started.elapsed().as_secs_f64()
        );

        // Servers killed at random points, under load, with a call of ours parked.
        let started = Instant::now();
        let chaos = [
            spawn_peer!(PeerCommand::ChaosClient {
                name: name.clone(),
                seed: rng.next(),
            }),
            spawn_peer!(PeerCommand::ChaosClient {
                name: name.clone(),
                seed: rng.next(),
            }),
        ];
        let mut slowest_gone = Duration::ZERO;
        for _ in 0..server_kills {
            let c = client.clone();
            let parked = rt.spawn(async move {
                c.call_raw(
                    "slow",
                    b"parked",
                    CallOptions::timeout(Duration::from_secs(60)),
                )
                .await
            });
            // Under load: the chaos clients are back at work on this server.
            let stats = rt.block_on(rpc_wait_stats(
                &client,
                "the chaos clients to call the (restarted) server",
                Duration::from_secs(20),
                |s| field_parse::<u64>(s, "once") > 0,
            ));
            no_dupes_or_torn(&stats);
            std::thread::sleep(Duration::from_millis(rng.range(0, 30)));
            let killed = Instant::now();
            server.kill();
            let r = rt
                .block_on(within(
                    "the parked call after its server died",
                    WAIT,
                    parked,
                ))
                .expect("the parked call's task");
            slowest_gone = slowest_gone.max(killed.elapsed());
            let e = r.expect_err("a call to a killed server cannot succeed");
            assert_eq!(e.code, Code::PeerGone, "{e}");
            server = start_server(&name);
            seq += 1;
            rt.block_on(good_call(&client, seq));
        }
        for c in chaos {
            kill_chaos_client(c);
        }
        let after = rt.block_on(rpc_wait_stats(
            &client,
            "the chaos clients' connections to be freed",
            Duration::from_secs(30),
            |s| {
                field_parse::<u64>(s, "fds") <= base_fds
                    && field_parse::<u64>(s, "tasks") <= base_tasks
                    && field_parse::<i64>(s, "slow_in_flight") == 0
            },
        ));
        no_dupes_or_torn(&after);
        println!(
            "server kills: {server_kills} in {:.1} s; a parked call failed at most {:?} after \
             its server died; last server: {after}",
            started.elapsed().as_secs_f64(),
            slowest_gone
        );
        drop(client);
        drop(rt);
        server.send("exit");
        server.expect("done", WAIT);
        server.assert_exits_ok(WAIT);
        names.assert_clean_with_locks();
    });
}
