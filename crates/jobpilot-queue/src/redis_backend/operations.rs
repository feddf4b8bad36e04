//! The operator's side of the Redis backend: attempts recorded with their statistics in
//! the script that changes the run, listing from the time-ordered indexes, retry and
//! cancel, dead letters by task, and run events over pub/sub.
//!
//! Pub/sub is read by one background task per channel and process, started on the first
//! subscription and ended when the backend is dropped; it reconnects after a Redis
//! restart. Events lost while it was disconnected are not replayed: they are a live view,
//! and the run records stay the truth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Cmd;
use tokio::sync::broadcast;

use super::{
    RedisBackend, TASK_FIELD, concat, decode_run, encode_run, encode_task, evalsha,
    evalsha_with_room, millis,
    scripts::{DELETE_DEAD, RETRY, RUN_CAS, SWEEP},
    stored_revision,
};
use crate::broker::{DeadLetter, DeadLetterPage, MAX_DEAD_LETTER_PAGE};
use crate::envelope::{Delivery, TaskEnvelope, unix_now_ms};
use crate::error::QueueError;
use crate::events::{EVENT_BUFFER, EventReceiver, RunEvent, RunEventKind};
use crate::listing::{PageBuilder, RunPage, RunQuery};
use crate::run::{RunOutcome, RunRecord, RunStatus};
use crate::stats::{SlowRun, Stats, StatsWindow, WindowCounters};
use crate::timeline::{AttemptOutcome, AttemptRecord};

/// Index entries read per round trip while listing.
const LIST_BATCH: usize = 200;
/// How long the answer to "does anyone listen to events?" is trusted.
const LISTENERS_TTL_MS: u64 = 1_000;
/// How long a first subscription may take before it counts as unavailable.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause before a lost pub/sub connection is opened again.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// What goes with a run change in its script, besides the record itself.
#[derive(Default)]
pub(super) struct Extras<'a> {
    /// The attempt recorded: its steps and LLM calls are counted in the statistics.
    pub attempt: Option<&'a AttemptRecord>,
    /// The task to keep if the run ends failed or cancelled.
    pub task: Option<&'a TaskEnvelope>,
    /// The event to publish, built from the record after the change.
    pub event: Option<fn(&RunRecord) -> RunEvent>,
    /// Publish the run id on the cancellations channel when it is still running.
    pub tell_worker: bool,
    /// The stream entry to acknowledge in the same step.
    pub ack: Option<&'a str>,
    /// The record as it is believed to be stored: tried first, without a read.
    pub known: Option<Known>,
}

/// A run record with the exact JSON it is stored as.
pub(super) struct Known {
    pub raw: String,
    pub record: RunRecord,
}

/// Records by run id that this process expects to find stored: as accepted, from a first
/// delivery's stream entry, for the attempt's start; as it wrote them when starting an
/// attempt, for its end. Each swaps against it without reading the record first (and reads
/// when the swap finds the record changed). Bounded: when full it is emptied (runs then just
/// take the read).
#[derive(Default)]
pub(super) struct Remembered(Mutex<HashMap<String, Known>>);

/// Records [`Remembered`] holds at most: far more than one worker runs and has received at
/// once.
const MAX_REMEMBERED: usize = 4096;

impl Remembered {
    pub(super) fn keep(&self, run_id: &str, known: Known) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_REMEMBERED {
            map.clear();
        }
        map.insert(run_id.to_owned(), known);
    }

    fn take(&self, run_id: &str) -> Option<Known> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(run_id)
    }
}

/// The broadcast side of the pub/sub channels.
pub(super) struct Channels {
    events: broadcast::Sender<RunEvent>,
    events_listening: AtomicBool,
    cancels: broadcast::Sender<String>,
    cancels_listening: AtomicBool,
    /// Whether any process subscribes to events, and when that was last asked.
    anyone_listens: AtomicBool,
    asked_at_ms: AtomicU64,
    /// Serialises the start of the listening tasks.
    starting: Mutex<()>,
}

impl Default for Channels {
    fn default() -> Self {
        Channels {
            events: broadcast::channel(EVENT_BUFFER).0,
            events_listening: AtomicBool::new(false),
            cancels: broadcast::channel(256).0,
            cancels_listening: AtomicBool::new(false),
            anyone_listens: AtomicBool::new(false),
            asked_at_ms: AtomicU64::new(0),
            starting: Mutex::new(()),
        }
    }
}

impl RedisBackend {
    pub(super) fn all_runs_key(&self) -> &str {
        &self.all_runs_key
    }

    pub(super) fn user_runs_key(&self, user_id: &str) -> String {
        concat(&[&self.user_runs_prefix, user_id])
    }

    fn retry_key(&self, run_id: &str) -> String {
        concat(&[&self.retry_prefix, run_id])
    }

    fn stats_key(&self, minute: u64) -> String {
        super::stats_buffer::stats_key(&self.prefix, minute)
    }

    fn slow_key(&self, minute: u64) -> String {
        super::stats_buffer::slow_key(&self.prefix, minute)
    }

    fn failure_key(&self, group: &str) -> String {
        super::stats_buffer::failure_key(&self.prefix, group)
    }

    pub(super) fn events_channel(&self) -> &str {
        &self.events_channel
    }

    fn expiry_key(&self) -> &str {
        &self.expiry_key
    }

    /// The member of the expiry schedule for `run`: its id and its user's index.
    fn expiry_member(&self, run: &RunRecord) -> String {
        concat(&[&run.run_id, "\n", &self.user_runs_prefix, &run.user_id])
    }

    fn cancels_channel(&self) -> &str {
        &self.cancels_channel
    }

    /// The script call that swaps the stored record, `current`, whose revision prefix is
    /// `expected` (see `stored_revision`), for `next` (encoded: `next_raw`) with `extras`.
    /// (The statistics of the change are counted by the caller once the swap succeeded.)
    pub(super) fn cas_command(
        &self,
        key: &str,
        expected: &str,
        current: &RunRecord,
        next: &RunRecord,
        next_raw: &str,
        extras: &Extras<'_>,
    ) -> Result<Cmd, QueueError> {
        let retention = millis(self.settings.run_retention).max(1);
        // A finished run expires one retention period after it finished.
        let expire_ms = if next.status.is_terminal() {
            retention
        } else {
            0
        };
        // The run leaves its user's unfinished count when it first finishes.
        let delta = if !current.status.is_terminal() && next.status.is_terminal() {
            "-1"
        } else {
            "0"
        };
        let keep_task = extras
            .task
            .filter(|_| {
                !current.status.is_terminal()
                    && matches!(next.status, RunStatus::Failed | RunStatus::Cancelled)
            })
            .map(encode_task)
            .transpose()?;
        let event = extras.event.map(|build| build(next).to_json());
        let cancel =
            (extras.tell_worker && next.status == RunStatus::Running).then(|| next.run_id.clone());
        let room = expected.len()
            + next_raw.len()
            + keep_task.as_ref().map_or(0, String::len)
            + event.as_ref().map_or(0, String::len)
            + super::KEYS_ROOM;
        let mut cmd = evalsha_with_room(&RUN_CAS, 22, room);
        cmd.arg(8)
            .arg(key)
            .arg(&self.unfinished_key)
            .arg(self.retry_key(&next.run_id))
            .arg(self.events_channel())
            .arg(self.cancels_channel())
            .arg(self.all_runs_key())
            .arg(self.expiry_key())
            .arg(&self.stream_key)
            .arg(expected)
            .arg(next_raw)
            .arg(expire_ms)
            .arg(&current.user_id)
            .arg(delta)
            .arg(keep_task.unwrap_or_default())
            .arg(retention)
            .arg(event.unwrap_or_default())
            .arg(cancel.unwrap_or_default())
            .arg(unix_now_ms())
            .arg(self.expiry_member(next))
            .arg(super::GROUP)
            .arg(extras.ack.unwrap_or_default());
        Ok(cmd)
    }

    /// See [`crate::RunStore::start_attempt`].
    pub(super) async fn start(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
    ) -> Result<RunRecord, QueueError> {
        let extras = Extras {
            event: Some(|run| RunEvent::of(RunEventKind::Started, run, unix_now_ms())),
            // The record as accepted, from the delivery's stream entry (see `decode`).
            known: self.remembered.take(run_id),
            ..Extras::default()
        };
        let changed = self
            .change_run(
                run_id,
                |run| run.with_attempt_started(attempt.clone()),
                extras,
            )
            .await?;
        match changed {
            Some(after) => {
                let record = after.record.clone();
                self.remembered.keep(run_id, after);
                Ok(record)
            }
            // Nothing to change: the record as it is tells the worker what to do.
            None => crate::RunStore::get(self, run_id)
                .await?
                .ok_or_else(|| QueueError::NotFound {
                    kind: "run",
                    id: run_id.to_owned(),
                }),
        }
    }

    /// See [`crate::RunStore::finish_attempt`] and, with `ack`,
    /// [`crate::RunStore::finish_attempt_and_ack`].
    pub(super) async fn end_attempt(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &TaskEnvelope,
        ack: Option<&Delivery>,
    ) -> Result<(), QueueError> {
        let at_ms = attempt.finished_at_ms.unwrap_or(attempt.started_at_ms);
        let ended = attempt.clone();
        let extras = Extras {
            attempt: Some(&ended),
            task: Some(task),
            event: Some(if attempt.outcome == AttemptOutcome::Succeeded {
                |run| succeeded(RunEvent::of(kind_after(run), run, unix_now_ms()), true)
            } else {
                |run| succeeded(RunEvent::of(kind_after(run), run, unix_now_ms()), false)
            }),
            tell_worker: false,
            ack: ack.map(|d| d.delivery_id.as_str()),
            known: self.remembered.take(run_id),
        };
        let changed = self
            .change_run(
                run_id,
                |run| run.with_attempt(Some(attempt.clone()), outcome.clone(), at_ms),
                extras,
            )
            .await?;
        if changed.is_none() {
            // Already finished: a run cancelled while it waited keeps the task its worker
            // has just acknowledged unrun, for a retry.
            if let Some(run) = crate::RunStore::get(self, run_id).await?
                && matches!(run.status, RunStatus::Cancelled | RunStatus::Failed)
            {
                let retention = millis(self.settings.run_retention).max(1);
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.retry_key(run_id))
                    .arg(encode_task(task)?)
                    .arg("NX")
                    .arg("PX")
                    .arg(retention);
                let _: Option<String> = self.query("keep task", &cmd).await?;
            }
            if let Some(delivery) = ack {
                crate::Broker::ack(self, delivery).await?;
            }
        }
        Ok(())
    }

    /// See [`crate::RunStore::list_runs`].
    pub(super) async fn list(&self, query: &RunQuery) -> Result<RunPage, QueueError> {
        let key = match &query.user_id {
            Some(user) => self.user_runs_key(user),
            None => self.all_runs_key().to_owned(),
        };
        let mut sweep = evalsha(&SWEEP);
        sweep
            .arg(2)
            .arg(self.all_runs_key())
            .arg(self.expiry_key())
            .arg(unix_now_ms());
        let _: i64 = self
            .query("drop expired runs from the indexes", &sweep)
            .await?;
        let (low, high) = query.time_range();
        let mut page = PageBuilder::new(query);
        // The top of the next read: scores at most `top`, and, at exactly `top`, members
        // below `below` (the cursor's run, or the last entry read).
        let (mut top, mut below) = match &query.cursor {
            Some(c) if c.created_at_ms < high => (c.created_at_ms, Some(c.run_id.clone())),
            _ => (high.saturating_sub(1), None),
        };
        loop {
            if top < low {
                return Ok(page.finish(true));
            }
            // Entries at the top score that were already passed are skipped, so ask for
            // enough of them.
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(&key)
                .arg(top)
                .arg(low)
                .arg("BYSCORE")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(LIST_BATCH)
                .arg("WITHSCORES");
            let entries: Vec<(String, u64)> = self.query("list runs", &cmd).await?;
            let fresh: Vec<(String, u64)> = entries
                .iter()
                .filter(|(id, score)| {
                    *score < top || below.as_ref().is_none_or(|b| id.as_str() < b.as_str())
                })
                .cloned()
                .collect();
            if fresh.is_empty() {
                if entries.len() < LIST_BATCH {
                    return Ok(page.finish(true));
                }
                // A full batch of already-passed entries at one score: step below it.
                top = top.saturating_sub(1);
                below = None;
                continue;
            }
            let mut get = redis::cmd("MGET");
            for (id, _) in &fresh {
                get.arg(self.run_key(id));
            }
            let raws: Vec<Option<String>> = self.query("read runs", &get).await?;
            let mut expired = Vec::new();
            for ((id, score), raw) in fresh.iter().zip(raws) {
                let run = match raw {
                    Some(raw) => Some(decode_run(id, &raw)?),
                    None => {
                        expired.push(id.clone());
                        None
                    }
                };
                top = *score;
                below = Some(id.clone());
                if !page.offer(*score, id, run) {
                    self.forget_expired(&key, &expired).await;
                    return Ok(page.finish(false));
                }
            }
            self.forget_expired(&key, &expired).await;
            if entries.len() < LIST_BATCH {
                return Ok(page.finish(true));
            }
        }
    }

    /// Drops index entries whose run has expired (best effort: the next read skips them
    /// anyway).
    async fn forget_expired(&self, key: &str, run_ids: &[String]) {
        if run_ids.is_empty() {
            return;
        }
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(key);
        for id in run_ids {
            cmd.arg(id);
        }
        if let Err(e) = self.query::<i64>("drop expired index entries", &cmd).await {
            tracing::debug!(error = %e, "cannot drop expired index entries");
        }
    }

    /// See [`crate::RunStore::run_stats`].
    pub(super) async fn read_stats(
        &self,
        window: StatsWindow,
        now_ms: u64,
    ) -> Result<Stats, QueueError> {
        // What this process counted is read back with the rest.
        self.stats.flush().await?;
        let (first, last) = Stats::minutes(window, now_ms);
        let minutes: Vec<u64> = (first..=last).collect();
        let mut read = WindowCounters::default();
        let mut conn = self.manager.clone();
        for chunk in minutes.chunks(120) {
            let mut pipe = redis::pipe();
            for minute in chunk {
                pipe.cmd("HGETALL").arg(self.stats_key(*minute));
                pipe.cmd("ZRANGE")
                    .arg(self.slow_key(*minute))
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES");
            }
            let replies: Vec<redis::Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| super::redis_error("read statistics", e))?;
            for (minute, pair) in chunk.iter().zip(replies.chunks(2)) {
                let counters: Vec<(String, i64)> =
                    redis::from_redis_value(pair[0].clone()).unwrap_or_default();
                read.counters
                    .extend(counters.into_iter().map(|(n, v)| (*minute, n, v)));
                let slow: Vec<(String, f64)> =
                    redis::from_redis_value(pair[1].clone()).unwrap_or_default();
                read.slow
                    .extend(slow.into_iter().map(|(run_id, ms)| SlowRun {
                        run_id,
                        duration_ms: ms as u64,
                    }));
            }
        }
        let groups: std::collections::BTreeSet<String> = read
            .counters
            .iter()
            .filter(|(_, name, _)| name.starts_with("!|"))
            .map(|(_, name, _)| name.clone())
            .collect();
        if !groups.is_empty() {
            let mut pipe = redis::pipe();
            for group in &groups {
                pipe.cmd("LRANGE")
                    .arg(self.failure_key(group))
                    .arg(0)
                    .arg(-1);
            }
            let examples: Vec<Vec<String>> = pipe
                .query_async(&mut conn)
                .await
                .map_err(|e| super::redis_error("read failure examples", e))?;
            read.examples = groups.into_iter().zip(examples).collect();
        }
        Ok(Stats::from_counters(window, now_ms, read))
    }

    /// See [`crate::Broker::retry_run`].
    pub(super) async fn retry(&self, run_id: &str, at_ms: u64) -> Result<RunRecord, QueueError> {
        let key = self.run_key(run_id);
        let retry_key = self.retry_key(run_id);
        for _ in 0..super::MAX_RUN_UPDATE_TRIES {
            let mut get = redis::cmd("MGET");
            get.arg(&key).arg(&retry_key);
            let mut raws: Vec<Option<String>> = self.query("read run to retry", &get).await?;
            let task_raw = raws.pop().flatten();
            let Some(raw) = raws.pop().flatten() else {
                return Err(QueueError::NotFound {
                    kind: "run",
                    id: run_id.to_owned(),
                });
            };
            let current = decode_run(run_id, &raw)?;
            let (revision, expected) = stored_revision(&raw);
            let next = current.with_retry(at_ms)?;
            let task_raw = task_raw.ok_or_else(|| crate::run::missing_task(run_id))?;
            let mut task: TaskEnvelope =
                serde_json::from_str(&task_raw).map_err(|e| QueueError::Corrupt {
                    what: format!("kept task of run {run_id}"),
                    reason: e.to_string(),
                })?;
            task.enqueued_at_ms = at_ms;
            task.prior_attempts = current.attempts;
            let event = RunEvent::of(RunEventKind::Queued, &next, at_ms);
            let mut cmd = evalsha(&RETRY);
            cmd.arg(8)
                .arg(&key)
                .arg(&retry_key)
                .arg(&self.stream_key)
                .arg(&self.unfinished_key)
                .arg(&self.dead_ids_key)
                .arg(&self.dead_data_key)
                .arg(self.events_channel())
                .arg(self.expiry_key())
                .arg(expected)
                .arg(encode_run(&next, revision + 1)?)
                .arg(TASK_FIELD)
                .arg(encode_task(&task)?)
                .arg(&next.user_id)
                .arg(run_id)
                .arg(event.to_json())
                .arg(self.expiry_member(&next));
            match self.query::<i64>("retry script", &cmd).await? {
                1 => return Ok(next),
                -1 => return Err(crate::run::missing_task(run_id)),
                _ => continue,
            }
        }
        Err(QueueError::Unavailable(format!(
            "run {run_id} kept changing while being retried"
        )))
    }

    /// See [`crate::Broker::cancel_run`].
    pub(super) async fn cancel(&self, run_id: &str, at_ms: u64) -> Result<RunRecord, QueueError> {
        // The conflict of a finished run is found while changing it; `change_run` only
        // sees `Option`, so it is carried out through this cell.
        let refused: Mutex<Option<QueueError>> = Mutex::new(None);
        let extras = Extras {
            event: Some(|run| RunEvent::of(RunEventKind::CancelRequested, run, unix_now_ms())),
            tell_worker: true,
            ..Extras::default()
        };
        let changed = self
            .change_run(
                run_id,
                |run| match run.with_cancel(at_ms) {
                    Ok(next) => next,
                    Err(e) => {
                        *refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        None
                    }
                },
                extras,
            )
            .await?;
        if let Some(e) = refused.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        match changed {
            Some(after) => {
                let next = after.record;
                if next.status.is_terminal() {
                    self.publish(&RunEvent::of(RunEventKind::Finished, &next, at_ms))
                        .await;
                }
                Ok(next)
            }
            None => crate::RunStore::get(self, run_id)
                .await?
                .ok_or_else(|| QueueError::NotFound {
                    kind: "run",
                    id: run_id.to_owned(),
                }),
        }
    }

    /// See [`crate::Broker::dead_letter_page`]. The cursor is `{at_ms}.{task_id}` of the
    /// last dead letter of the previous page (`{at_ms}` alone: everything before that time).
    pub(super) async fn dead_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, QueueError> {
        let limit = limit.clamp(1, MAX_DEAD_LETTER_PAGE);
        let bad_cursor =
            || QueueError::Conflict("the cursor is not one returned by this API".to_owned());
        let after: Option<(u64, String)> = match cursor {
            None => None,
            Some(c) => {
                let (ms, id) = c.split_once('.').unwrap_or((c, ""));
                Some((ms.parse().map_err(|_| bad_cursor())?, id.to_owned()))
            }
        };
        let top = after
            .as_ref()
            .map_or("+inf".to_owned(), |(ms, _)| ms.to_string());
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(&self.dead_ids_key)
            .arg(top)
            .arg("-inf")
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit + 1 + MAX_DEAD_LETTER_PAGE)
            .arg("WITHSCORES");
        let ids: Vec<(String, u64)> = self.query("list dead letters", &cmd).await?;
        let ids: Vec<(String, u64)> = ids
            .into_iter()
            .filter(|(id, ms)| {
                after
                    .as_ref()
                    .is_none_or(|(a_ms, a_id)| *ms < *a_ms || id.as_str() < a_id.as_str())
            })
            .take(limit + 1)
            .collect();
        let more = ids.len() > limit;
        let ids = &ids[..ids.len().min(limit)];
        let mut page = DeadLetterPage::default();
        if ids.is_empty() {
            return Ok(page);
        }
        let mut get = redis::cmd("HMGET");
        get.arg(&self.dead_data_key);
        for (id, _) in ids {
            get.arg(id);
        }
        let raws: Vec<Option<String>> = self.query("read dead letters", &get).await?;
        for ((id, _), raw) in ids.iter().zip(raws) {
            let Some(raw) = raw else { continue };
            let record: DeadLetter =
                serde_json::from_str(&raw).map_err(|e| QueueError::Corrupt {
                    what: format!("dead letter of task {id}"),
                    reason: e.to_string(),
                })?;
            page.dead_letters.push(record);
        }
        if more {
            page.next_cursor = ids.last().map(|(id, ms)| format!("{ms}.{id}"));
        }
        Ok(page)
    }

    /// See [`crate::Broker::delete_dead_letter`].
    pub(super) async fn delete_dead(&self, task_id: &str) -> Result<(), QueueError> {
        let mut cmd = evalsha(&DELETE_DEAD);
        cmd.arg(2)
            .arg(&self.dead_ids_key)
            .arg(&self.dead_data_key)
            .arg(task_id);
        let removed: i64 = self.query("delete dead letter", &cmd).await?;
        if removed == 1 {
            Ok(())
        } else {
            Err(QueueError::NotFound {
                kind: "dead letter",
                id: task_id.to_owned(),
            })
        }
    }

    /// See [`crate::Broker::publish_event`]: skipped while no process subscribes (asked
    /// of Redis at most once a second), so a busy deployment nobody watches pays nothing
    /// per step.
    pub(super) async fn publish(&self, event: &RunEvent) {
        if !self.anyone_listens().await {
            return;
        }
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(self.events_channel()).arg(event.to_json());
        if let Err(e) = self.query::<i64>("publish event", &cmd).await {
            tracing::debug!(error = %e, "cannot publish a run event");
        }
    }

    /// Whether any process subscribes to events, asked of Redis at most once a second.
    pub(super) async fn anyone_listens(&self) -> bool {
        let now = unix_now_ms();
        let channels = &self.channels;
        if now.saturating_sub(channels.asked_at_ms.load(Ordering::Relaxed)) > LISTENERS_TTL_MS {
            channels.asked_at_ms.store(now, Ordering::Relaxed);
            let mut cmd = redis::cmd("PUBSUB");
            cmd.arg("NUMSUB").arg(self.events_channel());
            if let Ok((_, n)) = self.query::<(String, u64)>("count listeners", &cmd).await {
                channels.anyone_listens.store(n > 0, Ordering::Relaxed);
            }
        }
        channels.anyone_listens.load(Ordering::Relaxed)
    }

    /// See [`crate::Broker::subscribe_events`].
    pub(super) async fn events_receiver(&self) -> Result<EventReceiver, QueueError> {
        let receiver = self.channels.events.subscribe();
        self.listen(
            &self.channels.events_listening,
            self.events_channel().to_owned(),
            self.channels.events.downgrade(),
            |payload| serde_json::from_str::<RunEvent>(payload).ok(),
        )
        .await?;
        // Publishers that asked a moment ago learn of this subscriber within a second.
        self.channels.asked_at_ms.store(0, Ordering::Relaxed);
        Ok(receiver)
    }

    /// See [`crate::Broker::subscribe_cancellations`].
    pub(super) async fn cancels_receiver(&self) -> Result<broadcast::Receiver<String>, QueueError> {
        let receiver = self.channels.cancels.subscribe();
        self.listen(
            &self.channels.cancels_listening,
            self.cancels_channel().to_owned(),
            self.channels.cancels.downgrade(),
            |payload| Some(payload.to_owned()),
        )
        .await?;
        Ok(receiver)
    }

    /// Starts, once, the task that forwards `channel` to `sender`, and waits until its
    /// first subscription is in place: whatever is published after this returns arrives.
    async fn listen<T: Clone + Send + 'static>(
        &self,
        started: &AtomicBool,
        channel: String,
        sender: broadcast::WeakSender<T>,
        parse: fn(&str) -> Option<T>,
    ) -> Result<(), QueueError> {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        {
            let _guard = self
                .channels
                .starting
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if started.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
        }
        let client = self.client.clone();
        let what = channel.clone();
        let mut ready = Some(ready_tx);
        tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(mut pubsub) => match pubsub.subscribe(&channel).await {
                        Ok(()) => {
                            if let Some(ready) = ready.take() {
                                let _ = ready.send(());
                            }
                            let mut messages = pubsub.on_message();
                            while let Some(message) = messages.next().await {
                                let Some(sender) = sender.upgrade() else {
                                    return;
                                };
                                let payload: String = message.get_payload().unwrap_or_default();
                                if let Some(item) = parse(&payload) {
                                    // No receiver right now is fine: nobody is watching.
                                    let _ = sender.send(item);
                                }
                            }
                        }
                        Err(e) => tracing::warn!(%channel, error = %e, "cannot subscribe"),
                    },
                    Err(e) => tracing::debug!(%channel, error = %e, "pub/sub connection failed"),
                }
                if sender.upgrade().is_none() {
                    return;
                }
                tokio::time::sleep(RESUBSCRIBE_PAUSE).await;
            }
        });
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ready_rx).await {
            Ok(Ok(())) => Ok(()),
            _ => {
                // The task keeps trying; a later call must not wait for it again.
                Err(QueueError::Unavailable(format!(
                    "cannot subscribe to {what} within {} s",
                    SUBSCRIBE_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

/// The kind of event an attempt's end is, from the record after it.
fn kind_after(run: &RunRecord) -> RunEventKind {
    if run.status.is_terminal() {
        RunEventKind::Finished
    } else {
        RunEventKind::AttemptFinished
    }
}

fn succeeded(mut event: RunEvent, success: bool) -> RunEvent {
    event.success = Some(success);
    event
}
