//! CORS with an allow-list of origins (`--cors-origin`, default none).
//!
//! ```text
//!   Origin: https://ops.example.com ─▶ allowed? ─▶ Access-Control-Allow-Origin: https://ops.example.com
//!   OPTIONS + Access-Control-Request-Method ─▶ 204, allowed methods and headers (when the origin is allowed)
//! ```
//!
//! Every response carries `Vary: Origin`, because whether the allow header is present depends on
//! the request's origin and shared caches must not mix the two. No cookies are used, so
//! `Access-Control-Allow-Credentials` is never sent; the ack token travels in `Authorization`.

use hyper::body::Bytes;
use hyper::header::{
    HeaderMap, HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ALLOW,
    VARY,
};
use hyper::StatusCode;

use super::{reply, Reply};

pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

impl Cors {
    /// `*` allows every origin; other entries are compared exactly (a trailing `/` is ignored).
    pub fn new(origins: &[String]) -> Cors {
        let origins: Vec<String> = origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_string())
            .filter(|o| !o.is_empty())
            .collect();
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins,
        }
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o == origin)
    }

    /// Adds `Vary` and, for an allowed origin, the allow headers to any response.
    pub fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        headers.append(VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = origin.filter(|o| o.to_str().is_ok_and(|o| self.allows(o))) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static("X-Response-Time"),
            );
        }
    }

    /// The answer to `OPTIONS` on a route that answers `methods`: a preflight gets the methods and
    /// headers it may use only when its origin is allowed (the browser then refuses the request).
    pub fn preflight(&self, origin: Option<&HeaderValue>, methods: &'static str) -> Reply {
        let mut response = reply(StatusCode::NO_CONTENT, None, Bytes::new());
        let headers = response.headers_mut();
        headers.insert(ALLOW, HeaderValue::from_static(methods));
        let allowed = origin
            .and_then(|o| o.to_str().ok())
            .is_some_and(|o| self.allows(o));
        if allowed {
            headers.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(methods),
            );
            headers.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Authorization, Content-Type"),
            );
            headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_origins_are_echoed() {
        let cors = Cors::new(&["https://a.example/".into(), " ".into()]);
        let mut headers = HeaderMap::new();
        cors.decorate(
            Some(&HeaderValue::from_static("https://a.example")),
            &mut headers,
        );
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(headers[VARY], "Origin");

        let mut headers = HeaderMap::new();
        cors.decorate(
            Some(&HeaderValue::from_static("https://b.example")),
            &mut headers,
        );
        assert!(headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert_eq!(headers[VARY], "Origin");
    }

    #[test]
    fn none_by_default_and_star_allows_all() {
        let origin = HeaderValue::from_static("https://x.example");
        assert!(!Cors::new(&[]).allows("https://x.example"));
        let mut headers = HeaderMap::new();
        Cors::new(&["*".into()]).decorate(Some(&origin), &mut headers);
        assert_eq!(headers[ACCESS_CONTROL_ALLOW_ORIGIN], "https://x.example");
    }
}
