//! The HTTP API served from the test's own process, the way `streampulse run` wires it, without
//! the process around it: the dataflow (`streampulse_dataflow::execute`) runs on live generated
//! traffic (a `GeneratorSource` paced by the wall clock, seed 1, clean scenario, 4 partitions)
//! on a thread of the test, its updates are collected into the in-memory `View`, and
//! `streampulse::http::serve` answers from a `streampulse::api::State` on a port-0 listener on a
//! tokio runtime of the test's own. With a schema, the PostgreSQL side is there too: the schema is
//! migrated, the sink (`streampulse::sink::run`) commits the updates, and alerts can be
//! acknowledged there.
//!
//! The traffic starts `backlog` in the past, so there are windows (and alerts) from the first
//! request on, and keeps flowing: counters grow between two scrapes and the watermark follows the
//! wall clock. Dropping an [`ApiServer`] stops everything (bounded).
//!
//! What the library logs goes to one capture per test binary ([`captured_log`]), since a process
//! has one logger: the tests check that it never holds a secret, and failure messages show it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use streampulse::api::State;
use streampulse::cli::ApiArgs;
use streampulse::shutdown::Shutdown;
use streampulse::sink::{SinkConfig, SinkStats};
use streampulse::store::{migrate, Database};
use streampulse_dataflow::{execute, Caller, Config, Counters, Limits, Plan, Resume, Update, View};
use streampulse_ingest::{Generator, GeneratorSource, Pace, Scenario, Source};

use super::postgres_url;

/// Partitions of the generated traffic (`run`'s default).
const PARTITIONS: u32 = 4;

/// What to serve: the API's flags, the dataflow's settings, the traffic, and the database.
pub struct InProcess {
    /// CORS origins, the acknowledgement token, the connection policy's timeouts.
    pub api: ApiArgs,
    pub config: Config,
    /// Generated events per second.
    pub rate: f64,
    /// How far in the past the traffic starts.
    pub backlog: Duration,
    /// A schema of `postgres_url()` for the sink and the acknowledgements (`None`: no database).
    pub schema: Option<String>,
}

/// A running in-process API (see the module's header); stopped when dropped.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    shutdown: Arc<Shutdown>,
    runtime: Option<tokio::runtime::Runtime>,
    threads: Vec<JoinHandle<()>>,
}

impl InProcess {
    /// Starts the dataflow, the collector, the sink (with a schema) and the server; returns once
    /// the API listens.
    pub fn start(self) -> ApiServer {
        capture_log();
        let InProcess {
            api,
            config,
            rate,
            backlog,
            schema,
        } = self;
        let db = schema.map(|schema| {
            let db = Database::new(&postgres_url(), &schema).expect("a valid URL and schema");
            let mut client = db
                .connect()
                .expect("PostgreSQL is up (run .ci/services up)");
            migrate(&mut client, &schema).expect("the schema migrates");
            db
        });
        let view = Arc::new(RwLock::new(View::new(config.window_ms)));
        let counters = Arc::new(Counters::default());
        let shutdown = Arc::new(Shutdown::default());
        let sink_stats = Arc::new(SinkStats::default());
        let mut state = State::new(
            view.clone(),
            counters.clone(),
            config.rules.clone(),
            &api,
            db.clone(),
        );
        state.sink = db.as_ref().map(|_| sink_stats.clone());
        let state = Arc::new(state);

        let (tx, rx) = crossbeam_channel::bounded::<Update>(1024);
        let mut threads = Vec::new();
        let to_sink = db.map(|db| {
            let (sink_tx, sink_rx) = crossbeam_channel::bounded::<Update>(1024);
            let sink_config = SinkConfig {
                topic: "generator".to_string(),
                window_ms: config.window_ms,
                retain_ms: config.retain_ms,
                rules: config.rules.clone(),
                stored_watermark: None,
                routes: Vec::new(),
            };
            let (stats, shutdown) = (sink_stats.clone(), shutdown.clone());
            threads.push(std::thread::spawn(move || {
                if let Err(e) = streampulse::sink::run(db, sink_config, sink_rx, &stats, &shutdown)
                {
                    log::error!("sink: {e}");
                }
            }));
            sink_tx
        });
        let event_to_view = state.event_to_view.clone();
        threads.push(std::thread::spawn(move || {
            streampulse::commands::run::collect(rx, &view, to_sink.as_ref(), &event_to_view)
        }));
        let start_ms = now_ms() - backlog.as_millis() as i64;
        let (stop, limits) = (
            shutdown.flag(),
            Limits {
                batch_max: 20_000,
                sample_every: state.sink.is_some().then_some(100),
                ..Limits::default()
            },
        );
        threads.push(std::thread::spawn(move || {
            let plan = Plan {
                config,
                limits,
                resume: Resume::default(),
            };
            let caller = Caller {
                output: Some(tx),
                stop,
                counters,
            };
            let result = execute(
                timely::Config::process(1),
                plan,
                caller,
                move |worker, workers| -> Box<dyn Source> {
                    let generator = Generator::new(1, Scenario::Clean, start_ms, rate);
                    Box::new(GeneratorSource::new(
                        generator,
                        PARTITIONS,
                        worker,
                        workers,
                        Pace::RealTime,
                    ))
                },
            );
            if let Err(e) = result {
                log::error!("the dataflow stopped: {e}");
            }
        }));

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("binds a free port");
        let addr = listener.local_addr().unwrap();
        let stop = shutdown.clone();
        runtime.spawn(streampulse::http::serve(
            listener,
            state.http_limits,
            state.connections.clone(),
            streampulse::api::handler(state.clone()),
            async move { stop.requested().await },
        ));
        ApiServer {
            addr,
            state,
            shutdown,
            runtime: Some(runtime),
            threads,
        }
    }
}

impl Drop for ApiServer {
    /// Stops the traffic and the server; the sink commits what is complete within 10 s. Waits 20 s
    /// at most for the threads (a stuck one is left behind rather than hanging the test).
    fn drop(&mut self) {
        self.shutdown.request(Duration::from_secs(10));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let threads = std::mem::take(&mut self.threads);
        std::thread::spawn(move || {
            for thread in threads {
                let _ = thread.join();
            }
            let _ = done_tx.send(());
        });
        if done_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            eprintln!("the in-process pipeline did not stop within 20 s");
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

// ---------------------------------------------------------------------------------------------
// The log
// ---------------------------------------------------------------------------------------------

/// Lines of the captured log kept (the newest).
const LOG_LINES: usize = 4000;

static LOG: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// Keeps what the library logs at `info` and above, as `streampulse run` does with `RUST_LOG=info`.
struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let line = format!("{} {}: {}", record.level(), record.target(), record.args());
            let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
            if log.len() == LOG_LINES {
                log.pop_front();
            }
            log.push_back(line);
        }
    }

    fn flush(&self) {}
}

fn capture_log() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        if log::set_boxed_logger(Box::new(Capture)).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
    });
}

/// The last `lines` lines the library logged in this test binary (every in-process server's).
pub fn captured_log(lines: usize) -> String {
    let log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let skip = log.len().saturating_sub(lines);
    log.iter().skip(skip).map(|l| format!("{l}\n")).collect()
}
