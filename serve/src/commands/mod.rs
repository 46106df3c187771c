//! One module per subcommand of `streampulse`.
//!
//! - [`run`]: source → dataflow → view, the HTTP API and the PostgreSQL sink.
//! - [`generate`]: writes the seeded generator's events to Kafka.
//! - [`migrate`]: applies `sql/` to a schema.
//! - [`bench`]: the benchmarks.

pub mod bench;
pub mod generate;
pub mod migrate;
pub mod run;
