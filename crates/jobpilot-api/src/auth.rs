//! Authentication: bearer JWTs whose `sub` claim is the `user_id`, and an optional `role`
//! claim (`admin`).
//!
//! Tokens are checked with one key: a shared HS256 secret (which also signs, for
//! `jobpilot token`) or an identity provider's public key from a PEM file (RS256/RS384/RS512,
//! PS256…, ES256/ES384 or EdDSA, chosen by the key's type; verification only). Only the key's
//! algorithms are accepted, so `alg: none` and algorithm confusion fail. `exp` and `sub` are
//! required, `nbf` is honoured, the issuer and audience are pinned when configured (a token that
//! names an audience is refused when none is configured), and a maximum lifetime refuses
//! tokens valid for longer than it (`exp - iat`, or `exp - now` without `iat`).
//! It does not store users.
//!
//! A token that passed every check is remembered (up to [`VERIFIED_CAPACITY`] tokens, until
//! it expires), so a client sending the same token with each request pays for the signature
//! check once instead of on every request: HS256 cost about 30,000 instructions a request,
//! an RSA or EC key many times that. Only the exact token text is remembered; any other
//! token, altered in a single byte, is checked in full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
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
    /// Not valid before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience (a string; the checks also accept an array, which is not kept here).
    #[serde(default, skip_serializing_if = "Option::is_none", skip_deserializing)]
    pub aud: Option<String>,
    /// `admin` for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// A public key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a PEM public key of a supported type (RSA, EC P-256/P-384 or Ed25519)")]
pub struct KeyError;

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Only the identity provider holding the private key can sign.
    #[error("tokens are signed by the identity provider when a public key is configured")]
    NoSigningKey,
    /// Now plus the lifetime does not fit a timestamp.
    #[error("the token lifetime is too long")]
    LifetimeOverflow,
    /// The lifetime exceeds the configured maximum.
    #[error("the token lifetime exceeds the maximum of {max_secs} s")]
    LifetimeAboveMaximum {
        /// The maximum, in seconds.
        max_secs: u64,
    },
    /// The signing library failed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Checks tokens (and signs them when the key is a shared secret).
#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: Option<EncodingKey>,
    validation: Validation,
    issuer: Option<String>,
    audience: Option<String>,
    max_ttl: Option<Duration>,
    /// Tokens that passed every check, shared by the clones of this `Auth`.
    verified: Arc<VerifiedTokens>,
}

/// How many verified tokens are remembered; when full, all are forgotten at once.
pub const VERIFIED_CAPACITY: usize = 4096;
/// Longer tokens are checked in full every time rather than remembered (bounds the memory).
const MAX_REMEMBERED_TOKEN_LEN: usize = 4096;

/// Tokens that passed every check, with their claims.
#[derive(Default)]
struct VerifiedTokens(Mutex<HashMap<Box<str>, Claims>>);

impl VerifiedTokens {
    /// The claims of `token` if it was verified before and has not expired at `now`.
    fn get(&self, token: &str, now: u64) -> Option<Claims> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let claims = map.get(token)?;
        // Everything else about a verified token stays true as time passes; only `exp` can
        // turn it down (`nbf` and `iat` held when it was checked, and the clock moves on).
        if now <= claims.exp.saturating_add(LEEWAY_SECS) {
            return Some(claims.clone());
        }
        map.remove(token);
        None
    }

    fn insert(&self, token: &str, claims: &Claims) {
        if token.len() > MAX_REMEMBERED_TOKEN_LEN {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= VERIFIED_CAPACITY {
            map.clear();
        }
        map.insert(token.into(), claims.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

/// Longest accepted user id.
const MAX_SUBJECT_LEN: usize = 128;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 30;

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn validation(algorithms: &[Algorithm]) -> Validation {
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms.to_vec();
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECS;
    validation
}

impl Auth {
    /// HS256 with `secret`: signs and checks.
    pub fn new(secret: &[u8]) -> Self {
        Auth {
            decoding: DecodingKey::from_secret(secret),
            encoding: Some(EncodingKey::from_secret(secret)),
            validation: validation(&[Algorithm::HS256]),
            issuer: None,
            audience: None,
            max_ttl: None,
            verified: Arc::default(),
        }
    }

    /// Checks tokens with a PEM public key (`-----BEGIN PUBLIC KEY-----`, or PKCS#1 for RSA);
    /// the algorithms follow from the key's type. Cannot sign.
    ///
    /// # Errors
    /// [`KeyError`] when the PEM holds no RSA, EC or Ed25519 public key.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Self, KeyError> {
        use Algorithm::*;
        let (decoding, algorithms): (DecodingKey, &[Algorithm]) =
            if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
                (key, &[RS256, RS384, RS512, PS256, PS384, PS512])
            } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
                (key, &[ES256, ES384])
            } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
                (key, &[EdDSA])
            } else {
                return Err(KeyError);
            };
        Ok(Auth {
            decoding,
            encoding: None,
            validation: validation(algorithms),
            issuer: None,
            audience: None,
            max_ttl: None,
            verified: Arc::default(),
        })
    }

    /// Accepts only tokens whose `iss` is `issuer` (and puts it in issued tokens).
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        let issuer = issuer.into();
        self.validation.set_issuer(&[issuer.as_str()]);
        self.issuer = Some(issuer);
        self.require_claims();
        self.verified = Arc::default();
        self
    }

    /// Accepts only tokens whose `aud` holds `audience` (and puts it in issued tokens).
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        let audience = audience.into();
        self.validation.set_audience(&[audience.as_str()]);
        self.audience = Some(audience);
        self.require_claims();
        self.verified = Arc::default();
        self
    }

    /// Refuses tokens valid for longer than `max` (`None`: no limit).
    pub fn with_max_ttl(mut self, max: Option<Duration>) -> Self {
        self.max_ttl = max;
        // Tokens checked under other rules must be checked again under these.
        self.verified = Arc::default();
        self
    }

    /// The longest lifetime accepted, if limited.
    pub fn max_ttl(&self) -> Option<Duration> {
        self.max_ttl
    }

    fn require_claims(&mut self) {
        let mut claims = vec!["exp", "sub"];
        if self.issuer.is_some() {
            claims.push("iss");
        }
        if self.audience.is_some() {
            claims.push("aud");
        }
        self.validation.set_required_spec_claims(&claims);
    }

    /// A token for `user_id`, valid for `ttl`, with an optional role.
    ///
    /// # Errors
    /// When the key cannot sign (a public key), the lifetime overflows or exceeds the maximum,
    /// or signing fails.
    pub fn issue(
        &self,
        user_id: &str,
        role: Option<&str>,
        ttl: Duration,
    ) -> Result<String, IssueError> {
        let encoding = self.encoding.as_ref().ok_or(IssueError::NoSigningKey)?;
        if let Some(max) = self.max_ttl.filter(|max| ttl > *max) {
            return Err(IssueError::LifetimeAboveMaximum {
                max_secs: max.as_secs(),
            });
        }
        let now = now_secs();
        let exp = now
            .checked_add(ttl.as_secs())
            .ok_or(IssueError::LifetimeOverflow)?;
        let claims = Claims {
            sub: user_id.to_owned(),
            exp,
            iat: now,
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            role: role.map(str::to_owned),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            encoding,
        )?)
    }

    /// The claims of a valid token.
    ///
    /// # Errors
    /// A 401 saying what is wrong (expired, not yet valid, bad signature, wrong issuer or
    /// audience, too long a lifetime, malformed).
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        if let Some(claims) = self.verified.get(token, now_secs()) {
            return Ok(claims);
        }
        let claims = self.verify_in_full(token)?;
        self.verified.insert(token, &claims);
        Ok(claims)
    }

    /// [`Auth::verify`] without the remembered tokens.
    fn verify_in_full(&self, token: &str) -> Result<Claims, ApiError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                ApiError::unauthorized(match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "the token signature is invalid",
                    ErrorKind::InvalidAlgorithm => "the token is signed with another algorithm",
                    ErrorKind::InvalidIssuer => "the token issuer is not accepted",
                    ErrorKind::InvalidAudience => "the token audience is not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                })
            })?;
        let claims = data.claims;
        let now = now_secs();
        if claims.iat > now.saturating_add(LEEWAY_SECS) {
            return Err(ApiError::unauthorized("the token is issued in the future"));
        }
        if let Some(max) = self.max_ttl {
            let start = if claims.iat > 0 { claims.iat } else { now };
            // exp >= now - leeway here; exp < start can only come with iat in the future.
            let lifetime = claims.exp.saturating_sub(start);
            if lifetime > max.as_secs().saturating_add(LEEWAY_SECS) {
                return Err(ApiError::unauthorized(
                    "the token lifetime exceeds the accepted maximum",
                ));
            }
        }
        let sub = &claims.sub;
        if sub.is_empty() || sub.len() > MAX_SUBJECT_LEN || sub.chars().any(char::is_control) {
            return Err(ApiError::unauthorized(
                "the token subject is not a valid user id",
            ));
        }
        Ok(claims)
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

impl AuthUser {
    /// `Ok` for an admin, 403 otherwise.
    ///
    /// # Errors
    /// [`ApiError`] 403 when the caller lacks the admin role.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this endpoint needs the admin role"))
        }
    }
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
    fn a_verified_token_is_remembered_and_an_altered_one_is_checked_in_full() {
        let auth = Auth::new(b"secret-for-tests");
        let token = auth.issue("alice", None, Duration::from_secs(60)).unwrap();
        assert_eq!(auth.verified.len(), 0);
        let first = auth.verify(&token).unwrap();
        assert_eq!(auth.verified.len(), 1);
        // A clone (the app state's) shares what was verified.
        assert_eq!(auth.clone().verify(&token).unwrap(), first);
        assert_eq!(auth.verified.len(), 1);

        // The same claims with another signature, and a token of another key: refused, and
        // not remembered.
        let (body, sig) = token.rsplit_once('.').unwrap();
        let first_char = if sig.starts_with('A') { "B" } else { "A" };
        let bad_sig = format!("{first_char}{}", &sig[1..]);
        let err = auth.verify(&format!("{body}.{bad_sig}")).unwrap_err();
        assert_eq!(err.message, "the token signature is invalid");
        let other = Auth::new(b"another-secret").issue("alice", None, Duration::from_secs(60));
        let err = auth.verify(&other.unwrap()).unwrap_err();
        assert_eq!(err.message, "the token signature is invalid");
        assert_eq!(auth.verified.len(), 1);
    }

    #[test]
    fn a_remembered_token_is_refused_once_it_expires() {
        let tokens = VerifiedTokens::default();
        let claims = Claims {
            sub: "alice".into(),
            exp: 1_000,
            iat: 900,
            nbf: None,
            iss: None,
            aud: None,
            role: None,
        };
        tokens.insert("t", &claims);
        assert_eq!(tokens.get("t", 1_000 + LEEWAY_SECS), Some(claims));
        assert_eq!(tokens.get("t", 1_001 + LEEWAY_SECS), None);
        assert_eq!(tokens.len(), 0, "an expired token is forgotten");
    }

    #[test]
    fn remembered_tokens_are_bounded() {
        let tokens = VerifiedTokens::default();
        let claims = Claims {
            sub: "alice".into(),
            exp: u64::MAX,
            iat: 0,
            nbf: None,
            iss: None,
            aud: None,
            role: None,
        };
        for i in 0..VERIFIED_CAPACITY + 10 {
            tokens.insert(&format!("token-{i}"), &claims);
        }
        assert!(tokens.len() <= VERIFIED_CAPACITY);
        tokens.insert(&"x".repeat(MAX_REMEMBERED_TOKEN_LEN + 1), &claims);
        assert!(
            tokens
                .get(&"x".repeat(MAX_REMEMBERED_TOKEN_LEN + 1), 0)
                .is_none()
        );
    }

    #[test]
    fn changing_the_rules_forgets_what_the_old_ones_accepted() {
        let auth = Auth::new(b"secret-for-tests");
        let token = auth
            .issue("alice", None, Duration::from_secs(3600))
            .unwrap();
        auth.verify(&token).unwrap();
        let stricter = auth.clone().with_max_ttl(Some(Duration::from_secs(60)));
        assert!(stricter.verify(&token).is_err());
        let pinned = auth.clone().with_issuer("https://idp.example");
        assert!(pinned.verify(&token).is_err());
        assert!(auth.verify(&token).is_ok());
    }

    #[test]
    fn a_lifetime_that_overflows_is_an_error() {
        let auth = Auth::new(b"secret-for-tests");
        assert!(matches!(
            auth.issue("alice", None, Duration::from_secs(u64::MAX)),
            Err(IssueError::LifetimeOverflow)
        ));
    }
}
