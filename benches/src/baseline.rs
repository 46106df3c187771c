//! The reference aggregator: what a careful engineer would write without a dataflow. One thread, one
//! pass over the events in topic order, hash maps keyed by borrowed strings, then the derived
//! collections (top-K, unique titles, alerts) computed once at the end from the final sums.
//!
//! It has the dataflow's semantics (per-partition lateness, the same rows, the same rules) but none of
//! its properties: nothing is incremental, nothing is parallel, nothing is retracted.

use rustc_hash::FxHashMap;
use streampulse_dataflow::{Aggregate, Config, Rule};
use streampulse_ingest::Record;

use crate::{window_of, Rows};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowKey<'a> {
    Total,
    Content(&'a str, &'a str),
    Region(&'a str),
    Device(&'a str, &'a str),
    Error(&'a str, &'a str),
    Late(u32),
}

/// The baseline's final state.
pub struct Result<'a> {
    pub rows: Rows<'a>,
    pub top: usize,
    pub unique: usize,
    pub alerts: usize,
}

impl Result<'_> {
    pub fn rows(&self) -> usize {
        self.rows.len()
    }
}

pub fn aggregate<'a>(records: &'a [Record], config: &Config) -> Result<'a> {
    let mut newest: FxHashMap<u32, i64> = FxHashMap::default();
    let mut rows: Rows<'a> = FxHashMap::default();
    for record in records {
        let event = &record.event;
        let window = window_of(event.timestamp, config);
        let agg = Aggregate::of(event);
        let mut add = |key| {
            use differential_dataflow::difference::Semigroup;
            rows.entry((window, key)).or_default().plus_equals(&agg);
        };
        let max = newest.entry(record.partition).or_insert(event.timestamp);
        if event.timestamp < *max - config.lateness_ms {
            add(RowKey::Late(record.partition));
            continue;
        }
        *max = (*max).max(event.timestamp);
        let user = &event.user_context;
        add(RowKey::Total);
        add(RowKey::Content(
            &event.content.content_id,
            &event.content.title,
        ));
        add(RowKey::Region(&user.region));
        add(RowKey::Device(&user.device, &user.os_version));
        if agg.failed == 1 {
            if let Some(code) = event.download.error_code.as_deref() {
                add(RowKey::Error(&user.region, code));
            }
        }
    }

    // Derived collections, once, from the final sums.
    let mut per_window: FxHashMap<_, Vec<(i64, &str)>> = FxHashMap::default();
    let mut high: FxHashMap<(&str, i64), ()> = FxHashMap::default();
    let mut alerts = 0;
    for ((window, key), agg) in &rows {
        match key {
            RowKey::Content(id, _) => per_window
                .entry(*window)
                .or_default()
                .push((-agg.downloads, id)),
            RowKey::Region(region) => {
                for (rule, _) in config.rules.evaluate(agg) {
                    alerts += 1;
                    if rule == Rule::HighErrorRate {
                        high.insert((region, window.0), ());
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
