//! The router, built by a function so tests can drive it without a socket (serving it is
//! [`crate::server`]).

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower_http::timeout::TimeoutLayer;

use crate::routes;
use crate::state::AppState;
use crate::trace_layer;

/// The whole API.
pub fn app(state: AppState) -> Router {
    let http = state.0.http.clone();
    let max_body = state.0.max_body_bytes;
    let request_timeout = state.0.request_timeout;
    Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/openapi.json", get(routes::openapi))
        .route("/docs", get(routes::docs))
        .route("/api/v1/agents", get(routes::list_agents))
        .route("/api/v1/agents/{agent_type}/runs", post(routes::create_run))
        .route("/api/v1/runs/{run_id}", get(routes::get_run))
        .route("/api/v1/admin/queue", get(routes::admin_queue))
        .route("/api/v1/admin/telemetry", get(routes::admin_telemetry))
        .route_layer(axum::middleware::from_fn(trace_layer::record_route))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(tower::util::option_layer(request_timeout.map(|t| {
            TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, t)
        })))
        // Inside the trace layer, so every rejection (from an extractor, the router or a
        // timeout) gets the JSON error shape and then the trace id.
        .layer(axum::middleware::from_fn(crate::error::json_errors))
        .layer(axum::middleware::from_fn_with_state(
            http,
            trace_layer::trace_requests,
        ))
        .with_state(state)
}
