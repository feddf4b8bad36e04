//! The `cover_letter` agent: parse the resume and the job, have the LLM outline a letter from
//! the facts they share, then write the letter from that outline.
//!
//! Both prose steps send a factual first draft for the model to improve (so it keeps to what
//! the resume shows); with the offline provider those drafts are the outline and the letter.

use serde_json::{Value, json};

use super::{need, skill_list, text_field, years_phrase};
use crate::agent_type::InputError;
use crate::error::StepError;
use crate::job::{ParsedJob, parse_job};
use crate::llm::{ChatMessage, draft_block};
use crate::resume::{ParsedResume, parse_resume};
use crate::runner::{Action, Agent, Step, step};

/// How many matching skills the letter names.
const STRENGTHS_MAX: usize = 5;
/// How many missing skills the letter offers to grow into.
const GROWTH_MAX: usize = 2;

/// The `cover_letter` agent type.
pub(crate) struct CoverLetter;

/// What the steps of a `cover_letter` run read and write.
pub(crate) struct State {
    resume_text: String,
    job_text: String,
    company: String,
    resume: Option<ParsedResume>,
    job: Option<ParsedJob>,
    outline: Option<String>,
    letter: Option<String>,
}

impl Agent for CoverLetter {
    type State = State;

    const STEPS: &'static [Step<State>] = &[
        step!(
            "cover_letter",
            "parse_resume",
            Action::Compute(parse_resume_step)
        ),
        step!("cover_letter", "parse_job", Action::Compute(parse_job_step)),
        step!(
            "cover_letter",
            "outline",
            Action::Write {
                prompt: outline_prompt,
                store: store_outline,
            }
        ),
        step!(
            "cover_letter",
            "draft",
            Action::Write {
                prompt: draft_prompt,
                store: store_letter,
            }
        ),
    ];

    fn start(input: &Value) -> Result<State, InputError> {
        Ok(State {
            resume_text: text_field(input, "resume")?,
            job_text: text_field(input, "job")?,
            company: text_field(input, "company")?.trim().to_owned(),
            resume: None,
            job: None,
            outline: None,
            letter: None,
        })
    }

    fn finish(state: State) -> Result<Value, &'static str> {
        let letter = state.letter.ok_or("the letter")?;
        Ok(json!({ "letter": letter }))
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

/// The facts a letter may use, computed once for both prose steps.
struct Facts<'a> {
    company: &'a str,
    title: &'a str,
    years: Option<f64>,
    /// Skills the job asks for that the resume shows, required ones first.
    strengths: Vec<&'static str>,
    /// Required skills the resume does not show.
    gaps: Vec<&'static str>,
}

impl<'a> Facts<'a> {
    fn new(company: &'a str, resume: &ParsedResume, job: &'a ParsedJob) -> Self {
        let shows = |s: &&&'static str| resume.skills.contains(**s);
        let strengths = job
            .required_skills
            .iter()
            .filter(shows)
            .chain(job.nice_to_have_skills.iter().filter(shows))
            .copied()
            .collect();
        let gaps = job
            .required_skills
            .iter()
            .filter(|s| !resume.skills.contains(**s))
            .copied()
            .collect();
        Facts {
            company,
            title: if job.title.is_empty() {
                "open"
            } else {
                &job.title
            },
            years: resume.years_of_experience,
            strengths,
            gaps,
        }
    }

    /// The facts as lines of a prompt.
    fn as_prompt(&self) -> String {
        let mut lines = vec![
            format!("Company: {}", self.company),
            format!("Role: {}", self.title),
        ];
        if let Some(years) = self.years {
            lines.push(format!("Candidate experience: {}", years_phrase(years)));
        }
        if !self.strengths.is_empty() {
            lines.push(format!(
                "Skills the candidate has that the role asks for: {}",
                skill_list(&self.strengths, STRENGTHS_MAX)
            ));
        }
        if !self.gaps.is_empty() {
            lines.push(format!(
                "Required skills the candidate has not shown: {}",
                skill_list(&self.gaps, GROWTH_MAX)
            ));
        }
        lines.join("\n")
    }

    fn outline(&self) -> String {
        let mut points = vec![format!(
            "1. Opening: applying for the {} role at {}.",
            self.title, self.company
        )];
        let fit = match (self.years, self.strengths.is_empty()) {
            (Some(years), false) => format!(
                "{} of experience, with strengths in {}",
                years_phrase(years),
                skill_list(&self.strengths, STRENGTHS_MAX)
            ),
            (Some(years), true) => format!("{} of relevant experience", years_phrase(years)),
            (None, false) => format!(
                "strengths in {}",
                skill_list(&self.strengths, STRENGTHS_MAX)
            ),
            (None, true) => "enthusiasm for the role and a willingness to learn".to_owned(),
        };
        points.push(format!("2. Fit: {fit}."));
        if !self.gaps.is_empty() {
            points.push(format!(
                "3. Growth: keen to deepen experience with {}.",
                skill_list(&self.gaps, GROWTH_MAX)
            ));
        }
        points.push(format!(
            "{}. Closing: thanks, and an invitation to talk.",
            points.len() + 1
        ));
        points.join("\n")
    }

    fn letter(&self) -> String {
        let opening = format!(
            "I am writing to apply for the {} role at {}.",
            self.title, self.company
        );
        let fit = match (self.years, self.strengths.is_empty()) {
            (Some(years), false) => format!(
                "I bring {} of hands-on experience, including {}, which this role calls for.",
                years_phrase(years),
                skill_list(&self.strengths, STRENGTHS_MAX)
            ),
            (Some(years), true) => format!(
                "I bring {} of experience and a track record of learning quickly.",
                years_phrase(years)
            ),
            (None, false) => format!(
                "My background covers {}, which this role calls for.",
                skill_list(&self.strengths, STRENGTHS_MAX)
            ),
            (None, true) => {
                "I am drawn to the role and eager to bring my skills to your team.".to_owned()
            }
        };
        let mut body = fit;
        if !self.gaps.is_empty() {
            body.push_str(&format!(
                " I am keen to deepen my experience with {} as part of your team.",
                skill_list(&self.gaps, GROWTH_MAX)
            ));
        }
        format!(
            "Dear {company} hiring team,\n\n{opening}\n\n{body}\n\nThank you for considering my \
             application. I would welcome the chance to discuss how I could contribute to \
             {company}.\n\nKind regards",
            company = self.company
        )
    }
}

fn facts(state: &State) -> Result<Facts<'_>, StepError> {
    let resume = need(&state.resume, "the parsed resume")?;
    let job = need(&state.job, "the parsed job")?;
    Ok(Facts::new(&state.company, resume, job))
}

fn outline_prompt(state: &State) -> Result<Vec<ChatMessage>, StepError> {
    let facts = facts(state)?;
    Ok(vec![
        ChatMessage::system(
            "You plan cover letters. Write a numbered outline of three or four points, one per \
             line, using only the facts given; never invent employers, titles or numbers.",
        ),
        ChatMessage::user(format!(
            "Facts:\n{}\n\nImprove this outline:\n\n{}",
            facts.as_prompt(),
            draft_block(&facts.outline())
        )),
    ])
}

fn store_outline(state: &mut State, answer: String) -> Result<(), StepError> {
    state.outline = Some(answer.trim().to_owned());
    Ok(())
}

fn draft_prompt(state: &State) -> Result<Vec<ChatMessage>, StepError> {
    let facts = facts(state)?;
    let outline = need(&state.outline, "the outline")?;
    Ok(vec![
        ChatMessage::system(
            "You write concise, warm and professional cover letters of at most 250 words. \
             Follow the outline and use only its facts; never invent employers, titles or \
             numbers. Answer with the letter only.",
        ),
        ChatMessage::user(format!(
            "Facts:\n{}\n\nOutline:\n{outline}\n\nImprove this first draft of the letter:\n\n{}",
            facts.as_prompt(),
            draft_block(&facts.letter())
        )),
    ])
}

fn store_letter(state: &mut State, answer: String) -> Result<(), StepError> {
    state.letter = Some(answer.trim().to_owned());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::tests::BACKEND_JOB;
    use crate::resume::tests::STRONG_RESUME;

    fn facts_for<'a>(resume: &ParsedResume, job: &'a ParsedJob) -> Facts<'a> {
        Facts::new("Acme", resume, job)
    }

    #[test]
    fn the_letter_names_company_role_and_shared_skills() {
        let resume = parse_resume(STRONG_RESUME).unwrap();
        let job = parse_job(BACKEND_JOB).unwrap();
        let letter = facts_for(&resume, &job).letter();
        assert!(letter.starts_with("Dear Acme hiring team,"), "{letter}");
        assert!(
            letter.contains("the Senior Backend Engineer (Rust) role at Acme"),
            "{letter}"
        );
        assert!(
            letter.contains("including AWS, communication, Docker, Go and Kafka"),
            "{letter}"
        );
        assert!(
            !letter.contains("keen to deepen"),
            "nothing required is missing: {letter}"
        );
        assert!(letter.ends_with("Kind regards"));
    }

    #[test]
    fn gaps_become_a_growth_point() {
        let resume = parse_resume("Backend developer with Rust and Docker").unwrap();
        let job = parse_job(BACKEND_JOB).unwrap();
        let facts = facts_for(&resume, &job);
        assert!(
            facts
                .outline()
                .contains("3. Growth: keen to deepen experience with AWS and communication."),
            "{}",
            facts.outline()
        );
        assert!(
            facts.outline().contains("4. Closing"),
            "{}",
            facts.outline()
        );
        assert!(
            facts
                .letter()
                .contains("My background covers Docker and Rust"),
            "{}",
            facts.letter()
        );
    }
}
