//! The router, built by a function so tests can drive it without a socket, and [`serve`],
//! which runs it on an already-bound listener until a shutdown future completes.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::routes;
use crate::state::AppState;
use crate::trace_layer;

/// The whole API.
pub fn app(state: AppState) -> Router {
    let http = state.0.http.clone();
    let max_body = state.0.max_body_bytes;
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
        .route("/metrics", get(routes::metrics))
        .route_layer(axum::middleware::from_fn(trace_layer::record_route))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            http,
            trace_layer::trace_requests,
        ))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight
/// finish.
///
/// # Errors
/// When accepting connections fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
