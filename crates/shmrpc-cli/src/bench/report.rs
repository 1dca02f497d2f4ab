//! The table and the JSON of a run: figures (medians over repetitions) and ratios
//! (medians of the per-repetition ratios), with the targets of issue 2.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Case, Measurement, Plan, Transport, Workload};
use crate::machine::Machine;
use crate::stats::{fmt_gbps, fmt_mps, fmt_size, fmt_us, median, Latency};

/// Which figure of a case a ratio compares.
#[derive(Debug, Clone, Copy)]
enum Metric {
    P50,
    P99,
    MsgRate,
}

impl Metric {
    fn of(self, m: &Measurement) -> Option<f64> {
        match self {
            Metric::P50 => m.p50(),
            Metric::P99 => m.p99(),
            Metric::MsgRate => m.msgs_per_s(),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Metric::P50 => "p50",
            Metric::P99 => "p99",
            Metric::MsgRate => "msg/s",
        }
    }
}

/// A bound on a ratio.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
}

impl Bound {
    fn holds(self, r: f64) -> bool {
        match self {
            Bound::AtMost(b) => r <= b,
            Bound::AtLeast(b) => r >= b,
        }
    }

    fn text(self) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b}×"),
            Bound::AtLeast(b) => format!("≥ {b}×"),
        }
    }
}

/// A ratio of one case's figure to another's; a target if it has a bound.
struct RatioSpec {
    id: &'static str,
    what: &'static str,
    num: &'static str,
    den: &'static str,
    metric: Metric,
    bound: Option<Bound>,
}

const RATIOS: &[RatioSpec] = &[
    RatioSpec {
        id: "spin_rtt_vs_cache_line",
        what: "spin round trip / cache-line ping-pong",
        num: "rtt.shmrpc.spin",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(2.0)),
    },
    RatioSpec {
        id: "park_rtt_vs_futex",
        what: "park round trip / bare futex ping-pong",
        num: "rtt.shmrpc.park",
        den: "rtt.floor.futex",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(1.1)),
    },
    RatioSpec {
        id: "stream_64_vs_batched_spsc",
        what: "64 B stream / batched SPSC baseline",
        num: "stream.shmrpc.64",
        den: "stream.baseline.spsc.64",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(0.5)),
    },
    RatioSpec {
        id: "stream_64k_vs_copy_floor",
        what: "64 KiB stream / bare copy floor",
        num: "stream.shmrpc.65536",
        den: "stream.floor.copy.65536",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(0.8)),
    },
    RatioSpec {
        id: "spin_rtt_vs_cache_line_p99",
        what: "spin round trip / cache-line ping-pong",
        num: "rtt.shmrpc.spin",
        den: "rtt.floor.cache_line",
        metric: Metric::P99,
        bound: None,
    },
    RatioSpec {
        id: "record_ring_vs_cache_line",
        what: "record-ring baseline / cache-line ping-pong (layout cost)",
        num: "rtt.baseline.record_ring",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "spin_rtt_vs_record_ring",
        what: "spin round trip / record-ring baseline (library cost)",
        num: "rtt.shmrpc.spin",
        den: "rtt.baseline.record_ring",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "record_ring_fence_vs_record_ring",
        what: "record ring with fences / without (fence cost)",
        num: "rtt.baseline.record_ring_fence",
        den: "rtt.baseline.record_ring",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "spin_then_park_rtt_vs_cache_line",
        what: "spin-then-park round trip / cache-line ping-pong",
        num: "rtt.shmrpc.spin_then_park",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "async_rtt_vs_cache_line",
        what: "async (spin-then-park) round trip / cache-line ping-pong",
        num: "rtt.shmrpc.async",
        den: "rtt.floor.cache_line",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "park_rtt_vs_futex_p99",
        what: "park round trip / bare futex ping-pong",
        num: "rtt.shmrpc.park",
        den: "rtt.floor.futex",
        metric: Metric::P99,
        bound: None,
    },
    RatioSpec {
        id: "async_park_rtt_vs_futex",
        what: "async park round trip / bare futex ping-pong",
        num: "rtt.shmrpc.async_park",
        den: "rtt.floor.futex",
        metric: Metric::P50,
        bound: None,
    },
    RatioSpec {
        id: "stream_1k_vs_batched_spsc",
        what: "1 KiB stream / batched SPSC baseline",
        num: "stream.shmrpc.1024",
        den: "stream.baseline.spsc.1024",
        metric: Metric::MsgRate,
        bound: None,
    },
];

/// The RPC ratios of issue 3, kept apart from issue 2's list (their own section of the
/// table and their own JSON key), each against a Unix-socket baseline of the same run.
const RPC_RATIOS: &[RatioSpec] = &[
    RatioSpec {
        id: "rpc_unary_stp_vs_uds",
        what: "RPC unary call, spin-then-park / Unix socket",
        num: "rpc.unary.shmrpc.spin_then_park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(0.1)),
    },
    RatioSpec {
        id: "rpc_unary_park_vs_uds",
        what: "RPC unary call, park / Unix socket",
        num: "rpc.unary.shmrpc.park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P50,
        bound: Some(Bound::AtMost(1.1)),
    },
    RatioSpec {
        id: "rpc_pipelined_1_vs_uds",
        what: "RPC pipelined, 1 connection / Unix socket",
        num: "rpc.pipelined.shmrpc.1",
        den: "rpc.pipelined.baseline.uds.1",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(10.0)),
    },
    RatioSpec {
        id: "rpc_pipelined_16_vs_uds",
        what: "RPC pipelined, 16 connections / Unix socket",
        num: "rpc.pipelined.shmrpc.16",
        den: "rpc.pipelined.baseline.uds.16",
        metric: Metric::MsgRate,
        bound: Some(Bound::AtLeast(10.0)),
    },
    RatioSpec {
        id: "rpc_unary_stp_vs_uds_p99",
        what: "RPC unary call, spin-then-park / Unix socket",
        num: "rpc.unary.shmrpc.spin_then_park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P99,
        bound: None,
    },
    RatioSpec {
        id: "rpc_unary_park_vs_uds_p99",
        what: "RPC unary call, park / Unix socket",
        num: "rpc.unary.shmrpc.park",
        den: "rpc.unary.baseline.uds",
        metric: Metric::P99,
        bound: None,
    },
];

/// Target of issue 3 for the restart case: the slowest reconnect, in milliseconds.
const RECONNECT_TARGET_MS: f64 = 100.0;

/// A computed ratio.
struct Ratio {
    spec: &'static RatioSpec,
    /// Median of the per-repetition ratios.
    value: f64,
    per_rep: Vec<f64>,
}

/// The results of a run, ready to print or serialise.
pub struct Report<'a> {
    plan: &'a Plan,
    results: &'a [Vec<Measurement>],
    machine: &'a Machine,
    cpus: Option<(usize, usize)>,
    elapsed: Duration,
    ratios: Vec<Ratio>,
    rpc_ratios: Vec<Ratio>,
}

/// The ratios of `specs` whose two cases both ran.
fn ratios_of(specs: &'static [RatioSpec], plan: &Plan, results: &[Vec<Measurement>]) -> Vec<Ratio> {
    let find = |id: &str| plan.cases.iter().position(|c| c.id == id);
    specs
        .iter()
        .filter_map(|spec| {
            let (n, d) = (find(spec.num)?, find(spec.den)?);
            let per_rep: Vec<f64> = results[n]
                .iter()
                .zip(&results[d])
                .filter_map(|(a, b)| Some(spec.metric.of(a)? / spec.metric.of(b)?))
                .filter(|r| r.is_finite())
                .collect();
            Some(Ratio {
                spec,
                value: median(per_rep.iter().copied()),
                per_rep,
            })
        })
        .collect()
}

impl<'a> Report<'a> {
    /// Computes the ratios.
    pub fn new(
        plan: &'a Plan,
        results: &'a [Vec<Measurement>],
        machine: &'a Machine,
        cpus: Option<(usize, usize)>,
        elapsed: Duration,
    ) -> Self {
        let ratios = ratios_of(RATIOS, plan, results);
        let rpc_ratios = ratios_of(RPC_RATIOS, plan, results);
        Self {
            plan,
            results,
            machine,
            cpus,
            elapsed,
            ratios,
            rpc_ratios,
        }
    }

    fn cases(&self, w: Workload) -> impl Iterator<Item = (&'a Case, &'a [Measurement])> {
        self.plan
            .cases
            .iter()
            .zip(self.results)
            .filter(move |(c, _)| c.workload == w)
            .map(|(c, r)| (c, r.as_slice()))
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let w = self
            .plan
            .cases
            .iter()
            .map(|c| c.label.chars().count())
            .max()
            .unwrap_or(0);
        self.latency_table(
            &mut s,
            w,
            Workload::RoundTrip,
            "Round trip, 64 B, two processes",
        );
        let streams: Vec<_> = self.cases(Workload::Stream).collect();
        if !streams.is_empty() {
            let _ = writeln!(
                s,
                "{:<w2$} {:>7} {:>14} {:>10}",
                "One-way stream, two processes",
                "size",
                "msg/s",
                "GB/s",
                w2 = w + 2
            );
            for (c, reps) in streams {
                let mps = median(reps.iter().filter_map(Measurement::msgs_per_s));
                let bps = median(reps.iter().filter_map(Measurement::bytes_per_s));
                let _ = writeln!(
                    s,
                    "  {:<w$} {:>7} {:>14} {:>10}",
                    c.label,
                    fmt_size(c.size),
                    fmt_mps(mps),
                    fmt_gbps(bps)
                );
            }
            s.push('\n');
        }
        if !self.ratios.is_empty() {
            let _ = writeln!(
                s,
                "Ratios (median of the per-repetition ratios; the ratios are the result)"
            );
            write_ratios(&mut s, &self.ratios);
            s.push('\n');
        }
        self.rpc_table(&mut s, w);
        s
    }

    /// A table of latency percentiles for the cases of one workload.
    fn latency_table(&self, s: &mut String, w: usize, workload: Workload, title: &str) {
        let cases: Vec<_> = self.cases(workload).collect();
        if cases.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "{:<w2$} {:>10} {:>10} {:>10}",
            title,
            "p50",
            "p99",
            "p99.9",
            w2 = w + 2
        );
        for (c, reps) in cases {
            let l = latency_of(reps);
            let _ = writeln!(
                s,
                "  {:<w$} {:>10} {:>10} {:>10}",
                c.label,
                fmt_us(l.p50),
                fmt_us(l.p99),
                fmt_us(l.p999)
            );
        }
        s.push('\n');
    }

    /// The section of the RPC cases (issue 3).
    fn rpc_table(&self, s: &mut String, w: usize) {
        self.latency_table(
            s,
            w,
            Workload::Call,
            "RPC (issue 3): unary call, 64 B, two processes",
        );
        let piped: Vec<_> = self.cases(Workload::Pipelined).collect();
        if !piped.is_empty() {
            let _ = writeln!(
                s,
                "{:<w2$} {:>14}",
                "RPC (issue 3): pipelined 64 B calls, two processes",
                "calls/s",
                w2 = w + 2
            );
            for (c, reps) in piped {
                let cps = median(reps.iter().filter_map(Measurement::msgs_per_s));
                let _ = writeln!(
                    s,
                    "  {:<w$} {:>14}",
                    c.label,
                    fmt_mps(cps).replace("msg/s", "calls/s")
                );
            }
            s.push('\n');
        }
        let restarts: Vec<_> = self.cases(Workload::Reconnect).collect();
        if !restarts.is_empty() {
            let _ = writeln!(s, "RPC (issue 3): a server restart");
        }
        for (c, reps) in restarts {
            let l = latency_of(reps);
            let worst = worst_ms(reps);
            let _ = writeln!(
                s,
                "  {}\n    median {:.1} ms, slowest {:.1} ms over {} restarts; target < {} ms (slowest) {}",
                c.label,
                l.p50 / 1000.0,
                worst,
                l.samples,
                RECONNECT_TARGET_MS,
                if worst < RECONNECT_TARGET_MS { "MET" } else { "NOT MET" }
            );
        }
        if self.cases(Workload::Reconnect).next().is_some() {
            s.push('\n');
        }
        if !self.rpc_ratios.is_empty() {
            let _ = writeln!(
                s,
                "RPC ratios, issue 3 (median of the per-repetition ratios)"
            );
            write_ratios(s, &self.rpc_ratios);
            s.push('\n');
        }
    }

    /// The JSON document.
    pub fn json(&self) -> Value {
        let rtt: Vec<Value> = self
            .cases(Workload::RoundTrip)
            .map(|(c, reps)| {
                let l = latency_of(reps);
                let per = |f: fn(&Measurement) -> Option<f64>| -> Vec<f64> {
                    reps.iter().filter_map(f).collect()
                };
                json!({
                    "id": c.id,
                    "label": c.label,
                    "transport": if c.baseline { "baseline" } else { "shmrpc" },
                    "mode": c.mode,
                    "size": c.size,
                    "p50_us": l.p50,
                    "p99_us": l.p99,
                    "p999_us": l.p999,
                    "max_us": l.max,
                    "samples": l.samples,
                    "per_rep_p50_us": per(Measurement::p50),
                    "per_rep_p99_us": per(Measurement::p99),
                })
            })
            .collect();
        let streams: Vec<Value> = self
            .cases(Workload::Stream)
            .map(|(c, reps)| {
                json!({
                    "id": c.id,
                    "label": c.label,
                    "transport": if c.baseline { "baseline" } else { "shmrpc" },
                    "mode": c.mode,
                    "size": c.size,
                    "messages_per_rep": c.total,
                    "msgs_per_s": median(reps.iter().filter_map(Measurement::msgs_per_s)),
                    "gb_per_s": median(reps.iter().filter_map(Measurement::bytes_per_s)) / 1e9,
                    "per_rep_msgs_per_s": reps.iter().filter_map(Measurement::msgs_per_s).collect::<Vec<_>>(),
                })
            })
            .collect();
        let ratios = ratios_json(&self.ratios);
        json!({
            "schema": "shmrpc-bench/1",
            "date_utc": utc_now(),
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "quick": self.plan.quick,
            "reps": self.plan.reps,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "machine": self.machine.to_json(),
            "pinned": self.cpus.map(|(a, b)| json!({"lead": a, "peer": b})),
            "config": {
                "small_ring": self.plan.small_ring,
                "big_ring": self.plan.big_ring,
                "copy_slots": self.plan.copy_slots,
                "stream_batch": super::chan::STREAM_BATCH,
                "stream_read_max": super::chan::STREAM_READ_MAX,
                "stream_read_bytes": self.plan.read_bytes,
                "spsc_batch": super::raw::SPSC_BATCH,
                "rpc_spin_then_park": format!("{:?}", super::rpc::wait_of(false)),
            },
            "round_trip": rtt,
            "stream": streams,
            "ratios": ratios,
            "rpc": self.rpc_json(),
        })
    }

    /// The RPC part of the JSON document (issue 3).
    fn rpc_json(&self) -> Value {
        let kind = |c: &Case| {
            if c.baseline {
                "baseline-uds"
            } else {
                "shmrpc-rpc"
            }
        };
        let unary: Vec<Value> = self
            .cases(Workload::Call)
            .map(|(c, reps)| {
                let l = latency_of(reps);
                json!({
                    "id": c.id,
                    "label": c.label,
                    "transport": kind(c),
                    "mode": c.mode,
                    "size": c.size,
                    "p50_us": l.p50,
                    "p99_us": l.p99,
                    "p999_us": l.p999,
                    "max_us": l.max,
                    "samples": l.samples,
                    "per_rep_p50_us": reps.iter().filter_map(Measurement::p50).collect::<Vec<_>>(),
                })
            })
            .collect();
        let pipelined: Vec<Value> = self
            .cases(Workload::Pipelined)
            .map(|(c, reps)| {
                let conns = match c.transport {
                    Transport::Rpc { conns, .. } | Transport::Uds { conns } => conns,
                    _ => 0,
                };
                json!({
                    "id": c.id,
                    "label": c.label,
                    "transport": kind(c),
                    "mode": c.mode,
                    "size": c.size,
                    "connections": conns,
                    "outstanding_per_connection": super::rpc::PIPELINE,
                    "calls_per_s": median(reps.iter().filter_map(Measurement::msgs_per_s)),
                    "per_rep_calls_per_s": reps.iter().filter_map(Measurement::msgs_per_s).collect::<Vec<_>>(),
                })
            })
            .collect();
        let reconnect: Vec<Value> = self
            .cases(Workload::Reconnect)
            .map(|(c, reps)| {
                let l = latency_of(reps);
                let worst = worst_ms(reps);
                json!({
                    "id": c.id,
                    "label": c.label,
                    "down_ms": super::rpc::RESTART_GAP.as_millis() as u64,
                    "median_ms": l.p50 / 1000.0,
                    "slowest_ms": worst,
                    "restarts": l.samples,
                    "target_ms": RECONNECT_TARGET_MS,
                    "met": worst < RECONNECT_TARGET_MS,
                })
            })
            .collect();
        json!({
            "unary": unary,
            "pipelined": pipelined,
            "reconnect": reconnect,
            "ratios": ratios_json(&self.rpc_ratios),
        })
    }
}

fn ratios_json(ratios: &[Ratio]) -> Vec<Value> {
    ratios
        .iter()
        .map(|r| {
            json!({
                "id": r.spec.id,
                "what": r.spec.what,
                "metric": r.spec.metric.name(),
                "numerator": r.spec.num,
                "denominator": r.spec.den,
                "ratio": r.value,
                "per_rep": r.per_rep,
                "target": r.spec.bound.map(Bound::text),
                "met": r.spec.bound.map(|b| b.holds(r.value)),
            })
        })
        .collect()
}

fn write_ratios(s: &mut String, ratios: &[Ratio]) {
    let rw = ratios
        .iter()
        .map(|r| r.spec.what.chars().count())
        .max()
        .unwrap_or(0);
    for r in ratios {
        let verdict = match r.spec.bound {
            Some(b) => format!(
                "target {:<7} {}",
                b.text(),
                if b.holds(r.value) { "MET" } else { "NOT MET" }
            ),
            None => "(for information)".to_owned(),
        };
        let _ = writeln!(
            s,
            "  {:<rw$} {:>5} {:>6.2}×   {}",
            r.spec.what,
            r.spec.metric.name(),
            r.value,
            verdict
        );
    }
}

/// The slowest sample over every repetition, in milliseconds.
fn worst_ms(reps: &[Measurement]) -> f64 {
    reps.iter()
        .filter_map(|m| match m {
            Measurement::Latency(l) => Some(l.max / 1000.0),
            Measurement::Rate { .. } => None,
        })
        .fold(0.0, f64::max)
}

fn latency_of(reps: &[Measurement]) -> Latency {
    let ls: Vec<Latency> = reps
        .iter()
        .filter_map(|m| match m {
            Measurement::Latency(l) => Some(*l),
            Measurement::Rate { .. } => None,
        })
        .collect();
    Latency::median_of(&ls)
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn bounds() {
        assert!(Bound::AtMost(2.0).holds(2.0));
        assert!(!Bound::AtMost(2.0).holds(2.01));
        assert!(Bound::AtLeast(0.5).holds(0.6));
        assert!(!Bound::AtLeast(0.8).holds(0.79));
    }
}
