//! The alert rules of SPEC §5 and their configurable thresholds.
//!
//! A rule looks at one region's [`Aggregate`] in one window (or, for the sustained rule, at a run of
//! consecutive windows). Alerts are a maintained collection: on an open window an alert can appear and
//! clear again as counts change.

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::window::Window;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    HighErrorRate,
    SustainedErrorRate,
    SlowDownloads,
    CdnFailure,
}

impl Rule {
    pub const ALL: [Rule; 4] = [
        Rule::HighErrorRate,
        Rule::SustainedErrorRate,
        Rule::SlowDownloads,
        Rule::CdnFailure,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::HighErrorRate => "HIGH_ERROR_RATE",
            Rule::SustainedErrorRate => "SUSTAINED_ERROR_RATE",
            Rule::SlowDownloads => "SLOW_DOWNLOADS",
            Rule::CdnFailure => "CDN_FAILURE",
        }
    }

    /// The name of the measure the rule compares with its threshold.
    pub fn metric_name(self) -> &'static str {
        match self {
            Rule::HighErrorRate | Rule::SustainedErrorRate => "error_rate",
            Rule::SlowDownloads => "avg_speed_mbps",
            Rule::CdnFailure => "cdn_timeout_rate",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Severity {
    Critical,
    Warning,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Critical => "CRITICAL",
            Severity::Warning => "WARNING",
        }
    }
}

/// One raised alert: a rule that holds for a region in a window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Alert {
    pub window: Window,
    pub region: String,
    pub rule: Rule,
    pub severity: Severity,
    /// The sums the rule looked at: the region's window, or for the sustained rule the whole run.
    pub measure: Aggregate,
}

impl Alert {
    /// The value compared with the threshold (a rate, or a speed in Mbps).
    pub fn metric_value(&self) -> f64 {
        match self.rule {
            Rule::HighErrorRate | Rule::SustainedErrorRate => self.measure.failure_rate(),
            Rule::SlowDownloads => self.measure.avg_speed_mbps(),
            Rule::CdnFailure => self.measure.cdn_timeout_share(),
        }
    }

    pub fn message(&self) -> String {
        let v = self.metric_value();
        match self.rule {
            Rule::HighErrorRate => {
                format!(
                    "Download error rate in {} is {:.1}%",
                    self.region,
                    v * 100.0
                )
            }
            Rule::SustainedErrorRate => format!(
                "Download error rate in {} has been high for consecutive windows ({:.1}% overall)",
                self.region,
                v * 100.0
            ),
            Rule::SlowDownloads => {
                format!("Average download speed in {} is {:.1} Mbps", self.region, v)
            }
            Rule::CdnFailure => format!(
                "CDN timeouts are {:.1}% of downloads in {}",
                v * 100.0,
                self.region
            ),
        }
    }
}

/// Thresholds of the alert rules.
#[derive(Clone, Debug, PartialEq)]
pub struct Rules {
    /// HIGH_ERROR_RATE fires when the failure rate is above this …
    pub error_rate: f64,
    /// … and is CRITICAL when the success rate is below this (WARNING otherwise).
    pub critical_success_rate: f64,
    /// No rule fires on a region-window with fewer downloads than this.
    pub min_downloads: i64,
    /// SUSTAINED_ERROR_RATE: HIGH_ERROR_RATE in this many consecutive windows.
    pub sustained_windows: u32,
    /// SLOW_DOWNLOADS: average speed of successful downloads below this many Mbps.
    pub slow_mbps: f64,
    /// CDN_FAILURE: `cdn_timeout` failures at least this share of downloads.
    pub cdn_share: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            error_rate: 0.10,
            critical_success_rate: 0.85,
            min_downloads: 5,
            sustained_windows: 3,
            slow_mbps: 15.0,
            cdn_share: 0.05,
        }
    }
}

impl Rules {
    pub fn validate(&self) -> Result<(), String> {
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        if !unit(self.error_rate) || !unit(self.critical_success_rate) || !unit(self.cdn_share) {
            return Err("alert rates must lie between 0 and 1".into());
        }
        if !(1..=60).contains(&self.sustained_windows) {
            return Err("sustained windows must be between 1 and 60".into());
        }
        if self.slow_mbps < 0.0 {
            return Err("slow threshold must not be negative".into());
        }
        Ok(())
    }

    /// The single-window rules that hold for a region's sums.
    pub fn evaluate(&self, stats: &Aggregate) -> Vec<(Rule, Severity)> {
        let mut fired = Vec::new();
        if stats.downloads < self.min_downloads.max(1) {
            return fired;
        }
        if stats.failure_rate() > self.error_rate {
            let severity = if stats.success_rate() < self.critical_success_rate {
                Severity::Critical
            } else {
                Severity::Warning
            };
            fired.push((Rule::HighErrorRate, severity));
        }
        if stats.successful > 0 && stats.avg_speed_mbps() < self.slow_mbps {
            fired.push((Rule::SlowDownloads, Severity::Warning));
        }
        if stats.cdn_timeout_share() >= self.cdn_share {
            fired.push((Rule::CdnFailure, Severity::Critical));
        }
        fired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(downloads: i64, successful: i64, failed: i64, speed: i64, cdn: i64) -> Aggregate {
        Aggregate {
            downloads,
            successful,
            failed,
            speed_milli: speed * 1000 * successful,
            cdn_timeouts: cdn,
            ..Aggregate::default()
        }
    }

    #[test]
    fn thresholds() {
        let rules = Rules::default();
        // 10% failures is not above 10%.
        assert!(rules.evaluate(&region(100, 90, 10, 30, 0)).is_empty());
        assert_eq!(
            rules.evaluate(&region(100, 89, 11, 30, 0)),
            vec![(Rule::HighErrorRate, Severity::Warning)]
        );
        assert_eq!(
            rules.evaluate(&region(100, 84, 16, 30, 0)),
            vec![(Rule::HighErrorRate, Severity::Critical)]
        );
        assert_eq!(
            rules.evaluate(&region(100, 98, 2, 14, 0)),
            vec![(Rule::SlowDownloads, Severity::Warning)]
        );
        assert_eq!(
            rules.evaluate(&region(100, 95, 5, 30, 5)),
            vec![(Rule::CdnFailure, Severity::Critical)]
        );
        assert!(rules.evaluate(&region(100, 96, 4, 30, 4)).is_empty());
        // Too few downloads: nothing fires, however bad.
        assert!(rules.evaluate(&region(4, 0, 4, 1, 4)).is_empty());
    }
}
