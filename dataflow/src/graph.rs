//! The dataflow graph: the operators and their edges, built in one function ([`build`]);
//! [`crate::driver`] drives it. (The module is not called `build` so that it cannot be mistaken for a
//! Cargo build script, such as `serve/build.rs`.)
//!
//! ```text
//!  input: (WindowKey, Aggregate-as-diff)
//!    ├──────────────────────────────────────────────────────────────▶ stats deltas ─┐
//!    └─ content & region rows ─ count_total ─┬─ content ─ reduce: top-K ──────────┤
//!                                            ├─ content ─ count: unique titles ───┤ exchange
//!                                            ├─ region ── rules ─┬─ alerts ───────┤ to worker 0
//!                                            │                   └─ reduce: sustained ┤ ─▶ Change buffer
//!                                            ├─ region ── reduce: settled windows ─┐  │
//!                                            ├─ region ── reduce: trails ── join ──┴─ baselines,
//!                                            │                                        baseline alerts
//!                                            └─ content ─ semijoin settled ─ reduce: forecast
//!                                                                            ─ reduce: rising top-K
//! ```
//!
//! The stats leave in diff space (the deltas themselves), so whoever reads them only adds. The derived
//! collections need the accumulated sums as data, which `count_total` provides; they leave as rows
//! with ±1. Everything is routed to worker 0, which hands it to the caller's channel.
//!
//! Baselines and forecasts read earlier windows: each region row is offered to the `windows` windows
//! after it (a trail), each settled content row to the forecast span's windows after it, and a
//! reduce per (region or title, window) sums or smooths what it was offered. Only *settled* windows
//! are judged (see [`crate::baseline::settled`]): one reduce over the set of stream windows says
//! which.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::rc::Rc;

use differential_dataflow::input::{Input, InputSession};
use differential_dataflow::operators::count::CountTotal;
use differential_dataflow::AsCollection;
use timely::dataflow::operators::vec::{Broadcast, Input as _};
use timely::dataflow::operators::{Exchange, Inspect};
use timely::dataflow::InputHandleVec;
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use crate::aggregate::{Aggregate, Key, WindowKey};
use crate::baseline::{baselines_of, settled};
use crate::config::Config;
use crate::forecast::Forecast;
use crate::marks::Mark;
use crate::output::{Change, Derived, Side};
use crate::rules::{Alert, Rule, Severity};
use crate::window::{Time, Window};

/// The handles a driver needs: where to feed, how far the output is, and what came out.
pub struct Dataflow {
    pub input: InputSession<Time, WindowKey, Aggregate>,
    pub side: InputSession<Time, Side, isize>,
    pub probe: ProbeHandle<Time>,
    /// Changes that reached this worker's output (only worker 0 receives any).
    pub output: Rc<RefCell<Vec<Change>>>,
}

/// Builds the small dataflow through which workers tell each other their [`Mark`]s: every mark
/// sent by any worker of the cluster, in this process or another, lands in every worker's queue.
pub fn build_marks(worker: &mut Worker) -> (InputHandleVec<u64, Mark>, Rc<RefCell<Vec<Mark>>>) {
    let received = Rc::new(RefCell::new(Vec::new()));
    let queue = received.clone();
    let input = worker.dataflow::<u64, _, _>(|scope| {
        let (input, marks) = scope.new_input::<Mark>();
        marks.broadcast().inspect(move |mark: &Mark| {
            queue.borrow_mut().push(*mark);
        });
        input
    });
    (input, received)
}

/// Builds the computation of SPEC §4–§5 in `worker`.
pub fn build(worker: &mut Worker, config: &Config) -> Dataflow {
    let output = Rc::new(RefCell::new(Vec::new()));
    let top_k = config.top_k;
    let rules = config.rules.clone();
    let window_ms = config.window_ms;
    let lateness_ms = config.lateness_ms;
    let sustained = config.rules.sustained_windows;
    let trail_windows = config.rules.baselines.windows;
    let span = config.forecasts.windows;
    let forecasts = config.forecasts.clone();

    let (input, side, probe) = worker.dataflow::<Time, _, _>(|scope| {
        let (input, stats) = scope.new_collection::<WindowKey, Aggregate>();
        let (side_input, side) = scope.new_collection::<Side, isize>();
        let probe = ProbeHandle::new();

        // Only content and region rows feed derived collections; the rest skip the arrangement.
        let counted = stats
            .clone()
            .filter(|row| matches!(row.key, Key::Content { .. } | Key::Region(_)))
            .count_total();

        let content = counted.clone().flat_map(|(row, agg)| match row.key {
            Key::Content { content_id, title } => Some((row.window, (content_id, title, agg))),
            _ => None,
        });

        let top = content
            .clone()
            .map(|(window, (id, title, agg))| (window, (Reverse(agg.downloads), id, title)))
            .reduce(move |window, ranked, out| {
                // Values arrive sorted: most downloads first, ties by content id.
                for (rank, (value, count)) in ranked.iter().take(top_k).enumerate() {
                    debug_assert_eq!(*count, 1, "count_total yields each row once");
                    let (Reverse(downloads), id, title) = value;
                    let row = Derived::Top {
                        window: *window,
                        rank: rank as u32 + 1,
                        content_id: id.clone(),
                        title: title.clone(),
                        downloads: *downloads,
                    };
                    out.push((row, 1isize));
                }
            })
            .map(|(_window, row)| row);

        let unique = content
            .clone()
            .map(|(window, _)| window)
            .count()
            .map(|(window, count)| Derived::UniqueContent {
                window,
                count: count as i64,
            });

        // Which stream windows are settled (see `baseline::settled`).
        let settled_windows = counted
            .clone()
            .flat_map(|(row, _)| match row.key {
                Key::Region(_) => Some(((), row.window)),
                _ => None,
            })
            .reduce(move |_, windows, out| {
                let Some((newest, _)) = windows.last() else {
                    return;
                };
                let newest = **newest;
                for (window, _) in windows {
                    if !settled(**window, newest, window_ms, lateness_ms) {
                        break;
                    }
                    out.push((**window, 1isize));
                }
            })
            .map(|((), window)| window);

        // The sums of settled windows alone feed baselines and forecasts: the semijoin takes the
        // sums themselves (not `counted`'s rows, which churn with every batch), so a window's rows
        // reach them once it settles, and again only if late data change it.
        let settled_rows = stats
            .clone()
            .flat_map(|row| match row.key {
                Key::Region(_) | Key::Error { .. } | Key::Content { .. } => {
                    Some((row.window, row.key))
                }
                _ => None,
            })
            .semijoin(settled_windows.clone())
            .count_total();
        // Region rows (code `None`) and their error codes' rows.
        let regions = settled_rows
            .clone()
            .flat_map(|((window, key), agg)| match key {
                Key::Region(region) => Some((window, region, None, agg)),
                Key::Error { region, error_code } => Some((window, region, Some(error_code), agg)),
                _ => None,
            });

        // Each region's trail: its window (offset 0) and the `trail_windows` windows before, with
        // its error codes' rows.
        let judged = regions
            .flat_map(move |(window, region, code, agg)| {
                (0..=trail_windows).map(move |offset| {
                    let target = Window(window.0 + offset as i64 * window_ms);
                    ((target, region.clone()), (offset, code.clone(), agg))
                })
            })
            .reduce(|_, offered, out| {
                let rows = offered
                    .iter()
                    .map(|((offset, code, agg), _)| (*offset, code.as_deref(), agg));
                for baseline in baselines_of(rows) {
                    out.push((baseline, 1isize));
                }
            })
            .map(|((window, region), (code, baseline))| (window, (region, code, baseline)))
            .semijoin(settled_windows);
        let error_baselines = judged
            .clone()
            .flat_map(|(window, (region, code, baseline))| {
                code.map(|error_code| Derived::ErrorBaseline {
                    window,
                    region,
                    error_code,
                    baseline,
                })
            });
        let baselines = judged.flat_map(|(window, (region, code, baseline))| {
            code.is_none().then_some((window, region, baseline))
        });
        let judge = rules.clone();
        let baseline_alerts = baselines
            .clone()
            .flat_map(move |(window, region, baseline)| {
                judge
                    .judge(&baseline)
                    .into_iter()
                    .map(|(rule, severity)| Alert {
                        window,
                        region: region.clone(),
                        rule,
                        severity,
                        measure: baseline.observed,
                        baseline: Some(baseline),
                    })
                    .collect::<Vec<_>>()
            });
        let baselines = baselines.map(|(window, region, baseline)| Derived::Baseline {
            window,
            region,
            baseline,
        });

        // Forecasts: each settled content row is offered to the span's windows from its own on;
        // a title is forecast at a window where it had downloads.
        let rising = settled_rows
            .flat_map(|((window, key), agg)| match key {
                Key::Content { content_id, title } => Some((window, (content_id, title, agg))),
                _ => None,
            })
            .flat_map(move |(window, (id, title, agg))| {
                (0..span).map(move |offset| {
                    let target = Window(window.0 + offset as i64 * window_ms);
                    ((target, id.clone(), title.clone()), (offset, agg.downloads))
                })
            })
            .reduce(move |_, offered, out| {
                let mut history = vec![0i64; span as usize];
                for ((offset, downloads), _) in offered {
                    history[(span - 1 - offset) as usize] = *downloads;
                }
                if history[span as usize - 1] > 0 {
                    out.push((Forecast::of(history, &forecasts), 1isize));
                }
            })
            .map(|((window, id, title), forecast)| {
                (
                    window,
                    (Reverse(forecast.rising_milli), id, title, forecast),
                )
            })
            .reduce(move |window, ranked, out| {
                for (rank, ((_, id, title, forecast), _)) in ranked.iter().take(top_k).enumerate() {
                    let row = Derived::Rising {
                        window: *window,
                        rank: rank as u32 + 1,
                        content_id: id.clone(),
                        title: title.clone(),
                        forecast: forecast.clone(),
                    };
                    out.push((row, 1isize));
                }
            })
            .map(|(_window, row)| row);

        let alerts = counted.flat_map(move |(row, agg)| {
            let Key::Region(region) = row.key else {
                return Vec::new();
            };
            rules
                .evaluate(&agg)
                .into_iter()
                .map(|(rule, severity)| Alert {
                    window: row.window,
                    region: region.clone(),
                    rule,
                    severity,
                    measure: agg,
                    baseline: None,
                })
                .collect()
        });

        // SUSTAINED_ERROR_RATE: each high-error window vouches for itself and the next n-1 windows;
        // a window vouched for by all n positions ends a run of n.
        let runs = alerts
            .clone()
            .filter(|alert| alert.rule == Rule::HighErrorRate)
            .flat_map(move |alert| {
                (0..sustained).map(move |offset| {
                    let end = Window(alert.window.0 + offset as i64 * window_ms);
                    ((end, alert.region.clone()), (offset, alert.measure))
                })
            })
            .reduce(move |(window, region), offsets, out| {
                if offsets.len() == sustained as usize {
                    let mut measure = Aggregate::default();
                    for ((_, agg), _) in offsets {
                        differential_dataflow::difference::Semigroup::plus_equals(
                            &mut measure,
                            agg,
                        );
                    }
                    let alert = Alert {
                        window: *window,
                        region: region.clone(),
                        rule: Rule::SustainedErrorRate,
                        severity: Severity::Critical,
                        measure,
                        baseline: None,
                    };
                    out.push((alert, 1isize));
                }
            })
            .map(|(_, alert)| alert);

        let derived = top
            .concat(unique)
            .concat(alerts.map(Derived::Alert))
            .concat(runs.map(Derived::Alert))
            .concat(baseline_alerts.map(Derived::Alert))
            .concat(baselines)
            .concat(error_baselines)
            .concat(rising);

        let sink = output.clone();
        stats
            .inner
            .exchange(|_| 0)
            .as_collection()
            .inspect_batch(move |_, updates| {
                let mut sink = sink.borrow_mut();
                for (row, time, delta) in updates {
                    sink.push(Change::Stat {
                        row: row.clone(),
                        delta: *delta,
                        time: *time,
                    });
                }
            })
            .probe_with(&probe);
        let sink = output.clone();
        derived
            .inner
            .exchange(|_| 0)
            .as_collection()
            .inspect_batch(move |_, updates| {
                let mut sink = sink.borrow_mut();
                for (row, time, diff) in updates {
                    sink.push(Change::Derived {
                        row: row.clone(),
                        time: *time,
                        diff: *diff,
                    });
                }
            })
            .probe_with(&probe);

        let sink = output.clone();
        side.inner
            .exchange(|_| 0)
            .as_collection()
            .inspect_batch(move |_, updates| {
                let mut sink = sink.borrow_mut();
                for (row, time, diff) in updates {
                    sink.push(Change::Side {
                        row: row.clone(),
                        time: *time,
                        diff: *diff,
                    });
                }
            })
            .probe_with(&probe);

        (input, side_input, probe)
    });

    Dataflow {
        input,
        side,
        probe,
        output,
    }
}
