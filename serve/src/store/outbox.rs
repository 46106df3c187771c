//! The notifier's SQL on the outbox (async driver): what is due, and what came of an attempt.
//!
//! ```text
//!   due(): pending, next_attempt_at passed, and no earlier pending row of the same
//!          (destination, episode) ─ so "resolved" never overtakes "opened"
//!   delivered() / failed(): attempts + 1; failed sets next_attempt_at (backoff) or abandons
//! ```

use std::time::Duration;

use serde_json::Value;
use tokio_postgres::Client;

/// A notification to send.
#[derive(Clone, Debug)]
pub struct Due {
    pub id: i64,
    pub destination: String,
    pub attempts: i32,
    /// How long ago the transition was written, in seconds.
    pub age_s: f64,
    pub payload: Value,
}

/// Up to `limit` notifications for `destination` due now, oldest first.
pub async fn due(
    client: &Client,
    destination: &str,
    limit: i64,
) -> Result<Vec<Due>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT o.id, o.destination, o.attempts, extract(epoch FROM now() - o.created_at)::float8,
                 o.payload::text
             FROM notification_outbox o
             WHERE o.state = 'pending' AND o.destination = $2 AND o.next_attempt_at <= now()
               AND NOT EXISTS (SELECT 1 FROM notification_outbox p
                               WHERE p.state = 'pending' AND p.destination = o.destination
                                 AND p.episode_id = o.episode_id AND p.id < o.id)
             ORDER BY o.id LIMIT $1",
            &[&limit, &destination],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Due {
            id: r.get(0),
            destination: r.get(1),
            attempts: r.get(2),
            age_s: r.get(3),
            payload: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or(Value::Null),
        })
        .collect())
}

pub async fn delivered(client: &Client, id: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE notification_outbox SET state = 'delivered', attempts = attempts + 1,
                 last_attempt_at = now(), delivered_at = now(), last_error = NULL
             WHERE id = $1 AND state = 'pending'",
            &[&id],
        )
        .await?;
    Ok(())
}

/// Records a failed attempt: tried again after `retry_in`, or abandoned (`retry_in` `None`).
pub async fn failed(
    client: &Client,
    id: i64,
    error: &str,
    retry_in: Option<Duration>,
) -> Result<(), tokio_postgres::Error> {
    let (state, secs) = match retry_in {
        Some(d) => ("pending", d.as_secs_f64()),
        None => ("abandoned", 0.0),
    };
    client
        .execute(
            "UPDATE notification_outbox SET state = $2, attempts = attempts + 1, last_attempt_at = now(),
                 last_error = $3, next_attempt_at = now() + make_interval(secs => $4)
             WHERE id = $1 AND state = 'pending'",
            &[&id, &state, &error, &secs],
        )
        .await?;
    Ok(())
}

/// The backlog: pending notifications, how many of them have failed at least once, and the age
/// of the oldest, in seconds.
pub async fn backlog(client: &Client) -> Result<(i64, i64, f64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE attempts > 0),
                 coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8
             FROM notification_outbox WHERE state = 'pending'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}
