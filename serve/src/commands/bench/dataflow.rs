//! `streampulse bench dataflow`: runs the dataflow harness of the `streampulse-benches` crate and
//! prints one JSON object per line (and a readable table on stderr).

use crate::cli::BenchDataflowArgs;

pub fn run(args: BenchDataflowArgs) -> anyhow::Result<()> {
    let BenchDataflowArgs {
        events,
        workers,
        runs,
        seed,
        batch,
        out,
    } = args;
    anyhow::ensure!(
        runs >= 1 && events >= 1,
        "need at least one run and one event"
    );
    anyhow::ensure!(workers.iter().all(|&w| w >= 1), "worker counts start at 1");
    log::info!("materialising {events} events, then {runs} runs of baseline and -w {workers:?}");
    let results = streampulse_benches::bench_dataflow(events, &workers, runs, seed, batch, |msg| {
        log::info!("{msg}")
    });
    eprintln!(
        "{:<18} {:>7} {:>12} {:>9} {:>14} {:>10} {:>9}",
        "name", "workers", "events", "seconds", "events/s", "×baseline", "×1 worker"
    );
    let mut lines = Vec::new();
    for m in &results {
        lines.push(serde_json::to_string(m)?);
        eprintln!(
            "{:<18} {:>7} {:>12} {:>9.3} {:>14.0} {:>10.2} {:>9}",
            m.name,
            m.workers,
            m.events,
            m.seconds,
            m.events_per_sec,
            m.ratio_to_baseline,
            m.speedup_vs_1_worker
                .map(|s| format!("{s:.2}"))
                .unwrap_or_default()
        );
    }
    super::emit(&lines, out.as_deref())
}
