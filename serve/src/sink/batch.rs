//! The sink's pure half: from the dataflow's changes of completed times to one transaction's worth
//! of consolidated rows ([`Batch`]). No SQL here, so it is tested without a database.
//!
//! ```text
//!   Vec<Change> (times < frontier) ──consolidate──▶ Batch { stats, derived, positions, dead letters,
//!                                                           samples, revised windows, watermark }
//! ```
//!
//! What is never written:
//! - state restored at start-up (epoch 0): the tables already hold it, and writing its derived rows
//!   again, consolidated with a later retraction, would cancel a delete;
//! - retractions that only free memory: a stat row is only ever added to, so a negative stat delta is
//!   always retention letting a window go (the driver never feeds a window after retracting it);
//! - derived changes of a retired window (one a worker let go, `Side::Expired`): as its workers let
//!   go one by one, top-K and alerts would be recomputed from what is left. A window past retention
//!   keeps the derived rows it had; its stat rows still take events (`Side::Stat`).
//!
//! A window whose rows change after a commit reported it final is *revised* (`Batch::revised`).

use std::collections::{BTreeMap, BTreeSet};

use differential_dataflow::difference::Semigroup;
use streampulse_dataflow::view::is_revision;
use streampulse_dataflow::{
    Aggregate, Change, Derived, Sample, Side, Time, Window, WindowKey, RESTORE_TIME,
};
use streampulse_ingest::DeadLetter;

/// One transaction's worth of consolidated changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub stats: BTreeMap<WindowKey, Aggregate>,
    pub derived: BTreeMap<Derived, isize>,
    /// Per partition: the next offset to read and the newest timestamp seen.
    pub positions: BTreeMap<u32, (i64, i64)>,
    /// Per partition, the Kafka timestamp of the newest record the batch covers (for latency).
    pub record_times: BTreeMap<u32, i64>,
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

/// What the sink remembers between batches to consolidate the next one.
#[derive(Debug, Default)]
pub struct Memory {
    /// The watermark of the last commit: windows ending at or before it were reported final.
    pub committed: Option<i64>,
    /// Windows a worker has let go of (past retention): their derived rows are no longer changed.
    retired: BTreeSet<Window>,
}

impl Memory {
    pub fn new(committed: Option<i64>) -> Memory {
        Memory {
            committed,
            retired: BTreeSet::new(),
        }
    }

    /// Forgets retired windows far behind the watermark (no change can name them any more).
    fn prune(&mut self, watermark: Option<i64>, window_ms: i64, retain_ms: i64) {
        if let Some(w) = watermark {
            let horizon = w - 2 * retain_ms - window_ms;
            self.retired = self.retired.split_off(&Window(horizon));
        }
    }
}

/// Consolidates `changes` (in epoch order, all before the frontier) into one batch whose
/// watermark is `watermark`.
pub fn consolidate(
    changes: Vec<Change>,
    watermark: Option<i64>,
    memory: &mut Memory,
    window_ms: i64,
    retain_ms: i64,
) -> Batch {
    let mut batch = Batch {
        watermark,
        ..Batch::default()
    };
    // A window retired at an epoch takes no derived change from that epoch on.
    let mut epochs: Vec<(Time, Vec<Change>)> = Vec::new();
    for change in changes {
        match epochs.last_mut() {
            Some((time, group)) if *time == change.time() => group.push(change),
            _ => epochs.push((change.time(), vec![change])),
        }
    }
    for (_, group) in epochs {
        for change in &group {
            if let Change::Side {
                row: Side::Expired(window),
                ..
            } = change
            {
                memory.retired.insert(*window);
            }
        }
        for change in group {
            match change {
                Change::Stat { time, .. } | Change::Derived { time, .. }
                    if time == RESTORE_TIME => {}
                Change::Stat { delta, .. } if delta.downloads < 0 => {}
                Change::Stat { row, delta, time } => {
                    if is_revision(&row, &delta, time, memory.committed, window_ms) {
                        batch.revised.insert(row.window);
                    }
                    batch.stats.entry(row).or_default().plus_equals(&delta);
                }
                Change::Derived { row, .. } if memory.retired.contains(&row.window()) => {}
                Change::Derived { row, diff, .. } => *batch.derived.entry(row).or_default() += diff,
                Change::Side { row, diff, .. } => match row {
                    Side::Position {
                        partition,
                        next_offset,
                        max_ts,
                        record_ms,
                    } => {
                        let slot = batch
                            .positions
                            .entry(partition)
                            .or_insert((next_offset, max_ts));
                        *slot = (slot.0.max(next_offset), slot.1.max(max_ts));
                        if let Some(ms) = record_ms {
                            let newest = batch.record_times.entry(partition).or_insert(ms);
                            *newest = (*newest).max(ms);
                        }
                    }
                    Side::DeadLetter(letter) => batch.dead.push(letter),
                    Side::Sample(sample) => batch.samples.push(sample),
                    Side::Stat { row, agg } => {
                        // Sums for a window already out of memory: added to the stored row.
                        let sum = batch.stats.entry(row.clone()).or_default();
                        for _ in 0..diff.max(0) {
                            sum.plus_equals(&agg);
                        }
                        batch.revised.insert(row.window);
                    }
                    Side::Expired(_) => {}
                },
            }
        }
    }
    batch.stats.retain(|_, agg| *agg != Aggregate::default());
    batch.derived.retain(|_, diff| *diff != 0);
    memory.prune(watermark, window_ms, retain_ms);
    batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use streampulse_dataflow::Key;

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

    fn stat(window: i64, key: Key, downloads: i64, epoch: Time) -> Change {
        Change::Stat {
            row: row(window, key),
            delta: sums(downloads),
            time: epoch,
        }
    }

    fn top(window: i64, downloads: i64) -> Derived {
        Derived::Top {
            window: Window(window),
            rank: 1,
            content_id: "c".into(),
            title: "t".into(),
            downloads,
        }
    }

    fn derived(row: Derived, epoch: Time, diff: isize) -> Change {
        Change::Derived {
            row,
            time: epoch,
            diff,
        }
    }

    fn side(row: Side, epoch: Time) -> Change {
        Change::Side {
            row,
            time: epoch,
            diff: 1,
        }
    }

    #[test]
    fn deltas_add_up_and_retractions_are_dropped() {
        let changes = vec![
            stat(0, Key::Total, 3, 1),
            stat(0, Key::Total, 2, 2),
            stat(W, Key::Region("EU".into()), 1, 2),
            // Retention letting window 0 go: not a change to the stored row.
            stat(0, Key::Total, -5, 9),
        ];
        let batch = consolidate(changes, Some(30_000), &mut Memory::default(), W, RETAIN);
        assert_eq!(batch.stats[&row(0, Key::Total)], sums(5));
        assert_eq!(batch.stats.len(), 2);
        assert_eq!(batch.watermark, Some(30_000));
        assert!(batch.revised.is_empty());
    }

    #[test]
    fn restored_state_is_not_written_again() {
        let changes = vec![
            stat(0, Key::Total, 7, RESTORE_TIME),
            derived(
                Derived::UniqueContent {
                    window: Window(0),
                    count: 3,
                },
                RESTORE_TIME,
                1,
            ),
        ];
        assert!(consolidate(changes, None, &mut Memory::default(), W, RETAIN).is_empty());
    }

    #[test]
    fn events_for_a_final_window_revise_it() {
        // The last commit reported windows up to 2W final.
        let mut memory = Memory::new(Some(2 * W));
        let changes = vec![
            stat(0, Key::Total, 4, 5),
            // A late count is not a revision of the data; an open window is not revised.
            stat(W, Key::Late { partition: 1 }, 1, 5),
            stat(3 * W, Key::Total, 1, 5),
            Change::Side {
                row: Side::Stat {
                    row: row(-30 * W, Key::Total),
                    agg: sums(2),
                },
                time: 6,
                diff: 2,
            },
        ];
        let batch = consolidate(changes, Some(4 * W), &mut memory, W, RETAIN);
        assert_eq!(batch.revised, BTreeSet::from([Window(0), Window(-30 * W)]));
        assert_eq!(batch.stats[&row(-30 * W, Key::Total)], sums(4));
    }

    #[test]
    fn a_retired_window_keeps_its_derived_rows() {
        let mut memory = Memory::default();
        let changes = vec![
            // A real change of the top list before retirement: the old version goes.
            derived(top(0, 5), 3, -1),
            derived(top(0, 6), 3, 1),
            // Worker A lets window 0 go at epoch 7: what its retraction leaves is not written.
            side(Side::Expired(Window(0)), 7),
            derived(top(0, 6), 7, -1),
            derived(top(0, 2), 7, 1),
        ];
        let batch = consolidate(changes, Some(20 * W), &mut memory, W, RETAIN);
        assert_eq!(
            batch.derived,
            BTreeMap::from([(top(0, 5), -1), (top(0, 6), 1)])
        );
        // Worker B lets it go in a later batch: still nothing.
        let later = vec![derived(top(0, 2), 9, -1)];
        assert!(consolidate(later, Some(20 * W), &mut memory, W, RETAIN)
            .derived
            .is_empty());
    }

    #[test]
    fn positions_keep_the_furthest() {
        let position = |next_offset, max_ts| {
            side(
                Side::Position {
                    partition: 2,
                    next_offset,
                    max_ts,
                    record_ms: None,
                },
                4,
            )
        };
        let batch = consolidate(
            vec![position(10, 500), position(12, 400)],
            None,
            &mut Memory::default(),
            W,
            RETAIN,
        );
        assert_eq!(batch.positions[&2], (12, 500));
        assert_eq!(batch.watermark, None);
    }

    #[test]
    fn rows_cut_one_piece_per_row() {
        let batch = consolidate(
            vec![stat(0, Key::Total, 1, 1), stat(W, Key::Total, 1, 1)],
            Some(1),
            &mut Memory::default(),
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
