//! `streampulse bench`: the benchmarks. Each prints one JSON object per line on stdout (and a
//! readable table on stderr), or, for a server, serves until stopped.
//!
//! - [`dataflow`]: the dataflow beside a HashMap baseline (the `streampulse-benches` harness).
//! - [`kafka`]: the Kafka path end to end (raw consume to PostgreSQL, latency at a rate).
//! - [`push`]: event-to-dashboard latency by push beside polling.
//! - [`ceiling`]: the HTTP server with a fixed-body handler, the ceiling that
//!   `benches/api-load.sh` measures the API against.

pub mod ceiling;
pub mod dataflow;
pub mod kafka;
pub mod push;

use std::io::Write;
use std::path::Path;

use crate::cli::{BenchArgs, BenchWhat};

/// Prints each JSON line on stdout and, with `out`, appends them to that file.
fn emit(lines: &[String], out: Option<&Path>) -> anyhow::Result<()> {
    let mut file = match out {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => None,
    };
    for line in lines {
        println!("{line}");
        if let Some(f) = file.as_mut() {
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        BenchWhat::Kafka(args) => kafka::run(args),
        BenchWhat::Dataflow(args) => dataflow::run(args),
        BenchWhat::Push(args) => push::run(args),
        BenchWhat::HttpCeiling { http, body_bytes } => ceiling::run(http, body_bytes),
    }
}
