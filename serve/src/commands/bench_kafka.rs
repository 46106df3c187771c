//! `streampulse bench kafka`: the Kafka end-to-end benchmark of `streampulse_benches::kafka`, run
//! with this very binary as the pipeline; prints one JSON object per line and a table on stderr.

use std::io::Write;

use streampulse_benches::kafka::{bench_kafka, KafkaBench};

use crate::cli::BenchWhat;

pub fn run(what: BenchWhat) -> anyhow::Result<()> {
    let BenchWhat::Kafka {
        brokers,
        topic,
        events,
        partitions,
        seed,
        runs,
        workers,
        postgres,
        run_args,
        out,
    } = what
    else {
        anyhow::bail!("not the Kafka benchmark");
    };
    anyhow::ensure!(
        runs >= 1 && events >= 1,
        "need at least one run and one event"
    );
    let bench = KafkaBench {
        brokers,
        topic,
        events,
        partitions,
        seed,
        runs,
        workers,
        postgres,
        binary: std::env::current_exe()?,
        run_args,
    };
    let (shape, results) =
        bench_kafka(&bench, &|msg| log::info!("{msg}")).map_err(anyhow::Error::msg)?;
    let mut file = match out {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => None,
    };
    let mut lines = vec![serde_json::to_string(&shape)?];
    eprintln!(
        "topic {}: {} events, partition sizes {:?}",
        shape.topic, shape.events, shape.partition_sizes
    );
    eprintln!(
        "{:<20} {:>7} {:>9} {:>12} {:>8} {:>10}",
        "name", "workers", "seconds", "events/s", "×raw", "peak MiB"
    );
    for m in &results {
        lines.push(serde_json::to_string(m)?);
        eprintln!(
            "{:<20} {:>7} {:>9.2} {:>12.0} {:>8.2} {:>10}",
            m.name,
            m.workers,
            m.seconds,
            m.events_per_sec,
            m.ratio_to_raw,
            m.peak_rss_mib
                .map(|r| format!("{r:.0}"))
                .unwrap_or_default()
        );
    }
    for line in &lines {
        println!("{line}");
        if let Some(f) = file.as_mut() {
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}
