//! Percent-encoding (`%XX` escapes) as configuration values, baggage values and URL query keys
//! use it. Only decoding lives here; what may appear unescaped is the caller's rule.

/// The byte an escape at `bytes[i]` (a `%`) stands for: exactly two hex digits, no sign.
fn escape_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hex = bytes.get(i + 1..i + 3)?;
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let digit = |h: u8| (h as char).to_digit(16).unwrap_or(0) as u8;
    Some(digit(hex[0]) << 4 | digit(hex[1]))
}

/// Decodes every escape of `s`; `None` when a `%` does not start one.
pub(crate) fn decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(escape_at(bytes, i)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Decodes a URL query component leniently: a `%` that starts no escape stays as it is, `+`
/// is a space, and bytes that are not UTF-8 become U+FFFD.
pub(crate) fn decode_lossy(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], escape_at(bytes, i)) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(if c == b'+' { b' ' } else { c });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_two_hex_digits_and_nothing_else() {
        assert_eq!(decode("a%20b%2Fc%e9").unwrap(), b"a b/c\xe9");
        for bad in ["%", "%2", "%zz", "%+1", "50%"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn lossy_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(decode_lossy("access%5Ftoken"), "access_token");
        assert_eq!(decode_lossy("a+b%zz%+1"), "a b%zz% 1");
        assert_eq!(decode_lossy("%ff"), "\u{fffd}");
    }
}
