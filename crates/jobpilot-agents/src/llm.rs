//! The LLM client the prose steps call: an OpenAI-compatible chat-completions client with
//! timeouts and retries, or a built-in offline provider when no endpoint is configured.
//!
//! Every call is a CLIENT span `chat {model}` with the GenAI attributes (provider, models,
//! response id, token usage, finish reasons); each HTTP attempt under it is a CLIENT span `POST`
//! whose context goes out in `traceparent`. Prompts and completions are recorded only when
//! content capture is on; the API key is never recorded or logged. This module does not decide
//! what to ask: the agents write the prompts.

mod offline;
mod openai;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jobpilot_telemetry::metrics::LlmMetrics;
use jobpilot_telemetry::{AttrValue, Metrics, SpanKind, TraceCx, Tracer, names};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Default time one HTTP attempt may take, from connecting to the last byte of the answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Model name the offline provider reports.
pub const OFFLINE_MODEL: &str = "offline";

/// `gen_ai.provider.name` of an OpenAI-compatible endpoint.
const PROVIDER_OPENAI: &str = "openai";
/// `gen_ai.provider.name` of the offline provider.
const PROVIDER_OFFLINE: &str = "jobpilot.offline";

/// Who wrote a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The request.
    User,
    /// The model's own words.
    Assistant,
}

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

impl ChatMessage {
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::System,
            content: content.into(),
        }
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: Role::User,
            content: content.into(),
        }
    }
}

/// The model's answer to a chat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatResponse {
    /// The provider's id for the completion.
    pub id: String,
    /// The model that answered (may differ from the one requested, e.g. a dated version).
    pub model: String,
    /// The text of the first choice.
    pub content: String,
    /// Why the model stopped (`stop`, `length`, ...), when the provider says.
    pub finish_reason: Option<String>,
    /// Tokens in the prompt, when the provider says (estimated by the offline provider).
    pub input_tokens: Option<u64>,
    /// Tokens in the completion, when the provider says (estimated by the offline provider).
    pub output_tokens: Option<u64>,
}

/// How to reach the LLM. Build it with [`LlmConfig::offline`] or
/// [`LlmConfig::openai_compatible`] and the `with_*` setters.
#[derive(Clone)]
pub struct LlmConfig {
    /// Base URL of an OpenAI-compatible API, e.g. `http://host:port/v1`; requests go to
    /// `{base_url}/chat/completions`. `None` selects the offline provider.
    pub base_url: Option<String>,
    /// The model to request; required with a base URL, ignored offline.
    pub model: String,
    /// Sent as `Authorization: Bearer …`; never recorded in spans or logs.
    pub api_key: Option<String>,
    /// Time one HTTP attempt may take, from connecting to the last byte (default 30 s).
    pub timeout: Duration,
    /// Retries after a transient failure (timeout, connection error, 429, 5xx); default 2.
    pub max_retries: u32,
    /// Record prompts and completions on the chat span (`gen_ai.input.messages`,
    /// `gen_ai.output.messages`); off by default because they hold resumes.
    pub capture_content: bool,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig::offline()
    }
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand so that printing a config (e.g. at startup) never shows the key.
        f.debug_struct("LlmConfig")
            .field(
                "base_url",
                &self.base_url.as_deref().map(openai::display_url),
            )
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "REDACTED"))
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("capture_content", &self.capture_content)
            .finish()
    }
}

impl LlmConfig {
    /// The offline provider: deterministic text, no network. The model is left empty: the
    /// offline provider ignores it, and an endpoint set later without a model is refused by
    /// [`LlmClient::new`] rather than sent a name it does not serve.
    pub fn offline() -> Self {
        LlmConfig {
            base_url: None,
            model: String::new(),
            api_key: None,
            timeout: DEFAULT_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
            capture_content: false,
        }
    }

    /// An OpenAI-compatible endpoint at `base_url` (e.g. `http://host:port/v1`) serving
    /// `model`.
    pub fn openai_compatible(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        LlmConfig {
            base_url: Some(base_url.into()),
            model: model.into(),
            ..LlmConfig::offline()
        }
    }

    /// Sets the API key sent as a bearer token.
    pub fn with_api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// Sets the time one HTTP attempt may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets how many times a transient failure is retried.
    pub fn with_max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// Turns recording of prompts and completions on or off.
    pub fn with_capture_content(mut self, capture_content: bool) -> Self {
        self.capture_content = capture_content;
        self
    }
}

/// A configuration the client cannot work with.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlmConfigError {
    /// The base URL does not parse or is not `http(s)://host…`.
    #[error("llm base url `{url}` is invalid: {reason}")]
    InvalidBaseUrl {
        /// The URL, with any credentials in it replaced.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A base URL is set but no model.
    #[error("llm model is required when a base url is set")]
    MissingModel,
    /// The timeout is zero, so every request would fail.
    #[error("llm timeout must be greater than zero")]
    ZeroTimeout,
    /// The API key cannot be sent in an HTTP header (the key itself is not shown).
    #[error("llm api key contains characters not allowed in an http header")]
    InvalidApiKey,
    /// The HTTP client could not be built (e.g. the TLS backend failed to start).
    #[error("llm http client could not be built: {reason}")]
    Client {
        /// Why.
        reason: String,
    },
}

/// Why an LLM call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// No complete answer within the timeout. Transient.
    #[error("llm request to {server} timed out after {timeout_ms} ms")]
    Timeout {
        /// `host:port` of the endpoint.
        server: String,
        /// The timeout that expired.
        timeout_ms: u64,
    },
    /// The connection could not be made. Transient.
    #[error("could not connect to llm server {server}: {reason}")]
    Connect {
        /// `host:port` of the endpoint.
        server: String,
        /// Why, as the network stack put it.
        reason: String,
    },
    /// The connection failed after it was made (reset, closed early). Transient.
    #[error("llm request to {server} failed: {reason}")]
    Network {
        /// `host:port` of the endpoint.
        server: String,
        /// Why, as the network stack put it.
        reason: String,
    },
    /// The server answered with an error status. Transient for 429 and 5xx.
    #[error("llm server {server} answered http {status}: {detail}")]
    Status {
        /// `host:port` of the endpoint.
        server: String,
        /// The HTTP status code.
        status: u16,
        /// The provider's error message (shortened), or the status reason.
        detail: String,
    },
    /// The answer was not a chat completion this client understands. Permanent.
    #[error("llm response from {server} is malformed: {reason}")]
    BadResponse {
        /// `host:port` of the endpoint.
        server: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl LlmError {
    /// Whether the same request may succeed if tried again later.
    pub fn is_transient(&self) -> bool {
        match self {
            LlmError::Timeout { .. } | LlmError::Connect { .. } | LlmError::Network { .. } => true,
            LlmError::Status { status, .. } => *status == 429 || (500..=599).contains(status),
            LlmError::BadResponse { .. } => false,
        }
    }

    /// A short, stable class of the error: `timeout`, `connect`, `network`, `http_503`,
    /// `bad_response`.
    pub fn error_type(&self) -> Cow<'static, str> {
        match self {
            LlmError::Timeout { .. } => Cow::Borrowed("timeout"),
            LlmError::Connect { .. } => Cow::Borrowed("connect"),
            LlmError::Network { .. } => Cow::Borrowed("network"),
            LlmError::Status { status, .. } => Cow::Owned(format!("http_{status}")),
            LlmError::BadResponse { .. } => Cow::Borrowed("bad_response"),
        }
    }
}

/// Where chats go.
#[derive(Clone, Debug)]
enum Backend {
    Offline,
    OpenAi(Arc<openai::Endpoint>),
}

/// A client for chat completions. Cheap to clone.
#[derive(Clone, Debug)]
pub struct LlmClient {
    tracer: Tracer,
    capture_content: bool,
    backend: Backend,
    metrics: LlmMetrics,
}

impl LlmClient {
    /// A client for `config` whose spans go to `tracer`. Offline when `config.base_url` is
    /// `None`.
    ///
    /// # Errors
    /// [`LlmConfigError`] when the base URL, model, timeout or API key is unusable, or the
    /// HTTP client cannot be built.
    pub fn new(config: LlmConfig, tracer: Tracer) -> Result<Self, LlmConfigError> {
        let backend = match &config.base_url {
            None => Backend::Offline,
            Some(base_url) => Backend::OpenAi(Arc::new(openai::Endpoint::new(base_url, &config)?)),
        };
        Ok(LlmClient {
            tracer,
            capture_content: config.capture_content,
            backend,
            metrics: LlmMetrics::default(),
        })
    }

    /// Records each chat on `metrics` (`gen_ai.client.operation.duration`,
    /// `gen_ai.client.token.usage`). The offline provider's token counts are estimates and
    /// marked so.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        let (provider, model) = self.provider_and_model();
        self.metrics = metrics.llm(provider, model, self.is_offline());
        self
    }

    fn provider_and_model(&self) -> (&'static str, &str) {
        match &self.backend {
            Backend::Offline => (PROVIDER_OFFLINE, OFFLINE_MODEL),
            Backend::OpenAi(endpoint) => (PROVIDER_OPENAI, endpoint.model()),
        }
    }

    /// A client that uses the offline provider.
    pub fn offline(tracer: Tracer) -> Self {
        LlmClient {
            tracer,
            capture_content: false,
            backend: Backend::Offline,
            metrics: LlmMetrics::default(),
        }
    }

    /// Whether this client answers without any network.
    pub fn is_offline(&self) -> bool {
        matches!(self.backend, Backend::Offline)
    }

    /// The model requests ask for.
    pub fn model(&self) -> &str {
        match &self.backend {
            Backend::Offline => OFFLINE_MODEL,
            Backend::OpenAi(endpoint) => endpoint.model(),
        }
    }

    /// Sends `messages` and returns the model's answer, in a `chat {model}` span under
    /// `parent`. Transient failures are retried with exponential backoff, each attempt in its
    /// own `POST` span.
    ///
    /// # Errors
    /// The last attempt's [`LlmError`] once retries are used up, or at once for a permanent
    /// failure (a 4xx other than 429, a malformed answer).
    pub async fn chat(
        &self,
        parent: &TraceCx,
        messages: &[ChatMessage],
    ) -> Result<ChatResponse, LlmError> {
        self.chat_counted(parent, messages, &std::sync::atomic::AtomicU32::new(0))
            .await
    }

    /// [`LlmClient::chat`], counting its HTTP requests in `attempts` (retries included; none
    /// for the offline provider) as they are made, so a caller that stops waiting still
    /// knows how many went out.
    ///
    /// # Errors
    /// As [`LlmClient::chat`].
    pub async fn chat_counted(
        &self,
        parent: &TraceCx,
        messages: &[ChatMessage],
        attempts: &std::sync::atomic::AtomicU32,
    ) -> Result<ChatResponse, LlmError> {
        let (provider, model) = self.provider_and_model();
        let started = std::time::Instant::now();
        let mut attrs: Vec<(&'static str, AttrValue)> = vec![
            (names::GEN_AI_OPERATION_NAME, names::OP_CHAT.into()),
            (names::GEN_AI_PROVIDER_NAME, provider.into()),
            (names::GEN_AI_REQUEST_MODEL, model.to_owned().into()),
        ];
        if let Backend::OpenAi(endpoint) = &self.backend {
            attrs.extend(endpoint.server_attributes());
        }
        let span = self.tracer.start(
            parent,
            format!("{} {model}", names::OP_CHAT),
            SpanKind::Client,
            attrs,
        );
        if self.capture_content {
            span.set(names::GEN_AI_INPUT_MESSAGES, input_messages_json(messages));
        }

        let result = match &self.backend {
            Backend::Offline => Ok(offline::reply(messages)),
            Backend::OpenAi(endpoint) => {
                let cx = span.cx();
                cx.instrument(endpoint.chat(&self.tracer, &cx, messages, attempts))
                    .await
            }
        };

        match &result {
            Ok(response) => {
                self.metrics.operation(started.elapsed(), None);
                self.metrics
                    .tokens(response.input_tokens, response.output_tokens);
                span.set(names::GEN_AI_RESPONSE_MODEL, response.model.clone());
                span.set(names::GEN_AI_RESPONSE_ID, response.id.clone());
                if let Some(tokens) = response.input_tokens {
                    span.set(names::GEN_AI_USAGE_INPUT_TOKENS, tokens);
                }
                if let Some(tokens) = response.output_tokens {
                    span.set(names::GEN_AI_USAGE_OUTPUT_TOKENS, tokens);
                }
                if let Some(reason) = &response.finish_reason {
                    span.set(names::GEN_AI_RESPONSE_FINISH_REASONS, vec![reason.clone()]);
                }
                if self.capture_content {
                    span.set(
                        names::GEN_AI_OUTPUT_MESSAGES,
                        output_messages_json(response),
                    );
                }
            }
            Err(error) => {
                self.metrics
                    .operation(started.elapsed(), Some(&error.error_type()));
                span.fail(&error.error_type(), &error.to_string());
            }
        }
        span.end();
        result
    }
}

/// Prompt messages in the GenAI semantic-convention shape (role and text parts).
fn input_messages_json(messages: &[ChatMessage]) -> String {
    let list: Vec<_> = messages
        .iter()
        .map(|m| json!({"role": m.role, "parts": [{"type": "text", "content": m.content}]}))
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// The completion in the GenAI semantic-convention shape.
fn output_messages_json(response: &ChatResponse) -> String {
    json!([{
        "role": Role::Assistant,
        "parts": [{"type": "text", "content": response.content}],
        "finish_reason": response.finish_reason,
    }])
    .to_string()
}

/// Opens the draft block of a prompt; see [`draft_block`].
const DRAFT_OPEN: &str = "<<<DRAFT";
/// Closes the draft block of a prompt.
const DRAFT_CLOSE: &str = "DRAFT>>>";

/// A plain first draft to put in a prompt, for the model to improve.
///
/// Agents compute a factual draft themselves and ask the model to rewrite it, which keeps the
/// model to the facts; the offline provider answers with the draft as it is, so a run with no
/// network still produces what the agent meant to say.
pub(crate) fn draft_block(draft: &str) -> String {
    format!("{DRAFT_OPEN}\n{}\n{DRAFT_CLOSE}", draft.trim())
}

/// The draft in `prompt`, if it holds a draft block.
fn find_draft(prompt: &str) -> Option<&str> {
    let start = prompt.rfind(DRAFT_OPEN)? + DRAFT_OPEN.len();
    let len = prompt[start..].find(DRAFT_CLOSE)?;
    Some(prompt[start..start + len].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_draft_block_round_trips() {
        let prompt = format!(
            "Rewrite this.\n\n{}\n",
            draft_block("  Dear team,\nHello.  ")
        );
        assert_eq!(find_draft(&prompt), Some("Dear team,\nHello."));
        assert_eq!(find_draft("no draft here"), None);
    }

    #[test]
    fn the_config_debug_output_hides_the_api_key() {
        let config = LlmConfig::openai_compatible("http://user:pw@llm:8080/v1", "m")
            .with_api_key("sk-very-secret");
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk-very-secret"), "{shown}");
        assert!(!shown.contains("pw"), "{shown}");
        assert!(shown.contains("REDACTED"), "{shown}");
    }

    #[test]
    fn transient_errors_are_timeouts_connections_429_and_5xx() {
        let status = |status| LlmError::Status {
            server: "llm:80".into(),
            status,
            detail: String::new(),
        };
        assert!(status(429).is_transient());
        assert!(status(503).is_transient());
        assert!(!status(400).is_transient());
        assert!(!status(401).is_transient());
        assert_eq!(status(503).error_type(), "http_503");
        let timeout = LlmError::Timeout {
            server: "llm:80".into(),
            timeout_ms: 300,
        };
        assert!(timeout.is_transient());
        assert_eq!(timeout.error_type(), "timeout");
        let bad = LlmError::BadResponse {
            server: "llm:80".into(),
            reason: "no choices".into(),
        };
        assert!(!bad.is_transient());
        assert_eq!(bad.error_type(), "bad_response");
    }

    #[test]
    fn a_default_config_given_only_a_base_url_asks_for_a_model() {
        let config = LlmConfig {
            base_url: Some("http://llm:8080/v1".into()),
            ..LlmConfig::default()
        };
        let err = LlmClient::new(config, Tracer::noop()).unwrap_err();
        assert_eq!(err, LlmConfigError::MissingModel);
    }

    #[test]
    fn a_base_url_without_a_model_is_rejected() {
        let err = LlmClient::new(
            LlmConfig::openai_compatible("http://llm:8080/v1", " "),
            Tracer::noop(),
        )
        .unwrap_err();
        assert_eq!(err, LlmConfigError::MissingModel);
    }

    #[test]
    fn a_base_url_that_is_not_http_is_rejected_by_name() {
        let err = LlmClient::new(
            LlmConfig::openai_compatible("ftp://llm/v1", "m"),
            Tracer::noop(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`ftp://llm/v1`"), "{err}");
        let err = LlmClient::new(
            LlmConfig::openai_compatible("not a url", "m"),
            Tracer::noop(),
        )
        .unwrap_err();
        assert!(
            matches!(err, LlmConfigError::InvalidBaseUrl { .. }),
            "{err}"
        );
    }

    #[test]
    fn no_base_url_means_offline() {
        let client = LlmClient::new(LlmConfig::default(), Tracer::noop()).unwrap();
        assert!(client.is_offline());
        assert_eq!(client.model(), "offline");
    }
}
