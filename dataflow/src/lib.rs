//! The timely/differential computation at the heart of StreamPulse.
//!
//! ```text
//!  Records ─▶ Batcher ─────────────▶ graph::build() dataflow ──────────▶ Update ─▶ View, sink
//!   (partition,  lateness per        stats: (Window, Key) with an            (stat deltas,
//!    offset,     partition, then     Aggregate as the diff                    derived rows,
//!    event)      pre-combined sums   derived: top-K, unique content,          side records,
//!                one epoch per batch alerts, as ±1 rows                       frontier,
//!                                    side: positions, dead letters, samples   watermark)
//! ```
//!
//! State restored from PostgreSQL enters at epoch 0 ([`RESTORE_TIME`]); new data start after it.
//!
//! Where each job lives:
//!
//! - Running it. [`execute`] (in [`driver`]) runs the dataflow on timely workers and blocks; it takes
//!   a [`Plan`] and a [`Caller`] (in [`run`]): what to compute, how fast and from where, and where the
//!   output goes, what stops the run and what it counts. Failures are an [`Error`] (in [`error`]).
//! - Settings. [`config`] gathers the knobs of the computation (window, lateness, retention, idle
//!   timeout, top-K, rules); [`run`] the worker's [`Limits`] and the [`Resume`] state.
//! - Time. [`window`] owns it: [`Window`], processing epochs (the timely [`Time`]), [`Clock`]
//!   (per-partition lateness, idleness and the watermark). [`marks`] owns the global watermark: what
//!   each worker claims, and what the output is complete up to.
//! - What is summed. [`aggregate`]: [`Key`], [`WindowKey`] and [`Aggregate`], differential's diff
//!   type. [`batch`] turns a batch of records into pre-combined `(WindowKey, Aggregate)` updates and
//!   keeps the ledger that retention retracts.
//! - Domain rules. [`rules`]: the alert rules and their thresholds ([`Rules::threshold`]), the
//!   stable alert id ([`Alert::id`]), the region health levels ([`Health`]). [`baseline`]: each
//!   region's trailing [`Baseline`], its scores and the baseline rules' knobs. [`forecast`]: the
//!   per-title [`Forecast`] and rising score behind the "rising" trending list.
//! - The computation. [`graph`] builds the dataflow graph; [`driver`] drives it (feeding, stepping,
//!   retention, output).
//! - What comes out. [`output`]: [`Update`]s of [`Change`]s to stats, [`Derived`] rows and [`Side`]
//!   records. [`view`] is the current state assembled from them, which the API reads.
//! - Checking. [`oracle`] recomputes every collection from scratch, for tests to compare against.

pub mod aggregate;
pub mod baseline;
pub mod batch;
pub mod config;
pub mod driver;
pub mod error;
pub mod forecast;
pub mod graph;
pub mod marks;
pub mod oracle;
pub mod output;
pub mod rules;
pub mod run;
pub mod view;
pub mod window;

pub use aggregate::{Aggregate, Key, WindowKey};
pub use baseline::{Baseline, Baselines};
pub use config::Config;
pub use driver::{execute, run_worker};
pub use error::Error;
pub use forecast::{Forecast, Forecasts};
pub use marks::Mark;
pub use output::{Change, Derived, Sample, Side, Update};
pub use rules::{Alert, Health, Rule, Rules, Severity};
pub use run::{Caller, Counters, Limits, Plan, Resume};
pub use view::{View, WindowState};
pub use window::{epoch_now, Clock, Time, Window, RESTORE_TIME};
