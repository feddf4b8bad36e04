//! The W3C Trace Context (Level 2) `tracestate` header: vendor-specific `key=value` list-members
//! that travel next to `traceparent`.
//!
//! This module validates the list and converts it to and from OpenTelemetry's
//! [`TraceState`]. It does not read `traceparent` (see [`super::traceparent`]) and never looks at
//! a `tracestate` on its own: the propagator only calls it once a valid `traceparent` was found,
//! because a `tracestate` is meaningless without the trace it belongs to.
//!
//! Our grammar check is the authority. [`TraceState::from_key_value`] validates too, but
//! differently: more loosely in most places (it takes keys starting with a digit, empty system
//! ids, control characters in values), and in one place more strictly: in opentelemetry 0.33 it
//! refuses a 14-character system id (`tenant@system`), which the specification allows. So a
//! list is checked here first, and [`Members::to_trace_state`] reports when OpenTelemetry cannot
//! hold a list we accept; the propagator then carries that list as text beside the span context.
//!
//! Keys follow the Level 2 grammar: a lowercase letter or digit, then up to 255 of
//! `a-z 0-9 _ - * / @` (so `@` may appear anywhere after the first character, any number of
//! times; a key starting with `@` is invalid). A list with any invalid list-member or more than
//! [`MAX_MEMBERS`] members is dropped as a whole: the specification allows discarding the
//! entire header when it cannot be parsed, and partial lists would hand a vendor a state it
//! never wrote. A repeated key does not invalidate the list: the trace is still continued and
//! only the first (left-most, most recent) member with that key is kept.

use std::fmt;

use opentelemetry::trace::TraceState;

/// The header (and task-message field) name.
pub const HEADER: &str = "tracestate";

/// The most list-members a `tracestate` may hold (the specification's limit).
pub const MAX_MEMBERS: usize = 32;

/// The most bytes of `tracestate` we read, counting all header lines and the commas that join
/// them. 32 members of the longest key and value take about 16 KiB, but real lists are a few
/// hundred bytes; 8 KiB matches the common per-header limit of HTTP servers and bounds the work.
/// A longer input is dropped whole rather than cut, which could split a list-member.
pub const MAX_BYTES: usize = 8192;

/// The longest value (the specification's limit).
const MAX_VALUE_LEN: usize = 256;

/// A `tracestate` list that passed our checks: its `(key, value)` list-members in order,
/// borrowed from the header lines. Written out (with `Display`) as a `tracestate` value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Members<'a> {
    /// Reads the `tracestate` list from all the values a carrier holds for the header.
    ///
    /// Repeated header lines are one list, joined with commas in the order received. Returns
    /// `None` when the list is invalid (it must then be dropped, while the `traceparent` is kept);
    /// a valid list may be empty (e.g. only whitespace).
    pub fn parse_lines(lines: &[&'a str]) -> Option<Self> {
        // Check the size before scanning anything.
        let mut total = lines.len().saturating_sub(1);
        for line in lines {
            total += line.len();
            if total > MAX_BYTES {
                return None;
            }
        }
        let mut members: Vec<(&'a str, &'a str)> = Vec::new();
        // List-members seen, repeats included: the limit is on what the header holds.
        let mut seen = 0;
        for member in lines.iter().flat_map(|line| line.split(',')) {
            // Optional whitespace (spaces and tabs) may surround each list-member; a member made
            // only of it is empty and is skipped.
            let member = member.trim_matches([' ', '\t']);
            if member.is_empty() {
                continue;
            }
            if seen == MAX_MEMBERS {
                return None;
            }
            seen += 1;
            let (key, value) = member.split_once('=')?;
            if !is_valid_key(key) || !is_valid_value(value) {
                return None;
            }
            // At most 32 members, so a linear search is cheaper than hashing. A repeated key
            // keeps its first member.
            if members.iter().any(|(k, _)| *k == key) {
                continue;
            }
            members.push((key, value));
        }
        Some(Members(members))
    }

    /// Reads one `tracestate` value; see [`Members::parse_lines`].
    pub fn parse(value: &'a str) -> Option<Self> {
        Members::parse_lines(&[value])
    }

    /// Whether the list has no members.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The list-members, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a str)> + '_ {
        self.0.iter().copied()
    }

    /// The list as an OpenTelemetry [`TraceState`], or `None` when OpenTelemetry refuses one of
    /// its keys (see the module docs).
    pub fn to_trace_state(&self) -> Option<TraceState> {
        TraceState::from_key_value(self.0.iter().copied()).ok()
    }
}

/// Writes the list as a `tracestate` value (`key=value` joined by commas, no whitespace).
impl fmt::Display for Members<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (key, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{key}={value}")?;
        }
        Ok(())
    }
}

/// The `tracestate` header value for `state`, or `None` when there is nothing to send.
///
/// A [`TraceState`] built elsewhere in the process may contain members that OpenTelemetry accepts
/// but the specification does not; those members are left out rather than sent to a peer that
/// would then drop the whole list. The output is kept within [`MAX_MEMBERS`] and [`MAX_BYTES`],
/// dropping whole members from the end (the oldest entries, by the specification's ordering).
pub fn format(state: &TraceState) -> Option<String> {
    let mut out = String::new();
    let mut count = 0;
    for (key, value) in state {
        if count == MAX_MEMBERS {
            break;
        }
        if !is_valid_key(key) || !is_valid_value(value) {
            continue;
        }
        let extra = usize::from(!out.is_empty()) + key.len() + 1 + value.len();
        if out.len() + extra > MAX_BYTES {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        count += 1;
    }
    (!out.is_empty()).then_some(out)
}

/// Whether `key` is a valid Level 2 list-member key: a lowercase letter or a digit, then up to
/// 255 of `a-z 0-9 _ - * / @`.
pub fn is_valid_key(key: &str) -> bool {
    match key.as_bytes().split_first() {
        Some((&first, rest)) => {
            key.len() <= 256
                && (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.iter().all(|&c| {
                    c.is_ascii_lowercase()
                        || c.is_ascii_digit()
                        || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
                })
        }
        None => false,
    }
}

/// Whether `value` is a valid list-member value: 1 to 256 printable ASCII characters
/// (0x20–0x7E) other than `,` and `=`, not ending in a space.
///
/// The specification's grammar ends a value with a non-blank character, so an empty value
/// (`key=`) is invalid too.
pub fn is_valid_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_VALUE_LEN
        && b.last() != Some(&b' ')
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list read from `lines`, written back out; `None` when invalid.
    fn read(lines: &[&str]) -> Option<String> {
        Members::parse_lines(lines).map(|m| m.to_string())
    }

    fn read_one(value: &str) -> Option<String> {
        read(&[value])
    }

    #[test]
    fn a_simple_list_is_read_in_order() {
        let members = Members::parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        assert_eq!(
            members.iter().collect::<Vec<_>>(),
            [("rojo", "00f067aa0ba902b7"), ("congo", "t61rcWkgMzE")]
        );
        let state = members.to_trace_state().unwrap();
        assert_eq!(state.header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    }

    #[test]
    fn repeated_header_lines_are_joined_in_order() {
        assert_eq!(
            read(&["foo=1", "bar=2,baz=3", "", "qux=4"]).as_deref(),
            Some("foo=1,bar=2,baz=3,qux=4")
        );
    }

    #[test]
    fn a_key_repeated_across_header_lines_keeps_the_first_line_s_member() {
        assert_eq!(read(&["foo=1", "foo=2"]).as_deref(), Some("foo=1"));
    }

    #[test]
    fn whitespace_and_empty_members_around_the_list_are_ignored() {
        let cases = [
            ("foo=1 , bar=2", "foo=1,bar=2"),
            ("\tfoo=1\t,\tbar=2\t", "foo=1,bar=2"),
            (",,foo=1,, ,\t,bar=2,", "foo=1,bar=2"),
            ("foo= 1", "foo= 1"),
            ("foo=a b", "foo=a b"),
        ];
        for (input, expected) in cases {
            assert_eq!(read_one(input).as_deref(), Some(expected), "{input:?}");
        }
        for blank in ["", " ", "\t", ",", " , , "] {
            let members = Members::parse(blank).unwrap();
            assert!(members.is_empty(), "{blank:?}");
            assert_eq!(members.to_trace_state(), Some(TraceState::NONE));
        }
    }

    #[test]
    fn up_to_32_members_are_accepted_and_33_drop_the_list() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        assert_eq!(read_one(&list(32)), Some(list(32)));
        assert_eq!(read_one(&list(33)), None);
        // Empty members do not count towards the limit.
        assert!(read_one(&format!("{},,,", list(32))).is_some());
    }

    /// Keys of the Level 2 grammar (`key = ( lcalpha / DIGIT ) 0*255 ( keychar )`, `keychar`
    /// adding `_ - * / @` to lowercase letters and digits), case by case.
    #[test]
    fn keys_follow_the_level_2_grammar() {
        let valid: &[(&str, String)] = &[
            ("one letter", "a".to_owned()),
            ("every key character", "a0_-*/@".to_owned()),
            ("256 characters", "z".repeat(256)),
            ("starts with a digit", "0simple".to_owned()),
            ("multi-tenant", "0tenant@system".to_owned()),
            ("at sign twice", "a@b@c".to_owned()),
            ("at sign last", "tenant@".to_owned()),
            ("digit after the at sign", "tenant@0system".to_owned()),
            ("long tenant part", format!("{}b@s", "a".repeat(241))),
            ("long system part", format!("t@{}", "y".repeat(200))),
            ("256 with at signs", format!("a{}", "@".repeat(255))),
        ];
        let invalid: &[(&str, String)] = &[
            ("empty", String::new()),
            ("uppercase", "A".to_owned()),
            ("uppercase later", "aB".to_owned()),
            ("starts with underscore", "_a".to_owned()),
            ("starts with an at sign", "@system".to_owned()),
            ("only an at sign", "@".to_owned()),
            ("dot", "a.b".to_owned()),
            ("space", "a b".to_owned()),
            ("257 characters", "z".repeat(257)),
            ("257 with at signs", format!("a{}", "@".repeat(256))),
            ("non-ASCII", "ké".to_owned()),
        ];
        for (case, key) in valid {
            assert!(is_valid_key(key), "{case}: {key:?} should be valid");
            assert!(read_one(&format!("{key}=v")).is_some(), "{case}");
        }
        for (case, key) in invalid {
            assert!(!is_valid_key(key), "{case}: {key:?} should be invalid");
            assert_eq!(read_one(&format!("{key}=v,ok=1")), None, "{case}");
        }
    }

    #[test]
    fn a_list_opentelemetry_cannot_hold_is_reported_not_lost() {
        // The specification allows a 14-character system id; opentelemetry 0.33 does not.
        let input = format!("t@s{}=1,foo=2", "y".repeat(13));
        let members = Members::parse(&input).unwrap();
        assert_eq!(members.to_trace_state(), None);
        assert_eq!(members.to_string(), input);
        let system_13 = format!("t@s{}=1", "y".repeat(12));
        let members = Members::parse(&system_13).unwrap();
        assert!(members.to_trace_state().is_some());
    }

    #[test]
    fn values_follow_the_printable_ascii_grammar() {
        let long = "x".repeat(256);
        let too_long = "x".repeat(257);
        let valid = ["v", " v", "a b", "!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~", &long];
        let invalid = ["", " ", "v ", "a\tb", "a\u{7f}", "é", "a\u{1}", &too_long];
        for value in valid {
            assert!(is_valid_value(value), "{value:?} should be valid");
        }
        for value in invalid {
            assert!(!is_valid_value(value), "{value:?} should be invalid");
        }
        let invalid_lists = [
            "foo=bar=baz",
            "foo=,bar=3",
            "foo",
            "=1",
            "foo=1,bar",
            "foo =1",
            "foo= ",
        ];
        for list in invalid_lists {
            assert_eq!(read_one(list), None, "{list:?}");
        }
    }

    #[test]
    fn a_repeated_key_keeps_its_first_member_and_the_list() {
        assert_eq!(
            read_one("foo=1,bar=2,foo=3").as_deref(),
            Some("foo=1,bar=2")
        );
        assert_eq!(read_one("foo=1,foo=1").as_deref(), Some("foo=1"));
        assert_eq!(
            read(&["foo=1", "foo=2,bar=3"]).as_deref(),
            Some("foo=1,bar=3")
        );
        assert_eq!(read_one("foo=1,foo@x=1").as_deref(), Some("foo=1,foo@x=1"));
        // A repeat still counts as a member of the header for the 32-member limit.
        let repeats = vec!["k=v"; 33].join(",");
        assert_eq!(read_one(&repeats), None);
    }

    #[test]
    fn oversized_input_is_dropped_without_scanning_it() {
        let line = format!("k={}", "v".repeat(MAX_BYTES));
        assert_eq!(read_one(&line), None);
        let many = vec![",,,,"; 10_000];
        assert_eq!(read(&many), None);
        let just_fits = vec![""; MAX_BYTES + 1];
        assert_eq!(read(&just_fits).as_deref(), Some(""));
    }

    #[test]
    fn members_that_the_spec_forbids_are_not_sent() {
        let state = TraceState::from_key_value([("good", "1"), ("tab", "a\tb")]).unwrap();
        assert_eq!(format(&state).as_deref(), Some("good=1"));
        assert_eq!(format(&TraceState::NONE), None);
    }

    #[test]
    fn a_parsed_list_is_written_back_unchanged() {
        let input = "rojo=00f067aa0ba902b7,t@sys=a b,congo=t61rcWkgMzE";
        let state = Members::parse(input).unwrap().to_trace_state().unwrap();
        assert_eq!(format(&state).as_deref(), Some(input));
    }

    #[test]
    fn random_inputs_never_panic_and_accepted_ones_roundtrip() {
        let mut rng = crate::propagation::tests::XorShift::new(0x7374_6174_6573_7461);
        let alphabet = b"ab0@=,, \t*/-_Z.\x7f";
        for i in 0..20_000 {
            let text = rng.text(i, 120, alphabet);
            if let Some(members) = Members::parse(&text) {
                let again = members.to_string();
                assert_eq!(Members::parse(&again), Some(members.clone()), "{text:?}");
                if let Some(state) = members.to_trace_state() {
                    assert_eq!(format(&state).unwrap_or_default(), again);
                }
            }
        }
    }
}
