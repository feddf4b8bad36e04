//! The agent types jobpilot offers, their steps, and the shape of their input.
//!
//! This is the catalogue the API shows and the check it runs before it accepts a run
//! ([`AgentType::validate_input`]: object, required string fields, size limits). It does not judge
//! the content of those strings: whether a resume has words in it is for the steps to decide.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Largest accepted resume, in characters.
pub const MAX_RESUME_CHARS: usize = 64 * 1024;
/// Largest accepted job description, in characters.
pub const MAX_JOB_CHARS: usize = 32 * 1024;
/// Longest accepted company name, in characters.
pub const MAX_COMPANY_CHARS: usize = 200;

/// One kind of agent a user can run.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AgentType {
    /// Scores a resume against a job description and explains the score.
    JobMatch,
    /// Reviews a resume's structure and suggests improvements.
    ResumeReview,
    /// Writes a cover letter for a resume, a job and a company.
    CoverLetter,
}

/// A string that names no agent type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown agent type `{name}`; expected one of job_match, resume_review, cover_letter")]
pub struct UnknownAgentType {
    /// The name that was asked for (cut to 64 characters so a hostile path stays readable).
    pub name: String,
}

/// Input that does not have the shape an agent type needs. The API answers 422 with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct InputError {
    /// Path of the offending value, e.g. `input.resume`.
    pub field: String,
    /// What is wrong with it, e.g. `is required`.
    pub reason: String,
}

impl InputError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InputError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One input field of an agent type.
#[derive(Clone, Copy, Debug)]
struct Field {
    name: &'static str,
    description: &'static str,
    /// Longest accepted value, in characters, as JSON Schema's `maxLength` counts them, so the
    /// published schema and the check agree exactly (the request body limit bounds the bytes).
    max_chars: usize,
}

const RESUME: Field = Field {
    name: "resume",
    description: "The candidate's resume as plain text (at most 65,536 characters).",
    max_chars: MAX_RESUME_CHARS,
};
const JOB: Field = Field {
    name: "job",
    description: "The job description as plain text, title on the first line (at most 32,768 characters).",
    max_chars: MAX_JOB_CHARS,
};
const COMPANY: Field = Field {
    name: "company",
    description: "The name of the hiring company (at most 200 characters).",
    max_chars: MAX_COMPANY_CHARS,
};

impl AgentType {
    /// Every agent type, in the order the API lists them.
    pub const ALL: [AgentType; 3] = [
        AgentType::JobMatch,
        AgentType::ResumeReview,
        AgentType::CoverLetter,
    ];

    /// The name used in URLs, span names and run records.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentType::JobMatch => "job_match",
            AgentType::ResumeReview => "resume_review",
            AgentType::CoverLetter => "cover_letter",
        }
    }

    /// The name of the span of one run of this agent type, `invoke_agent {agent_type}`.
    pub fn invoke_span_name(self) -> &'static str {
        match self {
            AgentType::JobMatch => "invoke_agent job_match",
            AgentType::ResumeReview => "invoke_agent resume_review",
            AgentType::CoverLetter => "invoke_agent cover_letter",
        }
    }

    /// The names of the steps, in the order they run.
    pub fn steps(self) -> &'static [&'static str] {
        match self {
            AgentType::JobMatch => &["parse_resume", "parse_job", "score", "explain"],
            AgentType::ResumeReview => &["parse_resume", "check_sections", "suggest"],
            AgentType::CoverLetter => &["parse_resume", "parse_job", "outline", "draft"],
        }
    }

    /// One sentence on what the agent does, for the API's catalogue.
    pub fn description(self) -> &'static str {
        match self {
            AgentType::JobMatch => {
                "Scores a resume against a job description (0-100), lists matched and missing \
                 skills, and explains the score."
            }
            AgentType::ResumeReview => {
                "Checks which sections a resume has and which are missing, and suggests \
                 improvements."
            }
            AgentType::CoverLetter => {
                "Writes a cover letter for a resume, a job description and a company."
            }
        }
    }

    fn fields(self) -> &'static [Field] {
        match self {
            AgentType::JobMatch => &[RESUME, JOB],
            AgentType::ResumeReview => &[RESUME],
            AgentType::CoverLetter => &[RESUME, JOB, COMPANY],
        }
    }

    /// The JSON Schema (draft 2020-12) of the `input` object this agent type accepts.
    ///
    /// `maxLength` counts characters, as JSON Schema does; the byte limits that
    /// [`AgentType::validate_input`] enforces are stated in each field's description.
    pub fn input_schema(self) -> Value {
        let mut properties = Map::new();
        for field in self.fields() {
            let max = field.max_chars;
            properties.insert(
                field.name.to_owned(),
                json!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": max,
                    "description": field.description,
                }),
            );
        }
        let required: Vec<&str> = self.fields().iter().map(|f| f.name).collect();
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": format!("{} input", self.as_str()),
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": false,
        })
    }

    /// Checks the shape of `input`: an object holding exactly this type's fields, each a
    /// non-blank string within its size limit. The content is left to the steps.
    ///
    /// # Errors
    /// The first problem found, as an [`InputError`] whose `field` is the path of the value
    /// (`input`, `input.resume`, ...). Declared fields are checked in order, then unknown ones.
    pub fn validate_input(self, input: &Value) -> Result<(), InputError> {
        let Some(object) = input.as_object() else {
            return Err(InputError::new("input", "must be a JSON object"));
        };
        for field in self.fields() {
            let path = format!("input.{}", field.name);
            let text = match object.get(field.name) {
                None | Some(Value::Null) => return Err(InputError::new(path, "is required")),
                Some(Value::String(text)) => text,
                Some(other) => {
                    return Err(InputError::new(
                        path,
                        format!("must be a string, not {}", json_kind(other)),
                    ));
                }
            };
            // Only the shape is judged here, exactly as the published schema says (a non-empty
            // string within its length); whether the text holds any words is the steps' call.
            if text.is_empty() {
                return Err(InputError::new(path, "must not be empty"));
            }
            let max = field.max_chars;
            if text.chars().count() > max {
                return Err(InputError::new(
                    path,
                    format!("must be at most {max} characters"),
                ));
            }
        }
        if let Some(unknown) = object
            .keys()
            .find(|key| !self.fields().iter().any(|f| f.name == key.as_str()))
        {
            let expected: Vec<&str> = self.fields().iter().map(|f| f.name).collect();
            return Err(InputError::new(
                format!("input.{}", clip(unknown, 64)),
                format!(
                    "is not a field of {} (expected {})",
                    self.as_str(),
                    expected.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// The JSON type of `value`, as a person would name it in an error message.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The first `max` characters of `s`, so echoing user input never floods a message.
fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl fmt::Display for AgentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentType {
    type Err = UnknownAgentType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AgentType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownAgentType { name: clip(s, 64) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_match_input() -> Value {
        json!({"resume": "Rust engineer", "job": "Senior Rust Engineer"})
    }

    #[test]
    fn names_round_trip_through_from_str() {
        for t in AgentType::ALL {
            assert_eq!(t.as_str().parse::<AgentType>(), Ok(t));
            assert_eq!(t.to_string(), t.as_str());
        }
    }

    #[test]
    fn unknown_agent_type_names_the_input() {
        let err = "poem_writer".parse::<AgentType>().unwrap_err();
        assert_eq!(err.name, "poem_writer");
        assert!(err.to_string().contains("`poem_writer`"), "{err}");
    }

    #[test]
    fn serde_uses_the_snake_case_names() {
        assert_eq!(
            serde_json::to_value(AgentType::CoverLetter).unwrap(),
            json!("cover_letter")
        );
        let t: AgentType = serde_json::from_value(json!("resume_review")).unwrap();
        assert_eq!(t, AgentType::ResumeReview);
    }

    #[test]
    fn steps_are_listed_in_the_order_of_the_spec() {
        assert_eq!(
            AgentType::JobMatch.steps(),
            ["parse_resume", "parse_job", "score", "explain"]
        );
        assert_eq!(
            AgentType::ResumeReview.steps(),
            ["parse_resume", "check_sections", "suggest"]
        );
        assert_eq!(
            AgentType::CoverLetter.steps(),
            ["parse_resume", "parse_job", "outline", "draft"]
        );
    }

    #[test]
    fn schema_requires_exactly_the_fields_of_the_type() {
        let schema = AgentType::CoverLetter.input_schema();
        assert_eq!(schema["required"], json!(["resume", "job", "company"]));
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(schema["properties"]["company"]["maxLength"], json!(200));
        assert_eq!(schema["properties"]["resume"]["type"], json!("string"));
        let schema = AgentType::ResumeReview.input_schema();
        assert_eq!(schema["required"], json!(["resume"]));
        assert!(schema["properties"].get("job").is_none());
    }

    #[test]
    fn well_formed_input_is_accepted() {
        assert_eq!(
            AgentType::JobMatch.validate_input(&job_match_input()),
            Ok(())
        );
        let input = json!({"resume": "r", "job": "j", "company": "Acme"});
        assert_eq!(AgentType::CoverLetter.validate_input(&input), Ok(()));
    }

    #[test]
    fn input_that_is_not_an_object_is_rejected_as_input() {
        let err = AgentType::JobMatch
            .validate_input(&json!(["resume"]))
            .unwrap_err();
        assert_eq!(err.field, "input");
    }

    #[test]
    fn a_missing_field_is_named() {
        let err = AgentType::JobMatch
            .validate_input(&json!({"resume": "Rust engineer"}))
            .unwrap_err();
        assert_eq!(err.field, "input.job");
        assert_eq!(err.reason, "is required");
    }

    #[test]
    fn a_null_field_counts_as_missing() {
        let err = AgentType::ResumeReview
            .validate_input(&json!({"resume": null}))
            .unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason.as_str()),
            ("input.resume", "is required")
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named() {
        let err = AgentType::JobMatch
            .validate_input(&json!({"resume": 42, "job": "x"}))
            .unwrap_err();
        assert_eq!(err.field, "input.resume");
        assert!(err.reason.contains("must be a string"), "{err}");
        assert!(err.reason.contains("a number"), "{err}");
    }

    #[test]
    fn an_empty_field_is_rejected_but_a_blank_one_is_left_to_the_steps() {
        let err = AgentType::JobMatch
            .validate_input(&json!({"resume": "", "job": "x"}))
            .unwrap_err();
        assert_eq!(err.field, "input.resume");
        assert_eq!(err.reason, "must not be empty");
        assert_eq!(
            AgentType::JobMatch.validate_input(&json!({"resume": "  \n ", "job": "x"})),
            Ok(())
        );
    }

    #[test]
    fn a_resume_over_64_kib_is_too_long() {
        let at_limit = "a".repeat(MAX_RESUME_CHARS);
        let input = json!({"resume": at_limit});
        assert_eq!(AgentType::ResumeReview.validate_input(&input), Ok(()));
        let over = "a".repeat(MAX_RESUME_CHARS + 1);
        let err = AgentType::ResumeReview
            .validate_input(&json!({"resume": over}))
            .unwrap_err();
        assert_eq!(err.field, "input.resume");
        assert!(err.reason.contains("at most 65536 characters"), "{err}");
    }

    #[test]
    fn a_job_over_32_kib_is_too_long() {
        let over = "a".repeat(MAX_JOB_CHARS + 1);
        let err = AgentType::JobMatch
            .validate_input(&json!({"resume": "r", "job": over}))
            .unwrap_err();
        assert_eq!(err.field, "input.job");
    }

    #[test]
    fn a_company_name_is_bounded_in_characters_not_bytes() {
        // 200 two-byte characters are 400 bytes but still a valid name.
        let name: String = "é".repeat(MAX_COMPANY_CHARS);
        let input = json!({"resume": "r", "job": "j", "company": name});
        assert_eq!(AgentType::CoverLetter.validate_input(&input), Ok(()));
        let name: String = "é".repeat(MAX_COMPANY_CHARS + 1);
        let input = json!({"resume": "r", "job": "j", "company": name});
        let err = AgentType::CoverLetter.validate_input(&input).unwrap_err();
        assert_eq!(err.field, "input.company");
    }

    #[test]
    fn an_unknown_field_is_rejected_by_name() {
        let mut input = job_match_input();
        input["salary"] = json!("a lot");
        let err = AgentType::JobMatch.validate_input(&input).unwrap_err();
        assert_eq!(err.field, "input.salary");
        assert!(err.reason.contains("job_match"), "{err}");
    }

    #[test]
    fn input_error_reads_as_a_sentence() {
        let err = AgentType::JobMatch
            .validate_input(&json!({"job": "x"}))
            .unwrap_err();
        assert_eq!(err.to_string(), "input.resume is required");
    }
}
