//! The process configuration: every variable read once, through a lookup function, into typed
//! values; the first invalid one is reported by name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jobpilot_agents::{LlmConfig, LlmConfigError};
use jobpilot_telemetry::TelemetryConfig;
use jobpilot_telemetry::config::{ConfigError, Environment};
use jobpilot_telemetry::logging::LogConfig;

/// Secret used to sign tokens in development when `JOBPILOT_JWT_SECRET` is unset.
pub const DEV_JWT_SECRET: &str = "jobpilot-development-secret-do-not-use-in-production";

/// Everything the binary needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Telemetry.
    pub telemetry: TelemetryConfig,
    /// Logs.
    pub log: LogConfig,
    /// The address the API listens on: `--listen`, else `JOBPILOT_LISTEN`, else
    /// `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// `JOBPILOT_ADMIN_LISTEN` (or `--admin-listen`): a separate listener for `/health`,
    /// `/ready`, `/metrics` and `/telemetry`; unset, the API serves `/metrics` to admins and a
    /// worker has no listener.
    pub admin_listen: Option<SocketAddr>,
    /// `JOBPILOT_DATA_DIR` (default `./data`): the embedded store.
    pub data_dir: PathBuf,
    /// `REDIS_URL`: broker and store of the distributed deployment.
    pub redis_url: Option<String>,
    /// `JOBPILOT_REDIS_PREFIX` (default `jobpilot`): key prefix in Redis.
    pub redis_prefix: String,
    /// `JOBPILOT_JWT_SECRET`, or the development secret (only in development on loopback).
    pub jwt_secret: String,
    /// Whether the development secret is in use (a warning is logged).
    pub jwt_secret_is_dev: bool,
    /// `JOBPILOT_WORKER_CONCURRENCY` (default 4).
    pub worker_concurrency: usize,
    /// `JOBPILOT_VISIBILITY_TIMEOUT_SECS` (default 120: longer than the slowest LLM call with
    /// its retries, so a run still in progress is not handed to a second worker).
    pub visibility_timeout: Duration,
    /// `JOBPILOT_MAX_ATTEMPTS` (default 5).
    pub max_attempts: u32,
    /// `JOBPILOT_SHUTDOWN_GRACE_SECS` (default 25).
    pub shutdown_grace: Duration,
    /// `JOBPILOT_MAX_BODY_BYTES` (default 256 KiB).
    pub max_body_bytes: usize,
    /// `JOBPILOT_LLM_*`.
    pub llm: LlmConfig,
}

fn number<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    min: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    match get(var) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<T>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(ConfigError::new(
                var,
                &v,
                format!("expected an integer of at least {min}"),
            )),
        },
    }
}

/// Shortest secret accepted outside development: HS256 keys shorter than the hash output (32
/// bytes) can be brute-forced offline from one captured token.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The signing secret. The development secret is public (it is in this file), so it is only
/// used where nobody else can reach the API: in development and on a loopback address.
fn jwt_secret(
    value: Option<String>,
    environment: Environment,
    listen: SocketAddr,
) -> Result<(String, bool), ConfigError> {
    let development = environment == Environment::Development;
    match value {
        Some(s) if !development && s.len() < MIN_JWT_SECRET_BYTES => Err(ConfigError::secret(
            "JOBPILOT_JWT_SECRET",
            format!(
                "must be at least {MIN_JWT_SECRET_BYTES} bytes when JOBPILOT_ENV={}",
                environment.as_str()
            ),
        )),
        Some(s) => Ok((s, false)),
        None if development && listen.ip().is_loopback() => Ok((DEV_JWT_SECRET.to_owned(), true)),
        None if development => Err(ConfigError::secret(
            "JOBPILOT_JWT_SECRET",
            format!(
                "is required when listening on {listen}, which is not a loopback address \
                 (the development secret is public)"
            ),
        )),
        None => Err(ConfigError::secret(
            "JOBPILOT_JWT_SECRET",
            format!("is required when JOBPILOT_ENV={}", environment.as_str()),
        )),
    }
}

/// The variable behind an LLM client setting the client refused.
pub fn llm_variable(error: &LlmConfigError) -> &'static str {
    match error {
        LlmConfigError::InvalidBaseUrl { .. } | LlmConfigError::Client { .. } => {
            "JOBPILOT_LLM_BASE_URL"
        }
        LlmConfigError::MissingModel => "JOBPILOT_LLM_MODEL",
        LlmConfigError::ZeroTimeout => "JOBPILOT_LLM_TIMEOUT_SECS",
        LlmConfigError::InvalidApiKey => "JOBPILOT_LLM_API_KEY",
    }
}

impl Config {
    /// Reads the process environment; `listen` is the `--listen` flag, which wins over
    /// `JOBPILOT_LISTEN`.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn from_env(listen: Option<SocketAddr>) -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok(), listen)
    }

    /// Reads through `lookup`; empty values count as unset. `listen` overrides
    /// `JOBPILOT_LISTEN`: the checks that depend on the address (the development secret) see
    /// the address actually used.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        listen: Option<SocketAddr>,
    ) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let telemetry = TelemetryConfig::from_lookup(&lookup)?;
        let log = LogConfig::from_lookup(&lookup)?;

        let listen = match (listen, get("JOBPILOT_LISTEN")) {
            (Some(flag), _) => flag,
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 8000)),
            (None, Some(v)) => v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "JOBPILOT_LISTEN",
                    &v,
                    "expected IP:PORT, e.g. 127.0.0.1:8000",
                )
            })?,
        };
        let admin_listen = match get("JOBPILOT_ADMIN_LISTEN") {
            None => None,
            Some(v) => Some(v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "JOBPILOT_ADMIN_LISTEN",
                    &v,
                    "expected IP:PORT, e.g. 127.0.0.1:9464",
                )
            })?),
        };
        let data_dir = PathBuf::from(get("JOBPILOT_DATA_DIR").unwrap_or_else(|| "./data".into()));

        let redis_url = match get("REDIS_URL") {
            None => None,
            Some(v) => {
                let v = v.trim().to_owned();
                if !(v.starts_with("redis://") || v.starts_with("rediss://")) {
                    return Err(ConfigError::new(
                        "REDIS_URL",
                        &v,
                        "expected redis://host:port or rediss://host:port",
                    ));
                }
                Some(v)
            }
        };

        let (jwt_secret, jwt_secret_is_dev) =
            jwt_secret(get("JOBPILOT_JWT_SECRET"), telemetry.environment, listen)?;

        let llm_base_url = match get("JOBPILOT_LLM_BASE_URL") {
            None => None,
            Some(v) => {
                let v = v.trim().trim_end_matches('/').to_owned();
                if !(v.starts_with("http://") || v.starts_with("https://")) {
                    return Err(ConfigError::new(
                        "JOBPILOT_LLM_BASE_URL",
                        &v,
                        "expected an http:// or https:// URL such as http://host:port/v1",
                    ));
                }
                Some(v)
            }
        };
        let default_llm = LlmConfig::default();
        let llm_model = get("JOBPILOT_LLM_MODEL");
        if llm_base_url.is_some() && llm_model.is_none() {
            return Err(ConfigError::secret(
                "JOBPILOT_LLM_MODEL",
                "is required when JOBPILOT_LLM_BASE_URL is set",
            ));
        }
        let llm = LlmConfig {
            base_url: llm_base_url,
            model: llm_model.unwrap_or(default_llm.model),
            api_key: get("JOBPILOT_LLM_API_KEY"),
            timeout: Duration::from_secs(number(
                &get,
                "JOBPILOT_LLM_TIMEOUT_SECS",
                default_llm.timeout.as_secs(),
                1,
            )?),
            max_retries: number(&get, "JOBPILOT_LLM_MAX_RETRIES", default_llm.max_retries, 0)?,
            capture_content: match get("JOBPILOT_LLM_CAPTURE_CONTENT")
                .as_deref()
                .map(str::trim)
            {
                None | Some("false") | Some("0") => false,
                Some("true") | Some("1") => true,
                Some(other) => {
                    return Err(ConfigError::new(
                        "JOBPILOT_LLM_CAPTURE_CONTENT",
                        other,
                        "expected true or false",
                    ));
                }
            },
        };

        Ok(Config {
            telemetry,
            log,
            listen,
            admin_listen,
            data_dir,
            redis_url,
            redis_prefix: get("JOBPILOT_REDIS_PREFIX").unwrap_or_else(|| "jobpilot".into()),
            jwt_secret,
            jwt_secret_is_dev,
            worker_concurrency: number(&get, "JOBPILOT_WORKER_CONCURRENCY", 4, 1)?,
            visibility_timeout: Duration::from_secs(number(
                &get,
                "JOBPILOT_VISIBILITY_TIMEOUT_SECS",
                120,
                1,
            )?),
            max_attempts: number(&get, "JOBPILOT_MAX_ATTEMPTS", 5, 1)?,
            shutdown_grace: Duration::from_secs(number(
                &get,
                "JOBPILOT_SHUTDOWN_GRACE_SECS",
                25,
                0,
            )?),
            max_body_bytes: number(&get, "JOBPILOT_MAX_BODY_BYTES", 256 * 1024, 1024)?,
            llm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned(), None)
    }

    #[test]
    fn defaults_run_on_localhost_with_the_dev_secret() {
        let c = config(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert!(c.jwt_secret_is_dev);
        assert_eq!(c.worker_concurrency, 4);
        assert_eq!(c.max_attempts, 5);
        assert!(c.llm.base_url.is_none());
    }

    #[test]
    fn production_requires_a_long_jwt_secret() {
        let err = config(&[("JOBPILOT_ENV", "production")]).unwrap_err();
        assert_eq!(err.var, "JOBPILOT_JWT_SECRET");
        let err = config(&[
            ("JOBPILOT_ENV", "production"),
            ("JOBPILOT_JWT_SECRET", "short"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "JOBPILOT_JWT_SECRET");
        assert!(
            !err.to_string().contains("short"),
            "the secret is not echoed"
        );
    }

    fn config_listening_on(listen: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned(), Some(listen.parse().unwrap()))
    }

    #[test]
    fn the_development_secret_needs_development_on_loopback() {
        assert!(
            config_listening_on("[::1]:8000", &[])
                .unwrap()
                .jwt_secret_is_dev
        );
        for (listen, env) in [
            ("0.0.0.0:8000", "development"),
            ("192.168.1.5:8000", "development"),
            ("127.0.0.1:8000", "staging"),
            ("127.0.0.1:8000", "production"),
        ] {
            let err = config_listening_on(listen, &[("JOBPILOT_ENV", env)])
                .expect_err(&format!("{env} on {listen}"));
            assert_eq!(err.var, "JOBPILOT_JWT_SECRET");
        }
        // The flag is the address that counts, not JOBPILOT_LISTEN.
        let err =
            config_listening_on("0.0.0.0:8000", &[("JOBPILOT_LISTEN", "127.0.0.1:1")]).unwrap_err();
        assert_eq!(err.var, "JOBPILOT_JWT_SECRET");
        let err = config(&[("JOBPILOT_LISTEN", "0.0.0.0:8000")]).unwrap_err();
        assert_eq!(err.var, "JOBPILOT_JWT_SECRET");
    }

    #[test]
    fn outside_development_the_secret_needs_32_bytes() {
        let short = "s".repeat(MIN_JWT_SECRET_BYTES - 1);
        let long = "s".repeat(MIN_JWT_SECRET_BYTES);
        let err =
            config(&[("JOBPILOT_ENV", "staging"), ("JOBPILOT_JWT_SECRET", &short)]).unwrap_err();
        assert_eq!(err.var, "JOBPILOT_JWT_SECRET");
        assert!(!err.to_string().contains(&short));
        let c = config(&[("JOBPILOT_ENV", "staging"), ("JOBPILOT_JWT_SECRET", &long)]).unwrap();
        assert!(!c.jwt_secret_is_dev);
        // Development accepts a short secret of one's own, on any address.
        let c = config_listening_on("0.0.0.0:8000", &[("JOBPILOT_JWT_SECRET", "a")]).unwrap();
        assert_eq!(c.jwt_secret, "a");
    }

    #[test]
    fn invalid_values_name_their_variable() {
        for (var, value) in [
            ("JOBPILOT_LISTEN", "8000"),
            ("REDIS_URL", "localhost:6379"),
            ("JOBPILOT_WORKER_CONCURRENCY", "0"),
            ("JOBPILOT_VISIBILITY_TIMEOUT_SECS", "soon"),
            ("JOBPILOT_MAX_ATTEMPTS", "-1"),
            ("JOBPILOT_LLM_BASE_URL", "llm.local/v1"),
            ("JOBPILOT_LLM_CAPTURE_CONTENT", "maybe"),
            ("OTEL_EXPORTER_ENDPOINT", "collector"),
        ] {
            let err = config(&[(var, value)]).expect_err(var);
            assert_eq!(err.var, var);
        }
    }

    #[test]
    fn an_llm_endpoint_needs_a_model() {
        let err = config(&[("JOBPILOT_LLM_BASE_URL", "http://llm.local/v1")]).unwrap_err();
        assert_eq!(err.var, "JOBPILOT_LLM_MODEL");
        let c = config(&[
            ("JOBPILOT_LLM_BASE_URL", "http://llm.local/v1/"),
            ("JOBPILOT_LLM_MODEL", "m"),
        ])
        .unwrap();
        assert_eq!(c.llm.base_url.as_deref(), Some("http://llm.local/v1"));
    }
}
