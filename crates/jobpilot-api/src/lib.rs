//! The jobpilot HTTP API.
//!
//! Layout:
//! - [`app`]: `app(state) -> Router` and `serve(listener, router, shutdown)`.
//! - [`routes`]: the handlers, each with its OpenAPI operation.
//! - [`bodies`]: the JSON bodies they send and read, as types.
//! - [`trace_layer`]: the SERVER span of every request, `traceparent` in responses.
//! - [`auth`]: bearer tokens (HS256, `sub` = `user_id`).
//! - [`error`]: [`ApiError`], the one error type of the edge.
//! - [`state`]: [`AppState`], what handlers can reach.
//! - [`openapi`]: the OpenAPI document derived from the above, and Swagger UI.

pub mod app;
pub mod auth;
pub mod bodies;
pub mod error;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod trace_layer;

pub use app::{app, serve};
pub use auth::{Auth, AuthUser, Claims};
pub use error::ApiError;
pub use state::{AppState, TelemetryStatus};
pub use trace_layer::HttpTracing;
