//! `streampulse`: sets up logging, parses the flags and hands them to the library
//! ([`streampulse::run`]), which owns everything else.

use clap::Parser;

// Events are many small strings, allocated by the decoding worker and freed after aggregation;
// mimalloc's per-thread heaps make that cheap and let workers scale (see README, Benchmarks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    streampulse::run(streampulse::cli::Cli::parse())
}
