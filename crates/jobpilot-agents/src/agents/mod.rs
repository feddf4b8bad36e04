//! The agent types as step sequences, one file each: what every step computes or asks the
//! LLM, and how the result is read from the state at the end.
//!
//! Nothing here creates spans, calls the network or retries: the runner does that for every
//! step alike. What is shared below is small prose and state plumbing the three agents need.

mod cover_letter;
mod job_match;
mod resume_review;

pub(crate) use cover_letter::CoverLetter;
pub(crate) use job_match::JobMatch;
pub(crate) use resume_review::ResumeReview;

use serde_json::Value;

use crate::agent_type::InputError;
use crate::error::StepError;
use crate::skills::display_name;

/// The string field `name` of an input whose shape was checked.
fn text_field(input: &Value, name: &str) -> Result<String, InputError> {
    input
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| InputError {
            field: format!("input.{name}"),
            reason: "must be a string".to_owned(),
        })
}

/// The value an earlier step stored, or an internal error naming it: the step order makes
/// this unreachable, and a bug must fail the run rather than panic the worker.
fn need<'a, T>(value: &'a Option<T>, what: &'static str) -> Result<&'a T, StepError> {
    value.as_ref().ok_or(StepError::Internal(what))
}

/// Skills as prose: display names joined with commas and a final "and", at most `max`.
fn skill_list<'a>(skills: impl IntoIterator<Item = &'a &'static str>, max: usize) -> String {
    let names: Vec<String> = skills
        .into_iter()
        .take(max)
        .map(|s| display_name(s))
        .collect();
    match names.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Years of experience as prose ("8 years", "1 year", "under a year").
fn years_phrase(years: f64) -> String {
    match years.floor() as u32 {
        0 => "under a year".to_owned(),
        1 => "1 year".to_owned(),
        n => format!("{n} years"),
    }
}

/// The text of a model's answer as a list: one item per line, list markers removed.
fn answer_lines(answer: &str, max: usize) -> Vec<String> {
    answer
        .lines()
        .map(|line| {
            let line = line.trim();
            let line = line.trim_start_matches(['-', '*', '•', '·']);
            // "1." / "2)" numbering, as models often write lists.
            let numbered = line.split_once(['.', ')']).filter(|(n, rest)| {
                !n.is_empty()
                    && n.len() <= 2
                    && n.chars().all(|c| c.is_ascii_digit())
                    && rest.starts_with(' ')
            });
            numbered.map_or(line, |(_, rest)| rest).trim().to_owned()
        })
        .filter(|line| !line.is_empty())
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent_type::AgentType;
    use crate::runner::{Agent, Step};

    fn names<S>(steps: &[Step<S>]) -> Vec<&'static str> {
        steps.iter().map(|s| s.name).collect()
    }

    #[test]
    fn each_agent_declares_the_steps_its_type_lists() {
        assert_eq!(names(JobMatch::STEPS), AgentType::JobMatch.steps());
        assert_eq!(names(ResumeReview::STEPS), AgentType::ResumeReview.steps());
        assert_eq!(names(CoverLetter::STEPS), AgentType::CoverLetter.steps());
    }

    #[test]
    fn span_names_are_the_specs_agent_type_step_name() {
        fn check<S>(agent: AgentType, steps: &[Step<S>]) {
            for step in steps {
                assert_eq!(
                    step.span_name,
                    format!("agent.{}.{}", agent.as_str(), step.name)
                );
            }
            assert_eq!(
                agent.invoke_span_name(),
                format!(
                    "{} {}",
                    jobpilot_telemetry::names::OP_INVOKE_AGENT,
                    agent.as_str()
                )
            );
        }
        check(AgentType::JobMatch, JobMatch::STEPS);
        check(AgentType::ResumeReview, ResumeReview::STEPS);
        check(AgentType::CoverLetter, CoverLetter::STEPS);
    }

    #[test]
    fn skill_lists_read_as_prose() {
        assert_eq!(skill_list(&["rust"], 5), "Rust");
        assert_eq!(
            skill_list(&["rust", "postgresql"], 5),
            "Rust and PostgreSQL"
        );
        assert_eq!(
            skill_list(&["aws", "go", "rust", "sql"], 3),
            "AWS, Go and Rust"
        );
        assert_eq!(skill_list(&[], 3), "");
    }

    #[test]
    fn years_read_as_prose() {
        assert_eq!(years_phrase(8.4), "8 years");
        assert_eq!(years_phrase(1.9), "1 year");
        assert_eq!(years_phrase(0.5), "under a year");
    }

    #[test]
    fn answers_are_split_into_items_without_markers() {
        let answer = "- Add a summary.\n\n2) Quantify results.\n• Keep it short\n10. Ten";
        assert_eq!(
            answer_lines(answer, 10),
            [
                "Add a summary.",
                "Quantify results.",
                "Keep it short",
                "Ten"
            ]
        );
        assert_eq!(answer_lines(answer, 1).len(), 1);
        assert_eq!(
            answer_lines("3.5 years is plenty", 5),
            ["3.5 years is plenty"]
        );
    }
}
