//! What the API reads and writes in PostgreSQL: acknowledging alerts (`POST /api/alerts/{id}/ack`)
//! and episodes (`POST /api/episodes/{id}/ack`), the set of acknowledged ids that
//! `/api/stats/alerts?acknowledged=` filters by, and the stored episodes (`GET /api/episodes`).
//!
//! ```text
//!   POST /api/alerts/42/ack ─▶ 503 without --postgres or --ack-token
//!   Authorization: Bearer … ─▶ 401 unless it matches (compared in constant time)
//!   more than MAX_IN_FLIGHT at once ─▶ 429
//!   {"by": "name"} ≤ 16 KiB ─▶ 413 when larger, 400 when not that shape, 408 when too slow
//!                           ─▶ UPDATE alerts … WHERE id = $1 RETURNING … ─▶ 404 | 200 alert
//!
//!   GET /api/stats/alerts ─▶ acknowledged ids, re-read at most every REFRESH ─▶ SELECT id FROM alerts WHERE acknowledged
//! ```
//!
//! Queries (`store::acks`) go through one reused tokio-postgres session
//! (`store::Database::connect_async`), driven by a task on the API's runtime. Nothing here blocks a
//! runtime thread, and nothing needs a runtime to be dropped: the blocking `postgres::Client` did
//! both, and dropping the last `State` on a runtime thread at shutdown panicked ("Cannot start a
//! runtime from within a runtime"). Every call, connecting included, is bounded by [`DB_TIMEOUT`],
//! and a session that failed or timed out is replaced on the next call. A slow database delays the
//! ack call (up to [`DB_TIMEOUT`]), never the alert list: it waits at most [`REFRESH_WAIT`] and
//! otherwise answers from the ids it already has. The first acknowledgement of an alert is kept:
//! acknowledging it again changes nothing and returns it. A body that has not arrived within the
//! server's body timeout gets 408 (see `http`).

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::header::{HeaderValue, AUTHORIZATION, CONNECTION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use serde_json::{json, Value};
use tokio_postgres::Client;

use super::stats::iso8601;
use super::ApiError;
use crate::cli::Secret;
use crate::http::{BodyTimeout, RequestBody};
use crate::notify::Route;
use crate::store::episodes::{self, Episode, Filter, Target};
use crate::store::{acks, Database};

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest `by` accepted, in characters.
const MAX_BY: usize = 200;
/// How long the acknowledged ids are reused before being read again.
const REFRESH: Duration = Duration::from_secs(2);
/// How long an alert list waits for fresh ids before answering with the ones it has.
const REFRESH_WAIT: Duration = Duration::from_secs(1);
/// Acknowledgements in progress at once (reading a body or waiting for PostgreSQL); more get 429,
/// so even a token holder cannot tie up the server's connections with slow ones.
const MAX_IN_FLIGHT: usize = 16;
/// `GET /api/episodes` answered at once; more get 429 (each reads PostgreSQL).
const MAX_LISTS: usize = 4;
/// How long an ack call (or a refresh of the ids) waits for PostgreSQL, connecting included.
const DB_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Acks {
    shared: Option<Arc<Shared>>,
    /// SHA-256 of the token: comparing digests takes the same time whatever the lengths.
    token: Option<[u8; 32]>,
    total: AtomicU64,
    in_flight: tokio::sync::Semaphore,
    /// Episode lists being read at once (each a query on PostgreSQL); more get 429.
    lists: tokio::sync::Semaphore,
}

struct Shared {
    db: Database,
    /// The session, shared by concurrent queries (tokio-postgres pipelines them); the lock is held
    /// while connecting, so concurrent callers wait for one new session instead of opening many.
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    known: Mutex<Known>,
    refreshing: AtomicBool,
}

#[derive(Default)]
struct Known {
    ids: Arc<HashSet<i64>>,
    /// Bumped whenever `ids` changes, so cached alert lists expire.
    generation: u64,
    fetched: Option<Instant>,
    /// Whether the last query succeeded (`None` before the first).
    healthy: Option<bool>,
}

impl Acks {
    pub fn new(db: Option<Database>, token: Option<&Secret>) -> Acks {
        Acks {
            shared: db.map(|db| {
                Arc::new(Shared {
                    db,
                    client: tokio::sync::Mutex::new(None),
                    known: Mutex::new(Known::default()),
                    refreshing: AtomicBool::new(false),
                })
            }),
            token: token
                .filter(|t| !t.0.is_empty())
                .map(|t| openssl::sha::sha256(t.0.as_bytes())),
            total: AtomicU64::new(0),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            lists: tokio::sync::Semaphore::new(MAX_LISTS),
        }
    }

    pub fn acknowledged_total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The acknowledged ids among alerts of windows starting at `since_ms()` or later, and their
    /// generation. `since_ms` is called only when the ids are due to be read again.
    pub async fn current(
        &self,
        since_ms: impl FnOnce() -> Option<i64>,
    ) -> (Arc<HashSet<i64>>, u64) {
        let Some(shared) = &self.shared else {
            return (Arc::default(), 0);
        };
        let stale = shared
            .known
            .lock()
            .expect("acks lock")
            .fetched
            .is_none_or(|at| at.elapsed() >= REFRESH);
        if let Some(since_ms) = stale.then(since_ms).flatten() {
            if !shared.refreshing.swap(true, Ordering::AcqRel) {
                // A task of its own, so a slow refresh finishes for the next poll after this one
                // stopped waiting.
                let task = shared.clone();
                let refresh = tokio::spawn(async move { task.refresh(since_ms).await });
                let _ = tokio::time::timeout(REFRESH_WAIT, refresh).await;
            }
        }
        let known = shared.known.lock().expect("acks lock");
        (known.ids.clone(), known.generation)
    }

    /// `POST /api/alerts/{id}/ack` (which also acknowledges the alert's episode) and
    /// `POST /api/episodes/{id}/ack` (the episode and every alert of it). Acknowledging an open
    /// episode queues an "acknowledged" notification where its "opened" went.
    pub async fn acknowledge(
        &self,
        subject: Subject,
        id: &str,
        req: Request<RequestBody>,
        routes: &[Route],
    ) -> Result<Value, ApiError> {
        let Some(shared) = &self.shared else {
            return Err(unavailable(
                "acknowledging alerts needs PostgreSQL (start with --postgres)",
            ));
        };
        let Some(token) = &self.token else {
            return Err(unavailable(
                "acknowledging alerts is disabled: no --ack-token (STREAMPULSE_ACK_TOKEN) is set",
            ));
        };
        if !authorised(token, req.headers().get(AUTHORIZATION)) {
            return Err(unauthorised(req.headers().contains_key(AUTHORIZATION)));
        }
        let id: i64 = id.parse().ok().filter(|id| *id >= 0).ok_or_else(|| {
            ApiError::bad_parameter(format!(
                "{} id must be a non-negative integer, got {id:?}",
                subject.name()
            ))
        })?;
        let Ok(_in_flight) = self.in_flight.try_acquire() else {
            return Err(too_many(format!(
                "{MAX_IN_FLIGHT} acknowledgements are already in progress"
            )));
        };
        let by = read_by(req.into_body()).await?;
        let failed = |e: DbError| match e {
            DbError::TimedOut => unavailable("the database did not answer in time"),
            DbError::Failed(e) => {
                log::warn!("acknowledging {} {id}: {e:#}", subject.name());
                unavailable("the database could not be reached or refused the update")
            }
        };
        let not_found = || {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {} with id {id}", subject.name()),
            )
        };
        let body = match subject {
            Subject::Alert => {
                let mut alert = shared
                    .acknowledge(id, by.as_deref())
                    .await
                    .map_err(failed)?
                    .ok_or_else(not_found)?;
                // Its episode too (none yet if the sink has not stored it: null).
                let episode = shared
                    .acknowledge_episode(Target::Alert(id), by.as_deref(), routes)
                    .await
                    .map_err(failed)?;
                alert["episode"] = serde_json::to_value(episode).unwrap_or(Value::Null);
                alert
            }
            Subject::Episode => {
                let episode = shared
                    .acknowledge_episode(Target::Episode(id), by.as_deref(), routes)
                    .await
                    .map_err(failed)?
                    .ok_or_else(not_found)?;
                serde_json::to_value(episode).unwrap_or(Value::Null)
            }
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut known = shared.known.lock().expect("acks lock");
        match subject {
            Subject::Alert if !known.ids.contains(&id) => {
                Arc::make_mut(&mut known.ids).insert(id);
                known.generation += 1;
            }
            Subject::Alert => {}
            // Its alerts were acknowledged with it: read the ids again on the next list.
            Subject::Episode => {
                known.fetched = None;
                known.generation += 1;
            }
        }
        Ok(body)
    }

    /// `GET /api/episodes?state=&limit=`: the newest episodes with their notifications.
    pub async fn episodes(&self, filter: Filter, limit: i64) -> Result<Value, ApiError> {
        let Some(shared) = &self.shared else {
            return Err(unavailable(
                "episodes are stored in PostgreSQL (start with --postgres)",
            ));
        };
        let Ok(_listing) = self.lists.try_acquire() else {
            return Err(too_many(format!(
                "{MAX_LISTS} episode lists are already being read"
            )));
        };
        let list = shared
            .with_client(|c| async move { episodes::list(&c, filter, limit).await })
            .await
            .map_err(|e| match e {
                DbError::TimedOut => unavailable("the database did not answer in time"),
                DbError::Failed(e) => {
                    log::warn!("listing episodes: {e:#}");
                    unavailable("the database could not be reached")
                }
            })?;
        let episodes: Vec<Value> = list
            .into_iter()
            .map(|(episode, notifications)| {
                let mut value = serde_json::to_value(episode).unwrap_or(Value::Null);
                value["notifications"] = serde_json::to_value(notifications).unwrap_or_default();
                value
            })
            .collect();
        Ok(json!({ "count": episodes.len(), "episodes": episodes }))
    }
}

/// What a `POST …/ack` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Alert,
    Episode,
}

impl Subject {
    fn name(self) -> &'static str {
        match self {
            Subject::Alert => "alert",
            Subject::Episode => "episode",
        }
    }
}

/// Why a query did not return.
enum DbError {
    TimedOut,
    Failed(anyhow::Error),
}

impl Shared {
    fn display(&self) -> String {
        self.db.display()
    }

    /// The open session, or a new one.
    async fn client(&self) -> anyhow::Result<Arc<Client>> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        *slot = None;
        let client = Arc::new(self.db.connect_async().await?);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `query` on the shared session within [`DB_TIMEOUT`] (connecting counts); a failed or
    /// late query drops the session, so the next call starts afresh.
    async fn with_client<T, F>(&self, query: impl FnOnce(Arc<Client>) -> F) -> Result<T, DbError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let used = Mutex::new(None::<Arc<Client>>);
        let attempt = async {
            let client = self.client().await?;
            *used.lock().expect("used lock") = Some(client.clone());
            Ok::<_, anyhow::Error>(query(client).await?)
        };
        let result = match tokio::time::timeout(DB_TIMEOUT, attempt).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => DbError::Failed(e),
            Err(_) => DbError::TimedOut,
        };
        let used = used.lock().expect("used lock").take();
        if let Some(used) = used {
            let mut slot = self.client.lock().await;
            if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &used)) {
                *slot = None;
            }
        }
        Err(result)
    }

    async fn refresh(&self, since_ms: i64) {
        // Cleared however this ends, so a cancelled refresh cannot stop all later ones.
        struct Done<'a>(&'a AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.refreshing);
        let result = self
            .with_client(|c| async move { acks::acknowledged_since(&c, since_ms).await })
            .await;
        let mut known = self.known.lock().expect("acks lock");
        match result {
            Ok(ids) => {
                if *known.ids != ids {
                    known.ids = Arc::new(ids);
                    known.generation += 1;
                }
                known.healthy = Some(true);
            }
            Err(e) => {
                if known.healthy != Some(false) {
                    let e = match e {
                        DbError::TimedOut => anyhow::anyhow!("no answer within {DB_TIMEOUT:?}"),
                        DbError::Failed(e) => e,
                    };
                    log::warn!("reading acknowledged alerts from {}: {e:#}", self.display());
                }
                known.healthy = Some(false);
            }
        }
        // A failure also waits for the next refresh, so a down database is not asked on every poll.
        known.fetched = Some(Instant::now());
    }

    /// Acknowledges an episode in a transaction of its own, on a connection of its own (the shared
    /// session pipelines other requests' queries, which must not land inside the transaction).
    async fn acknowledge_episode(
        &self,
        target: Target,
        by: Option<&str>,
        routes: &[Route],
    ) -> Result<Option<Episode>, DbError> {
        let attempt = async {
            let mut client = self.db.connect_async().await?;
            Ok::<_, anyhow::Error>(episodes::acknowledge(&mut client, target, by, routes).await?)
        };
        match tokio::time::timeout(DB_TIMEOUT, attempt).await {
            Ok(Ok(episode)) => Ok(episode),
            Ok(Err(e)) => Err(DbError::Failed(e)),
            Err(_) => Err(DbError::TimedOut),
        }
    }

    async fn acknowledge(&self, id: i64, by: Option<&str>) -> Result<Option<Value>, DbError> {
        let by = by.map(str::to_string);
        let alert = self
            .with_client(|c| async move { acks::acknowledge(&c, id, by.as_deref()).await })
            .await?;
        Ok(alert.map(|a| {
            json!({
                "id": a.id,
                "alert_type": a.alert_type,
                "severity": a.severity,
                "message": a.message,
                "region": a.region,
                "metric_name": a.metric_name,
                "metric_value": a.metric_value,
                "threshold_value": a.threshold_value,
                "created_at": iso8601(a.window_start),
                "window_start": iso8601(a.window_start),
                "window_end": iso8601(a.window_end),
                "raised_at": iso8601(a.raised_at),
                "is_final": a.is_final,
                "acknowledged": a.acknowledged,
                "acknowledged_at": a.acknowledged_at.map(iso8601),
                "acknowledged_by": a.acknowledged_by,
                "baseline_value": a.baseline_value,
                "score": a.score,
            })
        }))
    }
}

/// Whether `header` is `Bearer <token>` with the configured token.
fn authorised(token: &[u8; 32], header: Option<&HeaderValue>) -> bool {
    let given = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let digest = openssl::sha::sha256(given.unwrap_or("").as_bytes());
    // Evaluated even without a header, so the time taken says nothing about the token.
    let equal = openssl::memcmp::eq(&digest, token);
    equal && given.is_some_and(|g| !g.is_empty())
}

/// The optional body `{"by": "name"}`; an empty body acknowledges anonymously.
async fn read_by(body: RequestBody) -> Result<Option<String>, ApiError> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
        Err(e) if e.is::<BodyTimeout>() => return Err(too_slow(e.to_string())),
        Err(e) => return Err(bad_body(format!("could not read the body: {e}"))),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Body {
        by: Option<String>,
    }
    let body: Body = serde_json::from_slice(&bytes)
        .map_err(|e| bad_body(format!("expected {{\"by\": \"name\"}}: {e}")))?;
    let by = body
        .by
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty());
    if let Some(by) = &by {
        if by.chars().count() > MAX_BY || by.chars().any(char::is_control) {
            return Err(bad_body(format!(
                "by must be at most {MAX_BY} characters without control characters"
            )));
        }
    }
    Ok(by)
}

pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request bodies are limited to {MAX_BODY} bytes"),
    )
}

/// The body did not arrive in time; the rest of it is not read, so the connection closes.
fn too_slow(detail: String) -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", detail)
        .with_header(CONNECTION, HeaderValue::from_static("close"))
}

fn bad_body(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_body", detail)
}

/// 429 with `Retry-After: 1`: the work of this kind already in progress is at its bound.
fn too_many(detail: String) -> ApiError {
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", detail)
        .with_header(RETRY_AFTER, HeaderValue::from_static("1"))
}

fn unavailable(detail: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        detail.to_string(),
    )
}

fn unauthorised(had_credentials: bool) -> ApiError {
    let challenge = if had_credentials {
        r#"Bearer realm="streampulse", error="invalid_token""#
    } else {
        r#"Bearer realm="streampulse""#
    };
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required".to_string(),
    )
    .with_header(WWW_AUTHENTICATE, HeaderValue::from_static(challenge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let token = openssl::sha::sha256(b"s3cret");
        let check = |h: &'static str| authorised(&token, Some(&HeaderValue::from_static(h)));
        assert!(check("Bearer s3cret"));
        assert!(check("bearer  s3cret "));
        assert!(!check("Bearer s3cre"));
        assert!(!check("Bearer s3cretx"));
        assert!(!check("Basic s3cret"));
        assert!(!check("s3cret"));
        assert!(!check("Bearer "));
        assert!(!authorised(&token, None));
        let empty = openssl::sha::sha256(b"");
        assert!(!authorised(
            &empty,
            Some(&HeaderValue::from_static("Bearer "))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn without_postgres_nothing_is_acknowledged() {
        let acks = Acks::new(None, Some(&Secret("t".into())));
        let (ids, generation) = acks.current(|| Some(0)).await;
        assert!(ids.is_empty());
        assert_eq!(generation, 0);
        assert!(acks.shared.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_database_is_reported_and_dropped_on_the_runtime() {
        // Port 1 refuses connections: the refresh fails at once, without a server.
        let url = "postgres://postgres@127.0.0.1:1/streampulse";
        let db = Database::new(url, "public").unwrap();
        let acks = Acks::new(Some(db), None);
        let healthy = |acks: &Acks| acks.shared.as_ref().unwrap().known.lock().unwrap().healthy;
        assert_eq!(healthy(&acks), None);
        let (ids, _) = acks.current(|| Some(0)).await;
        assert!(ids.is_empty());
        assert_eq!(healthy(&acks), Some(false));
        // Dropped here, on a runtime thread: nothing may block or start a runtime.
        drop(acks);
    }
}
