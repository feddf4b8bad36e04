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
        // Errors only: spans go to the OTLP backend, and Sentry's events carry their trace id.
        .traces_sample_rate(0.0)
        .send_default_pii(false)
        .before_send(|mut event| {
            tag_with_trace(&mut event);
            Some(event)
        });
    options.dsn = Some(dsn);
    Ok(sentry::init(options))
}

/// Puts the OpenTelemetry trace on `event`: the `trace_id` tag (unless the caller set one) and
/// Sentry's own trace context, so Sentry links the event to the same trace id as the spans.
fn tag_with_trace(event: &mut sentry::protocol::Event<'static>) {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    if !event.tags.contains_key(TRACE_ID_TAG) && sc.is_valid() {
        event
            .tags
            .insert(TRACE_ID_TAG.into(), sc.trace_id().to_string());
    }
    let Some(trace_id) = event
        .tags
        .get(TRACE_ID_TAG)
        .and_then(|hex| u128::from_str_radix(hex, 16).ok())
    else {
        return;
    };
    let mut trace = match event.contexts.remove("trace") {
        Some(sentry::protocol::Context::Trace(t)) => *t,
        _ => sentry::protocol::TraceContext::default(),
    };
    trace.trace_id = trace_id.to_be_bytes().into();
    if sc.is_valid() && sc.trace_id().to_bytes() == trace_id.to_be_bytes() {
        trace.span_id = sc.span_id().to_bytes().into();
    }
    event.contexts.insert(
        "trace".into(),
        sentry::protocol::Context::Trace(Box::new(trace)),
    );
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
