//! Span names, attribute keys and scope names, in one place and spelled as in the spec.
//!
//! Everything that names a span or an attribute uses these constants, so a rename is one edit and
//! a typo is a compile error. The `gen_ai.*` keys are ours on purpose: the semantic-conventions
//! crate marks them deprecated.

/// Service name of the API process (and of `serve`, which runs API and worker in one process).
pub const SERVICE_API: &str = "jobpilot-api";
/// Service name of a stand-alone worker process.
pub const SERVICE_WORKER: &str = "jobpilot-worker";

/// Instrumentation scope of the agent runtime.
pub const SCOPE_AGENTS: &str = "jobpilot.agents";
/// Instrumentation scope of the HTTP server.
pub const SCOPE_HTTP: &str = "jobpilot.http";
/// Instrumentation scope of the queue (producer and consumer spans).
pub const SCOPE_QUEUE: &str = "jobpilot.queue";
/// Instrumentation scope of the LLM client.
pub const SCOPE_LLM: &str = "jobpilot.llm";
/// Instrumentation scope of telemetry's own figures (spans exported, dropped).
pub const SCOPE_TELEMETRY: &str = "jobpilot.telemetry";

// --- jobpilot's own attributes -------------------------------------------------------------

/// The authenticated user (the JWT subject, never an email).
pub const USER_ID: &str = "user_id";
/// The same user under the semantic-convention name, which backends such as Langfuse read;
/// set by [`crate::Tracer`] on every span that gets [`USER_ID`], with the same value.
pub const USER_DOT_ID: &str = "user.id";
/// The agent type of a run (`job_match`, ...).
pub const AGENT_TYPE: &str = "agent_type";
/// The step of an agent (`parse_resume`, ...).
pub const STEP_NAME: &str = "step_name";
/// The run this span belongs to.
pub const RUN_ID: &str = "run_id";
/// Whether the operation succeeded.
pub const SUCCESS: &str = "success";
/// Wall-clock duration of the operation in milliseconds.
pub const DURATION_MS: &str = "duration_ms";

// --- general semantic conventions ----------------------------------------------------------

/// Class of error (`error.type`).
pub const ERROR_TYPE: &str = "error.type";
/// Name of the exception event.
pub const EXCEPTION_EVENT: &str = "exception";
/// Type of the exception (on the exception event).
pub const EXCEPTION_TYPE: &str = "exception.type";
/// Message of the exception (on the exception event).
pub const EXCEPTION_MESSAGE: &str = "exception.message";

// --- HTTP semantic conventions (stable) ----------------------------------------------------

/// `http.request.method`
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
/// `http.route`
pub const HTTP_ROUTE: &str = "http.route";
/// `http.response.status_code`
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// `url.path`
pub const URL_PATH: &str = "url.path";
/// `url.query` (redacted)
pub const URL_QUERY: &str = "url.query";
/// `url.scheme`
pub const URL_SCHEME: &str = "url.scheme";
/// `url.full` (client spans; redacted)
pub const URL_FULL: &str = "url.full";
/// `client.address`
pub const CLIENT_ADDRESS: &str = "client.address";
/// `user_agent.original`
pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
/// `server.address`
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port`
pub const SERVER_PORT: &str = "server.port";
/// `network.protocol.version`
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";

// --- messaging semantic conventions --------------------------------------------------------

/// `messaging.system`
pub const MESSAGING_SYSTEM: &str = "messaging.system";
/// `messaging.operation.type` (`send`, `process`)
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
/// `messaging.operation.name`
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.destination.name`
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
/// `messaging.message.id` (the task id)
pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
/// `messaging.consumer.group.name`
pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
/// Attempt number of a delivery, 1 for the first.
pub const MESSAGING_DELIVERY_ATTEMPT: &str = "messaging.delivery.attempt";

// --- GenAI semantic conventions ------------------------------------------------------------

/// `gen_ai.operation.name` (`invoke_agent`, `chat`)
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.agent.name`
pub const GEN_AI_AGENT_NAME: &str = "gen_ai.agent.name";
/// `gen_ai.provider.name`
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
/// `gen_ai.request.model`
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.response.model`
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
/// `gen_ai.response.id`
pub const GEN_AI_RESPONSE_ID: &str = "gen_ai.response.id";
/// `gen_ai.response.finish_reasons`
pub const GEN_AI_RESPONSE_FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// `gen_ai.usage.input_tokens`
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens`
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// `gen_ai.token.type` (`input`, `output`; on `gen_ai.client.token.usage`)
pub const GEN_AI_TOKEN_TYPE: &str = "gen_ai.token.type";
/// `gen_ai.input.messages` (only with content capture on)
pub const GEN_AI_INPUT_MESSAGES: &str = "gen_ai.input.messages";
/// `gen_ai.output.messages` (only with content capture on)
pub const GEN_AI_OUTPUT_MESSAGES: &str = "gen_ai.output.messages";

/// Value of `gen_ai.operation.name` on agent spans.
pub const OP_INVOKE_AGENT: &str = "invoke_agent";
/// Value of `gen_ai.operation.name` on LLM spans.
pub const OP_CHAT: &str = "chat";

// --- metric names ------------------------------------------------------------------------
// Semantic-convention names where the conventions have one; `jobpilot.*` where they do not.

/// `http.server.request.duration` (s)
pub const METRIC_HTTP_SERVER_DURATION: &str = "http.server.request.duration";
/// `http.server.active_requests`
pub const METRIC_HTTP_SERVER_ACTIVE: &str = "http.server.active_requests";
/// `messaging.process.duration` (s), one per delivery (attempt)
pub const METRIC_MESSAGING_PROCESS_DURATION: &str = "messaging.process.duration";
/// `messaging.client.sent.messages`
pub const METRIC_MESSAGING_SENT: &str = "messaging.client.sent.messages";
/// `messaging.client.consumed.messages`
pub const METRIC_MESSAGING_CONSUMED: &str = "messaging.client.consumed.messages";
/// Enqueue to the start of the first attempt (s). The conventions have no name for it.
pub const METRIC_QUEUE_WAIT: &str = "jobpilot.queue.wait";
/// Tasks waiting for their first delivery (gauge).
pub const METRIC_QUEUE_DEPTH: &str = "jobpilot.queue.depth";
/// Tasks delivered and not yet acknowledged (gauge).
pub const METRIC_QUEUE_IN_FLIGHT: &str = "jobpilot.queue.in_flight";
/// Tasks on the dead-letter list (gauge).
pub const METRIC_QUEUE_DEAD_LETTERED: &str = "jobpilot.queue.dead_lettered";
/// One attempt of a run (s), by agent type and outcome.
pub const METRIC_RUN_DURATION: &str = "jobpilot.run.duration";
/// One agent step (s), by agent type, step and success.
pub const METRIC_STEP_DURATION: &str = "jobpilot.step.duration";
/// Runs that reached a final outcome, by agent type and outcome.
pub const METRIC_RUNS_FINISHED: &str = "jobpilot.runs.finished";
/// Attempts scheduled again after a transient failure, by agent type.
pub const METRIC_RUN_RETRIES: &str = "jobpilot.run.retries";
/// `gen_ai.client.operation.duration` (s)
pub const METRIC_GEN_AI_DURATION: &str = "gen_ai.client.operation.duration";
/// `gen_ai.client.token.usage`
pub const METRIC_GEN_AI_TOKENS: &str = "gen_ai.client.token.usage";
/// Spans accepted by the trace backend (observable counter).
pub const METRIC_SPANS_EXPORTED: &str = "jobpilot.telemetry.spans.exported";
/// Spans lost by the export pipeline (observable counter).
pub const METRIC_SPANS_DROPPED: &str = "jobpilot.telemetry.spans.dropped";
/// Span export requests that failed (observable counter).
pub const METRIC_EXPORTS_FAILED: &str = "jobpilot.telemetry.exports.failed";
/// How a run attempt ended (`succeeded`, `failed`, `retried`, `dead_lettered`, `cancelled`).
pub const METRIC_OUTCOME: &str = "outcome";
/// Whether token counts are estimates rather than the provider's billed usage.
pub const METRIC_TOKENS_ESTIMATED: &str = "jobpilot.tokens.estimated";

/// Response header that carries the trace context back to the client.
pub const TRACEPARENT_HEADER: &str = "traceparent";
