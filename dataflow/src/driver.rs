//! Driving the dataflow: the worker loop, and [`execute`] which runs it on timely workers.
//!
//! ```text
//!   Source ──poll──▶ combine (lateness, pre-combine) ──▶ input at the current epoch; advance to the
//!                        │                                  next epoch (the wall clock)
//!                        └─ Clock ──Mark──▶ every worker ──▶ global watermark (`marks`)
//!   ledger ──expire (watermark − retain)──▶ retractions + Side::Expired
//!   step the worker; worker 0 sends Update { changes, frontier, watermark } to the caller's channel
//! ```
//!
//! Restored state (from PostgreSQL) enters once, at epoch 0, before any new data. One epoch per
//! batch keeps differential's work proportional to touched rows, not to events.
//!
//! Progress and completeness are separate (see [`crate::window`]): every worker advances its epoch
//! with the wall clock, so batches complete and the sink commits as fast as the data flows, even
//! while a partition is silent or far behind in event time; which windows are final is decided by
//! the global watermark alone.
//!
//! Idleness. A partition silent past the idle timeout stops holding the watermark back (its worker
//! says so in its [`Mark`]). When it speaks again, its records are applied: on time by the
//! per-partition rule, they count, even in windows already reported final (those windows are
//! *revised*; see [`crate::view`] and the sink). Idleness changes when results appear, never what
//! they are. Records for windows this worker has already let go of (past `--retain`) go to the sink
//! as side records ([`Side::Stat`]), so the stored sums still count them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use streampulse_ingest::{DeadLetter, Poll, Record, Source};
use timely::worker::Worker;

use crate::batch::{combine, Ledger};
use crate::error::Error;
use crate::graph::{build, build_marks};
use crate::marks::{Mark, Marks};
use crate::output::{Change, Sample, Side, Update};
use crate::run::{Caller, Plan, CATCH_UP_LAG_MS};
use crate::window::{epoch_now, Clock, Time};

/// Runs one worker over `source` until the source is done (or the caller's `stop` is set) and all
/// its output has left. The worker with global index 0 sends the [`Update`]s to the caller's output.
pub fn run_worker(worker: &mut Worker, plan: &Plan, caller: &Caller, source: &mut dyn Source) {
    let Plan {
        config,
        limits,
        resume,
    } = plan;
    let Caller {
        output,
        stop,
        counters,
    } = caller;
    let output = output.as_ref().filter(|_| worker.index() == 0);
    let dataflow = build(worker, config);
    let (marks_input, received) = build_marks(worker);
    let mut marks_input = Some(marks_input);
    let mut marks = Marks::new(worker.peers());
    let mut round = 0u64;
    let mut last_claim: Option<(Option<i64>, bool)> = None;
    let probe = dataflow.probe;
    let buffer = dataflow.output;
    let mut inputs = Some((dataflow.input, dataflow.side));

    let start = Instant::now();
    let mut clock = Clock::new(config.lateness_ms, config.idle_timeout_ms);
    let partitions = source.partitions();
    for &partition in &partitions {
        match resume.max_ts.get(&partition) {
            Some(&max_ts) => clock.restore(partition, max_ts, start),
            None => clock.register(partition, start),
        }
    }
    let mut ledger = Ledger::default();
    if let Some((input, side)) = inputs.as_mut() {
        if worker.index() == 0 {
            for (row, agg) in &resume.rows {
                ledger.add(row, agg);
                input.update(row.clone(), *agg);
            }
        }
        let first = epoch_now();
        input.advance_to(first);
        side.advance_to(first);
    }
    if partitions.is_empty() {
        // A worker without partitions holds nothing back.
        inputs = None;
    }
    let mut ledger_windows = 0u64;
    let mut records: Vec<Record> = Vec::new();
    let mut dead: Vec<DeadLetter> = Vec::new();
    let mut updates = Vec::new();
    let mut last_fed: Option<Time> = None;
    let mut sent = Sent::default();
    let mut read = 0u64;

    loop {
        let mut poll = Poll::Done;
        if let Some((input, side)) = inputs.as_mut() {
            // Catching up when even the partition furthest ahead is behind (then every partition
            // is); sources without Kafka timestamps are never catching up.
            let newest = partitions
                .iter()
                .filter_map(|&p| source.record_time(p))
                .max();
            let catching_up =
                newest.is_some_and(|ms| (epoch_now() as i64).saturating_sub(ms) > CATCH_UP_LAG_MS);
            let mut allowed = if catching_up {
                limits.catch_up_batch_max
            } else {
                limits.batch_max
            };
            if let Some(rate) = limits.max_rate {
                let budget = (rate * start.elapsed().as_secs_f64()) as u64;
                allowed = allowed.min(budget.saturating_sub(read) as usize);
            }
            poll = if allowed > 0 {
                source.poll(&mut records, &mut dead, allowed)
            } else {
                Poll::Idle
            };
            read += (records.len() + dead.len()) as u64;
            let now = Instant::now();
            let fed = !records.is_empty() || !dead.is_empty();
            if fed {
                let late = combine(&records, &mut clock, config.window_ms, now, &mut updates);
                counters
                    .events
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                counters.late.fetch_add(late as u64, Ordering::Relaxed);
                counters
                    .dead_letters
                    .fetch_add(dead.len() as u64, Ordering::Relaxed);
                counters.batches.fetch_add(1, Ordering::Relaxed);
                for (row, agg) in updates.drain(..) {
                    // A window this worker has let go of (past retention; only a partition that
                    // was idle can still deliver to it) is not fed again: its sums go to the sink.
                    if ledger.has_expired(row.window, config.window_ms) {
                        side.update(Side::Stat { row, agg }, 1);
                        continue;
                    }
                    ledger.add(&row, &agg);
                    input.update(row, agg);
                }
                for (partition, next_offset) in positions(&records, &dead) {
                    let max_ts = clock.max_ts(partition).unwrap_or(i64::MIN);
                    side.update(
                        Side::Position {
                            partition,
                            next_offset,
                            max_ts,
                            record_ms: source.record_time(partition),
                        },
                        1,
                    );
                }
                let every = limits.sample_every.unwrap_or(i64::MAX);
                for record in records.iter().filter(|r| r.offset % every == 0) {
                    side.update(Side::Sample(sample(record)), 1);
                }
                for letter in dead.drain(..) {
                    side.update(Side::DeadLetter(letter), 1);
                }
                records.clear();
                last_fed = Some(*input.time());
            }
            // The next epoch: the wall clock, and past a batch just fed. Advancing even when idle
            // keeps the frontier, and the sink's commits, moving for every other worker.
            let next = epoch_now().max(*input.time() + fed as Time);
            if next > *input.time() {
                input.advance_to(next);
                side.advance_to(next);
            }
            // Tell every worker what this one can now claim (see `marks`).
            let claim = (clock.watermark(now), clock.all_idle(now));
            if let Some(handle) = marks_input.as_mut().filter(|_| last_claim != Some(claim)) {
                last_claim = Some(claim);
                handle.send(Mark {
                    worker: worker.index(),
                    epoch: next,
                    watermark: claim.0,
                    idle: claim.1,
                });
                round += 1;
                handle.advance_to(round);
            }
            // Windows that ended `retain` before the global watermark are let go of; the sink is
            // told which (Side::Expired), so it keeps their stored rows. Their rows leave memory
            // once the windows that read them (`reach`) have been let go of too.
            let frontier = probe.with_frontier(|f| f.first().copied());
            if let Some(watermark) = frontier.and_then(|f| marks.final_watermark(f)) {
                let horizon = watermark - config.retain_ms;
                let expiry = ledger.expire(horizon, config.window_ms, config.reach());
                for (row, agg) in expiry.retractions {
                    input.update(row, agg);
                }
                for window in expiry.expired {
                    side.update(Side::Expired(window), 1);
                }
            }
            let windows = ledger.windows() as u64;
            counters
                .ledger_windows
                .fetch_add(windows.wrapping_sub(ledger_windows), Ordering::Relaxed);
            ledger_windows = windows;
            input.flush();
            side.flush();
        }
        if poll == Poll::Done || stop.load(Ordering::Relaxed) {
            inputs = None; // dropping the sessions closes this worker's inputs
        }
        if inputs.is_none() {
            if let Some(mut handle) = marks_input.take() {
                // A closed input holds nothing back.
                handle.send(Mark {
                    worker: worker.index(),
                    epoch: epoch_now(),
                    watermark: None,
                    idle: true,
                });
            }
        }

        // Backpressure: let the previous batch clear before feeding the next, within a bound, so
        // that a stalled peer cannot stop this worker forever.
        match (last_fed.take(), inputs.as_ref()) {
            (Some(fed), Some((input, _))) if *input.time() > fed => {
                let deadline = Instant::now() + limits.max_wait;
                while probe.less_equal(&fed) && Instant::now() < deadline {
                    // Park rather than spin: a waiting worker must not take the core its peer
                    // (or the collector) needs; timely unparks it when messages arrive.
                    worker.step_or_park(Some(Duration::from_millis(1)));
                }
            }
            _ => {
                let park = if poll == Poll::Idle {
                    Duration::from_millis(5)
                } else {
                    Duration::ZERO
                };
                worker.step_or_park(Some(park));
            }
        }
        for mark in received.borrow_mut().drain(..) {
            marks.receive(mark);
        }

        if let Some(tx) = output {
            let frontier = probe.with_frontier(|f| f.first().copied());
            let watermark = match frontier {
                Some(f) => marks.final_watermark(f),
                None => None,
            };
            let changes = std::mem::take(&mut *buffer.borrow_mut());
            if let Some(update) = sent.next(changes, frontier, watermark) {
                // A closed receiver means nobody listens any more; keep running to finish cleanly.
                let _ = tx.send(update);
            }
        }
        if inputs.is_none() && probe.done() && buffer.borrow().is_empty() {
            break;
        }
    }
    counters
        .ledger_windows
        .fetch_sub(ledger_windows, Ordering::Relaxed);
}

/// What worker 0 has sent to the caller, so that it sends an [`Update`] only when there is news:
/// changes, a new watermark, the end of the input, or a frontier that completes changes already sent.
#[derive(Default)]
struct Sent {
    /// The frontier last sent (`None`: nothing sent yet).
    frontier: Option<Option<Time>>,
    watermark: Option<i64>,
    /// The newest epoch among the changes sent so far.
    newest: Option<Time>,
}

impl Sent {
    fn next(
        &mut self,
        changes: Vec<Change>,
        frontier: Option<Time>,
        watermark: Option<i64>,
    ) -> Option<Update> {
        // Changes the receiver cannot yet know complete: at or past the frontier it last got.
        let open = match (self.newest, self.frontier) {
            (None, _) | (_, Some(None)) => false,
            (Some(_), None) => true,
            (Some(newest), Some(Some(f))) => newest >= f,
        };
        let moved = self.frontier != Some(frontier);
        let news = !changes.is_empty()
            || watermark != self.watermark
            || (moved && (open || frontier.is_none() || self.frontier.is_none()));
        if !news {
            return None;
        }
        for change in &changes {
            let time = change.time();
            self.newest = Some(self.newest.map_or(time, |n| n.max(time)));
        }
        self.frontier = Some(frontier);
        self.watermark = watermark;
        Some(Update {
            changes,
            frontier,
            watermark,
        })
    }
}

/// The resume position of every partition touched by a batch: one past its last offset.
fn positions(records: &[Record], dead: &[DeadLetter]) -> BTreeMap<u32, i64> {
    let mut next = BTreeMap::new();
    let offsets = records.iter().map(|r| (r.partition, r.offset));
    for (partition, offset) in offsets.chain(dead.iter().map(|d| (d.partition, d.offset))) {
        let slot = next.entry(partition).or_insert(offset + 1);
        *slot = (*slot).max(offset + 1);
    }
    next
}

fn sample(record: &Record) -> Sample {
    let e = &record.event;
    Sample {
        partition: record.partition,
        offset: record.offset,
        event_id: e.event_id.clone(),
        timestamp: e.timestamp,
        content_id: e.content.content_id.clone(),
        region: e.user_context.region.clone(),
        device: e.user_context.device.clone(),
        status: e.download.status.clone(),
        error_code: e.download.error_code.clone(),
    }
}

/// Runs the dataflow on timely workers built from `timely_config` and blocks until all are done.
/// `make_source(worker, workers)` gives each worker its source; the worker with global index 0 sends
/// its updates to the caller's output.
///
/// Fails with [`Error::InvalidConfig`] before anything starts, [`Error::Start`] when timely cannot
/// start its workers, and [`Error::WorkerPanicked`] when a worker did not finish.
pub fn execute<F>(
    timely_config: timely::Config,
    plan: Plan,
    caller: Caller,
    make_source: F,
) -> Result<(), Error>
where
    F: Fn(usize, usize) -> Box<dyn Source> + Send + Sync + 'static,
{
    plan.config.validate()?;
    let guards = timely::execute(timely_config, move |worker| {
        let mut source = make_source(worker.index(), worker.peers());
        run_worker(worker, &plan, &caller, source.as_mut());
    })
    .map_err(Error::Start)?;
    for result in guards.join() {
        // timely reports a panic only as its payload's `Debug` ("Any { .. }"): nothing to keep.
        result.map_err(|_| Error::WorkerPanicked)?;
    }
    Ok(())
}
