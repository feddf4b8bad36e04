//! Scoring a parsed resume against a parsed job: how much of what the job asks for the resume
//! shows, as a number from 0 to 100 with the matched and missing skills behind it.
//!
//! The score is a weighted skill overlap (a required skill counts twice, a nice-to-have once)
//! nudged by at most a few points for years of experience. It judges keywords, not people; the
//! explanation step is where nuance goes.

use serde::Serialize;

use crate::job::ParsedJob;
use crate::resume::ParsedResume;

/// Weight of a required skill in the overlap.
const REQUIRED_WEIGHT: u32 = 2;
/// Weight of a nice-to-have skill in the overlap.
const NICE_WEIGHT: u32 = 1;
/// Score when the job names no skill the vocabulary knows: nothing to compare, so neutral.
const NEUTRAL_SCORE: f64 = 50.0;
/// Points added when the candidate has the years the job expects.
const YEARS_BONUS: i32 = 5;
/// Points taken per missing year, and at most, when the candidate has fewer years.
const YEARS_PENALTY_PER_YEAR: f64 = 4.0;
const YEARS_PENALTY_MAX: i32 = 15;
/// Points taken when the job expects years and the resume gives no way to count them.
const YEARS_UNKNOWN_PENALTY: i32 = 3;

/// The outcome of comparing a resume with a job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatchScore {
    /// 0 (nothing in common) to 100 (everything and the experience).
    pub score: u8,
    /// Skills the job asks for (required or nice-to-have) that the resume shows, sorted.
    pub matched_skills: Vec<&'static str>,
    /// Skills the job asks for that the resume does not show, sorted.
    pub missing_skills: Vec<&'static str>,
    /// The required skills the resume does not show, sorted (a subset of `missing_skills`).
    pub missing_required: Vec<&'static str>,
    /// How many of the required skills the resume shows.
    pub required_matched: usize,
    /// How many skills the job requires.
    pub required_total: usize,
    /// How many of the nice-to-have skills the resume shows.
    pub nice_matched: usize,
    /// How many nice-to-have skills the job lists.
    pub nice_total: usize,
    /// Points added (positive) or taken (negative) for years of experience.
    pub years_adjustment: i32,
}

/// The years adjustment: a bonus for meeting the expected years, a penalty that grows with
/// the shortfall, a small one when years cannot be counted, nothing when none are expected.
fn years_adjustment(candidate: Option<f64>, expected: Option<u32>) -> i32 {
    match (candidate, expected) {
        (_, None | Some(0)) => 0,
        (None, Some(_)) => -YEARS_UNKNOWN_PENALTY,
        (Some(have), Some(need)) if have >= f64::from(need) => YEARS_BONUS,
        (Some(have), Some(need)) => {
            let shortfall = f64::from(need) - have;
            let penalty = (shortfall * YEARS_PENALTY_PER_YEAR).ceil() as i32;
            -penalty.min(YEARS_PENALTY_MAX)
        }
    }
}

/// Scores `resume` against `job`.
pub fn score(resume: &ParsedResume, job: &ParsedJob) -> MatchScore {
    let has = |skill: &&'static str| resume.skills.contains(skill);
    let required_matched = job.required_skills.iter().filter(|s| has(s)).count();
    let nice_matched = job.nice_to_have_skills.iter().filter(|s| has(s)).count();
    let required_total = job.required_skills.len();
    let nice_total = job.nice_to_have_skills.len();

    let weight = |required: usize, nice: usize| {
        f64::from(REQUIRED_WEIGHT) * required as f64 + f64::from(NICE_WEIGHT) * nice as f64
    };
    let possible = weight(required_total, nice_total);
    let overlap = if possible > 0.0 {
        100.0 * weight(required_matched, nice_matched) / possible
    } else {
        NEUTRAL_SCORE
    };
    let years_adjustment = years_adjustment(resume.years_of_experience, job.expected_years());
    let score = (overlap + f64::from(years_adjustment))
        .round()
        .clamp(0.0, 100.0) as u8;

    let asked = job.required_skills.iter().chain(&job.nice_to_have_skills);
    let mut matched_skills: Vec<_> = asked.clone().filter(|s| has(s)).copied().collect();
    let mut missing_skills: Vec<_> = asked.filter(|s| !has(s)).copied().collect();
    matched_skills.sort_unstable();
    missing_skills.sort_unstable();
    let missing_required = job
        .required_skills
        .iter()
        .filter(|s| !has(s))
        .copied()
        .collect();

    MatchScore {
        score,
        matched_skills,
        missing_skills,
        missing_required,
        required_matched,
        required_total,
        nice_matched,
        nice_total,
        years_adjustment,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::parse_job;
    use crate::job::tests::BACKEND_JOB;
    use crate::resume::parse_resume_at;
    use crate::resume::tests::{NOW, STRONG_RESUME};

    const WEAK_RESUME: &str = "\
John Smith
Summary
Frontend developer, 2 years with React and CSS.
Experience
Web Developer, Gamma Ltd (2023 - present)
- Built landing pages in React
";

    fn score_of(resume: &str, job: &str) -> MatchScore {
        score(
            &parse_resume_at(resume, NOW).unwrap(),
            &parse_job(job).unwrap(),
        )
    }

    #[test]
    fn a_strong_resume_outscores_a_weak_one_for_the_same_job() {
        let strong = score_of(STRONG_RESUME, BACKEND_JOB);
        let weak = score_of(WEAK_RESUME, BACKEND_JOB);
        assert!(strong.score >= 80, "strong scored {}", strong.score);
        assert!(weak.score <= 20, "weak scored {}", weak.score);
    }

    #[test]
    fn matched_and_missing_skills_are_sorted_canonical_names() {
        let result = score_of(STRONG_RESUME, BACKEND_JOB);
        assert_eq!(
            result.matched_skills,
            [
                "aws",
                "communication",
                "docker",
                "go",
                "grpc",
                "kafka",
                "kubernetes",
                "postgresql",
                "python",
                "rust",
                "terraform"
            ]
        );
        assert!(result.missing_skills.is_empty());
        let weak = score_of(WEAK_RESUME, BACKEND_JOB);
        assert!(weak.matched_skills.is_empty());
        assert_eq!(weak.missing_required.len(), 8);
        assert_eq!(weak.missing_skills.len(), 11);
    }

    #[test]
    fn required_skills_weigh_twice_as_much_as_nice_to_have() {
        let job = "Engineer\nRequirements\nRust\nNice to have\nGo";
        let with_required = score_of("Rust", job);
        let with_nice = score_of("Go", job);
        // 2 of 3 points vs 1 of 3 points.
        assert_eq!(with_required.score, 67);
        assert_eq!(with_nice.score, 33);
    }

    #[test]
    fn the_score_stays_within_0_and_100() {
        let perfect = score_of("Rust, 10+ years of experience", "Senior Rust Engineer");
        assert_eq!(perfect.score, 100);
        let nothing = score_of("Gardener", "Staff Rust Engineer\nRust, Go, Kubernetes");
        assert_eq!(nothing.score, 0);
    }

    #[test]
    fn years_adjust_the_score_a_little() {
        assert_eq!(years_adjustment(Some(6.0), Some(5)), 5);
        assert_eq!(years_adjustment(Some(4.0), Some(5)), -4);
        assert_eq!(years_adjustment(Some(0.5), Some(10)), -15);
        assert_eq!(years_adjustment(None, Some(5)), -3);
        assert_eq!(years_adjustment(Some(3.0), None), 0);
    }

    #[test]
    fn a_job_without_known_skills_scores_neutral() {
        let result = score_of("Rust", "Chef\nCook great food");
        assert_eq!(result.score, 50);
        assert!(result.matched_skills.is_empty() && result.missing_skills.is_empty());
    }
}
