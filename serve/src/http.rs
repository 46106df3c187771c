//! The hyper server and its connection policy: who gets a connection, how long each phase of a
//! request may take, and which connection gives way when the server is full. The caller passes the
//! listener and the shutdown signal, so tests bind port 0.
//!
//! Every connection is in one phase, tracked from the bytes it moves and the requests it makes:
//!
//! ```text
//!   accept ─▶ Idle ──first byte──▶ Head ──head complete──▶ Busy ──response built──▶ Sending ──flushed──▶ Idle …
//!             ≤ IDLE_TIMEOUT        ≤ HEADER_TIMEOUT        body ≤ BODY_TIMEOUT, head to flushed ≤ REQUEST_TIMEOUT
//!                                                            │                        ▲
//!                                                            │ stream built           │ stream ended
//!                                                            ▼                        │
//!                                                          Streaming ─────────────────┘
//!                                                            a frame taken by hyper must be flushed ≤ STREAM_STALL
//! ```
//!
//! - Deadlines hold for every request, authorised or not: a connection is closed [`IDLE_TIMEOUT`]
//!   (30 s) after it went idle (accepted, or its last response flushed) without starting a request,
//!   and [`HEADER_TIMEOUT`] (10 s) after the first byte of a head that has not ended. A body must
//!   have arrived [`BODY_TIMEOUT`] (10 s) after its head, else the handler reading it answers 408
//!   and the connection closes; a body no handler reads closes the connection after the answer.
//!   From the end of a head to the last byte of its response flushed takes at most
//!   [`REQUEST_TIMEOUT`] (30 s), else the connection is dropped. These are totals, not gaps
//!   between bytes: a byte a second extends nothing.
//! - A response may be a stream ([`Body::Stream`], the API's server-sent events): it has no end,
//!   so [`REQUEST_TIMEOUT`] cannot bound it. Once its response is built (head to built still
//!   within [`REQUEST_TIMEOUT`]) the connection is `Streaming`, and judged instead by whether its
//!   client reads: each frame hyper takes from the stream must be written to the socket in full
//!   (hyper flushes) within [`STREAM_STALL`] (5 s), else the connection is dropped
//!   (`stream_stalled`). A stream with nothing to say has no deadline; its producer sends a
//!   heartbeat every 15 s, so a client that vanished without a FIN is found within 15 s + 5 s.
//!   The stream's channel holds one frame and hyper's write buffer a few, so a stalled stream
//!   holds a bounded amount of memory until it is dropped. Its socket's send buffer is fixed at
//!   [`STREAM_SEND_BUFFER`] (32 KiB) when it starts streaming, instead of autotuned up to 4 MiB:
//!   a client that stops reading fills it (and its own receive buffer) within seconds, which is
//!   when the stall starts to count, and the kernel holds little for it.
//!   A stream counts against [`MAX_CONNECTIONS`] like any connection. It is not evictable while
//!   its client keeps up (like a request being answered), and is, like a stalled `Sending`, once
//!   a frame has waited [`STALLED`] (1 s). The API caps streams (`--push-max-streams`, 256) well
//!   below [`MAX_CONNECTIONS`], so streams alone can never fill the server.
//! - At most [`MAX_CONNECTIONS`] (1024) connections are open. When a new one arrives at capacity,
//!   the server evicts the connection that has waited longest in `Idle` or `Head` (since its phase
//!   began: trickling bytes is not activity, finishing a request is), or one whose client has not
//!   read its response for [`STALLED`] (1 s). It never evicts a connection whose request is being
//!   answered. If every connection is being answered (each for at most [`REQUEST_TIMEOUT`]), the
//!   server stops accepting until one finishes. So a flood of idle, slow or keep-alive
//!   connections pushes out the connections that have waited longest, its own unless it churns
//!   faster than other clients make requests, and a new request is answered as soon as its head
//!   arrives: `/health` and the dashboard keep answering, even on loopback where every client
//!   shares 127.0.0.1 (at worst a browser reopens an evicted keep-alive connection).
//! - Each non-loopback client (an IPv4 address or an IPv6 /64) holds at most [`MAX_PER_CLIENT`]
//!   (256) connections: beyond that its own longest-waiting idle connection is evicted, or the new
//!   one is refused if all of its connections are being answered. Loopback is exempt, because a
//!   local reverse proxy carries every client on one address; the global eviction protects it.
//! - Memory is bounded per connection: a request head is at most [`MAX_HEAD`] (16 KiB, hyper's
//!   read buffer; a longer head gets 431), a body at most 16 KiB (`api`), responses are bounded
//!   by the API; so about 1024 × (16 KiB + hyper's and tokio's state) in all. The cap is lowered
//!   to the open-file limit less 128 when that is smaller, and an accept that fails for want of
//!   file descriptors evicts as above.
//!
//! The server binds 127.0.0.1 by default (`--http`). The timeouts can be shortened for tests with
//! hidden flags (`--http-idle-timeout` and friends, see `cli`); `/metrics` counts open connections
//! and closes by reason.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Connections open at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Connections one non-loopback client (IPv4 address, IPv6 /64) may hold.
pub const MAX_PER_CLIENT: usize = 256;
/// Longest request head (request line and headers).
pub const MAX_HEAD: usize = 16 * 1024;
/// From the first byte of a request head to its end.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// From the end of a request head to the end of its body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// From the end of a request head to its response flushed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Between requests on a connection (and from accept to the first byte).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A response its client has not read for this long makes the connection evictable.
pub const STALLED: Duration = Duration::from_secs(1);
/// A stream whose last frame has not all reached the socket for this long is dropped.
pub const STREAM_STALL: Duration = Duration::from_secs(5);
/// A stream's socket send buffer (Linux doubles it for its bookkeeping). Left to autotuning it
/// grows to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default), which a stream of a few frames a
/// second would take minutes to fill: a client that stopped reading would go unnoticed that long
/// and hold that much kernel memory.
pub const STREAM_SEND_BUFFER: usize = 32 * 1024;

/// The policy's numbers; [`Limits::default`] is what the constants above say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_client: usize,
    pub header: Duration,
    pub body: Duration,
    pub request: Duration,
    pub idle: Duration,
    pub stream_stall: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_per_client: MAX_PER_CLIENT,
            header: HEADER_TIMEOUT,
            body: BODY_TIMEOUT,
            request: REQUEST_TIMEOUT,
            idle: IDLE_TIMEOUT,
            stream_stall: STREAM_STALL,
        }
    }
}

/// Why the server closed a connection (the client closing it is not counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    IdleTimeout,
    HeaderTimeout,
    RequestTimeout,
    /// Pushed out to make room for a newer connection.
    Evicted,
    /// Turned away at accept: its client's share was full of requests being answered.
    Refused,
    /// A stream whose client stopped taking its frames.
    StreamStalled,
}

impl Closed {
    pub const ALL: [Closed; 6] = [
        Closed::IdleTimeout,
        Closed::HeaderTimeout,
        Closed::RequestTimeout,
        Closed::Evicted,
        Closed::Refused,
        Closed::StreamStalled,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Closed::IdleTimeout => "idle_timeout",
            Closed::HeaderTimeout => "header_timeout",
            Closed::RequestTimeout => "request_timeout",
            Closed::Evicted => "evicted",
            Closed::Refused => "refused",
            Closed::StreamStalled => "stream_stalled",
        }
    }
}

/// Connection counts for `/metrics`.
#[derive(Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    closed: [AtomicU64; Closed::ALL.len()],
}

impl ConnectionStats {
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn closed(&self, reason: Closed) -> u64 {
        self.closed[reason as usize].load(Ordering::Relaxed)
    }

    fn count(&self, reason: Closed) {
        self.closed[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A response: complete (the API serialises every answer before it is sent), or a stream.
pub type Reply = hyper::Response<Body>;

/// What a response carries: a complete body, or a stream of frames (server-sent events) that
/// ends when its sender is dropped.
pub enum Body {
    Full(http_body_util::Full<Bytes>),
    /// Frames as the handler produces them. The channel is the only buffer between the producer
    /// and hyper, so its capacity bounds what a connection holds beyond hyper's own write buffer
    /// (see the module header: a client that stops reading stalls the stream and is dropped).
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
}

impl Body {
    pub fn full(bytes: Bytes) -> Body {
        Body::Full(http_body_util::Full::new(bytes))
    }
}

/// What answers a request (the API in the product; anything in a test).
pub type Handler = Arc<
    dyn Fn(Request<RequestBody>) -> std::pin::Pin<Box<dyn Future<Output = Reply> + Send>>
        + Send
        + Sync,
>;

/// Accepts connections until `shutdown` resolves, under the policy `limits`, counting in `stats`,
/// and answers each request with `handler`. Connections still open then are dropped with the
/// runtime.
pub async fn serve(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    handler: Handler,
    shutdown: impl Future<Output = ()>,
) {
    let limits = within_open_file_limit(limits, open_file_limit());
    let registry = Arc::new(Registry::new(limits, stats));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors (other files count too): free one by evicting, as
                    // when full, or else give closing connections a moment.
                    log::warn!("accept failed: {e}");
                    if matches!(e.raw_os_error(), Some(EMFILE | ENFILE)) {
                        registry.evict_oldest();
                    }
                    tokio::select! {
                        _ = registry.freed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
            },
        };
        let slot = loop {
            match registry.admit(peer.ip()) {
                Admission::Admitted(slot) => break Some(slot),
                Admission::Refused => break None,
                // Wait for the evicted connection to close; or, when every connection is being
                // answered (each for a bounded time), for one to finish or for a stalled response
                // to become evictable, instead of accepting more.
                Admission::Wait | Admission::Full => tokio::select! {
                    _ = &mut shutdown => return,
                    _ = registry.freed.notified() => {}
                    _ = tokio::time::sleep(STALLED / 4) => {}
                },
            }
        };
        let Some(slot) = slot else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, slot, registry.clone(), handler.clone()));
    }
}

/// `errno` values of accept(2) for "no file descriptor left" (process, system).
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;
/// File descriptors kept for everything but HTTP connections (Kafka, PostgreSQL, the runtime).
const OTHER_FILES: u64 = 128;

/// The process's soft limit on open files, where Linux says (`/proc/self/limits`).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Lowers the connection cap below the open-file limit, so that the cap, not accept(2) failing,
/// is what a flood meets (a failing accept cannot tell which connection to let go).
fn within_open_file_limit(mut limits: Limits, open_files: Option<u64>) -> Limits {
    if let Some(open_files) = open_files {
        let room = open_files.saturating_sub(OTHER_FILES).max(16) as usize;
        if room < limits.max_connections {
            log::warn!(
                "at most {room} HTTP connections: the open-file limit is {open_files} (raise it, e.g. ulimit -n or LimitNOFILE, for {})",
                limits.max_connections
            );
            limits.max_connections = room;
        }
    }
    limits
}

/// Serves one connection until it ends, times out or is evicted.
async fn connection(stream: TcpStream, slot: Arc<Slot>, registry: Arc<Registry>, handler: Handler) {
    let limits = registry.limits;
    let service = {
        let slot = slot.clone();
        service_fn(move |req: Request<Incoming>| {
            slot.request_started();
            let req = req.map(|body| RequestBody::new(body, limits.body));
            let (handler, slot) = (handler.clone(), slot.clone());
            async move {
                let response = handler(req).await;
                Ok::<_, Infallible>(response.map(|body| ResponseBody::new(body, slot)))
            }
        })
    };
    let io = TokioIo::new(Tracked {
        inner: stream,
        slot: slot.clone(),
        streaming: false,
    });
    // No hyper timer: its header timeout runs from the end of the previous response, which would
    // merge the idle and header deadlines; the loop below keeps both.
    let conn = http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .serve_connection(io, service);
    tokio::pin!(conn);
    loop {
        if slot.evicted.load(Ordering::Acquire) {
            break;
        }
        let (deadline, _) = slot.deadline(&limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    log::debug!("connection ended: {e}");
                }
                break;
            }
            // A phase change or an eviction: look again.
            _ = slot.wake.notified() => {}
            _ = tokio::time::sleep_until(slot.instant(deadline).into()) => {
                // The phase may have moved on meanwhile: judge by the current one.
                let (deadline, reason) = slot.deadline(&limits);
                if deadline <= slot.now_ms() {
                    registry.stats.count(reason);
                    log::debug!("closing a connection: {}", reason.label());
                    break;
                }
            }
        }
    }
    registry.release(&slot);
}

// ---------------------------------------------------------------------------------------------
// The registry: who is connected, and who gives way
// ---------------------------------------------------------------------------------------------

/// Whom the per-client share counts: an IPv4 address or an IPv6 /64 (what one host usually gets).
/// Loopback has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Option<ClientKey> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_loopback() {
            return None;
        }
        Some(match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => ClientKey::V6((v6.to_bits() >> 64) as u64),
        })
    }
}

const IDLE: u8 = 0;
const HEAD: u8 = 1;
const BUSY: u8 = 2;
const SENDING: u8 = 3;
const STREAMING: u8 = 4;
/// `Slot::unflushed_since` when nothing waits.
const NOTHING: u64 = u64::MAX;

/// One connection as the registry sees it. Its own task and the registry (on accept) read it
/// concurrently; the numbers are advisory, so relaxed atomics suffice.
struct Slot {
    id: u64,
    client: Option<ClientKey>,
    epoch: Instant,
    phase: AtomicU8,
    /// When the phase began, in ms since `epoch`.
    phase_since: AtomicU64,
    /// When the current request's head ended.
    request_since: AtomicU64,
    /// When response bytes last went out (or the response was built): a client that stopped
    /// reading shows here.
    written: AtomicU64,
    /// Streaming: when hyper took a frame that has not all reached the socket yet ([`NOTHING`]
    /// once it has). A client that stopped reading shows here.
    unflushed_since: AtomicU64,
    evicted: AtomicBool,
    /// Wakes the connection's task on a phase change or an eviction.
    wake: Notify,
}

impl Slot {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn enter(&self, phase: u8) {
        self.phase_since.store(self.now_ms(), Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn request_started(&self) {
        self.request_since.store(self.now_ms(), Ordering::Relaxed);
        self.enter(BUSY);
    }

    fn response_built(&self) {
        if matches!(self.phase.load(Ordering::Relaxed), BUSY | STREAMING) {
            // Same deadline as Busy, so the task need not wake.
            let now = self.now_ms();
            self.phase_since.store(now, Ordering::Relaxed);
            self.written.store(now, Ordering::Relaxed);
            self.phase.store(SENDING, Ordering::Relaxed);
        }
    }

    fn read(&self, n: usize) {
        if n > 0 && self.phase.load(Ordering::Relaxed) == IDLE {
            self.enter(HEAD);
        }
    }

    fn wrote(&self, n: usize) {
        if n > 0 {
            self.written.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    fn flushed(&self) {
        match self.phase.load(Ordering::Relaxed) {
            SENDING => self.enter(IDLE),
            STREAMING => self.unflushed_since.store(NOTHING, Ordering::Relaxed),
            _ => {}
        }
    }

    /// The handler answered with a stream: from now on it lives as long as its client reads.
    fn stream_started(&self) {
        self.unflushed_since.store(NOTHING, Ordering::Relaxed);
        self.enter(STREAMING);
    }

    /// hyper took a frame of the stream to write.
    fn stream_frame(&self) {
        if self.unflushed_since.load(Ordering::Relaxed) == NOTHING {
            self.unflushed_since.store(self.now_ms(), Ordering::Relaxed);
            // The task sleeps without a deadline while nothing waits: give it one.
            self.wake.notify_one();
        }
    }

    /// When the current phase ends the connection (ms since `epoch`), and why.
    fn deadline(&self, limits: &Limits) -> (u64, Closed) {
        let ms = |d: Duration| d.as_millis() as u64;
        let since = self.phase_since.load(Ordering::Relaxed);
        match self.phase.load(Ordering::Relaxed) {
            IDLE => (since + ms(limits.idle), Closed::IdleTimeout),
            HEAD => (since + ms(limits.header), Closed::HeaderTimeout),
            STREAMING => match self.unflushed_since.load(Ordering::Relaxed) {
                // Nothing to judge the client by: look again in an hour, or when a frame waits.
                NOTHING => (self.now_ms() + 3_600_000, Closed::StreamStalled),
                unflushed => (unflushed + ms(limits.stream_stall), Closed::StreamStalled),
            },
            _ => (
                self.request_since.load(Ordering::Relaxed) + ms(limits.request),
                Closed::RequestTimeout,
            ),
        }
    }

    /// If it may be evicted: since when it has waited (older goes first).
    fn waiting_since(&self, now: u64) -> Option<u64> {
        match self.phase.load(Ordering::Relaxed) {
            IDLE | HEAD => Some(self.phase_since.load(Ordering::Relaxed)),
            SENDING => {
                let written = self.written.load(Ordering::Relaxed);
                (now.saturating_sub(written) >= STALLED.as_millis() as u64).then_some(written)
            }
            STREAMING => {
                let unflushed = self.unflushed_since.load(Ordering::Relaxed);
                (unflushed != NOTHING
                    && now.saturating_sub(unflushed) >= STALLED.as_millis() as u64)
                    .then_some(unflushed)
            }
            _ => None,
        }
    }
}

enum Admission {
    Admitted(Arc<Slot>),
    /// The client's share is full of requests being answered.
    Refused,
    /// The server is full of requests being answered.
    Full,
    /// A connection was evicted to make room: ask again once its socket is closed.
    Wait,
}

struct Registry {
    limits: Limits,
    epoch: Instant,
    table: Mutex<Table>,
    /// Signalled whenever a connection leaves.
    freed: Notify,
    stats: Arc<ConnectionStats>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    slots: HashMap<u64, Arc<Slot>>,
    per_client: HashMap<ClientKey, usize>,
    /// Evicted connections whose sockets are not closed yet.
    closing: usize,
}

impl Table {
    /// Sockets held.
    fn open(&self) -> u64 {
        (self.slots.len() + self.closing) as u64
    }

    /// The evictable connection that has waited longest, among those `which` selects.
    fn oldest_waiting(&self, now: u64, which: impl Fn(&Slot) -> bool) -> Option<u64> {
        self.slots
            .values()
            .filter(|s| which(s))
            .filter_map(|s| Some((s.waiting_since(now)?, s.id)))
            .min()
            .map(|(_, id)| id)
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Slot>> {
        let slot = self.slots.remove(&id)?;
        if let Some(client) = slot.client {
            let count = self
                .per_client
                .get_mut(&client)
                .expect("counted on admission");
            *count -= 1;
            if *count == 0 {
                self.per_client.remove(&client);
            }
        }
        Some(slot)
    }
}

impl Registry {
    fn new(limits: Limits, stats: Arc<ConnectionStats>) -> Registry {
        Registry {
            limits,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
            stats,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Makes room for a connection from `ip` (evicting if needed) and registers it.
    fn admit(&self, ip: IpAddr) -> Admission {
        self.admit_at(ip, self.now_ms())
    }

    /// [`Registry::admit`] at `now` (ms since the epoch).
    fn admit_at(&self, ip: IpAddr, now: u64) -> Admission {
        let client = ClientKey::of(ip);
        let mut table = self.table.lock().expect("registry lock");
        if let Some(client) = client {
            if table.per_client.get(&client).copied().unwrap_or(0) >= self.limits.max_per_client {
                match table.oldest_waiting(now, |s| s.client == Some(client)) {
                    Some(id) => self.evict(&mut table, id),
                    None => {
                        self.stats.count(Closed::Refused);
                        return Admission::Refused;
                    }
                }
            }
        }
        // Evicted connections count until their task has closed the socket, so the cap bounds
        // file descriptors too. One eviction at a time: a burst of arrivals evicts one each.
        if table.slots.len() + table.closing >= self.limits.max_connections {
            if table.closing == 0 {
                let Some(id) = table.oldest_waiting(now, |_| true) else {
                    return Admission::Full;
                };
                self.evict(&mut table, id);
            }
            return Admission::Wait;
        }
        table.next_id += 1;
        let slot = Arc::new(Slot {
            id: table.next_id,
            client,
            epoch: self.epoch,
            phase: AtomicU8::new(IDLE),
            phase_since: AtomicU64::new(now),
            request_since: AtomicU64::new(now),
            written: AtomicU64::new(now),
            unflushed_since: AtomicU64::new(NOTHING),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        table.slots.insert(slot.id, slot.clone());
        if let Some(client) = client {
            *table.per_client.entry(client).or_default() += 1;
        }
        self.stats.open.store(table.open(), Ordering::Relaxed);
        Admission::Admitted(slot)
    }

    /// Takes the slot out of the running (it is `closing` until its task has dropped the socket)
    /// and tells its task to drop the connection.
    fn evict(&self, table: &mut Table, id: u64) {
        if let Some(slot) = table.remove(id) {
            table.closing += 1;
            slot.evicted.store(true, Ordering::Release);
            slot.wake.notify_one();
            self.stats.count(Closed::Evicted);
        }
    }

    /// Evicts the connection that has waited longest, if any may go.
    fn evict_oldest(&self) -> bool {
        let mut table = self.table.lock().expect("registry lock");
        let Some(id) = table.oldest_waiting(self.now_ms(), |_| true) else {
            return false;
        };
        self.evict(&mut table, id);
        true
    }

    /// Called by a connection's task once its socket is closed.
    fn release(&self, slot: &Slot) {
        let mut table = self.table.lock().expect("registry lock");
        if table.remove(slot.id).is_none() && slot.evicted.load(Ordering::Acquire) {
            table.closing -= 1;
        }
        self.stats.open.store(table.open(), Ordering::Relaxed);
        drop(table);
        self.freed.notify_one();
    }
}

// ---------------------------------------------------------------------------------------------
// What hyper reads and writes through
// ---------------------------------------------------------------------------------------------

/// The socket, reporting bytes moved and flushes to the connection's slot.
struct Tracked {
    inner: TcpStream,
    slot: Arc<Slot>,
    /// Its send buffer is set for streaming ([`STREAM_SEND_BUFFER`]).
    streaming: bool,
}

impl Tracked {
    /// Before the first write of a stream, bounds what the kernel holds for it.
    fn before_write(&mut self) {
        if !self.streaming && self.slot.phase.load(Ordering::Relaxed) == STREAMING {
            self.streaming = true;
            if let Err(e) =
                socket2::SockRef::from(&self.inner).set_send_buffer_size(STREAM_SEND_BUFFER)
            {
                log::debug!("setting a stream's send buffer: {e}");
            }
        }
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        self.slot.read(buf.filled().len() - before);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.slot.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        let n = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.slot.wrote(n);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // hyper flushes once the response's bytes are all written to the socket.
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.slot.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that must arrive within the body timeout of its head.
pub struct RequestBody {
    inner: Incoming,
    deadline: tokio::time::Instant,
    /// Made on the first wait only: most requests have no body to wait for.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
}

/// The error a [`RequestBody`] ends with when its time is up.
#[derive(Debug)]
pub struct BodyTimeout(pub Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {:.1} s",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimeout {}

impl RequestBody {
    fn new(inner: Incoming, timeout: Duration) -> RequestBody {
        RequestBody {
            inner,
            deadline: tokio::time::Instant::now() + timeout,
            timer: None,
            timeout,
        }
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that tells the slot when hyper has taken all of it, and, for a stream, when
/// hyper takes each frame.
struct ResponseBody {
    inner: Body,
    slot: Option<Arc<Slot>>,
}

impl ResponseBody {
    fn new(inner: Body, slot: Arc<Slot>) -> ResponseBody {
        if matches!(inner, Body::Stream(_)) {
            slot.stream_started();
        }
        ResponseBody {
            inner,
            slot: Some(slot),
        }
    }

    fn done(&mut self) {
        if let Some(slot) = self.slot.take() {
            slot.response_built();
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        self.done();
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match &mut self.inner {
            Body::Full(full) => ready!(Pin::new(full).poll_frame(cx)),
            Body::Stream(frames) => ready!(frames.poll_recv(cx)).map(|bytes| {
                if let Some(slot) = &self.slot {
                    slot.stream_frame();
                }
                Ok(Frame::data(bytes))
            }),
        };
        if frame.is_none() {
            self.done();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Body::Full(full) => full.is_end_stream(),
            Body::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Body::Full(full) => full.size_hint(),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' clock: late enough that a response unread since 0 counts as stalled.
    const NOW: u64 = 5_000;

    fn limits(max_connections: usize, max_per_client: usize) -> Limits {
        Limits {
            max_connections,
            max_per_client,
            ..Limits::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admitted(a: Admission) -> Arc<Slot> {
        match a {
            Admission::Admitted(slot) => slot,
            Admission::Refused => panic!("refused"),
            Admission::Full => panic!("full"),
            Admission::Wait => panic!("wait"),
        }
    }

    /// Puts a slot in `phase` since `at` (ms since the epoch).
    fn put(slot: &Slot, phase: u8, at: u64) {
        slot.phase.store(phase, Ordering::Relaxed);
        slot.phase_since.store(at, Ordering::Relaxed);
        slot.written.store(at, Ordering::Relaxed);
    }

    #[test]
    fn client_keys() {
        assert_eq!(ClientKey::of(ip("127.0.0.1")), None);
        assert_eq!(ClientKey::of(ip("127.3.4.5")), None);
        assert_eq!(ClientKey::of(ip("::1")), None);
        assert_eq!(ClientKey::of(ip("::ffff:127.0.0.1")), None);
        assert_eq!(
            ClientKey::of(ip("::ffff:10.0.0.1")),
            ClientKey::of(ip("10.0.0.1"))
        );
        // One /64 is one client, whatever its interface identifiers.
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn at_capacity_the_longest_waiting_idle_or_head_gives_way_never_a_busy_one() {
        let registry = Registry::new(limits(3, 10), Arc::default());
        let lo = ip("127.0.0.1");
        let a = admitted(registry.admit_at(lo, NOW));
        let b = admitted(registry.admit_at(lo, NOW));
        let c = admitted(registry.admit_at(lo, NOW));
        put(&a, BUSY, 0);
        put(&b, HEAD, 5);
        put(&c, IDLE, 10);
        // The oldest waiting connection is evicted; the newcomer waits for its socket to close.
        assert!(matches!(registry.admit_at(lo, NOW), Admission::Wait));
        assert!(b.evicted.load(Ordering::Acquire), "the oldest waiting one");
        assert!(!a.evicted.load(Ordering::Acquire) && !c.evicted.load(Ordering::Acquire));
        // Until it has, nothing more is evicted and it still counts.
        assert!(matches!(registry.admit_at(lo, NOW), Admission::Wait));
        assert!(!c.evicted.load(Ordering::Acquire));
        assert_eq!(registry.stats.open(), 3);
        registry.release(&b);
        assert_eq!(registry.stats.open(), 2);
        let d = admitted(registry.admit_at(lo, NOW));
        put(&c, BUSY, 10);
        put(&d, BUSY, 10);
        // All three are being answered: nothing is evicted, the server is full.
        assert!(matches!(registry.admit_at(lo, NOW), Admission::Full));
        // A response still being read is being answered; one its client stopped reading a
        // while ago may go.
        put(&a, SENDING, NOW - 100);
        assert!(matches!(registry.admit_at(lo, NOW), Admission::Full));
        put(&a, SENDING, 0);
        assert!(matches!(registry.admit_at(lo, NOW), Admission::Wait));
        assert!(a.evicted.load(Ordering::Acquire));
        registry.release(&a);
        let _e = admitted(registry.admit_at(lo, NOW));
        assert_eq!(registry.stats.closed(Closed::Evicted), 2);
        assert_eq!(registry.stats.open(), 3);
        registry.release(&c);
        assert_eq!(registry.stats.open(), 2);
    }

    #[test]
    fn a_remote_client_beyond_its_share_evicts_its_own_or_is_refused() {
        let registry = Registry::new(limits(100, 2), Arc::default());
        let a1 = admitted(registry.admit_at(ip("192.0.2.1"), NOW));
        let a2 = admitted(registry.admit_at(ip("192.0.2.1"), NOW));
        let other = admitted(registry.admit_at(ip("192.0.2.2"), NOW));
        put(&other, IDLE, 0);
        put(&a1, IDLE, 3);
        put(&a2, BUSY, 1);
        let a3 = admitted(registry.admit_at(ip("192.0.2.1"), NOW));
        assert!(a1.evicted.load(Ordering::Acquire));
        assert!(
            !other.evicted.load(Ordering::Acquire),
            "another client's idle connection is not touched"
        );
        put(&a3, BUSY, 4);
        assert!(matches!(
            registry.admit_at(ip("192.0.2.1"), NOW),
            Admission::Refused
        ));
        assert_eq!(registry.stats.closed(Closed::Refused), 1);
        // Another client, and loopback, are unaffected.
        admitted(registry.admit_at(ip("192.0.2.2"), NOW));
        for _ in 0..5 {
            admitted(registry.admit_at(ip("127.0.0.1"), NOW));
        }
    }

    #[test]
    fn the_cap_stays_below_the_open_file_limit() {
        let l = Limits::default();
        assert_eq!(within_open_file_limit(l, None), l);
        assert_eq!(within_open_file_limit(l, Some(1 << 20)), l);
        assert_eq!(
            within_open_file_limit(l, Some(1024)).max_connections,
            1024 - 128
        );
        assert_eq!(within_open_file_limit(l, Some(100)).max_connections, 16);
    }

    #[test]
    fn a_stream_is_judged_by_whether_its_client_reads() {
        let registry = Registry::new(Limits::default(), Arc::default());
        let slot = admitted(registry.admit_at(ip("127.0.0.1"), NOW));
        let l = Limits::default();
        slot.request_started();
        slot.stream_started();
        assert_eq!(slot.phase.load(Ordering::Relaxed), STREAMING);
        // Nothing waits: no deadline within the request timeout, and not evictable.
        let (deadline, reason) = slot.deadline(&l);
        assert_eq!(reason, Closed::StreamStalled);
        assert!(
            deadline > slot.now_ms() + 60_000,
            "a stream outlives REQUEST_TIMEOUT"
        );
        assert_eq!(slot.waiting_since(u64::MAX / 2), None);
        // A frame taken and not flushed: the stall deadline runs from it.
        slot.stream_frame();
        let since = slot.unflushed_since.load(Ordering::Relaxed);
        assert_eq!(slot.deadline(&l), (since + 5_000, Closed::StreamStalled));
        // A second frame before the flush does not move it.
        slot.stream_frame();
        assert_eq!(slot.unflushed_since.load(Ordering::Relaxed), since);
        assert_eq!(slot.waiting_since(since + 999), None, "not stalled yet");
        assert_eq!(slot.waiting_since(since + 1_000), Some(since), "evictable");
        // Flushed: the client keeps up.
        slot.flushed();
        assert_eq!(slot.phase.load(Ordering::Relaxed), STREAMING);
        assert_eq!(slot.waiting_since(since + 10_000), None);
        assert!(slot.deadline(&l).0 > since + 60_000);
        // The stream ends: its last bytes are sent like any response, then the connection idles.
        slot.response_built();
        assert_eq!(slot.phase.load(Ordering::Relaxed), SENDING);
        slot.flushed();
        assert_eq!(slot.phase.load(Ordering::Relaxed), IDLE);
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let registry = Registry::new(Limits::default(), Arc::default());
        let slot = admitted(registry.admit_at(ip("127.0.0.1"), NOW));
        let l = Limits::default();
        put(&slot, IDLE, 100);
        assert_eq!(slot.deadline(&l), (30_100, Closed::IdleTimeout));
        slot.read(0);
        assert_eq!(slot.phase.load(Ordering::Relaxed), IDLE, "EOF is no byte");
        put(&slot, IDLE, 100);
        slot.read(1);
        let head_since = slot.phase_since.load(Ordering::Relaxed);
        assert_eq!(
            slot.deadline(&l),
            (head_since + 10_000, Closed::HeaderTimeout)
        );
        // More bytes of the same head do not move its deadline.
        slot.read(1);
        assert_eq!(slot.phase_since.load(Ordering::Relaxed), head_since);
        slot.request_started();
        let since = slot.request_since.load(Ordering::Relaxed);
        assert_eq!(slot.deadline(&l), (since + 30_000, Closed::RequestTimeout));
        slot.flushed();
        assert_eq!(slot.phase.load(Ordering::Relaxed), BUSY, "nothing sent yet");
        slot.response_built();
        assert_eq!(slot.deadline(&l), (since + 30_000, Closed::RequestTimeout));
        slot.flushed();
        assert_eq!(slot.phase.load(Ordering::Relaxed), IDLE);
    }
}
