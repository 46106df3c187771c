//! The HTTP API: the old pipeline's endpoints, parameters and field names, answered from the
//! in-memory [`View`], so it works without PostgreSQL.
//!
//! ```text
//!   GET /health                                   GET /api/stats/alerts?limit&severity&acknowledged
//!   GET /api/stats/realtime?minutes               GET /api/stats/timeseries?minutes
//!   GET /api/stats/trending?minutes&limit         GET /api/stats/devices?minutes&limit
//!   GET /api/stats/regions?minutes
//! ```
//!
//! "Now" is the stream's own clock: `minutes=5` means the windows covering the 5 newest minutes of
//! event time. Rates are fractions (0–1) computed from sums, not averages of per-window ratios. A bad
//! parameter is a 400 with a JSON body; an unknown path 404; a wrong method 405.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use differential_dataflow::difference::Semigroup;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use streampulse_dataflow::{
    watermark_of, Aggregate, Alert, Counters, Key, Rule, Rules, View, WindowState,
};

/// What the handlers read.
pub struct State {
    pub view: Arc<RwLock<View>>,
    pub counters: Arc<Counters>,
    pub rules: Rules,
    pub started: Instant,
}

impl State {
    pub fn new(view: Arc<RwLock<View>>, counters: Arc<Counters>, rules: Rules) -> State {
        State {
            view,
            counters,
            rules,
            started: Instant::now(),
        }
    }
}

/// A request that cannot be answered, as a JSON error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

impl ApiError {
    fn bad_parameter(detail: String) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_parameter",
            detail,
        }
    }
}

type Handler = fn(&State, &Query) -> Result<Value, ApiError>;

const ROUTES: [(&str, Handler); 7] = [
    ("/health", health),
    ("/api/stats/realtime", realtime),
    ("/api/stats/trending", trending),
    ("/api/stats/regions", regions),
    ("/api/stats/alerts", alerts),
    ("/api/stats/timeseries", timeseries),
    ("/api/stats/devices", devices),
];

pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if req.method() == Method::GET || req.method() == Method::HEAD {
        if let Some((content_type, body)) = crate::assets::get(path) {
            let mut response = Response::new(Full::new(Bytes::from_static(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            return response;
        }
    }
    let Some((_, handler)) = ROUTES.iter().find(|(p, _)| *p == path) else {
        let error = ApiError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            detail: format!("no endpoint at {path}"),
        };
        return error_response(error);
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let error = ApiError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            error: "method_not_allowed",
            detail: format!("{} is not allowed on {path}; use GET", req.method()),
        };
        let mut response = error_response(error);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let result = Query::parse(req.uri().query().unwrap_or("")).and_then(|q| handler(state, &q));
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(error) => error_response(error),
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("a Value always serialises");
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(error: ApiError) -> Response<Full<Bytes>> {
    json_response(
        error.status,
        &json!({ "error": error.error, "detail": error.detail }),
    )
}

/// Query-string parameters, percent-decoded.
pub struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Result<Query, ApiError> {
        if query.len() > 2048 {
            return Err(ApiError::bad_parameter(
                "query string longer than 2048 bytes".into(),
            ));
        }
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(name)?, decode(value)?));
        }
        Ok(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// An integer parameter within `[lo, hi]`, or `default` when absent.
    fn int(&self, name: &str, default: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(v) if (lo..=hi).contains(&v) => Ok(v),
                _ => Err(ApiError::bad_parameter(format!(
                    "{name} must be an integer from {lo} to {hi}, got {raw:?}"
                ))),
            },
        }
    }

    fn boolean(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(raw) => Err(ApiError::bad_parameter(format!(
                "{name} must be true or false, got {raw:?}"
            ))),
        }
    }
}

fn decode(raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                out.push(byte.ok_or_else(|| {
                    ApiError::bad_parameter(format!("bad percent-encoding in {raw:?}"))
                })?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_parameter("parameters must be UTF-8".into()))
}

/// Milliseconds since the epoch as ISO-8601 UTC (`2024-05-01T12:34:00.000Z`).
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000)
    )
}

fn round(x: f64, places: i32) -> f64 {
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

fn late_in(state: &WindowState) -> i64 {
    state
        .stats
        .iter()
        .filter(|(k, _)| matches!(k, Key::Late { .. }))
        .map(|(_, a)| a.downloads)
        .sum()
}

fn health(state: &State, _: &Query) -> Result<Value, ApiError> {
    let view = state.view.read().expect("view lock");
    Ok(json!({
        "status": "healthy",
        "database": Value::Null,
        "timestamp": iso8601(now_ms()),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "events": state.counters.events.load(Ordering::Relaxed),
        "late_events": state.counters.late.load(Ordering::Relaxed),
        "watermark": view.frontier().map(|t| iso8601(watermark_of(t))),
        "newest_window": view.newest().map(|w| iso8601(w.start())),
        "windows_in_memory": view.windows().len(),
    }))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn realtime(state: &State, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 5, 1, 60)?;
    let view = state.view.read().expect("view lock");
    let n = windows_for(&view, minutes);
    let mut total = Aggregate::default();
    let mut late = 0;
    let mut windows = 0;
    for (_, w) in view.recent(n) {
        total.plus_equals(&w.total());
        late += late_in(w);
        windows += 1;
    }
    let titles = sum_by(&view, n, |k| match k {
        Key::Content { content_id, .. } => Some(content_id.clone()),
        _ => None,
    });
    Ok(json!({
        "total_downloads": total.downloads,
        "unique_content": titles.len(),
        "avg_success_rate": round(total.success_rate(), 3),
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

fn trending(state: &State, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 5, 1, 60)?;
    let limit = q.int("limit", 5, 1, 20)? as usize;
    let view = state.view.read().expect("view lock");
    let sums = sum_by(&view, windows_for(&view, minutes), |k| match k {
        Key::Content { content_id, title } => Some((content_id.clone(), title.clone())),
        _ => None,
    });
    let mut ranked: Vec<_> = sums.into_iter().collect();
    ranked.sort_by(|a, b| {
        b.1.downloads
            .cmp(&a.1.downloads)
            .then_with(|| a.0.cmp(&b.0))
    });
    let data: Vec<Value> = ranked
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

/// healthy ≥ 0.95 > degraded ≥ 0.90 > critical.
pub fn health_status(success_rate: f64) -> &'static str {
    if success_rate >= 0.95 {
        "healthy"
    } else if success_rate >= 0.90 {
        "degraded"
    } else {
        "critical"
    }
}

fn regions(state: &State, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 5, 1, 60)?;
    let view = state.view.read().expect("view lock");
    let sums = sum_by(&view, windows_for(&view, minutes), |k| match k {
        Key::Region(region) => Some(region.clone()),
        _ => None,
    });
    let mut rows: Vec<_> = sums.into_iter().collect();
    rows.sort_by(|a, b| {
        b.1.downloads
            .cmp(&a.1.downloads)
            .then_with(|| a.0.cmp(&b.0))
    });
    let data: Vec<Value> = rows
        .into_iter()
        .map(|(region, a)| {
            json!({
                "region": region,
                "downloads": a.downloads,
                "successful": a.successful,
                "failed": a.failed,
                "success_rate": round(a.success_rate(), 3),
                "avg_speed": round(a.avg_speed_mbps(), 1),
                "avg_duration_s": round(a.avg_duration_s(), 1),
                "total_size_gb": round(a.total_size_gb(), 2),
                "health_status": health_status(a.success_rate()),
            })
        })
        .collect();
    Ok(json!({ "count": data.len(), "data": data, "window_minutes": minutes }))
}

/// A stable id for an alert: the same rule, region and window always get the same id.
pub fn alert_id(alert: &Alert) -> i64 {
    // FNV-1a over the identifying fields, kept within JavaScript's exact integer range.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let key = format!(
        "{}|{}|{}",
        alert.rule.name(),
        alert.region,
        alert.window.start()
    );
    for byte in key.bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash & ((1 << 53) - 1)) as i64
}

pub fn threshold(rules: &Rules, rule: Rule) -> f64 {
    match rule {
        Rule::HighErrorRate | Rule::SustainedErrorRate => rules.error_rate,
        Rule::SlowDownloads => rules.slow_mbps,
        Rule::CdnFailure => rules.cdn_share,
    }
}

fn alerts(state: &State, q: &Query) -> Result<Value, ApiError> {
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
    let view = state.view.read().expect("view lock");
    let mut all: Vec<&Alert> = view
        .windows()
        .values()
        .flat_map(WindowState::alerts)
        .collect();
    // Newest first; within a window the most severe first.
    all.sort_by(|a, b| {
        b.window
            .cmp(&a.window)
            .then(a.severity.cmp(&b.severity))
            .then(a.rule.cmp(&b.rule))
            .then(a.region.cmp(&b.region))
    });
    // Acknowledgements live in PostgreSQL; the in-memory alerts are all unacknowledged.
    let unacknowledged = all.len();
    let data: Vec<Value> = all
        .into_iter()
        .filter(|_| !acknowledged)
        .filter(|a| severity.as_deref().is_none_or(|s| s == a.severity.name()))
        .take(limit)
        .map(|a| {
            let w = view.window_ms();
            json!({
                "id": alert_id(a),
                "alert_type": a.rule.name(),
                "severity": a.severity.name(),
                "message": a.message(),
                "region": a.region,
                "metric_name": a.rule.metric_name(),
                "metric_value": round(a.metric_value(), 4),
                "threshold_value": threshold(&state.rules, a.rule),
                "created_at": iso8601(a.window.start()),
                "window_start": iso8601(a.window.start()),
                "window_end": iso8601(a.window.end(w)),
                "is_final": view.is_final(a.window),
                "acknowledged": false,
            })
        })
        .collect();
    Ok(json!({ "count": data.len(), "data": data, "unacknowledged_count": unacknowledged }))
}

fn timeseries(state: &State, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 60, 5, 1440)?;
    let view = state.view.read().expect("view lock");
    let n = windows_for(&view, minutes);
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

fn devices(state: &State, q: &Query) -> Result<Value, ApiError> {
    let minutes = q.int("minutes", 5, 1, 60)?;
    let limit = q.int("limit", 10, 1, 20)? as usize;
    let view = state.view.read().expect("view lock");
    let sums = sum_by(&view, windows_for(&view, minutes), |k| match k {
        Key::Device { device, .. } => Some(device.clone()),
        _ => None,
    });
    let mut rows: Vec<_> = sums.into_iter().collect();
    rows.sort_by(|a, b| {
        b.1.downloads
            .cmp(&a.1.downloads)
            .then_with(|| a.0.cmp(&b.0))
    });
    let data: Vec<Value> = rows
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
    }

    #[test]
    fn query_bounds() {
        let q = Query::parse("minutes=7&limit=abc&x=%41+b").unwrap();
        assert_eq!(q.int("minutes", 5, 1, 60).unwrap(), 7);
        assert!(q
            .int("limit", 5, 1, 20)
            .unwrap_err()
            .detail
            .contains("limit"));
        assert_eq!(q.get("x"), Some("A b"));
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("minutes=61")
            .unwrap()
            .int("minutes", 5, 1, 60)
            .is_err());
    }

    #[test]
    fn health_thresholds() {
        assert_eq!(health_status(0.95), "healthy");
        assert_eq!(health_status(0.9499), "degraded");
        assert_eq!(health_status(0.90), "degraded");
        assert_eq!(health_status(0.8999), "critical");
    }
}
