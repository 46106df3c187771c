//! Fuzzes [`Decoder::decode`], the bare-Avro entry point every Kafka record of `--format avro` goes
//! through: apache-avro's datum reader for `schemas/event.avsc` deserializing into `Event`, the
//! trailing-bytes check, and the domain validation that decides what is a dead letter.
//!
//! Beyond "never panics, never runs out of memory", an accepted datum must survive a round trip:
//! re-encoding the decoded event and decoding that gives an event that encodes to the same bytes
//! (compared as bytes, not events, because a NaN `price` is a legal value that is never `==` itself).

#![no_main]

use libfuzzer_sys::fuzz_target;
use streampulse_ingest::{Decoder, Encoder};

thread_local! {
    static CODEC: (Decoder, Encoder) = (Decoder::new(), Encoder::new());
}

fuzz_target!(|data: &[u8]| {
    CODEC.with(|(decoder, encoder)| {
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
