//! A from-scratch recomputation of every maintained collection, written from the specification
//! without the dataflow's code: one pass over the records, plain maps, then the derived rows.
//! Tests compare the dataflow (and the PostgreSQL tables) against it.
//!
//! Baselines and forecasts are recomputed window by window from the final sums: which windows are
//! settled, which windows a trail covers and what it adds up are worked out here again; only the
//! formulas of a score or a forecast ([`Baseline`]'s methods, [`Forecast::of`], [`Rules::judge`]),
//! which their modules test against hand-computed values, are shared.

use std::collections::{BTreeMap, BTreeSet};

use streampulse_ingest::{Event, Record};

use crate::aggregate::{Aggregate, Key, WindowKey};
use crate::baseline::{settled, Baseline};
use crate::config::Config;
use crate::forecast::Forecast;
use crate::output::Derived;
use crate::rules::{Alert, Rule, Rules, Severity};
use crate::window::Window;

/// The recomputation, written from the specification without the dataflow's code.
pub struct Oracle {
    pub stats: BTreeMap<WindowKey, Aggregate>,
    pub derived: BTreeSet<Derived>,
}

/// Recomputes every collection from `records` (in topic order within each partition).
pub fn recompute(records: &[Record], config: &Config) -> Oracle {
    let w = config.window_ms;
    let mut newest: BTreeMap<u32, i64> = BTreeMap::new();
    let mut stats: BTreeMap<WindowKey, Aggregate> = BTreeMap::new();
    let mut bump = |window: i64, key: Key, e: &Event| {
        let a = stats
            .entry(WindowKey {
                window: Window(window),
                key,
            })
            .or_default();
        let ok = e.download.status == "success";
        let failed = e.download.status == "failed";
        a.downloads += 1;
        a.successful += ok as i64;
        a.failed += failed as i64;
        a.size_mb += e.content.size_mb as i64;
        a.duration_s += e.download.duration_seconds as i64;
        if ok {
            a.speed_milli += (e.download.speed_mbps as f64 * 1000.0).round() as i64;
        }
        if failed && e.download.error_code.as_deref() == Some("cdn_timeout") {
            a.cdn_timeouts += 1;
        }
    };
    for r in records {
        let e = &r.event;
        let ts = e.timestamp;
        let window = ts.div_euclid(w) * w;
        let max = newest.get(&r.partition).copied();
        if matches!(max, Some(m) if ts < m - config.lateness_ms) {
            bump(
                window,
                Key::Late {
                    partition: r.partition,
                },
                e,
            );
            continue;
        }
        newest.insert(r.partition, max.map_or(ts, |m| m.max(ts)));
        let u = &e.user_context;
        bump(window, Key::Total, e);
        bump(
            window,
            Key::Content {
                content_id: e.content.content_id.clone(),
                title: e.content.title.clone(),
            },
            e,
        );
        bump(window, Key::Region(u.region.clone()), e);
        bump(
            window,
            Key::Device {
                device: u.device.clone(),
                os_version: u.os_version.clone(),
            },
            e,
        );
        if e.download.status == "failed" {
            if let Some(code) = &e.download.error_code {
                bump(
                    window,
                    Key::Error {
                        region: u.region.clone(),
                        error_code: code.clone(),
                    },
                    e,
                );
            }
        }
    }

    let rules = &config.rules;
    let mut derived = BTreeSet::new();
    let mut by_window: BTreeMap<Window, Vec<(i64, String, String)>> = BTreeMap::new();
    let mut high: BTreeMap<(String, Window), Aggregate> = BTreeMap::new();
    for (row, a) in &stats {
        match &row.key {
            Key::Content { content_id, title } => by_window.entry(row.window).or_default().push((
                a.downloads,
                content_id.clone(),
                title.clone(),
            )),
            Key::Region(region) if a.downloads >= rules.min_downloads => {
                let n = a.downloads as f64;
                let mut fire = |rule, severity| {
                    derived.insert(Derived::Alert(Alert {
                        window: row.window,
                        region: region.clone(),
                        rule,
                        severity,
                        measure: *a,
                        baseline: None,
                    }));
                };
                if a.failed as f64 / n > rules.error_rate {
                    let critical = (a.successful as f64 / n) < rules.critical_success_rate;
                    fire(
                        Rule::HighErrorRate,
                        if critical {
                            Severity::Critical
                        } else {
                            Severity::Warning
                        },
                    );
                    high.insert((region.clone(), row.window), *a);
                }
                if a.successful > 0
                    && (a.speed_milli as f64 / a.successful as f64 / 1000.0) < rules.slow_mbps
                {
                    fire(Rule::SlowDownloads, Severity::Warning);
                }
                if a.cdn_timeouts as f64 / n >= rules.cdn_share {
                    fire(Rule::CdnFailure, Severity::Critical);
                }
            }
            _ => {}
        }
    }
    for (region, window) in high.keys() {
        let run: Vec<_> = (0..rules.sustained_windows as i64)
            .map(|back| high.get(&(region.clone(), Window(window.0 - back * w))))
            .collect();
        if run.iter().all(Option::is_some) {
            let mut measure = Aggregate::default();
            for a in run.into_iter().flatten() {
                measure.downloads += a.downloads;
                measure.successful += a.successful;
                measure.failed += a.failed;
                measure.size_mb += a.size_mb;
                measure.duration_s += a.duration_s;
                measure.speed_milli += a.speed_milli;
                measure.cdn_timeouts += a.cdn_timeouts;
            }
            derived.insert(Derived::Alert(Alert {
                window: *window,
                region: region.clone(),
                rule: Rule::SustainedErrorRate,
                severity: Severity::Critical,
                measure,
                baseline: None,
            }));
        }
    }
    for (window, mut titles) in by_window {
        derived.insert(Derived::UniqueContent {
            window,
            count: titles.len() as i64,
        });
        titles.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (i, (downloads, content_id, title)) in titles.into_iter().take(config.top_k).enumerate()
        {
            derived.insert(Derived::Top {
                window,
                rank: i as u32 + 1,
                content_id,
                title,
                downloads,
            });
        }
    }
    baselines(&stats, config, &mut derived);
    forecasts(&stats, config, &mut derived);
    Oracle { stats, derived }
}

/// Stream windows: windows in which some region had events, oldest first.
fn stream_windows(stats: &BTreeMap<WindowKey, Aggregate>) -> Vec<Window> {
    let windows: BTreeSet<Window> = stats
        .iter()
        .filter(|(row, a)| matches!(row.key, Key::Region(_)) && a.downloads > 0)
        .map(|(row, _)| row.window)
        .collect();
    windows.into_iter().collect()
}

/// Every region's baseline in every settled stream window, and the baseline alerts.
fn baselines(stats: &BTreeMap<WindowKey, Aggregate>, config: &Config, out: &mut BTreeSet<Derived>) {
    let w = config.window_ms;
    let n = config.rules.baselines.windows as i64;
    let windows = stream_windows(stats);
    let Some(&newest) = windows.last() else {
        return;
    };
    let mut per_region: BTreeMap<&str, BTreeMap<i64, Aggregate>> = BTreeMap::new();
    // Per region and error code: failures with the code, per window.
    let mut per_code: BTreeMap<&str, BTreeMap<&str, BTreeMap<i64, i64>>> = BTreeMap::new();
    for (row, a) in stats {
        match &row.key {
            Key::Region(region) => {
                per_region
                    .entry(region)
                    .or_default()
                    .insert(row.window.0, *a);
            }
            Key::Error { region, error_code } => {
                per_code
                    .entry(region)
                    .or_default()
                    .entry(error_code)
                    .or_default()
                    .insert(row.window.0, a.failed);
            }
            _ => {}
        }
    }
    for &window in windows
        .iter()
        .filter(|win| settled(**win, newest, w, config.lateness_ms))
    {
        for (region, by_window) in &per_region {
            let mut b = Baseline {
                observed: by_window.get(&window.0).copied().unwrap_or_default(),
                ..Baseline::default()
            };
            for back in 1..=n {
                if let Some(a) = by_window.get(&(window.0 - back * w)) {
                    b.windows += 1;
                    b.downloads += a.downloads;
                    b.downloads_sq += (a.downloads as i128).pow(2);
                    b.failed += a.failed;
                }
            }
            if b.downloads == 0 {
                continue;
            }
            let rules: &Rules = &config.rules;
            for (rule, severity) in rules.judge(&b) {
                out.insert(Derived::Alert(Alert {
                    window,
                    region: region.to_string(),
                    rule,
                    severity,
                    measure: b.observed,
                    baseline: Some(b),
                }));
            }
            out.insert(Derived::Baseline {
                window,
                region: region.to_string(),
                baseline: b,
            });
            // Each code seen in the window or the trail: its failures against the region's
            // downloads, over the same windows.
            let trail = (0..=n).map(|back| window.0 - back * w);
            for (code, failures) in per_code.get(region).into_iter().flatten() {
                if !trail.clone().any(|start| failures.contains_key(&start)) {
                    continue;
                }
                let mut coded = b;
                coded.observed.failed = failures.get(&window.0).copied().unwrap_or(0);
                coded.failed = (1..=n)
                    .filter_map(|back| failures.get(&(window.0 - back * w)))
                    .sum();
                out.insert(Derived::ErrorBaseline {
                    window,
                    region: region.to_string(),
                    error_code: code.to_string(),
                    baseline: coded,
                });
            }
        }
    }
}

/// Every title's forecast at every settled window it had downloads in, and each window's rising
/// list.
fn forecasts(stats: &BTreeMap<WindowKey, Aggregate>, config: &Config, out: &mut BTreeSet<Derived>) {
    let w = config.window_ms;
    let span = config.forecasts.windows as i64;
    let windows = stream_windows(stats);
    let Some(&newest) = windows.last() else {
        return;
    };
    let mut per_title: BTreeMap<(&str, &str), BTreeMap<i64, i64>> = BTreeMap::new();
    for (row, a) in stats {
        if let Key::Content { content_id, title } = &row.key {
            per_title
                .entry((content_id, title))
                .or_default()
                .insert(row.window.0, a.downloads);
        }
    }
    for &window in windows
        .iter()
        .filter(|win| settled(**win, newest, w, config.lateness_ms))
    {
        let mut ranked = Vec::new();
        for ((id, title), by_window) in &per_title {
            if by_window.get(&window.0).copied().unwrap_or(0) == 0 {
                continue;
            }
            let history = (0..span)
                .rev()
                .map(|back| by_window.get(&(window.0 - back * w)).copied().unwrap_or(0))
                .collect();
            let forecast = Forecast::of(history, &config.forecasts);
            ranked.push((forecast.rising_milli, *id, *title, forecast));
        }
        // Highest rising score first; ties by content id, then title.
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| (a.1, a.2).cmp(&(b.1, b.2))));
        for (i, (_, id, title, forecast)) in ranked.into_iter().take(config.top_k).enumerate() {
            out.insert(Derived::Rising {
                window,
                rank: i as u32 + 1,
                content_id: id.to_string(),
                title: title.to_string(),
                forecast,
            });
        }
    }
}
