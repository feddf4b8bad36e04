//! The OpenAI-compatible chat-completions transport: one `POST {base}/chat/completions` per
//! attempt, each in its own CLIENT span carrying `traceparent` out, retried with exponential
//! backoff while the failure is transient.
//!
//! It owns the wire format and the retry policy; the `chat {model}` span and content capture
//! belong to [`super::LlmClient`].

use std::fmt;
use std::time::Duration;

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use jobpilot_telemetry::{AttrValue, SpanGuard, SpanKind, TraceCx, Tracer, names};
use reqwest::Url;
use serde::Deserialize;
use serde_json::json;

use super::{ChatMessage, ChatResponse, LlmConfig, LlmConfigError, LlmError};

/// Wait before the first retry; doubled for each one after.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest wait between two attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured in process; a longer one ends the call with its transient
/// error, so the queue retries the run later instead of holding a worker slot.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);
/// Longest provider error message kept in an [`LlmError`].
const MAX_DETAIL_CHARS: usize = 200;

/// Query parameters whose values are secrets when their name contains one of these.
const SECRET_QUERY_HINTS: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "sig",
    "auth",
    "credential",
    "code",
];

/// An OpenAI-compatible endpoint, ready to send to.
pub(super) struct Endpoint {
    http: reqwest::Client,
    url: Url,
    /// `url` as spans show it: no credentials, secret query values replaced.
    url_for_spans: String,
    server_address: String,
    server_port: u16,
    model: String,
    /// `Bearer …`, marked sensitive so the HTTP stack never prints it.
    authorization: Option<HeaderValue>,
    timeout: Duration,
    max_retries: u32,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url_for_spans)
            .field("model", &self.model)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

/// `url` with credentials and secret query values replaced by `REDACTED`.
fn redact(url: &Url) -> Url {
    let mut shown = url.clone();
    if !shown.username().is_empty() {
        // Only fails for URLs that cannot have credentials, which then have none to hide.
        let _ = shown.set_username("REDACTED");
    }
    if shown.password().is_some() {
        let _ = shown.set_password(Some("REDACTED"));
    }
    if shown.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_lowercase();
                let secret = SECRET_QUERY_HINTS.iter().any(|hint| lower.contains(hint));
                let v = if secret {
                    "REDACTED".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        shown.query_pairs_mut().clear().extend_pairs(pairs);
    }
    shown
}

/// A base URL as it may appear in messages and debug output, credentials hidden.
pub(super) fn display_url(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) => redact(&url).to_string(),
        // Unparseable: only show it when it cannot hold credentials (user info or a query).
        Err(_) if raw.contains(['@', '?', '#']) => {
            "(url hidden: it may hold credentials)".to_owned()
        }
        Err(_) => raw.chars().take(200).collect(),
    }
}

impl Endpoint {
    pub(super) fn new(base_url: &str, config: &LlmConfig) -> Result<Self, LlmConfigError> {
        let invalid = |reason: &str| LlmConfigError::InvalidBaseUrl {
            url: display_url(base_url),
            reason: reason.to_owned(),
        };
        let mut url = Url::parse(base_url.trim()).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        let server_address = url
            .host_str()
            .ok_or_else(|| invalid("it has no host"))?
            .to_owned();
        let server_port = url
            .port_or_known_default()
            .ok_or_else(|| invalid("it has no port"))?;
        let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
        url.set_path(&path);
        url.set_fragment(None);

        if config.model.trim().is_empty() {
            return Err(LlmConfigError::MissingModel);
        }
        if config.timeout.is_zero() {
            return Err(LlmConfigError::ZeroTimeout);
        }
        let authorization = match &config.api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .map_err(|_| LlmConfigError::InvalidApiKey)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .user_agent(concat!("jobpilot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmConfigError::Client {
                reason: error_chain(&e),
            })?;

        Ok(Endpoint {
            http,
            url_for_spans: redact(&url).to_string(),
            url,
            server_address,
            server_port,
            model: config.model.trim().to_owned(),
            authorization,
            timeout: config.timeout,
            max_retries: config.max_retries,
        })
    }

    pub(super) fn model(&self) -> &str {
        &self.model
    }

    /// `server.address` and `server.port`, for the chat span too.
    pub(super) fn server_attributes(&self) -> [(&'static str, AttrValue); 2] {
        [
            (names::SERVER_ADDRESS, self.server_address.clone().into()),
            (names::SERVER_PORT, self.server_port.into()),
        ]
    }

    /// `host:port`, as errors name the server.
    fn server(&self) -> String {
        format!("{}:{}", self.server_address, self.server_port)
    }

    /// Sends the chat, retrying transient failures; each attempt is a `POST` span under
    /// `parent` and counts one in `attempts`.
    pub(super) async fn chat(
        &self,
        tracer: &Tracer,
        parent: &TraceCx,
        messages: &[ChatMessage],
        attempts: &std::sync::atomic::AtomicU32,
    ) -> Result<ChatResponse, LlmError> {
        let body = json!({"model": self.model, "messages": messages}).to_string();
        let mut retries = 0;
        loop {
            attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let failure = match self.attempt(tracer, parent, &body).await {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            let Some(delay) = self.retry_delay(&failure, retries) else {
                return Err(failure.error);
            };
            tracing::warn!(
                error.type = %failure.error.error_type(),
                retry = retries + 1,
                delay_ms = delay.as_millis() as u64,
                "llm request failed; retrying"
            );
            tokio::time::sleep(delay).await;
            retries += 1;
        }
    }

    /// How long to wait before retry number `retries + 1`, or `None` to give up.
    fn retry_delay(&self, failure: &Failure, retries: u32) -> Option<Duration> {
        if !failure.error.is_transient() || retries >= self.max_retries {
            return None;
        }
        let backoff = BACKOFF_BASE
            .checked_mul(2u32.saturating_pow(retries))
            .map_or(BACKOFF_CAP, |d| d.min(BACKOFF_CAP));
        match failure.retry_after {
            Some(asked) if asked > MAX_RETRY_AFTER => None,
            Some(asked) => Some(asked.max(backoff)),
            None => Some(backoff),
        }
    }

    /// One HTTP exchange in its own `POST` span.
    async fn attempt(
        &self,
        tracer: &Tracer,
        parent: &TraceCx,
        body: &str,
    ) -> Result<ChatResponse, Failure> {
        let span = tracer.start(
            parent,
            "POST",
            SpanKind::Client,
            vec![
                (names::HTTP_REQUEST_METHOD, "POST".into()),
                (names::SERVER_ADDRESS, self.server_address.clone().into()),
                (names::SERVER_PORT, self.server_port.into()),
                (names::URL_FULL, self.url_for_spans.clone().into()),
            ],
        );
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        // The provider continues our trace from this attempt's span.
        tracer
            .propagators()
            .inject_outbound_headers(&span.cx(), &mut headers);

        let exchange = async {
            let response = self
                .http
                .post(self.url.clone())
                .headers(headers)
                .body(body.to_owned())
                .send()
                .await?;
            let status = response.status();
            span.set(names::HTTP_RESPONSE_STATUS_CODE, status.as_u16());
            let retry_after = retry_after(response.headers());
            let bytes = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, retry_after, bytes))
        };
        let outcome = span
            .cx()
            .instrument(tokio::time::timeout(self.timeout, exchange))
            .await;

        let result = match outcome {
            Err(_elapsed) => Err(Failure::from(LlmError::Timeout {
                server: self.server(),
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            })),
            Ok(Err(e)) => Err(Failure::from(self.transport_error(e))),
            Ok(Ok((status, retry_after, bytes))) if !status.is_success() => Err(Failure {
                error: LlmError::Status {
                    server: self.server(),
                    status: status.as_u16(),
                    detail: error_detail(&bytes)
                        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
                },
                retry_after,
            }),
            Ok(Ok((_, _, bytes))) => self.parse(&bytes).map_err(Failure::from),
        };
        record_outcome(&span, result.as_ref().err().map(|f| &f.error));
        span.end();
        result
    }

    /// Classifies a transport failure; the URL is left out of the message on purpose.
    fn transport_error(&self, e: reqwest::Error) -> LlmError {
        let server = self.server();
        if e.is_timeout() {
            LlmError::Timeout {
                server,
                timeout_ms: u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
            }
        } else if e.is_connect() {
            LlmError::Connect {
                server,
                reason: error_chain(&e),
            }
        } else {
            LlmError::Network {
                server,
                reason: error_chain(&e),
            }
        }
    }

    /// Reads a chat completion.
    fn parse(&self, bytes: &[u8]) -> Result<ChatResponse, LlmError> {
        let bad = |reason: String| LlmError::BadResponse {
            server: self.server(),
            reason,
        };
        let wire: WireResponse = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a chat completion ({e})")))?;
        let choice = wire
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| bad("it has no choices".to_owned()))?;
        let content = choice
            .message
            .content
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| bad("the first choice has no text".to_owned()))?;
        Ok(ChatResponse {
            id: wire.id.unwrap_or_default(),
            model: wire.model.unwrap_or_else(|| self.model.clone()),
            content,
            finish_reason: choice.finish_reason,
            input_tokens: wire.usage.as_ref().and_then(|u| u.prompt_tokens),
            output_tokens: wire.usage.as_ref().and_then(|u| u.completion_tokens),
        })
    }
}

/// Marks the `POST` span failed the way the HTTP semantic conventions say: `error.type` is the
/// status code for an error status, a short class otherwise. A well-formed HTTP exchange with
/// an unusable body is an HTTP success; the chat span reports that failure.
fn record_outcome(span: &SpanGuard, error: Option<&LlmError>) {
    match error {
        None | Some(LlmError::BadResponse { .. }) => {}
        Some(e @ LlmError::Status { status, .. }) => span.fail(&status.to_string(), &e.to_string()),
        Some(e) => span.fail(&e.error_type(), &e.to_string()),
    }
}

/// A failed attempt, with what the server asked about retrying.
struct Failure {
    error: LlmError,
    retry_after: Option<Duration>,
}

impl From<LlmError> for Failure {
    fn from(error: LlmError) -> Self {
        Failure {
            error,
            retry_after: None,
        }
    }
}

/// `Retry-After` in seconds (the HTTP-date form is rare from APIs and is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// The provider's error message from an OpenAI-style error body, shortened.
fn error_detail(bytes: &[u8]) -> Option<String> {
    let body: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let message = body
        .pointer("/error/message")
        .or_else(|| body.get("message"))?
        .as_str()?;
    Some(message.chars().take(MAX_DETAIL_CHARS).collect())
}

/// An error and its sources in one line, e.g. `error sending request: connection refused`.
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        // hyper repeats its inner error in its own message; keep each piece once.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[derive(Deserialize)]
struct WireResponse {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    model: Option<String>,
    choices: Vec<WireChoice>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(base: &str) -> Endpoint {
        Endpoint::new(base, &LlmConfig::openai_compatible(base, "m")).unwrap()
    }

    #[test]
    fn requests_go_to_chat_completions_under_the_base() {
        assert_eq!(
            endpoint("http://llm:8080/v1").url.as_str(),
            "http://llm:8080/v1/chat/completions"
        );
        assert_eq!(
            endpoint("https://api.example.com/v1/").url.as_str(),
            "https://api.example.com/v1/chat/completions"
        );
        let e = endpoint("https://api.example.com/v1");
        assert_eq!(
            (e.server_address.as_str(), e.server_port),
            ("api.example.com", 443)
        );
    }

    #[test]
    fn credentials_and_secret_query_values_never_reach_spans() {
        let e = endpoint("http://bob:hunter2@llm:8080/openai?api-version=2024-06&api_key=sk-1");
        assert_eq!(
            e.url_for_spans,
            "http://REDACTED:REDACTED@llm:8080/openai/chat/completions?api-version=2024-06&api_key=REDACTED"
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_honours_a_short_retry_after() {
        let e = Endpoint::new(
            "http://llm/v1",
            &LlmConfig::openai_compatible("http://llm/v1", "m").with_max_retries(10),
        )
        .unwrap();
        let failure = |retry_after| Failure {
            error: LlmError::Status {
                server: "llm:80".into(),
                status: 503,
                detail: String::new(),
            },
            retry_after,
        };
        assert_eq!(
            e.retry_delay(&failure(None), 0),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            e.retry_delay(&failure(None), 2),
            Some(Duration::from_millis(800))
        );
        assert_eq!(e.retry_delay(&failure(None), 9), Some(BACKOFF_CAP));
        assert_eq!(
            e.retry_delay(&failure(Some(Duration::from_secs(3))), 0),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            e.retry_delay(&failure(Some(Duration::from_secs(60))), 0),
            None
        );
        assert_eq!(e.retry_delay(&failure(None), 10), None, "retries used up");
    }

    #[test]
    fn permanent_failures_are_not_retried() {
        let e = endpoint("http://llm/v1");
        let failure = Failure::from(LlmError::Status {
            server: "llm:80".into(),
            status: 400,
            detail: String::new(),
        });
        assert_eq!(e.retry_delay(&failure, 0), None);
    }

    #[test]
    fn the_provider_error_message_is_kept_short() {
        let long = "x".repeat(500);
        let body = format!(r#"{{"error": {{"message": "{long}"}}}}"#);
        assert_eq!(
            error_detail(body.as_bytes()).unwrap().len(),
            MAX_DETAIL_CHARS
        );
        assert_eq!(error_detail(b"<html>"), None);
    }

    #[test]
    fn a_completion_without_choices_is_malformed() {
        let e = endpoint("http://llm/v1");
        let err = e.parse(br#"{"id": "x", "choices": []}"#).unwrap_err();
        assert_eq!(err.error_type(), "bad_response");
        let err = e.parse(b"not json").unwrap_err();
        assert!(!err.is_transient());
    }
}
