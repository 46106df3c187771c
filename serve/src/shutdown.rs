//! One shared shutdown for the whole process: a signal, or a component that cannot go on, trips it;
//! everyone who must stop watches it.
//!
//! ```text
//!   SIGTERM / SIGINT ──▶ request(grace) ─┐                ┌─▶ HTTP server stops accepting
//!   sink: fatal error ──▶ fail(error) ───┼─▶ Shutdown ────┼─▶ dataflow closes its inputs
//!                                        │   (+deadline)  └─▶ sink: commits what is complete, or gives
//!                                        │                    up once the deadline has passed
//! ```
//!
//! The deadline bounds a shutdown while the database is away: whatever was not committed by then is
//! simply read from Kafka again on the next start (offsets are stored with the data), so giving up
//! loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Shutdown {
    /// Shared with the dataflow, whose workers close their inputs once it is set.
    requested: Arc<AtomicBool>,
    deadline: Mutex<Option<Instant>>,
    failure: Mutex<Option<String>>,
    notify: Notify,
}

impl Shutdown {
    /// Asks everything to finish within `grace`.
    pub fn request(&self, grace: Duration) {
        let mut deadline = self.deadline.lock().expect("shutdown lock");
        if deadline.is_none() {
            *deadline = Some(Instant::now() + grace);
        }
        self.requested.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// A component cannot go on: the process stops, and exits with `error`.
    pub fn fail(&self, error: String) {
        self.failure
            .lock()
            .expect("shutdown lock")
            .get_or_insert(error);
        self.request(Duration::ZERO);
    }

    /// The flag the dataflow watches (`streampulse_dataflow::execute`'s `stop`).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.requested.clone()
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Whether a shutdown was requested and its deadline has passed.
    pub fn is_overdue(&self) -> bool {
        self.deadline
            .lock()
            .expect("shutdown lock")
            .is_some_and(|d| Instant::now() >= d)
    }

    /// Why a component stopped the process, if one did.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().expect("shutdown lock").clone()
    }

    /// Resolves once a shutdown has been requested.
    pub async fn requested(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }

    /// Sleeps for `duration`, or less if the shutdown becomes overdue meanwhile. Returns whether it
    /// is overdue.
    pub fn sleep(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            if self.is_overdue() {
                return true;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        self.is_overdue()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_kept_and_overdue_at_once() {
        let shutdown = Shutdown::default();
        assert!(!shutdown.is_requested() && !shutdown.is_overdue());
        shutdown.fail("first".into());
        shutdown.fail("second".into());
        assert_eq!(shutdown.failure().as_deref(), Some("first"));
        assert!(shutdown.is_requested() && shutdown.is_overdue());
    }

    #[test]
    fn the_grace_period_bounds_the_wait() {
        let shutdown = Shutdown::default();
        shutdown.request(Duration::from_millis(100));
        assert!(!shutdown.is_overdue());
        assert!(shutdown.sleep(Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn waiters_wake() {
        let shutdown = std::sync::Arc::new(Shutdown::default());
        let waiter = tokio::spawn({
            let s = shutdown.clone();
            async move { s.requested().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        shutdown.request(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
