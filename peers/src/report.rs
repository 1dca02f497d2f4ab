//! The human table and the JSON file.
//!
//! Figures: round trips pool every measured sample of every round (p50, p99, p99.9, max);
//! streams take the median over rounds of messages per second. Ratios are medians of
//! per-round ratios: a round trip's p50 over its baseline's p50 in the same round (lower is
//! better), a stream's messages per second over its baseline's (higher is better).

use serde_json::{json, Value};

use crate::sys::Variant;
use crate::{Case, RoundResult, Run, Work};
use shmrpc_harness::{median, quantile};

/// The baselines every case is compared with, and their short names in the table.
const BASELINES: [(Variant, &str); 3] = [
    (Variant::ShmrpcSpinThenPark, "stp"),
    (Variant::ShmrpcPark, "park"),
    (Variant::UnixSocket, "sock"),
];

/// The metric a ratio compares, per round.
fn metric(r: &RoundResult) -> f64 {
    match r {
        RoundResult::Rtt(s) => quantile(s, 0.5).map_or(f64::NAN, |ns| ns as f64),
        RoundResult::Stream(rate) => *rate,
    }
}

fn measured(c: &Case) -> bool {
    c.na.is_none() && c.rounds.iter().any(Option::is_some)
}

/// Median over rounds of `c`'s metric over `b`'s, over the rounds where both ran.
fn ratio(c: &Case, b: &Case) -> Option<f64> {
    let per: Vec<f64> = c
        .rounds
        .iter()
        .zip(&b.rounds)
        .filter_map(|(x, y)| Some(metric(x.as_ref()?) / metric(y.as_ref()?)))
        .collect();
    median(&per)
}

fn baseline<'a>(cases: &'a [Case], c: &Case, v: Variant) -> Option<&'a Case> {
    cases
        .iter()
        .find(|b| b.v == v && b.work == c.work && b.size == c.size && measured(b))
}

/// Round-trip figures pooled over rounds: p50, p99, p99.9, max (ns).
fn rtt_figures(c: &Case) -> Option<[f64; 4]> {
    let mut all: Vec<u64> = c
        .rounds
        .iter()
        .flatten()
        .flat_map(|r| match r {
            RoundResult::Rtt(s) => s.clone(),
            RoundResult::Stream(_) => Vec::new(),
        })
        .collect();
    all.sort_unstable();
    let q = |q: f64| quantile(&all, q).map(|ns| ns as f64);
    Some([q(0.5)?, q(0.99)?, q(0.999)?, q(1.0)?])
}

/// Stream figure: median over rounds of messages per second.
fn stream_rate(c: &Case) -> Option<f64> {
    let rates: Vec<f64> = c
        .rounds
        .iter()
        .flatten()
        .filter_map(|r| match r {
            RoundResult::Stream(x) => Some(*x),
            RoundResult::Rtt(_) => None,
        })
        .collect();
    median(&rates)
}

fn fmt_ns(ns: f64) -> String {
    let us = ns / 1e3;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1e3)
    } else if us >= 100.0 {
        format!("{us:.0} µs")
    } else if us >= 10.0 {
        format!("{us:.1} µs")
    } else {
        format!("{us:.2} µs")
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_size(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else if size >= 1 << 10 {
        format!("{} KiB", size >> 10)
    } else {
        format!("{size} B")
    }
}

/// The date now, RFC 3339, UTC.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// CPU model and core count.
pub fn machine() -> String {
    // Not `available_parallelism`: the lead is pinned to one CPU by now.
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    format!("{model}, {cores} cores")
}

/// Prints the table.
pub fn print(run: &Run) {
    println!(
        "shmrpc-peers: {}, {}; {}; {} measured rounds{}; took {:.0} s",
        now_rfc3339(),
        machine(),
        match run.pinned {
            Some((a, b)) => format!("lead pinned to CPU {a}, child to CPU {b}"),
            None => "not pinned".to_owned(),
        },
        run.rounds,
        if run.quick { " (--quick)" } else { "" },
        run.elapsed.as_secs_f64()
    );
    println!("command: {}", run.command);
    if !run.cases.is_empty() {
        print_raw(run);
    }
    if let Some(r) = &run.rpc {
        crate::rpc::print(r);
    }
    println!();
    if run.cleanup.is_empty() {
        println!(
            "cleanup: nothing left behind (checked /dev/shm, /tmp, shmrpc's runtime directory)"
        );
    } else {
        for l in &run.cleanup {
            println!("cleanup: {l}");
        }
    }
}

/// The raw-channel tables.
fn print_raw(run: &Run) {
    println!(
        "ratios: medians of per-round ratios to shmrpc spin-then-park (stp), shmrpc park (park) \
         and the Unix socket (sock);"
    );
    println!(
        "        round trips: p50 / baseline p50 (lower is better); streams: msg/s / baseline \
         msg/s (higher is better)"
    );
    let cases = &run.cases;
    let mut groups: Vec<(Work, usize)> = Vec::new();
    for c in cases {
        if !groups.contains(&(c.work, c.size)) {
            groups.push((c.work, c.size));
        }
    }
    for (work, size) in groups {
        println!();
        match work {
            Work::Rtt => println!(
                "{:<34}{:>10}{:>10}{:>10}{:>10}{:>10}{:>8}{:>8}{:>8}",
                format!("round trip, {}", fmt_size(size)),
                "p50",
                "p99",
                "p99.9",
                "max",
                "n/round",
                "/stp",
                "/park",
                "/sock"
            ),
            Work::Stream => println!(
                "{:<34}{:>10}{:>10}{:>10}{:>10}{:>10}{:>8}{:>8}{:>8}",
                format!("stream, {}", fmt_size(size)),
                "msg/s",
                "GB/s",
                "",
                "",
                "n/round",
                "x stp",
                "x park",
                "x sock"
            ),
        }
        for c in cases.iter().filter(|c| c.work == work && c.size == size) {
            let name = format!("  {} {}", c.v.system(), c.v.mode());
            if let Some(na) = &c.na {
                println!("{name:<34}n/a: {na}");
                continue;
            }
            let ratios: String = BASELINES
                .iter()
                .map(|&(v, _)| {
                    let r = if v == c.v {
                        None
                    } else {
                        baseline(cases, c, v).and_then(|b| ratio(c, b))
                    };
                    match r {
                        Some(x) => format!("{:>8}", format!("{x:.2}")),
                        None => format!("{:>8}", "-"),
                    }
                })
                .collect();
            match work {
                Work::Rtt => match rtt_figures(c) {
                    Some([p50, p99, p999, max]) => println!(
                        "{name:<34}{:>10}{:>10}{:>10}{:>10}{:>10}{ratios}",
                        fmt_ns(p50),
                        fmt_ns(p99),
                        fmt_ns(p999),
                        fmt_ns(max),
                        c.n
                    ),
                    None => println!("{name:<34}not measured"),
                },
                Work::Stream => match stream_rate(c) {
                    Some(r) => println!(
                        "{name:<34}{:>10}{:>10}{:>10}{:>10}{:>10}{ratios}",
                        fmt_rate(r),
                        format!("{:.2}", r * size as f64 / 1e9),
                        "",
                        "",
                        c.n
                    ),
                    None => println!("{name:<34}not measured"),
                },
            }
            for note in &c.notes {
                println!("{:<34}note: {note}", "");
            }
        }
    }
}

/// The JSON document (`kind: shmrpc-peers`, version 1).
pub fn json(run: &Run) -> String {
    let cases = &run.cases;
    let mut out_cases = Vec::new();
    let mut out_ratios = Vec::new();
    for c in cases {
        let rounds = c.rounds.iter().filter(|r| r.is_some()).count();
        let mut o = json!({
            "id": c.id,
            "system": c.v.system(),
            "mode": c.v.mode(),
            "workload": c.work.name(),
            "size": c.size,
            "rounds": rounds,
            "n_per_round": c.n,
            "na": c.na,
            "note": if c.notes.is_empty() { None } else { Some(c.notes.join("; ")) },
        });
        let m = o.as_object_mut().expect("object");
        match c.work {
            Work::Rtt => {
                let f = if c.na.is_none() { rtt_figures(c) } else { None };
                let [p50, p99, p999, max] = f
                    .map_or([Value::Null, Value::Null, Value::Null, Value::Null], |f| {
                        f.map(Value::from)
                    });
                m.insert("p50_ns".into(), p50);
                m.insert("p99_ns".into(), p99);
                m.insert("p999_ns".into(), p999);
                m.insert("max_ns".into(), max);
            }
            Work::Stream => {
                let r = if c.na.is_none() { stream_rate(c) } else { None };
                m.insert("msgs_per_s".into(), r.map_or(Value::Null, Value::from));
                m.insert(
                    "bytes_per_s".into(),
                    r.map_or(Value::Null, |r| Value::from(r * c.size as f64)),
                );
            }
        }
        out_cases.push(o);
        if !measured(c) {
            continue;
        }
        for (v, _) in BASELINES {
            if v == c.v {
                continue;
            }
            if let Some(b) = baseline(cases, c, v) {
                if let Some(x) = ratio(c, b) {
                    out_ratios.push(json!({
                        "case": c.id,
                        "baseline": b.id,
                        "median": x,
                        "metric": match c.work { Work::Rtt => "p50_ns", Work::Stream => "msgs_per_s" },
                    }));
                }
            }
        }
    }
    let doc = json!({
        "kind": "shmrpc-peers",
        "version": 1,
        "date": now_rfc3339(),
        "machine": machine(),
        "command": run.command,
        "pinned": run.pinned.map(|(a, b)| vec![a, b]),
        "cases": out_cases,
        "ratios": out_ratios,
        "rpc": run.rpc.as_ref().map(crate::rpc::json),
        "cleanup": run.cleanup,
    });
    serde_json::to_string_pretty(&doc).expect("JSON") + "\n"
}
