//! The timeline of a run: when it was accepted and enqueued, and for every attempt the
//! worker, its times, its outcome and its steps with their LLM calls.
//!
//! The worker builds an attempt's record in memory while the run goes on and hands it to the
//! store with the attempt's outcome ([`crate::RunStore::finish_attempt`]), so a step costs no
//! store round trip. Both backends keep the timeline inside the run record, in this one
//! shape. The rules for merging a new attempt into a timeline live here; storing is the
//! backends' job.

use serde::{Deserialize, Serialize};

/// How one attempt ended (or that it has not yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    /// A worker is executing it.
    Running,
    /// The run succeeded in this attempt.
    Succeeded,
    /// The run failed for good in this attempt (dead-lettered runs included).
    Failed,
    /// A transient failure: another attempt follows.
    Retrying,
    /// The worker stopped answering (it died, or lost its lease): another delivery took the
    /// task over, as the delivery counter shows.
    Lost,
    /// The run was cancelled during this attempt.
    Cancelled,
}

impl AttemptOutcome {
    /// The lowercase name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Running => "running",
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Retrying => "retrying",
            AttemptOutcome::Lost => "lost",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }
}

/// One LLM call made by a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LlmCallRecord {
    /// The model asked.
    pub model: String,
    /// Prompt tokens, when known.
    pub input_tokens: Option<u64>,
    /// Completion tokens, when known.
    pub output_tokens: Option<u64>,
    /// HTTP requests made (1 plus retries; 0 for the offline provider).
    pub http_attempts: u32,
    /// Start, in milliseconds after the attempt started.
    pub start_offset_ms: f64,
    /// How long the call took, milliseconds.
    pub duration_ms: f64,
    /// Whether it answered.
    pub success: bool,
}

/// One step of an attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepRecord {
    /// The step name (`parse_resume`, ...).
    pub name: String,
    /// Start, in milliseconds after the attempt started.
    pub start_offset_ms: f64,
    /// How long it took, milliseconds.
    pub duration_ms: f64,
    /// Whether it finished without error.
    pub success: bool,
    /// The error's type, when it failed (`error.type` of its span).
    #[serde(
        rename = "error.type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub error_type: Option<String>,
    /// The LLM calls it made, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub llm_calls: Vec<LlmCallRecord>,
}

/// One delivery of the run's task to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    /// 1-based attempt number (the broker's delivery counter).
    pub attempt: u32,
    /// The worker (consumer) that took it; empty when no worker reported it.
    pub worker: String,
    /// When the broker handed the task out, unix ms (the time the worker learnt of it).
    pub delivered_at_ms: u64,
    /// When the worker started the agent, unix ms.
    pub started_at_ms: u64,
    /// When it ended, unix ms; absent while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The error's type, when it did not succeed.
    #[serde(
        rename = "error.type",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub error_type: Option<String>,
    /// The error as the run's owner may read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The steps that ran, in order.
    #[serde(default)]
    pub steps: Vec<StepRecord>,
}

impl AttemptRecord {
    /// An attempt that has just started.
    pub fn started(
        attempt: u32,
        worker: impl Into<String>,
        delivered_at_ms: u64,
        started_at_ms: u64,
    ) -> Self {
        AttemptRecord {
            attempt,
            worker: worker.into(),
            delivered_at_ms,
            started_at_ms,
            finished_at_ms: None,
            outcome: AttemptOutcome::Running,
            error_type: None,
            error: None,
            steps: Vec::new(),
        }
    }

    /// How long it ran, milliseconds (until now for one still running).
    pub fn duration_ms(&self, now_ms: u64) -> u64 {
        self.finished_at_ms
            .unwrap_or(now_ms)
            .saturating_sub(self.started_at_ms)
    }
}

/// Everything that happened to a run, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timeline {
    /// When the API accepted the run, unix ms.
    pub accepted_at_ms: u64,
    /// When its task was (last) put on the queue, unix ms; a retry requested by an operator
    /// moves it.
    pub enqueued_at_ms: u64,
    /// When an operator last asked for a retry, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retried_at_ms: Option<u64>,
    /// When cancellation was asked for, unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_requested_at_ms: Option<u64>,
    /// Every attempt, by attempt number.
    #[serde(default)]
    pub attempts: Vec<AttemptRecord>,
}

impl Timeline {
    /// The timeline of a run accepted and enqueued at `at_ms`.
    pub fn accepted(at_ms: u64) -> Self {
        Timeline {
            accepted_at_ms: at_ms,
            enqueued_at_ms: at_ms,
            ..Timeline::default()
        }
    }

    /// Merges `attempt` in: it replaces the record of the same attempt number, or is added in
    /// order. Every earlier attempt still marked running was taken over by this delivery (the
    /// delivery counter moved past it), so it is marked `lost`.
    pub(crate) fn merge(&mut self, attempt: AttemptRecord) {
        for earlier in self
            .attempts
            .iter_mut()
            .filter(|a| a.attempt < attempt.attempt && a.outcome == AttemptOutcome::Running)
        {
            earlier.outcome = AttemptOutcome::Lost;
            earlier.finished_at_ms = Some(attempt.delivered_at_ms.max(earlier.started_at_ms));
            earlier.error_type = Some("worker_lost".to_owned());
            earlier.error =
                Some("the worker stopped answering; the task was delivered again".to_owned());
        }
        match self
            .attempts
            .iter()
            .position(|a| a.attempt >= attempt.attempt)
        {
            Some(i) if self.attempts[i].attempt == attempt.attempt => {
                let current = &mut self.attempts[i];
                if attempt.outcome == AttemptOutcome::Lost {
                    // Reported by whoever found the worker gone: what the attempt did is kept.
                    if current.outcome == AttemptOutcome::Running {
                        current.outcome = AttemptOutcome::Lost;
                        current.finished_at_ms = attempt.finished_at_ms;
                        current.error_type = attempt.error_type;
                        current.error = attempt.error;
                    }
                } else if current.outcome == AttemptOutcome::Running
                    || attempt.outcome != AttemptOutcome::Running
                {
                    // A finished record is never replaced by a late "running" one.
                    *current = attempt;
                }
            }
            Some(i) => self.attempts.insert(i, attempt),
            None => self.attempts.push(attempt),
        }
        // Bounded whatever happens: a run has at most a few attempts per retry request.
        if self.attempts.len() > MAX_ATTEMPTS_KEPT {
            let extra = self.attempts.len() - MAX_ATTEMPTS_KEPT;
            self.attempts.drain(..extra);
        }
    }

    /// The first time a worker started the run, if one did.
    pub fn first_start_ms(&self) -> Option<u64> {
        self.attempts.iter().map(|a| a.started_at_ms).min()
    }

    /// The last attempt, if any.
    pub fn last_attempt(&self) -> Option<&AttemptRecord> {
        self.attempts.last()
    }
}

/// Attempts kept in one timeline; the oldest go first beyond it.
pub const MAX_ATTEMPTS_KEPT: usize = 50;

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(attempt: u32, outcome: AttemptOutcome) -> AttemptRecord {
        AttemptRecord {
            finished_at_ms: Some(100 * u64::from(attempt) + 50),
            outcome,
            ..AttemptRecord::started(
                attempt,
                "w",
                100 * u64::from(attempt),
                100 * u64::from(attempt) + 1,
            )
        }
    }

    #[test]
    fn a_later_delivery_marks_a_running_attempt_lost() {
        let mut timeline = Timeline::accepted(10);
        timeline.merge(AttemptRecord::started(1, "w1", 100, 101));
        timeline.merge(finished(2, AttemptOutcome::Succeeded));
        assert_eq!(timeline.attempts.len(), 2);
        assert_eq!(timeline.attempts[0].outcome, AttemptOutcome::Lost);
        assert_eq!(timeline.attempts[0].finished_at_ms, Some(200));
        assert_eq!(timeline.attempts[1].outcome, AttemptOutcome::Succeeded);
    }

    #[test]
    fn the_outcome_replaces_the_running_record_of_the_same_attempt() {
        let mut timeline = Timeline::accepted(10);
        timeline.merge(AttemptRecord::started(1, "w1", 100, 101));
        timeline.merge(finished(1, AttemptOutcome::Retrying));
        assert_eq!(timeline.attempts.len(), 1);
        assert_eq!(timeline.attempts[0].outcome, AttemptOutcome::Retrying);
        // A duplicate start does not undo it.
        timeline.merge(AttemptRecord::started(1, "w1", 100, 101));
        assert_eq!(timeline.attempts[0].outcome, AttemptOutcome::Retrying);
    }

    #[test]
    fn a_lost_report_keeps_what_the_attempt_did() {
        let mut timeline = Timeline::accepted(10);
        let mut running = AttemptRecord::started(1, "w1", 100, 101);
        running.steps.push(StepRecord {
            name: "parse_resume".into(),
            start_offset_ms: 0.5,
            duration_ms: 1.0,
            success: true,
            error_type: None,
            llm_calls: Vec::new(),
        });
        timeline.merge(running);
        let lost = AttemptRecord {
            outcome: AttemptOutcome::Lost,
            finished_at_ms: Some(900),
            error_type: Some("worker_lost".into()),
            ..AttemptRecord::started(1, "", 900, 900)
        };
        timeline.merge(lost);
        let attempt = &timeline.attempts[0];
        assert_eq!(
            (attempt.outcome, attempt.worker.as_str()),
            (AttemptOutcome::Lost, "w1")
        );
        assert_eq!(
            (attempt.started_at_ms, attempt.finished_at_ms),
            (101, Some(900))
        );
        assert_eq!(attempt.steps.len(), 1);
    }

    #[test]
    fn attempts_stay_in_order_and_bounded() {
        let mut timeline = Timeline::accepted(10);
        timeline.merge(finished(3, AttemptOutcome::Failed));
        timeline.merge(finished(1, AttemptOutcome::Retrying));
        let numbers: Vec<u32> = timeline.attempts.iter().map(|a| a.attempt).collect();
        assert_eq!(numbers, [1, 3]);
        for n in 4..(4 + MAX_ATTEMPTS_KEPT as u32) {
            timeline.merge(finished(n, AttemptOutcome::Retrying));
        }
        assert_eq!(timeline.attempts.len(), MAX_ATTEMPTS_KEPT);
    }

    #[test]
    fn error_type_is_named_as_in_spans() {
        let mut attempt = finished(1, AttemptOutcome::Failed);
        attempt.error_type = Some("invalid_input".into());
        let json = serde_json::to_value(&attempt).unwrap();
        assert_eq!(json["error.type"], "invalid_input");
        assert_eq!(json["outcome"], "failed");
    }
}
