//! A tiny HTTP/1.1 client over a plain `TcpStream`, for the API of a `streampulse` process or of a
//! server run in the test's own process: one request per connection (`Connection: close`, so a
//! body ends at EOF), the answer's status, headers and body, checked for a `Content-Length` that
//! matches. Failures are `Err` (a server that is away is a normal state in the fault tests); the API
//! tests unwrap them.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// An answer: the status, the headers (names in lower case) and the body (de-chunked).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts a JSON error with this status and code: exactly `{"error": code, "detail": text}`.
    pub fn assert_error(&self, status: u16, code: &str) -> &Reply {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert_eq!(body["error"], code, "{body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{body}"
        );
        let keys: BTreeSet<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(keys, BTreeSet::from(["error", "detail"]));
        self
    }
}

/// One request on a fresh connection: connect within 5 s, the whole answer within 30 s. A POST
/// (or any request with a body) without `Content-Length` or `Transfer-Encoding` among `headers`
/// gets a `Content-Length`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    exchange(
        addr,
        method,
        path,
        headers,
        body,
        (Duration::from_secs(5), Duration::from_secs(30)),
    )
}

/// One `GET`: status and body. Connect within 2 s, the whole answer within 5 s (for polling a
/// server that may be in trouble).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let reply = exchange(
        addr,
        "GET",
        path,
        &[],
        b"",
        (Duration::from_secs(2), Duration::from_secs(5)),
    )?;
    Ok((reply.status, reply.text()))
}

/// `GET path` as JSON, whatever the status code; `None` while it does not answer with JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Option<Value> {
    let (_, body) = http_get(addr, path).ok()?;
    serde_json::from_str(&body).ok()
}

/// `GET /health` parsed as JSON, whatever the status code (a degraded answer may be a 503).
pub fn health(addr: SocketAddr) -> Result<Value, String> {
    let (status, body) = http_get(addr, "/health")?;
    serde_json::from_str(&body).map_err(|e| format!("/health {status} is not JSON ({e}): {body}"))
}

fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    (connect, io): (Duration, Duration),
) -> Result<Reply, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, connect).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(io))
        .and_then(|_| stream.set_write_timeout(Some(io)))
        .map_err(|e| e.to_string())?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let framed = headers.iter().any(|(n, _)| {
        n.eq_ignore_ascii_case("transfer-encoding") || n.eq_ignore_ascii_case("content-length")
    });
    if !framed && (method == "POST" || !body.is_empty()) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body))
        .map_err(|e| format!("send {method} {path}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read the answer to {method} {path}: {e}"))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {path}: no complete response head"))?;
    let head = std::str::from_utf8(&raw[..split])
        .map_err(|_| format!("{method} {path}: a head that is not ASCII"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {status_line}"))?;
    let headers = lines
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .ok_or_else(|| format!("bad header line: {l}"))?;
            Ok((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let mut reply = Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(&reply.body);
    } else if let Some(length) = reply.header("content-length").filter(|_| method != "HEAD") {
        if length.parse::<usize>().ok() != Some(reply.body.len()) {
            return Err(format!(
                "{method} {path}: Content-Length {length} but a body of {} bytes",
                reply.body.len()
            ));
        }
    }
    Ok(reply)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || body.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[(end + 4 + size).min(body.len())..];
    }
    out
}
