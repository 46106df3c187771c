//! Two clocks: event time (windows, and the watermark that says which of them are complete) and
//! processing time (the timely [`Time`] of each batch).
//!
//! They are kept apart on purpose. The timely time of a batch is its *epoch*: the wall-clock
//! millisecond at which a worker fed it (made strictly increasing per worker). Every worker advances
//! its epoch as the clock moves, busy or not, so the dataflow's frontier, and with it what the sink
//! may commit, always follows processing, whatever the partitions' event times do. Whether a window
//! is complete is a separate question, answered by the watermark: the minimum over active
//! partitions of (newest timestamp − lateness), which workers tell each other in
//! [`Mark`](crate::marks::Mark)s. A window is final once the watermark has reached its end. Each worker keeps its
//! inputs' times coarse: one epoch per batch.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The timely/differential time: a processing epoch (milliseconds of the wall clock, strictly
/// increasing per worker). Epoch 0 ([`RESTORE_TIME`]) holds only state restored at start-up; new
/// data start at 1.
pub type Time = u64;

/// The time of restored state: the sink knows everything at this time is already stored.
pub const RESTORE_TIME: Time = 0;

/// The current wall-clock epoch (never 0, the restore time).
pub fn epoch_now() -> Time {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as Time)
        .max(1)
}

/// A tumbling window, named by its start in milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Window(pub i64);

impl Window {
    /// The window containing `timestamp` (windows are aligned to the epoch).
    pub fn of(timestamp: i64, window_ms: i64) -> Window {
        Window(timestamp - timestamp.rem_euclid(window_ms))
    }

    pub fn start(self) -> i64 {
        self.0
    }

    pub fn end(self, window_ms: i64) -> i64 {
        self.0 + window_ms
    }

    /// Final once the watermark has reached the window's end, or the input is closed.
    pub fn is_final(self, window_ms: i64, watermark: Option<i64>, closed: bool) -> bool {
        closed || watermark.is_some_and(|w| w >= self.end(window_ms))
    }
}

#[derive(Clone, Debug)]
struct PartitionClock {
    /// The largest timestamp seen so far, if any.
    max_ts: Option<i64>,
    /// When the partition last delivered a record (or was registered).
    last_seen: Instant,
}

/// Per-partition lateness and the watermark of the partitions one worker reads.
///
/// An event is late when its timestamp is older than the largest timestamp seen before it in the same
/// partition minus the lateness. Because a partition is read in offset order, this is a pure function
/// of the partition's contents.
#[derive(Clone, Debug)]
pub struct Clock {
    lateness_ms: i64,
    idle_timeout_ms: u64,
    partitions: BTreeMap<u32, PartitionClock>,
}

impl Clock {
    pub fn new(lateness_ms: i64, idle_timeout_ms: u64) -> Clock {
        Clock {
            lateness_ms,
            idle_timeout_ms,
            partitions: BTreeMap::new(),
        }
    }

    /// Starts tracking a partition. Until it delivers a record or goes idle, it holds the watermark.
    pub fn register(&mut self, partition: u32, now: Instant) {
        self.partitions.entry(partition).or_insert(PartitionClock {
            max_ts: None,
            last_seen: now,
        });
    }

    pub fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.partitions.keys().copied()
    }

    /// Restores a partition's newest timestamp from stored progress, so lateness continues exactly
    /// where the stored output left off.
    pub fn restore(&mut self, partition: u32, max_ts: i64, now: Instant) {
        self.partitions.insert(
            partition,
            PartitionClock {
                max_ts: Some(max_ts),
                last_seen: now,
            },
        );
    }

    /// The newest timestamp seen in a partition.
    pub fn max_ts(&self, partition: u32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|c| c.max_ts)
    }

    /// Records an event; returns whether it is on time (`true`) or late (`false`).
    pub fn observe(&mut self, partition: u32, timestamp: i64, now: Instant) -> bool {
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_ts: None,
            last_seen: now,
        });
        clock.last_seen = now;
        match clock.max_ts {
            Some(max) if timestamp < max - self.lateness_ms => false,
            Some(max) => {
                clock.max_ts = Some(max.max(timestamp));
                true
            }
            None => {
                clock.max_ts = Some(timestamp);
                true
            }
        }
    }

    /// Whether every partition (and there is at least one) has been silent past the idle timeout.
    pub fn all_idle(&self, now: Instant) -> bool {
        !self.partitions.is_empty()
            && self
                .partitions
                .values()
                .all(|c| now.duration_since(c.last_seen).as_millis() as u64 >= self.idle_timeout_ms)
    }

    /// The minimum over active partitions of (newest timestamp − lateness), or `None` when no active
    /// partition has delivered data yet. Idle partitions do not hold it back.
    pub fn watermark(&self, now: Instant) -> Option<i64> {
        let mut watermark: Option<i64> = None;
        for clock in self.partitions.values() {
            let idle =
                now.duration_since(clock.last_seen).as_millis() as u64 >= self.idle_timeout_ms;
            match (clock.max_ts, idle) {
                (_, true) => continue,
                (None, false) => return None,
                (Some(max), false) => {
                    let mark = max - self.lateness_ms;
                    watermark = Some(watermark.map_or(mark, |w| w.min(mark)));
                }
            }
        }
        watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn windows_align_to_the_epoch() {
        assert_eq!(Window::of(0, 60_000), Window(0));
        assert_eq!(Window::of(59_999, 60_000), Window(0));
        assert_eq!(Window::of(60_000, 60_000), Window(60_000));
        assert_eq!(Window::of(-1, 60_000), Window(-60_000));
        assert_eq!(Window(60_000).end(60_000), 120_000);
    }

    #[test]
    fn final_once_the_watermark_reaches_the_end() {
        let w = Window(60_000);
        assert!(!w.is_final(60_000, Some(119_999), false));
        assert!(w.is_final(60_000, Some(120_000), false));
        assert!(!w.is_final(60_000, None, false));
        assert!(w.is_final(60_000, None, true));
    }

    #[test]
    fn lateness_is_per_partition() {
        let now = Instant::now();
        let mut clock = Clock::new(5_000, 30_000);
        assert!(clock.observe(0, 100_000, now));
        assert!(
            clock.observe(0, 95_000, now),
            "exactly at the bound is on time"
        );
        assert!(!clock.observe(0, 94_999, now));
        assert!(
            clock.observe(1, 10_000, now),
            "another partition has its own clock"
        );
        assert_eq!(clock.watermark(now), Some(5_000));
    }

    #[test]
    fn idle_partitions_stop_holding_the_watermark() {
        let start = Instant::now();
        let mut clock = Clock::new(0, 1_000);
        clock.register(0, start);
        clock.register(1, start);
        clock.observe(0, 50_000, start);
        assert_eq!(
            clock.watermark(start),
            None,
            "partition 1 has said nothing yet"
        );
        let later = start + Duration::from_millis(1_500);
        clock.observe(0, 60_000, later);
        assert_eq!(clock.watermark(later), Some(60_000));
    }
}
