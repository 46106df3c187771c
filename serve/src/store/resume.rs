//! Reading back what an earlier run stored, so that this one continues exactly where its output
//! ends: the resume offsets per partition, and the sums of the windows still in retention.

use std::collections::BTreeMap;

use postgres::Client;
use streampulse_dataflow::{Aggregate, Resume, Window, WindowKey};

use super::tables::{aggregate, StatTable, SUMS};

/// What was stored for `topic`: resume offsets per partition, and the dataflow state to restore.
pub fn load_resume(
    client: &mut Client,
    topic: &str,
    window_ms: i64,
    retain_ms: i64,
) -> anyhow::Result<(BTreeMap<u32, i64>, Resume)> {
    let mut offsets = BTreeMap::new();
    let mut resume = Resume::default();
    let rows = client.query(
        "SELECT partition, next_offset, (extract(epoch FROM max_timestamp) * 1000)::bigint,
                (extract(epoch FROM watermark) * 1000)::bigint
         FROM sink_progress WHERE topic = $1",
        &[&topic],
    )?;
    for row in rows {
        let partition: i32 = row.get(0);
        offsets.insert(partition as u32, row.get::<_, i64>(1));
        if let Some(max_ts) = row.get::<_, Option<i64>>(2) {
            resume.max_ts.insert(partition as u32, max_ts);
        }
        if let Some(watermark) = row.get::<_, Option<i64>>(3) {
            resume.watermark_ms = Some(
                resume
                    .watermark_ms
                    .map_or(watermark, |w: i64| w.min(watermark)),
            );
        }
    }
    let Some(watermark) = resume
        .watermark_ms
        .or_else(|| resume.max_ts.values().min().copied())
    else {
        return Ok((offsets, resume));
    };
    // Windows still in retention come back into memory, so derived rows (top-K, alerts, sustained
    // runs) continue from complete sums.
    let horizon = (watermark - retain_ms - window_ms) as f64;
    for table in StatTable::ALL {
        let sql = format!(
            "SELECT (extract(epoch FROM window_start) * 1000)::bigint, {keys}, {sums}
             FROM {name} WHERE window_end > to_timestamp($1::float8 / 1000)",
            keys = table.key_columns_as_text(),
            sums = SUMS.join(", "),
            name = table.name(),
        );
        for row in client.query(&sql, &[&horizon])? {
            let key = table
                .key_from_text(row.get(1), row.get(2))
                .map_err(anyhow::Error::msg)?;
            let agg = aggregate(std::array::from_fn(|i| row.get(3 + i)));
            if agg != Aggregate::default() {
                let window = Window(row.get(0));
                resume.rows.push((WindowKey { window, key }, agg));
            }
        }
    }
    Ok((offsets, resume))
}
