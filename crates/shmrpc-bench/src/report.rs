//! The report of a run, drawn from one model: a list of rows, each in a group. A row is a
//! case with its figures and its ratios to the floor and the baselines, a case of the
//! peers file, a ratio of two cases, or a target with its verdict. The table, the JSON
//! and the chart are all drawn from these rows. Figures are medians over repetitions;
//! ratios are medians of the per-repetition ratios.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::idle::IdleResult;
use crate::link::Link;
use crate::machine::Machine;
use crate::peers::{self, PeersFile};
use crate::stats::{fmt_size, Latency};
use crate::svg::{chart, Kind, Panel, Series, Unit};
use crate::{chan, idle, link, raw, rpc, Case, Measurement, Plan, Sym, Transport, Workload, SIZES};

/// The `schema` of the JSON document.
pub const SCHEMA: &str = "shmrpc-bench/2";

/// Which figure of a case a ratio compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// A bound on a ratio or a figure.
#[derive(Debug, Clone, Copy)]
enum Bound {
    AtMost(f64),
    AtLeast(f64),
    Below(f64),
}

impl Bound {
    fn holds(self, r: f64) -> bool {
        match self {
            Bound::AtMost(b) => r <= b,
            Bound::AtLeast(b) => r >= b,
            Bound::Below(b) => r < b,
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Bound::AtMost(b) => format!("≤ {b}{unit}"),
            Bound::AtLeast(b) => format!("≥ {b}{unit}"),
            Bound::Below(b) => format!("< {b}{unit}"),
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

const fn ratio(
    id: &'static str,
    what: &'static str,
    num: &'static str,
    den: &'static str,
    metric: Metric,
    bound: Option<Bound>,
) -> RatioSpec {
    RatioSpec {
        id,
        what,
        num,
        den,
        metric,
        bound,
    }
}

/// The ratios the project's targets are stated in (those with a bound), then the ones
/// that explain them (where the time goes), each of two cases of the same run.
#[rustfmt::skip]
const RATIOS: &[RatioSpec] = &[
    // Targets.
    ratio("spin_rtt_vs_cache_line", "64 B round trip, channel, spin / cache-line floor", "rtt.shmrpc.spin", "rtt.floor.cache_line", Metric::P50, Some(Bound::AtMost(2.0))),
    ratio("stp_rtt_vs_cache_line", "64 B round trip, channel, spin-then-park / cache-line floor", "rtt.shmrpc.spin_then_park", "rtt.floor.cache_line", Metric::P50, Some(Bound::AtMost(2.0))),
    ratio("rpc_unary_stp_vs_cache_line", "64 B RPC call, spin-then-park / cache-line floor", "rpc.unary.shmrpc.spin_then_park", "rtt.floor.cache_line", Metric::P50, Some(Bound::AtMost(3.0))),
    ratio("park_rtt_vs_futex", "64 B round trip, channel, park / bare futex floor", "rtt.shmrpc.park", "rtt.floor.futex", Metric::P50, Some(Bound::AtMost(1.1))),
    ratio("park_rtt_vs_uds", "64 B round trip, channel, park / Unix socket", "rtt.shmrpc.park", "rtt.baseline.uds.64", Metric::P50, Some(Bound::AtMost(1.1))),
    ratio("rpc_unary_stp_vs_uds", "64 B RPC call, spin-then-park / tokio Unix socket, same frames", "rpc.unary.shmrpc.spin_then_park", "rpc.unary.baseline.uds", Metric::P50, Some(Bound::AtMost(0.1))),
    ratio("rpc_unary_park_vs_uds", "64 B RPC call, park / tokio Unix socket, same frames", "rpc.unary.shmrpc.park", "rpc.unary.baseline.uds", Metric::P50, Some(Bound::AtMost(1.1))),
    ratio("stream_64_vs_batched_spsc", "64 B stream / batched SPSC baseline", "stream.shmrpc.64", "stream.baseline.spsc.64", Metric::MsgRate, Some(Bound::AtLeast(0.5))),
    ratio("stream_64_vs_uds", "64 B stream / Unix socket", "stream.shmrpc.64", "stream.baseline.uds.64", Metric::MsgRate, Some(Bound::AtLeast(30.0))),
    ratio("stream_64k_vs_copy_floor", "64 KiB stream / bare copy floor", "stream.shmrpc.65536", "stream.floor.copy.65536", Metric::MsgRate, Some(Bound::AtLeast(0.8))),
    ratio("stream_64k_vs_uds", "64 KiB stream / Unix socket", "stream.shmrpc.65536", "stream.baseline.uds.65536", Metric::MsgRate, Some(Bound::AtLeast(2.5))),
    ratio("stream_1m_vs_copy_floor", "1 MiB stream / bare copy floor", "stream.shmrpc.1048576", "stream.floor.copy.1048576", Metric::MsgRate, Some(Bound::AtLeast(0.8))),
    ratio("stream_1m_vs_uds", "1 MiB stream / Unix socket", "stream.shmrpc.1048576", "stream.baseline.uds.1048576", Metric::MsgRate, Some(Bound::AtLeast(2.5))),
    ratio("rpc_pipelined_1_vs_uds", "RPC pipelined, 1 connection / tokio Unix socket", "rpc.pipelined.shmrpc.1", "rpc.pipelined.baseline.uds.1", Metric::MsgRate, Some(Bound::AtLeast(10.0))),
    ratio("rpc_pipelined_16_vs_uds", "RPC pipelined, 16 connections / tokio Unix socket", "rpc.pipelined.shmrpc.16", "rpc.pipelined.baseline.uds.16", Metric::MsgRate, Some(Bound::AtLeast(10.0))),
    ratio("rpc_pipelined_256_vs_uds", "RPC pipelined, 256 connections / tokio Unix socket", "rpc.pipelined.shmrpc.256", "rpc.pipelined.baseline.uds.256", Metric::MsgRate, Some(Bound::AtLeast(10.0))),
    // Where the time goes.
    ratio("spin_rtt_vs_cache_line_p99", "64 B round trip, channel, spin / cache-line floor", "rtt.shmrpc.spin", "rtt.floor.cache_line", Metric::P99, None),
    ratio("stp_rtt_vs_cache_line_p99", "64 B round trip, channel, spin-then-park / cache-line floor", "rtt.shmrpc.spin_then_park", "rtt.floor.cache_line", Metric::P99, None),
    ratio("record_ring_vs_cache_line", "record-ring baseline / cache-line floor (layout cost)", "rtt.baseline.record_ring", "rtt.floor.cache_line", Metric::P50, None),
    ratio("spin_rtt_vs_record_ring", "spin round trip / record-ring baseline (library cost)", "rtt.shmrpc.spin", "rtt.baseline.record_ring", Metric::P50, None),
    ratio("record_ring_fence_vs_record_ring", "record ring with fences / without (fence cost)", "rtt.baseline.record_ring_fence", "rtt.baseline.record_ring", Metric::P50, None),
    ratio("async_rtt_vs_cache_line", "async (spin-then-park) round trip / cache-line floor", "rtt.shmrpc.async", "rtt.floor.cache_line", Metric::P50, None),
    ratio("park_rtt_vs_futex_p99", "64 B round trip, channel, park / bare futex floor", "rtt.shmrpc.park", "rtt.floor.futex", Metric::P99, None),
    ratio("park_rtt_vs_uds_p99", "64 B round trip, channel, park / Unix socket", "rtt.shmrpc.park", "rtt.baseline.uds.64", Metric::P99, None),
    ratio("async_park_rtt_vs_futex", "async park round trip / bare futex floor", "rtt.shmrpc.async_park", "rtt.floor.futex", Metric::P50, None),
    ratio("async_park_rtt_vs_uds_tokio", "async park round trip / tokio Unix socket", "rtt.shmrpc.async_park", "rtt.baseline.uds_tokio.64", Metric::P50, None),
    ratio("spin_rtt_vs_copy_floor_1m", "1 MiB round trip, channel, spin / copy ping-pong floor", "rtt.shmrpc.spin.1048576", "rtt.floor.copy.1048576", Metric::P50, None),
    ratio("stream_1k_vs_batched_spsc", "1 KiB stream / batched SPSC baseline", "stream.shmrpc.1024", "stream.baseline.spsc.1024", Metric::MsgRate, None),
    ratio("rpc_unary_stp_vs_uds_p99", "64 B RPC call, spin-then-park / tokio Unix socket", "rpc.unary.shmrpc.spin_then_park", "rpc.unary.baseline.uds", Metric::P99, None),
    ratio("rpc_unary_park_vs_uds_p99", "64 B RPC call, park / tokio Unix socket", "rpc.unary.shmrpc.park", "rpc.unary.baseline.uds", Metric::P99, None),
    ratio("rpc_callback_vs_forward", "64 B RPC call, server → client callback / client → server", "rpc.callback.shmrpc", "rpc.callback.baseline.forward", Metric::P50, None),
    ratio("rpc_callback_vs_forward_p99", "64 B RPC call, server → client callback / client → server", "rpc.callback.shmrpc", "rpc.callback.baseline.forward", Metric::P99, None),
    ratio("rpc_bidi_vs_pipelined", "64 B bidi echo items / pipelined unary calls, 1 connection", "rpc.bidi.shmrpc", "rpc.bidi.baseline.pipelined", Metric::MsgRate, None),
    ratio("rpc_hol_loaded_vs_idle", "100 B RPC call, 10 MiB client stream in flight / idle connection", "rpc.hol.shmrpc.loaded", "rpc.hol.baseline.idle", Metric::P50, None),
    ratio("rpc_hol_loaded_vs_idle_p99", "100 B RPC call, 10 MiB client stream in flight / idle connection", "rpc.hol.shmrpc.loaded", "rpc.hol.baseline.idle", Metric::P99, None),
    ratio("rpc_remote_unary_tls_vs_tcp", "64 B RPC call, TLS loopback / TCP loopback", "rpc.remote.unary.tls", "rpc.remote.unary.tcp", Metric::P50, None),
    ratio("rpc_remote_unary_tls_vs_tcp_p99", "64 B RPC call, TLS loopback / TCP loopback", "rpc.remote.unary.tls", "rpc.remote.unary.tcp", Metric::P99, None),
    ratio("rpc_remote_unary_tls_vs_shm", "64 B RPC call, TLS loopback / shared memory", "rpc.remote.unary.tls", "rpc.remote.unary.shm", Metric::P50, None),
    ratio("rpc_remote_unary_tls_vs_shm_p99", "64 B RPC call, TLS loopback / shared memory", "rpc.remote.unary.tls", "rpc.remote.unary.shm", Metric::P99, None),
    ratio("rpc_remote_unary_tcp_vs_shm", "64 B RPC call, TCP loopback / shared memory", "rpc.remote.unary.tcp", "rpc.remote.unary.shm", Metric::P50, None),
    ratio("rpc_remote_pipelined_tls_vs_tcp", "RPC pipelined, 1 connection, TLS loopback / TCP loopback", "rpc.remote.pipelined.tls", "rpc.remote.pipelined.tcp", Metric::MsgRate, None),
    ratio("rpc_remote_pipelined_tls_vs_shm", "RPC pipelined, 1 connection, TLS loopback / shared memory", "rpc.remote.pipelined.tls", "rpc.remote.pipelined.shm", Metric::MsgRate, None),
    ratio("rpc_remote_pipelined_tcp_vs_shm", "RPC pipelined, 1 connection, TCP loopback / shared memory", "rpc.remote.pipelined.tcp", "rpc.remote.pipelined.shm", Metric::MsgRate, None),
    ratio("rpc_remote_bulk_text_lz4_vs_plain", "1 MiB stream over TCP, JSON-like payload, lz4 / uncompressed", "rpc.remote.bulk.text.tcp_lz4", "rpc.remote.bulk.text.tcp", Metric::MsgRate, None),
    ratio("rpc_remote_bulk_random_lz4_vs_plain", "1 MiB stream over TCP, random payload, lz4 / uncompressed", "rpc.remote.bulk.random.tcp_lz4", "rpc.remote.bulk.random.tcp", Metric::MsgRate, None),
];

/// A server restart: the slowest reconnect, in milliseconds.
const RECONNECT_TARGET_MS: f64 = 100.0;
/// An idle server (no connection): resident memory below this, in MB (10^6 bytes).
const IDLE_RSS_TARGET_MB: f64 = 3.0;
/// An idle server uses "no CPU": below this % of one core over the idle interval
/// (heartbeats are the only work; 1 % leaves room for the measurement's own resolution
/// and the guest's accounting).
const IDLE_CPU_TARGET_PERCENT: f64 = 1.0;

/// The groups of rows, in the order they are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// Round trips of one message size.
    RoundTrip(usize),
    Stream,
    RpcUnary,
    RpcPipelined,
    /// Calls and streams both ways on one connection (callbacks, bidi, a bulk stream).
    RpcBothWays,
    /// The same calls over shared memory, TCP and TLS; large streams with and without lz4.
    RpcRemote,
    RpcRestart,
    Idle,
    Peers,
    Targets,
    Ratios,
}

impl Group {
    /// Its name in the JSON.
    fn id(self) -> String {
        match self {
            Group::RoundTrip(size) => format!("rtt.{size}"),
            Group::Stream => "stream".into(),
            Group::RpcUnary => "rpc.unary".into(),
            Group::RpcPipelined => "rpc.pipelined".into(),
            Group::RpcBothWays => "rpc.both_ways".into(),
            Group::RpcRemote => "rpc.remote".into(),
            Group::RpcRestart => "rpc.restart".into(),
            Group::Idle => "idle".into(),
            Group::Peers => "peers".into(),
            Group::Targets => "targets".into(),
            Group::Ratios => "ratios".into(),
        }
    }

    /// The footnote under its table, if any.
    fn note(self) -> Option<String> {
        match self {
            Group::RoundTrip(size) => Some(format!(
                "(÷: p50 over the p50 of {} and of the blocking Unix socket)",
                if size == 64 {
                    "the cache-line floor"
                } else {
                    "the copy ping-pong floor"
                }
            )),
            Group::Stream => Some(
                "(CPU/msg: CPU time of both processes over the interval, per message; ÷: msg/s over the batched SPSC (64 B, 1 KiB) or bare copy (64 KiB, 1 MiB) floor and over the blocking Unix socket)"
                    .into(),
            ),
            Group::RpcRemote => Some(
                "(TLS: 1.3, mutual (client certificate), token proven both ways; ÷shm, ÷TCP: p50 or calls/s over the shared-memory or plain TCP row of the same workload; MiB/s: payload, one way, checked by the server; ÷plain: lz4 over the same stream uncompressed)"
                    .into(),
            ),
            Group::RpcRestart => Some(format!(
                "(from the server's bind to the client's first successful call; the server is down {} ms)",
                rpc::RESTART_GAP.as_millis()
            )),
            Group::Idle => Some(
                "(resident: VmRSS of this binary as the server; CPU: schedstat over the idle interval)".into(),
            ),
            _ => None,
        }
    }
}

/// How a figure reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Micros,
    Millis,
    Nanos,
    /// Per second, with this unit.
    Rate(&'static str),
    GBps,
    /// Mebibytes (2^20 bytes) per second.
    MiBps,
    Ratio,
    Percent,
    MB,
    KiB,
    Count,
    Secs,
    Size,
}

impl Fmt {
    fn show(self, v: f64) -> String {
        match self {
            Fmt::Micros => crate::stats::fmt_us(v),
            Fmt::Millis => format!("{v:.1} ms"),
            Fmt::Nanos if v >= 1e6 => format!("{:.2} ms", v / 1e6),
            Fmt::Nanos if v >= 10_000.0 => format!("{:.1} µs", v / 1000.0),
            Fmt::Nanos if v >= 1000.0 => format!("{:.2} µs", v / 1000.0),
            Fmt::Nanos => format!("{v:.0} ns"),
            Fmt::Rate(unit) => fmt_rate(v, unit),
            Fmt::GBps => format!("{v:.2} GB/s"),
            Fmt::MiBps => format!("{v:.0} MiB/s"),
            Fmt::Ratio if v >= 100.0 => format!("{v:.0}×"),
            Fmt::Ratio if v >= 10.0 => format!("{v:.1}×"),
            Fmt::Ratio => format!("{v:.2}×"),
            Fmt::Percent => format!("{v:.2} %"),
            Fmt::MB => format!("{v:.2} MB"),
            Fmt::KiB => format!("{v:.1} KiB"),
            Fmt::Count => format!("{v:.0}"),
            Fmt::Secs => format!("{v:.2} s"),
            Fmt::Size => fmt_size(v as usize),
        }
    }
}

/// Messages (or calls) per second, 3 significant digits.
fn fmt_rate(per_s: f64, unit: &str) -> String {
    let (v, p) = if per_s >= 1e6 {
        (per_s / 1e6, "M ")
    } else if per_s >= 1e3 {
        (per_s / 1e3, "k ")
    } else {
        (per_s, "")
    };
    let digits = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {p}{unit}")
}

/// One figure of a row: its JSON key, its column in the table (empty: JSON only), how it
/// reads, and its value (`None`: not measured, a dash).
#[derive(Debug, Clone)]
struct Cell {
    key: String,
    head: &'static str,
    fmt: Fmt,
    value: Option<f64>,
}

fn cell(key: impl Into<String>, head: &'static str, fmt: Fmt, value: Option<f64>) -> Cell {
    Cell {
        key: key.into(),
        head,
        fmt,
        value: value.filter(|v| v.is_finite()),
    }
}

/// What a row measured, if it is a case (ours or the peers file's).
#[derive(Debug, Clone)]
struct CaseInfo {
    system: String,
    mode: String,
    /// `rtt`, `stream`, `call`, `pipelined`, `reconnect`, `idle`.
    workload: &'static str,
    size: usize,
    /// Its line in the chart, if charted.
    series: Option<String>,
    kind: Kind,
}

/// A verdict on a target.
#[derive(Debug, Clone)]
struct Verdict {
    target: String,
    /// `None`: not measured in this run.
    met: Option<bool>,
    detail: String,
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self.met {
            Some(true) => "MET",
            Some(false) => "NOT MET",
            None => "NOT MEASURED",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    group: Group,
    label: String,
    case: Option<CaseInfo>,
    cells: Vec<Cell>,
    /// The per-repetition values of its main figure (p50, msg/s, calls/s or the ratio).
    per_rep: Vec<f64>,
    /// For a ratio: numerator and denominator case ids and the metric.
    compares: Option<(&'static str, &'static str, Metric)>,
    verdict: Option<Verdict>,
    /// Why a peer system cannot run this case.
    na: Option<String>,
}

impl Row {
    fn new(id: impl Into<String>, group: Group, label: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            group,
            label: label.into(),
            case: None,
            cells: Vec::new(),
            per_rep: Vec::new(),
            compares: None,
            verdict: None,
            na: None,
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.cells.iter().find(|c| c.key == key)?.value
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id));
        m.insert("group".into(), json!(self.group.id()));
        m.insert("label".into(), json!(self.label));
        if let Some(c) = &self.case {
            m.insert("system".into(), json!(c.system));
            m.insert("mode".into(), json!(c.mode));
            m.insert("workload".into(), json!(c.workload));
            m.insert("size".into(), json!(c.size));
            m.insert("series".into(), json!(c.series));
        }
        for c in &self.cells {
            m.insert(c.key.clone(), c.value.map_or(Value::Null, |v| json!(v)));
        }
        if !self.per_rep.is_empty() {
            m.insert("per_rep".into(), json!(self.per_rep));
        }
        if let Some((num, den, metric)) = self.compares {
            m.insert("numerator".into(), json!(num));
            m.insert("denominator".into(), json!(den));
            m.insert("metric".into(), json!(metric.name()));
        }
        if let Some(v) = &self.verdict {
            m.insert("target".into(), json!(v.target));
            m.insert("met".into(), json!(v.met));
            m.insert("verdict".into(), json!(v.word()));
            m.insert("detail".into(), json!(v.detail));
        }
        if self.case.is_some() {
            m.insert("na".into(), json!(self.na));
        }
        Value::Object(m)
    }
}

/// What a run knows besides its cases and their results.
pub(crate) struct RunInfo {
    /// The machine.
    pub machine: Machine,
    /// Pinning.
    pub cpus: Option<(usize, usize)>,
    /// Wall time of the rounds (and the idle case).
    pub elapsed: Duration,
    /// The idle-connections case, if it ran.
    pub idle: Option<IdleResult>,
    /// The peers file, if one was given.
    pub peers: Option<PeersFile>,
    /// Where the chart goes, if anywhere.
    pub svg: Option<PathBuf>,
    /// Socket files removed at the end (besides the baseline segment).
    pub sockets_removed: usize,
}

/// The results of a run: print them ([`Report::print_table`]), or serialise them
/// ([`Report::to_json`], [`Report::to_svg`]); all three come from the same rows.
pub struct Report {
    rows: Vec<Row>,
    info: RunInfo,
    reps: usize,
    quick: bool,
    config: Value,
    date: String,
    command: String,
}

impl Report {
    /// Turns the measurements into rows.
    pub(crate) fn new(plan: Plan, results: Vec<Vec<Measurement>>, info: RunInfo) -> Self {
        let runs = Runs {
            plan: &plan,
            results: &results,
        };
        let mut rows: Vec<Row> = plan
            .cases
            .iter()
            .zip(&results)
            .map(|(c, reps)| runs.case_row(c, reps))
            .collect();
        if let Some(r) = &info.idle {
            rows.push(idle_row(r));
        }
        if let Some(p) = &info.peers {
            rows.extend(peer_rows(p));
        }
        let mut targets = Vec::new();
        let mut info_ratios = Vec::new();
        for spec in RATIOS {
            let row = runs.ratio_row(spec, &rows);
            match (spec.bound, row) {
                (Some(_), Some(row)) => targets.push(row),
                (None, Some(row)) => info_ratios.push(row),
                (Some(b), None) => {
                    let mut row = Row::new(spec.id, Group::Targets, ratio_label(spec));
                    row.cells.push(cell("ratio", "value", Fmt::Ratio, None));
                    row.compares = Some((spec.num, spec.den, spec.metric));
                    row.verdict = Some(Verdict {
                        target: b.text("×"),
                        met: None,
                        detail: "not measured (a case did not run)".into(),
                    });
                    targets.push(row);
                }
                (None, None) => {}
            }
        }
        targets.extend(restart_targets(&rows));
        targets.extend(idle_targets(info.idle.as_ref()));
        targets.extend(peer_targets(info.peers.as_ref(), &rows));
        rows.extend(targets);
        rows.extend(info_ratios);
        let config = json!({
            "small_ring": plan.small_ring,
            "big_ring": plan.big_ring,
            "rtt_ring": crate::RTT_RING,
            "rtt_big_ring": plan.rtt_big_ring,
            "copy_slots": plan.copy_slots,
            "stream_batch": chan::STREAM_BATCH,
            "stream_read_max": chan::STREAM_READ_MAX,
            "stream_read_bytes": plan.read_bytes,
            "spsc_batch": raw::SPSC_BATCH,
            "rpc_spin_then_park": format!("{:?}", rpc::wait_of(false)),
            "rpc_pipeline": rpc::PIPELINE,
            "sizes": SIZES,
            "link_read_buffer": link::READ_BUF,
            "idle_interval_s": plan.idle_interval.as_secs_f64(),
        });
        Self {
            rows,
            info,
            reps: plan.reps,
            quick: plan.quick,
            config,
            date: utc_now(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    /// The ids of the cases that ran (ours, not the peers file's), in the plan's order.
    pub fn case_ids(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.case.is_some() && r.group != Group::Peers)
            .map(|r| r.id.as_str())
            .collect()
    }

    /// Prints the table and the cleanup summary on stdout.
    pub fn print_table(&self) {
        print!("{}", self.table());
        println!(
            "cleanup: peer exited 0; baseline segment and {} socket files removed; total {:.1} s",
            self.info.sockets_removed,
            self.info.elapsed.as_secs_f64()
        );
    }

    /// The title of a group's table.
    fn title(&self, g: Group) -> String {
        match g {
            Group::RoundTrip(size) => format!("Round trip, {}, two processes", fmt_size(size)),
            Group::Stream => "One-way stream, two processes".into(),
            Group::RpcUnary => format!("RPC: unary call, {}, two processes", fmt_size(rpc::SIZE)),
            Group::RpcPipelined => format!(
                "RPC: pipelined {} calls, {} outstanding per connection, two processes",
                fmt_size(rpc::SIZE),
                rpc::PIPELINE
            ),
            Group::RpcBothWays => {
                "RPC: both ways on one connection (callbacks, bidi streams, short calls beside a bulk stream), two processes".into()
            }
            Group::RpcRemote => format!(
                "RPC: remote transport, {} calls over shared memory, TCP and TLS loopback, and 1 MiB streams over TCP with and without lz4, two processes",
                fmt_size(rpc::SIZE)
            ),
            Group::RpcRestart => "RPC: a server restart".into(),
            Group::Idle => "RPC: idle connections, the server in a process of its own".into(),
            Group::Peers => match &self.info.peers {
                Some(p) => format!(
                    "Peers (from {}: measured {}, on {}, by `{}`; another run, so compare with care)",
                    p.path.display(),
                    p.date,
                    p.machine,
                    p.command
                ),
                None => "Peers".into(),
            },
            Group::Targets => "Targets (ratios: median of the per-repetition ratios of this run)".into(),
            Group::Ratios => "Where the time goes (ratios, for information)".into(),
        }
    }

    /// The table: one block per group, every row's figures under its group's columns.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut groups: Vec<Group> = Vec::new();
        for r in &self.rows {
            if !groups.contains(&r.group) {
                groups.push(r.group);
            }
        }
        for g in groups {
            let rows: Vec<&Row> = self.rows.iter().filter(|r| r.group == g).collect();
            self.write_group(&mut s, g, &rows);
        }
        s
    }

    fn write_group(&self, s: &mut String, g: Group, rows: &[&Row]) {
        let mut heads: Vec<&'static str> = Vec::new();
        for c in rows.iter().flat_map(|r| &r.cells) {
            if !c.head.is_empty() && !heads.contains(&c.head) {
                heads.push(c.head);
            }
        }
        let text = |r: &Row, head: &str| -> String {
            match r.cells.iter().find(|c| c.head == head) {
                Some(c) => c.value.map_or("—".to_owned(), |v| c.fmt.show(v)),
                None => String::new(),
            }
        };
        let title = self.title(g);
        let lw = rows
            .iter()
            .map(|r| r.label.chars().count())
            .max()
            .unwrap_or(0);
        let widths: Vec<usize> = heads
            .iter()
            .map(|h| {
                rows.iter()
                    .map(|r| text(r, h).chars().count())
                    .chain([h.chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let tw = rows
            .iter()
            .filter_map(|r| r.verdict.as_ref())
            .map(|v| v.target.chars().count())
            .max();
        // A title wider than the labels gets a line of its own above the column heads.
        let mut line = if title.chars().count() > lw + 2 {
            let _ = writeln!(s, "{title}");
            format!("{:<w$}", "", w = lw + 2)
        } else {
            format!("{title:<w$}", w = lw + 2)
        };
        for (h, w) in heads.iter().zip(&widths) {
            let _ = write!(line, " {h:>w$}");
        }
        if let Some(tw) = tw {
            let _ = write!(line, "  {:<tw$}  verdict", "target");
        }
        let _ = writeln!(s, "{}", line.trim_end());
        for r in rows {
            let mut line = format!("  {:<lw$}", r.label);
            for (h, w) in heads.iter().zip(&widths) {
                let _ = write!(line, " {:>w$}", text(r, h));
            }
            if let Some(na) = &r.na {
                let _ = write!(line, "  n/a: {na}");
            }
            if let (Some(v), Some(tw)) = (&r.verdict, tw) {
                let _ = write!(line, "  {:<tw$}  {:<12}  {}", v.target, v.word(), v.detail);
            }
            let _ = writeln!(s, "{}", line.trim_end());
        }
        if let Some(note) = g.note() {
            let _ = writeln!(s, "  {note}");
        }
        s.push('\n');
    }

    /// The JSON document: the run's settings and every row.
    pub fn to_json(&self) -> Value {
        json!({
            "schema": SCHEMA,
            "date_utc": self.date,
            "command": self.command,
            "quick": self.quick,
            "reps": self.reps,
            "elapsed_s": self.info.elapsed.as_secs_f64(),
            "machine": self.info.machine.to_json(),
            "pinned": self.info.cpus.map(|(a, b)| json!({"lead": a, "peer": b})),
            "config": self.config,
            "peers": self.info.peers.as_ref().map(|p| json!({
                "file": p.path.display().to_string(),
                "date": p.date,
                "machine": p.machine,
                "command": p.command,
            })),
            "svg": self.info.svg.as_ref().map(|p| p.display().to_string()),
            "rows": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        })
    }

    /// The chart, an SVG document: round-trip p50 and p99, stream GB/s and messages/s by
    /// message size, one line per charted series (ours and the peers file's).
    pub fn to_svg(&self) -> String {
        let panels = [
            (
                "Round trip, median (p50)",
                "round-trip time (log scale)",
                Unit::Micros,
                "p50_us",
            ),
            (
                "Round trip, 99th percentile (p99)",
                "round-trip time (log scale)",
                Unit::Micros,
                "p99_us",
            ),
            (
                "One-way stream, throughput",
                "payload GB/s (log scale)",
                Unit::GBps,
                "gb_per_s",
            ),
            (
                "One-way stream, messages per second",
                "messages/s (log scale)",
                Unit::PerSec,
                "msgs_per_s",
            ),
        ];
        let panels: Vec<Panel> = panels
            .into_iter()
            .map(|(title, y_label, unit, key)| {
                let mut series: Vec<Series> = Vec::new();
                for r in &self.rows {
                    let Some(c) = &r.case else { continue };
                    let (Some(name), Some(y)) = (&c.series, r.get(key)) else {
                        continue;
                    };
                    if !matches!(c.workload, "rtt" | "stream") {
                        continue;
                    }
                    let x = c.size as f64;
                    match series.iter_mut().find(|s| &s.name == name) {
                        Some(s) => s.points.push((x, y)),
                        None => series.push(Series {
                            name: name.clone(),
                            kind: c.kind,
                            points: vec![(x, y)],
                        }),
                    }
                }
                Panel {
                    title: title.into(),
                    y_label: y_label.into(),
                    unit,
                    series,
                }
            })
            .collect();
        let m = &self.info.machine;
        let title = format!("shmrpc bench — {} UTC", self.date);
        let subtitle = format!(
            "{} CPUs, {}, Linux {}; {}; two processes, medians of {} interleaved rounds{}",
            m.nproc,
            m.cpu_model,
            m.kernel,
            match self.info.cpus {
                Some((a, b)) => format!("pinned to CPUs {a} and {b}"),
                None => "not pinned".to_owned(),
            },
            self.reps,
            if self.quick {
                " (--quick: rough figures)"
            } else {
                ""
            }
        );
        let mut notes = vec![
            format!("Command: {}", self.command),
            "Round trip: a message sent, echoed and copied out on both sides. Stream: one way, each message written by the producer and copied out and checked by the consumer.".to_owned(),
            "shmrpc: the raw channel in each mode; floors: the least that moves the same bytes through shared memory; baselines: 4-byte length-prefixed frames, one write per message.".to_owned(),
        ];
        if let Some(p) = &self.info.peers {
            notes.push(format!(
                "Dotted lines: peers file {} (measured {} on {}), another run than the rest.",
                p.path.display(),
                p.date,
                p.machine
            ));
        }
        chart(&title, &subtitle, &panels, &notes)
    }
}

/// The plan and its results, for computing figures and ratios.
struct Runs<'a> {
    plan: &'a Plan,
    results: &'a [Vec<Measurement>],
}

impl Runs<'_> {
    /// The per-round ratios of case `num` to case `den`, if both ran (and differ).
    fn per_rep(&self, num: &str, den: &str, metric: Metric) -> Option<Vec<f64>> {
        if num == den {
            return None;
        }
        let find = |id: &str| self.plan.cases.iter().position(|c| c.id == id);
        let (n, d) = (find(num)?, find(den)?);
        let r: Vec<f64> = self.results[n]
            .iter()
            .zip(&self.results[d])
            .filter_map(|(a, b)| Some(metric.of(a)? / metric.of(b)?))
            .filter(|r| r.is_finite())
            .collect();
        (!r.is_empty()).then_some(r)
    }

    /// The median of the per-round ratios of two cases.
    fn ratio(&self, num: &str, den: &str, metric: Metric) -> Option<f64> {
        self.per_rep(num, den, metric).and_then(med)
    }

    /// Ratios of case `c` to its floor and to every byte-stream baseline of its size.
    fn vs(&self, c: &Case, workload: &str, floor: &str, metric: Metric) -> Vec<Cell> {
        let (prefix, shown) = match metric {
            Metric::P50 => ("p50", true),
            Metric::P99 => ("p99", false),
            Metric::MsgRate => ("msgs_per_s", true),
        };
        let key = |what: &str| format!("{prefix}_vs_{what}");
        let mut cells = vec![cell(
            key("floor"),
            if shown { "÷floor" } else { "" },
            Fmt::Ratio,
            self.ratio(&c.id, floor, metric),
        )];
        for l in Link::ALL {
            let id = format!("{workload}.baseline.{}.{}", l.as_str(), c.size);
            let head = if shown && l == Link::Uds { "÷UDS" } else { "" };
            cells.push(cell(
                key(l.as_str()),
                head,
                Fmt::Ratio,
                self.ratio(&c.id, &id, metric),
            ));
        }
        cells
    }

    fn case_row(&self, c: &Case, reps: &[Measurement]) -> Row {
        let mut row = Row::new(&c.id, Group::Stream, &c.label);
        let kind = match c.system {
            "shmrpc" | "shmrpc-rpc" => Kind::Shmrpc,
            "floor" => Kind::Floor,
            _ if c.series.as_deref().is_some_and(|s| s.starts_with("floor")) => Kind::Floor,
            _ => Kind::Baseline,
        };
        let workload = match c.workload {
            Workload::RoundTrip => "rtt",
            Workload::Stream => "stream",
            Workload::Call => "call",
            Workload::Pipelined => "pipelined",
            Workload::Reconnect => "reconnect",
            Workload::Bulk => "bulk",
        };
        row.case = Some(CaseInfo {
            system: c.system.to_owned(),
            mode: c.mode.to_owned(),
            workload,
            size: c.size,
            series: c.series.clone(),
            kind,
        });
        let l = latency_of(reps);
        let latency = |l: Latency| {
            vec![
                cell("p50_us", "p50", Fmt::Micros, Some(l.p50)),
                cell("p99_us", "p99", Fmt::Micros, Some(l.p99)),
                cell("p999_us", "p99.9", Fmt::Micros, Some(l.p999)),
                cell("max_us", "max", Fmt::Micros, Some(l.max)),
                cell("samples", "", Fmt::Count, Some(l.samples as f64)),
            ]
        };
        let rate = |unit: &'static str| {
            let mps = med(reps.iter().filter_map(Measurement::msgs_per_s));
            let key = match unit {
                "msg/s" => "msgs_per_s",
                "items/s" => "items_per_s",
                _ => "calls_per_s",
            };
            cell(key, unit, Fmt::Rate(unit), mps)
        };
        let cpu = |head: &'static str| {
            let all: Vec<f64> = reps.iter().filter_map(Measurement::cpu_per_msg).collect();
            let parts: Vec<(f64, f64)> = reps.iter().filter_map(Measurement::cpu_parts).collect();
            vec![
                cell("cpu_ns_per_msg", head, Fmt::Nanos, med(all.iter().copied())),
                cell(
                    "lead_cpu_ns_per_msg",
                    "",
                    Fmt::Nanos,
                    med(parts.iter().map(|p| p.0)),
                ),
                cell(
                    "peer_cpu_ns_per_msg",
                    "",
                    Fmt::Nanos,
                    med(parts.iter().map(|p| p.1)),
                ),
            ]
        };
        if let Transport::Remote { bulk, .. } = c.transport {
            row.group = Group::RpcRemote;
            let vs = |key: &str, head: &'static str, den: &str, metric: Metric| {
                cell(key, head, Fmt::Ratio, self.ratio(&c.id, den, metric))
            };
            match (c.workload, bulk) {
                (Workload::Bulk, Some(p)) => {
                    let bps = med(reps.iter().filter_map(Measurement::bytes_per_s));
                    row.cells = vec![
                        cell("size", "size", Fmt::Size, Some(c.size as f64)),
                        cell(
                            "mib_per_s",
                            "MiB/s",
                            Fmt::MiBps,
                            bps.map(|b| b / f64::from(1 << 20)),
                        ),
                        cell(
                            "msgs_per_s",
                            "",
                            Fmt::Rate("msg/s"),
                            med(reps.iter().filter_map(Measurement::msgs_per_s)),
                        ),
                        cell("messages_per_rep", "", Fmt::Count, Some(c.total as f64)),
                    ];
                    row.cells.extend(cpu("CPU/MiB"));
                    row.cells.push(vs(
                        "mib_per_s_vs_plain",
                        "÷plain",
                        &format!("rpc.remote.bulk.{}.tcp", p.id()),
                        Metric::MsgRate,
                    ));
                    row.per_rep = reps.iter().filter_map(Measurement::msgs_per_s).collect();
                }
                (Workload::Pipelined, _) => {
                    row.cells = vec![
                        rate("calls/s"),
                        cell("connections", "", Fmt::Count, Some(1.0)),
                    ];
                    row.cells.extend(cpu("CPU/call"));
                    for (key, head, den) in [
                        ("calls_per_s_vs_shm", "÷shm", "rpc.remote.pipelined.shm"),
                        ("calls_per_s_vs_tcp", "÷TCP", "rpc.remote.pipelined.tcp"),
                    ] {
                        row.cells.push(vs(key, head, den, Metric::MsgRate));
                    }
                    row.per_rep = reps.iter().filter_map(Measurement::msgs_per_s).collect();
                }
                _ => {
                    row.cells = latency(l);
                    for (key, head, den, metric) in [
                        ("p50_vs_shm", "÷shm", "rpc.remote.unary.shm", Metric::P50),
                        ("p50_vs_tcp", "÷TCP", "rpc.remote.unary.tcp", Metric::P50),
                        ("p99_vs_shm", "", "rpc.remote.unary.shm", Metric::P99),
                        ("p99_vs_tcp", "", "rpc.remote.unary.tcp", Metric::P99),
                    ] {
                        row.cells.push(vs(key, head, den, metric));
                    }
                    row.per_rep = reps.iter().filter_map(Measurement::p50).collect();
                }
            }
            return row;
        }
        match c.workload {
            Workload::RoundTrip => {
                row.group = Group::RoundTrip(c.size);
                row.cells = latency(l);
                let floor = if c.size == 64 {
                    "rtt.floor.cache_line".to_owned()
                } else {
                    format!("rtt.floor.copy.{}", c.size)
                };
                row.cells.extend(self.vs(c, "rtt", &floor, Metric::P50));
                row.cells.extend(self.vs(c, "rtt", &floor, Metric::P99));
                row.per_rep = reps.iter().filter_map(Measurement::p50).collect();
            }
            Workload::Stream => {
                row.group = Group::Stream;
                let bps = med(reps.iter().filter_map(Measurement::bytes_per_s));
                row.cells = vec![
                    cell("size", "size", Fmt::Size, Some(c.size as f64)),
                    rate("msg/s"),
                    cell("gb_per_s", "GB/s", Fmt::GBps, bps.map(|b| b / 1e9)),
                    cell("messages_per_rep", "", Fmt::Count, Some(c.total as f64)),
                ];
                row.cells.extend(cpu("CPU/msg"));
                let floor = if c.size >= 64 << 10 {
                    format!("stream.floor.copy.{}", c.size)
                } else {
                    format!("stream.baseline.spsc.{}", c.size)
                };
                row.cells
                    .extend(self.vs(c, "stream", &floor, Metric::MsgRate));
                row.per_rep = reps.iter().filter_map(Measurement::msgs_per_s).collect();
            }
            Workload::Call => {
                row.group = if matches!(c.transport, Transport::RpcSym { .. }) {
                    Group::RpcBothWays
                } else {
                    Group::RpcUnary
                };
                row.cells = latency(l);
                row.cells.push(cell(
                    "p50_vs_uds",
                    "÷UDS",
                    Fmt::Ratio,
                    self.ratio(&c.id, "rpc.unary.baseline.uds", Metric::P50),
                ));
                row.per_rep = reps.iter().filter_map(Measurement::p50).collect();
            }
            Workload::Pipelined => {
                let bidi = matches!(c.transport, Transport::RpcSym { what: Sym::Bidi });
                row.group = if matches!(c.transport, Transport::RpcSym { .. }) {
                    Group::RpcBothWays
                } else {
                    Group::RpcPipelined
                };
                let conns = match c.transport {
                    Transport::Rpc { conns, .. } | Transport::Uds { conns } => conns,
                    Transport::RpcSym { .. } => 1,
                    _ => 0,
                };
                row.cells = vec![
                    rate(if bidi { "items/s" } else { "calls/s" }),
                    cell("connections", "", Fmt::Count, Some(conns as f64)),
                ];
                row.cells.extend(cpu("CPU/call"));
                row.cells.push(cell(
                    "calls_per_s_vs_uds",
                    "÷UDS",
                    Fmt::Ratio,
                    self.ratio(
                        &c.id,
                        &format!("rpc.pipelined.baseline.uds.{conns}"),
                        Metric::MsgRate,
                    ),
                ));
                row.per_rep = reps.iter().filter_map(Measurement::msgs_per_s).collect();
            }
            // Every bulk case is a remote one (above).
            Workload::Bulk => {}
            Workload::Reconnect => {
                row.group = Group::RpcRestart;
                let slowest = reps
                    .iter()
                    .filter_map(|m| match m {
                        Measurement::Latency(l) => Some(l.max / 1000.0),
                        Measurement::Rate { .. } => None,
                    })
                    .fold(0.0, f64::max);
                row.cells = vec![
                    cell("median_ms", "median", Fmt::Millis, Some(l.p50 / 1000.0)),
                    cell("slowest_ms", "slowest", Fmt::Millis, Some(slowest)),
                    cell("restarts", "restarts", Fmt::Count, Some(l.samples as f64)),
                ];
            }
        }
        row
    }

    /// The row of a ratio, if both of its cases ran.
    fn ratio_row(&self, spec: &'static RatioSpec, rows: &[Row]) -> Option<Row> {
        let per_rep = self.per_rep(spec.num, spec.den, spec.metric)?;
        let value = med(per_rep.iter().copied())?;
        let group = if spec.bound.is_some() {
            Group::Targets
        } else {
            Group::Ratios
        };
        let mut row = Row::new(spec.id, group, ratio_label(spec));
        row.cells
            .push(cell("ratio", "value", Fmt::Ratio, Some(value)));
        row.per_rep = per_rep;
        row.compares = Some((spec.num, spec.den, spec.metric));
        if let Some(b) = spec.bound {
            let figure = |id: &str| -> String {
                let Some(r) = rows.iter().find(|r| r.id == id) else {
                    return "—".into();
                };
                let key = match spec.metric {
                    Metric::P50 => "p50_us",
                    Metric::P99 => "p99_us",
                    Metric::MsgRate if id.starts_with("rpc.") => "calls_per_s",
                    Metric::MsgRate => "msgs_per_s",
                };
                r.cells
                    .iter()
                    .find(|c| c.key == key)
                    .and_then(|c| Some(c.fmt.show(c.value?)))
                    .unwrap_or_else(|| "—".into())
            };
            row.verdict = Some(Verdict {
                target: b.text("×"),
                met: Some(b.holds(value)),
                detail: format!("{} vs {}", figure(spec.num), figure(spec.den)),
            });
        }
        Some(row)
    }
}

/// The median of some values (`None` for none), by `shmrpc_harness::median`.
fn med(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    shmrpc_harness::median(&values.into_iter().collect::<Vec<_>>())
}

fn ratio_label(spec: &RatioSpec) -> String {
    format!("{}, {}", spec.what, spec.metric.name())
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

/// The idle-connections case as a row.
fn idle_row(r: &IdleResult) -> Row {
    let mb = |kib: u64| Some(kib as f64 * 1024.0 / 1e6);
    let mut row = Row::new(
        idle::ID,
        Group::Idle,
        format!("server, {} idle connections", r.connections),
    );
    row.case = Some(CaseInfo {
        system: "shmrpc-rpc".into(),
        mode: "default".into(),
        workload: "idle",
        size: 0,
        series: None,
        kind: Kind::Shmrpc,
    });
    row.cells = vec![
        cell("server_rss_mb", "resident", Fmt::MB, mb(r.rss.total)),
        cell(
            "server_rss_empty_mb",
            "with none",
            Fmt::MB,
            mb(r.rss_empty.total),
        ),
        cell(
            "server_rss_per_connection_kib",
            "per conn.",
            Fmt::KiB,
            Some(r.per_conn_kib()),
        ),
        cell("server_rss_anon_mb", "", Fmt::MB, mb(r.rss.anon)),
        cell("server_rss_file_mb", "", Fmt::MB, mb(r.rss.file)),
        cell("server_rss_shmem_mb", "", Fmt::MB, mb(r.rss.shmem)),
        cell(
            "server_cpu_percent",
            "CPU",
            Fmt::Percent,
            Some(r.cpu_percent),
        ),
        cell(
            "server_cpu_percent_stat",
            "",
            Fmt::Percent,
            Some(r.cpu_percent_stat),
        ),
        cell(
            "clock_ticks_per_s",
            "",
            Fmt::Count,
            Some(r.ticks_per_s as f64),
        ),
        cell("server_fds", "fds", Fmt::Count, Some(r.fds as f64)),
        cell("server_fds_empty", "", Fmt::Count, Some(r.fds_empty as f64)),
        cell("connections", "", Fmt::Count, Some(r.connections as f64)),
        cell(
            "client_cpu_percent",
            "",
            Fmt::Percent,
            Some(r.client_cpu_percent),
        ),
        cell("connect_s", "connect", Fmt::Secs, Some(r.connect_s)),
        cell(
            "idle_interval_s",
            "interval",
            Fmt::Secs,
            Some(r.interval.as_secs_f64()),
        ),
    ];
    row
}

/// The peers file's cases and ratios as rows.
fn peer_rows(p: &PeersFile) -> Vec<Row> {
    let mut rows = Vec::new();
    for c in &p.cases {
        let workload = if c.stream { "stream" } else { "rtt" };
        let mut row = Row::new(
            &c.id,
            Group::Peers,
            format!("{}, {}, {workload} {}", c.system, c.mode, fmt_size(c.size)),
        );
        row.case = Some(CaseInfo {
            system: c.system.clone(),
            mode: c.mode.clone(),
            workload,
            size: c.size,
            series: c.na.is_none().then(|| p.series(c)),
            kind: Kind::Peer,
        });
        row.na.clone_from(&c.na);
        if c.na.is_none() {
            let us = |ns: Option<f64>| ns.map(|v| v / 1000.0);
            row.cells = if c.stream {
                vec![
                    cell("msgs_per_s", "msg/s", Fmt::Rate("msg/s"), c.msgs_per_s),
                    cell(
                        "gb_per_s",
                        "GB/s",
                        Fmt::GBps,
                        c.bytes_per_s.map(|b| b / 1e9),
                    ),
                ]
            } else {
                vec![
                    cell("p50_us", "p50", Fmt::Micros, us(c.p50_ns)),
                    cell("p99_us", "p99", Fmt::Micros, us(c.p99_ns)),
                    cell("p999_us", "p99.9", Fmt::Micros, us(c.p999_ns)),
                    cell("max_us", "max", Fmt::Micros, us(c.max_ns)),
                ]
            };
        }
        rows.push(row);
    }
    for (i, r) in p.ratios.iter().enumerate() {
        let mut row = Row::new(
            format!("peers.ratio.{i}"),
            Group::Peers,
            format!("ratio in that file: {} / {}", r.case, r.baseline),
        );
        row.cells
            .push(cell("ratio", "ratio", Fmt::Ratio, Some(r.median)));
        rows.push(row);
    }
    rows
}

/// "A server restart: the client's first call done within 100 ms of the bind", one target
/// per restart case.
fn restart_targets(rows: &[Row]) -> Vec<Row> {
    rows.iter()
        .filter(|r| r.group == Group::RpcRestart)
        .map(|r| {
            let slowest = r.get("slowest_ms");
            let mut t = Row::new(
                format!("{}.slowest", r.id),
                Group::Targets,
                format!("server restart, slowest reconnect ({})", r.id),
            );
            t.cells
                .push(cell("slowest_ms", "value", Fmt::Millis, slowest));
            let b = Bound::Below(RECONNECT_TARGET_MS);
            t.verdict = Some(Verdict {
                target: b.text(" ms"),
                met: slowest.map(|v| b.holds(v)),
                detail: format!(
                    "median {} over {} restarts",
                    r.get("median_ms")
                        .map_or("—".into(), |v| Fmt::Millis.show(v)),
                    r.get("restarts").unwrap_or(0.0)
                ),
            });
            t
        })
        .collect()
}

/// The idle server's memory and CPU targets.
fn idle_targets(idle: Option<&IdleResult>) -> Vec<Row> {
    let rss_bound = Bound::Below(IDLE_RSS_TARGET_MB);
    let cpu_bound = Bound::Below(IDLE_CPU_TARGET_PERCENT);
    let mut rss = Row::new(
        "idle_server_rss",
        Group::Targets,
        "idle server (no connection), resident memory",
    );
    let mut cpu = Row::new(
        "idle_server_cpu",
        Group::Targets,
        "idle server, CPU when no message moves",
    );
    match idle {
        Some(r) => {
            // "An idle server" is read as one with no connection: the connections' figure
            // is reported beside it (their rings alone are ~12 KiB each).
            let mb = r.rss_empty.total as f64 * 1024.0 / 1e6;
            rss.cells
                .push(cell("server_rss_mb", "value", Fmt::MB, Some(mb)));
            rss.verdict = Some(Verdict {
                target: rss_bound.text(" MB"),
                met: Some(rss_bound.holds(mb)),
                detail: format!(
                    "{:.2} MB with {} idle connections, {:.1} KiB per connection",
                    r.rss.total as f64 * 1024.0 / 1e6,
                    r.connections,
                    r.per_conn_kib()
                ),
            });
            cpu.cells.push(cell(
                "server_cpu_percent",
                "value",
                Fmt::Percent,
                Some(r.cpu_percent),
            ));
            cpu.verdict = Some(Verdict {
                target: cpu_bound.text(" % of a core"),
                met: Some(cpu_bound.holds(r.cpu_percent)),
                detail: format!(
                    "over {:.1} s with {} connections (heartbeats only)",
                    r.interval.as_secs_f64(),
                    r.connections
                ),
            });
        }
        None => {
            for (row, bound, unit) in [
                (&mut rss, rss_bound, " MB"),
                (&mut cpu, cpu_bound, " % of a core"),
            ] {
                row.cells.push(cell("value", "value", Fmt::Count, None));
                row.verdict = Some(Verdict {
                    target: bound.text(unit),
                    met: None,
                    detail: "the idle case did not run".into(),
                });
            }
        }
    }
    vec![rss, cpu]
}

/// "Lower p50 AND p99 than iceoryx2, shmipc and ipc-channel in every mode where they have
/// a counterpart", one target per peer system.
fn peer_targets(peers: Option<&PeersFile>, rows: &[Row]) -> Vec<Row> {
    let label = "round trip: lower p50 and p99 than the peer in every mode with a counterpart";
    let target = "all lower";
    let Some(p) = peers else {
        let mut row = Row::new("rtt_below_peers", Group::Targets, label);
        row.cells.push(cell("lower", "value", Fmt::Count, None));
        row.verdict = Some(Verdict {
            target: target.into(),
            met: None,
            detail: "no --peers file".into(),
        });
        return vec![row];
    };
    let mut systems: Vec<&str> = p.cases.iter().map(|c| c.system.as_str()).collect();
    systems.sort_unstable();
    systems.dedup();
    // The peers file measures shmrpc and a Unix socket too, as its own baselines: they
    // are not peers.
    systems.retain(|s| !matches!(*s, "shmrpc" | "unix-socket"));
    let mut out = Vec::new();
    for sys in systems {
        let (mut compared, mut worse) = (0, Vec::new());
        for c in p
            .cases
            .iter()
            .filter(|c| c.system == sys && !c.stream && c.na.is_none())
        {
            // A library's "default" mode that sleeps in the kernel until woken
            // (ipc-channel's, shmipc's) counts as park.
            let Some(mode) =
                peers::counterpart(&c.mode).or_else(|| (c.mode == "default").then_some("park"))
            else {
                continue;
            };
            let word = mode.replace('-', "_");
            let id = if c.size == 64 {
                format!("rtt.shmrpc.{word}")
            } else {
                format!("rtt.shmrpc.{word}.{}", c.size)
            };
            let Some(ours) = rows.iter().find(|r| r.id == id) else {
                continue;
            };
            let (Some(p50), Some(p99), Some(o50), Some(o99)) =
                (c.p50_ns, c.p99_ns, ours.get("p50_us"), ours.get("p99_us"))
            else {
                continue;
            };
            compared += 1;
            if !(o50 * 1000.0 < p50 && o99 * 1000.0 < p99) {
                worse.push(format!(
                    "{} {} vs shmrpc {mode}: p50 {} vs {}, p99 {} vs {}",
                    c.mode,
                    fmt_size(c.size),
                    Fmt::Nanos.show(p50),
                    Fmt::Micros.show(o50),
                    Fmt::Nanos.show(p99),
                    Fmt::Micros.show(o99)
                ));
            }
        }
        let mut row = Row::new(
            format!("rtt_below_{}", sys.replace(['-', ' '], "_")),
            Group::Targets,
            format!("{label}: {sys}"),
        );
        row.cells.push(cell(
            "lower",
            "value",
            Fmt::Count,
            Some((compared - worse.len()) as f64),
        ));
        row.cells
            .push(cell("compared", "", Fmt::Count, Some(compared as f64)));
        row.verdict = Some(Verdict {
            target: target.into(),
            met: (compared > 0).then_some(worse.is_empty()),
            detail: if compared == 0 {
                "no round trip of it has a counterpart in this run".to_owned()
            } else if worse.is_empty() {
                format!("{compared} of {compared} lower (peers file of {})", p.date)
            } else {
                format!(
                    "{} of {compared} lower; not lower: {}",
                    compared - worse.len(),
                    worse.join("; ")
                )
            },
        });
        out.push(row);
    }
    out
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
        assert!(!Bound::Below(100.0).holds(100.0));
    }

    #[test]
    fn every_ratio_names_cases_the_plan_has_and_ids_are_unique() {
        let args = crate::BenchOptions {
            quick: true,
            rtt_big_ring: 4 << 20,
            ..crate::BenchOptions::default()
        };
        let plan = Plan::new(&args).unwrap();
        let mut ids: Vec<&str> = RATIOS.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RATIOS.len(), "duplicate ratio ids");
        for spec in RATIOS {
            for id in [spec.num, spec.den] {
                assert!(
                    plan.cases.iter().any(|c| c.id == id),
                    "{}: no case {id}",
                    spec.id
                );
            }
        }
    }

    #[test]
    fn formats() {
        assert_eq!(Fmt::Ratio.show(2.034), "2.03×");
        assert_eq!(Fmt::Ratio.show(33.3), "33.3×");
        assert_eq!(Fmt::Rate("msg/s").show(1.2e8), "120 M msg/s");
        assert_eq!(Fmt::Rate("calls/s").show(950.0), "950 calls/s");
        assert_eq!(Fmt::Nanos.show(1500.0), "1.50 µs");
        assert_eq!(Fmt::Size.show(65536.0), "64 KiB");
    }
}
