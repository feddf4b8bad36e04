//! The W3C Baggage `baggage` header: application-defined `key=value;properties` entries that
//! travel with a request.
//!
//! This module parses the header into OpenTelemetry's [`Baggage`] and writes it back. It knows
//! nothing about trace context: baggage is valid with or without a `traceparent`.
//!
//! Unlike `tracestate`, a bad list-member does not spoil the others: each one is checked on its
//! own and skipped when invalid, as the Baggage specification asks.
//!
//! Limits: the specification requires propagating *at least* 64 list-members and 8192 bytes. We
//! take exactly those, because [`Baggage`] itself refuses to hold more than 64 entries or 8192
//! bytes; accepting more would only have it drop arbitrary entries later. Members past the limits
//! are dropped whole, never cut.

use opentelemetry::baggage::Baggage;

/// The header (and task-message field) name.
pub const HEADER: &str = "baggage";

/// The most list-members kept when reading and written when sending.
pub const MAX_MEMBERS: usize = 64;

/// The most bytes of `baggage` read (all header lines and the commas joining them) and written.
pub const MAX_BYTES: usize = 8192;

/// Reads the baggage of a carrier from all the values it holds for the header.
///
/// Repeated header lines form one list, in order. Invalid list-members are skipped; the first
/// [`MAX_MEMBERS`] valid ones within the first [`MAX_BYTES`] bytes are kept. When a key appears
/// twice the later value wins. Property values are kept as received (still percent-encoded): they
/// are only passed along.
pub fn parse_lines(lines: &[&str]) -> Baggage {
    let mut baggage = Baggage::new();
    let mut kept = 0;
    // Bytes of the combined list seen so far, counting the commas that join lines.
    let mut used = 0;
    'lines: for (index, line) in lines.iter().enumerate() {
        used += usize::from(index > 0);
        let room = MAX_BYTES.saturating_sub(used);
        // Past the byte budget, only the list-members that end before it are read: the line is
        // cut at the last comma that fits, so a truncated member is never taken for a whole one.
        let (readable, cut) = if line.len() <= room {
            (*line, false)
        } else {
            match line.as_bytes()[..=room].iter().rposition(|&c| c == b',') {
                Some(end) => (&line[..end], true),
                None => break,
            }
        };
        used += line.len();
        for member in readable.split(',') {
            if kept == MAX_MEMBERS {
                break 'lines;
            }
            if let Some((key, value, properties)) = parse_member(member) {
                baggage.insert_with_metadata(key.to_owned(), value, properties);
                kept += 1;
            }
        }
        if cut {
            break;
        }
    }
    baggage
}

/// Reads one `baggage` value; see [`parse_lines`].
pub fn parse(value: &str) -> Baggage {
    parse_lines(&[value])
}

/// The `baggage` header value for `baggage`, or `None` when there is nothing to send.
///
/// Entries are written sorted by key, so the output does not depend on hash order. Values are
/// percent-encoded. Entries whose key is not a token, or whose properties are not valid, are left
/// out (OpenTelemetry lets code store metadata we could not send correctly); entries that would
/// go past [`MAX_MEMBERS`] or [`MAX_BYTES`] are left out whole.
pub fn format(baggage: &Baggage) -> Option<String> {
    let mut entries: Vec<_> = baggage.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let mut out = String::new();
    let mut count = 0;
    for (key, (value, metadata)) in entries {
        if count == MAX_MEMBERS {
            break;
        }
        let key = key.as_str();
        if !is_token(key) {
            continue;
        }
        let mut member = format!("{key}={}", percent_encode(value.as_str()));
        if !metadata.as_str().is_empty() {
            let Some(properties) = parse_properties(metadata.as_str()) else {
                continue;
            };
            member.push(';');
            member.push_str(&properties);
        }
        let extra = usize::from(!out.is_empty()) + member.len();
        if out.len() + extra > MAX_BYTES {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&member);
        count += 1;
    }
    (!out.is_empty()).then_some(out)
}

/// One list-member: `key OWS "=" OWS value *( OWS ";" OWS property )`, as (key, decoded value,
/// normalized properties). `None` when invalid.
fn parse_member(member: &str) -> Option<(&str, String, String)> {
    let member = trim_ows(member);
    let (pair, properties) = match member.split_once(';') {
        Some((pair, properties)) => (pair, parse_properties(properties)?),
        None => (member, String::new()),
    };
    let (key, value) = pair.split_once('=')?;
    let key = trim_ows(key);
    let value = trim_ows(value);
    if !is_token(key) {
        return None;
    }
    Some((key, percent_decode(value)?, properties))
}

/// Checks a `;`-separated property list and rewrites it without optional whitespace:
/// `key` or `key=value` items joined by `;`. An empty item (e.g. a trailing `;`) is invalid.
fn parse_properties(properties: &str) -> Option<String> {
    let mut out = String::with_capacity(properties.len());
    for property in properties.split(';') {
        if !out.is_empty() {
            out.push(';');
        }
        match property.split_once('=') {
            Some((key, value)) => {
                let (key, value) = (trim_ows(key), trim_ows(value));
                if !is_token(key) || !value.bytes().all(is_value_octet) {
                    return None;
                }
                out.push_str(key);
                out.push('=');
                out.push_str(value);
            }
            None => {
                let key = trim_ows(property);
                if !is_token(key) {
                    return None;
                }
                out.push_str(key);
            }
        }
    }
    Some(out)
}

/// Strips optional whitespace (spaces and tabs).
fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Whether `s` is an HTTP token (RFC 7230 `1*tchar`): the baggage key grammar.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(
                    c,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// A byte allowed as is in a baggage value: printable ASCII except space, `"`, `,`, `;` and `\`.
fn is_value_octet(c: u8) -> bool {
    matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// Decodes a baggage value: checks its characters and turns `%XX` escapes into bytes.
///
/// A `%` not followed by two hex digits makes the value invalid. Decoded bytes that are not
/// UTF-8 become U+FFFD, as the specification asks.
pub fn percent_decode(value: &str) -> Option<String> {
    if !value.bytes().all(is_value_octet) {
        return None;
    }
    let bytes = crate::percent::decode(value)?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Encodes a baggage value: ASCII letters, digits and `-._~` stay; every other byte becomes
/// `%XX` (uppercase hex).
///
/// More is encoded than the specification requires (it only demands it for bytes outside the
/// value grammar and for `%`), so the output survives peers with looser or stricter parsers.
pub fn percent_encode(value: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(value.len());
    for c in value.bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 0x0f)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use opentelemetry::StringValue;

    use super::*;

    fn get(baggage: &Baggage, key: &str) -> Option<String> {
        baggage.get(key).map(StringValue::to_string)
    }

    #[test]
    fn values_are_percent_decoded() {
        let cases = [
            ("k=plain", "plain"),
            ("k=hello%20world", "hello world"),
            ("k=%E2%9C%93", "✓"),
            ("k=%e2%9c%93", "✓"),
            ("k=a%2Cb%3Bc%25", "a,b;c%"),
            ("k=%FF", "\u{fffd}"),
            ("k=a=b", "a=b"),
            ("k=", ""),
            (" k \t= \tv ", "v"),
        ];
        for (input, expected) in cases {
            let baggage = parse(input);
            assert_eq!(get(&baggage, "k").as_deref(), Some(expected), "{input:?}");
        }
    }

    #[test]
    fn invalid_members_are_skipped_one_by_one() {
        let baggage = parse(
            "good=1,bad key=2,=3,novalue,quote=\"x\",pct=%G1,trail=%2,sp=a b,ok2=2;p=1,badprop=3;=x,\
             semi=4;,é=5,back=a\\b",
        );
        let mut keys: Vec<String> = baggage.iter().map(|(k, _)| k.to_string()).collect();
        keys.sort();
        assert_eq!(keys, ["good", "ok2"]);
    }

    #[test]
    fn properties_are_kept_without_whitespace() {
        let baggage = parse("k=v ; p1 = x ;p2\t; p3=%20");
        let (value, metadata) = baggage.get_with_metadata("k").unwrap();
        assert_eq!(value.as_str(), "v");
        assert_eq!(metadata.as_str(), "p1=x;p2;p3=%20");
        assert_eq!(format(&baggage).as_deref(), Some("k=v;p1=x;p2;p3=%20"));
    }

    #[test]
    fn repeated_header_lines_are_one_list_and_later_values_win() {
        let baggage = parse_lines(&["a=1,b=2", "c=3", "a=4"]);
        assert_eq!(baggage.len(), 3);
        assert_eq!(get(&baggage, "a").as_deref(), Some("4"));
        assert_eq!(get(&baggage, "c").as_deref(), Some("3"));
    }

    #[test]
    fn at_most_64_members_are_kept() {
        let list: Vec<String> = (0..100).map(|i| format!("k{i}=v")).collect();
        let baggage = parse(&list.join(","));
        assert_eq!(baggage.len(), MAX_MEMBERS);
        assert!(baggage.get("k63").is_some());
        assert!(baggage.get("k64").is_none());
        // Invalid members do not use up the count.
        let with_junk = format!("{},{}", vec!["junk"; 100].join(","), list[..64].join(","));
        assert_eq!(parse(&with_junk).len(), MAX_MEMBERS);
    }

    #[test]
    fn only_whole_members_within_8192_bytes_are_read() {
        // 1000 members of 10 bytes: only those ending before the budget are kept, none cut.
        let list: Vec<String> = (0..1000).map(|i| format!("k{i:03}=vvvvv")).collect();
        let joined = list.join(",");
        let baggage = parse(&joined[..]);
        assert!(baggage.len() <= MAX_MEMBERS);
        let wide: Vec<String> = (0..40)
            .map(|i| format!("k{i:02}={}", "v".repeat(400)))
            .collect();
        let baggage = parse(&wide.join(","));
        // 404 + 1 bytes per member: 20 fit in 8192 bytes, the 21st is not cut in two.
        assert_eq!(baggage.len(), 20);
        assert!(baggage.iter().all(|(_, (v, _))| v.as_str().len() == 400));
        let one_huge = format!("k={}", "v".repeat(MAX_BYTES));
        assert!(parse(&one_huge).is_empty());
        let lines = vec!["a=1"; 5000];
        assert_eq!(parse_lines(&lines).len(), 1);
    }

    #[test]
    fn written_values_are_percent_encoded_and_read_back_equal() {
        let mut baggage = Baggage::new();
        let _ = baggage.insert("user.id", "Zoë, \"the\" admin; 100%");
        let _ = baggage.insert("plain", "abc-._~");
        let header = format(&baggage).unwrap();
        assert_eq!(
            header,
            "plain=abc-._~,user.id=Zo%C3%AB%2C%20%22the%22%20admin%3B%20100%25"
        );
        let back = parse(&header);
        assert_eq!(
            get(&back, "user.id").as_deref(),
            Some("Zoë, \"the\" admin; 100%")
        );
        assert_eq!(get(&back, "plain").as_deref(), Some("abc-._~"));
    }

    #[test]
    fn entries_that_cannot_be_sent_are_left_out() {
        let mut baggage = Baggage::new();
        let _ = baggage.insert_with_metadata("ok", "1", "p=1");
        let _ = baggage.insert_with_metadata("badmeta", "2", "p=a b");
        assert_eq!(format(&baggage).as_deref(), Some("ok=1;p=1"));
        assert_eq!(format(&Baggage::new()), None);
    }

    #[test]
    fn random_inputs_never_panic_and_accepted_entries_roundtrip() {
        let mut rng = crate::propagation::tests::XorShift::new(0x6261_6767_6167_6521);
        let alphabet = b"ab=;,% \t2F\"\\\xc3\xa9";
        for i in 0..20_000 {
            let text = rng.text(i, 100, alphabet);
            let baggage = parse(&text);
            if let Some(header) = format(&baggage) {
                let back = parse(&header);
                assert_eq!(back.len(), baggage.len(), "{text:?}");
                for (key, (value, metadata)) in baggage.iter() {
                    assert_eq!(
                        back.get_with_metadata(key.as_str()),
                        Some(&(value.clone(), metadata.clone()))
                    );
                }
            }
        }
    }
}
