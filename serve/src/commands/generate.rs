//! `streampulse generate`: writes the seeded generator's events to a Kafka topic.
//!
//! ```text
//!   Generator (seed, scenario, start, rate) ──encode (avro | confluent v1/v2)──▶ Producer (key = region)
//! ```
//!
//! With `--count N` it writes events 0..N as fast as the broker takes them (their timestamps still
//! advance at `--rate` per second of event time, from `--start-ms`), so the same flags always write
//! the same topic. Without `--count` it writes in real time at `--rate` events per second.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use streampulse_ingest::avro::Encoder;
use streampulse_ingest::confluent::{ConfluentEncoder, SchemaVersion};
use streampulse_ingest::generator::Rng;
use streampulse_ingest::kafka::{KafkaConfig, Producer};
use streampulse_ingest::{Event, Generator};

use crate::cli::{GenerateArgs, WireFormat};

enum Encoding {
    Avro(Encoder),
    /// v1 and v2 encoders and the share of events written with v2.
    Confluent(ConfluentEncoder, ConfluentEncoder, f64),
}

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let kafka: KafkaConfig = args.kafka.config()?;
    anyhow::ensure!(args.generator.rate > 0.0, "--rate must be positive");
    kafka
        .create_topic(args.generator.partitions)
        .with_context(|| format!("creating topic {} on {}", kafka.topic, kafka.brokers))?;
    let encoding = match args.kafka.format {
        WireFormat::Avro => Encoding::Avro(Encoder::new()),
        WireFormat::Confluent => {
            let registry = args.kafka.registry()?;
            let subject = format!("{}-value", kafka.topic);
            let v1 = ConfluentEncoder::register(&registry, &subject, SchemaVersion::V1)?;
            let v2 = ConfluentEncoder::register(&registry, &subject, SchemaVersion::V2)?;
            log::info!(
                "registered schema ids v1={} v2={}",
                v1.schema_id(),
                v2.schema_id()
            );
            Encoding::Confluent(v1, v2, args.v2_share)
        }
    };
    let producer = Producer::new(&kafka)?;
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let g = &args.generator;
    // A backlog (`--count`) ends now by default: events stamped ahead of the time they are sent
    // would be dead letters under `run --max-future`.
    let span_ms = args
        .count
        .map_or(0, |n| (n as f64 * 1000.0 / g.rate) as i64);
    let start_ms = args.start_ms.unwrap_or(now_ms - span_ms);
    let generator = Generator::new(g.seed, g.scenario, start_ms, g.rate);
    let mut pick = Rng::new(g.seed ^ 0x5EED);
    let encode = |event: &Event, pick: &mut Rng| match &encoding {
        Encoding::Avro(e) => e.encode(event),
        Encoding::Confluent(v1, v2, share) => {
            if pick.unit() < *share {
                v2.encode(event)
            } else {
                v1.encode(event)
            }
        }
    };
    log::info!(
        "writing {} to {} on {} (seed {}, scenario {}, {} events/s of event time)",
        args.count
            .map_or("events in real time".to_string(), |n| format!("{n} events")),
        kafka.topic,
        kafka.brokers,
        g.seed,
        g.scenario,
        g.rate
    );
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut i = 0u64;
    loop {
        if args.count.is_some_and(|n| i >= n) {
            break;
        }
        if args.count.is_none() {
            // Real time: wait until the event's nominal time has come.
            let due = generator.nominal_time(i);
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
            if due > now {
                std::thread::sleep(Duration::from_millis((due - now).min(100) as u64));
                continue;
            }
        }
        let event = generator.event(i);
        // The record keeps the producer's own timestamp (the time of sending): stamping it with
        // an old event time would let the topic's retention delete it at once.
        producer.send(&event.user_context.region, &encode(&event, &mut pick), None)?;
        i += 1;
        if last_report.elapsed() >= Duration::from_secs(2) {
            let rate = i as f64 / started.elapsed().as_secs_f64();
            match args.count {
                Some(n) => log::info!(
                    "{i}/{n} events ({:.0}%), {rate:.0}/s",
                    100.0 * i as f64 / n as f64
                ),
                None => log::info!("{i} events, {rate:.0}/s"),
            }
            last_report = Instant::now();
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing to Kafka")?;
    log::info!(
        "wrote {i} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
