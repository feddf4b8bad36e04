//! The two traits the rest of jobpilot programs against: [`Broker`] moves tasks
//! from the API to workers, [`RunStore`] keeps the user-visible run records.
//!
//! Both are object-safe (`Arc<dyn Broker>`), and both backends implement both.
//! This module defines contracts only; it contains no backend logic and no
//! tracing of its own (span names are built by callers from
//! [`Broker::queue_name`] and [`Broker::system`]).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::envelope::{Delivery, TaskEnvelope};
use crate::error::QueueError;
use crate::events::{EventReceiver, RunEvent};
use crate::listing::{RunPage, RunQuery};
use crate::run::{RunOutcome, RunRecord};
use crate::stats::{Stats, StatsWindow};
use crate::timeline::AttemptRecord;

/// Counts describing a queue at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Tasks waiting for their first delivery.
    pub depth: u64,
    /// Tasks delivered and not yet acknowledged or dead-lettered, including those
    /// waiting out a `retry_later` delay or a crashed worker's visibility timeout.
    pub in_flight: u64,
    /// Tasks on the dead-letter list.
    pub dead_lettered: u64,
}

/// A task that was given up on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The task's id.
    pub task_id: String,
    /// The run the task belonged to (empty when the task could not be decoded).
    pub run_id: String,
    /// The task's agent type (empty when the task could not be decoded).
    pub agent_type: String,
    /// How many deliveries were made before giving up.
    pub attempts: u32,
    /// Why the task was dead-lettered.
    pub reason: String,
    /// When it was dead-lettered, unix milliseconds.
    pub at_ms: u64,
}

/// One page of dead letters, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    /// The dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Pass it as `cursor` for the next page; absent at the end.
    pub next_cursor: Option<String>,
}

/// Dead letters one page holds at most.
pub const MAX_DEAD_LETTER_PAGE: usize = 200;

/// An at-least-once task queue.
///
/// A task is delivered until it is acknowledged or dead-lettered. Every
/// hand-out, including the takeover of a delivery whose worker vanished, counts
/// as one attempt, and the attempt count is recorded before the delivery is
/// returned, so a task that crashes its worker cannot loop forever unnoticed.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The logical queue name, e.g. `agent_runs` (used in span names such as
    /// `send agent_runs`).
    fn queue_name(&self) -> &str;

    /// The `messaging.system` value: `redis` or `jobpilot.embedded`.
    fn system(&self) -> &'static str;

    /// How long a delivery may stay unacknowledged before another receive takes
    /// it over: the value this broker was built with. Workers derive their
    /// heartbeat from it, so it is never configured twice.
    fn visibility_timeout(&self) -> Duration;

    /// Accepts a new run: stores its record and its task in one atomic write, so
    /// that whatever happens to the caller or the process, the run either does not
    /// exist or has a task that will finish it. This is how the API creates runs.
    ///
    /// The broker keeps the run records as well (both backends are also the
    /// [`RunStore`]), which is what lets the two writes be one.
    ///
    /// # Errors
    /// [`QueueError::AlreadyExists`] when a run with this id exists (nothing is
    /// written); [`QueueError::Unavailable`] when the backend cannot be reached or
    /// cannot write (nothing is written, or, if the answer was lost, both were);
    /// [`QueueError::Corrupt`] if the record or the envelope cannot be encoded.
    async fn accept(&self, run: &RunRecord, task: &TaskEnvelope) -> Result<(), QueueError>;

    /// Stores `task` durably; it is safe once this returns `Ok`.
    ///
    /// This writes no run record: a task for a run that is also new must go
    /// through [`Broker::accept`].
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached or cannot
    /// write; [`QueueError::Corrupt`] if the envelope cannot be encoded.
    async fn enqueue(&self, task: &TaskEnvelope) -> Result<(), QueueError>;

    /// Returns up to `max` deliveries for `consumer`.
    ///
    /// First takes over deliveries left unacknowledged for longer than the
    /// visibility timeout (their attempt goes up by one), then waits up to `wait`
    /// for new tasks. Waiting is push-driven: an enqueue wakes a waiting receiver
    /// at once. An empty vector means nothing arrived within `wait`. A backend
    /// may return fewer than `max` even when more are waiting.
    ///
    /// If the returned future is dropped part-way, tasks it had already taken
    /// keep their counted attempt and come back after the visibility timeout.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn receive(
        &self,
        consumer: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Removes the delivered task for good. Acknowledging a task that is already
    /// gone is not an error.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached;
    /// [`QueueError::NotFound`] when `delivery_id` was not issued by this kind of
    /// backend.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;

    /// Says "still working on it": resets the delivery's visibility deadline to
    /// a full visibility timeout from now, without counting an attempt.
    ///
    /// A worker calls this periodically (a heartbeat) while a run takes longer
    /// than the visibility timeout, so the task is not handed to a second worker
    /// while the first is still busy with it. Only the current holder can extend:
    /// a delivery that was acknowledged, dead-lettered, parked by
    /// [`Broker::retry_later`] or taken over by another receive is left as it is.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] when `consumer` no longer holds this delivery
    /// (see above) or `delivery_id` was not issued by this kind of backend; the
    /// caller should stop extending it. [`QueueError::Unavailable`] when the
    /// backend cannot be reached (the next heartbeat may succeed).
    async fn extend(&self, delivery: &Delivery, consumer: &str) -> Result<(), QueueError>;

    /// Gives the task back so it is taken again after `delay`; the next taker
    /// sees `attempt + 1`.
    ///
    /// The Redis backend cannot hold a task back longer than the visibility
    /// timeout, so longer delays are shortened to it. A delivery that is no
    /// longer current (acknowledged, or handed out again since, so its attempt
    /// is stale) is left alone: a late caller must not disturb the new holder.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached;
    /// [`QueueError::NotFound`] for a foreign `delivery_id`.
    async fn retry_later(&self, delivery: &Delivery, delay: Duration) -> Result<(), QueueError>;

    /// Acknowledges the task and records it on the dead-letter list with
    /// `reason`. It is never delivered again. A task that is already gone is not
    /// recorded twice.
    ///
    /// The task's run, unless it already finished, is finished as failed with
    /// `dead_lettered` set and `reason` as its error, so `reason` must be fit for
    /// the run's owner to read. (A task that cannot even be decoded is
    /// dead-lettered by `receive` itself; its run, when its id is readable, gets
    /// [`UNREADABLE_TASK_ERROR`].)
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached;
    /// [`QueueError::NotFound`] for a foreign `delivery_id`.
    async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), QueueError>;

    /// Current depth, in-flight and dead-letter counts.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// The most recent `limit` dead letters, newest first.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached;
    /// [`QueueError::Corrupt`] when a stored record cannot be decoded.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// A page of dead letters, newest first, starting after `cursor` (a `next_cursor` of an
    /// earlier page).
    ///
    /// # Errors
    /// [`QueueError::Conflict`] for a cursor this backend did not issue;
    /// [`QueueError::Unavailable`] and [`QueueError::Corrupt`] as for
    /// [`Broker::dead_letters`].
    async fn dead_letter_page(
        &self,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<DeadLetterPage, QueueError>;

    /// Removes the dead letter of task `task_id` for good (its run stays failed).
    ///
    /// # Errors
    /// [`QueueError::NotFound`] when there is no such dead letter;
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn delete_dead_letter(&self, task_id: &str) -> Result<(), QueueError>;

    /// Queues a failed or cancelled run again as a new attempt, in one atomic step: the
    /// record goes back to `queued` (its timeline kept), its kept task is enqueued with the
    /// trace context it had, so the new attempt continues the run's trace, and its dead
    /// letter, if any, is removed. Returns the record as queued.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] for an unknown run; [`QueueError::Conflict`] for a run that
    /// is queued, running or succeeded, or whose task is no longer kept;
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn retry_run(&self, run_id: &str, at_ms: u64) -> Result<RunRecord, QueueError>;

    /// Cancels a run: a queued run becomes `cancelled` at once and never starts; a running
    /// run is marked, and its worker, told through
    /// [`Broker::subscribe_cancellations`], stops it at its next step boundary. Asking
    /// twice changes nothing. Returns the record after the change.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] for an unknown run; [`QueueError::Conflict`] for a run that
    /// succeeded or failed; [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn cancel_run(&self, run_id: &str, at_ms: u64) -> Result<RunRecord, QueueError>;

    /// Subscribes to the run events of every process sharing this backend.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn subscribe_events(&self) -> Result<EventReceiver, QueueError>;

    /// Publishes `event` to subscribers, best effort: a backend may skip it when nobody
    /// listens, and a failure is only logged.
    async fn publish_event(&self, event: &RunEvent);

    /// Whether any process subscribes to run events (as of the last second or so), so a
    /// publisher with nobody to tell can skip building events.
    async fn wants_events(&self) -> bool;

    /// Subscribes to the ids of runs whose cancellation was asked for, from any process.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn subscribe_cancellations(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<String>, QueueError>;

    /// Checks that the backend answers.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when it does not.
    async fn ping(&self) -> Result<(), QueueError>;
}

/// Storage for [`RunRecord`]s.
///
/// Updates are idempotent and a terminal record is never changed again, because
/// at-least-once delivery means a worker may report the same run twice.
#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Stores a new run record without a task. A run meant to be executed must be
    /// created with [`Broker::accept`] instead, which writes both at once.
    ///
    /// # Errors
    /// [`QueueError::AlreadyExists`] when a run with the same id exists;
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn insert(&self, run: &RunRecord) -> Result<(), QueueError>;

    /// Loads a run, `None` if there is no run with this id.
    ///
    /// # Errors
    /// [`QueueError::Corrupt`] when the stored record cannot be decoded;
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn get(&self, run_id: &str) -> Result<Option<RunRecord>, QueueError>;

    /// Marks the run as running for `attempt` (keeps the highest attempt seen
    /// and the first start time). Does nothing if the run already finished.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] for an unknown run; [`QueueError::Corrupt`] and
    /// [`QueueError::Unavailable`] as for [`RunStore::get`].
    async fn mark_running(&self, run_id: &str, attempt: u32, at_ms: u64) -> Result<(), QueueError>;

    /// Records the final outcome. If the run is already finished this returns
    /// `Ok` and leaves the first outcome in place.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] for an unknown run; [`QueueError::Corrupt`] and
    /// [`QueueError::Unavailable`] as for [`RunStore::get`].
    async fn finish(&self, run_id: &str, outcome: RunOutcome, at_ms: u64)
    -> Result<(), QueueError>;

    /// Starts an attempt: marks the run running and adds `attempt` to its timeline (an
    /// earlier attempt still marked running becomes `lost`), in one write. Returns the
    /// record as it is now, so the caller sees at once a run that already finished (a
    /// duplicate delivery, a cancelled run) or whose cancellation was asked for.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] for an unknown run; [`QueueError::Corrupt`] and
    /// [`QueueError::Unavailable`] as for [`RunStore::get`].
    async fn start_attempt(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
    ) -> Result<RunRecord, QueueError>;

    /// Records how `attempt` ended (its steps and LLM calls included) and, with `outcome`,
    /// finishes the run, in one write that also adds the attempt to the statistics. For a
    /// run that ends failed or cancelled, `task` is kept with it so that
    /// [`Broker::retry_run`] can queue it again. A run that already finished is left as it
    /// is.
    ///
    /// # Errors
    /// [`QueueError::NotFound`] for an unknown run; [`QueueError::Corrupt`] and
    /// [`QueueError::Unavailable`] as for [`RunStore::get`].
    async fn finish_attempt(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &TaskEnvelope,
    ) -> Result<(), QueueError>;

    /// [`RunStore::finish_attempt`] together with [`Broker::ack`] of `delivery`, in the
    /// same atomic write: a worker stores how an attempt ended and lets go of its task in
    /// one round trip. When the run had already finished, the task is acknowledged all the
    /// same.
    ///
    /// # Errors
    /// As [`RunStore::finish_attempt`] (then the task is not acknowledged either), and
    /// [`QueueError::NotFound`] for a `delivery_id` this kind of backend did not issue.
    async fn finish_attempt_and_ack(
        &self,
        run_id: &str,
        attempt: AttemptRecord,
        outcome: Option<RunOutcome>,
        task: &TaskEnvelope,
        delivery: &Delivery,
    ) -> Result<(), QueueError>;

    /// A page of runs, newest first, from the time-ordered index (see [`crate::listing`]).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached;
    /// [`QueueError::Corrupt`] when a stored record cannot be decoded.
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, QueueError>;

    /// The statistics of `window` ending at `now_ms`, across every worker, from the
    /// per-minute counters (see [`crate::stats`]).
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn run_stats(&self, window: StatsWindow, now_ms: u64) -> Result<Stats, QueueError>;

    /// Writes what this store holds back in this process: the Redis backend sums the
    /// statistics of finished attempts and writes them about once a second, and a process
    /// that stops calls this so that none are lost. The embedded store holds nothing back.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn flush(&self) -> Result<(), QueueError> {
        Ok(())
    }

    /// How many runs of `user_id` are not finished (queued or running): a counter kept in
    /// step with the records, in the same atomic write that stores a run
    /// ([`Broker::accept`], [`RunStore::insert`]) and the one that first moves it to a
    /// terminal status (finishing, dead-lettering, an unreadable task). Retention only
    /// deletes finished runs, so it never changes the count.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when the backend cannot be reached.
    async fn unfinished_runs_of(&self, user_id: &str) -> Result<u64, QueueError>;

    /// Checks that the store answers.
    ///
    /// # Errors
    /// [`QueueError::Unavailable`] when it does not.
    async fn ping(&self) -> Result<(), QueueError>;
}

/// The error a run shows when its task could not be decoded and was dead-lettered.
/// The decoding error itself is kept on the dead letter, for operators only.
pub const UNREADABLE_TASK_ERROR: &str =
    "the run's task could not be read, so it was moved to the dead-letter list";

/// The outcome the dead-letter path records on the task's run: failed,
/// dead-lettered, with `error` as its public reason.
pub(crate) fn dead_lettered_outcome(error: &str) -> RunOutcome {
    RunOutcome::Failed {
        error: error.to_owned(),
        dead_lettered: true,
    }
}

/// Builds the dead-letter record for a task that could not be decoded, taking
/// whatever identifying fields are still readable from the raw JSON.
pub(crate) fn undecodable_dead_letter(
    task_id: &str,
    raw: &str,
    attempts: u32,
    reason: String,
    at_ms: u64,
) -> DeadLetter {
    let parsed: Option<serde_json::Value> = serde_json::from_str(raw).ok();
    // Poison data may still carry a readable run id even when the whole
    // envelope does not decode; keep it so the run can be found.
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name).or_else(|| v.get("envelope")?.get(name)))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    DeadLetter {
        task_id: task_id.to_owned(),
        run_id: field("run_id"),
        agent_type: field("agent_type"),
        attempts,
        reason,
        at_ms,
    }
}
