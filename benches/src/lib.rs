//! The benchmark harness: the dataflow beside a plain single-threaded HashMap aggregator of the
//! same semantics, measured in the same run on the same materialised events.
//!
//! - [`baseline`] is the reference: one pass, one thread, pre-sized hash maps, no dataflow.
//! - [`dataflow_run`] runs the real dataflow (batches, differential, output to a [`View`]).
//! - [`bench_dataflow`] runs both several times and reports medians as [`Measurement`]s.
//! - [`kafka`] measures the real path, Kafka in and PostgreSQL out, beside raw consume of the topic.
//! - [`push`] measures event-to-dashboard latency by push (`/api/stream`) beside polling.
//!
//! Events are generated before the clock starts, so generation is never timed; both sides consume
//! and free them inside the timed part, as a real pipeline does after decoding.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use serde::Serialize;
use streampulse_dataflow::{execute, Caller, Config, Counters, Limits, Plan, View};
use streampulse_ingest::source::owns;
use streampulse_ingest::{Generator, Record, Scenario, VecSource};

pub mod baseline;
pub mod kafka;
pub mod push;

/// Event-time rate of the benchmark stream: 2 000 events per second, so 10 M events span ~83 windows.
pub const BENCH_RATE: f64 = 2_000.0;
/// Partitions of the benchmark stream (split evenly across 1, 2, 4 or 8 workers).
pub const BENCH_PARTITIONS: u32 = 8;

/// One line of benchmark output.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub name: String,
    pub workers: usize,
    pub events: u64,
    pub runs: usize,
    /// Median wall-clock seconds over the runs.
    pub seconds: f64,
    pub events_per_sec: f64,
    /// This line's events/s divided by the HashMap baseline's, measured in the same invocation.
    pub ratio_to_baseline: f64,
    /// Events/s divided by the 1-worker dataflow's, when that was measured too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speedup_vs_1_worker: Option<f64>,
    /// Rows in the final state (a check that both sides computed the same thing).
    pub rows: usize,
}

/// The benchmark stream's generator.
fn generator(seed: u64) -> Generator {
    let start = 1_700_000_000_000 - 1_700_000_000_000 % 60_000;
    Generator::new(seed, Scenario::CdnOutage, start, BENCH_RATE)
}

/// Events `0..events` of the benchmark stream that fall in partitions of `worker` of `workers`, in
/// topic order.
pub fn materialise(events: u64, seed: u64, worker: usize, workers: usize) -> Vec<Record> {
    let g = generator(seed);
    let p = BENCH_PARTITIONS as u64;
    (0..events)
        .filter(|i| owns((i % p) as u32, worker, workers))
        .map(|i| Record {
            partition: (i % p) as u32,
            offset: (i / p) as i64,
            event: g.event(i),
        })
        .collect()
}

/// Runs the dataflow over the benchmark stream on `workers` threads; returns seconds and the number
/// of stat rows at the end. Each worker generates its own partitions' events on its own thread
/// before the clock starts (as a Kafka source would decode them there), then all start together.
pub fn dataflow_run(
    events: u64,
    seed: u64,
    workers: usize,
    config: &Config,
    batch_max: usize,
) -> (f64, usize) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let window_ms = config.window_ms;
    let collector = std::thread::spawn(move || {
        let mut view = View::new(window_ms);
        for update in rx {
            view.apply(update);
        }
        view.stats().len()
    });
    let ready = Arc::new(Barrier::new(workers + 1));
    let started = Arc::new(Mutex::new(None));
    let (go, clock) = (ready.clone(), started.clone());
    let timer = std::thread::spawn(move || {
        go.wait();
        *clock.lock().expect("not poisoned") = Some(Instant::now());
    });
    let plan = Plan {
        config: config.clone(),
        limits: Limits {
            batch_max,
            ..Limits::default()
        },
        ..Plan::default()
    };
    let caller = Caller {
        output: Some(tx),
        stop: Arc::new(AtomicBool::new(false)),
        counters: Arc::new(Counters::default()),
    };
    execute(
        timely::Config::process(workers),
        plan,
        caller,
        move |w, peers| {
            let mine = materialise(events, seed, w, peers);
            let parts = (0..BENCH_PARTITIONS)
                .filter(|&p| owns(p, w, peers))
                .collect();
            let source = VecSource::new(parts, mine, batch_max);
            ready.wait();
            Box::new(source)
        },
    )
    .expect("the dataflow runs");
    let finished = Instant::now();
    timer.join().expect("timer thread");
    let rows = collector.join().expect("collector finished");
    let started = started
        .lock()
        .expect("not poisoned")
        .expect("the run started");
    ((finished - started).as_secs_f64(), rows)
}

/// Runs the baseline once over the same events (generated first, untimed); returns seconds and its
/// stat rows. Like the dataflow, it consumes the events and frees them as it goes.
pub fn baseline_run(events: u64, seed: u64, config: &Config, batch_max: usize) -> (f64, usize) {
    let records = materialise(events, seed, 0, 1);
    let mut rest = records.into_iter();
    let chunks: Vec<Vec<Record>> = std::iter::from_fn(|| {
        let chunk: Vec<Record> = rest.by_ref().take(batch_max.max(1)).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
    .collect();
    let started = Instant::now();
    let rows = baseline::aggregate(chunks, config).rows();
    (started.elapsed().as_secs_f64(), rows)
}

/// The machine's parallel ceiling: `threads` independent baselines, each on its own partitions'
/// events generated on its own thread, started together. No exchange, no merge of their results:
/// whatever speed-up this gets over one thread is the most any parallel implementation could get.
pub fn parallel_baseline_run(
    events: u64,
    seed: u64,
    threads: usize,
    config: &Config,
    batch_max: usize,
) -> f64 {
    let ready = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (ready, config) = (ready.clone(), config.clone());
            std::thread::spawn(move || {
                let mut rest = materialise(events, seed, t, threads).into_iter();
                let chunks: Vec<Vec<Record>> = std::iter::from_fn(|| {
                    let chunk: Vec<Record> = rest.by_ref().take(batch_max.max(1)).collect();
                    (!chunk.is_empty()).then_some(chunk)
                })
                .collect();
                ready.wait();
                baseline::aggregate(chunks, &config).rows()
            })
        })
        .collect();
    ready.wait();
    let started = Instant::now();
    for handle in handles {
        handle.join().expect("baseline thread");
    }
    started.elapsed().as_secs_f64()
}

/// The median (the mean of the two middle values for an even count).
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

/// Measures the baseline and the dataflow on each worker count, `runs` times each, interleaved so that
/// machine noise hits all of them alike. Returns one [`Measurement`] per configuration.
pub fn bench_dataflow(
    events: u64,
    workers: &[usize],
    runs: usize,
    seed: u64,
    batch_max: usize,
    mut progress: impl FnMut(&str),
) -> Vec<Measurement> {
    let config = Config::default();
    let mut base_secs = Vec::new();
    let mut base_rows = 0;
    let mut flow_secs: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut flow_rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut parallel_secs: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for run in 0..runs {
        let (secs, rows) = baseline_run(events, seed, &config, batch_max);
        progress(&format!("run {}/{runs}: baseline {secs:.3}s", run + 1));
        base_secs.push(secs);
        base_rows = rows;
        for &w in workers.iter().filter(|&&w| w > 1) {
            let secs = parallel_baseline_run(events, seed, w, &config, batch_max);
            progress(&format!(
                "run {}/{runs}: {w} independent baselines {secs:.3}s",
                run + 1
            ));
            parallel_secs.entry(w).or_default().push(secs);
        }
        for &w in workers {
            let (secs, rows) = dataflow_run(events, seed, w, &config, batch_max);
            progress(&format!(
                "run {}/{runs}: dataflow -w {w} {secs:.3}s",
                run + 1
            ));
            flow_secs.entry(w).or_default().push(secs);
            flow_rows.insert(w, rows);
        }
    }
    let base = median(base_secs);
    let line = |name: &str, workers: usize, secs: f64, rows: usize, one: Option<f64>| Measurement {
        name: name.into(),
        workers,
        events,
        runs,
        seconds: secs,
        events_per_sec: events as f64 / secs,
        ratio_to_baseline: base / secs,
        speedup_vs_1_worker: one.map(|one| one / secs),
        rows,
    };
    let mut out = vec![line("hashmap_baseline", 1, base, base_rows, None)];
    for (w, secs) in parallel_secs {
        out.push(line(
            "hashmap_baseline_parallel_ceiling",
            w,
            median(secs),
            0,
            None,
        ));
    }
    let one = flow_secs.get(&1).map(|s| median(s.clone()));
    for (w, secs) in flow_secs {
        out.push(line("dataflow", w, median(secs), flow_rows[&w], one));
    }
    out
}
