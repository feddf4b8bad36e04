//! The task envelope: the JSON document that travels through the queue for one
//! agent run, and the [`Delivery`] wrapper a backend hands to a worker.
//!
//! This module only defines data. It does not talk to any backend and does not
//! interpret the trace context: the headers are injected and extracted by the
//! caller's telemetry layer.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One queued agent run, exactly as it is stored by a backend.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskEnvelope {
    /// Unique per enqueue. One task per run, so reusing the run id is fine.
    pub task_id: String,
    /// The run this task executes.
    pub run_id: String,
    /// Which agent implementation should execute the run.
    pub agent_type: String,
    /// The user who asked for the run.
    pub user_id: String,
    /// The agent input, opaque to the queue.
    pub input: serde_json::Value,
    /// W3C propagation headers (`traceparent`, `tracestate`, `baggage`) injected
    /// at enqueue time so the worker can continue the trace.
    pub trace_context: BTreeMap<String, String>,
    /// When the task was enqueued, in unix milliseconds.
    pub enqueued_at_ms: u64,
    /// Attempts the run had made before this task was enqueued (non-zero when an operator
    /// queued a finished run again): deliveries are numbered after them, so the run's
    /// attempts keep counting up, while the attempt limit applies to this task's own
    /// deliveries.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prior_attempts: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TaskEnvelope {
    /// Builds the envelope for `run_id`, using the run id as the task id and the
    /// current time as the enqueue time.
    pub fn for_run(
        run_id: impl Into<String>,
        agent_type: impl Into<String>,
        user_id: impl Into<String>,
        input: serde_json::Value,
        trace_context: BTreeMap<String, String>,
    ) -> Self {
        let run_id = run_id.into();
        Self {
            task_id: run_id.clone(),
            run_id,
            agent_type: agent_type.into(),
            user_id: user_id.into(),
            input,
            trace_context,
            enqueued_at_ms: unix_now_ms(),
            prior_attempts: 0,
        }
    }
}

/// One hand-out of a task to a worker.
///
/// The same task can be delivered more than once (at-least-once delivery): after
/// a crash, after the visibility timeout, or after [`crate::Broker::retry_later`].
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// The task being delivered.
    pub envelope: TaskEnvelope,
    /// 1-based attempt number. Redeliveries after a crash or a missed visibility
    /// timeout count as attempts, so a task that keeps killing its worker
    /// eventually runs out of attempts.
    pub attempt: u32,
    /// Backend-specific handle used by `ack`, `retry_later` and `dead_letter`
    /// (a stream entry id for Redis, a sequence number for the embedded store).
    pub delivery_id: String,
}

impl Delivery {
    /// A delivery of `envelope` that the broker counts as its `count`th: the attempt number
    /// continues after the run's [`TaskEnvelope::prior_attempts`].
    pub fn new(envelope: TaskEnvelope, count: u32, delivery_id: String) -> Self {
        Delivery {
            attempt: count.saturating_add(envelope.prior_attempts),
            envelope,
            delivery_id,
        }
    }

    /// How many times the broker has handed out this task (this delivery included): the
    /// attempt number without the run's earlier attempts. The attempt limit applies to it.
    pub fn delivery_count(&self) -> u32 {
        self.attempt.saturating_sub(self.envelope.prior_attempts)
    }
}

/// The current wall-clock time in unix milliseconds.
///
/// A clock set before 1970 yields 0 rather than an error: the value is only used
/// for display and ordering hints, never for correctness.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
