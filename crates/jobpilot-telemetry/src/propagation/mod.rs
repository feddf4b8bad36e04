//! W3C Trace Context (Level 2) and W3C Baggage: reading the trace context from HTTP headers and
//! task messages, and writing it back out.
//!
//! The headers are parsed by our own strict code ([`traceparent`], [`tracestate`], [`baggage`]);
//! this module wires them into [`W3cPropagator`], an OpenTelemetry [`TextMapPropagator`], and
//! into the five functions the rest of jobpilot calls. It does not start spans or choose
//! sampling: an extracted context is only the *remote parent* of the next span.
//!
//! Rules that span the headers:
//! - a request with no `traceparent`, an invalid one, or more than one starts a new trace;
//!   its `tracestate` is then ignored, since it describes the rejected trace;
//! - an invalid `tracestate` is dropped while a valid `traceparent` is kept;
//! - baggage is independent of both and is kept whenever it parses.
//!
//! Every header is length-capped before it is parsed, and each parser is linear in its input.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt as _, TraceId, TraceState};

use crate::span::TraceCx;

pub mod b3;
pub mod baggage;
pub mod traceparent;
pub mod tracestate;

use traceparent::TraceParent;

/// A [`TextMapPropagator`] for W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage
/// (`baggage`) together, with strict parsing.
///
/// It reads repeated header lines through [`Extractor::get_all`], so carriers that can hold a
/// header more than once must implement that method (the HTTP header carrier here does).
#[derive(Debug)]
pub struct W3cPropagator {
    fields: [String; 3],
}

impl W3cPropagator {
    /// A new propagator.
    pub fn new() -> Self {
        W3cPropagator {
            fields: [
                traceparent::HEADER.to_owned(),
                tracestate::HEADER.to_owned(),
                baggage::HEADER.to_owned(),
            ],
        }
    }
}

impl Default for W3cPropagator {
    fn default() -> Self {
        W3cPropagator::new()
    }
}

impl TextMapPropagator for W3cPropagator {
    /// Writes `traceparent` and `tracestate` when `cx` holds a valid span context, and `baggage`
    /// when `cx` has any.
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        inject_trace_context(cx, injector);
        inject_baggage(cx, injector);
    }

    /// Adds the remote span context and the baggage found in `extractor` to `cx`; what is
    /// missing or invalid leaves `cx` as it was.
    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        extract_baggage(extract_trace_context(cx.clone(), extractor), extractor)
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}

fn inject_trace_context(cx: &Context, injector: &mut dyn Injector) {
    let span = cx.span();
    let sc = span.span_context();
    if let Some(tp) = trace_parent_of(cx) {
        injector.set(traceparent::HEADER, tp.to_header());
        let state = tracestate::format(sc.trace_state())
            .or_else(|| TextTraceState::for_trace(cx, sc.trace_id()));
        if let Some(ts) = state {
            injector.set(tracestate::HEADER, ts);
        }
    }
}

fn inject_baggage(cx: &Context, injector: &mut dyn Injector) {
    if let Some(bg) = baggage::format(cx.baggage()) {
        injector.set(baggage::HEADER, bg);
    }
}

fn extract_trace_context(mut cx: Context, extractor: &dyn Extractor) -> Context {
    let lines = |key| extractor.get_all(key).unwrap_or_default();
    if let Some(tp) = traceparent::parse_lines(&lines(traceparent::HEADER)) {
        // Dropping an invalid tracestate keeps the trace: the two are separate decisions.
        let state_lines = lines(tracestate::HEADER);
        let members = tracestate::Members::parse_lines(&state_lines).unwrap_or_default();
        let (state, text) = match members.to_trace_state() {
            Some(state) => (state, None),
            None => (TraceState::NONE, Some(members.to_string())),
        };
        let sc = SpanContext::new(tp.trace_id, tp.parent_id, tp.flags, true, state);
        // Always replace any earlier text state, so one never outlives its extraction.
        cx = cx.with_remote_span_context(sc).with_value(TextTraceState {
            trace_id: tp.trace_id,
            text,
        });
    }
    cx
}

fn extract_baggage(cx: Context, extractor: &dyn Extractor) -> Context {
    let lines = extractor.get_all(baggage::HEADER).unwrap_or_default();
    let bg = baggage::parse_lines(&lines);
    if bg.is_empty() {
        cx
    } else {
        cx.with_baggage(bg)
    }
}

fn extract_b3(cx: Context, extractor: &dyn Extractor) -> Context {
    let sc = extractor
        .get(b3::SINGLE)
        .and_then(b3::parse_single)
        .or_else(|| b3::parse_multi(|k| extractor.get(k)));
    match sc {
        Some(sc) => cx.with_remote_span_context(sc),
        None => cx,
    }
}

/// The propagators named by `OTEL_PROPAGATORS`: which headers carry the trace context in and
/// out of jobpilot (inbound requests, task messages, outbound calls, responses).
///
/// Reading: W3C `traceparent` first, then B3 (single header, then multi) when no valid W3C
/// context was found; baggage only with `baggage`. Writing: every configured format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Propagators {
    /// `tracecontext`: `traceparent` and `tracestate`.
    pub tracecontext: bool,
    /// `baggage`: the W3C `baggage` header.
    pub baggage: bool,
    /// `b3`: the single `b3` header.
    pub b3: bool,
    /// `b3multi`: the `X-B3-*` headers.
    pub b3multi: bool,
}

impl Default for Propagators {
    fn default() -> Self {
        Propagators::W3C
    }
}

impl Propagators {
    /// `tracecontext,baggage`, the default.
    pub const W3C: Propagators = Propagators {
        tracecontext: true,
        baggage: true,
        b3: false,
        b3multi: false,
    };

    /// `none`: nothing is read or written.
    pub const NONE: Propagators = Propagators {
        tracecontext: false,
        baggage: false,
        b3: false,
        b3multi: false,
    };

    /// Parses a comma-separated list of `tracecontext`, `baggage`, `b3`, `b3multi` and `none`
    /// (`none` alone means no propagation).
    ///
    /// # Errors
    /// An unknown name, `none` together with another propagator, or an empty list; the error
    /// names `var`.
    pub fn parse(var: &'static str, value: &str) -> Result<Self, crate::ConfigError> {
        let mut set = Propagators::NONE;
        let mut none = false;
        let mut any = false;
        for name in value.split(',').map(str::trim) {
            match name.to_ascii_lowercase().as_str() {
                "tracecontext" => set.tracecontext = true,
                "baggage" => set.baggage = true,
                "b3" => set.b3 = true,
                "b3multi" => set.b3multi = true,
                "none" => {
                    none = true;
                    continue;
                }
                _ => {
                    return Err(crate::ConfigError::new(
                        var,
                        value,
                        format!(
                            "unsupported propagator {name:?}; expected a list of \
                             tracecontext, baggage, b3, b3multi, or none"
                        ),
                    ));
                }
            }
            any = true;
        }
        match (none, any) {
            (true, true) => Err(crate::ConfigError::new(
                var,
                value,
                "none cannot be combined with other propagators",
            )),
            (false, false) => Err(crate::ConfigError::new(var, value, "empty list")),
            _ => Ok(set),
        }
    }

    /// Whether nothing is propagated.
    pub fn is_none(self) -> bool {
        self == Propagators::NONE
    }

    fn extract(self, extractor: &dyn Extractor) -> TraceCx {
        let mut cx = Context::new();
        if self.tracecontext {
            cx = extract_trace_context(cx, extractor);
        }
        if (self.b3 || self.b3multi) && !cx.has_active_span() {
            cx = extract_b3(cx, extractor);
        }
        if self.baggage {
            cx = extract_baggage(cx, extractor);
        }
        TraceCx(cx)
    }

    /// Writes the trace context; `inside` (a task message) adds `tracestate` and baggage,
    /// otherwise only the trace ids go out (to third parties and in responses).
    fn inject(self, cx: &TraceCx, injector: &mut dyn Injector, inside: bool) {
        let span = cx.0.span();
        let sc = span.span_context();
        if self.tracecontext {
            if inside {
                inject_trace_context(&cx.0, injector);
            } else if let Some(tp) = trace_parent_of(&cx.0) {
                injector.set(traceparent::HEADER, tp.to_header());
            }
        }
        if sc.is_valid() {
            if self.b3 {
                injector.set(b3::SINGLE, b3::format_single(sc));
            }
            if self.b3multi {
                for (name, value) in b3::format_multi(sc) {
                    injector.set(name, value);
                }
            }
        }
        if self.baggage && inside {
            inject_baggage(&cx.0, injector);
        }
    }

    /// Reads the trace context of an inbound request; an absent or invalid one gives the root
    /// (still carrying the request's baggage, if valid and configured).
    pub fn extract_headers(self, headers: &http::HeaderMap) -> TraceCx {
        self.extract(&HeaderExtractor(headers))
    }

    /// Reads the trace context stored in a task message.
    pub fn extract_map(self, map: &BTreeMap<String, String>) -> TraceCx {
        self.extract(&MapExtractor(map))
    }

    /// The trace context of `cx` as the fields to store in a task message (with `tracestate`
    /// and baggage, when configured).
    pub fn inject_map(self, cx: &TraceCx) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        self.inject(cx, &mut MapInjector(&mut map), true);
        map
    }

    /// Writes the trace ids of `cx` into the headers of a call to a third party (the LLM
    /// endpoint) or of a response: the inbound `tracestate` and baggage stay inside jobpilot.
    pub fn inject_outbound_headers(self, cx: &TraceCx, headers: &mut http::HeaderMap) {
        self.inject(cx, &mut HeaderInjector(headers), false);
    }
}

/// A received `tracestate` that passed our checks but that OpenTelemetry's [`TraceState`]
/// refuses to hold (see [`tracestate`]), kept as text in the context of the remote parent.
///
/// It rides along in the [`Context`], so spans started under the extracted context (which copy
/// the parent's empty [`TraceState`]) still pass the list on. It is only used for the trace it
/// came with, and only while the span context's own [`TraceState`] is empty: once code sets a
/// state of its own, that one wins.
#[derive(Debug)]
struct TextTraceState {
    trace_id: TraceId,
    text: Option<String>,
}

impl TextTraceState {
    /// The text state stored in `cx` for `trace_id`, if any.
    fn for_trace(cx: &Context, trace_id: TraceId) -> Option<String> {
        cx.get::<TextTraceState>()
            .filter(|t| t.trace_id == trace_id)
            .and_then(|t| t.text.clone())
    }
}

/// The W3C Level 2 `random` trace flag: the trace id's right-most 7 bytes are random.
pub const RANDOM_FLAG: u8 = 0x02;

/// The `traceparent` fields of the span of `cx`, if it is valid. The `random` flag is in the
/// span's own flags: [`crate::Tracer`] sets it on the traces it starts and keeps it from a
/// parent that has it, sampled or not.
fn trace_parent_of(cx: &Context) -> Option<TraceParent> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id(),
        parent_id: sc.span_id(),
        flags: sc.trace_flags(),
    })
}

/// Stands for a header value that is not visible ASCII (so not readable as text). It is kept in
/// [`Extractor::get_all`]'s answer rather than dropped, so that the value still counts (two
/// `traceparent` lines stay two) and still fails every grammar.
const UNREADABLE: &str = "\u{fffd}";

/// Reads an [`http::HeaderMap`], every line of a repeated header included.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match known_header(key) {
            Some(name) => self.0.get(name),
            None => self.0.get(key),
        };
        value.map(|v| v.to_str().unwrap_or(UNREADABLE))
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let lines = match known_header(key) {
            Some(name) => self.0.get_all(name),
            None => self.0.get_all(key),
        };
        let values: Vec<&str> = lines
            .iter()
            .map(|v| v.to_str().unwrap_or(UNREADABLE))
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

/// The name of every header a propagator reads or writes, checked once at compile time.
/// Looking a header up by text parses and checks the name on every call, about 300
/// instructions each; every request looks up `traceparent` and `baggage`, traced or not.
static KNOWN_HEADERS: [http::HeaderName; 9] = [
    http::HeaderName::from_static(traceparent::HEADER),
    http::HeaderName::from_static(tracestate::HEADER),
    http::HeaderName::from_static(baggage::HEADER),
    http::HeaderName::from_static(b3::SINGLE),
    http::HeaderName::from_static(b3::TRACE_ID),
    http::HeaderName::from_static(b3::SPAN_ID),
    http::HeaderName::from_static(b3::SAMPLED),
    http::HeaderName::from_static(b3::FLAGS),
    http::HeaderName::from_static(b3::PARENT_SPAN_ID),
];

/// The static name of `key` when it is one of [`KNOWN_HEADERS`] (the propagators pass these
/// constants, always lower case).
fn known_header(key: &str) -> Option<&'static http::HeaderName> {
    KNOWN_HEADERS.iter().find(|name| name.as_str() == key)
}

/// Writes into an [`http::HeaderMap`], replacing any earlier value of the header.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A static name: parsing one allocates a copy, and `traceparent` is set on every
        // response.
        let name = match known_header(key) {
            Some(name) => name.clone(),
            None => match http::HeaderName::from_bytes(key.as_bytes()) {
                Ok(name) => name,
                Err(_) => return,
            },
        };
        // Our formatters only produce visible ASCII, so this does not fail in practice; the
        // string becomes the value without a copy.
        if let Ok(value) = http::HeaderValue::try_from(value) {
            self.0.insert(name, value);
        }
    }
}

/// Reads a task message's fields (lowercase header names; one value per name).
struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes a task message's fields.
struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// Reads the trace context of an inbound request; an absent or invalid one gives the root
/// (still carrying the request's baggage, if valid).
pub fn extract_headers(headers: &http::HeaderMap) -> TraceCx {
    TraceCx(W3cPropagator::new().extract_with_context(&Context::new(), &HeaderExtractor(headers)))
}

/// Writes `cx` into outbound request or response headers: `traceparent` and `tracestate`, and
/// `baggage` if `cx` has any.
pub fn inject_headers(cx: &TraceCx, headers: &mut http::HeaderMap) {
    W3cPropagator::new().inject_context(&cx.0, &mut HeaderInjector(headers));
}

/// Reads the trace context stored in a task message.
pub fn extract_map(map: &BTreeMap<String, String>) -> TraceCx {
    TraceCx(W3cPropagator::new().extract_with_context(&Context::new(), &MapExtractor(map)))
}

/// The trace context of `cx` as the fields to store in a task message.
pub fn inject_map(cx: &TraceCx) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    W3cPropagator::new().inject_context(&cx.0, &mut MapInjector(&mut map));
    map
}

/// Writes only `traceparent` for `cx` into the headers of a call to a third party (e.g. the LLM
/// endpoint): the inbound `tracestate` and baggage stay inside jobpilot.
pub fn inject_outbound_headers(cx: &TraceCx, headers: &mut http::HeaderMap) {
    if let Some(tp) = trace_parent_of(&cx.0) {
        HeaderInjector(headers).set(traceparent::HEADER, tp.to_header());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use opentelemetry::baggage::BaggageExt as _;
    use opentelemetry::trace::{TraceContextExt as _, TraceFlags};

    use super::*;

    /// A xorshift64 generator: deterministic pseudo-random inputs for the no-panic tests.
    pub(crate) struct XorShift(u64);

    impl XorShift {
        pub(crate) fn new(seed: u64) -> Self {
            XorShift(seed.max(1))
        }

        pub(crate) fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub(crate) fn byte(&mut self) -> u8 {
            self.next().to_le_bytes()[0]
        }

        /// A number in `0..n` (`n` > 0).
        pub(crate) fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % n as u64).unwrap_or(0)
        }

        /// Fuzz input number `i`: shorter than `max_len`, one in three made of any bytes, the
        /// others of bytes from `alphabet` (the characters a parser has to get right).
        pub(crate) fn text(&mut self, i: usize, max_len: usize, alphabet: &[u8]) -> String {
            let len = self.below(max_len);
            let bytes: Vec<u8> = if i % 3 == 0 {
                (0..len).map(|_| self.byte()).collect()
            } else {
                (0..len)
                    .map(|_| alphabet[self.below(alphabet.len())])
                    .collect()
            };
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn state_of(cx: &TraceCx) -> String {
        cx.0.span().span_context().trace_state().header()
    }

    #[test]
    fn a_valid_traceparent_becomes_a_remote_parent() {
        let cx = extract_headers(&headers(&[("traceparent", TP), ("tracestate", "foo=1")]));
        assert!(cx.is_valid() && cx.is_remote());
        assert_eq!(
            cx.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(cx.span_id().as_deref(), Some("00f067aa0ba902b7"));
        assert!(cx.0.span().span_context().is_sampled());
        assert_eq!(state_of(&cx), "foo=1");
    }

    #[test]
    fn absent_invalid_or_repeated_traceparents_start_a_new_trace() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("tracestate", "foo=1")],
            &[(
                "traceparent",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            )],
            &[("traceparent", TP), ("traceparent", TP)],
            &[
                ("traceparent", TP),
                (
                    "traceparent",
                    "00-12345678901234567890123456789012-1234567890123456-01",
                ),
            ],
        ];
        for case in cases {
            let cx = extract_headers(&headers(case));
            assert!(!cx.is_valid(), "{case:?}");
        }
    }

    #[test]
    fn unreadable_header_bytes_invalidate_only_their_header() {
        let mut map = headers(&[("traceparent", TP), ("baggage", "a=1")]);
        map.append(
            "tracestate",
            http::HeaderValue::from_bytes(b"foo=\xe9").unwrap(),
        );
        map.append("baggage", http::HeaderValue::from_bytes(b"b=\xe9").unwrap());
        let cx = extract_headers(&map);
        assert!(cx.is_valid());
        assert_eq!(state_of(&cx), "");
        assert_eq!(cx.0.baggage().len(), 1);
        let mut twice = headers(&[("traceparent", TP)]);
        twice.append(
            "traceparent",
            http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        assert!(!extract_headers(&twice).is_valid());
    }

    #[test]
    fn repeated_tracestate_headers_are_combined() {
        let cx = extract_headers(&headers(&[
            ("traceparent", TP),
            ("tracestate", "foo=1,bar=2"),
            ("tracestate", "baz=3"),
        ]));
        assert_eq!(state_of(&cx), "foo=1,bar=2,baz=3");
    }

    #[test]
    fn a_tracestate_opentelemetry_cannot_hold_is_still_passed_on() {
        let state = format!("foo=1,t{}@s{}=2", "t".repeat(240), "y".repeat(13));
        let cx = extract_headers(&headers(&[("traceparent", TP), ("tracestate", &state)]));
        assert!(cx.is_valid());
        // A child span of the remote parent still sends the list.
        let tracer = crate::Tracer::always_on("test");
        let child = tracer.start(&cx, "child", crate::SpanKind::Server, vec![]);
        let mut out = http::HeaderMap::new();
        inject_headers(&child.cx(), &mut out);
        assert_eq!(out["tracestate"], state.as_str());
        assert_ne!(out["traceparent"], TP);
        // Another trace under the same context does not get it.
        let other = TraceCx(child.cx().0.with_remote_span_context(SpanContext::new(
            TraceId::from_bytes([7; 16]),
            opentelemetry::trace::SpanId::from_bytes([7; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::NONE,
        )));
        let mut out = http::HeaderMap::new();
        inject_headers(&other, &mut out);
        assert!(out.get("tracestate").is_none());
        // A later extraction replaces it.
        let mut carrier = inject_map(&child.cx());
        carrier.remove("tracestate");
        let again =
            W3cPropagator::new().extract_with_context(&child.cx().0, &MapExtractor(&carrier));
        assert!(!inject_map(&TraceCx(again)).contains_key("tracestate"));
    }

    #[test]
    fn an_invalid_tracestate_is_dropped_but_the_trace_is_kept() {
        let cx = extract_headers(&headers(&[
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("tracestate", "@foo=2"),
        ]));
        assert!(cx.is_valid());
        assert_eq!(state_of(&cx), "");
    }

    #[test]
    fn a_tracestate_with_a_repeated_key_is_continued_with_one_member() {
        let cx = extract_headers(&headers(&[
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("tracestate", "foo=2,bar=3"),
        ]));
        assert!(cx.is_valid());
        assert_eq!(state_of(&cx), "foo=1,bar=3");
    }

    #[test]
    fn baggage_is_kept_even_when_the_trace_restarts() {
        let cx = extract_headers(&headers(&[("baggage", "user=a%20b"), ("baggage", "x=1")]));
        assert!(!cx.is_valid());
        let bg = cx.0.baggage();
        assert_eq!(
            bg.get("user").map(|v| v.as_str().to_owned()).as_deref(),
            Some("a b")
        );
        assert_eq!(bg.len(), 2);
    }

    #[test]
    fn headers_survive_an_inject_extract_roundtrip() {
        let inbound = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            ),
            ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            ("baggage", "user=Zo%C3%AB;ttl=3"),
        ]);
        let cx = extract_headers(&inbound);
        let mut out = http::HeaderMap::new();
        inject_headers(&cx, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out["traceparent"], inbound["traceparent"]);
        assert_eq!(out["tracestate"], inbound["tracestate"]);
        assert_eq!(out["baggage"], inbound["baggage"]);
        let again = extract_headers(&out);
        assert_eq!(again.0.span().span_context(), cx.0.span().span_context());
    }

    #[test]
    fn task_messages_survive_an_inject_extract_roundtrip() {
        let cx = extract_headers(&headers(&[
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("baggage", "k=v"),
        ]));
        let map = inject_map(&cx);
        assert_eq!(
            map.keys().collect::<Vec<_>>(),
            ["baggage", "traceparent", "tracestate"]
        );
        assert_eq!(map["traceparent"], TP);
        let back = extract_map(&map);
        assert_eq!(back.0.span().span_context(), cx.0.span().span_context());
        assert_eq!(back.0.baggage().len(), 1);
        assert!(
            extract_map(&BTreeMap::new()).0.span().span_context() == &SpanContext::empty_context()
        );
    }

    #[test]
    fn nothing_is_injected_for_the_root() {
        let mut out = http::HeaderMap::new();
        inject_headers(&TraceCx::root(), &mut out);
        inject_outbound_headers(&TraceCx::root(), &mut out);
        assert!(out.is_empty());
        assert!(inject_map(&TraceCx::root()).is_empty());
    }

    #[test]
    fn outbound_calls_get_only_the_traceparent() {
        let cx = extract_headers(&headers(&[
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("baggage", "secret=1"),
        ]));
        let mut out = http::HeaderMap::new();
        inject_outbound_headers(&cx, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out["traceparent"], TP);
    }

    #[test]
    fn b3_headers_are_written_and_read_under_their_static_names() {
        let b3_only = |single: bool| Propagators {
            b3: single,
            b3multi: !single,
            ..Propagators::NONE
        };
        let cx = extract_headers(&headers(&[("traceparent", TP)]));
        for single in [true, false] {
            let mut out = http::HeaderMap::new();
            b3_only(single).inject_outbound_headers(&cx, &mut out);
            let names: Vec<&str> = out.keys().map(http::HeaderName::as_str).collect();
            assert!(names.iter().all(|n| known_header(n).is_some()), "{names:?}");
            let back = b3_only(single).extract_headers(&out);
            assert_eq!(back.trace_id().as_deref(), cx.trace_id().as_deref());
        }
        // A name the caller spelled in capitals is stored in lower case, and found.
        let mut mixed = http::HeaderMap::new();
        mixed.insert(
            http::HeaderName::from_bytes(b"X-B3-TraceId").unwrap(),
            http::HeaderValue::from_static("4bf92f3577b34da6a3ce929d0e0e4736"),
        );
        mixed.insert(
            http::HeaderName::from_bytes(b"X-B3-SpanId").unwrap(),
            http::HeaderValue::from_static("00f067aa0ba902b7"),
        );
        let back = b3_only(false).extract_headers(&mixed);
        assert_eq!(
            back.trace_id().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn only_known_flags_are_emitted() {
        let sc = SpanContext::new(
            opentelemetry::trace::TraceId::from_bytes([1; 16]),
            opentelemetry::trace::SpanId::from_bytes([2; 8]),
            TraceFlags::new(0xff),
            false,
            TraceState::NONE,
        );
        let cx = TraceCx(Context::new().with_remote_span_context(sc));
        let mut out = http::HeaderMap::new();
        inject_outbound_headers(&cx, &mut out);
        assert!(out["traceparent"].to_str().unwrap().ends_with("-03"));
    }

    #[test]
    fn the_propagator_lists_its_three_fields() {
        let propagator = W3cPropagator::new();
        let fields: Vec<&str> = propagator.fields().collect();
        assert_eq!(fields, ["traceparent", "tracestate", "baggage"]);
    }

    #[test]
    fn random_header_maps_never_panic() {
        let mut rng = XorShift::new(0x6865_6164_6572_7321);
        let names = ["traceparent", "tracestate", "baggage"];
        for _ in 0..3_000 {
            let mut map = http::HeaderMap::new();
            for _ in 0..rng.below(6) {
                let max = if rng.below(10) == 0 { 20_000 } else { 80 };
                let len = rng.below(max);
                // Keep only bytes a header value may hold, so most values get through.
                let bytes: Vec<u8> = (0..len)
                    .map(|_| rng.byte())
                    .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                    .collect();
                if let Ok(value) = http::HeaderValue::from_bytes(&bytes) {
                    map.append(names[rng.below(3)], value);
                }
            }
            let cx = extract_headers(&map);
            let mut out = http::HeaderMap::new();
            inject_headers(&cx, &mut out);
            if let Some(tp) = out.get("traceparent") {
                assert!(traceparent::TraceParent::parse(tp.to_str().unwrap()).is_some());
            }
        }
    }

    /// A tracer sampling as its parent says, new traces as `sample_roots` says.
    fn parent_based(sample_roots: bool) -> crate::Tracer {
        use opentelemetry_sdk::trace::Sampler;
        let root = if sample_roots {
            Sampler::AlwaysOn
        } else {
            Sampler::AlwaysOff
        };
        let recorder = crate::Recorder::builder(Sampler::ParentBased(Box::new(root))).build();
        crate::Tracer::new(&recorder, "test", 4096)
    }

    fn flags_sent(cx: &TraceCx) -> String {
        let tp = inject_map(cx).remove("traceparent").unwrap_or_default();
        tp.rsplit('-').next().unwrap_or_default().to_owned()
    }

    /// Level 2's `random` flag, from the specification's rules: set on the traces we start
    /// (our ids are random), kept when a span is sampled out, kept from a caller that set it,
    /// never claimed for a caller's trace that did not.
    #[test]
    fn the_random_flag_follows_level_2() {
        let remote = |flags: &str| {
            extract_headers(&headers(&[(
                "traceparent",
                &format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"),
            )]))
        };
        // (case, tracer samples new traces, parent, flags of a child, of a grandchild)
        let cases: Vec<(&str, bool, TraceCx, &str)> = vec![
            ("a trace we start, sampled", true, TraceCx::root(), "03"),
            (
                "a trace we start, sampled out",
                false,
                TraceCx::root(),
                "02",
            ),
            ("a caller's random trace, sampled", true, remote("03"), "03"),
            (
                "a caller's random trace, sampled out",
                true,
                remote("02"),
                "02",
            ),
            ("a caller's trace without random", true, remote("01"), "01"),
            (
                "a caller's unsampled trace without random",
                true,
                remote("00"),
                "00",
            ),
        ];
        for (case, sample_roots, parent, expected) in cases {
            let tracer = parent_based(sample_roots);
            let child = tracer.start(&parent, "child", crate::SpanKind::Server, vec![]);
            assert_eq!(flags_sent(&child.cx()), expected, "{case}: child");
            let grandchild =
                tracer.start(&child.cx(), "grandchild", crate::SpanKind::Internal, vec![]);
            assert_eq!(flags_sent(&grandchild.cx()), expected, "{case}: grandchild");
            let mut out = http::HeaderMap::new();
            inject_outbound_headers(&grandchild.cx(), &mut out);
            let tp = out.get("traceparent").unwrap().to_str().unwrap().to_owned();
            assert!(
                tp.ends_with(&format!("-{expected}")),
                "{case}: outbound {tp}"
            );
        }
    }
}
