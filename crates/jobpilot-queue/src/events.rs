//! Run events: what happened to a run a moment ago (queued, started, a step finished,
//! finished, cancellation asked for), for the live views of operators.
//!
//! Events are a notification, not a record: a subscriber that falls behind loses the oldest
//! ones (and is told how many), and nothing is stored. The record of a run is its
//! [`crate::RunRecord`]. In Redis they travel over pub/sub, so a subscriber in any process
//! sees the events of every API and worker; the embedded backend uses an in-process channel.

use serde::{Deserialize, Serialize};

use crate::run::RunStatus;

/// Events a subscriber may fall behind by before it loses some.
pub const EVENT_BUFFER: usize = 4_096;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunEventKind {
    /// The run was accepted, or queued again by a retry.
    Queued,
    /// A worker started an attempt.
    Started,
    /// A step of an attempt finished.
    StepFinished,
    /// An attempt ended without finishing the run: it will be retried.
    AttemptFinished,
    /// The run reached a terminal status.
    Finished,
    /// Someone asked for the run to be cancelled.
    CancelRequested,
}

impl RunEventKind {
    /// The snake_case name, also the SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunEventKind::Queued => "queued",
            RunEventKind::Started => "started",
            RunEventKind::StepFinished => "step_finished",
            RunEventKind::AttemptFinished => "attempt_finished",
            RunEventKind::Finished => "finished",
            RunEventKind::CancelRequested => "cancel_requested",
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunEvent {
    /// What happened.
    pub kind: RunEventKind,
    /// The run.
    pub run_id: String,
    /// Its agent type.
    pub agent_type: String,
    /// Its owner.
    pub user_id: String,
    /// Its status after the event.
    pub status: RunStatus,
    /// The attempt concerned (0 before the first).
    pub attempt: u32,
    /// The step, for `step_finished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Whether the step or the attempt succeeded, when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// When, unix ms.
    pub at_ms: u64,
}

impl RunEvent {
    /// The event `kind` of `run` at `at_ms`.
    pub fn of(kind: RunEventKind, run: &crate::RunRecord, at_ms: u64) -> Self {
        RunEvent {
            kind,
            run_id: run.run_id.clone(),
            agent_type: run.agent_type.clone(),
            user_id: run.user_id.clone(),
            status: run.status,
            attempt: run.attempts,
            step: None,
            success: None,
            at_ms,
        }
    }

    /// As JSON, as published.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A subscription to run events; see [`crate::Broker::subscribe_events`].
pub type EventReceiver = tokio::sync::broadcast::Receiver<RunEvent>;
