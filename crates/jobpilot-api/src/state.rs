//! What every handler can reach: authentication keys, the broker and run store, the tracers
//! and the telemetry counters shown to admins. Built once by the binary and passed in.

use std::sync::Arc;
use std::time::Duration;

use jobpilot_queue::{Broker, RunStore};
use jobpilot_telemetry::metrics::QueueMetrics;
use jobpilot_telemetry::pipeline::PipelineHandle;
use jobpilot_telemetry::{ExportStats, Metrics, PrometheusText, Tracer};

use crate::admission::{Admission, RunLimits};
use crate::auth::{Auth, HasAuth};
use crate::trace_layer::HttpTracing;

/// How telemetry is doing, for the admin endpoint.
#[derive(Debug, Clone)]
pub struct TelemetryStatus {
    /// `otlp-grpc`, `otlp-http`, `console` or `none`.
    pub exporter: &'static str,
    /// The export pipeline, when exporting over OTLP.
    pub pipeline: Option<PipelineHandle>,
}

impl TelemetryStatus {
    /// The counters right now.
    pub fn stats(&self) -> ExportStats {
        self.pipeline
            .as_ref()
            .map(PipelineHandle::stats)
            .unwrap_or_default()
    }
}

/// Shared application state (cheap to clone).
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub auth: Auth,
    pub broker: Arc<dyn Broker>,
    pub store: Arc<dyn RunStore>,
    pub http: Arc<HttpTracing>,
    pub queue_tracer: Tracer,
    pub telemetry: TelemetryStatus,
    pub max_body_bytes: usize,
    pub dependency_timeout: Duration,
    pub queue_metrics: QueueMetrics,
    pub prometheus: Option<PrometheusText>,
    pub api_docs: bool,
    pub request_timeout: Option<Duration>,
    pub admission: Admission,
    pub trace_url_template: Option<String>,
}

/// Default largest request body accepted.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// Builds an [`AppState`]; everything but the keys, broker and store has a default.
pub struct AppStateBuilder {
    auth: Auth,
    broker: Arc<dyn Broker>,
    store: Arc<dyn RunStore>,
    http: Option<HttpTracing>,
    queue_tracer: Tracer,
    telemetry: TelemetryStatus,
    max_body_bytes: usize,
    dependency_timeout: Duration,
    metrics: Metrics,
    prometheus: Option<PrometheusText>,
    api_docs: bool,
    request_timeout: Option<Duration>,
    run_limits: RunLimits,
    trace_url_template: Option<String>,
}

/// Default longest time a request may take, body included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl AppState {
    /// Starts a builder.
    pub fn builder(
        auth: Auth,
        broker: Arc<dyn Broker>,
        store: Arc<dyn RunStore>,
    ) -> AppStateBuilder {
        AppStateBuilder {
            auth,
            broker,
            store,
            http: None,
            queue_tracer: Tracer::noop(),
            telemetry: TelemetryStatus {
                exporter: "none",
                pipeline: None,
            },
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            dependency_timeout: Duration::from_secs(2),
            metrics: Metrics::noop(),
            prometheus: None,
            api_docs: true,
            request_timeout: Some(DEFAULT_REQUEST_TIMEOUT),
            run_limits: RunLimits::default(),
            trace_url_template: None,
        }
    }
}

impl AppStateBuilder {
    /// Server span settings (default: no tracing, default exclusions).
    pub fn with_http_tracing(mut self, http: HttpTracing) -> Self {
        self.http = Some(http);
        self
    }

    /// Tracer for producer spans.
    pub fn with_queue_tracer(mut self, tracer: Tracer) -> Self {
        self.queue_tracer = tracer;
        self
    }

    /// Telemetry status for admins.
    pub fn with_telemetry(mut self, telemetry: TelemetryStatus) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// Largest accepted request body.
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// How long a call to the broker or store may take before the request answers 503.
    pub fn with_dependency_timeout(mut self, timeout: Duration) -> Self {
        self.dependency_timeout = timeout;
        self
    }

    /// Instruments for the producer side of the queue (default: none).
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Serves `/metrics` to admins on the API address (default: not served, e.g. because a
    /// separate admin listener serves it).
    pub fn with_prometheus(mut self, prometheus: Option<PrometheusText>) -> Self {
        self.prometheus = prometheus;
        self
    }

    /// Whether `/docs` and `/openapi.json` are served (default: yes).
    pub fn with_api_docs(mut self, enabled: bool) -> Self {
        self.api_docs = enabled;
        self
    }

    /// Longest time a request may take before it is answered 408 (`None`: no limit).
    pub fn with_request_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Limits on run creation (default [`RunLimits::default`]).
    pub fn with_run_limits(mut self, limits: RunLimits) -> Self {
        self.run_limits = limits;
        self
    }

    /// Where the console links a run's trace: a URL with `{trace_id}` in it, e.g.
    /// `http://jaeger:16686/trace/{trace_id}` (default: the trace id is shown, not linked).
    pub fn with_trace_url_template(mut self, template: Option<String>) -> Self {
        self.trace_url_template = template;
        self
    }

    /// The state.
    pub fn build(self) -> AppState {
        let queue_metrics = self
            .metrics
            .queue(self.broker.system(), self.broker.queue_name());
        let http = self.http.unwrap_or_else(|| HttpTracing {
            tracer: Tracer::noop(),
            excluded_paths: jobpilot_telemetry::config::DEFAULT_EXCLUDED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            inbound: jobpilot_telemetry::config::InboundPolicy::Continue,
            metrics: jobpilot_telemetry::Metrics::noop(),
            inbound_baggage: false,
        });
        AppState(Arc::new(Inner {
            auth: self.auth,
            broker: self.broker,
            store: self.store,
            http: Arc::new(http),
            queue_tracer: self.queue_tracer,
            telemetry: self.telemetry,
            max_body_bytes: self.max_body_bytes,
            dependency_timeout: self.dependency_timeout,
            queue_metrics,
            prometheus: self.prometheus,
            api_docs: self.api_docs,
            request_timeout: self.request_timeout,
            admission: Admission::new(self.run_limits),
            trace_url_template: self.trace_url_template,
        }))
    }
}

impl HasAuth for AppState {
    fn auth(&self) -> &Auth {
        &self.0.auth
    }
}
