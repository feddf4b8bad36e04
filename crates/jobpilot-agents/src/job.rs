//! Parsing a plain-text job description: its title, the skills it requires and those it only
//! prefers, its seniority and the years of experience it asks for.
//!
//! Skills are required unless the text says otherwise, by a heading ("Nice to have",
//! "Preferred", "Bonus") or on the line itself ("Terraform is a plus"). It is a reading of
//! common job-ad conventions, not of every possible phrasing.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::error::ParseError;
use crate::skills::find_skills;
use crate::text::{has_phrase, lexemes, normalize_heading, tokens, word_count};
use crate::years;

/// Longest title kept, in characters; a first line longer than that is a paragraph, not a title.
const MAX_TITLE_CHARS: usize = 100;

/// How senior a role is, from its title.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Seniority {
    /// An internship.
    Intern,
    /// Junior, entry level or graduate.
    Junior,
    /// Mid level.
    Mid,
    /// Senior.
    Senior,
    /// Lead (tech lead, team lead).
    Lead,
    /// Staff.
    Staff,
    /// Principal or distinguished.
    Principal,
}

impl Seniority {
    /// The years of experience such a role usually asks for, when the ad does not say.
    pub fn typical_years(self) -> u32 {
        match self {
            Seniority::Intern | Seniority::Junior => 0,
            Seniority::Mid => 2,
            Seniority::Senior => 5,
            Seniority::Lead => 6,
            Seniority::Staff => 8,
            Seniority::Principal => 10,
        }
    }

    /// The name used in results (`senior`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Seniority::Intern => "intern",
            Seniority::Junior => "junior",
            Seniority::Mid => "mid",
            Seniority::Senior => "senior",
            Seniority::Lead => "lead",
            Seniority::Staff => "staff",
            Seniority::Principal => "principal",
        }
    }

    /// The highest seniority a title names ("Senior Staff Engineer" is staff).
    fn from_title(title: &str) -> Option<Seniority> {
        tokens(title)
            .iter()
            .filter_map(|t| match t.lower.as_ref() {
                "intern" | "internship" | "trainee" => Some(Seniority::Intern),
                "junior" | "jr" | "entry" | "graduate" | "associate" => Some(Seniority::Junior),
                "mid" | "intermediate" => Some(Seniority::Mid),
                "senior" | "sr" => Some(Seniority::Senior),
                "lead" => Some(Seniority::Lead),
                "staff" => Some(Seniority::Staff),
                "principal" | "distinguished" => Some(Seniority::Principal),
                _ => None,
            })
            .max()
    }
}

/// Heading phrases after which skills are only preferred; also read inside a line.
const NICE_CUES: &[&str] = &[
    "nice to have",
    "nice to haves",
    "preferred",
    "bonus",
    "a plus",
    "pluses",
    "good to have",
    "desirable",
    "desired",
    "ideally",
    "an advantage",
    "extra credit",
    "not required",
];

/// Phrases that, anywhere in a heading, open the list of required skills.
const REQUIRED_CUES: &[&str] = &[
    "requirements",
    "required",
    "must have",
    "must haves",
    "qualifications",
    "what you need",
    "what youll need",
    "what you bring",
    "what were looking for",
    "who you are",
    "you have",
    "you should have",
];

/// Headings that open the list of required skills only when they are the whole heading:
/// "Experience" is a heading, "Experience in fintech" is a line of the list.
const REQUIRED_HEADINGS: &[&str] = &[
    "skills",
    "experience",
    "key skills",
    "technical skills",
    "skills and experience",
    "experience and skills",
    "tech stack",
    "our stack",
    "tools",
];

/// Headings of the parts of an ad that are neither list (the role, the company, benefits):
/// skills mentioned there are required, the default.
const OTHER_HEADINGS: &[&str] = &[
    "about",
    "the role",
    "your role",
    "responsibilities",
    "what youll do",
    "what you will do",
    "the team",
    "who we are",
    "benefits",
    "perks",
    "what we offer",
    "compensation",
    "location",
    "how to apply",
];

/// Which list the skills that follow a heading belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum List {
    Required,
    Nice,
}

/// The list a heading text opens, if it is a heading phrase at all.
fn heading_list(head: &str) -> Option<List> {
    let norm = normalize_heading(head);
    if norm.is_empty() || norm.split(' ').count() > 6 {
        return None;
    }
    if NICE_CUES.iter().any(|c| has_phrase(&norm, c)) {
        Some(List::Nice)
    } else if REQUIRED_CUES.iter().any(|c| has_phrase(&norm, c))
        || REQUIRED_HEADINGS.contains(&norm.as_str())
        || OTHER_HEADINGS
            .iter()
            .any(|h| has_phrase(&norm, h) && norm.starts_with(h))
    {
        Some(List::Required)
    } else {
        None
    }
}

/// Whether a line starts like a list item rather than a heading.
fn is_list_item(line: &str) -> bool {
    line.starts_with(['-', '*', '•', '·', '–'])
        || line
            .split_once(['.', ')'])
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
}

/// What the agents know about a job description.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParsedJob {
    /// The title: the first line, without decoration or a `Title:` label.
    pub title: String,
    /// Canonical names of the skills the job requires.
    pub required_skills: BTreeSet<&'static str>,
    /// Canonical names of the skills it only prefers (none of them also required).
    pub nice_to_have_skills: BTreeSet<&'static str>,
    /// The seniority named in the title.
    pub seniority: Option<Seniority>,
    /// The years of experience the text asks for ("5+ years", the lower end of "3-5 years").
    pub years_required: Option<u32>,
    /// Number of words.
    pub word_count: usize,
}

impl ParsedJob {
    /// The years to compare a candidate with: those the ad states, else those its seniority
    /// usually implies.
    pub fn expected_years(&self) -> Option<u32> {
        self.years_required
            .or_else(|| self.seniority.map(Seniority::typical_years))
    }
}

/// Reads the title from the first non-empty line.
fn title_of(line: &str) -> String {
    let bare = line.trim_matches(|c: char| c.is_whitespace() || "#*=_-•".contains(c));
    let bare = match bare.split_once(':') {
        Some((label, rest))
            if matches!(
                normalize_heading(label).as_str(),
                "title" | "job title" | "position" | "role" | "job"
            ) =>
        {
            rest.trim()
        }
        _ => bare,
    };
    bare.chars().take(MAX_TITLE_CHARS).collect()
}

/// Parses `text` as a job description.
///
/// # Errors
/// [`ParseError::NoWords`] when `text` has no letters or digits.
pub fn parse_job(text: &str) -> Result<ParsedJob, ParseError> {
    let words = word_count(text);
    if words == 0 {
        return Err(ParseError::NoWords { subject: "job" });
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| word_count(l) > 0)
        .collect();
    let title = lines.first().map(|l| title_of(l)).unwrap_or_default();

    let mut required = BTreeSet::new();
    let mut nice = BTreeSet::new();
    let mut list = List::Required;
    let mut stated_on_experience_line = None;
    let mut stated_anywhere = None;
    for line in &lines {
        // "Nice to have: Go, Rust" opens the list and starts it on the same line.
        let mut content: &str = line;
        // The line's skills, when the heading check below already found them (`content` is
        // then the whole line).
        let mut line_skills = None;
        if let Some((head, rest)) = line.split_once(':') {
            if let Some(opened) = heading_list(head) {
                list = opened;
                content = rest;
            }
        } else if !is_list_item(line) {
            // A short line without skills that names a list is a heading; one with skills in
            // it ("Kafka is preferred") is content that carries its own cue.
            let skills = find_skills(line);
            if skills.is_empty()
                && let Some(opened) = heading_list(line)
            {
                list = opened;
            }
            line_skills = Some(skills);
        }
        let norm = normalize_heading(content);
        let line_list = if NICE_CUES.iter().any(|c| has_phrase(&norm, c)) {
            List::Nice
        } else {
            list
        };
        let skills = line_skills.unwrap_or_else(|| find_skills(content));
        match line_list {
            List::Required => required.extend(skills),
            List::Nice => nice.extend(skills),
        }

        let stated = years::stated_years(&lexemes(content), false)
            .into_iter()
            .min();
        if norm.contains("experience") {
            stated_on_experience_line = stated_on_experience_line.or(stated);
        }
        stated_anywhere = stated_anywhere.or(stated);
    }
    // A skill both required and preferred somewhere is required.
    let nice = nice.difference(&required).copied().collect();

    Ok(ParsedJob {
        seniority: Seniority::from_title(&title),
        title,
        required_skills: required,
        nice_to_have_skills: nice,
        years_required: stated_on_experience_line.or(stated_anywhere),
        word_count: words,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A job ad for a senior backend engineer, used across the crate's tests.
    pub(crate) const BACKEND_JOB: &str = "\
# Senior Backend Engineer (Rust)

About the role
You will build the services behind our payments platform.

Requirements:
- 5+ years of professional experience
- Rust or Go in production
- Kubernetes, Docker and AWS
- PostgreSQL and Kafka
- Strong communication skills

Nice to have
- Terraform
- Experience with gRPC
- Python

Benefits
- Remote first
";

    #[test]
    fn the_title_is_the_first_line_without_decoration() {
        let job = parse_job(BACKEND_JOB).unwrap();
        assert_eq!(job.title, "Senior Backend Engineer (Rust)");
        let job = parse_job("\n\nJob Title: Data Analyst\nSQL").unwrap();
        assert_eq!(job.title, "Data Analyst");
    }

    #[test]
    fn skills_are_split_into_required_and_nice_to_have_by_headings() {
        let job = parse_job(BACKEND_JOB).unwrap();
        let required: Vec<_> = job.required_skills.iter().copied().collect();
        assert_eq!(
            required,
            [
                "aws",
                "communication",
                "docker",
                "go",
                "kafka",
                "kubernetes",
                "postgresql",
                "rust"
            ]
        );
        let nice: Vec<_> = job.nice_to_have_skills.iter().copied().collect();
        assert_eq!(nice, ["grpc", "python", "terraform"]);
    }

    #[test]
    fn skills_are_required_when_the_ad_has_no_headings() {
        let job = parse_job("Frontend Developer\nWe use React and TypeScript.").unwrap();
        let required: Vec<_> = job.required_skills.iter().copied().collect();
        assert_eq!(required, ["react", "typescript"]);
        assert!(job.nice_to_have_skills.is_empty());
    }

    #[test]
    fn a_cue_on_the_line_makes_a_skill_nice_to_have() {
        let job =
            parse_job("Platform Engineer\nMust have: Linux, Docker\nKubernetes is a plus\nBash")
                .unwrap();
        assert!(job.nice_to_have_skills.contains("kubernetes"));
        // The line cue does not change the list the following lines belong to.
        assert!(job.required_skills.contains("bash"));
        assert!(job.required_skills.contains("linux"));
    }

    #[test]
    fn a_line_that_starts_like_a_heading_word_stays_in_its_list() {
        let job = parse_job("Engineer\nNice to have\nExperience in fintech\nTerraform").unwrap();
        assert!(job.nice_to_have_skills.contains("terraform"), "{job:?}");
    }

    #[test]
    fn an_inline_heading_opens_its_list_on_the_same_line() {
        let job = parse_job("Data Engineer\nPreferred: Airflow, dbt\nSQL").unwrap();
        let nice: Vec<_> = job.nice_to_have_skills.iter().copied().collect();
        assert_eq!(nice, ["airflow", "dbt", "sql"]);
    }

    #[test]
    fn a_skill_both_required_and_preferred_is_required() {
        let job = parse_job("Engineer\nRequirements\nPython\nBonus\nPython, Rust").unwrap();
        assert!(job.required_skills.contains("python"));
        assert!(!job.nice_to_have_skills.contains("python"));
        assert!(job.nice_to_have_skills.contains("rust"));
    }

    #[test]
    fn seniority_comes_from_the_title() {
        assert_eq!(
            parse_job(BACKEND_JOB).unwrap().seniority,
            Some(Seniority::Senior)
        );
        assert_eq!(
            parse_job("Senior Staff Engineer").unwrap().seniority,
            Some(Seniority::Staff)
        );
        assert_eq!(parse_job("Software Engineer").unwrap().seniority, None);
    }

    #[test]
    fn years_required_come_from_the_text_or_the_seniority() {
        let job = parse_job(BACKEND_JOB).unwrap();
        assert_eq!(job.years_required, Some(5));
        let job = parse_job("Analyst\n3-5 years of experience with SQL").unwrap();
        assert_eq!(job.years_required, Some(3));
        let job = parse_job("Staff Engineer\nRust").unwrap();
        assert_eq!(job.years_required, None);
        assert_eq!(job.expected_years(), Some(8));
    }

    #[test]
    fn a_job_without_words_is_a_parse_error() {
        assert_eq!(
            parse_job("!!! ???"),
            Err(ParseError::NoWords { subject: "job" })
        );
    }
}
