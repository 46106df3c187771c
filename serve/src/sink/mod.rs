//! The PostgreSQL sink: every change lands exactly once, and no record can halt it.
//!
//! ```text
//!   Update { changes, frontier } ──▶ buffer by time ──(frontier passes t)──▶ batch::consolidate
//!       ──▶ one transaction: store::sink::write_batch (rows) + store::episodes::maintain (alert
//!           episodes, notification outbox) + write_progress (Kafka offsets, watermark, is_final,
//!           revisions) ──COMMIT
//! ```
//!
//! Exactly once: a transaction holds all changes of completed epochs together with the Kafka
//! positions those changes came from, so after a crash the next run resumes Kafka at the stored
//! positions and nothing is written twice or lost. A retried commit first checks the stored
//! positions, so a commit whose acknowledgement was lost is not applied twice.
//!
//! When a write fails, [`Failure::of`] decides what happens:
//! - **transient** (connection lost, server starting or shutting down, overloaded, a timeout, a
//!   serialisation conflict): the same batch is retried with exponential backoff (100 ms to 10 s),
//!   for as long as it takes, and [`SinkStats::database`] says it is unreachable meanwhile;
//! - **data** (PostgreSQL refuses a value or a row: SQLSTATE classes 22, 23, 54): the batch is
//!   written again one row per savepoint; each refused row becomes a dead letter (partition -1, the
//!   row as JSON, the reason) and everything else commits with its offsets, so the stream moves on;
//! - **fatal** (authentication, a missing table or permission, anything else): the sink stops with
//!   a clear message and trips the process's [`Shutdown`]; stored progress is intact.
//!
//! While a shutdown is under way the sink still commits what is complete; once the shutdown's
//! deadline has passed it gives up instead of retrying (nothing is lost: uncommitted offsets are
//! read again on the next start).

pub mod batch;
pub mod episodes;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use postgres::Client;
use streampulse_dataflow::{Change, Time, Update};

use crate::health::Link;
use crate::latency::Histogram;
use crate::shutdown::Shutdown;
use crate::store::{self, Database, Session};
use batch::{consolidate, Batch, Memory};

pub use crate::store::sink::SinkConfig;

/// What the sink has done and how the database looks to it, for `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub commits: AtomicU64,
    /// Total time spent in committed transactions, in microseconds.
    pub commit_micros: AtomicU64,
    pub retries: AtomicU64,
    /// Rows the database refused, stored as dead letters.
    pub refused: AtomicU64,
    /// PostgreSQL as the sink (and the start-up that precedes it) last saw it.
    pub database: Link,
    /// How old the newest record of each committed batch was at its commit.
    pub event_to_postgres: Histogram,
}

/// Why the sink stopped before its input ended.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("PostgreSQL refused the sink's work and retrying cannot help: {0}")]
    Fatal(String),
    #[error("the database could not be reached before the shutdown deadline; changes not yet committed will be read from Kafka again on the next start")]
    Abandoned,
}

/// How a failed database call should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Transient,
    Data,
    Fatal,
}

impl Failure {
    /// Classifies by SQLSTATE where the server answered, else by what failed on the way.
    pub fn of(error: &anyhow::Error) -> Failure {
        let Some(pg) = error
            .chain()
            .find_map(|e| e.downcast_ref::<postgres::Error>())
        else {
            // Not PostgreSQL's error at all: TLS setup, a socket, a timeout of ours.
            return if error.chain().any(|e| e.is::<std::io::Error>()) {
                Failure::Transient
            } else {
                Failure::Fatal
            };
        };
        if let Some(db) = pg.as_db_error() {
            return Failure::of_sqlstate(db.code().code());
        }
        // No server error: the connection closed, or I/O failed talking to the server.
        if pg.is_closed() || std::error::Error::source(pg).is_some_and(|s| s.is::<std::io::Error>())
        {
            return Failure::Transient;
        }
        // tokio-postgres reports a connect timeout as its own error kind without a source.
        if pg.to_string().contains("timed out") {
            return Failure::Transient;
        }
        Failure::Fatal
    }

    pub fn of_sqlstate(code: &str) -> Failure {
        match &code[..2.min(code.len())] {
            // connection exception; insufficient resources; system error (I/O); operator
            // intervention (admin shutdown, crash recovery, statement timeout: 57014)
            "08" | "53" | "58" | "57" => Failure::Transient,
            // data exception (bad encoding, a value out of range, a bad timestamp); integrity
            // constraint violation; program limit exceeded (an index row too large)
            "22" | "23" | "54" => Failure::Data,
            // serialisation failure, deadlock; lock not available
            "40" => Failure::Transient,
            _ if code == "55P03" => Failure::Transient,
            _ => Failure::Fatal,
        }
    }
}

/// Runs the sink until the channel closes (the dataflow finished), a fatal error, or a shutdown
/// that outlasts its deadline.
pub fn run(
    db: Database,
    config: SinkConfig,
    updates: Receiver<Update>,
    stats: &SinkStats,
    shutdown: &Shutdown,
) -> Result<(), SinkError> {
    let mut sink = Sink {
        session: Session::new(db),
        config,
        stats,
        shutdown,
    };
    let mut memory = Memory::new(sink.config.stored_watermark);
    let mut pending: BTreeMap<Time, Vec<Change>> = BTreeMap::new();
    let mut frontier: Option<(Option<Time>, Option<i64>)> = None;
    let mut committed: Option<(Option<Time>, Option<i64>)> = None;
    let mut last_commit = Instant::now();
    let mut last_took = Duration::ZERO;
    let mut closed = false;
    loop {
        match updates.recv_timeout(Duration::from_millis(100)) {
            Ok(update) => {
                receive(update, &mut pending, &mut frontier);
                // Take whatever else is already queued before writing.
                for update in updates.try_iter().take(1024) {
                    receive(update, &mut pending, &mut frontier);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
        let Some(cut) = frontier else {
            if closed {
                return Ok(());
            }
            continue;
        };
        let (upto, watermark) = cut;
        // Batch commits a little: a commit starts at most every 100 ms unless the stream ended,
        // and at most every twice the time the last one took (so a commit takes at most half the
        // sink's time), so that a sink catching up writes fewer, larger (and better consolidated)
        // transactions instead of falling further behind.
        let interval = (last_took * 2).clamp(COMMIT_EVERY, MAX_COMMIT_EVERY);
        let due = closed || upto.is_none() || last_commit.elapsed() >= interval;
        if !due || committed == Some(cut) {
            if closed && committed == Some(cut) {
                return Ok(());
            }
            continue;
        }
        let started = Instant::now();
        let ready: Vec<Time> = pending
            .keys()
            .copied()
            .filter(|t| upto.is_none_or(|f| *t < f))
            .collect();
        let mut changes = Vec::new();
        for t in ready {
            changes.extend(pending.remove(&t).unwrap_or_default());
        }
        let batch = consolidate(
            changes,
            watermark,
            &mut memory,
            sink.config.window_ms,
            sink.config.retain_ms,
        );
        if !(batch.is_empty() && batch.watermark.is_none()) {
            sink.commit(Arc::new(batch))?;
            last_took = started.elapsed();
        }
        memory.committed = memory.committed.max(watermark);
        committed = Some(cut);
        last_commit = started;
        if closed && pending.is_empty() {
            return Ok(());
        }
    }
}

fn receive(
    update: Update,
    pending: &mut BTreeMap<Time, Vec<Change>>,
    frontier: &mut Option<(Option<Time>, Option<i64>)>,
) {
    for change in update.changes {
        pending.entry(change.time()).or_default().push(change);
    }
    *frontier = Some((update.frontier, update.watermark));
}

/// The sink's connection and the policy around it.
struct Sink<'a> {
    session: Session,
    config: SinkConfig,
    stats: &'a SinkStats,
    shutdown: &'a Shutdown,
}

/// The shortest time between commits (what a steady stream sees: event-to-PostgreSQL latency is
/// about this plus the commit itself).
const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// The longest, when commits are slow (catching up).
const MAX_COMMIT_EVERY: Duration = Duration::from_secs(2);

/// The longest a commit may go without an answer before the connection counts as dead (the
/// server cancels a single statement after `STATEMENT_TIMEOUT` itself).
const COMMIT_DEADLINE: Duration = Duration::from_secs(90);

impl Sink<'_> {
    /// Commits `batch`, retrying transient failures and setting refused rows aside.
    fn commit(&mut self, batch: Arc<Batch>) -> Result<(), SinkError> {
        let mut backoff = Duration::from_millis(100);
        let mut isolate = false;
        let shutdown = self.shutdown;
        loop {
            let started = Instant::now();
            let (config, rows) = (self.config.clone(), batch.clone());
            let result =
                self.session
                    .run(COMMIT_DEADLINE, &|| shutdown.is_overdue(), move |client| {
                        if isolate {
                            write_isolating(client, &config, &rows)
                        } else {
                            write_whole(client, &config, &rows).map(|()| 0)
                        }
                    });
            let error = match result {
                Ok(refused) => {
                    for &record_ms in batch.record_times.values() {
                        self.stats.event_to_postgres.observe_since(record_ms);
                    }
                    self.stats.refused.fetch_add(refused, Ordering::Relaxed);
                    self.stats.database.ok();
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    let micros = started.elapsed().as_micros() as u64;
                    self.stats
                        .commit_micros
                        .fetch_add(micros, Ordering::Relaxed);
                    return Ok(());
                }
                Err(error) => error,
            };
            if self.shutdown.is_overdue() {
                return Err(SinkError::Abandoned);
            }
            match Failure::of(&error) {
                Failure::Data if !isolate => {
                    log::warn!("sink: {error:#}; writing this batch row by row to set the refused rows aside");
                    isolate = true;
                }
                Failure::Transient | Failure::Data => {
                    // (A data error while isolating rows is one we could not pin on a row: the
                    // progress itself was refused. Retrying is all that is left.)
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.stats.database.failed(format!("{error:#}"));
                    log::warn!("sink: {error:#}; retrying in {backoff:?}");
                    if self.shutdown.sleep(backoff) {
                        return Err(SinkError::Abandoned);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
                Failure::Fatal => return Err(SinkError::Fatal(format!("{error:#}"))),
            }
        }
    }
}

fn write_whole(client: &mut Client, config: &SinkConfig, batch: &Batch) -> anyhow::Result<()> {
    let mut tx = client.transaction()?;
    if store::sink::already_committed(&mut tx, config, batch)? {
        log::info!("sink: this batch was committed before its acknowledgement was lost; not applying it again");
        return Ok(());
    }
    store::sink::write_batch(&mut tx, config, batch)?;
    store::episodes::maintain(&mut tx, config, batch)?;
    store::sink::write_progress(&mut tx, config, batch)?;
    tx.commit()?;
    Ok(())
}

/// Writes each row of `batch` under its own savepoint; a row refused with a data error is rolled
/// back and stored as a dead letter instead. The rest, and the progress, commit together. Returns
/// how many rows were refused.
fn write_isolating(client: &mut Client, config: &SinkConfig, batch: &Batch) -> anyhow::Result<u64> {
    let mut tx = client.transaction()?;
    if store::sink::already_committed(&mut tx, config, batch)? {
        return Ok(0);
    }
    let mut refused = Vec::new();
    for piece in batch.rows() {
        let mut savepoint = tx.transaction()?;
        match store::sink::write_batch(&mut savepoint, config, &piece) {
            Ok(()) => savepoint.commit()?,
            Err(e) if Failure::of(&e) == Failure::Data => {
                savepoint.rollback()?;
                refused.push((piece.describe(), format!("refused by PostgreSQL: {e:#}")));
            }
            Err(e) => return Err(e),
        }
    }
    for (row, reason) in &refused {
        log::error!("sink: {reason}; row {row} stored in dead_letters (partition -1)");
        store::sink::write_refused(&mut tx, config, row, reason)?;
    }
    store::episodes::maintain(&mut tx, config, batch)?;
    store::sink::write_progress(&mut tx, config, &batch.progress())?;
    tx.commit()?;
    Ok(refused.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for (code, failure) in [
            ("08006", Failure::Transient), // connection failure
            ("57P01", Failure::Transient), // admin shutdown
            ("57014", Failure::Transient), // statement timeout
            ("53300", Failure::Transient), // too many connections
            ("40001", Failure::Transient), // serialisation failure
            ("55P03", Failure::Transient), // lock not available
            ("22021", Failure::Data),      // invalid byte sequence (a NUL)
            ("22008", Failure::Data),      // datetime field overflow
            ("23514", Failure::Data),      // check violation
            ("54000", Failure::Data),      // index row size exceeds maximum
            ("28P01", Failure::Fatal),     // bad password
            ("42P01", Failure::Fatal),     // undefined table
            ("42501", Failure::Fatal),     // insufficient privilege
            ("3D000", Failure::Fatal),     // no such database
        ] {
            assert_eq!(Failure::of_sqlstate(code), failure, "{code}");
        }
    }

    #[test]
    fn errors_without_a_server_answer() {
        let io = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Failure::of(&io), Failure::Transient);
        assert_eq!(Failure::of(&anyhow::anyhow!("a bug")), Failure::Fatal);
    }
}
