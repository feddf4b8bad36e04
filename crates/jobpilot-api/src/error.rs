//! The one error type of the HTTP edge: every failure becomes a JSON body
//! `{"error": {"code", "message", "field"?}, "trace_id"}` with the right status.
//!
//! Messages are written for the client and never carry internal error text; the server span
//! middleware fills in `trace_id`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Longest piece of client input quoted back in an error message, in characters.
pub const MAX_ECHOED_CHARS: usize = 64;

/// `input` as it may be quoted in an error: at most [`MAX_ECHOED_CHARS`] characters, with `…`
/// when cut.
pub fn clip(input: &str) -> String {
    if input.chars().count() <= MAX_ECHOED_CHARS {
        input.to_owned()
    } else {
        let mut clipped: String = input.chars().take(MAX_ECHOED_CHARS).collect();
        clipped.push('…');
        clipped
    }
}

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `invalid_input`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The input field at fault, for 422.
    pub field: Option<String>,
    /// Seconds after which a retry may succeed (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

/// The error as rendered, kept as a response extension so the trace middleware can add the
/// trace id.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = Error, description = "The body of every error answer.")]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
    /// Trace of the request, to quote to an operator.
    #[schema(example = "4bf92f3577b34da6a3ce929d0e0e4736")]
    pub trace_id: Option<String>,
}

/// The `error` member of an error body.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable code.
    #[schema(example = "invalid_input")]
    pub code: &'static str,
    /// Message.
    #[schema(example = "input.resume: is required")]
    pub message: String,
    /// Field at fault.
    #[schema(example = "input.resume")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 401: missing or invalid credentials.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 422 naming the field (clipped to [`MAX_ECHOED_CHARS`]).
    pub fn invalid_input(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        // The field name can come from the client (an unknown key): quote it clipped.
        let field = clip(&field.into());
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_input",
            message: format!("{field}: {reason}"),
            field: Some(field),
            retry_after: None,
        }
    }

    /// 400: the body is not readable JSON.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 503: a dependency (broker, store) is unreachable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 with a generic message; the detail goes to the span, not to the client.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; quote the trace_id to an operator",
        )
    }

    /// 429: a quota of the caller is used up; retry after `retry_after_secs`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", message)
        }
    }

    /// 503 because the service is saturated (not broken); retry after `retry_after_secs`.
    pub fn overloaded(message: impl Into<String>, retry_after_secs: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after_secs.max(1)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", message)
        }
    }

    /// Any status with a code and message.
    pub fn with_status(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(status, code, message)
    }

    /// The body this error renders to.
    pub fn body(&self, trace_id: Option<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.clone(),
                field: self.field.clone(),
            },
            trace_id,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body(None))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// Gives every error response the JSON shape, whatever produced it: axum's extractor
/// rejections (a bad path segment, a body that is not JSON), the router (405), a body limit
/// (413) or a timeout layer (408) answer plain text or nothing (JSON answers, such as the
/// readiness report, and the console's HTML pages are left alone). Their text can quote the
/// request, so it is replaced by a fixed message for the status; headers such as `Allow` and
/// `Retry-After` are kept.
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE);
    let is_json = content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // The console's own error pages are HTML written for a person; they stay as they are.
    let is_page = content_type.is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !(status.is_client_error() || status.is_server_error())
        || is_json
        || is_page
        || response.extensions().get::<ApiError>().is_some()
    {
        return response;
    }
    let (code, message) = match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request could not be read"),
        StatusCode::UNAUTHORIZED => ("unauthorized", "authentication is required"),
        StatusCode::FORBIDDEN => ("forbidden", "not allowed"),
        StatusCode::NOT_FOUND => ("not_found", "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this method is not allowed on this endpoint",
        ),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_input", "the input is invalid"),
        StatusCode::TOO_MANY_REQUESTS => ("too_many_requests", "too many requests"),
        StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the service is unavailable"),
        s if s.is_client_error() => ("bad_request", "the request was refused"),
        _ => (
            "internal",
            "internal error; quote the trace_id to an operator",
        ),
    };
    let mut rebuilt = ApiError::with_status(status, code, message).into_response();
    for (name, value) in response.headers() {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            rebuilt.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rebuilt
}
