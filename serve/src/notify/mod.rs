//! Alert notifications: where they go ([`config`]), what each destination receives ([`format`]),
//! and the notifier that delivers the outbox ([`run`]).
//!
//! ```text
//!   sink transaction ──▶ episodes + notification_outbox (same COMMIT: nothing lost in a crash)
//!   notifier: due rows ──POST (timeout)──▶ destination ── 2xx ──▶ delivered
//!                                                      └─ else ─▶ retry after backoff, or abandoned
//! ```
//!
//! Delivery is at least once: a row is marked delivered only after the destination answered 2xx,
//! so a crash between the two sends it again, with the same idempotency key (webhook header and
//! body; PagerDuty's dedup_key per episode), and a receiver that deduplicates by it acts once.
//! A row waits for the earlier rows of its (destination, episode), so "resolved" never overtakes
//! "opened". Every failure (a non-2xx answer, a refused connection, no answer within the timeout)
//! is retried after a backoff that doubles from `retry_min` to `retry_max` (with ±20% jitter),
//! until the row is older than `give_up`, then it is abandoned. Failures are counted in
//! [`NotifyStats`] (`/metrics`, `/health`) and stored on the row (`attempts`, `last_error`,
//! `next_attempt_at`). Errors name the destination, never its URL, headers or routing key.
//!
//! One notifier runs per pipeline, in the process that runs the sink (process 0), with one task
//! per destination: a destination that is down or hangs delays only its own notifications. Each
//! task holds a PostgreSQL advisory lock on its destination, so two overlapping processes never
//! deliver to one destination at once. Rows of a destination that is no longer configured stay
//! pending (and show in the backlog).

pub mod config;
pub mod format;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use config::{Destination, Format, Route, Transition};

use crate::health::Link;
use crate::store::{outbox, Database};

/// How the notifier paces itself.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The longest one delivery may take, connecting included.
    pub timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// A notification still failing this long after its transition is abandoned.
    pub give_up: Duration,
    /// How often the outbox is read when nothing is due.
    pub poll: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            timeout: Duration::from_secs(10),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            give_up: Duration::from_secs(24 * 3600),
            poll: Duration::from_millis(200),
        }
    }
}

/// What the notifier has done, for `/metrics` and `/health`.
#[derive(Debug, Default)]
pub struct NotifyStats {
    /// Destination names, in configuration order.
    pub destinations: Vec<String>,
    /// Per destination: delivered, failed attempts, abandoned.
    pub outcomes: Mutex<BTreeMap<String, [u64; 3]>>,
    /// The outbox as last read: pending rows, those that have failed at least once, the age of the
    /// oldest pending row in milliseconds.
    pub pending: AtomicI64,
    pub retrying: AtomicI64,
    pub oldest_pending_ms: AtomicU64,
    /// The last failed attempt: destination and reason.
    pub last_error: Mutex<Option<(String, String)>>,
    /// PostgreSQL as the notifier last saw it.
    pub database: Link,
}

impl NotifyStats {
    pub fn new(destinations: &[Destination]) -> NotifyStats {
        NotifyStats {
            destinations: destinations.iter().map(|d| d.route.name.clone()).collect(),
            ..NotifyStats::default()
        }
    }

    fn count(&self, destination: &str, outcome: usize) {
        let mut outcomes = self.outcomes.lock().expect("notify stats lock");
        outcomes.entry(destination.to_string()).or_default()[outcome] += 1;
    }

    /// Totals over destinations: delivered, failed attempts, abandoned.
    pub fn totals(&self) -> [u64; 3] {
        let outcomes = self.outcomes.lock().expect("notify stats lock");
        outcomes.values().fold([0; 3], |mut t, o| {
            for i in 0..3 {
                t[i] += o[i];
            }
            t
        })
    }
}

/// The delay before attempt `attempts + 1`: `retry_min` doubled per failure, at most `retry_max`,
/// with ±20% jitter from `seed` so that rows failed together do not retry together.
pub fn backoff(settings: &Settings, attempts: i32, seed: i64) -> Duration {
    let doublings = attempts.clamp(0, 30) as u32;
    let base = settings
        .retry_min
        .saturating_mul(1u32 << doublings.min(20))
        .min(settings.retry_max);
    let mix = (seed as u64 ^ (attempts as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let jitter = 0.8 + 0.4 * ((mix >> 11) as f64 / (1u64 << 53) as f64);
    base.mul_f64(jitter)
}

type HttpClient = Client<hyper_openssl::client::legacy::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Delivers the outbox until `stop` completes: one task per destination (a destination that is
/// down or slow delays only its own notifications), and one that reads the backlog for `/metrics`.
/// Never returns an error: an unreachable database or destination is retried, and shown in `stats`.
pub async fn run(
    db: Database,
    destinations: Vec<Destination>,
    settings: Settings,
    stats: Arc<NotifyStats>,
    stop: impl Future<Output = ()>,
) {
    let http: HttpClient = match hyper_openssl::client::legacy::HttpsConnector::new() {
        Ok(https) => Client::builder(TokioExecutor::new()).build(https),
        Err(e) => {
            log::error!("notifier: cannot set up TLS ({e}); notifications stay in the outbox");
            stats.database.failed(format!("TLS setup failed: {e}"));
            return;
        }
    };
    let (stopped, stopping) = tokio::sync::watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for destination in destinations {
        let (db, http, stats) = (db.clone(), http.clone(), stats.clone());
        let stopping = stopping.clone();
        tasks.spawn(async move {
            let name = destination.route.name.clone();
            let deliver = deliver(db, destination, http, settings, stats, name);
            stop_with(deliver, stopping).await;
        });
    }
    let watch_backlog = backlog(db, stats);
    tasks.spawn(stop_with(watch_backlog, stopping));
    stop.await;
    let _ = stopped.send(true);
    while tasks.join_next().await.is_some() {}
}

/// Runs `work` until the stop flag is set.
async fn stop_with(
    work: impl Future<Output = ()>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    tokio::select! {
        _ = work => {}
        _ = stopping.wait_for(|stop| *stop) => {}
    }
}

/// One destination's delivery loop. Holds a PostgreSQL advisory lock named after the schema and
/// the destination for as long as its session lives, so that two notifiers (a restart overlapping
/// the old process) never deliver to the same destination at once.
async fn deliver(
    db: Database,
    destination: Destination,
    http: HttpClient,
    settings: Settings,
    stats: Arc<NotifyStats>,
    name: String,
) {
    let mut session: Option<tokio_postgres::Client> = None;
    let mut db_backoff = Duration::from_millis(100);
    loop {
        let pause = match round(&db, &mut session, &http, &destination, &settings, &stats).await {
            Ok(Round::Busy) => Duration::ZERO,
            Ok(Round::Idle) => settings.poll,
            Ok(Round::Locked) => {
                log::info!("notifier: another process delivers to {name}; waiting for its lock");
                Duration::from_secs(5)
            }
            Err(e) => {
                session = None;
                log::warn!("notifier: {name}: the outbox cannot be read ({e:#}); retrying in {db_backoff:?}");
                stats.database.failed(format!("{e:#}"));
                let pause = db_backoff;
                db_backoff = (db_backoff * 2).min(Duration::from_secs(10));
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        db_backoff = Duration::from_millis(100);
        tokio::time::sleep(pause).await;
    }
}

/// Reads the backlog for `/metrics` and `/health` every second.
async fn backlog(db: Database, stats: Arc<NotifyStats>) {
    let mut session: Option<tokio_postgres::Client> = None;
    loop {
        let result = async {
            if session.as_ref().is_none_or(|c| c.is_closed()) {
                session = Some(connect(&db).await?);
            }
            let client = session.as_ref().expect("connected above");
            with_deadline(outbox::backlog(client)).await
        }
        .await;
        match result {
            Ok((pending, retrying, oldest_s)) => {
                stats.database.ok();
                stats.pending.store(pending, Ordering::Relaxed);
                stats.retrying.store(retrying, Ordering::Relaxed);
                stats
                    .oldest_pending_ms
                    .store((oldest_s * 1000.0) as u64, Ordering::Relaxed);
            }
            Err(e) => {
                session = None;
                stats.database.failed(format!("{e:#}"));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn connect(db: &Database) -> anyhow::Result<tokio_postgres::Client> {
    tokio::time::timeout(db.connect_deadline(), db.connect_async())
        .await
        .map_err(|_| anyhow::anyhow!("connecting to PostgreSQL timed out"))?
}

/// Rows of one destination read at once (and delivered concurrently).
const BATCH: i64 = 32;

/// How a delivery round went.
enum Round {
    /// A full batch was due: go again at once.
    Busy,
    Idle,
    /// Another notifier holds this destination.
    Locked,
}

/// One pass for one destination: deliver what is due and record the outcomes.
async fn round(
    db: &Database,
    session: &mut Option<tokio_postgres::Client>,
    http: &HttpClient,
    destination: &Destination,
    settings: &Settings,
    stats: &NotifyStats,
) -> anyhow::Result<Round> {
    let name = destination.route.name.as_str();
    if session.as_ref().is_none_or(|c| c.is_closed()) {
        let client = connect(db).await?;
        let locked: bool = with_deadline(client.query_one(
            "SELECT pg_try_advisory_lock(hashtext('streampulse-notifier|' || current_schema() || '|' || $1))",
            &[&name],
        ))
        .await?
        .get(0);
        if !locked {
            return Ok(Round::Locked);
        }
        *session = Some(client);
    }
    let client = session.as_ref().expect("connected above");
    let due = with_deadline(outbox::due(client, name, BATCH)).await?;
    let full = due.len() as i64 == BATCH;
    let attempts = due.into_iter().map(|row| async move {
        let outcome = send(http, destination, &row.payload, settings.timeout).await;
        (row, outcome)
    });
    for (row, outcome) in futures_join(attempts).await {
        match outcome {
            Ok(()) => {
                stats.count(name, 0);
                with_deadline(outbox::delivered(client, row.id)).await?;
            }
            Err(error) => {
                let retry = (row.age_s < settings.give_up.as_secs_f64())
                    .then(|| backoff(settings, row.attempts, row.id));
                stats.count(name, if retry.is_some() { 1 } else { 2 });
                let key = row.payload["idempotency_key"].as_str().unwrap_or("?");
                match retry {
                    Some(d) => log::warn!(
                        "notifier: {name} ({key}): {error}; attempt {} failed, retrying in {d:.1?}",
                        row.attempts + 1
                    ),
                    None => log::error!(
                        "notifier: {name} ({key}): {error}; abandoned after {} attempts",
                        row.attempts + 1
                    ),
                }
                *stats.last_error.lock().expect("notify stats lock") =
                    Some((name.to_string(), error.clone()));
                with_deadline(outbox::failed(client, row.id, &error, retry)).await?;
            }
        }
    }
    Ok(if full { Round::Busy } else { Round::Idle })
}

/// Runs the attempts concurrently on the current task and returns every outcome.
async fn futures_join<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> =
        futures.map(|f| Some(Box::pin(f))).collect();
    let mut out = Vec::with_capacity(pending.len());
    std::future::poll_fn(|cx| {
        let mut done = true;
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        out.push(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out
}

/// A database call bounded like every other (a hung server must not stall delivery forever).
async fn with_deadline<T>(
    call: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| anyhow::anyhow!("PostgreSQL did not answer within 10 s"))??)
}

/// Sends one notification; `Err` says why it failed, without the destination's secrets.
async fn send(
    http: &HttpClient,
    destination: &Destination,
    payload: &serde_json::Value,
    timeout: Duration,
) -> Result<(), String> {
    let rendered = format::render(destination, payload);
    let mut request = Request::post(destination.url.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("streampulse/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in &destination.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    for (name, value) in rendered.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            request = request.header(HeaderName::from_static(name), value);
        }
    }
    let request = request
        .body(Full::new(Bytes::from(rendered.body)))
        .map_err(|_| {
            "the request could not be built from the destination's settings".to_string()
        })?;
    let exchange = async {
        let response = http.request(request).await.map_err(|e| describe(&e))?;
        let status = response.status();
        // Read (a bounded part of) the answer so the connection can be reused.
        let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the destination answered HTTP {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:.1?}", timeout)),
    }
}

/// A client error as text: its kind and the innermost cause (an I/O or TLS error), which name no
/// URL.
fn describe(error: &hyper_util::client::legacy::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if error.is_connect() {
        format!("could not connect: {cause}")
    } else {
        format!("the request failed: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let s = Settings::default();
        for attempts in 0..40 {
            let d = backoff(&s, attempts, 12345).as_secs_f64();
            let base = (2f64.powi(attempts.min(20))).min(300.0);
            assert!(
                d >= base * 0.8 - 1e-9 && d <= base * 1.2 + 1e-9,
                "{attempts}: {d}"
            );
        }
        assert_ne!(backoff(&s, 3, 1), backoff(&s, 3, 2), "jitter varies by row");
    }
}
