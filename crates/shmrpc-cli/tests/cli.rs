//! Runs the `shmrpc` command as a user would: `shmrpc demo` and
//! `shmrpc bench --quick --json FILE`. Checks exit codes, the sections of the output and
//! the JSON document; never timings (those are the benchmark's business).

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
    let json_path: PathBuf =
        std::env::temp_dir().join(format!("shmrpc-bench-test-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&json_path);
    let run = shmrpc(
        &["bench", "--quick", "--json", json_path.to_str().unwrap()],
        Duration::from_secs(240),
    );
    let text = std::fs::read_to_string(&json_path);
    let _ = std::fs::remove_file(&json_path);
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
            "floor: one cache line ping-pong",
            "floor: bare futex ping-pong",
            "One-way stream, two processes",
            "Ratios",
            "spin round trip / cache-line ping-pong",
            "park round trip / bare futex ping-pong",
            "64 B stream / batched SPSC baseline",
            "64 KiB stream / bare copy floor",
            "cleanup: peer exited 0",
            "RPC (issue 3): unary call, 64 B, two processes",
            "RPC (issue 3): pipelined 64 B calls, two processes",
            "RPC (issue 3): a server restart",
            "RPC ratios, issue 3",
        ],
    );

    let doc: Value = serde_json::from_str(&text.expect("JSON file written")).expect("valid JSON");
    assert_eq!(doc["schema"], "shmrpc-bench/1");
    assert_eq!(doc["quick"], true);
    assert!(number(&doc["machine"], "nproc") >= 1.0);
    assert!(doc["machine"]["kernel"].is_string());
    assert!(number(&doc, "reps") >= 1.0);

    let rtt = doc["round_trip"].as_array().expect("round_trip array");
    for id in [
        "rtt.shmrpc.spin",
        "rtt.shmrpc.spin_then_park",
        "rtt.shmrpc.park",
        "rtt.shmrpc.async",
        "rtt.shmrpc.async_park",
        "rtt.floor.cache_line",
        "rtt.floor.futex",
    ] {
        let r = rtt
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no round-trip result {id}"));
        let (p50, p99, p999) = (
            number(r, "p50_us"),
            number(r, "p99_us"),
            number(r, "p999_us"),
        );
        assert!(p50 > 0.0, "{id}: p50 {p50}");
        assert!(p99 >= p50 && p999 >= p99, "{id}: percentiles out of order");
        assert!(number(r, "samples") > 0.0);
        assert_eq!(number(r, "size"), 64.0);
    }

    let streams = doc["stream"].as_array().expect("stream array");
    for (id, size) in [
        ("stream.shmrpc.64", 64.0),
        ("stream.baseline.spsc.64", 64.0),
        ("stream.shmrpc.1024", 1024.0),
        ("stream.baseline.spsc.1024", 1024.0),
        ("stream.shmrpc.65536", 65536.0),
        ("stream.floor.copy.65536", 65536.0),
    ] {
        let s = streams
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no stream result {id}"));
        assert_eq!(number(s, "size"), size);
        assert!(number(s, "msgs_per_s") > 0.0, "{id}");
        assert!(number(s, "gb_per_s") > 0.0, "{id}");
    }

    let ratios = doc["ratios"].as_array().expect("ratios array");
    for id in [
        "spin_rtt_vs_cache_line",
        "park_rtt_vs_futex",
        "stream_64_vs_batched_spsc",
        "stream_64k_vs_copy_floor",
    ] {
        let r = ratios
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no ratio {id}"));
        assert!(number(r, "ratio") > 0.0, "{id}");
        assert!(r["target"].is_string(), "{id} has a target");
        assert!(r["met"].is_boolean(), "{id} says met or not");
    }

    // The RPC cases of issue 3, in their own part of the document; issue 2's ratio list
    // holds none of their ratios.
    let rpc = &doc["rpc"];
    let unary = rpc["unary"].as_array().expect("rpc.unary array");
    for id in [
        "rpc.unary.shmrpc.spin_then_park",
        "rpc.unary.shmrpc.park",
        "rpc.unary.baseline.uds",
    ] {
        let r = unary
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no rpc unary result {id}"));
        let (p50, p99) = (number(r, "p50_us"), number(r, "p99_us"));
        assert!(p50 > 0.0 && p99 >= p50, "{id}: p50 {p50} p99 {p99}");
        assert_eq!(number(r, "size"), 64.0);
    }
    let piped = rpc["pipelined"].as_array().expect("rpc.pipelined array");
    for (id, conns) in [
        ("rpc.pipelined.shmrpc.1", 1.0),
        ("rpc.pipelined.baseline.uds.1", 1.0),
        ("rpc.pipelined.shmrpc.16", 16.0),
        ("rpc.pipelined.baseline.uds.16", 16.0),
    ] {
        let r = piped
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no rpc pipelined result {id}"));
        assert_eq!(number(r, "connections"), conns, "{id}");
        assert!(number(r, "calls_per_s") > 0.0, "{id}");
    }
    let reconnect = rpc["reconnect"].as_array().expect("rpc.reconnect array");
    for id in ["rpc.reconnect.shmrpc", "rpc.reconnect.shmrpc.after_bind"] {
        let r = reconnect
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no reconnect result {id}"));
        assert!(number(r, "median_ms") > 0.0, "{id}");
        assert!(number(r, "slowest_ms") >= number(r, "median_ms"), "{id}");
        assert!(number(r, "restarts") >= 1.0, "{id}");
        assert!(r["met"].is_boolean(), "{id}");
    }
    let rpc_ratios = rpc["ratios"].as_array().expect("rpc.ratios array");
    for id in [
        "rpc_unary_stp_vs_uds",
        "rpc_unary_park_vs_uds",
        "rpc_pipelined_1_vs_uds",
        "rpc_pipelined_16_vs_uds",
    ] {
        let r = rpc_ratios
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no rpc ratio {id}"));
        assert!(number(r, "ratio") > 0.0, "{id}");
        assert!(r["target"].is_string(), "{id} has a target");
        assert!(r["met"].is_boolean(), "{id} says met or not");
        assert!(
            !ratios.iter().any(|x| x["id"] == id),
            "{id} is not in issue 2's ratio list"
        );
    }
}
