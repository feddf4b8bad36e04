//! The JSON bodies the handlers send and read, as types.
//!
//! They are types rather than `json!` literals so that the OpenAPI document
//! ([`crate::openapi`]) is derived from exactly what goes over the wire: a field added here is
//! in `/openapi.json` at the next build. Error bodies live with [`crate::error::ApiError`].

use jobpilot_agents::AgentType;
use jobpilot_queue::{DeadLetter, RunStatus};
use jobpilot_telemetry::ExportStats;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// Always `ok` while the process answers.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    /// The process is alive.
    Ok,
}

/// The answer of `GET /health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: Liveness,
}

/// Whether the broker and the run store answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    /// Both answer.
    Ready,
    /// At least one does not; `reasons` says which.
    Unavailable,
    /// The store found damaged data: this will not pass by itself.
    Corrupt,
}

/// The answer of `GET /ready`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({"status": "unavailable", "reasons": ["the broker is unavailable; try again shortly"]}))]
pub struct Readiness {
    /// `ready` (200), `unavailable` or `corrupt` (503).
    pub status: ReadyStatus,
    /// What is unreachable; absent when ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// One agent type of the catalogue.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentInfo {
    /// The name used in `POST /api/v1/agents/{agent_type}/runs`.
    pub agent_type: AgentType,
    /// What the agent does.
    #[schema(
        example = "Checks which sections a resume has and which are missing, and suggests improvements."
    )]
    pub description: &'static str,
    /// The names of its steps, in the order they run (one span each).
    #[schema(example = json!(["parse_resume", "check_sections", "suggest"]))]
    pub steps: Vec<&'static str>,
    /// The JSON Schema (draft 2020-12) of the `input` object of a run request.
    #[schema(value_type = Object)]
    pub input_schema: Value,
}

impl AgentInfo {
    /// The catalogue entry of `agent`.
    pub fn of(agent: AgentType) -> Self {
        AgentInfo {
            agent_type: agent,
            description: agent.description(),
            steps: agent.steps().to_vec(),
            input_schema: agent.input_schema(),
        }
    }
}

/// The answer of `GET /api/v1/agents`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AgentList {
    /// Every agent type, in a fixed order.
    pub agents: Vec<AgentInfo>,
}

/// The body of `POST /api/v1/agents/{agent_type}/runs`. In the document, each agent type has
/// an operation of its own whose `input` is that type's exact schema.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunRequest {
    /// The agent's input; see `input_schema` in `GET /api/v1/agents`.
    #[schema(value_type = Object)]
    pub input: Value,
}

/// The answer of an accepted run request (202, `Location: /api/v1/runs/{run_id}`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunAccepted {
    /// The new run's id.
    #[schema(example = "4f0c8f6e2b1d4c7a9e3b5d6f7a8b9c0d")]
    pub run_id: String,
    /// Always `queued`.
    pub status: RunStatus,
    /// The trace of the request, which the run's spans continue.
    #[schema(example = "4bf92f3577b34da6a3ce929d0e0e4736")]
    pub trace_id: Option<String>,
}

/// The answer of `GET /api/v1/admin/queue`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueueReport {
    /// The queue's name.
    #[schema(example = "jobpilot:runs")]
    pub queue: String,
    /// Tasks waiting for their first delivery.
    pub depth: u64,
    /// Tasks delivered and not yet acknowledged or dead-lettered.
    pub in_flight: u64,
    /// Tasks on the dead-letter list.
    pub dead_lettered: u64,
    /// The most recent dead letters (at most 100).
    pub dead_letters: Vec<DeadLetter>,
}

/// The answer of `GET /api/v1/admin/telemetry`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TelemetryReport {
    /// `otlp-grpc`, `otlp-http`, `console` or `none`.
    #[schema(example = "otlp-grpc")]
    pub exporter: &'static str,
    /// The export pipeline's counters.
    pub stats: ExportStats,
}

/// The answer of `GET /api/v1/admin/stats`: the figures of the window and the queue now.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AdminStats {
    /// Tasks waiting for their first delivery, now.
    pub depth: u64,
    /// Tasks delivered and not yet acknowledged, now.
    pub in_flight: u64,
    /// Dead letters kept, now.
    pub dead_lettered: u64,
    /// The figures of the window.
    #[serde(flatten)]
    pub stats: jobpilot_queue::Stats,
}
