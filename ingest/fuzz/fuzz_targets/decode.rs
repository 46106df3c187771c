//! Fuzzes [`Decoder::decode`], the bare-Avro entry point every Kafka record of `--format avro` goes
//! through: the hand-written datum reader for `schemas/event.avsc` ([`streampulse_ingest::datum`]),
//! the trailing-bytes check, and the domain validation that decides what is a dead letter.
//!
//! Beyond "never panics, never runs out of memory":
//! - the hand reader agrees with apache-avro's reader of the same schema (the reference): both
//!   accept or both refuse the bytes, and an accepted datum is the same event of the same length;
//! - an accepted datum survives a round trip: re-encoding the decoded event and decoding that gives
//!   an event that encodes to the same bytes.
//! Events are compared as their encodings, because a NaN `price` is a legal value never `==` itself.

#![no_main]

use apache_avro::reader::datum::GenericDatumReader;
use libfuzzer_sys::fuzz_target;
use streampulse_ingest::avro::schema_v1;
use streampulse_ingest::{datum, Decoder, Encoder, Event};

thread_local! {
    static CODEC: (Decoder, Encoder, GenericDatumReader<'static>) = (
        Decoder::new(),
        Encoder::new(),
        GenericDatumReader::builder(schema_v1()).build().expect("v1 resolves"),
    );
}

fuzz_target!(|data: &[u8]| {
    CODEC.with(|(decoder, encoder, reference)| {
        let ours = datum::read(data).ok();
        let mut rest = data;
        let theirs = reference
            .read_deser::<Event>(&mut rest)
            .ok()
            .map(|event| (event, data.len() - rest.len()));
        match (&ours, &theirs) {
            (Some((a, n)), Some((b, m))) => assert!(
                encoder.encode(a) == encoder.encode(b) && n == m,
                "the readers disagree on the event"
            ),
            (None, None) => {}
            _ => panic!(
                "hand reader accepts: {}, apache-avro accepts: {}",
                ours.is_some(),
                theirs.is_some()
            ),
        }
        let Ok(event) = decoder.decode(data) else {
            return;
        };
        let bytes = encoder.encode(&event);
        let again = decoder
            .decode(&bytes)
            .expect("a re-encoded accepted event decodes");
        assert_eq!(
            encoder.encode(&again),
            bytes,
            "round trip changed the event"
        );
    })
});
