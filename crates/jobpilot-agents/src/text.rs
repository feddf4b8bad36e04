//! Splitting plain text into the pieces the parsers look at: word tokens (for skills and word
//! counts), lexemes (for dates and year counts) and headings.
//!
//! It knows nothing about resumes, jobs or skills; it only decides where words start and end,
//! so that "C++", "C#", ".NET" and "node.js" survive as one token while "CI/CD" and
//! "scikit-learn" become word sequences that multi-word skill names can match.

/// A word-like token of the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    /// The token as written.
    pub raw: &'a str,
    /// The token in lower case, for case-insensitive matching.
    pub lower: String,
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
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        match (start, is_token_char(c) && i < text.len()) {
            (None, true) => start = Some(i),
            (Some(s), false) => {
                push_token(text, s, i, &mut out);
                start = None;
            }
            _ => {}
        }
    }
    out
}

fn push_token<'a>(text: &'a str, start: usize, end: usize, out: &mut Vec<Token<'a>>) {
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
    if !raw.chars().any(char::is_alphanumeric) {
        return;
    }
    out.push(Token {
        raw,
        lower: raw.to_lowercase(),
        end: start + kept.len(),
    });
}

/// The number of words in `text` (tokens with a letter or digit).
pub(crate) fn word_count(text: &str) -> usize {
    tokens(text).len()
}

/// A piece of text as the date and year-count readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lexeme {
    /// A run of letters, lower-cased.
    Word(String),
    /// A run of digits; `plus` when directly followed by `+` ("5+ years").
    Number { value: u32, plus: bool },
    /// A hyphen or dash between two things ("2018 – 2022", "3-5 years").
    Dash,
}

/// The lexemes of `text`. Punctuation other than dashes and `+` is dropped.
pub(crate) fn lexemes(text: &str) -> Vec<Lexeme> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            let mut digits = String::from(c);
            while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                digits.push(d);
                chars.next();
            }
            let plus = chars.peek() == Some(&'+');
            if plus {
                chars.next();
            }
            // A number too long for u32 is no year or count anyone would write; skip it.
            if let Ok(value) = digits.parse::<u32>() {
                out.push(Lexeme::Number { value, plus });
            }
        } else if c.is_alphabetic() {
            let mut word: String = c.to_lowercase().collect();
            while let Some(d) = chars.peek().copied().filter(|d| d.is_alphabetic()) {
                word.extend(d.to_lowercase());
                chars.next();
            }
            out.push(Lexeme::Word(word));
        } else if matches!(c, '-' | '–' | '—' | '‒' | '―') {
            out.push(Lexeme::Dash);
        }
    }
    out
}

/// `line` reduced to lower-case words separated by single spaces, with `&` read as "and";
/// used to compare a line with heading phrases whatever its decoration (`## Skills:`).
pub(crate) fn normalize_heading(line: &str) -> String {
    let mut words = Vec::new();
    let mut word = String::new();
    for c in line.chars() {
        if c.is_alphanumeric() || c == '\'' || c == '’' {
            if c.is_alphanumeric() {
                word.extend(c.to_lowercase());
            }
        } else {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lowers(text: &str) -> Vec<String> {
        tokens(text).into_iter().map(|t| t.lower).collect()
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
}
