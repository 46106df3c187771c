//! The domain of a valid event: the one place that decides whether a decoded event may enter the
//! pipeline.
//!
//! ```text
//!   bytes ──decode──▶ Event ──check()──────────────▶ Ok: on to the clock and the sums
//!                            check_future(record ts)  Err(Invalid): a dead letter with this reason
//! ```
//!
//! Everything a producer can write must either fall inside this domain or become a dead letter here,
//! before the event can move a partition's clock or add to a sum. Inside it:
//!
//! - every string is at most [`MAX_TEXT_BYTES`] bytes ([`MAX_TITLE_BYTES`] for `content.title`,
//!   [`MAX_MESSAGE_BYTES`] for `download.error_message`) and holds no control character (NUL
//!   included: PostgreSQL's `text` cannot store it); the key fields are not empty;
//! - `timestamp` lies in [[`MIN_TIMESTAMP_MS`], [`MAX_TIMESTAMP_MS`]) (2000-01-01 to 2100-01-01 UTC)
//!   and, when the Kafka record carries a timestamp, at most `max_future` after it
//!   ([`check_future`]): a pure function of the record, unlike the wall clock;
//! - `download.status` is `success`, `failed` or `cancelled`;
//! - `content.size_mb` in 0..=[`MAX_SIZE_MB`], `download.duration_seconds` in
//!   0..=[`MAX_DURATION_S`], `download.speed_mbps` finite in 0..=[`MAX_SPEED_MBPS`], `content.price`
//!   finite in 0..=[`MAX_PRICE`].
//!
//! The bounds keep every sum exact: one event adds at most [`MAX_SPEED_MBPS`] × 1000 to a speed sum
//! (the largest per-event addend), so a row of `i64` sums holds at least [`ROW_CAPACITY`] events.

use thiserror::Error;

use crate::event::{Event, Outcome};

/// Longest identifier-like string (ids, region, city, device, OS, connection, kind, category,
/// status, error code), in bytes.
pub const MAX_TEXT_BYTES: usize = 128;
/// Longest `content.title`, in bytes (well below PostgreSQL's b-tree key limit of ~2.7 kB, which
/// `content_stats`' primary key must respect).
pub const MAX_TITLE_BYTES: usize = 512;
/// Longest `download.error_message`, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 2048;
/// 2000-01-01T00:00:00Z.
pub const MIN_TIMESTAMP_MS: i64 = 946_684_800_000;
/// 2100-01-01T00:00:00Z (exclusive).
pub const MAX_TIMESTAMP_MS: i64 = 4_102_444_800_000;
/// 1 TiB.
pub const MAX_SIZE_MB: i32 = 1 << 20;
/// Seven days.
pub const MAX_DURATION_S: i32 = 7 * 24 * 3600;
/// 10 Gbit/s.
pub const MAX_SPEED_MBPS: f32 = 10_000.0;
pub const MAX_PRICE: f32 = 1_000_000.0;
/// Events a row of sums holds without overflow when every event is at the bounds:
/// `i64::MAX / (MAX_SPEED_MBPS × 1000)`, about 9.2 × 10^11 (10.6 M events/s into one row for a
/// whole day, the longest window).
pub const ROW_CAPACITY: i64 = i64::MAX / (MAX_SPEED_MBPS as i64 * 1000);

/// Why an event lies outside the domain. The text is what lands in `dead_letters.reason`.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("invalid field {field}: {reason}")]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: String) -> Invalid {
    Invalid { field, reason }
}

/// Checks everything that depends on the event alone.
pub fn check(event: &Event) -> Result<(), Invalid> {
    let c = &event.content;
    let d = &event.download;
    let u = &event.user_context;
    let texts: [(&'static str, &str, usize, bool); 13] = [
        ("event_id", &event.event_id, MAX_TEXT_BYTES, true),
        ("user_id", &event.user_id, MAX_TEXT_BYTES, false),
        ("content.content_id", &c.content_id, MAX_TEXT_BYTES, true),
        ("content.title", &c.title, MAX_TITLE_BYTES, false),
        ("content.type", &c.kind, MAX_TEXT_BYTES, false),
        ("content.category", &c.category, MAX_TEXT_BYTES, false),
        ("download.status", &d.status, MAX_TEXT_BYTES, true),
        ("user_context.region", &u.region, MAX_TEXT_BYTES, true),
        ("user_context.city", &u.city, MAX_TEXT_BYTES, false),
        ("user_context.device", &u.device, MAX_TEXT_BYTES, true),
        (
            "user_context.os_version",
            &u.os_version,
            MAX_TEXT_BYTES,
            false,
        ),
        (
            "user_context.connection_type",
            &u.connection_type,
            MAX_TEXT_BYTES,
            false,
        ),
        (
            "download.error_code",
            d.error_code.as_deref().unwrap_or("-"),
            MAX_TEXT_BYTES,
            true,
        ),
    ];
    for (field, text, max, required) in texts {
        check_text(field, text, max, required)?;
    }
    if let Some(message) = &d.error_message {
        check_text("download.error_message", message, MAX_MESSAGE_BYTES, false)?;
    }
    if Outcome::parse(&d.status).is_none() {
        return Err(invalid(
            "download.status",
            format!("{:?} is not success, failed or cancelled", d.status),
        ));
    }
    if !(MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&event.timestamp) {
        return Err(invalid(
            "timestamp",
            format!(
                "{} ms is outside 2000-01-01..2100-01-01 ({MIN_TIMESTAMP_MS}..{MAX_TIMESTAMP_MS} ms)",
                event.timestamp
            ),
        ));
    }
    check_int("content.size_mb", c.size_mb, MAX_SIZE_MB)?;
    check_int(
        "download.duration_seconds",
        d.duration_seconds,
        MAX_DURATION_S,
    )?;
    check_float("download.speed_mbps", d.speed_mbps, MAX_SPEED_MBPS)?;
    check_float("content.price", c.price, MAX_PRICE)?;
    Ok(())
}

/// Checks the event's timestamp against the timestamp of the Kafka record that carried it: an event
/// more than `max_future_ms` ahead of its record is outside the domain. Without a record timestamp
/// (`None`) there is nothing to compare with.
pub fn check_future(
    event: &Event,
    record_ms: Option<i64>,
    max_future_ms: i64,
) -> Result<(), Invalid> {
    match record_ms {
        Some(record) if event.timestamp.saturating_sub(record) > max_future_ms => Err(invalid(
            "timestamp",
            format!(
                "{} ms is {} ms ahead of its Kafka record timestamp {record} ms (at most {max_future_ms} ms, --max-future)",
                event.timestamp,
                event.timestamp - record
            ),
        )),
        _ => Ok(()),
    }
}

fn check_text(field: &'static str, text: &str, max: usize, required: bool) -> Result<(), Invalid> {
    if required && text.is_empty() {
        return Err(invalid(field, "empty".into()));
    }
    if text.len() > max {
        return Err(invalid(
            field,
            format!("{} bytes, at most {max}", text.len()),
        ));
    }
    // Most text is printable ASCII: one pass over the bytes settles it. Otherwise look at the
    // characters (the C1 controls U+0080..U+009F are not single bytes).
    let printable_ascii = text.bytes().all(|b| (0x20..0x7f).contains(&b));
    if printable_ascii {
        return Ok(());
    }
    if let Some((at, c)) = text.char_indices().find(|(_, c)| c.is_control()) {
        return Err(invalid(
            field,
            format!("control character {:?} at byte {at}", c),
        ));
    }
    Ok(())
}

fn check_int(field: &'static str, value: i32, max: i32) -> Result<(), Invalid> {
    if (0..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, format!("{value} is outside 0..={max}")))
    }
}

fn check_float(field: &'static str, value: f32, max: f32) -> Result<(), Invalid> {
    if value.is_finite() && (0.0..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, format!("{value} is outside 0..={max}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::{Generator, Scenario};

    const START: i64 = 1_700_000_000_000;

    fn good() -> Event {
        Generator::new(1, Scenario::Clean, START, 10.0).event(3)
    }

    fn reason(event: &Event) -> String {
        check(event).unwrap_err().to_string()
    }

    #[test]
    fn generated_events_are_inside_the_domain() {
        for scenario in Scenario::ALL {
            let g = Generator::new(5, scenario, START, 200.0);
            for i in 0..20_000 {
                let event = g.event(i);
                check(&event).unwrap_or_else(|e| panic!("{scenario:?} event {i}: {e}"));
                check_future(&event, Some(g.nominal_time(i)), 60_000).unwrap();
            }
        }
    }

    #[test]
    fn each_class_of_bad_value_is_named() {
        let mut e = good();
        e.content.title = "a\0b".into();
        assert!(reason(&e).contains("content.title") && reason(&e).contains("\\0"));

        let mut e = good();
        e.content.title = "x".repeat(MAX_TITLE_BYTES + 1);
        assert!(reason(&e).contains("513 bytes"), "{}", reason(&e));

        let mut e = good();
        e.user_context.region = String::new();
        assert!(reason(&e).contains("user_context.region: empty"));

        let mut e = good();
        e.user_context.city = "line\nbreak".into();
        assert!(reason(&e).contains("user_context.city"));

        let mut e = good();
        e.download.error_code = Some("\u{85}".into());
        assert!(reason(&e).contains("download.error_code"));

        let mut e = good();
        e.timestamp = 32_503_680_000_000; // year 3000
        assert!(reason(&e).starts_with("invalid field timestamp"));
        e.timestamp = -1;
        assert!(reason(&e).starts_with("invalid field timestamp"));

        let mut e = good();
        e.download.speed_mbps = 3.0e38;
        assert!(reason(&e).contains("download.speed_mbps"));
        e.download.speed_mbps = f32::NAN;
        assert!(reason(&e).contains("download.speed_mbps"));
        e.download.speed_mbps = -0.5;
        assert!(reason(&e).contains("download.speed_mbps"));

        let mut e = good();
        e.content.size_mb = -1;
        assert!(reason(&e).contains("content.size_mb"));
        e.content.size_mb = i32::MAX;
        assert!(reason(&e).contains("content.size_mb"));

        let mut e = good();
        e.download.duration_seconds = MAX_DURATION_S + 1;
        assert!(reason(&e).contains("download.duration_seconds"));

        let mut e = good();
        e.content.price = f32::INFINITY;
        assert!(reason(&e).contains("content.price"));

        let mut e = good();
        e.download.status = "exploded".into();
        assert!(reason(&e).contains("download.status"));
    }

    #[test]
    fn the_bounds_themselves_are_valid() {
        let mut e = good();
        e.content.title = "é".repeat(MAX_TITLE_BYTES / 2);
        e.content.size_mb = MAX_SIZE_MB;
        e.download.duration_seconds = MAX_DURATION_S;
        e.download.speed_mbps = MAX_SPEED_MBPS;
        e.content.price = MAX_PRICE;
        e.timestamp = MAX_TIMESTAMP_MS - 1;
        check(&e).unwrap();
        e.timestamp = MIN_TIMESTAMP_MS;
        check(&e).unwrap();
    }

    #[test]
    fn future_is_judged_against_the_record() {
        let e = good();
        assert!(check_future(&e, Some(e.timestamp - 300_000), 300_000).is_ok());
        let err = check_future(&e, Some(e.timestamp - 300_001), 300_000).unwrap_err();
        assert!(err
            .to_string()
            .contains("ahead of its Kafka record timestamp"));
        assert!(check_future(&e, None, 0).is_ok());
        assert!(check_future(&e, Some(i64::MIN), 0).is_err(), "no overflow");
    }
}
