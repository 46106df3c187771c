//! The `Event` type: one download attempt, exactly the fields of `schemas/event.avsc`.
//!
//! Struct and field names match the Avro record names so that apache-avro's serde path can read a
//! datum straight into these types without an intermediate `Value`.

use serde::{Deserialize, Serialize};

/// One content download attempt (`com.streampulse.events.ContentDownloadEvent`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename = "ContentDownloadEvent")]
pub struct Event {
    pub event_id: String,
    /// Milliseconds since the Unix epoch (Avro `timestamp-millis`).
    pub timestamp: i64,
    pub user_id: String,
    pub content: Content,
    pub download: Download,
    pub user_context: UserContext,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub content_id: String,
    pub title: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub category: String,
    pub size_mb: i32,
    pub price: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Download {
    /// `success`, `failed` or `cancelled`; see [`Event::outcome`].
    pub status: String,
    pub duration_seconds: i32,
    pub speed_mbps: f32,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserContext {
    pub region: String,
    pub city: String,
    pub device: String,
    pub os_version: String,
    pub connection_type: String,
}

/// The three outcomes a download can have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Success,
    Failed,
    Cancelled,
}

impl Outcome {
    pub fn parse(status: &str) -> Option<Outcome> {
        match status {
            "success" => Some(Outcome::Success),
            "failed" => Some(Outcome::Failed),
            "cancelled" => Some(Outcome::Cancelled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

impl Event {
    /// The download's outcome. Decoding rejects unknown statuses, so for a decoded or generated
    /// event this is never `None`.
    pub fn outcome(&self) -> Option<Outcome> {
        Outcome::parse(&self.download.status)
    }
}

/// A record that could not be decoded: where it was, why, and its bytes, kept for inspection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    pub partition: u32,
    pub offset: i64,
    pub reason: String,
    pub raw: Vec<u8>,
}

/// An event together with where it was read from. Lateness is judged per partition, in offset order.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub partition: u32,
    pub offset: i64,
    pub event: Event,
}
