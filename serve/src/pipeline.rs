//! `streampulse run`: wires a source, the dataflow and the view together and serves the API.
//!
//! ```text
//!   timely workers (source → dataflow) ──Update──▶ bounded channel ──▶ collector ──▶ View ◀── HTTP API
//!                                                                          │
//!                                                                          └──▶ sink ──▶ PostgreSQL
//! ```
//!
//! Only the process with index 0 receives output (worker 0 collects it), so only it serves HTTP.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;

use anyhow::Context;
use streampulse_dataflow::{execute, Counters, Limits, Resume, Update, View};
use streampulse_ingest::kafka::{HighWatermarks, KafkaSource};
use streampulse_ingest::{Generator, GeneratorSource, Pace, Source};

use crate::api::State;
use crate::cli::{RunArgs, SourceKind};
use crate::db::{load_resume, Database};
use crate::sink::{self, SinkConfig, SinkStats};

/// Updates that may wait for the collector before the dataflow has to pause.
const UPDATE_BUFFER: usize = 1024;
/// Records fed as one batch in live mode: small, so the view stays fresh.
const LIVE_BATCH: usize = 20_000;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.dataflow.config()?;
    let rules = config.rules.clone();
    let timely_config = args.cluster.timely()?;
    let serves = args.cluster.process == 0;

    // Misconfiguration fails here, before anything starts: a bad URL, an unreachable database, a
    // missing topic.
    let db = match &args.postgres.postgres {
        Some(url) => Some(Database::new(url, &args.postgres.pg_schema)?),
        None => None,
    };
    let mut kafka_partitions = 0;
    let kafka = match args.source {
        SourceKind::Kafka => {
            let kafka = args.kafka.config()?;
            let partitions = kafka
                .partition_count(Duration::from_secs(30))
                .with_context(|| format!("topic {} on {}", kafka.topic, kafka.brokers))?;
            log::info!(
                "kafka: topic {} with {partitions} partitions on {}",
                kafka.topic,
                kafka.brokers
            );
            kafka_partitions = partitions;
            Some(kafka)
        }
        SourceKind::Generator => {
            anyhow::ensure!(args.generator.rate > 0.0, "--rate must be positive");
            anyhow::ensure!(
                args.generator.partitions >= 1,
                "--partitions must be at least 1"
            );
            None
        }
    };
    let (offsets, resume) = match (&db, &kafka) {
        (Some(db), Some(kafka)) => {
            let mut client = db.prepare()?;
            let (offsets, resume) = load_resume(
                &mut client,
                &kafka.topic,
                config.window_ms,
                config.retain_ms,
            )?;
            log::info!(
                "{}: resuming {} partitions, {} stored rows back in memory",
                db.display(),
                offsets.len(),
                resume.rows.len()
            );
            (offsets, resume)
        }
        (Some(db), None) => {
            db.prepare()?;
            (BTreeMap::new(), Resume::default())
        }
        _ => (BTreeMap::new(), Resume::default()),
    };

    let view = Arc::new(RwLock::new(View::new(config.window_ms)));
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = crossbeam_channel::bounded::<Update>(UPDATE_BUFFER);
    let sink_channel = db
        .as_ref()
        .filter(|_| serves)
        .map(|_| crossbeam_channel::bounded::<Update>(UPDATE_BUFFER));

    let sink_stats = Arc::new(SinkStats::default());
    let sink = match (&db, &sink_channel) {
        (Some(db), Some((_, sink_rx))) => {
            let sink_config = SinkConfig {
                topic: kafka
                    .as_ref()
                    .map_or_else(|| "generator".to_string(), |k| k.topic.clone()),
                window_ms: config.window_ms,
                retain_ms: config.retain_ms,
                rules: rules.clone(),
            };
            let (db, sink_rx, stats) = (db.clone(), sink_rx.clone(), sink_stats.clone());
            Some(
                std::thread::Builder::new()
                    .name("sink".into())
                    .spawn(move || sink::run(db, sink_config, sink_rx, &stats))?,
            )
        }
        _ => None,
    };
    let collector = {
        let view = view.clone();
        let to_sink = sink_channel.map(|(sink_tx, _)| sink_tx);
        std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || {
                for update in rx {
                    if let Some(sink) = &to_sink {
                        // Blocks when the sink falls behind: the dataflow then waits, nothing is dropped.
                        let _ = sink.send(update.clone());
                    }
                    view.write().expect("view lock").apply(update);
                }
            })?
    };

    // Lag = high watermark − position; the high watermarks are fetched every 5 s off the data path.
    let high_watermarks = match (&kafka, serves) {
        (Some(kafka), true) => {
            let highs = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
            let (client, shared, partitions) =
                (HighWatermarks::new(kafka)?, highs.clone(), kafka_partitions);
            std::thread::Builder::new()
                .name("kafka-lag".into())
                .spawn(move || loop {
                    match client.fetch(partitions) {
                        Ok(marks) => *shared.lock().expect("lag lock") = marks,
                        Err(e) => log::debug!("fetching high watermarks: {e}"),
                    }
                    std::thread::sleep(Duration::from_secs(5));
                })?;
            Some(highs)
        }
        _ => None,
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let gen = args.generator.clone();
    if kafka.is_none() {
        log::info!(
            "generator: {} events/s, seed {}, scenario {}, {} partitions",
            gen.rate,
            gen.seed,
            gen.scenario,
            gen.partitions
        );
    }
    let dataflow = {
        let (stop, counters) = (stop.clone(), counters.clone());
        let output = serves.then_some(tx);
        let limits = Limits {
            batch_max: LIVE_BATCH,
            // The old pipeline's event_log kept every 100th event; only the sink stores it.
            sample_every: db.is_some().then_some(100),
            max_rate: args.max_rate.map(|r| r / args.cluster.workers as f64),
            ..Limits::default()
        };
        std::thread::Builder::new()
            .name("dataflow".into())
            .spawn(move || {
                execute(
                    timely_config,
                    config,
                    limits,
                    move |worker, workers| -> Box<dyn Source> {
                        match &kafka {
                            Some(kafka) => Box::new(
                                KafkaSource::new(kafka, worker, workers, &offsets)
                                    .expect("the topic was checked at start-up"),
                            ),
                            None => {
                                let generator =
                                    Generator::new(gen.seed, gen.scenario, now_ms, gen.rate);
                                Box::new(GeneratorSource::new(
                                    generator,
                                    gen.partitions,
                                    worker,
                                    workers,
                                    Pace::RealTime,
                                ))
                            }
                        }
                    },
                    resume,
                    output,
                    stop,
                    counters,
                )
            })?
    };

    let mut state = State::new(view.clone(), counters.clone(), rules, &args.api, db.clone());
    state.sink = sink.is_some().then_some(sink_stats);
    state.high_watermarks = high_watermarks;
    let state = Arc::new(state);
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
        if serves {
            let listener = tokio::net::TcpListener::bind(args.http)
                .await
                .with_context(|| format!("binding the HTTP API to {}", args.http))?;
            log::info!("API and dashboard on http://{}", listener.local_addr()?);
            crate::http::serve(listener, state, shutdown_signal()).await;
        } else {
            log::info!(
                "process {} computes; process 0 serves the API",
                args.cluster.process
            );
            shutdown_signal().await;
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
    if let Some(sink) = sink {
        sink.join()
            .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    log::info!("shutting down: finishing the current batch and committing it");
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
        let watermark = watermark.map_or("closed".to_string(), |t| {
            crate::api::iso8601(streampulse_dataflow::watermark_of(t))
        });
        log::info!(
            "status: {rate:.0} events/s, {events} events, {late} late, watermark {watermark}, {windows} windows in memory"
        );
    }
}
