//! Bare Avro datums of `schemas/event.avsc`, in and out.
//!
//! ```text
//!   bytes ──Decoder::decode──▶ Result<Event, DecodeError>
//!   Event ──Encoder::encode──▶ bytes
//! ```
//!
//! The schemas are compiled into the binary and parsed once. Decoding reads the datum by hand
//! ([`crate::datum`], checked against apache-avro by tests and the fuzz target); encoding and every
//! other writer schema (the Confluent resolving path) go through apache-avro.

use std::sync::OnceLock;

use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use thiserror::Error;

use crate::datum;
use crate::event::Event;
use crate::validate::{self, Invalid};

/// The text of `schemas/event.avsc`, the schema every producer writes and every reader resolves to.
pub const EVENT_SCHEMA_V1: &str = include_str!("../../schemas/event.avsc");
/// The text of `schemas/event-v2.avsc`, a compatible evolution with optional fields.
pub const EVENT_SCHEMA_V2: &str = include_str!("../../schemas/event-v2.avsc");

/// The parsed version-1 schema, parsed on first use.
pub fn schema_v1() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        limit_allocations();
        Schema::parse_str(EVENT_SCHEMA_V1).expect("schemas/event.avsc is valid Avro")
    })
}

/// The parsed version-2 schema, parsed on first use.
pub fn schema_v2() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        limit_allocations();
        Schema::parse_str(EVENT_SCHEMA_V2).expect("schemas/event-v2.avsc is valid Avro")
    })
}

/// The most apache-avro may allocate for one length-prefixed string while decoding: Kafka's default
/// maximum record size. A datum cannot hold a string longer than itself, so this only refuses
/// hostile length prefixes; apache-avro's own default (512 MiB) let a 20-byte record allocate that
/// much before finding out the bytes are not there (found by the `decode` fuzz target).
pub const MAX_ALLOCATION_BYTES: usize = 1 << 20;

/// Sets apache-avro's process-wide allocation cap to [`MAX_ALLOCATION_BYTES`]. apache-avro keeps
/// the first value it sees, so this runs when a committed schema is first parsed: every reader in
/// this crate, the Confluent ones included, is built with one of them as writer or reader schema.
fn limit_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_ALLOCATION_BYTES);
}

/// Why a record could not be turned into an [`Event`]. The text is what lands in `dead_letters.reason`.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DecodeError {
    #[error("empty record value")]
    Empty,
    #[error("not a valid Avro datum of ContentDownloadEvent: {0}")]
    Avro(String),
    #[error("{0} bytes left over after the datum (truncated or concatenated record?)")]
    TrailingBytes(usize),
    /// Decoded, but outside the domain of a valid event (see [`crate::validate`]).
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// Decodes bare Avro datums written with `schemas/event.avsc`.
pub struct Decoder {
    _private: (),
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder { _private: () }
    }

    /// Decodes one datum. The whole slice must be consumed, and the event must lie in the domain of
    /// [`validate::check`].
    pub fn decode(&self, bytes: &[u8]) -> Result<Event, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        let (event, used) = datum::read(bytes).map_err(|e| DecodeError::Avro(e.to_string()))?;
        if used < bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - used));
        }
        validate::check(&event)?;
        Ok(event)
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

/// Encodes events as bare Avro datums of `schemas/event.avsc`.
pub struct Encoder {
    writer: GenericDatumWriter<'static>,
}

impl Encoder {
    pub fn new() -> Encoder {
        let writer = GenericDatumWriter::builder(schema_v1())
            .build()
            .expect("the v1 schema resolves");
        Encoder { writer }
    }

    pub fn encode(&self, event: &Event) -> Vec<u8> {
        self.writer
            .write_ser_to_vec(event)
            .expect("an Event always matches the schema it mirrors")
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{Generator, Scenario};
    use apache_avro::reader::datum::GenericDatumReader;

    #[test]
    fn round_trip_generated_events() {
        let encoder = Encoder::new();
        let decoder = Decoder::new();
        let generator = Generator::new(7, Scenario::CdnOutage, 1_700_000_000_000, 100.0);
        for i in 0..2_000 {
            let event = generator.event(i);
            let bytes = encoder.encode(&event);
            assert_eq!(decoder.decode(&bytes).unwrap(), event);
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let encoder = Encoder::new();
        let decoder = Decoder::new();
        let event = Generator::new(1, Scenario::Clean, 1_700_000_000_000, 10.0).event(3);
        let bytes = encoder.encode(&event);

        assert_eq!(decoder.decode(&[]), Err(DecodeError::Empty));
        assert!(matches!(
            decoder.decode(&bytes[..bytes.len() / 2]),
            Err(DecodeError::Avro(_))
        ));
        let mut long = bytes.clone();
        long.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decoder.decode(&long), Err(DecodeError::TrailingBytes(3)));

        let mut bad = event.clone();
        bad.download.status = "exploded".into();
        let err = decoder.decode(&encoder.encode(&bad)).unwrap_err();
        assert!(err.to_string().contains("download.status"), "{err}");
    }

    #[test]
    fn hostile_length_prefix_is_refused_before_allocating() {
        // Found by the `decode` fuzz target: a generated datum whose user_id length prefix was
        // mutated to 103,759,757. apache-avro allocated that much before reading the 122 bytes
        // left; the hand reader compares the length with what is left, and apache-avro (still the
        // reader of other writer schemas) is capped.
        const INPUT: &[u8] = &[
            50, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 48, 55, 45, 48, 48, 48, 48,
            48, 48, 48, 50, 128, 0, 154, 254, 249, 98, 18, 117, 115, 114, 95, 51, 52, 52, 48, 48,
            32, 109, 111, 118, 95, 116, 97, 121, 108, 111, 114, 95, 115, 119, 105, 102, 116, 46,
            84, 97, 121, 108, 111, 114, 32, 83, 119, 105, 102, 116, 58, 32, 69, 114, 97, 115, 32,
            84, 111, 117, 114, 18, 109, 117, 115, 105, 99, 95, 100, 111, 99, 10, 109, 117, 115,
            105, 99, 128, 50, 10, 215, 111, 65, 12, 102, 97, 105, 108, 101, 100, 106, 154, 153,
            137, 64, 2, 26, 110, 101, 116, 137, 147, 114, 107, 95, 101, 114, 107, 32, 80, 114, 111,
            20, 109, 97, 99, 79, 83, 32, 49, 52, 46, 53, 16, 101, 116, 104, 101, 114, 110, 101,
            116,
        ];
        let err = Decoder::new().decode(INPUT).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Avro(m) if m.starts_with("user_id: string of 103759757 bytes")),
            "{err}"
        );
        let mut rest = INPUT;
        let capped = GenericDatumReader::builder(schema_v1())
            .build()
            .unwrap()
            .read_value(&mut rest)
            .unwrap_err();
        assert!(
            capped
                .to_string()
                .contains("Unable to allocate 103759757 bytes"),
            "{capped}"
        );
        assert_eq!(
            apache_avro::util::max_allocation_bytes(0),
            MAX_ALLOCATION_BYTES
        );
    }

    #[test]
    fn v2_schema_is_a_compatible_evolution() {
        // A v1 datum read with v2 as reader schema gets the defaults; both schemas parse.
        let encoder = Encoder::new();
        let event = Generator::new(1, Scenario::Clean, 1_700_000_000_000, 10.0).event(0);
        let bytes = encoder.encode(&event);
        let reader = GenericDatumReader::builder(schema_v1())
            .reader_schema(schema_v2())
            .build()
            .unwrap();
        let value = reader.read_value(&mut &bytes[..]).unwrap();
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("a record")
        };
        assert!(fields.iter().any(|(name, _)| name == "retry_count"));
    }
}
