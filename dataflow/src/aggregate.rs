//! What the dataflow sums: the [`Key`]s of the per-window collections and the [`Aggregate`] that is
//! their diff type.
//!
//! Every measure is an integer sum, so consolidation adds them exactly and in any order: the result is
//! the same for one worker, many workers, or a restart. Averages and rates are derived when read.
//!
//! The sums cannot overflow: every event that reaches them lies in the domain of
//! `streampulse_ingest::validate`, whose bounds let a row hold at least
//! [`ROW_CAPACITY`](streampulse_ingest::validate::ROW_CAPACITY) events (about 9.2 × 10^11) even when
//! each is at the maximum; a window lasts at most a day, so a row would need more than 10 million
//! events per second into one key for a whole day. The test `sums_at_the_bounds_stay_exact` checks it.

use differential_dataflow::difference::{Abelian, IsZero, Monoid, Multiply, Semigroup};
use serde::{Deserialize, Serialize};
use streampulse_ingest::{Event, Outcome};

use crate::window::Window;

/// Which per-window collection a row belongs to, and its natural key there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    /// `window_totals`: one row per window.
    Total,
    /// `content_stats`.
    Content { content_id: String, title: String },
    /// `region_health`.
    Region(String),
    /// `device_stats`.
    Device { device: String, os_version: String },
    /// `error_stats`: failed downloads by region and error code.
    Error { region: String, error_code: String },
    /// `late_events`: events not applied because they were late, by the partition they came from.
    Late { partition: u32 },
}

/// A row of a per-window collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    pub window: Window,
    pub key: Key,
}

/// Sums over the events of one row. This is differential's diff type: the dataflow never sees an
/// event, only these sums, pre-combined per batch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Aggregate {
    pub downloads: i64,
    pub successful: i64,
    pub failed: i64,
    pub size_mb: i64,
    pub duration_s: i64,
    /// Sum of `speed_mbps` over successful downloads, in thousandths of a Mbps.
    pub speed_milli: i64,
    /// Failed downloads whose error code is `cdn_timeout`.
    pub cdn_timeouts: i64,
}

impl Aggregate {
    /// The contribution of one event.
    pub fn of(event: &Event) -> Aggregate {
        let outcome = event.outcome();
        let success = outcome == Some(Outcome::Success);
        let failed = outcome == Some(Outcome::Failed);
        Aggregate {
            downloads: 1,
            successful: success as i64,
            failed: failed as i64,
            size_mb: event.content.size_mb as i64,
            duration_s: event.download.duration_seconds as i64,
            speed_milli: if success {
                speed_milli(event.download.speed_mbps)
            } else {
                0
            },
            cdn_timeouts: (failed && event.download.error_code.as_deref() == Some("cdn_timeout"))
                as i64,
        }
    }

    pub fn success_rate(&self) -> f64 {
        ratio(self.successful, self.downloads)
    }

    pub fn failure_rate(&self) -> f64 {
        ratio(self.failed, self.downloads)
    }

    pub fn cdn_timeout_share(&self) -> f64 {
        ratio(self.cdn_timeouts, self.downloads)
    }

    /// Average speed of successful downloads, in Mbps (0 when there were none).
    pub fn avg_speed_mbps(&self) -> f64 {
        ratio(self.speed_milli, self.successful) / 1000.0
    }

    pub fn avg_duration_s(&self) -> f64 {
        ratio(self.duration_s, self.downloads)
    }

    pub fn total_size_gb(&self) -> f64 {
        self.size_mb as f64 / 1024.0
    }

    pub fn negated(mut self) -> Aggregate {
        self.negate();
        self
    }
}

/// A download speed in thousandths of a Mbps, the unit in which speeds are summed.
pub fn speed_milli(speed_mbps: f32) -> i64 {
    (speed_mbps as f64 * 1000.0).round() as i64
}

fn ratio(num: i64, den: i64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

impl IsZero for Aggregate {
    fn is_zero(&self) -> bool {
        *self == Aggregate::default()
    }
}

impl Semigroup for Aggregate {
    fn plus_equals(&mut self, rhs: &Self) {
        self.downloads += rhs.downloads;
        self.successful += rhs.successful;
        self.failed += rhs.failed;
        self.size_mb += rhs.size_mb;
        self.duration_s += rhs.duration_s;
        self.speed_milli += rhs.speed_milli;
        self.cdn_timeouts += rhs.cdn_timeouts;
    }
}

impl Monoid for Aggregate {
    fn zero() -> Self {
        Aggregate::default()
    }
}

impl Abelian for Aggregate {
    fn negate(&mut self) {
        self.downloads = -self.downloads;
        self.successful = -self.successful;
        self.failed = -self.failed;
        self.size_mb = -self.size_mb;
        self.duration_s = -self.duration_s;
        self.speed_milli = -self.speed_milli;
        self.cdn_timeouts = -self.cdn_timeouts;
    }
}

/// Scaling by a count, so that sums can pass through a join with a collection of plain rows (the
/// forecasts' semijoin with the settled windows).
impl Multiply<isize> for Aggregate {
    type Output = Aggregate;
    fn multiply(self, rhs: &isize) -> Aggregate {
        let k = *rhs as i64;
        Aggregate {
            downloads: self.downloads * k,
            successful: self.successful * k,
            failed: self.failed * k,
            size_mb: self.size_mb * k,
            duration_s: self.duration_s * k,
            speed_milli: self.speed_milli * k,
            cdn_timeouts: self.cdn_timeouts * k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streampulse_ingest::{Generator, Scenario};

    #[test]
    fn sums_and_negation_cancel() {
        let g = Generator::new(5, Scenario::CdnOutage, 0, 100.0);
        let mut total = Aggregate::default();
        let events: Vec<_> = (0..500).map(|i| g.event(i)).collect();
        for e in &events {
            total.plus_equals(&Aggregate::of(e));
        }
        assert_eq!(total.downloads, 500);
        assert_eq!(
            total.successful
                + total.failed
                + events
                    .iter()
                    .filter(|e| e.download.status == "cancelled")
                    .count() as i64,
            500
        );
        total.plus_equals(&total.negated());
        assert!(total.is_zero());
    }

    #[test]
    fn sums_at_the_bounds_stay_exact() {
        use streampulse_ingest::validate::{
            self, MAX_DURATION_S, MAX_SIZE_MB, MAX_SPEED_MBPS, ROW_CAPACITY,
        };
        let mut e = Generator::new(5, Scenario::Clean, 1_700_000_000_000, 100.0).event(0);
        e.download.status = "success".into();
        e.download.error_code = None;
        e.content.size_mb = MAX_SIZE_MB;
        e.download.duration_seconds = MAX_DURATION_S;
        e.download.speed_mbps = MAX_SPEED_MBPS;
        validate::check(&e).expect("the bounds are inside the domain");
        let one = Aggregate::of(&e);
        // Every column of a full row fits: the largest per-event addend times the capacity.
        for column in [one.downloads, one.size_mb, one.duration_s, one.speed_milli] {
            assert!(column.checked_mul(ROW_CAPACITY).is_some(), "{column}");
        }
        // And adding events at the bounds one by one is exact (compared with i128 arithmetic),
        // far beyond where i32 sizes or f32 speeds would have lost or wrapped.
        let mut sum = Aggregate::default();
        let n = 1_000_000i128;
        for _ in 0..n {
            sum.plus_equals(&one);
        }
        assert_eq!(sum.speed_milli as i128, n * MAX_SPEED_MBPS as i128 * 1000);
        assert_eq!(sum.size_mb as i128, n * MAX_SIZE_MB as i128);
        assert!(sum.avg_speed_mbps() == MAX_SPEED_MBPS as f64);
    }

    #[test]
    fn derived_measures() {
        let a = Aggregate {
            downloads: 10,
            successful: 8,
            failed: 2,
            speed_milli: 8 * 30_500,
            duration_s: 100,
            size_mb: 2048,
            cdn_timeouts: 1,
        };
        assert_eq!(a.success_rate(), 0.8);
        assert_eq!(a.failure_rate(), 0.2);
        assert_eq!(a.avg_speed_mbps(), 30.5);
        assert_eq!(a.avg_duration_s(), 10.0);
        assert_eq!(a.total_size_gb(), 2.0);
        assert_eq!(Aggregate::default().avg_speed_mbps(), 0.0);
    }
}
