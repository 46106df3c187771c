//! [`ConfluentDecoder`]: Confluent-framed values to [`Event`]s, resolving each writer schema to the
//! reader schema, with a per-schema-id cache.
//!
//! The decoder fetches each writer schema from the registry once (`GET /schemas/ids/{id}`), keeps a
//! reader for it for good (a schema id never changes meaning) and resolves every datum against the
//! reader schema `schemas/event.avsc`, so producers on v1, v2 or any compatible evolution all decode
//! to the same [`Event`]. A registry that cannot be asked leaves nothing in the cache (the next
//! record asks again); a 404 is believed for [`UNKNOWN_ID_RECHECK`].

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::Schema;

use super::{parse_frame, ConfluentError, SchemaRegistry};
use crate::avro::{schema_v1, DecodeError, Decoder};
use crate::event::Event;

/// How long a 404 for an id is believed before the registry is asked again. Long enough that a flood
/// of poison records with random ids is not also a flood of registry requests; short enough that a
/// schema registered late (or replicated late) is picked up.
const UNKNOWN_ID_RECHECK: Duration = Duration::from_secs(60);

/// How datums of one writer schema are read.
enum WriterReader {
    /// The writer schema is v1 itself (same canonical form): no resolution needed, so deserialize
    /// straight into `Event` as the bare-Avro path does, without an intermediate `Value` tree.
    Same(Decoder),
    /// Any other compatible schema: decode to a `Value`, resolve it to v1, then deserialize.
    Resolving(GenericDatumReader<'static>),
}

/// Decodes Confluent-framed values into [`Event`]s, asking the registry about each schema id once.
pub struct ConfluentDecoder {
    registry: SchemaRegistry,
    /// Per id, the prepared reader or the permanent reason there is none (unparseable or
    /// incompatible schema). Kept forever: what an id means never changes.
    writers: HashMap<u32, Result<WriterReader, ConfluentError>>,
    /// Ids the registry answered 404 for, and when; see [`UNKNOWN_ID_RECHECK`].
    unknown: HashMap<u32, Instant>,
}

impl ConfluentDecoder {
    pub fn new(registry: SchemaRegistry) -> ConfluentDecoder {
        ConfluentDecoder {
            registry,
            writers: HashMap::new(),
            unknown: HashMap::new(),
        }
    }

    pub fn registry(&self) -> &SchemaRegistry {
        &self.registry
    }

    /// Decodes one framed value. On an error with [`ConfluentError::is_retryable`] the record has
    /// not been judged: retry it later. Any other error means the record is poison.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Event, ConfluentError> {
        let (id, datum) = parse_frame(bytes)?;
        let decoded = match self.writer(id)? {
            WriterReader::Same(decoder) => decoder.decode(datum),
            WriterReader::Resolving(reader) => decode_resolving(reader, datum),
        };
        decoded.map_err(|error| ConfluentError::Datum { id, error })
    }

    fn writer(&mut self, id: u32) -> Result<&WriterReader, ConfluentError> {
        if let Some(asked) = self.unknown.get(&id) {
            if asked.elapsed() < UNKNOWN_ID_RECHECK {
                return Err(ConfluentError::UnknownSchemaId(id));
            }
        }
        if !self.writers.contains_key(&id) {
            let prepared = self
                .registry
                .fetch_schema(id)
                .map_err(ConfluentError::from)
                .and_then(|fetched| {
                    // Registries that also hold Protobuf or JSON Schema say so; absent means Avro.
                    if fetched.schema_type != "AVRO" {
                        return Err(ConfluentError::BadWriterSchema {
                            id,
                            reason: format!("it is a {} schema, not Avro", fetched.schema_type),
                        });
                    }
                    prepare(id, &fetched.schema)
                });
            match prepared {
                // Nothing learnt about the id: the next record asks again.
                Err(e) if e.is_retryable() => return Err(e),
                Err(ConfluentError::UnknownSchemaId(_)) => {
                    // Forget old 404s now and then so random ids cannot grow this map without bound.
                    if self.unknown.len() >= 1024 {
                        self.unknown
                            .retain(|_, asked| asked.elapsed() < UNKNOWN_ID_RECHECK);
                    }
                    self.unknown.insert(id, Instant::now());
                    return Err(ConfluentError::UnknownSchemaId(id));
                }
                outcome => {
                    self.unknown.remove(&id);
                    self.writers.insert(id, outcome);
                }
            }
        }
        self.writers[&id].as_ref().map_err(Clone::clone)
    }
}

/// Parses a fetched writer schema, checks it can be resolved to v1, and builds its reader.
fn prepare(id: u32, text: &str) -> Result<WriterReader, ConfluentError> {
    let bad = |reason: String| ConfluentError::BadWriterSchema { id, reason };
    let schema = Schema::parse_str(text).map_err(|e| bad(e.to_string()))?;
    let reader_schema = schema_v1();
    if schema.canonical_form() == reader_schema.canonical_form() {
        return Ok(WriterReader::Same(Decoder::new()));
    }
    // Checked up front so that an incompatible schema is reported as such, once, rather than as a
    // confusing resolution failure on every record.
    SchemaCompatibility::can_read(&schema, reader_schema).map_err(|e| {
        ConfluentError::Incompatible {
            id,
            reason: e.to_string(),
        }
    })?;
    let reader = GenericDatumReader::builder(intern(text, schema))
        .reader_schema(reader_schema)
        .build()
        .map_err(|e| bad(e.to_string()))?;
    Ok(WriterReader::Resolving(reader))
}

/// A `'static` copy of a writer schema, for `GenericDatumReader` which borrows its schemas.
///
/// This deliberately leaks: one `Schema` per distinct compatible writer schema text, per process
/// (shared by all decoders, so recreating decoders on a rebalance leaks nothing more). Schema ids are
/// few and immutable — one per schema version registered for the topic — so the total is a few KiB
/// for the life of the process, and it buys a reader built once per id instead of per record.
fn intern(text: &str, schema: Schema) -> &'static Schema {
    static SCHEMAS: OnceLock<Mutex<HashMap<String, &'static Schema>>> = OnceLock::new();
    let mut schemas = SCHEMAS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    schemas
        .entry(text.to_string())
        .or_insert_with(|| Box::leak(Box::new(schema)))
}

fn decode_resolving(
    reader: &GenericDatumReader<'static>,
    datum: &[u8],
) -> Result<Event, DecodeError> {
    if datum.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut rest = datum;
    let value = reader
        .read_value(&mut rest)
        .map_err(|e| DecodeError::Avro(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    let event: Event =
        apache_avro::from_value(&value).map_err(|e| DecodeError::Avro(e.to_string()))?;
    crate::validate::check(&event)?;
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::EVENT_SCHEMA_V2;

    #[test]
    fn hostile_length_prefix_is_refused_on_the_resolving_path() {
        let Ok(WriterReader::Resolving(reader)) = prepare(2, EVENT_SCHEMA_V2) else {
            panic!("v2 is resolved against v1")
        };
        // event_id claims 100,000,000 bytes (zigzag varint), and nothing follows.
        let err = decode_resolving(&reader, &[128, 132, 175, 95]).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Avro(m) if m.contains("Unable to allocate 100000000 bytes")),
            "{err}"
        );
    }

    #[test]
    fn decoder_is_send() {
        fn send<T: Send>() {}
        send::<ConfluentDecoder>();
    }
}
