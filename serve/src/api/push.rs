//! `GET /api/stream`: the dashboard's panels pushed as server-sent events when they change, so the
//! page need not poll.
//!
//! ```text
//!   View ─▶ producer (one task, every --push-interval-ms while anyone listens): renders the seven
//!           panels with the polling endpoints' own code and bytes, numbers each panel that changed
//!             │
//!             ▼  watch channel: Arc<Snapshot> { per panel: (sequence of its last change, event) }
//!   per client: a task that copies the events of the panels changed since what it sent into one
//!   frame ─▶ channel of one frame ─▶ hyper (http::Body::Stream) ─▶ socket
//! ```
//!
//! **Why server-sent events, not WebSocket.** The data goes one way (server to page); SSE is plain
//! HTTP (a GET answered with `text/event-stream`), so it passes proxies, CORS and the connection
//! policy of [`crate::http`] like any request; every browser's `EventSource` reconnects by itself
//! and sends the last event's id back (`Last-Event-ID`), which is what resuming needs; and it takes
//! no crate beyond hyper. WebSocket would bring an upgrade handshake, framing, pings and
//! reconnection to write on both sides for a channel whose client never speaks.
//!
//! **Events.** One per panel (`event: realtime|alerts|trending|regions|timeseries|devices|rising`),
//! whose `data:` is exactly the body the polling endpoint returns for the dashboard's query
//! ([`PANELS`]; `rising` is `trending?by=rising`, the trending panel's second list),
//! so the page renders both the same way. Each has an `id: <boot>-<sequence>`: `boot` names this
//! server process (random at start), `sequence` counts panel changes. The first frame is a
//! `retry:` hint; a comment (`: heartbeat`) goes out after [`HEARTBEAT`] of silence.
//!
//! **Resume.** A client that reconnects with the last id it saw (the `Last-Event-ID` header, or
//! `?last_event_id=` for clients that cannot set headers) gets only the panels that changed after
//! it, in their latest state: no gap, no full reload. An id of another boot (the server restarted)
//! or a malformed one gets every panel (a resync), never an error. `?panels=a,b` limits the
//! stream to some panels; an unknown name is a 400.
//!
//! **Bounds.** The panels are rendered once for all clients; a client task only concatenates the
//! shared bytes. No client has a queue of changes: it is sent the latest state of what changed,
//! at most one frame per snapshot, and snapshots are at least `--push-interval-ms` (250 ms) apart
//! (only the frame that opens a stream may come sooner after the previous one); a frame waits in
//! a channel of one to hyper. A client that leaves a frame unread for `http::STREAM_STALL` (5 s) is dropped by the
//! connection policy (it reconnects and resumes). At most `--push-max-streams` (256) streams are
//! open; beyond that a stream gets 503 and the dashboard polls. `--push-max-streams 0` turns push
//! off.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once, Weak};
use std::time::Duration;

use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, watch};

use super::query::Query;
use super::{ApiError, Reply, State};
use crate::http::{Body, RequestBody};

/// The dashboard's panels: the event name, and the polling request whose body the event carries
/// (the same requests as `ENDPOINTS` in serve/web/src/api.ts).
/// New panels go last, so the bits of [`Panels`] keep their meaning.
pub const PANELS: [(&str, &str, &str); 7] = [
    ("realtime", "/api/stats/realtime", "minutes=5"),
    ("alerts", "/api/stats/alerts", "limit=10"),
    ("trending", "/api/stats/trending", "minutes=5&limit=10"),
    ("regions", "/api/stats/regions", "minutes=5"),
    ("timeseries", "/api/stats/timeseries", "minutes=60"),
    ("devices", "/api/stats/devices", "minutes=5&limit=10"),
    ("rising", "/api/stats/trending", "by=rising&limit=10"),
];

/// Silence after which a stream gets a comment, so that proxies and the client see it alive.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// How long `EventSource` waits before reconnecting (the `retry:` hint), in milliseconds.
pub const RETRY_MS: u64 = 2000;

/// Frames waiting for hyper per stream: one, so a slow client holds at most one frame here.
const FRAMES_WAITING: usize = 1;

/// One panel as last rendered.
#[derive(Clone, Default)]
struct Panel {
    /// The sequence number of its last change (0: not rendered yet).
    seq: u64,
    /// The polling endpoint's body.
    body: Bytes,
    /// `id: …\nevent: …\ndata: <body>\n\n`.
    event: Bytes,
}

/// Every panel as last rendered; `seq` is the newest change's sequence number.
#[derive(Clone, Default)]
pub struct Snapshot {
    seq: u64,
    panels: [Panel; PANELS.len()],
}

impl Snapshot {
    /// The events of the panels in `wanted` that changed after `after`, oldest change first, as
    /// one frame (empty if none).
    fn frame(&self, after: u64, wanted: Panels) -> Bytes {
        let mut changed: Vec<&Panel> = (self.panels.iter().enumerate())
            .filter(|(i, p)| wanted.has(*i) && p.seq > after)
            .map(|(_, p)| p)
            .collect();
        changed.sort_by_key(|p| p.seq);
        let mut frame = Vec::with_capacity(changed.iter().map(|p| p.event.len()).sum());
        for panel in changed {
            frame.extend_from_slice(&panel.event);
        }
        Bytes::from(frame)
    }
}

/// A set of panels, by index into [`PANELS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Panels(u8);

impl Panels {
    const ALL: Panels = Panels((1 << PANELS.len()) - 1);

    fn has(self, i: usize) -> bool {
        self.0 & (1 << i) != 0
    }

    /// `realtime,alerts` (absent: every panel).
    fn parse(list: Option<&str>) -> Result<Panels, ApiError> {
        let Some(list) = list else {
            return Ok(Panels::ALL);
        };
        let mut set = 0;
        for name in list.split(',').filter(|n| !n.is_empty()) {
            let Some(i) = PANELS.iter().position(|(n, _, _)| *n == name) else {
                let names: Vec<&str> = PANELS.iter().map(|(n, _, _)| *n).collect();
                return Err(ApiError::bad_parameter(format!(
                    "panels: unknown panel {name:?}; the panels are {}",
                    names.join(", ")
                )));
            };
            set |= 1 << i;
        }
        if set == 0 {
            return Err(ApiError::bad_parameter(
                "panels must name at least one panel".into(),
            ));
        }
        Ok(Panels(set))
    }
}

/// Where a new stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// No id: every panel.
    Fresh,
    /// An id of this boot: the panels changed after its sequence number.
    Resume(u64),
    /// An id of another boot, from the future, or malformed: every panel.
    Resync,
}

/// What `/metrics` shows of the streams.
#[derive(Default)]
pub struct PushStats {
    pub frames: AtomicU64,
    pub heartbeats: AtomicU64,
    pub fresh: AtomicU64,
    pub resumed: AtomicU64,
    pub resynced: AtomicU64,
    /// Turned away with 503: too many streams, or push turned off.
    pub refused: AtomicU64,
}

/// The streams' shared state: the newest snapshot, the producer, the count of open streams.
pub struct Push {
    boot: u64,
    max_streams: usize,
    interval: Duration,
    snapshot: watch::Sender<Arc<Snapshot>>,
    producer: Once,
    open: AtomicUsize,
    pub stats: PushStats,
}

impl Push {
    pub fn new(max_streams: usize, interval: Duration) -> Push {
        // A random number per process: `RandomState` is seeded from the OS.
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Push {
            boot: hasher.finish(),
            max_streams,
            interval,
            snapshot: watch::Sender::new(Arc::default()),
            producer: Once::new(),
            open: AtomicUsize::new(0),
            stats: PushStats::default(),
        }
    }

    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn id(&self, seq: u64) -> String {
        format!("{:016x}-{seq}", self.boot)
    }

    /// Where a stream that sent `last` (an event id, if any) starts, given the newest sequence.
    fn start(&self, last: Option<&str>, newest: u64) -> Start {
        let Some(last) = last.map(str::trim).filter(|l| !l.is_empty()) else {
            return Start::Fresh;
        };
        let ours = last.split_once('-').and_then(|(boot, seq)| {
            let boot = u64::from_str_radix(boot, 16).ok()?;
            let seq = seq.parse::<u64>().ok()?;
            (boot == self.boot && seq <= newest).then_some(seq)
        });
        ours.map_or(Start::Resync, Start::Resume)
    }
}

/// Opens a stream for `req` (see the module header).
pub(super) fn open(state: &Arc<State>, req: &Request<RequestBody>) -> Result<Reply, ApiError> {
    let push = &state.push;
    let q = Query::parse(req.uri().query().unwrap_or(""))?;
    let wanted = Panels::parse(q.get("panels"))?;
    let header = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok());
    let last = header.or(q.get("last_event_id"));

    if push.max_streams == 0 {
        push.stats.refused.fetch_add(1, Ordering::Relaxed);
        return Err(unavailable(
            "push_disabled",
            "push is turned off; poll the stats endpoints".into(),
        ));
    }
    if push.open.fetch_add(1, Ordering::AcqRel) >= push.max_streams {
        push.open.fetch_sub(1, Ordering::AcqRel);
        push.stats.refused.fetch_add(1, Ordering::Relaxed);
        return Err(unavailable(
            "too_many_streams",
            format!(
                "{} streams are open, the most this server serves; poll the stats endpoints",
                push.max_streams
            ),
        ));
    }
    let open = Open(state.clone());
    push.producer.call_once(|| {
        tokio::spawn(produce(Arc::downgrade(state)));
    });

    let snapshots = push.snapshot.subscribe();
    let newest = snapshots.borrow().seq;
    let start = push.start(last, newest);
    let counter = match start {
        Start::Fresh => &push.stats.fresh,
        Start::Resume(_) => &push.stats.resumed,
        Start::Resync => &push.stats.resynced,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let sent = match start {
        Start::Resume(seq) => seq,
        Start::Fresh | Start::Resync => 0,
    };
    let (frames, body) = mpsc::channel(FRAMES_WAITING);
    tokio::spawn(client(open, snapshots, frames, sent, wanted));

    let mut response = Response::new(Body::Stream(body));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx buffers proxied responses unless told not to.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    Ok(response)
}

fn unavailable(error: &'static str, detail: String) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error, detail)
        .with_header(RETRY_AFTER, HeaderValue::from_static("30"))
}

/// A stream counted as open until its task ends.
struct Open(Arc<State>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.push.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One client: sends the retry hint, then the panels changed since `sent` whenever the snapshot
/// moves on (at most once per snapshot, so once per interval), until hyper drops the body (the
/// client left, or was dropped for not reading). While a frame waits for a slow client, the
/// snapshots it misses are coalesced into the next frame.
async fn client(
    open: Open,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    frames: mpsc::Sender<Bytes>,
    mut sent: u64,
    wanted: Panels,
) {
    let push = &open.0.push;
    let hint = format!("retry: {RETRY_MS}\n\n");
    if frames.send(Bytes::from(hint)).await.is_err() {
        return;
    }
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if snapshot.seq > sent {
            let frame = snapshot.frame(sent, wanted);
            sent = snapshot.seq;
            drop(snapshot);
            if !frame.is_empty() {
                // Waits while the client is not reading; the connection policy ends that.
                if frames.send(frame).await.is_err() {
                    return;
                }
                push.stats.frames.fetch_add(1, Ordering::Relaxed);
                // No pause here: snapshots come at least an interval apart, so this is at most
                // one frame per interval; a pause of the client's own would drift against the
                // producer's ticks and delay every frame by up to an interval.
                continue;
            }
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(HEARTBEAT) => {
                if frames.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                    return;
                }
                push.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            _ = frames.closed() => return,
        }
    }
}

/// The one producer: every interval, while any stream is open, renders the panels and publishes
/// a snapshot if any changed. Its ticks are at least an interval apart (a late tick delays the
/// next), which is what bounds each client's frame rate. Ends when the API's state is gone.
async fn produce(state: Weak<State>) {
    let interval = match state.upgrade() {
        Some(state) => state.push.interval,
        None => return,
    };
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else {
            return;
        };
        let push = &state.push;
        if push.snapshot.receiver_count() == 0 {
            continue;
        }
        let current = push.snapshot.borrow().clone();
        let mut next = (*current).clone();
        for (i, (name, path, query)) in PANELS.iter().enumerate() {
            let endpoint = super::stats::ENDPOINTS
                .iter()
                .position(|(p, _, _)| p == path)
                .expect("every panel is a stats endpoint");
            let body = match super::stats_body(&state, endpoint, query, false).await {
                Ok(body) => body,
                Err(e) => {
                    log::warn!("push: rendering {name}: {}", e.detail);
                    continue;
                }
            };
            if body == current.panels[i].body {
                continue;
            }
            next.seq += 1;
            let seq = next.seq;
            let head = format!("id: {}\nevent: {name}\ndata: ", push.id(seq));
            let mut event = Vec::with_capacity(head.len() + body.len() + 2);
            event.extend_from_slice(head.as_bytes());
            // Compact JSON has no newline, so the body is one `data:` line.
            event.extend_from_slice(&body);
            event.extend_from_slice(b"\n\n");
            next.panels[i] = Panel {
                seq,
                body,
                event: Bytes::from(event),
            };
        }
        if next.seq != current.seq {
            push.snapshot.send_replace(Arc::new(next));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_resume_only_this_boot() {
        let push = Push::new(1, Duration::from_millis(250));
        let id = push.id(7);
        assert_eq!(push.start(None, 9), Start::Fresh);
        assert_eq!(push.start(Some(""), 9), Start::Fresh);
        assert_eq!(push.start(Some(&id), 9), Start::Resume(7));
        assert_eq!(push.start(Some(&id), 7), Start::Resume(7));
        assert_eq!(push.start(Some(&id), 6), Start::Resync, "from the future");
        let other = format!("{:016x}-7", push.boot ^ 1);
        assert_eq!(push.start(Some(&other), 9), Start::Resync);
        for bad in ["7", "x-7", "-", "abc-def", &format!("{id}-1")] {
            assert_eq!(push.start(Some(bad), 9), Start::Resync, "{bad}");
        }
    }

    #[test]
    fn panels_parse() {
        assert_eq!(Panels::parse(None).unwrap(), Panels::ALL);
        let some = Panels::parse(Some("alerts,realtime")).unwrap();
        assert!(some.has(0) && some.has(1) && !some.has(2));
        assert!(Panels::parse(Some("nope")).is_err());
        assert!(Panels::parse(Some(",")).is_err());
    }

    #[test]
    fn a_frame_holds_what_changed_after_an_id_oldest_first() {
        let mut snapshot = Snapshot::default();
        for (i, seq) in [(0, 5), (1, 2), (2, 9), (3, 0)] {
            snapshot.panels[i] = Panel {
                seq,
                body: Bytes::new(),
                event: Bytes::from(format!("<{i}>")),
            };
        }
        snapshot.seq = 9;
        assert_eq!(&snapshot.frame(0, Panels::ALL)[..], b"<1><0><2>");
        assert_eq!(&snapshot.frame(2, Panels::ALL)[..], b"<0><2>");
        assert_eq!(&snapshot.frame(5, Panels(0b11)), "");
        assert_eq!(&snapshot.frame(9, Panels::ALL)[..], b"");
    }
}
