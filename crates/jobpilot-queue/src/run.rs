//! The user-visible record of an agent run and the rules for changing it.
//!
//! Both backends store a [`RunRecord`] as JSON and apply the same transition
//! rules defined here, so "a finished run stays finished" is decided in exactly
//! one place. This module does not store anything itself.

use serde::{Deserialize, Serialize};

/// Where a run is in its life.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Accepted and waiting for a worker.
    Queued,
    /// A worker has started it (possibly not for the first time).
    Running,
    /// Finished with a result. Terminal.
    Succeeded,
    /// Finished with an error. Terminal.
    Failed,
}

impl RunStatus {
    /// Whether no further transition is allowed from this status.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Failed)
    }
}

/// The stored state of one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct RunRecord {
    /// Unique run id.
    pub run_id: String,
    /// Which agent executes the run.
    pub agent_type: String,
    /// Who asked for the run.
    pub user_id: String,
    /// Current status.
    pub status: RunStatus,
    /// The agent output, once succeeded.
    pub result: Option<serde_json::Value>,
    /// The final error message, once failed.
    pub error: Option<String>,
    /// Highest attempt number a worker has started.
    pub attempts: u32,
    /// Trace id of the request that created the run (hex), for linking to traces.
    pub trace_id: String,
    /// Creation time, unix milliseconds.
    pub created_at_ms: u64,
    /// When a worker first started the run, unix milliseconds.
    pub started_at_ms: Option<u64>,
    /// When the run reached a terminal status, unix milliseconds.
    pub finished_at_ms: Option<u64>,
    /// Whether the task was moved to the dead-letter list.
    pub dead_lettered: bool,
}

impl RunRecord {
    /// A freshly accepted run: status `queued`, no attempts yet.
    pub fn queued(
        run_id: impl Into<String>,
        agent_type: impl Into<String>,
        user_id: impl Into<String>,
        trace_id: impl Into<String>,
        created_at_ms: u64,
    ) -> Self {
        Self {
            run_id: run_id.into(),
            agent_type: agent_type.into(),
            user_id: user_id.into(),
            status: RunStatus::Queued,
            result: None,
            error: None,
            attempts: 0,
            trace_id: trace_id.into(),
            created_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            dead_lettered: false,
        }
    }

    /// The record after a worker starts `attempt`, or `None` when nothing must be
    /// written (already terminal, or the same call was applied before).
    ///
    /// The first start time is kept on later attempts so that the run's duration
    /// covers its retries.
    pub(crate) fn with_running(&self, attempt: u32, at_ms: u64) -> Option<RunRecord> {
        if self.status.is_terminal() {
            return None;
        }
        let mut next = self.clone();
        next.status = RunStatus::Running;
        next.attempts = next.attempts.max(attempt);
        next.started_at_ms = next.started_at_ms.or(Some(at_ms));
        (next != *self).then_some(next)
    }

    /// The record after the run finishes with `outcome`, or `None` when it is
    /// already terminal: a duplicate delivery must not overwrite the first result.
    pub(crate) fn with_outcome(&self, outcome: RunOutcome, at_ms: u64) -> Option<RunRecord> {
        if self.status.is_terminal() {
            return None;
        }
        let mut next = self.clone();
        match outcome {
            RunOutcome::Succeeded(result) => {
                next.status = RunStatus::Succeeded;
                next.result = Some(result);
                next.error = None;
                next.dead_lettered = false;
            }
            RunOutcome::Failed {
                error,
                dead_lettered,
            } => {
                next.status = RunStatus::Failed;
                next.result = None;
                next.error = Some(error);
                next.dead_lettered = dead_lettered;
            }
        }
        next.finished_at_ms = Some(at_ms);
        Some(next)
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    /// The agent produced this result.
    Succeeded(serde_json::Value),
    /// The run gave up with this error.
    Failed {
        /// Human-readable final error.
        error: String,
        /// Whether the task was moved to the dead-letter list.
        dead_lettered: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RunRecord {
        RunRecord::queued("r1", "echo", "u1", "abc", 10)
    }

    #[test]
    fn running_twice_changes_nothing_the_second_time() {
        let started = record().with_running(1, 20).unwrap();
        assert_eq!(started.status, RunStatus::Running);
        assert_eq!(started.started_at_ms, Some(20));
        assert!(started.with_running(1, 20).is_none());
    }

    #[test]
    fn later_attempt_keeps_first_start_time() {
        let started = record().with_running(1, 20).unwrap();
        let again = started.with_running(2, 30).unwrap();
        assert_eq!(again.attempts, 2);
        assert_eq!(again.started_at_ms, Some(20));
    }

    #[test]
    fn terminal_run_accepts_no_transition() {
        let done = record()
            .with_outcome(RunOutcome::Succeeded(serde_json::json!(1)), 40)
            .unwrap();
        assert!(done.with_running(2, 50).is_none());
        let failed = RunOutcome::Failed {
            error: "boom".into(),
            dead_lettered: true,
        };
        assert!(done.with_outcome(failed, 60).is_none());
    }

    #[test]
    fn status_serializes_lowercase() {
        let json = serde_json::to_string(&RunStatus::Succeeded).unwrap();
        assert_eq!(json, "\"succeeded\"");
    }
}
