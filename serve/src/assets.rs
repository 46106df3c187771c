//! The dashboard's files, compiled into the binary.
//!
//! ```text
//!   serve/web (npm run build) ─▶ serve/web/dist ─▶ build.rs ─▶ FILES ─▶ get("/assets/index-3f2a.js")
//! ```
//!
//! `build.rs` embeds every file of `serve/web/dist`; when the bundle was not built, `/` is a page
//! that says how to build it. Vite puts a content hash in every name under `/assets/`, so those
//! responses may be cached for good; `index.html` names the current ones and must not be.

include!(concat!(env!("OUT_DIR"), "/dashboard.rs"));

/// The content type and bytes of the embedded file at `path`, if there is one.
pub fn get(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path == "/" { "/index.html" } else { path };
    let i = FILES.binary_search_by(|(p, _, _)| (*p).cmp(path)).ok()?;
    let (_, content_type, body) = FILES[i];
    Some((content_type, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_index() {
        let (content_type, body) = get("/").expect("there is always a page at /");
        assert_eq!(content_type, "text/html; charset=utf-8");
        assert_eq!(get("/index.html"), Some((content_type, body)));
        assert_eq!(get("/nope"), None);
        assert_eq!(get(""), None);
    }

    #[test]
    fn files_are_sorted_for_binary_search() {
        assert!(FILES.windows(2).all(|w| w[0].0 < w[1].0));
    }

    /// Whether the page is the real dashboard or the "not built" page, whatever it links to
    /// under `assets/` is embedded.
    #[test]
    fn index_links_resolve() {
        let (_, body) = get("/").expect("there is always a page at /");
        let html = std::str::from_utf8(body).expect("index.html is UTF-8");
        for (at, _) in html.match_indices("assets/") {
            let name: String = html[at..]
                .chars()
                .take_while(|c| !matches!(c, '"' | '\'' | ' ' | '>'))
                .collect();
            let (content_type, _) = get(&format!("/{name}"))
                .unwrap_or_else(|| panic!("index.html links to {name}, which is not embedded"));
            assert_ne!(content_type, "application/octet-stream", "{name}");
        }
    }
}
