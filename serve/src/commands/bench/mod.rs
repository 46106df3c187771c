//! `streampulse bench`: the benchmarks. Each prints one JSON object per line on stdout (and a
//! readable table on stderr), or, for a server, serves until stopped.
//!
//! - [`dataflow`]: the dataflow beside a HashMap baseline (the `streampulse-benches` harness).
//! - [`ceiling`]: the HTTP server with a fixed-body handler, the ceiling that
//!   `benches/api-load.sh` measures the API against.

pub mod ceiling;
pub mod dataflow;

use crate::cli::{BenchArgs, BenchWhat};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
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
