//! Taking one shared service away and bringing it back (`.ci/services stop|start`): the guard
//! ([`Outage`]) that restarts it even when the test fails midway, the check that the script manages
//! the very services the tests talk to, and the lock ([`serial`]) that keeps such tests from
//! overlapping within a test binary. Only the fault tests use this.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{brokers, postgres_url};

/// The services script the fault tests drive.
pub const SERVICES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/services");

static SERIAL: Mutex<()> = Mutex::new(());

/// Tests that take services away hold this for their whole run, so they never overlap within a
/// binary (run such a binary alone: other binaries' tests would see the outages too). A test that
/// failed poisons nothing: the next one just takes the lock.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Kafka,
    Postgres,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Kafka => "kafka",
            Service::Postgres => "postgres",
        }
    }
}

/// Runs `.ci/services ARGS`, killing it after `timeout`; its output is returned on failure and
/// printed (captured by the test harness) on success.
pub fn services(args: &[&str], timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(SERVICES)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{SERVICES}: {e}"))?;
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The broker it starts inherits no pipe of ours (it redirects to its log), so this ends.
    let text = stderr.join().unwrap_or_default() + &stdout.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => {
            eprint!("{text}");
            Ok(())
        }
        Some(s) => Err(format!("services {args:?}: {s}\n{text}")),
        None => Err(format!(
            "services {args:?}: no answer in {timeout:?}\n{text}"
        )),
    }
}

/// Fails unless `.ci/services` manages the very broker and database the tests talk to (the
/// script reads KAFKA_PORT / PGPORT / STREAMPULSE_STATE; the tests STREAMPULSE_BROKERS /
/// STREAMPULSE_POSTGRES): stopping "the" broker must stop ours, never someone else's.
pub fn assert_services_are_ours() {
    let output = Command::new(SERVICES)
        .arg("env")
        .output()
        .expect("runs .ci/services env");
    let text = String::from_utf8_lossy(&output.stdout);
    let var = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .map(str::to_string)
    };
    assert_eq!(
        (var("STREAMPULSE_BROKERS"), var("STREAMPULSE_POSTGRES")),
        (Some(brokers()), Some(postgres_url())),
        ".ci/services (KAFKA_PORT, PGPORT, STREAMPULSE_STATE) must manage the services the tests use \
         (STREAMPULSE_BROKERS, STREAMPULSE_POSTGRES); eval \"$(.ci/services env)\" with the same settings"
    );
}

/// How long a service may take to stop or start before the test gives up.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(240);

/// A service taken away by a test. [`Outage::end`] starts it again and waits until it answers;
/// dropping an outage that was not ended (a failed assertion) starts it too.
pub struct Outage {
    pub service: Service,
    pub began: Instant,
    ended: bool,
}

impl Outage {
    /// Stops `service` (Kafka: a clean shutdown; PostgreSQL: `pg_ctl -m fast`).
    pub fn begin(service: Service) -> Outage {
        let outage = Outage {
            service,
            began: Instant::now(),
            ended: false,
        };
        // The guard exists before the stop: a stop that fails halfway is still undone.
        if let Err(e) = services(&["stop", service.name()], SERVICE_TIMEOUT) {
            panic!("stopping {}: {e}", service.name());
        }
        outage
    }

    /// Starts the service again and waits until it answers; returns how long it was away.
    pub fn end(mut self) -> Duration {
        self.ended = true;
        if let Err(e) = services(&["start", self.service.name()], SERVICE_TIMEOUT) {
            panic!("starting {} again: {e}", self.service.name());
        }
        self.began.elapsed()
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if !self.ended {
            if let Err(e) = services(&["start", self.service.name()], SERVICE_TIMEOUT) {
                eprintln!("could not start {} again: {e}", self.service.name());
            }
        }
    }
}
