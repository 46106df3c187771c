//! The HTTP API: the old pipeline's endpoints, parameters and field names, answered from the
//! in-memory [`View`] so it works without PostgreSQL, plus metrics, the OpenAPI document, the
//! dashboard and alert acknowledgements.
//!
//! ```text
//!   GET /health                       GET /api/stats/alerts?limit&severity&acknowledged
//!   GET /api/stats/realtime?minutes   GET /api/stats/timeseries?minutes
//!   GET /api/stats/trending?by&minutes&limit      (by=downloads, or by=rising: the forecast list)
//!   GET /api/stats/regions?minutes    GET /api/stats/devices?minutes&limit
//!   GET /metrics   GET /openapi.json   GET /docs   GET / and /assets/*   POST /api/alerts/{id}/ack
//!   GET /api/episodes?state&limit     POST /api/episodes/{id}/ack
//!   GET /api/stream?last_event_id&panels   (server-sent events: the dashboard's panels as they change)
//! ```
//!
//! [`handle`] routes a request, then adds what every response carries: CORS headers
//! ([`cors`]), `X-Response-Time`, and a count in the HTTP metrics ([`metrics`]). The stats
//! endpoints ([`stats`]) are serialised once per change of the view and served from [`cache`];
//! [`push`] streams the same bodies to the dashboard as they change.
//! A bad parameter is a 400 with a JSON body, an unknown path 404, a wrong method 405 (with
//! `Allow`), a body over 16 KiB 413, a body slower than the server's body timeout 408 (`http`);
//! every error is `{"error": code, "detail": text}`.

mod ack;
mod cache;
mod cors;
mod metrics;
mod openapi;
pub mod push;
mod query;
mod stats;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use hyper::body::Bytes;
use hyper::header::{
    HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ORIGIN,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use streampulse_dataflow::{Counters, Rules, View};

use crate::cli::ApiArgs;
use crate::http::{ConnectionStats, Limits, RequestBody};
use crate::store::{episodes, Database};

pub use stats::iso8601;

pub use crate::http::Reply;

/// What the handlers read, and what the API keeps between requests.
pub struct State {
    pub view: Arc<RwLock<View>>,
    pub counters: Arc<Counters>,
    pub rules: Rules,
    pub started: Instant,
    cors: cors::Cors,
    acks: ack::Acks,
    http: metrics::HttpMetrics,
    cache: cache::ResponseCache,
    /// The push streams (`/api/stream`).
    pub push: push::Push,
    /// The sink's commit counters, when PostgreSQL is configured.
    pub sink: Option<Arc<crate::sink::SinkStats>>,
    /// The Kafka topic's high watermarks per partition, refreshed in the background.
    pub high_watermarks: Option<Arc<std::sync::Mutex<std::collections::BTreeMap<u32, i64>>>>,
    /// The broker as the pipeline's probe last saw it (with a Kafka source).
    pub kafka: Option<Arc<crate::health::Link>>,
    /// How old the newest record of each update was when it reached the view (the collector
    /// counts it).
    pub event_to_view: Arc<crate::latency::Histogram>,
    /// The HTTP server's connection policy (`http`), and what it counts.
    pub http_limits: Limits,
    pub connections: Arc<ConnectionStats>,
    /// The notification destinations (names and filters), for acknowledgements that notify.
    pub routes: Vec<crate::notify::Route>,
    /// The notifier's counters, when this process delivers notifications.
    pub notify: Option<Arc<crate::notify::NotifyStats>>,
}

impl State {
    /// `db` is where alerts are acknowledged (`None`: acknowledging answers 503).
    pub fn new(
        view: Arc<RwLock<View>>,
        counters: Arc<Counters>,
        rules: Rules,
        args: &ApiArgs,
        db: Option<Database>,
    ) -> State {
        State {
            view,
            counters,
            rules,
            started: Instant::now(),
            cors: cors::Cors::new(&args.cors_origins),
            acks: ack::Acks::new(db, args.ack_token.as_ref()),
            http: metrics::HttpMetrics::default(),
            cache: cache::ResponseCache::default(),
            push: push::Push::new(
                args.push_max_streams,
                std::time::Duration::from_millis(args.push_interval_ms),
            ),
            sink: None,
            high_watermarks: None,
            kafka: None,
            event_to_view: Arc::default(),
            http_limits: args.http_limits(),
            connections: Arc::default(),
            routes: Vec::new(),
            notify: None,
        }
    }
}

/// A request that cannot be answered, as a JSON error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
    header: Option<(HeaderName, HeaderValue)>,
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, detail: String) -> ApiError {
        ApiError {
            status,
            error,
            detail,
            header: None,
        }
    }

    fn bad_parameter(detail: String) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_parameter", detail)
    }

    fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.header = Some((name, value));
        self
    }

    fn into_reply(self) -> Reply {
        let body = json!({ "error": self.error, "detail": self.detail });
        let mut response = json_reply(self.status, &body);
        if let Some((name, value)) = self.header {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// What a path names.
enum Route {
    Health,
    /// An index into [`stats::ENDPOINTS`].
    Stats(usize),
    Stream,
    Metrics,
    OpenApi,
    Docs,
    /// What is acknowledged, and the `{id}` segment, not yet checked.
    Ack(ack::Subject, String),
    /// `GET /api/episodes`.
    Episodes,
    /// An embedded dashboard file: its metrics label, content type and bytes.
    File(&'static str, &'static str, &'static [u8]),
}

const READ: &str = "GET, HEAD, OPTIONS";
const WRITE: &str = "POST, OPTIONS";

impl Route {
    fn of(path: &str) -> Option<Route> {
        let route = match path {
            "/health" => Route::Health,
            "/metrics" => Route::Metrics,
            "/openapi.json" => Route::OpenApi,
            "/docs" => Route::Docs,
            "/api/stream" => Route::Stream,
            _ => {
                if let Some(i) = stats::ENDPOINTS.iter().position(|(p, _, _)| *p == path) {
                    Route::Stats(i)
                } else if path == "/api/episodes" {
                    Route::Episodes
                } else if let Some((subject, id)) = [
                    ("/api/alerts/", ack::Subject::Alert),
                    ("/api/episodes/", ack::Subject::Episode),
                ]
                .into_iter()
                .find_map(|(prefix, subject)| {
                    let id = path.strip_prefix(prefix)?.strip_suffix("/ack")?;
                    (!id.is_empty() && !id.contains('/')).then(|| (subject, id.to_string()))
                }) {
                    Route::Ack(subject, id)
                } else {
                    let (content_type, body) = crate::assets::get(path)?;
                    let label = match path {
                        "/" | "/index.html" => "/",
                        p if p.starts_with("/assets/") => "/assets/*",
                        _ => "static",
                    };
                    Route::File(label, content_type, body)
                }
            }
        };
        Some(route)
    }

    /// The metrics label: one of a fixed set, whatever the path.
    fn label(&self) -> &'static str {
        match self {
            Route::Health => "/health",
            Route::Stats(i) => stats::ENDPOINTS[*i].0,
            Route::Stream => "/api/stream",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/openapi.json",
            Route::Docs => "/docs",
            Route::Ack(ack::Subject::Alert, _) => "/api/alerts/{id}/ack",
            Route::Ack(ack::Subject::Episode, _) => "/api/episodes/{id}/ack",
            Route::Episodes => "/api/episodes",
            Route::File(label, _, _) => label,
        }
    }

    fn methods(&self) -> &'static str {
        match self {
            Route::Ack(..) => WRITE,
            _ => READ,
        }
    }

    fn allows(&self, method: &Method) -> bool {
        match self {
            Route::Ack(..) => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

/// The API as the HTTP server's [`Handler`](crate::http::Handler).
pub fn handler(state: Arc<State>) -> crate::http::Handler {
    Arc::new(move |req| {
        let state = state.clone();
        Box::pin(async move { handle(&state, req).await })
    })
}

pub async fn handle(state: &Arc<State>, req: Request<RequestBody>) -> Reply {
    let started = Instant::now();
    let origin = req.headers().get(ORIGIN).cloned();
    let (label, result) = match Route::of(req.uri().path()) {
        Some(route) => (route.label(), respond(state, route, req).await),
        None => {
            let detail = format!("no endpoint at {}", req.uri().path());
            let error = ApiError::new(StatusCode::NOT_FOUND, "not_found", detail);
            ("unmatched", Err(error))
        }
    };
    let mut response = result.unwrap_or_else(ApiError::into_reply);
    state.cors.decorate(origin.as_ref(), response.headers_mut());
    let elapsed = started.elapsed();
    let took = format!("{:.3}ms", elapsed.as_secs_f64() * 1000.0);
    response.headers_mut().insert(
        HeaderName::from_static("x-response-time"),
        HeaderValue::from_str(&took).expect("a number and `ms` make a valid header"),
    );
    state.http.record(label, response.status(), elapsed);
    response
}

async fn respond(
    state: &Arc<State>,
    route: Route,
    req: Request<RequestBody>,
) -> Result<Reply, ApiError> {
    if req.method() == Method::OPTIONS {
        return Ok(state
            .cors
            .preflight(req.headers().get(ORIGIN), route.methods()));
    }
    if !route.allows(req.method()) {
        let detail = format!(
            "{} is not allowed on {}; use {}",
            req.method(),
            req.uri().path(),
            route.methods()
        );
        return Err(
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", detail)
                .with_header(ALLOW, HeaderValue::from_static(route.methods())),
        );
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ack::MAX_BODY as u64) {
        return Err(ack::too_large());
    }
    let reply = match route {
        Route::File(label, content_type, body) => {
            // Names under /assets/ carry a content hash; the pages that name them must be revalidated.
            let caching = if label == "/assets/*" {
                "public, max-age=31536000, immutable"
            } else {
                "no-cache"
            };
            cached_for(
                reply(StatusCode::OK, Some(content_type), Bytes::from_static(body)),
                caching,
            )
        }
        Route::Docs => {
            let (content_type, body) = crate::assets::get("/docs.html")
                .unwrap_or(("text/html; charset=utf-8", DOCS_NOT_BUILT.as_bytes()));
            cached_for(
                reply(StatusCode::OK, Some(content_type), Bytes::from_static(body)),
                "no-cache",
            )
        }
        Route::Health => {
            let links = stats::Links {
                database: state.sink.as_ref().map(|s| &s.database),
                kafka: state.kafka.as_deref(),
            };
            let mut body = {
                let view = state.view.read().expect("view lock");
                stats::health(
                    &view,
                    &state.counters,
                    state.started.elapsed().as_secs(),
                    &links,
                )
            };
            if let Some(notify) = &state.notify {
                notifications_health(notify, &mut body);
            }
            json_reply(StatusCode::OK, &body)
        }
        Route::Stats(i) => {
            json_bytes(stats_body(state, i, req.uri().query().unwrap_or(""), true).await?)
        }
        Route::Stream => push::open(state, &req)?,
        Route::Metrics => reply(
            StatusCode::OK,
            Some(metrics::CONTENT_TYPE),
            Bytes::from(metrics::render(state)),
        ),
        Route::OpenApi => reply(
            StatusCode::OK,
            Some("application/json"),
            openapi::document(),
        ),
        Route::Episodes => {
            let q = query::Query::parse(req.uri().query().unwrap_or(""))?;
            let filter = match q.get("state").unwrap_or("current") {
                "current" | "" => episodes::Filter::Current,
                "open" => episodes::Filter::State("open"),
                "resolved" => episodes::Filter::State("resolved"),
                "withdrawn" => episodes::Filter::State("withdrawn"),
                "all" => episodes::Filter::All,
                other => {
                    return Err(ApiError::bad_parameter(format!(
                    "state must be one of current, open, resolved, withdrawn, all; got {other:?}"
                )))
                }
            };
            let limit = q.int("limit", 50, 1, 500)?;
            let body = state.acks.episodes(filter, limit).await?;
            cached_for(json_reply(StatusCode::OK, &body), "no-store")
        }
        Route::Ack(subject, id) => {
            let alert = state
                .acks
                .acknowledge(subject, &id, req, &state.routes)
                .await?;
            cached_for(json_reply(StatusCode::OK, &alert), "no-store")
        }
    };
    Ok(reply)
}

/// Adds the notifier's state to `/health`: a notification that keeps failing (or was abandoned)
/// makes the status "degraded", with the destination and the reason (never its URL) in `problems`.
fn notifications_health(notify: &crate::notify::NotifyStats, body: &mut Value) {
    use std::sync::atomic::Ordering::Relaxed;
    let [delivered, failed, abandoned] = notify.totals();
    let retrying = notify.retrying.load(Relaxed);
    let last_error = notify.last_error.lock().expect("notify stats lock").clone();
    let mut problems = Vec::new();
    if retrying > 0 {
        let (destination, error) = last_error.clone().unwrap_or_default();
        problems.push(format!(
            "notifications: {retrying} failing and being retried (last: {destination}: {error})"
        ));
    }
    if abandoned > 0 {
        problems.push(format!(
            "notifications: {abandoned} abandoned after failing past the give-up age"
        ));
    }
    if notify.database.state() == crate::health::LinkState::Unreachable {
        problems.push(format!(
            "notifications: the outbox cannot be read ({})",
            notify.database.error().unwrap_or_default()
        ));
    }
    body["notifications"] = json!({
        "destinations": notify.destinations,
        "pending": notify.pending.load(Relaxed),
        "retrying": retrying,
        "oldest_pending_seconds": notify.oldest_pending_ms.load(Relaxed) as f64 / 1000.0,
        "delivered": delivered,
        "failed_attempts": failed,
        "abandoned": abandoned,
        "last_error": last_error.map(|(d, e)| json!({"destination": d, "error": e})),
    });
    if !problems.is_empty() {
        body["status"] = json!("degraded");
        if let Some(list) = body["problems"].as_array_mut() {
            list.extend(problems.into_iter().map(Value::from));
        }
    }
}

/// A stats endpoint's body: from the cache when the view has not changed since it was computed,
/// or when it was computed less than `cache::REUSE_FOR` ago (found without the view's lock).
/// Without `reuse` it is computed from the view as it is now (and cached): what [`push`] renders
/// once per interval for every stream, where an answer up to `REUSE_FOR` old would delay a change
/// by a whole interval.
async fn stats_body(state: &State, i: usize, query: &str, reuse: bool) -> Result<Bytes, ApiError> {
    let (path, handler, params) = stats::ENDPOINTS[i];
    let q = query::Query::parse(query)?;
    let key = (path, q.normalised(params));
    let acks = if path == "/api/stats/alerts" {
        // The oldest window bounds the acknowledgements read: only a refresh needs it.
        let oldest = || {
            let view = state.view.read().expect("view lock");
            view.windows().keys().next().map(|w| w.start())
        };
        Some(state.acks.current(oldest).await)
    } else {
        None
    };
    let generation = acks.as_ref().map_or(0, |(_, generation)| *generation);
    // (Asked only with `reuse`: the cache counts what it is asked.)
    if let Some(body) = reuse
        .then(|| state.cache.recent(&key, generation))
        .flatten()
    {
        return Ok(body);
    }
    let acknowledged = acks.map(|(ids, _)| ids).unwrap_or_default();
    // The view's lock is held while computing, not while serialising.
    let (version, value) = {
        let view = state.view.read().expect("view lock");
        let version = (view.version(), generation);
        if let Some(body) = reuse.then(|| state.cache.get(&key, version)).flatten() {
            return Ok(body);
        }
        let input = stats::Input {
            view: &view,
            rules: &state.rules,
            acknowledged: &acknowledged,
        };
        (version, handler(&input, &q)?)
    };
    let body = Bytes::from(serde_json::to_vec(&value).expect("a Value always serialises"));
    state.cache.put(key, version, body.clone());
    Ok(body)
}

pub fn reply(status: StatusCode, content_type: Option<&'static str>, body: Bytes) -> Reply {
    let mut response = Response::new(crate::http::Body::full(body));
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

fn cached_for(mut response: Reply, caching: &'static str) -> Reply {
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(caching));
    response
}

fn json_bytes(body: Bytes) -> Reply {
    cached_for(
        reply(StatusCode::OK, Some("application/json"), body),
        "no-cache",
    )
}

fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let bytes = serde_json::to_vec(body).expect("a Value always serialises");
    reply(status, Some("application/json"), Bytes::from(bytes))
}

/// `/docs` when the bundle was built without its docs page.
const DOCS_NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>StreamPulse API</title></head><body><h1>StreamPulse API</h1><p>The interactive docs were \
not built into this binary (see serve/web/README.md). The API is described by \
<a href=\"openapi.json\">openapi.json</a>.</p></body></html>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_labels() {
        assert_eq!(Route::of("/health").unwrap().label(), "/health");
        assert_eq!(
            Route::of("/api/stats/devices").unwrap().label(),
            "/api/stats/devices"
        );
        let ack = Route::of("/api/alerts/123/ack").unwrap();
        assert_eq!(ack.label(), "/api/alerts/{id}/ack");
        assert!(ack.allows(&Method::POST) && !ack.allows(&Method::GET));
        assert!(Route::of("/api/alerts//ack").is_none());
        assert!(Route::of("/api/alerts/1/2/ack").is_none());
        assert_eq!(Route::of("/").unwrap().label(), "/");
        assert!(Route::of("/nope").is_none());
        assert!(Route::of("/health/").is_none());
    }
}
