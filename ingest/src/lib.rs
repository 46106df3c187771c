//! Everything that turns the outside world into [`Event`]s.
//!
//! - [`event`] owns the `Event` type (the Rust image of `schemas/event.avsc`) and [`Record`], an event
//!   with the Kafka partition and offset it came from.
//! - [`avro`] encodes and decodes bare Avro datums against the committed schemas, with a [`DecodeError`]
//!   that says what was wrong; [`datum`] reads a datum of `schemas/event.avsc` by hand (the hot path).
//! - [`generator`] is the seeded, deterministic traffic generator with named fault [`Scenario`]s (and
//!   the values of the fields schema v2 adds).
//! - [`confluent`] owns the Confluent wire framing, the Schema Registry client, and the decoder and
//!   encoder of framed values.
//! - [`kafka`] owns the Kafka source (partitions assigned by number, offsets kept by the sink) and
//!   the producer.
//! - [`validate`] owns the domain of a valid event: the one check between decoding and the pipeline.
//! - [`source`] owns the [`Source`] trait a worker polls for records, and the in-process sources.
//!
//! Nothing here knows about windows or aggregates: that is the `dataflow` crate's job.

pub mod avro;
pub mod confluent;
pub mod datum;
pub mod event;
pub mod generator;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod source;
pub mod validate;

pub use avro::{DecodeError, Decoder, Encoder};
pub use event::{Content, DeadLetter, Download, Event, Outcome, Record, UserContext};
pub use generator::{Generator, Scenario};
pub use source::{GeneratorSource, Pace, Poll, Source, VecSource};
