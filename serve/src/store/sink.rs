//! The sink's SQL: how a [`Batch`] becomes rows, in a transaction the caller owns.
//!
//! ```text
//!   Batch ──write_batch──▶ additive upserts of stat rows (unnest arrays), derived rows upserted or
//!                          deleted, dead letters and samples inserted
//!         ──write_progress─▶ sink_progress (offsets, max timestamp, watermark), is_final flags,
//!                          revised windows
//! ```
//!
//! Every value is a bound parameter; the only text spliced into SQL is table and column names
//! from [`super::tables`].

use std::collections::BTreeMap;

use anyhow::Context;
use postgres::Transaction;
use streampulse_dataflow::{Aggregate, Alert, Baseline, Derived, Key, Window};

use super::tables::{sums, KeyValues, StatTable, DERIVED_TABLES, SUMS};
use crate::sink::batch::Batch;

/// What the sink needs to know besides the changes.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub topic: String,
    pub window_ms: i64,
    /// How long after its end a let-go window may still see derived changes (retention plus the
    /// windows that read it): how long the sink remembers it was let go.
    pub retain_ms: i64,
    pub rules: streampulse_dataflow::Rules,
    /// The watermark stored by an earlier run: windows ending at or before it were reported final.
    pub stored_watermark: Option<i64>,
    /// The notification destinations (names and filters only), for the outbox.
    pub routes: Vec<crate::notify::Route>,
}

/// Column arrays of a stat table's rows, in the order the upsert statements bind them.
#[derive(Default)]
struct Columns {
    window_start: Vec<i64>,
    /// Per key column: text values, or the partitions of `late_events`.
    text: Vec<Vec<String>>,
    partition: Vec<i32>,
    sums: [Vec<i64>; 7],
}

impl Columns {
    fn push(&mut self, window: Window, key: &Key, agg: &Aggregate) {
        self.window_start.push(window.start());
        match StatTable::values(key) {
            KeyValues::Text(values) => {
                self.text.resize(values.len(), Vec::new());
                for (column, value) in self.text.iter_mut().zip(values) {
                    column.push(value.to_string());
                }
            }
            KeyValues::Partition(partition) => self.partition.push(partition),
        }
        for (column, value) in self.sums.iter_mut().zip(sums(agg)) {
            column.push(value);
        }
    }
}

/// `INSERT … SELECT FROM unnest(…) ON CONFLICT (key) DO UPDATE SET sum = sum + excluded.sum`.
fn upsert_sql(table: StatTable) -> String {
    let name = table.name();
    let keys: Vec<&str> = table.keys().iter().map(|(column, _)| *column).collect();
    let key_cols = keys.join(", ");
    let mut params = vec![
        "to_timestamp(ws::float8 / 1000)".to_string(),
        "to_timestamp((ws + $2::float8) / 1000)".to_string(),
    ];
    let mut unnest = vec!["$1::bigint[]".to_string()];
    let mut aliases = vec!["ws".to_string()];
    for (i, (_, ty)) in table.keys().iter().enumerate() {
        unnest.push(format!("${}::{}[]", i + 3, ty));
        aliases.push(format!("k{i}"));
        params.push(format!("k{i}"));
    }
    let first_sum = keys.len() + 3;
    for (i, column) in SUMS.iter().enumerate() {
        unnest.push(format!("${}::bigint[]", first_sum + i));
        aliases.push(format!("s_{column}"));
        params.push(format!("s_{column}"));
    }
    let updates: Vec<String> = SUMS
        .iter()
        .map(|c| format!("{c} = {name}.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {name} (window_start, window_end{comma}{key_cols}, {sums})
         SELECT {select} FROM unnest({unnest}) AS u({aliases})
         ON CONFLICT (window_start{comma}{key_cols}) DO UPDATE SET {updates}, updated_at = now()",
        comma = if keys.is_empty() { "" } else { ", " },
        sums = SUMS.join(", "),
        select = params.join(", "),
        unnest = unnest.join(", "),
        aliases = aliases.join(", "),
        updates = updates.join(", "),
    )
}

/// Whether the batch is already stored: a commit whose acknowledgement was lost (the connection
/// broke after the server committed) must not be applied twice, since stat rows add up. Stored
/// positions only grow and each batch moves its partitions past them, so a batch is stored exactly
/// when a stored position has reached its own. Locks the topic's progress rows for the transaction,
/// which also keeps two sinks from interleaving on one schema.
pub fn already_committed(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    batch: &Batch,
) -> anyhow::Result<bool> {
    if batch.positions.is_empty() {
        return Ok(false);
    }
    let stored: BTreeMap<i32, i64> = tx
        .query(
            "SELECT partition, next_offset FROM sink_progress WHERE topic = $1 FOR UPDATE",
            &[&config.topic],
        )
        .context("reading the stored positions")?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(batch.positions.iter().any(|(partition, (next, _))| {
        stored
            .get(&(*partition as i32))
            .is_some_and(|stored| stored >= next)
    }))
}

/// Writes the batch's rows: stats, derived rows, dead letters and samples (not its progress).
pub fn write_batch(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    batch: &Batch,
) -> anyhow::Result<()> {
    write_stats(tx, config, batch)?;
    write_derived(tx, config, batch)?;
    write_side(tx, config, batch)
}

/// Writes where each partition resumes, the watermark with the `is_final` flags it implies, and
/// which windows were revised. Goes in the same transaction as the rows it accounts for.
pub fn write_progress(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    batch: &Batch,
) -> anyhow::Result<()> {
    for (partition, (next_offset, max_ts)) in &batch.positions {
        tx.execute(
            "INSERT INTO sink_progress (topic, partition, next_offset, max_timestamp)
             VALUES ($1, $2, $3, to_timestamp($4::float8 / 1000))
             ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset,
                 max_timestamp = excluded.max_timestamp, updated_at = now()",
            &[
                &config.topic,
                &(*partition as i32),
                next_offset,
                &(*max_ts as f64),
            ],
        )
        .context("storing Kafka positions")?;
    }
    if !batch.revised.is_empty() {
        let starts: Vec<f64> = batch.revised.iter().map(|w| w.start() as f64).collect();
        tx.execute(
            "UPDATE window_totals SET revised_at = now()
             WHERE window_start IN (SELECT to_timestamp(ws / 1000) FROM unnest($1::float8[]) AS ws)",
            &[&starts],
        )
        .context("flagging revised windows")?;
    }
    if let Some(watermark) = batch.watermark {
        mark_final(tx, watermark)?;
        tx.execute(
            "UPDATE sink_progress SET watermark = to_timestamp($2::float8 / 1000), updated_at = now()
             WHERE topic = $1",
            &[&config.topic, &(watermark as f64)],
        )
        .context("storing the watermark")?;
    }
    Ok(())
}

/// Stores a row the database refused as a dead letter: partition -1, the next negative offset of
/// the topic, the row as JSON and the database's reason.
pub fn write_refused(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    row: &str,
    reason: &str,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO dead_letters (topic, partition, kafka_offset, reason, raw)
         SELECT $1, -1, coalesce(min(kafka_offset), 0) - 1, $2, $3
         FROM dead_letters WHERE topic = $1 AND partition = -1",
        &[&config.topic, &reason, &row.as_bytes()],
    )
    .context("storing a refused row as a dead letter")?;
    Ok(())
}

fn write_stats(tx: &mut Transaction<'_>, config: &SinkConfig, batch: &Batch) -> anyhow::Result<()> {
    let mut tables: BTreeMap<StatTable, Columns> = BTreeMap::new();
    for (row, agg) in &batch.stats {
        tables
            .entry(StatTable::of(&row.key))
            .or_default()
            .push(row.window, &row.key, agg);
    }
    let window_ms = config.window_ms as f64;
    for (table, cols) in &tables {
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            vec![&cols.window_start, &window_ms];
        if *table == StatTable::LateEvents {
            params.push(&cols.partition);
        }
        for column in &cols.text {
            params.push(column);
        }
        for column in &cols.sums {
            params.push(column);
        }
        tx.execute(&upsert_sql(*table), &params)
            .with_context(|| format!("upserting {}", table.name()))?;
    }
    Ok(())
}

fn write_derived(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    batch: &Batch,
) -> anyhow::Result<()> {
    let ws = |w: Window| w.start() as f64;
    let we = |w: Window| w.end(config.window_ms) as f64;
    // A row whose natural key gains a new version is upserted; one that only lost its version is
    // deleted. Upserting in place keeps an alert's acknowledgement when only its numbers change.
    let mut top_added = BTreeMap::new();
    let mut alerts_added = BTreeMap::new();
    let mut baselines_added = BTreeMap::new();
    let mut error_baselines_added = BTreeMap::new();
    let mut rising_added = BTreeMap::new();
    for (row, diff) in batch.derived.iter().filter(|(_, d)| **d > 0) {
        match row {
            Derived::Top { window, rank, .. } => {
                top_added.insert((*window, *rank), row);
            }
            Derived::Alert(alert) => {
                alerts_added.insert(alert.id(), alert);
            }
            Derived::UniqueContent { window, count } => {
                tx.execute(
                    "INSERT INTO window_totals (window_start, window_end, unique_content)
                     VALUES (to_timestamp($1::float8 / 1000), to_timestamp($2::float8 / 1000), $3)
                     ON CONFLICT (window_start) DO UPDATE SET unique_content = excluded.unique_content,
                         updated_at = now()",
                    &[&ws(*window), &we(*window), count],
                )?;
            }
            Derived::Baseline { window, region, .. } => {
                baselines_added.insert((*window, region.as_str()), row);
            }
            Derived::ErrorBaseline {
                window,
                region,
                error_code,
                ..
            } => {
                error_baselines_added.insert((*window, region.as_str(), error_code.as_str()), row);
            }
            Derived::Rising { window, rank, .. } => {
                rising_added.insert((*window, *rank), row);
            }
        }
        debug_assert_eq!(*diff, 1);
    }
    for (row, _) in batch.derived.iter().filter(|(_, d)| **d < 0) {
        match row {
            Derived::Top { window, rank, .. } if !top_added.contains_key(&(*window, *rank)) => {
                tx.execute(
                    "DELETE FROM trending WHERE window_start = to_timestamp($1::float8 / 1000) AND rank = $2",
                    &[&ws(*window), &(*rank as i32)],
                )?;
            }
            Derived::Alert(alert) if !alerts_added.contains_key(&alert.id()) => {
                tx.execute("DELETE FROM alerts WHERE id = $1", &[&alert.id()])?;
            }
            Derived::Baseline { window, region, .. }
                if !baselines_added.contains_key(&(*window, region.as_str())) =>
            {
                tx.execute(
                    "DELETE FROM region_baselines
                     WHERE window_start = to_timestamp($1::float8 / 1000) AND region = $2",
                    &[&ws(*window), region],
                )?;
            }
            Derived::ErrorBaseline {
                window,
                region,
                error_code,
                ..
            } if !error_baselines_added.contains_key(&(
                *window,
                region.as_str(),
                error_code.as_str(),
            )) =>
            {
                tx.execute(
                    "DELETE FROM error_baselines WHERE window_start = to_timestamp($1::float8 / 1000)
                         AND region = $2 AND error_code = $3",
                    &[&ws(*window), region, error_code],
                )?;
            }
            Derived::Rising { window, rank, .. }
                if !rising_added.contains_key(&(*window, *rank)) =>
            {
                tx.execute(
                    "DELETE FROM trending_predictions
                     WHERE window_start = to_timestamp($1::float8 / 1000) AND rank = $2",
                    &[&ws(*window), &(*rank as i32)],
                )?;
            }
            _ => {}
        }
    }
    for row in baselines_added.values() {
        if let Derived::Baseline {
            window,
            region,
            baseline,
        } = row
        {
            upsert_baseline(tx, config, *window, region, baseline)?;
        }
    }
    for row in error_baselines_added.values() {
        if let Derived::ErrorBaseline {
            window,
            region,
            error_code,
            baseline: b,
        } = row
        {
            tx.execute(
                "INSERT INTO error_baselines (window_start, window_end, region, error_code,
                     baseline_windows, baseline_downloads, baseline_failures, baseline_rate,
                     downloads, failures, rate, score)
                 VALUES (to_timestamp($1::float8 / 1000), to_timestamp($2::float8 / 1000), $3, $4,
                     $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (window_start, region, error_code) DO UPDATE SET
                     baseline_windows = excluded.baseline_windows,
                     baseline_downloads = excluded.baseline_downloads,
                     baseline_failures = excluded.baseline_failures,
                     baseline_rate = excluded.baseline_rate, downloads = excluded.downloads,
                     failures = excluded.failures, rate = excluded.rate, score = excluded.score,
                     updated_at = now()",
                &[
                    &ws(*window),
                    &we(*window),
                    region,
                    error_code,
                    &(b.windows as i32),
                    &b.downloads,
                    &b.failed,
                    &b.error_rate(),
                    &b.observed.downloads,
                    &b.observed.failed,
                    &b.observed.failure_rate(),
                    &b.error_score(),
                ],
            )?;
        }
    }
    for row in rising_added.values() {
        if let Derived::Rising {
            window,
            rank,
            content_id,
            title,
            forecast,
        } = row
        {
            tx.execute(
                "INSERT INTO trending_predictions (window_start, window_end, rank, content_id, title,
                     downloads, predicted_downloads, level, trend, rising_score, history)
                 VALUES (to_timestamp($1::float8 / 1000), to_timestamp($2::float8 / 1000), $3, $4, $5,
                     $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (window_start, rank) DO UPDATE SET content_id = excluded.content_id,
                     title = excluded.title, downloads = excluded.downloads,
                     predicted_downloads = excluded.predicted_downloads, level = excluded.level,
                     trend = excluded.trend, rising_score = excluded.rising_score,
                     history = excluded.history, updated_at = now()",
                &[
                    &ws(*window),
                    &we(*window),
                    &(*rank as i32),
                    content_id,
                    title,
                    &forecast.latest(),
                    &forecast.next(),
                    &forecast.level(),
                    &forecast.trend(),
                    &forecast.rising(),
                    &forecast.history,
                ],
            )?;
        }
    }
    for row in top_added.values() {
        if let Derived::Top {
            window,
            rank,
            content_id,
            title,
            downloads,
        } = row
        {
            tx.execute(
                "INSERT INTO trending (window_start, window_end, rank, content_id, title, downloads)
                 VALUES (to_timestamp($1::float8 / 1000), to_timestamp($2::float8 / 1000), $3, $4, $5, $6)
                 ON CONFLICT (window_start, rank) DO UPDATE SET content_id = excluded.content_id,
                     title = excluded.title, downloads = excluded.downloads, updated_at = now()",
                &[&ws(*window), &we(*window), &(*rank as i32), content_id, title, downloads],
            )?;
        }
    }
    for (id, alert) in alerts_added {
        upsert_alert(tx, config, id, alert)?;
    }
    Ok(())
}

fn upsert_baseline(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    window: Window,
    region: &str,
    b: &Baseline,
) -> anyhow::Result<()> {
    tx.execute(
        "INSERT INTO region_baselines (window_start, window_end, region, baseline_windows,
             baseline_downloads, baseline_downloads_sq, baseline_failed, mean_downloads,
             spread_downloads, baseline_error_rate, downloads, failed, error_rate, traffic_score,
             error_score, health)
         VALUES (to_timestamp($1::float8 / 1000), to_timestamp($2::float8 / 1000), $3, $4, $5,
             $6::text::numeric, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (window_start, region) DO UPDATE SET
             baseline_windows = excluded.baseline_windows,
             baseline_downloads = excluded.baseline_downloads,
             baseline_downloads_sq = excluded.baseline_downloads_sq,
             baseline_failed = excluded.baseline_failed, mean_downloads = excluded.mean_downloads,
             spread_downloads = excluded.spread_downloads,
             baseline_error_rate = excluded.baseline_error_rate, downloads = excluded.downloads,
             failed = excluded.failed, error_rate = excluded.error_rate,
             traffic_score = excluded.traffic_score, error_score = excluded.error_score,
             health = excluded.health, updated_at = now()",
        &[
            &(window.start() as f64),
            &(window.end(config.window_ms) as f64),
            &region,
            &(b.windows as i32),
            &b.downloads,
            &b.downloads_sq.to_string(),
            &b.failed,
            &b.mean(),
            &b.spread(),
            &b.error_rate(),
            &b.observed.downloads,
            &b.observed.failed,
            &b.observed.failure_rate(),
            &b.traffic_score(),
            &b.error_score(),
            &config.rules.baseline_health(b),
        ],
    )?;
    Ok(())
}

fn upsert_alert(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    id: i64,
    alert: &Alert,
) -> anyhow::Result<()> {
    let threshold = alert.threshold(&config.rules);
    let baseline_value = alert.baseline_value();
    tx.execute(
        "INSERT INTO alerts (id, alert_type, severity, region, window_start, window_end, metric_name,
                             metric_value, threshold_value, message, baseline_value, score)
         VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000), to_timestamp($6::float8 / 1000), $7, $8, $9, $10,
                 $11, $12)
         ON CONFLICT (id) DO UPDATE SET severity = excluded.severity,
             metric_value = excluded.metric_value, threshold_value = excluded.threshold_value,
             message = excluded.message, baseline_value = excluded.baseline_value,
             score = excluded.score, updated_at = now()",
        &[
            &id,
            &alert.rule.name(),
            &alert.severity.name(),
            &alert.region,
            &(alert.window.start() as f64),
            &(alert.window.end(config.window_ms) as f64),
            &alert.rule.metric_name(),
            &alert.metric_value(),
            &threshold,
            &alert.message(),
            &baseline_value,
            &alert.score(),
        ],
    )?;
    Ok(())
}

fn write_side(tx: &mut Transaction<'_>, config: &SinkConfig, batch: &Batch) -> anyhow::Result<()> {
    for letter in &batch.dead {
        tx.execute(
            "INSERT INTO dead_letters (topic, partition, kafka_offset, reason, raw)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            &[
                &config.topic,
                &(letter.partition as i32),
                &letter.offset,
                &letter.reason,
                &letter.raw,
            ],
        )?;
    }
    if !batch.samples.is_empty() {
        // One statement for the whole sample (one row per event would cost a round trip each).
        let samples = &batch.samples;
        let partition: Vec<i32> = samples.iter().map(|s| s.partition as i32).collect();
        let offset: Vec<i64> = samples.iter().map(|s| s.offset).collect();
        let event_id: Vec<&str> = samples.iter().map(|s| s.event_id.as_str()).collect();
        let timestamp: Vec<f64> = samples.iter().map(|s| s.timestamp as f64).collect();
        let content_id: Vec<&str> = samples.iter().map(|s| s.content_id.as_str()).collect();
        let region: Vec<&str> = samples.iter().map(|s| s.region.as_str()).collect();
        let device: Vec<&str> = samples.iter().map(|s| s.device.as_str()).collect();
        let status: Vec<&str> = samples.iter().map(|s| s.status.as_str()).collect();
        let error_code: Vec<Option<&str>> =
            samples.iter().map(|s| s.error_code.as_deref()).collect();
        tx.execute(
            "INSERT INTO event_log (topic, partition, kafka_offset, event_id, event_timestamp, content_id,
                                    region, device, status, error_code)
             SELECT $1, p, o, e, to_timestamp(t / 1000), c, r, d, s, x
             FROM unnest($2::int[], $3::bigint[], $4::text[], $5::float8[], $6::text[], $7::text[],
                         $8::text[], $9::text[], $10::text[]) AS u(p, o, e, t, c, r, d, s, x)
             ON CONFLICT DO NOTHING",
            &[
                &config.topic,
                &partition,
                &offset,
                &event_id,
                &timestamp,
                &content_id,
                &region,
                &device,
                &status,
                &error_code,
            ],
        )
        .context("storing the raw-event sample")?;
    }
    Ok(())
}

/// Flags rows of windows the watermark has passed.
fn mark_final(tx: &mut Transaction<'_>, watermark: i64) -> anyhow::Result<()> {
    let wm = watermark as f64;
    let stat_tables = StatTable::ALL.map(StatTable::name);
    for table in stat_tables.iter().chain(&DERIVED_TABLES) {
        tx.execute(
            &format!(
                "UPDATE {table} SET is_final = true
                 WHERE NOT is_final AND window_end <= to_timestamp($1::float8 / 1000)"
            ),
            &[&wm],
        )?;
    }
    Ok(())
}
