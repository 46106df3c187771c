//! From a batch of records to pre-combined updates, and the ledger that retention retracts.
//!
//! ```text
//!   &[Record] ──combine()──▶ Vec<(WindowKey, Aggregate)>   one entry per distinct row in the batch
//!                 │
//!                 └─ Clock: late events go to Key::Late instead of their rows
//! ```
//!
//! Pre-combining is what keeps differential fast: a batch of 100 000 events touches a few thousand
//! rows, so the dataflow sees thousands of updates, not hundreds of thousands. The map is keyed by
//! borrowed strings, so an event costs hash look-ups and no allocation.

use std::collections::BTreeMap;
use std::time::Instant;

use differential_dataflow::difference::{IsZero, Semigroup};
use rustc_hash::FxHashMap;
use streampulse_ingest::Record;

use crate::aggregate::{Aggregate, Key, WindowKey};
use crate::window::{Clock, Window};

/// A [`Key`] borrowing its strings from the batch (so summing an event allocates nothing).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRef<'a> {
    Total,
    Content(&'a str, &'a str),
    Region(&'a str),
    Device(&'a str, &'a str),
    Error(&'a str, &'a str),
    Late(u32),
}

impl KeyRef<'_> {
    pub fn to_key(self) -> Key {
        match self {
            KeyRef::Total => Key::Total,
            KeyRef::Content(id, title) => Key::Content {
                content_id: id.into(),
                title: title.into(),
            },
            KeyRef::Region(region) => Key::Region(region.into()),
            KeyRef::Device(device, os) => Key::Device {
                device: device.into(),
                os_version: os.into(),
            },
            KeyRef::Error(region, code) => Key::Error {
                region: region.into(),
                error_code: code.into(),
            },
            KeyRef::Late(partition) => Key::Late { partition },
        }
    }
}

/// Judges each record's lateness with `clock` (in the order given, which must be offset order within
/// a partition) and sums the accepted ones into their rows. Appends one update per touched row to
/// `out` and returns how many records were late.
pub fn combine<'a>(
    records: &'a [Record],
    clock: &mut Clock,
    window_ms: i64,
    now: Instant,
    out: &mut Vec<(WindowKey, Aggregate)>,
) -> usize {
    let mut sums: FxHashMap<(Window, KeyRef<'a>), Aggregate> = FxHashMap::default();
    let mut add = |window: Window, key: KeyRef<'a>, agg: &Aggregate| {
        sums.entry((window, key)).or_default().plus_equals(agg);
    };
    let mut late = 0;
    for record in records {
        let event = &record.event;
        let window = Window::of(event.timestamp, window_ms);
        let agg = Aggregate::of(event);
        if !clock.observe(record.partition, event.timestamp, now) {
            late += 1;
            add(window, KeyRef::Late(record.partition), &agg);
            continue;
        }
        let user = &event.user_context;
        add(window, KeyRef::Total, &agg);
        add(
            window,
            KeyRef::Content(&event.content.content_id, &event.content.title),
            &agg,
        );
        add(window, KeyRef::Region(&user.region), &agg);
        add(window, KeyRef::Device(&user.device, &user.os_version), &agg);
        if let Some(code) = event.download.error_code.as_deref() {
            if agg.failed == 1 {
                add(window, KeyRef::Error(&user.region, code), &agg);
            }
        }
    }
    out.extend(sums.into_iter().map(|((window, key), agg)| {
        (
            WindowKey {
                window,
                key: key.to_key(),
            },
            agg,
        )
    }));
    late
}

/// What [`Ledger::expire`] lets go of.
#[derive(Debug, Default, PartialEq)]
pub struct Expiry {
    /// Windows let go of now: no later change is fed to them.
    pub expired: Vec<Window>,
    /// Updates retracting the rows of windows let go of `hold` windows ago.
    pub retractions: Vec<(WindowKey, Aggregate)>,
}

/// What this worker has fed into the dataflow, per window, so that retention can retract it.
#[derive(Default)]
pub struct Ledger {
    windows: BTreeMap<Window, FxHashMap<Key, Aggregate>>,
    /// Every window ending at or before this has been let go.
    expired_through: Option<i64>,
}

impl Ledger {
    pub fn add(&mut self, row: &WindowKey, agg: &Aggregate) {
        let rows = self.windows.entry(row.window).or_default();
        match rows.get_mut(&row.key) {
            Some(sum) => sum.plus_equals(agg),
            None => {
                rows.insert(row.key.clone(), *agg);
            }
        }
    }

    /// Lets go of every window that ends at or before `horizon`: returns those newly let go (for
    /// `Side::Expired`) and the updates that retract what was fed for windows that ended `hold`
    /// windows before that. Holding a window's rows back while later windows still read it (a
    /// baseline, a forecast, the sustained rule: [`crate::Config::reach`]) means that letting it go
    /// changes nothing in a window still held; the retractions land once every window that reads
    /// it has been let go too, when the sink no longer takes their derived changes.
    pub fn expire(&mut self, horizon: i64, window_ms: i64, hold: u32) -> Expiry {
        let before = self.expired_through;
        let expired = self
            .windows
            .keys()
            .take_while(|w| w.end(window_ms) <= horizon)
            .filter(|w| before.is_none_or(|t| w.end(window_ms) > t))
            .copied()
            .collect();
        let mut retractions = Vec::new();
        let held = hold as i64 * window_ms;
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().end(window_ms) + held > horizon {
                break;
            }
            let window = *entry.key();
            retractions.extend(
                entry
                    .remove()
                    .into_iter()
                    .filter(|(_, agg)| !agg.is_zero())
                    .map(|(key, agg)| (WindowKey { window, key }, agg.negated())),
            );
        }
        if before.is_none_or(|t| t < horizon) {
            self.expired_through = Some(horizon);
        }
        Expiry {
            expired,
            retractions,
        }
    }

    /// Whether `window` was let go (or would have been, had it held anything).
    pub fn has_expired(&self, window: Window, window_ms: i64) -> bool {
        self.expired_through
            .is_some_and(|t| window.end(window_ms) <= t)
    }

    /// How many windows the ledger holds (bounded by the retention).
    pub fn windows(&self) -> usize {
        self.windows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streampulse_ingest::{Generator, Scenario};

    #[test]
    fn combine_counts_each_event_once_per_collection() {
        let g = Generator::new(9, Scenario::CdnOutage, 0, 50.0);
        let records: Vec<Record> = (0..5_000)
            .map(|i| Record {
                partition: (i % 3) as u32,
                offset: (i / 3) as i64,
                event: g.event(i),
            })
            .collect();
        let mut clock = Clock::new(5_000, 30_000);
        let mut out = Vec::new();
        let late = combine(&records, &mut clock, 60_000, Instant::now(), &mut out);
        let downloads = |pick: fn(&Key) -> bool| -> i64 {
            out.iter()
                .filter(|(k, _)| pick(&k.key))
                .map(|(_, a)| a.downloads)
                .sum()
        };
        let accepted = 5_000 - late as i64;
        assert!(late > 0, "the generator sends some late events");
        assert_eq!(downloads(|k| matches!(k, Key::Total)), accepted);
        assert_eq!(downloads(|k| matches!(k, Key::Content { .. })), accepted);
        assert_eq!(downloads(|k| matches!(k, Key::Region(_))), accepted);
        assert_eq!(downloads(|k| matches!(k, Key::Device { .. })), accepted);
        assert_eq!(downloads(|k| matches!(k, Key::Late { .. })), late as i64);
        // Pre-combined: far fewer updates than events.
        assert!(out.len() < 1_500, "{} updates", out.len());
    }

    #[test]
    fn ledger_retracts_whole_windows() {
        let mut ledger = Ledger::default();
        let row = |w: i64| WindowKey {
            window: Window(w),
            key: Key::Total,
        };
        let one = Aggregate {
            downloads: 1,
            ..Default::default()
        };
        ledger.add(&row(0), &one);
        ledger.add(&row(0), &one);
        ledger.add(&row(60_000), &one);
        assert_eq!(ledger.expire(59_999, 60_000, 0), Expiry::default());
        assert!(!ledger.has_expired(Window(0), 60_000));
        let gone = ledger.expire(60_000, 60_000, 0);
        assert_eq!(
            gone,
            Expiry {
                expired: vec![Window(0)],
                retractions: vec![(
                    row(0),
                    Aggregate {
                        downloads: -2,
                        ..Default::default()
                    }
                )]
            }
        );
        assert_eq!(ledger.windows(), 1);
        assert!(ledger.has_expired(Window(0), 60_000));
        assert!(!ledger.has_expired(Window(60_000), 60_000));
    }

    #[test]
    fn ledger_holds_rows_back_while_later_windows_read_them() {
        let mut ledger = Ledger::default();
        let one = Aggregate {
            downloads: 1,
            ..Default::default()
        };
        for w in 0..4 {
            ledger.add(
                &WindowKey {
                    window: Window(w * 60_000),
                    key: Key::Total,
                },
                &one,
            );
        }
        // Window 0 is let go of at once, but its rows stay while windows 1 and 2 read them.
        let first = ledger.expire(60_000, 60_000, 2);
        assert_eq!(first.expired, vec![Window(0)]);
        assert!(first.retractions.is_empty());
        assert!(ledger.has_expired(Window(0), 60_000));
        // Each window is reported let go of once.
        let second = ledger.expire(120_000, 60_000, 2);
        assert_eq!(second.expired, vec![Window(60_000)]);
        assert!(second.retractions.is_empty());
        let third = ledger.expire(180_000, 60_000, 2);
        assert_eq!(third.expired, vec![Window(120_000)]);
        assert_eq!(third.retractions.len(), 1);
        assert_eq!(third.retractions[0].0.window, Window(0));
    }
}
