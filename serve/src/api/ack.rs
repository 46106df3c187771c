//! Acknowledging alerts: `POST /api/alerts/{id}/ack`, and the set of acknowledged ids that
//! `/api/stats/alerts?acknowledged=` filters by. Both live in PostgreSQL's `alerts` table.
//!
//! ```text
//!   POST /api/alerts/42/ack ─▶ 503 without --postgres or --ack-token
//!   Authorization: Bearer … ─▶ 401 unless it matches (compared in constant time)
//!   {"by": "name"} ≤ 16 KiB ─▶ 413 when larger, 400 when not that shape
//!                           ─▶ UPDATE alerts … WHERE id = $1 RETURNING … ─▶ 404 | 200 alert
//!
//!   GET /api/stats/alerts ─▶ acknowledged ids, re-read at most every REFRESH ─▶ SELECT id FROM alerts WHERE acknowledged
//! ```
//!
//! The postgres crate blocks, so every query runs on tokio's blocking pool over one reused
//! connection. A slow database delays the ack call (up to [`DB_TIMEOUT`]), never the alert list:
//! it waits at most [`REFRESH_WAIT`] and otherwise answers from the ids it already has. The first
//! acknowledgement of an alert is kept: acknowledging it again changes nothing and returns it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::{Request, StatusCode};
use postgres::Client;
use serde_json::{json, Value};

use super::stats::iso8601;
use super::ApiError;
use crate::cli::Secret;
use crate::db::Database;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest `by` accepted, in characters.
const MAX_BY: usize = 200;
/// How long the acknowledged ids are reused before being read again.
const REFRESH: Duration = Duration::from_secs(2);
/// How long an alert list waits for fresh ids before answering with the ones it has.
const REFRESH_WAIT: Duration = Duration::from_secs(1);
/// How long an ack call waits for PostgreSQL.
const DB_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Acks {
    shared: Option<Arc<Shared>>,
    /// SHA-256 of the token: comparing digests takes the same time whatever the lengths.
    token: Option<[u8; 32]>,
    total: AtomicU64,
}

struct Shared {
    db: Database,
    client: Mutex<Option<Client>>,
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
                    client: Mutex::new(None),
                    known: Mutex::new(Known::default()),
                    refreshing: AtomicBool::new(false),
                })
            }),
            token: token
                .filter(|t| !t.0.is_empty())
                .map(|t| openssl::sha::sha256(t.0.as_bytes())),
            total: AtomicU64::new(0),
        }
    }

    pub fn acknowledged_total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// For `/health`: `null` without PostgreSQL, else how the last query went.
    pub fn database_status(&self) -> Option<&'static str> {
        let shared = self.shared.as_ref()?;
        Some(match shared.known.lock().expect("acks lock").healthy {
            None => "configured",
            Some(true) => "ok",
            Some(false) => "unreachable",
        })
    }

    /// The acknowledged ids among alerts of windows starting at `since_ms` or later, and their
    /// generation.
    pub async fn current(&self, since_ms: Option<i64>) -> (Arc<HashSet<i64>>, u64) {
        let Some(shared) = &self.shared else {
            return (Arc::default(), 0);
        };
        let stale = shared
            .known
            .lock()
            .expect("acks lock")
            .fetched
            .is_none_or(|at| at.elapsed() >= REFRESH);
        if let Some(since_ms) = since_ms.filter(|_| stale) {
            if !shared.refreshing.swap(true, Ordering::AcqRel) {
                let task = shared.clone();
                let refresh = tokio::task::spawn_blocking(move || task.refresh(since_ms));
                let _ = tokio::time::timeout(REFRESH_WAIT, refresh).await;
            }
        }
        let known = shared.known.lock().expect("acks lock");
        (known.ids.clone(), known.generation)
    }

    /// `POST /api/alerts/{id}/ack`.
    pub async fn acknowledge(&self, id: &str, req: Request<Incoming>) -> Result<Value, ApiError> {
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
                "alert id must be a non-negative integer, got {id:?}"
            ))
        })?;
        let by = read_by(req.into_body()).await?;

        let task = shared.clone();
        let update = tokio::task::spawn_blocking(move || task.acknowledge(id, by.as_deref()));
        let row = match tokio::time::timeout(DB_TIMEOUT, update).await {
            Ok(Ok(Ok(row))) => row,
            Ok(Ok(Err(e))) => {
                log::warn!("acknowledging alert {id}: {e:#}");
                return Err(unavailable(
                    "the database could not be reached or refused the update",
                ));
            }
            Ok(Err(_)) | Err(_) => return Err(unavailable("the database did not answer in time")),
        };
        let Some(alert) = row else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no alert with id {id}"),
            ));
        };
        self.total.fetch_add(1, Ordering::Relaxed);
        let mut known = shared.known.lock().expect("acks lock");
        if !known.ids.contains(&id) {
            Arc::make_mut(&mut known.ids).insert(id);
            known.generation += 1;
        }
        Ok(alert)
    }
}

impl Shared {
    /// Runs `query` on the shared connection, connecting first if needed; a failed query drops the
    /// connection so the next call starts afresh.
    fn with_client<T>(
        &self,
        query: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> anyhow::Result<T> {
        let mut slot = self.client.lock().expect("client lock");
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(self.db.connect()?);
        }
        let result = query(slot.as_mut().expect("connected just above"));
        if result.is_err() {
            *slot = None;
        }
        Ok(result?)
    }

    fn refresh(&self, since_ms: i64) {
        let result = self.with_client(|c| {
            c.query(
                "SELECT id FROM alerts WHERE acknowledged AND window_start >= to_timestamp($1::float8 / 1000)",
                &[&(since_ms as f64)],
            )
        });
        let mut known = self.known.lock().expect("acks lock");
        match result {
            Ok(rows) => {
                let ids: HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
                if *known.ids != ids {
                    known.ids = Arc::new(ids);
                    known.generation += 1;
                }
                known.healthy = Some(true);
            }
            Err(e) => {
                if known.healthy != Some(false) {
                    log::warn!(
                        "reading acknowledged alerts from {}: {e:#}",
                        self.db.display()
                    );
                }
                known.healthy = Some(false);
            }
        }
        // A failure also waits for the next refresh, so a down database is not asked on every poll.
        known.fetched = Some(Instant::now());
        self.refreshing.store(false, Ordering::Release);
    }

    fn acknowledge(&self, id: i64, by: Option<&str>) -> anyhow::Result<Option<Value>> {
        // Every SET expression sees the row as it was, so a second acknowledgement keeps the first
        // one's time and name.
        let row = self.with_client(|c| {
            c.query_opt(
                "UPDATE alerts SET acknowledged = true,
                     acknowledged_at = CASE WHEN acknowledged THEN acknowledged_at ELSE now() END,
                     acknowledged_by = CASE WHEN acknowledged THEN acknowledged_by ELSE $2 END
                 WHERE id = $1
                 RETURNING id, alert_type, severity, message, region, metric_name, metric_value,
                     threshold_value, (extract(epoch FROM window_start) * 1000)::bigint,
                     (extract(epoch FROM window_end) * 1000)::bigint,
                     (extract(epoch FROM raised_at) * 1000)::bigint, is_final, acknowledged,
                     (extract(epoch FROM acknowledged_at) * 1000)::bigint, acknowledged_by",
                &[&id, &by],
            )
        })?;
        Ok(row.map(|r| {
            let window_start: i64 = r.get(8);
            json!({
                "id": r.get::<_, i64>(0),
                "alert_type": r.get::<_, String>(1),
                "severity": r.get::<_, String>(2),
                "message": r.get::<_, String>(3),
                "region": r.get::<_, String>(4),
                "metric_name": r.get::<_, String>(5),
                "metric_value": r.get::<_, f64>(6),
                "threshold_value": r.get::<_, f64>(7),
                "created_at": iso8601(window_start),
                "window_start": iso8601(window_start),
                "window_end": iso8601(r.get(9)),
                "raised_at": iso8601(r.get(10)),
                "is_final": r.get::<_, bool>(11),
                "acknowledged": r.get::<_, bool>(12),
                "acknowledged_at": r.get::<_, Option<i64>>(13).map(iso8601),
                "acknowledged_by": r.get::<_, Option<String>>(14),
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
async fn read_by(body: Incoming) -> Result<Option<String>, ApiError> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large()),
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

fn bad_body(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_body", detail)
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
        let (ids, generation) = acks.current(Some(0)).await;
        assert!(ids.is_empty());
        assert_eq!(generation, 0);
        assert_eq!(acks.database_status(), None);
    }
}
