//! `/openapi.json`: the OpenAPI 3.1 description of every endpoint, written by hand in
//! `openapi.json` beside this file and compiled in; `/docs` renders it.
//!
//! The document's `info.version` is set to the crate's version when it is first served. The tests
//! below check that it names every route; `serve/tests/api.rs` checks each parameter's bounds and
//! each response's fields against the running binary.

use std::sync::OnceLock;

use hyper::body::Bytes;
use serde_json::Value;

const DOCUMENT: &str = include_str!("openapi.json");

pub fn document() -> Bytes {
    static SERVED: OnceLock<Bytes> = OnceLock::new();
    SERVED
        .get_or_init(|| {
            let mut doc: Value =
                serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON (tested)");
            doc["info"]["version"] = Value::from(env!("CARGO_PKG_VERSION"));
            Bytes::from(serde_json::to_vec(&doc).expect("a Value always serialises"))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::stats::ENDPOINTS;

    #[test]
    fn describes_every_route() {
        let doc: Value = serde_json::from_slice(&document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let paths = doc["paths"].as_object().unwrap();
        let fixed = [
            "/health",
            "/metrics",
            "/openapi.json",
            "/docs",
            "/",
            "/api/alerts/{id}/ack",
            "/api/episodes",
            "/api/episodes/{id}/ack",
            "/api/stream",
        ];
        let routes: Vec<&str> = ENDPOINTS.iter().map(|(p, _, _)| *p).chain(fixed).collect();
        for route in &routes {
            assert!(paths.contains_key(*route), "{route} is not documented");
        }
        assert_eq!(paths.len(), routes.len(), "a documented path has no route");
    }

    #[test]
    fn every_reference_resolves() {
        let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        Value::String(s) if k == "$ref" => out.push(s.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
