//! Redaction of secrets before they reach a span or a log line: sensitive query parameters,
//! credentials in URLs and sensitive headers.
//!
//! It is not a content filter: request bodies, resumes and LLM prompts are simply never
//! recorded (content capture is opt-in elsewhere).

/// What a redacted value is replaced with.
pub const REDACTED: &str = "REDACTED";

/// Query parameter names whose values are secrets (compared case-insensitively).
const SENSITIVE_QUERY_KEYS: &[&str] = &[
    "access_token",
    "api-key",
    "api_key",
    "apikey",
    "auth",
    "authorization",
    "client_secret",
    "code",
    "credential",
    "credentials",
    "id_token",
    "jwt",
    "key",
    "passwd",
    "password",
    "pwd",
    "refresh_token",
    "secret",
    "session",
    "sessionid",
    "sig",
    "signature",
    "token",
    "x-amz-credential",
    "x-amz-security-token",
    "x-amz-signature",
    "x-goog-signature",
];

/// Whether a query parameter named `key` holds a secret.
pub fn is_sensitive_query_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SENSITIVE_QUERY_KEYS.contains(&key.as_str())
        || key.contains("token")
        || key.contains("secret")
        || key.contains("password")
}

/// Whether the header `name` carries credentials and must never be recorded.
pub fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(
        name.as_str(),
        "authorization" | "proxy-authorization" | "cookie" | "set-cookie"
    ) || name.contains("api-key")
        || name.contains("apikey")
        || name.contains("token")
        || name.contains("secret")
}

/// Replaces the values of sensitive parameters in a query string (without the `?`).
pub fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_sensitive_query_key(&crate::percent::decode_lossy(k)) => {
                format!("{k}={REDACTED}")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Removes credentials from a URL (`user:pass@` becomes `REDACTED:REDACTED@`) and redacts its
/// query.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://{REDACTED}:{REDACTED}@{host}{path}"),
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    match query {
        Some(q) => format!("{base}?{}", redact_query(q)),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_query_values_are_redacted_and_others_kept() {
        assert_eq!(
            redact_query("page=2&token=abc&Sig=xyz&my_password=p&q=rust"),
            "page=2&token=REDACTED&Sig=REDACTED&my_password=REDACTED&q=rust"
        );
        assert_eq!(
            redact_query("access%5Ftoken=abc"),
            "access%5Ftoken=REDACTED"
        );
        assert_eq!(redact_query("flag&x=1"), "flag&x=1");
    }

    #[test]
    fn url_credentials_and_query_secrets_are_redacted() {
        assert_eq!(
            redact_url("https://bob:hunter2@llm.example/v1/chat?api_key=k&x=1"),
            "https://REDACTED:REDACTED@llm.example/v1/chat?api_key=REDACTED&x=1"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:8080/v1"),
            "http://127.0.0.1:8080/v1"
        );
    }

    #[test]
    fn credential_headers_are_sensitive() {
        for h in [
            "Authorization",
            "cookie",
            "Set-Cookie",
            "X-API-Key",
            "x-auth-token",
        ] {
            assert!(is_sensitive_header(h), "{h}");
        }
        assert!(!is_sensitive_header("user-agent"));
    }
}
