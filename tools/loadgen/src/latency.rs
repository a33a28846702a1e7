//! Send-to-delivery latency, in microseconds, as an HDR histogram.

use hdrhistogram::Histogram;

/// Highest latency recorded exactly (60 s); above it, values are clamped.
const MAX_MICROS: u64 = 60_000_000;

/// A latency histogram that each task fills and the report merges.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

/// The percentiles the report shows, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Default for Latency {
    fn default() -> Self {
        // Three significant digits over 1 µs .. 60 s are valid bounds.
        Self(Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds"))
    }
}

impl Latency {
    /// Records one latency.
    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &Latency) {
        // Both share the same bounds, so adding cannot fail.
        self.0.add(&other.0).expect("histograms share bounds");
    }

    /// The percentiles.
    pub fn summary(&self) -> Summary {
        let h = &self.0;
        Summary {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Latency::default(), Latency::default(), Latency::default());
        for v in 1..=1000u64 {
            if v % 3 == 0 {
                a.record(v)
            } else {
                b.record(v)
            }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a.summary(), all.summary());
        let s = all.summary();
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50), "{s:?}");
        assert!((989..=991).contains(&s.p99), "{s:?}");
        assert_eq!(s.max, 1000);
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = Latency::default();
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.summary().count, 2);
    }
}
