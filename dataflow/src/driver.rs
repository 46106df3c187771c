//! Driving the dataflow: the worker loop, and [`execute`] which runs it on timely workers.
//!
//! ```text
//!   Source ──poll──▶ combine (lateness, pre-combine) ──▶ input at time = watermark
//!                                                           │ advance to the new watermark
//!   ledger ──expire (frontier − retain)──▶ retractions ─────┘
//!   step the worker; worker 0 sends Update { changes, frontier } to the caller's channel
//! ```
//!
//! One input time per batch keeps differential's work proportional to touched rows, not to events.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use streampulse_ingest::{Poll, Record, Source};
use timely::worker::Worker;

use crate::batch::{combine, Ledger};
use crate::build::{build, Change};
use crate::config::Config;
use crate::window::{Clock, Time};

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            batch_max: 100_000,
            max_wait: Duration::from_secs(1),
        }
    }
}

/// Runs one worker until its source is done (or `stop` is set) and all its output has left.
pub fn run_worker(
    worker: &mut Worker,
    config: &Config,
    limits: Limits,
    source: &mut dyn Source,
    output: Option<&Sender<Update>>,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let dataflow = build(worker, config);
    let probe = dataflow.probe;
    let buffer = dataflow.output;
    let mut input = Some(dataflow.input);

    let start = Instant::now();
    let mut clock = Clock::new(config.lateness_ms, config.idle_timeout_ms);
    let partitions = source.partitions();
    for &partition in &partitions {
        clock.register(partition, start);
    }
    if partitions.is_empty() {
        // A worker without partitions must not hold back the watermark.
        input = None;
    }
    let mut ledger = Ledger::default();
    let mut ledger_windows = 0u64;
    let mut records: Vec<Record> = Vec::with_capacity(limits.batch_max.min(1 << 20));
    let mut updates = Vec::new();
    let mut last_fed: Option<Time> = None;
    let mut last_frontier: Option<Option<Time>> = None;

    loop {
        let mut poll = Poll::Done;
        if let Some(session) = input.as_mut() {
            poll = source.poll(&mut records, limits.batch_max);
            let now = Instant::now();
            if !records.is_empty() {
                let fed_at = *session.time();
                let late = combine(&records, &mut clock, config.window_ms, now, &mut updates);
                counters
                    .events
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                counters.late.fetch_add(late as u64, Ordering::Relaxed);
                counters.batches.fetch_add(1, Ordering::Relaxed);
                records.clear();
                for (row, agg) in updates.drain(..) {
                    ledger.add(&row, &agg);
                    session.update(row, agg);
                }
                last_fed = Some(fed_at);
            }
            if let Some(watermark) = clock.watermark(now) {
                let time = watermark.max(0) as Time;
                if time > *session.time() {
                    session.advance_to(time);
                }
            }
            // The frontier is the global watermark: windows that ended `retain` before it go.
            if let Some(frontier) = probe.with_frontier(|f| f.first().copied()) {
                let horizon = frontier as i64 - config.retain_ms;
                for (row, agg) in ledger.expire(horizon, config.window_ms) {
                    session.update(row, agg);
                }
            }
            let windows = ledger.windows() as u64;
            counters
                .ledger_windows
                .fetch_add(windows.wrapping_sub(ledger_windows), Ordering::Relaxed);
            ledger_windows = windows;
            session.flush();
        }
        if poll == Poll::Done || stop.load(Ordering::Relaxed) {
            input = None; // dropping the session closes this worker's input
        }

        // Backpressure: let the previous batch clear before feeding the next, within a bound, so
        // that a stalled peer cannot stop this worker forever.
        match (last_fed.take(), input.as_ref()) {
            (Some(fed), Some(session)) if *session.time() > fed => {
                let deadline = Instant::now() + limits.max_wait;
                while probe.less_equal(&fed) && Instant::now() < deadline {
                    worker.step();
                }
            }
            _ => {
                let park = if poll == Poll::Idle {
                    Some(Duration::from_millis(5))
                } else {
                    None
                };
                worker.step_or_park(park.or(Some(Duration::ZERO)));
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
        if input.is_none() && probe.done() && buffer.borrow().is_empty() {
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

/// Runs the dataflow on timely workers built from `timely_config` and blocks until all are done.
/// `make_source(worker, workers)` gives each worker its source; the worker with global index 0 sends
/// its updates to `output`.
pub fn execute<F>(
    timely_config: timely::Config,
    config: Config,
    limits: Limits,
    make_source: F,
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
