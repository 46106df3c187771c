//! The Confluent Schema Registry client: [`SchemaRegistry`] and its own error, [`RegistryError`].
//!
//! Two calls: `GET /schemas/ids/{id}` (a writer schema, for the decoder) and
//! `POST /subjects/{subject}/versions` (registration, for `streampulse generate`). It speaks
//! HTTP/1.1 through hyper's client, over TLS for `https://` URLs, with HTTP basic auth from the URL's
//! userinfo (`https://key:secret@host/`) or [`SchemaRegistry::with_basic_auth`]. Each request has its
//! own connection (`Connection: close`, nothing pooled): requests are rare (one per schema id for the
//! life of a decoder, two per `generate`), and a pool would hold sockets nobody drives.
//!
//! **Blocking API on a private runtime.** Its callers are synchronous: the Kafka source's poll loop
//! on a timely worker thread, and `generate`. So each client (and its clones, sharing it) owns a
//! small current-thread tokio runtime and every call `block_on`s it: no thread of its own, no
//! dependence on an ambient runtime, and the caller's thread does the I/O while it waits anyway.
//! Several threads may call at once (tokio lets them take turns driving the runtime). Do not call it
//! from async code: wrap the call in `spawn_blocking` there.
//!
//! **TLS.** `https://` goes through OpenSSL (hyper-openssl), the library postgres-openssl and
//! librdkafka already link. The server's certificate is always verified, against the system trust
//! store (OpenSSL's default paths, which honour `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus, for a
//! private CA or a self-signed registry, the PEM file given to [`SchemaRegistry::with_ca_file`]
//! (meant to be the binary's `--registry-ca FILE`, env `STREAMPULSE_REGISTRY_CA`; not wired yet).
//! There is no way to turn verification off.
//!
//! **Secrets.** Credentials go into the `Authorization` header (marked sensitive) and nowhere else:
//! [`SchemaRegistry::url`], its `Debug` and every [`RegistryError`] show the URL without userinfo
//! (`BadUrl` masks it as `***@`), and text quoted from a response has the secrets masked.
//!
//! Failures: a 404 for an id is permanent ([`RegistryError::UnknownSchemaId`]); an unreachable,
//! slow, failing (5xx, 401, …) or garbled registry is [`RegistryError::Unavailable`], which is
//! retryable and says nothing about the record being decoded.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_openssl::client::legacy::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use openssl::ssl::{SslConnector, SslMethod};
use openssl::x509::X509;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use thiserror::Error;

/// Default timeout for each step of a registry request; see [`SchemaRegistry::with_timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// A registry response body larger than this is refused: a schema is a few KiB.
pub const MAX_RESPONSE: usize = 1 << 20;

const REGISTRY_JSON: &str = "application/vnd.schemaregistry.v1+json";
/// Everything but RFC 3986's unreserved characters is escaped in a subject path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Secrets shorter than this are not masked in quoted response text: masking "ab" would garble the
/// text and hide nothing (credentials are never put there by this client in the first place).
const MIN_MASKED: usize = 4;

/// Why the registry could not be used. URLs in the text never carry credentials.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum RegistryError {
    /// The URL given to [`SchemaRegistry::new`] is unusable (credentials masked as `***@`).
    #[error("invalid schema registry URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The CA file given to [`SchemaRegistry::with_ca_file`] could not be used.
    #[error("schema registry CA file {path}: {reason}")]
    BadCaFile { path: String, reason: String },
    /// The client could not be set up (no runtime, no TLS context).
    #[error("schema registry client setup failed: {0}")]
    Setup(String),
    /// `GET /schemas/ids/{id}` answered 404.
    #[error("schema id {0} is unknown to the schema registry (404)")]
    UnknownSchemaId(u32),
    /// The registry could not be reached or gave an unusable answer (timeout, refused connection,
    /// TLS failure, 5xx, 401, malformed response). Retryable.
    #[error("schema registry {url} unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// A registration was refused (4xx other than 404, 408 and 429 on `POST /subjects/...`).
    #[error("schema registry {url} refused the request: HTTP {status}: {body}")]
    Rejected {
        url: String,
        status: u16,
        body: String,
    },
}

impl RegistryError {
    /// True when asking again later may succeed: the registry is down, slow or failing, not
    /// saying no.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A schema as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedSchema {
    /// `AVRO`, `PROTOBUF` or `JSON`; registries leave it out for Avro.
    pub schema_type: String,
    /// The schema text.
    pub schema: String,
}

/// A Confluent Schema Registry client. Cheap to clone: clones share the connection settings and
/// the private runtime.
#[derive(Clone)]
pub struct SchemaRegistry {
    /// `scheme://host[:port][/prefix]`: no credentials, no trailing slash.
    url: String,
    auth: Option<Arc<BasicAuth>>,
    ca_file: Option<PathBuf>,
    timeout: Duration,
    /// Boxed in an `Arc` because hyper's client is large and the registry travels in configs.
    client: Arc<HttpClient>,
    runtime: Arc<PrivateRuntime>,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

impl fmt::Debug for SchemaRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchemaRegistry")
            .field("url", &self.url)
            .field("basic_auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl SchemaRegistry {
    /// `url` is the registry's base: `http://localhost:8081`, `http://proxy:80/registry`,
    /// `https://key:secret@registry.example.com` (userinfo percent-encoded if it holds `:`, `@`,
    /// `/`…). Verifies TLS against the system trust store; see [`SchemaRegistry::with_ca_file`].
    pub fn new(url: &str) -> Result<SchemaRegistry, RegistryError> {
        let location = parse_url(url).map_err(|reason| RegistryError::BadUrl {
            url: mask_userinfo(url),
            reason,
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("schema-registry")
            .build()
            .map_err(|e| RegistryError::Setup(format!("tokio runtime: {e}")))?;
        let registry = SchemaRegistry {
            url: location.base,
            auth: None,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            client: Arc::new(client(None)?),
            runtime: Arc::new(PrivateRuntime(Some(runtime))),
        };
        Ok(match location.credentials {
            Some((user, password)) => registry.with_basic_auth(&user, &password),
            None => registry,
        })
    }

    /// Bounds each step of a request by `timeout`: connecting, the TLS handshake, sending and
    /// receiving the response head together; then each piece of the body.
    pub fn with_timeout(mut self, timeout: Duration) -> SchemaRegistry {
        self.timeout = timeout;
        self
    }

    /// Sends HTTP basic auth with every request, replacing credentials from the URL. (Over plain
    /// `http://` they travel in clear text: a warning is logged.)
    pub fn with_basic_auth(mut self, user: &str, password: &str) -> SchemaRegistry {
        if self.url.starts_with("http://") {
            log::warn!(
                "schema registry {}: basic auth credentials will be sent unencrypted (http://)",
                self.url
            );
        }
        self.auth = Some(Arc::new(BasicAuth::new(user, password)));
        self
    }

    /// Also trusts the PEM certificate(s) in `path` (a private CA, or a self-signed registry's own
    /// certificate) when verifying an `https://` registry, beside the system trust store.
    /// Meant to be the binary's `--registry-ca FILE` (env `STREAMPULSE_REGISTRY_CA`).
    pub fn with_ca_file(mut self, path: impl AsRef<Path>) -> Result<SchemaRegistry, RegistryError> {
        let path = path.as_ref();
        self.client = Arc::new(client(Some(path))?);
        self.ca_file = Some(path.to_path_buf());
        Ok(self)
    }

    /// The registry's base URL, without credentials.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema registered under `id` (`GET /schemas/ids/{id}`).
    pub fn fetch_schema(&self, id: u32) -> Result<FetchedSchema, RegistryError> {
        let path = format!("/schemas/ids/{id}");
        let (status, body) = self.request(Method::GET, &path, None)?;
        match status {
            200 => {}
            404 => return Err(RegistryError::UnknownSchemaId(id)),
            _ => return Err(self.unavailable(&path, self.status_reason(status, &body))),
        }
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(&path, format!("response is not JSON: {e}")))?;
        let Some(schema) = json.get("schema").and_then(|s| s.as_str()) else {
            return Err(self.unavailable(&path, "response has no \"schema\" string".into()));
        };
        let schema_type = json.get("schemaType").and_then(|t| t.as_str());
        Ok(FetchedSchema {
            schema_type: schema_type.unwrap_or("AVRO").to_string(),
            schema: schema.to_string(),
        })
    }

    /// Registers the Avro `schema` under `subject` (`POST /subjects/{subject}/versions`) and returns
    /// its id. Registering a schema that is already there is harmless: the registry returns the
    /// existing id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let path = format!(
            "/subjects/{}/versions",
            utf8_percent_encode(subject, SEGMENT)
        );
        let body = serde_json::json!({ "schema": schema }).to_string();
        let (status, response) = self.request(Method::POST, &path, Some(body))?;
        match status {
            200..=299 => {}
            400..=499 if status != 404 && status != 408 && status != 429 => {
                return Err(RegistryError::Rejected {
                    url: format!("{}{path}", self.url),
                    status,
                    body: self.snippet(&response),
                })
            }
            _ => return Err(self.unavailable(&path, self.status_reason(status, &response))),
        }
        let json: serde_json::Value = serde_json::from_slice(&response)
            .map_err(|e| self.unavailable(&path, format!("response is not JSON: {e}")))?;
        json.get("id")
            .and_then(|id| id.as_u64())
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| {
                let reason = format!("no schema id in {}", self.snippet(&response));
                self.unavailable(&path, reason)
            })
    }

    /// One request on a fresh connection, run to completion on the private runtime; returns the
    /// status and body. Every failure is the registry's (or the network's), hence `Unavailable`.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Vec<u8>), RegistryError> {
        let uri: Uri = format!("{}{path}", self.url)
            .parse()
            .map_err(|e| self.unavailable(path, format!("bad request URI: {e}")))?;
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(
                ACCEPT,
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .header(CONNECTION, "close");
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.header.clone());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, REGISTRY_JSON);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.unavailable(path, format!("bad request: {e}")))?;
        let exchange = exchange(&self.client, request, self.timeout);
        self.runtime
            .get()
            .block_on(exchange)
            .map_err(|reason| self.unavailable(path, reason))
    }

    fn unavailable(&self, path: &str, reason: String) -> RegistryError {
        RegistryError::Unavailable {
            url: format!("{}{path}", self.url),
            reason: self.mask(reason),
        }
    }

    /// What an unexpected status says, for `Unavailable`.
    fn status_reason(&self, status: u16, body: &[u8]) -> String {
        let hint = match status {
            401 | 403 => " (check the registry credentials)",
            _ => "",
        };
        format!("HTTP {status}{hint}: {}", self.snippet(body))
    }

    /// The start of a response body, secrets masked, for error messages.
    fn snippet(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let text = match text.char_indices().nth(200) {
            Some((i, _)) => format!("{}…", &text[..i]),
            None => text.to_string(),
        };
        self.mask(text)
    }

    /// Masks the credentials in text that came from elsewhere (a response, an error from below),
    /// in case it echoes them.
    fn mask(&self, mut text: String) -> String {
        if let Some(auth) = &self.auth {
            for secret in auth.secrets.iter().filter(|s| s.len() >= MIN_MASKED) {
                if text.contains(secret.as_str()) {
                    text = text.replace(secret.as_str(), "***");
                }
            }
        }
        text
    }
}

/// Sends `request` and reads the whole response, each step bounded by `timeout`.
async fn exchange(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), String> {
    let late = || format!("no answer within {timeout:?}");
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| late())?
        .map_err(|e| describe(&e))?;
    let status = response.status().as_u16();
    let too_large = || format!("response larger than {MAX_RESPONSE} bytes");
    if response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_RESPONSE as u64)
    {
        return Err(too_large());
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = tokio::time::timeout(timeout, body.frame())
        .await
        .map_err(|_| late())?
    {
        let frame = frame.map_err(|e| describe(&e))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_RESPONSE {
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok((status, bytes))
}

/// An error and its causes in one line ("client error (Connect): tcp connect error: Connection
/// refused"), skipping a cause whose text its parent already includes.
fn describe(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// The HTTP(S) client: hyper's, with OpenSSL for `https://`, verifying against the system trust
/// store plus the certificates in `ca_file`. No pool, no ALPN (HTTP/1.1 only).
fn client(ca_file: Option<&Path>) -> Result<HttpClient, RegistryError> {
    let setup = |e: openssl::error::ErrorStack| RegistryError::Setup(format!("TLS: {e}"));
    let mut ssl = SslConnector::builder(SslMethod::tls_client()).map_err(setup)?;
    if let Some(path) = ca_file {
        let bad = |reason: String| RegistryError::BadCaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = X509::stack_from_pem(&pem).map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in it".into()));
        }
        for cert in certs {
            ssl.cert_store_mut()
                .add_cert(cert)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    let mut http = HttpConnector::new();
    // `https://` URIs are the TLS layer's to handle, so the TCP layer must accept them.
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = HttpsConnector::with_connector(http, ssl).map_err(setup)?;
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build(https))
}

/// The client's current-thread runtime. Shut down without waiting when the last clone goes, so that
/// dropping a client is fine anywhere, even inside another runtime's async code (where dropping a
/// runtime normally panics).
struct PrivateRuntime(Option<tokio::runtime::Runtime>);

impl PrivateRuntime {
    fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("only taken on drop")
    }
}

impl Drop for PrivateRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// HTTP basic auth: the header, ready to send, and what to mask in quoted text.
struct BasicAuth {
    header: HeaderValue,
    secrets: Vec<String>,
}

impl BasicAuth {
    fn new(user: &str, password: &str) -> BasicAuth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut header =
            HeaderValue::from_str(&format!("Basic {token}")).expect("base64 is a valid header");
        header.set_sensitive(true);
        BasicAuth {
            header,
            secrets: vec![password.to_string(), token, user.to_string()],
        }
    }
}

/// A registry URL taken apart.
#[derive(Debug, PartialEq)]
struct Location {
    /// `scheme://host[:port][/prefix]`, without userinfo or a trailing slash.
    base: String,
    /// User and password from the userinfo, percent-decoded.
    credentials: Option<(String, String)>,
}

/// Parses `http[s]://[user[:password]@]host[:port][/prefix]`. The reasons it gives never quote the
/// authority, which may hold credentials.
fn parse_url(url: &str) -> Result<Location, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => ("http", rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => ("https", rest),
        _ => return Err("expected an http:// or https:// URL".into()),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if path.contains(['?', '#', '@']) {
        return Err(
            "'?', '#' or '@' after the host (percent-encode them in the user or password)".into(),
        );
    }
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, authority),
    };
    // "[::1]:8081" keeps its brackets in the URI but they do not count as a port separator.
    let (host, port) = if let Some(bracketed) = host_port.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or("unclosed '[' in host")?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("the port is not a number from 0 to 65535".into());
    }
    let credentials = match userinfo {
        None => None,
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |s: &str| {
                percent_decode_str(s)
                    .decode_utf8()
                    .map(|s| s.into_owned())
                    .map_err(|_| "the credentials are not UTF-8 once percent-decoded".to_string())
            };
            Some((decode(user)?, decode(password)?))
        }
    };
    let base = format!("{scheme}://{host_port}{}", path.trim_end_matches('/'));
    base.parse::<Uri>()
        .map_err(|e| format!("not a valid URI: {e}"))?;
    Ok(Location { base, credentials })
}

/// `url` with any userinfo replaced by `***`, for messages about a URL that did not parse. Masks up
/// to the last '@', to err on the side of hiding.
fn mask_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let base = |url: &str| parse_url(url).unwrap().base;
        assert_eq!(base("http://registry:8081"), "http://registry:8081");
        assert_eq!(base("http://proxy/sr/"), "http://proxy/sr");
        assert_eq!(base("HTTPS://[::1]:9000/a/b"), "https://[::1]:9000/a/b");
        assert_eq!(base("https://[::1]"), "https://[::1]");
        assert!(parse_url("registry:8081").is_err());
        assert!(parse_url("ftp://registry").is_err());
        assert!(parse_url("http://registry:80x1")
            .unwrap_err()
            .contains("port"));
        assert!(parse_url("http://:8081").is_err());
        assert!(parse_url("http://[::1:8081").is_err());
        assert!(parse_url("http://registry/x?y").is_err());
        assert!(matches!(
            SchemaRegistry::new("ftp://x"),
            Err(RegistryError::BadUrl { .. })
        ));
    }

    #[test]
    fn credentials_come_out_of_the_url() {
        let location = parse_url("https://key:s%40cr%3At@registry.example:443/sr/").unwrap();
        assert_eq!(location.base, "https://registry.example:443/sr");
        assert_eq!(
            location.credentials,
            Some(("key".to_string(), "s@cr:t".to_string()))
        );
        let location = parse_url("http://only-user@registry").unwrap();
        assert_eq!(
            location.credentials,
            Some(("only-user".to_string(), String::new()))
        );
        // An unencoded '@' in the password: the last one ends the userinfo.
        let location = parse_url("http://u:p@ss@registry").unwrap();
        assert_eq!(location.base, "http://registry");
        assert_eq!(location.credentials.unwrap().1, "p@ss");
    }

    #[test]
    fn bad_urls_do_not_show_their_credentials() {
        for url in [
            "https://key:hunter22@registry:80x1",
            "https://key:hunter22/x@registry",
            "htps://key:hunter22@registry",
            "https://key:hunter22@:8081",
        ] {
            let err = SchemaRegistry::new(url).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, RegistryError::BadUrl { .. }), "{url}: {err}");
            assert!(
                !text.contains("hunter22") && !text.contains("key:"),
                "{text}"
            );
            assert!(!format!("{err:?}").contains("hunter22"), "{err:?}");
        }
        assert_eq!(mask_userinfo("http://a:b@h/p"), "http://***@h/p");
        assert_eq!(mask_userinfo("a:b@h"), "***@h");
        assert_eq!(mask_userinfo("http://h/p"), "http://h/p");
    }

    #[test]
    fn debug_and_url_hide_credentials() {
        let registry = SchemaRegistry::new("https://key:hunter22@registry.example").unwrap();
        assert_eq!(registry.url(), "https://registry.example");
        let debug = format!("{registry:?}");
        assert!(
            !debug.contains("hunter22") && !debug.contains("key"),
            "{debug}"
        );
        let registry = registry.with_basic_auth("other-user", "other-secret");
        let debug = format!("{registry:?}");
        assert!(!debug.contains("other"), "{debug}");
        // Text quoted from a response is masked too.
        assert_eq!(
            registry.snippet(b"denied: other-user / other-secret"),
            "denied: *** / ***"
        );
    }

    #[test]
    fn subjects_are_escaped() {
        let encode = |s| utf8_percent_encode(s, SEGMENT).to_string();
        assert_eq!(encode("downloads-value"), "downloads-value");
        assert_eq!(encode("a/b c"), "a%2Fb%20c");
        assert_eq!(encode("x.y~z_1"), "x.y~z_1");
    }

    #[test]
    fn a_missing_ca_file_is_reported() {
        let registry = SchemaRegistry::new("https://registry").unwrap();
        let err = registry.with_ca_file("/nonexistent/ca.pem").unwrap_err();
        assert!(matches!(err, RegistryError::BadCaFile { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn dropping_a_client_inside_async_code_is_fine() {
        let registry = SchemaRegistry::new("http://registry").unwrap();
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        outer.block_on(async move { drop(registry) });
    }

    #[test]
    fn the_client_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<SchemaRegistry>();
    }
}
