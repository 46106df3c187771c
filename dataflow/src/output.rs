//! What flows out of the dataflow, and the types it is made of.
//!
//! ```text
//!   graph (worker 0) ──Change──▶ driver ──Update { changes, frontier, watermark }──▶ caller's channel
//!                                                                                     ├─▶ View (API)
//!                                                                                     └─▶ sink (PostgreSQL)
//! ```
//!
//! Every worker's output is routed to worker 0, which gathers it as [`Change`]s: stat deltas, rows
//! of the derived collections ([`Derived`]: top-K, unique content, alerts, baselines, the rising
//! list) with ±1, and the side
//! records ([`Side`]: positions, dead letters, expired windows, [`Sample`]s) that travel with the
//! data. The driver sends them in [`Update`]s, together with how far they are complete. Two readers
//! consume them: [`crate::view::View`] (the in-memory state the HTTP API reads) and the PostgreSQL
//! sink in `serve` (which writes the same changes, and stores positions with them); the
//! [`crate::oracle`] produces [`Derived`] rows too, for tests to compare.

use serde::{Deserialize, Serialize};
use streampulse_ingest::DeadLetter;

use crate::aggregate::{Aggregate, WindowKey};
use crate::baseline::Baseline;
use crate::forecast::Forecast;
use crate::rules::Alert;
use crate::window::{Time, Window};

/// A row of a derived collection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Derived {
    /// Rank `rank` (from 1) of the window's trending list.
    Top {
        window: Window,
        rank: u32,
        content_id: String,
        title: String,
        downloads: i64,
    },
    /// How many distinct titles were downloaded in the window.
    UniqueContent {
        window: Window,
        count: i64,
    },
    Alert(Alert),
    /// A region's trailing baseline in a settled window (see [`crate::baseline`]).
    Baseline {
        window: Window,
        region: String,
        baseline: Baseline,
    },
    /// An error code's baseline in a region and settled window: its share of the region's
    /// downloads (`failed` counts that code's failures; see [`crate::baseline::baselines_of`]).
    ErrorBaseline {
        window: Window,
        region: String,
        error_code: String,
        baseline: Baseline,
    },
    /// Rank `rank` (from 1) of the window's "rising" list: titles by their forecast's rising score,
    /// made at the end of the (settled) window for the next one (see [`crate::forecast`]).
    Rising {
        window: Window,
        rank: u32,
        content_id: String,
        title: String,
        forecast: Forecast,
    },
}

impl Derived {
    pub fn window(&self) -> Window {
        match self {
            Derived::Top { window, .. }
            | Derived::UniqueContent { window, .. }
            | Derived::Baseline { window, .. }
            | Derived::ErrorBaseline { window, .. }
            | Derived::Rising { window, .. } => *window,
            Derived::Alert(alert) => alert.window,
        }
    }
}

/// What the sources report beside the data, carried through the dataflow so that it reaches the sink
/// at the same time as the data it belongs with.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side {
    /// After this time's records, `partition` resumes at `next_offset` and its newest timestamp is
    /// `max_ts` (positions only grow, so the latest is the largest). `record_ms` is the Kafka
    /// timestamp of the newest record read from it (when the source has one): how old the data is
    /// when it reaches the view and the sink, which `/metrics` shows as latency histograms.
    Position {
        partition: u32,
        next_offset: i64,
        max_ts: i64,
        record_ms: Option<i64>,
    },
    /// An undecodable record.
    DeadLetter(DeadLetter),
    /// Sums for a window already retracted from memory (past retention; only a partition that was
    /// idle can deliver them): the sink adds them to the stored row.
    Stat { row: WindowKey, agg: Aggregate },
    /// A worker let the window go (past retention): its retractions share this record's epoch,
    /// and the stored rows of the window stay as they are.
    Expired(Window),
    /// A sampled raw event, for debugging (the `event_log` table).
    Sample(Sample),
}

/// The fields of a raw event kept in the debugging sample.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Sample {
    pub partition: u32,
    pub offset: i64,
    pub event_id: String,
    pub timestamp: i64,
    pub content_id: String,
    pub region: String,
    pub device: String,
    pub status: String,
    pub error_code: Option<String>,
}

/// One output change of the dataflow, at a time (a watermark).
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// A row's sums changed by `delta`.
    Stat {
        row: WindowKey,
        delta: Aggregate,
        time: Time,
    },
    /// A derived row appeared (`diff` 1) or disappeared (`diff` -1).
    Derived {
        row: Derived,
        time: Time,
        diff: isize,
    },
    /// A side record arrived `diff` times (side records are only ever added).
    Side { row: Side, time: Time, diff: isize },
}

impl Change {
    /// The epoch of the change.
    pub fn time(&self) -> Time {
        match self {
            Change::Stat { time, .. }
            | Change::Derived { time, .. }
            | Change::Side { time, .. } => *time,
        }
    }
}

/// What worker 0 reports: new changes, the dataflow's frontier (the epoch before which every change
/// has been reported; `None` once every input is closed and everything is final), and the global
/// watermark the output is complete up to (windows ending at or before it are final).
#[derive(Clone, Debug)]
pub struct Update {
    pub changes: Vec<Change>,
    pub frontier: Option<Time>,
    pub watermark: Option<i64>,
}
