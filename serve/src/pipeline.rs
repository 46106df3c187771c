//! `streampulse run`: wires a source, the dataflow and the view together and serves the API.
//!
//! ```text
//!   timely workers (source → dataflow) ──Update──▶ bounded channel ──▶ collector ──▶ View ◀── HTTP API
//!                                                                                     ▲
//!                                                                      status line ───┘
//! ```
//!
//! Only the process with index 0 receives output (worker 0 collects it), so only it serves HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use streampulse_dataflow::{execute, Counters, Limits, View};
use streampulse_ingest::{Generator, GeneratorSource, Pace};

use crate::api::State;
use crate::cli::RunArgs;

/// Updates that may wait for the collector before the dataflow has to pause.
const UPDATE_BUFFER: usize = 1024;
/// Records fed as one batch in live mode: small, so the view stays fresh.
const LIVE_BATCH: usize = 20_000;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.dataflow.config()?;
    let rules = config.rules.clone();
    let timely_config = args.cluster.timely()?;
    anyhow::ensure!(args.generator.rate > 0.0, "--rate must be positive");
    anyhow::ensure!(
        args.generator.partitions >= 1,
        "--partitions must be at least 1"
    );
    let serves = args.cluster.process == 0;

    let view = Arc::new(RwLock::new(View::new(config.window_ms)));
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::bounded(UPDATE_BUFFER);

    let collector = {
        let view = view.clone();
        std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                for update in rx {
                    view.write().expect("view lock").apply(update);
                }
            })?
    };

    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let gen = args.generator.clone();
    log::info!(
        "generator: {} events/s, seed {}, scenario {}, {} partitions",
        gen.rate,
        gen.seed,
        gen.scenario,
        gen.partitions
    );
    let dataflow = {
        let (stop, counters) = (stop.clone(), counters.clone());
        let output = serves.then_some(tx);
        let limits = Limits {
            batch_max: LIVE_BATCH,
            ..Limits::default()
        };
        std::thread::Builder::new()
            .name("dataflow".into())
            .spawn(move || {
                execute(
                    timely_config,
                    config,
                    limits,
                    move |worker, workers| {
                        let generator = Generator::new(gen.seed, gen.scenario, now_ms, gen.rate);
                        Box::new(GeneratorSource::new(
                            generator,
                            gen.partitions,
                            worker,
                            workers,
                            Pace::RealTime,
                        ))
                    },
                    output,
                    stop,
                    counters,
                )
            })?
    };

    let state = Arc::new(State::new(view.clone(), counters.clone(), rules));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")?;
    runtime.block_on(async {
        let status = tokio::spawn(status_line(
            view.clone(),
            counters.clone(),
            args.status_interval,
        ));
        let shutdown = async {
            let _ = tokio::signal::ctrl_c().await;
            log::info!("shutting down");
        };
        if serves {
            let listener = tokio::net::TcpListener::bind(args.http)
                .await
                .with_context(|| format!("binding the HTTP API to {}", args.http))?;
            log::info!("API and dashboard on http://{}", listener.local_addr()?);
            crate::http::serve(listener, state, shutdown).await;
        } else {
            log::info!(
                "process {} computes; process 0 serves the API",
                args.cluster.process
            );
            shutdown.await;
        }
        status.abort();
        anyhow::Ok(())
    })?;

    stop.store(true, Ordering::Relaxed);
    dataflow
        .join()
        .map_err(|_| anyhow::anyhow!("dataflow thread panicked"))?
        .map_err(anyhow::Error::msg)?;
    collector
        .join()
        .map_err(|_| anyhow::anyhow!("collector thread panicked"))?;
    Ok(())
}

/// Logs events/s, late events, the watermark and the windows in memory every `interval` seconds.
async fn status_line(view: Arc<RwLock<View>>, counters: Arc<Counters>, interval: u64) {
    let interval = Duration::from_secs(interval.max(1));
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::time::sleep(interval).await;
        let events = counters.events.load(Ordering::Relaxed);
        let late = counters.late.load(Ordering::Relaxed);
        let rate = (events - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), events);
        let (watermark, windows) = {
            let view = view.read().expect("view lock");
            (view.frontier(), view.windows().len())
        };
        let watermark = watermark.map_or("closed".to_string(), |t| crate::api::iso8601(t as i64));
        log::info!(
            "status: {rate:.0} events/s, {events} events, {late} late, watermark {watermark}, {windows} windows in memory"
        );
    }
}
