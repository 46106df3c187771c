//! The sink's pure half: from the dataflow's changes of completed times to one transaction's worth
//! of consolidated rows ([`Batch`]). No SQL here, so it is tested without a database.
//!
//! ```text
//!   Vec<Change> (times < frontier) ──consolidate──▶ Batch { stats, derived, positions, dead letters,
//!                                                           samples, revised windows, watermark }
//! ```
//!
//! What is never written:
//! - state restored at start-up (time 0): the tables already hold it, and writing its derived rows
//!   again, consolidated with a later retraction, would cancel a delete;
//! - retractions that only free memory: a stat row is only ever added to, so a negative stat delta is
//!   always retention letting a window go (the driver never feeds data and a retraction of the same
//!   window at one time); derived rows that disappear because their window left memory stay stored.

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::difference::Semigroup;
use streampulse_dataflow::build::Sample;
use streampulse_dataflow::view::is_revision;
use streampulse_dataflow::{
    watermark_of, Aggregate, Change, Derived, Side, Time, Window, WindowKey, RESTORE_TIME,
};
use streampulse_ingest::DeadLetter;

/// One transaction's worth of consolidated changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub stats: BTreeMap<WindowKey, Aggregate>,
    pub derived: BTreeMap<Derived, isize>,
    /// Per partition: the next offset to read and the newest timestamp seen.
    pub positions: BTreeMap<u32, (i64, i64)>,
    pub dead: Vec<DeadLetter>,
    pub samples: Vec<Sample>,
    /// Windows whose rows changed after they had been reported final.
    pub revised: BTreeSet<Window>,
    /// The frontier's watermark, when the input is still open.
    pub watermark: Option<i64>,
}

impl Batch {
    /// Whether there is nothing to write besides the watermark.
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty()
            && self.derived.is_empty()
            && self.positions.is_empty()
            && self.dead.is_empty()
            && self.samples.is_empty()
    }

    /// The batch cut into one piece per row (positions, revisions and the watermark stay behind), so
    /// that a row the database refuses can be told apart from the rest.
    pub fn rows(&self) -> Vec<Batch> {
        let mut pieces = Vec::new();
        for (row, agg) in &self.stats {
            let mut piece = Batch::default();
            piece.stats.insert(row.clone(), *agg);
            pieces.push(piece);
        }
        for (row, diff) in &self.derived {
            let mut piece = Batch::default();
            piece.derived.insert(row.clone(), *diff);
            pieces.push(piece);
        }
        for letter in &self.dead {
            pieces.push(Batch {
                dead: vec![letter.clone()],
                ..Batch::default()
            });
        }
        for sample in &self.samples {
            pieces.push(Batch {
                samples: vec![sample.clone()],
                ..Batch::default()
            });
        }
        pieces
    }

    /// The batch's bookkeeping alone: positions, revisions and the watermark.
    pub fn progress(&self) -> Batch {
        Batch {
            positions: self.positions.clone(),
            revised: self.revised.clone(),
            watermark: self.watermark,
            ..Batch::default()
        }
    }

    /// A one-row piece as JSON, for `dead_letters.raw` when the database refuses it.
    pub fn describe(&self) -> String {
        let value = if let Some((row, agg)) = self.stats.iter().next() {
            serde_json::json!({ "stat": row, "sums": agg })
        } else if let Some((row, diff)) = self.derived.iter().next() {
            serde_json::json!({ "derived": row, "diff": diff })
        } else if let Some(letter) = self.dead.first() {
            serde_json::json!({ "dead_letter": { "partition": letter.partition, "offset": letter.offset, "reason": letter.reason } })
        } else if let Some(sample) = self.samples.first() {
            serde_json::json!({ "sample": sample })
        } else {
            serde_json::json!({})
        };
        value.to_string()
    }
}

/// Whether a change at `time` to `window` is retention letting the window go.
fn is_retention(window: Window, time: Time, window_ms: i64, retain_ms: i64) -> bool {
    window.end(window_ms) + retain_ms <= watermark_of(time)
}

/// Consolidates `changes` (all at times before `upto`) into one batch.
pub fn consolidate(
    changes: Vec<Change>,
    upto: Option<Time>,
    window_ms: i64,
    retain_ms: i64,
) -> Batch {
    let mut batch = Batch {
        watermark: upto.map(watermark_of),
        ..Batch::default()
    };
    for change in changes {
        match change {
            Change::Stat { time, .. } | Change::Derived { time, .. } if time == RESTORE_TIME => {}
            Change::Stat { delta, .. } if delta.downloads < 0 => {}
            Change::Stat { row, delta, time } => {
                if is_revision(&row, &delta, time, window_ms) {
                    batch.revised.insert(row.window);
                }
                batch.stats.entry(row).or_default().plus_equals(&delta);
            }
            Change::Derived { row, time, diff }
                if diff < 0 && is_retention(row.window(), time, window_ms, retain_ms) => {}
            Change::Derived { row, diff, .. } => *batch.derived.entry(row).or_default() += diff,
            Change::Side { row, diff, .. } => match row {
                Side::Position {
                    partition,
                    next_offset,
                    max_ts,
                } => {
                    let slot = batch
                        .positions
                        .entry(partition)
                        .or_insert((next_offset, max_ts));
                    *slot = (slot.0.max(next_offset), slot.1.max(max_ts));
                }
                Side::DeadLetter(letter) => batch.dead.push(letter),
                Side::Sample(sample) => batch.samples.push(sample),
                Side::Stat { row, agg } => {
                    // Sums for a window already out of memory: added to the stored row as they are.
                    let sum = batch.stats.entry(row.clone()).or_default();
                    for _ in 0..diff.max(0) {
                        sum.plus_equals(&agg);
                    }
                    batch.revised.insert(row.window);
                }
            },
        }
    }
    batch.stats.retain(|_, agg| *agg != Aggregate::default());
    batch.derived.retain(|_, diff| *diff != 0);
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use streampulse_dataflow::{time_of, Key};

    const W: i64 = 60_000;
    const RETAIN: i64 = 10 * W;

    fn row(window: i64, key: Key) -> WindowKey {
        WindowKey {
            window: Window(window),
            key,
        }
    }

    fn sums(downloads: i64) -> Aggregate {
        Aggregate {
            downloads,
            successful: downloads,
            ..Aggregate::default()
        }
    }

    fn stat(window: i64, key: Key, downloads: i64, watermark: i64) -> Change {
        Change::Stat {
            row: row(window, key),
            delta: sums(downloads),
            time: time_of(watermark),
        }
    }

    #[test]
    fn deltas_add_up_and_retractions_are_dropped() {
        let changes = vec![
            stat(0, Key::Total, 3, 10_000),
            stat(0, Key::Total, 2, 20_000),
            // Retention letting window 0 go, much later: not a change to the stored row.
            stat(0, Key::Total, -5, 20 * W),
            stat(W, Key::Region("EU".into()), 1, 20_000),
        ];
        let batch = consolidate(changes, Some(time_of(30_000)), W, RETAIN);
        assert_eq!(batch.stats[&row(0, Key::Total)], sums(5));
        assert_eq!(batch.stats.len(), 2);
        assert_eq!(batch.watermark, Some(30_000));
        assert!(batch.revised.is_empty());
    }

    #[test]
    fn restored_state_is_not_written_again() {
        let changes = vec![
            Change::Stat {
                row: row(0, Key::Total),
                delta: sums(7),
                time: RESTORE_TIME,
            },
            Change::Derived {
                row: Derived::UniqueContent {
                    window: Window(0),
                    count: 3,
                },
                time: RESTORE_TIME,
                diff: 1,
            },
        ];
        assert!(consolidate(changes, None, W, RETAIN).is_empty());
    }

    #[test]
    fn events_for_a_final_window_revise_it() {
        // Fed at watermark 2W into window [0, W): the window was already final.
        let changes = vec![
            stat(0, Key::Total, 4, 2 * W),
            // A late count is not a revision of the data.
            stat(W, Key::Late { partition: 1 }, 1, 3 * W),
            Change::Side {
                row: Side::Stat {
                    row: row(-30 * W, Key::Total),
                    agg: sums(2),
                },
                time: time_of(3 * W),
                diff: 2,
            },
        ];
        let batch = consolidate(changes, Some(time_of(4 * W)), W, RETAIN);
        assert_eq!(batch.revised, BTreeSet::from([Window(0), Window(-30 * W)]));
        assert_eq!(batch.stats[&row(-30 * W, Key::Total)], sums(4));
    }

    #[test]
    fn derived_rows_leaving_memory_stay_stored() {
        let top = |downloads| Derived::Top {
            window: Window(0),
            rank: 1,
            content_id: "c".into(),
            title: "t".into(),
            downloads,
        };
        let changes = vec![
            // A real change of the top list: the old version goes, the new one comes.
            Change::Derived {
                row: top(5),
                time: time_of(30_000),
                diff: -1,
            },
            Change::Derived {
                row: top(6),
                time: time_of(30_000),
                diff: 1,
            },
            // Retention: the window leaves memory, its row stays in the table.
            Change::Derived {
                row: top(6),
                time: time_of(20 * W),
                diff: -1,
            },
        ];
        let batch = consolidate(changes, Some(time_of(21 * W)), W, RETAIN);
        assert_eq!(batch.derived, BTreeMap::from([(top(5), -1), (top(6), 1)]));
    }

    #[test]
    fn positions_keep_the_furthest() {
        let position = |next_offset, max_ts| Change::Side {
            row: Side::Position {
                partition: 2,
                next_offset,
                max_ts,
            },
            time: time_of(1_000),
            diff: 1,
        };
        let batch = consolidate(vec![position(10, 500), position(12, 400)], None, W, RETAIN);
        assert_eq!(batch.positions[&2], (12, 500));
        assert_eq!(batch.watermark, None);
    }

    #[test]
    fn rows_cut_one_piece_per_row() {
        let batch = consolidate(
            vec![stat(0, Key::Total, 1, 0), stat(W, Key::Total, 1, 0)],
            Some(time_of(1)),
            W,
            RETAIN,
        );
        let pieces = batch.rows();
        assert_eq!(pieces.len(), 2);
        assert!(pieces
            .iter()
            .all(|p| p.stats.len() == 1 && p.watermark.is_none()));
        assert!(pieces[0].describe().contains("\"stat\""));
        assert_eq!(batch.progress().watermark, Some(1));
    }
}
