//! Confluent framing end to end, against a tiny Schema Registry served from inside the test.
//!
//! The registry is a `TcpListener` on 127.0.0.1:0 answering one request per connection:
//! `GET /schemas/ids/1` (v1, Content-Length), `/2` (v2, chunked), `/3` (a schema that cannot be
//! resolved to v1), 404 for anything else, and `POST /subjects/{subject}/versions`. It counts
//! requests per path, so the tests can check that each schema id is fetched once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use apache_avro::Schema;
use streampulse_ingest::avro::{EVENT_SCHEMA_V1, EVENT_SCHEMA_V2};
use streampulse_ingest::confluent::{
    frame, ConfluentDecoder, ConfluentEncoder, ConfluentError, SchemaRegistry, SchemaVersion,
};
use streampulse_ingest::{DecodeError, Event, Generator, Scenario};

/// A writer schema v1 readers cannot resolve: v1's required fields are missing and have no defaults.
const INCOMPATIBLE: &str = r#"{"type": "record", "name": "ContentDownloadEvent",
  "namespace": "com.streampulse.events", "fields": [{"name": "event_id", "type": "string"}]}"#;

struct TestRegistry {
    url: String,
    /// Requests seen, by "METHOD path".
    requests: Arc<Mutex<HashMap<String, usize>>>,
}

impl TestRegistry {
    /// Serves under `prefix` (e.g. "" or "/sr"); the first `fail_first` requests get a 503.
    fn start(prefix: &'static str, fail_first: usize) -> TestRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}{prefix}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let seen = requests.clone();
        thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let mut stream = stream.unwrap();
                let (request, body) = read_request(&mut stream);
                *seen.lock().unwrap().entry(request.clone()).or_insert(0) += 1;
                if n < fail_first {
                    respond(
                        &mut stream,
                        "503 Service Unavailable",
                        "{\"message\":\"warming up\"}",
                        false,
                    );
                    continue;
                }
                let path = request
                    .split_once(' ')
                    .unwrap()
                    .1
                    .strip_prefix(prefix)
                    .unwrap_or("?");
                route(&mut stream, request.starts_with("POST"), path, &body);
            }
        });
        TestRegistry { url, requests }
    }

    fn count(&self, request: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(request)
            .copied()
            .unwrap_or(0)
    }

    fn decoder(&self) -> ConfluentDecoder {
        ConfluentDecoder::new(SchemaRegistry::new(&self.url).unwrap())
    }
}

fn route(stream: &mut TcpStream, post: bool, path: &str, body: &str) {
    let schema_response = |schema: &str| serde_json::json!({ "schema": schema }).to_string();
    match (post, path) {
        (false, "/schemas/ids/1") => {
            respond(stream, "200 OK", &schema_response(EVENT_SCHEMA_V1), false)
        }
        (false, "/schemas/ids/2") => {
            respond(stream, "200 OK", &schema_response(EVENT_SCHEMA_V2), true)
        }
        (false, "/schemas/ids/3") => {
            respond(stream, "200 OK", &schema_response(INCOMPATIBLE), false)
        }
        (true, p) if p.starts_with("/subjects/") && p.ends_with("/versions") => {
            let json: serde_json::Value = serde_json::from_str(body).unwrap();
            let posted = Schema::parse_str(json["schema"].as_str().unwrap())
                .unwrap()
                .canonical_form();
            let canonical = |text: &str| Schema::parse_str(text).unwrap().canonical_form();
            if posted == canonical(EVENT_SCHEMA_V1) {
                respond(stream, "200 OK", "{\"id\":1}", false);
            } else if posted == canonical(EVENT_SCHEMA_V2) {
                respond(stream, "200 OK", "{\"id\":2}", true);
            } else {
                respond(
                    stream,
                    "409 Conflict",
                    "{\"error_code\":409,\"message\":\"incompatible\"}",
                    false,
                );
            }
        }
        _ => respond(
            stream,
            "404 Not Found",
            "{\"error_code\":40403,\"message\":\"Schema not found\"}",
            false,
        ),
    }
}

/// Reads "METHOD path" and the body of one request.
fn read_request(stream: &mut TcpStream) -> (String, String) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let request: Vec<&str> = line.split_whitespace().collect();
    let mut length = 0;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (
        format!("{} {}", request[0], request[1]),
        String::from_utf8(body).unwrap(),
    )
}

fn respond(stream: &mut TcpStream, status: &str, body: &str, chunked: bool) {
    let mut out =
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n");
    if chunked {
        out += "Transfer-Encoding: chunked\r\n\r\n";
        for chunk in body.as_bytes().chunks(97) {
            out += &format!(
                "{:x}\r\n{}\r\n",
                chunk.len(),
                std::str::from_utf8(chunk).unwrap()
            );
        }
        out += "0\r\n\r\n";
    } else {
        out += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    }
    stream.write_all(out.as_bytes()).unwrap();
}

fn events(n: u64) -> Vec<Event> {
    let generator = Generator::new(11, Scenario::CdnOutage, 1_700_000_000_000, 200.0);
    (0..n).map(|i| generator.event(i)).collect()
}

#[test]
fn v1_and_v2_frames_decode_to_the_generated_events() {
    let registry = TestRegistry::start("", 0);
    let mut decoder = registry.decoder();
    let v1 = ConfluentEncoder::new(1, SchemaVersion::V1);
    let v2 = ConfluentEncoder::new(2, SchemaVersion::V2);
    for event in events(500) {
        assert_eq!(decoder.decode(&v1.encode(&event)).unwrap(), event);
        let framed = v2.encode(&event);
        assert!(
            framed.len() > v1.encode(&event).len(),
            "v2 writes its extra fields"
        );
        assert_eq!(decoder.decode(&framed).unwrap(), event);
    }
    // Schemas are fetched once per id and then served from the cache.
    assert_eq!(registry.count("GET /schemas/ids/1"), 1);
    assert_eq!(registry.count("GET /schemas/ids/2"), 1);
}

#[test]
fn a_path_prefix_in_the_registry_url_is_kept() {
    let registry = TestRegistry::start("/sr", 0);
    let mut decoder = registry.decoder();
    let event = events(1).remove(0);
    assert_eq!(
        decoder
            .decode(&ConfluentEncoder::new(2, SchemaVersion::V2).encode(&event))
            .unwrap(),
        event
    );
    assert_eq!(registry.count("GET /sr/schemas/ids/2"), 1);
}

#[test]
fn poison_records_say_what_is_wrong() {
    let registry = TestRegistry::start("", 0);
    let mut decoder = registry.decoder();
    let event = events(3).remove(2);
    let v1 = ConfluentEncoder::new(1, SchemaVersion::V1).encode(&event);
    let v2 = ConfluentEncoder::new(2, SchemaVersion::V2).encode(&event);

    let check = |result: Result<Event, ConfluentError>,
                 expect: &dyn Fn(&ConfluentError) -> bool,
                 words: &[&str]| {
        let err = result.expect_err("a poison record");
        assert!(expect(&err), "unexpected error kind: {err:?}");
        assert!(
            !err.is_retryable(),
            "poison must be dead-lettered, not retried: {err}"
        );
        let text = err.to_string();
        for word in words {
            assert!(text.contains(word), "{text:?} should mention {word:?}");
        }
    };

    // Garbage and bare Avro are told apart from framed records by the magic byte.
    check(
        decoder.decode(b"{\"event_id\": 1}"),
        &|e| *e == ConfluentError::BadMagic(b'{'),
        &["0x7b", "magic"],
    );
    let bare = streampulse_ingest::Encoder::new().encode(&event);
    check(
        decoder.decode(&bare),
        &|e| matches!(e, ConfluentError::BadMagic(_)),
        &["magic"],
    );
    let mut wrong_magic = v1.clone();
    wrong_magic[0] = 0x01;
    check(
        decoder.decode(&wrong_magic),
        &|e| *e == ConfluentError::BadMagic(1),
        &["0x01"],
    );
    check(
        decoder.decode(&[]),
        &|e| *e == ConfluentError::TooShort(0),
        &["0 bytes"],
    );
    check(
        decoder.decode(&v1[..3]),
        &|e| *e == ConfluentError::TooShort(3),
        &["3 bytes"],
    );

    // Truncated datums, for the direct (v1) and the resolving (v2) path alike.
    for (id, framed) in [(1, &v1), (2, &v2)] {
        let half = &framed[..framed.len() / 2];
        check(
            decoder.decode(half),
            &|e| matches!(e, ConfluentError::Datum { id: i, error: DecodeError::Avro(_) } if *i == id),
            &[&format!("schema {id}")],
        );
        let header_only = &framed[..5];
        check(
            decoder.decode(header_only),
            &|e| {
                matches!(
                    e,
                    ConfluentError::Datum {
                        error: DecodeError::Empty,
                        ..
                    }
                )
            },
            &["empty"],
        );
        let mut long = framed.clone();
        long.extend_from_slice(&[7, 7, 7]);
        check(
            decoder.decode(&long),
            &|e| {
                matches!(
                    e,
                    ConfluentError::Datum {
                        error: DecodeError::TrailingBytes(3),
                        ..
                    }
                )
            },
            &["3 bytes left over"],
        );
    }
    // A good header followed by garbage.
    let garbage = frame(2, &[0xff; 40]);
    check(
        decoder.decode(&garbage),
        &|e| matches!(e, ConfluentError::Datum { id: 2, .. }),
        &["schema 2"],
    );

    // A well-formed datum of an event that makes no sense.
    let mut bad = event.clone();
    bad.download.status = "exploded".into();
    let framed = ConfluentEncoder::new(2, SchemaVersion::V2).encode(&bad);
    check(
        decoder.decode(&framed),
        &|e| {
            matches!(
                e,
                ConfluentError::Datum {
                    error: DecodeError::Invalid(_),
                    ..
                }
            )
        },
        &["download.status", "exploded"],
    );

    // Ids the registry does not know, or whose schema cannot be read as v1.
    let mut unknown = v1.clone();
    unknown[1..5].copy_from_slice(&99u32.to_be_bytes());
    check(
        decoder.decode(&unknown),
        &|e| *e == ConfluentError::UnknownSchemaId(99),
        &["99", "404"],
    );
    check(
        decoder.decode(&unknown),
        &|e| *e == ConfluentError::UnknownSchemaId(99),
        &["99"],
    );
    let mut incompatible = v1.clone();
    incompatible[1..5].copy_from_slice(&3u32.to_be_bytes());
    check(
        decoder.decode(&incompatible),
        &|e| matches!(e, ConfluentError::Incompatible { id: 3, .. }),
        &["writer schema 3", "reader schema"],
    );
    check(
        decoder.decode(&incompatible),
        &|e| matches!(e, ConfluentError::Incompatible { id: 3, .. }),
        &[],
    );

    // Poison does not disturb good records, and every id was asked about exactly once.
    assert_eq!(decoder.decode(&v1).unwrap(), event);
    assert_eq!(decoder.decode(&v2).unwrap(), event);
    for id in [1, 2, 3, 99] {
        assert_eq!(
            registry.count(&format!("GET /schemas/ids/{id}")),
            1,
            "id {id}"
        );
    }
}

#[test]
fn a_registry_that_is_down_gives_a_retryable_error() {
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let mut decoder = ConfluentDecoder::new(SchemaRegistry::new(&url).unwrap());
    let framed = ConfluentEncoder::new(1, SchemaVersion::V1).encode(&events(1)[0]);
    let err = decoder.decode(&framed).unwrap_err();
    assert!(
        matches!(err, ConfluentError::RegistryUnavailable { .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    assert!(err.to_string().contains(&url), "{err}");
}

#[test]
fn a_registry_that_does_not_answer_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    // Accepts, then says nothing until the test is over.
    thread::spawn(move || {
        let _held: Vec<TcpStream> = listener.incoming().map(Result::unwrap).collect();
    });
    let registry = SchemaRegistry::new(&url)
        .unwrap()
        .with_timeout(Duration::from_millis(200));
    let framed = ConfluentEncoder::new(1, SchemaVersion::V1).encode(&events(1)[0]);
    let err = ConfluentDecoder::new(registry).decode(&framed).unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("no answer within"), "{err}");
}

#[test]
fn a_record_that_met_a_failing_registry_decodes_on_retry() {
    let registry = TestRegistry::start("", 2);
    let mut decoder = registry.decoder();
    let event = events(1).remove(0);
    let framed = ConfluentEncoder::new(2, SchemaVersion::V2).encode(&event);
    for _ in 0..2 {
        let err = decoder.decode(&framed).unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("HTTP 503"), "{err}");
    }
    // Failures are not cached: the third attempt asks again and succeeds, and later ones hit the cache.
    assert_eq!(decoder.decode(&framed).unwrap(), event);
    assert_eq!(decoder.decode(&framed).unwrap(), event);
    assert_eq!(registry.count("GET /schemas/ids/2"), 3);
}

#[test]
fn producers_register_their_schema() {
    let registry = TestRegistry::start("", 0);
    let client = SchemaRegistry::new(&registry.url).unwrap();
    assert_eq!(
        client.register("downloads-value", EVENT_SCHEMA_V1).unwrap(),
        1
    );
    let encoder =
        ConfluentEncoder::register(&client, "downloads-value", SchemaVersion::V2).unwrap();
    assert_eq!(encoder.schema_id(), 2);
    assert_eq!(registry.count("POST /subjects/downloads-value/versions"), 2);

    let err = client
        .register("downloads-value", INCOMPATIBLE)
        .unwrap_err();
    assert!(
        matches!(err, ConfluentError::RegistryRejected { status: 409, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // What the producer registered and framed, a consumer decodes.
    let event = events(1).remove(0);
    assert_eq!(
        registry.decoder().decode(&encoder.encode(&event)).unwrap(),
        event
    );
}
