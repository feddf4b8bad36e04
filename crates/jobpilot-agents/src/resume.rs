//! Parsing a plain-text resume into what the agents reason about: which sections it has, which
//! skills it names, how many years of work it covers, and how long it is.
//!
//! Deterministic and forgiving: headings are recognised in common spellings and decorations
//! (`## Work Experience`, `SKILLS:`), and anything it does not recognise is simply text. It does
//! not keep the resume's text, so nothing personal leaves this module.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::ParseError;
use crate::skills::find_skills;
use crate::text::{Lexeme, lexemes, normalize_heading, word_count};
use crate::years::{self, MonthIndex};

/// A section of a resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// A short profile or objective at the top.
    Summary,
    /// Work history.
    Experience,
    /// Degrees and schools.
    Education,
    /// A list of skills and technologies.
    Skills,
    /// Projects, including open source.
    Projects,
    /// Certifications, licences and courses.
    Certifications,
    /// How to reach the candidate (a heading, or an email address or profile link anywhere).
    Contact,
}

impl Section {
    /// Every section, in the order a resume usually has them.
    pub const ALL: [Section; 7] = [
        Section::Contact,
        Section::Summary,
        Section::Experience,
        Section::Education,
        Section::Skills,
        Section::Projects,
        Section::Certifications,
    ];

    /// The sections a recruiter expects in any resume; the others are welcome but optional.
    pub const EXPECTED: [Section; 5] = [
        Section::Contact,
        Section::Summary,
        Section::Experience,
        Section::Education,
        Section::Skills,
    ];

    /// The name used in results (`experience`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Summary => "summary",
            Section::Experience => "experience",
            Section::Education => "education",
            Section::Skills => "skills",
            Section::Projects => "projects",
            Section::Certifications => "certifications",
            Section::Contact => "contact",
        }
    }
}

/// Heading phrases, compared with a line reduced by [`normalize_heading`].
const HEADINGS: &[(&str, Section)] = &[
    ("summary", Section::Summary),
    ("professional summary", Section::Summary),
    ("career summary", Section::Summary),
    ("profile", Section::Summary),
    ("professional profile", Section::Summary),
    ("about", Section::Summary),
    ("about me", Section::Summary),
    ("objective", Section::Summary),
    ("career objective", Section::Summary),
    ("overview", Section::Summary),
    ("experience", Section::Experience),
    ("work experience", Section::Experience),
    ("professional experience", Section::Experience),
    ("relevant experience", Section::Experience),
    ("employment", Section::Experience),
    ("employment history", Section::Experience),
    ("work history", Section::Experience),
    ("career history", Section::Experience),
    ("education", Section::Education),
    ("academic background", Section::Education),
    ("education and training", Section::Education),
    ("skills", Section::Skills),
    ("technical skills", Section::Skills),
    ("core skills", Section::Skills),
    ("key skills", Section::Skills),
    ("skills and tools", Section::Skills),
    ("skills and technologies", Section::Skills),
    ("core competencies", Section::Skills),
    ("competencies", Section::Skills),
    ("technologies", Section::Skills),
    ("tech stack", Section::Skills),
    ("tools", Section::Skills),
    ("projects", Section::Projects),
    ("personal projects", Section::Projects),
    ("side projects", Section::Projects),
    ("selected projects", Section::Projects),
    ("open source", Section::Projects),
    ("certifications", Section::Certifications),
    ("certificates", Section::Certifications),
    ("licenses", Section::Certifications),
    ("licenses and certifications", Section::Certifications),
    ("certifications and licenses", Section::Certifications),
    ("courses", Section::Certifications),
    ("contact", Section::Contact),
    ("contact information", Section::Contact),
    ("contact info", Section::Contact),
    ("contact details", Section::Contact),
];

/// The section a heading line opens, and the text after a `Heading:` on the same line.
fn heading(line: &str) -> Option<(Section, &str)> {
    let find = |text: &str| {
        let norm = normalize_heading(text);
        HEADINGS
            .iter()
            .find(|(phrase, _)| *phrase == norm)
            .map(|&(_, s)| s)
    };
    if let Some((head, rest)) = line.split_once(':') {
        if let Some(section) = find(head) {
            return Some((section, rest));
        }
    }
    find(line).map(|s| (s, ""))
}

/// Whether `line` carries contact details: an email address, a profile link or a phone number.
fn has_contact_details(line: &str) -> bool {
    let lower = line.to_lowercase();
    let email = lower.split_whitespace().any(|w| {
        w.split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
    });
    let profile = ["linkedin.com/", "github.com/"]
        .iter()
        .any(|p| lower.contains(p));
    // A phone number is a stretch of digits and phone punctuation with 9 to 15 digits, between
    // the separators people put in a contact line ("+1 (555) 010-9999 | jane@...").
    let phone = line.split(['|', ',', ';', '·', '•']).any(|part| {
        let number = part
            .trim()
            .trim_start_matches(|c: char| c.is_alphabetic() || c == ':' || c == ' ');
        let digits = number.chars().filter(char::is_ascii_digit).count();
        (9..=15).contains(&digits)
            && number
                .chars()
                .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    });
    email || profile || phone
}

/// Whether a line of work history states a result with a number: a percentage, an amount of
/// money, or a count that is not a year ("cut latency by 40%", "served 2M users").
fn is_quantified(line: &str) -> bool {
    if line.contains(['%', '$', '€', '£']) {
        return true;
    }
    lexemes(line).iter().any(|l| {
        matches!(l, Lexeme::Number { value, .. } if *value > 1 && !(1950..=2100).contains(value))
    })
}

/// What the agents know about a resume.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParsedResume {
    /// The sections found, in [`Section::ALL`] order.
    pub sections: Vec<Section>,
    /// Canonical names of the skills mentioned anywhere in the resume.
    pub skills: BTreeSet<&'static str>,
    /// Years of work covered by the dated roles or stated outright ("5+ years"), whichever is
    /// more, to one decimal; `None` when the resume gives neither.
    pub years_of_experience: Option<f64>,
    /// Number of words.
    pub word_count: usize,
    /// Lines of work history or projects that state a result with a number.
    pub quantified_lines: usize,
}

impl ParsedResume {
    /// Whether the resume has `section`.
    pub fn has(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }

    /// The expected sections the resume lacks, in [`Section::ALL`] order.
    pub fn missing_sections(&self) -> Vec<Section> {
        Section::EXPECTED
            .into_iter()
            .filter(|s| !self.has(*s))
            .collect()
    }
}

/// Parses `text` as a resume, reading "present" as the current month.
///
/// # Errors
/// [`ParseError::NoWords`] when `text` has no letters or digits.
pub fn parse_resume(text: &str) -> Result<ParsedResume, ParseError> {
    parse_resume_at(text, years::this_month())
}

/// Parses `text` as a resume, reading "present" as `now` (so tests do not depend on the date).
pub(crate) fn parse_resume_at(text: &str, now: MonthIndex) -> Result<ParsedResume, ParseError> {
    let words = word_count(text);
    if words == 0 {
        return Err(ParseError::NoWords { subject: "resume" });
    }

    // Walk the lines once, remembering the section each content line falls under.
    let mut found = BTreeSet::new();
    let mut lines: Vec<(Option<Section>, &str)> = Vec::new();
    let mut current = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let content = match heading(line) {
            Some((section, rest)) => {
                found.insert(section);
                current = Some(section);
                rest.trim()
            }
            None => line,
        };
        if has_contact_details(content) {
            found.insert(Section::Contact);
        }
        if !content.is_empty() {
            lines.push((current, content));
        }
    }

    // Dates under Education or Certifications are studies, not work; text before any heading
    // and under other headings may describe work.
    let is_work_line = |section: Option<Section>| {
        !matches!(section, Some(Section::Education | Section::Certifications))
    };
    let mut ranges = Vec::new();
    let mut stated = None;
    let mut quantified_lines = 0;
    let has_experience = found.contains(&Section::Experience);
    for &(section, line) in &lines {
        if !is_work_line(section) {
            continue;
        }
        let lex = lexemes(line);
        ranges.extend(years::ranges(&lex, now));
        stated = stated.max(years::stated_years(&lex, true).into_iter().max());
        // Without an Experience heading, every work line may be a result worth counting.
        let in_history = matches!(section, Some(Section::Experience | Section::Projects))
            || (!has_experience && section.is_none());
        if in_history && is_quantified(line) {
            quantified_lines += 1;
        }
    }
    let dated = years::total_years(ranges);
    let years_of_experience = match (dated, stated) {
        (Some(d), Some(s)) => Some(d.max(f64::from(s))),
        (Some(d), None) => Some(d),
        (None, Some(s)) => Some(f64::from(s)),
        (None, None) => None,
    };

    Ok(ParsedResume {
        sections: Section::ALL
            .into_iter()
            .filter(|s| found.contains(s))
            .collect(),
        skills: find_skills(text),
        years_of_experience,
        word_count: words,
        quantified_lines,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const NOW: MonthIndex = 2025 * 12 + 5;

    /// A complete resume of a backend engineer, used across the crate's tests.
    pub(crate) const STRONG_RESUME: &str = "\
Jane Doe
jane.doe@example.com | linkedin.com/in/janedoe

SUMMARY
Backend engineer with 7+ years building distributed systems in Rust and Go.

## Work Experience
Senior Engineer, Acme Corp (Jan 2020 - present)
- Built Rust microservices on Kubernetes (k8s) and AWS, cutting p99 latency by 40%.
- Ran PostgreSQL and Kafka pipelines serving 3 million users; CI/CD with GitHub Actions.
Engineer, Beta Inc (2016 - 2019)
- Wrote Go services with gRPC; Docker and Terraform for infrastructure.

Education
BSc Computer Science, State University, 2012 - 2016

Skills: Rust, Go, Python, Kubernetes, Docker, Terraform, AWS, PostgreSQL, Kafka, Redis, \
observability, mentoring, communication
";

    fn parse(text: &str) -> ParsedResume {
        parse_resume_at(text, NOW).unwrap()
    }

    #[test]
    fn sections_are_found_from_headings_in_any_decoration() {
        let resume = parse(STRONG_RESUME);
        assert_eq!(
            resume.sections,
            [
                Section::Contact,
                Section::Summary,
                Section::Experience,
                Section::Education,
                Section::Skills
            ]
        );
        assert!(resume.missing_sections().is_empty());
    }

    #[test]
    fn optional_and_missing_sections_are_told_apart() {
        let resume = parse("Projects\nA Rust CLI\nCertifications\nAWS Certified\n");
        assert_eq!(
            resume.sections,
            [Section::Projects, Section::Certifications]
        );
        assert_eq!(
            resume.missing_sections(),
            [
                Section::Contact,
                Section::Summary,
                Section::Experience,
                Section::Education,
                Section::Skills
            ]
        );
    }

    #[test]
    fn a_word_that_is_only_part_of_a_line_is_no_heading() {
        let resume = parse("I have experience with education software\n");
        assert!(resume.sections.is_empty());
    }

    #[test]
    fn skills_are_found_with_aliases_resolved() {
        let skills = parse(STRONG_RESUME).skills;
        for expected in [
            "rust",
            "go",
            "kubernetes",
            "aws",
            "postgresql",
            "kafka",
            "ci/cd",
            "github actions",
            "grpc",
            "docker",
            "terraform",
            "mentoring",
            "communication",
            "distributed systems",
        ] {
            assert!(skills.contains(expected), "missing {expected}: {skills:?}");
        }
    }

    #[test]
    fn years_come_from_work_ranges_not_education() {
        // 2016-2019 and Jan 2020-Jun 2025 (3.0 + 5.4 years); the 2012-2016 degree is not work.
        let resume = parse(STRONG_RESUME);
        assert_eq!(resume.years_of_experience, Some(8.4));
    }

    #[test]
    fn stated_years_count_when_there_are_no_dates() {
        let resume = parse("Data engineer with 5+ years of experience in Python and SQL.");
        assert_eq!(resume.years_of_experience, Some(5.0));
        assert_eq!(parse("Keen student").years_of_experience, None);
    }

    #[test]
    fn results_with_numbers_are_counted() {
        assert_eq!(parse(STRONG_RESUME).quantified_lines, 2);
        assert_eq!(
            parse("Experience\nWorked on services\n").quantified_lines,
            0
        );
    }

    #[test]
    fn an_email_or_phone_without_a_heading_counts_as_contact() {
        assert!(parse("Jane Doe\njane@example.com\nRust engineer").has(Section::Contact));
        assert!(parse("Jane Doe | Phone: +1 (555) 010-9999").has(Section::Contact));
        assert!(!parse("Acme Corp 2016 - 2019\nRust engineer").has(Section::Contact));
    }

    #[test]
    fn words_are_counted() {
        assert_eq!(parse("Rust engineer, 2020.").word_count, 3);
    }

    #[test]
    fn text_without_words_is_a_parse_error() {
        assert_eq!(
            parse_resume("!!!"),
            Err(ParseError::NoWords { subject: "resume" })
        );
        assert_eq!(
            parse_resume("!!!").unwrap_err().to_string(),
            "resume has no words to parse"
        );
    }
}
