//! Query-string parameters: percent-decoded, the last of a repeated name wins, and every typed
//! getter checks bounds, so a handler never sees a value it did not declare.

use super::ApiError;

/// Longest query string accepted.
pub const MAX_QUERY: usize = 2048;

/// Query-string parameters, percent-decoded.
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: &str) -> Result<Query, ApiError> {
        if query.len() > MAX_QUERY {
            return Err(ApiError::bad_parameter(format!(
                "query string longer than {MAX_QUERY} bytes"
            )));
        }
        let mut pairs = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(name)?, decode(value)?));
        }
        Ok(Query(pairs))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// An integer parameter within `[lo, hi]`, or `default` when absent.
    pub fn int(&self, name: &str, default: i64, lo: i64, hi: i64) -> Result<i64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => match raw.trim().parse::<i64>() {
                Ok(v) if (lo..=hi).contains(&v) => Ok(v),
                _ => Err(ApiError::bad_parameter(format!(
                    "{name} must be an integer from {lo} to {hi}, got {raw:?}"
                ))),
            },
        }
    }

    pub fn boolean(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(raw) => Err(ApiError::bad_parameter(format!(
                "{name} must be true or false, got {raw:?}"
            ))),
        }
    }

    /// The parameters in `names`, in that order, as one string: equal keys mean equal answers.
    pub fn normalised(&self, names: &[&str]) -> String {
        let mut key = String::new();
        for name in names {
            key.push_str(name);
            key.push('=');
            key.push_str(self.get(name).unwrap_or("\u{0}"));
            key.push('&');
        }
        key
    }
}

/// Decodes a query-string component: `+` is a space, `%XX` a byte; a `%` not followed by two hex
/// digits is an error (percent-encoding alone would pass it through), and the result must be UTF-8.
fn decode(raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let malformed = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !bytes
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(ApiError::bad_parameter(format!(
            "bad percent-encoding in {raw:?}"
        )));
    }
    percent_encoding::percent_decode_str(&raw.replace('+', " "))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_parameter("parameters must be UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_bounds() {
        let q = Query::parse("minutes=7&limit=abc&x=%41+b").unwrap();
        assert_eq!(q.int("minutes", 5, 1, 60).unwrap(), 7);
        assert!(q
            .int("limit", 5, 1, 20)
            .unwrap_err()
            .detail
            .contains("limit"));
        assert_eq!(q.get("x"), Some("A b"));
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("minutes=61")
            .unwrap()
            .int("minutes", 5, 1, 60)
            .is_err());
    }

    #[test]
    fn normalised_ignores_order_and_unknown_names() {
        let a = Query::parse("limit=3&minutes=5&junk=1").unwrap();
        let b = Query::parse("minutes=5&limit=3").unwrap();
        let names = ["minutes", "limit"];
        assert_eq!(a.normalised(&names), b.normalised(&names));
        let absent = Query::parse("minutes=5").unwrap();
        let empty = Query::parse("minutes=5&limit=").unwrap();
        assert_ne!(absent.normalised(&names), empty.normalised(&names));
    }
}
