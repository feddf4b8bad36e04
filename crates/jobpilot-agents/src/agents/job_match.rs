//! The `job_match` agent: parse the resume and the job, score one against the other, and have
//! the LLM explain the score in a few sentences.
//!
//! The score and the skill lists are deterministic ([`crate::scoring`]); only the explanation
//! is prose, rewritten by the model from a factual draft so it cannot drift from the numbers.

use serde_json::{Value, json};

use super::{need, skill_list, text_field, years_phrase};
use crate::agent_type::InputError;
use crate::error::StepError;
use crate::job::{ParsedJob, parse_job};
use crate::llm::{ChatMessage, draft_block};
use crate::resume::{ParsedResume, parse_resume};
use crate::runner::{Action, Agent, Step, step};
use crate::scoring::{MatchScore, score};

/// How many skills the prose names in one list.
const LIST_MAX: usize = 6;

/// The `job_match` agent type.
pub(crate) struct JobMatch;

/// What the steps of a `job_match` run read and write.
pub(crate) struct State {
    resume_text: String,
    job_text: String,
    resume: Option<ParsedResume>,
    job: Option<ParsedJob>,
    score: Option<MatchScore>,
    explanation: Option<String>,
}

impl Agent for JobMatch {
    type State = State;

    const STEPS: &'static [Step<State>] = &[
        step!(
            "job_match",
            "parse_resume",
            Action::Compute(parse_resume_step)
        ),
        step!("job_match", "parse_job", Action::Compute(parse_job_step)),
        step!("job_match", "score", Action::Compute(score_step)),
        step!(
            "job_match",
            "explain",
            Action::Write {
                prompt: explain_prompt,
                store: store_explanation,
            }
        ),
    ];

    fn start(input: &Value) -> Result<State, InputError> {
        Ok(State {
            resume_text: text_field(input, "resume")?,
            job_text: text_field(input, "job")?,
            resume: None,
            job: None,
            score: None,
            explanation: None,
        })
    }

    fn finish(state: State) -> Result<Value, &'static str> {
        let score = state.score.ok_or("the score")?;
        let explanation = state.explanation.ok_or("the explanation")?;
        Ok(json!({
            "score": score.score,
            "matched_skills": score.matched_skills,
            "missing_skills": score.missing_skills,
            "explanation": explanation,
        }))
    }
}

fn parse_resume_step(state: &mut State) -> Result<(), StepError> {
    state.resume = Some(parse_resume(&state.resume_text)?);
    // The text is not needed after parsing; do not hold a resume in memory longer than that.
    state.resume_text = String::new();
    Ok(())
}

fn parse_job_step(state: &mut State) -> Result<(), StepError> {
    state.job = Some(parse_job(&state.job_text)?);
    state.job_text = String::new();
    Ok(())
}

fn score_step(state: &mut State) -> Result<(), StepError> {
    let resume = need(&state.resume, "the parsed resume")?;
    let job = need(&state.job, "the parsed job")?;
    state.score = Some(score(resume, job));
    Ok(())
}

/// A few factual sentences about the score: the draft the model rewrites.
fn draft_explanation(resume: &ParsedResume, job: &ParsedJob, result: &MatchScore) -> String {
    let verdict = match result.score {
        80..=100 => "Strong",
        60..=79 => "Good",
        40..=59 => "Partial",
        _ => "Weak",
    };
    let title = if job.title.is_empty() {
        "this role"
    } else {
        job.title.as_str()
    };
    let mut sentences = vec![format!(
        "{verdict} match ({}/100) for {title}.",
        result.score
    )];

    if result.required_total + result.nice_total == 0 {
        sentences.push(
            "The job names no skills jobpilot recognises, so the skill comparison is neutral."
                .to_owned(),
        );
    } else {
        let mut covered = format!(
            "The resume shows {} of {} required skills",
            result.required_matched, result.required_total
        );
        if result.nice_total > 0 {
            covered.push_str(&format!(
                " and {} of {} nice-to-have skills",
                result.nice_matched, result.nice_total
            ));
        }
        if !result.matched_skills.is_empty() {
            covered.push_str(&format!(
                ", including {}",
                skill_list(&result.matched_skills, LIST_MAX)
            ));
        }
        covered.push('.');
        sentences.push(covered);
        if !result.missing_required.is_empty() {
            sentences.push(format!(
                "Missing required skills: {}.",
                skill_list(&result.missing_required, LIST_MAX)
            ));
        }
    }

    match (resume.years_of_experience, job.expected_years()) {
        (Some(have), Some(need)) if need > 0 => sentences.push(format!(
            "The resume covers about {} of experience against {need} expected.",
            years_phrase(have)
        )),
        (None, Some(need)) if need > 0 => sentences.push(format!(
            "The resume gives no dates to count experience against the {need} years expected."
        )),
        _ => {}
    }
    sentences.join(" ")
}

fn explain_prompt(state: &State) -> Result<Vec<ChatMessage>, StepError> {
    let resume = need(&state.resume, "the parsed resume")?;
    let job = need(&state.job, "the parsed job")?;
    let result = need(&state.score, "the score")?;
    let draft = draft_explanation(resume, job, result);
    Ok(vec![
        ChatMessage::system(
            "You are an experienced technical recruiter. Explain a resume-to-job match score to \
             the candidate in two to four plain, encouraging sentences. Use only the facts \
             given; never invent skills, employers or numbers.",
        ),
        ChatMessage::user(format!(
            "Rewrite this explanation of the score, keeping every fact and number:\n\n{}",
            draft_block(&draft)
        )),
    ])
}

fn store_explanation(state: &mut State, answer: String) -> Result<(), StepError> {
    state.explanation = Some(answer.trim().to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::tests::BACKEND_JOB;
    use crate::resume::tests::STRONG_RESUME;

    #[test]
    fn the_draft_states_score_skills_and_years() {
        let resume = parse_resume(STRONG_RESUME).unwrap();
        let job = parse_job(BACKEND_JOB).unwrap();
        let result = score(&resume, &job);
        let draft = draft_explanation(&resume, &job, &result);
        assert!(
            draft.starts_with("Strong match (100/100) for Senior Backend Engineer (Rust)."),
            "{draft}"
        );
        assert!(
            draft.contains("8 of 8 required skills and 3 of 3 nice-to-have"),
            "{draft}"
        );
        assert!(
            draft.contains("including AWS, communication, Docker, Go, gRPC and Kafka."),
            "{draft}"
        );
        assert!(draft.contains("against 5 expected"), "{draft}");
    }

    #[test]
    fn missing_required_skills_are_named() {
        let resume = parse_resume("Frontend developer: React, CSS").unwrap();
        let job = parse_job(BACKEND_JOB).unwrap();
        let result = score(&resume, &job);
        let draft = draft_explanation(&resume, &job, &result);
        assert!(draft.starts_with("Weak match"), "{draft}");
        assert!(
            draft.contains("Missing required skills: AWS, communication, Docker"),
            "{draft}"
        );
        assert!(draft.contains("no dates to count experience"), "{draft}");
    }
}
