//! What a span records, and where finished spans go: a [`SpanRecord`] per sampled span, owned
//! by its guard while it runs, handed to the [`SpanSink`]s of a [`Recorder`] when it ends.
//!
//! Why not the SDK's span: a callgrind profile of a traced request put the SDK's part at
//! ~3,500 instructions per span, more than encoding it. Starting a span built a `SpanBuilder`
//! and an SDK `Span` boxed into the context; each attribute was converted into an
//! OpenTelemetry `Value` and set through the context's locked span slot; ending moved the data
//! into a `SpanData` for the processor. None of it is needed to write the span out: here a
//! span is one plain record, its attributes kept as the values jobpilot made, and only the
//! span context goes into the [`opentelemetry::Context`] that propagation and logs read.
//!
//! What the SDK decided is kept by using its parts: the sampler ([`Sampler`], so
//! `OTEL_TRACES_SAMPLER` means what it meant), the random id generator, and [`SpanLimits`]
//! applied as the SDK applies them. Exporters that take the SDK's `SpanData` (OTLP over HTTP,
//! the console) get it from [`SpanRecord::into_span_data`]; the gRPC exporter encodes records
//! directly.

use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{Event, Link, SpanContext, SpanId, Status};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{
    RandomIdGenerator, Sampler, SpanData, SpanEvents, SpanLimits, SpanLinks,
};

use crate::span::{AttrValue, SpanKind};

/// A span as recorded: what the exporters write out.
#[derive(Clone, Debug, PartialEq)]
pub struct SpanRecord {
    /// The instrumentation scope of the tracer that started it.
    pub scope: &'static str,
    /// The span's name.
    pub name: Cow<'static, str>,
    /// Its kind.
    pub kind: SpanKind,
    /// Its ids, flags and trace state.
    pub span_context: SpanContext,
    /// The parent's span id; [`SpanId::INVALID`] for a root.
    pub parent_span_id: SpanId,
    /// Whether the parent came from another process.
    pub parent_is_remote: bool,
    /// When it started.
    pub start_time: SystemTime,
    /// When it ended.
    pub end_time: SystemTime,
    /// Attributes in the order they were set; string values already cut to the tracer's
    /// maximum length.
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// Attributes left out over the limit.
    pub dropped_attributes: u32,
    /// Events (an exception event per failure).
    pub events: Vec<Event>,
    /// Events left out over the limit.
    pub dropped_events: u32,
    /// Links to other spans.
    pub links: Vec<Link>,
    /// Links left out over the limit.
    pub dropped_links: u32,
    /// Its status.
    pub status: Status,
}

impl SpanRecord {
    /// Adds an attribute, or counts it dropped over `limits`.
    pub(crate) fn push_attribute(
        &mut self,
        limits: &SpanLimits,
        key: &'static str,
        value: AttrValue,
    ) {
        if self.attributes.len() < limits.max_attributes_per_span as usize {
            self.attributes.push((key, value));
        } else {
            self.dropped_attributes += 1;
        }
    }

    /// Adds an event, or counts it dropped over `limits`; its attributes are cut to the limit
    /// per event.
    pub(crate) fn push_event(&mut self, limits: &SpanLimits, mut event: Event) {
        if self.events.len() < limits.max_events_per_span as usize {
            let max = limits.max_attributes_per_event as usize;
            event.dropped_attributes_count = event.attributes.len().saturating_sub(max) as u32;
            event.attributes.truncate(max);
            self.events.push(event);
        } else {
            self.dropped_events += 1;
        }
    }

    /// Sets the status as the specification says: Unset changes nothing, Ok is final, a later
    /// error replaces an earlier one.
    pub(crate) fn set_status(&mut self, status: Status) {
        if !matches!(self.status, Status::Ok) && !matches!(status, Status::Unset) {
            self.status = status;
        }
    }

    /// The same span as the SDK's `SpanData`, for exporters that take it.
    pub fn into_span_data(self) -> SpanData {
        let mut events = SpanEvents::default();
        events.events = self.events;
        events.dropped_count = self.dropped_events;
        let mut links = SpanLinks::default();
        links.links = self.links;
        links.dropped_count = self.dropped_links;
        SpanData {
            span_context: self.span_context,
            parent_span_id: self.parent_span_id,
            parent_span_is_remote: self.parent_is_remote,
            span_kind: self.kind.into(),
            name: self.name,
            start_time: self.start_time,
            end_time: self.end_time,
            attributes: self
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, v.into_otel()))
                .collect(),
            dropped_attributes_count: self.dropped_attributes,
            events,
            links,
            status: self.status,
            instrumentation_scope: InstrumentationScope::builder(self.scope).build(),
        }
    }
}

/// Receives every sampled span when it ends.
pub trait SpanSink: Send + Sync + Debug {
    /// Takes a finished span. Must not block: it runs on the thread that ended the span.
    fn on_end(&self, span: SpanRecord);

    /// Called once when telemetry stops: print or send what is still held.
    fn shutdown(&self) {}
}

/// The sampler, limits and sinks shared by the tracers of a process. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Recorder {
    pub(crate) inner: Arc<RecorderInner>,
}

#[derive(Debug)]
pub(crate) struct RecorderInner {
    pub(crate) sampler: Sampler,
    pub(crate) ids: RandomIdGenerator,
    pub(crate) limits: SpanLimits,
    sinks: Vec<Box<dyn SpanSink>>,
}

/// Sets up a [`Recorder`].
#[derive(Debug)]
pub struct RecorderBuilder {
    sampler: Sampler,
    limits: SpanLimits,
    sinks: Vec<Box<dyn SpanSink>>,
}

impl Recorder {
    /// A recorder deciding with `sampler`, with the default limits and no sink yet.
    pub fn builder(sampler: Sampler) -> RecorderBuilder {
        RecorderBuilder {
            sampler,
            limits: SpanLimits::default(),
            sinks: Vec::new(),
        }
    }

    /// Tells every sink that telemetry stops.
    pub fn shutdown(&self) {
        for sink in &self.inner.sinks {
            sink.shutdown();
        }
    }
}

impl RecorderBuilder {
    /// The limits on attributes, events and links per span.
    pub fn with_limits(mut self, limits: SpanLimits) -> Self {
        self.limits = limits;
        self
    }

    /// One more sink for finished spans.
    pub fn with_sink(mut self, sink: impl SpanSink + 'static) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// The recorder.
    pub fn build(self) -> Recorder {
        Recorder {
            inner: Arc::new(RecorderInner {
                sampler: self.sampler,
                ids: RandomIdGenerator::default(),
                limits: self.limits,
                sinks: self.sinks,
            }),
        }
    }
}

impl RecorderInner {
    /// Hands a finished span to the sinks, if it was sampled.
    pub(crate) fn finish(&self, span: SpanRecord) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.sinks.as_slice() {
            [] => {}
            [only] => only.on_end(span),
            [first @ .., last] => {
                for sink in first {
                    sink.on_end(span.clone());
                }
                last.on_end(span);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry_sdk::trace::Sampler;

    use super::*;
    use crate::span::{TraceCx, Tracer};

    #[derive(Debug, Default, Clone)]
    struct Keep(Arc<Mutex<Vec<SpanRecord>>>);

    impl SpanSink for Keep {
        fn on_end(&self, span: SpanRecord) {
            self.0.lock().unwrap().push(span);
        }
    }

    impl Keep {
        fn names(&self) -> Vec<String> {
            let spans = self.0.lock().unwrap();
            spans.iter().map(|s| s.name.to_string()).collect()
        }
    }

    #[test]
    fn every_sink_gets_every_sampled_span_and_none_gets_the_others() {
        let (a, b) = (Keep::default(), Keep::default());
        let recorder = Recorder::builder(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .with_sink(a.clone())
            .with_sink(b.clone())
            .build();
        let tracer = Tracer::new(&recorder, "test", 64);
        // A new trace is sampled out; a child of a sampled remote parent is sampled.
        let dropped = tracer.start(&TraceCx::root(), "sampled out", SpanKind::Internal, vec![]);
        assert!(!dropped.is_recording());
        dropped.end();
        let parent = crate::propagation::Propagators::W3C.extract_map(
            &[(
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            )]
            .into(),
        );
        let kept = tracer.start(&parent, "sampled", SpanKind::Server, vec![]);
        assert!(kept.is_recording());
        kept.end();
        assert_eq!(a.names(), ["sampled"]);
        assert_eq!(b.names(), ["sampled"]);
        let span = &a.0.lock().unwrap()[0];
        assert_eq!(span.parent_span_id.to_string(), "b7ad6b7169203331");
        assert!(span.parent_is_remote);
        assert_eq!(
            span.span_context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(span.end_time >= span.start_time);
    }

    #[test]
    fn recorded_flags_carry_the_random_flag_of_the_traces_started_here_only() {
        let keep = Keep::default();
        let recorder = Recorder::builder(Sampler::AlwaysOn)
            .with_sink(keep.clone())
            .build();
        let tracer = Tracer::new(&recorder, "test", 64);
        let root = tracer.start(&TraceCx::root(), "root", SpanKind::Server, vec![]);
        tracer
            .start(&root.cx(), "child", SpanKind::Internal, vec![])
            .end();
        root.end();
        let callers = crate::propagation::Propagators::W3C.extract_map(
            &[(
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            )]
            .into(),
        );
        tracer
            .start(&callers, "caller's", SpanKind::Server, vec![])
            .end();
        let spans = keep.0.lock().unwrap();
        let flags: Vec<(&str, u8)> = spans
            .iter()
            .map(|s| (&*s.name, s.span_context.trace_flags().to_u8()))
            .collect();
        // Sampled and random (0x03) for a trace started here and its child; a caller's trace
        // that did not say random stays without it.
        assert_eq!(flags, [("child", 0x03), ("root", 0x03), ("caller's", 0x01)]);
    }

    #[test]
    fn attributes_events_and_links_over_the_limits_are_counted_not_kept() {
        let keep = Keep::default();
        let limits = SpanLimits {
            max_attributes_per_span: 2,
            max_events_per_span: 1,
            max_links_per_span: 1,
            max_attributes_per_event: 1,
            ..SpanLimits::default()
        };
        let recorder = Recorder::builder(Sampler::AlwaysOn)
            .with_limits(limits)
            .with_sink(keep.clone())
            .build();
        let tracer = Tracer::new(&recorder, "test", 64);
        let (l1, l2) = (
            tracer.start(&TraceCx::root(), "l1", SpanKind::Internal, vec![]),
            tracer.start(&TraceCx::root(), "l2", SpanKind::Internal, vec![]),
        );
        let span = tracer.start_linked(
            &TraceCx::root(),
            "limited",
            SpanKind::Internal,
            vec![
                ("a", 1_i64.into()),
                ("b", 2_i64.into()),
                ("c", 3_i64.into()),
            ],
            &[l1.cx(), l2.cx()],
        );
        span.set("d", 4_i64);
        span.fail("first", "zzz");
        span.fail("second", "aaa");
        span.end();
        let spans = keep.0.lock().unwrap();
        let limited = spans.iter().find(|s| s.name == "limited").unwrap();
        let keys: Vec<&str> = limited.attributes.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["a", "b"]);
        // c at the start, d and the two error.type later.
        assert_eq!(limited.dropped_attributes, 4);
        assert_eq!(limited.events.len(), 1);
        assert_eq!(limited.events[0].attributes.len(), 1);
        assert_eq!(limited.events[0].dropped_attributes_count, 1);
        assert_eq!(limited.dropped_events, 1);
        assert_eq!(limited.links.len(), 1);
        assert_eq!(limited.dropped_links, 1);
        // The later error's message is the status.
        assert_eq!(limited.status, Status::error("aaa"));
    }
}
