//! The API docs of `jobpilot serve`: in a real headless Chromium, Swagger UI at `/docs` loads
//! from the server alone, the Authorize button takes a bearer token, and "Try it out" on
//! `GET /api/v1/agents` gets a 200 listing the three agent types; `JOBPILOT_API_DOCS=false`
//! turns the docs and the document off.

mod support;

use support::browser::Browser;
use support::*;

/// The Swagger UI element of an operation: `operations-{tag}-{operationId}`.
const LIST_AGENTS: &str = "#operations-agents-list_agents";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_authorizes_with_a_token_and_tries_out_the_agents_list() {
    let (serve, _data) = serve(&[("OTEL_TRACES_EXPORTER", "none")]);
    let base = serve.url("");
    let browser = Browser::start().await;

    browser.client().goto(&serve.url("/docs")).await.unwrap();
    browser.visible(LIST_AGENTS).await;

    // Authorize: the bearer scheme's dialog takes the token.
    browser.click("button.btn.authorize").await;
    let token = token("docs-reader");
    browser
        .visible(".modal-ux input")
        .await
        .send_keys(&token)
        .await
        .unwrap();
    browser.click(".modal-ux button.authorize").await;
    browser.click(".modal-ux button.btn-done").await;

    // Try it out on GET /api/v1/agents.
    browser
        .click(&format!("{LIST_AGENTS} .opblock-summary-control"))
        .await;
    browser.click(&format!("{LIST_AGENTS} .try-out__btn")).await;
    browser
        .click(&format!("{LIST_AGENTS} button.execute"))
        .await;

    let status = browser
        .visible(&format!(
            "{LIST_AGENTS} .live-responses-table tr.response .response-col_status"
        ))
        .await
        .text()
        .await
        .unwrap();
    let body = browser
        .visible(&format!(
            "{LIST_AGENTS} .live-responses-table tr.response .response-col_description pre"
        ))
        .await
        .text()
        .await
        .unwrap();
    let curl = browser
        .visible(&format!("{LIST_AGENTS} .curl-command"))
        .await
        .text()
        .await
        .unwrap();
    let resources = browser.loaded_resources().await;
    let log = browser.driver_log();
    browser.close().await;

    assert_eq!(status.trim(), "200", "{body}\n{log}");
    for agent in ["job_match", "resume_review", "cover_letter"] {
        assert!(body.contains(&format!("\"{agent}\"")), "{agent} in {body}");
    }
    // The request went to this server with the token typed into the dialog.
    assert!(curl.contains(&format!("{base}/api/v1/agents")), "{curl}");
    assert!(curl.contains(&format!("Bearer {token}")), "{curl}");
    // Nothing came from anywhere else.
    assert!(!resources.is_empty());
    assert!(
        resources.iter().all(|r| r.starts_with(&base)),
        "resources from elsewhere: {resources:?}"
    );
    assert!(!serve.stderr().contains("panicked"), "{}", serve.stderr());
}

#[tokio::test]
async fn jobpilot_api_docs_false_turns_off_the_docs_and_the_document() {
    let (serve, _data) = serve(&[
        ("OTEL_TRACES_EXPORTER", "none"),
        ("JOBPILOT_API_DOCS", "false"),
    ]);
    for path in ["/docs", "/docs/", "/openapi.json"] {
        let (status, body) = get_json(&serve.url(path), None).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let (status, _) = get_json(&serve.url("/api/v1/agents"), Some(&token("reader"))).await;
    assert_eq!(status, 200);
}
