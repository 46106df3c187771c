//! The alert rules of SPEC §5 and their configurable thresholds, the stable id of an alert, and the
//! health levels of a region.
//!
//! A fixed rule looks at one region's [`Aggregate`] in one window (or, for the sustained rule, at a
//! run of consecutive windows). A baseline rule (`*_BASELINE`) compares the window with the region's
//! own recent past, a [`Baseline`] the alert carries; its knobs are [`Rules::baselines`]. Alerts are a maintained collection: on an open window an alert can appear and
//! clear again as counts change. An alert keeps one id ([`Alert::id`]) however often it comes and
//! goes, which is how the stored alerts (and their acknowledgements) find it again. [`Health`] grades
//! a region's success rate for the API.

use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;
use crate::baseline::{Baseline, Baselines};
use crate::error::Error;
use crate::window::Window;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    HighErrorRate,
    SustainedErrorRate,
    SlowDownloads,
    CdnFailure,
    ErrorRateAboveBaseline,
    TrafficBelowBaseline,
    TrafficAboveBaseline,
}

impl Rule {
    pub const ALL: [Rule; 7] = [
        Rule::HighErrorRate,
        Rule::SustainedErrorRate,
        Rule::SlowDownloads,
        Rule::CdnFailure,
        Rule::ErrorRateAboveBaseline,
        Rule::TrafficBelowBaseline,
        Rule::TrafficAboveBaseline,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rule::HighErrorRate => "HIGH_ERROR_RATE",
            Rule::SustainedErrorRate => "SUSTAINED_ERROR_RATE",
            Rule::SlowDownloads => "SLOW_DOWNLOADS",
            Rule::CdnFailure => "CDN_FAILURE",
            Rule::ErrorRateAboveBaseline => "ERROR_RATE_ABOVE_BASELINE",
            Rule::TrafficBelowBaseline => "TRAFFIC_BELOW_BASELINE",
            Rule::TrafficAboveBaseline => "TRAFFIC_ABOVE_BASELINE",
        }
    }

    /// Whether the rule compares a region with its own baseline (the alert carries it).
    pub fn is_baseline(self) -> bool {
        matches!(
            self,
            Rule::ErrorRateAboveBaseline | Rule::TrafficBelowBaseline | Rule::TrafficAboveBaseline
        )
    }

    /// Whether a lower value of the rule's measure is worse (its peak is the minimum).
    pub fn lowest_is_worst(self) -> bool {
        matches!(self, Rule::SlowDownloads | Rule::TrafficBelowBaseline)
    }

    /// The name of the measure the rule compares with its threshold.
    pub fn metric_name(self) -> &'static str {
        match self {
            Rule::HighErrorRate | Rule::SustainedErrorRate | Rule::ErrorRateAboveBaseline => {
                "error_rate"
            }
            Rule::SlowDownloads => "avg_speed_mbps",
            Rule::CdnFailure => "cdn_timeout_rate",
            Rule::TrafficBelowBaseline | Rule::TrafficAboveBaseline => "downloads",
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
    /// For a baseline rule, the baseline the window was compared with (`observed` is `measure`).
    pub baseline: Option<Baseline>,
}

impl Alert {
    /// A stable id: the same rule, region and window always get the same id, in every run and
    /// process. PostgreSQL stores alerts (and their acknowledgements) under it, so it must never
    /// change: FNV-1a over `"RULE_NAME|region|window start"`, kept within JavaScript's exact integer
    /// range (53 bits) for the API's JSON.
    pub fn id(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let key = format!(
            "{}|{}|{}",
            self.rule.name(),
            self.region,
            self.window.start()
        );
        for byte in key.bytes() {
            hash = (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        (hash & ((1 << 53) - 1)) as i64
    }

    /// The value compared with the threshold (a rate, a speed in Mbps, or downloads).
    pub fn metric_value(&self) -> f64 {
        match self.rule {
            Rule::HighErrorRate | Rule::SustainedErrorRate | Rule::ErrorRateAboveBaseline => {
                self.measure.failure_rate()
            }
            Rule::SlowDownloads => self.measure.avg_speed_mbps(),
            Rule::CdnFailure => self.measure.cdn_timeout_share(),
            Rule::TrafficBelowBaseline | Rule::TrafficAboveBaseline => {
                self.measure.downloads as f64
            }
        }
    }

    /// What the value was compared with: the rule's threshold, or for a baseline rule the
    /// baseline's own value of the measure (mean downloads, or the baseline error rate).
    pub fn threshold(&self, rules: &Rules) -> f64 {
        match &self.baseline {
            Some(_) => self.baseline_value().unwrap_or_default(),
            None => rules.threshold(self.rule),
        }
    }

    /// A baseline rule's score (how many spreads or standard errors from the baseline).
    pub fn score(&self) -> Option<f64> {
        self.baseline.map(|b| match self.rule {
            Rule::ErrorRateAboveBaseline => b.error_score(),
            _ => b.traffic_score(),
        })
    }

    /// A baseline rule's baseline value of its measure: the baseline error rate, or the mean
    /// downloads per window.
    pub fn baseline_value(&self) -> Option<f64> {
        self.baseline.map(|b| match self.rule {
            Rule::ErrorRateAboveBaseline => b.error_rate(),
            _ => b.mean(),
        })
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
            Rule::ErrorRateAboveBaseline => format!(
                "Download error rate in {} is {:.1}%, against {:.1}% in its recent windows (score {:.1})",
                self.region,
                v * 100.0,
                self.baseline.map_or(0.0, |b| b.error_rate()) * 100.0,
                self.score().unwrap_or(0.0)
            ),
            Rule::TrafficBelowBaseline if v == 0.0 => format!(
                "{} is silent: no downloads, against {:.0} per window recently",
                self.region,
                self.baseline.map_or(0.0, |b| b.mean())
            ),
            Rule::TrafficBelowBaseline | Rule::TrafficAboveBaseline => format!(
                "{} had {:.0} downloads, against {:.0} per window recently (score {:.1})",
                self.region,
                v,
                self.baseline.map_or(0.0, |b| b.mean()),
                self.score().unwrap_or(0.0)
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
    /// The knobs of the baseline rules.
    pub baselines: Baselines,
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
            baselines: Baselines::default(),
        }
    }
}

impl Rules {
    /// Checks every threshold; the first one out of range is the error ([`Error::InvalidConfig`],
    /// with the field's path in [`crate::config::Config`]).
    pub fn validate(&self) -> Result<(), Error> {
        let rates = [
            ("rules.error_rate", self.error_rate),
            ("rules.critical_success_rate", self.critical_success_rate),
            ("rules.cdn_share", self.cdn_share),
        ];
        if let Some((field, _)) = rates
            .into_iter()
            .find(|(_, rate)| !(0.0..=1.0).contains(rate))
        {
            return Err(Error::invalid(
                field,
                "alert rates must lie between 0 and 1",
            ));
        }
        if !(1..=60).contains(&self.sustained_windows) {
            return Err(Error::invalid(
                "rules.sustained_windows",
                "sustained windows must be between 1 and 60",
            ));
        }
        if self.slow_mbps < 0.0 {
            return Err(Error::invalid(
                "rules.slow_mbps",
                "slow threshold must not be negative",
            ));
        }
        self.baselines.validate()
    }

    /// The threshold `rule` compares its measure ([`Alert::metric_value`]) with: a rate, or a speed
    /// in Mbps. A baseline rule's threshold is its score (each alert also carries the baseline
    /// value it was compared with, [`Alert::threshold`]); TRAFFIC_BELOW_BASELINE's is negative.
    pub fn threshold(&self, rule: Rule) -> f64 {
        match rule {
            Rule::HighErrorRate | Rule::SustainedErrorRate => self.error_rate,
            Rule::SlowDownloads => self.slow_mbps,
            Rule::CdnFailure => self.cdn_share,
            Rule::ErrorRateAboveBaseline => self.baselines.error_score,
            Rule::TrafficBelowBaseline => -self.baselines.traffic_score,
            Rule::TrafficAboveBaseline => self.baselines.traffic_score,
        }
    }

    /// The baseline rules that hold for a region's window against its baseline (the error rule
    /// shares the fixed rules' `min_downloads`).
    pub fn judge(&self, baseline: &Baseline) -> Vec<(Rule, Severity)> {
        let knobs = &self.baselines;
        let mut fired = Vec::new();
        if baseline.windows < knobs.min_windows || baseline.mean() < knobs.min_mean {
            return fired;
        }
        let observed = baseline.observed.downloads as f64;
        let traffic = baseline.traffic_score();
        // Silence needs no spread: a Poisson count with a mean of at least traffic_score² is at
        // least traffic_score standard deviations from zero, however uneven the trail was (a
        // partly filled window in it, say).
        let silent = baseline.observed.downloads == 0
            && baseline.mean() >= knobs.traffic_score * knobs.traffic_score;
        let low = traffic <= -knobs.traffic_score
            && observed <= (1.0 - knobs.traffic_drop) * baseline.mean();
        if silent || low {
            let severity = if baseline.observed.downloads == 0 {
                Severity::Critical
            } else {
                Severity::Warning
            };
            fired.push((Rule::TrafficBelowBaseline, severity));
        }
        if traffic >= knobs.traffic_score
            && observed >= (1.0 + knobs.traffic_rise) * baseline.mean()
        {
            fired.push((Rule::TrafficAboveBaseline, Severity::Warning));
        }
        let rise = baseline.observed.failure_rate() - baseline.error_rate();
        if baseline.observed.downloads >= self.min_downloads.max(1)
            && baseline.error_score() >= knobs.error_score
            && rise >= knobs.error_rise
        {
            // Four times the minimum rise (20 points by default) is an outage, not a wobble.
            let severity = if rise >= 4.0 * knobs.error_rise {
                Severity::Critical
            } else {
                Severity::Warning
            };
            fired.push((Rule::ErrorRateAboveBaseline, severity));
        }
        fired
    }

    /// How a region's window compares with its baseline, for the API: `normal`, or the anomaly
    /// (`silent`, `low_traffic`, `high_traffic`, `high_errors`; the worst first), or `learning`
    /// while the baseline is too short or too thin to judge.
    pub fn baseline_health(&self, baseline: &Baseline) -> &'static str {
        let knobs = &self.baselines;
        if baseline.windows < knobs.min_windows || baseline.mean() < knobs.min_mean {
            return "learning";
        }
        let fired = self.judge(baseline);
        let has = |rule| fired.iter().any(|(r, _)| *r == rule);
        if has(Rule::TrafficBelowBaseline) {
            if baseline.observed.downloads == 0 {
                "silent"
            } else {
                "low_traffic"
            }
        } else if has(Rule::ErrorRateAboveBaseline) {
            "high_errors"
        } else if has(Rule::TrafficAboveBaseline) {
            "high_traffic"
        } else {
            "normal"
        }
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

/// How well a region is doing, by its success rate: healthy ≥ 0.95 > degraded ≥ 0.90 > critical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    Healthy,
    Degraded,
    Critical,
}

impl Health {
    /// The level of a success rate (a fraction, 0–1; no downloads at all count as critical, as the
    /// rate of an empty sum is 0).
    pub fn of(success_rate: f64) -> Health {
        if success_rate >= 0.95 {
            Health::Healthy
        } else if success_rate >= 0.90 {
            Health::Degraded
        } else {
            Health::Critical
        }
    }

    /// The name the API reports (`health_status`).
    pub fn name(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Critical => "critical",
        }
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

    fn alert(rule: Rule, region: &str, start: i64) -> Alert {
        Alert {
            baseline: None,
            window: Window(start),
            region: region.to_string(),
            rule,
            severity: Severity::Warning,
            measure: Aggregate::default(),
        }
    }

    #[test]
    fn alert_ids_never_change() {
        // Computed with the function this replaces (`serve::api::stats::alert_id`): stored alerts
        // and their acknowledgements are keyed by these values.
        let cases = [
            (
                Rule::HighErrorRate,
                "US-East",
                1_700_000_040_000,
                4_937_309_049_810_149,
            ),
            (
                Rule::SustainedErrorRate,
                "EU-West",
                0,
                6_106_159_833_707_715,
            ),
            (
                Rule::SlowDownloads,
                "ASIA-Tokyo",
                1_699_999_980_000,
                857_455_181_137_192,
            ),
            (Rule::CdnFailure, "", -60_000, 1_758_837_603_999_002),
        ];
        for (rule, region, start, id) in cases {
            assert_eq!(
                alert(rule, region, start).id(),
                id,
                "{rule:?} {region} {start}"
            );
        }
        // Only rule, region and window identify an alert; severity and sums do not.
        let mut other = alert(Rule::HighErrorRate, "US-East", 1_700_000_040_000);
        other.severity = Severity::Critical;
        other.measure.downloads = 7;
        assert_eq!(other.id(), 4_937_309_049_810_149);
        // Within JavaScript's exact integers.
        assert!((0..1 << 53).contains(&other.id()));
    }

    #[test]
    fn each_rule_has_its_threshold() {
        let rules = Rules::default();
        assert_eq!(rules.threshold(Rule::HighErrorRate), 0.10);
        assert_eq!(rules.threshold(Rule::SustainedErrorRate), 0.10);
        assert_eq!(rules.threshold(Rule::SlowDownloads), 15.0);
        assert_eq!(rules.threshold(Rule::CdnFailure), 0.05);
    }

    #[test]
    fn health_levels() {
        assert_eq!(Health::of(1.0), Health::Healthy);
        assert_eq!(Health::of(0.95).name(), "healthy");
        assert_eq!(Health::of(0.9499).name(), "degraded");
        assert_eq!(Health::of(0.90).name(), "degraded");
        assert_eq!(Health::of(0.8999).name(), "critical");
        assert_eq!(Health::of(0.0), Health::Critical);
    }

    #[test]
    fn the_baseline_rules_fire_on_their_anomaly_only() {
        use crate::baseline::tests::baseline;
        let rules = Rules::default();
        let steady = [100, 104, 96, 100, 100, 98, 102, 100];
        // A silent window: critical traffic drop.
        let silent = baseline(&steady, 40, (0, 0));
        // Silence fires even when the trail is uneven enough that its score is above −4 (a partly
        // filled window in it): 0 against a mean of at least 16.
        let uneven = baseline(&[100, 5, 100, 5, 100, 5], 10, (0, 0));
        assert!(uneven.traffic_score() > -4.0, "{}", uneven.traffic_score());
        assert_eq!(
            rules.judge(&uneven),
            vec![(Rule::TrafficBelowBaseline, Severity::Critical)]
        );
        assert_eq!(
            rules.judge(&silent),
            vec![(Rule::TrafficBelowBaseline, Severity::Critical)]
        );
        assert_eq!(rules.baseline_health(&silent), "silent");
        // A normal window: nothing.
        let normal = baseline(&steady, 40, (103, 6));
        assert!(rules.judge(&normal).is_empty());
        assert_eq!(rules.baseline_health(&normal), "normal");
        // Three times the traffic.
        let surge = baseline(&steady, 40, (300, 15));
        assert_eq!(
            rules.judge(&surge),
            vec![(Rule::TrafficAboveBaseline, Severity::Warning)]
        );
        // Baseline rate 40/800 = 5%; 30% of 100 failing is 25 points above: critical.
        let errors = baseline(&steady, 40, (100, 30));
        assert_eq!(
            rules.judge(&errors),
            vec![(Rule::ErrorRateAboveBaseline, Severity::Critical)]
        );
        // 12% is 7 points above, but not five standard errors (√(0.05·0.95/100) ≈ 2.2 points).
        let wobble = baseline(&steady, 40, (100, 12));
        assert!(rules.judge(&wobble).is_empty());
        // Too short a baseline: nothing is judged, however silent.
        let short = baseline(&steady[..4], 40, (0, 0));
        assert!(rules.judge(&short).is_empty());
        assert_eq!(rules.baseline_health(&short), "learning");
    }
}
