//! The figures of the peer-comparison crate (`peers/`, outside the workspace), merged
//! into the table, the JSON and the chart with `--peers FILE`.
//!
//! Its JSON:
//!
//! ```text
//! {"kind": "shmrpc-peers", "version": 1, "date", "machine", "command",
//!  "cases": [{"id", "system", "mode", "workload": "rtt"|"stream", "size",
//!             "p50_ns", "p99_ns", "p999_ns", "max_ns", "msgs_per_s", "bytes_per_s",
//!             "rounds", "na"}],
//!  "ratios": [{"case", "baseline", "median"}]}
//! ```
//!
//! A figure may be `null` (a stream has no percentiles); `na` (true, or a reason) marks a
//! case that system cannot run. Its cases become rows of the report (group `peers`, with
//! the figures in the report's units: `p50_us`, `msgs_per_s`, `gb_per_s`, …) and its
//! ratios rows beside them.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{BenchError, PeersFileError};

/// The `kind` of a peers file.
pub const KIND: &str = "shmrpc-peers";

/// One case of a peers file.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerCase {
    /// Its id in the file.
    pub id: String,
    /// `iceoryx2`, `shmipc`, `ipc-channel`, …
    pub system: String,
    /// How it waits (`spin`, `spin-then-park`, `park`, `async`, or the system's own word).
    pub mode: String,
    /// `rtt` or `stream`.
    pub stream: bool,
    /// Message size in bytes.
    pub size: usize,
    /// Round-trip percentiles in ns.
    pub p50_ns: Option<f64>,
    /// 99th percentile.
    pub p99_ns: Option<f64>,
    /// 99.9th percentile.
    pub p999_ns: Option<f64>,
    /// Slowest.
    pub max_ns: Option<f64>,
    /// Stream rate.
    pub msgs_per_s: Option<f64>,
    /// Stream bytes per second.
    pub bytes_per_s: Option<f64>,
    /// Rounds measured.
    pub rounds: Option<u64>,
    /// Why the system cannot run this case, if it cannot.
    pub na: Option<String>,
}

/// A ratio of a peers file.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerRatio {
    /// The case (numerator).
    pub case: String,
    /// The baseline (denominator).
    pub baseline: String,
    /// Median of its per-round ratios.
    pub median: f64,
}

/// A loaded peers file.
#[derive(Debug, Clone)]
pub struct PeersFile {
    /// Where it was read from.
    pub path: PathBuf,
    /// When it was measured.
    pub date: String,
    /// On what.
    pub machine: String,
    /// With which command.
    pub command: String,
    /// Its cases.
    pub cases: Vec<PeerCase>,
    /// Its ratios.
    pub ratios: Vec<PeerRatio>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        // `machine` may be an object, as in this command's own JSON.
        other => other.to_string(),
    }
}

impl PeersFile {
    /// Reads and checks `path`.
    ///
    /// # Errors
    ///
    /// [`BenchError::ReadFile`] if it cannot be read, [`BenchError::PeersFile`] if it is
    /// not a peers file.
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let s = std::fs::read_to_string(path).map_err(|source| BenchError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let bad = |source| BenchError::PeersFile {
            path: path.to_owned(),
            source,
        };
        let v: Value = serde_json::from_str(&s).map_err(|e| bad(PeersFileError::Json(e)))?;
        Self::from_json(path, &v).map_err(bad)
    }

    /// Checks and converts a parsed document.
    ///
    /// # Errors
    ///
    /// [`PeersFileError::Invalid`], naming the first field that is missing or wrong.
    pub fn from_json(path: &Path, v: &Value) -> Result<Self, PeersFileError> {
        let invalid = |s: String| PeersFileError::Invalid(s);
        if v["kind"] != KIND {
            return Err(invalid(format!(
                "\"kind\" is {}, expected {KIND:?}",
                v["kind"]
            )));
        }
        if v["version"] != 1 {
            return Err(invalid(format!(
                "\"version\" is {}, expected 1",
                v["version"]
            )));
        }
        let cases = v["cases"]
            .as_array()
            .ok_or_else(|| invalid("no \"cases\" array".to_owned()))?
            .iter()
            .enumerate()
            .map(|(i, c)| case(c).map_err(|e| invalid(format!("cases[{i}]: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let ratios = match v.get("ratios") {
            None | Some(Value::Null) => Vec::new(),
            Some(r) => r
                .as_array()
                .ok_or_else(|| invalid("\"ratios\" is not an array".to_owned()))?
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let no = |k: &str| invalid(format!("ratios[{i}]: no \"{k}\""));
                    Ok(PeerRatio {
                        case: r["case"].as_str().ok_or_else(|| no("case"))?.to_owned(),
                        baseline: r["baseline"]
                            .as_str()
                            .ok_or_else(|| no("baseline"))?
                            .to_owned(),
                        median: r["median"].as_f64().ok_or_else(|| no("median"))?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(Self {
            path: path.to_owned(),
            date: text(&v["date"]),
            machine: text(&v["machine"]),
            command: text(&v["command"]),
            cases,
            ratios,
        })
    }

    /// The series name of a peer case in the chart: system and mode, and where from.
    pub fn series(&self, c: &PeerCase) -> String {
        format!(
            "{} {} (peers, {})",
            c.system,
            c.mode,
            short_date(&self.date)
        )
    }
}

/// The date part of a timestamp (`2026-11-22` of `2026-11-22 01:00:00 UTC`).
pub fn short_date(d: &str) -> &str {
    d.split([' ', 'T']).next().unwrap_or(d)
}

/// One case of the file; the error says what is wrong with it.
fn case(c: &Value) -> Result<PeerCase, String> {
    let s = |k: &str| -> Result<String, String> {
        Ok(c[k]
            .as_str()
            .ok_or_else(|| format!("no string \"{k}\""))?
            .to_owned())
    };
    let f = |k: &str| c.get(k).and_then(Value::as_f64).filter(|x| x.is_finite());
    let stream = match c["workload"].as_str() {
        Some("rtt") => false,
        Some("stream") => true,
        other => {
            return Err(format!(
                "\"workload\" is {other:?}, expected \"rtt\" or \"stream\""
            ))
        }
    };
    let na = match c.get("na") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some("n/a".to_owned()),
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let size = c["size"]
        .as_u64()
        .ok_or("no integer \"size\"")?
        .try_into()
        .map_err(|_| "\"size\" too large")?;
    Ok(PeerCase {
        id: s("id")?,
        system: s("system")?,
        mode: s("mode")?,
        stream,
        size,
        p50_ns: f("p50_ns"),
        p99_ns: f("p99_ns"),
        p999_ns: f("p999_ns"),
        max_ns: f("max_ns"),
        msgs_per_s: f("msgs_per_s"),
        bytes_per_s: f("bytes_per_s"),
        rounds: c.get("rounds").and_then(Value::as_u64),
        na,
    })
}

/// The shmrpc channel mode that a peer's mode corresponds to, for the "lower p50 and p99
/// in every mode where they have a counterpart" target: the same name, or a busy-poll /
/// a sleeping wait / an async runtime by its usual words.
pub fn counterpart(mode: &str) -> Option<&'static str> {
    let m = mode.to_ascii_lowercase();
    for exact in ["spin-then-park", "async-park", "spin", "park", "async"] {
        if m == exact {
            return Some(exact);
        }
    }
    let has = |w: &[&str]| w.iter().any(|x| m.contains(x));
    if has(&["tokio", "async"]) {
        Some("async")
    } else if has(&["spin", "busy"]) {
        Some("spin")
    } else if has(&[
        "park", "epoll", "event", "futex", "block", "wait", "sleep", "condvar",
    ]) {
        Some("park")
    } else if has(&["poll"]) {
        Some("spin")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_peers_file_loads_and_bad_ones_are_refused() {
        let v = json!({
            "kind": "shmrpc-peers", "version": 1, "date": "2026-11-22 03:00 UTC",
            "machine": "2 CPUs", "command": "peers --json x",
            "cases": [
                {"id": "rtt.iceoryx2.busy.64", "system": "iceoryx2", "mode": "busy-poll",
                 "workload": "rtt", "size": 64, "p50_ns": 7000.0, "p99_ns": 9000.0,
                 "p999_ns": 12000.0, "max_ns": 50000.0, "msgs_per_s": null,
                 "bytes_per_s": null, "rounds": 7, "na": null},
                {"id": "stream.ipc.64", "system": "ipc-channel", "mode": "park",
                 "workload": "stream", "size": 64, "p50_ns": null, "p99_ns": null,
                 "p999_ns": null, "max_ns": null, "msgs_per_s": 1e5, "bytes_per_s": 6.4e6,
                 "rounds": 7, "na": false},
                {"id": "rtt.ipc.spin.64", "system": "ipc-channel", "mode": "spin",
                 "workload": "rtt", "size": 64, "na": "no busy-poll mode"}
            ],
            "ratios": [{"case": "rtt.iceoryx2.busy.64", "baseline": "rtt.uds.64", "median": 0.5}]
        });
        let p = PeersFile::from_json(Path::new("p.json"), &v).unwrap();
        assert_eq!(p.cases.len(), 3);
        assert_eq!(p.cases[0].p99_ns, Some(9000.0));
        assert!(p.cases[1].stream && p.cases[1].p50_ns.is_none());
        assert_eq!(p.cases[2].na.as_deref(), Some("no busy-poll mode"));
        assert_eq!(p.ratios[0].median, 0.5);
        assert_eq!(
            p.series(&p.cases[0]),
            "iceoryx2 busy-poll (peers, 2026-11-22)"
        );
        let mut bad = v.clone();
        bad["kind"] = json!("other");
        assert!(PeersFile::from_json(Path::new("p.json"), &bad).is_err());
        let mut bad = v.clone();
        bad["cases"][0]["workload"] = json!("pingpong");
        match PeersFile::from_json(Path::new("p.json"), &bad) {
            Err(PeersFileError::Invalid(m)) => assert!(m.starts_with("cases[0]: "), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn modes_map_to_their_counterparts() {
        assert_eq!(counterpart("spin-then-park"), Some("spin-then-park"));
        assert_eq!(counterpart("busy-poll"), Some("spin"));
        assert_eq!(counterpart("eventfd"), Some("park"));
        assert_eq!(counterpart("tokio"), Some("async"));
        assert_eq!(counterpart("blocking"), Some("park"));
        assert_eq!(counterpart("whatever"), None);
    }
}
