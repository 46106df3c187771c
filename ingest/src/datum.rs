//! Reads one datum written with exactly `schemas/event.avsc` straight from its bytes into an
//! [`Event`]: the hot path of every bare-Avro record (and of every Confluent record whose writer
//! schema is that one).
//!
//! Avro's binary encoding of this schema is a flat sequence of fields in schema order: `int` and
//! `long` as zig-zag varints, `float` as 4 little-endian bytes, `string` as a `long` length and
//! that many UTF-8 bytes, and `["null", "string"]` as a `long` branch index (0 or 1) followed by
//! the branch. Nested records add no framing. Reading it by hand, each string is checked as UTF-8
//! in place and copied once into its `String`; apache-avro's serde path zeroes a buffer, copies
//! into it and walks a deserializer per field, which was a third of the pipeline's time.
//!
//! apache-avro stays the reference: the unit tests and the `decode` fuzz target check that both
//! readers accept the same datums and agree on every decoded event.

use crate::event::{Content, Download, Event, UserContext};

/// Why the bytes are not a datum of the schema. `field` is the dotted path of the field being read.
#[derive(Debug, Clone, PartialEq)]
pub struct DatumError {
    pub field: &'static str,
    pub problem: String,
}

impl std::fmt::Display for DatumError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Reads the datum at the start of `bytes`; returns the event and how many bytes it took.
pub fn read(bytes: &[u8]) -> Result<(Event, usize), DatumError> {
    let mut at = Cursor { bytes, at: 0 };
    let event = Event {
        event_id: at.string("event_id")?,
        timestamp: at.long("timestamp")?,
        user_id: at.string("user_id")?,
        content: Content {
            content_id: at.string("content.content_id")?,
            title: at.string("content.title")?,
            kind: at.string("content.type")?,
            category: at.string("content.category")?,
            size_mb: at.int("content.size_mb")?,
            price: at.float("content.price")?,
        },
        download: Download {
            status: at.string("download.status")?,
            duration_seconds: at.int("download.duration_seconds")?,
            speed_mbps: at.float("download.speed_mbps")?,
            error_code: at.optional_string("download.error_code")?,
            error_message: at.optional_string("download.error_message")?,
        },
        user_context: UserContext {
            region: at.string("user_context.region")?,
            city: at.string("user_context.city")?,
            device: at.string("user_context.device")?,
            os_version: at.string("user_context.os_version")?,
            connection_type: at.string("user_context.connection_type")?,
        },
    };
    Ok((event, at.at))
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn fail(&self, field: &'static str, problem: impl Into<String>) -> DatumError {
        DatumError {
            field,
            problem: format!("{} (at byte {})", problem.into(), self.at),
        }
    }

    /// A zig-zag varint of at most 10 bytes. Bits past the 64th (in the 10th byte) are dropped, as
    /// apache-avro and Avro's Java reader drop them.
    fn long(&mut self, field: &'static str) -> Result<i64, DatumError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&byte) = self.bytes.get(self.at) else {
                return Err(self.fail(field, "the datum ends inside a number"));
            };
            self.at += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
            }
        }
        Err(self.fail(field, "number longer than 10 bytes"))
    }

    fn int(&mut self, field: &'static str) -> Result<i32, DatumError> {
        let value = self.long(field)?;
        i32::try_from(value).map_err(|_| self.fail(field, format!("{value} does not fit an int")))
    }

    fn float(&mut self, field: &'static str) -> Result<f32, DatumError> {
        let Some(bytes) = self.bytes.get(self.at..self.at + 4) else {
            return Err(self.fail(field, "the datum ends inside a float"));
        };
        self.at += 4;
        Ok(f32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, DatumError> {
        let len = self.long(field)?;
        let left = self.bytes.len() - self.at;
        let len = usize::try_from(len)
            .map_err(|_| self.fail(field, format!("negative string length {len}")))?;
        if len > left {
            return Err(self.fail(
                field,
                format!("string of {len} bytes, but only {left} bytes are left"),
            ));
        }
        let bytes = &self.bytes[self.at..self.at + len];
        let text =
            std::str::from_utf8(bytes).map_err(|e| self.fail(field, format!("not UTF-8: {e}")))?;
        self.at += len;
        Ok(text)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DatumError> {
        self.str(field).map(str::to_owned)
    }

    fn optional_string(&mut self, field: &'static str) -> Result<Option<String>, DatumError> {
        match self.long(field)? {
            0 => Ok(None),
            1 => self.string(field).map(Some),
            other => Err(self.fail(
                field,
                format!("union branch {other}, but [\"null\", \"string\"] has 2"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::{schema_v1, Encoder};
    use crate::generator::{Generator, Scenario};
    use apache_avro::reader::datum::GenericDatumReader;

    /// apache-avro's reading of the same bytes: the event and the bytes left over.
    fn reference(reader: &GenericDatumReader<'_>, bytes: &[u8]) -> Option<(Event, usize)> {
        let mut rest = bytes;
        let event: Event = reader.read_deser(&mut rest).ok()?;
        Some((event, bytes.len() - rest.len()))
    }

    fn same(a: &Event, b: &Event) -> bool {
        // Compared through their encodings: a NaN float is a legal value never `==` itself.
        let encoder = Encoder::new();
        encoder.encode(a) == encoder.encode(b)
    }

    #[test]
    fn reads_what_the_encoder_writes() {
        let encoder = Encoder::new();
        for scenario in [Scenario::Clean, Scenario::CdnOutage] {
            let generator = Generator::new(11, scenario, 1_700_000_000_000, 500.0);
            for i in 0..5_000 {
                let event = generator.event(i);
                let bytes = encoder.encode(&event);
                assert_eq!(read(&bytes).unwrap(), (event, bytes.len()));
            }
        }
    }

    #[test]
    fn agrees_with_apache_avro_on_mutated_datums() {
        // Every datum apache-avro accepts this one accepts with the same event and length, and
        // the other way round. Mutations: flipped bytes, truncation, extension, spliced numbers.
        let encoder = Encoder::new();
        let reader = GenericDatumReader::builder(schema_v1()).build().unwrap();
        let generator = Generator::new(3, Scenario::CdnOutage, 1_700_000_000_000, 500.0);
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut agreed_ok, mut agreed_err) = (0, 0);
        for i in 0..20_000 {
            let mut bytes = encoder.encode(&generator.event(i));
            match next() % 5 {
                0 => {
                    let at = next() as usize % bytes.len();
                    bytes[at] = next() as u8;
                }
                1 => bytes.truncate(next() as usize % bytes.len()),
                2 => {
                    let at = next() as usize % bytes.len();
                    bytes[at] |= 0x80;
                }
                3 => {
                    let at = next() as usize % bytes.len();
                    let tail: Vec<u8> = (0..next() % 12).map(|_| next() as u8 | 0x80).collect();
                    bytes.splice(at..at, tail);
                }
                _ => {
                    let at = next() as usize % bytes.len();
                    bytes[at] ^= 1 << (next() % 8);
                }
            }
            let ours = read(&bytes).ok();
            let theirs = reference(&reader, &bytes);
            match (&ours, &theirs) {
                (Some((a, n)), Some((b, m))) => {
                    assert!(same(a, b) && n == m, "datum {i}: {bytes:?}");
                    agreed_ok += 1;
                }
                (None, None) => agreed_err += 1,
                _ => panic!(
                    "datum {i}: ours {:?}, apache-avro {:?}, bytes {bytes:?}",
                    ours.is_some(),
                    theirs.is_some()
                ),
            }
        }
        // Both outcomes must have been exercised for the comparison to mean anything.
        assert!(
            agreed_ok > 1_000 && agreed_err > 1_000,
            "{agreed_ok} {agreed_err}"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let encoder = Encoder::new();
        let event = Generator::new(1, Scenario::Clean, 1_700_000_000_000, 10.0).event(3);
        let bytes = encoder.encode(&event);
        let err = read(&bytes[..bytes.len() - 2]).unwrap_err();
        assert_eq!(err.field, "user_context.connection_type");
        assert!(err.problem.contains("only"), "{err}");
        // A hostile length prefix is refused without allocating: 2^40 bytes for event_id.
        let mut hostile = vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        hostile.extend_from_slice(&bytes);
        let err = read(&hostile).unwrap_err();
        assert_eq!(err.field, "event_id");
    }
}
