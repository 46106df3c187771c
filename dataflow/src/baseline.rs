//! Each region measured against its own recent past: the trailing [`Baseline`] of a region in a
//! window, the scores that compare the window with it, and the knobs of the three baseline rules
//! ([`Baselines`]). The rules themselves, which read these scores, are in [`crate::rules`]
//! ([`crate::Rules::judge`]); this module knows nothing of rules.
//!
//! A baseline covers the `windows` windows before the one judged, and describes the region when it
//! is up: it sums the windows of the trail in which the region had events. A judged window is always
//! a *stream window* (one in which some region had events); a region without events there counted 0
//! downloads, which is how a silent outage shows: the observed value is 0, not a missing row. The
//! silent windows themselves stay out of the trail, so an outage does not become the region's
//! normal: a silent region is flagged until fewer than `min_windows` windows with events remain in
//! its trail (with the defaults, for 16 windows). Windows in which the whole stream was quiet (the
//! producer stopped, say) are never judged, so they do not look like an outage.
//!
//! Everything a baseline holds is an integer sum (downloads, their squares, failures), so it is
//! exact and the same on any number of workers. Each error code of a region has a baseline too
//! ([`baselines_of`]): its share of the region's downloads, over the same windows; the mean, spread, rates and scores are computed
//! when read. A window is judged once the stream has *settled* it: some event lies in the window
//! that starts at or after the judged window's end plus the lateness ([`settled`]). An open window
//! that is still filling would look like a drop in traffic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::error::Error;
use crate::window::Window;

/// The knobs of the baseline rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Baselines {
    /// How many windows before the judged one the baseline covers.
    pub windows: u32,
    /// No judgement until the baseline holds this many stream windows.
    pub min_windows: u32,
    /// No judgement while the region's mean downloads per window are below this.
    pub min_mean: f64,
    /// TRAFFIC_BELOW/ABOVE_BASELINE: the traffic score must reach this (below: its negative).
    pub traffic_score: f64,
    /// TRAFFIC_BELOW_BASELINE also needs downloads at most (1 − this) × the mean.
    pub traffic_drop: f64,
    /// TRAFFIC_ABOVE_BASELINE also needs downloads at least (1 + this) × the mean.
    pub traffic_rise: f64,
    /// ERROR_RATE_ABOVE_BASELINE: the error score must reach this …
    pub error_score: f64,
    /// … and the error rate must exceed the baseline's by at least this (a fraction of downloads).
    pub error_rise: f64,
}

impl Default for Baselines {
    fn default() -> Self {
        Baselines {
            windows: 20,
            min_windows: 5,
            min_mean: 10.0,
            traffic_score: 4.0,
            traffic_drop: 0.5,
            traffic_rise: 1.0,
            error_score: 5.0,
            error_rise: 0.05,
        }
    }
}

impl Baselines {
    /// Checks every knob; the first one out of range is the error.
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=120).contains(&self.windows) {
            return Err(Error::invalid(
                "baselines.windows",
                "a baseline covers between 1 and 120 windows",
            ));
        }
        if !(1..=self.windows).contains(&self.min_windows) {
            return Err(Error::invalid(
                "baselines.min_windows",
                "the minimum of baseline windows must lie between 1 and the baseline's windows",
            ));
        }
        let positive = [
            ("baselines.min_mean", self.min_mean),
            ("baselines.traffic_score", self.traffic_score),
            ("baselines.traffic_rise", self.traffic_rise),
            ("baselines.error_score", self.error_score),
        ];
        if let Some((field, _)) = positive
            .into_iter()
            .find(|(_, v)| !(v.is_finite() && *v >= 0.0))
        {
            return Err(Error::invalid(
                field,
                "baseline scores and factors must be finite and not negative",
            ));
        }
        let fractions = [
            ("baselines.traffic_drop", self.traffic_drop),
            ("baselines.error_rise", self.error_rise),
        ];
        if let Some((field, _)) = fractions
            .into_iter()
            .find(|(_, v)| !(0.0..=1.0).contains(v))
        {
            return Err(Error::invalid(
                field,
                "baseline fractions must lie between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// A region's trailing baseline in one window, and the window's own sums.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Baseline {
    /// Windows of the trail in which the region had events (the divisor of the mean).
    pub windows: u32,
    /// Downloads over those windows.
    pub downloads: i64,
    /// The sum over those windows of each window's downloads squared.
    pub downloads_sq: i128,
    /// Failed downloads over those windows.
    pub failed: i64,
    /// The region's sums in the judged window (all zero when it had no events).
    pub observed: Aggregate,
}

impl Baseline {
    /// Mean downloads per window of the trail in which the region had events.
    pub fn mean(&self) -> f64 {
        if self.windows == 0 {
            0.0
        } else {
            self.downloads as f64 / self.windows as f64
        }
    }

    /// Standard deviation of downloads over those windows (exact up to the final division).
    pub fn spread(&self) -> f64 {
        if self.windows == 0 {
            return 0.0;
        }
        let n = self.windows as i128;
        let sum = self.downloads as i128;
        // n²·variance = n·Σx² − (Σx)², an exact integer that is never negative.
        let scaled = (n * self.downloads_sq - sum * sum).max(0);
        (scaled as f64).sqrt() / n as f64
    }

    /// The baseline's error rate: failures over downloads, pooled across its windows.
    pub fn error_rate(&self) -> f64 {
        if self.downloads == 0 {
            0.0
        } else {
            self.failed as f64 / self.downloads as f64
        }
    }

    /// How many spreads the window's downloads lie from the mean. The spread is floored at the
    /// noise of a Poisson count (√mean) and at 1, so a baseline that happened to be flat does not
    /// turn every wobble into an anomaly.
    pub fn traffic_score(&self) -> f64 {
        let mean = self.mean();
        let scale = self.spread().max(mean.sqrt()).max(1.0);
        (self.observed.downloads as f64 - mean) / scale
    }

    /// How many standard errors the window's error rate lies above the baseline's: the noise of a
    /// binomial count at the baseline rate over the window's downloads. The rate under the square
    /// root is smoothed ((failed + 1) / (downloads + 2)) so that a baseline without failures still
    /// has a noise; 0 when the window had no downloads.
    pub fn error_score(&self) -> f64 {
        let n = self.observed.downloads;
        if n == 0 {
            return 0.0;
        }
        let smoothed = (self.failed as f64 + 1.0) / (self.downloads as f64 + 2.0);
        let noise = (smoothed * (1.0 - smoothed) / n as f64).sqrt();
        (self.observed.failure_rate() - self.error_rate()) / noise
    }
}

/// The trailing sums of one region before a window, as the dataflow and the oracle collect them:
/// `add` each earlier window in which the region had events.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Trail {
    pub windows: u32,
    pub downloads: i64,
    pub downloads_sq: i128,
    pub failed: i64,
}

impl Trail {
    pub fn add(&mut self, window: &Aggregate) {
        self.windows += 1;
        self.downloads += window.downloads;
        self.downloads_sq += window.downloads as i128 * window.downloads as i128;
        self.failed += window.failed;
    }

    pub fn baseline(self, observed: Aggregate) -> Baseline {
        Baseline {
            windows: self.windows,
            downloads: self.downloads,
            downloads_sq: self.downloads_sq,
            failed: self.failed,
            observed,
        }
    }
}

/// The baselines of one region in one window, from what it offered to the window: its own sums
/// (offset 0) and those of the trailing windows (offsets 1 to `windows`), as a region row (`None`)
/// or as an error code's row (`Some(code)`; its `failed` counts failures with that code). Returns
/// the region's baseline first, then one per error code seen in the trail or the window, whose
/// `failed` and `observed.failed` count that code's failures against the region's downloads (so
/// its error rate is the code's share of the region's downloads). Nothing without a trail.
pub fn baselines_of<'a>(
    offered: impl IntoIterator<Item = (u32, Option<&'a str>, &'a Aggregate)>,
) -> Vec<(Option<String>, Baseline)> {
    let mut trail = Trail::default();
    let mut observed = Aggregate::default();
    // Per code: failures over the trail, and in the window.
    let mut codes: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    for (offset, code, agg) in offered {
        match (offset, code) {
            (0, None) => observed = *agg,
            (_, None) => trail.add(agg),
            (0, Some(code)) => codes.entry(code).or_default().1 += agg.failed,
            (_, Some(code)) => codes.entry(code).or_default().0 += agg.failed,
        }
    }
    if trail.downloads == 0 {
        return Vec::new();
    }
    let mut out = vec![(None, trail.baseline(observed))];
    for (code, (before, now)) in codes {
        let mut baseline = trail.baseline(Aggregate {
            failed: now,
            ..observed
        });
        baseline.failed = before;
        out.push((Some(code.to_string()), baseline));
    }
    out
}

/// Whether the stream has moved past `window`, given its newest stream window: some event lies in
/// a window starting at or after the judged window's end plus the lateness, so the window is as
/// complete as an on-time stream makes it.
pub fn settled(window: Window, newest: Window, window_ms: i64, lateness_ms: i64) -> bool {
    Window::of(window.end(window_ms) + lateness_ms, window_ms) <= newest
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A baseline over `history` (downloads per window; `failed` failures in the first), observing
    /// `observed` = (downloads, failed).
    pub(crate) fn baseline(history: &[i64], failed: i64, observed: (i64, i64)) -> Baseline {
        let mut trail = Trail::default();
        for (i, &d) in history.iter().enumerate() {
            trail.add(&Aggregate {
                downloads: d,
                failed: if i == 0 { failed } else { 0 },
                ..Aggregate::default()
            });
        }
        trail.baseline(Aggregate {
            downloads: observed.0,
            failed: observed.1,
            successful: observed.0 - observed.1,
            ..Aggregate::default()
        })
    }

    #[test]
    fn mean_spread_and_scores_by_hand() {
        // 100, 110, 90, 100, 100: mean 100, variance (0 + 100 + 100 + 0 + 0) / 5 = 40.
        let b = baseline(&[100, 110, 90, 100, 100], 50, (40, 2));
        assert_eq!(b.mean(), 100.0);
        assert!((b.spread() - 40f64.sqrt()).abs() < 1e-12);
        // The spread (6.3) is below √100 = 10, so the scale is 10: (40 − 100) / 10.
        assert_eq!(b.traffic_score(), -6.0);
        assert_eq!(b.error_rate(), 0.1);
        // 2 of 40 failed: 0.05 − 0.1 below the baseline, a negative score.
        assert!(b.error_score() < 0.0);
    }

    #[test]
    fn a_region_and_its_error_codes_get_baselines_over_the_same_windows() {
        let sums = |downloads, failed| Aggregate {
            downloads,
            failed,
            ..Aggregate::default()
        };
        let (now, before, before_code, now_code) =
            (sums(50, 10), sums(100, 4), sums(3, 3), sums(8, 8));
        let offered = [
            (0, None, &now),
            (1, None, &before),
            (2, None, &before),
            (1, Some("cdn_timeout"), &before_code),
            (0, Some("cdn_timeout"), &now_code),
        ];
        let got = baselines_of(offered);
        assert_eq!(got.len(), 2);
        let (region, code) = (&got[0].1, &got[1].1);
        assert_eq!(got[0].0, None);
        assert_eq!(
            (region.windows, region.downloads, region.failed),
            (2, 200, 8)
        );
        assert_eq!(got[1].0.as_deref(), Some("cdn_timeout"));
        // The code's share: 3 of the trail's 200 downloads, 8 of the window's 50.
        assert_eq!((code.windows, code.downloads, code.failed), (2, 200, 3));
        assert_eq!((code.observed.downloads, code.observed.failed), (50, 8));
        assert_eq!(code.error_rate(), 0.015);
        // Nothing without a trail.
        assert!(baselines_of([(0, None, &now)]).is_empty());
    }

    #[test]
    fn a_window_settles_once_the_stream_passes_its_end_plus_lateness() {
        let w = 60_000;
        assert!(!settled(Window(0), Window(0), w, 5_000));
        // 0's end plus 5 s lateness (65 000) lies in the window starting at 60 000: once the stream
        // has events there, window 0 is judged.
        assert!(settled(Window(0), Window(w), w, 5_000));
        // With a lateness of a whole window the stream must reach two windows on.
        assert!(!settled(Window(0), Window(w), w, w));
        assert!(settled(Window(0), Window(2 * w), w, w));
    }

    #[test]
    fn invalid_knobs_name_their_field() {
        assert_eq!(Baselines::default().validate(), Ok(()));
        let bad = Baselines {
            min_windows: 21,
            ..Baselines::default()
        };
        assert!(
            matches!(bad.validate(), Err(Error::InvalidConfig { field, .. }) if field == "baselines.min_windows")
        );
        let bad = Baselines {
            traffic_drop: 1.5,
            ..Baselines::default()
        };
        assert!(
            matches!(bad.validate(), Err(Error::InvalidConfig { field, .. }) if field == "baselines.traffic_drop")
        );
    }
}
