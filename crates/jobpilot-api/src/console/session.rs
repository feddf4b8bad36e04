//! The console's session: an admin JWT, given once in the login form, kept in an HttpOnly
//! cookie that expires with the token, and checked on every request like a bearer token.
//!
//! Cross-site requests: the cookie is `SameSite=Strict`, and every request that changes
//! something must also carry the session's CSRF token (in the `X-CSRF-Token` header or a
//! `csrf` form field) and, when the browser sends one, an `Origin` of this host. The CSRF
//! token is the signature part of the session's JWT: only a page that the server rendered
//! for this session knows it (the cookie is HttpOnly), and nobody can compute it without the
//! signing key. It is not a second secret to store.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use crate::auth::HasAuth;
use crate::error::ApiError;
use crate::state::AppState;
use crate::trace_layer::RequestTrace;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "jobpilot_console";
/// Where the console lives; the cookie is sent only below it.
pub(crate) const BASE: &str = "/console";

/// An admin signed in to the console.
#[derive(Clone, Debug)]
pub(crate) struct ConsoleUser {
    /// The JWT subject.
    pub user_id: String,
    /// The token every change must carry.
    pub csrf: String,
}

/// Why a console request has no session: pages send the browser to the login form,
/// actions answer with the JSON error.
pub(crate) enum NoSession {
    Login,
    Refused(ApiError),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::Login => Redirect::to(&format!("{BASE}/login")).into_response(),
            NoSession::Refused(e) => e.into_response(),
        }
    }
}

/// The CSRF token of a session token: its signature.
pub(crate) fn csrf_of(token: &str) -> String {
    token.rsplit('.').next().unwrap_or_default().to_owned()
}

/// The session token in the request's cookies, if any.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the request's `Origin`, when it has one, is this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

/// Checks that a state-changing request is from a console page of this session.
pub(crate) fn check_csrf(
    headers: &HeaderMap,
    user: &ConsoleUser,
    form_token: Option<&str>,
) -> Result<(), ApiError> {
    let sent = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or(form_token);
    if !same_origin(headers) {
        return Err(ApiError::forbidden("the request comes from another site"));
    }
    if sent != Some(user.csrf.as_str()) {
        return Err(ApiError::forbidden(
            "missing or wrong CSRF token; reload the console page",
        ));
    }
    Ok(())
}

impl FromRequestParts<AppState> for ConsoleUser {
    type Rejection = NoSession;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let page = parts.method == Method::GET;
        let refuse = |e: ApiError| {
            if page {
                NoSession::Login
            } else {
                NoSession::Refused(e)
            }
        };
        let token = session_token(&parts.headers)
            .ok_or_else(|| refuse(ApiError::unauthorized("not signed in to the console")))?;
        let claims = state.auth().verify(token).map_err(refuse)?;
        if claims.role.as_deref() != Some("admin") {
            return Err(NoSession::Refused(ApiError::forbidden(
                "the console needs the admin role",
            )));
        }
        if let Some(trace) = parts.extensions.get::<RequestTrace>() {
            trace.set_user(&claims.sub);
        }
        Ok(ConsoleUser {
            user_id: claims.sub,
            csrf: csrf_of(token),
        })
    }
}

/// Whether the browser reached us over TLS (directly, or through a proxy that says so).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that starts a session with `token`, valid `max_age` seconds.
pub(crate) fn session_cookie(headers: &HeaderMap, token: &str, max_age: u64) -> String {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// The `Set-Cookie` value that ends the session.
pub(crate) fn cleared_cookie(headers: &HeaderMap) -> String {
    session_cookie(headers, "", 0)
}

/// The answer to a login attempt with `token`: the cookie and a redirect to the console, or
/// why not (the status and a message for the form).
pub(crate) fn login(
    state: &AppState,
    headers: &HeaderMap,
    token: &str,
) -> Result<Response, (StatusCode, String)> {
    let token = token.trim();
    if token.is_empty() {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "paste an admin token".to_owned(),
        ));
    }
    // A token is pasted here by hand: a plain JWT, at most a few kilobytes.
    if token.len() > 8 * 1024
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err((
            StatusCode::UNPROCESSABLE_ENTITY,
            "this is not a JWT".to_owned(),
        ));
    }
    let claims = state
        .auth()
        .verify(token)
        .map_err(|e| (StatusCode::UNAUTHORIZED, e.message))?;
    if claims.role.as_deref() != Some("admin") {
        return Err((
            StatusCode::FORBIDDEN,
            "this token lacks the admin role: the console shows every user's runs".to_owned(),
        ));
    }
    let max_age = claims
        .exp
        .saturating_sub(jobpilot_queue::unix_now_ms() / 1000);
    tracing::info!(user_id = %claims.sub, "console session started");
    Ok((
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, session_cookie(headers, token, max_age)),
            (header::LOCATION, BASE.to_owned()),
        ],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_token_is_found_among_other_cookies() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; jobpilot_console=x.y.z; b=2".parse().unwrap(),
        );
        assert_eq!(session_token(&headers), Some("x.y.z"));
        assert_eq!(csrf_of("x.y.z"), "z");
        headers.insert(header::COOKIE, "jobpilot_console=".parse().unwrap());
        assert_eq!(session_token(&headers), None);
    }

    #[test]
    fn a_foreign_origin_or_a_wrong_token_is_refused() {
        let user = ConsoleUser {
            user_id: "ops".into(),
            csrf: "sig".into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:8000".parse().unwrap());
        headers.insert("x-csrf-token", "sig".parse().unwrap());
        assert!(check_csrf(&headers, &user, None).is_ok());
        headers.insert(header::ORIGIN, "http://127.0.0.1:8000".parse().unwrap());
        assert!(check_csrf(&headers, &user, None).is_ok());
        headers.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(check_csrf(&headers, &user, None).is_err());
        headers.remove(header::ORIGIN);
        headers.insert("x-csrf-token", "other".parse().unwrap());
        assert!(check_csrf(&headers, &user, None).is_err());
        headers.remove("x-csrf-token");
        assert!(check_csrf(&headers, &user, Some("sig")).is_ok());
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_behind_tls() {
        let mut headers = HeaderMap::new();
        let plain = session_cookie(&headers, "t", 60);
        assert!(
            plain.contains("HttpOnly") && plain.contains("SameSite=Strict"),
            "{plain}"
        );
        assert!(
            plain.contains("Max-Age=60") && !plain.contains("Secure"),
            "{plain}"
        );
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(session_cookie(&headers, "t", 60).ends_with("; Secure"));
    }
}
