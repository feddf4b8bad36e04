//! Error reporting to Sentry: set up from [`SentryConfig`], with every event tagged with the
//! trace id of the OpenTelemetry context current when it was captured.
//!
//! Performance data stays with OpenTelemetry; Sentry receives errors (5xx, failed runs,
//! panics). No personal data is sent (`send_default_pii` off).

use opentelemetry::trace::TraceContextExt as _;

use crate::config::{Environment, SentryConfig};
use crate::telemetry::TelemetryError;

/// Tag that carries the trace id on every event.
pub const TRACE_ID_TAG: &str = "trace_id";

pub(crate) fn init(
    config: &SentryConfig,
    environment: Environment,
) -> Result<sentry::ClientInitGuard, TelemetryError> {
    let dsn = config
        .dsn
        .parse()
        .map_err(|e: sentry::types::ParseDsnError| TelemetryError::SentryDsn(e.to_string()))?;
    let mut options = sentry::ClientOptions::new()
        .release(concat!("jobpilot@", env!("CARGO_PKG_VERSION")))
        .environment(environment.as_str())
        .sample_rate(config.sample_rate)
        .traces_sample_rate(config.traces_sample_rate)
        .send_default_pii(false)
        .before_send(|mut event| {
            if !event.tags.contains_key(TRACE_ID_TAG) {
                let cx = opentelemetry::Context::current();
                let span = cx.span();
                let sc = span.span_context();
                if sc.is_valid() {
                    event
                        .tags
                        .insert(TRACE_ID_TAG.into(), sc.trace_id().to_string());
                }
            }
            Some(event)
        });
    options.dsn = Some(dsn);
    Ok(sentry::init(options))
}

/// Sends an error event with `message`, tagged with `trace_id` and `tags`. A no-op when Sentry
/// is not configured.
pub fn report_error(message: &str, trace_id: Option<&str>, tags: &[(&str, &str)]) {
    sentry::with_scope(
        |scope| {
            if let Some(id) = trace_id {
                scope.set_tag(TRACE_ID_TAG, id);
            }
            for (k, v) in tags {
                scope.set_tag(k, v);
            }
        },
        || sentry::capture_message(message, sentry::Level::Error),
    );
}
