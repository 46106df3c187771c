//! Driving the dataflow: the worker loop, and [`execute`] which runs it on timely workers.
//!
//! ```text
//!   Source ──poll──▶ combine (lateness, pre-combine) ──▶ input at time = watermark
//!                                                           │ advance to the new watermark
//!   ledger ──expire (frontier − retain)──▶ retractions ─────┘
//!   step the worker; worker 0 sends Update { changes, frontier } to the caller's channel
//! ```
//!
//! Restored state (from PostgreSQL) enters once, at time 0, before any new data.
//!
//! One input time per batch keeps differential's work proportional to touched rows, not to events.
//!
//! Idleness. A worker whose partitions are all silent past the idle timeout must not hold the
//! frontier back, yet it keeps an input capability (its partitions may speak again). Every worker
//! broadcasts a [`Mark`] (its input time, and whether it is idle) to every worker of the cluster, in
//! this process or another, through a small timely dataflow of its own; an idle worker advances its
//! input to the lowest time of the active ones, so the frontier is theirs alone. When its partitions
//! speak again, their records are fed at its current time: on time by the per-partition rule, they
//! are applied, even to windows the frontier has already passed (those windows are *revised*; see
//! [`crate::view`] and the sink). Idleness thus changes when results appear, never what they are.
//! Records for windows already retracted from memory (past `--retain`) go to the sink as side
//! records ([`Side::Stat`]) instead, so the stored sums still count them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crossbeam_channel::Sender;
use streampulse_ingest::{DeadLetter, Poll, Record, Source};
use timely::worker::Worker;

use crate::aggregate::{Aggregate, WindowKey};
use crate::batch::{combine, Ledger};
use crate::build::{build, build_marks, Change, Sample, Side};
use crate::config::Config;
use crate::window::{time_of, watermark_of, Clock, Time, TICKS_PER_MS};

/// What worker 0 reports after a step: the new changes and the dataflow's frontier (the global
/// watermark; `None` once every input is closed and everything is final).
#[derive(Clone, Debug)]
pub struct Update {
    pub changes: Vec<Change>,
    pub frontier: Option<Time>,
}

/// Counters shared by all workers, read by the status line and the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub events: AtomicU64,
    pub late: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    /// Windows held in the workers' ledgers (what retention bounds).
    pub ledger_windows: AtomicU64,
}

/// Limits of one worker loop.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most records fed as one batch (one input time).
    pub batch_max: usize,
    /// How long a worker waits for its previous batch to pass the frontier before feeding more.
    pub max_wait: Duration,
    /// Most records per second this worker reads (`None`: as fast as it can), to cap catch-up load.
    pub max_rate: Option<f64>,
    /// Keep every this-many-th offset of a partition in the raw-event sample (`None`: no sample;
    /// only a sink stores it).
    pub sample_every: Option<i64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_max: 100_000,
            max_wait: Duration::from_secs(1),
            max_rate: None,
            sample_every: None,
        }
    }
}

/// State stored by a previous run, to continue from exactly where its output ends.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Stat rows of the windows still in retention, fed once (by worker 0) at [`RESTORE_TIME`].
    pub rows: Vec<(WindowKey, Aggregate)>,
    /// Newest timestamp per partition, so lateness is judged as if the run had never stopped.
    pub max_ts: BTreeMap<u32, i64>,
    /// The stored watermark: new data are fed at or after it.
    pub watermark_ms: Option<i64>,
}

/// Runs one worker until its source is done (or `stop` is set) and all its output has left.
#[allow(clippy::too_many_arguments)]
pub fn run_worker(
    worker: &mut Worker,
    config: &Config,
    limits: Limits,
    source: &mut dyn Source,
    resume: &Resume,
    output: Option<&Sender<Update>>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let dataflow = build(worker, config);
    let (marks_input, marks) = build_marks(worker);
    let mut marks_input = Some(marks_input);
    let mut round = 0u64;
    let mut last_mark: Option<Mark> = None;
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
    if let Some((input, _)) = inputs.as_mut() {
        if worker.index() == 0 {
            for (row, agg) in &resume.rows {
                ledger.add(row, agg);
                input.update(row.clone(), *agg);
            }
        }
    }
    if let Some((input, side)) = inputs.as_mut() {
        let first = time_of(resume.watermark_ms.unwrap_or(0));
        input.advance_to(first);
        side.advance_to(first);
    }
    if partitions.is_empty() {
        // A worker without partitions must not hold back the watermark.
        inputs = None;
    }
    let mut ledger_windows = 0u64;
    let mut records: Vec<Record> = Vec::new();
    let mut dead: Vec<DeadLetter> = Vec::new();
    let mut updates = Vec::new();
    let mut last_fed: Option<Time> = None;
    let mut unflushed = false;
    let mut last_frontier: Option<Option<Time>> = None;
    let mut read = 0u64;

    loop {
        let mut poll = Poll::Done;
        if let Some((input, side)) = inputs.as_mut() {
            let mut allowed = limits.batch_max;
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
            if !records.is_empty() || !dead.is_empty() {
                let fed_at = *input.time();
                let late = combine(&records, &mut clock, config.window_ms, now, &mut updates);
                counters
                    .events
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                counters.late.fetch_add(late as u64, Ordering::Relaxed);
                counters
                    .dead_letters
                    .fetch_add(dead.len() as u64, Ordering::Relaxed);
                counters.batches.fetch_add(1, Ordering::Relaxed);
                // Windows already retracted from memory (past retention) are not fed again: their
                // sums go straight to the sink.
                let horizon = probe
                    .with_frontier(|f| f.first().copied())
                    .map(|frontier| watermark_of(frontier) - config.retain_ms);
                for (row, agg) in updates.drain(..) {
                    if horizon.is_some_and(|h| row.window.end(config.window_ms) <= h) {
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
                last_fed = Some(fed_at);
                unflushed = true;
            }
            let mut next = *input.time();
            let watermark = clock.watermark(now);
            if let Some(watermark) = watermark {
                next = next.max(time_of(watermark));
            }
            // An idle worker follows the active workers of the whole cluster (see the module docs).
            let idle = clock.all_idle(now);
            if idle {
                if let Some(lowest) = lowest_active(&marks.borrow(), worker.index()) {
                    next = next.max(lowest);
                }
            }
            if next == *input.time() && unflushed && poll != Poll::Ready {
                // Nothing more to read and the watermark stands still: step to the next tick so the
                // batch just fed completes. Within a millisecond of the worker's own watermark
                // this claims no later watermark; a worker that runs ahead of its own watermark
                // (it followed others while idle) already claims more, and ticks on freely.
                let ahead = watermark.is_none_or(|w| time_of(w) < next);
                if ahead || (next + 1) % TICKS_PER_MS != 0 {
                    next += 1;
                }
            }
            if next > *input.time() {
                input.advance_to(next);
                side.advance_to(next);
                unflushed = false;
            }
            let mark = Mark {
                worker: worker.index(),
                time: next,
                idle,
            };
            if let Some(handle) = marks_input.as_mut().filter(|_| last_mark != Some(mark)) {
                last_mark = Some(mark);
                handle.send(mark);
                round += 1;
                handle.advance_to(round);
            }
            // The frontier is the global watermark: windows that ended `retain` before it go.
            if let Some(frontier) = probe.with_frontier(|f| f.first().copied()) {
                let horizon = watermark_of(frontier) - config.retain_ms;
                for (row, agg) in ledger.expire(horizon, config.window_ms) {
                    input.update(row, agg);
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
                // A closed input holds nothing back: nobody should follow this worker any more.
                handle.send(Mark {
                    worker: worker.index(),
                    time: Time::MAX,
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

        if let Some(tx) = output {
            let frontier = probe.with_frontier(|f| f.first().copied());
            let changes = std::mem::take(&mut *buffer.borrow_mut());
            if !changes.is_empty() || last_frontier != Some(frontier) {
                last_frontier = Some(frontier);
                // A closed receiver means nobody listens any more; keep running to finish cleanly.
                let _ = tx.send(Update { changes, frontier });
            }
        }
        if inputs.is_none() && probe.done() && buffer.borrow().is_empty() {
            if let Some(tx) = output {
                if last_frontier != Some(None) {
                    let _ = tx.send(Update {
                        changes: Vec::new(),
                        frontier: None,
                    });
                }
            }
            break;
        }
    }
    counters
        .ledger_windows
        .fetch_sub(ledger_windows, Ordering::Relaxed);
}

/// What a worker tells every worker of the cluster: the time its input stands at, and whether all
/// its partitions are idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    pub worker: usize,
    pub time: Time,
    pub idle: bool,
}

/// The lowest input time among the workers other than `me` that are not idle, if any.
fn lowest_active(marks: &BTreeMap<usize, Mark>, me: usize) -> Option<Time> {
    marks
        .values()
        .filter(|m| m.worker != me && !m.idle)
        .map(|m| m.time)
        .min()
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
/// (The arguments are the run's independent inputs; bundling them would only rename them.)
/// `make_source(worker, workers)` gives each worker its source; the worker with global index 0 sends
/// its updates to `output`.
#[allow(clippy::too_many_arguments)]
pub fn execute<F>(
    timely_config: timely::Config,
    config: Config,
    limits: Limits,
    make_source: F,
    resume: Resume,
    output: Option<Sender<Update>>,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
) -> Result<(), String>
where
    F: Fn(usize, usize) -> Box<dyn Source> + Send + Sync + 'static,
{
    config.validate()?;
    let guards = timely::execute(timely_config, move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut source = make_source(index, peers);
        let output = if index == 0 { output.as_ref() } else { None };
        run_worker(
            worker,
            &config,
            limits,
            source.as_mut(),
            &resume,
            output,
            &stop,
            &counters,
        );
    })?;
    for result in guards.join() {
        result?;
    }
    Ok(())
}
