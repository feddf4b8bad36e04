//! The handlers: health and readiness, agent types, runs (create and read) and the admin views.
//!
//! Handlers only translate between HTTP and the queue and store; validation of agent input
//! lives in the agents crate, and the server span in [`crate::trace_layer`].
//!
//! Each handler carries its OpenAPI operation (`#[utoipa::path]`: method, path, parameters,
//! responses with their body types); the doc comment's first line is the operation's summary,
//! the rest its description. [`crate::app::endpoints`] registers handler and operation together.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jobpilot_agents::AgentType;
use jobpilot_queue::{QueueError, RunRecord, TaskEnvelope, unix_now_ms};
use jobpilot_telemetry::{SpanKind, names};
use serde_json::Value;

use crate::auth::AuthUser;
use crate::bodies::{
    AgentInfo, AgentList, Health, Liveness, QueueReport, Readiness, ReadyStatus, RunAccepted,
    RunRequest, TelemetryReport,
};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::trace_layer::RequestTrace;

fn unavailable(what: &str, e: &QueueError) -> ApiError {
    tracing::warn!(error = %e, "{what} unavailable");
    ApiError::unavailable(format!("the {what} is unavailable; try again shortly"))
}

/// Run ids are 32 hex digits; anything much longer is not one.
pub(crate) const MAX_RUN_ID: usize = 64;

/// Runs `fut` within the dependency timeout, mapping the store's answers: unknown → 404,
/// conflict → 409, unreachable or no answer in time → 503, anything else → 500 (logged).
pub(crate) async fn within<T>(
    state: &AppState,
    what: &str,
    fut: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(state.0.dependency_timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(QueueError::NotFound { kind, id })) => Err(ApiError::not_found(format!(
            "no {kind} {:?}",
            crate::error::clip(&id)
        ))),
        Ok(Err(QueueError::Conflict(message))) => Err(ApiError::with_status(
            StatusCode::CONFLICT,
            "conflict",
            message,
        )),
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

/// Liveness
///
/// Answers while the process runs; it checks no dependency (see `/ready`). Never traced.
#[utoipa::path(get, path = "/health", tag = "health", security(()),
    responses((status = 200, description = "The process is alive.", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: Liveness::Ok,
    })
}

/// Readiness
///
/// Whether the broker and the run store answer within the dependency timeout, with their data
/// intact. A store that found damaged data answers `corrupt`: unlike an unreachable dependency
/// this will not pass by itself, so the reason says so instead of "try again". Never traced.
#[utoipa::path(get, path = "/ready", tag = "health", security(()),
    responses(
        (status = 200, description = "Broker and run store answer.", body = Readiness,
            example = json!({"status": "ready"})),
        (status = 503, description = "A dependency does not answer, or its data is corrupt; \
            `reasons` says which.", body = Readiness),
    ))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let checks = [
        ("broker", within_raw(&state, state.0.broker.ping()).await),
        ("run store", within_raw(&state, state.0.store.ping()).await),
    ];
    let corrupt = checks
        .iter()
        .any(|(_, r)| r.as_ref().is_err_and(QueueError::is_corrupt));
    let reasons: Vec<String> = checks
        .iter()
        .filter_map(|(what, result)| {
            let err = result.as_ref().err()?;
            Some(if err.is_corrupt() {
                tracing::error!(error = %err, "{what} is corrupt");
                format!(
                    "the {what} found corrupt data; it will not recover by itself: restore it from a backup (details in the logs)"
                )
            } else {
                unavailable(what, err).message
            })
        })
        .collect();
    if reasons.is_empty() {
        return Json(Readiness {
            status: ReadyStatus::Ready,
            reasons,
        })
        .into_response();
    }
    let status = if corrupt {
        ReadyStatus::Corrupt
    } else {
        ReadyStatus::Unavailable
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(Readiness { status, reasons }),
    )
        .into_response()
}

/// Runs `fut` within the dependency timeout, keeping the queue error.
async fn within_raw<T>(
    state: &AppState,
    fut: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(state.0.dependency_timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(QueueError::Unavailable(format!(
                "no answer within {:?}",
                state.0.dependency_timeout
            )))
        })
}

/// The agent types
///
/// Every agent type with its steps and the JSON Schema of its run input.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses(
        (status = 200, description = "The agent types.", body = AgentList),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
    ))]
pub async fn list_agents(_user: AuthUser) -> Response {
    // The answer never changes while the process runs: build and serialise it once.
    static BODY: std::sync::OnceLock<axum::body::Bytes> = std::sync::OnceLock::new();
    let body = BODY.get_or_init(|| {
        let list = AgentList {
            agents: AgentType::ALL.into_iter().map(AgentInfo::of).collect(),
        };
        serde_json::to_vec(&list).unwrap_or_default().into()
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

/// Start a run
///
/// Validates the input, then stores the run as `queued` together with its task (one atomic
/// write) in the trace of this request; poll `GET /api/v1/runs/{run_id}` for the result.
#[utoipa::path(post, path = "/api/v1/agents/{agent_type}/runs", tag = "runs",
    params(("agent_type" = AgentType, Path, description = "The agent type.")),
    request_body(content = RunRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued; `Location` names the run.", body = RunAccepted,
            headers(("Location" = String, description = "`/api/v1/runs/{run_id}`"))),
        (status = 400, description = "The body is not readable JSON.", body = ErrorBody),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 404, description = "No such agent type.", body = ErrorBody),
        (status = 413, description = "The body exceeds `JOBPILOT_MAX_BODY_BYTES`.", body = ErrorBody),
        (status = 408, description = "The request, body included, was not answered within `JOBPILOT_REQUEST_TIMEOUT_SECS`.", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`.", body = ErrorBody),
        (status = 422, description = "The input does not match the agent's schema; `field` names the value at fault.", body = ErrorBody),
        (status = 429, description = "The caller is over its run rate (`JOBPILOT_RUNS_PER_USER_PER_SEC`, \
            `JOBPILOT_RUNS_BURST_PER_USER`) or has `JOBPILOT_MAX_QUEUED_RUNS_PER_USER` unfinished runs; \
            nothing was stored.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds after which a retry may succeed."))),
        (status = 503, description = "The queue is full (`JOBPILOT_MAX_QUEUE_DEPTH`; with `Retry-After`), \
            or the queue or the run store is unavailable.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds after which a retry may succeed, when the queue is full."))),
    ))]
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
            "unknown agent type {:?}; see GET /api/v1/agents",
            crate::error::clip(&agent_type)
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
    state
        .0
        .admission
        .admit(
            &user.user_id,
            state.0.broker.as_ref(),
            state.0.store.as_ref(),
            state.0.dependency_timeout,
        )
        .await?;

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
        state
            .0
            .queue_tracer
            .propagators()
            .inject_map(&producer.cx()),
    );

    // The record and the task are written together, in a task of its own: once the write
    // has started, a client that disconnects (which drops this handler) cannot stop it
    // half-way. If the answer comes too late the client gets a 503, but the run it may
    // still create is complete and will be finished by a worker.
    let accepting = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.accept(&record, &task).await })
    };
    let accepted = async {
        accepting.await.unwrap_or_else(|e| {
            Err(QueueError::Unavailable(format!(
                "the accepting task stopped: {e}"
            )))
        })
    };
    let queued = within(&state, "queue", accepted).await;
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
        Json(RunAccepted {
            run_id,
            status: jobpilot_queue::RunStatus::Queued,
            trace_id: trace.trace_id().map(str::to_owned),
        }),
    )
        .into_response())
}

/// A run
///
/// A run of the caller, with its status, attempts, result or error and trace id (admins see
/// every run).
#[utoipa::path(get, path = "/api/v1/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path, description = "The run id of the 202 answer.")),
    responses(
        (status = 200, description = "The run.", body = RunRecord),
        (status = 400, description = "The run id is not readable (not UTF-8 once percent-decoded).", body = ErrorBody),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 404, description = "No such run for this user.", body = ErrorBody),
        (status = 503, description = "The run store is unavailable.", body = ErrorBody),
    ))]
pub async fn get_run(
    State(state): State<AppState>,
    user: AuthUser,
    Path(run_id): Path<String>,
) -> Result<Json<RunRecord>, ApiError> {
    own_run(&state, &user, &run_id).await.map(Json)
}

/// The run `run_id` if `user` may see or act on it: its owner or an admin. Another user's
/// run is "not found", as a missing one.
pub(crate) async fn own_run(
    state: &AppState,
    user: &AuthUser,
    run_id: &str,
) -> Result<RunRecord, ApiError> {
    let not_found = || {
        ApiError::not_found(format!(
            "no run {:?} for this user",
            crate::error::clip(run_id)
        ))
    };
    if run_id.len() > MAX_RUN_ID {
        return Err(not_found());
    }
    let run = within(state, "run store", state.0.store.get(run_id))
        .await?
        .ok_or_else(not_found)?;
    if run.user_id != user.user_id && !user.is_admin {
        return Err(not_found());
    }
    Ok(run)
}

/// The queue (admin)
///
/// Depth, in-flight and dead-lettered tasks, and the most recent dead letters.
#[utoipa::path(get, path = "/api/v1/admin/queue", tag = "admin",
    responses(
        (status = 200, description = "The queue right now.", body = QueueReport),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 503, description = "The queue is unavailable.", body = ErrorBody),
    ))]
pub async fn admin_queue(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<QueueReport>, ApiError> {
    user.require_admin()?;
    let broker = &state.0.broker;
    let stats = within(&state, "queue", broker.stats()).await?;
    let dead = within(&state, "queue", broker.dead_letters(100)).await?;
    Ok(Json(QueueReport {
        queue: broker.queue_name().to_owned(),
        depth: stats.depth,
        in_flight: stats.in_flight,
        dead_lettered: stats.dead_lettered,
        dead_letters: dead,
    }))
}

/// Span export health (admin)
///
/// Spans exported, dropped and queued, failed exports and the last export error.
#[utoipa::path(get, path = "/api/v1/admin/telemetry", tag = "admin",
    responses(
        (status = 200, description = "The exporter and its counters.", body = TelemetryReport),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
    ))]
pub async fn admin_telemetry(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<TelemetryReport>, ApiError> {
    user.require_admin()?;
    let t = &state.0.telemetry;
    Ok(Json(TelemetryReport {
        exporter: t.exporter,
        stats: t.stats(),
    }))
}

/// Metrics (admin)
///
/// Every metric of this process in the Prometheus text exposition format (version 0.0.4), when
/// the `prometheus` metrics exporter is on and no separate admin listener serves them. Never
/// traced nor measured.
#[utoipa::path(get, path = "/metrics", tag = "admin",
    responses(
        (status = 200, description = "The metrics, one sample per line.", body = String, content_type = "text/plain"),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 404, description = "Metrics are not served on this address.", body = ErrorBody),
    ))]
pub async fn metrics(State(state): State<AppState>, user: AuthUser) -> Result<Response, ApiError> {
    user.require_admin()?;
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
