//! Splitting plain text into the pieces the parsers look at: word tokens (for skills and word
//! counts), lexemes (for dates and year counts) and headings.
//!
//! It knows nothing about resumes, jobs or skills; it only decides where words start and end,
//! so that "C++", "C#", ".NET" and "node.js" survive as one token while "CI/CD" and
//! "scikit-learn" become word sequences that multi-word skill names can match.

use std::borrow::Cow;

/// A word-like token of the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    /// The token as written.
    pub raw: &'a str,
    /// The token in lower case, for case-insensitive matching (borrowed when `raw` already is).
    pub lower: Cow<'a, str>,
    /// The byte just after the token in the text, to look at what follows it.
    pub end: usize,
}

/// Whether `c` can be part of a token: letters and digits, plus the symbols that are part of
/// technology names (`c++`, `c#`, `node.js`).
fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '+' | '#' | '.')
}

/// The tokens of `text`: runs of token characters that contain at least one letter or digit.
///
/// Dots and symbols at the edges are punctuation (the full stop of a sentence, a `#hashtag`),
/// except the leading dot of `.net`.
pub(crate) fn tokens(text: &str) -> Vec<Token<'_>> {
    token_spans(text)
        .map(|(raw, end)| Token {
            raw,
            lower: lower_case(raw),
            end,
        })
        .collect()
}

/// The tokens of `text` as written, each with the byte just after it; [`tokens`] without the
/// lower-case copies, for the callers that only count or look at the raw text.
fn token_spans(text: &str) -> impl Iterator<Item = (&str, usize)> {
    let bytes = text.as_bytes();
    let mut at = 0;
    std::iter::from_fn(move || {
        while at < bytes.len() {
            // The next run of token characters.
            let start = at;
            while at < bytes.len() {
                let (is_token, _, len) = char_at(text, at);
                if !is_token {
                    break;
                }
                at += len;
            }
            let end = at;
            if end == start {
                at += char_at(text, at).2;
                continue;
            }
            if let Some(token) = token_at(text, start, end) {
                return Some(token);
            }
        }
        None
    })
}

/// What an ASCII byte is to the tokenizer: a letter or digit, another token character
/// (`+`, `#`, `.`), or neither; one table read per byte.
const OTHER: u8 = 0;
const SYMBOL: u8 = 1;
const ALNUM: u8 = 2;
static ASCII_CLASS: [u8; 128] = {
    let mut table = [OTHER; 128];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        table[b] = if c.is_ascii_alphanumeric() {
            ALNUM
        } else if matches!(c, b'+' | b'#' | b'.') {
            SYMBOL
        } else {
            OTHER
        };
        b += 1;
    }
    table
};

/// The character at byte `at` of `text`: whether it is a token character, whether it is a
/// letter or digit, and its length in bytes. ASCII (almost all text) is read a byte at a time.
#[inline]
fn char_at(text: &str, at: usize) -> (bool, bool, usize) {
    let b = text.as_bytes()[at];
    if b.is_ascii() {
        let class = ASCII_CLASS[usize::from(b)];
        (class != OTHER, class == ALNUM, 1)
    } else {
        let c = text[at..].chars().next().unwrap_or(' ');
        (is_token_char(c), c.is_alphanumeric(), c.len_utf8())
    }
}

/// The token in the run of token characters `text[start..end]`, if it holds one.
fn token_at(text: &str, start: usize, end: usize) -> Option<(&str, usize)> {
    let run = &text[start..end];
    let kept = run.trim_end_matches('.');
    let keeps_leading_dot =
        kept.len() > 1 && kept.starts_with('.') && kept[1..].eq_ignore_ascii_case("net");
    let lead = if keeps_leading_dot {
        0
    } else {
        kept.len() - kept.trim_start_matches(['.', '+', '#']).len()
    };
    let raw = &kept[lead..];
    raw.chars()
        .any(char::is_alphanumeric)
        .then_some((raw, start + kept.len()))
}

/// `s` in lower case, copied only when some character changes.
fn lower_case(s: &str) -> Cow<'_, str> {
    if !s.is_ascii() {
        Cow::Owned(s.to_lowercase())
    } else if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// The number of words in `text` (tokens with a letter or digit).
///
/// The same count as `tokens(text).len()`, read in one pass without cutting tokens out: a
/// run of token characters is a token exactly when it holds a letter or digit (the edges
/// [`token_at`] trims are symbols).
pub(crate) fn word_count(text: &str) -> usize {
    let (mut count, mut in_run, mut has_alnum) = (0, false, false);
    let mut at = 0;
    while at < text.len() {
        let (is_token, is_alnum, len) = char_at(text, at);
        if is_token {
            in_run = true;
            has_alnum |= is_alnum;
        } else {
            count += usize::from(in_run && has_alnum);
            (in_run, has_alnum) = (false, false);
        }
        at += len;
    }
    count + usize::from(in_run && has_alnum)
}

/// A piece of text as the date and year-count readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lexeme<'a> {
    /// A run of letters, lower-cased (borrowed from the text when it already is).
    Word(Cow<'a, str>),
    /// A run of digits; `plus` when directly followed by `+` ("5+ years").
    Number { value: u32, plus: bool },
    /// A hyphen or dash between two things ("2018 – 2022", "3-5 years").
    Dash,
}

/// The lexemes of `text`. Punctuation other than dashes and `+` is dropped.
pub(crate) fn lexemes(text: &str) -> Vec<Lexeme<'_>> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c.is_ascii_digit() {
            let mut end = start + 1;
            while let Some((i, _)) = chars.next_if(|(_, d)| d.is_ascii_digit()) {
                end = i + 1;
            }
            let plus = chars.next_if(|&(_, d)| d == '+').is_some();
            // A number too long for u32 is no year or count anyone would write; skip it.
            if let Ok(value) = text[start..end].parse::<u32>() {
                out.push(Lexeme::Number { value, plus });
            }
        } else if c.is_alphabetic() {
            let mut end = start + c.len_utf8();
            while let Some((i, d)) = chars.next_if(|(_, d)| d.is_alphabetic()) {
                end = i + d.len_utf8();
            }
            let word = &text[start..end];
            out.push(Lexeme::Word(if word.is_ascii() {
                lower_case(word)
            } else {
                // Letter by letter, as a word is lower-cased for comparison everywhere here.
                Cow::Owned(word.chars().flat_map(char::to_lowercase).collect())
            }));
        } else if matches!(c, '-' | '–' | '—' | '‒' | '―') {
            out.push(Lexeme::Dash);
        }
    }
    out
}

/// `line` reduced to lower-case words separated by single spaces, with `&` read as "and";
/// used to compare a line with heading phrases whatever its decoration (`## Skills:`).
pub(crate) fn normalize_heading(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    // Whether the last character read continues a word (a letter, digit or apostrophe after
    // one): the next letter then joins it instead of starting a new word.
    let mut in_word = false;
    for c in line.chars() {
        if c.is_alphanumeric() {
            if !in_word && !out.is_empty() {
                out.push(' ');
            }
            out.extend(c.to_lowercase());
            in_word = true;
        } else if c != '\'' && c != '’' {
            in_word = false;
            if c == '&' {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str("and");
            }
        }
    }
    out
}

/// Whether a text normalized by [`normalize_heading`] holds `phrase` as whole words.
pub(crate) fn has_phrase(norm: &str, phrase: &str) -> bool {
    if phrase.is_empty() {
        return false;
    }
    // A whole-word occurrence starts where a word does: try each word start in turn.
    let mut rest = norm;
    loop {
        if rest
            .strip_prefix(phrase)
            .is_some_and(|after| after.is_empty() || after.starts_with(' '))
        {
            return true;
        }
        match rest.find(' ') {
            Some(space) => rest = &rest[space + 1..],
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lowers(text: &str) -> Vec<String> {
        tokens(text)
            .into_iter()
            .map(|t| t.lower.into_owned())
            .collect()
    }

    #[test]
    fn the_ascii_table_agrees_with_the_character_tests() {
        for b in 0..128_u8 {
            let c = char::from(b);
            let text = c.to_string();
            assert_eq!(
                char_at(&text, 0),
                (is_token_char(c), c.is_alphanumeric(), 1),
                "byte {b}"
            );
        }
    }

    #[test]
    fn symbols_inside_technology_names_stay_in_the_token() {
        assert_eq!(
            lowers("C++, C#, .NET and Node.js."),
            ["c++", "c#", ".net", "and", "node.js"]
        );
    }

    #[test]
    fn slashes_and_hyphens_split_words() {
        assert_eq!(
            lowers("CI/CD with scikit-learn"),
            ["ci", "cd", "with", "scikit", "learn"]
        );
    }

    #[test]
    fn punctuation_alone_is_no_word() {
        assert!(tokens("!!! ... +++ ###").is_empty());
        assert_eq!(word_count("!!!"), 0);
        assert_eq!(word_count("Hello, world! 2024"), 3);
    }

    #[test]
    fn token_end_points_just_after_the_token() {
        let text = "use Go-to tools";
        let go = &tokens(text)[1];
        assert_eq!(go.raw, "Go");
        assert_eq!(&text[go.end..go.end + 1], "-");
    }

    #[test]
    fn lexemes_read_ranges_and_counts() {
        assert_eq!(
            lexemes("Jan 2018 – 2022, 5+ yrs"),
            [
                Lexeme::Word("jan".into()),
                Lexeme::Number {
                    value: 2018,
                    plus: false
                },
                Lexeme::Dash,
                Lexeme::Number {
                    value: 2022,
                    plus: false
                },
                Lexeme::Number {
                    value: 5,
                    plus: true
                },
                Lexeme::Word("yrs".into()),
            ]
        );
    }

    #[test]
    fn headings_are_normalized_whatever_their_decoration() {
        assert_eq!(normalize_heading("## Skills & Tools:"), "skills and tools");
        assert_eq!(normalize_heading("WHAT YOU'LL DO"), "what youll do");
    }

    /// Texts with the cases the heading and phrase readers must get right: decoration,
    /// apostrophes, ampersands, non-ASCII letters, repeated and overlapping words.
    const SAMPLES: &[&str] = &[
        "",
        "## Skills & Tools:",
        "WHAT YOU'LL DO",
        "'tis the season",
        "a&&b",
        "&",
        "  Nice-to-have:  ",
        "Über Qualifikationen — ÉTÉ ’23",
        "ba a a",
        "nice to have nice",
        "x nice to havee nice to have",
        "İstanbul",
    ];

    /// The obvious forms of both readers, which allocate: the fast ones must agree with them.
    fn normalize_reference(line: &str) -> String {
        let mut words = Vec::new();
        let mut word = String::new();
        for c in line.chars() {
            if c.is_alphanumeric() {
                word.extend(c.to_lowercase());
            } else if c != '\'' && c != '’' {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                if c == '&' {
                    words.push("and".to_owned());
                }
            }
        }
        if !word.is_empty() {
            words.push(word);
        }
        words.join(" ")
    }

    #[test]
    fn normalize_heading_agrees_with_its_plain_definition() {
        for line in SAMPLES {
            assert_eq!(
                normalize_heading(line),
                normalize_reference(line),
                "{line:?}"
            );
        }
    }

    #[test]
    fn phrases_match_whole_words_only() {
        let phrases = [
            "a a",
            "nice to have",
            "to",
            "have",
            "tools",
            "and",
            "über",
            "ü",
            "e",
        ];
        for line in SAMPLES {
            let norm = normalize_heading(line);
            for phrase in phrases {
                let reference = format!(" {norm} ").contains(&format!(" {phrase} "));
                assert_eq!(
                    has_phrase(&norm, phrase),
                    reference,
                    "{norm:?} / {phrase:?}"
                );
            }
        }
        // The second, overlapping occurrence is the whole-word one.
        assert!(has_phrase("ba a a", "a a"));
        assert!(!has_phrase("nice to havee", "nice to have"));
        assert!(!has_phrase("anything", ""));
    }

    #[test]
    fn lower_case_copies_only_when_something_changes() {
        assert!(matches!(tokens("rust")[0].lower, Cow::Borrowed("rust")));
        assert_eq!(tokens("Rust")[0].lower, "rust");
        assert_eq!(tokens("ÜBER")[0].lower, "über");
        assert_eq!(word_count("C++, C#, .NET and Node.js."), 5);
    }

    /// Token boundaries read a character at a time, as [`token_spans`] must find them.
    fn runs_reference(text: &str) -> Vec<(&str, usize)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
            match (start, is_token_char(c) && i < text.len()) {
                (None, true) => start = Some(i),
                (Some(s), false) => {
                    out.extend(token_at(text, s, i));
                    start = None;
                }
                _ => {}
            }
        }
        out
    }

    #[test]
    fn tokens_split_mixed_scripts_as_characters_would() {
        let texts = [
            "Über C++ café—node.js … 東京 .NET 5+ years.",
            "naïve#tag ÉCOLE, ½ ①②, x·y",
            "trailing é",
            "é",
            "...",
        ];
        for text in texts.iter().chain(SAMPLES) {
            assert_eq!(
                token_spans(text).collect::<Vec<_>>(),
                runs_reference(text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn lexemes_lower_case_words_and_skip_numbers_too_long() {
        let lex = lexemes("Since JAN 2019 – Über 99999999999 3+ years");
        assert_eq!(
            lex,
            [
                Lexeme::Word("since".into()),
                Lexeme::Word("jan".into()),
                Lexeme::Number {
                    value: 2019,
                    plus: false
                },
                Lexeme::Dash,
                Lexeme::Word("über".into()),
                Lexeme::Number {
                    value: 3,
                    plus: true
                },
                Lexeme::Word("years".into()),
            ]
        );
        assert!(matches!(
            lex.last(),
            Some(Lexeme::Word(Cow::Borrowed("years")))
        ));
    }
}
