//! The process configuration: every variable read once, through a lookup function, into typed
//! values; the first invalid one is reported by name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jobpilot_agents::LlmConfig;
use jobpilot_queue::QueueSettings;
use jobpilot_telemetry::TelemetryConfig;
use jobpilot_telemetry::config::{ConfigError, Environment};
use jobpilot_telemetry::logging::LogConfig;

/// `JOBPILOT_DATA_DIR` when it is not set.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// Secret used to sign tokens in development when `JOBPILOT_JWT_SECRET` is unset.
pub const DEV_JWT_SECRET: &str = "jobpilot-development-secret-do-not-use-in-production";

/// Everything the binary needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Telemetry.
    pub telemetry: TelemetryConfig,
    /// Logs.
    pub log: LogConfig,
    /// `JOBPILOT_LISTEN` (default `127.0.0.1:8000`); `--listen` overrides it.
    pub listen: SocketAddr,
    /// `JOBPILOT_DATA_DIR` (default `./data`): the embedded store.
    pub data_dir: PathBuf,
    /// `REDIS_URL`: broker and store of the distributed deployment.
    pub redis_url: Option<String>,
    /// `JOBPILOT_REDIS_PREFIX` (default `jobpilot`): key prefix in Redis.
    pub redis_prefix: String,
    /// `JOBPILOT_JWT_SECRET`, or the development secret.
    pub jwt_secret: String,
    /// Whether the development secret is in use (a warning is logged).
    pub jwt_secret_is_dev: bool,
    /// `JOBPILOT_WORKER_CONCURRENCY` (default 4).
    pub worker_concurrency: usize,
    /// `JOBPILOT_VISIBILITY_TIMEOUT_SECS` (default: the queue's, [`QueueSettings`]). The
    /// worker takes it from the broker it is given, so it is set in one place.
    pub visibility_timeout: Duration,
    /// `JOBPILOT_MAX_ATTEMPTS` (default 5).
    pub max_attempts: u32,
    /// `JOBPILOT_RUN_TIMEOUT_SECS` (default 300): the deadline of one attempt.
    pub run_timeout: Duration,
    /// `JOBPILOT_RUN_RETENTION_SECS` (default: the queue's, 7 days): how long finished runs
    /// and dead letters are kept.
    pub run_retention: Duration,
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

impl Config {
    /// Whether the data directory is the default one (`JOBPILOT_DATA_DIR` unset).
    pub fn data_dir_is_default(&self) -> bool {
        self.data_dir == std::path::Path::new(DEFAULT_DATA_DIR)
    }

    /// Reads the process environment.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads through `lookup`; empty values count as unset.
    ///
    /// # Errors
    /// The first invalid variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let telemetry = TelemetryConfig::from_lookup(&lookup)?;
        let log = LogConfig::from_lookup(&lookup)?;

        let listen = match get("JOBPILOT_LISTEN") {
            None => SocketAddr::from(([127, 0, 0, 1], 8000)),
            Some(v) => v.trim().parse().map_err(|_| {
                ConfigError::new(
                    "JOBPILOT_LISTEN",
                    &v,
                    "expected IP:PORT, e.g. 127.0.0.1:8000",
                )
            })?,
        };
        let data_dir =
            PathBuf::from(get("JOBPILOT_DATA_DIR").unwrap_or_else(|| DEFAULT_DATA_DIR.into()));

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

        let (jwt_secret, jwt_secret_is_dev) = match get("JOBPILOT_JWT_SECRET") {
            Some(s) => {
                if telemetry.environment == Environment::Production && s.len() < 32 {
                    return Err(ConfigError::new(
                        "JOBPILOT_JWT_SECRET",
                        "(hidden)",
                        "must be at least 32 bytes in production",
                    ));
                }
                (s, false)
            }
            None if telemetry.environment == Environment::Production => {
                return Err(ConfigError::new(
                    "JOBPILOT_JWT_SECRET",
                    "",
                    "is required when JOBPILOT_ENV=production",
                ));
            }
            None => (DEV_JWT_SECRET.to_owned(), true),
        };

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
            return Err(ConfigError::new(
                "JOBPILOT_LLM_MODEL",
                "",
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
            data_dir,
            redis_url,
            redis_prefix: get("JOBPILOT_REDIS_PREFIX").unwrap_or_else(|| "jobpilot".into()),
            jwt_secret,
            jwt_secret_is_dev,
            worker_concurrency: number(&get, "JOBPILOT_WORKER_CONCURRENCY", 4, 1)?,
            visibility_timeout: Duration::from_secs(number(
                &get,
                "JOBPILOT_VISIBILITY_TIMEOUT_SECS",
                QueueSettings::default().visibility_timeout.as_secs(),
                1,
            )?),
            max_attempts: number(&get, "JOBPILOT_MAX_ATTEMPTS", 5, 1)?,
            run_retention: Duration::from_secs(number(
                &get,
                "JOBPILOT_RUN_RETENTION_SECS",
                QueueSettings::default().run_retention.as_secs(),
                1,
            )?),
            run_timeout: Duration::from_secs(number(
                &get,
                "JOBPILOT_RUN_TIMEOUT_SECS",
                jobpilot_worker::DEFAULT_RUN_TIMEOUT.as_secs(),
                1,
            )?),
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
        Config::from_lookup(|k| map.get(k).cloned())
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
    fn the_visibility_timeout_default_is_the_one_the_queue_defines() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.visibility_timeout,
            QueueSettings::default().visibility_timeout
        );
        assert_eq!(c.run_retention, QueueSettings::default().run_retention);
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

    #[test]
    fn invalid_values_name_their_variable() {
        for (var, value) in [
            ("JOBPILOT_LISTEN", "8000"),
            ("REDIS_URL", "localhost:6379"),
            ("JOBPILOT_WORKER_CONCURRENCY", "0"),
            ("JOBPILOT_VISIBILITY_TIMEOUT_SECS", "soon"),
            ("JOBPILOT_MAX_ATTEMPTS", "-1"),
            ("JOBPILOT_RUN_TIMEOUT_SECS", "0"),
            ("JOBPILOT_RUN_RETENTION_SECS", "a week"),
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
