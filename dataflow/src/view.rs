//! The current state of every maintained collection, assembled from the dataflow's output changes.
//! The API reads it; nothing here talks HTTP.
//!
//! Stat deltas are added and derived rows counted, so changes can be applied in any order and the
//! result is the same: the view is exactly the accumulation of the output. A window is final once
//! the watermark has passed its end, and stays so; if an idle partition later delivers on-time events for it, the
//! window is *revised*: its sums change and it says so ([`WindowState::revised`]).

use std::collections::BTreeMap;

use differential_dataflow::difference::{IsZero, Semigroup};
use rustc_hash::FxHashMap;

use crate::aggregate::{Aggregate, Key, WindowKey};
use crate::baseline::Baseline;
use crate::forecast::Forecast;
use crate::output::{Change, Derived, Side, Update};
use crate::rules::Alert;
use crate::window::{Time, Window, RESTORE_TIME};

/// One window's rows.
#[derive(Clone, Debug, Default)]
pub struct WindowState {
    pub stats: FxHashMap<Key, Aggregate>,
    pub derived: BTreeMap<Derived, isize>,
    /// Whether events changed the window after the frontier had passed it (see [`is_revision`]).
    pub revised: bool,
}

impl WindowState {
    pub fn total(&self) -> Aggregate {
        self.stats.get(&Key::Total).copied().unwrap_or_default()
    }

    pub fn unique_content(&self) -> i64 {
        self.present()
            .find_map(|row| match row {
                Derived::UniqueContent { count, .. } => Some(*count),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The window's trending list, best first.
    pub fn top(&self) -> Vec<(u32, &str, &str, i64)> {
        let mut top: Vec<_> = self
            .present()
            .filter_map(|row| match row {
                Derived::Top {
                    rank,
                    content_id,
                    title,
                    downloads,
                    ..
                } => Some((*rank, content_id.as_str(), title.as_str(), *downloads)),
                _ => None,
            })
            .collect();
        top.sort();
        top
    }

    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.present().filter_map(|row| match row {
            Derived::Alert(alert) => Some(alert),
            _ => None,
        })
    }

    /// Each region's baseline in the window (only a settled window has any), by region name.
    pub fn baselines(&self) -> impl Iterator<Item = (&str, &Baseline)> {
        self.present().filter_map(|row| match row {
            Derived::Baseline {
                region, baseline, ..
            } => Some((region.as_str(), baseline)),
            _ => None,
        })
    }

    /// The window's rising list, best first (empty until the window is settled).
    pub fn rising(&self) -> Vec<(u32, &str, &str, &Forecast)> {
        let mut rising: Vec<_> = self
            .present()
            .filter_map(|row| match row {
                Derived::Rising {
                    rank,
                    content_id,
                    title,
                    forecast,
                    ..
                } => Some((*rank, content_id.as_str(), title.as_str(), forecast)),
                _ => None,
            })
            .collect();
        rising.sort();
        rising
    }

    /// Derived rows currently in the collection.
    fn present(&self) -> impl Iterator<Item = &Derived> {
        self.derived
            .iter()
            .filter(|(_, &count)| count > 0)
            .map(|(row, _)| row)
    }

    fn is_empty(&self) -> bool {
        self.stats.is_empty() && self.derived.is_empty()
    }
}

/// Whether a stat change revises a window already reported final (the watermark had passed its
/// end when the change came): events, not late counts, not restored state, not a retraction that
/// frees memory. Only a partition that was idle and then speaks again can cause one: any other
/// on-time event lies at or after the watermark.
pub fn is_revision(
    row: &WindowKey,
    delta: &Aggregate,
    time: Time,
    watermark: Option<i64>,
    window_ms: i64,
) -> bool {
    time != RESTORE_TIME
        && delta.downloads > 0
        && !matches!(row.key, Key::Late { .. })
        && row.window.is_final(window_ms, watermark, false)
}

/// All windows in memory, and how far the output is complete.
#[derive(Clone, Debug)]
pub struct View {
    window_ms: i64,
    windows: BTreeMap<Window, WindowState>,
    frontier: Option<Time>,
    /// The global watermark the output is complete up to.
    watermark: Option<i64>,
    updates: u64,
    /// Events (counted or late) applied since start, restored state excepted.
    events: u64,
    /// Per partition, the offset the dataflow has read up to (from the sources' positions).
    positions: BTreeMap<u32, i64>,
}

impl View {
    pub fn new(window_ms: i64) -> View {
        View {
            window_ms,
            windows: BTreeMap::new(),
            frontier: Some(0),
            watermark: None,
            updates: 0,
            events: 0,
            positions: BTreeMap::new(),
        }
    }

    pub fn apply(&mut self, update: Update) {
        for change in update.changes {
            match change {
                Change::Stat { row, delta, time } => {
                    let revision = is_revision(&row, &delta, time, self.watermark, self.window_ms);
                    if time != RESTORE_TIME
                        && delta.downloads > 0
                        && matches!(row.key, Key::Total | Key::Late { .. })
                    {
                        self.events += delta.downloads as u64;
                    }
                    let state = self.windows.entry(row.window).or_default();
                    state.revised |= revision;
                    let sum = state.stats.entry(row.key.clone()).or_default();
                    sum.plus_equals(&delta);
                    if sum.is_zero() {
                        state.stats.remove(&row.key);
                    }
                    self.drop_if_empty(row.window);
                }
                Change::Derived { row, diff, .. } => {
                    let window = row.window();
                    let state = self.windows.entry(window).or_default();
                    let count = state.derived.entry(row.clone()).or_default();
                    *count += diff;
                    if *count == 0 {
                        state.derived.remove(&row);
                    }
                    self.drop_if_empty(window);
                }
                Change::Side {
                    row:
                        Side::Position {
                            partition,
                            next_offset,
                            ..
                        },
                    ..
                } => {
                    let slot = self.positions.entry(partition).or_insert(next_offset);
                    *slot = (*slot).max(next_offset);
                }
                Change::Side { .. } => {}
            }
        }
        self.frontier = update.frontier;
        self.watermark = self.watermark.max(update.watermark);
        self.updates += 1;
    }

    /// Whether the window was changed after it had been reported final.
    pub fn is_revised(&self, window: Window) -> bool {
        self.windows.get(&window).is_some_and(|w| w.revised)
    }

    fn drop_if_empty(&mut self, window: Window) {
        if self.windows.get(&window).is_some_and(WindowState::is_empty) {
            self.windows.remove(&window);
        }
    }

    pub fn window_ms(&self) -> i64 {
        self.window_ms
    }

    /// The epoch before which every change has been applied (`None`: the input is closed).
    pub fn frontier(&self) -> Option<Time> {
        self.frontier
    }

    /// The global watermark: windows ending at or before it are final.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Whether the input is closed (everything is final).
    pub fn is_closed(&self) -> bool {
        self.frontier.is_none()
    }

    pub fn is_final(&self, window: Window) -> bool {
        window.is_final(self.window_ms, self.watermark, self.is_closed())
    }

    /// Events (counted or late) that have reached the view since start: what a reader of the API
    /// can see, where the sources' counters say what was read.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// How many updates have been applied (a cheap change counter for caches).
    pub fn version(&self) -> u64 {
        self.updates
    }

    pub fn windows(&self) -> &BTreeMap<Window, WindowState> {
        &self.windows
    }

    /// Per partition, the next offset to read: what the dataflow has consumed.
    pub fn positions(&self) -> &BTreeMap<u32, i64> {
        &self.positions
    }

    /// The stream's "now": the newest window in memory.
    pub fn newest(&self) -> Option<Window> {
        self.windows.keys().next_back().copied()
    }

    /// The `count` newest windows ending at the newest one (oldest first); absent windows are skipped.
    pub fn recent(&self, count: usize) -> impl Iterator<Item = (&Window, &WindowState)> {
        let newest = self.newest().unwrap_or(Window(0));
        let first = Window(newest.0 - (count.saturating_sub(1) as i64) * self.window_ms);
        self.windows.range(first..=newest)
    }

    /// Every stat row, for comparisons.
    pub fn stats(&self) -> BTreeMap<WindowKey, Aggregate> {
        self.windows
            .iter()
            .flat_map(|(window, state)| {
                state.stats.iter().map(|(key, agg)| {
                    (
                        WindowKey {
                            window: *window,
                            key: key.clone(),
                        },
                        *agg,
                    )
                })
            })
            .collect()
    }

    /// Every derived row with its count, for comparisons.
    pub fn derived(&self) -> BTreeMap<Derived, isize> {
        self.windows
            .values()
            .flat_map(|state| {
                state
                    .derived
                    .iter()
                    .map(|(row, count)| (row.clone(), *count))
            })
            .collect()
    }
}
