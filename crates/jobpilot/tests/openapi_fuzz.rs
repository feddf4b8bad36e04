//! The OpenAPI document is a contract: `schemathesis` generates requests from `/openapi.json`
//! (valid and invalid ones) and checks every answer against it — no 500, every documented
//! status and body shape, schema-valid input accepted, invalid input rejected — over every
//! operation of the document.

mod support;

use std::time::Duration;

use support::*;

/// The one operation left out: an endless `text/event-stream`.
const EVENTS_PATH: &str = "/api/v1/admin/events";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_contract_violation() {
    let schemathesis = std::env::var("JOBPILOT_TEST_SCHEMATHESIS").expect(
        "JOBPILOT_TEST_SCHEMATHESIS must name the schemathesis executable; run ./scripts/test.sh",
    );
    let (serve, data) = serve(&[("OTEL_TRACES_EXPORTER", "none"), ("JOBPILOT_LOG", "warn")]);
    let auth = format!("Authorization: Bearer {}", admin_token("fuzzer"));
    // A body over the size limit is rejected with 413, which is documented; schemathesis only
    // expects 4xx codes of its own list unless told.
    let config = data.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        "[checks.negative_data_rejection]\n\
         expected-statuses = [\"400\", \"401\", \"403\", \"404\", \"405\", \"413\", \"415\", \"422\"]\n",
    )
    .unwrap();
    let output = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(&schemathesis)
            // It keeps a cache in its working directory.
            .current_dir(data.path())
            .args([
                "--config-file",
                config.to_str().unwrap(),
                "--no-color",
                "run",
                &serve.url("/openapi.json"),
                "--header",
                &auth,
                "--checks",
                "all",
                "--max-examples",
                "60",
                "--seed",
                "20261125",
                "--output-truncate",
                "true",
                // The event stream never ends, so no response of it can be checked; its
                // parameters are checked by the API tests.
                "--exclude-path",
                EVENTS_PATH,
            ])
            .output(),
    )
    .await
    .expect("schemathesis finished in time")
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    // Failing requests can be huge: show the end of the report, where the summary is.
    let tail: String = report
        .chars()
        .rev()
        .take(6000)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{tail}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("generated"), "{report}");
    // Every operation of the document was exercised, none skipped.
    let (status, doc) = get_json(&serve.url("/openapi.json"), None).await;
    assert_eq!(status, 200);
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|item| item.as_object().unwrap().keys())
        .filter(|key| ["get", "put", "post", "delete", "patch"].contains(&key.as_str()))
        .count()
        - 1;
    assert!(operations >= 9, "{doc}");
    assert!(
        report.contains(&format!("Tested: {operations}\n")),
        "not every one of the {operations} operations was tested:\n{tail}"
    );
    assert!(
        !serve.stderr().contains("panicked"),
        "the server panicked: {}",
        serve.stderr()
    );
}
