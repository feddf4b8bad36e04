//! Telemetry for jobpilot: the only crate that names OpenTelemetry.
//!
//! Layout:
//! - [`names`]: span names, attribute keys and scopes, spelled as in the spec.
//! - [`span`]: the [`Tracer`] handle, the [`TraceCx`] parent and the [`SpanGuard`].
//! - [`propagation`]: W3C Trace Context and Baggage, strictly parsed, for HTTP headers and task
//!   messages.

pub mod names;
pub mod propagation;
pub mod span;

pub use span::{AttrValue, SpanGuard, SpanKind, TraceCx, Tracer};
