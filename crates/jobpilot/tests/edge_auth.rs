//! Who may call the API: the public development secret only works in development on a loopback
//! address; everywhere else startup demands a real secret and tokens signed with the development
//! secret are refused. Every JWT rule, against the real binary: `nbf`, pinned issuer and
//! audience, the maximum lifetime, and public keys (RS256, ES256, EdDSA) made here with the
//! `openssl` command.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
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
    let mut serve = Jobpilot::start(&["serve", "--init"], &env);
    let base = serve.base.clone().unwrap();
    assert_eq!(status_with(&base, &development_token("dev")).await, 200);
    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));
    assert!(
        serve.stderr().contains("development secret"),
        "{}",
        serve.stderr()
    );
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

/// A key pair made by `openssl genpkey` in `dir`: (private PEM, path of the public PEM).
fn key_pair(dir: &std::path::Path, name: &str, genpkey: &[&str]) -> (Vec<u8>, String) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let status = Command::new("openssl")
        .arg("genpkey")
        .args(genpkey)
        .arg("-out")
        .arg(&private)
        .stderr(Stdio::null())
        .status()
        .expect("the openssl command is installed");
    assert!(status.success());
    let status = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(status.success());
    (
        std::fs::read(&private).unwrap(),
        public.to_str().unwrap().to_owned(),
    )
}

/// (what the case is, token, expected status)
type Case = (&'static str, String, u16);

async fn check_all(base: &str, cases: Vec<Case>) {
    let mut wrong = Vec::new();
    for (what, token, expected) in cases {
        let got = status_with(base, &token).await;
        if got != expected {
            wrong.push(format!("{what}: expected {expected}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn every_shared_secret_rule_is_enforced() {
    let (mut serve, _data) = serve(&[
        ("JOBPILOT_JWT_ISSUER", "https://id.example"),
        ("JOBPILOT_JWT_AUDIENCE", "jobpilot"),
        ("JOBPILOT_JWT_MAX_TTL_SECS", "3600"),
    ]);
    let base = serve.base.clone().unwrap();
    let t = now();
    let good = json!({"sub": "u", "role": "admin", "iat": t, "exp": t + 600,
                      "iss": "https://id.example", "aud": "jobpilot"});
    let with = |changes: Value| {
        let mut claims = good.clone();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        hs256(&claims)
    };
    check_all(
        &base,
        vec![
            ("a valid token", with(json!({})), 200),
            ("nbf in the past", with(json!({"nbf": t - 60})), 200),
            ("nbf in an hour", with(json!({"nbf": t + 3600})), 401),
            (
                "another issuer",
                with(json!({"iss": "https://evil.example"})),
                401,
            ),
            ("no issuer", with(json!({"iss": null})), 401),
            ("another audience", with(json!({"aud": "other"})), 401),
            ("no audience", with(json!({"aud": null})), 401),
            (
                "audience in a list",
                with(json!({"aud": ["jobpilot"]})),
                200,
            ),
            ("expired", with(json!({"exp": t - 3600})), 401),
            ("no exp", with(json!({"exp": null})), 401),
            (
                "exp - iat above the maximum",
                with(json!({"exp": t + 7200})),
                401,
            ),
            (
                "exp - now above the maximum without iat",
                with(json!({"iat": null, "exp": t + 7200})),
                401,
            ),
            (
                "within the maximum without iat",
                with(json!({"iat": null, "exp": t + 600})),
                200,
            ),
            (
                "an old iat with a far exp",
                with(json!({"iat": t - 86_400 * 365, "exp": t + 600})),
                401,
            ),
            ("iat in the future", with(json!({"iat": t + 3600})), 401),
            (
                "expires in the year 3000",
                with(json!({"exp": 32_503_680_000u64})),
                401,
            ),
            (
                "signed with another secret",
                sign(
                    Algorithm::HS256,
                    &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
                    &good,
                ),
                401,
            ),
            (
                "HS512 with the right secret",
                sign(
                    Algorithm::HS512,
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                    &good,
                ),
                401,
            ),
        ],
    )
    .await;
    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));
}

#[tokio::test]
async fn without_configured_pins_a_token_naming_an_audience_and_a_far_expiry_is_refused() {
    let (mut serve, _data) = serve(&[]);
    let base = serve.base.clone().unwrap();
    let t = now();
    let ok = json!({"sub": "u", "role": "admin", "iat": t, "exp": t + 600});
    let mut aud = ok.clone();
    aud["aud"] = json!("somebody-else");
    let mut year_3000 = ok.clone();
    year_3000["exp"] = json!(32_503_680_000u64);
    let mut six_days = ok.clone();
    six_days["exp"] = json!(t + 6 * 86_400);
    check_all(
        &base,
        vec![
            ("no pins", hs256(&ok), 200),
            ("an audience nobody configured", hs256(&aud), 401),
            (
                "the year 3000 (the default maximum is a week)",
                hs256(&year_3000),
                401,
            ),
            ("six days", hs256(&six_days), 200),
        ],
    )
    .await;
    assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0));
}

#[tokio::test]
async fn public_keys_check_rs256_es256_and_eddsa_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let kinds: [(&str, Algorithm, &[&str]); 3] = [
        (
            "rsa",
            Algorithm::RS256,
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        ),
        (
            "ec",
            Algorithm::ES256,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        ),
        ("ed", Algorithm::EdDSA, &["-algorithm", "ED25519"]),
    ];
    let t = now();
    let claims = json!({"sub": "idp-user", "role": "admin", "iat": t, "exp": t + 600,
                        "iss": "https://idp.example"});
    for (name, alg, genpkey) in kinds {
        let (private, public_path) = key_pair(dir.path(), name, genpkey);
        let (other_private, _) = key_pair(dir.path(), &format!("{name}-other"), genpkey);
        let encoding = |pem: &[u8]| match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem).unwrap(),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem).unwrap(),
            _ => EncodingKey::from_ed_pem(pem).unwrap(),
        };
        let public_pem = std::fs::read(&public_path).unwrap();
        let (mut serve, _data) = serve(&[
            ("JOBPILOT_JWT_SECRET", ""),
            ("JOBPILOT_ENV", "production"),
            ("JOBPILOT_JWT_PUBLIC_KEY_FILE", &public_path),
            ("JOBPILOT_JWT_ISSUER", "https://idp.example"),
        ]);
        let base = serve.base.clone().unwrap();
        check_all(
            &base,
            vec![
                (
                    "signed by the key",
                    sign(alg, &encoding(&private), &claims),
                    200,
                ),
                (
                    "signed by another key",
                    sign(alg, &encoding(&other_private), &claims),
                    401,
                ),
                (
                    "HS256 keyed with the public key (algorithm confusion)",
                    sign(
                        Algorithm::HS256,
                        &EncodingKey::from_secret(&public_pem),
                        &claims,
                    ),
                    401,
                ),
                ("HS256 with the old secret", hs256(&claims), 401),
            ],
        )
        .await;
        assert_eq!(serve.terminate(Duration::from_secs(15)), Some(0), "{name}");
    }
}

#[test]
fn the_token_command_refuses_a_lifetime_that_overflows_or_exceeds_the_maximum() {
    for (ttl, expected) in [
        ("18446744073709551615", "too large"),
        ("5124095576030432", "too large"),
        ("200", "JOBPILOT_JWT_MAX_TTL_SECS"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_jobpilot"))
            .args(["token", "--user", "u", "--ttl-hours", ttl])
            .env_clear()
            .env("JOBPILOT_JWT_SECRET", SECRET)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{ttl}: {stderr}");
        assert!(stderr.contains(expected), "{ttl}: {stderr}");
        assert!(output.stdout.is_empty());
    }
    let output = Command::new(env!("CARGO_BIN_EXE_jobpilot"))
        .args(["token", "--user", "u", "--ttl-hours", "200"])
        .env_clear()
        .env("JOBPILOT_JWT_SECRET", SECRET)
        .env("JOBPILOT_JWT_MAX_TTL_SECS", "0")
        .output()
        .unwrap();
    assert!(output.status.success());
}
