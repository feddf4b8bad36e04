//! The handlers: health and readiness, agent types, runs (create and read) and the admin views.
//!
//! Handlers only translate between HTTP and the queue and store; validation of agent input
//! lives in the agents crate, and the server span in [`crate::trace_layer`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jobpilot_agents::AgentType;
use jobpilot_queue::{QueueError, RunOutcome, RunRecord, TaskEnvelope, unix_now_ms};
use jobpilot_telemetry::{SpanKind, names, propagation};
use serde_json::{Value, json};

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::state::AppState;
use crate::trace_layer::RequestTrace;

fn unavailable(what: &str, e: &QueueError) -> ApiError {
    tracing::warn!(error = %e, "{what} unavailable");
    ApiError::unavailable(format!("the {what} is unavailable; try again shortly"))
}

/// Runs `fut` within the dependency timeout; a timeout counts as unavailable.
async fn within<T>(
    state: &AppState,
    what: &str,
    fut: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(state.0.dependency_timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.is_unavailable() => Err(unavailable(what, &e)),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "{what} failed");
            Err(ApiError::internal())
        }
        Err(_) => Err(unavailable(
            what,
            &QueueError::Unavailable(format!("no answer within {:?}", state.0.dependency_timeout)),
        )),
    }
}

/// `GET /health`: the process is alive.
pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: broker and store reachable.
pub async fn ready(State(state): State<AppState>) -> Response {
    let broker = within(&state, "broker", state.0.broker.ping()).await;
    let store = within(&state, "run store", state.0.store.ping()).await;
    match (broker, store) {
        (Ok(()), Ok(())) => Json(json!({"status": "ready"})).into_response(),
        (b, s) => {
            let reasons: Vec<String> = [b.err(), s.err()]
                .into_iter()
                .flatten()
                .map(|e| e.message)
                .collect();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "unavailable", "reasons": reasons})),
            )
                .into_response()
        }
    }
}

/// `GET /openapi.json`
pub async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

/// `GET /docs`
pub async fn docs() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        crate::openapi::DOCS_PAGE,
    )
        .into_response()
}

/// `GET /api/v1/agents`: the agent types, their steps and input schemas.
pub async fn list_agents(_user: AuthUser) -> Response {
    // The answer never changes while the process runs: build and serialise it once.
    static BODY: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| {
        let agents: Vec<Value> = AgentType::ALL
            .iter()
            .map(|a| {
                json!({
                    "agent_type": a.as_str(),
                    "description": a.description(),
                    "steps": a.steps(),
                    "input_schema": a.input_schema(),
                })
            })
            .collect();
        json!({ "agents": agents }).to_string().into()
    });
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

/// Reads the `{"input": {...}}` body of a run request.
fn parse_run_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    if !is_json {
        return Err(ApiError::with_status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected 'Content-Type: application/json'",
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::invalid_input("body", "must be a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| *k != "input") {
        return Err(ApiError::invalid_input(
            unknown.clone(),
            "unknown field; the body is {\"input\": {...}}",
        ));
    }
    obj.remove("input")
        .ok_or_else(|| ApiError::invalid_input("input", "is required"))
}

/// `POST /api/v1/agents/{agent_type}/runs`: validates, stores the run as queued and enqueues
/// its task in the trace of this request.
pub async fn create_run(
    State(state): State<AppState>,
    Extension(trace): Extension<RequestTrace>,
    user: AuthUser,
    Path(agent_type): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let agent: AgentType = agent_type.parse().map_err(|_| {
        ApiError::not_found(format!(
            "unknown agent type {agent_type:?}; see GET /api/v1/agents"
        ))
    })?;
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::with_status(
                status,
                "payload_too_large",
                format!("the body exceeds {} bytes", state.0.max_body_bytes),
            )
        } else {
            ApiError::bad_request("the body could not be read")
        }
    })?;
    let input = parse_run_body(&headers, &body)?;
    agent
        .validate_input(&input)
        .map_err(|e| ApiError::invalid_input(e.field.clone(), &e.reason))?;

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let trace_id = trace.trace_id().unwrap_or_default().to_owned();
    let broker = &state.0.broker;
    let queue = broker.queue_name().to_owned();

    let producer = state.0.queue_tracer.start(
        trace.cx(),
        format!("send {queue}"),
        SpanKind::Producer,
        vec![
            (names::MESSAGING_SYSTEM, broker.system().into()),
            (names::MESSAGING_OPERATION_TYPE, "send".into()),
            (names::MESSAGING_OPERATION_NAME, "send".into()),
            (names::MESSAGING_DESTINATION_NAME, queue.clone().into()),
            (names::MESSAGING_MESSAGE_ID, run_id.clone().into()),
            (names::RUN_ID, run_id.clone().into()),
            (names::USER_ID, user.user_id.clone().into()),
            (names::AGENT_TYPE, agent.as_str().into()),
        ],
    );
    let record = RunRecord::queued(
        &run_id,
        agent.as_str(),
        &user.user_id,
        &trace_id,
        unix_now_ms(),
    );
    let task = TaskEnvelope::for_run(
        &run_id,
        agent.as_str(),
        &user.user_id,
        input,
        propagation::inject_map(&producer.cx()),
    );

    let stored = within(&state, "run store", state.0.store.insert(&record)).await;
    let queued = match stored {
        Ok(()) => {
            let queued = within(&state, "queue", broker.enqueue(&task)).await;
            if queued.is_err() {
                // The client gets a 503 and no run id; do not leave a "queued" record behind
                // that no task will ever finish (best effort: the store may be down too).
                let outcome = RunOutcome::Failed {
                    error: "the queue was unavailable; the run was not started".into(),
                    dead_lettered: false,
                };
                let finish = state.0.store.finish(&run_id, outcome, unix_now_ms());
                let _ = tokio::time::timeout(state.0.dependency_timeout, finish).await;
            }
            queued
        }
        Err(e) => Err(e),
    };
    if let Err(e) = queued {
        state.0.queue_metrics.sent(Some("queue_unavailable"));
        producer.fail("queue_unavailable", &e.message);
        producer.finish(false);
        return Err(e);
    }
    state.0.queue_metrics.sent(None);
    producer.finish(true);
    tracing::info!(run_id = %run_id, agent_type = agent.as_str(), "run queued");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/v1/runs/{run_id}"))],
        Json(json!({"run_id": run_id, "status": "queued", "trace_id": trace.trace_id()})),
    )
        .into_response())
}

/// `GET /api/v1/runs/{run_id}`: a run of the caller (admins see every run).
pub async fn get_run(
    State(state): State<AppState>,
    user: AuthUser,
    Path(run_id): Path<String>,
) -> Result<Json<RunRecord>, ApiError> {
    let not_found = || ApiError::not_found(format!("no run {run_id:?} for this user"));
    if run_id.len() > 64 {
        return Err(not_found());
    }
    let run = within(&state, "run store", state.0.store.get(&run_id))
        .await?
        .ok_or_else(not_found)?;
    if run.user_id != user.user_id && !user.is_admin {
        return Err(not_found());
    }
    Ok(Json(run))
}

fn require_admin(user: &AuthUser) -> Result<(), ApiError> {
    if user.is_admin {
        Ok(())
    } else {
        Err(ApiError::forbidden("this endpoint needs the admin role"))
    }
}

/// `GET /api/v1/admin/queue`: depth, in-flight and dead-lettered runs.
pub async fn admin_queue(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Value>, ApiError> {
    require_admin(&user)?;
    let broker = &state.0.broker;
    let stats = within(&state, "queue", broker.stats()).await?;
    let dead = within(&state, "queue", broker.dead_letters(100)).await?;
    Ok(Json(json!({
        "queue": broker.queue_name(),
        "depth": stats.depth,
        "in_flight": stats.in_flight,
        "dead_lettered": stats.dead_lettered,
        "dead_letters": dead,
    })))
}

/// `GET /api/v1/admin/telemetry`: spans exported, dropped and the last export error.
pub async fn admin_telemetry(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Value>, ApiError> {
    require_admin(&user)?;
    let t = &state.0.telemetry;
    Ok(Json(json!({
        "exporter": t.exporter,
        "stats": t.stats(),
    })))
}

/// `GET /metrics`: every metric of this process in the Prometheus text format, for admins.
pub async fn metrics(State(state): State<AppState>, user: AuthUser) -> Result<Response, ApiError> {
    require_admin(&user)?;
    let Some(prometheus) = &state.0.prometheus else {
        return Err(ApiError::not_found(
            "metrics are not served here: see JOBPILOT_ADMIN_LISTEN and OTEL_METRICS_EXPORTER",
        ));
    };
    Ok((
        [(
            header::CONTENT_TYPE,
            jobpilot_telemetry::PrometheusText::CONTENT_TYPE,
        )],
        prometheus.encode(),
    )
        .into_response())
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

/// A known path with another method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this endpoint",
    )
}
