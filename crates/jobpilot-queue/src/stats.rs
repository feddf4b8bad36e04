//! Run statistics across the whole deployment: what one finished run adds to the per-minute
//! counters in the store, and how a window of those counters becomes the figures an operator
//! reads (runs, error rate, duration and queue-wait percentiles, tokens, failure groups).
//!
//! Counters are kept per minute as plain named integers, so both backends store them the same
//! way (a Redis hash per minute, redb rows keyed by minute) and every worker adds to the same
//! ones: the figures cover all workers, not one process. A run adds a fixed number of counters
//! whatever the traffic, and minutes older than [`KEEP_MINUTES`] are deleted, so memory and
//! disk stay bounded. Durations go into fixed log-scale histogram buckets (four per power of
//! two, so a percentile is off by at most 19 %); nothing is ever computed by reading runs.
//!
//! Counter names: `{agent}|{step}|{field}` where `step` is `*` for the run as a whole and
//! `field` is `n` (count), `err` (errors), `d{i}` (duration bucket), `w{i}` (queue-wait
//! bucket, runs only), `ti` / `to` (input / output tokens); failure groups are
//! `!|{agent}|{step}|{error.type}`.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// Minutes of counters kept (24 h and a margin).
pub const KEEP_MINUTES: u64 = 24 * 60 + 10;
/// Slowest runs kept per minute.
pub const SLOW_RUNS_PER_MINUTE: usize = 5;
/// Example run ids kept per failure group.
pub const FAILURE_EXAMPLES: usize = 5;
/// The step name that stands for the run as a whole.
pub const WHOLE_RUN: &str = "*";
/// Points of a sparkline, whatever the window.
const SERIES_POINTS: u64 = 30;
/// Histogram buckets: four per power of two of microseconds, up to 2^40 µs (12 days).
const BUCKETS: usize = 160;

/// A time window of the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum StatsWindow {
    /// The last 5 minutes.
    #[serde(rename = "5m")]
    FiveMinutes,
    /// The last hour.
    #[serde(rename = "1h")]
    Hour,
    /// The last 24 hours.
    #[serde(rename = "24h")]
    Day,
}

impl StatsWindow {
    /// Every window, shortest first.
    pub const ALL: [StatsWindow; 3] = [
        StatsWindow::FiveMinutes,
        StatsWindow::Hour,
        StatsWindow::Day,
    ];

    /// Its length in minutes.
    pub fn minutes(self) -> u64 {
        match self {
            StatsWindow::FiveMinutes => 5,
            StatsWindow::Hour => 60,
            StatsWindow::Day => 24 * 60,
        }
    }

    /// Its name: `5m`, `1h` or `24h`.
    pub fn as_str(self) -> &'static str {
        match self {
            StatsWindow::FiveMinutes => "5m",
            StatsWindow::Hour => "1h",
            StatsWindow::Day => "24h",
        }
    }
}

impl std::str::FromStr for StatsWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StatsWindow::ALL
            .into_iter()
            .find(|w| w.as_str() == s)
            .ok_or_else(|| format!("must be one of 5m, 1h, 24h (got {:?})", clip(s)))
    }
}

fn clip(s: &str) -> String {
    s.chars().take(32).collect()
}

/// The minute (since the epoch) that `at_ms` falls in.
pub fn minute_of(at_ms: u64) -> u64 {
    at_ms / 60_000
}

/// The histogram bucket of a duration in milliseconds.
pub fn bucket_of(ms: f64) -> usize {
    let us = (ms * 1000.0).max(1.0);
    ((us.log2() * 4.0).floor() as usize).min(BUCKETS - 1)
}

/// The value a bucket stands for, milliseconds (its geometric middle).
fn bucket_value_ms(bucket: usize) -> f64 {
    (2f64).powf((bucket as f64 + 0.5) / 4.0) / 1000.0
}

fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    let fine = |c: char| c != '|' && !c.is_control();
    if s.is_empty() {
        "unknown".into()
    } else if s.len() <= 64 && s.chars().all(fine) {
        s.into()
    } else {
        s.chars()
            .take(64)
            .map(|c| if fine(c) { c } else { '_' })
            .collect::<String>()
            .into()
    }
}

/// One step of a finished attempt, as the statistics count it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepSample {
    /// The step name.
    pub name: String,
    /// Whether it succeeded.
    pub success: bool,
    /// Its error type, when it failed.
    pub error_type: Option<String>,
    /// Its duration, milliseconds.
    pub duration_ms: f64,
    /// Tokens of its LLM calls.
    pub input_tokens: u64,
    /// Tokens of its LLM calls.
    pub output_tokens: u64,
}

/// What one attempt adds to the statistics, built by the store from the attempt it records
/// (see [`RunSample::counters`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RunSample {
    /// The run.
    pub run_id: String,
    /// Its agent type.
    pub agent_type: String,
    /// When the attempt ended, unix ms: the minute it is counted in.
    pub at_ms: u64,
    /// Whether the run finished with this attempt (it then counts as a run).
    pub run_finished: bool,
    /// Whether the run failed (counted only when it finished).
    pub run_failed: bool,
    /// The run's duration from acceptance to its end, milliseconds (when it finished).
    pub run_duration_ms: f64,
    /// Enqueue → start of the first attempt, milliseconds, for the attempt that measured it.
    pub queue_wait_ms: Option<f64>,
    /// The steps of the attempt.
    pub steps: Vec<StepSample>,
    /// The failure, `(step, error.type)`, when the run failed: it is counted in a group.
    pub failure: Option<(String, String)>,
}

impl RunSample {
    /// The counters this sample adds, as `(name, delta)`.
    pub fn counters(&self) -> Vec<(String, i64)> {
        let mut out = Vec::with_capacity(8 + 4 * self.steps.len());
        self.each_counter(|name, delta| out.push((name.to_owned(), delta)));
        out
    }

    /// Calls `add` with each counter this sample adds, its name in a buffer reused from one
    /// counter to the next: counting a run into sums that already hold its counters (the
    /// usual case) copies no name. The names are pushed piece by piece, not formatted: the
    /// formatting machinery cost ~7,500 instructions a run.
    pub fn each_counter(&self, mut add: impl FnMut(&str, i64)) {
        let mut name = String::with_capacity(96);
        let mut number = itoa::Buffer::new();
        // `{agent}|{step}|{field}`: the row part is written once per step, then each field
        // (a name, and a bucket's number for the histograms) is appended and cut off again.
        let mut emit = |name: &mut String, field: &str, bucket: Option<usize>, delta: i64| {
            let row = name.len();
            name.push_str(field);
            if let Some(bucket) = bucket {
                name.push_str(number.format(bucket));
            }
            add(name, delta);
            name.truncate(row);
        };
        let agent = sanitize(&self.agent_type);
        name.push_str(&agent);
        name.push('|');
        let agent_len = name.len();
        name.push_str(WHOLE_RUN);
        name.push('|');
        if self.run_finished {
            emit(&mut name, "n", None, 1);
            if self.run_failed {
                emit(&mut name, "err", None, 1);
            }
            emit(&mut name, "d", Some(bucket_of(self.run_duration_ms)), 1);
            let (ti, to) = self.steps.iter().fold((0, 0), |(i, o), s| {
                (i + s.input_tokens, o + s.output_tokens)
            });
            if ti > 0 {
                emit(&mut name, "ti", None, ti as i64);
            }
            if to > 0 {
                emit(&mut name, "to", None, to as i64);
            }
        }
        if let Some(wait) = self.queue_wait_ms {
            emit(&mut name, "w", Some(bucket_of(wait)), 1);
        }
        for step in &self.steps {
            name.truncate(agent_len);
            name.push_str(&sanitize(&step.name));
            name.push('|');
            emit(&mut name, "n", None, 1);
            if !step.success {
                emit(&mut name, "err", None, 1);
            }
            emit(&mut name, "d", Some(bucket_of(step.duration_ms)), 1);
            if step.input_tokens > 0 {
                emit(&mut name, "ti", None, step.input_tokens as i64);
            }
            if step.output_tokens > 0 {
                emit(&mut name, "to", None, step.output_tokens as i64);
            }
        }
        if let Some(group) = self.failure_group() {
            add(&group, 1);
        }
    }

    /// The same counters grouped by row: `{agent}|{step}` with its fields (`n`, `err`,
    /// `d{i}`, ...), and a failure group's name with the field `n`. The embedded store keeps
    /// one record per row and minute, so a run updates a handful of records, not one per
    /// counter.
    pub fn rows(&self) -> BTreeMap<String, Vec<(String, i64)>> {
        let mut rows: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
        for (name, delta) in self.counters() {
            let (row, field) = if name.starts_with("!|") {
                (name, "n".to_owned())
            } else {
                match name.rsplit_once('|') {
                    Some((row, field)) => (row.to_owned(), field.to_owned()),
                    None => continue,
                }
            };
            rows.entry(row).or_default().push((field, delta));
        }
        rows
    }

    /// The failure group's counter name, when the run failed.
    pub fn failure_group(&self) -> Option<String> {
        let (step, error_type) = self.failure.as_ref()?;
        Some(format!(
            "!|{}|{}|{}",
            sanitize(&self.agent_type),
            sanitize(step),
            sanitize(error_type)
        ))
    }
}

/// A run among the slowest of a minute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SlowRun {
    /// The run.
    pub run_id: String,
    /// Its duration from acceptance to its end, milliseconds.
    pub duration_ms: u64,
}

/// Three percentiles of a duration, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Figures of one step of an agent type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepStats {
    /// The step name.
    pub step: String,
    /// Times it ran (every attempt counts).
    pub runs: u64,
    /// Times it failed.
    pub errors: u64,
    /// `errors / runs`.
    pub error_rate: f64,
    /// Its duration.
    pub duration_ms: Percentiles,
    /// Tokens its LLM calls used.
    pub input_tokens: u64,
    /// Tokens its LLM calls used.
    pub output_tokens: u64,
}

/// Figures of one agent type.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentStats {
    /// The agent type.
    pub agent_type: String,
    /// Runs that finished in the window.
    pub runs: u64,
    /// Of which failed.
    pub errors: u64,
    /// `errors / runs`.
    pub error_rate: f64,
    /// Acceptance → end of the run.
    pub duration_ms: Percentiles,
    /// Enqueue → start of the first attempt (p99 included for completeness).
    pub queue_wait_ms: Percentiles,
    /// Tokens of the finished runs.
    pub input_tokens: u64,
    /// Tokens of the finished runs.
    pub output_tokens: u64,
    /// Runs finished per slot of the window, oldest first ([`Stats::slot_ms`] each).
    pub runs_series: Vec<u64>,
    /// Failed runs per slot, oldest first.
    pub errors_series: Vec<u64>,
    /// Per step, in the order of their names.
    pub steps: Vec<StepStats>,
}

/// Runs that failed the same way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailureGroup {
    /// The agent type.
    pub agent_type: String,
    /// The failing step (`*` when no step failed, e.g. a deadline or a lost worker).
    pub step: String,
    /// The error type.
    #[serde(rename = "error.type")]
    pub error_type: String,
    /// Runs in the window.
    pub count: u64,
    /// The minute of the first, unix ms.
    pub first_seen_ms: u64,
    /// The end of the minute of the last, unix ms.
    pub last_seen_ms: u64,
    /// A few of the latest such runs.
    pub example_run_ids: Vec<String>,
}

/// The statistics of a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stats {
    /// The window.
    pub window: StatsWindow,
    /// Its start, unix ms (a minute boundary).
    pub from_ms: u64,
    /// Its end, unix ms.
    pub to_ms: u64,
    /// The length of one slot of the series, ms.
    pub slot_ms: u64,
    /// Per agent type that ran in the window.
    pub agents: Vec<AgentStats>,
    /// Failures by agent type, step and error type, most frequent first.
    pub failure_groups: Vec<FailureGroup>,
    /// The slowest runs of the window, slowest first.
    pub slowest_runs: Vec<SlowRun>,
}

/// Counters of a window, as read from the store.
#[derive(Debug, Default)]
pub struct WindowCounters {
    /// `(minute, counter name, value)`.
    pub counters: Vec<(u64, String, i64)>,
    /// The slowest runs of each minute.
    pub slow: Vec<SlowRun>,
    /// Failure group counter name → example run ids, newest first.
    pub examples: HashMap<String, Vec<String>>,
}

#[derive(Default)]
struct Acc {
    n: u64,
    err: u64,
    ti: u64,
    to: u64,
    d: BTreeMap<usize, u64>,
    w: BTreeMap<usize, u64>,
    runs_series: Vec<u64>,
    errors_series: Vec<u64>,
}

fn percentiles(hist: &BTreeMap<usize, u64>) -> Percentiles {
    let total: u64 = hist.values().sum();
    if total == 0 {
        return Percentiles::default();
    }
    let at = |q: f64| {
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in hist {
            seen += count;
            if seen >= rank {
                return round3(bucket_value_ms(*bucket));
            }
        }
        0.0
    };
    Percentiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn rate(errors: u64, runs: u64) -> f64 {
    if runs == 0 {
        0.0
    } else {
        round3(errors as f64 / runs as f64)
    }
}

impl Stats {
    /// The minutes a window ending at `now_ms` covers: `[first, last]`.
    pub fn minutes(window: StatsWindow, now_ms: u64) -> (u64, u64) {
        let last = minute_of(now_ms);
        (last + 1 - window.minutes().min(last + 1), last)
    }

    /// The figures of `window` ending at `now_ms`, from the counters the store read for
    /// [`Stats::minutes`].
    pub fn from_counters(window: StatsWindow, now_ms: u64, read: WindowCounters) -> Stats {
        let (first, last) = Stats::minutes(window, now_ms);
        let minutes = last - first + 1;
        let per_slot = minutes.div_ceil(SERIES_POINTS).max(1);
        let slots = minutes.div_ceil(per_slot) as usize;
        let mut rows: BTreeMap<(String, String), Acc> = BTreeMap::new();
        let mut groups: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for (minute, name, value) in read.counters {
            if minute < first || minute > last || value <= 0 {
                continue;
            }
            let value = value as u64;
            let mut parts = name.splitn(4, '|');
            let (Some(a), Some(b), Some(c)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if a == "!" {
                let Some(d) = parts.next() else { continue };
                let key = format!("!|{b}|{c}|{d}");
                let entry = groups.entry(key).or_insert((0, u64::MAX, 0));
                entry.0 += value;
                entry.1 = entry.1.min(minute);
                entry.2 = entry.2.max(minute);
                continue;
            }
            let acc = rows.entry((a.to_owned(), b.to_owned())).or_default();
            if acc.runs_series.is_empty() {
                acc.runs_series = vec![0; slots];
                acc.errors_series = vec![0; slots];
            }
            let slot = ((minute - first) / per_slot) as usize;
            match c {
                "n" => {
                    acc.n += value;
                    acc.runs_series[slot.min(slots - 1)] += value;
                }
                "err" => {
                    acc.err += value;
                    acc.errors_series[slot.min(slots - 1)] += value;
                }
                "ti" => acc.ti += value,
                "to" => acc.to += value,
                other => {
                    let (hist, index) = match other.split_at_checked(1) {
                        Some(("d", i)) => (&mut acc.d, i),
                        Some(("w", i)) => (&mut acc.w, i),
                        _ => continue,
                    };
                    if let Ok(i) = index.parse::<usize>() {
                        *hist.entry(i.min(BUCKETS - 1)).or_default() += value;
                    }
                }
            }
        }
        let mut agents: BTreeMap<String, AgentStats> = BTreeMap::new();
        let mut steps: Vec<(String, StepStats)> = Vec::new();
        for ((agent, step), acc) in rows {
            if step == WHOLE_RUN {
                agents.insert(
                    agent.clone(),
                    AgentStats {
                        agent_type: agent,
                        runs: acc.n,
                        errors: acc.err,
                        error_rate: rate(acc.err, acc.n),
                        duration_ms: percentiles(&acc.d),
                        queue_wait_ms: percentiles(&acc.w),
                        input_tokens: acc.ti,
                        output_tokens: acc.to,
                        runs_series: acc.runs_series,
                        errors_series: acc.errors_series,
                        steps: Vec::new(),
                    },
                );
            } else {
                steps.push((
                    agent,
                    StepStats {
                        step,
                        runs: acc.n,
                        errors: acc.err,
                        error_rate: rate(acc.err, acc.n),
                        duration_ms: percentiles(&acc.d),
                        input_tokens: acc.ti,
                        output_tokens: acc.to,
                    },
                ));
            }
        }
        for (agent, step) in steps {
            let entry = agents.entry(agent.clone()).or_insert_with(|| AgentStats {
                agent_type: agent,
                runs: 0,
                errors: 0,
                error_rate: 0.0,
                duration_ms: Percentiles::default(),
                queue_wait_ms: Percentiles::default(),
                input_tokens: 0,
                output_tokens: 0,
                runs_series: vec![0; slots],
                errors_series: vec![0; slots],
                steps: Vec::new(),
            });
            entry.steps.push(step);
        }
        let mut failure_groups: Vec<FailureGroup> = groups
            .into_iter()
            .filter_map(|(key, (count, first_minute, last_minute))| {
                let mut parts = key.splitn(4, '|').skip(1);
                let (agent, step, error_type) = (parts.next()?, parts.next()?, parts.next()?);
                Some(FailureGroup {
                    agent_type: agent.to_owned(),
                    step: step.to_owned(),
                    error_type: error_type.to_owned(),
                    count,
                    first_seen_ms: first_minute * 60_000,
                    last_seen_ms: (last_minute + 1) * 60_000,
                    example_run_ids: read.examples.get(&key).cloned().unwrap_or_default(),
                })
            })
            .collect();
        failure_groups.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then(b.last_seen_ms.cmp(&a.last_seen_ms))
        });
        let mut slowest_runs = read.slow;
        slowest_runs.sort_by_key(|r| std::cmp::Reverse(r.duration_ms));
        slowest_runs.dedup_by(|a, b| a.run_id == b.run_id);
        slowest_runs.truncate(10);
        Stats {
            window,
            from_ms: first * 60_000,
            to_ms: now_ms,
            slot_ms: per_slot * 60_000,
            agents: agents.into_values().collect(),
            failure_groups,
            slowest_runs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(run_id: &str, failed: bool, duration_ms: f64) -> RunSample {
        RunSample {
            run_id: run_id.into(),
            agent_type: "job_match".into(),
            at_ms: 120_000,
            run_finished: true,
            run_failed: failed,
            run_duration_ms: duration_ms,
            queue_wait_ms: Some(5.0),
            steps: vec![StepSample {
                name: "parse_job".into(),
                success: !failed,
                error_type: failed.then(|| "invalid_input".to_owned()),
                duration_ms: duration_ms / 2.0,
                input_tokens: 10,
                output_tokens: 20,
            }],
            failure: failed.then(|| ("parse_job".to_owned(), "invalid_input".to_owned())),
        }
    }

    #[test]
    fn a_sample_names_its_counters_by_agent_step_and_field() {
        let mut failed = sample("r1", true, 100.0);
        failed.steps[0].name = "odd|step\n".into();
        let names: Vec<(String, i64)> = failed.counters();
        let d_run = bucket_of(100.0);
        let d_step = bucket_of(50.0);
        let w = bucket_of(5.0);
        assert_eq!(
            names,
            [
                ("job_match|*|n".to_owned(), 1),
                ("job_match|*|err".to_owned(), 1),
                (format!("job_match|*|d{d_run}"), 1),
                ("job_match|*|ti".to_owned(), 10),
                ("job_match|*|to".to_owned(), 20),
                (format!("job_match|*|w{w}"), 1),
                ("job_match|odd_step_|n".to_owned(), 1),
                ("job_match|odd_step_|err".to_owned(), 1),
                (format!("job_match|odd_step_|d{d_step}"), 1),
                ("job_match|odd_step_|ti".to_owned(), 10),
                ("job_match|odd_step_|to".to_owned(), 20),
                ("!|job_match|parse_job|invalid_input".to_owned(), 1),
            ]
        );
    }

    fn counters(samples: &[RunSample]) -> WindowCounters {
        WindowCounters {
            counters: samples
                .iter()
                .flat_map(|s| {
                    s.counters()
                        .into_iter()
                        .map(|(n, v)| (minute_of(s.at_ms), n, v))
                })
                .collect(),
            ..WindowCounters::default()
        }
    }

    #[test]
    fn buckets_are_within_a_fifth_of_the_value() {
        for ms in [0.01, 0.3, 1.0, 7.5, 120.0, 9_999.0, 300_000.0] {
            let back = bucket_value_ms(bucket_of(ms));
            assert!((back / ms - 1.0).abs() < 0.2, "{ms} -> {back}");
        }
    }

    #[test]
    fn runs_errors_and_percentiles_come_from_the_counters() {
        let mut samples: Vec<RunSample> = (0..99)
            .map(|i| sample(&format!("r{i}"), false, 100.0))
            .collect();
        samples.push(sample("slow", true, 10_000.0));
        let stats = Stats::from_counters(StatsWindow::Hour, 150_000, counters(&samples));
        assert_eq!(stats.agents.len(), 1);
        let agent = &stats.agents[0];
        assert_eq!((agent.runs, agent.errors), (100, 1));
        assert_eq!(agent.error_rate, 0.01);
        assert!(
            (agent.duration_ms.p50 / 100.0 - 1.0).abs() < 0.2,
            "{:?}",
            agent.duration_ms
        );
        assert!(
            (agent.duration_ms.p99 / 100.0 - 1.0).abs() < 0.2,
            "{:?}",
            agent.duration_ms
        );
        assert_eq!(agent.input_tokens, 1000);
        assert_eq!(agent.runs_series.iter().sum::<u64>(), 100);
        assert_eq!(agent.steps.len(), 1);
        assert_eq!((agent.steps[0].runs, agent.steps[0].errors), (100, 1));
        assert_eq!(stats.failure_groups.len(), 1);
        let group = &stats.failure_groups[0];
        assert_eq!(
            (group.step.as_str(), group.error_type.as_str(), group.count),
            ("parse_job", "invalid_input", 1)
        );
        assert_eq!(group.first_seen_ms, 120_000);
    }

    #[test]
    fn minutes_outside_the_window_are_left_out() {
        let old = sample("old", false, 1.0);
        let stats = Stats::from_counters(
            StatsWindow::FiveMinutes,
            120_000 + 10 * 60_000,
            counters(&[old]),
        );
        assert!(stats.agents.is_empty());
    }

    #[test]
    fn windows_parse_by_name() {
        assert_eq!("1h".parse::<StatsWindow>(), Ok(StatsWindow::Hour));
        assert!(
            "2h".parse::<StatsWindow>()
                .unwrap_err()
                .contains("5m, 1h, 24h")
        );
    }
}
