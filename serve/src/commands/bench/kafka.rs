//! `streampulse bench kafka`: the Kafka benchmark of `streampulse_benches::kafka` (throughput of
//! the real path beside raw consume; latency at an offered rate), run with this very binary as the
//! pipeline; prints one JSON object per line and readable tables on stderr.

use streampulse_benches::kafka::{bench_kafka, latency, KafkaBench};

use crate::cli::BenchKafkaArgs;

pub fn run(args: BenchKafkaArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.runs >= 1 && args.events >= 1,
        "need at least one run and one event"
    );
    let (latency_rate, latency_seconds, out) = (args.latency_rate, args.latency_seconds, args.out);
    let no_throughput = args.no_throughput;
    let bench = KafkaBench {
        brokers: args.brokers,
        topic: args.topic,
        events: args.events,
        partitions: args.partitions,
        seed: args.seed,
        runs: args.runs,
        workers: args.workers,
        postgres: args.postgres,
        binary: std::env::current_exe()?,
        run_args: args.run_args,
        kstreams: args.kstreams,
    };
    if let Some(rate) = latency_rate {
        // Checked before anything runs, so a bad flag cannot cost the throughput runs.
        anyhow::ensure!(
            rate * latency_seconds >= 1.0,
            "latency needs a rate and a duration that offer at least one event"
        );
    }
    if !no_throughput {
        let mut lines = Vec::new();
        throughput(&bench, &mut lines)?;
        // Out before the latency runs, so that a failure there loses none of these.
        super::emit(&lines, out.as_deref())?;
    }
    let mut lines = Vec::new();
    if let Some(rate) = latency_rate {
        let mut rows = Vec::new();
        for &workers in &bench.workers {
            let results = latency(&bench, workers, rate, latency_seconds, &|msg| {
                log::info!("{msg}")
            })
            .map_err(anyhow::Error::msg)?;
            for m in results {
                lines.push(serde_json::to_string(&m)?);
                rows.push(m);
            }
        }
        eprintln!(
            "{:<18} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency", "workers", "events/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for m in rows {
            eprintln!(
                "{:<18} {:>7} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                m.name, m.workers, m.rate, m.p50_ms, m.p99_ms, m.p999_ms, m.max_ms
            );
        }
    }
    super::emit(&lines, out.as_deref())
}

/// The throughput part: prints its table and adds its JSON lines.
fn throughput(bench: &KafkaBench, lines: &mut Vec<String>) -> anyhow::Result<()> {
    let (shape, results) =
        bench_kafka(bench, &|msg| log::info!("{msg}")).map_err(anyhow::Error::msg)?;
    lines.push(serde_json::to_string(&shape)?);
    eprintln!(
        "topic {}: {} events, partition sizes {:?}",
        shape.topic, shape.events, shape.partition_sizes
    );
    eprintln!(
        "{:<20} {:>7} {:>9} {:>12} {:>8} {:>10} {:>12}",
        "name", "workers", "seconds", "events/s", "×raw", "peak MiB", "after start"
    );
    for m in &results {
        lines.push(serde_json::to_string(m)?);
        eprintln!(
            "{:<20} {:>7} {:>9.2} {:>12.0} {:>8.2} {:>10} {:>12}",
            m.name,
            m.workers,
            m.seconds,
            m.events_per_sec,
            m.ratio_to_raw,
            m.peak_rss_mib
                .map(|r| format!("{r:.0}"))
                .unwrap_or_default(),
            m.events_per_sec_after_start
                .map(|r| format!("{r:.0}"))
                .unwrap_or_default()
        );
        if let Some(dropped) = m.dropped_late {
            eprintln!("{:<20} dropped {dropped:.0} events as late", "");
        }
    }
    Ok(())
}
