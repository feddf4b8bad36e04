//! The operator's JSON API: listing runs, retrying and cancelling them, the statistics of the
//! whole deployment, the dead letters, and the live stream of run events.
//!
//! Every answer comes from the store's own indexes, counters and pub/sub (see the queue
//! crate), never from scanning runs; these handlers check who may ask, parse the query with
//! errors that name the parameter, and translate. The console ([`crate::console`]) renders
//! the same data as pages.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use jobpilot_queue::{
    DeadLetterPage, QueueError, RunCursor, RunEvent, RunPage, RunQuery, RunRecord, RunStatus,
    StatsWindow, unix_now_ms,
};
use tokio::sync::broadcast::error::RecvError;

use crate::auth::AuthUser;
use crate::bodies::AdminStats;
use crate::error::{ApiError, ErrorBody};
use crate::routes::{MAX_RUN_ID, own_run, within};
use crate::state::AppState;

/// How often an idle event stream sends a comment, so proxies keep it open.
const EVENTS_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The query of `GET /api/v1/runs` (and of the console's runs page), checked: every
/// parameter known, every value readable, a non-admin kept to their own runs.
///
/// # Errors
/// 422 naming the parameter that is unknown or has a bad value; 400 for a cursor this API
/// did not issue; 403 when a non-admin asks for another user's runs.
pub fn run_query(params: &[(String, String)], user: &AuthUser) -> Result<RunQuery, ApiError> {
    let mut query = RunQuery {
        user_id: (!user.is_admin).then(|| user.user_id.clone()),
        limit: 50,
        ..RunQuery::default()
    };
    // Up to i64::MAX, as the document says (JSON integers beyond it are not portable).
    let number = |name: &str, value: &str| -> Result<u64, ApiError> {
        value
            .parse::<i64>()
            .ok()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| {
                ApiError::invalid_input(name, "must be a whole number of milliseconds, 0 or more")
            })
    };
    for (name, value) in params {
        // Free text filters: empty means no filter.
        if value.is_empty() && matches!(name.as_str(), "user_id" | "error_type") {
            continue;
        }
        match name.as_str() {
            "status" => {
                query.status = Some(
                    value
                        .parse::<RunStatus>()
                        .map_err(|e| ApiError::invalid_input("status", e))?,
                );
            }
            "agent_type" => {
                let agent = value.parse::<jobpilot_agents::AgentType>().map_err(|_| {
                    ApiError::invalid_input(
                        "agent_type",
                        "is not a known agent type; see GET /api/v1/agents",
                    )
                })?;
                query.agent_type = Some(agent.as_str().to_owned());
            }
            "since" => query.since_ms = Some(number("since", value)?),
            "until" => query.until_ms = Some(number("until", value)?),
            "min_duration_ms" => query.min_duration_ms = Some(number("min_duration_ms", value)?),
            "error_type" => {
                if value.len() > 64 {
                    return Err(ApiError::invalid_input(
                        "error_type",
                        "is longer than 64 characters",
                    ));
                }
                query.error_type = Some(value.clone());
            }
            "limit" => {
                let limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=jobpilot_queue::listing::MAX_PAGE).contains(n))
                    .ok_or_else(|| ApiError::invalid_input("limit", "must be between 1 and 200"))?;
                query.limit = limit;
            }
            "cursor" => {
                let cursor = RunCursor::decode(value)
                    .map_err(|e| ApiError::bad_request(format!("cursor: {e}")))?;
                query.cursor = Some(cursor);
            }
            "user_id" => {
                if !user.is_admin && *value != user.user_id {
                    return Err(ApiError::forbidden(
                        "only admins can list the runs of other users",
                    ));
                }
                query.user_id = Some(value.clone());
            }
            other => {
                return Err(ApiError::invalid_input(
                    other,
                    "is not a filter of this endpoint (status, agent_type, since, until, \
                     min_duration_ms, error_type, user_id, limit, cursor)",
                ));
            }
        }
    }
    // An `until` at or before `since` is an empty window, not an error.
    Ok(query)
}

/// List runs
///
/// The caller's runs, newest first (admins: everyone's, or one user's with `user_id`),
/// filtered and paged from the time-ordered index. A page can hold fewer runs than `limit`
/// while `next_cursor` is set: the filters were checked on a bounded number of runs; ask for
/// the next page to go on.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs",
    params(
        ("status" = Option<RunStatus>, Query, description = "Only runs in this status."),
        ("agent_type" = Option<jobpilot_agents::AgentType>, Query, description = "Only this agent type."),
        ("since" = Option<i64>, Query, minimum = 0, description = "Created at or after (unix ms)."),
        ("until" = Option<i64>, Query, minimum = 0, description = "Created before (unix ms)."),
        ("min_duration_ms" = Option<i64>, Query, minimum = 0, description = "Only finished runs that took at least this long, acceptance to end."),
        ("error_type" = Option<String>, Query, max_length = 64, description = "Only runs whose last attempt failed with this `error.type`."),
        ("user_id" = Option<String>, Query, description = "Admins: only this user's runs."),
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "Runs per page, 1 to 200 (default 50)."),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9]{1,19}\.[A-Za-z0-9_-]{1,64}$", description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of runs.", body = RunPage),
        (status = 400, description = "The cursor is not one this API returned.", body = ErrorBody),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "A non-admin asked for another user's runs.", body = ErrorBody),
        (status = 422, description = "An unknown parameter or a bad value; `field` names it.", body = ErrorBody),
        (status = 503, description = "The run store is unavailable.", body = ErrorBody),
    ))]
pub async fn list_runs(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<Vec<(String, String)>>,
) -> Result<Json<RunPage>, ApiError> {
    let query = run_query(&params, &user)?;
    let page = within(&state, "run store", state.0.store.list_runs(&query)).await?;
    Ok(Json(page))
}

/// Retry a run
///
/// Queues a failed (or dead-lettered, or cancelled) run again as a new attempt in the same
/// trace: the new attempt's consumer span is a child of, and linked to, the run's original
/// producer span. Its owner or an admin.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/retry", tag = "runs",
    params(("run_id" = String, Path, description = "The run.")),
    responses(
        (status = 202, description = "Queued again.", body = RunRecord),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 404, description = "No such run for this user.", body = ErrorBody),
        (status = 409, description = "The run is queued, running or succeeded, or its task is no longer kept.", body = ErrorBody),
        (status = 503, description = "The queue is unavailable.", body = ErrorBody),
    ))]
pub async fn retry_run(
    State(state): State<AppState>,
    user: AuthUser,
    Path(run_id): Path<String>,
) -> Result<(StatusCode, Json<RunRecord>), ApiError> {
    own_run(&state, &user, &run_id).await?;
    let run = within(
        &state,
        "queue",
        state.0.broker.retry_run(&run_id, unix_now_ms()),
    )
    .await?;
    tracing::info!(run_id = %run_id, by = %user.user_id, "run queued again");
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Cancel a run
///
/// A queued run never starts; a running run stops at its next step boundary (its LLM
/// request in flight is aborted) and ends `cancelled`. Asking again changes nothing. Its
/// owner or an admin.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/cancel", tag = "runs",
    params(("run_id" = String, Path, description = "The run.")),
    responses(
        (status = 202, description = "Cancelled (a queued run), or asked to stop (a running run: `timeline.cancel_requested_at_ms` is set).", body = RunRecord),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 404, description = "No such run for this user.", body = ErrorBody),
        (status = 409, description = "The run has already finished.", body = ErrorBody),
        (status = 503, description = "The queue is unavailable.", body = ErrorBody),
    ))]
pub async fn cancel_run(
    State(state): State<AppState>,
    user: AuthUser,
    Path(run_id): Path<String>,
) -> Result<(StatusCode, Json<RunRecord>), ApiError> {
    own_run(&state, &user, &run_id).await?;
    let run = within(
        &state,
        "queue",
        state.0.broker.cancel_run(&run_id, unix_now_ms()),
    )
    .await?;
    tracing::info!(run_id = %run_id, by = %user.user_id, status = run.status.as_str(), "run cancellation asked");
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// The `window` parameter of the statistics.
pub(crate) fn stats_window(params: &HashMap<String, String>) -> Result<StatsWindow, ApiError> {
    if let Some(unknown) = params.keys().find(|k| *k != "window") {
        return Err(ApiError::invalid_input(
            unknown.as_str(),
            "is not a parameter of this endpoint (window)",
        ));
    }
    params.get("window").map_or(Ok(StatsWindow::Hour), |w| {
        w.parse().map_err(|e| ApiError::invalid_input("window", e))
    })
}

/// The statistics of a window, with the queue as it is now.
pub(crate) async fn admin_stats_of(
    state: &AppState,
    window: StatsWindow,
) -> Result<AdminStats, ApiError> {
    let stats = within(
        state,
        "run store",
        state.0.store.run_stats(window, unix_now_ms()),
    )
    .await?;
    let queue = within(state, "queue", state.0.broker.stats()).await?;
    Ok(AdminStats {
        depth: queue.depth,
        in_flight: queue.in_flight,
        dead_lettered: queue.dead_lettered,
        stats,
    })
}

/// Statistics (admin)
///
/// Per agent type and step, across every worker: runs, error rate, duration and queue-wait
/// percentiles, tokens; failure groups; the slowest runs; the queue now. From per-minute
/// counters in the store (`window`: `5m`, `1h` or `24h`).
#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin",
    params(("window" = Option<StatsWindow>, Query, description = "`5m`, `1h` (default) or `24h`.")),
    responses(
        (status = 200, description = "The figures.", body = AdminStats),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 422, description = "An unknown parameter or window.", body = ErrorBody),
        (status = 503, description = "The store is unavailable.", body = ErrorBody),
    ))]
pub async fn admin_stats(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<AdminStats>, ApiError> {
    user.require_admin()?;
    let window = stats_window(&params)?;
    Ok(Json(admin_stats_of(&state, window).await?))
}

/// The page of dead letters `params` asks for.
pub(crate) async fn dead_letter_page_of(
    state: &AppState,
    params: &HashMap<String, String>,
) -> Result<DeadLetterPage, ApiError> {
    if let Some(unknown) = params
        .keys()
        .find(|k| !matches!(k.as_str(), "cursor" | "limit"))
    {
        return Err(ApiError::invalid_input(
            unknown.as_str(),
            "is not a parameter of this endpoint (cursor, limit)",
        ));
    }
    let limit = match params.get("limit") {
        None => 50,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=jobpilot_queue::MAX_DEAD_LETTER_PAGE).contains(n))
            .ok_or_else(|| ApiError::invalid_input("limit", "must be between 1 and 200"))?,
    };
    let cursor = params.get("cursor");
    match state
        .0
        .broker
        .dead_letter_page(cursor.map(String::as_str), limit)
        .await
    {
        Err(QueueError::Conflict(message)) => {
            Err(ApiError::bad_request(format!("cursor: {message}")))
        }
        other => within(state, "queue", async { other }).await,
    }
}

/// Dead letters (admin)
///
/// The tasks given up on, newest first, paged.
#[utoipa::path(get, path = "/api/v1/admin/dead-letters", tag = "admin",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 200, description = "Dead letters per page, 1 to 200 (default 50)."),
        ("cursor" = Option<String>, Query, pattern = r"^[0-9]{1,19}(\.[A-Za-z0-9_-]{1,64})?$", description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of dead letters.", body = DeadLetterPage),
        (status = 400, description = "The cursor is not one this API returned.", body = ErrorBody),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 422, description = "An unknown parameter or a bad limit.", body = ErrorBody),
        (status = 503, description = "The queue is unavailable.", body = ErrorBody),
    ))]
pub async fn dead_letters(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<DeadLetterPage>, ApiError> {
    user.require_admin()?;
    Ok(Json(dead_letter_page_of(&state, &params).await?))
}

/// Requeue a dead letter (admin)
///
/// Queues the dead letter's run again as a new attempt in its trace, and removes the dead
/// letter; the same as retrying the run.
#[utoipa::path(post, path = "/api/v1/admin/dead-letters/{task_id}/requeue", tag = "admin",
    params(("task_id" = String, Path, description = "The dead letter's task id (the run id).")),
    responses(
        (status = 202, description = "Queued again.", body = RunRecord),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 404, description = "No such run.", body = ErrorBody),
        (status = 409, description = "The run cannot be queued again (see the message).", body = ErrorBody),
        (status = 503, description = "The queue is unavailable.", body = ErrorBody),
    ))]
pub async fn requeue_dead_letter(
    State(state): State<AppState>,
    user: AuthUser,
    Path(task_id): Path<String>,
) -> Result<(StatusCode, Json<RunRecord>), ApiError> {
    user.require_admin()?;
    if task_id.len() > MAX_RUN_ID {
        return Err(ApiError::not_found("no such dead letter"));
    }
    let run = within(
        &state,
        "queue",
        state.0.broker.retry_run(&task_id, unix_now_ms()),
    )
    .await?;
    tracing::info!(run_id = %task_id, by = %user.user_id, "dead letter queued again");
    Ok((StatusCode::ACCEPTED, Json(run)))
}

/// Delete a dead letter (admin)
///
/// Removes the dead letter for good; its run stays failed.
#[utoipa::path(delete, path = "/api/v1/admin/dead-letters/{task_id}", tag = "admin",
    params(("task_id" = String, Path, description = "The dead letter's task id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 404, description = "No such dead letter.", body = ErrorBody),
        (status = 503, description = "The queue is unavailable.", body = ErrorBody),
    ))]
pub async fn delete_dead_letter(
    State(state): State<AppState>,
    user: AuthUser,
    Path(task_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    user.require_admin()?;
    if task_id.len() > MAX_RUN_ID {
        return Err(ApiError::not_found("no such dead letter"));
    }
    within(&state, "queue", state.0.broker.delete_dead_letter(&task_id)).await?;
    tracing::info!(task_id = %task_id, by = %user.user_id, "dead letter deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Which events a subscriber wants.
#[derive(Clone, Debug, Default)]
struct EventFilter {
    agent_type: Option<String>,
    status: Option<RunStatus>,
}

impl EventFilter {
    fn from_params(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let mut filter = EventFilter::default();
        for (name, value) in params {
            match name.as_str() {
                "agent_type" => {
                    let agent = value.parse::<jobpilot_agents::AgentType>().map_err(|_| {
                        ApiError::invalid_input("agent_type", "is not a known agent type")
                    })?;
                    filter.agent_type = Some(agent.as_str().to_owned());
                }
                "status" => {
                    filter.status = Some(
                        value
                            .parse()
                            .map_err(|e| ApiError::invalid_input("status", e))?,
                    );
                }
                other => {
                    return Err(ApiError::invalid_input(
                        other,
                        "is not a filter of this endpoint (agent_type, status)",
                    ));
                }
            }
        }
        Ok(filter)
    }

    fn accepts(&self, event: &RunEvent) -> bool {
        self.agent_type
            .as_ref()
            .is_none_or(|a| *a == event.agent_type)
            && self.status.is_none_or(|s| s == event.status)
    }
}

/// Run events (admin)
///
/// Server-Sent Events, one per thing that happens to a run in any process of the
/// deployment: `queued`, `started`, `step_finished`, `attempt_finished`, `finished`,
/// `cancel_requested` (the SSE event name; the data is the JSON event). `lagged` says how
/// many events a slow reader missed. Filter by `agent_type` and `status` (the run's status
/// after the event).
#[utoipa::path(get, path = "/api/v1/admin/events", tag = "admin",
    params(
        ("agent_type" = Option<jobpilot_agents::AgentType>, Query, description = "Only this agent type."),
        ("status" = Option<RunStatus>, Query, description = "Only events after which the run has this status."),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`; each `data` is a RunEvent.", body = RunEvent, content_type = "text/event-stream"),
        (status = 401, description = "Missing or invalid token.", body = ErrorBody),
        (status = 403, description = "The token lacks the admin role.", body = ErrorBody),
        (status = 422, description = "An unknown filter or value.", body = ErrorBody),
        (status = 503, description = "The event channel is unavailable.", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    user.require_admin()?;
    let filter = EventFilter::from_params(&params)?;
    let receiver = within(&state, "event channel", state.0.broker.subscribe_events()).await?;
    let stream =
        futures_util::stream::unfold((receiver, filter), |(mut receiver, filter)| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) if filter.accepts(&event) => {
                        let sse = Event::default()
                            .event(event.kind.as_str())
                            .data(event.to_json());
                        return Some((Ok(sse), (receiver, filter)));
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        let sse = Event::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{missed}}}"));
                        return Some((Ok(sse), (receiver, filter)));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(EVENTS_KEEP_ALIVE)))
}
