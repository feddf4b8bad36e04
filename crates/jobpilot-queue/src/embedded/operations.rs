//! The operator's side of the embedded store: the time-ordered run indexes behind listing,
//! the per-minute statistics, the tasks kept for retries, dead letters by task, and the
//! retry and cancel operations. Each is written in the same transaction as the run change
//! it belongs to, so an index or a counter never disagrees with the records.

use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{DEAD, Inner, RUNS, decode_run, encode_run, next_dead_key};
use crate::broker::{DeadLetter, DeadLetterPage, MAX_DEAD_LETTER_PAGE};
use crate::envelope::TaskEnvelope;
use crate::error::QueueError;
use crate::listing::{PageBuilder, RunPage, RunQuery};
use crate::run::{RunRecord, RunStatus};
use crate::stats::{
    FAILURE_EXAMPLES, KEEP_MINUTES, RunSample, SLOW_RUNS_PER_MINUTE, SlowRun, Stats, StatsWindow,
    WindowCounters, minute_of,
};
use crate::timeline::AttemptRecord;

/// (created at, run id) of every run: the listing of everyone's runs reads it newest first.
pub(super) const RUN_INDEX: TableDefinition<'_, (u64, &str), ()> =
    TableDefinition::new("runs_by_time");
/// (user id, created at, run id): one user's runs, newest first.
pub(super) const USER_RUN_INDEX: TableDefinition<'_, (&str, u64, &str), ()> =
    TableDefinition::new("runs_by_user_time");
/// Run id → the JSON task of a run that ended failed or cancelled, for a retry.
pub(super) const RETRY_TASKS: TableDefinition<'_, &str, &[u8]> =
    TableDefinition::new("retry_tasks");
/// (minute, row) → the row's counters as `field=value;...`; see [`crate::stats`] and
/// [`crate::stats::RunSample::rows`].
const STATS: TableDefinition<'_, (u64, &str), &str> = TableDefinition::new("stats_rows_by_minute");
/// (minute, run id) → duration ms of the slowest runs that finished in that minute.
const SLOW: TableDefinition<'_, (u64, &str), u64> = TableDefinition::new("slow_runs_by_minute");
/// Failure group counter name → JSON [`Examples`].
const FAIL_EXAMPLES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("failure_examples");
/// Task id → key of its dead letter in [`DEAD`].
pub(super) const DEAD_BY_TASK: TableDefinition<'_, &str, u64> =
    TableDefinition::new("dead_letters_by_task");

/// The latest runs of a failure group.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct Examples {
    /// When the latest was added, unix ms.
    last_ms: u64,
    /// Newest first.
    run_ids: Vec<String>,
}

impl Inner {
    /// Adds `run` to the time-ordered indexes inside `txn`.
    pub(super) fn index_run(
        &self,
        txn: &WriteTransaction,
        run: &RunRecord,
    ) -> Result<(), QueueError> {
        let mut all = txn
            .open_table(RUN_INDEX)
            .map_err(|e| self.storage_error(e))?;
        all.insert((run.created_at_ms, run.run_id.as_str()), ())
            .map_err(|e| self.storage_error(e))?;
        let mut mine = txn
            .open_table(USER_RUN_INDEX)
            .map_err(|e| self.storage_error(e))?;
        mine.insert(
            (run.user_id.as_str(), run.created_at_ms, run.run_id.as_str()),
            (),
        )
        .map_err(|e| self.storage_error(e))?;
        Ok(())
    }

    /// Removes `run` from the indexes and drops its kept task, inside `txn` (retention).
    pub(super) fn unindex_run(
        &self,
        txn: &WriteTransaction,
        run: &RunRecord,
    ) -> Result<(), QueueError> {
        let mut all = txn
            .open_table(RUN_INDEX)
            .map_err(|e| self.storage_error(e))?;
        all.remove((run.created_at_ms, run.run_id.as_str()))
            .map_err(|e| self.storage_error(e))?;
        let mut mine = txn
            .open_table(USER_RUN_INDEX)
            .map_err(|e| self.storage_error(e))?;
        mine.remove((run.user_id.as_str(), run.created_at_ms, run.run_id.as_str()))
            .map_err(|e| self.storage_error(e))?;
        let mut kept = txn
            .open_table(RETRY_TASKS)
            .map_err(|e| self.storage_error(e))?;
        kept.remove(run.run_id.as_str())
            .map_err(|e| self.storage_error(e))?;
        Ok(())
    }

    /// Keeps `task` for a retry of its run, inside `txn`.
    pub(super) fn keep_task(
        &self,
        txn: &WriteTransaction,
        task: &TaskEnvelope,
    ) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(task).map_err(|e| QueueError::Corrupt {
            what: format!("task {}", task.task_id),
            reason: e.to_string(),
        })?;
        let mut kept = txn
            .open_table(RETRY_TASKS)
            .map_err(|e| self.storage_error(e))?;
        kept.insert(task.run_id.as_str(), bytes.as_slice())
            .map_err(|e| self.storage_error(e))?;
        Ok(())
    }

    /// Adds what `sample` counts to the per-minute statistics inside `txn`: a fixed number
    /// of rows per run.
    pub(super) fn count_stats(
        &self,
        txn: &WriteTransaction,
        sample: &RunSample,
    ) -> Result<(), QueueError> {
        let minute = minute_of(sample.at_ms);
        {
            let mut stats = txn.open_table(STATS).map_err(|e| self.storage_error(e))?;
            for (row, deltas) in sample.rows() {
                let mut fields = stats
                    .get((minute, row.as_str()))
                    .map_err(|e| self.storage_error(e))?
                    .map(|v| parse_fields(v.value()))
                    .unwrap_or_default();
                for (field, delta) in deltas {
                    match fields.iter_mut().find(|(f, _)| *f == field) {
                        Some((_, value)) => *value = value.saturating_add(delta),
                        None => fields.push((field, delta)),
                    }
                }
                stats
                    .insert((minute, row.as_str()), format_fields(&fields).as_str())
                    .map_err(|e| self.storage_error(e))?;
            }
        }
        if sample.run_finished {
            let mut slow = txn.open_table(SLOW).map_err(|e| self.storage_error(e))?;
            slow.insert(
                (minute, sample.run_id.as_str()),
                sample.run_duration_ms as u64,
            )
            .map_err(|e| self.storage_error(e))?;
            let mut rows: Vec<(u64, String)> = Vec::new();
            for row in slow
                .range((minute, "")..(minute + 1, ""))
                .map_err(|e| self.storage_error(e))?
            {
                let (key, value) = row.map_err(|e| self.storage_error(e))?;
                rows.push((value.value(), key.value().1.to_owned()));
            }
            if rows.len() > SLOW_RUNS_PER_MINUTE {
                rows.sort();
                for (_, run_id) in &rows[..rows.len() - SLOW_RUNS_PER_MINUTE] {
                    slow.remove((minute, run_id.as_str()))
                        .map_err(|e| self.storage_error(e))?;
                }
            }
        }
        if let Some(group) = sample.failure_group() {
            let mut examples = txn
                .open_table(FAIL_EXAMPLES)
                .map_err(|e| self.storage_error(e))?;
            let mut current: Examples = examples
                .get(group.as_str())
                .map_err(|e| self.storage_error(e))?
                .and_then(|v| serde_json::from_slice(v.value()).ok())
                .unwrap_or_default();
            current.last_ms = sample.at_ms;
            current.run_ids.retain(|id| *id != sample.run_id);
            current.run_ids.insert(0, sample.run_id.clone());
            current.run_ids.truncate(FAILURE_EXAMPLES);
            let bytes = serde_json::to_vec(&current).unwrap_or_default();
            examples
                .insert(group.as_str(), bytes.as_slice())
                .map_err(|e| self.storage_error(e))?;
        }
        Ok(())
    }

    /// Deletes statistics older than [`KEEP_MINUTES`] before `now_ms`, a bounded batch.
    pub(super) fn purge_stats(
        &self,
        txn: &WriteTransaction,
        now_ms: u64,
        batch: usize,
    ) -> Result<usize, QueueError> {
        let cutoff = minute_of(now_ms).saturating_sub(KEEP_MINUTES);
        let mut removed = 0;
        {
            let mut stats = txn.open_table(STATS).map_err(|e| self.storage_error(e))?;
            let old: Vec<(u64, String)> = stats
                .range(..(cutoff, ""))
                .map_err(|e| self.storage_error(e))?
                .take(batch)
                .filter_map(|row| row.ok().map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                .collect();
            for (minute, name) in &old {
                stats
                    .remove((*minute, name.as_str()))
                    .map_err(|e| self.storage_error(e))?;
            }
            removed += old.len();
        }
        {
            let mut slow = txn.open_table(SLOW).map_err(|e| self.storage_error(e))?;
            let old: Vec<(u64, String)> = slow
                .range(..(cutoff, ""))
                .map_err(|e| self.storage_error(e))?
                .take(batch)
                .filter_map(|row| row.ok().map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                .collect();
            for (minute, run_id) in &old {
                slow.remove((*minute, run_id.as_str()))
                    .map_err(|e| self.storage_error(e))?;
            }
            removed += old.len();
        }
        {
            let mut examples = txn
                .open_table(FAIL_EXAMPLES)
                .map_err(|e| self.storage_error(e))?;
            let cutoff_ms = cutoff * 60_000;
            let mut old = Vec::new();
            for row in examples.iter().map_err(|e| self.storage_error(e))? {
                let (key, value) = row.map_err(|e| self.storage_error(e))?;
                let last =
                    serde_json::from_slice::<Examples>(value.value()).map_or(0, |e| e.last_ms);
                if last < cutoff_ms {
                    old.push(key.value().to_owned());
                }
                if old.len() >= batch {
                    break;
                }
            }
            for key in &old {
                examples
                    .remove(key.as_str())
                    .map_err(|e| self.storage_error(e))?;
            }
            removed += old.len();
        }
        Ok(removed)
    }

    /// Records a dead letter inside `txn`, replacing an earlier one of the same task.
    /// Returns by how much the number of dead letters grew (0 or 1).
    pub(super) fn insert_dead(
        &self,
        txn: &WriteTransaction,
        record: &DeadLetter,
    ) -> Result<u64, QueueError> {
        let bytes = serde_json::to_vec(record).map_err(|e| QueueError::Corrupt {
            what: format!("dead letter of task {}", record.task_id),
            reason: e.to_string(),
        })?;
        let mut dead = txn.open_table(DEAD).map_err(|e| self.storage_error(e))?;
        let mut by_task = txn
            .open_table(DEAD_BY_TASK)
            .map_err(|e| self.storage_error(e))?;
        let previous = by_task
            .get(record.task_id.as_str())
            .map_err(|e| self.storage_error(e))?
            .map(|v| v.value());
        if let Some(previous) = previous {
            dead.remove(previous).map_err(|e| self.storage_error(e))?;
        }
        let key = next_dead_key(&dead).map_err(|e| self.storage_error(e))?;
        dead.insert(key, bytes.as_slice())
            .map_err(|e| self.storage_error(e))?;
        by_task
            .insert(record.task_id.as_str(), key)
            .map_err(|e| self.storage_error(e))?;
        Ok(u64::from(previous.is_none()))
    }

    /// Removes the dead letter of `task_id` inside `txn`; whether there was one.
    pub(super) fn remove_dead(
        &self,
        txn: &WriteTransaction,
        task_id: &str,
    ) -> Result<bool, QueueError> {
        let mut by_task = txn
            .open_table(DEAD_BY_TASK)
            .map_err(|e| self.storage_error(e))?;
        let Some(key) = by_task
            .remove(task_id)
            .map_err(|e| self.storage_error(e))?
            .map(|v| v.value())
        else {
            return Ok(false);
        };
        let mut dead = txn.open_table(DEAD).map_err(|e| self.storage_error(e))?;
        dead.remove(key).map_err(|e| self.storage_error(e))?;
        Ok(true)
    }

    /// A page of runs from the indexes.
    pub(super) fn list(&self, query: &RunQuery) -> Result<RunPage, QueueError> {
        let txn = self.db.begin_read().map_err(|e| self.storage_error(e))?;
        let runs = match txn.open_table(RUNS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(RunPage::default()),
            Err(e) => return Err(self.storage_error(e)),
        };
        let load = |run_id: &str| -> Result<Option<RunRecord>, QueueError> {
            runs.get(run_id)
                .map_err(|e| self.storage_error(e))?
                .map(|raw| decode_run(run_id, raw.value()))
                .transpose()
        };
        let (low, high) = query.time_range();
        let mut page = PageBuilder::new(query);
        let mut exhausted = true;
        // The upper end: the cursor when there is one (exclusive), else the `until` bound.
        let (top_ms, top_id) = match &query.cursor {
            Some(c) if c.created_at_ms < high => (c.created_at_ms, c.run_id.clone()),
            Some(_) | None => (high, String::new()),
        };
        match &query.user_id {
            Some(user) => {
                let index = txn
                    .open_table(USER_RUN_INDEX)
                    .map_err(|e| self.storage_error(e))?;
                let range = index
                    .range((user.as_str(), low, "")..(user.as_str(), top_ms, top_id.as_str()))
                    .map_err(|e| self.storage_error(e))?;
                for row in range.rev() {
                    let (key, _) = row.map_err(|e| self.storage_error(e))?;
                    let (_, at, run_id) = key.value();
                    if !page.offer(at, run_id, load(run_id)?) {
                        exhausted = false;
                        break;
                    }
                }
            }
            None => {
                let index = txn
                    .open_table(RUN_INDEX)
                    .map_err(|e| self.storage_error(e))?;
                let range = index
                    .range((low, "")..(top_ms, top_id.as_str()))
                    .map_err(|e| self.storage_error(e))?;
                for row in range.rev() {
                    let (key, _) = row.map_err(|e| self.storage_error(e))?;
                    let (at, run_id) = key.value();
                    if !page.offer(at, run_id, load(run_id)?) {
                        exhausted = false;
                        break;
                    }
                }
            }
        }
        Ok(page.finish(exhausted))
    }

    /// The counters of `window` ending at `now_ms`.
    pub(super) fn read_stats(&self, window: StatsWindow, now_ms: u64) -> Result<Stats, QueueError> {
        let (first, last) = Stats::minutes(window, now_ms);
        let txn = self.db.begin_read().map_err(|e| self.storage_error(e))?;
        let mut read = WindowCounters::default();
        match txn.open_table(STATS) {
            Ok(stats) => {
                for row in stats
                    .range((first, "")..(last + 1, ""))
                    .map_err(|e| self.storage_error(e))?
                {
                    let (key, value) = row.map_err(|e| self.storage_error(e))?;
                    let (minute, row) = key.value();
                    for (field, count) in parse_fields(value.value()) {
                        // A failure group's row is its counter's whole name.
                        let name = if row.starts_with("!|") {
                            row.to_owned()
                        } else {
                            format!("{row}|{field}")
                        };
                        read.counters.push((minute, name, count));
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(self.storage_error(e)),
        }
        if let Ok(slow) = txn.open_table(SLOW) {
            for row in slow
                .range((first, "")..(last + 1, ""))
                .map_err(|e| self.storage_error(e))?
            {
                let (key, value) = row.map_err(|e| self.storage_error(e))?;
                read.slow.push(SlowRun {
                    run_id: key.value().1.to_owned(),
                    duration_ms: value.value(),
                });
            }
        }
        if let Ok(examples) = txn.open_table(FAIL_EXAMPLES) {
            for row in examples.iter().map_err(|e| self.storage_error(e))? {
                let (key, value) = row.map_err(|e| self.storage_error(e))?;
                if let Ok(ex) = serde_json::from_slice::<Examples>(value.value()) {
                    read.examples.insert(key.value().to_owned(), ex.run_ids);
                }
            }
        }
        Ok(Stats::from_counters(window, now_ms, read))
    }

    /// Queues a failed or cancelled run again with its kept task, in `txn`; returns the
    /// record, the sequence number of the new task (to publish once committed) and whether
    /// a dead letter was removed.
    pub(super) fn retry(
        &self,
        txn: &WriteTransaction,
        run_id: &str,
        at_ms: u64,
    ) -> Result<(RunRecord, u64, bool), QueueError> {
        let (next, task_bytes) = {
            let mut runs = txn.open_table(RUNS).map_err(|e| self.storage_error(e))?;
            let current = self.read_run(&runs, run_id)?;
            let next = current.with_retry(at_ms)?;
            let mut kept = txn
                .open_table(RETRY_TASKS)
                .map_err(|e| self.storage_error(e))?;
            let task = kept
                .remove(run_id)
                .map_err(|e| self.storage_error(e))?
                .map(|g| g.value().to_vec())
                .ok_or_else(|| crate::run::missing_task(run_id))?;
            let mut task: TaskEnvelope =
                serde_json::from_slice(&task).map_err(|e| QueueError::Corrupt {
                    what: format!("kept task of run {run_id}"),
                    reason: e.to_string(),
                })?;
            task.enqueued_at_ms = at_ms;
            task.prior_attempts = current.attempts;
            runs.insert(run_id, encode_run(&next)?.as_slice())
                .map_err(|e| self.storage_error(e))?;
            (next, super::encode_task(&task)?)
        };
        self.count_unfinished(txn, &next.user_id, 1)?;
        let removed = self.remove_dead(txn, run_id)?;
        let seq = self.write_task(txn, &task_bytes)?;
        Ok((next, seq, removed))
    }

    /// Applies a cancellation request in `txn`; returns the record as it is now and whether
    /// it changed.
    pub(super) fn cancel(
        &self,
        txn: &WriteTransaction,
        run_id: &str,
        at_ms: u64,
    ) -> Result<(RunRecord, bool), QueueError> {
        let mut runs = txn.open_table(RUNS).map_err(|e| self.storage_error(e))?;
        let current = self.read_run(&runs, run_id)?;
        let Some(next) = current.with_cancel(at_ms)? else {
            // Asked before, or already cancelled: nothing to write.
            return Ok((current, false));
        };
        runs.insert(run_id, encode_run(&next)?.as_slice())
            .map_err(|e| self.storage_error(e))?;
        drop(runs);
        self.book_change(txn, &current, &next, None)?;
        Ok((next, true))
    }

    /// A page of dead letters, newest first, below the key `before`.
    pub(super) fn dead_page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<DeadLetterPage, QueueError> {
        let limit = limit.clamp(1, MAX_DEAD_LETTER_PAGE);
        let txn = self.db.begin_read().map_err(|e| self.storage_error(e))?;
        let dead = txn.open_table(DEAD).map_err(|e| self.storage_error(e))?;
        let mut page = DeadLetterPage::default();
        let mut last = None;
        let range = dead
            .range(..before.unwrap_or(u64::MAX))
            .map_err(|e| self.storage_error(e))?;
        let mut more = false;
        for row in range.rev() {
            if page.dead_letters.len() == limit {
                more = true;
                break;
            }
            let (key, value) = row.map_err(|e| self.storage_error(e))?;
            let record =
                serde_json::from_slice(value.value()).map_err(|e| QueueError::Corrupt {
                    what: format!("dead letter {}", key.value()),
                    reason: e.to_string(),
                })?;
            page.dead_letters.push(record);
            last = Some(key.value());
        }
        if more {
            page.next_cursor = last.map(|k| k.to_string());
        }
        Ok(page)
    }

    /// Indexes the runs and dead letters of a store written before the indexes existed.
    pub(super) fn backfill_indexes(&self, txn: &WriteTransaction) -> Result<(), QueueError> {
        let runs = txn.open_table(RUNS).map_err(|e| self.storage_error(e))?;
        for row in runs.iter().map_err(|e| self.storage_error(e))? {
            let (_, value) = row.map_err(|e| self.storage_error(e))?;
            if let Ok(run) = serde_json::from_slice::<RunRecord>(value.value()) {
                self.index_run(txn, &run)?;
            }
        }
        let dead = txn.open_table(DEAD).map_err(|e| self.storage_error(e))?;
        let mut by_task = txn
            .open_table(DEAD_BY_TASK)
            .map_err(|e| self.storage_error(e))?;
        for row in dead.iter().map_err(|e| self.storage_error(e))? {
            let (key, value) = row.map_err(|e| self.storage_error(e))?;
            if let Ok(record) = serde_json::from_slice::<DeadLetter>(value.value()) {
                by_task
                    .insert(record.task_id.as_str(), key.value())
                    .map_err(|e| self.storage_error(e))?;
            }
        }
        Ok(())
    }

    /// Whether `attempt`'s record may still be merged: used by `finish_attempt`.
    pub(super) fn finish_attempt_in(
        &self,
        txn: &WriteTransaction,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<crate::run::RunOutcome>,
        task: &TaskEnvelope,
    ) -> Result<Option<(RunRecord, RunRecord)>, QueueError> {
        let (current, next) = {
            let mut runs = txn.open_table(RUNS).map_err(|e| self.storage_error(e))?;
            let current = self.read_run(&runs, run_id)?;
            let at_ms = attempt.finished_at_ms.unwrap_or(attempt.started_at_ms);
            match current.with_attempt(Some(attempt.clone()), outcome, at_ms) {
                Some(next) => {
                    runs.insert(run_id, encode_run(&next)?.as_slice())
                        .map_err(|e| self.storage_error(e))?;
                    (current, next)
                }
                None => {
                    // Already finished. A run cancelled while it waited is retried with the
                    // task its worker has just acknowledged unrun.
                    if matches!(current.status, RunStatus::Cancelled | RunStatus::Failed) {
                        let kept = txn
                            .open_table(RETRY_TASKS)
                            .map_err(|e| self.storage_error(e))?;
                        let missing = kept
                            .get(run_id)
                            .map_err(|e| self.storage_error(e))?
                            .is_none();
                        drop(kept);
                        if missing {
                            self.keep_task(txn, task)?;
                        }
                    }
                    return Ok(None);
                }
            }
        };
        self.book_change(txn, &current, &next, Some(&attempt))?;
        if matches!(next.status, RunStatus::Failed | RunStatus::Cancelled) {
            self.keep_task(txn, task)?;
        }
        Ok(Some((current, next)))
    }
}

/// Reads a statistics row's `field=value;...`; a damaged pair is skipped.
fn parse_fields(text: &str) -> Vec<(String, i64)> {
    text.split(';')
        .filter_map(|pair| pair.split_once('='))
        .filter_map(|(field, value)| Some((field.to_owned(), value.parse().ok()?)))
        .collect()
}

/// Writes what [`parse_fields`] reads.
fn format_fields(fields: &[(String, i64)]) -> String {
    let mut out = String::with_capacity(fields.len() * 8);
    for (i, (field, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        out.push_str(field);
        out.push('=');
        out.push_str(&value.to_string());
    }
    out
}
