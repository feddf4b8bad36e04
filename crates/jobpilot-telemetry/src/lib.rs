//! Telemetry for jobpilot: the only crate that names OpenTelemetry.
//!
//! Layout:
//! - [`config`]: typed telemetry configuration parsed from the environment.
//! - [`telemetry`]: [`Telemetry::init`] and shutdown: provider, resource, exporter, Sentry.
//! - [`metrics`]: the instruments ([`Metrics`]) and their export: OTLP, console, Prometheus.
//! - [`pipeline`]: the batch export pipeline with its counters ([`ExportStats`]).
//! - [`otlp_encode`]: finished spans written straight into OTLP protobuf bytes; `otlp_grpc`
//!   sends them to a gRPC endpoint.
//! - [`console`]: the console fallback (pretty tree or JSON lines).
//! - [`names`]: span names, attribute keys and scopes, spelled as in the spec.
//! - [`span`]: the [`Tracer`] handle, the [`TraceCx`] parent and the [`SpanGuard`].
//! - [`propagation`]: W3C Trace Context and Baggage, strictly parsed, for HTTP headers and task
//!   messages.
//! - [`tls`]: trust roots, client identity and TLS failures in operator words.
//! - [`redact`]: what never reaches a span or a log line.
//! - [`logging`]: log lines with trace ids.
//! - [`sentry`]: error reports tagged with the trace id.
//! - `testing` (feature): span capture in memory and an in-process OTLP receiver;
//!   `http_receiver` (feature): an OTLP/HTTP receiver, plain or TLS, recording requests.

pub mod config;
pub mod console;
mod export_errors;
#[cfg(feature = "testing")]
pub mod http_receiver;
pub mod ids;
pub mod logging;
pub mod metrics;
pub mod names;
pub mod otlp_encode;
mod otlp_grpc;
mod percent;
pub mod pipeline;
pub mod propagation;
pub mod record;
pub mod redact;
pub mod sentry;
pub mod span;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use config::{ConfigError, TelemetryConfig};
pub use metrics::{Metrics, PrometheusText};
pub use pipeline::ExportStats;
pub use record::{Recorder, SpanRecord, SpanSink};
pub use span::{AttrValue, SpanGuard, SpanKind, TraceCx, Tracer};
pub use telemetry::{ExportTargets, Telemetry, TelemetryError};
