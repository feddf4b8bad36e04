//! Spans as the rest of jobpilot sees them: a [`Tracer`] handle, a parent [`TraceCx`] and a
//! [`SpanGuard`] that ends the span when it goes out of scope.
//!
//! Spans are recorded as plain [`SpanRecord`]s (see [`crate::record`] for why not the SDK's
//! span), with no `tracing` bridge. Parents are explicit values, never ambient state, so a
//! span's place in the trace is visible in the code that creates it.

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind as OtelSpanKind, Status, TraceContextExt as _,
    TraceFlags,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{IdGenerator as _, Sampler, SamplingDecision, ShouldSample as _};

use crate::names;
use crate::propagation::{Propagators, RANDOM_FLAG};
use crate::record::{Recorder, RecorderInner, SpanRecord};

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

impl AttrValue {
    /// Cuts its strings to `max` bytes where they are longer, in place: a borrowed string is
    /// sliced, an owned one shortened, and only a shared one that is too long is copied.
    pub(crate) fn truncate(&mut self, max: usize) {
        match self {
            AttrValue::Str(Cow::Borrowed(s)) => *s = truncate_str(s, max),
            AttrValue::Str(Cow::Owned(s)) => {
                let end = truncate_str(s, max).len();
                s.truncate(end);
            }
            AttrValue::Shared(s) if s.len() > max => {
                *self = AttrValue::Str(Cow::Owned(truncate_str(s, max).to_owned()));
            }
            AttrValue::StrList(list) => {
                for s in list {
                    let end = truncate_str(s, max).len();
                    s.truncate(end);
                }
            }
            _ => {}
        }
    }

    /// The same value as OpenTelemetry's.
    pub(crate) fn into_otel(self) -> Value {
        match self {
            AttrValue::Str(s) => Value::String(StringValue::from(s)),
            AttrValue::Shared(s) => Value::String(StringValue::from(s)),
            AttrValue::I64(v) => Value::I64(v),
            AttrValue::F64(v) => Value::F64(v),
            AttrValue::Bool(v) => Value::Bool(v),
            AttrValue::StrList(list) => Value::Array(Array::String(
                list.into_iter().map(StringValue::from).collect(),
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
    recorder: Recorder,
    scope: &'static str,
    max_value_len: usize,
    /// False when nothing can be recorded (telemetry off): spans then only get ids, and
    /// callers may skip computing their attributes.
    recording: bool,
    /// How trace context crosses process boundaries for the code that holds this tracer.
    propagators: Propagators,
}

impl Tracer {
    /// A tracer of `recorder` for `scope`, cutting string values at `max_value_len` bytes.
    pub fn new(recorder: &Recorder, scope: &'static str, max_value_len: usize) -> Self {
        Tracer {
            recorder: recorder.clone(),
            scope,
            max_value_len,
            recording: true,
            propagators: Propagators::W3C,
        }
    }

    /// Like [`Tracer::new`] for a recorder that records nothing: spans still get ids (a trace
    /// id to quote), but no record.
    pub fn non_recording(recorder: &Recorder, scope: &'static str) -> Self {
        Tracer {
            recording: false,
            ..Tracer::new(recorder, scope, DEFAULT_MAX_VALUE_LEN)
        }
    }

    /// A tracer whose spans go nowhere (for code paths and tests that do not look at telemetry).
    pub fn noop() -> Self {
        Tracer::non_recording(&Recorder::builder(Sampler::AlwaysOff).build(), "noop")
    }

    /// A tracer whose spans record but are exported nowhere, sampled as their parent says: a
    /// new trace is always sampled, a child follows the `sampled` flag of its (local or remote)
    /// parent. For tools and tests that check what is propagated (e.g. the W3C Trace Context
    /// test harness server), where a span must carry the real flags but nobody reads it.
    pub fn always_on(scope: &'static str) -> Self {
        let recorder = Recorder::builder(Sampler::ParentBased(Box::new(Sampler::AlwaysOn))).build();
        Tracer::new(&recorder, scope, DEFAULT_MAX_VALUE_LEN)
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
    ///
    /// Ids, sampling and limits are as the OpenTelemetry SDK makes them: a child keeps its
    /// parent's trace id, a root gets a random one; the sampler decides; a sampled-out span
    /// gets ids and flags but records nothing.
    pub fn start_linked(
        &self,
        parent: &TraceCx,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        attrs: Vec<(&'static str, AttrValue)>,
        links: &[TraceCx],
    ) -> SpanGuard {
        let name = name.into();
        let core = &self.recorder.inner;
        let parent_span = parent.0.span();
        let psc = parent_span.span_context();
        let (trace_id, parent_span_id, parent_is_remote, parent_flags) = if psc.is_valid() {
            (
                psc.trace_id(),
                psc.span_id(),
                psc.is_remote(),
                psc.trace_flags(),
            )
        } else {
            (
                core.ids.new_trace_id(),
                SpanId::INVALID,
                false,
                TraceFlags::default(),
            )
        };
        let sampling =
            core.sampler
                .should_sample(Some(&parent.0), trace_id, &name, &kind.into(), &[], &[]);
        // W3C Level 2's `random` flag: a trace started here has a random id; a parent's
        // trace is random if the parent says so. Kept when the span is sampled out.
        let random = TraceFlags::new(if psc.is_valid() {
            parent_flags.to_u8() & RANDOM_FLAG
        } else {
            RANDOM_FLAG
        });
        let (flags, record) = match sampling.decision {
            SamplingDecision::Drop => (random, false),
            SamplingDecision::RecordOnly => (parent_flags.with_sampled(false) | random, true),
            SamplingDecision::RecordAndSample => (parent_flags.with_sampled(true) | random, true),
        };
        let span_context = SpanContext::new(
            trace_id,
            core.ids.new_span_id(),
            flags,
            false,
            sampling.trace_state,
        );
        let started = Instant::now();
        let open = (record && self.recording).then(|| {
            let limits = &core.limits;
            let max = self.max_value_len;
            // The caller's vector becomes the span's. Room for `user.id` and for the
            // attributes usually set after the start (a request's route, user and status; a
            // step's outcome and duration): growing it later would reallocate it again.
            let mut attributes = attrs;
            let mut user = None;
            for (k, v) in &mut attributes {
                v.truncate(max);
                if *k == names::USER_ID {
                    user = Some(v.clone());
                }
            }
            attributes.reserve(usize::from(user.is_some()) + SET_LATER);
            if let Some(user) = user {
                attributes.push((names::USER_DOT_ID, user));
            }
            let max_attributes = limits.max_attributes_per_span as usize;
            let dropped_attributes = attributes.len().saturating_sub(max_attributes) as u32;
            attributes.truncate(max_attributes);
            let mut links: Vec<Link> = links
                .iter()
                .filter(|l| l.is_valid())
                .map(|l| Link::with_context(l.0.span().span_context().clone()))
                .collect();
            let max_links = limits.max_links_per_span as usize;
            let dropped_links = links.len().saturating_sub(max_links) as u32;
            links.truncate(max_links);
            OpenSpan {
                record: Mutex::new(SpanRecord {
                    scope: self.scope,
                    name,
                    kind,
                    span_context: span_context.clone(),
                    parent_span_id,
                    parent_is_remote,
                    start_time: SystemTime::now(),
                    end_time: SystemTime::UNIX_EPOCH,
                    attributes,
                    dropped_attributes,
                    events: Vec::new(),
                    dropped_events: 0,
                    links,
                    dropped_links,
                    status: Status::Unset,
                }),
                recorder: core.clone(),
            }
        });
        SpanGuard {
            cx: parent.0.with_remote_span_context(span_context),
            started,
            max_value_len: self.max_value_len,
            open,
        }
    }
}

/// The record of a span that records, while it runs.
#[derive(Debug)]
struct OpenSpan {
    record: Mutex<SpanRecord>,
    recorder: Arc<RecorderInner>,
}

impl OpenSpan {
    fn lock(&self) -> MutexGuard<'_, SpanRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A started span. Ends when [`SpanGuard::finish`] or [`SpanGuard::end`] is called, or when
/// dropped.
#[derive(Debug)]
pub struct SpanGuard {
    cx: Context,
    started: Instant,
    max_value_len: usize,
    /// `None` when the span records nothing (sampled out, or telemetry off).
    open: Option<OpenSpan>,
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
        self.open.is_some()
    }

    /// Sets an attribute.
    pub fn set(&self, key: &'static str, value: impl Into<AttrValue>) {
        let Some(open) = &self.open else {
            return;
        };
        let mut value = value.into();
        value.truncate(self.max_value_len);
        let limits = &open.recorder.limits;
        let mut record = open.lock();
        if key == names::USER_ID {
            record.push_attribute(limits, names::USER_DOT_ID, value.clone());
        }
        record.push_attribute(limits, key, value);
    }

    /// Renames the span (e.g. once the route of a request is known).
    pub fn rename(&self, name: impl Into<Cow<'static, str>>) {
        if let Some(open) = &self.open {
            open.lock().name = name.into();
        }
    }

    /// Marks the span failed: status ERROR with `message`, `error.type`, and an exception event.
    pub fn fail(&self, error_type: &str, message: &str) {
        let Some(open) = &self.open else {
            return;
        };
        let message = truncate_str(message, self.max_value_len).to_owned();
        let error_type = truncate_str(error_type, self.max_value_len).to_owned();
        let limits = &open.recorder.limits;
        let event = Event::new(
            names::EXCEPTION_EVENT,
            SystemTime::now(),
            vec![
                KeyValue::new(names::EXCEPTION_TYPE, error_type.clone()),
                KeyValue::new(names::EXCEPTION_MESSAGE, message.clone()),
            ],
            0,
        );
        let mut record = open.lock();
        record.push_attribute(limits, names::ERROR_TYPE, error_type.into());
        record.push_event(limits, event);
        record.set_status(Status::error(message));
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
        if let Some(open) = self.open.take() {
            let mut record = open.record.into_inner().unwrap_or_else(|e| e.into_inner());
            // The end is the start plus the monotonic time since: a wall clock stepped back
            // meanwhile cannot give a span a negative duration.
            record.end_time = record.start_time + self.started.elapsed();
            open.recorder.finish(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_string_value_is_cut_on_a_character_boundary() {
        // "é" is two bytes: a limit of 3 falls inside the second one.
        let cut = |mut v: AttrValue| {
            v.truncate(3);
            v
        };
        assert_eq!(cut("ééé".into()), AttrValue::from("é"));
        assert_eq!(cut(String::from("ééé").into()), AttrValue::from("é"));
        assert_eq!(cut(Arc::<str>::from("ééé").into()), AttrValue::from("é"));
        assert_eq!(
            cut(vec![String::from("abcd"), String::from("ab")].into()),
            AttrValue::from(vec![String::from("abc"), String::from("ab")])
        );
        // What fits is left as it is, a shared value still shared.
        let shared = Arc::<str>::from("abc");
        assert_eq!(
            cut(shared.clone().into()),
            AttrValue::Shared(shared.clone())
        );
        assert_eq!(cut(1_i64.into()), AttrValue::I64(1));
    }
}
