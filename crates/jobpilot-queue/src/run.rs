//! The user-visible record of an agent run and the rules for changing it.
//!
//! Both backends store a [`RunRecord`] as JSON and apply the same transition
//! rules defined here, so "a finished run stays finished" is decided in exactly
//! one place. This module does not store anything itself.

use serde::{Deserialize, Serialize};

use crate::error::QueueError;
use crate::timeline::{AttemptOutcome, AttemptRecord, Timeline};

/// The error of a retry whose run has no kept task.
pub(crate) fn missing_task(run_id: &str) -> QueueError {
    QueueError::Conflict(format!(
        "the task of run {run_id} is no longer kept (it could not be read, or it expired), so the run cannot be queued again"
    ))
}

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
    /// Cancelled before it finished. Terminal.
    Cancelled,
}

impl RunStatus {
    /// Whether no further transition is allowed from this status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }

    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for RunStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| "must be one of queued, running, succeeded, failed, cancelled".to_owned())
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
    /// Everything that happened to the run: acceptance, attempts, steps, LLM calls.
    #[serde(default)]
    pub timeline: Timeline,
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
            timeline: Timeline::accepted(created_at_ms),
        }
    }

    /// Acceptance → end, milliseconds, once finished.
    pub fn duration_ms(&self) -> Option<u64> {
        self.finished_at_ms
            .map(|end| end.saturating_sub(self.created_at_ms))
    }

    /// The record after a worker starts `attempt` (recorded in the timeline), or `None` when
    /// nothing must be written (already terminal, or the same call was applied before).
    pub(crate) fn with_attempt_started(&self, attempt: AttemptRecord) -> Option<RunRecord> {
        let mut next = self.with_running(attempt.attempt, attempt.started_at_ms)?;
        next.timeline.merge(attempt);
        Some(next)
    }

    /// The record after `attempt` ended; with `outcome` the run finishes too. `None` when the
    /// run had already finished: a duplicate delivery must not overwrite the first result.
    pub(crate) fn with_attempt(
        &self,
        attempt: Option<AttemptRecord>,
        outcome: Option<RunOutcome>,
        at_ms: u64,
    ) -> Option<RunRecord> {
        if self.status.is_terminal() {
            return None;
        }
        let mut next = match outcome {
            Some(outcome) => self.with_outcome(outcome, at_ms)?,
            None => self.clone(),
        };
        if let Some(attempt) = attempt {
            next.attempts = next.attempts.max(attempt.attempt);
            next.timeline.merge(attempt);
        }
        (next != *self).then_some(next)
    }

    /// The record after an operator asked for a retry: queued again, its error cleared, its
    /// timeline kept. Only failed and cancelled runs can be retried:
    /// [`QueueError::Conflict`] for the others.
    pub(crate) fn with_retry(&self, at_ms: u64) -> Result<RunRecord, QueueError> {
        if !matches!(self.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(QueueError::Conflict(format!(
                "the run is {}; only failed or cancelled runs can be retried",
                self.status.as_str()
            )));
        }
        let mut next = self.clone();
        next.status = RunStatus::Queued;
        next.error = None;
        next.result = None;
        next.finished_at_ms = None;
        next.dead_lettered = false;
        next.timeline.retried_at_ms = Some(at_ms);
        next.timeline.enqueued_at_ms = at_ms;
        next.timeline.cancel_requested_at_ms = None;
        Ok(next)
    }

    /// The record after someone asked to cancel the run: a queued run is cancelled at once
    /// (its task will be acknowledged unrun), a running one is marked so that its worker
    /// stops it at the next step boundary. `Ok(None)`: nothing to change (already cancelled,
    /// or already asked). [`QueueError::Conflict`] for a run that succeeded or failed.
    pub(crate) fn with_cancel(&self, at_ms: u64) -> Result<Option<RunRecord>, QueueError> {
        match self.status {
            RunStatus::Cancelled => Ok(None),
            RunStatus::Succeeded | RunStatus::Failed => Err(QueueError::Conflict(format!(
                "the run has already finished ({}); only queued or running runs can be cancelled",
                self.status.as_str()
            ))),
            RunStatus::Running if self.timeline.cancel_requested_at_ms.is_some() => Ok(None),
            RunStatus::Running => {
                let mut next = self.clone();
                next.timeline.cancel_requested_at_ms = Some(at_ms);
                Ok(Some(next))
            }
            RunStatus::Queued => {
                let mut next = self
                    .with_outcome(RunOutcome::Cancelled, at_ms)
                    .unwrap_or_else(|| self.clone());
                next.timeline.cancel_requested_at_ms = Some(at_ms);
                Ok(Some(next))
            }
        }
    }

    /// What the change `self → next` (with `attempt`) adds to the statistics.
    pub(crate) fn stats_sample(
        &self,
        next: &RunRecord,
        attempt: Option<&AttemptRecord>,
    ) -> Option<crate::stats::RunSample> {
        let run_finished = !self.status.is_terminal() && next.status.is_terminal();
        let attempt = attempt.filter(|a| a.outcome != AttemptOutcome::Running);
        if !run_finished && attempt.is_none() {
            return None;
        }
        let at_ms = next
            .finished_at_ms
            .or_else(|| attempt.and_then(|a| a.finished_at_ms))
            .unwrap_or(0);
        // The first attempt measures the queue; later ones waited out a back-off on purpose.
        let queue_wait_ms = attempt
            .filter(|a| a.attempt == 1)
            .map(|a| a.started_at_ms.saturating_sub(next.timeline.enqueued_at_ms) as f64);
        let steps: Vec<crate::stats::StepSample> = attempt
            .map(|a| {
                a.steps
                    .iter()
                    .map(|s| crate::stats::StepSample {
                        name: s.name.clone(),
                        success: s.success,
                        error_type: s.error_type.clone(),
                        duration_ms: s.duration_ms,
                        input_tokens: s.llm_calls.iter().filter_map(|c| c.input_tokens).sum(),
                        output_tokens: s.llm_calls.iter().filter_map(|c| c.output_tokens).sum(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let run_failed = run_finished && next.status == RunStatus::Failed;
        let failure = run_failed.then(|| {
            let failed_step = attempt.and_then(|a| a.steps.iter().find(|s| !s.success));
            let step = failed_step.map_or(crate::stats::WHOLE_RUN.to_owned(), |s| s.name.clone());
            let error_type = failed_step
                .and_then(|s| s.error_type.clone())
                .or_else(|| attempt.and_then(|a| a.error_type.clone()))
                .unwrap_or_else(|| {
                    if next.dead_lettered {
                        "dead_lettered"
                    } else {
                        "failed"
                    }
                    .to_owned()
                });
            (step, error_type)
        });
        Some(crate::stats::RunSample {
            run_id: next.run_id.clone(),
            agent_type: next.agent_type.clone(),
            at_ms,
            run_finished,
            run_failed,
            run_duration_ms: next.duration_ms().unwrap_or(0) as f64,
            queue_wait_ms,
            steps,
            failure,
        })
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
            RunOutcome::Cancelled => {
                next.status = RunStatus::Cancelled;
                next.result = None;
                next.error = Some("cancelled: the run was cancelled on request".to_owned());
                next.dead_lettered = false;
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
    /// The run was cancelled on request.
    Cancelled,
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
