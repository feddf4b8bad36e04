//! The jobpilot HTTP API.
//!
//! Layout:
//! - [`app`]: `app(state) -> Router` (and `endpoints()`, every documented route).
//! - [`server`]: `serve_with_limits(listener, router, limits, shutdown)`: connection cap,
//!   header and body read timeouts.
//! - [`admission`]: whether a new run is accepted: per-user rate and queued-run quota, global
//!   queue depth.
//! - [`routes`]: the handlers, each with its OpenAPI operation.
//! - [`console`]: the operator console at `/console` (server-rendered pages).
//! - [`operations`]: the operator's JSON API: listing, retry and cancel, statistics, dead
//!   letters, the live event stream.
//! - [`bodies`]: the JSON bodies they send and read, as types.
//! - [`trace_layer`]: the SERVER span of every request, `traceparent` in responses.
//! - [`auth`]: bearer tokens (HS256, `sub` = `user_id`).
//! - [`error`]: [`ApiError`], the one error type of the edge.
//! - [`state`]: [`AppState`], what handlers can reach.
//! - [`openapi`]: the OpenAPI document derived from the above, and Swagger UI.

pub mod admission;
pub mod app;
pub mod auth;
pub mod bodies;
pub mod console;
pub mod error;
pub mod openapi;
pub mod operations;
pub mod routes;
pub mod server;
pub mod state;
pub mod trace_layer;

pub use admission::RunLimits;
pub use app::app;
pub use auth::{Auth, AuthUser, Claims};
pub use error::ApiError;
pub use server::{ServerLimits, serve, serve_with_limits};
pub use state::{AppState, TelemetryStatus};
pub use trace_layer::HttpTracing;
