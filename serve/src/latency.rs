//! Latency histograms, counted where the latency ends and rendered by `/metrics`.
//!
//! ```text
//!   collector: an update reaches the view  ──observe(now − newest record time)──▶ event_to_view
//!   sink: a transaction commits            ──observe(now − newest record time)──▶ event_to_postgres
//! ```
//!
//! The record time is the Kafka timestamp of the newest record a batch covers (for the built-in
//! generator, the moment it released the event), so each observation is how old the newest data
//! was when it became visible there. Buckets are fixed; counting is a few atomic adds.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in seconds (`+Inf` is implied).
pub const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A Prometheus histogram of seconds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (the last is `+Inf`), observations at or below its bound and above the previous.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observations, in microseconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let bucket = BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Observes the age of data whose newest record was written at `record_ms`.
    pub fn observe_since(&self, record_ms: i64) {
        let now = jiff::Timestamp::now().as_millisecond();
        self.observe((now - record_ms) as f64 / 1000.0);
    }

    /// The family in Prometheus text: `# HELP`, `# TYPE`, cumulative buckets, sum and count.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// The pipeline's latency histograms.
#[derive(Debug, Default)]
pub struct Latency {
    pub event_to_view: Histogram,
    pub event_to_postgres: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        h.observe(400.0);
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "An x.");
        assert!(out.contains("# TYPE x_seconds histogram"));
        assert!(out.contains("x_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.25\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"300\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("x_seconds_count 3\n"));
        assert!(out.contains("x_seconds_sum 400.203"));
    }
}
