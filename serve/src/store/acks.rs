//! The acknowledgement endpoint's statements: which alerts are acknowledged, and acknowledging
//! one. They run on the async driver (the API's runtime must never block); the handler
//! (`api::ack`) owns the session, its deadlines and the HTTP side.

use std::collections::HashSet;

use tokio_postgres::Client;

/// An alert as acknowledging it left it (times in milliseconds since the epoch).
#[derive(Clone, Debug, PartialEq)]
pub struct AckedAlert {
    pub id: i64,
    pub alert_type: String,
    pub severity: String,
    pub message: String,
    pub region: String,
    pub metric_name: String,
    pub metric_value: f64,
    pub threshold_value: f64,
    pub window_start: i64,
    pub window_end: i64,
    pub raised_at: i64,
    pub is_final: bool,
    pub acknowledged: bool,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
    /// For a baseline rule, the baseline's value and the score (NULL for the fixed rules).
    pub baseline_value: Option<f64>,
    pub score: Option<f64>,
}

/// The ids of acknowledged alerts of windows starting at `since_ms` or later.
pub async fn acknowledged_since(
    client: &Client,
    since_ms: i64,
) -> Result<HashSet<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id FROM alerts WHERE acknowledged AND window_start >= to_timestamp($1::float8 / 1000)",
            &[&(since_ms as f64)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Acknowledges alert `id` (by `by`), unless it already is: every SET expression sees the row as
/// it was, so a second acknowledgement keeps the first one's time and name. `None`: no such alert.
pub async fn acknowledge(
    client: &Client,
    id: i64,
    by: Option<&str>,
) -> Result<Option<AckedAlert>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "UPDATE alerts SET acknowledged = true,
                 acknowledged_at = CASE WHEN acknowledged THEN acknowledged_at ELSE now() END,
                 acknowledged_by = CASE WHEN acknowledged THEN acknowledged_by ELSE $2 END
             WHERE id = $1
             RETURNING id, alert_type, severity, message, region, metric_name, metric_value,
                 threshold_value, (extract(epoch FROM window_start) * 1000)::bigint,
                 (extract(epoch FROM window_end) * 1000)::bigint,
                 (extract(epoch FROM raised_at) * 1000)::bigint, is_final, acknowledged,
                 (extract(epoch FROM acknowledged_at) * 1000)::bigint, acknowledged_by,
                 baseline_value, score",
            &[&id, &by],
        )
        .await?;
    Ok(row.map(|r| AckedAlert {
        id: r.get(0),
        alert_type: r.get(1),
        severity: r.get(2),
        message: r.get(3),
        region: r.get(4),
        metric_name: r.get(5),
        metric_value: r.get(6),
        threshold_value: r.get(7),
        window_start: r.get(8),
        window_end: r.get(9),
        raised_at: r.get(10),
        is_final: r.get(11),
        acknowledged: r.get(12),
        acknowledged_at: r.get(13),
        acknowledged_by: r.get(14),
        baseline_value: r.get(15),
        score: r.get(16),
    }))
}
