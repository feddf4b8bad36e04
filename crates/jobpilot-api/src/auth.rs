//! Authentication: HS256 bearer tokens whose `sub` claim is the `user_id`, and an optional
//! `role` claim (`admin`).
//!
//! Only HS256 is accepted (so `alg: none` and algorithm confusion fail), `exp` is required.
//! It does not store users; tokens are issued by whoever holds the secret (for development,
//! `jobpilot token`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::trace_layer::RequestTrace;

/// The claims jobpilot reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: u64,
    /// `admin` for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Signs and checks tokens with one shared secret.
#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

/// Longest accepted user id.
const MAX_SUBJECT_LEN: usize = 128;

impl Auth {
    /// Keys from `secret`.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 30;
        Auth {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        }
    }

    /// A token for `user_id`, valid for `ttl`, with an optional role.
    ///
    /// # Errors
    /// When signing fails.
    pub fn issue(
        &self,
        user_id: &str,
        role: Option<&str>,
        ttl: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: user_id.to_owned(),
            exp: now + ttl.as_secs(),
            iat: now,
            role: role.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// The claims of a valid token.
    ///
    /// # Errors
    /// A 401 saying what is wrong (expired, bad signature, malformed).
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                ApiError::unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::InvalidSignature => "the token signature is invalid",
                    ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                })
            })?;
        let sub = &data.claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUBJECT_LEN || sub.chars().any(char::is_control) {
            return Err(ApiError::unauthorized(
                "the token subject is not a valid user id",
            ));
        }
        Ok(data.claims)
    }
}

/// Something that holds the [`Auth`] keys (the app state).
pub trait HasAuth {
    /// The keys.
    fn auth(&self) -> &Auth;
}

/// The authenticated caller. Extracting it records `user_id` on the server span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The JWT subject.
    pub user_id: String,
    /// Whether the caller has the `admin` role.
    pub is_admin: bool,
}

impl<S: HasAuth + Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization header"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("expected 'Authorization: Bearer <token>'"))?;
        let claims = state.auth().verify(token)?;
        if let Some(trace) = parts.extensions.get::<RequestTrace>() {
            trace.set_user(&claims.sub);
        }
        Ok(AuthUser {
            is_admin: claims.role.as_deref() == Some("admin"),
            user_id: claims.sub,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_verifies_to_its_subject_and_role() {
        let auth = Auth::new(b"secret-for-tests");
        let token = auth
            .issue("alice", Some("admin"), Duration::from_secs(60))
            .unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.role.as_deref(), Some("admin"));
    }

    #[test]
    fn bad_tokens_are_rejected_with_a_reason() {
        let auth = Auth::new(b"secret-for-tests");
        let other = Auth::new(b"another-secret");
        let forged = other.issue("alice", None, Duration::from_secs(60)).unwrap();
        assert!(
            auth.verify(&forged)
                .unwrap_err()
                .message
                .contains("signature")
        );
        assert!(auth.verify("not.a.jwt").is_err());
        // alg: none
        let none =
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(auth.verify(none).is_err());
        let expired = {
            let claims = Claims {
                sub: "alice".into(),
                exp: 1,
                iat: 0,
                role: None,
            };
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"secret-for-tests"),
            )
            .unwrap()
        };
        assert!(
            auth.verify(&expired)
                .unwrap_err()
                .message
                .contains("expired")
        );
    }
}
