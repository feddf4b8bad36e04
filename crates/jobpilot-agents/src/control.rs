//! What a caller hands a run besides its input: the token that cancels it and the log in
//! which the runner writes down, as they happen, the steps and LLM calls of the run.
//!
//! The log is shared, so whoever stops waiting for a run (a deadline, a cancellation) still
//! reads what it did up to that moment; a step or call still in progress shows without an
//! end. This module records; turning the reports into a stored timeline is the worker's job.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// One LLM call of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LlmCallReport {
    /// The model asked (the one that answered, once known).
    pub model: String,
    /// Prompt tokens, when known.
    pub input_tokens: Option<u64>,
    /// Completion tokens, when known.
    pub output_tokens: Option<u64>,
    /// HTTP requests made so far (retries included; none offline).
    pub http_attempts: u32,
    /// When it started.
    pub started: Instant,
    /// How long it took; `None` while it runs (or when it was stopped).
    pub duration: Option<Duration>,
    /// Whether it answered.
    pub success: bool,
}

/// One step of the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// The step name.
    pub name: &'static str,
    /// When it started.
    pub started: Instant,
    /// How long it took; `None` while it runs (or when it was stopped).
    pub duration: Option<Duration>,
    /// Whether it succeeded (false while it runs).
    pub success: bool,
    /// The error's type when it failed (`cancelled` when it was stopped by a cancellation).
    pub error_type: Option<String>,
    /// Its LLM calls, in order.
    pub llm_calls: Vec<LlmCallReport>,
}

/// A call in progress: its HTTP requests are counted by the client as they go out.
#[derive(Debug)]
struct CallEntry {
    report: LlmCallReport,
    attempts: Arc<AtomicU32>,
}

#[derive(Debug)]
struct StepEntry {
    report: StepReport,
    calls: Vec<CallEntry>,
}

type StepListener = Arc<dyn Fn(&StepReport) + Send + Sync>;

/// Cancellation and reporting of one run. Cheap to clone; clones share the same log.
#[derive(Clone, Default)]
pub struct RunControl {
    cancel: CancellationToken,
    steps: Arc<Mutex<Vec<StepEntry>>>,
    on_step: Option<StepListener>,
}

impl std::fmt::Debug for RunControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunControl")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("steps", &self.steps().len())
            .finish_non_exhaustive()
    }
}

impl RunControl {
    /// A control cancelled through `cancel`.
    pub fn new(cancel: CancellationToken) -> Self {
        RunControl {
            cancel,
            ..RunControl::default()
        }
    }

    /// Calls `listener` with each step as it finishes (e.g. to publish an event). It runs on
    /// the run's task: it must be quick.
    pub fn on_step_finished(
        mut self,
        listener: impl Fn(&StepReport) + Send + Sync + 'static,
    ) -> Self {
        self.on_step = Some(Arc::new(listener));
        self
    }

    /// The token that cancels the run.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The steps so far, in order; a step or call still in progress has no duration.
    pub fn steps(&self) -> Vec<StepReport> {
        self.lock()
            .iter()
            .map(|entry| {
                let mut report = entry.report.clone();
                report.llm_calls = entry
                    .calls
                    .iter()
                    .map(|call| LlmCallReport {
                        http_attempts: call.attempts.load(Ordering::Relaxed),
                        ..call.report.clone()
                    })
                    .collect();
                report
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StepEntry>> {
        // Entries are pushed and updated in short, panic-free sections.
        self.steps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn step_started(&self, name: &'static str, started: Instant) {
        self.lock().push(StepEntry {
            report: StepReport {
                name,
                started,
                duration: None,
                success: false,
                error_type: None,
                llm_calls: Vec::new(),
            },
            calls: Vec::new(),
        });
    }

    pub(crate) fn step_finished(&self, error_type: Option<String>) {
        let finished = {
            let mut steps = self.lock();
            let Some(entry) = steps.last_mut() else {
                return;
            };
            entry.report.duration = Some(entry.report.started.elapsed());
            entry.report.success = error_type.is_none();
            entry.report.error_type = error_type;
            entry.report.clone()
        };
        if let Some(listener) = &self.on_step {
            listener(&finished);
        }
    }

    /// Records the start of an LLM call of the current step; the returned counter is given
    /// to the client, which counts its HTTP requests in it.
    pub(crate) fn call_started(&self, model: &str, started: Instant) -> Arc<AtomicU32> {
        let attempts = Arc::new(AtomicU32::new(0));
        if let Some(entry) = self.lock().last_mut() {
            entry.calls.push(CallEntry {
                report: LlmCallReport {
                    model: model.to_owned(),
                    input_tokens: None,
                    output_tokens: None,
                    http_attempts: 0,
                    started,
                    duration: None,
                    success: false,
                },
                attempts: Arc::clone(&attempts),
            });
        }
        attempts
    }

    pub(crate) fn call_finished(&self, answered: Option<(&str, Option<u64>, Option<u64>)>) {
        let mut steps = self.lock();
        let Some(call) = steps.last_mut().and_then(|entry| entry.calls.last_mut()) else {
            return;
        };
        call.report.duration = Some(call.report.started.elapsed());
        call.report.success = answered.is_some();
        if let Some((model, input, output)) = answered {
            call.report.model = model.to_owned();
            call.report.input_tokens = input;
            call.report.output_tokens = output;
        }
    }
}
