//! `/metrics` in the Prometheus text format (version 0.0.4), and the HTTP counters behind it.
//!
//! ```text
//!   Counters (dataflow) ─┐
//!   View (watermark)  ───┼─▶ render() ─▶ "# TYPE streampulse_events_total counter\n…"
//!   HttpMetrics ─────────┘
//! ```
//!
//! HTTP requests are counted by route *label* (a fixed set: the API's paths, `/assets/*`,
//! `static`, `unmatched`) and status, never by raw path, so a scan of random URLs cannot grow the
//! number of series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use hyper::StatusCode;

use super::State;

/// The Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    seconds: f64,
    count: u64,
}

/// Requests by route label and status, and time spent answering them.
#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<BTreeMap<&'static str, RouteStats>>,
}

impl HttpMetrics {
    pub fn record(&self, route: &'static str, status: StatusCode, elapsed: Duration) {
        let mut routes = self.routes.lock().expect("metrics lock");
        let stats = routes.entry(route).or_default();
        *stats.by_status.entry(status.as_u16()).or_default() += 1;
        stats.seconds += elapsed.as_secs_f64();
        stats.count += 1;
    }
}

/// One metric family: `# HELP`, `# TYPE` and its samples (`labels` is `{…}` or empty).
fn family<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, V)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn one<V>(value: V) -> [(String, V); 1] {
    [(String::new(), value)]
}

/// Label values are route labels and version strings, but escape them as the format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

pub fn render(state: &State) -> String {
    let mut out = String::with_capacity(4096);
    let c = &state.counters;
    let (watermark, windows, version) = {
        let view = state.view.read().expect("view lock");
        (view.watermark(), view.windows().len(), view.version())
    };
    let view_events = state.view.read().expect("view lock").events();
    family(
        &mut out,
        "streampulse_build_info",
        "gauge",
        "Always 1; the version is a label.",
        [(
            format!("{{version=\"{}\"}}", label(env!("CARGO_PKG_VERSION"))),
            1,
        )],
    );
    family(
        &mut out,
        "streampulse_uptime_seconds",
        "gauge",
        "Seconds since the API started.",
        one(state.started.elapsed().as_secs_f64()),
    );
    let counters = [
        (
            "streampulse_events_total",
            "Events decoded from the source (late ones included).",
            &c.events,
        ),
        (
            "streampulse_late_events_total",
            "Events that arrived after their window's allowed lateness.",
            &c.late,
        ),
        (
            "streampulse_dead_letters_total",
            "Records that could not be decoded.",
            &c.dead_letters,
        ),
        (
            "streampulse_batches_total",
            "Batches fed to the dataflow.",
            &c.batches,
        ),
    ];
    for (name, help, counter) in counters {
        family(
            &mut out,
            name,
            "counter",
            help,
            one(counter.load(Ordering::Relaxed)),
        );
    }
    family(
        &mut out,
        "streampulse_windows_in_memory",
        "gauge",
        "Windows held by the API's in-memory view.",
        one(windows),
    );
    family(
        &mut out,
        "streampulse_ledger_windows",
        "gauge",
        "Windows held in the dataflow workers' ledgers (what retention bounds).",
        one(c.ledger_windows.load(Ordering::Relaxed)),
    );
    // No sample until the workers have established a watermark.
    family(
        &mut out,
        "streampulse_watermark_seconds",
        "gauge",
        "Event time (seconds since the epoch) up to which every window's output is complete.",
        watermark.map(|w| (String::new(), w as f64 / 1000.0)),
    );
    family(
        &mut out,
        "streampulse_view_events_total",
        "counter",
        "Events (counted or late) that have reached the in-memory view the API serves.",
        one(view_events),
    );
    state.event_to_view.render(
        &mut out,
        "streampulse_event_to_view_seconds",
        "Age of the newest record of each update when it reached the view (from its Kafka timestamp).",
    );
    family(
        &mut out,
        "streampulse_view_updates_total",
        "counter",
        "Output updates applied to the in-memory view.",
        one(version),
    );
    family(
        &mut out,
        "streampulse_response_cache_hits_total",
        "counter",
        "API answers served from the serialised-response cache.",
        one(state.cache.hits.load(Ordering::Relaxed)),
    );
    family(
        &mut out,
        "streampulse_response_cache_misses_total",
        "counter",
        "API answers computed because the cache had none for the current version.",
        one(state.cache.misses.load(Ordering::Relaxed)),
    );
    family(
        &mut out,
        "streampulse_response_cache_entries",
        "gauge",
        "Serialised answers held.",
        one(state.cache.len()),
    );
    family(
        &mut out,
        "streampulse_alert_acknowledgements_total",
        "counter",
        "Alerts acknowledged through POST /api/alerts/{id}/ack.",
        one(state.acks.acknowledged_total()),
    );

    if let Some(sink) = &state.sink {
        family(
            &mut out,
            "streampulse_sink_commits_total",
            "counter",
            "PostgreSQL transactions committed by the sink.",
            one(sink.commits.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "streampulse_sink_commit_seconds_total",
            "counter",
            "Time spent in committed sink transactions (divide by commits for the mean latency).",
            one(sink.commit_micros.load(Ordering::Relaxed) as f64 / 1e6),
        );
        family(
            &mut out,
            "streampulse_sink_retries_total",
            "counter",
            "Sink transactions retried after a transient database error.",
            one(sink.retries.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "streampulse_sink_refused_rows_total",
            "counter",
            "Rows PostgreSQL refused, stored in dead_letters (partition -1).",
            one(sink.refused.load(Ordering::Relaxed)),
        );
        sink.event_to_postgres.render(
            &mut out,
            "streampulse_event_to_postgres_seconds",
            "Age of the newest record of each committed batch at its commit (from its Kafka timestamp).",
        );
    }
    if let Some(notify) = &state.notify {
        let outcomes = notify.outcomes.lock().expect("notify stats lock").clone();
        let mut samples = Vec::new();
        for name in &notify.destinations {
            let counts = outcomes.get(name).copied().unwrap_or_default();
            for (outcome, count) in ["delivered", "failed", "abandoned"].iter().zip(counts) {
                samples.push((
                    format!("{{destination=\"{}\",outcome=\"{outcome}\"}}", label(name)),
                    count,
                ));
            }
        }
        family(
            &mut out,
            "streampulse_notifications_total",
            "counter",
            "Notification attempts by destination and outcome (failed: will be retried; abandoned: given up).",
            samples,
        );
        family(
            &mut out,
            "streampulse_notifications_pending",
            "gauge",
            "Notifications in the outbox not yet delivered.",
            one(notify.pending.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "streampulse_notifications_retrying",
            "gauge",
            "Pending notifications that have failed at least once.",
            one(notify.retrying.load(Ordering::Relaxed)),
        );
        family(
            &mut out,
            "streampulse_notifications_oldest_pending_seconds",
            "gauge",
            "Age of the oldest undelivered notification.",
            one(notify.oldest_pending_ms.load(Ordering::Relaxed) as f64 / 1000.0),
        );
    }
    if let Some(highs) = &state.high_watermarks {
        let positions = state.view.read().expect("view lock").positions().clone();
        let highs = highs.lock().expect("lag lock").clone();
        family(
            &mut out,
            "streampulse_kafka_lag_records",
            "gauge",
            "Records in each partition not yet read by the dataflow (high watermark minus position).",
            highs.into_iter().map(|(partition, high)| {
                let read = positions.get(&partition).copied().unwrap_or(0);
                (format!("{{partition=\"{partition}\"}}"), (high - read).max(0))
            }),
        );
    }

    family(
        &mut out,
        "streampulse_http_connections",
        "gauge",
        "HTTP connections open (see the connection policy in the README).",
        one(state.connections.open()),
    );
    family(
        &mut out,
        "streampulse_http_connections_closed_total",
        "counter",
        "HTTP connections the server closed or turned away, by reason.",
        crate::http::Closed::ALL.map(|reason| {
            (
                format!("{{reason=\"{}\"}}", reason.label()),
                state.connections.closed(reason),
            )
        }),
    );

    let push = &state.push.stats;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    family(
        &mut out,
        "streampulse_push_streams",
        "gauge",
        "Push streams (/api/stream) open.",
        one(state.push.open_streams()),
    );
    family(
        &mut out,
        "streampulse_push_frames_total",
        "counter",
        "Frames of changed panels sent on push streams (heartbeats not counted).",
        one(load(&push.frames)),
    );
    family(
        &mut out,
        "streampulse_push_streams_opened_total",
        "counter",
        "Push streams opened, by start: fresh (no Last-Event-ID), resume (only what changed after the id), resync (an id of another boot or malformed: every panel).",
        [
            ("{start=\"fresh\"}".to_string(), load(&push.fresh)),
            ("{start=\"resume\"}".to_string(), load(&push.resumed)),
            ("{start=\"resync\"}".to_string(), load(&push.resynced)),
        ],
    );
    family(
        &mut out,
        "streampulse_push_streams_refused_total",
        "counter",
        "Push streams turned away with 503 (--push-max-streams reached, or 0).",
        one(load(&push.refused)),
    );
    family(
        &mut out,
        "streampulse_push_dropped_slow_total",
        "counter",
        "Push streams dropped because their client left a frame unread too long (it reconnects and resumes).",
        one(state.connections.closed(crate::http::Closed::StreamStalled)),
    );

    let routes = state.http.routes.lock().expect("metrics lock");
    family(
        &mut out,
        "streampulse_http_requests_total",
        "counter",
        "HTTP requests by route and status.",
        routes.iter().flat_map(|(route, stats)| {
            stats.by_status.iter().map(move |(status, n)| {
                (
                    format!("{{route=\"{}\",status=\"{status}\"}}", label(route)),
                    *n,
                )
            })
        }),
    );
    let name = "streampulse_http_request_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from reading a request's head to having its response, by route.\n# TYPE {name} summary"
    );
    for (route, stats) in routes.iter() {
        let route = label(route);
        let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", stats.seconds);
        let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", stats.count);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_well_formed() {
        let mut out = String::new();
        family(&mut out, "x_total", "counter", "An x.", one(3));
        family(
            &mut out,
            "y",
            "gauge",
            "A y.",
            [("{a=\"1\"}".to_string(), 1.5)],
        );
        assert_eq!(
            out,
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total 3\n# HELP y A y.\n# TYPE y gauge\ny{a=\"1\"} 1.5\n"
        );
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn requests_are_counted_by_route_and_status() {
        let http = HttpMetrics::default();
        http.record("/health", StatusCode::OK, Duration::from_millis(2));
        http.record("/health", StatusCode::OK, Duration::from_millis(2));
        http.record("unmatched", StatusCode::NOT_FOUND, Duration::ZERO);
        let routes = http.routes.lock().unwrap();
        assert_eq!(routes["/health"].by_status[&200], 2);
        assert_eq!(routes["/health"].count, 2);
        assert!((routes["/health"].seconds - 0.004).abs() < 1e-9);
        assert_eq!(routes["unmatched"].by_status[&404], 1);
    }
}
