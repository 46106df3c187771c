//! The reference aggregator: what a careful engineer would write without a dataflow. One thread, one
//! pass over the events in topic order: each chunk is summed in a hash map keyed by borrowed strings,
//! merged into the totals, and freed; the derived collections (top-K, unique titles, alerts) are
//! computed once at the end from the final sums.
//!
//! It has the dataflow's semantics (per-partition lateness, the same rows, the same rules) but none of
//! its properties: nothing is incremental, nothing is parallel, nothing is retracted.

use differential_dataflow::difference::Semigroup;
use rustc_hash::FxHashMap;
use streampulse_dataflow::batch::KeyRef;
use streampulse_dataflow::{Aggregate, Config, Key, Rule, Window};
use streampulse_ingest::Record;

/// The baseline's final state.
pub struct Result {
    pub rows: FxHashMap<(Window, Key), Aggregate>,
    pub top: usize,
    pub unique: usize,
    pub alerts: usize,
}

impl Result {
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

/// Aggregates `chunks` (the events in topic order, in chunks as a source would deliver them).
pub fn aggregate(chunks: Vec<Vec<Record>>, config: &Config) -> Result {
    let mut newest: FxHashMap<u32, i64> = FxHashMap::default();
    let mut rows: FxHashMap<(Window, Key), Aggregate> = FxHashMap::default();
    for batch in chunks {
        let mut sums: FxHashMap<(Window, KeyRef<'_>), Aggregate> = FxHashMap::default();
        for record in &batch {
            let event = &record.event;
            let window = Window::of(event.timestamp, config.window_ms);
            let agg = Aggregate::of(event);
            let mut add = |key| sums.entry((window, key)).or_default().plus_equals(&agg);
            let max = newest.entry(record.partition).or_insert(event.timestamp);
            if event.timestamp < *max - config.lateness_ms {
                add(KeyRef::Late(record.partition));
                continue;
            }
            *max = (*max).max(event.timestamp);
            let user = &event.user_context;
            add(KeyRef::Total);
            add(KeyRef::Content(
                &event.content.content_id,
                &event.content.title,
            ));
            add(KeyRef::Region(&user.region));
            add(KeyRef::Device(&user.device, &user.os_version));
            if agg.failed == 1 {
                if let Some(code) = event.download.error_code.as_deref() {
                    add(KeyRef::Error(&user.region, code));
                }
            }
        }
        for ((window, key), agg) in sums {
            rows.entry((window, key.to_key()))
                .or_default()
                .plus_equals(&agg);
        }
    }

    // Derived collections, once, from the final sums.
    let mut per_window: FxHashMap<_, Vec<(i64, &str)>> = FxHashMap::default();
    let mut high: FxHashMap<(&str, i64), ()> = FxHashMap::default();
    let mut alerts = 0;
    for ((window, key), agg) in &rows {
        match key {
            Key::Content { content_id, .. } => per_window
                .entry(*window)
                .or_default()
                .push((-agg.downloads, content_id.as_str())),
            Key::Region(region) => {
                for (rule, _) in config.rules.evaluate(agg) {
                    alerts += 1;
                    if rule == Rule::HighErrorRate {
                        high.insert((region.as_str(), window.0), ());
                    }
                }
            }
            _ => {}
        }
    }
    let n = config.rules.sustained_windows as i64;
    alerts += high
        .keys()
        .filter(|(region, w)| {
            (1..n).all(|back| high.contains_key(&(*region, w - back * config.window_ms)))
        })
        .count();
    let mut top = 0;
    let unique = per_window.values().map(Vec::len).sum();
    for titles in per_window.values_mut() {
        titles.sort_unstable();
        top += titles.len().min(config.top_k);
    }
    Result {
        rows,
        top,
        unique,
        alerts,
    }
}
