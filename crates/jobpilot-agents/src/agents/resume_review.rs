//! The `resume_review` agent: parse the resume, check which expected sections it has and how
//! it reads (length, dates, measurable results, named skills), and have the LLM phrase the
//! findings as suggestions.
//!
//! The findings are deterministic; the model only rewrites them, and when its answer has no
//! usable lines the findings themselves are the suggestions.

use serde_json::{Value, json};

use super::{answer_lines, need, text_field};
use crate::agent_type::InputError;
use crate::error::StepError;
use crate::llm::{ChatMessage, draft_block};
use crate::resume::{ParsedResume, Section, parse_resume};
use crate::runner::{Action, Agent, Step, step};

/// Fewer words than this and a resume says too little to judge.
const SHORT_WORDS: usize = 150;
/// More words than this and a resume is past two pages.
const LONG_WORDS: usize = 1000;
/// Fewer recognised skills than this and the resume hides what the candidate can do.
const FEW_SKILLS: usize = 5;
/// Most suggestions returned.
const MAX_SUGGESTIONS: usize = 12;

/// The `resume_review` agent type.
pub(crate) struct ResumeReview;

/// What the steps of a `resume_review` run read and write.
pub(crate) struct State {
    resume_text: String,
    resume: Option<ParsedResume>,
    findings: Option<Vec<String>>,
    suggestions: Option<Vec<String>>,
}

impl Agent for ResumeReview {
    type State = State;

    const STEPS: &'static [Step<State>] = &[
        step!(
            "resume_review",
            "parse_resume",
            Action::Compute(parse_resume_step)
        ),
        step!(
            "resume_review",
            "check_sections",
            Action::Compute(check_sections)
        ),
        step!(
            "resume_review",
            "suggest",
            Action::Write {
                prompt: suggest_prompt,
                store: store_suggestions,
            }
        ),
    ];

    fn start(input: &Value) -> Result<State, InputError> {
        Ok(State {
            resume_text: text_field(input, "resume")?,
            resume: None,
            findings: None,
            suggestions: None,
        })
    }

    fn finish(state: State) -> Result<Value, &'static str> {
        let resume = state.resume.ok_or("the parsed resume")?;
        let suggestions = state.suggestions.ok_or("the suggestions")?;
        let found: Vec<&str> = resume.sections.iter().map(|s| s.as_str()).collect();
        let missing: Vec<&str> = resume
            .missing_sections()
            .iter()
            .map(|s| s.as_str())
            .collect();
        Ok(json!({
            "sections_found": found,
            "sections_missing": missing,
            "suggestions": suggestions,
        }))
    }
}

fn parse_resume_step(state: &mut State) -> Result<(), StepError> {
    state.resume = Some(parse_resume(&state.resume_text)?);
    // The text is not needed after parsing; do not hold a resume in memory longer than that.
    state.resume_text = String::new();
    Ok(())
}

/// What to add for a missing expected section.
fn advice_for(section: Section) -> &'static str {
    match section {
        Section::Contact => {
            "Put contact details at the top: an email address and a phone number or profile link."
        }
        Section::Summary => {
            "Open with a two- or three-line summary of who you are and the role you want."
        }
        Section::Experience => {
            "Add a work experience section: each role with company, dates and achievements."
        }
        Section::Education => {
            "Add an education section, even a short one: degree or training, school and year."
        }
        Section::Skills => "Add a skills section listing the tools and technologies you use.",
        Section::Projects | Section::Certifications => "",
    }
}

/// The findings of a review, most important first.
fn findings(resume: &ParsedResume) -> Vec<String> {
    let mut out: Vec<String> = resume
        .missing_sections()
        .into_iter()
        .map(advice_for)
        .filter(|advice| !advice.is_empty())
        .map(str::to_owned)
        .collect();
    if resume.quantified_lines == 0 {
        out.push(
            "Quantify your achievements (\"cut latency by 40%\", \"served 2M users\") so the \
             impact of your work is visible."
                .to_owned(),
        );
    }
    if resume.years_of_experience.is_none() {
        out.push(
            "Give dates for each role (e.g. \"2019 - 2023\") so your experience can be counted."
                .to_owned(),
        );
    }
    if resume.skills.len() < FEW_SKILLS {
        out.push(format!(
            "Name more concrete skills and tools: only {} recognisable skills were found.",
            resume.skills.len()
        ));
    }
    if resume.word_count < SHORT_WORDS {
        out.push(format!(
            "At {} words the resume is thin; describe your responsibilities and results in more \
             detail.",
            resume.word_count
        ));
    } else if resume.word_count > LONG_WORDS {
        out.push(format!(
            "At {} words the resume is long; aim for one or two pages by trimming older or less \
             relevant roles.",
            resume.word_count
        ));
    }
    if out.is_empty() {
        out.push(
            "The resume covers the essentials; tailor the summary and skills to each job you \
             apply for."
                .to_owned(),
        );
    }
    out
}

fn check_sections(state: &mut State) -> Result<(), StepError> {
    let resume = need(&state.resume, "the parsed resume")?;
    state.findings = Some(findings(resume));
    Ok(())
}

fn suggest_prompt(state: &State) -> Result<Vec<ChatMessage>, StepError> {
    let findings = need(&state.findings, "the findings")?;
    let draft: Vec<String> = findings.iter().map(|f| format!("- {f}")).collect();
    Ok(vec![
        ChatMessage::system(
            "You are a career coach reviewing a resume. Turn the findings into concise, \
             actionable suggestions, one per line, each starting with \"- \". Keep every \
             finding, add nothing that is not in them, and write no introduction.",
        ),
        ChatMessage::user(format!(
            "Rewrite these review findings as suggestions:\n\n{}",
            draft_block(&draft.join("\n"))
        )),
    ])
}

fn store_suggestions(state: &mut State, answer: String) -> Result<(), StepError> {
    let mut suggestions = answer_lines(&answer, MAX_SUGGESTIONS);
    if suggestions.is_empty() {
        // A model that answered with nothing usable still leaves the findings to show.
        suggestions = need(&state.findings, "the findings")?.clone();
    }
    state.suggestions = Some(suggestions);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resume::tests::STRONG_RESUME;

    #[test]
    fn a_bare_resume_gets_a_finding_per_gap() {
        let resume = parse_resume("Jane Doe\nI like computers").unwrap();
        let found = findings(&resume);
        assert!(
            found.iter().any(|f| f.starts_with("Put contact details")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.starts_with("Add a work experience")),
            "{found:?}"
        );
        assert!(found.iter().any(|f| f.starts_with("Quantify")), "{found:?}");
        assert!(
            found.iter().any(|f| f.starts_with("Give dates")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("only 0 recognisable skills")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|f| f.starts_with("At 5 words")),
            "{found:?}"
        );
    }

    #[test]
    fn a_complete_resume_gets_no_section_advice() {
        let resume = parse_resume(STRONG_RESUME).unwrap();
        let found = findings(&resume);
        assert!(
            !found
                .iter()
                .any(|f| f.starts_with("Add a") || f.starts_with("Put")),
            "{found:?}"
        );
        assert!(
            !found.iter().any(|f| f.starts_with("Quantify")),
            "{found:?}"
        );
    }

    #[test]
    fn an_empty_answer_falls_back_to_the_findings() {
        let mut state = ResumeReview::start(&json!({"resume": "x"})).unwrap();
        state.findings = Some(vec!["Add a summary.".to_owned()]);
        store_suggestions(&mut state, "  \n".to_owned()).unwrap();
        assert_eq!(state.suggestions, Some(vec!["Add a summary.".to_owned()]));
    }
}
