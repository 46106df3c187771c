//! `streampulse run`: wires a source, the dataflow and the view together and serves the API.
//!
//! ```text
//!   timely workers (source → dataflow) ──Update──▶ bounded channel ──▶ collector ──▶ View ◀── HTTP API
//!                                                                          │
//!                                                                          └──▶ sink ──▶ PostgreSQL
//! ```
//!
//! Only the process with index 0 receives output (worker 0 collects it), so only it serves HTTP.
//!
//! Start-up serves the API first, then waits (with backoff) for the broker and the database,
//! reporting them in `/health` meanwhile. A shutdown (the first SIGTERM or SIGINT, or a component
//! that cannot go on) stops reading, lets the sink commit what is complete and exits 0; if that
//! takes longer than `--shutdown-timeout` (the database is away) or a second signal comes, it exits
//! non-zero without losing anything, since uncommitted offsets are read again on the next start.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use streampulse_dataflow::{
    execute, Caller, Change, Counters, Limits, Plan, Resume, Side, Update, View,
};
use streampulse_ingest::kafka::{HighWatermarks, KafkaConfig, KafkaSource};
use streampulse_ingest::{Generator, GeneratorSource, Pace, Source};

use crate::api::State;
use crate::cli::{RunArgs, SourceKind};
use crate::health::Link;
use crate::latency::Histogram;
use crate::shutdown::Shutdown;
use crate::sink::{self, Failure, SinkConfig, SinkError, SinkStats};
use crate::store::{load_resume, migrate, Database, Session};

/// Updates that may wait for the collector before the dataflow has to pause.
const UPDATE_BUFFER: usize = 1024;

/// `streampulse run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = args.dataflow.config()?;
    let rules = config.rules.clone();
    // Checked here so that a bad cluster flag fails before anything starts.
    args.cluster.timely()?;
    let serves = args.cluster.process == 0;
    let grace = Duration::from_secs(args.shutdown_timeout);

    // Malformed settings fail here, before anything starts. Unreachable services do not: they are
    // retried below while the API serves and /health says what is missing.
    let db = match &args.postgres.postgres {
        Some(url) => Some(Database::new(url, &args.postgres.pg_schema)?),
        None => None,
    };
    let destinations = args.notify.destinations()?;
    anyhow::ensure!(
        destinations.is_empty() || db.is_some(),
        "notifications need --postgres: they are delivered from an outbox table"
    );
    for d in &destinations {
        log::info!("notifications: {d:?}");
    }
    let routes: Vec<_> = destinations.iter().map(|d| d.route.clone()).collect();
    let kafka = match args.source {
        SourceKind::Kafka => {
            anyhow::ensure!(
                args.backfill == 0,
                "--backfill is for the built-in generator (a topic has its own history: --start-at-ms)"
            );
            Some(args.kafka.config()?)
        }
        SourceKind::Generator => {
            anyhow::ensure!(args.generator.rate > 0.0, "--rate must be positive");
            anyhow::ensure!(
                args.backfill <= 7 * 24 * 60,
                "--backfill is at most a week (10080 minutes)"
            );
            anyhow::ensure!(
                args.generator.partitions >= 1,
                "--partitions must be at least 1"
            );
            None
        }
    };

    let view = Arc::new(RwLock::new(View::new(config.window_ms)));
    let counters = Arc::new(Counters::default());
    let shutdown = Arc::new(Shutdown::default());
    let sink_stats = Arc::new(SinkStats::default());
    let kafka_link = kafka.as_ref().map(|_| Arc::new(Link::default()));
    let mut state = State::new(
        view.clone(),
        counters.clone(),
        rules.clone(),
        &args.api,
        db.clone(),
    );
    let notify_stats = Arc::new(crate::notify::NotifyStats::new(&destinations));
    let notifies = serves && db.is_some() && !destinations.is_empty();
    state.routes = routes.clone();
    state.notify = notifies.then(|| notify_stats.clone());
    state.sink = db.as_ref().filter(|_| serves).map(|_| sink_stats.clone());
    state.kafka = kafka_link.clone();
    let event_to_view = state.event_to_view.clone();
    let high_watermarks = kafka
        .as_ref()
        .filter(|_| serves)
        .map(|_| Arc::new(std::sync::Mutex::new(BTreeMap::new())));
    state.high_watermarks = high_watermarks.clone();
    let state = Arc::new(state);

    let runtime = http_runtime()?;
    let result = runtime.block_on(async {
        tokio::spawn(watch_signals(shutdown.clone(), grace));
        let server = if serves {
            let listener = tokio::net::TcpListener::bind(args.http)
                .await
                .with_context(|| format!("binding the HTTP API to {}", args.http))?;
            log::info!("API and dashboard on http://{}", listener.local_addr()?);
            let stop = shutdown.clone();
            Some(tokio::spawn(crate::http::serve(
                listener,
                state.http_limits,
                state.connections.clone(),
                crate::api::handler(state),
                async move { stop.requested().await },
            )))
        } else {
            log::info!(
                "process {} computes; process 0 serves the API",
                args.cluster.process
            );
            None
        };
        let status = tokio::spawn(status_line(
            view.clone(),
            counters.clone(),
            args.status_interval,
        ));

        // Connecting, migrating and reading the stored progress may wait for the database or the
        // broker; the API answers meanwhile.
        let start = Start {
            db: db.clone(),
            kafka: kafka.clone(),
            window_ms: config.window_ms,
            // Restored state reaches back as far as the windows still held read (baselines,
            // forecasts, the sustained rule), so theirs continue from complete trails.
            restore_ms: config.retain_ms + config.reach() as i64 * config.window_ms,
            database: sink_stats.clone(),
            kafka_link: kafka_link.clone(),
            shutdown: shutdown.clone(),
        };
        let db_for_notify = db.clone();
        let prepared = tokio::task::spawn_blocking(move || start.prepare())
            .await
            .map_err(|_| anyhow::anyhow!("start-up panicked"))?;
        let threads = match prepared {
            Ok(Some(prepared)) => Some(start_threads(
                &args,
                config,
                prepared,
                Components {
                    db,
                    kafka,
                    serves,
                    view: view.clone(),
                    counters: counters.clone(),
                    sink_stats: sink_stats.clone(),
                    kafka_link,
                    high_watermarks,
                    event_to_view,
                    shutdown: shutdown.clone(),
                    routes,
                },
            )?),
            Ok(None) => None, // shut down before the services answered
            Err(e) => {
                shutdown.fail(format!("{e:#}"));
                None
            }
        };

        if let (Some(db), true, Some(_)) = (db_for_notify, notifies, &threads) {
            // After start-up migrated the tables; stops with the shutdown (an undelivered
            // notification stays in the outbox for the next start).
            let stop = shutdown.clone();
            tokio::spawn(crate::notify::run(
                db,
                destinations,
                args.notify.settings(),
                notify_stats,
                async move { stop.requested().await },
            ));
        }

        shutdown.requested().await;
        status.abort();
        let finished = finish(threads, &shutdown, grace).await;
        if let Some(server) = server {
            let _ = tokio::time::timeout(Duration::from_secs(1), server).await;
        }
        finished
    });
    // Blocking tasks still running (a start-up attempt stuck on a connect) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result?;
    match shutdown.failure() {
        Some(failure) => Err(anyhow::anyhow!(failure)),
        None => Ok(()),
    }
}

/// What start-up needs in order to wait for the services.
struct Start {
    db: Option<Database>,
    kafka: Option<KafkaConfig>,
    window_ms: i64,
    /// How far behind the stored watermark restored windows reach.
    restore_ms: i64,
    database: Arc<SinkStats>,
    kafka_link: Option<Arc<Link>>,
    shutdown: Arc<Shutdown>,
}

/// What start-up found: the topic's partitions, and where to resume.
struct Prepared {
    partitions: u32,
    offsets: BTreeMap<u32, i64>,
    resume: Resume,
}

impl Start {
    /// Waits (with backoff) until the broker and the database answer, then reads the stored
    /// progress. `None` when a shutdown came first; an error for what retrying cannot fix.
    fn prepare(&self) -> anyhow::Result<Option<Prepared>> {
        let mut backoff = Duration::from_millis(250);
        let mut partitions = None;
        loop {
            if self.shutdown.is_requested() {
                return Ok(None);
            }
            if let (Some(kafka), None) = (&self.kafka, partitions) {
                match kafka.partition_count(Duration::from_secs(30)) {
                    Ok(count) => {
                        log::info!(
                            "kafka: topic {} with {count} partitions on {}",
                            kafka.topic,
                            kafka.brokers
                        );
                        if let Some(link) = &self.kafka_link {
                            link.ok();
                        }
                        partitions = Some(count);
                    }
                    Err(e) if streampulse_ingest::kafka::is_missing_topic(&e) => {
                        anyhow::bail!("topic {} does not exist on {}", kafka.topic, kafka.brokers)
                    }
                    Err(e) => {
                        let error = format!("Kafka at {}: {e}", kafka.brokers);
                        log::warn!("{error}; retrying in {backoff:?}");
                        if let Some(link) = &self.kafka_link {
                            link.failed(error);
                        }
                        if self.shutdown.sleep(backoff) {
                            return Ok(None);
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
            let (offsets, resume) = match &self.db {
                None => (BTreeMap::new(), Resume::default()),
                Some(db) => match self.resume(db) {
                    Ok(found) => {
                        self.database.database.ok();
                        found
                    }
                    Err(e) if Failure::of(&e) == Failure::Transient => {
                        let error = format!("{e:#}");
                        log::warn!("{error}; retrying in {backoff:?}");
                        self.database.database.failed(error);
                        if self.shutdown.sleep(backoff) {
                            return Ok(None);
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                    Err(e) => return Err(e.context("preparing PostgreSQL")),
                },
            };
            return Ok(Some(Prepared {
                partitions: partitions.unwrap_or(0),
                offsets,
                resume,
            }));
        }
    }

    /// Migrates and reads what an earlier run stored for the topic, within a deadline (a server
    /// that never answers is given up on and retried, see [`Session`]).
    fn resume(&self, db: &Database) -> anyhow::Result<(BTreeMap<u32, i64>, Resume)> {
        let topic = self.kafka.as_ref().map(|k| k.topic.clone());
        let (window_ms, restore_ms, schema) = (self.window_ms, self.restore_ms, db.schema.clone());
        let shutdown = self.shutdown.clone();
        let (offsets, resume) = Session::new(db.clone()).run(
            Duration::from_secs(120),
            &|| shutdown.is_requested(),
            move |client| {
                migrate(client, &schema)?;
                match topic {
                    Some(topic) => load_resume(client, &topic, window_ms, restore_ms),
                    None => Ok((BTreeMap::new(), Resume::default())),
                }
            },
        )?;
        log::info!(
            "{}: resuming {} partitions, {} stored rows back in memory",
            db.display(),
            offsets.len(),
            resume.rows.len()
        );
        Ok((offsets, resume))
    }
}

/// The shared pieces the pipeline's threads are built from.
struct Components {
    db: Option<Database>,
    kafka: Option<KafkaConfig>,
    serves: bool,
    view: Arc<RwLock<View>>,
    counters: Arc<Counters>,
    sink_stats: Arc<SinkStats>,
    kafka_link: Option<Arc<Link>>,
    high_watermarks: Option<Arc<std::sync::Mutex<BTreeMap<u32, i64>>>>,
    event_to_view: Arc<Histogram>,
    shutdown: Arc<Shutdown>,
    /// The notification destinations, for the sink's outbox.
    routes: Vec<crate::notify::Route>,
}

/// The running pipeline's threads, joined in data order at shutdown.
struct Threads {
    dataflow: JoinHandle<Result<(), streampulse_dataflow::Error>>,
    collector: JoinHandle<()>,
    sink: Option<JoinHandle<Result<(), SinkError>>>,
}

fn start_threads(
    args: &RunArgs,
    config: streampulse_dataflow::Config,
    prepared: Prepared,
    parts: Components,
) -> anyhow::Result<Threads> {
    let Components {
        db,
        kafka,
        serves,
        view,
        counters,
        sink_stats,
        kafka_link,
        high_watermarks,
        event_to_view,
        shutdown,
        routes,
    } = parts;
    let Prepared {
        partitions,
        offsets,
        resume,
    } = prepared;
    let (tx, rx) = crossbeam_channel::bounded::<Update>(UPDATE_BUFFER);
    let sink_channel = db
        .as_ref()
        .filter(|_| serves)
        .map(|_| crossbeam_channel::bounded::<Update>(UPDATE_BUFFER));

    let sink = match (&db, &sink_channel) {
        (Some(db), Some((_, sink_rx))) => {
            let sink_config = SinkConfig {
                topic: kafka
                    .as_ref()
                    .map_or_else(|| "generator".to_string(), |k| k.topic.clone()),
                window_ms: config.window_ms,
                // Derived changes of let-go windows come until the windows reading them go too.
                retain_ms: config.retain_ms + config.reach() as i64 * config.window_ms,
                rules: config.rules.clone(),
                stored_watermark: resume.watermark_ms,
                routes,
            };
            let (db, sink_rx, stats, shutdown) = (
                db.clone(),
                sink_rx.clone(),
                sink_stats.clone(),
                shutdown.clone(),
            );
            Some(
                std::thread::Builder::new()
                    .name("sink".into())
                    .spawn(move || {
                        let result = sink::run(db, sink_config, sink_rx, &stats, &shutdown);
                        if let Err(SinkError::Fatal(e)) = &result {
                            log::error!("sink: {e}; stopping");
                            shutdown.fail(format!("the PostgreSQL sink stopped: {e}"));
                        }
                        result
                    })?,
            )
        }
        _ => None,
    };
    let collector = {
        let view = view.clone();
        let to_sink = sink_channel.map(|(sink_tx, _)| sink_tx);
        std::thread::Builder::new()
            .name("collector".into())
            .spawn(move || collect(rx, &view, to_sink.as_ref(), &event_to_view))?
    };

    // Lag = high watermark − position; the high watermarks are fetched every 2 s off the data path,
    // which doubles as the broker's health probe for /health.
    if let (Some(kafka), Some(highs), Some(link)) = (&kafka, high_watermarks, kafka_link) {
        let client = HighWatermarks::new(kafka)?;
        let shutdown = shutdown.clone();
        std::thread::Builder::new()
            .name("kafka-probe".into())
            .spawn(move || {
                while !shutdown.is_requested() {
                    match client.fetch(partitions) {
                        Ok(marks) => {
                            *highs.lock().expect("lag lock") = marks;
                            link.ok();
                        }
                        Err(e) => link.failed(format!("{e}")),
                    }
                    shutdown.sleep(Duration::from_secs(2));
                }
            })?;
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let start_ms = now_ms - args.backfill as i64 * 60_000;
    let gen = args.generator.clone();
    if kafka.is_none() {
        log::info!(
            "generator: {} events/s, seed {}, scenario {}, {} partitions, from {} minutes ago",
            gen.rate,
            gen.seed,
            gen.scenario,
            gen.partitions,
            args.backfill
        );
    }
    let timely_config = args.cluster.timely()?;
    let dataflow = {
        let counters = counters.clone();
        let stop = shutdown.flag();
        let output = serves.then_some(tx);
        let limits = Limits {
            batch_max: args.batch as usize,
            catch_up_batch_max: args.catch_up_batch as usize,
            // The old pipeline's event_log kept every 100th event; only the sink stores it.
            sample_every: db.is_some().then_some(100),
            max_rate: args.max_rate.map(|r| r / args.cluster.workers as f64),
            ..Limits::default()
        };
        std::thread::Builder::new()
            .name("dataflow".into())
            .spawn(move || {
                let failed = shutdown.clone();
                let run = std::panic::AssertUnwindSafe(move || {
                    execute(
                        timely_config,
                        Plan {
                            config,
                            limits,
                            resume,
                        },
                        Caller {
                            output,
                            stop,
                            counters,
                        },
                        move |worker, workers| -> Box<dyn Source> {
                            match &kafka {
                                Some(kafka) => Box::new(
                                    KafkaSource::new(kafka, worker, workers, &offsets)
                                        .expect("the topic was checked at start-up"),
                                ),
                                None => {
                                    let generator =
                                        Generator::new(gen.seed, gen.scenario, start_ms, gen.rate);
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
                    )
                });
                // The dataflow ends only when asked to; if it stops by itself (a worker panicked,
                // a peer process died) the process must not go on looking healthy.
                let result = match std::panic::catch_unwind(run) {
                    Ok(result) => result,
                    Err(_) => Err(streampulse_dataflow::Error::WorkerPanicked),
                };
                match &result {
                    Err(e) => failed.fail(format!("the dataflow stopped: {e}")),
                    Ok(()) if !failed.is_requested() => {
                        failed.fail("the dataflow stopped: its sources ended".to_string())
                    }
                    Ok(()) => {}
                }
                result
            })?
    };
    Ok(Threads {
        dataflow,
        collector,
        sink,
    })
}

/// The collector: hands each update from the dataflow to the sink (if any) and applies it to the
/// view the API serves, observing how old its newest record was by then. Runs until the dataflow
/// drops its sender.
pub fn collect(
    updates: crossbeam_channel::Receiver<Update>,
    view: &RwLock<View>,
    sink: Option<&crossbeam_channel::Sender<Update>>,
    event_to_view: &Histogram,
) {
    for update in updates {
        if let Some(sink) = sink {
            // Blocks when the sink falls behind: the dataflow then waits, nothing is dropped.
            // Fails only once the sink has stopped.
            let _ = sink.send(update.clone());
        }
        let record_times: Vec<i64> = update
            .changes
            .iter()
            .filter_map(|change| match change {
                Change::Side {
                    row: Side::Position { record_ms, .. },
                    ..
                } => *record_ms,
                _ => None,
            })
            .collect();
        view.write().expect("view lock").apply(update);
        for record_ms in record_times {
            event_to_view.observe_since(record_ms);
        }
    }
}

/// Joins the pipeline's threads, bounded: past the grace period (plus a margin for the sink to
/// notice it), or on a second signal, the process exits without waiting further.
async fn finish(
    threads: Option<Threads>,
    shutdown: &Shutdown,
    grace: Duration,
) -> anyhow::Result<()> {
    let Some(threads) = threads else {
        return Ok(());
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("finish".into())
        .spawn(move || {
            let result = (|| -> anyhow::Result<()> {
                threads
                    .dataflow
                    .join()
                    .map_err(|_| anyhow::anyhow!("dataflow thread panicked"))?
                    .map_err(anyhow::Error::msg)?;
                threads
                    .collector
                    .join()
                    .map_err(|_| anyhow::anyhow!("collector thread panicked"))?;
                if let Some(sink) = threads.sink {
                    sink.join()
                        .map_err(|_| anyhow::anyhow!("sink thread panicked"))??;
                }
                Ok(())
            })();
            let _ = done_tx.send(result);
        })?;
    let forced = async {
        // The first signal started this shutdown; a second one ends the wait.
        second_signal().await;
        anyhow::bail!("a second signal: exiting without waiting for the last commit (uncommitted offsets are read again on the next start)")
    };
    let overdue = async {
        tokio::time::sleep(grace + Duration::from_secs(15)).await;
        anyhow::bail!("the pipeline did not stop within the shutdown timeout of {grace:?}")
    };
    let _ = shutdown;
    tokio::select! {
        result = done_rx => result.map_err(|_| anyhow::anyhow!("the pipeline's threads vanished"))?,
        result = forced => result,
        result = overdue => result,
    }
}

/// Turns the first SIGTERM or SIGINT into a shutdown request with a deadline `grace` away.
async fn watch_signals(shutdown: Arc<Shutdown>, grace: Duration) {
    signal().await;
    log::info!("shutting down: committing what is complete (giving up after {grace:?})");
    shutdown.request(grace);
}

/// The runtime of the HTTP server (and the few tasks around it): two threads, whatever the
/// machine, beside the dataflow's own threads. `bench http-ceiling` uses the same.
pub(crate) fn http_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the HTTP runtime")
}

/// Resolves on the next SIGINT or SIGTERM.
pub(crate) async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

/// The signal after the first: the handlers stay installed, so this waits for a new one.
async fn second_signal() {
    signal().await;
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
            (view.watermark(), view.windows().len())
        };
        let watermark = watermark.map_or("not yet known".to_string(), crate::api::iso8601);
        log::info!(
            "status: {rate:.0} events/s, {events} events, {late} late, watermark {watermark}, {windows} windows in memory"
        );
    }
}
