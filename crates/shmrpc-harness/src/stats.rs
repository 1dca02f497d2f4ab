//! Medians and quantiles. An empty input has no median: these return `None` rather than a
//! number (0 or NaN) that could end up in a report looking like a measurement.

/// The median of `values`: the middle value, or the mean of the middle two for an even
/// count. Values that are not finite (NaN marks a missing measurement) are left out;
/// `None` if no finite value remains.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// The index of the `q`-quantile (`q` in 0..=1, clamped) in a sorted series of `n`
/// samples, by nearest rank: the smallest sample with at least a fraction `q` of the samples
/// at or below it. `None` if `n` is 0.
pub fn rank(n: usize, q: f64) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    Some(((q * n as f64).ceil() as usize).clamp(1, n) - 1)
}

/// The `q`-quantile of `sorted` (ascending) by nearest rank (see [`rank`]); `None` if
/// there are no samples. `quantile(s, 0.5)` is the lower median, an actual sample.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    rank(sorted.len(), q).map(|i| sorted[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0, f64::INFINITY, 5.0]), Some(3.0));
        assert_eq!(median(&[f64::NAN]), None);
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let s: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&s, 0.5), Some(500));
        assert_eq!(quantile(&s, 0.99), Some(990));
        assert_eq!(quantile(&s, 0.999), Some(999));
        assert_eq!(quantile(&s, 1.0), Some(1000));
        assert_eq!(quantile(&s, 0.0), Some(1));
        assert_eq!(quantile(&s, 2.0), Some(1000));
        assert_eq!(quantile(&[7u64], 0.5), Some(7));
        assert_eq!(quantile::<u64>(&[], 0.5), None);
        assert_eq!(rank(0, 0.5), None);
        assert_eq!(rank(4, 0.5), Some(1));
    }
}
