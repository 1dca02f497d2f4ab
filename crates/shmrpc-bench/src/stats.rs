//! Latency percentiles (nearest rank and medians from `shmrpc_harness`) and
//! human-readable figures.

use shmrpc_harness::{median, quantile};

/// Latency percentiles of one series of round trips, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub samples: usize,
}

impl Latency {
    /// Summarises `ns` (round trips in nanoseconds; sorted in place). With no samples the
    /// percentiles are NaN (not measured), never a made-up 0.
    pub fn from_nanos(ns: &mut [u64]) -> Self {
        ns.sort_unstable();
        let us = |q: f64| quantile(ns, q).map_or(f64::NAN, |v| v as f64 / 1000.0);
        Self {
            p50: us(0.50),
            p99: us(0.99),
            p999: us(0.999),
            max: us(1.0),
            samples: ns.len(),
        }
    }

    /// The median of each field over several repetitions (NaN if there are none).
    pub fn median_of(reps: &[Latency]) -> Self {
        let m = |f: fn(&Latency) -> f64| {
            median(&reps.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        Self {
            p50: m(|l| l.p50),
            p99: m(|l| l.p99),
            p999: m(|l| l.p999),
            max: m(|l| l.max),
            samples: reps.iter().map(|l| l.samples).sum(),
        }
    }
}

/// Microseconds with a precision that suits the magnitude.
pub fn fmt_us(us: f64) -> String {
    if us < 10.0 {
        format!("{us:.2} µs")
    } else if us < 100.0 {
        format!("{us:.1} µs")
    } else {
        format!("{us:.0} µs")
    }
}

/// Messages per second in millions.
pub fn fmt_mps(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M msg/s", per_s / 1e6)
    } else {
        format!("{:.0} k msg/s", per_s / 1e3)
    }
}

/// Bytes per second in GB/s (10^9).
pub fn fmt_gbps(bytes_per_s: f64) -> String {
    format!("{:.2} GB/s", bytes_per_s / 1e9)
}

/// A count with thousands separators.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A size in B, KiB or MiB.
pub fn fmt_size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut ns: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let l = Latency::from_nanos(&mut ns);
        assert_eq!(l.p50, 500.0);
        assert_eq!(l.p99, 990.0);
        assert_eq!(l.p999, 999.0);
        assert_eq!(l.max, 1000.0);
        assert_eq!(l.samples, 1000);
    }

    #[test]
    fn no_samples_are_not_measured_and_medians_skip_them() {
        let none = Latency::from_nanos(&mut []);
        assert!(none.p50.is_nan() && none.max.is_nan());
        let one = Latency::from_nanos(&mut [2000]);
        let m = Latency::median_of(&[one, none, one]);
        assert_eq!(m.p50, 2.0);
        assert_eq!(m.samples, 2);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_count(1234567), "1,234,567");
        assert_eq!(fmt_count(100), "100");
        assert_eq!(fmt_size(64), "64 B");
        assert_eq!(fmt_size(65536), "64 KiB");
        assert_eq!(fmt_size(8 << 20), "8 MiB");
    }
}
