//! `streampulse bench`: the benchmarks. Each prints one JSON object per line on stdout (and a
//! readable table on stderr), or, for a server, serves until stopped.
//!
//! - [`dataflow`]: the dataflow beside a HashMap baseline (the `streampulse-benches` harness).
//! - [`kafka`]: the Kafka path end to end (raw consume to PostgreSQL, latency at a rate).
//! - [`ceiling`]: the HTTP server with a fixed-body handler, the ceiling that
//!   `benches/api-load.sh` measures the API against.

pub mod ceiling;
pub mod dataflow;
pub mod kafka;

use crate::cli::{BenchArgs, BenchWhat};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        what @ BenchWhat::Kafka { .. } => kafka::run(what),
        BenchWhat::Dataflow {
            events,
            workers,
            runs,
            seed,
            batch,
            out,
        } => dataflow::run(dataflow::Options {
            events,
            workers,
            runs,
            seed,
            batch,
            out,
        }),
        BenchWhat::HttpCeiling { http, body_bytes } => ceiling::run(http, body_bytes),
    }
}
