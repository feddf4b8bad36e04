//! The statistics of finished attempts, summed in this process and written to Redis about
//! once a second, instead of with every run.
//!
//! Written with each run, a run's counters (a dozen or more `HINCRBY`s, the slowest-runs
//! and failure-example updates) cost Redis more than storing the run itself. Summed here,
//! a second of runs costs one `MULTI` with one increment per counter that changed, whatever
//! the rate. The price: the figures of [`crate::RunStore::run_stats`] lag by up to
//! [`FLUSH_EVERY`] behind runs finished in other processes, and a process that is killed
//! loses what it had not yet written (a worker that stops normally writes it first, through
//! [`crate::RunStore::flush`]). Runs themselves are never held back: only their counts.
//!
//! A write that fails is kept and tried again with the next, so a Redis restart delays the
//! figures rather than losing them; minutes older than the statistics keep are dropped, so
//! what is held stays bounded.

use std::collections::{BTreeMap, HashMap};

use foldhash::HashMap as FastMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::redis_error;
use crate::error::QueueError;
use crate::stats::{FAILURE_EXAMPLES, KEEP_MINUTES, RunSample, SLOW_RUNS_PER_MINUTE, minute_of};

/// How often the counters are written.
pub(super) const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The hash of the counters of `minute`.
pub(super) fn stats_key(prefix: &str, minute: u64) -> String {
    format!("{prefix}:stats:{minute}")
}

/// The sorted set of the slowest runs of `minute`.
pub(super) fn slow_key(prefix: &str, minute: u64) -> String {
    format!("{prefix}:slow:{minute}")
}

/// The list of example runs of a failure group, newest first.
pub(super) fn failure_key(prefix: &str, group: &str) -> String {
    format!("{prefix}:failex:{group}")
}

/// Counters, slowest runs and failure examples not yet written.
#[derive(Default)]
struct Pending {
    /// minute → counter name → increment. Ten or more lookups a run: a fast hasher (seeded
    /// per process) rather than SipHash.
    counters: BTreeMap<u64, FastMap<String, i64>>,
    /// minute → the slowest runs seen, `(duration ms, run id)`, at most
    /// [`SLOW_RUNS_PER_MINUTE`].
    slow: BTreeMap<u64, Vec<(u64, String)>>,
    /// failure group → example run ids, oldest first, at most [`FAILURE_EXAMPLES`].
    examples: HashMap<String, Vec<String>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.slow.is_empty() && self.examples.is_empty()
    }

    fn add(&mut self, sample: &RunSample) {
        let minute = minute_of(sample.at_ms);
        let counters = self.counters.entry(minute).or_default();
        sample.each_counter(|name, delta| match counters.get_mut(name) {
            Some(sum) => *sum += delta,
            None => {
                counters.insert(name.to_owned(), delta);
            }
        });
        if sample.run_finished {
            self.add_slow(minute, sample.run_duration_ms as u64, &sample.run_id);
        }
        if let Some(group) = sample.failure_group() {
            self.add_example(group, sample.run_id.clone());
        }
    }

    fn add_slow(&mut self, minute: u64, duration_ms: u64, run_id: &str) {
        let slow = self.slow.entry(minute).or_default();
        slow.retain(|(_, id)| id != run_id);
        slow.push((duration_ms, run_id.to_owned()));
        slow.sort_unstable_by_key(|(duration_ms, _)| std::cmp::Reverse(*duration_ms));
        slow.truncate(SLOW_RUNS_PER_MINUTE);
    }

    fn add_example(&mut self, group: String, run_id: String) {
        let examples = self.examples.entry(group).or_default();
        examples.retain(|id| *id != run_id);
        examples.push(run_id);
        let excess = examples.len().saturating_sub(FAILURE_EXAMPLES);
        examples.drain(..excess);
    }

    /// Adds `older` (a write that failed) back under what was counted since, keeping only
    /// the minutes the statistics still cover at `now_minute`.
    fn merge_older(&mut self, older: Pending, now_minute: u64) {
        let oldest = now_minute.saturating_sub(KEEP_MINUTES);
        for (minute, counters) in older.counters.into_iter().filter(|(m, _)| *m >= oldest) {
            let into = self.counters.entry(minute).or_default();
            for (name, delta) in counters {
                *into.entry(name).or_default() += delta;
            }
        }
        for (minute, slow) in older.slow.into_iter().filter(|(m, _)| *m >= oldest) {
            for (duration_ms, run_id) in slow {
                self.add_slow(minute, duration_ms, &run_id);
            }
        }
        for (group, older_ids) in older.examples {
            let newer = self.examples.remove(&group).unwrap_or_default();
            for run_id in older_ids.into_iter().chain(newer) {
                self.add_example(group.clone(), run_id);
            }
        }
    }
}

/// What this process counted and has not yet written, and the task that writes it.
pub(super) struct StatsBuffer {
    pending: Mutex<Pending>,
    /// Whether the writing task runs.
    started: Mutex<bool>,
    manager: ConnectionManager,
    prefix: String,
}

impl StatsBuffer {
    pub(super) fn new(manager: ConnectionManager, prefix: String) -> Arc<Self> {
        Arc::new(StatsBuffer {
            pending: Mutex::new(Pending::default()),
            started: Mutex::new(false),
            manager,
            prefix,
        })
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Each change is complete before the lock is released; a panic cannot leave it
        // half-made.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts `sample`; it is written within [`FLUSH_EVERY`].
    pub(super) fn add(self: &Arc<Self>, sample: &RunSample) {
        self.pending().add(sample);
        self.start_writing();
    }

    /// Starts the task that writes the counters every [`FLUSH_EVERY`], once. It ends when
    /// the buffer is dropped with its backend.
    fn start_writing(self: &Arc<Self>) {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        if *started {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to write from: the next flush or read writes them.
            return;
        };
        *started = true;
        let buffer: Weak<StatsBuffer> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(buffer) = buffer.upgrade() else {
                    return;
                };
                if let Err(e) = buffer.flush().await {
                    tracing::warn!(error = %e, "cannot write run statistics yet; keeping them for the next try");
                }
            }
        });
    }

    /// Writes what is pending, in one `MULTI`. On failure it is kept for the next write.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when Redis cannot be reached.
    pub(super) async fn flush(&self) -> Result<(), QueueError> {
        let taken = std::mem::take(&mut *self.pending());
        if taken.is_empty() {
            return Ok(());
        }
        let pipe = self.commands(&taken);
        let mut conn = self.manager.clone();
        let written: Result<(), _> = pipe.query_async(&mut conn).await;
        if let Err(e) = written {
            let now_minute = minute_of(crate::envelope::unix_now_ms());
            let mut pending = self.pending();
            pending.merge_older(taken, now_minute);
            return Err(redis_error("write run statistics", e));
        }
        Ok(())
    }

    fn commands(&self, pending: &Pending) -> redis::Pipeline {
        let lifetime = KEEP_MINUTES * 60;
        let prefix = &self.prefix;
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (minute, counters) in &pending.counters {
            let key = stats_key(prefix, *minute);
            for (name, delta) in counters {
                pipe.cmd("HINCRBY").arg(&key).arg(name).arg(delta).ignore();
            }
            pipe.cmd("EXPIRE").arg(&key).arg(lifetime).ignore();
        }
        for (minute, slow) in &pending.slow {
            let key = slow_key(prefix, *minute);
            for (duration_ms, run_id) in slow {
                pipe.cmd("ZADD")
                    .arg(&key)
                    .arg(duration_ms)
                    .arg(run_id)
                    .ignore();
            }
            let keep = SLOW_RUNS_PER_MINUTE as i64;
            pipe.cmd("ZREMRANGEBYRANK")
                .arg(&key)
                .arg(0)
                .arg(-(keep + 1))
                .ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(lifetime).ignore();
        }
        for (group, run_ids) in &pending.examples {
            let key = failure_key(prefix, group);
            // Newest first in the list: the oldest is pushed first.
            for run_id in run_ids {
                pipe.cmd("LREM").arg(&key).arg(0).arg(run_id).ignore();
                pipe.cmd("LPUSH").arg(&key).arg(run_id).ignore();
            }
            pipe.cmd("LTRIM")
                .arg(&key)
                .arg(0)
                .arg(FAILURE_EXAMPLES as i64 - 1)
                .ignore();
            pipe.cmd("EXPIRE").arg(&key).arg(lifetime).ignore();
        }
        pipe
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::StepSample;

    fn sample(run_id: &str, at_ms: u64, duration_ms: f64, failed: bool) -> RunSample {
        RunSample {
            run_id: run_id.to_owned(),
            agent_type: "job_match".to_owned(),
            at_ms,
            run_finished: true,
            run_failed: failed,
            run_duration_ms: duration_ms,
            queue_wait_ms: None,
            steps: vec![StepSample {
                name: "score".to_owned(),
                success: !failed,
                duration_ms: 1.0,
                error_type: failed.then(|| "invalid_input".to_owned()),
                input_tokens: 0,
                output_tokens: 0,
            }],
            failure: failed.then(|| ("score".to_owned(), "invalid_input".to_owned())),
        }
    }

    #[test]
    fn runs_are_summed_per_minute_and_the_slowest_and_newest_examples_kept() {
        let mut pending = Pending::default();
        for i in 0..8 {
            pending.add(&sample(&format!("ok-{i}"), 60_000, f64::from(i), false));
        }
        for i in 0..7 {
            pending.add(&sample(&format!("bad-{i}"), 61_000, 100.0, true));
        }
        pending.add(&sample("later", 120_000, 1.0, false));

        let minute = &pending.counters[&1];
        assert_eq!(minute["job_match|*|n"], 15);
        assert_eq!(minute["job_match|*|err"], 7);
        assert_eq!(pending.counters[&2]["job_match|*|n"], 1);
        let slow: Vec<&str> = pending.slow[&1].iter().map(|(_, id)| id.as_str()).collect();
        assert_eq!(slow.len(), SLOW_RUNS_PER_MINUTE);
        assert!(slow.iter().all(|id| id.starts_with("bad-")), "{slow:?}");
        let examples: Vec<&String> = pending.examples.values().next().unwrap().iter().collect();
        assert_eq!(examples, ["bad-2", "bad-3", "bad-4", "bad-5", "bad-6"]);
    }

    #[test]
    fn a_failed_write_is_merged_back_under_what_came_since() {
        let mut failed = Pending::default();
        failed.add(&sample("a", 60_000, 5.0, true));
        failed.add(&sample("ancient", 0, 9.0, false));
        let mut since = Pending::default();
        since.add(&sample("b", 60_000, 7.0, true));

        // A day and more later, minute 0 is no longer covered.
        since.merge_older(failed, KEEP_MINUTES + 1);
        assert_eq!(since.counters[&1]["job_match|*|n"], 2);
        assert!(!since.counters.contains_key(&0));
        let examples = since.examples.values().next().unwrap();
        assert_eq!(examples, &["a".to_owned(), "b".to_owned()], "oldest first");
    }
}
