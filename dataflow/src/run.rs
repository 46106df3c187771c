//! What a run needs from its caller, in two parts: the [`Plan`] (what to compute, how fast, from
//! where) and the [`Caller`] (where the output goes, what stops the run, what it counts).
//!
//! ```text
//!   Plan   { config: Config, limits: Limits, resume: Resume }      plain data, the same for every worker
//!   Caller { output: Sender<Update>, stop: flag, counters: Counters }   shared with the caller while it runs
//!      └──▶ driver::execute(timely config, plan, caller, make_source) ──▶ Ok(()) | Error
//! ```
//!
//! A plan is plain data a caller can keep and run again; a caller's side belongs to one run (its
//! channel, stop flag and counters).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::aggregate::{Aggregate, WindowKey};
use crate::config::Config;
use crate::output::Update;

/// What a run computes ([`Config`]), how each worker paces itself ([`Limits`]) and where it starts
/// ([`Resume`]).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub config: Config,
    pub limits: Limits,
    pub resume: Resume,
}

/// The caller's side of a running dataflow.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Where worker 0 sends its [`Update`]s (`None`: nobody reads the output).
    pub output: Option<Sender<Update>>,
    /// Set it to stop reading: the workers close their inputs, finish what they fed, and return.
    pub stop: Arc<AtomicBool>,
    /// What the workers count as they go.
    pub counters: Arc<Counters>,
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

/// How far behind the wall clock (ms) a worker's newest records must be for it to count as
/// catching up (see [`Limits::catch_up_batch_max`]).
pub const CATCH_UP_LAG_MS: i64 = 2_000;

/// Limits of one worker loop.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most records fed as one batch (one input time) by a worker at the head of its partitions.
    pub batch_max: usize,
    /// The same for a worker catching up: its partitions' newest records (by Kafka timestamp)
    /// more than [`CATCH_UP_LAG_MS`] old. Larger batches cost less per event; near the head they
    /// would hold the view back by the time one takes.
    pub catch_up_batch_max: usize,
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
            catch_up_batch_max: 100_000,
            max_wait: Duration::from_secs(1),
            max_rate: None,
            sample_every: None,
        }
    }
}

/// State stored by a previous run, to continue from exactly where its output ends.
#[derive(Clone, Debug, Default)]
pub struct Resume {
    /// Stat rows of the windows still in retention, fed once (by worker 0) at
    /// [`RESTORE_TIME`](crate::window::RESTORE_TIME).
    pub rows: Vec<(WindowKey, Aggregate)>,
    /// Newest timestamp per partition, so lateness is judged as if the run had never stopped.
    pub max_ts: BTreeMap<u32, i64>,
    /// The stored watermark: windows ending at or before it were already reported final.
    pub watermark_ms: Option<i64>,
}
