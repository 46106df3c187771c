//! What a destination receives: the outbox payload (StreamPulse's own JSON, stored without
//! secrets) rendered in the destination's [`Format`] at send time, with its secrets added.
//!
//! ```text
//!   outbox payload { idempotency_key, transition, occurred_at, episode {…} }
//!     ├─ webhook   ─▶ the payload as it is + header Idempotency-Key
//!     ├─ pagerduty ─▶ Events v2: event_action trigger | acknowledge | resolve, dedup_key per episode
//!     └─ slack     ─▶ { "text": one line }
//! ```

use serde_json::{json, Value};

use super::config::{Destination, Format};

/// A request body and the headers it needs beside the destination's own.
pub struct Rendered {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// PagerDuty's incident key for an episode: trigger, acknowledge and resolve must share it.
pub fn dedup_key(episode_id: i64) -> String {
    format!("streampulse-episode-{episode_id}")
}

/// Renders `payload` (an outbox row's) for `destination`.
pub fn render(destination: &Destination, payload: &Value) -> Rendered {
    let key = payload["idempotency_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let body = match destination.format {
        Format::Webhook => payload.clone(),
        Format::Pagerduty => pagerduty(destination, payload),
        Format::Slack => json!({ "text": slack_text(payload) }),
    };
    Rendered {
        body: serde_json::to_vec(&body).expect("JSON values serialise"),
        headers: vec![("idempotency-key", key)],
    }
}

fn pagerduty(destination: &Destination, payload: &Value) -> Value {
    let episode = &payload["episode"];
    let action = match payload["transition"].as_str() {
        Some("acknowledged") => "acknowledge",
        Some("resolved") => "resolve",
        _ => "trigger",
    };
    let mut event = json!({
        "routing_key": destination.routing_key.clone().unwrap_or_default(),
        "event_action": action,
        "dedup_key": dedup_key(episode["id"].as_i64().unwrap_or_default()),
    });
    if action == "trigger" {
        let summary: String = summary(payload).chars().take(1024).collect();
        let severity = match episode["severity"].as_str() {
            Some("CRITICAL") => "critical",
            Some("WARNING") => "warning",
            _ => "info",
        };
        event["payload"] = json!({
            "summary": summary,
            "source": "streampulse",
            "severity": severity,
            "timestamp": episode["first_window"],
            "component": episode["region"],
            "group": episode["alert_type"],
            "class": episode["metric_name"],
            "custom_details": episode,
        });
    }
    event
}

/// One line a person reads: what happened, where, since when, how bad.
fn summary(payload: &Value) -> String {
    let e = &payload["episode"];
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    format!(
        "{} {} in {}: {} ({} window{} from {}, peak {} {:.4}, threshold {:.4})",
        text(&e["severity"]),
        text(&e["alert_type"]),
        text(&e["region"]),
        text(&e["message"]),
        e["windows"].as_i64().unwrap_or(0),
        if e["windows"].as_i64() == Some(1) {
            ""
        } else {
            "s"
        },
        text(&e["first_window"]),
        text(&e["metric_name"]),
        e["peak_value"].as_f64().unwrap_or(f64::NAN),
        e["threshold_value"].as_f64().unwrap_or(f64::NAN),
    )
}

fn slack_text(payload: &Value) -> String {
    let transition = payload["transition"].as_str().unwrap_or("?").to_uppercase();
    let mut text = format!("[{transition}] {}", summary(payload));
    if let Some(by) = payload["episode"]["acknowledged_by"].as_str() {
        text.push_str(&format!(" — acknowledged by {by}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::config::{Route, Transition};

    fn destination(format: Format) -> Destination {
        Destination {
            route: Route {
                name: "d".into(),
                min_severity: "WARNING".into(),
                transitions: Transition::ALL.to_vec(),
                provisional: false,
            },
            format,
            url: "http://127.0.0.1:1/".into(),
            headers: vec![],
            routing_key: Some("R0UTING".into()),
        }
    }

    fn payload(transition: &str) -> Value {
        json!({
            "idempotency_key": format!("streampulse-episode-7-{transition}"),
            "transition": transition,
            "episode": {"id": 7, "alert_type": "CDN_FAILURE", "region": "eu-west", "severity": "CRITICAL",
                        "message": "CDN timeouts in eu-west are 9.0% of downloads", "windows": 3,
                        "first_window": "2026-12-02T10:03:00Z", "metric_name": "cdn_timeout_rate",
                        "peak_value": 0.09, "threshold_value": 0.05, "acknowledged_by": null}
        })
    }

    #[test]
    fn pagerduty_events_share_a_dedup_key() {
        let d = destination(Format::Pagerduty);
        let trigger: Value = serde_json::from_slice(&render(&d, &payload("opened")).body).unwrap();
        assert_eq!(trigger["event_action"], "trigger");
        assert_eq!(trigger["routing_key"], "R0UTING");
        assert_eq!(trigger["dedup_key"], "streampulse-episode-7");
        assert_eq!(trigger["payload"]["severity"], "critical");
        assert_eq!(trigger["payload"]["source"], "streampulse");
        assert!(trigger["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("CDN_FAILURE in eu-west"));
        let resolve: Value =
            serde_json::from_slice(&render(&d, &payload("resolved")).body).unwrap();
        assert_eq!(resolve["event_action"], "resolve");
        assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
        assert!(resolve.get("payload").is_none());
        let ack: Value =
            serde_json::from_slice(&render(&d, &payload("acknowledged")).body).unwrap();
        assert_eq!(ack["event_action"], "acknowledge");
    }

    #[test]
    fn webhook_and_slack() {
        let p = payload("opened");
        let r = render(&destination(Format::Webhook), &p);
        assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), p);
        assert_eq!(
            r.headers,
            vec![(
                "idempotency-key",
                "streampulse-episode-7-opened".to_string()
            )]
        );
        let s: Value =
            serde_json::from_slice(&render(&destination(Format::Slack), &p).body).unwrap();
        let text = s["text"].as_str().unwrap();
        assert!(
            text.starts_with("[OPENED] CRITICAL CDN_FAILURE in eu-west"),
            "{text}"
        );
        // The routing key is a PagerDuty secret; no other format carries it.
        assert!(!String::from_utf8_lossy(&r.body).contains("R0UTING"));
    }
}
