//! Connecting to PostgreSQL: the [`Database`] (URL, schema, timeouts, TLS) and the [`Session`] that
//! puts a deadline on every call.
//!
//! `sslmode=require` in the URL encrypts the connection without verifying the server's certificate
//! (libpq's meaning of `require`); `verify-full` verifies it against the system roots. Every
//! connection has a connect timeout, TCP keepalives and a statement timeout.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres::config::SslMode;
use postgres::{Client, Config, NoTls};
use postgres_openssl::MakeTlsConnector;

use super::migrate::check_schema_name;

/// How long opening a connection may take (unless the URL sets `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a statement may run before the server cancels it (a transient error: retried).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long sent data may stay unacknowledged before the connection counts as dead.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the tables live.
#[derive(Clone)]
pub struct Database {
    config: Config,
    /// The same settings for the async driver (the blocking `Config` does not convert back).
    async_config: tokio_postgres::Config,
    url: String,
    verify: bool,
    pub schema: String,
}

impl Database {
    /// Parses the URL and schema; fails fast on a malformed URL or schema name.
    pub fn new(url: &str, schema: &str) -> anyhow::Result<Database> {
        check_schema_name(schema)?;
        let mut config: Config = url
            .parse()
            .with_context(|| format!("invalid PostgreSQL URL {}", redact(url)))?;
        if config.get_application_name().is_none() {
            // Lets operators (and the TLS test) find our sessions in pg_stat_activity.
            config.application_name("streampulse");
        }
        // Nothing may wait on the database forever: a connect that gets no answer gives up after
        // CONNECT_TIMEOUT, a silent peer is detected by keepalives and TCP_USER_TIMEOUT, and every
        // statement is cancelled after STATEMENT_TIMEOUT (set per session in `connect`). Settings in
        // the URL win.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        let verify = url.contains("sslmode=verify");
        let mut async_config: tokio_postgres::Config = url
            .parse()
            .with_context(|| format!("invalid PostgreSQL URL {}", redact(url)))?;
        async_config
            .application_name(config.get_application_name().unwrap_or("streampulse"))
            .connect_timeout(*config.get_connect_timeout().unwrap_or(&CONNECT_TIMEOUT))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3)
            .tcp_user_timeout(TCP_USER_TIMEOUT);
        Ok(Database {
            config,
            async_config,
            url: url.to_string(),
            verify,
            schema: schema.to_string(),
        })
    }

    /// The URL as given (it may hold a password: never log it; see [`Database::display`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with any password replaced, for logs.
    pub fn display(&self) -> String {
        redact(&self.url)
    }

    /// The TLS connector the URL asks for (`None` with `sslmode=disable`).
    fn tls(&self) -> anyhow::Result<Option<MakeTlsConnector>> {
        if self.config.get_ssl_mode() == SslMode::Disable {
            return Ok(None);
        }
        let mut builder = SslConnector::builder(SslMethod::tls())?;
        if !self.verify {
            builder.set_verify(SslVerifyMode::NONE);
        }
        let mut tls = MakeTlsConnector::new(builder.build());
        if !self.verify {
            tls.set_callback(|config, _| {
                config.set_verify_hostname(false);
                Ok(())
            });
        }
        Ok(Some(tls))
    }

    /// What every session runs first: the schema, and the statement timeout.
    fn session_setup(&self) -> String {
        format!(
            "SET search_path TO {}; SET statement_timeout = {}",
            self.schema,
            STATEMENT_TIMEOUT.as_millis()
        )
    }

    /// Opens a blocking session (for the sink's [`Session`] thread and `streampulse migrate`).
    pub fn connect(&self) -> anyhow::Result<Client> {
        let mut client = match self.tls()? {
            None => self.config.connect(NoTls),
            Some(tls) => self.config.connect(tls),
        }
        .with_context(|| format!("connecting to {}", self.display()))?;
        client.batch_execute(&self.session_setup())?;
        Ok(client)
    }

    /// Opens a session on the async driver, for callers on a tokio runtime (the API): its
    /// connection is driven by a task that ends when the client is dropped or the server goes away,
    /// and the whole attempt is bounded by [`Database::connect_deadline`].
    pub async fn connect_async(&self) -> anyhow::Result<tokio_postgres::Client> {
        let attempt = async {
            let client = match self.tls()? {
                None => spawn_connection(self.async_config.connect(NoTls).await?),
                Some(tls) => spawn_connection(self.async_config.connect(tls).await?),
            };
            client.batch_execute(&self.session_setup()).await?;
            anyhow::Ok(client)
        };
        tokio::time::timeout(self.connect_deadline(), attempt)
            .await
            .map_err(|_| timed_out(format!("{} did not answer in time", self.display())))?
            .with_context(|| format!("connecting to {}", self.display()))
    }

    /// How long a connection attempt may take from first byte to a ready session: the socket-level
    /// `connect_timeout` (which is all the driver bounds) plus time for TLS and authentication.
    pub fn connect_deadline(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT)
            + Duration::from_secs(5)
    }
}

/// Drives an async connection on a task of its own, and hands back its client.
fn spawn_connection<S, T>(
    (client, connection): (tokio_postgres::Client, tokio_postgres::Connection<S, T>),
) -> tokio_postgres::Client
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("a PostgreSQL session ended: {e}");
        }
    });
    client
}

/// A connection that lives on a thread of its own, so that every call on it has a deadline.
///
/// The blocking driver bounds only the socket-level connect: a server that accepts and then never
/// answers (stopped, or a half-open path whose kernel still acknowledges) would block a call
/// forever, since keepalives are answered and nothing stays unacknowledged. Here the caller waits
/// for the thread's answer with a deadline; past it, the thread and its connection are abandoned
/// (they end by themselves once the call returns) and the next call starts afresh on a new thread.
/// At most [`MAX_ABANDONED`] abandoned threads may be pending at once.
pub struct Session {
    db: Database,
    thread: Option<crossbeam_channel::Sender<Job>>,
    abandoned: Arc<AtomicUsize>,
}

type Job = Box<dyn FnOnce(&mut Option<Client>) + Send>;

/// Abandoned session threads allowed to be still blocked before new attempts wait.
pub const MAX_ABANDONED: usize = 4;

/// A call that got no answer in time: an I/O timeout, so it counts as transient.
fn timed_out(what: String) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

impl Session {
    pub fn new(db: Database) -> Session {
        Session {
            db,
            thread: None,
            abandoned: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Runs `call` on the session's connection and waits at most `deadline` for it, or until
    /// `give_up` says so. Connecting first, if needed, has its own deadline
    /// ([`Database::connect_deadline`]). Any error drops the connection.
    pub fn run<T: Send + 'static>(
        &mut self,
        deadline: Duration,
        give_up: &dyn Fn() -> bool,
        call: impl FnOnce(&mut Client) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let db = self.db.clone();
        self.submit(self.db.connect_deadline(), give_up, move |slot| {
            if slot.as_ref().is_none_or(Client::is_closed) {
                *slot = Some(db.connect()?);
            }
            Ok(())
        })?;
        self.submit(deadline, give_up, move |slot| match slot.as_mut() {
            Some(client) => call(client),
            None => Err(timed_out("no PostgreSQL connection".into())),
        })
    }

    /// Runs one job on the session's thread and waits for its answer within `deadline`.
    fn submit<T: Send + 'static>(
        &mut self,
        deadline: Duration,
        give_up: &dyn Fn() -> bool,
        work: impl FnOnce(&mut Option<Client>) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let jobs = self.thread()?;
        let (answer, result) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |slot: &mut Option<Client>| {
            let outcome = work(slot);
            if outcome.is_err() {
                *slot = None;
            }
            let _ = answer.send(outcome);
        });
        if jobs.send(job).is_err() {
            self.thread = None;
            return Err(timed_out("the PostgreSQL session thread stopped".into()));
        }
        let until = Instant::now() + deadline;
        loop {
            match result.recv_timeout(Duration::from_millis(100)) {
                Ok(outcome) => return outcome,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    self.thread = None;
                    return Err(timed_out("the PostgreSQL session thread stopped".into()));
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    if Instant::now() >= until || give_up() {
                        // Dropping the sender ends the thread once its call returns.
                        self.thread = None;
                        return Err(timed_out(format!(
                            "{} did not answer within {deadline:?}",
                            self.db.display()
                        )));
                    }
                }
            }
        }
    }

    /// The session thread's job queue, starting a thread if there is none.
    fn thread(&mut self) -> anyhow::Result<crossbeam_channel::Sender<Job>> {
        if let Some(jobs) = &self.thread {
            return Ok(jobs.clone());
        }
        if self.abandoned.load(Ordering::SeqCst) > MAX_ABANDONED {
            return Err(timed_out(format!(
                "{MAX_ABANDONED} earlier calls to PostgreSQL are still blocked"
            )));
        }
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let alive = self.abandoned.clone();
        alive.fetch_add(1, Ordering::SeqCst);
        std::thread::Builder::new()
            .name("postgres".into())
            .spawn(move || {
                let mut client = None;
                for job in queue {
                    job(&mut client);
                }
                drop(client);
                alive.fetch_sub(1, Ordering::SeqCst);
            })?;
        self.thread = Some(jobs.clone());
        Ok(jobs)
    }
}

/// Replaces the password in a `postgres://user:password@host/db` URL (and `password=` settings).
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        if let (Some(at), Some(colon)) = (rest.find('@'), rest.find(':')) {
            if colon < at {
                out.replace_range(scheme_end + 3 + colon + 1..scheme_end + 3 + at, "***");
            }
        }
    }
    if let Some(start) = out.find("password=") {
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |e| start + e);
        out.replace_range(start + 9..end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_logs() {
        assert_eq!(
            redact("postgres://bob:s3cret@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(
            redact("host=db password=s3cret user=bob"),
            "host=db password=*** user=bob"
        );
    }
}
