//! B3 (Zipkin) trace headers: the single `b3` header and the `X-B3-*` multi-header form.
//!
//! Written here rather than taken from `opentelemetry-zipkin`, whose propagator comes with a
//! whole exporter we do not use and its own copy of the OpenTelemetry crates. Both forms are
//! read whichever one is configured (the single header wins, as the OpenTelemetry
//! specification asks); a sampling decision left open (no flag) lets jobpilot's sampler treat
//! the trace as sampled, and `d` / `X-B3-Flags: 1` (debug) means sampled. B3 carries no
//! tracestate and no baggage.

use crate::ids;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The single header.
pub const SINGLE: &str = "b3";
/// The multi-header names (lowercase, as HTTP/2 and our task messages spell them).
pub const TRACE_ID: &str = "x-b3-traceid";
/// The span id header.
pub const SPAN_ID: &str = "x-b3-spanid";
/// The sampling decision header.
pub const SAMPLED: &str = "x-b3-sampled";
/// The debug flag header.
pub const FLAGS: &str = "x-b3-flags";
/// The parent span id header (read and ignored; never written).
pub const PARENT_SPAN_ID: &str = "x-b3-parentspanid";

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A 16- or 32-digit lowercase hex trace id; a 64-bit one is left-padded with zeros.
fn trace_id(s: &str) -> Option<TraceId> {
    if !(s.len() == 16 || s.len() == 32) || !is_lower_hex(s) {
        return None;
    }
    let id = TraceId::from_hex(s).ok()?;
    (id != TraceId::INVALID).then_some(id)
}

fn span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 || !is_lower_hex(s) {
        return None;
    }
    let id = SpanId::from_hex(s).ok()?;
    (id != SpanId::INVALID).then_some(id)
}

fn remote(trace_id: TraceId, span_id: SpanId, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE)
}

/// Parses `b3: {trace id}-{span id}[-{sampled}[-{parent span id}]]`. A lone sampling
/// decision (`b3: 0`) carries no context and gives `None`.
pub fn parse_single(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace = trace_id(parts.next()?)?;
    let span = span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => true,
        Some("1") | Some("d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(remote(trace, span, sampled))
}

/// Parses the multi-header form from a lookup of lowercase header names.
pub fn parse_multi<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<SpanContext> {
    let trace = trace_id(get(TRACE_ID)?.trim())?;
    let span = span_id(get(SPAN_ID)?.trim())?;
    if let Some(parent) = get(PARENT_SPAN_ID) {
        span_id(parent.trim())?;
    }
    let debug = get(FLAGS).map(str::trim) == Some("1");
    let sampled = match get(SAMPLED).map(str::trim) {
        None => true,
        Some("1") | Some("true") => true,
        Some("0") | Some("false") => debug,
        Some(_) => return None,
    };
    Some(remote(trace, span, sampled || debug))
}

/// The single-header value for `sc`.
pub fn format_single(sc: &SpanContext) -> String {
    let sampled = if sc.is_sampled() { "1" } else { "0" };
    format!(
        "{}-{}-{sampled}",
        ids::trace_hex(sc.trace_id()),
        ids::span_hex(sc.span_id())
    )
}

/// The multi-header fields for `sc`, as (name, value).
pub fn format_multi(sc: &SpanContext) -> [(&'static str, String); 3] {
    let sampled = if sc.is_sampled() { "1" } else { "0" };
    [
        (TRACE_ID, ids::trace_hex(sc.trace_id()).to_string()),
        (SPAN_ID, ids::span_hex(sc.span_id()).to_string()),
        (SAMPLED, sampled.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const T32: &str = "80f198ee56343ba864fe8b2a57d3eff7";
    const S: &str = "e457b5a2e4d86bd1";

    #[test]
    fn single_header_cases() {
        let ok = |v: &str| parse_single(v).unwrap_or_else(|| panic!("{v} is valid"));
        let sc = ok(&format!("{T32}-{S}-1"));
        assert_eq!(sc.trace_id().to_string(), T32);
        assert_eq!(sc.span_id().to_string(), S);
        assert!(sc.is_sampled() && sc.is_remote());
        assert!(!ok(&format!("{T32}-{S}-0")).is_sampled());
        assert!(ok(&format!("{T32}-{S}-d")).is_sampled());
        assert!(ok(&format!("{T32}-{S}")).is_sampled(), "deferred");
        assert!(ok(&format!("{T32}-{S}-1-05e3ac9a4f6e3b90")).is_sampled());
        let short = ok(&format!("64fe8b2a57d3eff7-{S}-1"));
        assert_eq!(
            short.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        for bad in [
            "0",
            "1",
            "",
            T32,
            &format!("{T32}-{S}-2"),
            &format!("{}-{S}-1", T32.to_uppercase()),
            &format!("{T32}-0000000000000000-1"),
            &format!("00000000000000000000000000000000-{S}-1"),
            &format!("{T32}-{S}-1-xyz"),
            &format!("{T32}-{S}-1-05e3ac9a4f6e3b90-extra"),
            &format!("{T32}0-{S}-1"),
        ] {
            assert!(parse_single(bad).is_none(), "{bad:?} is invalid");
        }
    }

    #[test]
    fn multi_header_cases() {
        let parse = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            parse_multi(|k| {
                pairs
                    .iter()
                    .find(|(name, _)| name == k)
                    .map(|(_, v)| v.as_str())
            })
        };
        let sc = parse(&[(TRACE_ID, T32), (SPAN_ID, S), (SAMPLED, "1")]).unwrap();
        assert!(sc.is_sampled());
        assert!(
            !parse(&[(TRACE_ID, T32), (SPAN_ID, S), (SAMPLED, "0")])
                .unwrap()
                .is_sampled()
        );
        assert!(
            parse(&[(TRACE_ID, T32), (SPAN_ID, S), (SAMPLED, "0"), (FLAGS, "1")])
                .unwrap()
                .is_sampled()
        );
        assert!(
            parse(&[(TRACE_ID, T32), (SPAN_ID, S)])
                .unwrap()
                .is_sampled()
        );
        assert!(parse(&[(TRACE_ID, T32)]).is_none());
        assert!(parse(&[(TRACE_ID, "xyz"), (SPAN_ID, S)]).is_none());
        assert!(parse(&[(TRACE_ID, T32), (SPAN_ID, S), (SAMPLED, "yes")]).is_none());
    }

    #[test]
    fn formatted_headers_parse_back() {
        let sc = parse_single(&format!("{T32}-{S}-1")).unwrap();
        assert_eq!(format_single(&sc), format!("{T32}-{S}-1"));
        let fields = format_multi(&sc);
        let back = parse_multi(|k| {
            fields
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.as_str())
        })
        .unwrap();
        assert_eq!(back, sc);
    }
}
