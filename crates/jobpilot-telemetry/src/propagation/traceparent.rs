//! The W3C Trace Context (Level 2) `traceparent` header: parsing one value into its fields and
//! writing the fields back out.
//!
//! This module knows only the grammar of a single `traceparent` value. It does not look at
//! `tracestate` (see [`super::tracestate`]), does not decide what to do when a request carries the
//! header more than once (that is [`parse_lines`], used by the propagator), and does not build
//! OpenTelemetry contexts.
//!
//! The parser is strict on purpose: a value that is almost right (uppercase hex, a field one digit
//! too long, spaces inside, extra fields after a version `00` value) is rejected, and the caller
//! starts a new trace instead of joining a trace under an id that another system will not match.

use std::fmt;

use opentelemetry::trace::{SpanId, TraceFlags, TraceId};

use crate::ids;

/// The header (and task-message field) name.
pub const HEADER: &str = "traceparent";

/// The trace flags this implementation understands: `sampled` (0x01) and, from Level 2,
/// `random` (0x02, "the right-most 7 bytes of the trace id are random").
///
/// The specification asks that the other bits be set to zero when a value is written, so they
/// are cleared as soon as a value is parsed: a span context never carries a bit we could not
/// vouch for, and what we emit is always a value every Level 1 and Level 2 reader accepts.
pub const KNOWN_FLAGS: u8 = 0x01 | 0x02;

/// The length of a version `00` value: `vv-` + 32 + `-` + 16 + `-` + 2.
const VERSION_00_LEN: usize = 55;

/// The longest (trimmed) value we look at. Version `00` values are exactly 55 bytes; future
/// versions may append fields, and we accept some room for them, but nothing justifies reading a
/// kilobyte-long header just to ignore most of it.
pub const MAX_LEN: usize = 512;

/// The fields of a valid `traceparent` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id; never all zeros.
    pub trace_id: TraceId,
    /// The id of the caller's span (the parent of the span about to start); never all zeros.
    pub parent_id: SpanId,
    /// The trace flags, reduced to [`KNOWN_FLAGS`].
    pub flags: TraceFlags,
}

impl TraceParent {
    /// Parses one `traceparent` value; `None` when it is not valid.
    ///
    /// Spaces and tabs around the whole value (optional whitespace of the HTTP field) are ignored;
    /// anywhere else they make the value invalid.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let value = value.trim_matches([' ', '\t']);
        if value.len() > MAX_LEN {
            return None;
        }
        let b = value.as_bytes();
        if b.len() < VERSION_00_LEN {
            return None;
        }
        let version = hex_u8(&b[0..2])?;
        // Version ff is forbidden outright: it is reserved so that no real version can use it.
        if version == 0xff {
            return None;
        }
        // Version 00 has exactly four fields. A later version may add fields after the four we
        // know, each introduced by a dash; we read our four and ignore the rest.
        if version == 0x00 && b.len() != VERSION_00_LEN {
            return None;
        }
        if b.len() > VERSION_00_LEN && b[VERSION_00_LEN] != b'-' {
            return None;
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = u128::from_str_radix(lower_hex(&b[3..35])?, 16).ok()?;
        let parent_id = u64::from_str_radix(lower_hex(&b[36..52])?, 16).ok()?;
        let flags = hex_u8(&b[53..55])?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id: TraceId::from_bytes(trace_id.to_be_bytes()),
            parent_id: SpanId::from_bytes(parent_id.to_be_bytes()),
            flags: TraceFlags::new(flags & KNOWN_FLAGS),
        })
    }

    /// The value as version `00`, with only the [`KNOWN_FLAGS`] bits: what is written into a
    /// header or a task message. Built straight into a string of its exact length; through
    /// the formatting machinery it cost more than a thousand instructions more, paid on every
    /// response (the ids are made and passed on with tracing off too).
    pub fn to_header(&self) -> String {
        let mut out = [b'-'; VERSION_00_LEN];
        out[..2].copy_from_slice(b"00");
        ids::write_hex(&self.trace_id.to_bytes(), &mut out[3..35]);
        ids::write_hex(&self.parent_id.to_bytes(), &mut out[36..52]);
        ids::write_hex(&[self.flags.to_u8() & KNOWN_FLAGS], &mut out[53..]);
        // Only ASCII was written.
        String::from_utf8(out.to_vec()).unwrap_or_default()
    }
}

/// Writes the value as [`TraceParent::to_header`] does.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_header())
    }
}

/// Reads the `traceparent` of a carrier from all the values it holds for the header.
///
/// Exactly one value is required: two `traceparent` fields cannot be combined into one, and
/// picking either would be a guess, so the specification treats the pair as invalid.
pub fn parse_lines(lines: &[&str]) -> Option<TraceParent> {
    match lines {
        [one] => TraceParent::parse(one),
        _ => None,
    }
}

/// `s` itself when it is made only of lowercase hex digits (uppercase is not allowed).
fn lower_hex(s: &[u8]) -> Option<&str> {
    if s.iter().all(|&c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        // All ASCII, so this cannot fail.
        std::str::from_utf8(s).ok()
    } else {
        None
    }
}

/// Two lowercase hex digits as a byte.
fn hex_u8(s: &[u8]) -> Option<u8> {
    u8::from_str_radix(lower_hex(s)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn tp(version: &str, trace: &str, span: &str, flags: &str) -> String {
        format!("{version}-{trace}-{span}-{flags}")
    }

    #[test]
    fn a_well_formed_version_00_value_is_read_field_by_field() {
        let parsed = TraceParent::parse(&tp("00", TRACE, SPAN, "01")).unwrap();
        assert_eq!(parsed.trace_id.to_string(), TRACE);
        assert_eq!(parsed.parent_id.to_string(), SPAN);
        assert_eq!(parsed.flags.to_u8(), 0x01);
    }

    #[test]
    fn values_of_the_wrong_shape_are_rejected() {
        let long_trace = format!("{TRACE}0");
        let cases: &[(&str, String)] = &[
            ("empty", String::new()),
            ("short trace id", tp("00", &TRACE[1..], SPAN, "01")),
            ("long trace id", tp("00", &long_trace, SPAN, "01")),
            ("short parent id", tp("00", TRACE, &SPAN[1..], "01")),
            ("long parent id", tp("00", TRACE, &format!("{SPAN}0"), "01")),
            ("one flag digit", tp("00", TRACE, SPAN, "1")),
            ("three flag digits", tp("00", TRACE, SPAN, "001")),
            ("one version digit", tp("0", TRACE, SPAN, "01")),
            ("three version digits", tp("000", TRACE, SPAN, "01")),
            ("no flags", format!("00-{TRACE}-{SPAN}")),
            ("underscores for dashes", format!("00_{TRACE}_{SPAN}_01")),
            ("version ff", tp("ff", TRACE, SPAN, "01")),
            ("non-hex version", tp("0g", TRACE, SPAN, "01")),
            ("dot in version", tp(".0", TRACE, SPAN, "01")),
            ("non-hex flags", tp("00", TRACE, SPAN, "0x")),
            (
                "non-hex trace id",
                tp("00", &TRACE.replace('4', "z"), SPAN, "01"),
            ),
            (
                "uppercase trace id",
                tp("00", &TRACE.to_uppercase(), SPAN, "01"),
            ),
            (
                "uppercase parent id",
                tp("00", TRACE, &SPAN.to_uppercase(), "01"),
            ),
            ("uppercase flags", tp("00", TRACE, SPAN, "0A")),
            ("uppercase version", tp("0A", TRACE, SPAN, "01")),
            ("all-zero trace id", tp("00", &"0".repeat(32), SPAN, "01")),
            ("all-zero parent id", tp("00", TRACE, &"0".repeat(16), "01")),
            (
                "space inside trace id",
                tp("00", &format!(" {}", &TRACE[1..]), SPAN, "01"),
            ),
            (
                "padded parent id",
                tp("00", TRACE, &format!("{} ", &SPAN[1..]), "01"),
            ),
            ("space before flags", format!("00-{TRACE}-{SPAN}- 1")),
            ("space around dashes", format!("00 - {TRACE} - {SPAN} - 01")),
            (
                "version 00 with an extra field",
                format!("{}-extra", tp("00", TRACE, SPAN, "01")),
            ),
            (
                "version 00 with a trailing dot",
                format!("{}.", tp("00", TRACE, SPAN, "01")),
            ),
            (
                "version 00 with a trailing dash",
                format!("{}-", tp("00", TRACE, SPAN, "01")),
            ),
            (
                "future version with garbage",
                format!("{}.x", tp("cc", TRACE, SPAN, "01")),
            ),
            ("future version too short", tp("cc", TRACE, SPAN, "1")),
            ("non-ASCII", format!("{}é", tp("00", TRACE, SPAN, "0"))),
        ];
        for (name, value) in cases {
            assert_eq!(TraceParent::parse(value), None, "{name}: {value:?}");
        }
    }

    #[test]
    fn values_that_follow_the_rules_are_accepted() {
        let cases: &[(&str, String, u8)] = &[
            ("sampled", tp("00", TRACE, SPAN, "01"), 0x01),
            ("not sampled", tp("00", TRACE, SPAN, "00"), 0x00),
            ("sampled and random", tp("00", TRACE, SPAN, "03"), 0x03),
            ("random only", tp("00", TRACE, SPAN, "02"), 0x02),
            (
                "unknown bits are cleared",
                tp("00", TRACE, SPAN, "ff"),
                0x03,
            ),
            ("unknown bits alone", tp("00", TRACE, SPAN, "08"), 0x00),
            (
                "surrounding spaces",
                format!("  {}  ", tp("00", TRACE, SPAN, "01")),
                0x01,
            ),
            (
                "surrounding tabs",
                format!("\t{}\t", tp("00", TRACE, SPAN, "01")),
                0x01,
            ),
            ("future version", tp("cc", TRACE, SPAN, "01"), 0x01),
            (
                "future version with extra fields",
                format!(
                    "{}-what-the-future-will-be-like",
                    tp("cc", TRACE, SPAN, "01")
                ),
                0x01,
            ),
            (
                "future version with an empty extra field",
                format!("{}-", tp("01", TRACE, SPAN, "00")),
                0x00,
            ),
        ];
        for (name, value, flags) in cases {
            let parsed = TraceParent::parse(value);
            assert_eq!(
                parsed.map(|p| p.flags.to_u8()),
                Some(*flags),
                "{name}: {value:?}"
            );
        }
    }

    #[test]
    fn a_future_version_value_is_written_back_as_version_00() {
        let value = format!("{}-more", tp("cc", TRACE, SPAN, "03"));
        let parsed = TraceParent::parse(&value).unwrap();
        assert_eq!(parsed.to_string(), tp("00", TRACE, SPAN, "03"));
    }

    #[test]
    fn overlong_values_are_rejected_without_being_read() {
        let value = format!("{}-{}", tp("cc", TRACE, SPAN, "01"), "x".repeat(MAX_LEN));
        assert_eq!(TraceParent::parse(&value), None);
        let huge = "a".repeat(1 << 20);
        assert_eq!(TraceParent::parse(&huge), None);
    }

    #[test]
    fn only_a_single_traceparent_field_counts() {
        let a = tp("00", TRACE, SPAN, "01");
        let b = tp("00", TRACE, "b7ad6b7169203331", "01");
        assert!(parse_lines(&[&a]).is_some());
        assert_eq!(parse_lines(&[]), None);
        assert_eq!(parse_lines(&[&a, &b]), None);
        assert_eq!(parse_lines(&[&a, &a]), None);
    }

    #[test]
    fn writing_then_reading_gives_the_same_fields() {
        let parsed = TraceParent::parse(&tp("00", TRACE, SPAN, "03")).unwrap();
        assert_eq!(TraceParent::parse(&parsed.to_string()), Some(parsed));
        let with_unknown_bits = TraceParent {
            flags: TraceFlags::new(0xfd),
            ..parsed
        };
        assert!(with_unknown_bits.to_string().ends_with("-01"));
    }

    /// Random bytes, random mixes of valid pieces: never a panic, and anything accepted writes
    /// back out as a value that parses to the same fields.
    #[test]
    fn random_inputs_never_panic_and_accepted_ones_roundtrip() {
        let mut rng = crate::propagation::tests::XorShift::new(0x7261_6365_7061_7265);
        let alphabet = b"0123456789abcdefABCDEF- \t.x\xff";
        for i in 0..20_000 {
            let len = if i % 2 == 0 { 55 } else { rng.below(80) };
            let bytes: Vec<u8> = if i % 3 == 0 {
                (0..len).map(|_| rng.byte()).collect()
            } else if i % 3 == 1 {
                // A valid value (of a random version) with a few bytes replaced.
                let mut valid = tp("cc", TRACE, SPAN, "01").into_bytes();
                valid[0] = alphabet[rng.below(16)];
                valid[1] = alphabet[rng.below(16)];
                for _ in 0..rng.below(3) {
                    let at = rng.below(valid.len());
                    valid[at] = alphabet[rng.below(alphabet.len())];
                }
                valid.truncate(len.max(50));
                valid
            } else {
                (0..len)
                    .map(|_| alphabet[rng.below(alphabet.len())])
                    .collect()
            };
            let text = String::from_utf8_lossy(&bytes);
            if let Some(parsed) = TraceParent::parse(&text) {
                let again = parsed.to_string();
                assert_eq!(again.len(), 55);
                assert_eq!(TraceParent::parse(&again), Some(parsed), "{text:?}");
            }
        }
    }
}
