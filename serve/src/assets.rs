//! The dashboard's files, compiled into the binary (placeholder until the dashboard lands).

/// The content type and bytes of the embedded file at `path`, if there is one.
pub fn get(path: &str) -> Option<(&'static str, &'static [u8])> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", b"<!doctype html><title>StreamPulse</title><p>Dashboard not built yet.</p>")),
        _ => None,
    }
}
