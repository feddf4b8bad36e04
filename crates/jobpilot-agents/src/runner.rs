//! The step runtime: runs an agent type's steps in order, each in its own span, and turns the
//! outcome into a result or an [`AgentError`].
//!
//! This is the one place that creates agent spans: `invoke_agent {agent_type}` for the run and
//! `agent.{agent_type}.{step_name}` for each step under it. The agent files (in `agents/`)
//! only declare their steps as data ([`Step`]): what each computes, or what it asks the LLM and
//! where the answer goes. The runner does not retry; the worker decides that from
//! [`AgentError::is_permanent`].

use std::sync::Arc;
use std::time::Instant;

use jobpilot_telemetry::{AttrValue, Metrics, SpanKind, TraceCx, Tracer, names};
use serde_json::Value;

use crate::agent_type::{AgentType, InputError};
use crate::agents::{CoverLetter, JobMatch, ResumeReview};
use crate::control::RunControl;
use crate::error::{AgentError, StepError};
use crate::llm::{ChatMessage, LlmClient};

/// Who and what a run is, for its spans and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunContext {
    /// The run's id, as the API returned it. Shared: every span of the run carries it.
    pub run_id: Arc<str>,
    /// The user who asked for the run (the JWT subject). Shared like the run id.
    pub user_id: Arc<str>,
    /// The agent type to run.
    pub agent_type: AgentType,
}

/// What a step does with the run's state `S`.
pub(crate) enum Action<S> {
    /// Deterministic work on the state.
    Compute(fn(&mut S) -> Result<(), StepError>),
    /// A call to the LLM: `prompt` builds the messages from the state, `store` puts the
    /// answer's text back into it. The runner makes the call, under the step's span.
    Write {
        prompt: fn(&S) -> Result<Vec<ChatMessage>, StepError>,
        store: fn(&mut S, String) -> Result<(), StepError>,
    },
}

/// One named step of an agent type.
pub(crate) struct Step<S> {
    /// The step name, as in [`AgentType::steps`].
    pub name: &'static str,
    /// The step's span name, `agent.{agent_type}.{name}`: written out once rather than
    /// formatted for every run (see [`step!`]).
    pub span_name: &'static str,
    /// What the step does.
    pub action: Action<S>,
}

/// A [`Step`] of agent type `$agent` named `$name`, its span name spelled out at compile time.
macro_rules! step {
    ($agent:literal, $name:literal, $action:expr) => {
        $crate::runner::Step {
            name: $name,
            span_name: concat!("agent.", $agent, ".", $name),
            action: $action,
        }
    };
}
pub(crate) use step;

/// An agent type as the runner sees it: a state built from the input, the steps that work on
/// it in order, and the result read from it at the end.
pub(crate) trait Agent {
    /// What the steps read and write.
    type State: Send + 'static;
    /// The steps, in order.
    const STEPS: &'static [Step<Self::State>];
    /// The state before the first step, from an input whose shape was checked.
    fn start(input: &Value) -> Result<Self::State, InputError>;
    /// The run's result, from the state after the last step; `Err` names what is missing.
    fn finish(state: Self::State) -> Result<Value, &'static str>;
}

/// Runs agents. Cheap to clone; one per worker is enough.
#[derive(Clone, Debug)]
pub struct AgentRunner {
    tracer: Tracer,
    llm: LlmClient,
    metrics: Metrics,
}

impl AgentRunner {
    /// A runner that records spans with `tracer` (scope [`names::SCOPE_AGENTS`]) and calls
    /// `llm` from its prose steps.
    pub fn new(tracer: Tracer, llm: LlmClient) -> Self {
        AgentRunner {
            tracer,
            llm,
            metrics: Metrics::noop(),
        }
    }

    /// Records each step's duration on `metrics` (`jobpilot.step.duration`).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Runs `run.agent_type` on `input` in an `invoke_agent {agent_type}` span under `parent`,
    /// one `agent.{agent_type}.{step}` span per step. A failing step ends the run: the steps
    /// after it do not run.
    ///
    /// ```no_run
    /// # async fn example(input: serde_json::Value) -> Result<(), jobpilot_agents::AgentError> {
    /// use jobpilot_agents::{AgentRunner, AgentType, LlmClient, RunContext};
    /// use jobpilot_telemetry::{TraceCx, Tracer};
    ///
    /// let runner = AgentRunner::new(Tracer::noop(), LlmClient::offline(Tracer::noop()));
    /// let run = RunContext {
    ///     run_id: "run-1".into(),
    ///     user_id: "user-1".into(),
    ///     agent_type: AgentType::JobMatch,
    /// };
    /// let result = runner.run(&TraceCx::root(), &run, &input).await?;
    /// println!("score: {}", result["score"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`AgentError::InvalidInput`] when `input` does not have the agent type's shape (no step
    /// runs), or [`AgentError::Step`] with the failing step's name and cause.
    pub async fn run(
        &self,
        parent: &TraceCx,
        run: &RunContext,
        input: &Value,
    ) -> Result<Value, AgentError> {
        self.run_controlled(parent, run, input, &RunControl::default())
            .await
    }

    /// [`AgentRunner::run`], reporting each step and LLM call in `control` as it goes and
    /// stopping when `control` is cancelled: before the next step starts, or at once during
    /// a step (its LLM request in flight is dropped, which aborts it). A cancelled run ends
    /// with [`AgentError::Cancelled`] and its spans say so.
    ///
    /// # Errors
    /// As [`AgentRunner::run`], and [`AgentError::Cancelled`].
    pub async fn run_controlled(
        &self,
        parent: &TraceCx,
        run: &RunContext,
        input: &Value,
        control: &RunControl,
    ) -> Result<Value, AgentError> {
        let agent_type = run.agent_type.as_str();
        let span = self.tracer.start(
            parent,
            run.agent_type.invoke_span_name(),
            SpanKind::Internal,
            vec![
                (names::GEN_AI_OPERATION_NAME, names::OP_INVOKE_AGENT.into()),
                (names::GEN_AI_AGENT_NAME, agent_type.into()),
                (names::USER_ID, run.user_id.clone().into()),
                (names::AGENT_TYPE, agent_type.into()),
                (names::RUN_ID, run.run_id.clone().into()),
            ],
        );
        let cx = span.cx();
        let result = cx
            .instrument(async {
                match run.agent_type {
                    AgentType::JobMatch => {
                        self.run_steps::<JobMatch>(&cx, run, input, control).await
                    }
                    AgentType::ResumeReview => {
                        self.run_steps::<ResumeReview>(&cx, run, input, control)
                            .await
                    }
                    AgentType::CoverLetter => {
                        self.run_steps::<CoverLetter>(&cx, run, input, control)
                            .await
                    }
                }
            })
            .await;
        match &result {
            Ok(_) => span.finish(true),
            Err(error) => {
                span.fail(&error.error_type(), &error.message());
                span.finish(false);
            }
        }
        result
    }

    /// Checks the input, then runs `A`'s steps in order under `agent_cx`.
    async fn run_steps<A: Agent>(
        &self,
        agent_cx: &TraceCx,
        run: &RunContext,
        input: &Value,
        control: &RunControl,
    ) -> Result<Value, AgentError> {
        // The API checked the shape already; a task that bypassed it must fail cleanly, not
        // panic half-way through a step.
        let started = run
            .agent_type
            .validate_input(input)
            .and_then(|()| A::start(input));
        let mut state = match started {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(run_id = %run.run_id, field = %error.field, "agent input rejected");
                return Err(error.into());
            }
        };
        for step in A::STEPS {
            // The step boundary: a cancelled run starts no further step.
            if control.cancellation().is_cancelled() {
                return Err(AgentError::Cancelled { step: step.name });
            }
            self.run_step(agent_cx, run, step, &mut state, control)
                .await?;
        }
        A::finish(state).map_err(|missing| AgentError::Step {
            step: A::STEPS.last().map_or("finish", |s| s.name),
            cause: StepError::Internal(missing),
        })
    }

    /// Runs one step in its `agent.{agent_type}.{step}` span.
    async fn run_step<S: Send>(
        &self,
        agent_cx: &TraceCx,
        run: &RunContext,
        step: &Step<S>,
        state: &mut S,
        control: &RunControl,
    ) -> Result<(), AgentError> {
        let agent_type = run.agent_type.as_str();
        let attrs: Vec<(&'static str, AttrValue)> = vec![
            (names::USER_ID, run.user_id.clone().into()),
            (names::AGENT_TYPE, agent_type.into()),
            (names::STEP_NAME, step.name.into()),
            (names::RUN_ID, run.run_id.clone().into()),
        ];
        let span = self
            .tracer
            .start(agent_cx, step.span_name, SpanKind::Internal, attrs);
        let step_cx = span.cx();
        let started = Instant::now();
        control.step_started(step.name, started);
        let work = step_cx.instrument(async {
            match &step.action {
                Action::Compute(compute) => compute(state),
                Action::Write { prompt, store } => {
                    let messages = prompt(state)?;
                    let attempts = control.call_started(self.llm.model(), Instant::now());
                    let answer = self.llm.chat_counted(&step_cx, &messages, &attempts).await;
                    control.call_finished(
                        answer
                            .as_ref()
                            .ok()
                            .map(|a| (a.model.as_str(), a.input_tokens, a.output_tokens)),
                    );
                    store(state, answer?.content)
                }
            }
        });
        let outcome = tokio::select! {
            biased;
            () = control.cancellation().cancelled() => None,
            outcome = work => Some(outcome),
        };
        let Some(outcome) = outcome else {
            // Cancelled during the step: the work (an LLM request, say) was dropped.
            control.step_finished(Some("cancelled".to_owned()));
            tracing::info!(run_id = %run.run_id, step = step.name, "run cancelled during a step");
            span.fail(
                "cancelled",
                "the run was cancelled on request during this step",
            );
            span.finish(false);
            return Err(AgentError::Cancelled { step: step.name });
        };
        self.metrics
            .record_step(agent_type, step.name, outcome.is_ok(), started.elapsed());
        control.step_finished(outcome.as_ref().err().map(|e| e.error_type().into_owned()));
        match outcome {
            Ok(()) => {
                tracing::debug!(
                    run_id = %run.run_id,
                    step = step.name,
                    elapsed_ms = span.elapsed_ms(),
                    "agent step finished"
                );
                span.finish(true);
                Ok(())
            }
            Err(cause) => {
                tracing::warn!(
                    run_id = %run.run_id,
                    step = step.name,
                    error.type = %cause.error_type(),
                    permanent = cause.is_permanent(),
                    "agent step failed: {cause}"
                );
                span.fail(&cause.error_type(), &cause.to_string());
                span.finish(false);
                Err(AgentError::Step {
                    step: step.name,
                    cause,
                })
            }
        }
    }
}
