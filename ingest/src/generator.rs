//! The seeded, deterministic traffic generator.
//!
//! Event `i` is a pure function of `(seed, scenario, start, rate, i)`: its own random stream is seeded
//! from the seed and the index. So any worker can generate any slice of the stream (for example one
//! partition's events) without generating the rest, and every run with the same flags produces the
//! same topic.
//!
//! Traffic shape: a weighted catalog (a few hits, a long tail), ten regions, devices with OS
//! versions, about 90% successful downloads (2% of all of them slow), 5% failed with an error code,
//! 3% cancelled. Timestamps advance at `rate` events per second of event time, are shuffled by up to
//! [`DISORDER_MS`] (out of order but on time), and 0.5% of events arrive 6–40 s behind (late for the
//! default 5 s lateness). No event is stamped before the start.
//!
//! A [`Scenario`] injects a fault for its span ([`Scenario::span`]) of minutes after the start, so
//! that tests know which windows must alert. `cdn-outage` and `slow-downloads` degrade one region's
//! downloads from minute [`FAULT_START_MIN`] to [`FAULT_END_MIN`]. Three more exercise baselines
//! and forecasts, from minute [`LATE_FAULT_START_MIN`] to [`LATE_FAULT_END_MIN`] (late enough that a
//! region's baseline has ten windows before the fault), and judge the span by an
//! event's timestamp (its event time): `region-silent` sends nothing from US-NewYork (its events go
//! to the other regions, so the total rate holds); `slow-degradation` raises US-Texas's failure rate
//! each minute, from the normal 5% in the span's first minute to 45% in its last; `viral-title`
//! makes the long-tail song `mus_0152` ("Pop #153") grow from 0.2% of all downloads, doubling every
//! minute up to 30% (the top title from the span's seventh or eighth minute on), then decay at the
//! same pace.
//! The random draws only these three make come from a second stream per event, so the other
//! scenarios' streams stay as they were and these differ from `clean` only where the fault acts.
//!
//! [`v2_fields`] invents the fields schema v2 added (`download.cdn_node`, `app_version`,
//! `retry_count`) for an event, which carries only v1's: the Confluent encoder writes them when a
//! producer (`streampulse generate --v2-share`) uses v2.

use std::fmt;
use std::str::FromStr;

use crate::event::{Content, Download, Event, Outcome, UserContext};

/// Events are shuffled backwards in time by up to this much (on time for the default lateness).
pub const DISORDER_MS: i64 = 3_000;
/// Share of events that are sent far behind the stream (late for lateness ≤ 6 s).
pub const LATE_SHARE: f64 = 0.005;
/// Fault scenarios are active from this many minutes after the start …
pub const FAULT_START_MIN: i64 = 3;
/// … until this many.
pub const FAULT_END_MIN: i64 = 9;
/// The newer scenarios (`region-silent`, `slow-degradation`, `viral-title`) fault from this minute …
pub const LATE_FAULT_START_MIN: i64 = 15;
/// … until this one.
pub const LATE_FAULT_END_MIN: i64 = 25;

/// Share of events that fail outside any fault.
const FAILURE_SHARE: f64 = 0.05;
/// `slow-degradation`'s failure share in the last minute of the span.
const DEGRADED_FAILURE_SHARE: f64 = 0.45;
/// The long-tail title that goes viral in `viral-title`.
const VIRAL_CONTENT_ID: &str = "mus_0152";
/// `viral-title`'s share of all downloads at the start of the span …
const VIRAL_START_SHARE: f64 = 0.002;
/// … which doubles this often …
const VIRAL_DOUBLING_MS: f64 = 60_000.0;
/// … up to this share.
const VIRAL_CAP_SHARE: f64 = 0.30;

/// A named fault injected into the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Healthy traffic everywhere: no alert rule may fire.
    Clean,
    /// EU-London's CDN times out: 35% of its downloads fail with `cdn_timeout`.
    CdnOutage,
    /// ASIA-Tokyo is congested: successful downloads crawl at 2–10 Mbps.
    SlowDownloads,
    /// US-NewYork goes silent: no events at all; its traffic goes to the other regions.
    RegionSilent,
    /// US-Texas fails more each minute: from the normal 5% up to 45% in the span's last minute.
    SlowDegradation,
    /// A long-tail title ([`Scenario::content_id`]) grows exponentially to 30% of all downloads.
    ViralTitle,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Clean,
        Scenario::CdnOutage,
        Scenario::SlowDownloads,
        Scenario::RegionSilent,
        Scenario::SlowDegradation,
        Scenario::ViralTitle,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Clean => "clean",
            Scenario::CdnOutage => "cdn-outage",
            Scenario::SlowDownloads => "slow-downloads",
            Scenario::RegionSilent => "region-silent",
            Scenario::SlowDegradation => "slow-degradation",
            Scenario::ViralTitle => "viral-title",
        }
    }

    /// The region this scenario degrades, if any.
    pub fn region(self) -> Option<&'static str> {
        match self {
            Scenario::Clean | Scenario::ViralTitle => None,
            Scenario::CdnOutage => Some("EU-London"),
            Scenario::SlowDownloads => Some("ASIA-Tokyo"),
            Scenario::RegionSilent => Some("US-NewYork"),
            Scenario::SlowDegradation => Some("US-Texas"),
        }
    }

    /// The minutes after the start during which the fault acts (the end excluded).
    pub fn span(self) -> std::ops::Range<i64> {
        match self {
            Scenario::Clean | Scenario::CdnOutage | Scenario::SlowDownloads => {
                FAULT_START_MIN..FAULT_END_MIN
            }
            Scenario::RegionSilent | Scenario::SlowDegradation | Scenario::ViralTitle => {
                LATE_FAULT_START_MIN..LATE_FAULT_END_MIN
            }
        }
    }

    /// The `content_id` of the title this scenario makes viral, if any.
    pub fn content_id(self) -> Option<&'static str> {
        (self == Scenario::ViralTitle).then_some(VIRAL_CONTENT_ID)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!(
                    "unknown scenario {s:?}; expected one of {}",
                    names.join(", ")
                )
            })
    }
}

/// A small, fast, well-mixed PRNG (SplitMix64). Written out here so that the generated stream does
/// not change when a dependency does.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi] (inclusive).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// An index drawn with the given cumulative weights (last element is the total).
    fn weighted(&mut self, cumulative: &[f64]) -> usize {
        let total = *cumulative.last().expect("weights are not empty");
        let x = self.unit() * total;
        cumulative
            .partition_point(|&c| c <= x)
            .min(cumulative.len() - 1)
    }
}

struct Title {
    id: String,
    title: String,
    kind: &'static str,
    category: &'static str,
    size_mb: i32,
    price: f32,
}

const HITS: [(&str, &str, &str, &str, i32, f32); 8] = [
    (
        "mov_avengers_2",
        "Avengers: Endgame 2",
        "movie",
        "action",
        4200,
        19.99,
    ),
    (
        "mov_taylor_swift",
        "Taylor Swift: Eras Tour",
        "music_doc",
        "music",
        3200,
        14.99,
    ),
    (
        "mov_batman",
        "The Batman Returns",
        "movie",
        "action",
        3800,
        19.99,
    ),
    ("mov_barbie_2", "Barbie 2", "movie", "comedy", 2900, 17.99),
    (
        "tv_severance_s3",
        "Severance S3",
        "tv_show",
        "drama",
        1800,
        9.99,
    ),
    (
        "app_photo_pro",
        "Photo Pro",
        "app",
        "productivity",
        450,
        4.99,
    ),
    (
        "game_star_quest",
        "Star Quest",
        "game",
        "adventure",
        28000,
        59.99,
    ),
    ("book_deep_sea", "The Deep Sea", "book", "science", 12, 7.99),
];
const TAIL_KINDS: [(&str, &str, i32); 5] = [
    ("movie", "drama", 3000),
    ("tv_show", "comedy", 1500),
    ("music", "pop", 120),
    ("app", "utilities", 300),
    ("book", "fiction", 8),
];
/// Long-tail catalog size beyond the hits.
const TAIL: usize = 192;

const REGIONS: [(&str, &[&str], f64); 10] = [
    (
        "US-California",
        &["San Francisco", "Los Angeles", "San Diego"],
        20.0,
    ),
    ("US-Texas", &["Austin", "Dallas"], 10.0),
    ("US-NewYork", &["New York City", "Buffalo"], 12.0),
    ("EU-London", &["London"], 10.0),
    ("EU-Paris", &["Paris", "Lyon"], 8.0),
    ("EU-Berlin", &["Berlin", "Munich"], 8.0),
    ("ASIA-Tokyo", &["Tokyo", "Osaka"], 10.0),
    ("ASIA-Seoul", &["Seoul"], 8.0),
    ("ASIA-Mumbai", &["Mumbai", "Delhi"], 8.0),
    ("SA-SaoPaulo", &["São Paulo"], 6.0),
];

const DEVICES: [(&str, &[&str], f64); 8] = [
    ("iPhone 15 Pro", &["iOS 18.1", "iOS 17.6"], 18.0),
    ("iPhone 14", &["iOS 18.0", "iOS 17.6"], 12.0),
    ("iPad Pro", &["iPadOS 18.0"], 8.0),
    ("Pixel 9", &["Android 15", "Android 14"], 14.0),
    ("Galaxy S24", &["Android 14"], 14.0),
    ("Apple TV 4K", &["tvOS 18.0"], 6.0),
    ("MacBook Pro", &["macOS 14.5", "macOS 15.1"], 12.0),
    ("Windows PC", &["Windows 11", "Windows 10"], 16.0),
];

const CONNECTIONS: [&str; 4] = ["wifi", "5g", "4g", "ethernet"];

const ERRORS: [(&str, &str, f64); 4] = [
    ("cdn_timeout", "CDN server timeout - try again", 20.0),
    (
        "network_error",
        "Network connection lost during download",
        45.0,
    ),
    ("disk_full", "Insufficient storage space on device", 20.0),
    ("auth_failed", "Authentication token expired", 15.0),
];

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut total = 0.0;
    weights
        .map(|w| {
            total += w;
            total
        })
        .collect()
}

/// Generates event `i` of a deterministic stream; see the module documentation.
pub struct Generator {
    seed: u64,
    scenario: Scenario,
    start_ms: i64,
    ms_per_event: f64,
    catalog: Vec<Title>,
    catalog_weights: Vec<f64>,
    region_weights: Vec<f64>,
    /// The region weights without the scenario's region: where `region-silent` sends its traffic.
    other_region_weights: Vec<f64>,
    /// The catalog index of [`VIRAL_CONTENT_ID`].
    viral: usize,
    device_weights: Vec<f64>,
    error_weights: Vec<f64>,
}

impl Generator {
    /// `rate` is events per second of event time; event 0 is stamped near `start_ms`.
    pub fn new(seed: u64, scenario: Scenario, start_ms: i64, rate: f64) -> Generator {
        assert!(rate > 0.0, "rate must be positive");
        let mut catalog: Vec<Title> = HITS
            .iter()
            .map(|&(id, title, kind, category, size_mb, price)| Title {
                id: id.to_string(),
                title: title.to_string(),
                kind,
                category,
                size_mb,
                price,
            })
            .collect();
        for n in 0..TAIL {
            let (kind, category, size) = TAIL_KINDS[n % TAIL_KINDS.len()];
            catalog.push(Title {
                id: format!("{}_{:04}", &kind[..3], n),
                title: format!("{} #{}", category_title(category), n + 1),
                kind,
                category,
                size_mb: size + (n as i32 * 37) % (size / 2 + 1),
                price: 0.99 + (n % 10) as f32,
            });
        }
        // Hits get 60% of traffic with weights 50/30/15/5-like decay; the tail decays as 1/rank.
        let catalog_weights = cumulative((0..catalog.len()).map(|rank| {
            if rank < HITS.len() {
                60.0 * 0.55f64.powi(rank as i32)
            } else {
                40.0 / (rank - HITS.len() + 5) as f64
            }
        }));
        let viral = catalog
            .iter()
            .position(|t| t.id == VIRAL_CONTENT_ID)
            .expect("the viral title is in the catalog");
        let other_regions = REGIONS.iter().map(|r| {
            if Some(r.0) == scenario.region() {
                0.0
            } else {
                r.2
            }
        });
        Generator {
            seed,
            scenario,
            start_ms,
            ms_per_event: 1000.0 / rate,
            catalog,
            catalog_weights,
            viral,
            region_weights: cumulative(REGIONS.iter().map(|r| r.2)),
            other_region_weights: cumulative(other_regions),
            device_weights: cumulative(DEVICES.iter().map(|d| d.2)),
            error_weights: cumulative(ERRORS.iter().map(|e| e.2)),
        }
    }

    pub fn scenario(&self) -> Scenario {
        self.scenario
    }

    /// The nominal (undisturbed) timestamp of event `i`.
    pub fn nominal_time(&self, i: u64) -> i64 {
        self.start_ms + (i as f64 * self.ms_per_event) as i64
    }

    /// The index of the first event whose nominal time is at or after `ms`.
    pub fn index_at(&self, ms: i64) -> u64 {
        if ms <= self.start_ms {
            return 0;
        }
        ((ms - self.start_ms) as f64 / self.ms_per_event).ceil() as u64
    }

    /// Whether the scenario's fault is active at `ms`.
    pub fn fault_active(&self, ms: i64) -> bool {
        let minute = (ms - self.start_ms).div_euclid(60_000);
        self.scenario != Scenario::Clean && self.scenario.span().contains(&minute)
    }

    /// `slow-degradation`'s failure share in its region at `ms`, within the span: the normal share in
    /// the span's first minute, rising by equal steps each minute to the peak in its last.
    fn degraded_failure_share(&self, ms: i64) -> f64 {
        let minute = (ms - self.start_ms).div_euclid(60_000);
        let span = self.scenario.span();
        let progress = (minute - span.start) as f64 / (span.end - span.start - 1) as f64;
        FAILURE_SHARE + (DEGRADED_FAILURE_SHARE - FAILURE_SHARE) * progress
    }

    /// `viral-title`'s share of all downloads at `ms`: exponential growth from the span's start up to
    /// the cap, then decay at the same pace from its end, until below the starting share.
    fn viral_share(&self, ms: i64) -> f64 {
        let doublings = |min: i64| (ms - self.start_ms - min * 60_000) as f64 / VIRAL_DOUBLING_MS;
        let span = self.scenario.span();
        let (rise, fall) = (doublings(span.start), doublings(span.end));
        let share = if rise < 0.0 {
            0.0
        } else if fall < 0.0 {
            (VIRAL_START_SHARE * rise.exp2()).min(VIRAL_CAP_SHARE)
        } else {
            VIRAL_CAP_SHARE * (-fall).exp2()
        };
        if share < VIRAL_START_SHARE {
            0.0
        } else {
            share
        }
    }

    /// Event number `i` of the stream.
    pub fn event(&self, i: u64) -> Event {
        let stream = self.seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93);
        let mut rng = Rng::new(stream);
        // The draws only the newer scenarios make: a separate stream leaves `rng`'s sequence alone.
        let mut side = Rng::new(stream ^ 0x5CE7_A210_0B1D_E5A5);
        rng.next_u64();

        let nominal = self.nominal_time(i);
        let timestamp = if rng.unit() < LATE_SHARE {
            nominal - rng.range(6_000, 40_000)
        } else {
            nominal - rng.range(0, DISORDER_MS)
        }
        .max(self.start_ms); // the stream begins at its start: no stragglers before it

        let mut title = &self.catalog[rng.weighted(&self.catalog_weights)];
        if self.scenario == Scenario::ViralTitle && side.unit() < self.viral_share(timestamp) {
            title = &self.catalog[self.viral];
        }
        let mut region_index = rng.weighted(&self.region_weights);
        let fault_here =
            |region: &str| self.fault_active(timestamp) && self.scenario.region() == Some(region);
        if self.scenario == Scenario::RegionSilent && fault_here(REGIONS[region_index].0) {
            region_index = side.weighted(&self.other_region_weights);
        }
        let (region, cities, _) = REGIONS[region_index];
        let city = cities[rng.range(0, cities.len() as i64 - 1) as usize];
        let (device, oses, _) = DEVICES[rng.weighted(&self.device_weights)];
        let os_version = oses[rng.range(0, oses.len() as i64 - 1) as usize];
        let connection_type = CONNECTIONS[rng.range(0, 3) as usize];

        let faulty = self.fault_active(nominal) && self.scenario.region() == Some(region);
        // slow-degradation also fails enough of the events that would not fail anyway to bring its
        // region's failure share up to the minute's target.
        let must_fail = self.scenario == Scenario::SlowDegradation && fault_here(region) && {
            let share = self.degraded_failure_share(timestamp);
            side.unit() < 1.0 - (1.0 - share) / (1.0 - FAILURE_SHARE)
        };
        let download = self.download(&mut rng, title.size_mb, faulty, must_fail);

        Event {
            event_id: format!("{:016x}-{:08x}", self.seed, i),
            timestamp,
            user_id: format!("usr_{:05}", rng.range(0, 49_999)),
            content: Content {
                content_id: title.id.clone(),
                title: title.title.clone(),
                kind: title.kind.to_string(),
                category: title.category.to_string(),
                size_mb: title.size_mb,
                price: title.price,
            },
            download,
            user_context: UserContext {
                region: region.to_string(),
                city: city.to_string(),
                device: device.to_string(),
                os_version: os_version.to_string(),
                connection_type: connection_type.to_string(),
            },
        }
    }

    fn download(&self, rng: &mut Rng, size_mb: i32, faulty: bool, must_fail: bool) -> Download {
        let roll = rng.unit();
        let failure = |rng: &mut Rng, code: usize| {
            let (code, message, _) = ERRORS[code];
            Download {
                status: "failed".into(),
                duration_seconds: rng.range(5, 60) as i32,
                speed_mbps: round1(1.0 + 4.0 * rng.unit()),
                error_code: Some(code.into()),
                error_message: Some(message.into()),
            }
        };
        if faulty && self.scenario == Scenario::CdnOutage && roll < 0.35 {
            return failure(rng, 0);
        }
        if roll < FAILURE_SHARE || must_fail {
            let code = rng.weighted(&self.error_weights);
            return failure(rng, code);
        }
        if roll < 0.08 {
            return Download {
                status: "cancelled".into(),
                duration_seconds: rng.range(1, 30) as i32,
                speed_mbps: round1(5.0 + 20.0 * rng.unit()),
                error_code: None,
                error_message: None,
            };
        }
        let speed = if faulty && self.scenario == Scenario::SlowDownloads {
            2.0 + 8.0 * rng.unit()
        } else if roll < 0.10 {
            5.0 + 5.0 * rng.unit() // the 2% of slow downloads
        } else {
            25.0 + 40.0 * rng.unit()
        };
        let speed = round1(speed);
        // Duration follows from size and speed (megabytes × 8 / megabits per second), plus setup time.
        let duration = (size_mb as f64 * 8.0 / speed as f64) as i64 + rng.range(1, 5);
        Download {
            status: "success".into(),
            duration_seconds: duration.min(i32::MAX as i64) as i32,
            speed_mbps: speed,
            error_code: None,
            error_message: None,
        }
    }
}

/// The values of the fields schema v2 (`schemas/event-v2.avsc`) added to v1, which [`Event`] (the
/// image of v1) does not carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V2Fields {
    /// `download.cdn_node`: the edge node that served the download, e.g. `edge-eu-london-03`.
    pub cdn_node: Option<String>,
    /// `app_version`: the client build, e.g. `5.3.7`.
    pub app_version: Option<String>,
    /// `retry_count`: attempts before this one.
    pub retry_count: i32,
}

/// Plausible v2-only values for `event`, derived from its id alone, so the same event always gets
/// the same values (and a v2 encoder writes the same bytes for it).
pub fn v2_fields(event: &Event) -> V2Fields {
    // FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
    let h = event
        .event_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
        });
    let region = event.user_context.region.to_ascii_lowercase();
    let failed = event.outcome() == Some(Outcome::Failed);
    // Most attempts are first attempts; failed downloads have usually been retried already.
    let retries = if failed {
        (h >> 20) % 4
    } else {
        u64::from((h >> 20) % 8 == 0)
    };
    V2Fields {
        // One in sixteen clients does not report the edge node.
        cdn_node: (h % 16 != 0).then(|| format!("edge-{region}-{:02}", (h >> 4) % 6 + 1)),
        // Old app builds predate the field.
        app_version: ((h >> 8) % 10 != 0)
            .then(|| format!("5.{}.{}", (h >> 12) % 4 + 2, (h >> 16) % 10)),
        retry_count: retries as i32,
    }
}

fn round1(x: f64) -> f32 {
    ((x * 10.0).round() / 10.0) as f32
}

fn category_title(category: &str) -> String {
    let mut chars = category.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// FNV-1a over the `Debug` form of events `0..n`: a fingerprint of the whole stream.
    fn digest(g: &Generator, n: u64) -> u64 {
        (0..n).fold(0xcbf2_9ce4_8422_2325u64, |h, i| {
            format!("{:?}", g.event(i))
                .bytes()
                .fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
        })
    }

    /// The existing scenarios' streams are pinned: 20,000 events at 20/s run past the fault span, so
    /// a change to any draw (even one made only inside the span) shows up here.
    #[test]
    fn existing_scenarios_are_unchanged() {
        let pinned = [
            (7, Scenario::Clean, 0xad94bbcbf26763bb),
            (7, Scenario::CdnOutage, 0x79a5ea6f78a5714d),
            (7, Scenario::SlowDownloads, 0xfd34bc78c3e90360),
            (42, Scenario::Clean, 0xef2076d77077cd6d),
            (42, Scenario::CdnOutage, 0xd9e45a7cc00c0d0b),
            (42, Scenario::SlowDownloads, 0x9a70de081d978ac1),
        ];
        let got: Vec<_> = pinned
            .iter()
            .map(|&(seed, scenario, _)| {
                let g = Generator::new(seed, scenario, 1_700_000_000_000, 20.0);
                (seed, scenario, digest(&g, 20_000))
            })
            .collect();
        for (seed, scenario, digest) in &got {
            println!("({seed}, Scenario::{scenario:?}, {digest:#018x}),");
        }
        assert_eq!(got, pinned);
    }

    #[test]
    fn deterministic_per_index() {
        let a = Generator::new(42, Scenario::Clean, 1_000_000, 50.0);
        let b = Generator::new(42, Scenario::Clean, 1_000_000, 50.0);
        for i in [0, 1, 17, 99_999] {
            assert_eq!(a.event(i), b.event(i));
        }
        let c = Generator::new(43, Scenario::Clean, 1_000_000, 50.0);
        assert_ne!(a.event(5), c.event(5));
    }

    #[test]
    fn realistic_mix() {
        let g = Generator::new(1, Scenario::Clean, 0, 100.0);
        let n = 100_000;
        let mut status: HashMap<String, usize> = HashMap::new();
        let mut titles: HashMap<String, usize> = HashMap::new();
        let mut late = 0;
        for i in 0..n {
            let e = g.event(i);
            *status.entry(e.download.status.clone()).or_default() += 1;
            *titles.entry(e.content.content_id.clone()).or_default() += 1;
            if e.timestamp < g.nominal_time(i) - DISORDER_MS {
                late += 1;
            }
            assert!(e.download.speed_mbps >= 1.0);
        }
        let share = |s: &str| status[s] as f64 / n as f64;
        assert!((0.88..0.94).contains(&share("success")), "{status:?}");
        assert!((0.04..0.06).contains(&share("failed")), "{status:?}");
        assert!((0.02..0.04).contains(&share("cancelled")), "{status:?}");
        assert!(titles["mov_avengers_2"] > titles["mov_taylor_swift"]);
        assert!(
            titles.len() > 150,
            "a long tail of titles: {}",
            titles.len()
        );
        assert!((300..700).contains(&late), "about 0.5% late: {late}");
    }

    #[test]
    fn scenario_degrades_only_its_region_in_its_span() {
        let g = Generator::new(3, Scenario::CdnOutage, 0, 100.0);
        let (mut inside, mut outside) = ((0, 0), (0, 0));
        for i in 0..(12 * 60 * 100) {
            let e = g.event(i);
            if e.user_context.region != "EU-London" {
                continue;
            }
            let cdn = e.download.error_code.as_deref() == Some("cdn_timeout");
            let slot = if g.fault_active(g.nominal_time(i)) {
                &mut inside
            } else {
                &mut outside
            };
            slot.0 += 1;
            slot.1 += cdn as usize;
        }
        assert!(inside.1 as f64 / inside.0 as f64 > 0.3);
        assert!((outside.1 as f64 / outside.0 as f64) < 0.02);
    }

    const START: i64 = 1_700_000_000_000;

    /// The events of `g` by the minute of their timestamp, for its first `minutes` minutes.
    fn by_minute(g: &Generator, minutes: i64) -> Vec<Vec<Event>> {
        let mut out = vec![Vec::new(); minutes as usize];
        // A minute more of the stream: its late events land in the last minute.
        for i in 0..g.index_at(START + (minutes + 1) * 60_000) {
            let e = g.event(i);
            let minute = (e.timestamp - START) / 60_000;
            if minute < minutes {
                out[minute as usize].push(e);
            }
        }
        out
    }

    /// Minutes of stream the tests of the newer scenarios look at: the span and a few after.
    const MINUTES: i64 = LATE_FAULT_END_MIN + 6;

    fn in_span(minute: usize) -> bool {
        (LATE_FAULT_START_MIN..LATE_FAULT_END_MIN).contains(&(minute as i64))
    }

    #[test]
    fn new_scenarios_are_deterministic_and_only_change_their_fault() {
        let clean = Generator::new(7, Scenario::Clean, START, 50.0);
        for scenario in [
            Scenario::RegionSilent,
            Scenario::SlowDegradation,
            Scenario::ViralTitle,
        ] {
            let (a, b) = (
                Generator::new(7, scenario, START, 50.0),
                Generator::new(7, scenario, START, 50.0),
            );
            let mut changed = 0;
            for i in 0..a.index_at(START + MINUTES * 60_000) {
                let (e, c) = (a.event(i), clean.event(i));
                assert_eq!(e, b.event(i), "{scenario} event {i}");
                assert_eq!(e.timestamp, c.timestamp, "{scenario} event {i}");
                let minute = (e.timestamp - START) / 60_000;
                // The viral title decays after the span; the regional faults stop at its end.
                let after = minute >= LATE_FAULT_END_MIN && scenario != Scenario::ViralTitle;
                if minute < LATE_FAULT_START_MIN || after {
                    assert_eq!(e, c, "{scenario} event {i} is outside the fault");
                }
                changed += usize::from(e != c);
            }
            assert!(changed > 100, "{scenario} changed {changed} events");
        }
    }

    #[test]
    fn region_silent_sends_nothing_from_its_region_in_the_span() {
        let g = Generator::new(7, Scenario::RegionSilent, START, 50.0);
        let region = Scenario::RegionSilent.region().unwrap();
        for (minute, events) in by_minute(&g, MINUTES).iter().enumerate() {
            let silent = events
                .iter()
                .filter(|e| e.user_context.region == region)
                .count();
            println!(
                "minute {minute}: {silent} of {} events from {region}",
                events.len()
            );
            if in_span(minute) {
                assert_eq!(silent, 0, "minute {minute}");
                // The others carry its traffic: the total rate holds.
                assert!((2_900..3_100).contains(&events.len()), "minute {minute}");
            } else {
                let share = silent as f64 / events.len() as f64;
                assert!((0.10..0.14).contains(&share), "minute {minute}: {share}");
            }
        }
    }

    #[test]
    fn slow_degradation_fails_more_each_minute() {
        let g = Generator::new(7, Scenario::SlowDegradation, START, 50.0);
        let region = Scenario::SlowDegradation.region().unwrap();
        let mut codes: HashMap<String, usize> = HashMap::new();
        let rates: Vec<f64> = by_minute(&g, MINUTES)
            .iter()
            .enumerate()
            .map(|(minute, events)| {
                let here: Vec<_> = events
                    .iter()
                    .filter(|e| e.user_context.region == region)
                    .collect();
                let failed: Vec<_> = here
                    .iter()
                    .filter(|e| e.outcome() == Some(Outcome::Failed))
                    .collect();
                if in_span(minute) {
                    for e in &failed {
                        *codes
                            .entry(e.download.error_code.clone().unwrap())
                            .or_default() += 1;
                    }
                }
                failed.len() as f64 / here.len() as f64
            })
            .collect();
        println!("failure rate by minute in {region}: {rates:.3?}; codes in the span {codes:?}");
        let (first, last) = (LATE_FAULT_START_MIN as usize, LATE_FAULT_END_MIN as usize);
        let early = (rates[first] + rates[first + 1]) / 2.0;
        let late = (rates[last - 2] + rates[last - 1]) / 2.0;
        assert!(late - early >= 0.20, "{rates:?}");
        assert!((0.38..0.52).contains(&rates[last - 1]), "{rates:?}");
        for (minute, rate) in rates.iter().enumerate() {
            if !in_span(minute) {
                assert!(*rate < 0.09, "minute {minute}: {rate}");
            }
        }
        // The usual mix of error codes, scaled up.
        assert_eq!(codes.len(), ERRORS.len(), "{codes:?}");
        assert!(
            codes.values().max() == codes.get("network_error"),
            "{codes:?}"
        );
    }

    #[test]
    fn viral_title_rises_to_the_top() {
        let viral = Scenario::ViralTitle.content_id().unwrap();
        for rate in [20.0, 50.0, 200.0] {
            let g = Generator::new(7, Scenario::ViralTitle, START, rate);
            let mut first_top = None;
            for (minute, events) in by_minute(&g, MINUTES).iter().enumerate() {
                let mut downloads: HashMap<&str, usize> = HashMap::new();
                for e in events {
                    *downloads.entry(&e.content.content_id).or_default() += 1;
                }
                let count = downloads.get(viral).copied().unwrap_or(0);
                let best_other = downloads
                    .iter()
                    .filter(|&(&id, _)| id != viral)
                    .map(|(_, &n)| n)
                    .max()
                    .unwrap();
                let top = count > best_other;
                if rate == 50.0 {
                    println!("minute {minute}: {viral} {count}, best other {best_other}");
                }
                if top && first_top.is_none() {
                    first_top = Some(minute);
                }
                let minute = minute as i64;
                if !(LATE_FAULT_START_MIN + 5..LATE_FAULT_END_MIN + 2).contains(&minute) {
                    assert!(
                        !top,
                        "rate {rate}, minute {minute}: {count} vs {best_other}"
                    );
                }
                if minute >= LATE_FAULT_END_MIN + 5 {
                    assert!(count * 50 < events.len(), "decayed: {count}");
                }
                if (LATE_FAULT_END_MIN - 3..LATE_FAULT_END_MIN).contains(&minute) {
                    assert!(count > best_other * 3 / 2, "rate {rate}, minute {minute}");
                }
            }
            println!("rate {rate}: {viral} first ranks #1 in minute {first_top:?}");
        }
    }

    #[test]
    fn scenario_names_parse() {
        for s in Scenario::ALL {
            assert_eq!(s.name().parse::<Scenario>(), Ok(s));
        }
        assert!("nope"
            .parse::<Scenario>()
            .unwrap_err()
            .contains("cdn-outage"));
    }

    #[test]
    fn v2_fields_are_stable_and_plausible() {
        let g = Generator::new(5, Scenario::CdnOutage, 0, 100.0);
        let n = 10_000;
        let mut with_node = 0;
        for i in 0..n {
            let event = g.event(i);
            let fields = v2_fields(&event);
            assert_eq!(fields, v2_fields(&event));
            if let Some(node) = &fields.cdn_node {
                with_node += 1;
                let region = event.user_context.region.to_ascii_lowercase();
                assert!(node.starts_with(&format!("edge-{region}-")), "{node}");
            }
            let most = if event.outcome() == Some(Outcome::Failed) {
                3
            } else {
                1
            };
            assert!((0..=most).contains(&fields.retry_count), "{fields:?}");
        }
        // One client in sixteen does not report the edge node.
        let share = with_node as f64 / n as f64;
        assert!((0.92..0.96).contains(&share), "{share}");
    }
}
