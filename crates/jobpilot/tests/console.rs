//! The operator console of `jobpilot serve` in a real headless Chromium: an admin logs in
//! with a token, finds the failing run in the live runs table, opens it, sees its failing step
//! highlighted with the error on the waterfall, presses Retry and sees the new attempt appear
//! without reloading the page. The stats and dead-letter pages show what the store counted,
//! a non-admin token is refused, and logging out ends the session.
//!
//! With `JOBPILOT_CONSOLE_SCREENSHOTS=<dir>`, the test also saves a screenshot of each page
//! there (that is how the pictures in `docs/console/` are made).

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::browser::Browser;
use support::*;

/// The content type of an HTML form's body.
const FORM: &str = "application/x-www-form-urlencoded";

async fn screenshot(browser: &Browser, name: &str) {
    let Ok(dir) = std::env::var("JOBPILOT_CONSOLE_SCREENSHOTS") else {
        return;
    };
    let png = browser.client().screenshot().await.unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
}

/// The text of the element matching `css`, once it is displayed.
async fn text(browser: &Browser, css: &str) -> String {
    browser.visible(css).await.text().await.unwrap()
}

/// Waits until the script `check` (returning a boolean) is true on the page (bounded).
async fn until(browser: &Browser, check: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = browser
            .client()
            .execute(&format!("return Boolean({check});"), vec![])
            .await
            .unwrap();
        if ok == json!(true) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_finds_a_failing_run_sees_its_failing_step_and_retries_it() {
    // The LLM fails the first request: with one attempt allowed, that run is dead-lettered.
    let llm = FakeLlm::start(LlmBehaviour::FailFirst(1)).await;
    let (serve, _data) = serve(&[
        ("OTEL_TRACES_EXPORTER", "none"),
        ("JOBPILOT_LLM_BASE_URL", &llm.base_url),
        ("JOBPILOT_LLM_MODEL", "test-model"),
        ("JOBPILOT_LLM_MAX_RETRIES", "0"),
        ("JOBPILOT_MAX_ATTEMPTS", "1"),
        (
            "JOBPILOT_TRACE_URL_TEMPLATE",
            "http://jaeger.example:16686/trace/{trace_id}",
        ),
    ]);
    let base = serve.url("");
    let review =
        json!({"resume": "Summary: backend engineer\nExperience: Rust, Python\nSkills: Docker"});
    let (dead, _) = submit(&base, "carol", "resume_review", review.clone()).await;
    wait_finished(&base, "carol", &dead, Duration::from_secs(20)).await;
    for user in ["alice", "bob"] {
        let (ok, _) = submit(&base, user, "resume_review", review.clone()).await;
        wait_finished(&base, user, &ok, Duration::from_secs(20)).await;
    }
    let (bad, trace_id) = submit(&base, "alice", "resume_review", json!({"resume": "!!!"})).await;
    let failed = wait_finished(&base, "alice", &bad, Duration::from_secs(20)).await;
    assert_eq!(failed["status"], "failed");

    let browser = Browser::start().await;
    let client = browser.client();

    // Not signed in: the console sends the browser to the login form. A non-admin token is
    // refused there.
    client.goto(&serve.url("/console")).await.unwrap();
    browser
        .visible("textarea[name=token]")
        .await
        .send_keys(&token("alice"))
        .await
        .unwrap();
    browser.click("#login").await;
    let refused = text(&browser, "#login-error").await;
    assert!(refused.contains("admin role"), "{refused}");
    screenshot(&browser, "login").await;

    browser
        .visible("textarea[name=token]")
        .await
        .send_keys(&admin_token("ops"))
        .await
        .unwrap();
    browser.click("#login").await;

    // The runs of every user; the failing one is marked failed.
    let row = format!("#run-{bad}");
    let status = text(&browser, &format!("{row} td.status")).await;
    assert_eq!(status, "failed");
    let users = text(&browser, "#runs tbody").await;
    assert!(
        users.contains("alice") && users.contains("bob") && users.contains("carol"),
        "{users}"
    );
    // A run submitted now appears without reloading.
    client
        .execute("window.notReloaded = true;", vec![])
        .await
        .unwrap();
    let (fresh, _) = submit(&base, "bob", "resume_review", review.clone()).await;
    browser.visible(&format!("#run-{fresh}")).await;
    until(
        &browser,
        "window.notReloaded === true",
        "the live row without a reload",
    )
    .await;
    wait_finished(&base, "bob", &fresh, Duration::from_secs(20)).await;
    until(
        &browser,
        &format!("document.querySelector('#run-{fresh} td.status').textContent === 'succeeded'"),
        "the live status update",
    )
    .await;
    screenshot(&browser, "runs").await;

    // The failing run: its failing step and error, on the waterfall, and its trace link.
    browser.click(&format!("{row} a")).await;
    let failing = text(&browser, "#failing-step").await;
    assert!(failing.contains("parse_resume"), "{failing}");
    assert!(failing.contains("no_words"), "{failing}");
    let error = text(&browser, "#run-error").await;
    assert!(error.starts_with("invalid_input:"), "{error}");
    let svg = browser
        .visible("svg.waterfall")
        .await
        .html(false)
        .await
        .unwrap();
    assert!(svg.contains("queued") && svg.contains("attempt 1"), "{svg}");
    let failed_bars = client
        .execute(
            "return document.querySelectorAll('svg.waterfall g.row.failed').length;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        failed_bars.as_u64().unwrap() >= 2,
        "the attempt and its failing step are red"
    );
    let link = browser
        .visible("#trace-link")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        link,
        format!("http://jaeger.example:16686/trace/{trace_id}")
    );
    assert_eq!(text(&browser, "#attempts tbody").await.lines().count(), 1);

    // Retry: the second attempt appears without a reload.
    client
        .execute("window.notReloaded = true;", vec![])
        .await
        .unwrap();
    browser.click("#retry").await;
    until(
        &browser,
        "document.querySelectorAll('#attempts tbody tr').length === 2",
        "the second attempt",
    )
    .await;
    until(
        &browser,
        "window.notReloaded === true",
        "the retry without a reload",
    )
    .await;
    until(
        &browser,
        "document.querySelector('#run-live').dataset.status === 'failed'",
        "the retried run to fail again",
    )
    .await;
    let svg = browser
        .visible("svg.waterfall")
        .await
        .html(false)
        .await
        .unwrap();
    assert!(svg.contains("attempt 2"), "{svg}");
    screenshot(&browser, "run").await;

    // Stats: the counted runs and the failure group.
    client
        .goto(&serve.url("/console/stats?window=1h"))
        .await
        .unwrap();
    let agents = text(&browser, "#agents").await;
    assert!(
        agents.contains("resume_review") && agents.contains("suggest"),
        "{agents}"
    );
    let failures = text(&browser, "#failures").await;
    assert!(
        failures.contains("parse_resume") && failures.contains("no_words"),
        "{failures}"
    );
    screenshot(&browser, "stats").await;

    // Dead letters: the run whose LLM call failed; requeue it.
    client
        .goto(&serve.url("/console/dead-letters"))
        .await
        .unwrap();
    let dead_row = format!("#dead-letters tr[data-task='{dead}']");
    browser.visible(&dead_row).await;
    screenshot(&browser, "dead-letters").await;
    browser.click(&format!("{dead_row} button")).await;
    until(
        &browser,
        &format!("document.querySelector(\"{dead_row}\") === null"),
        "the requeued dead letter to leave the list",
    )
    .await;
    let requeued = wait_finished(&base, "carol", &dead, Duration::from_secs(20)).await;
    assert_eq!(requeued["status"], "succeeded", "{requeued}");

    // Logging out ends the session.
    client.goto(&serve.url("/console")).await.unwrap();
    browser.click("form.logout button").await;
    browser.visible("textarea[name=token]").await;
    client.goto(&serve.url("/console/stats")).await.unwrap();
    browser.visible("textarea[name=token]").await;

    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_actions_need_the_session_and_its_csrf_token() {
    let (serve, _data) = serve(&[("OTEL_TRACES_EXPORTER", "none")]);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // Pages without a session go to the login form; actions are refused in JSON.
    let page = client.get(serve.url("/console")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert_eq!(page.headers()["location"], "/console/login");
    let action = client
        .post(serve.url("/console/runs/x/retry"))
        .send()
        .await
        .unwrap();
    assert_eq!(action.status(), 401);

    // Logging in sets an HttpOnly, strict, expiring cookie.
    let login = client
        .post(serve.url("/console/login"))
        .header("content-type", FORM)
        .body(format!("token={}", admin_token("ops")))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        cookie.contains("Max-Age=") && cookie.contains("Path=/console"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();

    // With the session but without the CSRF token, or from another site: refused.
    let (run_id, _) = submit(
        &serve.url(""),
        "alice",
        "resume_review",
        json!({"resume": "!!!"}),
    )
    .await;
    wait_finished(&serve.url(""), "alice", &run_id, Duration::from_secs(20)).await;
    let retry = serve.url(&format!("/console/runs/{run_id}/retry"));
    let no_token = client
        .post(&retry)
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 403);
    let csrf = session.rsplit('.').next().unwrap().to_owned();
    let foreign = client
        .post(&retry)
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let ok = client
        .post(&retry)
        .header("cookie", &session)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);

    // The page names the token it expects, so only its own pages can post.
    let page = client
        .get(serve.url("/console"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("<meta name=\"csrf\" content=\"{csrf}\">")),
        "{html}"
    );
    // A garbage token at the login form is refused with the reason.
    let junk = client
        .post(serve.url("/console/login"))
        .header("content-type", FORM)
        .body("token=not+a+token")
        .send()
        .await
        .unwrap();
    assert_eq!(junk.status(), 422);
}
