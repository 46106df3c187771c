//! The knobs of the computation, with the defaults of SPEC §4.

use crate::error::Error;
use crate::forecast::Forecasts;
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
    /// The trending forecasts (the rising list has `top_k` titles too).
    pub forecasts: Forecasts,
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
            forecasts: Forecasts::default(),
        }
    }
}

impl Config {
    /// Checks every setting; the first one out of range is the error
    /// ([`Error::InvalidConfig`]).
    pub fn validate(&self) -> Result<(), Error> {
        // A day at most: the sums of a row stay exact for any rate below 10 M events/s per key
        // (see `aggregate`).
        if self.window_ms <= 0 || self.window_ms > 86_400_000 {
            return Err(Error::invalid(
                "window_ms",
                "window must be between 1 ms and one day",
            ));
        }
        if !(0..=86_400_000).contains(&self.lateness_ms) {
            return Err(Error::invalid(
                "lateness_ms",
                "lateness must be between 0 and one day",
            ));
        }
        if self.retain_ms < self.window_ms || self.retain_ms > 30 * 86_400_000 {
            return Err(Error::invalid(
                "retain_ms",
                "retention must be at least one window and at most 30 days",
            ));
        }
        if self.top_k == 0 {
            return Err(Error::invalid("top_k", "top-k must be at least 1"));
        }
        self.rules.validate()?;
        self.forecasts.validate()
    }

    /// How many windows after a window still read it (the sustained rule's run, a baseline, a
    /// forecast's span): retention keeps a window's rows in the dataflow this much longer, so that
    /// letting it go changes no window still held (see [`crate::batch::Ledger::expire`]).
    pub fn reach(&self) -> u32 {
        self.rules
            .sustained_windows
            .max(self.rules.baselines.windows)
            .max(self.forecasts.windows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_setting_names_its_field() {
        assert_eq!(Config::default().validate(), Ok(()));
        let cases = [
            (
                Config {
                    window_ms: 0,
                    ..Config::default()
                },
                "window_ms",
            ),
            (
                Config {
                    lateness_ms: -1,
                    ..Config::default()
                },
                "lateness_ms",
            ),
            (
                Config {
                    retain_ms: 1,
                    ..Config::default()
                },
                "retain_ms",
            ),
            (
                Config {
                    top_k: 0,
                    ..Config::default()
                },
                "top_k",
            ),
            (
                Config {
                    rules: Rules {
                        cdn_share: 1.5,
                        ..Rules::default()
                    },
                    ..Config::default()
                },
                "rules.cdn_share",
            ),
            (
                Config {
                    rules: Rules {
                        sustained_windows: 0,
                        ..Rules::default()
                    },
                    ..Config::default()
                },
                "rules.sustained_windows",
            ),
        ];
        for (config, expected) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { field, .. }) => assert_eq!(field, expected),
                other => panic!("{expected}: {other:?}"),
            }
        }
        // The message is the reason alone, as before the error had a type.
        let error = Config {
            top_k: 0,
            ..Config::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(error.to_string(), "top-k must be at least 1");
    }
}
