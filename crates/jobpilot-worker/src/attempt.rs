//! The record of one attempt as the worker builds it: who took the delivery and when, the
//! steps and LLM calls the runner reported, and how it ended. It is kept in memory while the
//! run goes on and stored once, with the attempt's outcome.

use std::time::Instant;

use jobpilot_agents::{RunControl, StepReport};
use jobpilot_queue::{
    AttemptOutcome, AttemptRecord, Delivery, LlmCallRecord, StepRecord, unix_now_ms,
};

/// An attempt in progress.
pub(crate) struct AttemptLog {
    record: AttemptRecord,
    /// The attempt's start, the origin of its step offsets.
    started: Instant,
    /// The steps reported so far; a step still in progress has no duration.
    steps: Vec<StepReport>,
}

/// Milliseconds, with microsecond precision, as stored.
fn ms(d: std::time::Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

impl AttemptLog {
    /// The attempt of `delivery`, taken by `worker`, starting now.
    pub(crate) fn start(delivery: &Delivery, worker: &str, delivered_at_ms: u64) -> Self {
        AttemptLog {
            record: AttemptRecord::started(
                delivery.attempt,
                worker,
                delivered_at_ms,
                unix_now_ms(),
            ),
            started: Instant::now(),
            steps: Vec::new(),
        }
    }

    /// The record as it is now (running, until [`AttemptLog::end`]).
    pub(crate) fn record(&self) -> &AttemptRecord {
        &self.record
    }

    /// Takes the steps `control` reported.
    pub(crate) fn steps_from(&mut self, control: &RunControl) {
        self.steps = control.steps();
    }

    /// The step in progress, if any, was stopped by `error_type` (a deadline, a shutdown).
    pub(crate) fn interrupted(&mut self, error_type: &str) {
        for step in self.steps.iter_mut().filter(|s| s.duration.is_none()) {
            step.duration = Some(step.started.elapsed());
            step.success = false;
            step.error_type = Some(error_type.to_owned());
        }
    }

    /// Ends the attempt with `outcome`, its error type and public message.
    pub(crate) fn end(
        &mut self,
        outcome: AttemptOutcome,
        error_type: Option<&str>,
        error: Option<&str>,
    ) {
        self.record.outcome = outcome;
        self.record.error_type = error_type.map(str::to_owned);
        self.record.error = error.map(str::to_owned);
        self.record.finished_at_ms = Some(unix_now_ms());
    }

    /// The record to store, with its steps.
    pub(crate) fn into_record(self) -> AttemptRecord {
        let origin = self.started;
        let offset = |at: Instant| ms(at.saturating_duration_since(origin));
        let mut record = self.record;
        record.steps = self
            .steps
            .into_iter()
            .map(|step| StepRecord {
                name: step.name.to_owned(),
                start_offset_ms: offset(step.started),
                duration_ms: ms(step.duration.unwrap_or_else(|| step.started.elapsed())),
                success: step.success,
                error_type: step.error_type,
                llm_calls: step
                    .llm_calls
                    .into_iter()
                    .map(|call| LlmCallRecord {
                        model: call.model,
                        input_tokens: call.input_tokens,
                        output_tokens: call.output_tokens,
                        http_attempts: call.http_attempts,
                        start_offset_ms: offset(call.started),
                        duration_ms: ms(call.duration.unwrap_or_else(|| call.started.elapsed())),
                        success: call.success,
                    })
                    .collect(),
            })
            .collect();
        record
    }
}

/// The record saying that attempt `attempt` never ended: its worker stopped answering (it
/// died, or lost its lease) and a later delivery found it so. Merged into the stored attempt,
/// it keeps what that attempt did.
pub(crate) fn lost(attempt: u32, error: &str) -> AttemptRecord {
    let now = unix_now_ms();
    AttemptRecord {
        finished_at_ms: Some(now),
        outcome: AttemptOutcome::Lost,
        error_type: Some("worker_lost".to_owned()),
        error: Some(error.to_owned()),
        ..AttemptRecord::started(attempt, "", now, now)
    }
}
