//! The process configuration: every variable read once, through a lookup function, into typed
//! values; the first invalid one is reported by name.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use jobpilot_agents::{LlmConfig, LlmConfigError};
use jobpilot_api::{Auth, RunLimits, ServerLimits};
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
    /// How tokens are checked: `JOBPILOT_JWT_SECRET` (or the development secret, only in
    /// development on loopback) or `JOBPILOT_JWT_PUBLIC_KEY_FILE`, with
    /// `JOBPILOT_JWT_ISSUER`, `JOBPILOT_JWT_AUDIENCE` and `JOBPILOT_JWT_MAX_TTL_SECS`.
    pub auth: Auth,
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
    /// `JOBPILOT_API_DOCS` (default true): serve Swagger UI at `/docs` and `/openapi.json`.
    pub api_docs: bool,
    /// `JOBPILOT_TRACE_URL_TEMPLATE`: where the console links a run's trace, a URL with
    /// `{trace_id}` in it.
    pub trace_url_template: Option<String>,
    /// `JOBPILOT_LLM_*`.
    pub llm: LlmConfig,
    /// `JOBPILOT_HEADER_READ_TIMEOUT_SECS`, `JOBPILOT_BODY_READ_TIMEOUT_SECS`,
    /// `JOBPILOT_MAX_CONNECTIONS`.
    pub server: ServerLimits,
    /// `JOBPILOT_REQUEST_TIMEOUT_SECS`.
    pub request_timeout: Option<Duration>,
    /// `JOBPILOT_RUNS_PER_USER_PER_SEC`, `JOBPILOT_RUNS_BURST_PER_USER`,
    /// `JOBPILOT_MAX_QUEUED_RUNS_PER_USER`, `JOBPILOT_MAX_QUEUE_DEPTH`.
    pub run_limits: RunLimits,
}

/// A number of seconds where `0` turns the limit off.
fn optional_secs(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: Option<Duration>,
) -> Result<Option<Duration>, ConfigError> {
    let default_secs = default.map_or(0, |d| d.as_secs());
    let secs = number(get, var, default_secs, 0)?;
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

fn server_limits(get: &impl Fn(&str) -> Option<String>) -> Result<ServerLimits, ConfigError> {
    let default = ServerLimits::default();
    let max_connections = number(
        get,
        "JOBPILOT_MAX_CONNECTIONS",
        default.max_connections.unwrap_or(0),
        0,
    )?;
    Ok(ServerLimits {
        header_read_timeout: optional_secs(
            get,
            "JOBPILOT_HEADER_READ_TIMEOUT_SECS",
            default.header_read_timeout,
        )?,
        body_read_timeout: optional_secs(
            get,
            "JOBPILOT_BODY_READ_TIMEOUT_SECS",
            default.body_read_timeout,
        )?,
        max_connections: (max_connections > 0).then_some(max_connections),
    })
}

fn run_limits(get: &impl Fn(&str) -> Option<String>) -> Result<RunLimits, ConfigError> {
    let default = RunLimits::default();
    Ok(RunLimits {
        per_user_per_sec: number(
            get,
            "JOBPILOT_RUNS_PER_USER_PER_SEC",
            default.per_user_per_sec,
            0,
        )?,
        per_user_burst: number(
            get,
            "JOBPILOT_RUNS_BURST_PER_USER",
            default.per_user_burst,
            0,
        )?,
        max_queued_per_user: number(
            get,
            "JOBPILOT_MAX_QUEUED_RUNS_PER_USER",
            default.max_queued_per_user,
            0,
        )?,
        max_queue_depth: number(get, "JOBPILOT_MAX_QUEUE_DEPTH", default.max_queue_depth, 0)?,
    })
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

/// Default `JOBPILOT_JWT_MAX_TTL_SECS`: a week, so a leaked long-lived token cannot be used
/// for years.
pub const DEFAULT_JWT_MAX_TTL_SECS: u64 = 7 * 24 * 3600;

/// The token checker: a public key or a secret, the pinned issuer and audience, the maximum
/// lifetime.
fn auth(
    get: &impl Fn(&str) -> Option<String>,
    environment: Environment,
    listen: SocketAddr,
) -> Result<(Auth, bool), ConfigError> {
    const KEY_FILE: &str = "JOBPILOT_JWT_PUBLIC_KEY_FILE";
    let (mut auth, is_dev) = match get(KEY_FILE) {
        Some(path) => {
            if get("JOBPILOT_JWT_SECRET").is_some() {
                return Err(ConfigError::secret(
                    "JOBPILOT_JWT_SECRET",
                    format!("set either it or {KEY_FILE}, not both"),
                ));
            }
            let path = path.trim();
            let pem = std::fs::read(path).map_err(|e| {
                ConfigError::new(KEY_FILE, path, format!("cannot be read: {}", e.kind()))
            })?;
            let auth = Auth::from_public_key_pem(&pem)
                .map_err(|e| ConfigError::new(KEY_FILE, path, e.to_string()))?;
            (auth, false)
        }
        None => {
            let (secret, is_dev) = jwt_secret(get("JOBPILOT_JWT_SECRET"), environment, listen)?;
            (Auth::new(secret.as_bytes()), is_dev)
        }
    };
    if let Some(issuer) = get("JOBPILOT_JWT_ISSUER") {
        auth = auth.with_issuer(issuer.trim());
    }
    if let Some(audience) = get("JOBPILOT_JWT_AUDIENCE") {
        auth = auth.with_audience(audience.trim());
    }
    let max_ttl = number(
        get,
        "JOBPILOT_JWT_MAX_TTL_SECS",
        DEFAULT_JWT_MAX_TTL_SECS,
        0,
    )?;
    auth = auth.with_max_ttl((max_ttl > 0).then(|| Duration::from_secs(max_ttl)));
    Ok((auth, is_dev))
}

/// `JOBPILOT_TRACE_URL_TEMPLATE`: an http(s) URL holding `{trace_id}`.
fn trace_url_template(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    const VAR: &str = "JOBPILOT_TRACE_URL_TEMPLATE";
    let Some(template) = get(VAR) else {
        return Ok(None);
    };
    let is_url = template.starts_with("http://") || template.starts_with("https://");
    if !is_url || !template.contains("{trace_id}") {
        return Err(ConfigError::new(
            VAR,
            &template,
            "expected an http(s) URL containing {trace_id}, e.g. http://jaeger:16686/trace/{trace_id}",
        ));
    }
    Ok(Some(template))
}

fn flag(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(ConfigError::new(var, &v, "expected true or false")),
        },
    }
}

impl Config {
    /// Whether the data directory is the default one (`JOBPILOT_DATA_DIR` unset).
    pub fn data_dir_is_default(&self) -> bool {
        self.data_dir == std::path::Path::new(DEFAULT_DATA_DIR)
    }

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

        let (auth, jwt_secret_is_dev) = auth(&get, telemetry.environment, listen)?;

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
            auth,
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
            api_docs: flag(&get, "JOBPILOT_API_DOCS", true)?,
            trace_url_template: trace_url_template(&get)?,
            llm,
            server: server_limits(&get)?,
            request_timeout: optional_secs(
                &get,
                "JOBPILOT_REQUEST_TIMEOUT_SECS",
                Some(jobpilot_api::state::DEFAULT_REQUEST_TIMEOUT),
            )?,
            run_limits: run_limits(&get)?,
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
        assert!(c.api_docs);
        assert!(!config(&[("JOBPILOT_API_DOCS", "false")]).unwrap().api_docs);
        assert_eq!(c.trace_url_template, None);
        let linked = config(&[(
            "JOBPILOT_TRACE_URL_TEMPLATE",
            "http://jaeger:16686/trace/{trace_id}",
        )]);
        assert_eq!(
            linked.unwrap().trace_url_template.as_deref(),
            Some("http://jaeger:16686/trace/{trace_id}")
        );
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
        assert!(!c.jwt_secret_is_dev);
    }

    #[test]
    fn a_public_key_file_replaces_the_secret() {
        let err = config(&[
            ("JOBPILOT_ENV", "production"),
            ("JOBPILOT_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "JOBPILOT_JWT_PUBLIC_KEY_FILE");
        let dir = tempfile_dir();
        let path = dir.join("not-a-key.pem");
        std::fs::write(&path, "hello").unwrap();
        let err = config(&[("JOBPILOT_JWT_PUBLIC_KEY_FILE", path.to_str().unwrap())]).unwrap_err();
        assert_eq!(err.var, "JOBPILOT_JWT_PUBLIC_KEY_FILE");
        let err = config(&[
            ("JOBPILOT_JWT_PUBLIC_KEY_FILE", path.to_str().unwrap()),
            ("JOBPILOT_JWT_SECRET", "s"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "JOBPILOT_JWT_SECRET");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("jobpilot-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_maximum_token_lifetime_defaults_to_a_week_and_zero_turns_it_off() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.auth.max_ttl(),
            Some(Duration::from_secs(DEFAULT_JWT_MAX_TTL_SECS))
        );
        let c = config(&[("JOBPILOT_JWT_MAX_TTL_SECS", "0")]).unwrap();
        assert_eq!(c.auth.max_ttl(), None);
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
            ("JOBPILOT_JWT_MAX_TTL_SECS", "forever"),
            ("JOBPILOT_RUN_RETENTION_SECS", "a week"),
            ("JOBPILOT_HEADER_READ_TIMEOUT_SECS", "-1"),
            ("JOBPILOT_MAX_CONNECTIONS", "many"),
            ("JOBPILOT_RUNS_PER_USER_PER_SEC", "1.5"),
            ("JOBPILOT_MAX_QUEUE_DEPTH", "x"),
            ("JOBPILOT_LLM_BASE_URL", "llm.local/v1"),
            ("JOBPILOT_LLM_CAPTURE_CONTENT", "maybe"),
            ("JOBPILOT_API_DOCS", "off-ish"),
            ("JOBPILOT_TRACE_URL_TEMPLATE", "http://jaeger:16686/trace/"),
            ("JOBPILOT_TRACE_URL_TEMPLATE", "jaeger/{trace_id}"),
            ("OTEL_EXPORTER_ENDPOINT", "ftp://collector:4317"),
        ] {
            let err = config(&[(var, value)]).expect_err(var);
            assert_eq!(err.var, var);
        }
    }

    #[test]
    fn zero_turns_an_edge_limit_off() {
        let c = config(&[]).unwrap();
        assert_eq!(c.server, ServerLimits::default());
        assert_eq!(c.run_limits, RunLimits::default());
        let c = config(&[
            ("JOBPILOT_HEADER_READ_TIMEOUT_SECS", "0"),
            ("JOBPILOT_BODY_READ_TIMEOUT_SECS", "0"),
            ("JOBPILOT_REQUEST_TIMEOUT_SECS", "0"),
            ("JOBPILOT_MAX_CONNECTIONS", "0"),
            ("JOBPILOT_RUNS_PER_USER_PER_SEC", "0"),
            ("JOBPILOT_MAX_QUEUED_RUNS_PER_USER", "0"),
            ("JOBPILOT_MAX_QUEUE_DEPTH", "0"),
        ])
        .unwrap();
        assert_eq!(c.server.header_read_timeout, None);
        assert_eq!(c.server.body_read_timeout, None);
        assert_eq!(c.server.max_connections, None);
        assert_eq!(c.request_timeout, None);
        assert_eq!(c.run_limits.per_user_per_sec, 0);
        assert_eq!(c.run_limits.max_queued_per_user, 0);
        assert_eq!(c.run_limits.max_queue_depth, 0);
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
