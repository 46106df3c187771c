//! Confluent-framed Avro (`--format confluent`) and the small Schema Registry client it needs.
//!
//! ```text
//!   byte 0        bytes 1..5              bytes 5..
//!   0x00 (magic)  schema id, u32 big-end  Avro datum written with the registry's schema <id>
//! ```
//!
//! [`ConfluentDecoder`] fetches each writer schema from the registry once (`GET /schemas/ids/{id}`),
//! keeps a reader for it for good (a schema id never changes meaning) and resolves every datum
//! against the reader schema `schemas/event.avsc`, so producers on v1, v2 or any compatible evolution
//! all decode to the same [`Event`]. [`ConfluentEncoder`] is the producer side.
//!
//! Failures come in two kinds, told apart by [`ConfluentError::is_retryable`]: the record is bad
//! (poison: it becomes a dead letter), or the registry cannot be asked right now (the record may be
//! fine: retry later, never dead-letter it). The HTTP client is deliberately tiny: HTTP/1.1 over a
//! `TcpStream`, `http://` only, one request per connection, bounded in time and size.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use serde::Serialize;
use thiserror::Error;

use crate::avro::{schema_v1, schema_v2, DecodeError, Decoder, EVENT_SCHEMA_V1, EVENT_SCHEMA_V2};
use crate::event::{Content, Event, Outcome, UserContext};

/// The first byte of every Confluent-framed value.
pub const MAGIC: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const HEADER_LEN: usize = 5;
/// Default connect, read and write timeout for registry requests.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// A registry response (headers included) larger than this is refused: a schema is a few KiB.
pub const MAX_RESPONSE: usize = 1 << 20;
/// How long a 404 for an id is believed before the registry is asked again. Long enough that a flood
/// of poison records with random ids is not also a flood of registry requests; short enough that a
/// schema registered late (or replicated late) is picked up.
const UNKNOWN_ID_RECHECK: Duration = Duration::from_secs(60);

/// Why a Confluent-framed record could not be decoded, or the registry could not be used.
/// The text is what lands in `dead_letters.reason`, so it says what was found.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfluentError {
    #[error("record value is {0} bytes, shorter than the 5-byte Confluent header (magic byte + schema id)")]
    TooShort(usize),
    #[error("first byte is 0x{0:02x}, not the Confluent magic byte 0x00 (a bare Avro datum, or another format?)")]
    BadMagic(u8),
    #[error("schema id {0} is unknown to the schema registry (404)")]
    UnknownSchemaId(u32),
    /// The registry could not be reached or gave an unusable answer (timeout, refused connection,
    /// 5xx, 401, malformed response). Says nothing about the record: retryable.
    #[error("schema registry {url} unavailable: {reason}")]
    RegistryUnavailable { url: String, reason: String },
    /// A producer's registration was refused (4xx other than 404 on `POST /subjects/...`).
    #[error("schema registry {url} refused the request: HTTP {status}: {body}")]
    RegistryRejected {
        url: String,
        status: u16,
        body: String,
    },
    #[error("invalid schema registry URL {url:?}: {reason}")]
    BadRegistryUrl { url: String, reason: String },
    #[error("writer schema {id} from the registry is not a usable Avro schema: {reason}")]
    BadWriterSchema { id: u32, reason: String },
    #[error("writer schema {id} cannot be resolved against the reader schema (schemas/event.avsc): {reason}")]
    Incompatible { id: u32, reason: String },
    /// The header and writer schema are fine but the datum is not (truncated, garbage, trailing
    /// bytes, or an event outside [`crate::validate`]'s domain).
    #[error("datum written with schema {id}: {error}")]
    Datum { id: u32, error: DecodeError },
}

impl ConfluentError {
    /// True when the record itself may be fine and the failure is the registry's: retry the same
    /// record later (with backoff) instead of dead-lettering it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConfluentError::RegistryUnavailable { .. })
    }
}

/// Splits a Confluent-framed value into its schema id and the Avro datum after the header.
pub fn parse_frame(bytes: &[u8]) -> Result<(u32, &[u8]), ConfluentError> {
    if bytes.len() < HEADER_LEN {
        // A non-empty value that does not start with the magic byte is the more useful diagnosis.
        return Err(match bytes.first() {
            Some(&b) if b != MAGIC => ConfluentError::BadMagic(b),
            _ => ConfluentError::TooShort(bytes.len()),
        });
    }
    if bytes[0] != MAGIC {
        return Err(ConfluentError::BadMagic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Prefixes a datum with the Confluent header for `schema_id`.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

// ---------------------------------------------------------------------------------------------------
// Schema Registry client
// ---------------------------------------------------------------------------------------------------

/// Where the registry lives, parsed once from an `http://host[:port][/prefix]` URL.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    /// `host[:port]` exactly as given, for the `Host` header.
    authority: String,
    host: String,
    port: u16,
    /// Path prefix without a trailing slash ("" or e.g. "/registry").
    prefix: String,
}

fn parse_url(url: &str) -> Result<Endpoint, String> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Err("https is not supported; use a plain http:// URL".into());
    }
    if !lower.starts_with("http://") {
        return Err("expected an http:// URL".into());
    }
    let rest = &url["http://".len()..];
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err("credentials in the URL are not supported".into());
    }
    // "[::1]:8081" keeps its brackets in the Host header but not for address lookup.
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("unclosed '[' in host")?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port {p:?}"))?,
        None => 80,
    };
    Ok(Endpoint {
        authority: authority.to_string(),
        host: host.to_string(),
        port,
        prefix: path.trim_end_matches('/').to_string(),
    })
}

/// A Confluent Schema Registry reached over plain HTTP/1.1.
#[derive(Clone, Debug)]
pub struct SchemaRegistry {
    url: String,
    endpoint: Endpoint,
    timeout: Duration,
}

impl SchemaRegistry {
    /// `url` is the registry's base, e.g. `http://localhost:8081` or `http://proxy:80/registry`.
    pub fn new(url: &str) -> Result<SchemaRegistry, ConfluentError> {
        let endpoint = parse_url(url).map_err(|reason| ConfluentError::BadRegistryUrl {
            url: url.to_string(),
            reason,
        })?;
        Ok(SchemaRegistry {
            url: url.trim_end_matches('/').to_string(),
            endpoint,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Sets the connect, read and write timeout (each applies per operation, not to the whole request).
    pub fn with_timeout(mut self, timeout: Duration) -> SchemaRegistry {
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The writer schema text registered under `id` (`GET /schemas/ids/{id}`).
    pub fn fetch_schema(&self, id: u32) -> Result<String, ConfluentError> {
        let path = format!("/schemas/ids/{id}");
        let (status, body) = self.request("GET", &path, None)?;
        match status {
            200 => {}
            404 => return Err(ConfluentError::UnknownSchemaId(id)),
            _ => return Err(self.unavailable(&path, format!("HTTP {status}: {}", snippet(&body)))),
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(&path, format!("response is not JSON: {e}")))?;
        // Registries that also hold Protobuf or JSON Schema say so here; absent means Avro.
        if let Some(kind) = json.get("schemaType").and_then(|t| t.as_str()) {
            if kind != "AVRO" {
                return Err(ConfluentError::BadWriterSchema {
                    id,
                    reason: format!("it is a {kind} schema, not Avro"),
                });
            }
        }
        match json.get("schema").and_then(|s| s.as_str()) {
            Some(schema) => Ok(schema.to_string()),
            None => Err(self.unavailable(&path, "response has no \"schema\" string".into())),
        }
    }

    /// Registers `schema` under `subject` (`POST /subjects/{subject}/versions`) and returns its id.
    /// Registering a schema that is already there is harmless: the registry returns the existing id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, ConfluentError> {
        let path = format!("/subjects/{}/versions", percent_encode(subject));
        let body = serde_json::json!({ "schema": schema }).to_string();
        let (status, response) = self.request("POST", &path, Some(&body))?;
        match status {
            200..=299 => {}
            400..=499 if status != 404 && status != 408 && status != 429 => {
                return Err(ConfluentError::RegistryRejected {
                    url: format!("{}{path}", self.url),
                    status,
                    body: snippet(&response),
                })
            }
            _ => {
                return Err(
                    self.unavailable(&path, format!("HTTP {status}: {}", snippet(&response)))
                )
            }
        }
        let json: serde_json::Value = serde_json::from_slice(&response)
            .map_err(|e| self.unavailable(&path, format!("response is not JSON: {e}")))?;
        json.get("id")
            .and_then(|id| id.as_u64())
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| {
                self.unavailable(&path, format!("no schema id in {}", snippet(&response)))
            })
    }

    fn unavailable(&self, path: &str, reason: String) -> ConfluentError {
        ConfluentError::RegistryUnavailable {
            url: format!("{}{path}", self.url),
            reason,
        }
    }

    /// One request on a fresh connection; returns the status and body. Every failure is the
    /// registry's (or the network's), hence `RegistryUnavailable`.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, Vec<u8>), ConfluentError> {
        let timeout = self.timeout;
        let exchange = || -> io::Result<(u16, Vec<u8>)> {
            let mut stream = self.connect()?;
            stream.set_read_timeout(Some(timeout))?;
            stream.set_write_timeout(Some(timeout))?;
            let Endpoint {
                authority, prefix, ..
            } = &self.endpoint;
            let mut head = format!(
                "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\n\
                 Accept: application/vnd.schemaregistry.v1+json, application/json\r\n\
                 Connection: close\r\n"
            );
            if let Some(body) = body {
                head += &format!(
                    "Content-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n",
                    body.len()
                );
            }
            head += "\r\n";
            stream.write_all(head.as_bytes())?;
            stream.write_all(body.unwrap_or("").as_bytes())?;
            stream.flush()?;
            // +1 so that "exactly at the cap" and "over the cap" can be told apart.
            let mut reader = BufReader::new(stream.take(MAX_RESPONSE as u64 + 1));
            let response = read_response(&mut reader);
            if reader.get_ref().limit() == 0 {
                return Err(io::Error::other(format!(
                    "response larger than {MAX_RESPONSE} bytes"
                )));
            }
            response
        };
        exchange().map_err(|e| {
            let reason = match e.kind() {
                // A read timeout surfaces as WouldBlock on Unix.
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    format!("no answer within {timeout:?}")
                }
                _ => e.to_string(),
            };
            self.unavailable(path, reason)
        })
    }

    fn connect(&self) -> io::Result<TcpStream> {
        let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolves to no address");
        for addr in (self.endpoint.host.as_str(), self.endpoint.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, self.timeout) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

/// Reads an HTTP/1.1 response: status line, headers, then a body framed by chunked encoding,
/// Content-Length, or the end of the connection (we always ask for `Connection: close`).
fn read_response(r: &mut impl BufRead) -> io::Result<(u16, Vec<u8>)> {
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let status_line = read_line(r)?;
    let status = match status_line.split_whitespace().collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or_else(|| bad(format!("not an HTTP/1.x status line: {status_line:?}")))?;

    let (mut length, mut chunked) = (None, false);
    loop {
        let line = read_line(r)?;
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: usize = value
                    .trim()
                    .parse()
                    .map_err(|_| bad(format!("bad Content-Length {value:?}")))?;
                length = Some(n);
            }
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }

    let too_large = || bad(format!("response larger than {MAX_RESPONSE} bytes"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let line = read_line(r)?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break; // trailers, if any, are of no interest and the connection is closing anyway
            }
            if body.len() + size > MAX_RESPONSE {
                return Err(too_large());
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            if !read_line(r)?.is_empty() {
                return Err(bad("chunk not followed by CRLF".into()));
            }
        }
    } else if let Some(n) = length {
        if n > MAX_RESPONSE {
            return Err(too_large());
        }
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok((status, body))
}

/// One CRLF- (or LF-) terminated line, without the terminator.
fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed mid-response",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The start of a response body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Subjects are usually `<topic>-value`, but a topic may contain characters a path cannot.
fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------------

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
                .and_then(|text| prepare(id, &text));
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

// ---------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------

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
    ) -> Result<ConfluentEncoder, ConfluentError> {
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
            SchemaVersion::V2 => self.writer.write_ser(&mut out, &EventV2::new(event)),
        };
        written.expect("an event always matches the schema it is written with");
        out
    }
}

/// An event as v2 writes it: the v1 fields, borrowed, plus the fields v2 added.
#[derive(Serialize)]
#[serde(rename = "ContentDownloadEvent")]
struct EventV2<'a> {
    event_id: &'a str,
    timestamp: i64,
    user_id: &'a str,
    content: &'a Content,
    download: DownloadV2<'a>,
    user_context: &'a UserContext,
    app_version: Option<String>,
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
    cdn_node: Option<String>,
}

impl<'a> EventV2<'a> {
    /// Fills the v2-only fields with plausible values derived from the event id, so the same event
    /// always encodes to the same bytes.
    fn new(event: &'a Event) -> EventV2<'a> {
        // FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
        let h = event
            .event_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
        let region = event.user_context.region.to_ascii_lowercase();
        let download = &event.download;
        let failed = event.outcome() == Some(Outcome::Failed);
        // Most attempts are first attempts; failed downloads have usually been retried already.
        let retries = if failed {
            (h >> 20) % 4
        } else {
            u64::from((h >> 20) % 8 == 0)
        };
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
                // One in sixteen clients does not report the edge node.
                cdn_node: (h % 16 != 0).then(|| format!("edge-{region}-{:02}", (h >> 4) % 6 + 1)),
            },
            user_context: &event.user_context,
            // Old app builds predate the field.
            app_version: ((h >> 8) % 10 != 0)
                .then(|| format!("5.{}.{}", (h >> 12) % 4 + 2, (h >> 16) % 10)),
            retry_count: retries as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse() {
        assert_eq!(
            parse_frame(&[0, 0, 0, 1, 2, 9, 9]),
            Ok((258, &[9u8, 9][..]))
        );
        assert_eq!(
            parse_frame(&[0, 0xff, 0xff, 0xff, 0xff]),
            Ok((u32::MAX, &[][..]))
        );
        assert_eq!(parse_frame(&frame(7, b"abc")), Ok((7, &b"abc"[..])));
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        assert_eq!(parse_frame(&[]), Err(ConfluentError::TooShort(0)));
        assert_eq!(parse_frame(&[0, 0, 1]), Err(ConfluentError::TooShort(3)));
        assert_eq!(
            parse_frame(&[0x7b, 0x22]),
            Err(ConfluentError::BadMagic(0x7b))
        );
        assert_eq!(
            parse_frame(b"hello world"),
            Err(ConfluentError::BadMagic(b'h'))
        );
        let err = parse_frame(&[1, 0, 0, 0, 1, 2]).unwrap_err();
        assert!(err.to_string().contains("0x01"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn urls_parse() {
        let e = parse_url("http://registry:8081").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("registry", 8081, "")
        );
        let e = parse_url("http://proxy/sr/").unwrap();
        assert_eq!(
            (e.authority.as_str(), e.port, e.prefix.as_str()),
            ("proxy", 80, "/sr")
        );
        let e = parse_url("http://[::1]:9000/a/b").unwrap();
        assert_eq!(
            (
                e.host.as_str(),
                e.authority.as_str(),
                e.port,
                e.prefix.as_str()
            ),
            ("::1", "[::1]:9000", 9000, "/a/b")
        );
        assert!(parse_url("https://registry").unwrap_err().contains("https"));
        assert!(parse_url("registry:8081").is_err());
        assert!(parse_url("http://registry:80x1")
            .unwrap_err()
            .contains("port"));
        assert!(parse_url("http://:8081").is_err());
        assert!(matches!(
            SchemaRegistry::new("ftp://x"),
            Err(ConfluentError::BadRegistryUrl { .. })
        ));
    }

    #[test]
    fn responses_parse_in_every_framing() {
        let read = |raw: &[u8]| read_response(&mut &raw[..]);
        assert_eq!(
            read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}ignored").unwrap(),
            (200, b"{}".to_vec())
        );
        assert_eq!(
            read(b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap(),
            (404, b"nope".to_vec())
        );
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(read(chunked).unwrap(), (200, b"abc0123456789".to_vec()));
        assert!(read(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").is_err());
        assert!(read(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n")
            .unwrap_err()
            .to_string()
            .contains("larger"));
        assert!(read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err());
    }

    #[test]
    fn subjects_are_escaped() {
        assert_eq!(percent_encode("downloads-value"), "downloads-value");
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

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
        send::<ConfluentEncoder>();
    }
}
