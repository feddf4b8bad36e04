//! The embedded backend: a durable, single-process queue and run store in one
//! redb file (`{dir}/jobpilot.redb`).
//!
//! What it is: the backend for running jobpilot as one process with no external
//! services. Every accepted task is committed to disk before `enqueue` returns,
//! and a delivery's attempt count is committed before the delivery is handed
//! out, so a crash in the middle of a run still counts that attempt. On open,
//! every task that was in flight is due again and will be redelivered.
//!
//! What it is not: a shared queue. redb locks the file, so a second process (or
//! a second backend in the same process) gets [`QueueError::Locked`]. Lease
//! deadlines (the visibility timeout, `extend` heartbeats and `retry_later`
//! delays) live in memory only; after a restart every unacknowledged task is
//! due at once.
//!
//! Safety of the file: [`EmbeddedBackend::open`] never creates a store (a
//! missing or empty file is refused, so a wrong directory cannot silently start
//! empty); [`EmbeddedBackend::create`] makes one on purpose, owner-only. After
//! an unclean shutdown the whole file is integrity-checked on open. Damaged
//! data is [`QueueError::Corrupt`], remembered so that `ping` (readiness) fails
//! from then on, never [`QueueError::Unavailable`].
//!
//! Retention: finished runs are indexed by their finish time, and
//! [`EmbeddedBackend::run_retention_until`] deletes those (and dead letters)
//! older than [`QueueSettings::run_retention`] in bounded batches; redb reuses
//! the freed pages, so the file stops growing.
//!
//! Writes are grouped ([`group_commit`]): one writer thread makes every write,
//! many concurrent ones in one transaction and one fsync, and none returns
//! before it is on disk.
//!
//! redb is a blocking library, so writes run on that thread and reads on
//! `tokio::task::spawn_blocking`; neither stalls the async workers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{
    Broker, DeadLetter, DeadLetterPage, QueueStats, RunStore, UNREADABLE_TASK_ERROR,
    dead_lettered_outcome, undecodable_dead_letter,
};
use crate::envelope::{Delivery, TaskEnvelope, unix_now_ms};
use crate::error::QueueError;
use crate::events::{EVENT_BUFFER, EventReceiver, RunEvent, RunEventKind};
use crate::listing::{RunPage, RunQuery};
use crate::run::{RunOutcome, RunRecord, RunStatus};
use crate::settings::QueueSettings;
use crate::stats::{Stats, StatsWindow};
use crate::timeline::AttemptRecord;

mod group_commit;
mod operations;
use group_commit::Writer;
use operations::DEAD_BY_TASK;

/// File name of the store inside the directory given to [`EmbeddedBackend::open`].
const FILE_NAME: &str = "jobpilot.redb";
/// Task sequence number → JSON [`StoredTask`].
const TASKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("tasks");
/// Run id → JSON [`RunRecord`].
const RUNS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("runs");
/// Dead-letter sequence number → JSON [`DeadLetter`].
const DEAD: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("dead_letters");
/// (finished at, unix ms; run id) of every finished run: the retention clean-up
/// finds expired runs here without reading the others.
const FINISHED: TableDefinition<'_, (u64, &str), ()> = TableDefinition::new("finished_runs");
/// Small counters that must survive restarts.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// user id → how many of the user's runs are not finished.
const UNFINISHED: TableDefinition<'_, &str, u64> = TableDefinition::new("unfinished_by_user");
/// Next task sequence number. Stored rather than derived from the last key so
/// that numbers are never reused, even after the queue drains completely.
const NEXT_TASK_SEQ: &str = "next_task_seq";
/// Set once [`FINISHED`] holds every finished run (stores written before it
/// existed are indexed on their first open).
const FINISHED_INDEXED: &str = "finished_runs_indexed";
/// Set once [`UNFINISHED`] counts every unfinished run (stores written before
/// it existed are counted on their first open).
const UNFINISHED_COUNTED: &str = "unfinished_runs_counted";
/// Set once the run indexes and dead letters by task cover the whole store.
const OPERATOR_INDEXED: &str = "operator_indexes_built";
/// Rows one clean-up transaction deletes at most, per table.
const PURGE_BATCH: usize = 500;
/// Clean-up transactions per tick at most, so one tick stays short.
const PURGE_BATCHES_PER_TICK: usize = 20;
/// redb's default page cache is 1 GiB; a task queue needs far less.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// A task as stored on disk.
#[derive(Serialize, Deserialize)]
struct StoredTask {
    /// Deliveries made so far; 0 means never delivered.
    attempts: u32,
    envelope: TaskEnvelope,
}

/// Just the attempt count, read on open without decoding whole envelopes.
#[derive(Deserialize)]
struct StoredAttempts {
    attempts: u32,
}

/// A delivered, unacknowledged task: when it may be taken again and by whom it
/// is held.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// The instant another receive may take the task over.
    due: Instant,
    /// The attempt of the latest hand-out; 0 while a hand-out is being
    /// committed. A caller whose delivery carries another attempt is stale.
    attempt: u32,
    /// Whether a worker holds it. False after `retry_later` parked it, after a
    /// restart, and while a hand-out is being committed: such a lease cannot
    /// be extended.
    held: bool,
}

impl Lease {
    /// Whether `delivery`'s attempt is the latest hand-out of this task.
    fn is_current(&self, delivery: &Delivery) -> bool {
        self.attempt != 0 && self.attempt == delivery.attempt
    }
}

/// In-memory view of which tasks can be handed out when.
#[derive(Default)]
struct State {
    /// Never-delivered tasks, in enqueue order.
    fresh: BTreeSet<u64>,
    /// Delivered, unacknowledged tasks.
    leased: BTreeMap<u64, Lease>,
    /// Size of the dead-letter table, kept here so `stats` needs no disk read.
    dead_count: u64,
}

/// What a task looked like before `receive` picked it, so a failed disk write
/// can put it back.
#[derive(Clone, Copy)]
enum Before {
    Fresh,
    Leased(Lease),
}

struct Inner {
    db: Database,
    path: PathBuf,
    settings: QueueSettings,
    state: Mutex<State>,
    /// Woken on enqueue (and when a lease deadline moves earlier) so waiting
    /// receivers react at once instead of polling.
    notify: Notify,
    /// The first corruption an operation ran into; readiness fails from then on.
    corrupt: Mutex<Option<String>>,
    /// Run events, to the subscribers of this process (the only one on this store).
    events: tokio::sync::broadcast::Sender<RunEvent>,
    /// Ids of runs whose cancellation was asked for, to the worker running them.
    cancels: tokio::sync::broadcast::Sender<String>,
    /// Transactions committed, each covering one or more writes.
    commits: std::sync::atomic::AtomicU64,
    /// Test hook: the next `accept` fails between its two writes.
    #[cfg(feature = "fault-injection")]
    fail_next_accept: std::sync::atomic::AtomicBool,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state is only mutated in short, panic-free sections, so a poisoned
        // lock still guards consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Maps a redb failure: a damaged file is corruption (and remembered, so that
    /// readiness reports it from then on), anything else is "try again later".
    fn storage_error(&self, err: impl Into<redb::Error>) -> QueueError {
        match err.into() {
            redb::Error::Corrupted(reason) => {
                tracing::error!(path = %self.path.display(), %reason, "the queue store is corrupt");
                let mut seen = self.corrupt.lock().unwrap_or_else(PoisonError::into_inner);
                seen.get_or_insert_with(|| reason.clone());
                self.corruption(reason)
            }
            other => self.unavailable(other),
        }
    }

    fn count_commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn unavailable(&self, err: impl Display) -> QueueError {
        QueueError::Unavailable(format!("queue store {}: {err}", self.path.display()))
    }

    fn corruption(&self, reason: String) -> QueueError {
        QueueError::Corrupt {
            what: format!("queue store {}", self.path.display()),
            reason,
        }
    }

    /// The corruption seen so far, if any.
    fn known_corruption(&self) -> Option<QueueError> {
        let seen = self.corrupt.lock().unwrap_or_else(PoisonError::into_inner);
        seen.clone().map(|reason| self.corruption(reason))
    }

    /// Moves up to `max` due tasks to "leased" and returns them; when none is due
    /// also returns the earliest instant a lease expires.
    fn pick(&self, max: usize, now: Instant) -> (Vec<(u64, Before)>, Option<Instant>) {
        // Nobody holds a picked task until `claim` has committed its attempt.
        let claiming = Lease {
            due: now + self.settings.visibility_timeout,
            attempt: 0,
            held: false,
        };
        let mut state = self.state();
        // Expired leases go first: they are the oldest work and were promised a
        // prompt redelivery.
        let expired: Vec<(u64, Lease)> = state
            .leased
            .iter()
            .filter(|(_, lease)| lease.due <= now)
            .take(max)
            .map(|(seq, lease)| (*seq, *lease))
            .collect();
        let mut picked = Vec::with_capacity(max.min(64));
        for (seq, lease) in expired {
            state.leased.insert(seq, claiming);
            picked.push((seq, Before::Leased(lease)));
        }
        while picked.len() < max {
            let Some(seq) = state.fresh.pop_first() else {
                break;
            };
            state.leased.insert(seq, claiming);
            picked.push((seq, Before::Fresh));
        }
        let next_due = if picked.is_empty() {
            state.leased.values().map(|lease| lease.due).min()
        } else {
            None
        };
        (picked, next_due)
    }

    /// Puts picked tasks back after the claiming transaction failed.
    fn unpick(&self, picked: &[(u64, Before)]) {
        let mut state = self.state();
        for (seq, before) in picked {
            if !state.leased.contains_key(seq) {
                // Acknowledged in the meantime: nothing to restore.
                continue;
            }
            match before {
                Before::Fresh => {
                    state.leased.remove(seq);
                    state.fresh.insert(*seq);
                }
                Before::Leased(lease) => {
                    state.leased.insert(*seq, *lease);
                }
            }
        }
    }

    fn forget(&self, seq: u64) {
        let mut state = self.state();
        state.leased.remove(&seq);
        state.fresh.remove(&seq);
    }

    /// Increments the attempt count of each picked task in `txn`, returning the
    /// deliveries plus the tasks that vanished or had to be dead-lettered.
    fn claim(
        &self,
        txn: &redb::WriteTransaction,
        picked: &[(u64, Before)],
    ) -> Result<Claimed, QueueError> {
        let mut claimed = Claimed::default();
        {
            let mut tasks = txn.open_table(TASKS).map_err(|e| self.storage_error(e))?;
            let mut poisoned = Vec::new();
            for (seq, _) in picked {
                let raw = tasks
                    .get(*seq)
                    .map_err(|e| self.storage_error(e))?
                    .map(|guard| guard.value().to_vec());
                let Some(raw) = raw else {
                    // Acknowledged by a previous holder after we picked it.
                    claimed.gone.push(*seq);
                    continue;
                };
                match serde_json::from_slice::<StoredTask>(&raw) {
                    Ok(mut task) => {
                        task.attempts = task.attempts.saturating_add(1);
                        let bytes = serde_json::to_vec(&task).map_err(|e| corrupt(*seq, e))?;
                        tasks
                            .insert(*seq, bytes.as_slice())
                            .map_err(|e| self.storage_error(e))?;
                        claimed.deliveries.push(Delivery::new(
                            task.envelope,
                            task.attempts,
                            seq.to_string(),
                        ));
                    }
                    Err(err) => {
                        // Poison must not wedge the queue: park it on the
                        // dead-letter list and carry on with the rest.
                        let text = String::from_utf8_lossy(&raw);
                        let attempts = serde_json::from_slice::<StoredAttempts>(&raw)
                            .map(|a| a.attempts)
                            .unwrap_or(0);
                        let record = undecodable_dead_letter(
                            &seq.to_string(),
                            &text,
                            attempts,
                            format!("stored task could not be decoded: {err}"),
                            unix_now_ms(),
                        );
                        tasks.remove(*seq).map_err(|e| self.storage_error(e))?;
                        poisoned.push(record);
                        claimed.gone.push(*seq);
                    }
                }
            }
            drop(tasks);
            for record in &poisoned {
                claimed.dead_added += self.insert_dead(txn, record)?;
                // The run must not wait for ever on a task that is gone.
                self.finish_dead_lettered(txn, &record.run_id, UNREADABLE_TASK_ERROR)?;
            }
        }
        Ok(claimed)
    }

    /// Appends a task (sequence number from `META`) inside `txn`.
    fn write_task(&self, txn: &redb::WriteTransaction, bytes: &[u8]) -> Result<u64, QueueError> {
        let mut meta = txn.open_table(META).map_err(|e| self.storage_error(e))?;
        let seq = meta
            .get(NEXT_TASK_SEQ)
            .map_err(|e| self.storage_error(e))?
            .map(|guard| guard.value())
            .unwrap_or(0);
        meta.insert(NEXT_TASK_SEQ, seq.saturating_add(1))
            .map_err(|e| self.storage_error(e))?;
        let mut tasks = txn.open_table(TASKS).map_err(|e| self.storage_error(e))?;
        tasks
            .insert(seq, bytes)
            .map_err(|e| self.storage_error(e))?;
        Ok(seq)
    }

    /// Makes a committed task visible to receivers. Called on the blocking thread
    /// right after the commit, so a caller that stops waiting (a dropped future)
    /// cannot leave a task on disk that no receiver knows about.
    fn publish(&self, seq: u64) {
        self.state().fresh.insert(seq);
        self.notify.notify_waiters();
    }

    /// Writes a new run and its task in `txn`, counting the run in its user's
    /// unfinished runs (unless it is stored finished); returns the task's sequence
    /// number, to publish once committed.
    fn accept(
        &self,
        txn: &redb::WriteTransaction,
        record: &RunRecord,
        run: &[u8],
        task: &[u8],
    ) -> Result<u64, QueueError> {
        let run_id = record.run_id.as_str();
        {
            let mut runs = txn.open_table(RUNS).map_err(|e| self.storage_error(e))?;
            let exists = runs
                .get(run_id)
                .map_err(|e| self.storage_error(e))?
                .is_some();
            if exists {
                return Err(QueueError::AlreadyExists(run_id.to_owned()));
            }
            runs.insert(run_id, run)
                .map_err(|e| self.storage_error(e))?;
        }
        if !record.status.is_terminal() {
            self.count_unfinished(txn, &record.user_id, 1)?;
        }
        self.index_run(txn, record)?;
        #[cfg(feature = "fault-injection")]
        if self
            .fail_next_accept
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            // A storage error rolls the transaction back, as a crash here would.
            return Err(self.unavailable("injected fault between the run and task writes"));
        }
        self.write_task(txn, task)
    }

    /// Sends `event` to this process's subscribers, if any.
    fn emit(&self, event: RunEvent) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
    }

    /// Inside `txn`, finishes `run_id` as failed and dead-lettered with `error`,
    /// unless it finished before. A run that is not stored (or an empty id, from
    /// a task too damaged to name its run) is left alone.
    fn finish_dead_lettered(
        &self,
        txn: &redb::WriteTransaction,
        run_id: &str,
        error: &str,
    ) -> Result<(), QueueError> {
        if run_id.is_empty() {
            return Ok(());
        }
        let mut runs = txn.open_table(RUNS).map_err(|e| self.storage_error(e))?;
        let raw = runs
            .get(run_id)
            .map_err(|e| self.storage_error(e))?
            .map(|guard| guard.value().to_vec());
        let Some(raw) = raw else {
            return Ok(());
        };
        let Ok(current) = decode_run(run_id, &raw) else {
            // A damaged record cannot be finished; the dead letter still names it.
            return Ok(());
        };
        if let Some(next) = current.with_outcome(dead_lettered_outcome(error), unix_now_ms()) {
            let bytes = encode_run(&next)?;
            runs.insert(run_id, bytes.as_slice())
                .map_err(|e| self.storage_error(e))?;
            drop(runs);
            self.book_change(txn, &current, &next, None)?;
        }
        Ok(())
    }

    /// Inside `txn`, books what changing the stored `current` into `next` means beyond the
    /// record itself: the finished-run index and unfinished count
    /// ([`Inner::record_if_finished`]) and the statistics of the change (with `attempt`,
    /// when one ended with it).
    fn book_change(
        &self,
        txn: &redb::WriteTransaction,
        current: &RunRecord,
        next: &RunRecord,
        attempt: Option<&AttemptRecord>,
    ) -> Result<(), QueueError> {
        self.record_if_finished(txn, current, next)?;
        if let Some(sample) = current.stats_sample(next, attempt) {
            self.count_stats(txn, &sample)?;
        }
        Ok(())
    }

    /// Inside `txn`, books a run that `next` finishes: indexes it in [`FINISHED`]
    /// for the clean-up and takes it off its user's unfinished count. Every change
    /// that finishes a run goes through here, so the count and the index stay in
    /// step with the records (and the clean-up only deletes runs already counted
    /// down).
    fn record_if_finished(
        &self,
        txn: &redb::WriteTransaction,
        current: &RunRecord,
        next: &RunRecord,
    ) -> Result<(), QueueError> {
        if current.status.is_terminal() || !next.status.is_terminal() {
            return Ok(());
        }
        self.count_unfinished(txn, &current.user_id, -1)?;
        let at = next.finished_at_ms.unwrap_or(0);
        let mut index = txn
            .open_table(FINISHED)
            .map_err(|e| self.storage_error(e))?;
        index
            .insert((at, next.run_id.as_str()), ())
            .map_err(|e| self.storage_error(e))?;
        Ok(())
    }

    /// Deletes up to [`PURGE_BATCH`] runs finished before `cutoff_ms`, and as many
    /// dead letters recorded before it, in one transaction.
    fn purge(
        &self,
        txn: &redb::WriteTransaction,
        cutoff_ms: u64,
        now_ms: u64,
    ) -> Result<Purged, QueueError> {
        let mut purged = Purged::default();
        {
            let mut index = txn
                .open_table(FINISHED)
                .map_err(|e| self.storage_error(e))?;
            let mut runs = txn.open_table(RUNS).map_err(|e| self.storage_error(e))?;
            let mut expired: Vec<(u64, String)> = Vec::new();
            for row in index
                .range(..(cutoff_ms, ""))
                .map_err(|e| self.storage_error(e))?
                .take(PURGE_BATCH)
            {
                let (key, _) = row.map_err(|e| self.storage_error(e))?;
                let (at, run_id) = key.value();
                expired.push((at, run_id.to_owned()));
            }
            let mut removed = Vec::with_capacity(expired.len());
            for (at, run_id) in &expired {
                let record = runs
                    .remove(run_id.as_str())
                    .map_err(|e| self.storage_error(e))?
                    .and_then(|raw| decode_run(run_id, raw.value()).ok());
                removed.extend(record);
                index
                    .remove((*at, run_id.as_str()))
                    .map_err(|e| self.storage_error(e))?;
            }
            purged.runs = expired.len();

            let mut dead = txn.open_table(DEAD).map_err(|e| self.storage_error(e))?;
            let mut old = Vec::new();
            for row in dead
                .iter()
                .map_err(|e| self.storage_error(e))?
                .take(PURGE_BATCH)
            {
                let (key, value) = row.map_err(|e| self.storage_error(e))?;
                // Dead letters are appended in time order: stop at the first young one.
                // One that cannot be decoded is of no use to anyone and goes too.
                let time = serde_json::from_slice::<DeadLetterTime>(value.value()).ok();
                let at = time.as_ref().map_or(0, |d| d.at_ms);
                if at >= cutoff_ms {
                    break;
                }
                old.push((key.value(), time.map(|d| d.task_id).unwrap_or_default()));
            }
            let mut by_task = txn
                .open_table(DEAD_BY_TASK)
                .map_err(|e| self.storage_error(e))?;
            for (key, task_id) in &old {
                dead.remove(*key).map_err(|e| self.storage_error(e))?;
                // Only when it still points here: a newer dead letter of the task stays.
                let current = by_task
                    .get(task_id.as_str())
                    .map_err(|e| self.storage_error(e))?
                    .map(|v| v.value());
                if current == Some(*key) {
                    by_task
                        .remove(task_id.as_str())
                        .map_err(|e| self.storage_error(e))?;
                }
            }
            purged.dead_letters = old.len();
            drop((dead, by_task, runs, index));
            for run in &removed {
                self.unindex_run(txn, run)?;
            }
            purged.stats = self.purge_stats(txn, now_ms, PURGE_BATCH)?;
        }
        Ok(purged)
    }

    /// Adds `delta` to the unfinished-runs counter of `user_id` inside `txn`.
    fn count_unfinished(
        &self,
        txn: &redb::WriteTransaction,
        user_id: &str,
        delta: i64,
    ) -> Result<(), QueueError> {
        let mut table = txn
            .open_table(UNFINISHED)
            .map_err(|e| self.storage_error(e))?;
        let current = table
            .get(user_id)
            .map_err(|e| self.storage_error(e))?
            .map_or(0, |v| v.value());
        let next = current.saturating_add_signed(delta);
        if next == 0 {
            table.remove(user_id).map_err(|e| self.storage_error(e))?;
        } else {
            table
                .insert(user_id, next)
                .map_err(|e| self.storage_error(e))?;
        }
        Ok(())
    }

    /// The stored run `run_id`, read from `runs`; [`QueueError::NotFound`] when there is none.
    fn read_run(
        &self,
        runs: &redb::Table<'_, &'static str, &'static [u8]>,
        run_id: &str,
    ) -> Result<RunRecord, QueueError> {
        let raw = runs
            .get(run_id)
            .map_err(|e| self.storage_error(e))?
            .ok_or_else(|| QueueError::NotFound {
                kind: "run",
                id: run_id.to_owned(),
            })?;
        decode_run(run_id, raw.value())
    }

    /// Applies `change` to a stored run inside one write transaction.
    fn update_run(
        &self,
        txn: &redb::WriteTransaction,
        run_id: &str,
        change: impl FnOnce(&RunRecord) -> Option<RunRecord>,
    ) -> Result<(), QueueError> {
        let mut runs = txn.open_table(RUNS).map_err(|e| self.storage_error(e))?;
        let current = self.read_run(&runs, run_id)?;
        if let Some(next) = change(&current) {
            let bytes = encode_run(&next)?;
            runs.insert(run_id, bytes.as_slice())
                .map_err(|e| self.storage_error(e))?;
            drop(runs);
            self.book_change(txn, &current, &next, None)?;
        }
        Ok(())
    }
}

/// Just the time and task of a dead letter, read by the clean-up.
#[derive(Deserialize)]
struct DeadLetterTime {
    at_ms: u64,
    #[serde(default)]
    task_id: String,
}

/// What one clean-up pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Finished runs deleted.
    pub runs: usize,
    /// Dead letters deleted.
    pub dead_letters: usize,
    /// Rows of statistics older than a day deleted.
    pub stats: usize,
}

#[derive(Default)]
struct Claimed {
    deliveries: Vec<Delivery>,
    gone: Vec<u64>,
    dead_added: u64,
}

/// How many rows the store's tables hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoredCounts {
    /// Run records, finished or not.
    pub runs: u64,
    /// Tasks not yet acknowledged or dead-lettered.
    pub tasks: u64,
    /// Dead letters.
    pub dead_letters: u64,
    /// Entries of the index of finished runs that the retention clean-up reads.
    pub finished_index: u64,
}

/// A durable single-process queue and run store backed by one redb file.
///
/// Cheap to clone; clones share the same store.
#[derive(Clone)]
pub struct EmbeddedBackend {
    inner: Arc<Inner>,
    /// Makes every write (see [`group_commit`]).
    writer: Arc<Writer>,
}

impl std::fmt::Debug for EmbeddedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBackend")
            .field("path", &self.inner.path)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl EmbeddedBackend {
    /// Opens the existing store `{dir}/jobpilot.redb`. Tasks that were in flight
    /// when the store was last closed are due for redelivery at once.
    ///
    /// It never creates a store: a missing or empty (0-byte) file is refused,
    /// because starting empty would silently hide every known run (a wrong
    /// directory, a lost mount, a truncated file). [`EmbeddedBackend::create`]
    /// makes a new store on purpose. After an unclean shutdown redb recovers the
    /// file on open, and the whole file is then checked for integrity.
    ///
    /// This does blocking file I/O; call it at startup or from
    /// `spawn_blocking`.
    ///
    /// # Errors
    /// [`QueueError::StoreMissing`] / [`QueueError::StoreEmpty`] as above;
    /// [`QueueError::Corrupt`] when the file is damaged beyond repair;
    /// [`QueueError::Locked`] when another process (or another backend in this
    /// process) has the store open; [`QueueError::InvalidConfig`] for a zero
    /// visibility timeout; [`QueueError::Unavailable`] when the file cannot be
    /// read.
    pub fn open(dir: &Path, settings: QueueSettings) -> Result<Self, QueueError> {
        check_settings(&settings)?;
        let path = dir.join(FILE_NAME);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(QueueError::StoreMissing { path });
            }
            Err(e) => {
                return Err(QueueError::Unavailable(format!(
                    "cannot read queue store {}: {e}",
                    path.display()
                )));
            }
            Ok(meta) if meta.len() == 0 => return Err(QueueError::StoreEmpty { path }),
            Ok(_) => {}
        }
        Self::open_file(path, settings, false)
    }

    /// Creates the store `{dir}/jobpilot.redb` if there is none (or only an empty
    /// file), then opens it; an existing store is opened as it is. A directory it
    /// creates gets mode 0700 and the file 0600 (both hold resumes).
    ///
    /// # Errors
    /// As [`EmbeddedBackend::open`], and [`QueueError::Unavailable`] when the
    /// directory or file cannot be created.
    pub fn create(dir: &Path, settings: QueueSettings) -> Result<Self, QueueError> {
        check_settings(&settings)?;
        create_private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(&path).map_err(|e| {
            QueueError::Unavailable(format!("cannot create queue store {}: {e}", path.display()))
        })?;
        Self::open_file(path, settings, true)
    }

    fn open_file(path: PathBuf, settings: QueueSettings, create: bool) -> Result<Self, QueueError> {
        let recovered = Arc::new(AtomicBool::new(false));
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        {
            let recovered = Arc::clone(&recovered);
            builder.set_repair_callback(move |_| recovered.store(true, Ordering::SeqCst));
        }
        let opened = if create {
            builder.create(&path)
        } else {
            builder.open(&path)
        };
        let mut db = opened.map_err(|e| open_error(&path, e))?;
        restrict_to_owner(&path)?;
        if recovered.load(Ordering::SeqCst) {
            // redb has rebuilt what an interrupted commit left; make sure every
            // page still checks out before trusting the runs it holds.
            tracing::warn!(path = %path.display(), "the queue store was not closed cleanly; checking its integrity");
            match db.check_integrity() {
                Ok(true) => tracing::info!(path = %path.display(), "queue store intact"),
                Ok(false) => tracing::warn!(path = %path.display(), "queue store repaired"),
                Err(e) => return Err(open_error(&path, e)),
            }
        }
        let inner = Inner {
            db,
            path,
            settings,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            corrupt: Mutex::new(None),
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
            cancels: tokio::sync::broadcast::channel(256).0,
            commits: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "fault-injection")]
            fail_next_accept: std::sync::atomic::AtomicBool::new(false),
        };
        let state = load_state(&inner)?;
        *inner.state() = state;
        let inner = Arc::new(inner);
        let writer = Arc::new(Writer::start(Arc::clone(&inner))?);
        Ok(Self { inner, writer })
    }

    /// The store file this backend uses.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Test hook: makes the next [`Broker::accept`] fail after the run record is
    /// written and before the task is, as a crash at that point would.
    #[cfg(feature = "fault-injection")]
    pub fn fail_next_accept_between_writes(&self) {
        self.inner
            .fail_next_accept
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Deletes the runs that finished, and the dead letters recorded, more than
    /// the retention ([`QueueSettings::run_retention`]) before `now_ms`: at most
    /// a bounded batch of each per call. Unfinished runs are never deleted.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] or [`QueueError::Corrupt`] when the store
    /// cannot be written.
    pub async fn purge_expired(&self, now_ms: u64) -> Result<Purged, QueueError> {
        let retention =
            u64::try_from(self.inner.settings.run_retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms.saturating_sub(retention);
        self.write(
            move |inner, txn| inner.purge(txn, cutoff, now_ms),
            |inner, purged: &Purged| {
                let mut state = inner.state();
                state.dead_count = state.dead_count.saturating_sub(purged.dead_letters as u64);
            },
        )
        .await
    }

    /// The retention clean-up: every tenth of the retention (between 100 ms and a
    /// minute) deletes what has expired, a bounded number of batches per tick,
    /// until `shutdown` completes.
    pub async fn run_retention_until(&self, shutdown: impl Future<Output = ()>) {
        let every = (self.inner.settings.run_retention / 10)
            .clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(every) => {}
            }
            for _ in 0..PURGE_BATCHES_PER_TICK {
                match self.purge_expired(unix_now_ms()).await {
                    Ok(purged) => {
                        if purged.runs > 0 || purged.dead_letters > 0 {
                            tracing::debug!(
                                runs = purged.runs,
                                dead_letters = purged.dead_letters,
                                "deleted expired runs and dead letters"
                            );
                        }
                        if purged.runs < PURGE_BATCH
                            && purged.dead_letters < PURGE_BATCH
                            && purged.stats < PURGE_BATCH
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot delete expired runs; trying again later");
                        break;
                    }
                }
            }
        }
    }

    /// How many runs, tasks and dead letters are stored right now.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the store cannot be read.
    pub async fn counts(&self) -> Result<StoredCounts, QueueError> {
        self.blocking(|inner| {
            let txn = inner.db.begin_read().map_err(|e| inner.storage_error(e))?;
            let len = |name: TableDefinition<'_, u64, &[u8]>| -> Result<u64, QueueError> {
                txn.open_table(name)
                    .and_then(|t| t.len().map_err(Into::into))
                    .map_err(|e| inner.storage_error(e))
            };
            let runs = txn
                .open_table(RUNS)
                .map_err(|e| inner.storage_error(e))?
                .len()
                .map_err(|e| inner.storage_error(e))?;
            let finished_index = txn
                .open_table(FINISHED)
                .map_err(|e| inner.storage_error(e))?
                .len()
                .map_err(|e| inner.storage_error(e))?;
            Ok(StoredCounts {
                runs,
                tasks: len(TASKS)?,
                dead_letters: len(DEAD)?,
                finished_index,
            })
        })
        .await
    }

    /// [`RunStore::finish_attempt`], also removing the task `ack` in the same transaction.
    async fn end_attempt(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &TaskEnvelope,
        ack: Option<u64>,
    ) -> Result<(), QueueError> {
        let run_id = run_id.to_owned();
        let task = task.clone();
        let at_ms = attempt.finished_at_ms.unwrap_or(attempt.started_at_ms);
        let success = attempt.outcome == crate::timeline::AttemptOutcome::Succeeded;
        self.write(
            move |inner, txn| {
                let changed = inner.finish_attempt_in(txn, &run_id, attempt, outcome, &task)?;
                if let Some(seq) = ack {
                    let mut tasks = txn.open_table(TASKS).map_err(|e| inner.storage_error(e))?;
                    tasks.remove(seq).map_err(|e| inner.storage_error(e))?;
                }
                Ok(changed)
            },
            move |inner, changed| {
                if let Some(seq) = ack {
                    inner.forget(seq);
                }
                if let Some((_, next)) = changed {
                    let kind = if next.status.is_terminal() {
                        RunEventKind::Finished
                    } else {
                        RunEventKind::AttemptFinished
                    };
                    let mut event = RunEvent::of(kind, next, at_ms);
                    event.success = Some(success);
                    inner.emit(event);
                }
            },
        )
        .await
        .map(drop)
    }

    /// Makes `changes` in the writer's next transaction and answers once it is committed;
    /// see [`Writer::write`].
    async fn write<T, C, A>(&self, changes: C, after: A) -> Result<T, QueueError>
    where
        T: Send + 'static,
        C: FnOnce(&Inner, &redb::WriteTransaction) -> Result<T, QueueError> + Send + 'static,
        A: FnOnce(&Inner, &T) + Send + 'static,
    {
        self.writer.write(changes, after).await
    }

    /// Runs `work` on the blocking thread pool with access to the store.
    async fn blocking<T, F>(&self, work: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, QueueError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || work(&inner)).await {
            Ok(result) => result,
            // redb panics on some damaged pages rather than returning an error (an
            // invalid page type on a lookup, for one); our own closures do not panic.
            // Retrying would panic again, so this is corruption, not unavailability.
            Err(e) if e.is_panic() => {
                Err(self.inner.storage_error(redb::Error::Corrupted(format!(
                    "reading the store failed: {}",
                    panic_message(e.into_panic())
                ))))
            }
            Err(e) => Err(self.inner.unavailable(format!("store task stopped: {e}"))),
        }
    }
}

/// Creates the tables if needed and rebuilds the in-memory state from disk.
fn load_state(inner: &Inner) -> Result<State, QueueError> {
    let txn = inner.db.begin_write().map_err(|e| inner.storage_error(e))?;
    let mut state = State::default();
    {
        let tasks = txn.open_table(TASKS).map_err(|e| inner.storage_error(e))?;
        let dead = txn.open_table(DEAD).map_err(|e| inner.storage_error(e))?;
        let runs = txn.open_table(RUNS).map_err(|e| inner.storage_error(e))?;
        let mut finished = txn
            .open_table(FINISHED)
            .map_err(|e| inner.storage_error(e))?;
        let mut meta = txn.open_table(META).map_err(|e| inner.storage_error(e))?;
        let indexed = meta
            .get(FINISHED_INDEXED)
            .map_err(|e| inner.storage_error(e))?
            .is_some();
        if !indexed {
            // A store from before the index: index its finished runs once, so the
            // clean-up can find them.
            for row in runs.iter().map_err(|e| inner.storage_error(e))? {
                let (key, value) = row.map_err(|e| inner.storage_error(e))?;
                let Ok(run) = serde_json::from_slice::<RunRecord>(value.value()) else {
                    continue;
                };
                if run.status.is_terminal() {
                    finished
                        .insert((run.finished_at_ms.unwrap_or(0), key.value()), ())
                        .map_err(|e| inner.storage_error(e))?;
                }
            }
            meta.insert(FINISHED_INDEXED, 1)
                .map_err(|e| inner.storage_error(e))?;
        }
        let counted = meta
            .get(UNFINISHED_COUNTED)
            .map_err(|e| inner.storage_error(e))?
            .is_some();
        if !counted {
            // A store from before the per-user count: count its unfinished runs
            // once, so admission sees them.
            let mut per_user: BTreeMap<String, u64> = BTreeMap::new();
            for row in runs.iter().map_err(|e| inner.storage_error(e))? {
                let (_, value) = row.map_err(|e| inner.storage_error(e))?;
                let Ok(run) = serde_json::from_slice::<RunRecord>(value.value()) else {
                    continue;
                };
                if !run.status.is_terminal() {
                    *per_user.entry(run.user_id).or_default() += 1;
                }
            }
            let mut unfinished = txn
                .open_table(UNFINISHED)
                .map_err(|e| inner.storage_error(e))?;
            for (user_id, count) in &per_user {
                unfinished
                    .insert(user_id.as_str(), *count)
                    .map_err(|e| inner.storage_error(e))?;
            }
            meta.insert(UNFINISHED_COUNTED, 1)
                .map_err(|e| inner.storage_error(e))?;
        }

        let now = Instant::now();
        let mut after_last = 0_u64;
        for item in tasks.iter().map_err(|e| inner.storage_error(e))? {
            let (key, value) = item.map_err(|e| inner.storage_error(e))?;
            let seq = key.value();
            after_last = after_last.max(seq.saturating_add(1));
            // An undecodable row is treated as in flight so the next receive
            // dead-letters it instead of it blocking the queue.
            let attempts = serde_json::from_slice::<StoredAttempts>(value.value())
                .map(|a| a.attempts)
                .unwrap_or(1);
            if attempts == 0 {
                state.fresh.insert(seq);
            } else {
                // Whoever held it is gone with the previous process.
                let lease = Lease {
                    due: now,
                    attempt: attempts,
                    held: false,
                };
                state.leased.insert(seq, lease);
            }
        }
        state.dead_count = dead.len().map_err(|e| inner.storage_error(e))?;
        let stored_next = meta
            .get(NEXT_TASK_SEQ)
            .map_err(|e| inner.storage_error(e))?
            .map(|guard| guard.value())
            .unwrap_or(0);
        meta.insert(NEXT_TASK_SEQ, stored_next.max(after_last))
            .map_err(|e| inner.storage_error(e))?;
    }
    let operator_indexed = txn
        .open_table(META)
        .and_then(|meta| Ok(meta.get(OPERATOR_INDEXED)?.is_some()))
        .map_err(|e| inner.storage_error(e))?;
    if !operator_indexed {
        // A store from before listing and dead letters by task: index it once.
        inner.backfill_indexes(&txn)?;
        let mut meta = txn.open_table(META).map_err(|e| inner.storage_error(e))?;
        meta.insert(OPERATOR_INDEXED, 1)
            .map_err(|e| inner.storage_error(e))?;
    }
    txn.commit().map_err(|e| inner.storage_error(e))?;
    Ok(state)
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn check_settings(settings: &QueueSettings) -> Result<(), QueueError> {
    if settings.visibility_timeout.is_zero() {
        return Err(QueueError::InvalidConfig(
            "visibility_timeout must be greater than zero".to_owned(),
        ));
    }
    Ok(())
}

/// Creates `dir` (and missing parents) readable by its owner only. An existing
/// directory is left as it is: it may be shared with other things.
fn create_private_dir(dir: &Path) -> Result<(), QueueError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| {
        QueueError::Unavailable(format!(
            "cannot create queue directory {}: {e}",
            dir.display()
        ))
    })
}

/// The store file holds resumes: owner read/write only.
fn restrict_to_owner(path: &Path) -> Result<(), QueueError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
            QueueError::Unavailable(format!(
                "cannot restrict queue store {} to its owner: {e}",
                path.display()
            ))
        })?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn open_error(path: &Path, err: DatabaseError) -> QueueError {
    match err {
        DatabaseError::DatabaseAlreadyOpen => QueueError::Locked {
            path: path.to_owned(),
        },
        other => match redb::Error::from(other) {
            redb::Error::Corrupted(reason) => QueueError::Corrupt {
                what: format!("queue store {}", path.display()),
                reason,
            },
            other => QueueError::Unavailable(format!(
                "cannot open queue store {}: {other}",
                path.display()
            )),
        },
    }
}

fn next_dead_key(dead: &redb::Table<'_, u64, &[u8]>) -> Result<u64, redb::StorageError> {
    Ok(dead
        .last()?
        .map(|(key, _)| key.value().saturating_add(1))
        .unwrap_or(0))
}

fn corrupt(seq: u64, err: impl Display) -> QueueError {
    QueueError::Corrupt {
        what: format!("task {seq}"),
        reason: err.to_string(),
    }
}

/// A never-delivered task as stored.
fn encode_task(task: &TaskEnvelope) -> Result<Vec<u8>, QueueError> {
    let stored = StoredTask {
        attempts: 0,
        envelope: task.clone(),
    };
    serde_json::to_vec(&stored).map_err(|e| QueueError::Corrupt {
        what: format!("task {}", task.task_id),
        reason: e.to_string(),
    })
}

fn decode_run(run_id: &str, raw: &[u8]) -> Result<RunRecord, QueueError> {
    serde_json::from_slice(raw).map_err(|e| QueueError::Corrupt {
        what: format!("run {run_id}"),
        reason: e.to_string(),
    })
}

fn encode_run(run: &RunRecord) -> Result<Vec<u8>, QueueError> {
    serde_json::to_vec(run).map_err(|e| QueueError::Corrupt {
        what: format!("run {}", run.run_id),
        reason: e.to_string(),
    })
}

/// Parses a delivery id issued by this backend (the task's sequence number).
fn delivery_seq(delivery: &Delivery) -> Result<u64, QueueError> {
    delivery
        .delivery_id
        .parse()
        .map_err(|_| QueueError::NotFound {
            kind: "delivery",
            id: delivery.delivery_id.clone(),
        })
}

#[async_trait]
impl Broker for EmbeddedBackend {
    fn queue_name(&self) -> &str {
        &self.inner.settings.queue_name
    }

    fn system(&self) -> &'static str {
        "jobpilot.embedded"
    }

    fn visibility_timeout(&self) -> Duration {
        self.inner.settings.visibility_timeout
    }

    async fn accept(&self, run: &RunRecord, task: &TaskEnvelope) -> Result<(), QueueError> {
        let run_bytes = encode_run(run)?;
        let task_bytes = encode_task(task)?;
        let record = run.clone();
        let queued = RunEvent::of(RunEventKind::Queued, run, run.created_at_ms);
        self.write(
            move |inner, txn| inner.accept(txn, &record, &run_bytes, &task_bytes),
            move |inner, seq| {
                inner.publish(*seq);
                inner.emit(queued);
            },
        )
        .await
        .map(drop)
    }

    async fn enqueue(&self, task: &TaskEnvelope) -> Result<(), QueueError> {
        let bytes = encode_task(task)?;
        self.write(
            move |inner, txn| inner.write_task(txn, &bytes),
            // Only now, with the task committed, may a receiver see it.
            |inner, seq| inner.publish(*seq),
        )
        .await
        .map(drop)
    }

    async fn receive(
        &self,
        _consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        loop {
            // Register for wake-ups before looking at the state, so an enqueue
            // that lands between the look and the wait is not missed.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let now = Instant::now();
            let (picked, next_due) = self.inner.pick(max, now);
            if !picked.is_empty() {
                let for_claim = picked.clone();
                let claimed = match self
                    .write(move |inner, txn| inner.claim(txn, &for_claim), |_, _| {})
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(err) => {
                        self.inner.unpick(&picked);
                        self.inner.notify.notify_waiters();
                        return Err(err);
                    }
                };
                {
                    let mut state = self.inner.state();
                    for seq in &claimed.gone {
                        state.leased.remove(seq);
                    }
                    for delivery in &claimed.deliveries {
                        // The attempt is on disk: from now on this delivery is
                        // the one that may extend, retry or acknowledge.
                        if let Some(lease) = delivery_seq(delivery)
                            .ok()
                            .and_then(|seq| state.leased.get_mut(&seq))
                        {
                            lease.attempt = delivery.attempt;
                            lease.held = true;
                        }
                    }
                    state.dead_count += claimed.dead_added;
                }
                if !claimed.deliveries.is_empty() {
                    return Ok(claimed.deliveries);
                }
                // Everything picked had vanished or was poison; look again.
                continue;
            }
            if now >= deadline {
                return Ok(Vec::new());
            }
            // Sleep until the wait ends or the next lease expires, whichever is
            // first; new tasks interrupt the sleep through `notified`.
            let wake_at = next_due.map_or(deadline, |due| due.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let seq = delivery_seq(delivery)?;
        self.write(
            move |inner, txn| {
                let mut tasks = txn.open_table(TASKS).map_err(|e| inner.storage_error(e))?;
                tasks.remove(seq).map_err(|e| inner.storage_error(e))?;
                Ok(())
            },
            move |inner, ()| inner.forget(seq),
        )
        .await
    }

    async fn extend(&self, delivery: &Delivery, _consumer: &str) -> Result<(), QueueError> {
        let seq = delivery_seq(delivery)?;
        let mut state = self.inner.state();
        // The attempt identifies the holder: one process owns the store, so the
        // consumer name adds nothing.
        match state.leased.get_mut(&seq) {
            Some(lease) if lease.held && lease.is_current(delivery) => {
                // Later than before, never earlier: no waiting receiver needs waking.
                lease.due = Instant::now() + self.inner.settings.visibility_timeout;
                Ok(())
            }
            _ => Err(QueueError::NotFound {
                kind: "delivery",
                id: delivery.delivery_id.clone(),
            }),
        }
    }

    async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError> {
        let seq = delivery_seq(delivery)?;
        {
            let mut state = self.inner.state();
            if let Some(lease) = state
                .leased
                .get_mut(&seq)
                .filter(|lease| lease.is_current(delivery))
            {
                lease.due = Instant::now() + delay;
                lease.held = false;
            }
        }
        // A receiver may be sleeping until a later deadline; let it recompute.
        self.inner.notify.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError> {
        let seq = delivery_seq(delivery)?;
        let record = DeadLetter {
            task_id: delivery.envelope.task_id.clone(),
            run_id: delivery.envelope.run_id.clone(),
            agent_type: delivery.envelope.agent_type.clone(),
            attempts: delivery.attempt,
            reason: reason.to_owned(),
            at_ms: unix_now_ms(),
        };
        self.write(
            move |inner, txn| {
                let mut tasks = txn.open_table(TASKS).map_err(|e| inner.storage_error(e))?;
                let existed = tasks
                    .remove(seq)
                    .map_err(|e| inner.storage_error(e))?
                    .is_some();
                drop(tasks);
                // A task already acknowledged or dead-lettered by another
                // holder must not be listed twice.
                if !existed {
                    return Ok(0);
                }
                let added = inner.insert_dead(txn, &record)?;
                inner.finish_dead_lettered(txn, &record.run_id, &record.reason)?;
                Ok(added)
            },
            move |inner, added| {
                inner.forget(seq);
                inner.state().dead_count += added;
            },
        )
        .await
        .map(drop)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let state = self.inner.state();
        Ok(QueueStats {
            depth: state.fresh.len() as u64,
            in_flight: state.leased.len() as u64,
            dead_lettered: state.dead_count,
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(|e| inner.storage_error(e))?;
            let dead = txn.open_table(DEAD).map_err(|e| inner.storage_error(e))?;
            let mut out = Vec::new();
            for item in dead
                .iter()
                .map_err(|e| inner.storage_error(e))?
                .rev()
                .take(limit)
            {
                let (key, value) = item.map_err(|e| inner.storage_error(e))?;
                let record =
                    serde_json::from_slice(value.value()).map_err(|e| QueueError::Corrupt {
                        what: format!("dead letter {}", key.value()),
                        reason: e.to_string(),
                    })?;
                out.push(record);
            }
            Ok(out)
        })
        .await
    }

    async fn dead_letter_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, QueueError> {
        // `{key}`, optionally followed by `.` and more (the form of Redis cursors).
        let before = match cursor {
            None => None,
            Some(c) => Some(
                c.split('.')
                    .next()
                    .and_then(|key| key.parse::<u64>().ok())
                    .ok_or_else(|| {
                        QueueError::Conflict(
                            "the cursor is not one returned by this API".to_owned(),
                        )
                    })?,
            ),
        };
        self.blocking(move |inner| inner.dead_page(before, limit))
            .await
    }

    async fn delete_dead_letter(&self, task_id: &str) -> Result<(), QueueError> {
        let task_id = task_id.to_owned();
        self.write(
            move |inner, txn| {
                if inner.remove_dead(txn, &task_id)? {
                    Ok(())
                } else {
                    Err(QueueError::NotFound {
                        kind: "dead letter",
                        id: task_id,
                    })
                }
            },
            |inner, ()| {
                let mut state = inner.state();
                state.dead_count = state.dead_count.saturating_sub(1);
            },
        )
        .await
    }

    async fn retry_run(&self, run_id: &str, at_ms: u64) -> Result<RunRecord, QueueError> {
        let run_id = run_id.to_owned();
        self.write(
            move |inner, txn| inner.retry(txn, &run_id, at_ms),
            move |inner, (run, seq, removed)| {
                inner.publish(*seq);
                if *removed {
                    let mut state = inner.state();
                    state.dead_count = state.dead_count.saturating_sub(1);
                }
                inner.emit(RunEvent::of(RunEventKind::Queued, run, at_ms));
            },
        )
        .await
        .map(|(run, _, _)| run)
    }

    async fn cancel_run(&self, run_id: &str, at_ms: u64) -> Result<RunRecord, QueueError> {
        let run_id = run_id.to_owned();
        self.write(
            move |inner, txn| inner.cancel(txn, &run_id, at_ms),
            move |inner, (run, changed)| {
                if *changed {
                    inner.emit(RunEvent::of(RunEventKind::CancelRequested, run, at_ms));
                    if run.status == RunStatus::Running {
                        let _ = inner.cancels.send(run.run_id.clone());
                    } else {
                        inner.emit(RunEvent::of(RunEventKind::Finished, run, at_ms));
                    }
                }
            },
        )
        .await
        .map(|(run, _)| run)
    }

    async fn subscribe_events(&self) -> Result<EventReceiver, QueueError> {
        Ok(self.inner.events.subscribe())
    }

    async fn publish_event(&self, event: &RunEvent) {
        self.inner.emit(event.clone());
    }

    async fn wants_events(&self) -> bool {
        self.inner.events.receiver_count() > 0
    }

    async fn subscribe_cancellations(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<String>, QueueError> {
        Ok(self.inner.cancels.subscribe())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        if let Some(corrupt) = self.inner.known_corruption() {
            return Err(corrupt);
        }
        self.blocking(|inner| {
            let txn = inner.db.begin_read().map_err(|e| inner.storage_error(e))?;
            txn.open_table(TASKS).map_err(|e| inner.storage_error(e))?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl RunStore for EmbeddedBackend {
    async fn insert(&self, run: &RunRecord) -> Result<(), QueueError> {
        let bytes = encode_run(run)?;
        let record = run.clone();
        self.write(
            move |inner, txn| {
                let run_id = record.run_id.as_str();
                let mut runs = txn.open_table(RUNS).map_err(|e| inner.storage_error(e))?;
                let exists = runs
                    .get(run_id)
                    .map_err(|e| inner.storage_error(e))?
                    .is_some();
                if exists {
                    return Err(QueueError::AlreadyExists(run_id.to_owned()));
                }
                runs.insert(run_id, bytes.as_slice())
                    .map_err(|e| inner.storage_error(e))?;
                drop(runs);
                if !record.status.is_terminal() {
                    inner.count_unfinished(txn, &record.user_id, 1)?;
                }
                inner.index_run(txn, &record)
            },
            |_, ()| {},
        )
        .await
    }

    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, QueueError> {
        let run_id = run_id.to_owned();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(|e| inner.storage_error(e))?;
            let runs = txn.open_table(RUNS).map_err(|e| inner.storage_error(e))?;
            let raw = runs
                .get(run_id.as_str())
                .map_err(|e| inner.storage_error(e))?
                .map(|guard| guard.value().to_vec());
            raw.map(|raw| decode_run(&run_id, &raw)).transpose()
        })
        .await
    }

    async fn mark_running(&self, run_id: &str, attempt: u32, at_ms: u64) -> Result<(), QueueError> {
        let run_id = run_id.to_owned();
        self.write(
            move |inner, txn| {
                inner.update_run(txn, &run_id, |run| run.with_running(attempt, at_ms))
            },
            |_, ()| {},
        )
        .await
    }

    async fn finish(
        &self,
        run_id: &str,
        outcome: RunOutcome,
        at_ms: u64,
    ) -> Result<(), QueueError> {
        let run_id = run_id.to_owned();
        self.write(
            move |inner, txn| {
                inner.update_run(txn, &run_id, |run| run.with_outcome(outcome, at_ms))
            },
            |_, ()| {},
        )
        .await
    }

    async fn start_attempt(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
    ) -> Result<RunRecord, QueueError> {
        let run_id = run_id.to_owned();
        let at_ms = attempt.started_at_ms;
        self.write(
            move |inner, txn| {
                let mut runs = txn.open_table(RUNS).map_err(|e| inner.storage_error(e))?;
                let current = inner.read_run(&runs, &run_id)?;
                Ok(match current.with_attempt_started(attempt) {
                    Some(next) => {
                        runs.insert(run_id.as_str(), encode_run(&next)?.as_slice())
                            .map_err(|e| inner.storage_error(e))?;
                        (next, true)
                    }
                    None => (current, false),
                })
            },
            move |inner, (run, changed)| {
                if *changed {
                    inner.emit(RunEvent::of(RunEventKind::Started, run, at_ms));
                }
            },
        )
        .await
        .map(|(run, _)| run)
    }

    async fn finish_attempt(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &TaskEnvelope,
    ) -> Result<(), QueueError> {
        self.end_attempt(run_id, attempt, outcome, task, None).await
    }

    async fn finish_attempt_and_ack(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &TaskEnvelope,
        delivery: &Delivery,
    ) -> Result<(), QueueError> {
        let seq = delivery_seq(delivery)?;
        self.end_attempt(run_id, attempt, outcome, task, Some(seq))
            .await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, QueueError> {
        let query = query.clone();
        self.blocking(move |inner| inner.list(&query)).await
    }

    async fn run_stats(&self, window: StatsWindow, now_ms: u64) -> Result<Stats, QueueError> {
        self.blocking(move |inner| inner.read_stats(window, now_ms))
            .await
    }

    async fn unfinished_runs_of(&self, user_id: &str) -> Result<u64, QueueError> {
        let user_id = user_id.to_owned();
        self.blocking(move |inner| {
            let txn = inner.db.begin_read().map_err(|e| inner.storage_error(e))?;
            let table = match txn.open_table(UNFINISHED) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
                Err(e) => return Err(inner.storage_error(e)),
            };
            Ok(table
                .get(user_id.as_str())
                .map_err(|e| inner.storage_error(e))?
                .map_or(0, |v| v.value()))
        })
        .await
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Broker::ping(self).await
    }
}
