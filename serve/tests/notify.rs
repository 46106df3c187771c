//! Alert episodes and their notifications, against a real Kafka broker, a real PostgreSQL server,
//! and a receiver that misbehaves: every episode transition reaches it at least once and,
//! deduplicated by its idempotency key, exactly once, across SIGKILLs of the processor; the stored
//! episodes are the runs of the alerts an independent recomputation finds.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use streampulse_dataflow::oracle::recompute;
use streampulse_dataflow::{Config, Derived};
use streampulse_ingest::generator::Scenario;
use streampulse_ingest::{Encoder, Generator};
use support::*;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Receipt {
    key: String,
    body: Value,
    /// Whether it answered 2xx.
    acknowledged: bool,
    at: Instant,
}

/// A webhook receiver that fails, hangs past the notifier's timeout, answers slowly, drops the
/// connection, or accepts, at random (seeded).
struct Receiver {
    port: u16,
    receipts: Arc<Mutex<Vec<Receipt>>>,
}

impl Receiver {
    fn start(seed: u64) -> Receiver {
        Receiver::start_with(Some(seed))
    }

    /// With a seed, misbehaves at random; without, accepts everything.
    fn start_with(seed: Option<u64>) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let receipts: Arc<Mutex<Vec<Receipt>>> = Arc::default();
        let shared = receipts.clone();
        std::thread::spawn(move || {
            let mut rng = seed.unwrap_or(0);
            for stream in listener.incoming().map_while(Result::ok) {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let roll = if seed.is_some() {
                    (rng >> 33) % 100
                } else {
                    99
                };
                let receipts = shared.clone();
                std::thread::spawn(move || serve(stream, roll, &receipts));
            }
        });
        Receiver { port, receipts }
    }

    /// A receiver that accepts every request at once.
    fn reliable() -> Receiver {
        Receiver::start_with(None)
    }

    fn receipts(&self) -> Vec<Receipt> {
        self.receipts.lock().unwrap().clone()
    }
}

/// Answers one request (the notifier may reuse a connection: each request rolls again).
fn serve(stream: TcpStream, mut roll: u64, receipts: &Mutex<Vec<Receipt>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut length = 0usize;
        let mut key = String::new();
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "idempotency-key" => key = value.trim().to_string(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let (status, delay, drop) = match roll {
            0..=24 => (500, 0, false),     // fails
            25..=34 => (200, 2500, false), // answers after the notifier gave up (timeout 1 s)
            35..=49 => (200, 300, false),  // slow but in time
            50..=54 => (0, 0, true),       // drops the connection without answering
            _ => (200, 0, false),
        };
        receipts.lock().unwrap().push(Receipt {
            key,
            body,
            acknowledged: status == 200 && delay < 1000 && !drop,
            at: Instant::now(),
        });
        if drop {
            return;
        }
        std::thread::sleep(Duration::from_millis(delay));
        let reason = if status == 200 {
            "OK"
        } else {
            "Internal Server Error"
        };
        let answer = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 2\r\n\r\nok");
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
        if roll != 99 {
            roll = (roll * 37 + 11) % 100;
        }
    }
}

/// A topic whose alerts come and go: the generator's clean stream, with every event of some
/// (region, window) cells turned into a CDN timeout, so rules fire in runs with gaps between.
/// Returns the topic's name.
fn flapping_topic(windows: i64, seed: u64) -> String {
    let topic = unique("episodes");
    create_topic(&topic, 2);
    let window_ms = Config::default().window_ms;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let start = (now / window_ms - windows) * window_ms;
    let rate = 40.0;
    let generator = Generator::new(seed, Scenario::Clean, start, rate);
    let encoder = Encoder::new();
    let count = (windows as f64 * window_ms as f64 / 1000.0 * rate) as u64;
    let faulty = |region: &str, window: i64| {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
        for b in format!("{region}|{window}").bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        h % 100 < 35
    };
    let mut events = Vec::new();
    for i in 0..count {
        let mut event = generator.event(i);
        let window = event.timestamp.div_euclid(window_ms);
        // The last window fails everywhere, so the newest episodes are critical and unconfirmed.
        let last = window == start / window_ms + windows - 1;
        if (last || faulty(&event.user_context.region, window)) && i % 3 != 0 {
            event.download.status = "failed".into();
            event.download.error_code = Some("cdn_timeout".into());
            event.download.error_message = Some("CDN timed out".into());
        }
        events.push(((i % 2) as i32, encoder.encode(&event)));
    }
    produce(&topic, &events);
    topic
}

/// The runs of consecutive alert windows per (rule, region) among the recomputed alerts: what the
/// stored episodes (other than withdrawn ones) must be. Written independently of the sink's code.
fn expected_runs(alerts: &[(String, String, i64, String)], window_ms: i64) -> BTreeSet<String> {
    let mut by_key: BTreeMap<(String, String), Vec<(i64, String)>> = BTreeMap::new();
    for (rule, region, start, severity) in alerts {
        by_key
            .entry((rule.clone(), region.clone()))
            .or_default()
            .push((*start, severity.clone()));
    }
    let mut out = BTreeSet::new();
    for ((rule, region), mut windows) in by_key {
        windows.sort();
        let mut i = 0;
        while i < windows.len() {
            let mut j = i;
            while j + 1 < windows.len() && windows[j + 1].0 == windows[j].0 + window_ms {
                j += 1;
            }
            let worst = if windows[i..=j].iter().any(|(_, s)| s == "CRITICAL") {
                "CRITICAL"
            } else {
                "WARNING"
            };
            out.insert(format!(
                "{rule} {region} {} {} {} {worst}",
                windows[i].0,
                windows[j].0,
                j - i + 1
            ));
            i = j + 1;
        }
    }
    out
}

#[test]
fn every_transition_reaches_a_flaky_receiver_once_per_key_across_kills() {
    let window_ms = Config::default().window_ms;
    let topic = flapping_topic(12, 7);
    let (records, bad) = read_topic(&topic, decode_avro);
    assert_eq!(bad, 0);
    let receiver = Receiver::start(11);
    let hook = format!("http://127.0.0.1:{}/hook", receiver.port);
    let schema = Schema::new("notify");
    let flags = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--notify-webhook",
            &hook,
            "--notify-timeout",
            "1",
            "--notify-retry-min",
            "0.1",
            "--notify-retry-max",
            "0.5",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect()
    };

    // SIGKILL at random moments while it reads and notifies; restart each time.
    let mut seed = std::process::id() as u64;
    let mut killed_with_pending = 0;
    let mut metrics_failed = 0.0;
    for round in 0..4 {
        let args = flags(&["--max-rate", "4000"]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut run = Pipeline::start_with(&postgres_url(), &topic, &schema.0, "2", &args);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let wait = 1_000 + (seed >> 33) % 3_000;
        std::thread::sleep(Duration::from_millis(wait));
        assert!(
            run.alive(),
            "round {round}: died by itself\n{}",
            run.log_tail(40)
        );
        // Each process counts its own attempts: add them up over the runs.
        metrics_failed += run.metric(FAILED_METRIC).unwrap_or(0.0);
        run.kill();
        let pending = pending(&schema.0);
        eprintln!(
            "round {round}: killed after {wait} ms: {} of {} records committed, {pending} notifications pending, {} requests received",
            committed_offsets(&schema.0, &topic),
            records.len(),
            receiver.receipts().len()
        );
        if pending > 0 {
            killed_with_pending += 1;
        }
    }

    // The last run catches up and delivers everything.
    let args = flags(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut run = Pipeline::start_with(&postgres_url(), &topic, &schema.0, "2", &args);
    wait_caught_up(&schema.0, &topic, &mut [&mut run], Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(90);
    while pending(&schema.0) > 0 {
        assert!(
            Instant::now() < deadline,
            "notifications still pending after 90 s\n{}",
            run.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = run.health().expect("health answers");
    metrics_failed += run.metric(FAILED_METRIC).unwrap_or(0.0);
    run.kill();
    eprintln!(
        "kills with notifications pending: {killed_with_pending}; health: {}",
        health["notifications"]
    );

    // The episodes are the runs of the recomputed alerts.
    let oracle = recompute(&records, &Config::default());
    let alerts: Vec<(String, String, i64, String)> = oracle
        .derived
        .iter()
        .filter_map(|d| match d {
            Derived::Alert(a) => Some((
                a.rule.name().to_string(),
                a.region.clone(),
                a.window.0,
                a.severity.name().to_string(),
            )),
            _ => None,
        })
        .collect();
    let expected = expected_runs(&alerts, window_ms);
    let mut client = pg();
    let episodes = query(
        &mut client,
        &format!(
            "SELECT id, alert_type, region, (extract(epoch FROM first_window) * 1000)::bigint,
                 (extract(epoch FROM last_window) * 1000)::bigint, windows, severity, state, confirmed
             FROM {}.episodes",
            schema.0
        ),
    );
    let stored: BTreeSet<String> = episodes
        .iter()
        .filter(|r| r.get::<_, String>(7) != "withdrawn")
        .map(|r| {
            format!(
                "{} {} {} {} {} {}",
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, i64>(3),
                r.get::<_, i64>(4),
                r.get::<_, i32>(5),
                r.get::<_, String>(6)
            )
        })
        .collect();
    assert_eq!(stored, expected, "episodes are the runs of the alerts");
    let watermark = stored_watermark(&schema.0, &topic).expect("a watermark was stored");
    let mut resolved = 0;
    for r in &episodes {
        let (last, state): (i64, String) = (r.get(4), r.get(7));
        if state == "withdrawn" {
            continue;
        }
        let over = last + 2 * window_ms <= watermark;
        assert_eq!(
            state == "resolved",
            over,
            "state of episode {}",
            r.get::<_, i64>(0)
        );
        resolved += usize::from(over);
    }
    assert!(resolved >= 3, "the topic resolves episodes ({resolved})");

    // Every transition of every confirmed episode was notified (the webhook takes "opened" once
    // the first window is final: a withdrawn episode pages nobody): opened, and resolved once
    // closed.
    let mut transitions = BTreeSet::new();
    for r in &episodes {
        let (id, state, confirmed): (i64, String, bool) = (r.get(0), r.get(7), r.get(8));
        assert!(
            !(confirmed && state == "withdrawn"),
            "a confirmed episode cannot be withdrawn"
        );
        if confirmed {
            transitions.insert(format!("streampulse-episode-{id}-opened"));
        }
        if confirmed && state != "open" {
            transitions.insert(format!("streampulse-episode-{id}-resolved"));
        }
    }
    let outbox: BTreeMap<String, String> = query(
        &mut client,
        &format!(
            "SELECT idempotency_key, state FROM {}.notification_outbox",
            schema.0
        ),
    )
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect();
    assert_eq!(
        outbox.keys().cloned().collect::<BTreeSet<_>>(),
        transitions,
        "one outbox row per transition"
    );
    assert!(outbox.values().all(|s| s == "delivered"), "{outbox:?}");

    // At the receiver: every key at least once accepted; deduplicated, exactly the transitions;
    // the same body on every retry; "opened" before "resolved".
    let receipts = receiver.receipts();
    let accepted: BTreeSet<String> = receipts
        .iter()
        .filter(|r| r.acknowledged)
        .map(|r| r.key.clone())
        .collect();
    let received: BTreeSet<String> = receipts.iter().map(|r| r.key.clone()).collect();
    assert_eq!(
        received, transitions,
        "deduplicated by key: exactly once each"
    );
    assert_eq!(accepted, transitions, "each accepted at least once");
    let retried = receipts.len() - received.len();
    assert!(retried > 0, "the receiver's failures caused retries");
    assert!(
        metrics_failed > 0.0,
        "failed attempts are counted in /metrics (summed over the runs)"
    );
    let (rows, attempts): (i64, i64) = {
        let row = &query(
            &mut client,
            &format!(
                "SELECT count(*), sum(attempts)::bigint FROM {}.notification_outbox",
                schema.0
            ),
        )[0];
        (row.get(0), row.get(1))
    };
    assert!(attempts > rows, "failed attempts are counted in the table");
    let mut first_body: BTreeMap<&str, &Value> = BTreeMap::new();
    for r in &receipts {
        let body = first_body.entry(&r.key).or_insert(&r.body);
        assert_eq!(*body, &r.body, "a retry carries the same body ({})", r.key);
        assert_eq!(r.body["idempotency_key"], r.key.as_str());
    }
    for r in &episodes {
        let id: i64 = r.get(0);
        let first = |t: &str| {
            let key = format!("streampulse-episode-{id}-{t}");
            receipts.iter().find(|r| r.key == key).map(|r| r.at)
        };
        if let (Some(opened), Some(resolved)) = (first("opened"), first("resolved")) {
            assert!(opened <= resolved, "episode {id}: resolved before opened");
        }
    }
    eprintln!(
        "{} episodes ({} withdrawn), {} transitions, {} requests ({retried} repeats)",
        episodes.len(),
        episodes
            .iter()
            .filter(|r| r.get::<_, String>(7) == "withdrawn")
            .count(),
        transitions.len(),
        receipts.len()
    );
}

/// The notifier's count of failed attempts to the test's webhook, in `/metrics`.
const FAILED_METRIC: &str =
    "streampulse_notifications_total{destination=\"webhook\",outcome=\"failed\"}";

/// Notifications not yet delivered (0 before the schema exists).
fn pending(schema: &str) -> i64 {
    pg().query_one(
        &format!("SELECT count(*) FROM {schema}.notification_outbox WHERE state = 'pending'"),
        &[],
    )
    .map(|r| r.get(0))
    .unwrap_or(0)
}

/// Two destinations from a config file (a provisional webhook with a secret header, a CRITICAL-only
/// PagerDuty one), the episodes API, and acknowledgement: it notifies where "opened" went, once,
/// with PagerDuty's dedup_key of the trigger; no secret reaches the log.
#[test]
fn episodes_api_acknowledgement_and_formats() {
    let topic = flapping_topic(8, 3);
    let ops = Receiver::reliable();
    let pager = Receiver::reliable();
    let secret = format!("s3cret-{}", std::process::id());
    // The child inherits the variable; the config file names it, never the value.
    std::env::set_var("SP_TEST_NOTIFY_SECRET", &secret);
    let config = std::env::temp_dir().join(format!("{}.json", unique("notify")));
    std::fs::write(
        &config,
        format!(
            r#"{{"destinations": [
                {{"name": "ops", "format": "webhook", "when": "provisional",
                  "url": "http://127.0.0.1:{}/hook?token=${{SP_TEST_NOTIFY_SECRET}}",
                  "headers": {{"Authorization": "Bearer ${{SP_TEST_NOTIFY_SECRET}}"}}}},
                {{"name": "pager", "format": "pagerduty", "url": "http://127.0.0.1:{}/v2/enqueue",
                  "routing_key": "${{SP_TEST_NOTIFY_SECRET}}", "min_severity": "CRITICAL"}}]}}"#,
            ops.port, pager.port
        ),
    )
    .unwrap();
    let schema = Schema::new("episodes_api");
    let config_flag = config.display().to_string();
    let mut run = Pipeline::start_with(
        &postgres_url(),
        &topic,
        &schema.0,
        "2",
        &["--notify-config", &config_flag, "--ack-token", "tok"],
    );
    wait_caught_up(&schema.0, &topic, &mut [&mut run], Duration::from_secs(120));
    let deadline = Instant::now() + Duration::from_secs(60);
    while pending(&schema.0) > 0 {
        assert!(Instant::now() < deadline, "{}", run.log_tail(30));
        std::thread::sleep(Duration::from_millis(200));
    }
    let api = run.api();

    // The list matches the table, with each episode's notifications.
    let all = request(api, "GET", "/api/episodes?state=all&limit=500", &[], b"").unwrap();
    assert_eq!(all.status, 200);
    let all = all.json();
    let mut client = pg();
    let stored: i64 = query(
        &mut client,
        &format!("SELECT count(*) FROM {}.episodes", schema.0),
    )[0]
    .get(0);
    assert_eq!(all["count"].as_i64(), Some(stored));
    assert!(stored > 0);
    let list = all["episodes"].as_array().unwrap();
    let withdrawn = list.iter().filter(|e| e["state"] == "withdrawn").count();
    for e in list {
        let notified: BTreeSet<(String, String)> = e["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                assert_eq!(n["state"], "delivered", "{n}");
                (
                    n["destination"].as_str().unwrap().to_string(),
                    n["transition"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // The provisional webhook heard of every episode, withdrawn ones included.
        assert!(notified.contains(&("ops".into(), "opened".into())), "{e}");
        if e["state"] != "open" {
            assert!(notified.contains(&("ops".into(), "resolved".into())), "{e}");
        }
        // PagerDuty: CRITICAL and confirmed only.
        let paged = notified.contains(&("pager".into(), "opened".into()));
        assert_eq!(
            paged,
            e["severity"] == "CRITICAL" && e["confirmed"] == true,
            "{e}"
        );
    }
    let current = request(api, "GET", "/api/episodes", &[], b"")
        .unwrap()
        .json();
    assert!(current["episodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["state"] != "withdrawn"));
    request(api, "GET", "/api/episodes?state=maybe", &[], b"")
        .unwrap()
        .assert_error(400, "bad_parameter");
    request(api, "GET", "/api/episodes?limit=0", &[], b"")
        .unwrap()
        .assert_error(400, "bad_parameter");

    // Acknowledge an open, confirmed, critical episode: "acknowledged" where "opened" went, once.
    let open = list
        .iter()
        .find(|e| e["state"] == "open" && e["confirmed"] == true && e["severity"] == "CRITICAL")
        .unwrap_or_else(|| panic!("an open critical episode among {list:?}"));
    let id = open["id"].as_i64().unwrap();
    let path = format!("/api/episodes/{id}/ack");
    request(api, "POST", &path, &[], b"")
        .unwrap()
        .assert_error(401, "unauthorized");
    for _ in 0..2 {
        let acked = request(
            api,
            "POST",
            &path,
            &[("Authorization", "Bearer tok")],
            br#"{"by": "alice"}"#,
        )
        .unwrap();
        assert_eq!(acked.status, 200, "{}", acked.text());
        let acked = acked.json();
        assert_eq!(acked["acknowledged"], true);
        assert_eq!(acked["acknowledged_by"], "alice");
    }
    request(
        api,
        "POST",
        "/api/episodes/999/ack",
        &[("Authorization", "Bearer tok")],
        b"",
    )
    .unwrap()
    .assert_error(404, "not_found");
    let key = format!("streampulse-episode-{id}-acknowledged");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(ops.receipts().iter().any(|r| r.key == key)
        && pager.receipts().iter().any(|r| r.key == key))
    {
        assert!(
            Instant::now() < deadline,
            "the acknowledgement was not delivered\n{}",
            run.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        ops.receipts().iter().filter(|r| r.key == key).count(),
        1,
        "acknowledged once"
    );
    let pd: Vec<Value> = pager
        .receipts()
        .iter()
        .filter(|r| r.body["dedup_key"] == format!("streampulse-episode-{id}"))
        .map(|r| r.body.clone())
        .collect();
    let actions: Vec<&str> = pd
        .iter()
        .map(|b| b["event_action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["trigger", "acknowledge"],
        "PagerDuty events of episode {id}"
    );
    assert_eq!(pd[0]["routing_key"], secret.as_str());
    assert_eq!(pd[0]["payload"]["severity"], "critical");
    // Every alert of the episode is acknowledged with it.
    let unacked: i64 = query(&mut client, &format!(
        "SELECT count(*) FROM {s}.alerts a JOIN {s}.episodes e ON a.alert_type = e.alert_type AND a.region = e.region
           AND a.window_start BETWEEN e.first_window AND e.last_window WHERE e.id = {id} AND NOT a.acknowledged",
        s = schema.0
    ))[0].get(0);
    assert_eq!(unacked, 0);

    // Acknowledging an alert acknowledges its episode, even before the episode is confirmed: the
    // CRITICAL-only PagerDuty destination then hears "opened" and "acknowledged" once it is.
    let early = query(
        &mut client,
        &format!(
            "SELECT e.id, a.id, (extract(epoch FROM e.first_window) * 1000)::bigint
             FROM {s}.episodes e JOIN {s}.alerts a ON a.alert_type = e.alert_type AND a.region = e.region
               AND a.window_start = e.first_window
             WHERE e.state = 'open' AND NOT e.confirmed AND e.severity = 'CRITICAL'
             ORDER BY e.id LIMIT 1",
            s = schema.0
        ),
    );
    let row = early
        .first()
        .expect("an unconfirmed critical episode (the last window fails)");
    let (episode, alert, first): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let acked = request(
        api,
        "POST",
        &format!("/api/alerts/{alert}/ack"),
        &[("Authorization", "Bearer tok")],
        br#"{"by": "bob"}"#,
    )
    .unwrap();
    assert_eq!(acked.status, 200, "{}", acked.text());
    let acked = acked.json();
    assert_eq!(acked["acknowledged"], true);
    assert_eq!(acked["episode"]["id"].as_i64(), Some(episode), "{acked}");
    assert_eq!(acked["episode"]["acknowledged"], true);
    assert_eq!(acked["episode"]["confirmed"], false);
    let key = |t: &str| format!("streampulse-episode-{episode}-{t}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ops.receipts().iter().any(|r| r.key == key("acknowledged")) {
        assert!(
            Instant::now() < deadline,
            "the provisional webhook heard of the acknowledgement"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !pager.receipts().iter().any(|r| r.key.starts_with(&key(""))),
        "not paged before confirmation"
    );
    // Events a window later on both partitions move the watermark past the episode's first window.
    let window_ms = Config::default().window_ms;
    let generator = Generator::new(9, Scenario::Clean, first + window_ms + 20_000, 1.0);
    let encoder = Encoder::new();
    produce(
        &topic,
        &[0, 1].map(|p| (p, encoder.encode(&generator.event(p as u64)))),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pager
        .receipts()
        .iter()
        .any(|r| r.key == key("acknowledged"))
    {
        assert!(
            Instant::now() < deadline,
            "PagerDuty was not told after confirmation\n{}",
            run.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let actions: Vec<String> = pager
        .receipts()
        .iter()
        .filter(|r| r.body["dedup_key"] == format!("streampulse-episode-{episode}"))
        .map(|r| r.body["event_action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(actions, ["trigger", "acknowledge"], "after confirmation");

    // The receivers saw the secret (header, query, routing key); the log and the API never do.
    assert!(ops
        .receipts()
        .iter()
        .all(|r| r.body.get("routing_key").is_none()));
    let text = run.log();
    assert!(!text.contains(&secret), "a secret reached the log");
    let health = run.health().unwrap().to_string();
    let metrics = http_get(api, "/metrics").unwrap().1;
    assert!(!health.contains(&secret) && !metrics.contains(&secret));
    assert!(metrics
        .contains("streampulse_notifications_total{destination=\"pager\",outcome=\"delivered\"}"));
    eprintln!(
        "{stored} episodes ({withdrawn} withdrawn); ops got {}, pager {}",
        ops.receipts().len(),
        pager.receipts().len()
    );
    run.kill();
    std::fs::remove_file(config).ok();
}
