//! Who may call the API: the public development secret only works in development on a loopback
//! address; everywhere else startup demands a real secret and tokens signed with the development
//! secret are refused.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Runs `jobpilot <args>` with exactly `env`, expecting it to stop on its own within a few
/// seconds; returns (exit code, stderr).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobpilot"))
        .args(args)
        .env_clear()
        .env("JOBPILOT_DATA_DIR", dir.path())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
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
        "jobpilot {args:?} kept running: {}",
        std::fs::read_to_string(&stderr_path).unwrap()
    );
}

/// A token minted the way anybody can: `jobpilot token` with no secret configured.
fn development_token(user: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_jobpilot"))
        .args(["token", "--user", user, "--admin"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[test]
fn startup_without_a_secret_stops_unless_development_on_loopback() {
    let port = free_port().to_string();
    let everywhere = format!("0.0.0.0:{port}");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case<'_>> = vec![
        (vec!["serve"], vec![("JOBPILOT_ENV", "staging")]),
        (vec!["serve"], vec![("JOBPILOT_ENV", "production")]),
        (vec!["serve", "--listen", &everywhere], vec![]),
        (vec!["serve"], vec![("JOBPILOT_LISTEN", &everywhere)]),
        (
            vec!["serve"],
            vec![("JOBPILOT_ENV", "staging"), ("JOBPILOT_JWT_SECRET", "a")],
        ),
    ];
    for (args, env) in cases {
        let (code, stderr) = run_to_exit(&args, &env);
        assert_eq!(code, Some(2), "{args:?} {env:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("JOBPILOT_JWT_SECRET"),
            "{args:?} {env:?}: {stderr}"
        );
    }
}

async fn status_with(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/api/v1/admin/queue"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_token_forged_with_the_development_secret_is_refused_outside_development_on_loopback() {
    let forged = development_token("mallory");
    let port = free_port();
    let everywhere = format!("0.0.0.0:{port}");
    for env in [
        vec![("JOBPILOT_ENV", "staging")],
        vec![("JOBPILOT_ENV", "production")],
        // Development, but reachable from other machines, with a secret of its own.
        vec![
            ("JOBPILOT_LISTEN", everywhere.as_str()),
            ("JOBPILOT_JWT_SECRET", "own-short-secret"),
        ],
    ] {
        let (mut serve, _data) = serve(&env);
        let base = serve.base.clone().unwrap();
        assert_eq!(status_with(&base, &forged).await, 401, "{env:?}");
        assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));
    }
}

#[tokio::test]
async fn development_on_loopback_accepts_the_development_token_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let env: BTreeMap<String, String> = [
        ("JOBPILOT_LISTEN", listen.as_str()),
        ("JOBPILOT_DATA_DIR", dir.path().to_str().unwrap()),
        ("JOBPILOT_LOG", "info"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut serve = Jobpilot::start(&["serve"], &env);
    let base = serve.base.clone().unwrap();
    assert_eq!(status_with(&base, &development_token("dev")).await, 200);
    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));
    assert!(
        serve.stderr().contains("development secret"),
        "{}",
        serve.stderr()
    );
}
