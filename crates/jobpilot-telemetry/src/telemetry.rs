//! Starting and stopping telemetry for a process: the span recorder with its
//! sampler, limits and exporter, the meter provider with its exporters, and Sentry when
//! configured.
//!
//! [`Telemetry::init`] returns the handle that owns all of it; [`Telemetry::shutdown`] flushes
//! within a time budget. It does not install the log subscriber (see [`crate::logging`]).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SpanLimits};

use crate::config::{OtlpConfig, Protocol, SamplerConfig, TelemetryConfig};
use crate::console::ConsoleProcessor;
use crate::export_errors::{ExplainingExporter, RememberingClient};
use crate::metrics::{Metrics, MetricsExport, PrometheusText, PushExporter, PushStats};
use crate::pipeline::{self, BatchExporter, ExportStats, PipelineHandle, SdkExporter};
use crate::record::Recorder;
use crate::span::Tracer;

/// Telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter rejected its settings.
    #[error(
        "cannot build the OTLP exporter for {}: {reason}",
        crate::redact::redact_url(.endpoint)
    )]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The Sentry DSN could not be parsed.
    #[error("invalid SENTRY_DSN: {0}")]
    SentryDsn(String),
}

/// What a running [`Telemetry`] sends spans to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportTargets {
    /// The OTLP transport, when exporting over OTLP.
    pub otlp: Option<Protocol>,
    /// Whether spans are printed to standard output.
    pub console: bool,
}

impl ExportTargets {
    /// Whether spans go nowhere (and are not recorded).
    pub fn is_none(self) -> bool {
        self.otlp.is_none() && !self.console
    }

    /// A short name for logs and the admin endpoint: `otlp-grpc`, `otlp-http`, `console`,
    /// `none`, or two of them joined by `+`.
    pub fn label(self) -> &'static str {
        match (self.otlp, self.console) {
            (None, false) => "none",
            (None, true) => "console",
            (Some(Protocol::Grpc), false) => "otlp-grpc",
            (Some(Protocol::Grpc), true) => "otlp-grpc+console",
            (Some(Protocol::HttpProtobuf), false) => "otlp-http",
            (Some(Protocol::HttpProtobuf), true) => "otlp-http+console",
            (Some(Protocol::HttpJson), false) => "otlp-http-json",
            (Some(Protocol::HttpJson), true) => "otlp-http-json+console",
        }
    }
}

/// The telemetry of one process. Keep it alive for the life of the process and call
/// [`Telemetry::shutdown`] at the end.
pub struct Telemetry {
    recorder: Recorder,
    pipeline: Option<PipelineHandle>,
    max_value_len: usize,
    propagators: crate::propagation::Propagators,
    service_name: String,
    targets: ExportTargets,
    metrics: Option<MetricsExport>,
    sentry: Option<sentry::ClientInitGuard>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("service_name", &self.service_name)
            .field("exporter", &self.targets.label())
            .finish()
    }
}

fn sampler(config: SamplerConfig) -> Sampler {
    match config {
        SamplerConfig::AlwaysOn => Sampler::AlwaysOn,
        SamplerConfig::AlwaysOff => Sampler::AlwaysOff,
        SamplerConfig::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        SamplerConfig::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        SamplerConfig::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        SamplerConfig::ParentBasedTraceIdRatio(r) => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
        }
    }
}

/// The name of this machine (for `host.name` and for naming workers), if it can be read.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// The resource of this process: service, version, environment, host and process.
pub fn resource(config: &TelemetryConfig, default_service_name: &str) -> Resource {
    let service_name = config
        .service_name
        .clone()
        .or_else(|| config.resource_attributes.get("service.name").cloned())
        .unwrap_or_else(|| default_service_name.to_owned());
    let pid = std::process::id();
    let host = host_name();
    let mut attrs = vec![
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("deployment.environment.name", config.environment.as_str()),
        KeyValue::new("process.pid", i64::from(pid)),
        KeyValue::new("process.runtime.name", "rust"),
        KeyValue::new(
            "service.instance.id",
            format!("{}-{pid}", host.as_deref().unwrap_or("localhost")),
        ),
    ];
    if let Some(exe) = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    {
        attrs.push(KeyValue::new("process.executable.name", exe));
    }
    if let Some(host) = host {
        attrs.push(KeyValue::new("host.name", host));
    }
    // Operator-supplied attributes override the detected ones, except service.name which
    // follows its own precedence above.
    for (k, v) in &config.resource_attributes {
        if k != "service.name" {
            attrs.push(KeyValue::new(k.clone(), v.clone()));
        }
    }
    Resource::builder_empty()
        .with_service_name(service_name)
        .with_attributes(attrs)
        .build()
}

fn exporter_error(otlp: &OtlpConfig, e: opentelemetry_otlp::ExporterBuildError) -> TelemetryError {
    TelemetryError::Exporter {
        endpoint: otlp.endpoint.clone(),
        // The builder's message may quote the endpoint whole, credentials included.
        reason: e
            .to_string()
            .replace(&otlp.endpoint, &crate::redact::redact_url(&otlp.endpoint)),
    }
}

/// The configured headers as gRPC metadata.
fn grpc_metadata(
    otlp: &OtlpConfig,
) -> Result<opentelemetry_otlp::tonic_types::metadata::MetadataMap, TelemetryError> {
    let mut metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::new();
    for (k, v) in &otlp.headers {
        let key = k.to_ascii_lowercase();
        let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()).map_err(|e| {
            TelemetryError::Exporter {
                endpoint: otlp.endpoint.clone(),
                reason: format!("header {k:?}: {e}"),
            }
        })?;
        let value = v.parse().map_err(|_| TelemetryError::Exporter {
            endpoint: otlp.endpoint.clone(),
            reason: format!("header {k:?} has an invalid value"),
        })?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

fn http_headers(otlp: &OtlpConfig) -> HashMap<String, String> {
    otlp.headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The HTTP client of an OTLP/HTTP exporter: the configured TLS settings and timeout.
fn http_client(otlp: &OtlpConfig) -> Result<RememberingClient, TelemetryError> {
    let tls = crate::tls::http_tls(&otlp.tls).map_err(|e| TelemetryError::Exporter {
        endpoint: otlp.endpoint.clone(),
        reason: e.to_string(),
    })?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(otlp.timeout)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: otlp.endpoint.clone(),
            reason: e.to_string(),
        })?;
    Ok(RememberingClient::new(client))
}

/// Applies the transport, endpoint, timeout, headers, compression and TLS of `otlp` to a span
/// or metric exporter builder, so both signals are sent the same way. The HTTP client used is
/// left in `$remembering`, which keeps its last transport failure.
macro_rules! otlp_builder {
    ($builder:expr, $otlp:expr, $remembering:expr) => {{
        let otlp: &OtlpConfig = $otlp;
        let remembering: &mut Option<RememberingClient> = $remembering;
        crate::tls::install_crypto_provider();
        let compression = otlp.gzip.then_some(opentelemetry_otlp::Compression::Gzip);
        match otlp.protocol {
            Protocol::Grpc => {
                let mut b = $builder
                    .with_tonic()
                    .with_endpoint(otlp.endpoint.clone())
                    .with_timeout(otlp.timeout)
                    .with_metadata(grpc_metadata(otlp)?);
                if let Some(c) = compression {
                    b = b.with_compression(c);
                }
                if otlp.endpoint.starts_with("https://") {
                    b = b.with_tls_config(crate::tls::grpc_tls(&otlp.tls));
                }
                b.build().map_err(|e| exporter_error(otlp, e))?
            }
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let client = remembering.insert(http_client(otlp)?).clone();
                let mut b = $builder
                    .with_http()
                    .with_protocol(match otlp.protocol {
                        Protocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
                        _ => opentelemetry_otlp::Protocol::HttpBinary,
                    })
                    .with_endpoint(otlp.endpoint.clone())
                    .with_timeout(otlp.timeout)
                    .with_http_client(client)
                    .with_headers(http_headers(otlp));
                if let Some(c) = compression {
                    b = b.with_compression(c);
                }
                b.build().map_err(|e| exporter_error(otlp, e))?
            }
        }
    }};
}

/// The OTLP span exporter of the configured transport.
#[derive(Debug)]
enum OtlpSpanExporter {
    /// jobpilot's own gRPC exporter, which encodes the records without intermediate structs.
    Grpc(crate::otlp_grpc::GrpcSpanExporter),
    /// `opentelemetry-otlp`'s HTTP exporter (protobuf or JSON).
    Http(SdkExporter<ExplainingExporter<opentelemetry_otlp::SpanExporter>>),
}

impl BatchExporter for OtlpSpanExporter {
    async fn export(&self, batch: Vec<crate::SpanRecord>) -> OTelSdkResult {
        match self {
            OtlpSpanExporter::Grpc(e) => e.export(batch).await,
            OtlpSpanExporter::Http(e) => e.export(batch).await,
        }
    }

    fn shutdown(&self) -> OTelSdkResult {
        match self {
            OtlpSpanExporter::Grpc(e) => e.shutdown(),
            OtlpSpanExporter::Http(e) => e.shutdown(),
        }
    }
}

fn otlp_exporter(
    otlp: &OtlpConfig,
    resource: &Resource,
) -> Result<OtlpSpanExporter, TelemetryError> {
    use opentelemetry_sdk::trace::SpanExporter as _;
    let exporter = if otlp.protocol == Protocol::Grpc {
        crate::tls::install_crypto_provider();
        let settings = crate::otlp_grpc::GrpcSettings {
            endpoint: otlp.endpoint.clone(),
            timeout: otlp.timeout,
            metadata: grpc_metadata(otlp)?,
            gzip: otlp.gzip,
            tls: otlp
                .endpoint
                .starts_with("https://")
                .then(|| crate::tls::grpc_tls(&otlp.tls)),
        };
        let mut exporter = crate::otlp_grpc::GrpcSpanExporter::new(settings).map_err(|e| {
            TelemetryError::Exporter {
                endpoint: otlp.endpoint.clone(),
                reason: e
                    .to_string()
                    .replace(&otlp.endpoint, &crate::redact::redact_url(&otlp.endpoint)),
            }
        })?;
        exporter.set_resource(resource);
        OtlpSpanExporter::Grpc(exporter)
    } else {
        let mut remembering = None;
        let mut exporter = otlp_builder!(
            opentelemetry_otlp::SpanExporter::builder(),
            otlp,
            &mut remembering
        );
        exporter.set_resource(resource);
        OtlpSpanExporter::Http(SdkExporter(ExplainingExporter::new(
            exporter,
            remembering.as_ref(),
        )))
    };
    Ok(exporter)
}

fn otlp_metric_exporter(
    otlp: &OtlpConfig,
) -> Result<opentelemetry_otlp::MetricExporter, TelemetryError> {
    Ok(otlp_builder!(
        opentelemetry_otlp::MetricExporter::builder()
            .with_temporality(opentelemetry_sdk::metrics::Temporality::Cumulative),
        otlp,
        &mut None
    ))
}

impl Telemetry {
    /// Starts telemetry for a process whose service name defaults to `default_service_name`.
    /// Must be called inside a Tokio runtime that outlives [`Telemetry::shutdown`] (the OTLP
    /// exporters run on it).
    ///
    /// # Errors
    /// When the exporter or Sentry cannot be set up from the configuration.
    pub fn init(
        config: &TelemetryConfig,
        default_service_name: &str,
    ) -> Result<Telemetry, TelemetryError> {
        let resource = resource(config, default_service_name);
        let service_name = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .map(|v| v.to_string())
            .unwrap_or_else(|| default_service_name.to_owned());
        let limits = SpanLimits {
            max_attributes_per_span: config.limits.max_attributes_per_span,
            max_events_per_span: config.limits.max_events_per_span,
            max_links_per_span: config.limits.max_links_per_span,
            max_attributes_per_event: config.limits.max_attributes_per_event,
            max_attributes_per_link: config.limits.max_attributes_per_link,
        };
        let targets = ExportTargets {
            otlp: config.exporters.otlp.as_ref().map(|o| o.protocol),
            console: config.exporters.console.is_some(),
        };
        let span_sampler = if targets.is_none() {
            // Nothing is exported, so nothing is recorded: spans cost next to nothing.
            Sampler::AlwaysOff
        } else {
            sampler(config.sampler)
        };
        let mut builder = Recorder::builder(span_sampler).with_limits(limits);
        let mut pipeline = None;
        if let Some(otlp) = &config.exporters.otlp {
            let exporter = otlp_exporter(otlp, &resource)?;
            let (sink, handle) = pipeline::start(exporter, config.batch);
            builder = builder.with_sink(sink);
            pipeline = Some(handle);
        }
        if let Some(format) = config.exporters.console {
            builder = builder.with_sink(ConsoleProcessor::stdout(format));
        }
        let recorder = builder.build();
        let metrics = Self::start_metrics(config, resource, pipeline.clone())?;
        let sentry = match &config.sentry {
            None => None,
            Some(s) => Some(crate::sentry::init(s, config.environment)?),
        };
        Ok(Telemetry {
            recorder,
            pipeline,
            max_value_len: config.limits.max_attribute_value_len,
            propagators: config.propagators,
            service_name,
            targets,
            metrics,
            sentry,
        })
    }

    fn start_metrics(
        config: &TelemetryConfig,
        resource: Resource,
        pipeline: Option<PipelineHandle>,
    ) -> Result<Option<MetricsExport>, TelemetryError> {
        let m = &config.metrics;
        if m.is_none() {
            return Ok(None);
        }
        let mut exporters = Vec::new();
        if let Some(otlp) = &m.otlp {
            exporters.push(PushExporter::Otlp(Box::new(otlp_metric_exporter(otlp)?)));
        }
        if m.console {
            exporters.push(PushExporter::Console(
                opentelemetry_stdout::MetricExporter::default(),
            ));
        }
        let timeout = m
            .otlp
            .as_ref()
            .map_or(Duration::from_secs(10), |o| o.timeout);
        MetricsExport::start(
            resource,
            m.prometheus,
            exporters,
            m.interval,
            timeout,
            pipeline,
        )
        .map(Some)
        .map_err(|reason| TelemetryError::Exporter {
            endpoint: "prometheus".into(),
            reason,
        })
    }

    /// The metric instruments (recording nothing when metrics are off).
    pub fn metrics(&self) -> Metrics {
        self.metrics
            .as_ref()
            .map(MetricsExport::metrics)
            .unwrap_or_default()
    }

    /// The Prometheus text of this process's metrics, when the `prometheus` metrics exporter
    /// is on.
    pub fn prometheus(&self) -> Option<PrometheusText> {
        self.metrics.as_ref().and_then(MetricsExport::prometheus)
    }

    /// Counters of the metric pushes (all zero when nothing is pushed).
    pub fn metric_push_stats(&self) -> PushStats {
        self.metrics
            .as_ref()
            .map(MetricsExport::push_stats)
            .unwrap_or_default()
    }

    /// A tracer for `scope` (one of [`crate::names`]'s `SCOPE_*`).
    pub fn tracer(&self, scope: &'static str) -> Tracer {
        let tracer = if self.targets.is_none() {
            Tracer::non_recording(&self.recorder, scope)
        } else {
            Tracer::new(&self.recorder, scope, self.max_value_len)
        };
        tracer.with_propagators(self.propagators)
    }

    /// The service name in the resource.
    pub fn service_name(&self) -> &str {
        &self.service_name
    }

    /// Where spans go.
    pub fn targets(&self) -> ExportTargets {
        self.targets
    }

    /// A short name of where spans go (see [`ExportTargets::label`]).
    pub fn exporter_kind(&self) -> &'static str {
        self.targets.label()
    }

    /// A handle to the export counters (`None` unless exporting over OTLP).
    pub fn pipeline(&self) -> Option<PipelineHandle> {
        self.pipeline.clone()
    }

    /// Export counters right now (all zero unless exporting over OTLP).
    pub fn stats(&self) -> ExportStats {
        self.pipeline
            .as_ref()
            .map(PipelineHandle::stats)
            .unwrap_or_default()
    }

    /// Exports every finished span and pushes the last metrics, then stops; gives up after
    /// `timeout` (spans still unsent are counted as dropped). Also flushes Sentry.
    ///
    /// # Errors
    /// When the time budget runs out.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<ExportStats, String> {
        // Metrics and spans flush side by side within the same budget.
        let metrics = async {
            match self.metrics.take() {
                Some(m) => m.shutdown(timeout).await,
                None => Ok(()),
            }
        };
        let spans = async {
            match &self.pipeline {
                Some(p) => p.shutdown(timeout).await,
                None => Ok(()),
            }
        };
        let (metrics, spans) = tokio::join!(metrics, spans);
        let result = spans.and(metrics).map_err(str::to_owned);
        let stats = self.stats();
        // The pipeline has stopped; this closes the sinks (the console prints what it held).
        let recorder = self.recorder.clone();
        let _ = tokio::task::spawn_blocking(move || recorder.shutdown()).await;
        if let Some(guard) = self.sentry {
            let _ = tokio::task::spawn_blocking(move || drop(guard)).await;
        }
        result.map(|_| stats)
    }
}
