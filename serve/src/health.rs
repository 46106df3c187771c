//! How the process's outside dependencies look from inside: one [`Link`] per dependency, set by
//! the component that talks to it (the sink for PostgreSQL, the lag probe for Kafka) and read by
//! `/health`, so the health endpoint reports what the pipeline itself sees.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// The state of one dependency as its user last saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not tried yet.
    Unknown,
    Ok,
    /// The last attempt failed; its user is retrying.
    Unreachable,
}

impl LinkState {
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Unknown => "connecting",
            LinkState::Ok => "ok",
            LinkState::Unreachable => "unreachable",
        }
    }
}

/// A dependency's last seen state and, while it is unreachable, why.
#[derive(Debug, Default)]
pub struct Link {
    state: AtomicU8,
    error: Mutex<Option<String>>,
}

impl Link {
    pub fn state(&self) -> LinkState {
        match self.state.load(Ordering::Relaxed) {
            1 => LinkState::Ok,
            2 => LinkState::Unreachable,
            _ => LinkState::Unknown,
        }
    }

    /// The last error, while unreachable.
    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("link lock").clone()
    }

    pub fn ok(&self) {
        self.state.store(1, Ordering::Relaxed);
        *self.error.lock().expect("link lock") = None;
    }

    pub fn failed(&self, error: String) {
        *self.error.lock().expect("link lock") = Some(error);
        self.state.store(2, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_reports_its_last_outcome() {
        let link = Link::default();
        assert_eq!(link.state(), LinkState::Unknown);
        link.failed("connection refused".into());
        assert_eq!(link.state().name(), "unreachable");
        assert_eq!(link.error().as_deref(), Some("connection refused"));
        link.ok();
        assert_eq!((link.state(), link.error()), (LinkState::Ok, None));
    }
}
