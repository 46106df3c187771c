//! A from-scratch recomputation of every maintained collection, written from the specification
//! without the dataflow's code: one pass over the records, plain maps, then the derived rows.
//! Tests compare the dataflow (and the PostgreSQL tables) against it.

use std::collections::{BTreeMap, BTreeSet};

use streampulse_ingest::{Event, Record};

use crate::aggregate::{Aggregate, Key, WindowKey};
use crate::config::Config;
use crate::output::Derived;
use crate::rules::{Alert, Rule, Severity};
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
    Oracle { stats, derived }
}
