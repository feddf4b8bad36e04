//! The router, built by a function so tests can drive it without a socket (serving it is
//! [`crate::server`]).

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use tower_http::timeout::TimeoutLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use crate::{console, openapi, operations, routes, trace_layer};

/// Every endpoint of the API, each registered once: `routes!` takes a handler together with the
/// OpenAPI operation written on it, so the router and the document cannot list different
/// routes. Adding an endpoint is one line here.
pub fn endpoints() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(routes::health))
        .routes(routes!(routes::ready))
        .routes(routes!(routes::list_agents))
        .routes(routes!(routes::create_run))
        .routes(routes!(operations::list_runs))
        .routes(routes!(routes::get_run))
        .routes(routes!(operations::retry_run))
        .routes(routes!(operations::cancel_run))
        .routes(routes!(routes::admin_queue))
        .routes(routes!(routes::admin_telemetry))
        .routes(routes!(operations::admin_stats))
        .routes(routes!(operations::dead_letters))
        .routes(routes!(operations::requeue_dead_letter))
        .routes(routes!(operations::delete_dead_letter))
        .routes(routes!(operations::events))
        .routes(routes!(routes::metrics))
}

/// The whole OpenAPI document, as `/openapi.json` serves it: what [`endpoints`] registered,
/// completed by [`openapi::finish`].
pub fn document() -> utoipa::openapi::OpenApi {
    openapi::finish(endpoints().split_for_parts().1)
}

/// The whole API: [`endpoints`], the operator console at `/console`, plus Swagger UI at
/// `/docs` and the document at `/openapi.json` unless the state turns them off.
pub fn app(state: AppState) -> Router {
    let http = state.0.http.clone();
    let max_body = state.0.max_body_bytes;
    let request_timeout = state.0.request_timeout;
    let (mut router, doc) = endpoints().split_for_parts();
    if state.0.api_docs {
        router = router.merge(openapi::docs_router(openapi::finish(doc)));
    }
    router = router.merge(console::router());
    router
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
