//! `streampulse`: the binary. `main` parses flags and hands off; each subcommand lives in its own
//! module.
//!
//! - [`cli`] owns the flags (every one also reads a `STREAMPULSE_*` environment variable).
//! - [`pipeline`] runs `streampulse run`: source → dataflow → view, the HTTP API, the status line.
//! - [`api`] answers HTTP requests from the in-memory [`View`](streampulse_dataflow::View).
//! - [`assets`] is the dashboard, compiled into the binary.
//! - [`http`] is the hyper server: listener and shutdown come from the caller.
//! - [`generate`] writes generated events to Kafka; [`migrate`] applies `sql/`.
//! - [`db`] connects to PostgreSQL and loads what a previous run stored; [`sink`] writes every
//!   change there exactly once.
//! - [`bench`] runs `streampulse bench`.

mod api;
mod assets;
mod bench;
mod cli;
mod db;
mod generate;
mod http;
mod migrate;
mod pipeline;
mod sink;

use clap::Parser;

// Events are many small strings, allocated by the decoding worker and freed after aggregation;
// mimalloc's per-thread heaps make that cheap and let workers scale (see README, Benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match cli::Cli::parse().command {
        cli::Command::Run(mut args) => {
            args.api.database_url = args.postgres.postgres.clone().map(cli::Secret);
            pipeline::run(*args)
        }
        cli::Command::Generate(args) => generate::run(args),
        cli::Command::Migrate(args) => {
            let url = args
                .postgres
                .postgres
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("--postgres URL is required"))?;
            let db = db::Database::new(url, &args.postgres.pg_schema)?;
            let mut client = db.connect()?;
            let applied = migrate::migrate(&mut client, &db.schema)?;
            log::info!(
                "{} is up to date ({applied} migrations applied)",
                db.display()
            );
            Ok(())
        }
        cli::Command::Bench(args) => bench::run(args),
    }
}
