//! The admin listener of a process without the API (a worker), or beside it
//! (`JOBPILOT_ADMIN_LISTEN`): `/health`, `/ready`, `/metrics` (Prometheus text) and
//! `/telemetry` (the span exporter's figures as JSON), unauthenticated, for an operator's
//! network only.
//!
//! [`router`] builds the routes without a socket; [`serve`] runs them on a bound listener until
//! a shutdown future completes. It is not the API: no runs, no authentication.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use jobpilot_queue::Broker;
use jobpilot_telemetry::PrometheusText;
use jobpilot_telemetry::pipeline::PipelineHandle;
use serde_json::json;
use tokio::net::TcpListener;

/// What the admin routes read.
#[derive(Clone)]
pub struct AdminState {
    /// The broker `/ready` pings.
    pub broker: Arc<dyn Broker>,
    /// The metrics text, when the `prometheus` metrics exporter is on.
    pub prometheus: Option<PrometheusText>,
    /// `otlp-grpc`, `otlp-http`, `console` or `none`.
    pub exporter: &'static str,
    /// The span export pipeline, when exporting over OTLP.
    pub pipeline: Option<PipelineHandle>,
}

/// How long `/ready` waits for the broker.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/telemetry", get(telemetry))
        .with_state(Arc::new(state))
}

/// Serves the admin routes on `listener` until `shutdown` completes.
///
/// # Errors
/// When accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let reason = match tokio::time::timeout(READY_TIMEOUT, state.broker.ping()).await {
        Ok(Ok(())) => return axum::Json(json!({"status": "ready"})).into_response(),
        Ok(Err(e)) => format!("the broker is unavailable: {e}"),
        Err(_) => format!("the broker did not answer within {READY_TIMEOUT:?}"),
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"status": "unavailable", "reasons": [reason]})),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    match &state.prometheus {
        Some(p) => (
            [(header::CONTENT_TYPE, PrometheusText::CONTENT_TYPE)],
            p.encode(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({
                "error": "not_found",
                "message": "metrics are not served: OTEL_METRICS_EXPORTER does not list prometheus",
            })),
        )
            .into_response(),
    }
}

async fn telemetry(State(state): State<Arc<AdminState>>) -> Response {
    let stats = state
        .pipeline
        .as_ref()
        .map(PipelineHandle::stats)
        .unwrap_or_default();
    axum::Json(json!({"exporter": state.exporter, "stats": stats})).into_response()
}
