//! A setting that stops startup is named on stderr, and no secret it holds is printed: not the
//! OTLP headers, not the Sentry DSN, not the credentials or query of a URL.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Every secret below contains this marker; stderr must never show it.
const MARKER: &str = "SEKRET";

/// Runs `jobpilot <command>` with `env` (plus a valid secret and an unused data directory),
/// expecting it to stop by itself; returns (exit code, stderr).
fn startup(command: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobpilot"))
        .arg(command)
        // `serve` refuses to start without a store; the settings under test come after it.
        .args((command == "serve").then_some("--init"))
        .env_clear()
        .env("JOBPILOT_DATA_DIR", dir.path().join("data"))
        .env("JOBPILOT_LISTEN", &listen)
        .env("JOBPILOT_JWT_SECRET", SECRET)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return (
                status.code(),
                std::fs::read_to_string(&stderr_path).unwrap(),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "jobpilot {command} {env:?} kept running: {}",
        std::fs::read_to_string(&stderr_path).unwrap()
    );
}

const OTLP: (&str, &str) = ("OTEL_EXPORTER_ENDPOINT", "http://127.0.0.1:4317");

#[test]
fn startup_errors_name_the_variable_and_print_no_secret() {
    let redis_refused = format!("redis://:SEKRET-R3@127.0.0.1:{}/0", free_port());
    /// (command, the variable that must be named, the settings)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case<'_>> = vec![
        (
            "serve",
            "OTEL_EXPORTER_OTLP_HEADERS",
            vec![
                OTLP,
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "Authorization=Bearer SEKRET-H1,x-tenant SEKRET-H1b",
                ),
            ],
        ),
        (
            "serve",
            "OTEL_EXPORTER_OTLP_HEADERS",
            vec![
                OTLP,
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=SEKRET-H2%ZZ"),
            ],
        ),
        (
            "serve",
            "OTEL_EXPORTER_OTLP_HEADERS",
            vec![OTLP, ("OTEL_EXPORTER_OTLP_HEADERS", "bad name SEKRET-H3=v")],
        ),
        (
            "serve",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            vec![
                OTLP,
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "api-key=%SEKRET-H4"),
            ],
        ),
        ("serve", "SENTRY_DSN", vec![("SENTRY_DSN", "SEKRET-D1")]),
        (
            "serve",
            "SENTRY_DSN",
            vec![("SENTRY_DSN", "http://SEKRET-D2@/1")],
        ),
        (
            "serve",
            "SENTRY_DSN",
            vec![("SENTRY_DSN", "https://SEKRET-D3@sentry.example.com")],
        ),
        (
            "serve",
            "JOBPILOT_LLM_BASE_URL",
            vec![
                ("JOBPILOT_LLM_BASE_URL", "ftp://user:SEKRET-L1@llm.local/v1"),
                ("JOBPILOT_LLM_MODEL", "m"),
            ],
        ),
        (
            "serve",
            "JOBPILOT_LLM_BASE_URL",
            vec![
                (
                    "JOBPILOT_LLM_BASE_URL",
                    "http://llm.local:99999/v1?api_key=SEKRET-L2",
                ),
                ("JOBPILOT_LLM_MODEL", "m"),
            ],
        ),
        (
            "serve",
            "JOBPILOT_LLM_BASE_URL",
            vec![
                ("JOBPILOT_LLM_BASE_URL", "http://me:SEKRET-L3@[::1/v1"),
                ("JOBPILOT_LLM_MODEL", "m"),
            ],
        ),
        (
            "serve",
            "JOBPILOT_LLM_API_KEY",
            vec![
                ("JOBPILOT_LLM_BASE_URL", "http://127.0.0.1:9/v1"),
                ("JOBPILOT_LLM_MODEL", "m"),
                ("JOBPILOT_LLM_API_KEY", "SEKRET-K1\u{7}bell"),
            ],
        ),
        (
            "api",
            "REDIS_URL",
            vec![("REDIS_URL", "localhost:6379?password=SEKRET-R1")],
        ),
        (
            "api",
            "REDIS_URL",
            vec![("REDIS_URL", "redis://:SEKRET-R2@127.0.0.1:notaport/0")],
        ),
        (
            "api",
            "REDIS_URL",
            vec![("REDIS_URL", redis_refused.as_str())],
        ),
        (
            "serve",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "collector:4317?token=SEKRET-O1&x=a b",
            )],
        ),
        (
            "serve",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            vec![(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://u:SEKRET-O2@/v1/traces",
            )],
        ),
        (
            "serve",
            "OTEL_EXPORTER_ENDPOINT",
            vec![(
                "OTEL_EXPORTER_ENDPOINT",
                "http://u:SEKRET-O3@[::1:4317?key=SEKRET-O3",
            )],
        ),
        (
            "serve",
            "JOBPILOT_JWT_SECRET",
            vec![
                ("JOBPILOT_ENV", "staging"),
                ("JOBPILOT_JWT_SECRET", "SEKRET-J1"),
            ],
        ),
    ];
    let mut failures = Vec::new();
    for (command, var, env) in cases {
        let (code, stderr) = startup(command, &env);
        if code == Some(0) {
            failures.push(format!("{var} {env:?} was accepted: {stderr}"));
        } else if !stderr.contains(var) {
            failures.push(format!("{var} is not named: {stderr}"));
        } else if stderr.contains(MARKER) {
            failures.push(format!("a secret of {var} is printed: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
