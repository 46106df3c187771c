//! Every line of SQL the product runs, in one place.
//!
//! ```text
//!   connect ── Database (URL, schema, TLS, timeouts), Session (a deadline on every call)
//!   migrate ── sql/NNN_*.sql, applied once each per schema
//!   tables ─── StatTable: which table holds each collection, its key columns, Key <-> row
//!   resume ─── what an earlier run stored: offsets and the windows still in retention
//!   sink ───── one sink transaction: rows, progress, is_final, revisions, refused rows
//!   acks ───── the acknowledgement endpoint's statements (async driver)
//!   episodes ─ alert episodes and the notification outbox, in the sink's transaction; listing and
//!              acknowledging them (async)
//!   outbox ─── the notifier's reads and writes of the outbox (async)
//! ```

pub mod acks;
pub mod connect;
pub mod episodes;
pub mod migrate;
pub mod outbox;
pub mod resume;
pub mod sink;
pub mod tables;

pub use connect::{redact, Database, Session};
pub use migrate::migrate;
pub use resume::load_resume;
pub use tables::StatTable;
