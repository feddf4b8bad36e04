//! The agents of jobpilot: the agent types and their input check, the step runtime that traces
//! every step, the LLM client, and the deterministic parsing and scoring the steps build on.
//!
//! Layout:
//! - [`agent_type`]: [`AgentType`], its steps, input schema and [`AgentType::validate_input`].
//! - [`runner`]: [`AgentRunner`], one `invoke_agent` span per run and one span per step.
//! - [`control`]: [`RunControl`], the cancellation and the step-by-step report of a run.
//! - `agents/`: one file per agent type, each a list of steps (private).
//! - [`llm`]: [`LlmClient`], OpenAI-compatible or offline, with `chat` and `POST` spans.
//! - [`resume`], [`job`], [`skills`], [`scoring`]: reading resumes and job ads, and scoring one
//!   against the other (plain Rust, no model).
//! - [`error`]: [`AgentError`] and what it wraps.
//!
//! It does not queue, store or retry runs; the worker does, guided by
//! [`AgentError::is_permanent`].

pub mod agent_type;
mod agents;
pub mod control;
pub mod error;
pub mod job;
pub mod llm;
pub mod resume;
pub mod runner;
pub mod scoring;
pub mod skills;
mod text;
mod years;

pub use agent_type::{AgentType, InputError, UnknownAgentType};
pub use control::{LlmCallReport, RunControl, StepReport};
pub use error::{AgentError, ParseError, StepError};
pub use llm::{ChatMessage, ChatResponse, LlmClient, LlmConfig, LlmConfigError, LlmError, Role};
pub use runner::{AgentRunner, RunContext};
