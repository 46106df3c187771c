//! Alert episodes, the pure half: from one (rule, region)'s alert windows to runs of consecutive
//! windows, and from the runs and the stored open episodes to what changes. No SQL here
//! (`store::episodes` reads and writes the rows), so the rules are unit tested.
//!
//! ```text
//!   alert windows of (rule, region) after its last resolved episode ──runs──▶ [Run]
//!   [Run] + stored open episodes ──reconcile──▶ [Step]: Update (an episode grows, shrinks, changes
//!                                                       peak), Open (a new run), Withdraw (its alerts
//!                                                       vanished, or it merged into an older one)
//! ```
//!
//! An episode keeps its id while its run changes: a run that overlaps stored open episodes
//! continues the oldest of them, so an episode extended backwards by a late alert (or two runs
//! joined by the window between them) is still the one whose "opened" was announced.

/// One stored alert of a (rule, region): its window's start, and what it measured.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertWindow {
    pub start: i64,
    pub severity: String,
    pub value: f64,
    pub message: String,
}

/// A run of alerts in consecutive windows.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// Start of the first and of the last window.
    pub first: i64,
    pub last: i64,
    pub windows: i32,
    /// The worst severity of the run.
    pub severity: String,
    /// The most extreme value: the lowest when `lowest_is_worst` (a speed), else the highest.
    pub peak: f64,
    /// The peak window's message.
    pub message: String,
}

/// A stored open episode: its id and the windows it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenEpisode {
    pub id: i64,
    pub first: i64,
    pub last: i64,
}

/// What the store must do to an episode.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// The stored episode `id` now covers `run`.
    Update { id: i64, run: Run },
    /// A run no stored episode covers: a new episode.
    Open(Run),
    /// The stored episode `id` has no run any more: its alerts were retracted, or its run joined an
    /// older episode's.
    Withdraw { id: i64 },
}

/// Severity order: CRITICAL is worst.
fn rank(severity: &str) -> u8 {
    match severity {
        "CRITICAL" => 2,
        "WARNING" => 1,
        _ => 0,
    }
}

/// The runs of consecutive windows (`window_ms` apart) among `alerts`, in window order.
pub fn runs(alerts: &[AlertWindow], window_ms: i64, lowest_is_worst: bool) -> Vec<Run> {
    let mut sorted: Vec<&AlertWindow> = alerts.iter().collect();
    sorted.sort_by_key(|a| a.start);
    let mut runs: Vec<Run> = Vec::new();
    for alert in sorted {
        let extends = runs
            .last()
            .is_some_and(|run| alert.start == run.last + window_ms);
        if !extends {
            runs.push(Run {
                first: alert.start,
                last: alert.start,
                windows: 1,
                severity: alert.severity.clone(),
                peak: alert.value,
                message: alert.message.clone(),
            });
            continue;
        }
        let run = runs.last_mut().expect("extends only a run that exists");
        run.last = alert.start;
        run.windows += 1;
        if rank(&alert.severity) > rank(&run.severity) {
            run.severity = alert.severity.clone();
        }
        let worse = if lowest_is_worst {
            alert.value < run.peak
        } else {
            alert.value > run.peak
        };
        if worse {
            run.peak = alert.value;
            run.message = alert.message.clone();
        }
    }
    runs
}

/// Matches `runs` with the stored `open` episodes of the same (rule, region): each run continues
/// the oldest open episode it overlaps, or opens a new one; an open episode no run continues is
/// withdrawn. Every run gets a step: the store compares an `Update` with the row it has.
pub fn reconcile(runs: Vec<Run>, open: &[OpenEpisode]) -> Vec<Step> {
    let mut open: Vec<OpenEpisode> = open.to_vec();
    open.sort_by_key(|e| (e.first, e.id));
    let mut used = vec![false; open.len()];
    let mut steps = Vec::new();
    for run in runs {
        let overlapping: Vec<usize> = (0..open.len())
            .filter(|&i| !used[i] && open[i].first <= run.last && run.first <= open[i].last)
            .collect();
        match overlapping.first() {
            Some(&keep) => {
                for &i in &overlapping {
                    used[i] = true;
                }
                for &i in &overlapping[1..] {
                    steps.push(Step::Withdraw { id: open[i].id });
                }
                steps.push(Step::Update {
                    id: open[keep].id,
                    run,
                });
            }
            None => steps.push(Step::Open(run)),
        }
    }
    for (episode, used) in open.iter().zip(used) {
        if !used {
            steps.push(Step::Withdraw { id: episode.id });
        }
    }
    steps
}

/// A stable episode id: FNV-1a over `"RULE|region|first window start|generation"`, within
/// JavaScript's exact integer range (53 bits) like alert ids. `generation` counts earlier episodes
/// of the same rule, region and first window (one withdrawn, then the run came back).
pub fn episode_id(rule: &str, region: &str, first: i64, generation: u32) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("{rule}|{region}|{first}|{generation}").bytes() {
        hash = (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash & ((1 << 53) - 1)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 60_000;

    fn alert(start: i64, severity: &str, value: f64) -> AlertWindow {
        AlertWindow {
            start,
            severity: severity.into(),
            value,
            message: format!("at {start}"),
        }
    }

    #[test]
    fn runs_split_at_gaps_and_keep_the_worst() {
        let alerts = [
            alert(3 * W, "WARNING", 0.2),
            alert(0, "WARNING", 0.3),
            alert(W, "CRITICAL", 0.5),
            alert(2 * W, "WARNING", 0.4),
            alert(5 * W, "WARNING", 0.1),
        ];
        let r = runs(&alerts, W, false);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].first, r[0].last, r[0].windows), (0, 3 * W, 4));
        assert_eq!(r[0].severity, "CRITICAL");
        assert_eq!(r[0].peak, 0.5);
        assert_eq!(r[0].message, format!("at {W}"));
        assert_eq!((r[1].first, r[1].last, r[1].windows), (5 * W, 5 * W, 1));
        // A speed: the lowest is the worst.
        let slow = runs(
            &[alert(0, "WARNING", 9.0), alert(W, "WARNING", 4.0)],
            W,
            true,
        );
        assert_eq!(slow[0].peak, 4.0);
    }

    fn run(first: i64, last: i64) -> Run {
        Run {
            first,
            last,
            windows: ((last - first) / W + 1) as i32,
            severity: "WARNING".into(),
            peak: 0.0,
            message: String::new(),
        }
    }

    #[test]
    fn a_run_continues_the_oldest_episode_it_overlaps() {
        let open = [
            OpenEpisode {
                id: 1,
                first: 0,
                last: W,
            },
            OpenEpisode {
                id: 2,
                first: 3 * W,
                last: 4 * W,
            },
            OpenEpisode {
                id: 3,
                first: 9 * W,
                last: 9 * W,
            },
        ];
        // Window 2 fired: runs 0..1 and 3..4 join; episode 3's alert was retracted; 7 is new.
        let steps = reconcile(vec![run(0, 4 * W), run(7 * W, 7 * W)], &open);
        assert_eq!(
            steps,
            vec![
                Step::Withdraw { id: 2 },
                Step::Update {
                    id: 1,
                    run: run(0, 4 * W)
                },
                Step::Open(run(7 * W, 7 * W)),
                Step::Withdraw { id: 3 },
            ]
        );
        // A late alert before the first window keeps the episode's id.
        let steps = reconcile(vec![run(-W, W)], &open[..1]);
        assert_eq!(
            steps,
            vec![Step::Update {
                id: 1,
                run: run(-W, W)
            }]
        );
    }

    #[test]
    fn ids_are_stable_and_differ_by_generation() {
        let a = episode_id("HIGH_ERROR_RATE", "eu-west", 60_000, 0);
        assert_eq!(a, episode_id("HIGH_ERROR_RATE", "eu-west", 60_000, 0));
        assert_ne!(a, episode_id("HIGH_ERROR_RATE", "eu-west", 60_000, 1));
        assert!((0..(1 << 53)).contains(&a));
    }
}
