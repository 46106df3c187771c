//! The HTTP API, spoken to over a plain `TcpStream` (`support::request`). Most tests serve it from
//! the test's own process (`support::InProcess`): the dataflow on live generated traffic with
//! one-second windows (so the clean traffic raises alerts), the view, and `streampulse::http::serve`
//! on a port-0 listener, exactly as `streampulse run` wires them. The tests about the process itself
//! run the binary (`streampulse run --rate 300 --window 1`, a `support::Pipeline`).
//!
//! - in-process, without PostgreSQL: every endpoint's fields (the old pipeline's names) and types,
//!   checked against both a fixed list and `/openapi.json`; parameter bounds taken from the
//!   document; 404, 405 with `Allow`, 413; `/metrics` parsed line by line with counters that
//!   increase; CORS for an allowed and a refused origin; cache headers; `X-Response-Time`; the ack
//!   endpoint's 503;
//! - in-process, with PostgreSQL (`.ci/services up`, URL from STREAMPULSE_POSTGRES): the sink and
//!   acknowledgements in a schema of the test's own (401, 404, 400, 413, 200, the row in the table,
//!   the alert list), then the schema is dropped;
//! - in-process, the connection policy's deadlines (`http`): silent, idle, slowloris and slow
//!   authorised-body connections closed at their deadlines (shortened through `ApiArgs`);
//! - the binary, the connection policy under a flood: 1,260 idle, slowloris and keep-alive
//!   connections from one client while `/health`, `/` and the stats keep answering within 2 s,
//!   with the server process's memory growth bounded;
//! - the binary, shutdown: SIGTERM and SIGINT after the alert list used PostgreSQL exit 0, and the
//!   process's log never shows the ack token.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use streampulse::api::{iso8601, State};
use streampulse::cli::{ApiArgs, Secret};
use streampulse_dataflow::{
    Aggregate, Alert, Baseline, Change, Config, Counters, Derived, Forecast, Forecasts, Key, Rule,
    Rules, Severity, Update, View, Window, WindowKey,
};
use support::{captured_log, postgres_url, ApiServer, InProcess, Pipeline, Reply, Schema};

const ALLOWED_ORIGIN: &str = "http://dashboard.example";
const TOKEN: &str = "test-token-0123456789";

// ---------------------------------------------------------------------------------------------
// The server: in the test's process, or the binary
// ---------------------------------------------------------------------------------------------

/// Lines of the server's log shown when a wait times out.
const LOG_LINES: usize = 200;

/// A server under test, stopped when dropped.
struct Server {
    backing: Backing,
}

enum Backing {
    InProcess(ApiServer),
    Process(Pipeline),
    Fixed(FixedView),
}

/// The API in this process over a view the test built: no dataflow and no database, so every
/// answer is a function of the rows the test put in the view. Stopped when dropped.
struct FixedView {
    addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for FixedView {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The API's flags as `run` takes them (`--cors-origin`, `--ack-token`), with the connection
/// policy's default timeouts.
fn api_args(cors_origins: &[&str], ack_token: Option<&str>) -> ApiArgs {
    ApiArgs {
        cors_origins: cors_origins.iter().map(|o| o.to_string()).collect(),
        ack_token: ack_token.map(|t| Secret(t.to_string())),
        http_header_timeout: None,
        http_body_timeout: None,
        http_request_timeout: None,
        http_idle_timeout: None,
        http_stream_stall: None,
        push_max_streams: 256,
        push_interval_ms: 250,
    }
}

impl Server {
    /// The API in this process: 300 events/s of generated traffic in one-second windows, starting
    /// a minute ago; with `schema`, the sink writes there and alerts can be acknowledged.
    fn in_process(api: ApiArgs, schema: Option<&Schema>) -> Server {
        let server = InProcess {
            api,
            config: Config {
                window_ms: 1_000,
                ..Config::default()
            },
            rate: 300.0,
            backlog: Duration::from_secs(60),
            schema: schema.map(|s| s.0.clone()),
        }
        .start();
        Server::ready(Server {
            backing: Backing::InProcess(server),
        })
    }

    /// `streampulse run` with the built-in generator (300 events/s, one-second windows) and the
    /// API on a free port, plus `extra` flags.
    fn process(extra: &[&str]) -> Server {
        let args: Vec<String> = ["run", "--http", "127.0.0.1:0", "--rate", "300"]
            .into_iter()
            .chain(["--window", "1", "--status-interval", "3600"])
            .chain(extra.iter().copied())
            .map(String::from)
            .collect();
        let pipeline = Pipeline::spawn("streampulse run", &args, true);
        Server::ready(Server {
            backing: Backing::Process(pipeline),
        })
    }

    /// The API over `view` (served on a port-0 listener as `run` serves it), with `rules`.
    fn fixed(view: View, rules: Rules) -> Server {
        let state = Arc::new(State::new(
            Arc::new(RwLock::new(view)),
            Arc::new(Counters::default()),
            rules,
            &api_args(&[], None),
            None,
        ));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binds a free port");
        let addr = listener.local_addr().unwrap();
        runtime.spawn(streampulse::http::serve(
            listener,
            state.http_limits,
            state.connections.clone(),
            streampulse::api::handler(state.clone()),
            std::future::pending(),
        ));
        Server {
            backing: Backing::Fixed(FixedView {
                addr,
                runtime: Some(runtime),
            }),
        }
    }

    /// Returns the server once its first events are counted.
    fn ready(server: Server) -> Server {
        server.eventually("the first events", Duration::from_secs(30), || {
            let body = server.get("/api/stats/realtime").json();
            (body["total_downloads"].as_i64()? > 0).then_some(())
        });
        server
    }

    fn addr(&self) -> SocketAddr {
        match &self.backing {
            Backing::InProcess(server) => server.addr,
            Backing::Process(pipeline) => pipeline.api(),
            Backing::Fixed(server) => server.addr,
        }
    }

    /// What the server logged: the process's stderr, or everything the library logged in this
    /// test binary (one logger per process).
    fn log(&self) -> String {
        match &self.backing {
            Backing::InProcess(_) | Backing::Fixed(_) => captured_log(usize::MAX),
            Backing::Process(pipeline) => pipeline.log(),
        }
    }

    fn log_tail(&self) -> String {
        match &self.backing {
            Backing::InProcess(_) | Backing::Fixed(_) => captured_log(LOG_LINES),
            Backing::Process(pipeline) => pipeline.log_tail(LOG_LINES),
        }
    }

    fn pipeline(&mut self) -> &mut Pipeline {
        match &mut self.backing {
            Backing::Process(pipeline) => pipeline,
            Backing::InProcess(_) | Backing::Fixed(_) => panic!("the server runs in this process"),
        }
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        support::request(self.addr(), method, path, headers, body)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()))
    }

    fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], b"")
    }

    /// Polls `check` until it returns `Some`, failing with the server's log after `timeout`.
    fn eventually<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = check() {
                return value;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; server log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server process's resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        match &self.backing {
            Backing::Process(pipeline) => pipeline.rss_kib(),
            Backing::InProcess(_) | Backing::Fixed(_) => panic!("the server runs in this process"),
        }
    }

    /// Sends `signal` (`TERM`, `INT`) to the server process and waits (30 s at most) for the exit;
    /// returns its status and its whole log.
    fn stop(mut self, signal: &str) -> (std::process::ExitStatus, String) {
        let pipeline = self.pipeline();
        pipeline.signal(signal);
        let status = pipeline.wait_exit(Duration::from_secs(30));
        (status, pipeline.log())
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

/// The old pipeline's field names, per endpoint: (top level, each item of `data`).
fn expected_fields(path: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    match path {
        "/health" => (
            vec![
                "status",
                "problems",
                "database",
                "kafka",
                "timestamp",
                "version",
                "uptime_seconds",
                "events",
                "late_events",
                "watermark",
                "newest_window",
                "windows_in_memory",
            ],
            vec![],
        ),
        "/api/stats/realtime" => (
            vec![
                "total_downloads",
                "unique_content",
                "avg_success_rate",
                "health_status",
                "avg_download_time",
                "successful_downloads",
                "failed_downloads",
                "total_size_gb",
                "late_events",
                "window_minutes",
                "windows",
                "as_of",
            ],
            vec![],
        ),
        "/api/stats/trending" => (
            vec!["count", "data", "window_minutes"],
            vec![
                "content_id",
                "title",
                "total_downloads",
                "successful_downloads",
                "failed_downloads",
                "success_rate",
                "total_size_gb",
            ],
        ),
        "/api/stats/regions" => (
            vec!["count", "data", "window_minutes"],
            vec![
                "region",
                "downloads",
                "successful",
                "failed",
                "success_rate",
                "avg_speed",
                "avg_duration_s",
                "total_size_gb",
                "health_status",
                "baseline",
            ],
        ),
        "/api/stats/alerts" => (
            vec!["count", "data", "unacknowledged_count"],
            vec![
                "id",
                "alert_type",
                "severity",
                "message",
                "region",
                "metric_name",
                "metric_value",
                "threshold_value",
                "created_at",
                "window_start",
                "window_end",
                "is_final",
                "acknowledged",
                "baseline_value",
                "score",
            ],
        ),
        "/api/stats/timeseries" => (
            vec!["count", "data", "start_time", "end_time"],
            vec![
                "window_start",
                "total_downloads",
                "successful_downloads",
                "success_rate",
                "unique_content",
                "late_events",
                "is_final",
                "revised",
            ],
        ),
        "/api/stats/devices" => (
            vec!["count", "data", "window_minutes"],
            vec![
                "device",
                "total_downloads",
                "successful_downloads",
                "success_rate",
                "avg_speed",
            ],
        ),
        _ => panic!("no expected fields for {path}"),
    }
}

const JSON_GETS: [&str; 7] = [
    "/health",
    "/api/stats/realtime",
    "/api/stats/trending",
    "/api/stats/regions",
    "/api/stats/alerts",
    "/api/stats/timeseries",
    "/api/stats/devices",
];

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A schema with its `$ref` followed and an `allOf` merged into one object schema.
fn resolve(doc: &Value, schema: &Value) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        return resolve(
            doc,
            doc.pointer(r.trim_start_matches('#'))
                .expect("$ref resolves"),
        );
    }
    if let Some(parts) = schema["allOf"].as_array() {
        let mut properties = serde_json::Map::new();
        for part in parts {
            let part = resolve(doc, part);
            properties.extend(part["properties"].as_object().unwrap().clone());
        }
        return serde_json::json!({ "type": "object", "properties": properties });
    }
    schema.clone()
}

/// Checks `value` against the subset of JSON Schema the document uses: types (with null), required
/// and exactly the declared properties, array items, enums, and `oneOf` (exactly one alternative).
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) {
    if let Err(e) = check(doc, schema, value, at) {
        panic!("{e}");
    }
}

fn check(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(options) = schema["oneOf"].as_array() {
        let failed: Vec<String> = (options.iter())
            .filter_map(|option| check(doc, option, value, at).err())
            .collect();
        return match options.len() - failed.len() {
            1 => Ok(()),
            0 => Err(format!(
                "{at}: matches no alternative: {}",
                failed.join("; ")
            )),
            n => Err(format!("{at}: {value} matches {n} alternatives of a oneOf")),
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let matches = types.is_empty()
        || types.contains(&actual)
        || (actual == "integer" && types.contains(&"number"));
    if !matches {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(options) = schema["enum"].as_array() {
        if !options.contains(value) {
            return Err(format!("{at}: {value} not in {options:?}"));
        }
    }
    if let (Some(properties), Value::Object(object)) = (schema["properties"].as_object(), value) {
        let declared: BTreeSet<&String> = properties.keys().collect();
        let present: BTreeSet<&String> = object.keys().collect();
        if declared != present {
            return Err(format!(
                "{at}: fields differ from the document: declared {declared:?}, present {present:?}"
            ));
        }
        for (name, property) in properties {
            check(doc, property, &object[name], &format!("{at}.{name}"))?;
        }
    }
    if let (Some(items), Value::Array(values)) = (schema.get("items"), value) {
        for (i, item) in values.iter().enumerate() {
            check(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

fn check_shapes(server: &Server, doc: &Value) {
    for path in JSON_GETS {
        let reply = server.get(path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        let body = reply.json();
        let (top, item) = expected_fields(path);
        assert_eq!(keys(&body), names(&top), "{path}: top-level fields");
        if let Some(data) = body.get("data") {
            let data = data.as_array().expect("data is an array");
            assert!(
                !data.is_empty(),
                "{path}: no data while events flow: {body}"
            );
            assert_eq!(
                body["count"].as_u64(),
                Some(data.len() as u64),
                "{path}: count"
            );
            for row in data {
                assert_eq!(keys(row), names(&item), "{path}: item fields");
            }
        }
        let schema =
            &doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(
            !schema.is_null(),
            "{path} has no 200 schema in openapi.json"
        );
        conforms(doc, schema, &body, path);
    }
}

fn check_parameter_bounds(server: &Server, doc: &Value) {
    // The examples of the issue, spelled out.
    for bad in [
        "minutes=0",
        "minutes=61",
        "minutes=abc",
        "minutes=",
        "minutes=1.5",
    ] {
        server
            .get(&format!("/api/stats/realtime?{bad}"))
            .assert_error(400, "bad_parameter");
    }
    for bad in [
        "limit=0",
        "limit=51",
        "severity=LOUD",
        "acknowledged=maybe",
        "minutes=%zz",
    ] {
        server
            .get(&format!("/api/stats/alerts?{bad}"))
            .assert_error(400, "bad_parameter");
    }
    for bad in ["by=nope", "by=RISING", "by=rising,downloads", "by=%zz"] {
        let reply = server.get(&format!("/api/stats/trending?{bad}"));
        reply.assert_error(400, "bad_parameter");
        if bad != "by=%zz" {
            assert!(reply.json()["detail"]
                .as_str()
                .unwrap()
                .contains("by must be"));
        }
    }
    let long = format!("/api/stats/realtime?x={}", "a".repeat(3000));
    server.get(&long).assert_error(400, "bad_parameter");
    // Every integer parameter the document bounds: its bounds are accepted, one past them is not.
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        // Answered from PostgreSQL, which this server does not have (tests/notify.rs checks it).
        if item["get"]["x-streampulse-needs-postgres"] == true {
            continue;
        }
        for parameter in item["get"]["parameters"].as_array().into_iter().flatten() {
            let schema = &parameter["schema"];
            if schema["type"] != "integer" {
                continue;
            }
            let name = parameter["name"].as_str().unwrap();
            let (lo, hi) = (
                schema["minimum"].as_i64().unwrap(),
                schema["maximum"].as_i64().unwrap(),
            );
            for ok in [lo, hi] {
                let reply = server.get(&format!("{path}?{name}={ok}"));
                assert_eq!(reply.status, 200, "{path}?{name}={ok}: {}", reply.text());
            }
            for bad in [lo - 1, hi + 1] {
                let reply = server.get(&format!("{path}?{name}={bad}"));
                reply.assert_error(400, "bad_parameter");
                assert!(reply.json()["detail"].as_str().unwrap().contains(name));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 8, "bounded integer parameters in openapi.json");
    // Echoed bounds: the answer says which period it covers.
    let body = server.get("/api/stats/trending?minutes=7&limit=2").json();
    assert_eq!(body["window_minutes"], 7);
    assert!(body["count"].as_u64().unwrap() <= 2);
}

/// The rising list and the regions' baselines of the live traffic: present once windows have
/// settled, in the document's shape, ranked by the score they show.
fn check_baselines_and_rising(server: &Server, doc: &Value) {
    let schema = &doc["paths"]["/api/stats/trending"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    let body = server.eventually("a rising list", Duration::from_secs(30), || {
        let body = server.get("/api/stats/trending?by=rising&limit=20").json();
        (body["count"].as_u64()? > 0).then_some(body)
    });
    conforms(doc, schema, &body, "trending?by=rising");
    assert_eq!(body["by"], "rising");
    let data = body["data"].as_array().unwrap();
    assert_eq!(body["count"].as_u64(), Some(data.len() as u64));
    let item_fields = [
        "rank",
        "content_id",
        "title",
        "downloads",
        "predicted_downloads",
        "level",
        "trend",
        "rising_score",
        "history",
    ];
    for (i, item) in data.iter().enumerate() {
        assert_eq!(keys(item), names(&item_fields));
        assert_eq!(item["rank"].as_u64(), Some(i as u64 + 1), "{body}");
        let history = item["history"].as_array().unwrap();
        assert_eq!(history.last(), Some(&item["downloads"]), "{item}");
        assert!(item["downloads"].as_i64().unwrap() > 0, "{item}");
    }
    let scores: Vec<f64> = data
        .iter()
        .map(|i| i["rising_score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // Lists belong to settled windows: never one newer than the newest window in memory.
    let newest = server.get("/health").json()["newest_window"].clone();
    assert!(
        body["window_start"].as_str().unwrap() <= newest.as_str().unwrap(),
        "{body}"
    );
    let limited = server.get("/api/stats/trending?by=rising&limit=1").json();
    assert!(limited["count"].as_u64().unwrap() <= 1);

    let regions = server.eventually("a region's baseline", Duration::from_secs(30), || {
        let body = server.get("/api/stats/regions").json();
        let judged = body["data"]
            .as_array()?
            .iter()
            .any(|r| r["baseline"]["health"].is_string());
        judged.then_some(body)
    });
    let schema = &doc["paths"]["/api/stats/regions"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    conforms(doc, schema, &regions, "regions");
}

fn check_errors(server: &Server) {
    server.get("/nope").assert_error(404, "not_found");
    server.get("/api/stats/nope").assert_error(404, "not_found");
    server.get("/health/").assert_error(404, "not_found");

    let reply = server.request("POST", "/api/stats/realtime", &[], b"");
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("GET, HEAD, OPTIONS"));
    let reply = server.request("DELETE", "/", &[], b"");
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("GET, HEAD, OPTIONS"));
    let reply = server.get("/api/alerts/1/ack");
    reply.assert_error(405, "method_not_allowed");
    assert_eq!(reply.header("allow"), Some("POST, OPTIONS"));

    // A declared body over 16 KiB is refused before anything else.
    let reply = server.request(
        "POST",
        "/api/alerts/1/ack",
        &[("Content-Length", "20000")],
        b"",
    );
    reply.assert_error(413, "payload_too_large");

    // Without PostgreSQL nothing can be acknowledged, with or without a token.
    let auth = format!("Bearer {TOKEN}");
    server
        .request(
            "POST",
            "/api/alerts/1/ack",
            &[("Authorization", &auth)],
            b"",
        )
        .assert_error(503, "unavailable");

    let head = server.request("HEAD", "/health", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

fn check_headers(server: &Server) {
    for path in [
        "/health",
        "/api/stats/realtime",
        "/metrics",
        "/nope",
        "/openapi.json",
        "/",
    ] {
        let reply = server.get(path);
        let took = reply
            .header("x-response-time")
            .unwrap_or_else(|| panic!("{path}: no X-Response-Time"));
        let ms = took.strip_suffix("ms").expect("ends in ms");
        assert!(
            ms.split_once('.').is_some_and(|(_, f)| f.len() == 3),
            "{took}"
        );
        assert!(ms.parse::<f64>().unwrap() >= 0.0);
        assert_eq!(reply.header("vary"), Some("Origin"), "{path}");
    }
    let index = server.get("/");
    assert_eq!(index.status, 200);
    assert_eq!(index.header("cache-control"), Some("no-cache"));
    assert_eq!(
        server.get("/index.html").header("cache-control"),
        Some("no-cache")
    );
    let html = index.text();
    let assets: Vec<&str> = html
        .match_indices("assets/")
        .map(|(at, _)| html[at..].split(['"', '\'']).next().unwrap())
        .collect();
    for asset in &assets {
        let reply = server.get(&format!("/{asset}"));
        assert_eq!(reply.status, 200, "{asset}");
        assert_eq!(
            reply.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{asset}"
        );
    }
    let docs = server.get("/docs");
    assert_eq!(docs.status, 200);
    assert!(docs
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert_eq!(docs.header("cache-control"), Some("no-cache"));
    let page = docs.text();
    // The Swagger UI page names its bundle; the page of a binary built without it links the JSON.
    assert!(
        page.contains("assets/docs-") || page.contains("openapi.json"),
        "{page}"
    );
    for script in page
        .match_indices("assets/docs-")
        .map(|(at, _)| page[at..].split('"').next().unwrap())
    {
        assert_eq!(server.get(&format!("/{script}")).status, 200, "{script}");
    }
}

fn check_openapi(server: &Server) -> Value {
    let reply = server.get("/openapi.json");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = doc["paths"].as_object().unwrap();
    let mut routes: Vec<&str> = JSON_GETS.to_vec();
    routes.extend([
        "/api/stream",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/",
        "/api/alerts/{id}/ack",
        "/api/episodes",
        "/api/episodes/{id}/ack",
    ]);
    for route in &routes {
        assert!(
            paths.contains_key(*route),
            "{route} missing from openapi.json"
        );
    }
    assert_eq!(paths.len(), routes.len());
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["responses"]["200"].is_object(),
                "{method} {path}: no 200"
            );
        }
    }
    assert!(paths["/api/alerts/{id}/ack"]["post"]["responses"]["401"].is_object());
    doc
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// Parses the text format strictly: every sample belongs to a family declared by `# TYPE`, labels
/// are `name="value"` pairs, values are numbers. Returns `series → value`.
fn scrape(server: &Server) -> BTreeMap<String, f64> {
    let reply = server.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        reply.header("content-type")
    );
    let text = reply.text();
    assert!(text.ends_with('\n'));
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "summary", "histogram", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "{line}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        let family = [
            name,
            name.trim_end_matches("_sum"),
            name.trim_end_matches("_count"),
            name.trim_end_matches("_bucket"),
        ]
        .into_iter()
        .find(|n| types.contains_key(*n))
        .unwrap_or_else(|| panic!("{line}: no # TYPE before it"));
        if types[family] == "counter" {
            assert!(name.ends_with("_total"), "{line}: counters end in _total");
        }
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .expect(line);
                for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                    let (label, value) = pair.split_once("=\"").expect(line);
                    assert!(
                        label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    assert!(!value.contains('\n'));
                }
            }
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate {series}"
        );
    }
    samples
}

fn check_metrics(server: &Server) {
    let before = scrape(server);
    for family in [
        "streampulse_events_total",
        "streampulse_late_events_total",
        "streampulse_dead_letters_total",
        "streampulse_batches_total",
        "streampulse_windows_in_memory",
        "streampulse_watermark_seconds",
        "streampulse_uptime_seconds",
        "streampulse_view_events_total",
        "streampulse_event_to_view_seconds_count",
    ] {
        assert!(before.contains_key(family), "{family} missing");
    }
    // The latency histogram: cumulative buckets ending in +Inf = count, and observations made.
    let mut buckets: Vec<(f64, f64)> = before
        .iter()
        .filter(|(series, _)| series.starts_with("streampulse_event_to_view_seconds_bucket"))
        .map(|(series, value)| {
            let bound = series
                .split("le=\"")
                .nth(1)
                .unwrap()
                .trim_end_matches("\"}");
            (bound.parse::<f64>().unwrap_or(f64::INFINITY), *value)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let buckets: Vec<f64> = buckets.into_iter().map(|(_, count)| count).collect();
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(
        buckets.last().copied(),
        Some(before["streampulse_event_to_view_seconds_count"])
    );
    assert!(before["streampulse_event_to_view_seconds_count"] > 0.0);
    let watermark = before["streampulse_watermark_seconds"];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - watermark).abs() < 120.0,
        "watermark {watermark} is not near {now}"
    );
    assert!(before["streampulse_windows_in_memory"] >= 1.0);

    let health = "streampulse_http_requests_total{route=\"/health\",status=\"200\"}";
    let missing = "streampulse_http_requests_total{route=\"unmatched\",status=\"404\"}";
    for _ in 0..3 {
        assert_eq!(server.get("/health").status, 200);
    }
    server.get("/no/such/path/x1");
    server.get("/no/such/path/x2");
    // Repeated identical polls: after the first, answered from the serialised cache.
    for _ in 0..5 {
        server.get("/api/stats/regions?minutes=2");
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = scrape(server);
    assert!(after["streampulse_events_total"] > before["streampulse_events_total"]);
    assert!(after["streampulse_batches_total"] > before["streampulse_batches_total"]);
    assert!(after["streampulse_watermark_seconds"] >= watermark);
    assert_eq!(
        after[health],
        before.get(health).copied().unwrap_or(0.0) + 3.0
    );
    assert_eq!(
        after[missing],
        before.get(missing).copied().unwrap_or(0.0) + 2.0
    );
    let count = "streampulse_http_request_duration_seconds_count{route=\"/health\"}";
    assert!(after[count] >= after[health]);
    assert!(after["streampulse_http_request_duration_seconds_sum{route=\"/health\"}"] > 0.0);
    assert!(
        after["streampulse_response_cache_hits_total"]
            > before["streampulse_response_cache_hits_total"]
    );
    // Routes are labels, never raw paths.
    assert!(
        after.keys().all(|series| !series.contains("/no/such")),
        "raw path in metrics"
    );
}

// ---------------------------------------------------------------------------------------------
// CORS
// ---------------------------------------------------------------------------------------------

fn check_cors(server: &Server) {
    let allowed = server.request(
        "GET",
        "/api/stats/realtime",
        &[("Origin", ALLOWED_ORIGIN)],
        b"",
    );
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    assert_eq!(allowed.header("vary"), Some("Origin"));

    let refused = server.request(
        "GET",
        "/api/stats/realtime",
        &[("Origin", "http://evil.example")],
        b"",
    );
    assert_eq!(
        refused.status, 200,
        "CORS is enforced by the browser, not by refusing"
    );
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(refused.header("vary"), Some("Origin"));

    let preflight = |origin: &str, path: &str, method: &str| {
        server.request(
            "OPTIONS",
            path,
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", method),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type",
                ),
            ],
            b"",
        )
    };
    let ok = preflight(ALLOWED_ORIGIN, "/api/alerts/7/ack", "POST");
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some(ALLOWED_ORIGIN)
    );
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let headers = ok
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("content-type"));
    let ok = preflight(ALLOWED_ORIGIN, "/api/stats/alerts", "GET");
    assert_eq!(ok.status, 204);
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("GET"));

    let no = preflight("http://evil.example", "/api/alerts/7/ack", "POST");
    assert_eq!(no.status, 204);
    assert_eq!(no.header("access-control-allow-origin"), None);
    assert_eq!(no.header("access-control-allow-methods"), None);
    assert_eq!(preflight(ALLOWED_ORIGIN, "/nope", "GET").status, 404);
}

#[test]
fn every_endpoint_without_postgres() {
    let server = Server::in_process(api_args(&[ALLOWED_ORIGIN], Some(TOKEN)), None);
    let doc = check_openapi(&server);
    // Alerts come and go while a window is open; wait until every list has rows to check.
    server.eventually("an alert", Duration::from_secs(60), || {
        let body = server.get("/api/stats/alerts").json();
        (body["count"].as_u64()? > 0).then_some(())
    });
    check_shapes(&server, &doc);
    check_baselines_and_rising(&server, &doc);
    check_parameter_bounds(&server, &doc);
    check_errors(&server);
    check_headers(&server);
    check_metrics(&server);
    check_cors(&server);
    // The token never reaches the log.
    assert!(!server.log().contains(TOKEN));
}

// ---------------------------------------------------------------------------------------------
// Baselines, the rising list and baseline alerts, on a view built by hand
// ---------------------------------------------------------------------------------------------

const MINUTE: i64 = 60_000;
/// A minute-aligned start (2023-11-14T22:14:00Z): the view's windows are T0 − 1 min, T0, T0 + 1 min.
const T0: i64 = 28_333_334 * MINUTE;

fn window(i: i64) -> Window {
    Window(T0 + i * MINUTE)
}

/// `downloads` of which `failed` failed, the rest successful, `size_mb` in all.
fn sums(downloads: i64, failed: i64, size_mb: i64) -> Aggregate {
    Aggregate {
        downloads,
        successful: downloads - failed,
        failed,
        size_mb,
        duration_s: downloads * 10,
        speed_milli: (downloads - failed) * 40_000,
        cdn_timeouts: 0,
    }
}

/// A trail of `windows` windows of `per_window` downloads each (so no spread), 5% of them
/// failed, and the judged window's sums.
fn flat_baseline(windows: u32, per_window: i64, observed: Aggregate) -> Baseline {
    Baseline {
        windows,
        downloads: windows as i64 * per_window,
        downloads_sq: windows as i128 * (per_window as i128).pow(2),
        failed: windows as i64 * per_window / 20,
        observed,
    }
}

fn viral() -> Forecast {
    Forecast::of(vec![0, 0, 0, 0, 0, 0, 5, 10, 20, 40], &Forecasts::default())
}

fn steady() -> Forecast {
    Forecast::of(
        vec![53, 47, 63, 56, 53, 61, 59, 55, 63, 75],
        &Forecasts::default(),
    )
}

/// Three minute windows; the newest (T0 + 1 min) is open, so only T0 and the one before have
/// baselines and rising lists (they are settled).
///
/// - EU-London: traffic in every window; a normal baseline at T0.
/// - US-NewYork: silent through all three windows, its baseline at T0 expects 200 a window.
/// - ASIA-Tokyo: traffic at T0 + 1 min only, its newest baseline (learning) the one before T0.
/// - SA-SaoPaulo: traffic at T0 + 1 min, no baseline at all.
/// - EU-Paris: silent, and its last baseline (at T0 − 1 min) is older than the newest: its trail
///   has no windows with events left, so it is not listed.
///
/// Rising lists at T0 − 1 min and T0; alerts: TRAFFIC_BELOW_BASELINE for US-NewYork at T0,
/// HIGH_ERROR_RATE for EU-London at T0 + 1 min.
fn hand_built_view() -> View {
    let stat = |i: i64, key: Key, delta: Aggregate| Change::Stat {
        row: WindowKey {
            window: window(i),
            key,
        },
        delta,
        time: 1,
    };
    let row = |row: Derived| Change::Derived {
        row,
        time: 1,
        diff: 1,
    };
    let region = |name: &str| Key::Region(name.to_string());
    let content = |id: &str, title: &str| Key::Content {
        content_id: id.to_string(),
        title: title.to_string(),
    };
    let baseline = |i: i64, name: &str, baseline: Baseline| {
        row(Derived::Baseline {
            window: window(i),
            region: name.to_string(),
            baseline,
        })
    };
    let rising = |i: i64, rank: u32, id: &str, title: &str, forecast: Forecast| {
        row(Derived::Rising {
            window: window(i),
            rank,
            content_id: id.to_string(),
            title: title.to_string(),
            forecast,
        })
    };
    let london = [sums(100, 5, 100), sums(120, 6, 120), sums(50, 8, 50)];
    let silent_ny = flat_baseline(10, 200, Aggregate::default());
    let changes = vec![
        stat(-1, region("EU-London"), london[0]),
        stat(0, region("EU-London"), london[1]),
        stat(1, region("EU-London"), london[2]),
        stat(1, region("ASIA-Tokyo"), sums(30, 1, 30)),
        stat(1, region("SA-SaoPaulo"), sums(20, 1, 20)),
        stat(0, content("mus_0152", "Pop #153"), sums(40, 2, 2048)),
        stat(1, content("mus_0152", "Pop #153"), sums(10, 0, 512)),
        stat(0, content("app_0048", "Utilities #49"), sums(75, 5, 1024)),
        baseline(-1, "ASIA-Tokyo", flat_baseline(2, 40, Aggregate::default())),
        baseline(-1, "EU-Paris", flat_baseline(6, 50, Aggregate::default())),
        baseline(-1, "EU-London", flat_baseline(10, 100, london[0])),
        baseline(0, "EU-London", flat_baseline(10, 100, london[1])),
        baseline(0, "US-NewYork", silent_ny),
        rising(-1, 1, "app_0048", "Utilities #49", steady()),
        rising(0, 1, "mus_0152", "Pop #153", viral()),
        rising(0, 2, "app_0048", "Utilities #49", steady()),
        row(Derived::Alert(Alert {
            window: window(0),
            region: "US-NewYork".into(),
            rule: Rule::TrafficBelowBaseline,
            severity: Severity::Critical,
            measure: Aggregate::default(),
            baseline: Some(silent_ny),
        })),
        row(Derived::Alert(Alert {
            window: window(1),
            region: "EU-London".into(),
            rule: Rule::HighErrorRate,
            severity: Severity::Warning,
            measure: london[2],
            baseline: None,
        })),
    ];
    let mut view = View::new(MINUTE);
    view.apply(Update {
        changes,
        frontier: Some(2),
        // T0's window is final, the newest is not.
        watermark: Some(T0 + MINUTE + MINUTE / 2),
    });
    view
}

/// The events of an SSE stream until `count` have arrived (5 s at most): (name, data) pairs.
fn read_events(addr: SocketAddr, path: &str, count: usize) -> Vec<(String, String)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    // HTTP/1.0: the body is not chunked, it just runs until the connection closes.
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let text = String::from_utf8_lossy(&received).into_owned();
        let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let events: Vec<(String, String)> = body
            .split("\n\n")
            .filter_map(|block| {
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::to_string)
                };
                Some((field("event: ")?, field("data: ")?))
            })
            .collect();
        if events.len() >= count {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} events from {path}: {text}",
            events.len()
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("{path} closed: {text}"),
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
}

#[test]
fn baselines_rising_and_baseline_alerts_on_a_view_built_by_hand() {
    let server = Server::fixed(hand_built_view(), Rules::default());
    let doc = server.get("/openapi.json").json();
    let schema_of = |path: &str| {
        doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            .clone()
    };
    let iso = |i: i64| iso8601(window(i).start());

    // by=downloads is the old answer, byte for byte, whether `by` is given or not.
    let old = r#"{"count":2,"data":[{"content_id":"app_0048","failed_downloads":5,"success_rate":0.933,"successful_downloads":70,"title":"Utilities #49","total_downloads":75,"total_size_gb":1.0},{"content_id":"mus_0152","failed_downloads":2,"success_rate":0.96,"successful_downloads":48,"title":"Pop #153","total_downloads":50,"total_size_gb":2.5}],"window_minutes":5}"#;
    for query in ["", "?by=downloads", "?by=", "?limit=10&by=downloads"] {
        let reply = server.get(&format!("/api/stats/trending{query}"));
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), old, "trending{query}");
    }

    // by=rising: the list of the newest window that has one (T0, not T0 − 1 min; the newest
    // window, T0 + 1 min, is not settled and has none).
    let rising = server.get("/api/stats/trending?by=rising").json();
    conforms(&doc, &schema_of("/api/stats/trending"), &rising, "rising");
    let item = |rank: u32, id: &str, title: &str, f: &Forecast| {
        json!({
            "rank": rank,
            "content_id": id,
            "title": title,
            "downloads": f.latest(),
            "predicted_downloads": f.next_milli as f64 / 1000.0,
            "level": f.level_milli as f64 / 1000.0,
            "trend": f.trend_milli as f64 / 1000.0,
            "rising_score": f.rising_milli as f64 / 1000.0,
            "history": f.history,
        })
    };
    assert_eq!(
        rising,
        json!({
            "by": "rising",
            "count": 2,
            "data": [
                item(1, "mus_0152", "Pop #153", &viral()),
                item(2, "app_0048", "Utilities #49", &steady()),
            ],
            "window_start": iso(0),
            "window_end": iso(1),
        })
    );
    assert_eq!(rising["data"][0]["downloads"], 40);
    assert!(rising["data"][0]["rising_score"].as_f64().unwrap() > 5.0);
    let one = server.get("/api/stats/trending?by=rising&limit=1").json();
    assert_eq!(one["count"], 1);
    assert_eq!(one["data"][0]["content_id"], "mus_0152");

    // An unknown `by` is the API's usual 400.
    let reply = server.get("/api/stats/trending?by=forecast");
    reply.assert_error(400, "bad_parameter");
    assert_eq!(
        reply.json()["detail"],
        "by must be downloads or rising, got \"forecast\""
    );

    // Regions: each with its newest baseline; the silent one listed with zero sums.
    let regions = server.get("/api/stats/regions?minutes=5").json();
    conforms(&doc, &schema_of("/api/stats/regions"), &regions, "regions");
    let order: Vec<&str> = regions["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        ["EU-London", "ASIA-Tokyo", "SA-SaoPaulo", "US-NewYork"],
        "most downloads first, the silent region last, EU-Paris (no baseline left) not at all"
    );
    assert_eq!(regions["count"], 4);
    let by_name = |name: &str| -> Value {
        regions["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["region"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by_name("US-NewYork"),
        json!({
            "region": "US-NewYork",
            "downloads": 0,
            "successful": 0,
            "failed": 0,
            "success_rate": 0.0,
            "avg_speed": 0.0,
            "avg_duration_s": 0.0,
            "total_size_gb": 0.0,
            "health_status": "critical",
            "baseline": {
                "window_start": iso(0),
                "health": "silent",
                "mean_downloads": 200.0,
                "spread_downloads": 0.0,
                "baseline_error_rate": 0.05,
                "downloads": 0,
                "error_rate": 0.0,
                // (0 − 200) / max(spread 0, √200, 1)
                "traffic_score": -14.14,
                "error_score": 0.0,
                "windows": 10,
            },
        })
    );
    let london = by_name("EU-London");
    assert_eq!(london["downloads"], 270);
    assert_eq!(london["health_status"], "degraded", "251 of 270 successful");
    assert_eq!(
        london["baseline"],
        json!({
            "window_start": iso(0),
            "health": "normal",
            "mean_downloads": 100.0,
            "spread_downloads": 0.0,
            "baseline_error_rate": 0.05,
            "downloads": 120,
            "error_rate": 0.05,
            // (120 − 100) / max(0, √100, 1)
            "traffic_score": 2.0,
            "error_score": 0.0,
            "windows": 10,
        })
    );
    let tokyo = by_name("ASIA-Tokyo");
    assert_eq!(tokyo["baseline"]["window_start"], iso(-1));
    assert_eq!(tokyo["baseline"]["health"], "learning");
    assert_eq!(by_name("SA-SaoPaulo")["baseline"], Value::Null);
    // Only the newest window's sums: US-NewYork is still listed, from its baseline.
    let newest = server.get("/api/stats/regions?minutes=1").json();
    let listed: Vec<&str> = newest["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["region"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["EU-London", "ASIA-Tokyo", "SA-SaoPaulo", "US-NewYork"]
    );

    // Alerts: a baseline rule's threshold is the baseline's value, with its score; a fixed rule's
    // is the configured threshold, and it has neither.
    let alerts = server.get("/api/stats/alerts").json();
    conforms(&doc, &schema_of("/api/stats/alerts"), &alerts, "alerts");
    let data = alerts["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let (fixed, baseline) = (&data[0], &data[1]);
    assert_eq!(fixed["alert_type"], "HIGH_ERROR_RATE");
    assert_eq!(fixed["threshold_value"], 0.1);
    assert_eq!(fixed["baseline_value"], Value::Null);
    assert_eq!(fixed["score"], Value::Null);
    assert_eq!(baseline["alert_type"], "TRAFFIC_BELOW_BASELINE");
    assert_eq!(baseline["region"], "US-NewYork");
    assert_eq!(baseline["metric_name"], "downloads");
    assert_eq!(baseline["metric_value"], 0.0);
    assert_eq!(baseline["threshold_value"], 200.0);
    assert_eq!(baseline["baseline_value"], 200.0);
    assert_eq!(baseline["score"], -14.14);
    assert_eq!(baseline["severity"], "CRITICAL");
    assert_eq!(baseline["is_final"], true);

    // Push: the rising panel (and the others) carry exactly the polling endpoints' bodies.
    let events = read_events(
        server.addr(),
        "/api/stream?panels=trending,regions,rising,alerts",
        4,
    );
    let pushed: BTreeMap<String, String> = events.into_iter().collect();
    for (panel, path) in [
        ("trending", "/api/stats/trending?minutes=5&limit=10"),
        ("regions", "/api/stats/regions?minutes=5"),
        ("rising", "/api/stats/trending?by=rising&limit=10"),
        ("alerts", "/api/stats/alerts?limit=10"),
    ] {
        assert_eq!(pushed.get(panel), Some(&server.get(path).text()), "{panel}");
    }
}

fn ack(server: &Server, id: &str, token: Option<&str>, body: &[u8]) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    server.request("POST", &format!("/api/alerts/{id}/ack"), &headers, body)
}

#[test]
fn acknowledging_alerts_in_postgres() {
    let schema = Schema::new("api_test");
    let server = Server::in_process(api_args(&[], Some(TOKEN)), Some(&schema));
    let mut db = schema.client();

    // A row of our own, so the flow does not depend on which alerts the traffic raises.
    let id: i64 = 4_242_424_242;
    db.execute(
        "INSERT INTO alerts (id, alert_type, severity, region, window_start, window_end, metric_name,
                             metric_value, threshold_value, message)
         VALUES ($1, 'TEST_ALERT', 'WARNING', 'TEST-Region', now(), now() + interval '1 second',
                 'error_rate', 0.5, 0.1, 'inserted by serve/tests/api.rs')",
        &[&id],
    )
    .unwrap();
    let path_id = id.to_string();

    let reply = ack(&server, &path_id, None, b"");
    reply.assert_error(401, "unauthorized");
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    let reply = ack(&server, &path_id, Some("wrong-token"), b"");
    reply.assert_error(401, "unauthorized");
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .contains("invalid_token"));
    let reply = ack(&server, &path_id, Some(&TOKEN[..TOKEN.len() - 1]), b"");
    reply.assert_error(401, "unauthorized");
    ack(&server, "1", Some(TOKEN), b"").assert_error(404, "not_found");
    ack(&server, "abc", Some(TOKEN), b"").assert_error(400, "bad_parameter");
    ack(&server, &path_id, Some(TOKEN), b"{not json").assert_error(400, "bad_body");
    ack(&server, &path_id, Some(TOKEN), br#"{"by": 7}"#).assert_error(400, "bad_body");
    let big = format!(r#"{{"by": "{}"}}"#, "x".repeat(17 * 1024));
    ack(&server, &path_id, Some(TOKEN), big.as_bytes()).assert_error(413, "payload_too_large");
    // The same without a declared length: the body is cut off while it is read.
    let mut chunked = format!("{:x}\r\n", big.len()).into_bytes();
    chunked.extend_from_slice(big.as_bytes());
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let auth = format!("Bearer {TOKEN}");
    server
        .request(
            "POST",
            &format!("/api/alerts/{id}/ack"),
            &[("Authorization", &auth), ("Transfer-Encoding", "chunked")],
            &chunked,
        )
        .assert_error(413, "payload_too_large");
    let untouched: bool = db
        .query_one("SELECT acknowledged FROM alerts WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert!(!untouched, "a refused request changed the row");

    let reply = ack(&server, &path_id, Some(TOKEN), br#"{"by": "test-oncall"}"#);
    assert_eq!(reply.status, 200, "{}", reply.text());
    let alert = reply.json();
    assert_eq!(alert["id"], id);
    assert_eq!(alert["alert_type"], "TEST_ALERT");
    assert_eq!(alert["acknowledged"], true);
    assert_eq!(alert["acknowledged_by"], "test-oncall");
    assert!(alert["acknowledged_at"].as_str().unwrap().ends_with('Z'));
    let doc = server.get("/openapi.json").json();
    let schema_200 = &doc["paths"]["/api/alerts/{id}/ack"]["post"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    conforms(&doc, schema_200, &alert, "ack");
    let row = db
        .query_one(
            "SELECT acknowledged, acknowledged_by, acknowledged_at IS NOT NULL, acknowledged_at > now() - interval '1 minute'
             FROM alerts WHERE id = $1",
            &[&id],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(
        row.get::<_, Option<String>>(1).as_deref(),
        Some("test-oncall")
    );
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
    // Acknowledging again keeps the first acknowledgement.
    let again = ack(&server, &path_id, Some(TOKEN), br#"{"by": "someone-else"}"#);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["acknowledged_by"], "test-oncall");
    assert_eq!(again.json()["acknowledged_at"], alert["acknowledged_at"]);

    // A real alert: once the sink has stored it, acknowledging it moves it between the lists.
    let real = server.eventually(
        "a final alert stored in PostgreSQL",
        Duration::from_secs(60),
        || {
            let body = server.get("/api/stats/alerts?limit=50").json();
            body["data"].as_array()?.iter().find_map(|a| {
                let id = a["id"].as_i64().filter(|_| a["is_final"] == true)?;
                let stored =
                    db.query_opt("SELECT 1 FROM alerts WHERE id = $1 AND is_final", &[&id]);
                stored.ok()?.map(|_| id)
            })
        },
    );
    let reply = ack(&server, &real.to_string(), Some(TOKEN), b"");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["acknowledged_by"], Value::Null);
    let listed = |acknowledged: bool| -> Vec<Value> {
        let body = server
            .get(&format!(
                "/api/stats/alerts?limit=50&acknowledged={acknowledged}"
            ))
            .json();
        body["data"].as_array().unwrap().clone()
    };
    let acked = listed(true);
    let entry = acked
        .iter()
        .find(|a| a["id"] == real)
        .expect("listed as acknowledged");
    assert_eq!(entry["acknowledged"], true);
    assert!(listed(false).iter().all(|a| a["id"] != real));
    assert!(listed(false).iter().all(|a| a["acknowledged"] == false));

    let metrics = scrape(&server);
    assert!(metrics["streampulse_alert_acknowledgements_total"] >= 3.0);
    assert_eq!(server.get("/health").json()["database"], "ok");
    assert!(!server.log().contains(TOKEN));
    drop(server);
    drop(schema);
}

// ---------------------------------------------------------------------------------------------
// Connection policy: floods, slow clients, timeouts, memory, shutdown
// ---------------------------------------------------------------------------------------------

/// Connections one flooding client opens: more than the server's 1024.
const FLOOD: usize = 1200;
/// How much the server's resident memory may grow while it is full of flood connections: the
/// policy's bound (1024 connections × a 16 KiB head buffer and hyper's and tokio's state) with
/// room for the allocator and the generator's traffic meanwhile.
const FLOOD_RSS_GROWTH_KIB: u64 = 64 * 1024;

/// Raises this process's soft limit on open files when the flood needs more (prlimit(1) on our
/// own pid: the workspace forbids the unsafe code setrlimit needs).
fn ensure_open_files(needed: u64) {
    let limits = || -> (u64, u64) {
        let text = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap();
        let value = |v: &str| v.parse().unwrap_or(u64::MAX);
        let mut fields = line.split_whitespace().skip(3);
        (value(fields.next().unwrap()), value(fields.next().unwrap()))
    };
    let (soft, hard) = limits();
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "the hard limit on open files ({hard}) is below {needed}"
    );
    let _ = Command::new("prlimit")
        .args([
            "--pid".to_string(),
            std::process::id().to_string(),
            format!("--nofile={}:", hard.min(needed * 2)),
        ])
        .status();
    assert!(
        limits().0 >= needed,
        "could not raise the open-file limit to {needed}"
    );
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connects")
}

/// Whether the server has closed `stream` (EOF or reset), after reading whatever it sent first.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Reads `stream` until the server closes it, calling `tick` about every 50 ms (to trickle
/// bytes); returns what arrived and when the connection closed, counted from the call. Fails if
/// it is still open after `limit`.
fn until_closed(
    stream: &mut TcpStream,
    limit: Duration,
    mut tick: impl FnMut(&mut TcpStream, Duration) -> std::io::Result<()>,
) -> (String, Duration) {
    let start = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        assert!(
            start.elapsed() < limit,
            "still open after {limit:?}; received {:?}",
            String::from_utf8_lossy(&received)
        );
        // A write into a connection the server has closed fails: closed.
        if tick(stream, start.elapsed()).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        start.elapsed(),
    )
}

fn no_tick(_: &mut TcpStream, _: Duration) -> std::io::Result<()> {
    Ok(())
}

fn metric(server: &Server, series: &str) -> f64 {
    scrape(server).get(series).copied().unwrap_or(0.0)
}

fn closed_total(reason: &str) -> String {
    format!("streampulse_http_connections_closed_total{{reason=\"{reason}\"}}")
}

/// Opens up to `n` connections to `addr` from several threads at once. Connection `i` of each thread is
/// a keep-alive connection that made a request (`i % 6 == 0`), a slowloris head of 12 KiB that
/// never ends (`1`, `2`: close to the 16 KiB cap, so the server's read buffer grows), or idle.
fn flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    const THREADS: usize = 8;
    let slow_head = Arc::new(format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
        "a".repeat(12 * 1024)
    ));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let slow_head = slow_head.clone();
            std::thread::spawn(move || {
                let count = n / THREADS + usize::from(t < n % THREADS);
                // A connect the server does not take at once is given up (the flooder holds
                // fewer), so the flood takes a second, not the minutes of SYN retries a server
                // that stopped accepting would cost.
                (0..count)
                    .filter_map(|i| {
                        let mut stream =
                            TcpStream::connect_timeout(&addr, Duration::from_millis(250)).ok()?;
                        // It may already have been evicted to make room for a newer one.
                        let _ = match i % 6 {
                            0 => stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
                            1 | 2 => stream.write_all(slow_head.as_bytes()),
                            _ => Ok(()),
                        };
                        Some(stream)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect()
}

#[test]
fn one_client_cannot_starve_the_others() {
    ensure_open_files(FLOOD as u64 + 512);
    let server = Server::process(&[]);
    let before = server.rss_kib();

    // One client holds more connections than the server's cap, and keeps topping them up so the
    // server is full before every round of requests.
    let mut held = flood(server.addr(), FLOOD + 60);
    for round in 0..5 {
        held.extend(flood(server.addr(), 24));
        for path in ["/health", "/", "/api/stats/realtime"] {
            // Connecting counts: a server that stopped accepting fails here.
            let start = Instant::now();
            let reply = server.get(path);
            let took = start.elapsed();
            assert_eq!(
                reply.status,
                200,
                "{path} during the flood: {}",
                reply.text()
            );
            assert!(
                took < Duration::from_secs(2),
                "round {round}: {path} took {took:?} during the flood"
            );
        }
    }

    assert!(
        held.len() >= FLOOD,
        "the flood got only {} connections",
        held.len()
    );
    let during = server.rss_kib();
    eprintln!(
        "flood: server RSS {before} KiB before, {during} KiB with {} connections held ({} KiB more)",
        held.len(),
        during.saturating_sub(before)
    );
    assert!(
        during.saturating_sub(before) < FLOOD_RSS_GROWTH_KIB,
        "RSS grew from {before} KiB to {during} KiB"
    );
    let metrics = scrape(&server);
    assert!(
        metrics["streampulse_http_connections"] <= 1024.0,
        "more connections than the cap: {}",
        metrics["streampulse_http_connections"]
    );
    // The flood's connections gave way (evicted, not timed out), and the server says so.
    let closed = held.iter_mut().map(closed_by_server).filter(|c| *c).count();
    assert!(
        closed >= held.len() - 1024,
        "only {closed} of {} flood connections were closed",
        held.len()
    );
    assert!(metrics[&closed_total("evicted")] >= (held.len() - 1024) as f64);
    assert_eq!(metrics[&closed_total("idle_timeout")], 0.0);
    drop(held);
    server.eventually(
        "the flood's connections released",
        Duration::from_secs(10),
        || (metric(&server, "streampulse_http_connections") <= 2.0).then_some(()),
    );
}

#[test]
fn slow_clients_time_out() {
    let schema = Schema::new("api_test");
    // Shortened deadlines (the hidden `--http-*-timeout` flags), so the test waits seconds:
    // header 1 s, body 1.5 s, idle 2 s. Each check below tells the three apart.
    let api = ApiArgs {
        http_header_timeout: Some(Duration::from_secs(1)),
        http_body_timeout: Some(Duration::from_secs_f64(1.5)),
        http_idle_timeout: Some(Duration::from_secs(2)),
        ..api_args(&[], Some(TOKEN))
    };
    let server = Server::in_process(api, Some(&schema));
    let within = |what: &str, took: Duration, lo: f64, hi: f64| {
        assert!(
            took >= Duration::from_secs_f64(lo) && took <= Duration::from_secs_f64(hi),
            "{what}: closed after {took:?}, expected between {lo} s and {hi} s"
        );
    };

    // A connection that never sends a byte.
    let (_, took) = until_closed(
        &mut connect(server.addr()),
        Duration::from_secs(10),
        no_tick,
    );
    within("a silent connection", took, 1.8, 4.0);

    // A keep-alive connection after its answer.
    let mut stream = connect(server.addr());
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (received, took) = until_closed(&mut stream, Duration::from_secs(10), no_tick);
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    within("an idle keep-alive connection", took, 1.8, 4.0);

    // Slowloris: a header line every 200 ms never ends the head; trickling extends nothing.
    let mut stream = connect(server.addr());
    stream.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    let mut next = Duration::from_millis(200);
    let (received, took) = until_closed(&mut stream, Duration::from_secs(10), |s, at| {
        if at >= next {
            next += Duration::from_millis(200);
            s.write_all(b"X-Slow: 1\r\n")?;
        }
        Ok(())
    });
    assert!(!received.contains("200 OK"), "{received}");
    within("a slowloris head", took, 0.9, 3.0);

    // A slow body from the holder of the ack token: one byte a second of 100 declared.
    let mut stream = connect(server.addr());
    let head = format!(
        "POST /api/alerts/1/ack HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut next = Duration::ZERO;
    let (received, took) = until_closed(&mut stream, Duration::from_secs(10), |s, at| {
        if at >= next {
            next += Duration::from_secs(1);
            // Ignored once the server has answered: what matters is when it closes.
            let _ = s.write_all(b" ");
        }
        Ok(())
    });
    assert!(received.starts_with("HTTP/1.1 408"), "{received}");
    assert!(received.contains("\"request_timeout\""), "{received}");
    within("a slow authorised body", took, 1.3, 4.0);

    // Bodies nobody reads do not hold a connection: the answer comes at once and it closes.
    for (path, auth) in [
        ("/api/alerts/1/ack", "Bearer wrong"),
        ("/health", "Bearer wrong"),
    ] {
        let method = if path == "/health" { "GET" } else { "POST" };
        let mut stream = connect(server.addr());
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 100\r\n\r\n{{"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let (received, took) = until_closed(&mut stream, Duration::from_secs(10), no_tick);
        let status = if method == "GET" { "200" } else { "401" };
        assert!(
            received.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {received}"
        );
        within(path, took, 0.0, 0.9);
    }

    // A complete request still works, and /metrics counts what was closed and why.
    let reply = ack(&server, "1", Some(TOKEN), br#"{"by": "x"}"#);
    reply.assert_error(404, "not_found");
    let metrics = scrape(&server);
    assert!(metrics[&closed_total("idle_timeout")] >= 2.0, "{metrics:?}");
    assert!(
        metrics[&closed_total("header_timeout")] >= 1.0,
        "{metrics:?}"
    );
    assert_eq!(metrics[&closed_total("evicted")], 0.0);
    drop(server);
    drop(schema);
}

#[test]
fn signals_after_the_alert_list_exit_cleanly() {
    for signal in ["TERM", "INT"] {
        let schema = Schema::new("api_test");
        // With a token: the process's log, start-up included, must never show it.
        let url = postgres_url();
        let server = Server::process(&[
            "--postgres",
            &url,
            "--pg-schema",
            &schema.0,
            "--ack-token",
            TOKEN,
        ]);
        // The alert list reads acknowledged ids from PostgreSQL: from here on a session is open.
        server.eventually(
            "the acknowledged ids read from PostgreSQL",
            Duration::from_secs(20),
            || {
                assert_eq!(server.get("/api/stats/alerts").status, 200);
                (server.get("/health").json()["database"] == "ok").then_some(())
            },
        );
        let (status, log) = server.stop(signal);
        assert!(!log.contains("panicked"), "SIG{signal}:\n{log}");
        assert_eq!(status.code(), Some(0), "SIG{signal}:\n{log}");
        assert!(log.contains("shutting down"), "{log}");
        assert!(!log.contains(TOKEN), "the ack token is in the log");
        drop(schema);
    }
}
