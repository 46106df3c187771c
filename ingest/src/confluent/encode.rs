//! The producer side: [`ConfluentEncoder`] writes events as Confluent-framed datums of one
//! committed [`SchemaVersion`] under one registry id.
//!
//! v1 is [`Event`] itself. v2 adds fields an [`Event`] does not carry; their values come from the
//! generator ([`crate::generator::v2_fields`]) and this file only lays them out as v2 writes them.

use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::Serialize;

use super::frame;
use super::registry::{RegistryError, SchemaRegistry};
use crate::avro::{schema_v1, schema_v2, EVENT_SCHEMA_V1, EVENT_SCHEMA_V2};
use crate::event::{Content, Event, UserContext};
use crate::generator::{v2_fields, V2Fields};

/// Which committed schema a producer writes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SchemaVersion {
    /// `schemas/event.avsc`
    V1,
    /// `schemas/event-v2.avsc`: v1 plus `download.cdn_node`, `app_version` and `retry_count`.
    V2,
}

impl SchemaVersion {
    pub fn schema(self) -> &'static Schema {
        match self {
            SchemaVersion::V1 => schema_v1(),
            SchemaVersion::V2 => schema_v2(),
        }
    }

    /// The schema's JSON text, as registered with the registry.
    pub fn text(self) -> &'static str {
        match self {
            SchemaVersion::V1 => EVENT_SCHEMA_V1,
            SchemaVersion::V2 => EVENT_SCHEMA_V2,
        }
    }
}

/// Encodes events as Confluent-framed datums of one schema version under one registry id.
pub struct ConfluentEncoder {
    schema_id: u32,
    version: SchemaVersion,
    writer: GenericDatumWriter<'static>,
}

impl ConfluentEncoder {
    /// An encoder for a schema already registered as `schema_id`.
    pub fn new(schema_id: u32, version: SchemaVersion) -> ConfluentEncoder {
        let writer = GenericDatumWriter::builder(version.schema())
            .build()
            .expect("the committed schemas resolve");
        ConfluentEncoder {
            schema_id,
            version,
            writer,
        }
    }

    /// Registers `version` under `subject` (conventionally `<topic>-value`) and encodes with the id
    /// the registry assigns.
    pub fn register(
        registry: &SchemaRegistry,
        subject: &str,
        version: SchemaVersion,
    ) -> Result<ConfluentEncoder, RegistryError> {
        let id = registry.register(subject, version.text())?;
        Ok(ConfluentEncoder::new(id, version))
    }

    pub fn schema_id(&self) -> u32 {
        self.schema_id
    }

    pub fn version(&self) -> SchemaVersion {
        self.version
    }

    pub fn encode(&self, event: &Event) -> Vec<u8> {
        let mut out = frame(self.schema_id, &[]);
        let written = match self.version {
            SchemaVersion::V1 => self.writer.write_ser(&mut out, event),
            SchemaVersion::V2 => {
                let extra = v2_fields(event);
                self.writer
                    .write_ser(&mut out, &EventV2::new(event, &extra))
            }
        };
        written.expect("an event always matches the schema it is written with");
        out
    }
}

/// An event as v2 writes it: the v1 fields and the fields v2 added, all borrowed.
#[derive(Serialize)]
#[serde(rename = "ContentDownloadEvent")]
struct EventV2<'a> {
    event_id: &'a str,
    timestamp: i64,
    user_id: &'a str,
    content: &'a Content,
    download: DownloadV2<'a>,
    user_context: &'a UserContext,
    app_version: &'a Option<String>,
    retry_count: i32,
}

#[derive(Serialize)]
#[serde(rename = "Download")]
struct DownloadV2<'a> {
    status: &'a str,
    duration_seconds: i32,
    speed_mbps: f32,
    error_code: &'a Option<String>,
    error_message: &'a Option<String>,
    cdn_node: &'a Option<String>,
}

impl<'a> EventV2<'a> {
    fn new(event: &'a Event, extra: &'a V2Fields) -> EventV2<'a> {
        let download = &event.download;
        EventV2 {
            event_id: &event.event_id,
            timestamp: event.timestamp,
            user_id: &event.user_id,
            content: &event.content,
            download: DownloadV2 {
                status: &download.status,
                duration_seconds: download.duration_seconds,
                speed_mbps: download.speed_mbps,
                error_code: &download.error_code,
                error_message: &download.error_message,
                cdn_node: &extra.cdn_node,
            },
            user_context: &event.user_context,
            app_version: &extra.app_version,
            retry_count: extra.retry_count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confluent::parse_frame;
    use apache_avro::reader::datum::GenericDatumReader;

    #[test]
    fn v2_encoding_carries_the_new_fields() {
        let event =
            crate::Generator::new(3, crate::Scenario::Clean, 1_700_000_000_000, 10.0).event(5);
        let bytes = ConfluentEncoder::new(9, SchemaVersion::V2).encode(&event);
        let (id, datum) = parse_frame(&bytes).unwrap();
        assert_eq!(id, 9);
        let reader = GenericDatumReader::builder(schema_v2()).build().unwrap();
        let value = reader.read_value(&mut &datum[..]).unwrap();
        let apache_avro::types::Value::Record(fields) = value else {
            panic!("a record")
        };
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains(&"app_version") && names.contains(&"retry_count"),
            "{names:?}"
        );
    }

    /// The bytes a producer writes depend on nothing but the events: the same flags always write the
    /// same topic. (The digest was taken before the v2 field values moved to the generator.)
    #[test]
    fn v2_bytes_are_stable() {
        let g = crate::Generator::new(7, crate::Scenario::CdnOutage, 1_700_000_000_000, 50.0);
        let encoder = ConfluentEncoder::new(2, SchemaVersion::V2);
        let digest = (0..2000)
            .flat_map(|i| encoder.encode(&g.event(i)))
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
        assert_eq!(digest, 0xa2f4_7ece_60ea_5aaf);
    }

    #[test]
    fn encoder_is_send() {
        fn send<T: Send>() {}
        send::<ConfluentEncoder>();
    }
}
