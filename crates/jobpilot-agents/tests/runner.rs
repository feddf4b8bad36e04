//! The agent runner as the worker uses it: every agent type run end to end with the offline
//! LLM (and once with a real HTTP one), checking the results and the exact span tree.

mod support;

use jobpilot_agents::{AgentError, AgentRunner, AgentType, LlmClient, LlmConfig, RunContext};
use jobpilot_telemetry::testing::{CapturedSpan, CapturedStatus, SpanCapture};
use jobpilot_telemetry::{AttrValue, SpanGuard, SpanKind, Tracer, names};
use serde_json::{Value, json};
use support::{Reply, completion, spawn_llm_server};

const RESUME: &str = "\
Jane Doe
jane.doe@example.com

Summary
Backend engineer with 7+ years building distributed systems.

Experience
Senior Engineer, Acme Corp (2019 - present)
- Built Rust services on Kubernetes and AWS, cutting costs by 30%.
Engineer, Beta Inc (2015 - 2019)
- Go and PostgreSQL services.

Education
BSc Computer Science, 2011 - 2015

Skills: Rust, Go, Kubernetes, AWS, PostgreSQL, Docker
";

const JOB: &str = "\
Senior Platform Engineer
Requirements:
- 5+ years of experience
- Rust, Kubernetes, AWS, Terraform
Nice to have:
- Kafka
";

const USER: &str = "user-42";
const RUN: &str = "run-7";

/// A runner recording into `capture`, offline.
fn offline_runner(capture: &SpanCapture) -> AgentRunner {
    AgentRunner::new(
        capture.tracer(names::SCOPE_AGENTS),
        LlmClient::offline(capture.tracer(names::SCOPE_LLM)),
    )
}

fn run_of(agent_type: AgentType) -> RunContext {
    RunContext {
        run_id: RUN.into(),
        user_id: USER.into(),
        agent_type,
    }
}

fn input_of(agent_type: AgentType) -> Value {
    match agent_type {
        AgentType::JobMatch => json!({"resume": RESUME, "job": JOB}),
        AgentType::ResumeReview => json!({"resume": RESUME}),
        AgentType::CoverLetter => json!({"resume": RESUME, "job": JOB, "company": "Acme"}),
    }
}

/// The span that stands for the worker's consumer span: the parent of the run.
fn consumer_span(tracer: &Tracer) -> SpanGuard {
    tracer.start(
        &Default::default(),
        "process runs",
        SpanKind::Consumer,
        vec![],
    )
}

fn one(capture: &SpanCapture, name: &str) -> CapturedSpan {
    let spans = capture.named(name);
    assert_eq!(
        spans.len(),
        1,
        "expected one {name} span, got {:#?}",
        capture.spans()
    );
    spans.into_iter().next().unwrap()
}

/// The steps of each agent type that ask the LLM.
fn prose_steps(agent_type: AgentType) -> &'static [&'static str] {
    match agent_type {
        AgentType::JobMatch => &["explain"],
        AgentType::ResumeReview => &["suggest"],
        AgentType::CoverLetter => &["outline", "draft"],
    }
}

async fn run_offline(agent_type: AgentType) -> (SpanCapture, CapturedSpan, Value) {
    let capture = SpanCapture::new();
    let runner = offline_runner(&capture);
    let consumer = consumer_span(&capture.tracer(names::SCOPE_AGENTS));
    let result = runner
        .run(&consumer.cx(), &run_of(agent_type), &input_of(agent_type))
        .await
        .unwrap();
    consumer.end();
    let consumer = one(&capture, "process runs");
    (capture, consumer, result)
}

#[tokio::test]
async fn every_agent_type_traces_one_span_per_step_under_invoke_agent() {
    for agent_type in AgentType::ALL {
        let (capture, consumer, _) = run_offline(agent_type).await;
        let t = agent_type.as_str();

        let agent = one(&capture, &format!("invoke_agent {t}"));
        assert_eq!(agent.kind, SpanKind::Internal);
        assert_eq!(
            agent.parent_span_id.as_deref(),
            Some(consumer.span_id.as_str()),
            "{t}"
        );
        assert_eq!(
            agent.str_attr(names::GEN_AI_OPERATION_NAME),
            Some("invoke_agent")
        );
        assert_eq!(agent.str_attr(names::GEN_AI_AGENT_NAME), Some(t));
        assert_eq!(agent.str_attr(names::USER_ID), Some(USER));
        assert_eq!(agent.str_attr(names::AGENT_TYPE), Some(t));
        assert_eq!(agent.str_attr(names::RUN_ID), Some(RUN));
        assert_eq!(agent.bool_attr(names::SUCCESS), Some(true));
        assert!(matches!(agent.attr(names::DURATION_MS), Some(AttrValue::F64(ms)) if *ms >= 0.0));
        assert_eq!(agent.status, CapturedStatus::Unset);

        for step in agent_type.steps() {
            let span = one(&capture, &format!("agent.{t}.{step}"));
            assert_eq!(span.kind, SpanKind::Internal);
            assert_eq!(
                span.parent_span_id.as_deref(),
                Some(agent.span_id.as_str()),
                "{t}.{step} is a child of invoke_agent"
            );
            assert_eq!(span.str_attr(names::USER_ID), Some(USER));
            assert_eq!(span.str_attr(names::AGENT_TYPE), Some(t));
            assert_eq!(span.str_attr(names::STEP_NAME), Some(*step));
            assert_eq!(span.str_attr(names::RUN_ID), Some(RUN));
            assert_eq!(span.bool_attr(names::SUCCESS), Some(true));
            assert!(matches!(
                span.attr(names::DURATION_MS),
                Some(AttrValue::F64(_))
            ));
            assert_eq!(span.status, CapturedStatus::Unset);
        }

        // One chat per prose step, each the child of exactly that step.
        let chats = capture.named("chat offline");
        assert_eq!(chats.len(), prose_steps(agent_type).len(), "{t}");
        for (chat, step) in chats.iter().zip(prose_steps(agent_type)) {
            let step_span = one(&capture, &format!("agent.{t}.{step}"));
            assert_eq!(
                chat.parent_span_id.as_deref(),
                Some(step_span.span_id.as_str()),
                "{t}.{step}"
            );
            assert_eq!(chat.kind, SpanKind::Client);
            assert_eq!(chat.str_attr(names::GEN_AI_OPERATION_NAME), Some("chat"));
            assert_eq!(
                chat.str_attr(names::GEN_AI_PROVIDER_NAME),
                Some("jobpilot.offline")
            );
        }

        let spans = capture.spans();
        let expected = 2 + agent_type.steps().len() + prose_steps(agent_type).len();
        assert_eq!(spans.len(), expected, "{t}: no stray spans: {spans:#?}");
        assert!(
            spans.iter().all(|s| s.trace_id == consumer.trace_id),
            "{t}: one trace"
        );
    }
}

#[tokio::test]
async fn steps_run_and_end_in_the_declared_order() {
    for agent_type in AgentType::ALL {
        let (capture, _, _) = run_offline(agent_type).await;
        let ended: Vec<String> = capture
            .spans()
            .into_iter()
            .filter_map(|s| s.str_attr(names::STEP_NAME).map(str::to_owned))
            .collect();
        assert_eq!(ended, agent_type.steps(), "{agent_type}");
    }
}

#[tokio::test]
async fn job_match_returns_score_skills_and_explanation() {
    let (_, _, result) = run_offline(AgentType::JobMatch).await;
    let score = result["score"].as_u64().unwrap();
    assert!((60..=100).contains(&score), "{result}");
    assert_eq!(
        result["matched_skills"],
        json!(["aws", "kubernetes", "rust"])
    );
    assert_eq!(result["missing_skills"], json!(["kafka", "terraform"]));
    let explanation = result["explanation"].as_str().unwrap();
    assert!(
        explanation.contains(&format!("({score}/100)")),
        "{explanation}"
    );
    assert!(explanation.contains("Terraform"), "{explanation}");
    assert_eq!(result.as_object().unwrap().len(), 4, "{result}");
}

#[tokio::test]
async fn resume_review_returns_sections_and_suggestions() {
    let (_, _, result) = run_offline(AgentType::ResumeReview).await;
    assert_eq!(
        result["sections_found"],
        json!(["contact", "summary", "experience", "education", "skills"])
    );
    assert_eq!(result["sections_missing"], json!([]));
    let suggestions = result["suggestions"].as_array().unwrap();
    assert!(!suggestions.is_empty(), "{result}");
    assert!(
        suggestions
            .iter()
            .all(|s| s.as_str().is_some_and(|s| !s.starts_with('-'))),
        "{result}"
    );

    let capture = SpanCapture::new();
    let bare = offline_runner(&capture)
        .run(
            &Default::default(),
            &run_of(AgentType::ResumeReview),
            &json!({"resume": "Jane Doe\nI write code"}),
        )
        .await
        .unwrap();
    assert_eq!(
        bare["sections_missing"],
        json!(["contact", "summary", "experience", "education", "skills"])
    );
    assert!(bare["suggestions"].as_array().unwrap().len() >= 5, "{bare}");
}

#[tokio::test]
async fn cover_letter_returns_a_letter_for_the_company() {
    let (_, _, result) = run_offline(AgentType::CoverLetter).await;
    let letter = result["letter"].as_str().unwrap();
    assert!(letter.starts_with("Dear Acme hiring team,"), "{letter}");
    assert!(letter.contains("Senior Platform Engineer"), "{letter}");
    assert!(letter.contains("AWS, Kubernetes and Rust"), "{letter}");
    assert_eq!(result.as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn a_resume_without_words_fails_parse_resume_permanently_and_stops_the_run() {
    let capture = SpanCapture::new();
    let runner = offline_runner(&capture);
    let input = json!({"resume": "!!!", "job": JOB});

    let error = runner
        .run(&Default::default(), &run_of(AgentType::JobMatch), &input)
        .await
        .unwrap_err();

    assert!(error.is_permanent());
    assert_eq!(error.error_type(), "no_words");
    assert_eq!(error.step(), Some("parse_resume"));
    assert_eq!(
        error.message(),
        "step parse_resume failed: resume has no words to parse"
    );

    let step = one(&capture, "agent.job_match.parse_resume");
    assert_eq!(
        step.status,
        CapturedStatus::Error("resume has no words to parse".to_owned())
    );
    assert_eq!(step.str_attr(names::ERROR_TYPE), Some("no_words"));
    assert_eq!(step.bool_attr(names::SUCCESS), Some(false));
    assert!(step.attr(names::DURATION_MS).is_some());
    let exception = step
        .events
        .iter()
        .find(|e| e.name == names::EXCEPTION_EVENT)
        .expect("an exception event");
    assert_eq!(
        exception.attributes.get(names::EXCEPTION_MESSAGE),
        Some(&AttrValue::Str("resume has no words to parse".into()))
    );
    assert_eq!(
        exception.attributes.get(names::EXCEPTION_TYPE),
        Some(&AttrValue::Str("no_words".into()))
    );

    let agent = one(&capture, "invoke_agent job_match");
    assert!(matches!(agent.status, CapturedStatus::Error(ref m) if m.contains("no words")));
    assert_eq!(agent.str_attr(names::ERROR_TYPE), Some("no_words"));
    assert_eq!(agent.bool_attr(names::SUCCESS), Some(false));
    assert!(
        agent
            .events
            .iter()
            .any(|e| e.name == names::EXCEPTION_EVENT)
    );

    for later in ["parse_job", "score", "explain"] {
        assert!(
            capture
                .named(&format!("agent.job_match.{later}"))
                .is_empty(),
            "{later} ran"
        );
    }
    assert!(capture.named("chat offline").is_empty());
}

#[tokio::test]
async fn a_job_without_words_fails_parse_job_after_parse_resume_succeeded() {
    let capture = SpanCapture::new();
    let input = json!({"resume": RESUME, "job": "??? ---", "company": "Acme"});

    let error = offline_runner(&capture)
        .run(&Default::default(), &run_of(AgentType::CoverLetter), &input)
        .await
        .unwrap_err();

    assert_eq!(error.step(), Some("parse_job"));
    assert!(
        error.message().contains("job has no words to parse"),
        "{error}"
    );
    let parsed = one(&capture, "agent.cover_letter.parse_resume");
    assert_eq!(parsed.bool_attr(names::SUCCESS), Some(true));
    let failed = one(&capture, "agent.cover_letter.parse_job");
    assert!(matches!(failed.status, CapturedStatus::Error(_)));
    assert!(capture.named("agent.cover_letter.outline").is_empty());
    assert!(capture.named("agent.cover_letter.draft").is_empty());
}

#[tokio::test]
async fn input_of_the_wrong_shape_is_a_permanent_error_and_runs_no_step() {
    let capture = SpanCapture::new();
    let runner = offline_runner(&capture);

    for input in [
        json!({"resume": RESUME}),
        json!("just text"),
        json!({"resume": 7, "job": JOB}),
    ] {
        let error = runner
            .run(&Default::default(), &run_of(AgentType::JobMatch), &input)
            .await
            .unwrap_err();
        assert!(matches!(error, AgentError::InvalidInput(_)), "{error:?}");
        assert!(error.is_permanent());
        assert_eq!(error.step(), None);
        assert_eq!(error.error_type(), "invalid_input");
    }
    let spans = capture.spans();
    assert_eq!(spans.len(), 3, "only the invoke_agent spans: {spans:#?}");
    for span in spans {
        assert_eq!(span.name, "invoke_agent job_match");
        assert_eq!(span.str_attr(names::ERROR_TYPE), Some("invalid_input"));
    }
}

#[tokio::test]
async fn a_prose_step_traces_chat_and_post_under_its_step_with_a_real_llm() {
    let server = spawn_llm_server(vec![Reply::Ok(completion("A strong match."))]).await;
    let capture = SpanCapture::new();
    let llm = LlmClient::new(
        LlmConfig::openai_compatible(&server.base_url, "test-model"),
        capture.tracer(names::SCOPE_LLM),
    )
    .unwrap();
    let runner = AgentRunner::new(capture.tracer(names::SCOPE_AGENTS), llm);

    let result = runner
        .run(
            &Default::default(),
            &run_of(AgentType::JobMatch),
            &input_of(AgentType::JobMatch),
        )
        .await
        .unwrap();

    assert_eq!(result["explanation"], "A strong match.");
    let explain = one(&capture, "agent.job_match.explain");
    let chat = one(&capture, "chat test-model");
    let post = one(&capture, "POST");
    assert_eq!(
        chat.parent_span_id.as_deref(),
        Some(explain.span_id.as_str())
    );
    assert_eq!(post.parent_span_id.as_deref(), Some(chat.span_id.as_str()));
    let sent = server.received()[0]
        .header("traceparent")
        .unwrap()
        .to_owned();
    // Sampled, and random: jobpilot started this trace with a random id.
    assert_eq!(sent, format!("00-{}-{}-03", post.trace_id, post.span_id));
    // The prompt carries facts, not the resume text.
    let prompt = server.received()[0].body["messages"].to_string();
    assert!(!prompt.contains("jane.doe@example.com"), "{prompt}");
}

#[tokio::test]
async fn a_transient_llm_failure_fails_its_step_as_retryable() {
    let server = spawn_llm_server(vec![Reply::Status(
        503,
        json!({"error": {"message": "down"}}),
    )])
    .await;
    let capture = SpanCapture::new();
    let llm = LlmClient::new(
        LlmConfig::openai_compatible(&server.base_url, "test-model").with_max_retries(0),
        capture.tracer(names::SCOPE_LLM),
    )
    .unwrap();
    let runner = AgentRunner::new(capture.tracer(names::SCOPE_AGENTS), llm);

    let error = runner
        .run(
            &Default::default(),
            &run_of(AgentType::ResumeReview),
            &input_of(AgentType::ResumeReview),
        )
        .await
        .unwrap_err();

    assert!(!error.is_permanent(), "a 503 is worth retrying");
    assert_eq!(error.error_type(), "http_503");
    assert_eq!(error.step(), Some("suggest"));
    let step = one(&capture, "agent.resume_review.suggest");
    assert_eq!(step.str_attr(names::ERROR_TYPE), Some("http_503"));
    assert_eq!(
        one(&capture, "invoke_agent resume_review").str_attr(names::ERROR_TYPE),
        Some("http_503")
    );
}

#[test]
fn the_run_future_can_move_between_worker_threads() {
    fn assert_send<T: Send>(_: &T) {}
    let runner = AgentRunner::new(Tracer::noop(), LlmClient::offline(Tracer::noop()));
    let run = run_of(AgentType::JobMatch);
    let input = input_of(AgentType::JobMatch);
    let parent = Default::default();
    let future = runner.run(&parent, &run, &input);
    assert_send(&future);
}
