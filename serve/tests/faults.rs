//! Fault tests (issue #7) against the real Kafka broker and PostgreSQL server: the pipeline keeps
//! its exactly-once promise while they fail, and `/health` says so while it lasts.
//!
//! All tests read one generated topic (cdn-outage scenario, 50 000 events, 3 partitions) whose
//! golden tables come from one uninterrupted run, itself checked against the oracle. Each test
//! runs into a fresh schema and must end caught up with tables identical to the golden ones:
//!
//! - `postgres_outage_mid_run`: PostgreSQL stopped mid-run (`.ci/services stop postgres`) and
//!   started again; `/health` reports `degraded` / `database: unreachable` within 10 s and
//!   `healthy` / `ok` within 15 s of the restart;
//! - `broker_restart_mid_run`: Kafka stopped cleanly mid-run and started again; `/health` reports
//!   `degraded` / `kafka: unreachable` while it is down (15 s) and `healthy` again (20 s);
//! - `cluster_process_killed`: two processes (`-w 1 -n 2`), process 1 SIGKILLed mid-run; what
//!   process 0 does then is printed ("FINDING"); the cluster is restarted and must end identical;
//! - `random_faults`: a seeded sequence of SIGKILL + restart (on 1 or 2 workers), broker
//!   restarts and PostgreSQL outages at random moments, printed with their times.
//!
//! The `/health` contract checks are collected and asserted last in each test, after the tables,
//! so a missing contract never hides a data bug (and a data bug is reported first).
//!
//! These tests stop and start the services, so they run serially (one lock, see
//! `support::serial`) and the binary must run alone: `serve/Cargo.toml` marks it `test = false`
//! (not part of `cargo test --workspace`) and `.ci/test` runs it as its own step:
//!
//! ```sh
//! cargo test --release -p streampulse --test faults -- --test-threads=1
//! STREAMPULSE_FAULT_SEED=1234 cargo test --release -p streampulse --test faults -- --nocapture random
//! # the long soak: 50 faults in one run
//! STREAMPULSE_FAULTS=50 cargo test --release -p streampulse --test faults -- --nocapture random
//! ```
//!
//! `random_faults` prints its seed first (default: from the clock); STREAMPULSE_FAULT_SEED replays
//! the same plan (kinds, moments, durations, worker counts; the interleaving with the pipeline
//! still depends on timing). STREAMPULSE_FAULTS is the number of faults (default 5).
//!
//! On a machine shared with other work, give the tests services of their own so the shared ones
//! keep running: `export KAFKA_PORT=19092 PGPORT=15432 STREAMPULSE_STATE=~/.cache/streampulse/faults`,
//! then `eval "$(.ci/services up)"` (the tests check that the script manages the services that
//! STREAMPULSE_BROKERS / STREAMPULSE_POSTGRES point at).

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// Events in the shared topic: at the rate caps below a run lasts tens of seconds.
const EVENTS: u64 = 50_000;
/// A run that should be able to finish from scratch, outages excluded.
const CATCH_UP: Duration = Duration::from_secs(240);
/// The consumer prefetches up to 16 MiB (`ingest/src/kafka.rs`): this whole ~10 MB topic, within a
/// second, and a broker outage would then go unnoticed. Runs under fault keep it small, so the
/// consumer needs the broker until the end (the golden run uses the defaults: same tables).
const SMALL_PREFETCH: [&str; 4] = [
    "--kafka-option",
    "queued.max.messages.kbytes=64",
    "--kafka-option",
    "max.partition.fetch.bytes=32768",
];

/// The topic every test reads, and its golden tables.
struct Golden {
    topic: String,
    total: i64,
    tables: Tables,
}

static GOLDEN: OnceLock<Golden> = OnceLock::new();

/// Written and run once per binary, by whichever test comes first (under the serial lock).
fn golden() -> &'static Golden {
    GOLDEN.get_or_init(|| {
        let started = Instant::now();
        let topic = unique("faults");
        generate(&topic, EVENTS, "cdn-outage", &[]);
        let (records, bad) = read_topic(&topic, decode_avro);
        assert_eq!((records.len(), bad), (EVENTS as usize, 0));
        let tables = golden_tables(&topic, &records);
        assert!(tables["event_log"].len() > 100, "a sample of raw events");
        eprintln!(
            "golden: topic {topic}, {EVENTS} events, tables in {:.1?}",
            started.elapsed()
        );
        Golden {
            topic,
            total: EVENTS as i64,
            tables,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The /health contract
// ---------------------------------------------------------------------------------------------

/// `/health` expectations of one test, checked last (see the file's header).
#[derive(Default)]
struct Contract {
    failures: Vec<String>,
}

impl Contract {
    /// Waits up to `timeout` for `/health` to satisfy `check`; records a failure otherwise. An
    /// answer without the contract's fields fails at once: waiting cannot make them appear (and
    /// would stretch every fault by the whole timeout).
    fn expect(&mut self, p: &Pipeline, what: &str, timeout: Duration, check: fn(&Value) -> bool) {
        let started = Instant::now();
        if let Ok(body) = p.health() {
            if ["status", "problems", "database", "kafka"]
                .iter()
                .any(|field| body.get(field).is_none())
            {
                eprintln!("  /health CONTRACT FAILED: {what}; fields missing in {body}");
                self.failures
                    .push(format!("{what}; fields missing in {body}"));
                return;
            }
        }
        match p.wait_health(timeout, check) {
            Ok(_) => eprintln!("  /health: {what} (after {:.1?})", started.elapsed()),
            Err(last) => {
                eprintln!("  /health CONTRACT FAILED: {what}; {last}");
                self.failures.push(format!("{what}; {last}"));
            }
        }
    }

    fn assert(self) {
        assert!(
            self.failures.is_empty(),
            "/health contract not met:\n{}",
            self.failures.join("\n")
        );
    }
}

fn problems(v: &Value) -> Option<usize> {
    v["problems"].as_array().map(Vec::len)
}

/// Both services seen and fine, nothing to report.
fn healthy(v: &Value) -> bool {
    v["status"] == "healthy"
        && problems(v) == Some(0)
        && v["database"] == "ok"
        && v["kafka"] == "ok"
}

fn database_down(v: &Value) -> bool {
    v["status"] == "degraded" && v["database"] == "unreachable" && problems(v) > Some(0)
}

fn kafka_down(v: &Value) -> bool {
    v["status"] == "degraded" && v["kafka"] == "unreachable" && problems(v) > Some(0)
}

// ---------------------------------------------------------------------------------------------
// A run and its faults
// ---------------------------------------------------------------------------------------------

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// A single-process run of the golden topic into `schema`, restartable with the same flags.
struct Run {
    topic: String,
    schema: String,
    extra: Vec<String>,
    pipeline: Pipeline,
}

impl Run {
    fn start(topic: &str, schema: &str, extra: &[String]) -> Run {
        Run {
            topic: topic.to_string(),
            schema: schema.to_string(),
            extra: extra.to_vec(),
            pipeline: Pipeline::start(topic, schema, &strs(extra)),
        }
    }

    /// Starts a new process with the same flags, `workers` workers if given (the old one must be
    /// gone).
    fn restart(&mut self, workers: Option<usize>) {
        assert!(!self.pipeline.alive(), "restart after the process is gone");
        let mut extra = self.extra.clone();
        if let Some(w) = workers {
            extra.extend(["-w".to_string(), w.to_string()]);
        }
        self.pipeline = Pipeline::start(&self.topic, &self.schema, &strs(&extra));
    }

    fn committed(&self) -> i64 {
        committed_offsets(&self.schema, &self.topic)
    }

    /// Fails unless the process is still running.
    fn assert_alive(&mut self, when: &str) {
        if let Some(status) = self.pipeline.exit_status() {
            panic!(
                "the pipeline exited ({status}) {when}:\n{}",
                self.pipeline.log_tail(60)
            );
        }
    }

    /// Waits until at least `records` are committed (and the run is alive).
    fn wait_committed(&mut self, records: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.committed() < records {
            self.assert_alive("before the fault");
            assert!(
                Instant::now() < deadline,
                "fewer than {records} records committed after {timeout:?}:\n{}",
                self.pipeline.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sleeps `duration`, failing as soon as the process exits.
    fn run_for(&mut self, duration: Duration, when: &str) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.assert_alive(when);
            let left = until.saturating_duration_since(Instant::now());
            std::thread::sleep(Duration::from_millis(100).min(left));
        }
    }
}

/// PostgreSQL away for at least `hold`: the process keeps running and answering, `/health` says
/// so, then it recovers. Returns a description.
fn postgres_outage(run: &mut Run, contract: &mut Contract, hold: Duration) -> String {
    let outage = Outage::begin(Service::Postgres);
    let stopped = outage.began.elapsed();
    contract.expect(
        &run.pipeline,
        "PostgreSQL down: degraded, database unreachable within 10 s",
        Duration::from_secs(10),
        database_down,
    );
    run.run_for(
        hold.saturating_sub(outage.began.elapsed()),
        "while PostgreSQL was down",
    );
    if let Err(e) = run.pipeline.health() {
        panic!("the API stopped answering while PostgreSQL was down: {e}");
    }
    let away = outage.end();
    contract.expect(
        &run.pipeline,
        "PostgreSQL back: healthy, database ok within 15 s",
        Duration::from_secs(15),
        healthy,
    );
    run.assert_alive("after PostgreSQL came back");
    format!("PostgreSQL outage of {away:.1?} (stop took {stopped:.1?})")
}

/// The broker stopped cleanly for at least `hold`, then started again (which itself takes ~10 s).
/// Returns a description and the events read by the time the broker was back.
fn broker_outage(run: &mut Run, contract: &mut Contract, hold: Duration) -> (String, i64) {
    let outage = Outage::begin(Service::Kafka);
    let at_stop = events_read(&run.pipeline);
    let stopped = outage.began.elapsed();
    contract.expect(
        &run.pipeline,
        "Kafka down: degraded, kafka unreachable within 15 s",
        Duration::from_secs(15),
        kafka_down,
    );
    run.run_for(
        hold.saturating_sub(outage.began.elapsed()),
        "while Kafka was down",
    );
    if let Err(e) = run.pipeline.health() {
        panic!("the API stopped answering while Kafka was down: {e}");
    }
    let before_restart = events_read(&run.pipeline);
    let away = outage.end();
    contract.expect(
        &run.pipeline,
        "Kafka back: healthy, kafka ok within 20 s",
        Duration::from_secs(20),
        healthy,
    );
    run.assert_alive("after Kafka came back");
    let what = format!(
        "broker restart, away {away:.1?} (stop took {stopped:.1?}), events read {at_stop} → {before_restart} while down"
    );
    (what, before_restart)
}

/// SIGKILL, `pause`, then a new process (on `workers` workers).
fn kill_and_restart(run: &mut Run, pause: Duration, workers: usize) -> String {
    let pid = run.pipeline.pid();
    run.pipeline.kill();
    std::thread::sleep(pause);
    let started = Instant::now();
    run.restart(Some(workers));
    format!(
        "SIGKILL pid {pid}, restarted after {pause:.1?} on {workers} worker(s), API up in {:.1?}",
        started.elapsed()
    )
}

/// The flags of a run under fault: reading capped at `events_per_s`, a small prefetch.
fn rate_cap(events_per_s: u64) -> Vec<String> {
    let mut flags = vec!["--max-rate".to_string(), events_per_s.to_string()];
    flags.extend(SMALL_PREFETCH.map(String::from));
    flags
}

/// Events the pipeline has read so far (`/health`'s `events`).
fn events_read(p: &Pipeline) -> i64 {
    let health = p.health().unwrap_or_else(|e| panic!("/health: {e}"));
    health["events"]
        .as_i64()
        .unwrap_or_else(|| panic!("/health without events: {health}"))
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn postgres_outage_mid_run() {
    let _serial = serial();
    assert_services_are_ours();
    let golden = golden();
    let schema = unique("db_outage");
    let mut contract = Contract::default();
    // 2 000 events/s: about 25 s of reading, so the outage lands mid-run.
    let mut run = Run::start(&golden.topic, &schema, &rate_cap(2_000));
    run.wait_committed(golden.total / 10, Duration::from_secs(60));
    contract.expect(
        &run.pipeline,
        "before the outage: healthy",
        Duration::from_secs(5),
        healthy,
    );
    let before = run.committed();
    let retries = run
        .pipeline
        .metric("streampulse_sink_retries_total")
        .expect("the sink's retry counter");
    assert!(before < golden.total, "the outage must land mid-run");
    let what = postgres_outage(&mut run, &mut contract, Duration::from_secs(6));
    eprintln!(
        "{what}, {before} of {} records committed before",
        golden.total
    );
    let retried = run
        .pipeline
        .metric("streampulse_sink_retries_total")
        .unwrap();
    assert!(
        retried > retries,
        "the sink met the outage (retries {retries} → {retried})"
    );
    wait_caught_up(&schema, &golden.topic, &mut [&mut run.pipeline], CATCH_UP);
    run.pipeline.kill();
    assert_same_tables(&golden.tables, &schema, "after a PostgreSQL outage");
    drop_schema(&schema);
    contract.assert();
}

#[test]
fn broker_restart_mid_run() {
    let _serial = serial();
    assert_services_are_ours();
    let golden = golden();
    let schema = unique("broker_restart");
    let mut contract = Contract::default();
    let mut run = Run::start(&golden.topic, &schema, &rate_cap(2_000));
    run.wait_committed(golden.total / 10, Duration::from_secs(60));
    contract.expect(
        &run.pipeline,
        "before the outage: healthy",
        Duration::from_secs(5),
        healthy,
    );
    let before = run.committed();
    assert!(before < golden.total, "the restart must land mid-run");
    let (what, read_while_down) = broker_outage(&mut run, &mut contract, Duration::from_secs(5));
    eprintln!(
        "{what}, {before} of {} records committed before",
        golden.total
    );
    assert!(
        read_while_down < golden.total,
        "the outage must keep the pipeline from reading (it read all {read_while_down} events while the broker was down)"
    );
    wait_caught_up(&schema, &golden.topic, &mut [&mut run.pipeline], CATCH_UP);
    run.pipeline.kill();
    assert_same_tables(&golden.tables, &schema, "after a broker restart");
    drop_schema(&schema);
    contract.assert();
}

/// Both processes, process 1 first (process 0 waits for its API below).
fn start_cluster(topic: &str, schema: &str, extra: &[String]) -> (Pipeline, Pipeline) {
    let hosts = hostfile(2);
    let p1 = cluster_process(topic, schema, NEVER_IDLE, &hosts, 1, extra);
    let p0 = cluster_process(topic, schema, NEVER_IDLE, &hosts, 0, extra);
    (p0, p1)
}

/// How much of process 0's log the cluster test searches for panics.
const LOG_LINES_SCANNED: usize = 2000;

#[test]
fn cluster_process_killed() {
    let _serial = serial();
    assert_services_are_ours();
    let golden = golden();
    let schema = unique("cluster");
    let topic = golden.topic.as_str();
    let (mut p0, mut p1) = start_cluster(topic, &schema, &rate_cap(1_500));
    let deadline = Instant::now() + Duration::from_secs(90);
    while committed_offsets(&schema, topic) < golden.total / 10 {
        for p in [&mut p0, &mut p1] {
            assert!(p.alive(), "{} exited early:\n{}", p.label, p.log_tail(40));
        }
        assert!(
            Instant::now() < deadline,
            "the cluster committed too little in 90 s:\n{}\n{}",
            p0.log_tail(40),
            p1.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = committed_offsets(&schema, topic);
    assert!(before < golden.total, "the kill must land mid-run");
    p1.kill();
    let killed = Instant::now();

    // What does process 0 do now? Watch it for 20 s: exit status, API, commits, log.
    let mut exited = None;
    let (mut answers, mut failures, mut last_health) = (0, 0, String::new());
    while killed.elapsed() < Duration::from_secs(20) {
        if let Some(status) = p0.exit_status() {
            exited = Some((status, killed.elapsed()));
            break;
        }
        match p0.health() {
            Ok(v) => {
                answers += 1;
                last_health = v.to_string();
            }
            Err(e) => {
                failures += 1;
                last_health = e;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = committed_offsets(&schema, topic);
    // A panic's message is on the line after "thread '…' panicked at …".
    let log = p0.log_tail(LOG_LINES_SCANNED);
    let lines: Vec<&str> = log.lines().collect();
    let panics: Vec<String> = lines
        .windows(2)
        .filter(|w| w[0].contains("panicked at"))
        .map(|w| format!("{} {}", w[0], w[1]))
        .collect();
    let errors = p0.log_lines_with("ERROR");
    let behaviour = match exited {
        Some((status, at)) => format!("exited with {status} {at:.1?} after the kill"),
        None => format!(
            "still running 20 s after the kill; /health answered {answers}x, failed {failures}x, last: {last_health}"
        ),
    };
    eprintln!(
        "FINDING: process 1 SIGKILLed with {before}/{} committed; process 0 {behaviour}; \
         committed since the kill: {}; panics in its log: {}; errors: {}",
        golden.total,
        after - before,
        panics.len(),
        errors.len()
    );
    for line in panics.iter().chain(&errors).take(10) {
        eprintln!("  process 0: {line}");
    }

    // Restart the whole cluster (what a supervisor would do) and let it finish.
    p0.kill();
    let (mut p0, mut p1) = start_cluster(topic, &schema, &[]);
    wait_caught_up(&schema, topic, &mut [&mut p0, &mut p1], CATCH_UP);
    p0.kill();
    p1.kill();
    assert_same_tables(&golden.tables, &schema, "after killing a cluster process");
    drop_schema(&schema);
}

/// SplitMix64: a tiny seeded generator, so a printed seed replays the same plan.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

#[derive(Debug)]
enum Kind {
    /// SIGKILL, a pause, restart on this many workers.
    Kill {
        pause: Duration,
        workers: usize,
    },
    Broker {
        hold: Duration,
    },
    Postgres {
        hold: Duration,
    },
}

struct Fault {
    /// Time the pipeline runs undisturbed before this fault.
    after: Duration,
    kind: Kind,
}

impl Fault {
    /// Roughly how long the fault takes, recovery included (for the rate plan): a restart and its
    /// API; a broker stop (~3 s) and start (~12 s); PostgreSQL's restart and the sink's backoff.
    fn estimated(&self) -> Duration {
        match self.kind {
            Kind::Kill { pause, .. } => pause + Duration::from_secs(3),
            Kind::Broker { hold } => hold.max(Duration::from_secs(15)) + Duration::from_secs(5),
            Kind::Postgres { hold } => hold + Duration::from_secs(4),
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not a number")),
    )
}

#[test]
fn random_faults() {
    let _serial = serial();
    let seed = env_number("STREAMPULSE_FAULT_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            % 1_000_000_000
    });
    let count = env_number("STREAMPULSE_FAULTS").unwrap_or(5) as usize;
    eprintln!(
        "random faults: seed {seed}, {count} faults (replay: STREAMPULSE_FAULT_SEED={seed} STREAMPULSE_FAULTS={count})"
    );
    assert_services_are_ours();
    let golden = golden();

    let mut rng = Rng(seed);
    let workers = rng.between(1, 3) as usize;
    // The first three faults are each kind once, in a random order; the others are drawn freely.
    let mut kinds = [0, 1, 2];
    for i in (1..kinds.len()).rev() {
        kinds.swap(i, rng.between(0, i as u64 + 1) as usize);
    }
    let plan: Vec<Fault> = (0..count)
        .map(|i| {
            let after = Duration::from_millis(rng.between(1_000, 6_000));
            let kind = kinds.get(i).copied().unwrap_or_else(|| rng.between(0, 3));
            let kind = match kind {
                0 => Kind::Kill {
                    pause: Duration::from_millis(rng.between(0, 2_000)),
                    workers: rng.between(1, 3) as usize,
                },
                1 => Kind::Broker {
                    hold: Duration::from_millis(rng.between(1_000, 6_000)),
                },
                _ => Kind::Postgres {
                    hold: Duration::from_millis(rng.between(1_000, 8_000)),
                },
            };
            Fault { after, kind }
        })
        .collect();
    // Cap the reading rate so that reading the topic takes 1.5 times the plan: most faults land
    // mid-run. (The cap is a budget since the process started: after an outage the pipeline
    // catches up, so outages do not stretch the run; a restart starts a new budget.)
    let planned: Duration = plan.iter().map(|f| f.after + f.estimated()).sum();
    let rate = (golden.total as u64 * 1000 / (planned.as_millis() as u64 * 3 / 2).max(1))
        .clamp(20, 20_000);
    eprintln!("plan: start on {workers} worker(s), reading capped at {rate} events/s");
    for (i, fault) in plan.iter().enumerate() {
        eprintln!(
            "  {:>3}. after {:.1?}: {:?}",
            i + 1,
            fault.after,
            fault.kind
        );
    }

    let schema = unique("random");
    let mut contract = Contract::default();
    let mut extra = rate_cap(rate);
    extra.extend(["-w".to_string(), workers.to_string()]);
    let mut run = Run::start(&golden.topic, &schema, &extra);
    run.extra = rate_cap(rate); // restarts choose their own worker count
    let started = Instant::now();
    let mut mid_run = 0;
    for (i, fault) in plan.iter().enumerate() {
        run.run_for(
            fault.after,
            &format!("before fault {} (seed {seed})", i + 1),
        );
        let committed = run.committed();
        if committed < golden.total {
            mid_run += 1;
        }
        let at = started.elapsed();
        let what = match fault.kind {
            Kind::Kill { pause, workers } => kill_and_restart(&mut run, pause, workers),
            Kind::Broker { hold } => broker_outage(&mut run, &mut contract, hold).0,
            Kind::Postgres { hold } => postgres_outage(&mut run, &mut contract, hold),
        };
        eprintln!(
            "fault {}/{count} at {at:.1?} with {committed}/{} committed: {what}",
            i + 1,
            golden.total
        );
    }
    // The catch-up ends on one worker, after a clean stop (SIGTERM, which must exit promptly).
    // With two workers and partitions that never go idle, records a worker reads once its own
    // watermark is past the global one are not committed until another partition speaks or goes
    // idle, so the end of a finished topic may never be committed (a known bug, not a fault).
    if !run.pipeline.terminate(Duration::from_secs(30)) {
        panic!(
            "seed {seed}: SIGTERM did not stop the pipeline within 30 s:\n{}",
            run.pipeline.log_tail(40)
        );
    }
    run.restart(Some(1));
    wait_caught_up(&schema, &golden.topic, &mut [&mut run.pipeline], CATCH_UP);
    run.pipeline.kill();
    eprintln!(
        "caught up {:.1?} after the start; {mid_run} of {count} faults landed mid-run",
        started.elapsed()
    );
    assert_same_tables(
        &golden.tables,
        &schema,
        &format!("seed {seed} ({count} faults)"),
    );
    drop_schema(&schema);
    assert!(
        mid_run * 2 >= count,
        "seed {seed}: only {mid_run} of {count} faults landed before the run caught up"
    );
    contract.assert();
}
