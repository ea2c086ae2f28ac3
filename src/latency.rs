//! Round-trip time recording: an HDR histogram in nanoseconds and the summary printed from it.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest value the histogram tracks, in nanoseconds (60 s); longer RTTs are clamped to it.
const MAX_NS: u64 = 60_000_000_000;

/// RTTs of one peer, in nanoseconds, with 3 significant digits.
#[derive(Clone, Debug)]
pub struct Recorder {
    hist: Histogram<u64>,
}

impl Recorder {
    /// An empty recorder covering 1 ns to 60 s.
    pub fn new() -> anyhow::Result<Recorder> {
        let hist = Histogram::<u64>::new_with_bounds(1, MAX_NS, 3)
            .map_err(|e| anyhow::anyhow!("cannot create the RTT histogram: {e:?}"))?;
        Ok(Recorder { hist })
    }

    /// Records one round trip.
    pub fn record(&mut self, rtt: Duration) {
        let ns = u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.hist.saturating_record(ns);
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// The cumulative distribution at `points` quantiles spread evenly (and the tail at
    /// 99.9 % and 100 %), as (microseconds, quantile) pairs for plotting.
    pub fn cdf(&self, points: u32) -> Vec<(f64, f64)> {
        if self.hist.is_empty() {
            return Vec::new();
        }
        let mut qs: Vec<f64> = (0..points)
            .map(|i| f64::from(i) / f64::from(points))
            .collect();
        qs.extend([0.99, 0.999, 1.0]);
        qs.sort_by(f64::total_cmp);
        qs.dedup();
        qs.into_iter()
            .map(|q| (self.hist.value_at_quantile(q) as f64 / 1000.0, q))
            .collect()
    }

    /// The distribution so far; `None` if nothing was recorded.
    pub fn summary(&self) -> Option<Summary> {
        if self.hist.is_empty() {
            return None;
        }
        let h = &self.hist;
        Some(Summary {
            count: h.len(),
            min_ns: h.min(),
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            mean_ns: h.mean(),
        })
    }
}

/// The figures `weft transport ping` prints for one peer. Quantiles are as precise as the
/// histogram (3 significant digits).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Round trips recorded.
    pub count: u64,
    /// Fastest round trip.
    pub min_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Slowest round trip.
    pub max_ns: u64,
    /// Arithmetic mean.
    pub mean_ns: f64,
}

impl Summary {
    /// The printed columns, in microseconds: min, p50, p90, p99, p99.9, max, mean.
    pub fn columns_us(&self) -> [f64; 7] {
        [
            self.min_ns as f64,
            self.p50_ns as f64,
            self.p90_ns as f64,
            self.p99_ns as f64,
            self.p999_ns as f64,
            self.max_ns as f64,
            self.mean_ns,
        ]
        .map(|ns| ns / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_recorder_has_no_summary() {
        assert!(Recorder::new().unwrap().summary().is_none());
    }

    #[test]
    fn summarizes_within_histogram_precision() {
        let mut r = Recorder::new().unwrap();
        for us in 1..=1000u64 {
            r.record(Duration::from_micros(us));
        }
        let s = r.summary().unwrap();
        assert_eq!(s.count, 1000);
        let close = |got: u64, want_us: u64| {
            let want = want_us * 1000;
            got.abs_diff(want) <= want / 500 + 1
        };
        assert!(close(s.min_ns, 1), "{s:?}");
        assert!(close(s.p50_ns, 500), "{s:?}");
        assert!(close(s.p90_ns, 900), "{s:?}");
        assert!(close(s.p99_ns, 990), "{s:?}");
        assert!(close(s.p999_ns, 999), "{s:?}");
        assert!(close(s.max_ns, 1000), "{s:?}");
        assert!((s.mean_ns - 500_500.0).abs() < 1_000.0, "{s:?}");
        let cols = s.columns_us();
        assert!((cols[1] - 500.0).abs() < 1.0, "{cols:?}");
    }

    #[test]
    fn merged_recorders_and_their_cdf() {
        let (mut a, mut b) = (Recorder::new().unwrap(), Recorder::new().unwrap());
        for us in 1..=100u64 {
            a.record(Duration::from_micros(us));
            b.record(Duration::from_micros(100 + us));
        }
        a.merge(&b);
        assert_eq!(a.summary().unwrap().count, 200);
        let cdf = a.cdf(10);
        assert_eq!(cdf.first().unwrap().1, 0.0);
        assert_eq!(cdf.last().unwrap().1, 1.0);
        assert!(
            cdf.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 < w[1].1),
            "{cdf:?}"
        );
        let median = cdf.iter().find(|(_, q)| *q == 0.5).unwrap().0;
        assert!((median - 100.0).abs() < 1.0, "{median}");
    }

    #[test]
    fn clamps_huge_and_zero_rtts() {
        let mut r = Recorder::new().unwrap();
        r.record(Duration::ZERO);
        r.record(Duration::from_secs(3600));
        let s = r.summary().unwrap();
        assert_eq!(s.count, 2);
        assert!(s.min_ns >= 1);
        assert!(s.max_ns >= MAX_NS);
    }
}
