//! Confluent-framed Avro (`--format confluent`): the wire framing, the Schema Registry client, and
//! the decoder and encoder built on them.
//!
//! - `frame.rs`: the 5-byte header (magic byte, schema id) — [`parse_frame`], [`frame`],
//!   [`MAGIC`], [`HEADER_LEN`].
//! - `registry.rs`: the Schema Registry client over hyper (TLS, basic auth, timeouts; a blocking
//!   API on a private runtime) — [`SchemaRegistry`], [`FetchedSchema`] and its own
//!   [`RegistryError`].
//! - `decode.rs`: [`ConfluentDecoder`], resolving every writer schema to `schemas/event.avsc`, with
//!   its per-schema-id cache.
//! - `encode.rs`: [`ConfluentEncoder`] and [`SchemaVersion`], the producer side. (The values of
//!   v2's extra fields are invented by the generator: [`crate::generator::v2_fields`].)
//! - `error.rs`: [`ConfluentError`], the verdict on a record that did not decode: poison, or
//!   retry later ([`ConfluentError::is_retryable`]).

mod decode;
mod encode;
mod error;
mod frame;
mod registry;

pub use decode::ConfluentDecoder;
pub use encode::{ConfluentEncoder, SchemaVersion};
pub use error::ConfluentError;
pub use frame::{frame, parse_frame, HEADER_LEN, MAGIC};
pub use registry::{FetchedSchema, RegistryError, SchemaRegistry, DEFAULT_TIMEOUT, MAX_RESPONSE};
