//! `streampulse bench http-ceiling`: the HTTP server of [`crate::http`], with its connection policy
//! and on a runtime shaped as `run`'s, answering every request with one fixed JSON body. It is
//! the ceiling the API is measured against under load (`benches/api-load.sh`): whatever hyper, the
//! policy and the machine allow when the handler does no work, so that the ratio of an endpoint's
//! requests/s to this server's isolates the API's own cost (routing, the view, the response
//! cache, headers, metrics). Serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use hyper::body::Bytes;
use hyper::StatusCode;

use crate::http::{ConnectionStats, Handler, Limits};

/// The smallest body [`fixed_body`] makes: `{"data":""}`.
pub const MIN_BODY: usize = 11;

/// A JSON object of exactly `bytes` bytes (at least [`MIN_BODY`]): `{"data":"xxx…"}`.
pub fn fixed_body(bytes: usize) -> Bytes {
    let pad = bytes.saturating_sub(MIN_BODY);
    let mut body = String::with_capacity(MIN_BODY + pad);
    body.push_str("{\"data\":\"");
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str("\"}");
    Bytes::from(body)
}

/// A handler that answers every request, whatever its method or path, with `body`.
pub fn handler(body: Bytes) -> Handler {
    Arc::new(move |_req| {
        let body = body.clone();
        Box::pin(async move { crate::api::reply(StatusCode::OK, Some("application/json"), body) })
    })
}

pub fn run(http: SocketAddr, body_bytes: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        body_bytes >= MIN_BODY,
        "--body-bytes must be at least {MIN_BODY}"
    );
    let body = fixed_body(body_bytes);
    let runtime = crate::commands::run::http_runtime()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(http)
            .await
            .with_context(|| format!("binding {http}"))?;
        log::info!(
            "fixed {body_bytes}-byte body on http://{} until SIGINT or SIGTERM",
            listener.local_addr()?
        );
        crate::http::serve(
            listener,
            Limits::default(),
            Arc::new(ConnectionStats::default()),
            handler(body),
            crate::commands::run::signal(),
        )
        .await;
        anyhow::Ok(())
    })?;
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn bodies_are_json_of_the_size_asked() {
        for n in [MIN_BODY, MIN_BODY + 1, 2048, 12_345] {
            let body = fixed_body(n);
            assert_eq!(body.len(), n);
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["data"].as_str().unwrap().len(), n - MIN_BODY);
        }
    }

    #[test]
    fn answers_any_request_with_the_body() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = runtime.spawn(crate::http::serve(
            listener,
            Limits::default(),
            Arc::default(),
            handler(fixed_body(100)),
            async move {
                let _ = stopped.await;
            },
        ));
        let mut conn = std::net::TcpStream::connect(addr).unwrap();
        conn.write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("content-type: application/json\r\n"));
        assert!(response.contains("content-length: 100\r\n"));
        assert!(response.ends_with("xx\"}"));
        let _ = stop.send(());
        runtime.block_on(server).unwrap();
    }
}
