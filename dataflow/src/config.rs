//! The knobs of the computation, with the defaults of SPEC §4.

use crate::rules::Rules;

#[derive(Clone, Debug)]
pub struct Config {
    /// Tumbling window length, aligned to the Unix epoch.
    pub window_ms: i64,
    /// An event older than its partition's newest timestamp minus this is late.
    pub lateness_ms: i64,
    /// Windows whose end is this far behind the watermark are retracted from memory.
    pub retain_ms: i64,
    /// A partition silent this long (wall clock) stops holding the watermark back.
    pub idle_timeout_ms: u64,
    /// How many titles the per-window trending list keeps.
    pub top_k: usize,
    pub rules: Rules,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window_ms: 60_000,
            lateness_ms: 5_000,
            retain_ms: 60 * 60_000,
            idle_timeout_ms: 30_000,
            top_k: 10,
            rules: Rules::default(),
        }
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), String> {
        // A day at most: the sums of a row stay exact for any rate below 10 M events/s per key
        // (see `aggregate`).
        if self.window_ms <= 0 || self.window_ms > 86_400_000 {
            return Err("window must be between 1 ms and one day".into());
        }
        if !(0..=86_400_000).contains(&self.lateness_ms) {
            return Err("lateness must be between 0 and one day".into());
        }
        if self.retain_ms < self.window_ms || self.retain_ms > 30 * 86_400_000 {
            return Err("retention must be at least one window and at most 30 days".into());
        }
        if self.top_k == 0 {
            return Err("top-k must be at least 1".into());
        }
        self.rules.validate()
    }
}
