//! Where records come from: the [`Source`] trait and the in-process sources.
//!
//! ```text
//!   Source::poll ──▶ Vec<Record>   in offset order within each partition
//! ```
//!
//! A source serves one worker and reads a fixed set of partitions: partitions are assigned to workers
//! deterministically (`partition % workers == worker`), never rebalanced, so per-partition lateness is
//! judged by exactly one reader in offset order.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::{DeadLetter, Record};
use crate::generator::Generator;

/// What a poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// Records were appended (or may follow at once).
    Ready,
    /// Nothing available right now.
    Idle,
    /// The source is exhausted and will never produce again.
    Done,
}

/// A per-worker supply of records.
pub trait Source {
    /// The partitions this source reads. Each holds the watermark back until it delivers data or
    /// goes idle.
    fn partitions(&self) -> Vec<u32>;

    /// Appends at most `max` records to `out`, and any undecodable ones to `dead`.
    fn poll(&mut self, out: &mut Vec<Record>, dead: &mut Vec<DeadLetter>, max: usize) -> Poll;

    /// The Kafka timestamp (ms) of the newest record read so far from `partition`, if the source
    /// has such a thing: the pipeline measures its latency from it.
    fn record_time(&self, _partition: u32) -> Option<i64> {
        None
    }
}

/// Whether `partition` belongs to `worker` of `workers`.
pub fn owns(partition: u32, worker: usize, workers: usize) -> bool {
    partition as usize % workers == worker
}

/// Records materialised in memory (tests and benchmarks), handed out in the order given. Records are
/// stored as ready-made batches so that handing one out moves a vector, not its records.
pub struct VecSource {
    partitions: Vec<u32>,
    batches: std::vec::IntoIter<Vec<Record>>,
}

impl VecSource {
    /// A source that hands out `records` in batches of at most `batch` records.
    pub fn new(partitions: Vec<u32>, records: Vec<Record>, batch: usize) -> VecSource {
        let batch = batch.max(1);
        let mut batches = Vec::with_capacity(records.len() / batch + 1);
        let mut records = records.into_iter();
        loop {
            let chunk: Vec<Record> = records.by_ref().take(batch).collect();
            if chunk.is_empty() {
                break;
            }
            batches.push(chunk);
        }
        VecSource {
            partitions,
            batches: batches.into_iter(),
        }
    }
}

impl Source for VecSource {
    fn partitions(&self) -> Vec<u32> {
        self.partitions.clone()
    }

    /// Hands out the next stored batch whole (`max` was fixed when the batches were made).
    fn poll(&mut self, out: &mut Vec<Record>, _dead: &mut Vec<DeadLetter>, _max: usize) -> Poll {
        match self.batches.next() {
            Some(batch) if out.is_empty() => {
                *out = batch;
                Poll::Ready
            }
            Some(batch) => {
                out.extend(batch);
                Poll::Ready
            }
            None => Poll::Done,
        }
    }
}

/// How a [`GeneratorSource`] releases events.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Event `i` is released once the wall clock reaches its nominal timestamp.
    RealTime,
    /// Events `0..count` are released as fast as they are asked for.
    Count(u64),
}

/// The built-in generator as a source: event `i` goes to partition `i % partitions`, at offset
/// `i / partitions`, and this source produces only the events of its own partitions.
pub struct GeneratorSource {
    generator: Generator,
    partitions: u32,
    mine: Vec<u32>,
    worker: usize,
    workers: usize,
    next: u64,
    pace: Pace,
    /// The nominal time of the newest event released (in real time: when it was "produced").
    released_ms: Option<i64>,
}

impl GeneratorSource {
    pub fn new(
        generator: Generator,
        partitions: u32,
        worker: usize,
        workers: usize,
        pace: Pace,
    ) -> GeneratorSource {
        let mine = (0..partitions)
            .filter(|&p| owns(p, worker, workers))
            .collect();
        GeneratorSource {
            generator,
            partitions,
            mine,
            worker,
            workers,
            next: 0,
            pace,
            released_ms: None,
        }
    }

    fn limit(&self) -> u64 {
        match self.pace {
            Pace::Count(count) => count,
            Pace::RealTime => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                self.generator.index_at(now + 1)
            }
        }
    }
}

impl Source for GeneratorSource {
    fn partitions(&self) -> Vec<u32> {
        self.mine.clone()
    }

    /// In real time an event is released when the clock reaches its nominal time: that is its
    /// "record time" (the same for every partition of this source).
    fn record_time(&self, _partition: u32) -> Option<i64> {
        self.released_ms
    }

    fn poll(&mut self, out: &mut Vec<Record>, _dead: &mut Vec<DeadLetter>, max: usize) -> Poll {
        if self.mine.is_empty() {
            return Poll::Done;
        }
        let limit = self.limit();
        let mut produced = 0;
        while self.next < limit && produced < max {
            let i = self.next;
            self.next += 1;
            let partition = (i % self.partitions as u64) as u32;
            if owns(partition, self.worker, self.workers) {
                let offset = (i / self.partitions as u64) as i64;
                out.push(Record {
                    partition,
                    offset,
                    event: self.generator.event(i),
                });
                produced += 1;
                if matches!(self.pace, Pace::RealTime) {
                    self.released_ms = Some(self.generator.nominal_time(i));
                }
            }
        }
        match self.pace {
            Pace::Count(count) if self.next >= count => Poll::Done,
            _ if produced > 0 => Poll::Ready,
            _ => Poll::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::Scenario;

    #[test]
    fn workers_split_the_stream_without_overlap() {
        let make = |worker| {
            let g = Generator::new(1, Scenario::Clean, 0, 100.0);
            GeneratorSource::new(g, 4, worker, 2, Pace::Count(1_000))
        };
        let mut all = Vec::new();
        for worker in 0..2 {
            let mut source = make(worker);
            let mut out = Vec::new();
            while source.poll(&mut out, &mut Vec::new(), 64) != Poll::Done {}
            assert!(out.iter().all(|r| owns(r.partition, worker, 2)));
            all.extend(out);
        }
        assert_eq!(all.len(), 1_000);
        all.sort_by_key(|r| (r.offset, r.partition));
        assert!(all
            .windows(2)
            .all(|w| (w[0].offset, w[0].partition) != (w[1].offset, w[1].partition)));
    }
}
