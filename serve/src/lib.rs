//! StreamPulse's product layer: everything above the dataflow, as a library the thin `streampulse`
//! binary (and the tests) call.
//!
//! Follow one event: [`commands::run`] starts a `streampulse_ingest::kafka::KafkaSource` per
//! worker and the dataflow (`streampulse_dataflow`); worker 0's output reaches the in-memory view that
//! [`api`] serves over [`http`], and the [`sink`], which consolidates it per commit
//! ([`sink::batch`]) and writes it to PostgreSQL through [`store`], the one home of SQL.
//!
//! - [`cli`] owns the flags (every one also reads a `STREAMPULSE_*` environment variable).
//! - [`commands`] holds one module per subcommand: `run`, `generate`, `migrate`, `bench`.
//! - [`api`] answers HTTP requests from the in-memory view and pushes its changes to the dashboard
//!   (`api::push`, server-sent events); [`http`] is the hyper server and its connection policy;
//!   [`assets`] is the dashboard, compiled into the binary.
//! - [`sink`] decides what to commit and when, and what a failure means.
//! - [`store`] connects to PostgreSQL and holds every statement: migrations, the table of truth,
//!   resume, the sink's writes.
//! - [`notify`] delivers alert-episode notifications from the outbox the sink fills.
//! - [`latency`] holds the latency histograms `/metrics` shows.
//! - [`health`] is what `/health` reports of the outside dependencies; [`shutdown`] is the one
//!   shared shutdown (signals, fatal errors, the deadline).

pub mod api;
pub mod assets;
pub mod cli;
pub mod commands;
pub mod health;
pub mod http;
pub mod latency;
pub mod notify;
pub mod shutdown;
pub mod sink;
pub mod store;

/// Runs a parsed command line: the binary's whole job after logging is set up.
pub fn run(cli: cli::Cli) -> anyhow::Result<()> {
    match cli.command {
        cli::Command::Run(args) => commands::run::run(*args),
        cli::Command::Generate(args) => commands::generate::run(args),
        cli::Command::Migrate(args) => commands::migrate::run(args),
        cli::Command::Bench(args) => commands::bench::run(args),
    }
}
