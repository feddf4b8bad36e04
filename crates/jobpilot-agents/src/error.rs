//! The ways an agent run can fail, and what the worker should do about each: retry it
//! (transient) or record the run as failed (permanent).
//!
//! These are the errors of a run, not of the LLM transport ([`crate::llm::LlmError`]) or of the
//! API's input check ([`crate::InputError`]); both are wrapped here when they end a run.

use std::borrow::Cow;

use crate::agent_type::InputError;
use crate::llm::LlmError;

/// Text a parser could not work with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The text holds no letters or digits at all (e.g. `"!!!"`).
    #[error("{subject} has no words to parse")]
    NoWords {
        /// What was being parsed: `resume` or `job`.
        subject: &'static str,
    },
}

impl ParseError {
    /// A short, stable class of the error for `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ParseError::NoWords { .. } => "no_words",
        }
    }
}

/// Why one step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The step could not parse its text. Permanent: the same text fails the same way.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// The LLM call of a prose step failed; transient or not as the [`LlmError`] says.
    #[error(transparent)]
    Llm(#[from] LlmError),
    /// A step found the run's state not as the step sequence promises (a bug in jobpilot).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl StepError {
    /// Whether running the step again cannot help.
    pub fn is_permanent(&self) -> bool {
        match self {
            StepError::Parse(_) | StepError::Internal(_) => true,
            StepError::Llm(e) => !e.is_transient(),
        }
    }

    /// A short, stable class of the error for `error.type` and the run record.
    pub fn error_type(&self) -> Cow<'static, str> {
        match self {
            StepError::Parse(e) => Cow::Borrowed(e.error_type()),
            StepError::Llm(e) => e.error_type(),
            StepError::Internal(_) => Cow::Borrowed("internal"),
        }
    }
}

/// Why an agent run failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The input does not have the shape of the agent type (the API checks it first, so this
    /// means a task that bypassed the API or an older message format).
    #[error("invalid input: {0}")]
    InvalidInput(InputError),
    /// A step failed; the steps after it did not run.
    #[error("step {step} failed: {cause}")]
    Step {
        /// The name of the step, e.g. `parse_resume`.
        step: &'static str,
        /// What went wrong in it.
        cause: StepError,
    },
    /// The run was cancelled on request; `step` is the one that was running or due next.
    #[error("cancelled on request at step {step}")]
    Cancelled {
        /// The step that was stopped, or would have run next.
        step: &'static str,
    },
}

impl From<InputError> for AgentError {
    fn from(e: InputError) -> Self {
        AgentError::InvalidInput(e)
    }
}

impl AgentError {
    /// Whether retrying the run cannot help, so the worker should record it as failed instead
    /// of retrying it.
    pub fn is_permanent(&self) -> bool {
        match self {
            AgentError::InvalidInput(_) | AgentError::Cancelled { .. } => true,
            AgentError::Step { cause, .. } => cause.is_permanent(),
        }
    }

    /// A short, stable class of the error (`invalid_input`, `no_words`, `timeout`, `http_503`,
    /// ...), as set in `error.type` on the spans.
    pub fn error_type(&self) -> Cow<'static, str> {
        match self {
            AgentError::InvalidInput(_) => Cow::Borrowed("invalid_input"),
            AgentError::Step { cause, .. } => cause.error_type(),
            AgentError::Cancelled { .. } => Cow::Borrowed("cancelled"),
        }
    }

    /// Whether the run stopped because it was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, AgentError::Cancelled { .. })
    }

    /// The step that failed, if the run got as far as a step.
    pub fn step(&self) -> Option<&'static str> {
        match self {
            AgentError::InvalidInput(_) => None,
            AgentError::Step { step, .. } | AgentError::Cancelled { step } => Some(step),
        }
    }

    /// The internal message, for spans and logs: what failed and why, in one lowercase line,
    /// with no resume or prompt text in it (but possibly the LLM's address and the provider's
    /// words).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The stable public code of the failure: `invalid_input` (the input cannot be run),
    /// `llm_unavailable` (the language model failed or refused), `internal`.
    pub fn public_code(&self) -> &'static str {
        match self {
            AgentError::InvalidInput(_) => "invalid_input",
            AgentError::Step { cause, .. } => match cause {
                StepError::Parse(_) => "invalid_input",
                StepError::Llm(_) => "llm_unavailable",
                StepError::Internal(_) => "internal",
            },
            AgentError::Cancelled { .. } => "cancelled",
        }
    }

    /// The message for the run record, which its user reads: `{code}: {what happened}`, with
    /// nothing internal in it (no LLM address, no provider message, no key fragment).
    pub fn public_message(&self) -> String {
        let code = self.public_code();
        match self {
            // Input errors name the user's own fields and are written by jobpilot.
            AgentError::InvalidInput(e) => format!("{code}: {e}"),
            AgentError::Step { step, cause } => match cause {
                StepError::Parse(e) => format!("{code}: step {step}: {e}"),
                StepError::Llm(_) => format!(
                    "{code}: the language model could not complete step {step}; \
                     quote the trace_id to an operator"
                ),
                StepError::Internal(_) => format!(
                    "{code}: step {step} failed inside jobpilot; quote the trace_id to an operator"
                ),
            },
            AgentError::Cancelled { step } => {
                format!("{code}: the run was cancelled on request at step {step}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_failure_is_permanent_and_names_step_and_subject() {
        let err = AgentError::Step {
            step: "parse_resume",
            cause: ParseError::NoWords { subject: "resume" }.into(),
        };
        assert!(err.is_permanent());
        assert_eq!(err.error_type(), "no_words");
        assert_eq!(err.step(), Some("parse_resume"));
        assert_eq!(
            err.message(),
            "step parse_resume failed: resume has no words to parse"
        );
    }

    #[test]
    fn invalid_input_is_permanent_and_has_no_step() {
        let err = AgentError::from(InputError {
            field: "input.job".into(),
            reason: "is required".into(),
        });
        assert!(err.is_permanent());
        assert_eq!(err.error_type(), "invalid_input");
        assert_eq!(err.step(), None);
        assert_eq!(err.message(), "invalid input: input.job is required");
        assert_eq!(err.public_message(), "invalid_input: input.job is required");
    }

    #[test]
    fn an_llm_failure_keeps_its_detail_out_of_the_public_message() {
        let err = AgentError::Step {
            step: "write_letter",
            cause: LlmError::Status {
                server: "llm.internal:8443".into(),
                status: 401,
                detail: "invalid api key sk-...abcd".into(),
            }
            .into(),
        };
        assert_eq!(err.public_code(), "llm_unavailable");
        let public = err.public_message();
        assert!(public.starts_with("llm_unavailable: "), "{public}");
        for internal in ["llm.internal", "8443", "sk-", "abcd", "401"] {
            assert!(!public.contains(internal), "{public}");
        }
        assert!(err.message().contains("llm.internal:8443"));
    }
}
