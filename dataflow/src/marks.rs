//! The global watermark: what every worker claims about its partitions, and the minimum of those
//! claims that the output is complete up to.
//!
//! ```text
//!   worker i ──Mark { epoch, watermark, idle }──broadcast (build_marks)──▶ every worker's Marks
//!   Marks + the dataflow's frontier ──final_watermark──▶ windows ending at or before it are final
//! ```
//!
//! A mark says: "everything I fed for events I had read when I sent this is at epochs before
//! `epoch`, and my active partitions' watermark is `watermark`" (or: all my partitions are idle).
//! Once the frontier has passed a worker's mark, its data up to that watermark is in the output; the
//! global watermark is the minimum over the workers that are not idle, of their latest such mark.
//! Marks travel on their own dataflow, so they may arrive late, but never early: a late mark only
//! makes the global watermark lag, never overstate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::window::Time;

/// What one worker tells every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub worker: usize,
    /// Everything the worker fed before this mark is at epochs before this one.
    pub epoch: Time,
    /// The watermark of the worker's active partitions (`None`: one has not delivered data yet).
    pub watermark: Option<i64>,
    /// Every partition of the worker is idle (or its input is closed): it holds nothing back.
    pub idle: bool,
}

/// The marks a worker has received, per sender, and the global watermark they support.
#[derive(Debug)]
pub struct Marks {
    peers: usize,
    /// Per worker, its marks in epoch order: the latest one the frontier has passed, then newer.
    received: BTreeMap<usize, Vec<Mark>>,
    /// The global watermark so far (it never goes back).
    watermark: Option<i64>,
}

impl Marks {
    pub fn new(peers: usize) -> Marks {
        Marks {
            peers,
            received: BTreeMap::new(),
            watermark: None,
        }
    }

    pub fn receive(&mut self, mark: Mark) {
        let marks = self.received.entry(mark.worker).or_default();
        let at = marks.partition_point(|m| m.epoch <= mark.epoch);
        marks.insert(at, mark);
    }

    /// The global watermark once the dataflow's frontier is `frontier`: the minimum, over workers
    /// that are not idle, of the watermark of their latest mark the frontier has passed. It holds
    /// still while any worker has not said anything (or cannot say yet), and while all are idle.
    pub fn final_watermark(&mut self, frontier: Time) -> Option<i64> {
        let mut lowest: Option<i64> = None;
        let mut active = false;
        for worker in 0..self.peers {
            let Some(marks) = self.received.get_mut(&worker) else {
                return self.watermark;
            };
            let passed = marks.partition_point(|m| m.epoch <= frontier);
            if passed == 0 {
                return self.watermark;
            }
            marks.drain(..passed - 1); // older passed marks are superseded
            let mark = marks[0];
            if mark.idle {
                continue;
            }
            let Some(w) = mark.watermark else {
                return self.watermark;
            };
            active = true;
            lowest = Some(lowest.map_or(w, |l| l.min(w)));
        }
        if active {
            self.watermark = self.watermark.max(lowest);
        }
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(worker: usize, epoch: Time, watermark: Option<i64>, idle: bool) -> Mark {
        Mark {
            worker,
            epoch,
            watermark,
            idle,
        }
    }

    #[test]
    fn the_minimum_of_what_the_frontier_has_passed() {
        let mut marks = Marks::new(2);
        marks.receive(mark(0, 10, Some(1_000), false));
        assert_eq!(
            marks.final_watermark(100),
            None,
            "worker 1 has said nothing"
        );
        marks.receive(mark(1, 12, Some(5_000), false));
        assert_eq!(
            marks.final_watermark(11),
            None,
            "worker 1's data is not out yet"
        );
        assert_eq!(marks.final_watermark(12), Some(1_000));
        marks.receive(mark(0, 20, Some(9_000), false));
        assert_eq!(marks.final_watermark(20), Some(5_000));
    }

    #[test]
    fn idle_workers_hold_nothing_and_it_never_goes_back() {
        let mut marks = Marks::new(2);
        marks.receive(mark(0, 5, Some(7_000), false));
        marks.receive(mark(1, 5, Some(2_000), false));
        assert_eq!(marks.final_watermark(6), Some(2_000));
        marks.receive(mark(1, 8, None, true));
        assert_eq!(marks.final_watermark(9), Some(7_000));
        // Worker 1 speaks again with old data: the watermark stays where it was.
        marks.receive(mark(1, 12, Some(3_000), false));
        assert_eq!(marks.final_watermark(13), Some(7_000));
        // All idle: it holds still.
        marks.receive(mark(0, 14, None, true));
        marks.receive(mark(1, 14, None, true));
        assert_eq!(marks.final_watermark(15), Some(7_000));
    }

    #[test]
    fn a_partition_without_data_holds_it() {
        let mut marks = Marks::new(1);
        marks.receive(mark(0, 3, None, false));
        assert_eq!(marks.final_watermark(4), None);
    }
}
