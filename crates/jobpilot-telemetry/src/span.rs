//! Spans as the rest of jobpilot sees them: a [`Tracer`] handle, a parent [`TraceCx`] and a
//! [`SpanGuard`] that ends the span when it goes out of scope.
//!
//! Spans are made with the OpenTelemetry API directly (no `tracing` bridge): it costs a quarter as
//! much per span. Parents are explicit values, never ambient state, so a span's place in the trace
//! is visible in the code that creates it.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{
    Link, SpanKind as OtelSpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::names;
use crate::propagation::Propagators;

/// Attributes a span usually gets after it starts, reserved when it starts.
const SET_LATER: usize = 4;

/// Default maximum length, in bytes, of a string attribute value.
pub const DEFAULT_MAX_VALUE_LEN: usize = 4096;

/// The role of a span in a trace, as in OpenTelemetry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// Handles an inbound request.
    Server,
    /// Makes an outbound request.
    Client,
    /// Sends a message to a queue.
    Producer,
    /// Processes a message from a queue.
    Consumer,
    /// Work inside a process.
    Internal,
}

impl From<SpanKind> for OtelSpanKind {
    fn from(kind: SpanKind) -> Self {
        match kind {
            SpanKind::Server => OtelSpanKind::Server,
            SpanKind::Client => OtelSpanKind::Client,
            SpanKind::Producer => OtelSpanKind::Producer,
            SpanKind::Consumer => OtelSpanKind::Consumer,
            SpanKind::Internal => OtelSpanKind::Internal,
        }
    }
}

/// The value of a span attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// A string; truncated to the tracer's maximum value length.
    Str(Cow<'static, str>),
    /// A string that many spans carry (a run's id, its user): each span holds a reference,
    /// not a copy. Truncated like a string.
    Shared(Arc<str>),
    /// A signed integer.
    I64(i64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A list of strings; each truncated like a string.
    StrList(Vec<String>),
}

impl From<&'static str> for AttrValue {
    fn from(v: &'static str) -> Self {
        AttrValue::Str(Cow::Borrowed(v))
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(Cow::Owned(v))
    }
}
impl From<Cow<'static, str>> for AttrValue {
    fn from(v: Cow<'static, str>) -> Self {
        AttrValue::Str(v)
    }
}
impl From<Arc<str>> for AttrValue {
    fn from(v: Arc<str>) -> Self {
        AttrValue::Shared(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::I64(v)
    }
}
impl From<u32> for AttrValue {
    fn from(v: u32) -> Self {
        AttrValue::I64(i64::from(v))
    }
}
impl From<u16> for AttrValue {
    fn from(v: u16) -> Self {
        AttrValue::I64(i64::from(v))
    }
}
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<usize> for AttrValue {
    fn from(v: usize) -> Self {
        AttrValue::I64(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<f64> for AttrValue {
    fn from(v: f64) -> Self {
        AttrValue::F64(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}
impl From<Vec<String>> for AttrValue {
    fn from(v: Vec<String>) -> Self {
        AttrValue::StrList(v)
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub(crate) fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn truncate_cow(s: Cow<'static, str>, max: usize) -> Cow<'static, str> {
    if s.len() <= max {
        return s;
    }
    Cow::Owned(truncate_str(&s, max).to_owned())
}

impl AttrValue {
    fn into_otel(self, max_len: usize) -> Value {
        match self {
            AttrValue::Str(s) => Value::String(StringValue::from(truncate_cow(s, max_len))),
            AttrValue::Shared(s) if s.len() <= max_len => Value::String(StringValue::from(s)),
            AttrValue::Shared(s) => {
                Value::String(StringValue::from(truncate_str(&s, max_len).to_owned()))
            }
            AttrValue::I64(v) => Value::I64(v),
            AttrValue::F64(v) => Value::F64(v),
            AttrValue::Bool(v) => Value::Bool(v),
            AttrValue::StrList(list) => Value::Array(Array::String(
                list.into_iter()
                    .map(|s| StringValue::from(truncate_cow(Cow::Owned(s), max_len)))
                    .collect(),
            )),
        }
    }
}

/// A position in a trace: the parent of the next span. `TraceCx::root()` starts a new trace.
///
/// It is plain data: clone it into tasks, store it, inject it into headers or task messages with
/// [`crate::propagation`].
#[derive(Clone, Debug, Default)]
pub struct TraceCx(pub(crate) Context);

impl TraceCx {
    /// No parent: a span started under it begins a new trace.
    pub fn root() -> Self {
        TraceCx(Context::new())
    }

    /// The same context without any baggage (the span context is kept).
    pub fn without_baggage(&self) -> Self {
        use opentelemetry::baggage::BaggageExt as _;
        TraceCx(self.0.with_cleared_baggage())
    }

    /// The trace id as 32 lowercase hex digits, if this context holds a valid span context.
    pub fn trace_id(&self) -> Option<String> {
        let span = self.0.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| crate::ids::trace_hex(sc.trace_id()).to_string())
    }

    /// The span id as 16 lowercase hex digits, if this context holds a valid span context.
    pub fn span_id(&self) -> Option<String> {
        let span = self.0.span();
        let sc = span.span_context();
        sc.is_valid()
            .then(|| crate::ids::span_hex(sc.span_id()).to_string())
    }

    /// Whether this context holds a valid (local or remote) span context.
    pub fn is_valid(&self) -> bool {
        self.0.span().span_context().is_valid()
    }

    /// Whether the span context came from another process.
    pub fn is_remote(&self) -> bool {
        self.0.span().span_context().is_remote()
    }

    /// Runs `fut` with this context as the current one, so log lines written inside it carry
    /// its `trace_id` and `span_id`.
    pub fn instrument<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> {
        fut.with_context(self.0.clone())
    }

    /// Makes this context the current one until the guard is dropped (for synchronous code).
    pub fn enter(&self) -> opentelemetry::ContextGuard {
        self.0.clone().attach()
    }
}

/// A handle that starts spans under one instrumentation scope. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Tracer {
    inner: SdkTracer,
    max_value_len: usize,
    /// False when nothing can be recorded (telemetry off): attributes and links are then not
    /// even converted, which halves the cost of a span on that path.
    recording: bool,
    /// How trace context crosses process boundaries for the code that holds this tracer.
    propagators: Propagators,
}

impl Tracer {
    /// A tracer of `provider` for `scope`, cutting string values at `max_value_len` bytes.
    pub fn new(provider: &SdkTracerProvider, scope: &'static str, max_value_len: usize) -> Self {
        Tracer {
            inner: provider.tracer(scope),
            max_value_len,
            recording: true,
            propagators: Propagators::W3C,
        }
    }

    /// Like [`Tracer::new`] for a provider that records nothing: spans still get ids (a trace
    /// id to quote), but their attributes and links are skipped.
    pub fn non_recording(provider: &SdkTracerProvider, scope: &'static str) -> Self {
        Tracer {
            inner: provider.tracer(scope),
            max_value_len: DEFAULT_MAX_VALUE_LEN,
            recording: false,
            propagators: Propagators::W3C,
        }
    }

    /// A tracer whose spans go nowhere (for code paths and tests that do not look at telemetry).
    pub fn noop() -> Self {
        let provider = SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff)
            .build();
        Tracer::non_recording(&provider, "noop")
    }

    /// A tracer whose spans record but are exported nowhere, sampled as their parent says: a
    /// new trace is always sampled, a child follows the `sampled` flag of its (local or remote)
    /// parent. For tools and tests that check what is propagated (e.g. the W3C Trace Context
    /// test harness server), where a span must carry the real flags but nobody reads it.
    pub fn always_on(scope: &'static str) -> Self {
        let provider = SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::AlwaysOn,
            )))
            .build();
        Tracer::new(&provider, scope, DEFAULT_MAX_VALUE_LEN)
    }

    /// The same tracer with other propagators (`OTEL_PROPAGATORS`).
    pub fn with_propagators(mut self, propagators: Propagators) -> Self {
        self.propagators = propagators;
        self
    }

    /// Whether spans of this tracer record attributes: false when telemetry is off, so that
    /// callers can skip computing attributes nobody will read. (A span sampled out by a
    /// recording tracer records nothing either; [`SpanGuard::is_recording`] tells that.)
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// The propagators through which code holding this tracer reads and writes trace context
    /// (inbound requests, task messages, outbound calls, responses).
    pub fn propagators(&self) -> Propagators {
        self.propagators
    }

    /// Starts a span named `name` under `parent` with the given attributes.
    pub fn start(
        &self,
        parent: &TraceCx,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attrs: Vec<(&'static str, AttrValue)>,
    ) -> SpanGuard {
        self.start_linked(parent, name, kind, attrs, &[])
    }

    /// Like [`Tracer::start`], with span links to the span contexts in `links`.
    pub fn start_linked(
        &self,
        parent: &TraceCx,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attrs: Vec<(&'static str, AttrValue)>,
        links: &[TraceCx],
    ) -> SpanGuard {
        let max = self.max_value_len;
        if !self.recording {
            let span = self
                .inner
                .span_builder(name)
                .with_kind(kind.into())
                .start_with_context(&self.inner, &parent.0);
            return SpanGuard {
                cx: crate::propagation::mark_random(&parent.0, parent.0.with_span(span)),
                started: Instant::now(),
                max_value_len: max,
            };
        }
        // Room for `user.id` and for the attributes usually set after the start (a request's
        // route, user and status; a step's outcome and duration): growing the span's vector
        // later reallocates and copies it, once per span.
        let mut attributes: Vec<KeyValue> = Vec::with_capacity(attrs.len() + 1 + SET_LATER);
        for (k, v) in attrs {
            let kv = KeyValue::new(k, v.into_otel(max));
            if k == names::USER_ID {
                attributes.push(KeyValue::new(names::USER_DOT_ID, kv.value.clone()));
            }
            attributes.push(kv);
        }
        let mut builder = self
            .inner
            .span_builder(name)
            .with_kind(kind.into())
            .with_attributes(attributes);
        let links: Vec<Link> = links
            .iter()
            .filter(|l| l.is_valid())
            .map(|l| Link::with_context(l.0.span().span_context().clone()))
            .collect();
        if !links.is_empty() {
            builder = builder.with_links(links);
        }
        let span = builder.start_with_context(&self.inner, &parent.0);
        SpanGuard {
            cx: crate::propagation::mark_random(&parent.0, parent.0.with_span(span)),
            started: Instant::now(),
            max_value_len: max,
        }
    }
}

/// A started span. Ends when [`SpanGuard::finish`] or [`SpanGuard::end`] is called, or when
/// dropped.
#[derive(Debug)]
pub struct SpanGuard {
    cx: Context,
    started: Instant,
    max_value_len: usize,
}

impl SpanGuard {
    /// The context of this span, to start children under it or to propagate it.
    pub fn cx(&self) -> TraceCx {
        TraceCx(self.cx.clone())
    }

    /// The trace id of this span (32 hex digits).
    pub fn trace_id(&self) -> String {
        crate::ids::trace_hex(self.cx.span().span_context().trace_id()).to_string()
    }

    /// Whether the span records anything (false when sampled out or telemetry is off).
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// Sets an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<AttrValue>) {
        let span = self.cx.span();
        if span.is_recording() {
            let value = value.into().into_otel(self.max_value_len);
            if key == names::USER_ID {
                span.set_attribute(KeyValue::new(names::USER_DOT_ID, value.clone()));
            }
            span.set_attribute(KeyValue::new(key, value));
        }
    }

    /// Renames the span (e.g. once the route of a request is known).
    pub fn rename(&self, name: impl Into<Cow<'static, str>>) {
        self.cx.span().update_name(name);
    }

    /// Marks the span failed: status ERROR with `message`, `error.type`, and an exception event.
    pub fn fail(&self, error_type: &str, message: &str) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        let message = truncate_str(message, self.max_value_len).to_owned();
        let error_type = truncate_str(error_type, self.max_value_len).to_owned();
        span.set_attribute(KeyValue::new(names::ERROR_TYPE, error_type.clone()));
        span.add_event(
            names::EXCEPTION_EVENT,
            vec![
                KeyValue::new(names::EXCEPTION_TYPE, error_type),
                KeyValue::new(names::EXCEPTION_MESSAGE, message.clone()),
            ],
        );
        span.set_status(Status::error(message));
    }

    /// Milliseconds since the span started.
    pub fn elapsed_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    /// Sets `success` and `duration_ms`, then ends the span. Call [`SpanGuard::fail`] first
    /// when `success` is false.
    pub fn finish(self, success: bool) {
        self.set(names::SUCCESS, success);
        self.set(names::DURATION_MS, self.elapsed_ms());
        self.end();
    }

    /// Ends the span.
    pub fn end(self) {
        drop(self);
    }
}

impl Drop for SpanGuard {
    fn drop(&mut self) {
        // Ending twice is a no-op in the SDK, so an explicit end followed by drop is fine.
        self.cx.span().end();
    }
}
