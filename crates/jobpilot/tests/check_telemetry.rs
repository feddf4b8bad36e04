//! `jobpilot check-telemetry` against a real TLS collector (in this process, with a CA made by
//! the test): accepted when the CA is configured, and a refusal explained in operator words
//! (unknown issuer) when it is not.

mod support;

use std::process::Command;

use jobpilot_telemetry::http_receiver::ServerTls;
use jobpilot_telemetry::testing::OtlpReceiver;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A test CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, server TLS).
fn ca_and_server() -> (String, ServerTls) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (
        ca.pem(),
        ServerTls {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            client_ca_pem: None,
        },
    )
}

/// Runs `jobpilot check-telemetry` with `env`: (exit code, stdout, stderr).
fn check(env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jobpilot"))
        .arg("check-telemetry")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(support::base_env(env))
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_telemetry_explains_an_untrusted_collector_and_passes_once_its_ca_is_set() {
    let (ca_pem, tls) = ca_and_server();
    let receiver = OtlpReceiver::start_tls(tls).await.unwrap();
    let endpoint = receiver.endpoint();
    assert!(endpoint.starts_with("https://"));

    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        check(&[
            ("OTEL_EXPORTER_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "3000"),
        ])
    })
    .await
    .unwrap();
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("unknown issuer"), "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{stderr}"
    );
    assert!(receiver.spans().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let ca_file = ca_file.to_str().unwrap().to_owned();
    let endpoint = receiver.endpoint();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        check(&[
            ("OTEL_EXPORTER_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", ca_file.as_str()),
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(stdout.starts_with("ok:"), "{stdout}");
    assert_eq!(receiver.spans().len(), 1);
}

#[test]
fn an_unreadable_certificate_file_stops_startup_with_one_line_naming_it() {
    let (code, _, stderr) = check(&[
        ("OTEL_EXPORTER_ENDPOINT", "https://127.0.0.1:1"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "{stderr}"
    );
}
