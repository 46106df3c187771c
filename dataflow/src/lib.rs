//! The timely/differential computation at the heart of StreamPulse.
//!
//! ```text
//!  Records ─▶ Batcher ─────────────▶ build() dataflow ─────────────────▶ Update ─▶ View, sink
//!   (partition,  lateness per        stats: (Window, Key) with an            (stat deltas,
//!    offset,     partition, then     Aggregate as the diff                    derived rows,
//!    event)      pre-combined sums   derived: top-K, unique content,          side records,
//!                one epoch per batch alerts, as ±1 rows                       frontier,
//!                                    side: positions, dead letters, samples   watermark)
//! ```
//!
//! State restored from PostgreSQL enters at epoch 0 ([`RESTORE_TIME`]); new data start after it.
//!
//! - [`window`] owns time: [`Window`], processing epochs (the timely time), [`Clock`] (per-partition
//!   lateness, idleness and the watermark).
//! - [`marks`] owns the global watermark: what each worker claims, and what the output is complete
//!   up to.
//! - [`aggregate`] owns what is summed: [`Key`], [`WindowKey`] and [`Aggregate`], differential's diff type.
//! - [`batch`] turns a batch of records into pre-combined `(WindowKey, Aggregate)` updates and keeps the
//!   ledger that retention retracts.
//! - [`rules`] owns the alert rules and their thresholds.
//! - [`build`] builds the dataflow; [`driver`] drives it (feeding, stepping, retention, output).
//! - [`view`] is the current state assembled from the output changes, which the API reads.
//! - [`oracle`] recomputes every collection from scratch, for tests to compare against.
//! - [`config`] gathers the knobs (window, lateness, retention, idle timeout, top-K, rules).

pub mod aggregate;
pub mod batch;
pub mod build;
pub mod config;
pub mod driver;
pub mod marks;
pub mod oracle;
pub mod rules;
pub mod view;
pub mod window;

pub use aggregate::{Aggregate, Key, WindowKey};
pub use build::{Change, Derived, Side};
pub use config::Config;
pub use driver::{execute, run_worker, Counters, Limits, Resume, Update};
pub use marks::Mark;
pub use view::{View, WindowState};

pub use rules::{Alert, Rule, Rules, Severity};

pub use window::{epoch_now, Clock, Time, Window, RESTORE_TIME};
