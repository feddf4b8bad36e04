//! Test capture of finished spans: in memory ([`SpanCapture`]) or over real OTLP gRPC
//! ([`OtlpReceiver`], which also receives metrics as [`CapturedMetric`]). Enabled by the
//! `testing` feature; never part of a release binary.
//!
//! Both give spans as [`CapturedSpan`], a plain value with hex ids and attributes, so tests read
//! the same whichever path the spans took.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::trace::Status;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue as ProtoKeyValue, any_value};
use opentelemetry_sdk::trace::SpanData;
use tokio::sync::{Notify, oneshot};

use crate::record::{Recorder, SpanRecord, SpanSink};
use crate::span::{AttrValue, DEFAULT_MAX_VALUE_LEN, SpanKind, Tracer};

/// Status of a captured span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CapturedStatus {
    /// Not set.
    Unset,
    /// Explicitly OK.
    Ok,
    /// ERROR with its description.
    Error(String),
}

/// An event of a captured span.
#[derive(Clone, Debug, PartialEq)]
pub struct CapturedEvent {
    /// Event name.
    pub name: String,
    /// Event attributes.
    pub attributes: BTreeMap<String, AttrValue>,
}

/// A finished span as a test sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct CapturedSpan {
    /// `service.name` of the resource, when it came over OTLP.
    pub service_name: Option<String>,
    /// Resource attributes, when the span came over OTLP.
    pub resource: BTreeMap<String, AttrValue>,
    /// Instrumentation scope name.
    pub scope: String,
    /// Span name.
    pub name: String,
    /// Span kind.
    pub kind: SpanKind,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, if any.
    pub parent_span_id: Option<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, AttrValue>,
    /// Status.
    pub status: CapturedStatus,
    /// Events.
    pub events: Vec<CapturedEvent>,
    /// Links as (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl CapturedSpan {
    /// The attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }

    /// The string attribute `key`, if set and a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The integer attribute `key`, if set and an integer.
    pub fn i64_attr(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(AttrValue::I64(v)) => Some(*v),
            _ => None,
        }
    }

    /// The boolean attribute `key`, if set and a boolean.
    pub fn bool_attr(&self, key: &str) -> Option<bool> {
        match self.attributes.get(key) {
            Some(AttrValue::Bool(v)) => Some(*v),
            _ => None,
        }
    }
}

fn otel_value(v: &opentelemetry::Value) -> AttrValue {
    use opentelemetry::{Array, Value};
    match v {
        Value::Bool(b) => AttrValue::Bool(*b),
        Value::I64(i) => AttrValue::I64(*i),
        Value::F64(f) => AttrValue::F64(*f),
        Value::String(s) => AttrValue::Str(s.as_str().to_owned().into()),
        Value::Array(Array::String(list)) => {
            AttrValue::StrList(list.iter().map(|s| s.as_str().to_owned()).collect())
        }
        other => AttrValue::Str(other.to_string().into()),
    }
}

fn from_span_data(span: &SpanData) -> CapturedSpan {
    use opentelemetry::trace::SpanKind as K;
    let kind = match span.span_kind {
        K::Server => SpanKind::Server,
        K::Client => SpanKind::Client,
        K::Producer => SpanKind::Producer,
        K::Consumer => SpanKind::Consumer,
        K::Internal => SpanKind::Internal,
    };
    let parent = span.parent_span_id;
    CapturedSpan {
        service_name: None,
        resource: BTreeMap::new(),
        scope: span.instrumentation_scope.name().to_owned(),
        name: span.name.to_string(),
        kind,
        trace_id: span.span_context.trace_id().to_string(),
        span_id: span.span_context.span_id().to_string(),
        parent_span_id: (parent != opentelemetry::trace::SpanId::INVALID)
            .then(|| parent.to_string()),
        attributes: span
            .attributes
            .iter()
            .map(|kv| (kv.key.to_string(), otel_value(&kv.value)))
            .collect(),
        status: match &span.status {
            Status::Unset => CapturedStatus::Unset,
            Status::Ok => CapturedStatus::Ok,
            Status::Error { description } => CapturedStatus::Error(description.to_string()),
        },
        events: span
            .events
            .iter()
            .map(|e| CapturedEvent {
                name: e.name.to_string(),
                attributes: e
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), otel_value(&kv.value)))
                    .collect(),
            })
            .collect(),
        links: span
            .links
            .iter()
            .map(|l| {
                (
                    l.span_context.trace_id().to_string(),
                    l.span_context.span_id().to_string(),
                )
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Default)]
struct CaptureSink {
    spans: Arc<Mutex<Vec<CapturedSpan>>>,
}

impl SpanSink for CaptureSink {
    fn on_end(&self, span: SpanRecord) {
        let span = from_span_data(&span.into_span_data());
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(span);
    }
}

/// Records every finished span in memory, synchronously: a span is visible as soon as it ends.
#[derive(Debug, Clone)]
pub struct SpanCapture {
    recorder: Recorder,
    spans: Arc<Mutex<Vec<CapturedSpan>>>,
}

impl Default for SpanCapture {
    fn default() -> Self {
        Self::new()
    }
}

impl SpanCapture {
    /// A capture with an always-on sampler.
    pub fn new() -> Self {
        Self::with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
    }

    /// A capture whose sampler follows the parent's decision and, for new traces, samples
    /// only when `sample_new_traces` is true (as `parentbased_always_on` / `_off`).
    pub fn parent_based(sample_new_traces: bool) -> Self {
        use opentelemetry_sdk::trace::Sampler;
        let root = if sample_new_traces {
            Sampler::AlwaysOn
        } else {
            Sampler::AlwaysOff
        };
        Self::with_sampler(Sampler::ParentBased(Box::new(root)))
    }

    fn with_sampler(sampler: opentelemetry_sdk::trace::Sampler) -> Self {
        let sink = CaptureSink::default();
        let spans = sink.spans.clone();
        let recorder = Recorder::builder(sampler).with_sink(sink).build();
        SpanCapture { recorder, spans }
    }

    /// A tracer for `scope` whose spans land in this capture.
    pub fn tracer(&self, scope: &'static str) -> Tracer {
        Tracer::new(&self.recorder, scope, DEFAULT_MAX_VALUE_LEN)
    }

    /// Every span finished so far, in the order they ended.
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The finished spans named `name`.
    pub fn named(&self, name: &str) -> Vec<CapturedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }
}

/// How an [`OtlpReceiver`] answers export requests, to play a healthy or a broken collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverMode {
    /// Record the spans and answer OK.
    Accept,
    /// Answer `UNAVAILABLE` without recording.
    Unavailable,
    /// Never answer.
    Hang,
}

/// The value of one data point of a captured metric.
#[derive(Clone, Debug, PartialEq)]
pub enum PointValue {
    /// A sum (counter or up-down counter).
    Sum {
        /// The value (integers as `f64`).
        value: f64,
        /// Whether it only grows.
        monotonic: bool,
    },
    /// A gauge.
    Gauge(f64),
    /// An explicit-bucket histogram.
    Histogram {
        /// Measurements.
        count: u64,
        /// Their sum.
        sum: f64,
        /// Bucket boundaries.
        bounds: Vec<f64>,
        /// Counts per bucket (one more than the boundaries).
        bucket_counts: Vec<u64>,
        /// Trace ids of the exemplars, if any.
        exemplar_trace_ids: Vec<String>,
    },
}

/// One data point of a captured metric.
#[derive(Clone, Debug, PartialEq)]
pub struct CapturedPoint {
    /// Attributes.
    pub attributes: BTreeMap<String, AttrValue>,
    /// Value.
    pub value: PointValue,
}

impl CapturedPoint {
    /// The string attribute `key`, if set and a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The sum or gauge value; for a histogram, its count.
    pub fn number(&self) -> f64 {
        match &self.value {
            PointValue::Sum { value, .. } | PointValue::Gauge(value) => *value,
            PointValue::Histogram { count, .. } => *count as f64,
        }
    }

    /// The histogram's sum (0 for other kinds).
    pub fn sum(&self) -> f64 {
        match &self.value {
            PointValue::Histogram { sum, .. } => *sum,
            _ => 0.0,
        }
    }
}

/// One metric of one export request, as a test sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct CapturedMetric {
    /// `service.name` of the resource.
    pub service_name: Option<String>,
    /// Instrumentation scope name.
    pub scope: String,
    /// Metric name.
    pub name: String,
    /// Unit.
    pub unit: String,
    /// Data points.
    pub points: Vec<CapturedPoint>,
}

impl CapturedMetric {
    /// The points whose attributes include every `(key, value)` of `attrs` (string values).
    pub fn points_with(&self, attrs: &[(&str, &str)]) -> Vec<&CapturedPoint> {
        self.points
            .iter()
            .filter(|p| attrs.iter().all(|(k, v)| p.str_attr(k) == Some(*v)))
            .collect()
    }
}

fn proto_number(
    v: &Option<opentelemetry_proto::tonic::metrics::v1::number_data_point::Value>,
) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match v {
        Some(Value::AsDouble(d)) => *d,
        Some(Value::AsInt(i)) => *i as f64,
        None => 0.0,
    }
}

/// Turns one OTLP metrics export request into captured metrics.
pub fn metrics_from_request(req: &ExportMetricsServiceRequest) -> Vec<CapturedMetric> {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let mut out = Vec::new();
    for rm in &req.resource_metrics {
        let (_, service_name) = resource_of(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            let scope = scope_name(sm.scope.as_ref());
            for m in &sm.metrics {
                let points = match &m.data {
                    Some(Data::Sum(sum)) => sum
                        .data_points
                        .iter()
                        .map(|p| CapturedPoint {
                            attributes: proto_attrs(&p.attributes),
                            value: PointValue::Sum {
                                value: proto_number(&p.value),
                                monotonic: sum.is_monotonic,
                            },
                        })
                        .collect(),
                    Some(Data::Gauge(g)) => g
                        .data_points
                        .iter()
                        .map(|p| CapturedPoint {
                            attributes: proto_attrs(&p.attributes),
                            value: PointValue::Gauge(proto_number(&p.value)),
                        })
                        .collect(),
                    Some(Data::Histogram(h)) => h
                        .data_points
                        .iter()
                        .map(|p| CapturedPoint {
                            attributes: proto_attrs(&p.attributes),
                            value: PointValue::Histogram {
                                count: p.count,
                                sum: p.sum.unwrap_or_default(),
                                bounds: p.explicit_bounds.clone(),
                                bucket_counts: p.bucket_counts.clone(),
                                exemplar_trace_ids: p
                                    .exemplars
                                    .iter()
                                    .map(|e| hex(&e.trace_id))
                                    .collect(),
                            },
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                out.push(CapturedMetric {
                    service_name: service_name.clone(),
                    scope: scope.clone(),
                    name: m.name.clone(),
                    unit: m.unit.clone(),
                    points,
                });
            }
        }
    }
    out
}

#[derive(Debug)]
struct ReceiverState {
    spans: Mutex<Vec<CapturedSpan>>,
    metrics: Mutex<Vec<CapturedMetric>>,
    mode: Mutex<ReceiverMode>,
    requests: std::sync::atomic::AtomicU64,
    /// The `grpc-encoding` of each request (`None`: uncompressed).
    encodings: Mutex<Vec<Option<String>>>,
    changed: Notify,
}

#[derive(Debug, Clone)]
struct ReceiverService(Arc<ReceiverState>);

fn proto_value(v: Option<&AnyValue>) -> AttrValue {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone().into()),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
        Some(any_value::Value::IntValue(i)) => AttrValue::I64(*i),
        Some(any_value::Value::DoubleValue(f)) => AttrValue::F64(*f),
        Some(any_value::Value::ArrayValue(a)) => AttrValue::StrList(
            a.values
                .iter()
                .map(|v| match proto_value(Some(v)) {
                    AttrValue::Str(s) => s.into_owned(),
                    other => format!("{other:?}"),
                })
                .collect(),
        ),
        Some(other) => AttrValue::Str(format!("{other:?}").into()),
        None => AttrValue::Str("".into()),
    }
}

/// The attributes of an export's resource and its `service.name`, shared by spans and metrics.
fn resource_of(
    resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>,
) -> (BTreeMap<String, AttrValue>, Option<String>) {
    let attributes = resource
        .map(|r| proto_attrs(&r.attributes))
        .unwrap_or_default();
    let service_name = match attributes.get("service.name") {
        Some(AttrValue::Str(s)) => Some(s.to_string()),
        _ => None,
    };
    (attributes, service_name)
}

/// The name of an export's instrumentation scope (empty when it has none).
fn scope_name(
    scope: Option<&opentelemetry_proto::tonic::common::v1::InstrumentationScope>,
) -> String {
    scope.map(|s| s.name.clone()).unwrap_or_default()
}

fn proto_attrs(attrs: &[ProtoKeyValue]) -> BTreeMap<String, AttrValue> {
    attrs
        .iter()
        .map(|kv| (kv.key.clone(), proto_value(kv.value.as_ref())))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns one OTLP export request into captured spans.
pub fn spans_from_request(req: &ExportTraceServiceRequest) -> Vec<CapturedSpan> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let (resource, service_name) = resource_of(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            let scope = scope_name(ss.scope.as_ref());
            for span in &ss.spans {
                let kind = match span.kind {
                    2 => SpanKind::Server,
                    3 => SpanKind::Client,
                    4 => SpanKind::Producer,
                    5 => SpanKind::Consumer,
                    _ => SpanKind::Internal,
                };
                let status = match &span.status {
                    Some(s) if s.code == 2 => CapturedStatus::Error(s.message.clone()),
                    Some(s) if s.code == 1 => CapturedStatus::Ok,
                    _ => CapturedStatus::Unset,
                };
                out.push(CapturedSpan {
                    service_name: service_name.clone(),
                    resource: resource.clone(),
                    scope: scope.clone(),
                    name: span.name.clone(),
                    kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    attributes: proto_attrs(&span.attributes),
                    status,
                    events: span
                        .events
                        .iter()
                        .map(|e| CapturedEvent {
                            name: e.name.clone(),
                            attributes: proto_attrs(&e.attributes),
                        })
                        .collect(),
                    links: span
                        .links
                        .iter()
                        .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                        .collect(),
                });
            }
        }
    }
    out
}

#[tonic::async_trait]
impl TraceService for ReceiverService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let encoding = request
            .metadata()
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.0
            .encodings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(encoding);
        let mode = *self.0.mode.lock().unwrap_or_else(|e| e.into_inner());
        match mode {
            ReceiverMode::Accept => {
                let spans = spans_from_request(request.get_ref());
                self.0
                    .spans
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(spans);
                self.0.changed.notify_waiters();
                Ok(tonic::Response::new(ExportTraceServiceResponse {
                    partial_success: None,
                }))
            }
            ReceiverMode::Unavailable => Err(tonic::Status::unavailable("receiver is down")),
            ReceiverMode::Hang => std::future::pending().await,
        }
    }
}

#[tonic::async_trait]
impl MetricsService for ReceiverService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mode = *self.0.mode.lock().unwrap_or_else(|e| e.into_inner());
        match mode {
            ReceiverMode::Accept => {
                let metrics = metrics_from_request(request.get_ref());
                self.0
                    .metrics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(metrics);
                self.0.changed.notify_waiters();
                Ok(tonic::Response::new(ExportMetricsServiceResponse {
                    partial_success: None,
                }))
            }
            ReceiverMode::Unavailable => Err(tonic::Status::unavailable("receiver is down")),
            ReceiverMode::Hang => std::future::pending().await,
        }
    }
}

/// An OTLP/gRPC trace and metrics receiver on `127.0.0.1` with an ephemeral port, in the test process.
/// Stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: SocketAddr,
    tls: bool,
    state: Arc<ReceiverState>,
    _stop: oneshot::Sender<()>,
}

impl OtlpReceiver {
    /// Binds and starts serving; accepts gzip-compressed requests.
    ///
    /// # Errors
    /// When the port cannot be bound.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0".parse().map_err(std::io::Error::other)?).await
    }

    /// Like [`OtlpReceiver::start`] on a given address (e.g. a collector that comes back on the
    /// port it had).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Self> {
        Self::serve(addr, None).await
    }

    /// Like [`OtlpReceiver::start`] over TLS (and mutual TLS when `tls` names a client CA).
    ///
    /// # Errors
    /// When the port cannot be bound or tonic refuses the TLS settings.
    pub async fn start_tls(tls: crate::http_receiver::ServerTls) -> std::io::Result<Self> {
        let addr = "127.0.0.1:0".parse().map_err(std::io::Error::other)?;
        Self::serve(addr, Some(tls)).await
    }

    async fn serve(
        addr: SocketAddr,
        tls: Option<crate::http_receiver::ServerTls>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ReceiverState {
            spans: Mutex::new(Vec::new()),
            metrics: Mutex::new(Vec::new()),
            mode: Mutex::new(ReceiverMode::Accept),
            requests: 0.into(),
            encodings: Mutex::new(Vec::new()),
            changed: Notify::new(),
        });
        let service = TraceServiceServer::new(ReceiverService(state.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(64 * 1024 * 1024);
        let metrics = MetricsServiceServer::new(ReceiverService(state.clone()))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_decoding_message_size(64 * 1024 * 1024);
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut server = tonic::transport::Server::builder();
        let is_tls = tls.is_some();
        if let Some(tls) = tls {
            crate::tls::install_crypto_provider();
            use tonic::transport::{Certificate, Identity, ServerTlsConfig};
            let mut config =
                ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
            if let Some(ca) = &tls.client_ca_pem {
                config = config.client_ca_root(Certificate::from_pem(ca));
            }
            server = server.tls_config(config).map_err(std::io::Error::other)?;
        }
        tokio::spawn(async move {
            let _ = server
                .add_service(service)
                .add_service(metrics)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(OtlpReceiver {
            addr,
            tls: is_tls,
            state,
            _stop: stop,
        })
    }

    /// The endpoint to configure an exporter with, e.g. `http://127.0.0.1:43170`
    /// (`https://…` over TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The `grpc-encoding` of every request so far (`None`: sent uncompressed).
    pub fn encodings(&self) -> Vec<Option<String>> {
        self.state
            .encodings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes how export requests are answered from now on.
    pub fn set_mode(&self, mode: ReceiverMode) {
        *self.state.mode.lock().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    /// Export requests received so far, whatever the answer.
    pub fn requests(&self) -> u64 {
        self.state
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<CapturedSpan> {
        self.state
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `done` holds for the received spans, or `timeout` passes; returns the spans
    /// either way so the caller's assertion shows what arrived.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[CapturedSpan]) -> bool,
    ) -> Vec<CapturedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.changed.notified();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.spans();
            }
        }
    }

    /// Every metric received so far, in the order received (cumulative figures: the last of a
    /// name is the latest).
    pub fn metrics(&self) -> Vec<CapturedMetric> {
        self.state
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest received metric called `name`, if any.
    pub fn latest_metric(&self, name: &str) -> Option<CapturedMetric> {
        self.metrics().into_iter().rev().find(|m| m.name == name)
    }

    /// Waits until `done` holds for the received metrics, or `timeout` passes; returns the
    /// metrics either way.
    pub async fn wait_for_metrics(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&[CapturedMetric]) -> bool,
    ) -> Vec<CapturedMetric> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.state.changed.notified();
            let metrics = self.metrics();
            if done(&metrics) {
                return metrics;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.metrics();
            }
        }
    }
}

/// A stand-in Sentry server on loopback: it keeps every envelope posted to it and answers `{}`.
/// Point `SENTRY_DSN` at [`FakeSentry::dsn`].
pub struct FakeSentry {
    dsn: String,
    envelopes: Arc<Mutex<Vec<String>>>,
}

impl FakeSentry {
    /// Starts the server on an ephemeral port; it runs until the runtime stops.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> FakeSentry {
        let envelopes: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = envelopes.clone();
        let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
                "{}"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the stand-in Sentry server");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeSentry {
            dsn: format!("http://0123456789abcdef@{addr}/1"),
            envelopes,
        }
    }

    /// The DSN that sends events here.
    pub fn dsn(&self) -> &str {
        &self.dsn
    }

    /// Every envelope received so far, as text.
    pub fn envelopes(&self) -> Vec<String> {
        self.envelopes.lock().unwrap().clone()
    }
}
