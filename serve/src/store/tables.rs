//! The table of truth: which PostgreSQL table holds each per-window collection, its key columns,
//! and how a dataflow [`Key`] maps to a row and back. Everything that writes, reads back or lists
//! these tables goes through [`StatTable`] (and [`SUMS`] for their measures), so a new collection
//! is added here once.

use streampulse_dataflow::{Aggregate, Key};

/// A per-window stat table (its rows are keyed by `window_start` plus the key columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatTable {
    WindowTotals,
    ContentStats,
    RegionHealth,
    DeviceStats,
    ErrorStats,
    LateEvents,
}

/// The measures every stat table carries, in [`Aggregate`]'s field order.
pub const SUMS: [&str; 7] = [
    "downloads",
    "successful",
    "failed",
    "size_mb",
    "duration_s",
    "speed_milli",
    "cdn_timeouts",
];

/// Tables with rows per window besides the stat tables: their `is_final` follows the watermark too.
pub const DERIVED_TABLES: [&str; 5] = [
    "trending",
    "alerts",
    "region_baselines",
    "error_baselines",
    "trending_predictions",
];

/// A key's column values: text for every table but `late_events`, whose key is the partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyValues<'a> {
    Text(Vec<&'a str>),
    Partition(i32),
}

impl StatTable {
    pub const ALL: [StatTable; 6] = [
        StatTable::WindowTotals,
        StatTable::ContentStats,
        StatTable::RegionHealth,
        StatTable::DeviceStats,
        StatTable::ErrorStats,
        StatTable::LateEvents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StatTable::WindowTotals => "window_totals",
            StatTable::ContentStats => "content_stats",
            StatTable::RegionHealth => "region_health",
            StatTable::DeviceStats => "device_stats",
            StatTable::ErrorStats => "error_stats",
            StatTable::LateEvents => "late_events",
        }
    }

    /// The key columns after `window_start`, with their SQL types.
    pub fn keys(self) -> &'static [(&'static str, &'static str)] {
        match self {
            StatTable::WindowTotals => &[],
            StatTable::ContentStats => &[("content_id", "text"), ("title", "text")],
            StatTable::RegionHealth => &[("region", "text")],
            StatTable::DeviceStats => &[("device", "text"), ("os_version", "text")],
            StatTable::ErrorStats => &[("region", "text"), ("error_code", "text")],
            StatTable::LateEvents => &[("partition", "int")],
        }
    }

    /// The table a key's rows live in.
    pub fn of(key: &Key) -> StatTable {
        match key {
            Key::Total => StatTable::WindowTotals,
            Key::Content { .. } => StatTable::ContentStats,
            Key::Region(_) => StatTable::RegionHealth,
            Key::Device { .. } => StatTable::DeviceStats,
            Key::Error { .. } => StatTable::ErrorStats,
            Key::Late { .. } => StatTable::LateEvents,
        }
    }

    /// A key's values for this table's key columns, in [`StatTable::keys`] order.
    pub fn values(key: &Key) -> KeyValues<'_> {
        match key {
            Key::Total => KeyValues::Text(vec![]),
            Key::Content { content_id, title } => KeyValues::Text(vec![content_id, title]),
            Key::Region(region) => KeyValues::Text(vec![region]),
            Key::Device { device, os_version } => KeyValues::Text(vec![device, os_version]),
            Key::Error { region, error_code } => KeyValues::Text(vec![region, error_code]),
            Key::Late { partition } => KeyValues::Partition(*partition as i32),
        }
    }

    /// A `SELECT` list reading the key columns back as exactly two text columns.
    pub fn key_columns_as_text(self) -> String {
        let mut columns: Vec<String> = self
            .keys()
            .iter()
            .map(|(name, _)| format!("{name}::text"))
            .collect();
        columns.resize(2, "''::text".to_string());
        columns.join(", ")
    }

    /// Rebuilds a key from the two text columns of [`StatTable::key_columns_as_text`].
    pub fn key_from_text(self, a: String, b: String) -> Result<Key, String> {
        Ok(match self {
            StatTable::WindowTotals => Key::Total,
            StatTable::ContentStats => Key::Content {
                content_id: a,
                title: b,
            },
            StatTable::RegionHealth => Key::Region(a),
            StatTable::DeviceStats => Key::Device {
                device: a,
                os_version: b,
            },
            StatTable::ErrorStats => Key::Error {
                region: a,
                error_code: b,
            },
            StatTable::LateEvents => Key::Late {
                partition: a
                    .parse()
                    .map_err(|_| format!("late_events.partition {a:?} is not a partition"))?,
            },
        })
    }
}

/// An aggregate's measures in [`SUMS`] order.
pub fn sums(agg: &Aggregate) -> [i64; 7] {
    [
        agg.downloads,
        agg.successful,
        agg.failed,
        agg.size_mb,
        agg.duration_s,
        agg.speed_milli,
        agg.cdn_timeouts,
    ]
}

/// The aggregate whose measures, in [`SUMS`] order, are `values`.
pub fn aggregate(values: [i64; 7]) -> Aggregate {
    let [downloads, successful, failed, size_mb, duration_s, speed_milli, cdn_timeouts] = values;
    Aggregate {
        downloads,
        successful,
        failed,
        size_mb,
        duration_s,
        speed_milli,
        cdn_timeouts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<Key> {
        vec![
            Key::Total,
            Key::Content {
                content_id: "mov_1".into(),
                title: "A Film".into(),
            },
            Key::Region("EU-London".into()),
            Key::Device {
                device: "iPhone".into(),
                os_version: "iOS 17".into(),
            },
            Key::Error {
                region: "EU-London".into(),
                error_code: "cdn_timeout".into(),
            },
            Key::Late { partition: 3 },
        ]
    }

    #[test]
    fn every_key_has_one_table_and_comes_back_from_its_columns() {
        let mut seen = Vec::new();
        for key in keys() {
            let table = StatTable::of(&key);
            seen.push(table);
            let (a, b) = match StatTable::values(&key) {
                KeyValues::Text(values) => {
                    assert_eq!(values.len(), table.keys().len());
                    let mut values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                    values.resize(2, String::new());
                    (values[0].clone(), values[1].clone())
                }
                KeyValues::Partition(p) => (p.to_string(), String::new()),
            };
            assert_eq!(table.key_from_text(a, b), Ok(key));
            assert_eq!(table.key_columns_as_text().matches("::text").count(), 2);
        }
        assert_eq!(seen, StatTable::ALL);
    }

    #[test]
    fn sums_round_trip() {
        let agg = aggregate([1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(sums(&agg), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(agg.speed_milli, 6);
    }
}
