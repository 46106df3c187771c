//! The errors of the crate: settings that cannot run, and a run that could not start or did not
//! finish. [`crate::config::Config::validate`] and [`crate::driver::execute`] return them.

/// Why a dataflow could not be set up or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A setting is out of range. `field` is its path in [`crate::config::Config`] (for example
    /// `"window_ms"` or `"rules.cdn_share"`); the message is `reason` alone, worded for any front end.
    #[error("{reason}")]
    InvalidConfig {
        field: &'static str,
        reason: &'static str,
    },
    /// timely could not start its workers (for a cluster: could not connect the processes).
    #[error("timely failed to start: {0}")]
    Start(String),
    /// A worker panicked, so the run ended before its input did.
    #[error("a dataflow worker panicked")]
    WorkerPanicked,
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: &'static str) -> Error {
        Error::InvalidConfig { field, reason }
    }
}
