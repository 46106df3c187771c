//! Trending forecasts: per title, the next window's downloads forecast from its recent windows, and a
//! *rising* score that ranks titles by how far the forecast runs ahead of their recent mean.
//!
//! The method is Holt's linear exponential smoothing (a level and a trend, each smoothed), chosen
//! because every step can be explained and recomputed by hand. It runs over a fixed span of the
//! title's most recent settled windows (`windows`, oldest first, 0 where the title had no
//! downloads), starting from level = the first value and trend = 0. A fixed span, rather than the
//! whole history, keeps the forecast a function of those windows alone: the same on every worker,
//! after a restart, and after retention has let older windows go.
//!
//! rising = (forecast − mean of the span) / √(mean + 1): a title that grows from 5 to 40 downloads
//! rises far more than one that wobbles around 500. Values are kept in thousandths (integers), so
//! the rows the dataflow emits compare exactly.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The knobs of the forecasts.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecasts {
    /// How many settled windows a forecast looks at (the judged one and those before it).
    pub windows: u32,
    /// Smoothing of the level (0 < α ≤ 1; higher follows the latest window more closely).
    pub alpha: f64,
    /// Smoothing of the trend (0 ≤ β ≤ 1).
    pub beta: f64,
}

impl Default for Forecasts {
    fn default() -> Self {
        Forecasts {
            windows: 10,
            alpha: 0.5,
            beta: 0.3,
        }
    }
}

impl Forecasts {
    pub fn validate(&self) -> Result<(), Error> {
        if !(2..=120).contains(&self.windows) {
            return Err(Error::invalid(
                "forecasts.windows",
                "a forecast looks at between 2 and 120 windows",
            ));
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(Error::invalid(
                "forecasts.alpha",
                "the level's smoothing must lie in (0, 1]",
            ));
        }
        if !(0.0..=1.0).contains(&self.beta) {
            return Err(Error::invalid(
                "forecasts.beta",
                "the trend's smoothing must lie in [0, 1]",
            ));
        }
        Ok(())
    }
}

/// A title's forecast made at the end of a window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Forecast {
    /// Downloads in the span's windows, oldest first; the last is the window the forecast is made at.
    pub history: Vec<i64>,
    /// Smoothed level and trend after the last window, in thousandths of a download.
    pub level_milli: i64,
    pub trend_milli: i64,
    /// The forecast of the next window's downloads (level + trend, never below 0), in thousandths.
    pub next_milli: i64,
    /// The rising score, in thousandths.
    pub rising_milli: i64,
}

impl Forecast {
    /// The forecast from `history` (oldest first, at least one value).
    pub fn of(history: Vec<i64>, knobs: &Forecasts) -> Forecast {
        let (alpha, beta) = (knobs.alpha, knobs.beta);
        let mut level = history.first().copied().unwrap_or(0) as f64;
        let mut trend = 0.0;
        for &x in history.iter().skip(1) {
            let previous = level;
            level = alpha * x as f64 + (1.0 - alpha) * (level + trend);
            trend = beta * (level - previous) + (1.0 - beta) * trend;
        }
        let next = (level + trend).max(0.0);
        let mean = history.iter().sum::<i64>() as f64 / history.len().max(1) as f64;
        let rising = (next - mean) / (mean + 1.0).sqrt();
        Forecast {
            history,
            level_milli: milli(level),
            trend_milli: milli(trend),
            next_milli: milli(next),
            rising_milli: milli(rising),
        }
    }

    pub fn next(&self) -> f64 {
        self.next_milli as f64 / 1000.0
    }

    pub fn rising(&self) -> f64 {
        self.rising_milli as f64 / 1000.0
    }

    pub fn level(&self) -> f64 {
        self.level_milli as f64 / 1000.0
    }

    pub fn trend(&self) -> f64 {
        self.trend_milli as f64 / 1000.0
    }

    /// Downloads in the window the forecast was made at.
    pub fn latest(&self) -> i64 {
        self.history.last().copied().unwrap_or(0)
    }
}

fn milli(value: f64) -> i64 {
    (value * 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holt_by_hand() {
        let knobs = Forecasts::default();
        // 10, 20, 30: level 10; then 0.5·20 + 0.5·10 = 15, trend 0.3·5 = 1.5;
        // then 0.5·30 + 0.5·16.5 = 23.25, trend 0.3·8.25 + 0.7·1.5 = 3.525. Next: 26.775.
        let f = Forecast::of(vec![10, 20, 30], &knobs);
        assert_eq!(f.level_milli, 23_250);
        assert_eq!(f.trend_milli, 3_525);
        assert_eq!(f.next_milli, 26_775);
        // Mean 20: (26.775 − 20) / √21.
        assert_eq!(
            f.rising_milli,
            ((6.775 / 21f64.sqrt()) * 1000.0).round() as i64
        );
        assert_eq!(f.latest(), 30);
    }

    #[test]
    fn a_growing_small_title_rises_above_a_steady_big_one() {
        let knobs = Forecasts::default();
        let steady = Forecast::of(
            vec![500, 510, 490, 505, 495, 500, 502, 498, 500, 500],
            &knobs,
        );
        let viral = Forecast::of(vec![0, 0, 0, 0, 0, 0, 5, 10, 20, 40], &knobs);
        assert!(viral.rising() > 5.0 * steady.rising().abs().max(1.0));
        // A fading title's forecast never goes below zero.
        let fading = Forecast::of(vec![100, 50, 10, 0, 0], &knobs);
        assert!(fading.next() >= 0.0);
        assert!(fading.rising() < 0.0);
    }

    #[test]
    fn invalid_knobs_are_refused() {
        assert_eq!(Forecasts::default().validate(), Ok(()));
        for bad in [
            Forecasts {
                windows: 1,
                ..Forecasts::default()
            },
            Forecasts {
                alpha: 0.0,
                ..Forecasts::default()
            },
            Forecasts {
                beta: f64::NAN,
                ..Forecasts::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
