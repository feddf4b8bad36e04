//! Reading years of experience out of text: date ranges ("Jan 2018 – Mar 2020",
//! "2019 - present", "since 2021") and counts ("5+ years", "3-5 years of experience").
//!
//! It works line by line on [`crate::text::lexemes`]; which lines count (work history, not
//! education) is the caller's choice. It does not understand prose beyond those patterns.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::text::Lexeme;

/// A calendar month as a count of months since year 0, so ranges subtract directly.
pub(crate) type MonthIndex = u32;

/// Earliest and latest years read as a year rather than as a number.
const FIRST_YEAR: u32 = 1950;
const LAST_YEAR: u32 = 2100;

/// Months in which a range whose ends name only the same year ("2018 – 2018") is counted.
const SAME_YEAR_MONTHS: u32 = 6;

/// The current month, from the system clock.
pub(crate) fn this_month() -> MonthIndex {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    // An average Gregorian month is 365.2425 / 12 days; a month of precision is all that
    // "present" needs, so the calendar's finer rules do not matter here.
    let months_since_1970 = (days as f64 / 30.436_875) as u32;
    1970 * 12 + months_since_1970
}

fn month_number(word: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    if word.len() < 3 {
        return None;
    }
    let month = MONTHS.iter().position(|m| word.starts_with(m))?;
    // "mar" also starts "market", "may" is a verb: only the name or its usual abbreviations.
    let full = [
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ][month];
    let is_name = full.starts_with(word) || word == "sept";
    is_name.then_some(month as u32 + 1)
}

fn is_year(value: u32) -> bool {
    (FIRST_YEAR..=LAST_YEAR).contains(&value)
}

fn is_now_word(word: &str) -> bool {
    matches!(
        word,
        "present" | "current" | "currently" | "now" | "today" | "ongoing" | "date"
    )
}

/// A date at `lex[i..]`: `[month] year` or `month-number year` ("06/2018"). Returns the
/// month (when named), the year and the index after it.
fn date_at(lex: &[Lexeme<'_>], i: usize) -> Option<(Option<u32>, u32, usize)> {
    match (lex.get(i), lex.get(i + 1)) {
        (Some(Lexeme::Word(w)), Some(Lexeme::Number { value, .. })) if is_year(*value) => {
            let month = month_number(w)?;
            Some((Some(month), *value, i + 2))
        }
        (Some(Lexeme::Number { value: m, .. }), Some(Lexeme::Number { value: y, .. }))
            if (1..=12).contains(m) && is_year(*y) =>
        {
            Some((Some(*m), *y, i + 2))
        }
        (Some(Lexeme::Number { value, .. }), _) if is_year(*value) => Some((None, *value, i + 1)),
        _ => None,
    }
}

fn is_range_separator(lexeme: Option<&Lexeme<'_>>) -> bool {
    match lexeme {
        Some(Lexeme::Dash) => true,
        Some(Lexeme::Word(w)) => matches!(w.as_ref(), "to" | "until" | "till" | "through"),
        _ => false,
    }
}

/// The date ranges in one line, as `(start, end)` month indexes with `start < end`.
pub(crate) fn ranges(lex: &[Lexeme<'_>], now: MonthIndex) -> Vec<(MonthIndex, MonthIndex)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lex.len() {
        let since = matches!(&lex[i], Lexeme::Word(w) if w == "since");
        let from = if since { i + 1 } else { i };
        let Some((start_month, start_year, after_start)) = date_at(lex, from) else {
            i += 1;
            continue;
        };
        let start = start_year * 12 + start_month.unwrap_or(1) - 1;
        let mut end = None;
        let mut next = after_start;
        if since {
            end = Some(now);
        } else if is_range_separator(lex.get(after_start)) {
            let k = after_start + 1;
            let ends_now = matches!(lex.get(k), Some(Lexeme::Word(w)) if is_now_word(w));
            if ends_now {
                end = Some(now);
                next = k + 1;
            } else if let Some((end_month, end_year, after_end)) = date_at(lex, k) {
                let mut e = end_year * 12 + end_month.unwrap_or(1) - 1;
                if start_month.is_none() && end_month.is_none() && end_year == start_year {
                    e = start + SAME_YEAR_MONTHS;
                }
                end = Some(e);
                next = after_end;
            }
        }
        match end {
            // A range that ends before it starts or after today is a typo, not experience.
            Some(end) if start < end && end <= now + 12 => {
                out.push((start, end.min(now)));
                i = next;
            }
            _ => i = after_start,
        }
    }
    out
}

/// Total years covered by `ranges`, counting overlapping ranges once.
pub(crate) fn total_years(mut ranges: Vec<(MonthIndex, MonthIndex)>) -> Option<f64> {
    if ranges.is_empty() {
        return None;
    }
    ranges.sort_unstable();
    let mut months = 0;
    let mut current: Option<(MonthIndex, MonthIndex)> = None;
    for (start, end) in ranges {
        current = match current {
            Some((s, e)) if start <= e => Some((s, e.max(end))),
            Some((s, e)) => {
                months += e - s;
                Some((start, end))
            }
            None => Some((start, end)),
        };
    }
    if let Some((s, e)) = current {
        months += e - s;
    }
    Some(round_tenth(f64::from(months) / 12.0))
}

/// `x` rounded to one decimal, so "4.0 years" is what a person would say.
pub(crate) fn round_tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn is_years_word(lexeme: Option<&Lexeme<'_>>) -> bool {
    matches!(lexeme, Some(Lexeme::Word(w)) if matches!(w.as_ref(), "years" | "year" | "yrs" | "yr"))
}

/// A count of years stated in one line ("5+ years", "3-5 years of experience", "at least 4
/// years"), as the smallest number of the statement.
///
/// With `strict`, the statement must read as a claim of experience (a `+`, "over N", "at least
/// N", or "experience" right after it), so "a 10 year old codebase" is not ten years.
pub(crate) fn stated_years(lex: &[Lexeme<'_>], strict: bool) -> Vec<u32> {
    let mut out = Vec::new();
    // Index before which numbers were already read as the upper end of a range.
    let mut consumed = 0;
    for (i, lexeme) in lex.iter().enumerate() {
        let Lexeme::Number { value, plus } = lexeme else {
            continue;
        };
        if i < consumed || *value == 0 || *value > 50 {
            continue;
        }
        // "3-5 years" / "3 to 5 years": the unit follows the second number.
        let mut unit = i + 1;
        let mut plus = *plus;
        if is_range_separator(lex.get(unit)) {
            if let Some(Lexeme::Number {
                value: upper,
                plus: upper_plus,
            }) = lex.get(unit + 1)
            {
                if upper > value {
                    unit += 2;
                    plus |= *upper_plus;
                }
            }
        }
        if !is_years_word(lex.get(unit)) {
            continue;
        }
        consumed = unit;
        if strict {
            let qualified = i
                .checked_sub(1)
                .and_then(|p| lex.get(p))
                .is_some_and(|p| {
                    matches!(p, Lexeme::Word(w) if matches!(w.as_ref(), "over" | "than" | "least" | "minimum"))
                });
            let about_experience = lex[unit + 1..]
                .iter()
                .take(3)
                .any(|l| matches!(l, Lexeme::Word(w) if w.starts_with("experience")));
            if !(plus || qualified || about_experience) {
                continue;
            }
        }
        out.push(*value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::lexemes;

    const NOW: MonthIndex = 2025 * 12 + 5; // June 2025

    fn years_in(line: &str) -> Option<f64> {
        total_years(ranges(&lexemes(line), NOW))
    }

    #[test]
    fn a_year_range_counts_whole_years() {
        assert_eq!(years_in("Acme Corp, 2018–2022"), Some(4.0));
        assert_eq!(years_in("Acme Corp, 2018 - 2022"), Some(4.0));
        assert_eq!(years_in("2016 to 2019"), Some(3.0));
    }

    #[test]
    fn month_names_refine_a_range() {
        assert_eq!(years_in("Jan 2018 – Jul 2020"), Some(2.5));
        assert_eq!(years_in("March 2019 - September 2019"), Some(0.5));
        assert_eq!(years_in("06/2020 - 06/2021"), Some(1.0));
    }

    #[test]
    fn present_runs_until_now() {
        assert_eq!(years_in("Beta Inc (2019 - present)"), Some(6.4));
        assert_eq!(years_in("Since 2023"), Some(2.4));
        assert_eq!(years_in("Jan 2024 – Current"), Some(1.4));
    }

    #[test]
    fn overlapping_ranges_count_once() {
        let mut all = ranges(&lexemes("2015 - 2020"), NOW);
        all.extend(ranges(&lexemes("2018 - 2022"), NOW));
        assert_eq!(total_years(all), Some(7.0));
    }

    #[test]
    fn numbers_that_are_not_ranges_are_ignored() {
        assert_eq!(years_in("Grew revenue by 2020 units in 2021"), None);
        assert_eq!(years_in("May the best team win"), None);
        assert_eq!(years_in("2022 - 2018"), None);
    }

    #[test]
    fn stated_years_read_counts_and_ranges() {
        assert_eq!(stated_years(&lexemes("5+ years of Rust"), true), [5]);
        assert_eq!(stated_years(&lexemes("3-5 years of experience"), true), [3]);
        assert_eq!(
            stated_years(&lexemes("at least 4 years in backend"), true),
            [4]
        );
        assert_eq!(
            stated_years(&lexemes("over 10 yrs building APIs"), true),
            [10]
        );
    }

    #[test]
    fn strict_reading_skips_years_that_are_not_experience() {
        assert!(stated_years(&lexemes("a 10 year old codebase"), true).is_empty());
        assert_eq!(
            stated_years(&lexemes("a 10 year old codebase"), false),
            [10]
        );
    }
}
