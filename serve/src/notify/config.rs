//! Where notifications go: the destinations of `--notify-config` (a JSON file) and
//! `--notify-webhook`, read once at start-up.
//!
//! ```json
//! { "destinations": [
//!   { "name": "ops", "format": "webhook", "url": "https://hooks.example.com/streampulse",
//!     "headers": { "Authorization": "Bearer ${OPS_TOKEN}" }, "min_severity": "WARNING" },
//!   { "name": "pager", "format": "pagerduty", "routing_key": "${PD_ROUTING_KEY}",
//!     "min_severity": "CRITICAL", "events": ["opened", "acknowledged", "resolved"],
//!     "when": "final" },
//!   { "name": "chat", "format": "slack", "url": "${SLACK_WEBHOOK_URL}" } ] }
//! ```
//!
//! `${NAME}` in a URL, header value or routing key is replaced by the environment variable NAME, so
//! the file itself need hold no secret. URLs, header values and routing keys are secrets: they never
//! appear in logs, errors, `/health`, `/metrics` or the outbox (a destination is named by its
//! `name`, and shown at most as its URL's scheme and host). The sink sees only each destination's
//! [`Route`] (name, severity filter, transitions), never its secrets.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// The payload format a destination receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// StreamPulse's own JSON (the outbox payload as it is), with an `Idempotency-Key` header.
    Webhook,
    /// PagerDuty Events API v2: trigger, acknowledge, resolve under one `dedup_key` per episode.
    Pagerduty,
    /// A Slack-compatible incoming webhook message (`{"text": …}`).
    Slack,
}

/// An episode transition a destination can be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transition {
    Opened,
    Acknowledged,
    Resolved,
}

impl Transition {
    pub const ALL: [Transition; 3] = [
        Transition::Opened,
        Transition::Acknowledged,
        Transition::Resolved,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transition::Opened => "opened",
            Transition::Acknowledged => "acknowledged",
            Transition::Resolved => "resolved",
        }
    }
}

/// What the sink needs to know of a destination to fill the outbox: no secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    /// `CRITICAL`: only critical episodes; `WARNING`: every episode.
    pub min_severity: String,
    pub transitions: Vec<Transition>,
    /// Whether "opened" goes out as soon as an episode appears (`"when": "provisional"`), rather
    /// than once its first window is final (the default: an alert of an open window can still
    /// vanish as more events arrive, and then nobody should have been paged).
    pub provisional: bool,
}

impl Route {
    /// Whether an episode of `severity` is for this destination.
    pub fn wants(&self, severity: &str) -> bool {
        self.min_severity != "CRITICAL" || severity == "CRITICAL"
    }

    pub fn subscribes(&self, transition: Transition) -> bool {
        self.transitions.contains(&transition)
    }
}

/// A configured destination, secrets included.
#[derive(Clone)]
pub struct Destination {
    pub route: Route,
    pub format: Format,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub routing_key: Option<String>,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Destination({} {:?} {})",
            self.route.name,
            self.format,
            shown_url(&self.url)
        )
    }
}

/// The PagerDuty Events v2 endpoint, when a pagerduty destination names no `url`.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    destinations: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    format: Format,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    routing_key: Option<String>,
    min_severity: Option<String>,
    events: Option<Vec<Transition>>,
    when: Option<When>,
}

/// When a destination is told an episode opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum When {
    Final,
    Provisional,
}

/// Reads `--notify-config` (if given) and adds `--notify-webhook` (if given) as the destination
/// `webhook`. `env` looks up `${NAME}` references (the process environment in production).
pub fn load(
    path: Option<&Path>,
    webhook: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<Vec<Destination>> {
    let mut entries = Vec::new();
    if let Some(path) = path {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the notification config {}", path.display()))?;
        let file: File = serde_json::from_str(&text)
            .with_context(|| format!("parsing the notification config {}", path.display()))?;
        entries.extend(file.destinations);
    }
    if let Some(url) = webhook {
        entries.push(Entry {
            name: "webhook".into(),
            format: Format::Webhook,
            url: Some(url.into()),
            headers: BTreeMap::new(),
            routing_key: None,
            min_severity: None,
            events: None,
            when: None,
        });
    }
    let mut destinations: Vec<Destination> = Vec::new();
    for entry in entries {
        let name = entry.name;
        anyhow::ensure!(
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "notification destination name {name:?} must be 1 to 64 of [A-Za-z0-9._-]"
        );
        anyhow::ensure!(
            destinations.iter().all(|d| d.route.name != name),
            "two notification destinations are named {name:?}"
        );
        let expand = |what: &str, value: &str| {
            expand(value, env).with_context(|| format!("destination {name:?}: {what}"))
        };
        let url = match (entry.url, entry.format) {
            (Some(url), _) => expand("url", &url)?,
            (None, Format::Pagerduty) => PAGERDUTY_URL.to_string(),
            (None, _) => anyhow::bail!("destination {name:?} needs a url"),
        };
        let uri: hyper::Uri = url
            .parse()
            .map_err(|_| anyhow::anyhow!("destination {name:?}: the url is not a valid URL"))?;
        anyhow::ensure!(
            matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
            "destination {name:?}: the url must be http:// or https:// with a host"
        );
        let routing_key = entry
            .routing_key
            .map(|k| expand("routing_key", &k))
            .transpose()?;
        anyhow::ensure!(
            entry.format != Format::Pagerduty || routing_key.is_some(),
            "destination {name:?}: format pagerduty needs a routing_key"
        );
        let mut headers = Vec::new();
        for (header, value) in entry.headers {
            let value = expand("header", &value)?;
            hyper::header::HeaderName::from_bytes(header.as_bytes())
                .map_err(|_| anyhow::anyhow!("destination {name:?}: bad header name {header:?}"))?;
            hyper::header::HeaderValue::from_str(&value).map_err(|_| {
                anyhow::anyhow!("destination {name:?}: the value of header {header:?} is not valid")
            })?;
            headers.push((header, value));
        }
        let min_severity = entry.min_severity.unwrap_or_else(|| "WARNING".into());
        anyhow::ensure!(
            min_severity == "WARNING" || min_severity == "CRITICAL",
            "destination {name:?}: min_severity must be WARNING or CRITICAL"
        );
        let mut transitions = entry.events.unwrap_or_else(|| Transition::ALL.to_vec());
        transitions.sort();
        transitions.dedup();
        anyhow::ensure!(
            !transitions.is_empty(),
            "destination {name:?}: events must name at least one of opened, acknowledged, resolved"
        );
        destinations.push(Destination {
            route: Route {
                name,
                min_severity,
                transitions,
                provisional: entry.when == Some(When::Provisional),
            },
            format: entry.format,
            url,
            headers,
            routing_key,
        });
    }
    Ok(destinations)
}

/// Replaces every `${NAME}` with the environment variable NAME (which must be set).
fn expand(value: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| anyhow::anyhow!("an unterminated ${{…}} reference"))?;
        let name = &after[..end];
        let found = env(name)
            .ok_or_else(|| anyhow::anyhow!("the environment variable {name} is not set"))?;
        out.push_str(&found);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A URL as it may be shown: scheme and host only (a path or query can hold a token).
pub fn shown_url(url: &str) -> String {
    match url.parse::<hyper::Uri>() {
        Ok(uri) => format!(
            "{}://{}/…",
            uri.scheme_str().unwrap_or("?"),
            uri.host().unwrap_or("?")
        ),
        Err(_) => "(invalid URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn a_file_with_every_format() {
        let dir = std::env::temp_dir().join(format!("sp-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.json");
        std::fs::write(
            &path,
            r#"{"destinations": [
                {"name": "ops", "format": "webhook", "url": "http://127.0.0.1:9/x?k=${TOKEN}",
                 "headers": {"Authorization": "Bearer ${TOKEN}"}},
                {"name": "pd", "format": "pagerduty", "routing_key": "${TOKEN}",
                 "min_severity": "CRITICAL", "events": ["resolved", "opened"], "when": "provisional"},
                {"name": "chat", "format": "slack", "url": "https://hooks.example.com/T/B/X"}]}"#,
        )
        .unwrap();
        let d = load(Some(&path), Some("http://127.0.0.1:1/hook"), &env).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d[0].url, "http://127.0.0.1:9/x?k=s3cret");
        assert_eq!(
            d[0].headers,
            vec![("Authorization".into(), "Bearer s3cret".into())]
        );
        assert_eq!(d[1].url, PAGERDUTY_URL);
        assert_eq!(d[1].routing_key.as_deref(), Some("s3cret"));
        assert_eq!(
            d[1].route.transitions,
            vec![Transition::Opened, Transition::Resolved]
        );
        assert!(d[1].route.wants("CRITICAL") && !d[1].route.wants("WARNING"));
        assert!(d[1].route.provisional && !d[0].route.provisional);
        assert!(d[0].route.wants("WARNING"));
        assert_eq!(d[3].route.name, "webhook");
        // Debug output shows no secret.
        let shown = format!("{:?}", d);
        assert!(!shown.contains("s3cret"), "{shown}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn bad_destinations_are_refused_without_their_secrets() {
        let bad = |json: &str| {
            let dir = std::env::temp_dir().join(format!("sp-notify-bad-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("n.json");
            std::fs::write(&path, json).unwrap();
            let e = load(Some(&path), None, &env).unwrap_err();
            format!("{e:#}")
        };
        assert!(
            bad(r#"{"destinations": [{"name": "a", "format": "webhook"}]}"#)
                .contains("needs a url")
        );
        assert!(
            bad(r#"{"destinations": [{"name": "a", "format": "pagerduty"}]}"#)
                .contains("routing_key")
        );
        assert!(bad(
            r#"{"destinations": [{"name": "a", "format": "webhook", "url": "ftp://x/${TOKEN}"}]}"#
        )
        .contains("http"));
        assert!(bad(
            r#"{"destinations": [{"name": "a", "format": "webhook", "url": "http://x/${NOPE}"}]}"#
        )
        .contains("NOPE is not set"));
        let e = bad(
            r#"{"destinations": [{"name": "a", "format": "webhook", "url": "ftp://x/${TOKEN}"}]}"#,
        );
        assert!(!e.contains("s3cret"), "{e}");
        assert!(bad(
            r#"{"destinations": [{"name": "a b", "format": "slack", "url": "http://x"}]}"#
        )
        .contains("name"));
    }

    #[test]
    fn shown_urls_keep_only_scheme_and_host() {
        assert_eq!(
            shown_url("https://hooks.slack.com/services/T0/B0/SECRET"),
            "https://hooks.slack.com/…"
        );
    }
}
