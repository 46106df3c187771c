//! Fuzzes [`ConfluentDecoder::decode`] for the two writer schemas producers use, through the public
//! API only: a stub Schema Registry on 127.0.0.1 (started once per process, in this file) serves
//! `schemas/event.avsc` as id 1 and `schemas/event-v2.avsc` as id 2, and answers 404 otherwise.
//!
//! Each input is taken as a datum and decoded twice, framed with id 1 and with id 2:
//!
//! - id 1 is the reader schema itself, so the decoder takes its no-resolution path (the bare-Avro
//!   [`Decoder`]); the outcome must be exactly what `Decoder::decode` says about the same bytes.
//! - id 2 is a compatible evolution, so the datum is read as a v2 `Value`, resolved to v1 (defaults,
//!   dropped fields), deserialized into `Event` and validated: the path the `decode` target cannot
//!   reach. Any outcome but a panic or a "retry later" error is fine.
//!
//! The schemas are fetched once, on the first input; after that no input touches the network.

#![no_main]

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

use libfuzzer_sys::fuzz_target;
use streampulse_ingest::avro::{EVENT_SCHEMA_V1, EVENT_SCHEMA_V2};
use streampulse_ingest::confluent::{
    frame, ConfluentDecoder, ConfluentEncoder, ConfluentError, SchemaRegistry, SchemaVersion,
};
use streampulse_ingest::{Decoder, Encoder, Generator, Scenario};

/// The writer schema ids the stub registry knows.
const V1_ID: u32 = 1;
const V2_ID: u32 = 2;

/// Serves `GET /schemas/ids/{1,2}` on an ephemeral loopback port until the process exits; returns
/// the registry URL.
fn start_stub_registry() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(&mut stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Skip the headers; a GET has no body.
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let schema = match request_line.split_whitespace().nth(1) {
                Some("/schemas/ids/1") => Some(EVENT_SCHEMA_V1),
                Some("/schemas/ids/2") => Some(EVENT_SCHEMA_V2),
                _ => None,
            };
            let (status, body) = match schema {
                Some(text) => ("200 OK", serde_json::json!({ "schema": text }).to_string()),
                None => ("404 Not Found", r#"{"error_code":40403}"#.to_string()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

struct Harness {
    confluent: ConfluentDecoder,
    bare: Decoder,
    encoder: Encoder,
}

impl Harness {
    /// Starts the stub registry and proves both paths are live: a generated event written with v1
    /// and with v2 decodes back to itself, so neither id is stuck as unknown or unavailable.
    fn new() -> Harness {
        let registry = SchemaRegistry::new(&start_stub_registry()).expect("a valid URL");
        let mut confluent = ConfluentDecoder::new(registry);
        let event = Generator::new(11, Scenario::CdnOutage, 1_700_000_000_000, 50.0).event(1);
        for (id, version) in [(V1_ID, SchemaVersion::V1), (V2_ID, SchemaVersion::V2)] {
            let bytes = ConfluentEncoder::new(id, version).encode(&event);
            assert_eq!(
                confluent.decode(&bytes),
                Ok(event.clone()),
                "warm-up id {id}"
            );
        }
        Harness {
            confluent,
            bare: Decoder::new(),
            encoder: Encoder::new(),
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with_borrow_mut(|h| {
        // v1 writer: same verdict as the bare decoder (events compared re-encoded: NaN != NaN).
        let framed = h
            .confluent
            .decode(&frame(V1_ID, data))
            .map_err(|e| match e {
                ConfluentError::Datum { id: V1_ID, error } => error,
                other => panic!("id {V1_ID}: not a datum error: {other}"),
            });
        let bare = h.bare.decode(data);
        assert_eq!(
            framed.map(|e| h.encoder.encode(&e)),
            bare.map(|e| h.encoder.encode(&e)),
            "id {V1_ID} disagrees with the bare decoder"
        );

        // v2 writer: the resolving path.
        match h.confluent.decode(&frame(V2_ID, data)) {
            Ok(_) | Err(ConfluentError::Datum { id: V2_ID, .. }) => {}
            Err(other) => panic!("id {V2_ID}: not a datum error: {other}"),
        }
    })
});
