//! The one error type of the HTTP edge: every failure becomes a JSON body
//! `{"error": {"code", "message", "field"?}, "trace_id"}` with the right status.
//!
//! Messages are written for the client and never carry internal error text; the server span
//! middleware fills in `trace_id`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

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

    /// 422 naming the field.
    pub fn invalid_input(field: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        let field = field.into();
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_input",
            message: format!("{field}: {reason}"),
            field: Some(field),
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
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response.extensions_mut().insert(self);
        response
    }
}
