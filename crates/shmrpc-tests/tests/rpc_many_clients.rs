//! 1000 clients connected at once to one server process, from four client processes of
//! 250 connections each; every client completes checked calls while all are connected.
//! The server reports its resident memory before and after (its `stats` method reads
//! `/proc/self/status`), and the test prints the memory per idle connection. The only
//! memory assertion is a sanity bound (under 1 MiB per connection); the figure is printed.
#![forbid(unsafe_code)]

use std::time::Duration;

use shmrpc::{CallOptions, Client, ClientConfig};
use shmrpc_tests::{
    field_parse, raise_nofile, rpc_runtime, rpc_stats, rpc_wait_stats, spawn_peer, with_watchdog,
    PeerCommand, RpcTarget, TestNames,
};

const WAIT: Duration = Duration::from_secs(30);
const PROCESSES: usize = 4;
const PER_PROCESS: usize = 250;
const CALLS: u64 = 3;
/// Ring capacity of each connection (each direction): small, to keep memory modest.
const CAP: usize = 16384;

/// How long the server's idle CPU use is measured.
const IDLE: Duration = Duration::from_millis(500);

/// The server's CPU use (fraction of one core) over `IDLE` while nobody calls (a figure to
/// print, not to assert).
fn idle_cpu(rt: &tokio::runtime::Runtime, client: &Client) -> f64 {
    let cpu = |s: &str| field_parse::<u64>(s, "cpu_us") as f64 / 1e6;
    let a = rt.block_on(rpc_stats(client));
    let t = std::time::Instant::now();
    std::thread::sleep(IDLE);
    let b = rt.block_on(rpc_stats(client));
    (cpu(&b) - cpu(&a)) / t.elapsed().as_secs_f64()
}

#[test]
fn a_thousand_clients_connected_at_once_each_completing_calls() {
    with_watchdog(Duration::from_secs(120), || {
        raise_nofile(4096);
        let mut names = TestNames::new();
        let name = names.name("rpc-many");
        let mut server = spawn_peer!(PeerCommand::RpcServer {
            target: RpcTarget::Shm(name.clone()),
            cap: CAP,
            heartbeat_ms: 2000,
            max_message: 16 << 20,
            max_in_flight: None,
            handshake_timeout_ms: None,
        });
        server.expect("ready", WAIT);
        let rt = rpc_runtime();
        let client = rt.block_on(async {
            let c = Client::connect(&name, ClientConfig::default())
                .await
                .expect("connect");
            // Warm up the server (its runtime, allocator) before the baseline.
            for i in 0..100u64 {
                let s: u64 = c
                    .call("add", &(i, 1u64), CallOptions::default())
                    .await
                    .unwrap();
                assert_eq!(s, i + 1);
            }
            c
        });
        let before = rt.block_on(rpc_stats(&client));
        let idle_one = idle_cpu(&rt, &client);

        let mut peers: Vec<_> = (0..PROCESSES)
            .map(|_| {
                spawn_peer!(PeerCommand::RpcClients {
                    name: name.clone(),
                    clients: PER_PROCESS,
                    calls: CALLS,
                })
            })
            .collect();
        for p in &mut peers {
            let line = p.expect("ready", WAIT);
            assert_eq!(
                field_parse::<usize>(&line, "connected"),
                PER_PROCESS,
                "{line}"
            );
            assert_eq!(
                field_parse::<u64>(&line, "calls"),
                PER_PROCESS as u64 * CALLS * 2,
                "{line}"
            );
        }
        // All 1000 connections are open and idle now.
        let after = rt.block_on(rpc_stats(&client));
        let total = (PROCESSES * PER_PROCESS) as u64;
        let delta = |k: &str| field_parse::<i64>(&after, k) - field_parse::<i64>(&before, k);
        let fds = delta("fds");
        assert!(
            fds >= total as i64,
            "the server holds {fds} more descriptors with {total} clients connected \
             (at least one each expected): before {before}; after {after}"
        );
        let rss = delta("rss_kb");
        let per_conn_kib = rss as f64 / total as f64;
        println!(
            "server with {total} idle connections ({CAP}-byte rings): RSS {} -> {} KiB, \
             {per_conn_kib:.1} KiB per connection (anon {:.1}, shmem {:.1}); {:.1} fds per \
             connection; threads {} -> {}",
            field_parse::<u64>(&before, "rss_kb"),
            field_parse::<u64>(&after, "rss_kb"),
            delta("rss_anon_kb") as f64 / total as f64,
            delta("rss_shmem_kb") as f64 / total as f64,
            fds as f64 / total as f64,
            field_parse::<u64>(&before, "threads"),
            field_parse::<u64>(&after, "threads"),
        );
        assert!(
            per_conn_kib < 1024.0,
            "sanity: {per_conn_kib} KiB per idle connection"
        );
        let idle_many = idle_cpu(&rt, &client);
        println!(
            "server CPU while idle: {:.1}% of a core with 1 connection, {:.1}% with {} \
             (measured over {IDLE:?} each)",
            idle_one * 100.0,
            idle_many * 100.0,
            total + 1
        );

        // Every client still works while all are connected.
        for p in &mut peers {
            p.send("check");
        }
        for p in &mut peers {
            let line = p.expect("checked", WAIT);
            assert_eq!(field_parse::<usize>(&line, "ok"), PER_PROCESS, "{line}");
        }
        let st = rt.block_on(rpc_stats(&client));
        assert_eq!(
            field_parse::<u64>(&st, "calls"),
            100 + total * (CALLS * 2 + 1),
            "server-side call count: {st}"
        );

        // The clients leave; the server frees their connections' descriptors.
        for p in &mut peers {
            p.send("exit");
        }
        for p in &mut peers {
            p.expect("done", WAIT);
            p.assert_exits_ok(WAIT);
        }
        let base_fds = field_parse::<u64>(&before, "fds");
        rt.block_on(rpc_wait_stats(
            &client,
            "the server closing the connections of the clients that left",
            WAIT,
            |s| field_parse::<u64>(s, "fds") <= base_fds,
        ));
        drop(client);
        drop(rt);
        server.send("exit");
        server.expect("done", WAIT);
        server.assert_exits_ok(WAIT);
        names.assert_clean_with_locks();
    });
}
