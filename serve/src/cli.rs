//! Command-line flags. Every flag can also be set through the environment variable named beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use streampulse_dataflow::{Baselines, Config, Forecasts, Rules};
use streampulse_ingest::Scenario;

#[derive(Parser, Debug)]
#[command(
    name = "streampulse",
    version,
    about = "Real-time download analytics on timely/differential dataflow"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pipeline (with no flags: the built-in generator, API on 127.0.0.1:8080).
    Run(Box<RunArgs>),
    /// Write generated events to a Kafka topic (creating it if missing).
    Generate(GenerateArgs),
    /// Apply the SQL migrations to PostgreSQL (also done at start-up by `run`).
    Migrate(MigrateArgs),
    /// Run a benchmark and print one JSON object per line (`http-ceiling`: serve, for
    /// benches/api-load.sh).
    Bench(BenchArgs),
}

/// Where events come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// The built-in generator (no Kafka needed).
    Generator,
    /// A Kafka topic.
    Kafka,
}

/// How record values are encoded on the wire.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireFormat {
    /// A bare Avro datum of schemas/event.avsc.
    Avro,
    /// Confluent framing (0x00, schema id, datum) with a Schema Registry.
    Confluent,
}

/// Kafka connection and topic.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Bootstrap brokers.
    #[arg(long, env = "STREAMPULSE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    #[arg(long, env = "STREAMPULSE_TOPIC", default_value = "content-downloads")]
    pub topic: String,
    /// Wire format of record values.
    #[arg(long, env = "STREAMPULSE_FORMAT", value_enum, default_value_t = WireFormat::Avro)]
    pub format: WireFormat,
    /// Schema Registry base URL (for --format confluent); `https://` is verified against the
    /// system's certificates (and --registry-ca).
    #[arg(long, env = "STREAMPULSE_REGISTRY", hide_env_values = true)]
    pub registry: Option<String>,
    /// Extra CA certificates (PEM) the registry's certificate may chain to.
    #[arg(long, env = "STREAMPULSE_REGISTRY_CA")]
    pub registry_ca: Option<PathBuf>,
    /// Registry user for HTTP basic auth (the password comes from STREAMPULSE_REGISTRY_PASSWORD,
    /// so that it shows in no process list; credentials in the URL work too).
    #[arg(long, env = "STREAMPULSE_REGISTRY_USER")]
    pub registry_user: Option<String>,
    #[arg(skip = std::env::var("STREAMPULSE_REGISTRY_PASSWORD").ok().map(Secret))]
    pub registry_password: Option<Secret>,
    /// A librdkafka setting, `key=value` (repeatable), e.g. security.protocol=SASL_SSL.
    #[arg(long = "kafka-option", value_parser = parse_key_value)]
    pub kafka_options: Vec<(String, String)>,
    /// Partitions without stored progress start at the first record at or after this time (ms since
    /// the epoch, e.g. `$(date -d '2 hours ago' +%s%3N)`) instead of the beginning: a replay from a time.
    #[arg(long, env = "STREAMPULSE_START_AT_MS")]
    pub start_at_ms: Option<i64>,
    /// An event more than this many seconds ahead of its Kafka record's timestamp is a dead letter
    /// (a bound on future timestamps that depends on the topic alone, not on the wall clock).
    #[arg(long, env = "STREAMPULSE_MAX_FUTURE", default_value_t = 300)]
    pub max_future: u64,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got {s:?}"))?;
    Ok((k.trim().to_string(), v.to_string()))
}

impl KafkaArgs {
    pub fn registry(&self) -> anyhow::Result<streampulse_ingest::confluent::SchemaRegistry> {
        let url = self
            .registry
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("--format confluent needs --registry URL"))?;
        let mut registry = streampulse_ingest::confluent::SchemaRegistry::new(url)?;
        if let Some(user) = &self.registry_user {
            let password = self.registry_password.as_ref().map_or("", |p| p.0.as_str());
            registry = registry.with_basic_auth(user, password);
        }
        if let Some(ca) = &self.registry_ca {
            registry = registry.with_ca_file(ca)?;
        }
        Ok(registry)
    }

    pub fn config(&self) -> anyhow::Result<streampulse_ingest::kafka::KafkaConfig> {
        use streampulse_ingest::kafka::Format;
        let format = match self.format {
            WireFormat::Avro => Format::Avro,
            WireFormat::Confluent => Format::Confluent {
                registry: self.registry()?,
            },
        };
        Ok(streampulse_ingest::kafka::KafkaConfig {
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            format,
            options: self.kafka_options.clone(),
            start_at: self.start_at_ms,
            max_future_ms: (self.max_future.min(u64::MAX / 2000) * 1000) as i64,
        })
    }
}

/// PostgreSQL connection.
#[derive(Args, Debug, Clone)]
pub struct PostgresArgs {
    /// PostgreSQL URL, e.g. postgres://user@127.0.0.1:5432/streampulse (add ?sslmode=require for TLS).
    #[arg(long, env = "STREAMPULSE_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// Schema holding the tables (a fresh one for a replay).
    #[arg(long, env = "STREAMPULSE_PG_SCHEMA", default_value = "public")]
    pub pg_schema: String,
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub generator: GeneratorArgs,
    /// Write this many events as fast as possible (default: run in real time until stopped).
    #[arg(long, env = "STREAMPULSE_COUNT")]
    pub count: Option<u64>,
    /// Event time of the first event, in ms since the epoch (default: with --count, so that the
    /// last event is stamped now; otherwise now). Events more than `run --max-future` ahead of
    /// the time they are written become dead letters when read.
    #[arg(long, env = "STREAMPULSE_START_MS")]
    pub start_ms: Option<i64>,
    /// With --format confluent: share of events written with schema v2 (the rest v1).
    #[arg(long, default_value_t = 0.5)]
    pub v2_share: f64,
}

#[derive(Args, Debug, Clone)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub postgres: PostgresArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of the HTTP API and dashboard.
    #[arg(long, env = "STREAMPULSE_HTTP", default_value = "127.0.0.1:8080")]
    pub http: SocketAddr,
    /// Where events come from.
    #[arg(long, env = "STREAMPULSE_SOURCE", value_enum, default_value_t = SourceKind::Generator)]
    pub source: SourceKind,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub dataflow: DataflowArgs,
    #[command(flatten)]
    pub generator: GeneratorArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// With the built-in generator: start its event time this many minutes in the past, so that
    /// the view starts with that much history (read as fast as the dataflow goes, then real time).
    #[arg(
        long,
        env = "STREAMPULSE_BACKFILL",
        default_value_t = 0,
        value_name = "MINUTES"
    )]
    pub backfill: u64,
    /// Most events per second this process reads (e.g. to cap catch-up load on PostgreSQL).
    #[arg(long, env = "STREAMPULSE_MAX_RATE")]
    pub max_rate: Option<f64>,
    /// Most records a worker reads before feeding them to the dataflow as one batch (one input
    /// time), when it is at the head of its partitions: small batches keep the view fresh.
    #[arg(long, env = "STREAMPULSE_BATCH", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,
    /// The same when it is catching up (its newest Kafka records more than 2 s old): larger
    /// batches cost less per event (README "Performance" has the measurements).
    #[arg(long, env = "STREAMPULSE_CATCH_UP_BATCH", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub catch_up_batch: u32,
    /// Seconds a shutdown (SIGTERM, SIGINT) may spend committing what is complete; past them (the
    /// database is away) the process exits non-zero, and the next start reads the rest again.
    #[arg(long, env = "STREAMPULSE_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Seconds between status lines in the log.
    #[arg(long, env = "STREAMPULSE_STATUS_INTERVAL", default_value_t = 10)]
    pub status_interval: u64,
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub notify: NotifyArgs,
}

/// Where alert-episode notifications go (README "Notifications"; needs --postgres: they go through
/// an outbox table).
#[derive(Args, Debug, Clone)]
pub struct NotifyArgs {
    /// A JSON file of notification destinations (webhook, pagerduty, slack formats; `${VAR}`
    /// references read secrets from the environment).
    #[arg(long, env = "STREAMPULSE_NOTIFY_CONFIG", value_name = "FILE")]
    pub notify_config: Option<std::path::PathBuf>,
    /// A generic JSON webhook that gets every episode transition (the destination `webhook`).
    #[arg(long, env = "STREAMPULSE_NOTIFY_WEBHOOK", hide_env_values = true)]
    pub notify_webhook: Option<Secret>,
    /// Seconds one delivery may take before it counts as failed.
    #[arg(long, env = "STREAMPULSE_NOTIFY_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub notify_timeout: Duration,
    /// Seconds before the first retry of a failed delivery (doubling after each failure).
    #[arg(long, env = "STREAMPULSE_NOTIFY_RETRY_MIN", default_value = "1", value_parser = seconds)]
    pub notify_retry_min: Duration,
    /// Longest wait between retries, in seconds.
    #[arg(long, env = "STREAMPULSE_NOTIFY_RETRY_MAX", default_value = "300", value_parser = seconds)]
    pub notify_retry_max: Duration,
    /// Seconds after its transition that a notification still failing is abandoned.
    #[arg(long, env = "STREAMPULSE_NOTIFY_GIVE_UP", default_value = "86400", value_parser = seconds)]
    pub notify_give_up: Duration,
}

impl NotifyArgs {
    /// The configured destinations (none without a flag).
    pub fn destinations(&self) -> anyhow::Result<Vec<crate::notify::Destination>> {
        crate::notify::config::load(
            self.notify_config.as_deref(),
            self.notify_webhook.as_ref().map(|s| s.0.as_str()),
            &|name| std::env::var(name).ok(),
        )
    }

    pub fn settings(&self) -> crate::notify::Settings {
        crate::notify::Settings {
            timeout: self.notify_timeout,
            retry_min: self.notify_retry_min,
            retry_max: self.notify_retry_max.max(self.notify_retry_min),
            give_up: self.notify_give_up,
            ..crate::notify::Settings::default()
        }
    }
}

/// Who may call the HTTP API from a browser, and who may acknowledge alerts.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// An origin allowed to call the API from a browser, e.g. https://ops.example.com (repeatable;
    /// `*` allows any; the variable takes a comma-separated list). Default: none.
    #[arg(
        long = "cors-origin",
        env = "STREAMPULSE_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Bearer token that `POST /api/alerts/{id}/ack` requires (with --postgres).
    #[arg(long, env = "STREAMPULSE_ACK_TOKEN", hide_env_values = true)]
    pub ack_token: Option<Secret>,
    // The connection policy's timeouts, in seconds (`http`). Hidden: the defaults are the policy;
    // tests shorten them so that waiting for a timeout takes seconds, not minutes.
    #[arg(long, env = "STREAMPULSE_HTTP_HEADER_TIMEOUT", hide = true, value_parser = seconds)]
    pub http_header_timeout: Option<Duration>,
    #[arg(long, env = "STREAMPULSE_HTTP_BODY_TIMEOUT", hide = true, value_parser = seconds)]
    pub http_body_timeout: Option<Duration>,
    #[arg(long, env = "STREAMPULSE_HTTP_REQUEST_TIMEOUT", hide = true, value_parser = seconds)]
    pub http_request_timeout: Option<Duration>,
    #[arg(long, env = "STREAMPULSE_HTTP_IDLE_TIMEOUT", hide = true, value_parser = seconds)]
    pub http_idle_timeout: Option<Duration>,
    /// Seconds a push stream's client may leave a frame unread before it is dropped.
    #[arg(long, env = "STREAMPULSE_HTTP_STREAM_STALL", hide = true, value_parser = seconds)]
    pub http_stream_stall: Option<Duration>,
    /// Push streams (`GET /api/stream`) open at once; beyond it a stream is refused with 503 and
    /// the dashboard polls. 0 turns push off.
    #[arg(long, env = "STREAMPULSE_PUSH_MAX_STREAMS", default_value_t = 256)]
    pub push_max_streams: usize,
    /// Shortest gap between two frames of a push stream, in milliseconds (changes in between are
    /// coalesced: a client gets each changed panel's latest state).
    #[arg(long, env = "STREAMPULSE_PUSH_INTERVAL_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub push_interval_ms: u64,
}

impl ApiArgs {
    /// The connection policy: the defaults of `http`, with any timeout overridden.
    pub fn http_limits(&self) -> crate::http::Limits {
        let defaults = crate::http::Limits::default();
        crate::http::Limits {
            header: self.http_header_timeout.unwrap_or(defaults.header),
            body: self.http_body_timeout.unwrap_or(defaults.body),
            request: self.http_request_timeout.unwrap_or(defaults.request),
            idle: self.http_idle_timeout.unwrap_or(defaults.idle),
            stream_stall: self.http_stream_stall.unwrap_or(defaults.stream_stall),
            ..defaults
        }
    }
}

/// A positive number of seconds, fractions allowed (`0.5`).
fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("expected seconds between 0 and 86400, got {s:?}")),
    }
}

/// A string that never appears in logs or `Debug` output.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The computation's knobs (SPEC §4–§5).
#[derive(Args, Debug, Clone)]
pub struct DataflowArgs {
    /// Tumbling window length in seconds.
    #[arg(long, env = "STREAMPULSE_WINDOW", default_value_t = 60)]
    pub window: u64,
    /// Seconds an event may lag its partition's newest event and still count.
    #[arg(long, env = "STREAMPULSE_LATENESS", default_value_t = 5)]
    pub lateness: u64,
    /// Minutes of windows kept in memory.
    #[arg(long, env = "STREAMPULSE_RETAIN", default_value_t = 60)]
    pub retain: u64,
    /// Seconds after which a silent partition stops holding the watermark back.
    #[arg(long, env = "STREAMPULSE_IDLE_TIMEOUT", default_value_t = 30)]
    pub idle_timeout: u64,
    /// Length of the per-window trending list.
    #[arg(long, env = "STREAMPULSE_TOP_K", default_value_t = 10)]
    pub top_k: usize,
    /// HIGH_ERROR_RATE: failure rate above this.
    #[arg(long, env = "STREAMPULSE_ALERT_ERROR_RATE", default_value_t = 0.10)]
    pub alert_error_rate: f64,
    /// HIGH_ERROR_RATE is CRITICAL when the success rate is below this.
    #[arg(
        long,
        env = "STREAMPULSE_ALERT_CRITICAL_SUCCESS",
        default_value_t = 0.85
    )]
    pub alert_critical_success: f64,
    /// No alert on a region-window with fewer downloads.
    #[arg(long, env = "STREAMPULSE_ALERT_MIN_DOWNLOADS", default_value_t = 5)]
    pub alert_min_downloads: i64,
    /// SUSTAINED_ERROR_RATE: consecutive high-error windows.
    #[arg(long, env = "STREAMPULSE_ALERT_SUSTAINED_WINDOWS", default_value_t = 3)]
    pub alert_sustained_windows: u32,
    /// SLOW_DOWNLOADS: average Mbps of successful downloads below this.
    #[arg(long, env = "STREAMPULSE_ALERT_SLOW_MBPS", default_value_t = 15.0)]
    pub alert_slow_mbps: f64,
    /// CDN_FAILURE: cdn_timeout failures at least this share of downloads.
    #[arg(long, env = "STREAMPULSE_ALERT_CDN_SHARE", default_value_t = 0.05)]
    pub alert_cdn_share: f64,
    /// Baseline rules: how many windows before a window its region's baseline covers.
    #[arg(long, env = "STREAMPULSE_BASELINE_WINDOWS", default_value_t = 20)]
    pub baseline_windows: u32,
    /// Baseline rules: no judgement until a baseline holds this many windows with events.
    #[arg(long, env = "STREAMPULSE_BASELINE_MIN_WINDOWS", default_value_t = 5)]
    pub baseline_min_windows: u32,
    /// Baseline rules: no judgement while a region's mean downloads per window are below this.
    #[arg(long, env = "STREAMPULSE_BASELINE_MIN_MEAN", default_value_t = 10.0)]
    pub baseline_min_mean: f64,
    /// TRAFFIC_BELOW/ABOVE_BASELINE: the traffic score (spreads from the mean) to reach.
    #[arg(
        long,
        env = "STREAMPULSE_BASELINE_TRAFFIC_SCORE",
        default_value_t = 4.0
    )]
    pub baseline_traffic_score: f64,
    /// TRAFFIC_BELOW_BASELINE: downloads must also have dropped by at least this share of the mean.
    #[arg(long, env = "STREAMPULSE_BASELINE_TRAFFIC_DROP", default_value_t = 0.5)]
    pub baseline_traffic_drop: f64,
    /// TRAFFIC_ABOVE_BASELINE: downloads must also exceed the mean by at least this share of it.
    #[arg(long, env = "STREAMPULSE_BASELINE_TRAFFIC_RISE", default_value_t = 1.0)]
    pub baseline_traffic_rise: f64,
    /// ERROR_RATE_ABOVE_BASELINE: the error score (standard errors above the baseline) to reach.
    #[arg(long, env = "STREAMPULSE_BASELINE_ERROR_SCORE", default_value_t = 5.0)]
    pub baseline_error_score: f64,
    /// ERROR_RATE_ABOVE_BASELINE: the error rate must also exceed the baseline's by this much.
    #[arg(long, env = "STREAMPULSE_BASELINE_ERROR_RISE", default_value_t = 0.05)]
    pub baseline_error_rise: f64,
    /// Trending forecasts: how many windows a title's forecast looks at.
    #[arg(long, env = "STREAMPULSE_FORECAST_WINDOWS", default_value_t = 10)]
    pub forecast_windows: u32,
    /// Trending forecasts: smoothing of the level (0 < alpha <= 1).
    #[arg(long, env = "STREAMPULSE_FORECAST_ALPHA", default_value_t = 0.5)]
    pub forecast_alpha: f64,
    /// Trending forecasts: smoothing of the trend (0 <= beta <= 1).
    #[arg(long, env = "STREAMPULSE_FORECAST_BETA", default_value_t = 0.3)]
    pub forecast_beta: f64,
}

impl DataflowArgs {
    pub fn config(&self) -> anyhow::Result<Config> {
        // Saturating: an absurd value must reach `validate` and its clear message, not wrap.
        let ms = |value: u64, unit: u64| value.saturating_mul(unit).min(i64::MAX as u64);
        let config = Config {
            window_ms: ms(self.window, 1000) as i64,
            lateness_ms: ms(self.lateness, 1000) as i64,
            retain_ms: ms(self.retain, 60_000) as i64,
            idle_timeout_ms: ms(self.idle_timeout, 1000),
            top_k: self.top_k,
            rules: Rules {
                error_rate: self.alert_error_rate,
                critical_success_rate: self.alert_critical_success,
                min_downloads: self.alert_min_downloads,
                sustained_windows: self.alert_sustained_windows,
                slow_mbps: self.alert_slow_mbps,
                cdn_share: self.alert_cdn_share,
                baselines: Baselines {
                    windows: self.baseline_windows,
                    min_windows: self.baseline_min_windows,
                    min_mean: self.baseline_min_mean,
                    traffic_score: self.baseline_traffic_score,
                    traffic_drop: self.baseline_traffic_drop,
                    traffic_rise: self.baseline_traffic_rise,
                    error_score: self.baseline_error_score,
                    error_rise: self.baseline_error_rise,
                },
            },
            forecasts: Forecasts {
                windows: self.forecast_windows,
                alpha: self.forecast_alpha,
                beta: self.forecast_beta,
            },
        };
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid dataflow settings: {e}"))?;
        Ok(config)
    }
}

/// The built-in generator.
#[derive(Args, Debug, Clone)]
pub struct GeneratorArgs {
    /// Events per second.
    #[arg(long, env = "STREAMPULSE_RATE", default_value_t = 200.0)]
    pub rate: f64,
    /// Seed of the deterministic generator.
    #[arg(long, env = "STREAMPULSE_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Fault scenario: clean, cdn-outage, slow-downloads, region-silent, slow-degradation or
    /// viral-title.
    #[arg(long, env = "STREAMPULSE_SCENARIO", default_value = "clean")]
    pub scenario: Scenario,
    /// Partitions the generated stream is spread over (and of a topic `generate` creates).
    #[arg(long, env = "STREAMPULSE_PARTITIONS", default_value_t = 4)]
    pub partitions: u32,
}

/// timely's cluster flags: workers per process, processes, this process, host file.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Worker threads in this process.
    #[arg(short = 'w', long, env = "STREAMPULSE_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Number of processes in the cluster.
    #[arg(short = 'n', long, env = "STREAMPULSE_PROCESSES", default_value_t = 1)]
    pub processes: usize,
    /// This process's index, from 0.
    #[arg(short = 'p', long, env = "STREAMPULSE_PROCESS", default_value_t = 0)]
    pub process: usize,
    /// File with one host:port per line, one line per process.
    #[arg(long, env = "STREAMPULSE_HOSTFILE")]
    pub hostfile: Option<PathBuf>,
}

impl ClusterArgs {
    /// The timely configuration these flags describe.
    pub fn timely(&self) -> anyhow::Result<timely::Config> {
        anyhow::ensure!(self.workers >= 1, "need at least one worker (-w)");
        anyhow::ensure!(self.process < self.processes, "-p must be below -n");
        let mut args = vec!["-w".to_string(), self.workers.to_string()];
        if self.processes > 1 {
            let hostfile = self
                .hostfile
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("a cluster of processes needs --hostfile"))?;
            args.extend([
                "-n".into(),
                self.processes.to_string(),
                "-p".into(),
                self.process.to_string(),
                "-h".into(),
                hostfile.display().to_string(),
            ]);
        }
        timely::Config::from_args(args.into_iter())
            .map_err(|e| anyhow::anyhow!("cluster flags: {e}"))
    }
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
}

#[derive(Subcommand, Debug, Clone)]
pub enum BenchWhat {
    /// The dataflow alone on generated events, beside a single-pass HashMap baseline.
    Dataflow(BenchDataflowArgs),
    /// Kafka end to end: raw consume, raw consume + decode, the pipeline to memory and to
    /// PostgreSQL, on one seeded topic (written once, then reused).
    Kafka(BenchKafkaArgs),
    /// Event-to-dashboard latency by push (`/api/stream`) beside polling every 2 s, in one run.
    Push(BenchPushArgs),
    /// The HTTP server (its connection policy, `run`'s runtime) answering every request with one
    /// fixed JSON body: the ceiling benches/api-load.sh measures the API against. Serves until
    /// SIGINT or SIGTERM.
    HttpCeiling {
        /// Address to serve on (port 0: any free port, logged).
        #[arg(long, default_value = "127.0.0.1:8090")]
        http: SocketAddr,
        /// Size of the JSON body in bytes (at least 11).
        #[arg(long, default_value_t = 2048)]
        body_bytes: usize,
    },
}

/// The flags of `bench dataflow`.
#[derive(Args, Debug, Clone)]
pub struct BenchDataflowArgs {
    /// Events to generate (materialised in memory before timing).
    #[arg(long, default_value_t = 2_000_000)]
    pub events: u64,
    /// Worker counts to measure; repeat the flag for several (`-w 1 -w 2`).
    #[arg(short = 'w', long = "workers", default_values_t = vec![1])]
    pub workers: Vec<usize>,
    /// Runs of each configuration; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Records per input batch (one timely time) per worker.
    #[arg(long, default_value_t = 100_000)]
    pub batch: usize,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The flags of `bench push`.
#[derive(Args, Debug, Clone)]
pub struct BenchPushArgs {
    #[arg(long, env = "STREAMPULSE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Prefix of the fresh topic each run writes.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Offered events/s.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long the load lasts, seconds (at most 240: the realtime panel covers 5 minutes).
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// The polling client's interval, ms (the dashboard polls every 2000 ms).
    #[arg(long, default_value_t = 2000)]
    pub poll_ms: u64,
    /// An extra flag for `streampulse run`, e.g. `--run-arg=--push-interval-ms=100`.
    #[arg(long = "run-arg", allow_hyphen_values = true)]
    pub run_args: Vec<String>,
    /// Append the JSON lines to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The flags of `bench kafka`.
#[derive(Args, Debug, Clone)]
pub struct BenchKafkaArgs {
    #[arg(long, env = "STREAMPULSE_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// The benchmark topic (created and filled when empty).
    #[arg(long, default_value = "bench-3m")]
    pub topic: String,
    #[arg(long, default_value_t = 3_000_000)]
    pub events: u64,
    #[arg(long, default_value_t = 3)]
    pub partitions: u32,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Runs of each measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Worker counts of the pipeline runs; repeat the flag for several.
    #[arg(short = 'w', long = "workers", default_values_t = vec![1, 2])]
    pub workers: Vec<usize>,
    /// PostgreSQL for the sink runs (without it they are skipped).
    #[arg(long, env = "STREAMPULSE_POSTGRES", hide_env_values = true)]
    pub postgres: Option<String>,
    /// An extra flag for every `streampulse run`, e.g. `--run-arg=--kafka-option=k=v`.
    #[arg(long = "run-arg", allow_hyphen_values = true)]
    pub run_args: Vec<String>,
    /// Also measure latency at this offered rate (events/s; about half the sustainable
    /// maximum is the point): event-to-view and event-to-PostgreSQL percentiles.
    #[arg(long)]
    pub latency_rate: Option<f64>,
    /// How long the latency load lasts, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub latency_seconds: f64,
    /// Skip the throughput runs (e.g. to measure latency alone).
    #[arg(long)]
    pub no_throughput: bool,
    /// Also run the Kafka Streams peer on the topic, with this script
    /// (benches/kstreams/run.sh; needs Java 17+ and Maven).
    #[arg(long)]
    pub kstreams: Option<PathBuf>,
    /// Append the JSON lines to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}
