//! Runs the `shmrpc` command as a user would: `shmrpc demo` and
//! `shmrpc bench --quick --json FILE --svg FILE --peers FILE`. Checks exit codes, the
//! sections of the output, the JSON document and the chart; never timings (those are the
//! benchmark's business).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Both commands pin two spinning processes to the two CPUs: running them at the same
/// time would make each wait for the other's time slices. One at a time.
static SERIAL: Mutex<()> = Mutex::new(());

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `shmrpc args…`, killing it if it takes longer than `limit` (the watchdog).
fn shmrpc(args: &[&str], limit: Duration) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shmrpc"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shmrpc");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("shmrpc {} did not finish within {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        ok: status.success(),
        code: status.code(),
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn assert_contains(run: &Run, needles: &[&str]) {
    for n in needles {
        assert!(
            run.stdout.contains(n),
            "output lacks {n:?}\n--- stdout\n{}\n--- stderr\n{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn demo_talks_to_a_second_process_and_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = shmrpc(&["demo"], Duration::from_secs(120));
    assert!(
        run.ok,
        "shmrpc demo exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_contains(
        &run,
        &[
            "second process   pid",
            "1. Requests and responses",
            "<- server pid",
            "2. One-way stream",
            "none damaged",
            "3. Round trips of 64 B",
            "spin-then-park",
            "park",
            "p99.9",
            "4. Shutdown",
            "exited with status 0",
            "nothing left behind",
        ],
    );
    // The server is another process: its pid differs from the one that printed "this process".
    let pid_of = |prefix: &str| -> u32 {
        let line = run
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}"));
        line.split_whitespace()
            .find_map(|w| w.trim_end_matches(',').parse().ok())
            .expect("a pid")
    };
    assert_ne!(pid_of("this process"), pid_of("second process"));
}

fn number(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

#[test]
fn bench_quick_prints_the_table_and_writes_json() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = |ext: &str| -> PathBuf {
        std::env::temp_dir().join(format!("shmrpc-bench-test-{}.{ext}", std::process::id()))
    };
    let (json_path, svg_path, peers_path) = (tmp("json"), tmp("svg"), tmp("peers.json"));
    for p in [&json_path, &svg_path] {
        let _ = std::fs::remove_file(p);
    }
    // A peers file as the peer-comparison crate writes it (made-up figures: only the
    // merging is checked).
    let peers = serde_json::json!({
        "kind": "shmrpc-peers", "version": 1, "date": "2026-01-02 03:04:05 UTC",
        "machine": "test machine", "command": "peers --test",
        "cases": [
            {"id": "rtt.iceoryx2.spin.64", "system": "iceoryx2", "mode": "spin",
             "workload": "rtt", "size": 64, "p50_ns": 7000.0, "p99_ns": 9000.0,
             "p999_ns": 12000.0, "max_ns": 50000.0, "msgs_per_s": null, "bytes_per_s": null,
             "rounds": 7, "na": null},
            {"id": "stream.ipc_channel.park.1024", "system": "ipc-channel", "mode": "park",
             "workload": "stream", "size": 1024, "p50_ns": null, "p99_ns": null,
             "p999_ns": null, "max_ns": null, "msgs_per_s": 100000.0,
             "bytes_per_s": 102400000.0, "rounds": 7, "na": null},
            {"id": "rtt.ipc_channel.spin.64", "system": "ipc-channel", "mode": "spin",
             "workload": "rtt", "size": 64, "na": "no busy-poll mode"}
        ],
        "ratios": [{"case": "rtt.iceoryx2.spin.64", "baseline": "rtt.uds.64", "median": 0.2}]
    });
    std::fs::write(&peers_path, peers.to_string()).expect("write the peers file");
    let run = shmrpc(
        &[
            "bench",
            "--quick",
            // Two rounds instead of three: the same code paths, in a debug build's time.
            "--reps",
            "2",
            "--json",
            json_path.to_str().unwrap(),
            "--svg",
            svg_path.to_str().unwrap(),
            "--peers",
            peers_path.to_str().unwrap(),
        ],
        Duration::from_secs(240),
    );
    let text = std::fs::read_to_string(&json_path);
    let svg = std::fs::read_to_string(&svg_path);
    for p in [&json_path, &svg_path, &peers_path] {
        let _ = std::fs::remove_file(p);
    }
    assert!(
        run.ok,
        "shmrpc bench --quick exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_contains(
        &run,
        &[
            "machine:",
            "pinned",
            "Round trip, 64 B, two processes",
            "Round trip, 1 KiB, two processes",
            "Round trip, 64 KiB, two processes",
            "Round trip, 1 MiB, two processes",
            "floor: one cache line ping-pong",
            "floor: bare futex ping-pong",
            "floor: copy ping-pong",
            "baseline: Unix socket,",
            "baseline: Unix socket, tokio,",
            "baseline: pipe pair,",
            "baseline: TCP loopback,",
            "One-way stream, two processes",
            "CPU/msg",
            "RPC: unary call, 64 B, two processes",
            "RPC: pipelined 64 B calls",
            "256 connections",
            "RPC: a server restart",
            "RPC: remote transport",
            "RPC: idle connections",
            "server, 1000 idle connections",
            "Peers (from",
            "iceoryx2, spin",
            "n/a: no busy-poll mode",
            "Targets",
            "64 B round trip, channel, spin / cache-line floor, p50",
            "64 B round trip, channel, park / bare futex floor, p50",
            "64 B stream / batched SPSC baseline",
            "64 KiB stream / bare copy floor",
            "64 KiB stream / Unix socket",
            "1 MiB stream / bare copy floor",
            "RPC pipelined, 256 connections / tokio Unix socket",
            "idle server (no connection), resident memory",
            "lower p50 and p99 than the peer in every mode with a counterpart: iceoryx2",
            "Where the time goes",
            "record-ring baseline / cache-line floor (layout cost)",
            "cleanup: peer exited 0",
            "JSON written to",
            "SVG chart written to",
        ],
    );
    assert!(
        !run.stdout.to_lowercase().contains("issue"),
        "the output names things by what they are, not by tracker history"
    );

    let doc: Value = serde_json::from_str(&text.expect("JSON file written")).expect("valid JSON");
    assert_eq!(doc["schema"], "shmrpc-bench/2");
    assert_eq!(doc["quick"], true);
    assert!(number(&doc["machine"], "nproc") >= 1.0);
    assert!(doc["machine"]["kernel"].is_string());
    assert!(number(&doc, "reps") >= 1.0);

    // One list of rows: every case, the peers file's cases, the targets and the ratios.
    let rows = doc["rows"].as_array().expect("rows array");
    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["id"].as_str().expect("every row has an id"))
        .collect();
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "row ids are unique");
    let row = |id: &str| -> &Value {
        rows.iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no row {id}"))
    };
    for r in rows {
        assert!(r["group"].is_string() && r["label"].is_string(), "{r}");
    }

    // Round trips: every mode, floor and baseline at every size.
    for size in [64u64, 1024, 65536, 1 << 20] {
        let mut rtt = vec![
            format!("rtt.floor.copy.{size}"),
            format!("rtt.baseline.uds.{size}"),
            format!("rtt.baseline.uds_tokio.{size}"),
            format!("rtt.baseline.pipe.{size}"),
            format!("rtt.baseline.tcp.{size}"),
        ];
        for m in ["spin", "spin_then_park", "park", "async", "async_park"] {
            rtt.push(if size == 64 {
                format!("rtt.shmrpc.{m}")
            } else {
                format!("rtt.shmrpc.{m}.{size}")
            });
        }
        if size == 64 {
            for id in [
                "rtt.floor.cache_line",
                "rtt.floor.futex",
                "rtt.baseline.record_ring",
                "rtt.baseline.record_ring_fence",
            ] {
                rtt.push(id.to_owned());
            }
        }
        for id in &rtt {
            let r = row(id);
            assert_eq!(r["group"], format!("rtt.{size}"), "{id}");
            assert_eq!(r["workload"], "rtt", "{id}");
            assert_eq!(number(r, "size"), size as f64, "{id}");
            let (p50, p99, p999, max) = (
                number(r, "p50_us"),
                number(r, "p99_us"),
                number(r, "p999_us"),
                number(r, "max_us"),
            );
            assert!(
                p50 > 0.0 && p99 >= p50 && p999 >= p99 && max >= p999,
                "{id}: percentiles {p50} {p99} {p999} {max}"
            );
            assert!(number(r, "samples") > 0.0, "{id}");
            assert!(r["system"].is_string() && r["mode"].is_string(), "{id}");
        }
        for id in [
            format!("rtt.shmrpc.park.{size}"),
            format!("rtt.shmrpc.spin.{size}"),
        ] {
            if size != 64 {
                assert!(number(row(&id), "p50_vs_floor") > 0.0, "{id}");
                assert!(number(row(&id), "p50_vs_uds") > 0.0, "{id}");
            }
        }

        // Streams: the channel in each mode and every baseline, with CPU per message.
        let mut streams = vec![format!("stream.shmrpc.{size}")];
        for m in ["spin_then_park", "park", "async"] {
            streams.push(format!("stream.shmrpc.{m}.{size}"));
        }
        for l in ["uds", "uds_tokio", "pipe", "tcp"] {
            streams.push(format!("stream.baseline.{l}.{size}"));
        }
        for id in &streams {
            let s = row(id);
            assert_eq!(s["group"], "stream", "{id}");
            assert_eq!(number(s, "size"), size as f64, "{id}");
            assert!(number(s, "msgs_per_s") > 0.0, "{id}");
            assert!(number(s, "gb_per_s") > 0.0, "{id}");
            let (all, lead, peer) = (
                number(s, "cpu_ns_per_msg"),
                number(s, "lead_cpu_ns_per_msg"),
                number(s, "peer_cpu_ns_per_msg"),
            );
            assert!(
                all > 0.0 && lead >= 0.0 && peer >= 0.0,
                "{id}: CPU {all} {lead} {peer}"
            );
            if !id.starts_with("stream.baseline.uds.") {
                assert!(number(s, "msgs_per_s_vs_uds") > 0.0, "{id}");
            }
        }
        let floor = if size >= 65536 {
            format!("stream.floor.copy.{size}")
        } else {
            format!("stream.baseline.spsc.{size}")
        };
        assert!(number(row(&floor), "msgs_per_s") > 0.0, "{floor}");
        assert!(
            number(row(&format!("stream.shmrpc.{size}")), "msgs_per_s_vs_floor") > 0.0,
            "{size}"
        );
    }

    // RPC: unary calls, pipelined calls (1, 16 and 256 connections), restarts, idle.
    for id in [
        "rpc.unary.shmrpc.spin_then_park",
        "rpc.unary.shmrpc.park",
        "rpc.unary.baseline.uds",
    ] {
        let r = row(id);
        assert_eq!(r["group"], "rpc.unary", "{id}");
        let (p50, p99) = (number(r, "p50_us"), number(r, "p99_us"));
        assert!(p50 > 0.0 && p99 >= p50, "{id}: p50 {p50} p99 {p99}");
        assert_eq!(number(r, "size"), 64.0);
    }
    for conns in [1u64, 16, 256] {
        for id in [
            format!("rpc.pipelined.shmrpc.{conns}"),
            format!("rpc.pipelined.baseline.uds.{conns}"),
        ] {
            let r = row(&id);
            assert_eq!(r["group"], "rpc.pipelined", "{id}");
            assert_eq!(number(r, "connections"), conns as f64, "{id}");
            assert!(number(r, "calls_per_s") > 0.0, "{id}");
            assert!(number(r, "cpu_ns_per_msg") > 0.0, "{id}: CPU per call");
        }
    }
    // The symmetric and streaming calls, each beside its baseline, with their ratios.
    for (id, size) in [
        ("rpc.callback.shmrpc", 64.0),
        ("rpc.callback.baseline.forward", 64.0),
        ("rpc.hol.shmrpc.loaded", 100.0),
        ("rpc.hol.baseline.idle", 100.0),
    ] {
        let r = row(id);
        assert_eq!(r["group"], "rpc.both_ways", "{id}");
        let (p50, p99) = (number(r, "p50_us"), number(r, "p99_us"));
        assert!(p50 > 0.0 && p99 >= p50, "{id}: p50 {p50} p99 {p99}");
        assert_eq!(number(r, "size"), size, "{id}");
    }
    for (id, unit) in [
        ("rpc.bidi.shmrpc", "items_per_s"),
        ("rpc.bidi.baseline.pipelined", "calls_per_s"),
    ] {
        let r = row(id);
        assert_eq!(r["group"], "rpc.both_ways", "{id}");
        assert!(number(r, unit) > 0.0, "{id}");
    }
    for id in [
        "rpc_callback_vs_forward",
        "rpc_callback_vs_forward_p99",
        "rpc_bidi_vs_pipelined",
        "rpc_hol_loaded_vs_idle",
        "rpc_hol_loaded_vs_idle_p99",
    ] {
        assert!(number(row(id), "ratio") > 0.0, "{id}");
    }
    // The remote transport: the same calls over shared memory, TCP and TLS, and 1 MiB
    // streams over TCP with and without lz4, with their ratios.
    for net in ["shm", "tcp", "tls"] {
        let id = format!("rpc.remote.unary.{net}");
        let r = row(&id);
        assert_eq!(r["group"], "rpc.remote", "{id}");
        let (p50, p99) = (number(r, "p50_us"), number(r, "p99_us"));
        assert!(p50 > 0.0 && p99 >= p50, "{id}: p50 {p50} p99 {p99}");
        let id = format!("rpc.remote.pipelined.{net}");
        assert_eq!(row(&id)["group"], "rpc.remote", "{id}");
        assert!(number(row(&id), "calls_per_s") > 0.0, "{id}");
    }
    for payload in ["text", "random"] {
        for net in ["tcp", "tcp_lz4"] {
            let id = format!("rpc.remote.bulk.{payload}.{net}");
            let r = row(&id);
            assert_eq!(r["group"], "rpc.remote", "{id}");
            assert_eq!(number(r, "size"), (1u64 << 20) as f64, "{id}");
            assert!(number(r, "mib_per_s") > 0.0, "{id}");
        }
    }
    for id in [
        "rpc_remote_unary_tls_vs_tcp",
        "rpc_remote_unary_tls_vs_shm",
        "rpc_remote_pipelined_tls_vs_tcp",
        "rpc_remote_bulk_text_lz4_vs_plain",
        "rpc_remote_bulk_random_lz4_vs_plain",
    ] {
        assert!(number(row(id), "ratio") > 0.0, "{id}");
    }
    for id in ["rpc.reconnect.shmrpc", "rpc.reconnect.shmrpc.after_bind"] {
        let r = row(id);
        assert_eq!(r["group"], "rpc.restart", "{id}");
        assert!(number(r, "median_ms") > 0.0, "{id}");
        assert!(number(r, "slowest_ms") >= number(r, "median_ms"), "{id}");
        assert!(number(r, "restarts") >= 1.0, "{id}");
    }
    let idle = row("rpc.idle.shmrpc.1000");
    assert_eq!(number(idle, "connections"), 1000.0);
    assert!(number(idle, "server_rss_mb") > number(idle, "server_rss_empty_mb"));
    assert!(number(idle, "server_rss_per_connection_kib") > 0.0);
    assert!(number(idle, "server_cpu_percent") >= 0.0);
    assert!(number(idle, "server_cpu_percent_stat") >= 0.0);
    assert!(number(idle, "idle_interval_s") > 0.0);
    assert!(number(idle, "server_fds") >= 1000.0);

    // Targets: every one has a verdict; those whose cases ran are MET or NOT MET.
    let targets: Vec<&Value> = rows.iter().filter(|r| r["group"] == "targets").collect();
    assert!(targets.len() >= 20, "{} targets", targets.len());
    for t in &targets {
        let v = t["verdict"].as_str().expect("a verdict");
        assert!(["MET", "NOT MET", "NOT MEASURED"].contains(&v), "{t}");
        assert_eq!(t["met"].is_null(), v == "NOT MEASURED", "{t}");
        assert!(t["target"].is_string(), "{t}");
    }
    for id in [
        "spin_rtt_vs_cache_line",
        "stp_rtt_vs_cache_line",
        "rpc_unary_stp_vs_cache_line",
        "park_rtt_vs_futex",
        "park_rtt_vs_uds",
        "rpc_unary_stp_vs_uds",
        "rpc_unary_park_vs_uds",
        "stream_64_vs_batched_spsc",
        "stream_64_vs_uds",
        "stream_64k_vs_copy_floor",
        "stream_64k_vs_uds",
        "stream_1m_vs_copy_floor",
        "stream_1m_vs_uds",
        "rpc_pipelined_1_vs_uds",
        "rpc_pipelined_16_vs_uds",
        "rpc_pipelined_256_vs_uds",
    ] {
        let t = row(id);
        assert_eq!(t["group"], "targets", "{id}");
        assert!(number(t, "ratio") > 0.0, "{id}");
        assert!(t["met"].is_boolean(), "{id} is measured");
        assert!(
            t["numerator"].is_string() && t["denominator"].is_string(),
            "{id}"
        );
    }
    for id in [
        "rpc.reconnect.shmrpc.slowest",
        "idle_server_rss",
        "idle_server_cpu",
        "rtt_below_iceoryx2",
    ] {
        assert!(row(id)["met"].is_boolean(), "{id} is measured");
    }
    // Ratios for information: no verdict.
    for id in ["record_ring_vs_cache_line", "spin_rtt_vs_record_ring"] {
        let r = row(id);
        assert_eq!(r["group"], "ratios", "{id}");
        assert!(number(r, "ratio") > 0.0, "{id}");
        assert!(r.get("verdict").is_none(), "{id}");
    }

    // The peers file: its cases are rows too, and its source is named.
    let peer_rows: Vec<&Value> = rows.iter().filter(|r| r["group"] == "peers").collect();
    assert_eq!(peer_rows.len(), 4, "3 cases and 1 ratio");
    assert_eq!(number(row("rtt.iceoryx2.spin.64"), "p50_us"), 7.0);
    assert_eq!(row("rtt.ipc_channel.spin.64")["na"], "no busy-poll mode");
    assert_eq!(doc["peers"]["date"], "2026-01-02 03:04:05 UTC");
    assert_eq!(doc["svg"].as_str(), svg_path.to_str());

    // The chart: an SVG document with every series and the peers' ones.
    let svg = svg.expect("SVG file written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.trim_end().ends_with("</svg>"));
    for name in [
        "shmrpc spin",
        "shmrpc spin-then-park",
        "shmrpc park",
        "shmrpc async",
        "shmrpc async-park",
        "floor: copy ping-pong",
        "floor: one cache line",
        "Unix socket, tokio",
        "pipe pair",
        "TCP loopback",
        "iceoryx2 spin (peers, 2026-01-02)",
        "ipc-channel park (peers, 2026-01-02)",
        "Round trip, median (p50)",
        "One-way stream, throughput",
    ] {
        assert!(svg.contains(name), "the chart lacks {name:?}");
    }
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    assert!(!svg.contains("NaN"));
}

/// The soak's short form: clients churning, streaming and cancelling against a server
/// process; it must report no integrity error, no leaked connection, and its figures.
#[test]
fn soak_short_run_reports_clean_figures() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let run = shmrpc(
        &[
            "soak",
            "--duration",
            "3s",
            "--clients",
            "4",
            "--every",
            "1s",
        ],
        Duration::from_secs(120),
    );
    assert!(
        run.ok,
        "shmrpc soak exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_contains(
        &run,
        &[
            "shmrpc soak: 4 clients",
            "calls/s",
            "unary p50",
            "server rss",
            "p99 drift",
            "leaked connections: none",
            "integrity errors 0",
        ],
    );
    let windows = run.stdout.lines().filter(|l| l.contains("calls/s")).count();
    assert!(windows >= 2, "expected a line per second:\n{}", run.stdout);
    // Calls were made (the totals line is not all zeros).
    let calls_line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("calls "))
        .expect("totals");
    assert!(!calls_line.starts_with("calls 0 "), "{calls_line}");
    // The soak's server shut down cleanly: no socket or lock file of a soak is left in the
    // runtime directory (its connections' segments are anonymous memfds).
    let dir = shmrpc::lowlevel::sys::names::runtime_dir().expect("runtime dir");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("soak-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
