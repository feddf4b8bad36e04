//! The operator console at `/console`: server-rendered pages that answer an operator's three
//! questions with no other service. **Runs** (the table, with filters and paging, updated
//! live), **Run** (its waterfall from the request to the end of the last attempt, the failing
//! step with its error, the trace link, Retry and Cancel), **Stats** (per agent type and step,
//! failure groups, slowest runs, the queue) and **Dead letters** (requeue, delete).
//!
//! Pages are HTML written with `maud` (checked at compile time, no build step); a small
//! plain script (`console.js`) only posts the action buttons and follows the event stream.
//! Everything shown comes from the same store calls as the JSON API in
//! [`crate::operations`]. Only admins get in ([`session`]): the console shows every user's
//! runs. The pages are not part of the JSON API's OpenAPI document.

mod pages;
mod session;
mod waterfall;

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use jobpilot_queue::unix_now_ms;
use serde::Deserialize;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::operations;
use crate::routes::{self, within};
use crate::state::AppState;
use session::ConsoleUser;

/// The console's routes, all below `/console`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(runs_page))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/runs/{run_id}", get(run_page))
        .route("/console/runs/{run_id}/live", get(run_live))
        .route("/console/runs/{run_id}/retry", post(retry))
        .route("/console/runs/{run_id}/cancel", post(cancel))
        .route("/console/stats", get(stats_page))
        .route("/console/dead-letters", get(dead_letters_page))
        .route("/console/dead-letters/{task_id}/requeue", post(requeue))
        .route("/console/dead-letters/{task_id}/delete", post(delete))
        .route("/console/events", get(events))
        .route("/console/console.js", get(script))
        .route("/console/console.css", get(style))
}

/// A duration in milliseconds as a person reads it: µs, ms or s.
pub(crate) fn duration_text(ms: f64) -> String {
    if ms >= 1_000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.0} µs", ms * 1000.0)
    }
}

/// The console's user as the JSON operations see a bearer: an admin.
fn as_admin(user: &ConsoleUser) -> AuthUser {
    AuthUser {
        user_id: user.user_id.clone(),
        is_admin: true,
    }
}

/// A page for an error of a page request, with the error's status.
fn problem_page(user: &ConsoleUser, e: &ApiError) -> Response {
    let title = if e.status == StatusCode::NOT_FOUND {
        "Not found"
    } else {
        "Cannot show this page"
    };
    (
        e.status,
        Html(pages::problem(Some(&user.csrf), title, &e.message).into_string()),
    )
        .into_response()
}

fn no_store(markup: maud::Markup) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(markup.into_string()),
    )
        .into_response()
}

async fn login_page() -> Response {
    no_store(pages::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let token = form.map(|Form(f)| f.token).unwrap_or_default();
    match session::login(&state, &headers, &token) {
        Ok(response) => response,
        Err((status, problem)) => (status, no_store(pages::login(Some(&problem)))).into_response(),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    user: ConsoleUser,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, ApiError> {
    let sent = form.ok().map(|Form(f)| f.csrf);
    session::check_csrf(&headers, &user, sent.as_deref())?;
    tracing::info!(user_id = %user.user_id, "console session ended");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session::cleared_cookie(&headers)),
            (header::LOCATION, format!("{}/login", session::BASE)),
        ],
    )
        .into_response())
}

async fn runs_page(
    State(state): State<AppState>,
    user: ConsoleUser,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    // The filter form sends every field, empty ones included: those filter nothing.
    let params: Vec<(String, String)> = params.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let page = async {
        let query = operations::run_query(&params, &as_admin(&user))?;
        within(&state, "run store", state.0.store.list_runs(&query)).await
    }
    .await;
    match page {
        Ok(page) => no_store(pages::runs(&user.csrf, &params, &page)),
        Err(e) => problem_page(&user, &e),
    }
}

/// The run `run_id` for a page, or the page that says why not.
async fn load_run(
    state: &AppState,
    user: &ConsoleUser,
    run_id: &str,
) -> Result<jobpilot_queue::RunRecord, Response> {
    routes::own_run(state, &as_admin(user), run_id)
        .await
        .map_err(|e| problem_page(user, &e))
}

async fn run_page(
    State(state): State<AppState>,
    user: ConsoleUser,
    Path(run_id): Path<String>,
) -> Response {
    match load_run(&state, &user, &run_id).await {
        Ok(run) => {
            let trace_url = state
                .0
                .trace_url_template
                .as_ref()
                .map(|t| t.replace("{trace_id}", &run.trace_id));
            no_store(pages::run(&user.csrf, &run, trace_url, unix_now_ms()))
        }
        Err(page) => page,
    }
}

async fn run_live(
    State(state): State<AppState>,
    user: ConsoleUser,
    Path(run_id): Path<String>,
) -> Response {
    match load_run(&state, &user, &run_id).await {
        Ok(run) => no_store(pages::run_live(&run, unix_now_ms())),
        Err(page) => page,
    }
}

async fn retry(
    State(state): State<AppState>,
    user: ConsoleUser,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    session::check_csrf(&headers, &user, None)?;
    operations::retry_run(State(state), as_admin(&user), Path(run_id))
        .await
        .map(IntoResponse::into_response)
}

async fn cancel(
    State(state): State<AppState>,
    user: ConsoleUser,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<Response, ApiError> {
    session::check_csrf(&headers, &user, None)?;
    operations::cancel_run(State(state), as_admin(&user), Path(run_id))
        .await
        .map(IntoResponse::into_response)
}

async fn stats_page(
    State(state): State<AppState>,
    user: ConsoleUser,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let stats = async {
        let window = operations::stats_window(&params)?;
        operations::admin_stats_of(&state, window).await
    }
    .await;
    match stats {
        Ok(stats) => no_store(pages::stats(&user.csrf, &stats)),
        Err(e) => problem_page(&user, &e),
    }
}

async fn dead_letters_page(
    State(state): State<AppState>,
    user: ConsoleUser,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    match operations::dead_letter_page_of(&state, &params).await {
        Ok(page) => no_store(pages::dead_letters(&user.csrf, &page)),
        Err(e) => problem_page(&user, &e),
    }
}

async fn requeue(
    State(state): State<AppState>,
    user: ConsoleUser,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> Result<Response, ApiError> {
    session::check_csrf(&headers, &user, None)?;
    operations::requeue_dead_letter(State(state), as_admin(&user), Path(task_id))
        .await
        .map(IntoResponse::into_response)
}

async fn delete(
    State(state): State<AppState>,
    user: ConsoleUser,
    headers: HeaderMap,
    Path(task_id): Path<String>,
) -> Result<Response, ApiError> {
    session::check_csrf(&headers, &user, None)?;
    operations::delete_dead_letter(State(state), as_admin(&user), Path(task_id))
        .await
        .map(IntoResponse::into_response)
}

async fn events(State(state): State<AppState>, user: ConsoleUser) -> Result<Response, ApiError> {
    operations::events(State(state), as_admin(&user), Query(HashMap::new()))
        .await
        .map(IntoResponse::into_response)
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        pages::SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE,
    )
        .into_response()
}
