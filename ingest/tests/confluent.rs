//! Confluent framing end to end, against a tiny Schema Registry served from inside the test.
//!
//! The registry is a `TcpListener` on 127.0.0.1:0 answering one request per connection, over plain
//! HTTP or TLS (a self-signed certificate minted at test time), optionally demanding HTTP basic
//! auth: `GET /schemas/ids/1` (v1, Content-Length), `/2` (v2, chunked), `/3` (a schema that cannot be
//! resolved to v1), `/5` and `/6` (over-long responses), 404 for anything else, and
//! `POST /subjects/{subject}/versions`. It counts requests per path, so the tests can check that
//! each schema id is fetched once.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use apache_avro::Schema;
use openssl::ssl::{SslAcceptor, SslMethod};
use streampulse_ingest::avro::{EVENT_SCHEMA_V1, EVENT_SCHEMA_V2};
use streampulse_ingest::confluent::{
    frame, ConfluentDecoder, ConfluentEncoder, ConfluentError, RegistryError, SchemaRegistry,
    SchemaVersion, MAX_RESPONSE,
};
use streampulse_ingest::{DecodeError, Event, Generator, Scenario};

/// A writer schema v1 readers cannot resolve: v1's required fields are missing and have no defaults.
const INCOMPATIBLE: &str = r#"{"type": "record", "name": "ContentDownloadEvent",
  "namespace": "com.streampulse.events", "fields": [{"name": "event_id", "type": "string"}]}"#;

/// How a [`TestRegistry`] behaves.
#[derive(Default)]
struct Options {
    /// Served under this path prefix (e.g. "" or "/sr").
    prefix: &'static str,
    /// The first this many requests get a 503.
    fail_first: usize,
    /// Demand HTTP basic auth with this user and password (401 otherwise, echoing what came).
    auth: Option<(&'static str, &'static str)>,
    /// Serve TLS with this certificate.
    tls: Option<Arc<TestCert>>,
}

struct TestRegistry {
    url: String,
    /// Requests seen, by "METHOD path".
    requests: Arc<Mutex<HashMap<String, usize>>>,
    /// The Authorization header of each request (None when absent).
    authorizations: Arc<Mutex<Vec<Option<String>>>>,
}

impl TestRegistry {
    /// Serves under `prefix` (e.g. "" or "/sr"); the first `fail_first` requests get a 503.
    fn start(prefix: &'static str, fail_first: usize) -> TestRegistry {
        TestRegistry::with(Options {
            prefix,
            fail_first,
            ..Options::default()
        })
    }

    fn with(options: Options) -> TestRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let scheme = if options.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!(
            "{scheme}://{}{}",
            listener.local_addr().unwrap(),
            options.prefix
        );
        let requests = Arc::new(Mutex::new(HashMap::new()));
        let authorizations = Arc::new(Mutex::new(Vec::new()));
        let (seen, authorized) = (requests.clone(), authorizations.clone());
        let acceptor = options.tls.as_ref().map(|cert| cert.acceptor());
        thread::spawn(move || {
            let mut n = 0;
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                match &acceptor {
                    Some(acceptor) => match acceptor.accept(stream) {
                        Ok(mut tls) => {
                            serve_one(&mut tls, &options, n, &seen, &authorized);
                            let _ = tls.shutdown();
                        }
                        // The client refused the certificate: nothing was asked.
                        Err(_) => continue,
                    },
                    None => serve_one(&mut { stream }, &options, n, &seen, &authorized),
                }
                n += 1;
            }
        });
        TestRegistry {
            url,
            requests,
            authorizations,
        }
    }

    fn count(&self, request: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(request)
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.requests.lock().unwrap().values().sum()
    }

    fn decoder(&self) -> ConfluentDecoder {
        ConfluentDecoder::new(SchemaRegistry::new(&self.url).unwrap())
    }
}

/// Answers the `n`th request, on its own connection.
fn serve_one<S: Read + Write>(
    stream: &mut S,
    options: &Options,
    n: usize,
    seen: &Mutex<HashMap<String, usize>>,
    authorized: &Mutex<Vec<Option<String>>>,
) {
    let (request, authorization, body) = read_request(stream);
    *seen.lock().unwrap().entry(request.clone()).or_insert(0) += 1;
    authorized.lock().unwrap().push(authorization.clone());
    if n < options.fail_first {
        respond(
            stream,
            "503 Service Unavailable",
            "{\"message\":\"warming up\"}",
            false,
        );
        return;
    }
    if let Some((user, password)) = options.auth {
        let expected = format!(
            "Basic {}",
            openssl::base64::encode_block(format!("{user}:{password}").as_bytes())
        );
        if authorization.as_deref() != Some(&expected) {
            // Echoes the credentials it got, as a careless server might: the client must mask them.
            let got = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Basic "))
                .and_then(|b64| openssl::base64::decode_block(b64).ok())
                .map(|raw| String::from_utf8_lossy(&raw).into_owned())
                .unwrap_or_default();
            let body = serde_json::json!({ "error_code": 401, "message": format!("bad credentials {got}") });
            respond(stream, "401 Unauthorized", &body.to_string(), false);
            return;
        }
    }
    let path = request
        .split_once(' ')
        .unwrap()
        .1
        .strip_prefix(options.prefix)
        .unwrap_or("?");
    route(stream, request.starts_with("POST"), path, &body);
}

fn route(stream: &mut impl Write, post: bool, path: &str, body: &str) {
    let schema_response = |schema: &str| serde_json::json!({ "schema": schema }).to_string();
    let huge = || format!("{{\"schema\": \"{}\"}}", "x".repeat(MAX_RESPONSE));
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
        (false, "/schemas/ids/5") => respond(stream, "200 OK", &huge(), false),
        (false, "/schemas/ids/6") => respond(stream, "200 OK", &huge(), true),
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

/// Reads "METHOD path", the Authorization header and the body of one request.
fn read_request(stream: &mut impl Read) -> (String, Option<String>, String) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let request: Vec<&str> = line.split_whitespace().collect();
    let mut length = 0;
    let mut authorization = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        if header.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            } else if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (
        format!("{} {}", request[0], request[1]),
        authorization,
        String::from_utf8(body).unwrap(),
    )
}

fn respond(stream: &mut impl Write, status: &str, body: &str, chunked: bool) {
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
    // The client may hang up early (an over-long response): that is its right.
    let _ = stream.write_all(out.as_bytes());
    let _ = stream.flush();
}

/// A self-signed certificate for 127.0.0.1 and localhost, minted per test run, and its key.
struct TestCert {
    key: openssl::pkey::PKey<openssl::pkey::Private>,
    cert: openssl::x509::X509,
    /// The certificate as a PEM file, for `with_ca_file`.
    pem_file: PathBuf,
}

impl TestCert {
    fn new(name: &str) -> Arc<TestCert> {
        use openssl::asn1::Asn1Time;
        use openssl::bn::BigNum;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::pkey::PKey;
        use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
        use openssl::x509::{X509Builder, X509NameBuilder};

        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut subject = X509NameBuilder::new().unwrap();
        subject
            .append_entry_by_nid(Nid::COMMONNAME, "streampulse test registry")
            .unwrap();
        let subject = subject.build();
        let mut builder = X509Builder::new().unwrap();
        builder.set_version(2).unwrap();
        let serial = BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
        builder.set_serial_number(&serial).unwrap();
        builder.set_subject_name(&subject).unwrap();
        builder.set_issuer_name(&subject).unwrap();
        builder.set_pubkey(&key).unwrap();
        builder
            .set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        builder
            .set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        builder
            .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .ip("127.0.0.1")
            .dns("localhost")
            .build(&builder.x509v3_context(None, None))
            .unwrap();
        builder.append_extension(san).unwrap();
        builder.sign(&key, MessageDigest::sha256()).unwrap();
        let cert = builder.build();
        let pem_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("registry-{name}-{}.pem", std::process::id()));
        std::fs::write(&pem_file, cert.to_pem().unwrap()).unwrap();
        Arc::new(TestCert {
            key,
            cert,
            pem_file,
        })
    }

    fn acceptor(&self) -> SslAcceptor {
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
        acceptor.set_private_key(&self.key).unwrap();
        acceptor.set_certificate(&self.cert).unwrap();
        acceptor.build()
    }
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
        matches!(
            err,
            ConfluentError::Registry(RegistryError::Unavailable { .. })
        ),
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
        matches!(err, RegistryError::Rejected { status: 409, .. }),
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

/// `user:password@` in the URL, percent-encoded as URLs require, with a registry that demands it.
const USER: &str = "sr-key-7f3a";
const PASSWORD: &str = "s3cr@t:pw/42";
const PASSWORD_IN_URL: &str = "s3cr%40t%3Apw%2F42";

fn url_with_credentials(url: &str) -> String {
    url.replacen("://", &format!("://{USER}:{PASSWORD_IN_URL}@"), 1)
}

/// Neither the user nor the password (raw, percent-encoded or as the base64 header) is in `text`.
fn assert_no_secrets(text: &str) {
    let token = openssl::base64::encode_block(format!("{USER}:{PASSWORD}").as_bytes());
    for secret in [USER, PASSWORD, PASSWORD_IN_URL, "s3cr", &token] {
        assert!(!text.contains(secret), "{secret:?} leaked into {text:?}");
    }
}

#[test]
fn basic_auth_from_the_url_reaches_the_registry() {
    let registry = TestRegistry::with(Options {
        auth: Some((USER, PASSWORD)),
        ..Options::default()
    });
    let client = SchemaRegistry::new(&url_with_credentials(&registry.url)).unwrap();
    assert_eq!(client.url(), registry.url, "the URL is kept without them");
    let mut decoder = ConfluentDecoder::new(client.clone());
    let event = events(1).remove(0);
    let encoder =
        ConfluentEncoder::register(&client, "downloads-value", SchemaVersion::V2).unwrap();
    assert_eq!(decoder.decode(&encoder.encode(&event)).unwrap(), event);
    let expected = format!(
        "Basic {}",
        openssl::base64::encode_block(format!("{USER}:{PASSWORD}").as_bytes())
    );
    let seen = registry.authorizations.lock().unwrap().clone();
    assert_eq!(seen, vec![Some(expected.clone()), Some(expected)]);
}

#[test]
fn explicit_basic_auth_replaces_the_url_credentials() {
    let registry = TestRegistry::with(Options {
        auth: Some((USER, PASSWORD)),
        ..Options::default()
    });
    let url = registry.url.replacen("://", "://someone:else@", 1);
    let client = SchemaRegistry::new(&url)
        .unwrap()
        .with_basic_auth(USER, PASSWORD);
    assert_eq!(client.register("downloads-value", EVENT_SCHEMA_V1), Ok(1));
}

#[test]
fn wrong_credentials_are_retryable_and_not_repeated() {
    let registry = TestRegistry::with(Options {
        auth: Some(("someone-else", "another-password")),
        ..Options::default()
    });
    let client = SchemaRegistry::new(&url_with_credentials(&registry.url)).unwrap();
    let framed = ConfluentEncoder::new(1, SchemaVersion::V1).encode(&events(1)[0]);
    // The registry answers 401 and quotes the credentials it got back.
    let err = ConfluentDecoder::new(client.clone())
        .decode(&framed)
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("HTTP 401") && text.contains("credentials"),
        "{text}"
    );
    assert_no_secrets(&text);
    assert_no_secrets(&format!("{err:?}"));
    // A refused registration says 401 too, without the secrets.
    let err = client
        .register("downloads-value", EVENT_SCHEMA_V1)
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert_no_secrets(&err.to_string());
    assert_no_secrets(&format!("{err:?} {client:?}"));
}

#[test]
fn credentials_never_appear_in_errors() {
    // Nothing listens: connection refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = url_with_credentials(&format!("http://127.0.0.1:{port}/sr"));
    let err = ConfluentDecoder::new(SchemaRegistry::new(&down).unwrap())
        .decode(&frame(1, b"x"))
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("http://127.0.0.1:{port}/sr/schemas/ids/1")),
        "{err}"
    );
    assert_no_secrets(&err.to_string());
    assert_no_secrets(&format!("{err:?}"));

    // A registration the registry refuses (409) and a URL that does not parse.
    let registry = TestRegistry::start("", 0);
    let client = SchemaRegistry::new(&url_with_credentials(&registry.url)).unwrap();
    let err = client
        .register("downloads-value", INCOMPATIBLE)
        .unwrap_err();
    assert!(matches!(err, RegistryError::Rejected { status: 409, .. }));
    assert_no_secrets(&err.to_string());
    for bad in [
        url_with_credentials("https://registry:99999"),
        url_with_credentials("https://[::1/"),
        url_with_credentials("gopher://registry"),
    ] {
        let err = SchemaRegistry::new(&bad).unwrap_err();
        assert!(matches!(err, RegistryError::BadUrl { .. }), "{err:?}");
        assert_no_secrets(&err.to_string());
        assert_no_secrets(&format!("{err:?}"));
    }
}

#[test]
fn over_long_responses_are_refused() {
    let registry = TestRegistry::start("", 0);
    let mut decoder = registry.decoder();
    for id in [5u32, 6] {
        // Content-Length (5) and chunked (6).
        let err = decoder.decode(&frame(id, b"x")).unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}

#[test]
fn https_with_a_trusted_certificate_and_credentials() {
    let cert = TestCert::new("trusted");
    let registry = TestRegistry::with(Options {
        prefix: "/sr",
        auth: Some((USER, PASSWORD)),
        tls: Some(cert.clone()),
        ..Options::default()
    });
    assert!(registry.url.starts_with("https://127.0.0.1:"));
    let client = SchemaRegistry::new(&url_with_credentials(&registry.url))
        .unwrap()
        .with_ca_file(&cert.pem_file)
        .unwrap();
    let v1 = ConfluentEncoder::register(&client, "downloads-value", SchemaVersion::V1).unwrap();
    let v2 = ConfluentEncoder::register(&client, "downloads-value", SchemaVersion::V2).unwrap();
    let mut decoder = ConfluentDecoder::new(client);
    for event in events(20) {
        assert_eq!(decoder.decode(&v1.encode(&event)).unwrap(), event);
        assert_eq!(decoder.decode(&v2.encode(&event)).unwrap(), event);
    }
    assert_eq!(registry.count("GET /sr/schemas/ids/1"), 1);
    assert_eq!(registry.count("GET /sr/schemas/ids/2"), 1);
    assert_eq!(
        registry.count("POST /sr/subjects/downloads-value/versions"),
        2
    );
}

#[test]
fn https_with_an_untrusted_certificate_is_refused() {
    let registry = TestRegistry::with(Options {
        tls: Some(TestCert::new("untrusted")),
        ..Options::default()
    });
    // Verified against the system trust store only, which does not know the test certificate.
    let client = SchemaRegistry::new(&url_with_credentials(&registry.url)).unwrap();
    let framed = ConfluentEncoder::new(1, SchemaVersion::V1).encode(&events(1)[0]);
    let err = ConfluentDecoder::new(client.clone())
        .decode(&framed)
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_no_secrets(&err.to_string());
    // Trusting another certificate does not help either.
    let other = TestCert::new("other");
    let err = client
        .with_ca_file(&other.pem_file)
        .unwrap()
        .register("downloads-value", EVENT_SCHEMA_V1)
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    // Nothing, credentials least of all, reached the registry.
    assert_eq!(registry.total(), 0);
}
