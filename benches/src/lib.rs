//! The benchmark harness: the dataflow beside a plain single-threaded HashMap aggregator of the
//! same semantics, measured in the same run on the same materialised events.
//!
//! - [`baseline`] is the reference: one pass, one thread, pre-sized hash maps, no dataflow.
//! - [`dataflow_run`] runs the real dataflow (batches, differential, output to a [`View`]).
//! - [`bench_dataflow`] runs both several times and reports medians as [`Measurement`]s.
//!
//! Events are generated before the clock starts, so generation is never timed.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rustc_hash::FxHashMap;
use serde::Serialize;
use streampulse_dataflow::{execute, Aggregate, Config, Counters, Limits, View, Window};
use streampulse_ingest::source::owns;
use streampulse_ingest::{Generator, Record, Scenario, VecSource};

pub mod baseline;

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

/// The benchmark's events, in topic order.
pub fn materialise(events: u64, seed: u64) -> Vec<Record> {
    let start = 1_700_000_000_000 - 1_700_000_000_000 % 60_000;
    let g = Generator::new(seed, Scenario::CdnOutage, start, BENCH_RATE);
    let p = BENCH_PARTITIONS as u64;
    (0..events)
        .map(|i| Record {
            partition: (i % p) as u32,
            offset: (i / p) as i64,
            event: g.event(i),
        })
        .collect()
}

/// Runs the dataflow over `records` on `workers` threads; returns seconds and the stat rows at the end.
pub fn dataflow_run(
    records: &[Record],
    workers: usize,
    config: &Config,
    batch_max: usize,
) -> (f64, usize) {
    let slots: Vec<Mutex<Option<Vec<Record>>>> = (0..workers)
        .map(|w| {
            let mine = records
                .iter()
                .filter(|r| owns(r.partition, w, workers))
                .cloned()
                .collect();
            Mutex::new(Some(mine))
        })
        .collect();
    let slots = Arc::new(slots);
    let (tx, rx) = crossbeam_channel::unbounded();
    let window_ms = config.window_ms;
    let collector = std::thread::spawn(move || {
        let mut view = View::new(window_ms);
        for update in rx {
            view.apply(update);
        }
        view.stats().len()
    });
    let started = Instant::now();
    execute(
        timely::Config::process(workers),
        config.clone(),
        Limits {
            batch_max,
            ..Limits::default()
        },
        move |w, peers| {
            let mine = slots[w]
                .lock()
                .expect("not poisoned")
                .take()
                .expect("taken once");
            let parts = (0..BENCH_PARTITIONS)
                .filter(|&p| owns(p, w, peers))
                .collect();
            Box::new(VecSource::new(parts, mine))
        },
        Some(tx),
        Arc::new(AtomicBool::new(false)),
        Arc::new(Counters::default()),
    )
    .expect("the dataflow runs");
    let rows = collector.join().expect("collector finished");
    (started.elapsed().as_secs_f64(), rows)
}

/// Runs the baseline once; returns seconds and its stat rows.
pub fn baseline_run(records: &[Record], config: &Config) -> (f64, usize) {
    let started = Instant::now();
    let result = baseline::aggregate(records, config);
    let seconds = started.elapsed().as_secs_f64();
    (seconds, result.rows())
}

fn median(mut xs: Vec<f64>) -> f64 {
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
    let records = materialise(events, seed);
    let mut base_secs = Vec::new();
    let mut base_rows = 0;
    let mut flow_secs: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut flow_rows: BTreeMap<usize, usize> = BTreeMap::new();
    for run in 0..runs {
        let (secs, rows) = baseline_run(&records, &config);
        progress(&format!("run {}/{runs}: baseline {secs:.3}s", run + 1));
        base_secs.push(secs);
        base_rows = rows;
        for &w in workers {
            let (secs, rows) = dataflow_run(&records, w, &config, batch_max);
            progress(&format!(
                "run {}/{runs}: dataflow -w {w} {secs:.3}s",
                run + 1
            ));
            flow_secs.entry(w).or_default().push(secs);
            flow_rows.insert(w, rows);
        }
    }
    let base = median(base_secs);
    let per_sec = |secs: f64| events as f64 / secs;
    let mut out = vec![Measurement {
        name: "hashmap_baseline".into(),
        workers: 1,
        events,
        runs,
        seconds: base,
        events_per_sec: per_sec(base),
        ratio_to_baseline: 1.0,
        speedup_vs_1_worker: None,
        rows: base_rows,
    }];
    let one = flow_secs.get(&1).map(|s| median(s.clone()));
    for (w, secs) in flow_secs {
        let secs = median(secs);
        out.push(Measurement {
            name: "dataflow".into(),
            workers: w,
            events,
            runs,
            seconds: secs,
            events_per_sec: per_sec(secs),
            ratio_to_baseline: base / secs,
            speedup_vs_1_worker: one.map(|one| one / secs),
            rows: flow_rows[&w],
        });
    }
    out
}

/// The window of a timestamp (re-exported for the baseline).
fn window_of(ts: i64, config: &Config) -> Window {
    Window::of(ts, config.window_ms)
}

/// Stat rows keyed by borrowed strings, as the baseline keeps them.
type Rows<'a> = FxHashMap<(Window, baseline::RowKey<'a>), Aggregate>;
