//! The episodes' and the outbox's SQL. The sink calls [`maintain`] inside its transaction, after the
//! alert rows: episodes change with the alerts they are made of and with the watermark, and each
//! transition puts its notifications in the outbox in that same transaction. The API lists episodes
//! and acknowledges them ([`list`], [`acknowledge`]) on the async driver.
//!
//! ```text
//!   batch's alert changes ─▶ per (rule, region): alerts after its last resolved episode ─▶ runs
//!        ─▶ sink::episodes::reconcile with the open episodes ─▶ UPDATE / INSERT / withdraw
//!   batch's watermark ─▶ open episodes whose first window is final ─▶ confirmed
//!                     ─▶ open episodes whose next window is final ─▶ resolved
//!   every transition ─▶ notify_sql: one outbox row per destination that wants it
//! ```

use std::collections::BTreeSet;

use anyhow::Context;
use postgres::Transaction;
use serde::Serialize;
use serde_json::{json, Value};
use streampulse_dataflow::{Derived, Rule};
use tokio_postgres::Row;

use super::sink::SinkConfig;
use crate::notify::{Route, Transition};
use crate::sink::batch::Batch;
use crate::sink::episodes::{self, AlertWindow, OpenEpisode, Run, Step};

/// An episode as stored (times as RFC 3339), for the API and the notification payloads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Episode {
    pub id: i64,
    pub alert_type: String,
    pub region: String,
    pub severity: String,
    pub state: String,
    /// Its first window is final: it can no longer be withdrawn.
    pub confirmed: bool,
    pub metric_name: String,
    pub peak_value: f64,
    pub threshold_value: f64,
    pub first_window: String,
    pub last_window: String,
    pub episode_end: String,
    pub windows: i32,
    pub message: String,
    pub is_final: bool,
    pub opened_at: String,
    pub closed_at: Option<String>,
    pub acknowledged: bool,
    pub acknowledged_at: Option<String>,
    pub acknowledged_by: Option<String>,
}

/// The columns [`Episode::of`] reads, in its order.
const COLUMNS: &str = "id, alert_type, region, severity, state, metric_name, peak_value,
    threshold_value, (extract(epoch FROM first_window) * 1000)::bigint,
    (extract(epoch FROM last_window) * 1000)::bigint, (extract(epoch FROM episode_end) * 1000)::bigint,
    windows, message, is_final, (extract(epoch FROM opened_at) * 1000)::bigint,
    (extract(epoch FROM closed_at) * 1000)::bigint, acknowledged,
    (extract(epoch FROM acknowledged_at) * 1000)::bigint, acknowledged_by, confirmed";

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms}ms"), |t| t.to_string())
}

impl Episode {
    fn of(row: &Row) -> Episode {
        Episode {
            id: row.get(0),
            alert_type: row.get(1),
            region: row.get(2),
            severity: row.get(3),
            state: row.get(4),
            metric_name: row.get(5),
            peak_value: row.get(6),
            threshold_value: row.get(7),
            first_window: rfc3339(row.get(8)),
            last_window: rfc3339(row.get(9)),
            episode_end: rfc3339(row.get(10)),
            windows: row.get(11),
            message: row.get(12),
            is_final: row.get(13),
            opened_at: rfc3339(row.get(14)),
            closed_at: row.get::<_, Option<i64>>(15).map(rfc3339),
            acknowledged: row.get(16),
            acknowledged_at: row.get::<_, Option<i64>>(17).map(rfc3339),
            acknowledged_by: row.get(18),
            confirmed: row.get(19),
        }
    }
}

/// The outbox key of an episode's transition: the same on every retry and in every process.
pub fn idempotency_key(episode: i64, transition: Transition) -> String {
    format!("streampulse-episode-{episode}-{}", transition.name())
}

/// An outbox row's payload: the transition and the episode as it was then. No secrets.
pub fn payload(episode: &Episode, transition: Transition) -> Value {
    json!({
        "idempotency_key": idempotency_key(episode.id, transition),
        "transition": transition.name(),
        "occurred_at": rfc3339(jiff::Timestamp::now().as_millisecond()),
        "source": "streampulse",
        "episode": episode,
    })
}

/// One outbox row per candidate destination; a destination that must have been told "opened"
/// first (`$5`) gets the row only if it was. A transition already in the outbox is not added
/// again.
const NOTIFY_SQL: &str = "
    INSERT INTO notification_outbox (destination, episode_id, transition, idempotency_key, payload)
    SELECT d.name, $1, $2, $3, $4::text::jsonb
    FROM unnest($5::text[], $6::bool[]) AS d(name, after_opened)
    WHERE NOT d.after_opened OR EXISTS (
        SELECT 1 FROM notification_outbox o
        WHERE o.destination = d.name AND o.episode_id = $1 AND o.transition = 'opened')
    ON CONFLICT (destination, idempotency_key) DO NOTHING";

/// The parameters of [`NOTIFY_SQL`], in its order.
struct Notice {
    episode: i64,
    transition: &'static str,
    key: String,
    payload: String,
    names: Vec<String>,
    after_opened: Vec<bool>,
}

impl Notice {
    fn params(&self) -> [&(dyn postgres::types::ToSql + Sync); 6] {
        [
            &self.episode,
            &self.transition,
            &self.key,
            &self.payload,
            &self.names,
            &self.after_opened,
        ]
    }
}

/// The parameters of [`NOTIFY_SQL`] for `episode`'s `transition`, or `None` when no destination
/// wants it. An "opened" goes to destinations whose severity filter the episode passes (an
/// escalation to CRITICAL opens it for CRITICAL-only destinations), once the episode is confirmed
/// unless the destination takes provisional ones; "acknowledged" and "resolved" go where "opened"
/// went (or, for a destination that does not take "opened", by severity).
fn notify_params(routes: &[Route], episode: &Episode, transition: Transition) -> Option<Notice> {
    let mut names = Vec::new();
    let mut after_opened = Vec::new();
    for route in routes.iter().filter(|r| r.subscribes(transition)) {
        let needs_opened = transition != Transition::Opened && route.subscribes(Transition::Opened);
        let ready = route.provisional || episode.confirmed;
        if needs_opened || (ready && route.wants(&episode.severity)) {
            names.push(route.name.clone());
            after_opened.push(needs_opened);
        }
    }
    if names.is_empty() {
        return None;
    }
    Some(Notice {
        episode: episode.id,
        transition: transition.name(),
        key: idempotency_key(episode.id, transition),
        payload: payload(episode, transition).to_string(),
        names,
        after_opened,
    })
}

fn notify(
    tx: &mut Transaction<'_>,
    routes: &[Route],
    episode: &Episode,
    transition: Transition,
) -> anyhow::Result<()> {
    if let Some(notice) = notify_params(routes, episode, transition) {
        tx.execute(NOTIFY_SQL, &notice.params())
            .context("writing notifications to the outbox")?;
    }
    Ok(())
}

/// Queues "opened" for the destinations the episode is now ready for, and "acknowledged" after
/// it where someone acknowledged the episode before those destinations heard of it (an
/// acknowledgement queues only where "opened" already went).
fn announce(tx: &mut Transaction<'_>, routes: &[Route], episode: &Episode) -> anyhow::Result<()> {
    notify(tx, routes, episode, Transition::Opened)?;
    if episode.acknowledged && episode.state == "open" {
        notify(tx, routes, episode, Transition::Acknowledged)?;
    }
    Ok(())
}

/// Brings the episodes up to date with the batch's alert changes (written before this call) and
/// its watermark, and queues the notifications of every transition.
pub fn maintain(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    batch: &Batch,
) -> anyhow::Result<()> {
    let keys: BTreeSet<(Rule, &str)> = batch
        .derived
        .keys()
        .filter_map(|row| match row {
            Derived::Alert(alert) => Some((alert.rule, alert.region.as_str())),
            _ => None,
        })
        .collect();
    // The watermark earlier commits reported (this batch's is written after this call): a window
    // ending at or before it was final before this batch.
    let reported: Option<i64> = tx
        .query_one(
            "SELECT (extract(epoch FROM min(watermark)) * 1000)::bigint FROM sink_progress
             WHERE topic = $1",
            &[&config.topic],
        )?
        .get(0);
    for (rule, region) in keys {
        maintain_key(tx, config, rule, region, reported)
            .with_context(|| format!("maintaining the episodes of {} in {region}", rule.name()))?;
    }
    if let Some(watermark) = batch.watermark {
        confirm_passed(tx, config, watermark)?;
        resolve_passed(tx, config, watermark)?;
    }
    Ok(())
}

/// Confirms the open episodes whose first window is final, and tells the destinations that wait
/// for that.
fn confirm_passed(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    watermark: i64,
) -> anyhow::Result<()> {
    let rows = tx
        .query(
            &format!(
                "UPDATE episodes SET confirmed = true, updated_at = now()
                 WHERE state = 'open' AND NOT confirmed
                   AND first_window + make_interval(secs => $2::float8 / 1000)
                       <= to_timestamp($1::float8 / 1000)
                 RETURNING {COLUMNS}"
            ),
            &[&(watermark as f64), &(config.window_ms as f64)],
        )
        .context("confirming episodes the watermark has passed")?;
    for row in rows {
        announce(tx, &config.routes, &Episode::of(&row))?;
    }
    Ok(())
}

fn maintain_key(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    rule: Rule,
    region: &str,
    reported: Option<i64>,
) -> anyhow::Result<()> {
    let name = rule.name();
    // A resolved episode is history: alerts up to its last window are not looked at again.
    let alerts: Vec<AlertWindow> = tx
        .query(
            "SELECT (extract(epoch FROM window_start) * 1000)::bigint, severity, metric_value, message
             FROM alerts
             WHERE alert_type = $1 AND region = $2
               AND window_start > coalesce((SELECT max(last_window) FROM episodes
                                            WHERE alert_type = $1 AND region = $2 AND state = 'resolved'),
                                           '-infinity')
             ORDER BY window_start",
            &[&name, &region],
        )?
        .iter()
        .map(|r| AlertWindow {
            start: r.get(0),
            severity: r.get(1),
            value: r.get(2),
            message: r.get(3),
        })
        .collect();
    let open: Vec<(OpenEpisode, Episode)> = tx
        .query(
            &format!(
                "SELECT {COLUMNS} FROM episodes
                 WHERE alert_type = $1 AND region = $2 AND state = 'open' FOR UPDATE"
            ),
            &[&name, &region],
        )?
        .iter()
        .map(|r| {
            let open = OpenEpisode {
                id: r.get(0),
                first: r.get(8),
                last: r.get(9),
            };
            (open, Episode::of(r))
        })
        .collect();
    let lowest_is_worst = rule.lowest_is_worst();
    let runs = episodes::runs(&alerts, config.window_ms, lowest_is_worst);
    let stored: Vec<OpenEpisode> = open.iter().map(|(o, _)| *o).collect();
    for step in episodes::reconcile(runs, &stored) {
        match step {
            Step::Update { id, run } => {
                let before = &open
                    .iter()
                    .find(|(o, _)| o.id == id)
                    .expect("reconcile names stored ids")
                    .1;
                let after = update(tx, config, id, &run)?;
                if after.severity != before.severity {
                    announce(tx, &config.routes, &after)?;
                }
            }
            Step::Open(run) => {
                // A run whose next window an earlier commit already reported final can only come
                // from revised windows (an idle partition's backlog): it is history, stored as
                // resolved and announced to nobody. (A run that this batch's own watermark passes,
                // as when catching up on a backlog, is announced and resolved as usual.)
                let past = reported.is_some_and(|w| run.last + 2 * config.window_ms <= w);
                let episode = insert(tx, config, rule, region, &run, past)?;
                if !past {
                    announce(tx, &config.routes, &episode)?;
                }
            }
            Step::Withdraw { id } => {
                // A confirmed episode cannot vanish unless final windows were revised (an idle
                // partition's backlog): it ends as resolved, so that what paged is closed.
                let row = tx.query_one(
                    &format!(
                        "UPDATE episodes SET state = CASE WHEN confirmed THEN 'resolved' ELSE 'withdrawn' END,
                             is_final = true, closed_at = now(), updated_at = now()
                         WHERE id = $1 RETURNING {COLUMNS}"
                    ),
                    &[&id],
                )?;
                notify(tx, &config.routes, &Episode::of(&row), Transition::Resolved)?;
            }
        }
    }
    Ok(())
}

/// Parameters shared by the insert and the update: the run's windows and numbers.
fn run_times(config: &SinkConfig, run: &Run) -> (f64, f64, f64) {
    (
        run.first as f64,
        run.last as f64,
        (run.last + config.window_ms) as f64,
    )
}

fn update(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    id: i64,
    run: &Run,
) -> anyhow::Result<Episode> {
    let (first, last, end) = run_times(config, run);
    let row = tx.query_one(
        &format!(
            "UPDATE episodes SET first_window = to_timestamp($2::float8 / 1000),
                 last_window = to_timestamp($3::float8 / 1000), episode_end = to_timestamp($4::float8 / 1000),
                 windows = $5, severity = $6, peak_value = $7, message = $8,
                 updated_at = CASE WHEN (first_window, last_window, windows, severity, peak_value, message)
                                        IS DISTINCT FROM (to_timestamp($2::float8 / 1000),
                                            to_timestamp($3::float8 / 1000), $5, $6, $7, $8)
                                   THEN now() ELSE updated_at END
             WHERE id = $1 RETURNING {COLUMNS}"
        ),
        &[&id, &first, &last, &end, &run.windows, &run.severity, &run.peak, &run.message],
    )?;
    Ok(Episode::of(&row))
}

/// Inserts a new episode: open, or (`past`) already resolved and confirmed.
fn insert(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    rule: Rule,
    region: &str,
    run: &Run,
    past: bool,
) -> anyhow::Result<Episode> {
    // The first free generation: an episode withdrawn earlier may have had the same first window.
    let mut generation = 0;
    let id = loop {
        let id = episodes::episode_id(rule.name(), region, run.first, generation);
        if tx
            .query_opt("SELECT 1 FROM episodes WHERE id = $1", &[&id])?
            .is_none()
        {
            break id;
        }
        generation += 1;
    };
    let (first, last, end) = run_times(config, run);
    let row = tx.query_one(
        &format!(
            "INSERT INTO episodes (id, alert_type, region, severity, metric_name, threshold_value,
                 first_window, last_window, episode_end, windows, peak_value, message, state,
                 confirmed, is_final, closed_at)
             VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::float8 / 1000),
                 to_timestamp($8::float8 / 1000), to_timestamp($9::float8 / 1000), $10, $11, $12,
                 CASE WHEN $13 THEN 'resolved' ELSE 'open' END, $13, $13,
                 CASE WHEN $13 THEN now() END)
             RETURNING {COLUMNS}"
        ),
        &[
            &id,
            &rule.name(),
            &region,
            &run.severity,
            &rule.metric_name(),
            &config.rules.threshold(rule),
            &first,
            &last,
            &end,
            &run.windows,
            &run.peak,
            &run.message,
            &past,
        ],
    )?;
    Ok(Episode::of(&row))
}

/// Resolves the open episodes whose next window is final (ends at or before the watermark): it
/// did not fire, or the run would have grown into it.
fn resolve_passed(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    watermark: i64,
) -> anyhow::Result<()> {
    let rows = tx
        .query(
            &format!(
                "UPDATE episodes SET state = 'resolved', is_final = true, closed_at = now(),
                     updated_at = now()
                 WHERE state = 'open' AND episode_end + make_interval(secs => $2::float8 / 1000)
                       <= to_timestamp($1::float8 / 1000)
                 RETURNING {COLUMNS}"
            ),
            &[&(watermark as f64), &(config.window_ms as f64)],
        )
        .context("resolving episodes the watermark has passed")?;
    for row in rows {
        notify(tx, &config.routes, &Episode::of(&row), Transition::Resolved)?;
    }
    Ok(())
}

/// The delivery state of one notification, for the API.
#[derive(Clone, Debug, Serialize)]
pub struct Notification {
    pub destination: String,
    pub transition: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: String,
    pub next_attempt_at: Option<String>,
    pub delivered_at: Option<String>,
}

/// Which episodes [`list`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Open and resolved (not withdrawn).
    Current,
    State(&'static str),
    All,
}

/// The newest `limit` episodes matching `filter` (by first window, newest first), each with its
/// notifications.
pub async fn list(
    client: &tokio_postgres::Client,
    filter: Filter,
    limit: i64,
) -> Result<Vec<(Episode, Vec<Notification>)>, tokio_postgres::Error> {
    let (clause, state) = match filter {
        Filter::Current => ("state <> 'withdrawn' AND $1::text IS NULL", None),
        Filter::State(s) => ("state = $1::text", Some(s)),
        Filter::All => ("$1::text IS NULL", None),
    };
    let rows = client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM episodes WHERE {clause}
                 ORDER BY state = 'open' DESC, first_window DESC, id LIMIT $2"
            ),
            &[&state, &limit],
        )
        .await?;
    let episodes: Vec<Episode> = rows.iter().map(Episode::of).collect();
    let ids: Vec<i64> = episodes.iter().map(|e| e.id).collect();
    let rows = client
        .query(
            "SELECT episode_id, destination, transition, state, attempts, last_error,
                 (extract(epoch FROM created_at) * 1000)::bigint,
                 CASE WHEN state = 'pending' THEN (extract(epoch FROM next_attempt_at) * 1000)::bigint END,
                 (extract(epoch FROM delivered_at) * 1000)::bigint
             FROM notification_outbox WHERE episode_id = ANY($1) ORDER BY id",
            &[&ids],
        )
        .await?;
    let mut out: Vec<(Episode, Vec<Notification>)> =
        episodes.into_iter().map(|e| (e, Vec::new())).collect();
    for row in rows {
        let id: i64 = row.get(0);
        if let Some((_, list)) = out.iter_mut().find(|(e, _)| e.id == id) {
            list.push(Notification {
                destination: row.get(1),
                transition: row.get(2),
                state: row.get(3),
                attempts: row.get(4),
                last_error: row.get(5),
                created_at: rfc3339(row.get(6)),
                next_attempt_at: row.get::<_, Option<i64>>(7).map(rfc3339),
                delivered_at: row.get::<_, Option<i64>>(8).map(rfc3339),
            });
        }
    }
    Ok(out)
}

/// What to acknowledge: an episode by its id, or the episode an alert belongs to.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Episode(i64),
    Alert(i64),
}

/// Acknowledges an episode (and, when named by its own id, every alert of it) in one transaction, and queues an
/// "acknowledged" notification where "opened" went, if the episode is still open. The first
/// acknowledgement's time and name are kept. `None`: no such episode (an alert's episode may not
/// exist yet if the sink has not caught up with it).
pub async fn acknowledge(
    client: &mut tokio_postgres::Client,
    target: Target,
    by: Option<&str>,
    routes: &[Route],
) -> Result<Option<Episode>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let id: Option<i64> = match target {
        Target::Episode(id) => Some(id),
        Target::Alert(alert) => tx
            .query_opt(
                "SELECT e.id FROM episodes e JOIN alerts a
                     ON a.alert_type = e.alert_type AND a.region = e.region
                    AND a.window_start BETWEEN e.first_window AND e.last_window
                 WHERE a.id = $1 AND e.state <> 'withdrawn'
                 ORDER BY e.opened_at DESC LIMIT 1",
                &[&alert],
            )
            .await?
            .map(|r| r.get(0)),
    };
    let Some(id) = id else {
        return Ok(None);
    };
    // Alerts first, then the episode: the order the sink locks them in (the other order
    // deadlocks with a commit that touches both).
    if let Target::Episode(id) = target {
        tx.execute(
            "UPDATE alerts a SET acknowledged = true, acknowledged_at = now(), acknowledged_by = $2
             FROM episodes e
             WHERE e.id = $1 AND e.state <> 'withdrawn' AND a.alert_type = e.alert_type
               AND a.region = e.region AND a.window_start BETWEEN e.first_window AND e.last_window
               AND NOT a.acknowledged",
            &[&id, &by],
        )
        .await?;
    }
    let Some(row) = tx
        .query_opt(
            &format!(
                "UPDATE episodes SET acknowledged = true,
                     acknowledged_at = CASE WHEN acknowledged THEN acknowledged_at ELSE now() END,
                     acknowledged_by = CASE WHEN acknowledged THEN acknowledged_by ELSE $2 END
                 WHERE id = $1 RETURNING {COLUMNS}"
            ),
            &[&id, &by],
        )
        .await?
    else {
        return Ok(None);
    };
    let episode = Episode::of(&row);
    if episode.state == "open" {
        if let Some(notice) = notify_params(routes, &episode, Transition::Acknowledged) {
            tx.execute(NOTIFY_SQL, &notice.params()).await?;
        }
    }
    tx.commit().await?;
    Ok(Some(episode))
}
