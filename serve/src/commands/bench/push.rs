//! `streampulse bench push`: event-to-dashboard latency by push beside polling
//! (`streampulse_benches::push`), with this very binary as the pipeline; prints one JSON object
//! per line and a table on stderr, with each path's ratio to push.

use std::time::Duration;

use streampulse_benches::kafka::KafkaBench;
use streampulse_benches::push::{push_latency, PushBench};

use crate::cli::BenchPushArgs;

pub fn run(args: BenchPushArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate * args.seconds >= 1.0 && args.seconds <= 240.0,
        "--rate × --seconds must offer at least one event, and --seconds is at most 240"
    );
    anyhow::ensure!(args.poll_ms >= 1, "--poll-ms must be positive");
    let bench = PushBench {
        kafka: KafkaBench {
            brokers: args.brokers,
            topic: args.topic,
            events: 0,
            partitions: args.partitions,
            seed: args.seed,
            runs: 1,
            workers: vec![1],
            postgres: None,
            binary: std::env::current_exe()?,
            run_args: args.run_args,
            kstreams: None,
        },
        rate: args.rate,
        seconds: args.seconds,
        poll: Duration::from_millis(args.poll_ms),
    };
    let results = push_latency(&bench, &|msg| log::info!("{msg}")).map_err(anyhow::Error::msg)?;
    let lines = results
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    let push = results
        .iter()
        .find(|m| m.name == "event_to_push")
        .expect("push_latency measures push");
    eprintln!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11}",
        "latency", "events/s", "p50 ms", "p99 ms", "max ms", "p50 ÷ push", "p99 ÷ push"
    );
    for m in &results {
        eprintln!(
            "{:<22} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>11.2} {:>11.2}",
            m.name,
            m.rate,
            m.p50_ms,
            m.p99_ms,
            m.max_ms,
            m.p50_ms / push.p50_ms.max(0.001),
            m.p99_ms / push.p99_ms.max(0.001)
        );
    }
    super::emit(&lines, args.out.as_deref())
}
