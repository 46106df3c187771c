//! The seed corpus of the fuzz targets in `ingest/fuzz`, made by the project's own generator and
//! encoders and committed under `ingest/fuzz/seeds/<target>/`.
//!
//! `cargo test -p streampulse-ingest --test fuzz_seeds -- --ignored` rewrites the files; the test
//! that always runs checks the committed ones still mean what their names say, so a schema change
//! that makes them stale is noticed (a stale seed is still a valid fuzz input, just a worse start).

use std::fs;
use std::path::PathBuf;

use streampulse_ingest::confluent::{parse_frame, ConfluentEncoder, SchemaVersion};
use streampulse_ingest::{DecodeError, Decoder, Encoder, Event, Generator, Scenario};

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

/// A few events with different shapes: both optional error fields absent and present, each status.
fn events() -> Vec<Event> {
    let outage = Generator::new(7, Scenario::CdnOutage, 1_700_000_000_000, 200.0);
    let slow = Generator::new(8, Scenario::SlowDownloads, 1_700_000_000_000, 200.0);
    let mut picked: Vec<Event> = Vec::new();
    for status in ["success", "failed", "cancelled"] {
        let found = (0..100_000)
            .map(|i| outage.event(i))
            .find(|e| {
                e.download.status == status
                    && (status != "failed" || e.download.error_message.is_some())
            })
            .unwrap_or_else(|| panic!("the generator makes {status} events"));
        picked.push(found);
    }
    picked.push(slow.event(3));
    picked
}

/// (target, file name, bytes) for every seed.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let events = events();
    let encoder = Encoder::new();
    let mut seeds = Vec::new();
    for (i, event) in events.iter().enumerate() {
        seeds.push(("decode", format!("ok-{i}"), encoder.encode(event)));
    }
    // Well-formed datums the domain check rejects: the dead-letter branches.
    let mut bad_status = events[0].clone();
    bad_status.download.status = "exploded".into();
    let mut bad_speed = events[0].clone();
    bad_speed.download.speed_mbps = -1.0;
    seeds.push((
        "decode",
        "invalid-status".into(),
        encoder.encode(&bad_status),
    ));
    seeds.push(("decode", "invalid-speed".into(), encoder.encode(&bad_speed)));

    let v1 = ConfluentEncoder::new(1, SchemaVersion::V1);
    let v2 = ConfluentEncoder::new(2, SchemaVersion::V2);
    for (i, event) in events.iter().take(2).enumerate() {
        seeds.push(("confluent_frame", format!("v1-{i}"), v1.encode(event)));
        seeds.push(("confluent_frame", format!("v2-{i}"), v2.encode(event)));
        // confluent_decode frames its input itself: its seeds are the datums after the header.
        let datum = |framed: Vec<u8>| framed[5..].to_vec();
        seeds.push((
            "confluent_decode",
            format!("v1-{i}"),
            datum(v1.encode(event)),
        ));
        seeds.push((
            "confluent_decode",
            format!("v2-{i}"),
            datum(v2.encode(event)),
        ));
    }
    seeds
}

#[test]
#[ignore = "rewrites ingest/fuzz/seeds; run by hand after a schema or generator change"]
fn write_fuzz_seeds() {
    for (target, name, bytes) in seeds() {
        let dir = seeds_dir().join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }
}

#[test]
fn committed_fuzz_seeds_are_current() {
    let decoder = Decoder::new();
    let read = |target: &str| {
        let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(seeds_dir().join(target))
            .unwrap_or_else(|e| panic!("ingest/fuzz/seeds/{target}: {e}"))
            .map(|entry| {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, fs::read(&path).unwrap())
            })
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no seeds for {target}");
        files
    };
    let stale = "stale fuzz seed; regenerate: cargo test -p streampulse-ingest --test fuzz_seeds -- --ignored";
    for (name, bytes) in read("decode") {
        match decoder.decode(&bytes) {
            Ok(_) => assert!(name.starts_with("ok-"), "{name}: {stale}"),
            Err(DecodeError::Invalid { .. }) => {
                assert!(name.starts_with("invalid-"), "{name}: {stale}")
            }
            Err(e) => panic!("{name}: {e}: {stale}"),
        }
    }
    for (name, bytes) in read("confluent_frame") {
        let (id, datum) = parse_frame(&bytes).unwrap_or_else(|e| panic!("{name}: {e}: {stale}"));
        if id == 1 {
            decoder
                .decode(datum)
                .unwrap_or_else(|e| panic!("{name}: {e}: {stale}"));
        }
    }
    for (name, bytes) in read("confluent_decode") {
        if name.starts_with("v1-") {
            decoder
                .decode(&bytes)
                .unwrap_or_else(|e| panic!("{name}: {e}: {stale}"));
        }
    }
}
