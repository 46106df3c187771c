//! The PostgreSQL sink: every change lands exactly once.
//!
//! ```text
//!   Update { changes, frontier } ──▶ buffer by time ──(frontier passes t)──▶ one transaction:
//!       additive upserts of stat rows (unnest arrays), derived rows upserted/deleted,
//!       dead letters and samples inserted, sink_progress (offsets, max timestamp, watermark),
//!       is_final flags  ──COMMIT
//! ```
//!
//! Exactly once: a transaction holds all changes of completed times together with the Kafka
//! positions those changes came from, so after a crash the next run resumes Kafka at the stored
//! positions and nothing is written twice or lost. Stat rows are sums, so upserts add deltas.
//! Two kinds of change are never written: state restored at start-up (time 0, already stored, and
//! with it the derived rows it implies) and
//! retractions that only free memory (a window past retention), so stored rows are never deleted
//! for that reason.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use postgres::{Client, Transaction};
use streampulse_dataflow::{
    watermark_of, Aggregate, Alert, Change, Derived, Key, Side, Time, Update, Window, WindowKey,
    RESTORE_TIME,
};
use streampulse_ingest::DeadLetter;

use crate::api::alert_id;
use crate::db::Database;

/// What the sink needs to know besides the changes.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub topic: String,
    pub window_ms: i64,
    pub retain_ms: i64,
    pub rules: streampulse_dataflow::Rules,
}

/// What the sink has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub commits: AtomicU64,
    /// Total time spent in committed transactions, in microseconds.
    pub commit_micros: AtomicU64,
    pub retries: AtomicU64,
}

/// One transaction's worth of consolidated changes.
#[derive(Default)]
struct Batch {
    stats: BTreeMap<WindowKey, Aggregate>,
    derived: BTreeMap<Derived, isize>,
    positions: BTreeMap<u32, (i64, i64)>,
    dead: Vec<DeadLetter>,
    samples: Vec<streampulse_dataflow::build::Sample>,
    watermark: Option<i64>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.stats.is_empty()
            && self.derived.is_empty()
            && self.positions.is_empty()
            && self.dead.is_empty()
            && self.samples.is_empty()
    }
}

/// Runs the sink until the channel closes (the dataflow finished). Database errors are retried with
/// backoff; the batch that failed is kept and retried whole.
pub fn run(
    db: Database,
    config: SinkConfig,
    updates: Receiver<Update>,
    stats: &SinkStats,
) -> anyhow::Result<()> {
    let mut client: Option<Client> = None;
    let mut pending: BTreeMap<Time, Vec<Change>> = BTreeMap::new();
    let mut frontier: Option<Option<Time>> = None;
    let mut committed: Option<Option<Time>> = None;
    let mut backoff = Duration::from_millis(100);
    let mut last_commit = Instant::now();
    let mut closed = false;
    loop {
        match updates.recv_timeout(Duration::from_millis(100)) {
            Ok(update) => {
                for change in update.changes {
                    pending
                        .entry(change_time(&change))
                        .or_default()
                        .push(change);
                }
                frontier = Some(update.frontier);
                // Take whatever else is already queued before writing.
                continue_draining(&updates, &mut pending, &mut frontier);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
        let Some(upto) = frontier else {
            if closed {
                return Ok(());
            }
            continue;
        };
        // Batch commits a little: at most every 100 ms unless the stream ended.
        let due = closed || upto.is_none() || last_commit.elapsed() >= Duration::from_millis(100);
        if !due || committed == Some(upto) {
            if closed && committed == Some(upto) {
                return Ok(());
            }
            continue;
        }
        let ready: Vec<Time> = pending
            .keys()
            .copied()
            .filter(|t| upto.is_none_or(|f| *t < f))
            .collect();
        let mut changes = Vec::new();
        for t in ready {
            changes.extend(pending.remove(&t).unwrap_or_default());
        }
        let batch = consolidate(changes, upto, &config);
        loop {
            let started = Instant::now();
            let result = match client.as_mut() {
                Some(c) => write(c, &config, &batch),
                None => db
                    .connect()
                    .map(|c| {
                        client = Some(c);
                    })
                    .and_then(|_| write(client.as_mut().expect("just connected"), &config, &batch)),
            };
            match result {
                Ok(()) => {
                    backoff = Duration::from_millis(100);
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    let micros = started.elapsed().as_micros() as u64;
                    stats.commit_micros.fetch_add(micros, Ordering::Relaxed);
                    break;
                }
                Err(e) if !is_transient(&e) => {
                    // Not the database being away: a schema mismatch, a permission, a bug. Retrying
                    // would spin forever, so stop loudly; the stored progress is intact.
                    log::error!("sink: {e:#}; this is not a transient database error, stopping");
                    std::process::exit(2);
                }
                Err(e) => {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    log::warn!("sink: {e:#}; retrying in {backoff:?}");
                    client = None;
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        committed = Some(upto);
        last_commit = Instant::now();
        if closed && pending.is_empty() {
            return Ok(());
        }
    }
}

/// Whether a database error may go away by itself (connection lost, server restarting, overloaded,
/// a serialisation conflict), as opposed to a misconfiguration or a bug.
fn is_transient(error: &anyhow::Error) -> bool {
    let Some(pg) = error
        .chain()
        .find_map(|e| e.downcast_ref::<postgres::Error>())
    else {
        return false;
    };
    if pg.is_closed() {
        return true;
    }
    if let Some(db) = pg.as_db_error() {
        let code = db.code().code();
        return code.starts_with("08")
            || code.starts_with("53")
            || code.starts_with("57P")
            || code == "40001"
            || code == "40P01";
    }
    // No server error: an I/O failure talking to the server counts as transient.
    std::error::Error::source(pg).is_some_and(|s| s.is::<std::io::Error>())
}

fn continue_draining(
    updates: &Receiver<Update>,
    pending: &mut BTreeMap<Time, Vec<Change>>,
    frontier: &mut Option<Option<Time>>,
) {
    for update in updates.try_iter().take(1024) {
        for change in update.changes {
            pending
                .entry(change_time(&change))
                .or_default()
                .push(change);
        }
        *frontier = Some(update.frontier);
    }
}

fn change_time(change: &Change) -> Time {
    match change {
        Change::Stat { time, .. } | Change::Derived { time, .. } | Change::Side { time, .. } => {
            *time
        }
    }
}

/// Whether a change at `time` to `window` only frees memory (the window is past retention).
fn is_retention(window: Window, time: Time, config: &SinkConfig) -> bool {
    window.end(config.window_ms) + config.retain_ms <= watermark_of(time)
}

fn consolidate(changes: Vec<Change>, upto: Option<Time>, config: &SinkConfig) -> Batch {
    let mut batch = Batch {
        watermark: upto.map(watermark_of),
        ..Batch::default()
    };
    for change in changes {
        match change {
            // Restored state is what the tables already hold. Writing its derived rows again is not
            // just redundant: consolidated with a later retraction it would cancel the delete.
            Change::Stat { time, .. } | Change::Derived { time, .. } if time == RESTORE_TIME => {}
            Change::Stat { row, time, .. } if is_retention(row.window, time, config) => {}
            Change::Stat { row, delta, .. } => {
                use differential_dataflow::difference::Semigroup;
                batch.stats.entry(row).or_default().plus_equals(&delta);
            }
            Change::Derived { row, time, diff }
                if diff < 0 && is_retention(row.window(), time, config) => {}
            Change::Derived { row, diff, .. } => *batch.derived.entry(row).or_default() += diff,
            Change::Side {
                row:
                    Side::Position {
                        partition,
                        next_offset,
                        max_ts,
                    },
                ..
            } => {
                let slot = batch
                    .positions
                    .entry(partition)
                    .or_insert((next_offset, max_ts));
                *slot = (slot.0.max(next_offset), slot.1.max(max_ts));
            }
            Change::Side {
                row: Side::DeadLetter(letter),
                ..
            } => batch.dead.push(letter),
            Change::Side {
                row: Side::Sample(sample),
                ..
            } => batch.samples.push(sample),
        }
    }
    batch.stats.retain(|_, agg| *agg != Aggregate::default());
    batch.derived.retain(|_, diff| *diff != 0);
    batch
}

/// Column arrays of a stat table's rows, in the order the upsert statements bind them.
#[derive(Default)]
struct Columns {
    window_start: Vec<i64>,
    a: Vec<String>,
    b: Vec<String>,
    partition: Vec<i32>,
    sums: [Vec<i64>; 7],
}

impl Columns {
    fn push(&mut self, window: Window, a: &str, b: &str, agg: &Aggregate) {
        self.window_start.push(window.start());
        self.a.push(a.to_string());
        self.b.push(b.to_string());
        let values = [
            agg.downloads,
            agg.successful,
            agg.failed,
            agg.size_mb,
            agg.duration_s,
            agg.speed_milli,
            agg.cdn_timeouts,
        ];
        for (column, value) in self.sums.iter_mut().zip(values) {
            column.push(value);
        }
    }
}

const SUMS: &str = "downloads, successful, failed, size_mb, duration_s, speed_milli, cdn_timeouts";

/// `INSERT … SELECT FROM unnest(…) ON CONFLICT (key) DO UPDATE SET sum = sum + excluded.sum`.
fn upsert_sql(table: &str, keys: &[&str], key_types: &[&str]) -> String {
    let key_cols = keys.join(", ");
    let mut params = vec![
        "to_timestamp(ws::float8 / 1000)".to_string(),
        format!("to_timestamp((ws + $2::float8) / 1000)"),
    ];
    let mut unnest = vec!["$1::bigint[]".to_string()];
    let mut aliases = vec!["ws".to_string()];
    for (i, ty) in key_types.iter().enumerate() {
        unnest.push(format!("${}::{}[]", i + 3, ty));
        aliases.push(format!("k{i}"));
        params.push(format!("k{i}"));
    }
    let first_sum = key_types.len() + 3;
    for (i, name) in SUMS.split(", ").enumerate() {
        unnest.push(format!("${}::bigint[]", first_sum + i));
        aliases.push(format!("s_{name}"));
        params.push(format!("s_{name}"));
    }
    let updates: Vec<String> = SUMS
        .split(", ")
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO {table} (window_start, window_end{comma}{key_cols}, {SUMS})
         SELECT {select} FROM unnest({unnest}) AS u({aliases})
         ON CONFLICT (window_start{comma}{key_cols}) DO UPDATE SET {updates}, updated_at = now()",
        comma = if keys.is_empty() { "" } else { ", " },
        select = params.join(", "),
        unnest = unnest.join(", "),
        aliases = aliases.join(", "),
        updates = updates.join(", "),
    )
}

fn write(client: &mut Client, config: &SinkConfig, batch: &Batch) -> anyhow::Result<()> {
    if batch.is_empty() && batch.watermark.is_none() {
        return Ok(());
    }
    let mut tx = client.transaction()?;
    write_stats(&mut tx, config, batch)?;
    write_derived(&mut tx, config, batch)?;
    write_side(&mut tx, config, batch)?;
    if let Some(watermark) = batch.watermark {
        mark_final(&mut tx, watermark)?;
        tx.execute(
            "UPDATE sink_progress SET watermark = to_timestamp($2::float8 / 1000), updated_at = now()
             WHERE topic = $1",
            &[&config.topic, &(watermark as f64)],
        )?;
    }
    tx.commit().context("committing the sink transaction")?;
    Ok(())
}

fn write_stats(tx: &mut Transaction<'_>, config: &SinkConfig, batch: &Batch) -> anyhow::Result<()> {
    let mut tables: BTreeMap<&str, Columns> = BTreeMap::new();
    for (row, agg) in &batch.stats {
        let w = row.window;
        match &row.key {
            Key::Total => tables
                .entry("window_totals")
                .or_default()
                .push(w, "", "", agg),
            Key::Content { content_id, title } => tables
                .entry("content_stats")
                .or_default()
                .push(w, content_id, title, agg),
            Key::Region(region) => tables
                .entry("region_health")
                .or_default()
                .push(w, region, "", agg),
            Key::Device { device, os_version } => tables
                .entry("device_stats")
                .or_default()
                .push(w, device, os_version, agg),
            Key::Error { region, error_code } => tables
                .entry("error_stats")
                .or_default()
                .push(w, region, error_code, agg),
            Key::Late { partition } => {
                let cols = tables.entry("late_events").or_default();
                cols.push(w, "", "", agg);
                cols.partition.push(*partition as i32);
            }
        }
    }
    let window_ms = config.window_ms as f64;
    for (table, cols) in &tables {
        let (keys, types): (&[&str], &[&str]) = match *table {
            "window_totals" => (&[], &[]),
            "content_stats" => (&["content_id", "title"], &["text", "text"]),
            "region_health" => (&["region"], &["text"]),
            "device_stats" => (&["device", "os_version"], &["text", "text"]),
            "error_stats" => (&["region", "error_code"], &["text", "text"]),
            "late_events" => (&["partition"], &["int"]),
            _ => unreachable!("every table is listed"),
        };
        let sql = upsert_sql(table, keys, types);
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> =
            vec![&cols.window_start, &window_ms];
        match keys.len() {
            0 => {}
            1 if *table == "late_events" => params.push(&cols.partition),
            1 => params.push(&cols.a),
            _ => {
                params.push(&cols.a);
                params.push(&cols.b);
            }
        }
        for sums in &cols.sums {
            params.push(sums);
        }
        tx.execute(&sql, &params)
            .with_context(|| format!("upserting {table}"))?;
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
    for (row, diff) in batch.derived.iter().filter(|(_, d)| **d > 0) {
        match row {
            Derived::Top { window, rank, .. } => {
                top_added.insert((*window, *rank), row);
            }
            Derived::Alert(alert) => {
                alerts_added.insert(alert_id(alert), alert);
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
            Derived::Alert(alert) if !alerts_added.contains_key(&alert_id(alert)) => {
                tx.execute("DELETE FROM alerts WHERE id = $1", &[&alert_id(alert)])?;
            }
            _ => {}
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

fn upsert_alert(
    tx: &mut Transaction<'_>,
    config: &SinkConfig,
    id: i64,
    alert: &Alert,
) -> anyhow::Result<()> {
    let threshold = crate::api::threshold(&config.rules, alert.rule);
    tx.execute(
        "INSERT INTO alerts (id, alert_type, severity, region, window_start, window_end, metric_name,
                             metric_value, threshold_value, message)
         VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000), to_timestamp($6::float8 / 1000), $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET severity = excluded.severity,
             metric_value = excluded.metric_value, message = excluded.message, updated_at = now()",
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
    for s in &batch.samples {
        tx.execute(
            "INSERT INTO event_log (topic, partition, kafka_offset, event_id, event_timestamp, content_id,
                                    region, device, status, error_code)
             VALUES ($1, $2, $3, $4, to_timestamp($5::float8 / 1000), $6, $7, $8, $9, $10)
             ON CONFLICT DO NOTHING",
            &[
                &config.topic,
                &(s.partition as i32),
                &s.offset,
                &s.event_id,
                &(s.timestamp as f64),
                &s.content_id,
                &s.region,
                &s.device,
                &s.status,
                &s.error_code,
            ],
        )?;
    }
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
        )?;
    }
    Ok(())
}

/// Flags rows of windows the watermark has passed.
fn mark_final(tx: &mut Transaction<'_>, watermark: i64) -> anyhow::Result<()> {
    let wm = watermark as f64;
    for table in [
        "content_stats",
        "region_health",
        "device_stats",
        "error_stats",
        "window_totals",
        "late_events",
        "trending",
        "alerts",
    ] {
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
