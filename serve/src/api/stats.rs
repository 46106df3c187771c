//! The old pipeline's read endpoints, with its parameters and field names, computed from the
//! in-memory [`View`].
//!
//! ```text
//!   Input { view, rules, acknowledged ids } + Query ─▶ handler ─▶ serde_json::Value
//! ```
//!
//! Handlers are pure functions of their input, so the caller may cache the serialised answer until
//! the view (or the set of acknowledged alerts) changes. `/health` is not one of them: it reports
//! the wall clock and live counters.
//!
//! "Now" is the stream's own clock: `minutes=5` means the windows covering the 5 newest minutes of
//! event time. Rates are fractions (0–1) computed from sums, not averages of per-window ratios.
//!
//! Baselines and rising lists exist only for *settled* windows (see
//! `streampulse_dataflow::baseline::settled`), which lag the newest window by about one: "the
//! latest" of them is the newest window that has such rows, not the newest window.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use differential_dataflow::difference::Semigroup;
use serde_json::{json, Value};
use streampulse_dataflow::{
    Aggregate, Alert, Baseline, Counters, Health, Key, Rules, View, Window, WindowState,
};

use super::query::Query;
use super::ApiError;
use crate::health::{Link, LinkState};

/// What a cacheable handler reads.
pub struct Input<'a> {
    pub view: &'a View,
    pub rules: &'a Rules,
    /// Ids of alerts acknowledged in PostgreSQL (empty without it).
    pub acknowledged: &'a HashSet<i64>,
}

pub type Handler = fn(&Input, &Query) -> Result<Value, ApiError>;

/// The cacheable endpoints: path, handler, and the parameters the answer depends on.
pub const ENDPOINTS: [(&str, Handler, &[&str]); 6] = [
    ("/api/stats/realtime", realtime, &["minutes"]),
    ("/api/stats/trending", trending, &["by", "minutes", "limit"]),
    ("/api/stats/regions", regions, &["minutes"]),
    (
        "/api/stats/alerts",
        alerts,
        &["limit", "severity", "acknowledged"],
    ),
    ("/api/stats/timeseries", timeseries, &["minutes"]),
    ("/api/stats/devices", devices, &["minutes", "limit"]),
];

/// `/health`: liveness, the watermark and the counters.
/// The outside dependencies `/health` reports, as the pipeline sees them (`None`: not used).
pub struct Links<'a> {
    pub database: Option<&'a Link>,
    pub kafka: Option<&'a Link>,
}

/// `status` is "degraded" while PostgreSQL or Kafka is unreachable (the sink cannot commit, the
/// source cannot read) or not reached yet at start-up; `problems` says why.
pub fn health(view: &View, counters: &Counters, uptime_seconds: u64, links: &Links) -> Value {
    let mut problems = Vec::new();
    for (name, link) in [("database", links.database), ("kafka", links.kafka)] {
        let Some(link) = link else { continue };
        match link.state() {
            LinkState::Ok => {}
            LinkState::Unknown => problems.push(format!("{name}: not reached yet")),
            LinkState::Unreachable => problems.push(format!(
                "{name}: {}",
                link.error().unwrap_or_else(|| "unreachable".into())
            )),
        }
    }
    let status = if problems.is_empty() {
        "healthy"
    } else {
        "degraded"
    };
    json!({
        "status": status,
        "problems": problems,
        "database": links.database.map(|l| l.state().name()),
        "kafka": links.kafka.map(|l| l.state().name()),
        "timestamp": iso8601(now_ms()),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": uptime_seconds,
        "events": counters.events.load(Ordering::Relaxed),
        "late_events": counters.late.load(Ordering::Relaxed),
        "watermark": view.watermark().map(iso8601),
        "newest_window": view.newest().map(|w| iso8601(w.start())),
        "windows_in_memory": view.windows().len(),
    })
}

/// Milliseconds since the epoch as ISO-8601 UTC with milliseconds (`2024-05-01T12:34:00.000Z`).
///
/// Every answer carries a few of these (`/health` three, a time series one per window), so the
/// digits are written directly; `strftime` (which parses its format each call) is kept for the
/// years before 0, which nothing this pipeline stores has.
pub fn iso8601(ms: i64) -> String {
    let t = match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t,
        // Outside jiff's range (±9999 years): nothing this pipeline stores, but never panic.
        Err(_) => return format!("{ms}ms"),
    };
    let d = jiff::tz::Offset::UTC.to_datetime(t);
    let Ok(year) = u32::try_from(d.year()) else {
        return t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    };
    let mut out = String::with_capacity(24);
    let mut digits = |value: u32, width: u32, after: char| {
        for place in (0..width).rev() {
            let digit = value / 10u32.pow(place) % 10;
            out.push(char::from(b'0' + digit as u8));
        }
        out.push(after);
    };
    digits(year, 4, '-');
    digits(d.month() as u32, 2, '-');
    digits(d.day() as u32, 2, 'T');
    digits(d.hour() as u32, 2, ':');
    digits(d.minute() as u32, 2, ':');
    digits(d.second() as u32, 2, '.');
    digits(d.millisecond() as u32, 3, 'Z');
    out
}

pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

pub fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

/// How many windows cover `minutes` of event time.
fn windows_for(view: &View, minutes: i64) -> usize {
    let ms = minutes * 60_000;
    ((ms + view.window_ms() - 1) / view.window_ms()).max(1) as usize
}

/// Sums the rows that `pick` selects from the recent windows, by the name it returns.
fn sum_by<K: Ord>(
    view: &View,
    windows: usize,
    mut pick: impl FnMut(&Key) -> Option<K>,
) -> BTreeMap<K, Aggregate> {
    let mut sums = BTreeMap::new();
    for (_, state) in view.recent(windows) {
        for (key, agg) in &state.stats {
            if let Some(k) = pick(key) {
                sums.entry(k)
                    .or_insert_with(Aggregate::default)
                    .plus_equals(agg);
            }
        }
    }
    sums
}

/// Most downloads first, ties by name.
fn ranked<K: Ord>(sums: BTreeMap<K, Aggregate>) -> Vec<(K, Aggregate)> {
    let mut rows: Vec<_> = sums.into_iter().collect();
    rows.sort_by(|a, b| {
        b.1.downloads
            .cmp(&a.1.downloads)
            .then_with(|| a.0.cmp(&b.0))
    });
    rows
}

fn late_in(state: &WindowState) -> i64 {
    state
        .stats
        .iter()
        .filter(|(k, _)| matches!(k, Key::Late { .. }))
        .map(|(_, a)| a.downloads)
        .sum()
}

fn realtime(input: &Input, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 5, 1, 60)?;
    let view = input.view;
    let n = windows_for(view, minutes);
    let mut total = Aggregate::default();
    let mut late = 0;
    let mut windows = 0;
    for (_, w) in view.recent(n) {
        total.plus_equals(&w.total());
        late += late_in(w);
        windows += 1;
    }
    let titles = sum_by(view, n, |k| match k {
        Key::Content { content_id, .. } => Some(content_id.clone()),
        _ => None,
    });
    Ok(json!({
        "total_downloads": total.downloads,
        "unique_content": titles.len(),
        "avg_success_rate": round(total.success_rate(), 3),
        "health_status": Health::of(total.success_rate()).name(),
        "avg_download_time": (total.downloads > 0).then(|| round(total.avg_duration_s(), 1)),
        "successful_downloads": total.successful,
        "failed_downloads": total.failed,
        "total_size_gb": round(total.total_size_gb(), 2),
        "late_events": late,
        "window_minutes": minutes,
        "windows": windows,
        "as_of": view.newest().map(|w| iso8601(w.end(view.window_ms()))),
    }))
}

/// `by=downloads` (the default: the old pipeline's answer) or `by=rising`.
fn trending(input: &Input, q: &Query) -> Result<Value, ApiError> {
    let rising = match q.get("by").map(str::trim) {
        None | Some("" | "downloads") => false,
        Some("rising") => true,
        Some(other) => {
            return Err(ApiError::bad_parameter(format!(
                "by must be downloads or rising, got {other:?}"
            )))
        }
    };
    let minutes = q.int("minutes", 5, 1, 60)?;
    let limit = q.int("limit", 5, 1, 20)? as usize;
    let view = input.view;
    if rising {
        return Ok(rising_list(view, limit));
    }
    let sums = sum_by(view, windows_for(view, minutes), |k| match k {
        Key::Content { content_id, title } => Some((content_id.clone(), title.clone())),
        _ => None,
    });
    let data: Vec<Value> = ranked(sums)
        .into_iter()
        .take(limit)
        .map(|((content_id, title), a)| {
            json!({
                "content_id": content_id,
                "title": title,
                "total_downloads": a.downloads,
                "successful_downloads": a.successful,
                "failed_downloads": a.failed,
                "success_rate": round(a.success_rate(), 3),
                "total_size_gb": round(a.total_size_gb(), 2),
            })
        })
        .collect();
    Ok(json!({ "count": data.len(), "data": data, "window_minutes": minutes }))
}

/// `trending?by=rising`: the rising list of the newest window that has one (`minutes` does not
/// apply: a list belongs to one window, and its forecasts look back over their own span).
fn rising_list(view: &View, limit: usize) -> Value {
    let newest = view.windows().iter().rev().find_map(|(window, state)| {
        let list = state.rising();
        (!list.is_empty()).then_some((*window, list))
    });
    let data: Vec<Value> = newest
        .iter()
        .flat_map(|(_, list)| list.iter().take(limit))
        .map(|(rank, content_id, title, forecast)| {
            json!({
                "rank": rank,
                "content_id": content_id,
                "title": title,
                "downloads": forecast.latest(),
                "predicted_downloads": round(forecast.next(), 3),
                "level": round(forecast.level(), 3),
                "trend": round(forecast.trend(), 3),
                "rising_score": round(forecast.rising(), 3),
                "history": forecast.history,
            })
        })
        .collect();
    let window = newest.map(|(window, _)| window);
    json!({
        "by": "rising",
        "count": data.len(),
        "data": data,
        "window_start": window.map(|w| iso8601(w.start())),
        "window_end": window.map(|w| iso8601(w.end(view.window_ms()))),
    })
}

/// Each region's newest baseline, with its window: looked for from the newest window that has
/// baselines back over as many windows as a baseline covers (a region with none there is new, or
/// has been gone longer than its baseline remembers). Also returns that newest window.
fn newest_baselines<'a>(
    view: &'a View,
    rules: &Rules,
) -> (BTreeMap<&'a str, (Window, &'a Baseline)>, Option<Window>) {
    let mut found = BTreeMap::new();
    let mut newest: Option<Window> = None;
    for (window, state) in view.windows().iter().rev() {
        if let Some(newest) = newest {
            let span = i64::from(rules.baselines.windows) * view.window_ms();
            if window.0 < newest.0 - span {
                break;
            }
        }
        for (region, baseline) in state.baselines() {
            newest.get_or_insert(*window);
            found.entry(region).or_insert((*window, baseline));
        }
    }
    (found, newest)
}

fn baseline_json(window: Window, baseline: &Baseline, rules: &Rules) -> Value {
    json!({
        "window_start": iso8601(window.start()),
        "health": rules.baseline_health(baseline),
        "mean_downloads": round(baseline.mean(), 2),
        "spread_downloads": round(baseline.spread(), 2),
        "baseline_error_rate": round(baseline.error_rate(), 4),
        "downloads": baseline.observed.downloads,
        "error_rate": round(baseline.observed.failure_rate(), 4),
        "traffic_score": round(baseline.traffic_score(), 2),
        "error_score": round(baseline.error_score(), 2),
        "windows": baseline.windows,
    })
}

/// Every region with traffic in the period, and every region whose baseline in the newest
/// settled window expects traffic it did not get: a region silent through the whole period has
/// no sums in it, and would otherwise vanish from the list at the moment it matters. Such a
/// region is listed with zero sums (so `success_rate` 0 and `health_status` "critical", as for
/// any region without downloads) after the others.
fn regions(input: &Input, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 5, 1, 60)?;
    let view = input.view;
    let mut sums = sum_by(view, windows_for(view, minutes), |k| match k {
        Key::Region(region) => Some(region.clone()),
        _ => None,
    });
    let (baselines, newest) = newest_baselines(view, input.rules);
    for (region, (window, _)) in &baselines {
        if Some(*window) == newest && !sums.contains_key(*region) {
            sums.insert(region.to_string(), Aggregate::default());
        }
    }
    let data: Vec<Value> = ranked(sums)
        .into_iter()
        .map(|(region, a)| {
            let baseline = baselines
                .get(region.as_str())
                .map(|(window, b)| baseline_json(*window, b, input.rules));
            json!({
                "region": region,
                "downloads": a.downloads,
                "successful": a.successful,
                "failed": a.failed,
                "success_rate": round(a.success_rate(), 3),
                "avg_speed": round(a.avg_speed_mbps(), 1),
                "avg_duration_s": round(a.avg_duration_s(), 1),
                "total_size_gb": round(a.total_size_gb(), 2),
                "health_status": Health::of(a.success_rate()).name(),
                "baseline": baseline,
            })
        })
        .collect();
    Ok(json!({ "count": data.len(), "data": data, "window_minutes": minutes }))
}

fn alerts(input: &Input, q: &Query) -> Result<Value, ApiError> {
    let limit = q.int("limit", 10, 1, 50)? as usize;
    let acknowledged = q.boolean("acknowledged", false)?;
    let severity = match q.get("severity").map(|s| s.trim().to_ascii_uppercase()) {
        None => None,
        Some(s) if s.is_empty() => None,
        Some(s) if s == "CRITICAL" || s == "WARNING" || s == "INFO" => Some(s),
        Some(s) => {
            return Err(ApiError::bad_parameter(format!(
                "severity must be CRITICAL, WARNING or INFO, got {s:?}"
            )))
        }
    };
    let view = input.view;
    let mut all: Vec<(i64, &Alert)> = view
        .windows()
        .values()
        .flat_map(WindowState::alerts)
        .map(|a| (a.id(), a))
        .collect();
    // Newest first; within a window the most severe first.
    all.sort_by(|(_, a), (_, b)| {
        b.window
            .cmp(&a.window)
            .then(a.severity.cmp(&b.severity))
            .then(a.rule.cmp(&b.rule))
            .then(a.region.cmp(&b.region))
    });
    // Acknowledgements live in PostgreSQL; without it every in-memory alert is unacknowledged.
    let is_acknowledged = |id: &i64| input.acknowledged.contains(id);
    let unacknowledged = all.iter().filter(|(id, _)| !is_acknowledged(id)).count();
    let w = view.window_ms();
    let data: Vec<Value> = all
        .into_iter()
        .filter(|(id, _)| is_acknowledged(id) == acknowledged)
        .filter(|(_, a)| severity.as_deref().is_none_or(|s| s == a.severity.name()))
        .take(limit)
        .map(|(id, a)| {
            // A baseline rule's threshold is the baseline's own value (a mean, a rate): rounded
            // like the measure it is compared with. A fixed rule's is the configured number.
            let threshold = match a.baseline {
                Some(_) => round(a.threshold(input.rules), 4),
                None => a.threshold(input.rules),
            };
            json!({
                "id": id,
                "alert_type": a.rule.name(),
                "severity": a.severity.name(),
                "message": a.message(),
                "region": a.region,
                "metric_name": a.rule.metric_name(),
                "metric_value": round(a.metric_value(), 4),
                "threshold_value": threshold,
                "baseline_value": a.baseline.map(|_| threshold),
                "score": a.score().map(|s| round(s, 2)),
                "created_at": iso8601(a.window.start()),
                "window_start": iso8601(a.window.start()),
                "window_end": iso8601(a.window.end(w)),
                "is_final": view.is_final(a.window),
                "acknowledged": is_acknowledged(&id),
            })
        })
        .collect();
    Ok(json!({ "count": data.len(), "data": data, "unacknowledged_count": unacknowledged }))
}

fn timeseries(input: &Input, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 60, 5, 1440)?;
    let view = input.view;
    let n = windows_for(view, minutes);
    let data: Vec<Value> = view
        .recent(n)
        .map(|(window, w)| {
            let total = w.total();
            json!({
                "window_start": iso8601(window.start()),
                "total_downloads": total.downloads,
                "successful_downloads": total.successful,
                "success_rate": round(total.success_rate(), 3),
                "unique_content": w.unique_content(),
                "late_events": late_in(w),
                "is_final": view.is_final(*window),
                "revised": w.revised,
            })
        })
        .collect();
    let end = view.newest().map(|w| w.end(view.window_ms()));
    let start = end.map(|e| e - n as i64 * view.window_ms());
    Ok(json!({
        "count": data.len(),
        "data": data,
        "start_time": start.map(iso8601),
        "end_time": end.map(iso8601),
    }))
}

fn devices(input: &Input, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 5, 1, 60)?;
    let limit = q.int("limit", 10, 1, 20)? as usize;
    let view = input.view;
    let sums = sum_by(view, windows_for(view, minutes), |k| match k {
        Key::Device { device, .. } => Some(device.clone()),
        _ => None,
    });
    let data: Vec<Value> = ranked(sums)
        .into_iter()
        .take(limit)
        .map(|(device, a)| {
            json!({
                "device": device,
                "total_downloads": a.downloads,
                "successful_downloads": a.successful,
                "success_rate": round(a.success_rate(), 3),
                "avg_speed": round(a.avg_speed_mbps(), 1),
            })
        })
        .collect();
    Ok(json!({ "count": data.len(), "data": data, "window_minutes": minutes }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso8601(i64::MAX), format!("{}ms", i64::MAX));
    }

    #[test]
    fn iso_dates_match_strftime_over_jiffs_range() {
        let (min, max) = (
            jiff::Timestamp::MIN.as_millisecond(),
            jiff::Timestamp::MAX.as_millisecond(),
        );
        // Near both ends, years 0–1 and 1969–1970, and a walk across the range whose step is
        // prime to every calendar unit; whatever jiff accepts must match its strftime.
        let year_1 = -62_135_596_800_000;
        let mut samples = vec![min, min + 1, max - 1, max, -1, 0, 1, year_1 - 1, year_1];
        let step = (max - min) / 100_003 + 7;
        samples.extend((0..100_003).map(|i| min + i * step));
        let mut checked = 0;
        for ms in samples {
            let Ok(t) = jiff::Timestamp::from_millisecond(ms) else {
                continue;
            };
            let expected = t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
            assert_eq!(iso8601(ms), expected, "{ms}");
            checked += 1;
        }
        assert!(checked > 100_000, "{checked}");
    }

    #[test]
    fn empty_view_answers_every_endpoint() {
        let view = View::new(60_000);
        let rules = streampulse_dataflow::Config::default().rules;
        let acknowledged = HashSet::new();
        let input = Input {
            view: &view,
            rules: &rules,
            acknowledged: &acknowledged,
        };
        let q = Query::parse("").unwrap();
        for (path, handler, _) in ENDPOINTS {
            let body = handler(&input, &q).unwrap_or_else(|e| panic!("{path}: {e:?}"));
            assert!(body.is_object(), "{path}");
        }
    }
}
