//! Finished span records written straight into the bytes of an OTLP
//! `ExportTraceServiceRequest` (protobuf), without building the intermediate message structs
//! first.
//!
//! Why: the usual path clones each batch, converts every span into `opentelemetry-proto`
//! structs with an owned `String` per attribute key and value, then walks those structs twice
//! (lengths, then bytes) and frees them; callgrind put that at over half of what a traced API
//! request costs. Here each span is read where it lies and written once into a buffer.
//!
//! The output is byte for byte what `opentelemetry-proto`'s conversion followed by prost's
//! encoding gives for the same spans (as the SDK's `SpanData`, see
//! [`SpanRecord::into_span_data`]) and resource; the tests compare both on spans with every
//! kind of field: fields in tag order, proto3 defaults left out, `oneof` values always
//! written, lengths as minimal varints. The resource, which does not change from span to
//! span, is encoded by prost itself. One pass writes everything:
//! a nested message's length is filled in once its body is written. It is not a general
//! protobuf writer.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Link, SpanId, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::Resource;
use prost::Message as _;

use crate::record::SpanRecord;
use crate::span::{AttrValue, SpanKind};

const LEN: u32 = 2;
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const FIXED32: u32 = 5;

/// Bytes of a varint, as prost counts them.
fn varint_len(v: u64) -> usize {
    ((((v | 1).leading_zeros() ^ 63) * 9 + 73) / 64) as usize
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, tag: u32, wire_type: u32) {
    put_varint(out, u64::from((tag << 3) | wire_type));
}

/// A length-delimited field whose body `write` appends. The length is known only once the
/// body is written: one byte is set aside for it, which holds any body under 128 bytes (most
/// attributes). See [`put_nested_sized`] for bodies that are usually longer.
#[inline]
fn put_nested(out: &mut Vec<u8>, tag: u32, write: impl FnOnce(&mut Vec<u8>)) {
    put_nested_sized(out, tag, 1, write);
}

/// Like [`put_nested`], with `reserve` bytes set aside for the length: the varint size the
/// body usually takes (a span: 2, for 128 bytes to 16 KiB; a whole batch: 3, up to 2 MiB).
/// A body whose length takes another number of bytes is moved to fit, so the output is the
/// same whatever `reserve` is; a good guess only saves that move.
#[inline]
fn put_nested_sized(out: &mut Vec<u8>, tag: u32, reserve: usize, write: impl FnOnce(&mut Vec<u8>)) {
    put_key(out, tag, LEN);
    let at = out.len();
    out.resize(at + reserve, 0);
    write(out);
    let end = out.len();
    let len = end - at - reserve;
    let n = varint_len(len as u64);
    if n > reserve {
        out.resize(end + n - reserve, 0);
        out.copy_within(at + reserve..end, at + n);
    } else if n < reserve {
        out.copy_within(at + reserve..end, at + n);
        out.truncate(at + n + len);
    }
    let mut v = len as u64;
    for byte in &mut out[at..at + n] {
        *byte = (v as u8) | 0x80;
        v >>= 7;
    }
    out[at + n - 1] &= 0x7f;
}

/// A string or bytes field; proto3 leaves an empty one out.
fn put_bytes_field(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    if !b.is_empty() {
        put_embedded(out, tag, b);
    }
}

/// A length-delimited field of bytes that are already encoded, written even when empty.
fn put_embedded(out: &mut Vec<u8>, tag: u32, b: &[u8]) {
    put_key(out, tag, LEN);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_uint_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        put_key(out, tag, VARINT);
        put_varint(out, v);
    }
}

fn put_fixed64_field(out: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        put_key(out, tag, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_fixed32_field(out: &mut Vec<u8>, tag: u32, v: u32) {
    if v != 0 {
        put_key(out, tag, FIXED32);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn to_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The `flags` of a span or link: the W3C trace flags plus "whether the parent is remote" is
/// known, and whether it is.
fn span_flags(is_remote: bool, trace_flags: u8) -> u32 {
    u32::from(trace_flags) | 0x100 | if is_remote { 0x200 } else { 0 }
}

fn kind_number(kind: SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

// --- AnyValue and KeyValue ---------------------------------------------------------------------

/// The oneof of an `AnyValue` holding a scalar: always written, even when it is the default.
fn put_str_value(out: &mut Vec<u8>, s: &str) {
    put_embedded(out, 1, s.as_bytes());
}

fn put_bool_value(out: &mut Vec<u8>, b: bool) {
    put_key(out, 2, VARINT);
    out.push(u8::from(b));
}

fn put_int_value(out: &mut Vec<u8>, v: i64) {
    put_key(out, 3, VARINT);
    put_varint(out, v as u64);
}

fn put_double_value(out: &mut Vec<u8>, v: f64) {
    put_key(out, 4, FIXED64);
    out.extend_from_slice(&v.to_bits().to_le_bytes());
}

/// The `ArrayValue` body: one `AnyValue` per element.
fn put_array(out: &mut Vec<u8>, array: &Array) {
    match array {
        Array::Bool(v) => v
            .iter()
            .for_each(|b| put_nested(out, 1, |o| put_bool_value(o, *b))),
        Array::I64(v) => v
            .iter()
            .for_each(|i| put_nested(out, 1, |o| put_int_value(o, *i))),
        Array::F64(v) => v
            .iter()
            .for_each(|x| put_nested(out, 1, |o| put_double_value(o, *x))),
        Array::String(v) => v
            .iter()
            .for_each(|s| put_nested(out, 1, |o| put_str_value(o, s.as_str()))),
        // A kind of array added after this was written: its text, never dropped.
        other => put_nested(out, 1, |o| put_str_value(o, &other.to_string())),
    }
}

/// The `AnyValue` body of `value`.
fn put_any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => put_bool_value(out, *b),
        Value::I64(v) => put_int_value(out, *v),
        Value::F64(v) => put_double_value(out, *v),
        Value::String(s) => put_str_value(out, s.as_str()),
        Value::Array(a) => put_nested(out, 5, |o| put_array(o, a)),
        other => put_str_value(out, &other.as_str()),
    }
}

/// The `AnyValue` body of a recorded value.
fn put_attr_value(out: &mut Vec<u8>, value: &AttrValue) {
    match value {
        AttrValue::Str(s) => put_str_value(out, s),
        AttrValue::Shared(s) => put_str_value(out, s),
        AttrValue::I64(v) => put_int_value(out, *v),
        AttrValue::F64(v) => put_double_value(out, *v),
        AttrValue::Bool(b) => put_bool_value(out, *b),
        AttrValue::StrList(list) => put_nested(out, 5, |o| {
            list.iter()
                .for_each(|s| put_nested(o, 1, |o| put_str_value(o, s)))
        }),
    }
}

/// `KeyValue` fields of OpenTelemetry's values (events, links), the value always present.
fn put_attributes(out: &mut Vec<u8>, tag: u32, attrs: &[KeyValue]) {
    for kv in attrs {
        let short = match &kv.value {
            Value::String(v) => Some(Short::Str(v.as_str().as_bytes())),
            Value::I64(i) => Some(Short::Int(*i)),
            _ => None,
        };
        put_key_value(out, tag, kv.key.as_str(), short, |o| {
            put_any_value(o, &kv.value)
        });
    }
}

/// `KeyValue` fields of a record's attributes, the value always present.
fn put_record_attributes(out: &mut Vec<u8>, tag: u32, attrs: &[(&'static str, AttrValue)]) {
    for (key, value) in attrs {
        let short = match value {
            AttrValue::Str(v) => Some(Short::Str(v.as_bytes())),
            AttrValue::Shared(v) => Some(Short::Str(v.as_bytes())),
            AttrValue::I64(i) => Some(Short::Int(*i)),
            _ => None,
        };
        put_key_value(out, tag, key, short, |o| put_attr_value(o, value));
    }
}

/// One `KeyValue` field: by the short path when its value is `short` and it fits, else with
/// `put_value` writing the `AnyValue` body. Always inlined: it runs for every attribute of
/// every span, and each caller's loop then compiles as it did before the two shared it.
#[inline(always)]
fn put_key_value(
    out: &mut Vec<u8>,
    tag: u32,
    key: &str,
    short: Option<Short<'_>>,
    put_value: impl FnOnce(&mut Vec<u8>),
) {
    if short.is_some_and(|v| put_short_attribute(out, tag, key, v)) {
        return;
    }
    put_nested(out, tag, |o| {
        put_bytes_field(o, 1, key.as_bytes());
        put_nested(o, 2, put_value);
    });
}

/// The values the short path writes.
#[derive(Clone, Copy)]
enum Short<'a> {
    Str(&'a [u8]),
    Int(i64),
}

/// Writes the common attribute directly, lengths first: a key that is not empty, a string or
/// integer value, and a `KeyValue` under 128 bytes, so that every length takes one byte. The
/// bytes are those of the general path (tested against it). Returns false, having written
/// nothing, for any other attribute.
#[inline]
fn put_short_attribute(out: &mut Vec<u8>, tag: u32, key: &str, value: Short<'_>) -> bool {
    let key = key.as_bytes();
    // The field key must be one byte (tags under 16) and an empty key is left out.
    if tag >= 16 || key.is_empty() {
        return false;
    }
    let field = ((tag << 3) | LEN) as u8;
    // KeyValue: key (1) = 0x0a, value (2) = 0x12; AnyValue: string (1) = 0x0a, int (3) = 0x18.
    match value {
        Short::Str(v) => {
            let any_len = 2 + v.len();
            let body = 2 + key.len() + 2 + any_len;
            if body >= 0x80 {
                return false;
            }
            out.reserve(2 + body);
            out.extend_from_slice(&[field, body as u8, 0x0a, key.len() as u8]);
            out.extend_from_slice(key);
            out.extend_from_slice(&[0x12, any_len as u8, 0x0a, v.len() as u8]);
            out.extend_from_slice(v);
            true
        }
        Short::Int(i) => {
            let any_len = 1 + varint_len(i as u64);
            let body = 2 + key.len() + 2 + any_len;
            if body >= 0x80 {
                return false;
            }
            out.reserve(2 + body);
            out.extend_from_slice(&[field, body as u8, 0x0a, key.len() as u8]);
            out.extend_from_slice(key);
            out.extend_from_slice(&[0x12, any_len as u8, 0x18]);
            put_varint(out, i as u64);
            true
        }
    }
}

// --- Span, event, link, status ------------------------------------------------------------------

fn put_event(out: &mut Vec<u8>, e: &opentelemetry::trace::Event) {
    put_fixed64_field(out, 1, to_nanos(e.timestamp));
    put_bytes_field(out, 2, e.name.as_bytes());
    put_attributes(out, 3, &e.attributes);
    put_uint_field(out, 4, u64::from(e.dropped_attributes_count));
}

fn put_link(out: &mut Vec<u8>, l: &Link) {
    let sc = &l.span_context;
    put_bytes_field(out, 1, &sc.trace_id().to_bytes());
    put_bytes_field(out, 2, &sc.span_id().to_bytes());
    put_bytes_field(out, 3, sc.trace_state().header().as_bytes());
    put_attributes(out, 4, &l.attributes);
    put_uint_field(out, 5, u64::from(l.dropped_attributes_count));
    put_fixed32_field(out, 6, span_flags(sc.is_remote(), sc.trace_flags().to_u8()));
}

fn put_status(out: &mut Vec<u8>, status: &Status) {
    let (code, message) = match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description.as_ref()),
    };
    put_bytes_field(out, 2, message.as_bytes());
    put_uint_field(out, 3, code);
}

/// The `Span` body.
fn put_span(out: &mut Vec<u8>, s: &SpanRecord) {
    let sc = &s.span_context;
    put_bytes_field(out, 1, &sc.trace_id().to_bytes());
    put_bytes_field(out, 2, &sc.span_id().to_bytes());
    put_bytes_field(out, 3, sc.trace_state().header().as_bytes());
    if s.parent_span_id != SpanId::INVALID {
        put_bytes_field(out, 4, &s.parent_span_id.to_bytes());
    }
    put_bytes_field(out, 5, s.name.as_bytes());
    put_uint_field(out, 6, kind_number(s.kind));
    put_fixed64_field(out, 7, to_nanos(s.start_time));
    put_fixed64_field(out, 8, to_nanos(s.end_time));
    put_record_attributes(out, 9, &s.attributes);
    put_uint_field(out, 10, u64::from(s.dropped_attributes));
    for e in &s.events {
        put_nested(out, 11, |o| put_event(o, e));
    }
    put_uint_field(out, 12, u64::from(s.dropped_events));
    for l in &s.links {
        put_nested(out, 13, |o| put_link(o, l));
    }
    put_uint_field(out, 14, u64::from(s.dropped_links));
    put_nested(out, 15, |o| put_status(o, &s.status));
    put_fixed32_field(
        out,
        16,
        span_flags(s.parent_is_remote, sc.trace_flags().to_u8()),
    );
}

// --- The request ------------------------------------------------------------------------------

/// Writes export requests for the spans of one process (one resource).
#[derive(Debug, Clone, Default)]
pub struct TraceRequestEncoder {
    /// The `Resource` message, encoded once.
    resource: Vec<u8>,
    schema_url: String,
}

impl TraceRequestEncoder {
    /// An encoder for spans of `resource`.
    pub fn new(resource: &Resource) -> Self {
        let with_schema = ResourceAttributesWithSchema::from(resource);
        let proto = ProtoResource {
            attributes: with_schema.attributes.0,
            dropped_attributes_count: 0,
            entity_refs: vec![],
        };
        TraceRequestEncoder {
            resource: proto.encode_to_vec(),
            schema_url: with_schema.schema_url.unwrap_or_default(),
        }
    }

    /// Appends to `out` the `ExportTraceServiceRequest` of `spans`: one `ResourceSpans`, with
    /// one `ScopeSpans` per instrumentation scope in order of first appearance.
    pub fn encode(&self, spans: &[SpanRecord], out: &mut Vec<u8>) {
        // The scopes of the batch, each with the indices of its spans.
        let mut groups: Vec<(&str, Vec<u32>)> = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            match groups.iter_mut().find(|(s, _)| *s == span.scope) {
                Some((_, members)) => members.push(i as u32),
                None => {
                    let mut members = Vec::with_capacity(spans.len() - i);
                    members.push(i as u32);
                    groups.push((span.scope, members));
                }
            }
        }
        put_nested_sized(out, 1, 3, |out| {
            put_embedded(out, 1, &self.resource);
            for (scope, members) in &groups {
                put_nested_sized(out, 2, 3, |out| {
                    // An `InstrumentationScope` of a name alone.
                    put_nested(out, 1, |o| put_bytes_field(o, 1, scope.as_bytes()));
                    for &i in members {
                        put_nested_sized(out, 2, 2, |o| put_span(o, &spans[i as usize]));
                    }
                });
            }
            put_bytes_field(out, 3, self.schema_url.as_bytes());
        });
    }

    /// The request of `spans` as a new buffer.
    pub fn encode_to_vec(&self, spans: &[SpanRecord]) -> Vec<u8> {
        // A server span of ours takes 400-500 bytes: one allocation for most batches.
        let mut out = Vec::with_capacity(512 + spans.len() * 640);
        self.encode(spans, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use opentelemetry::trace::{Event, SpanContext, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry::{Array, KeyValue, StringValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::{Sampler, SpanData};
    use prost::Message as _;

    use super::*;
    use crate::record::{Recorder, SpanSink};
    use crate::span::{DEFAULT_MAX_VALUE_LEN, TraceCx, Tracer};

    /// What `opentelemetry-proto` and prost make of the same spans as the SDK's `SpanData`.
    fn reference(resource: &Resource, spans: &[SpanRecord]) -> Vec<u8> {
        let spans: Vec<SpanData> = spans
            .iter()
            .cloned()
            .map(SpanRecord::into_span_data)
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &resource.into()),
        };
        request.encode_to_vec()
    }

    fn assert_same_bytes(resource: &Resource, spans: &[SpanRecord]) {
        let ours = TraceRequestEncoder::new(resource).encode_to_vec(spans);
        let theirs = reference(resource, spans);
        assert!(
            ours == theirs,
            "encodings differ\n ours:   {ours:02x?}\n theirs: {theirs:02x?}"
        );
        // And it decodes to the same message.
        assert_eq!(
            ExportTraceServiceRequest::decode(ours.as_slice()).unwrap(),
            ExportTraceServiceRequest::decode(theirs.as_slice()).unwrap()
        );
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("jobpilot-api")
            .with_schema_url(
                [
                    KeyValue::new("host.name", "box"),
                    KeyValue::new("process.pid", 42_i64),
                ],
                "https://opentelemetry.io/schemas/1.30.0",
            )
            .build()
    }

    fn context(
        trace: u128,
        span: u64,
        flags: TraceFlags,
        remote: bool,
        state: &str,
    ) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            opentelemetry::trace::SpanId::from(span),
            flags,
            remote,
            if state.is_empty() {
                TraceState::default()
            } else {
                state.parse().unwrap()
            },
        )
    }

    fn leak(s: String) -> &'static str {
        s.leak()
    }

    /// Every kind of value a span's attribute can hold, at the lengths where the encoding
    /// changes.
    fn every_attribute() -> Vec<(&'static str, AttrValue)> {
        vec![
            ("str", "value".into()),
            ("empty", "".into()),
            ("owned", String::from("ünïcödé ✓").into()),
            ("shared", Arc::<str>::from("run-1").into()),
            ("bool.true", true.into()),
            ("bool.false", false.into()),
            ("int.zero", 0_i64.into()),
            ("int.big", (1_i64 << 40).into()),
            ("int.negative", (-7_i64).into()),
            ("float", 3.25_f64.into()),
            ("float.zero", 0.0_f64.into()),
            ("float.negative", (-1e300_f64).into()),
            ("strs", vec![String::from("a"), String::new()].into()),
            ("empty.list", Vec::<String>::new().into()),
            (leak("k".repeat(200)), "v".repeat(300).into()),
            ("", "a value under an empty key".into()),
            ("int.min", i64::MIN.into()),
            // KeyValues of 127 bytes (every length one byte: the short path) and of 128 (a
            // two-byte length: the general path), with a string and with an integer value.
            ("b", "v".repeat(120).into()),
            ("b", Arc::<str>::from("v".repeat(121)).into()),
            (leak("i".repeat(112)), i64::MIN.into()),
            (leak("i".repeat(113)), i64::MIN.into()),
        ]
    }

    /// Every kind of OpenTelemetry value, for events and links.
    fn every_value() -> Vec<KeyValue> {
        let mut values: Vec<KeyValue> = every_attribute()
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, v.into_otel()))
            .collect();
        values.extend([
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("ints", Value::Array(Array::I64(vec![0, -1, 300]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![0.5, 0.0]))),
            KeyValue::new(
                "strs.otel",
                Value::Array(Array::String(vec![StringValue::from("a")])),
            ),
        ]);
        values
    }

    fn span(name: &'static str, scope: &'static str) -> SpanRecord {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        SpanRecord {
            scope,
            name: Cow::Borrowed(name),
            kind: SpanKind::Internal,
            span_context: context(
                0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
                0xfeed,
                TraceFlags::SAMPLED,
                false,
                "",
            ),
            parent_span_id: opentelemetry::trace::SpanId::INVALID,
            parent_is_remote: false,
            start_time: start,
            end_time: start + Duration::from_micros(1_500),
            attributes: vec![],
            dropped_attributes: 0,
            events: vec![],
            dropped_events: 0,
            links: vec![],
            dropped_links: 0,
            status: Status::Unset,
        }
    }

    #[test]
    fn every_field_encodes_as_prost_does() {
        let mut server = span("GET /api/v1/agents", "jobpilot.api");
        server.kind = SpanKind::Server;
        server.attributes = every_attribute();
        server.dropped_attributes = 3;
        server.parent_span_id = opentelemetry::trace::SpanId::from(0x1122_3344_5566_7788);
        server.parent_is_remote = true;
        server.span_context = context(
            u128::MAX,
            u64::MAX,
            TraceFlags::SAMPLED,
            false,
            "vendor=abc,other=x",
        );
        server.status = Status::error("boom: it failed");
        server.events = vec![
            Event::new(
                "exception",
                UNIX_EPOCH + Duration::from_nanos(5),
                every_value(),
                2,
            ),
            Event::new("", UNIX_EPOCH, vec![], 0),
        ];
        server.dropped_events = 4;
        server.links = vec![
            Link::new(
                context(9, 10, TraceFlags::SAMPLED, true, "k=v"),
                every_value(),
                1,
            ),
            Link::new(context(11, 12, TraceFlags::default(), false, ""), vec![], 0),
        ];
        server.dropped_links = 5;

        let mut client = span("llm.chat", "jobpilot.agents");
        client.kind = SpanKind::Client;
        client.status = Status::Ok;
        let mut producer = span("", "jobpilot.api");
        producer.kind = SpanKind::Producer;
        producer.start_time = UNIX_EPOCH;
        producer.end_time = UNIX_EPOCH - Duration::from_secs(1);
        let mut consumer = span("task", "");
        consumer.kind = SpanKind::Consumer;
        consumer.status = Status::error("");

        assert_same_bytes(&resource(), &[server, client, producer, consumer]);
    }

    #[test]
    fn empty_batches_and_resources_encode_as_prost_does() {
        assert_same_bytes(&Resource::builder_empty().build(), &[]);
        assert_same_bytes(&resource(), &[]);
        assert_same_bytes(&Resource::builder_empty().build(), &[span("x", "s")]);
    }

    #[test]
    fn scopes_are_grouped_in_order_of_first_appearance() {
        let spans: Vec<SpanRecord> = (0..9)
            .map(|i| {
                if i % 3 == 0 {
                    span("on b", "b")
                } else {
                    span("on a", "a")
                }
            })
            .collect();
        assert_same_bytes(&resource(), &spans);
    }

    #[test]
    fn large_batches_with_long_lengths_encode_as_prost_does() {
        // Lengths above 127 and 16,383 bytes take two and three varint bytes.
        let mut s = span("big", "jobpilot.api");
        s.attributes = every_attribute();
        let spans = vec![s; 300];
        assert_same_bytes(&resource(), &spans);
    }

    #[test]
    fn lengths_longer_or_shorter_than_the_room_set_aside_encode_as_prost_does() {
        // Room is set aside for 2 length bytes per span and 3 per batch. A span of 3 MB
        // needs 4 of each, an empty span and an empty batch only 1.
        let mut huge = span("huge", "jobpilot.api");
        huge.attributes = vec![("big", "x".repeat(3 << 20).into())];
        assert_same_bytes(&resource(), &[huge, span("", "jobpilot.api")]);
        assert_same_bytes(&resource(), &[span("", "")]);
    }

    #[derive(Debug, Default)]
    struct Collect(Arc<Mutex<Vec<SpanRecord>>>);

    impl SpanSink for Collect {
        fn on_end(&self, span: SpanRecord) {
            self.0.lock().unwrap().push(span);
        }
    }

    #[test]
    fn spans_made_by_our_tracer_encode_as_prost_does() {
        let collected = Arc::default();
        let recorder = Recorder::builder(Sampler::AlwaysOn)
            .with_sink(Collect(Arc::clone(&collected)))
            .build();
        let tracer = Tracer::new(&recorder, crate::names::SCOPE_HTTP, DEFAULT_MAX_VALUE_LEN);
        let agents = Tracer::new(&recorder, crate::names::SCOPE_AGENTS, DEFAULT_MAX_VALUE_LEN);
        let linked = tracer.start(&TraceCx::root(), "enqueue", SpanKind::Producer, vec![]);
        let server = tracer.start_linked(
            &TraceCx::root(),
            "GET",
            SpanKind::Server,
            vec![
                (crate::names::HTTP_REQUEST_METHOD, "GET".into()),
                (
                    crate::names::URL_PATH,
                    String::from("/api/v1/agents").into(),
                ),
                (crate::names::SERVER_PORT, 8080_u16.into()),
                (crate::names::USER_ID, "user-1".into()),
            ],
            &[linked.cx()],
        );
        let step = agents.start(&server.cx(), "agent.step", SpanKind::Internal, vec![]);
        step.fail("timeout", "the model did not answer");
        step.finish(false);
        server.rename("GET /api/v1/agents");
        server.set(crate::names::HTTP_RESPONSE_STATUS_CODE, 200_u16);
        server.end();
        linked.end();
        let spans = collected.lock().unwrap().clone();
        assert_eq!(spans.len(), 3);
        assert_same_bytes(&resource(), &spans);
    }
}
