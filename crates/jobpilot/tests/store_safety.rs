//! The embedded store is never created by accident and never hides damage: `serve` refuses a
//! missing or empty store file, naming the path and the command that creates one on purpose;
//! `jobpilot init` and `serve --init` create it private to its owner; a damaged page is reported
//! as corruption by the run endpoint and by `/ready`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use jobpilot_queue::{EmbeddedBackend, QueueSettings, RunRecord, RunStore};
use support::*;

/// Runs `jobpilot <args>` with the data directory `dir` to its end (bounded by the command
/// failing fast; a `serve` that starts would be killed by the caller's timeout).
fn run_jobpilot(args: &[&str], dir: &std::path::Path) -> Output {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobpilot"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JOBPILOT_DATA_DIR", dir)
        .env("JOBPILOT_LISTEN", listen)
        .env("OTEL_TRACES_EXPORTER", "none");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = child.id();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(20));
        let _ = Command::new("kill")
            .args(["-KILL", &id.to_string()])
            .status();
    });
    let output = child.wait_with_output().unwrap();
    drop(killer);
    output
}

#[test]
fn serve_refuses_a_missing_store_naming_the_path_and_the_init_command() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_jobpilot(&["serve"], dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let path = dir.path().join("jobpilot.redb");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("jobpilot init"), "{stderr}");
    assert!(stderr.contains("serve --init"), "{stderr}");
    assert!(!path.exists(), "serve created a store");
}

#[test]
fn serve_refuses_an_empty_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let init = run_jobpilot(&["init"], dir.path());
    assert!(init.status.success(), "{init:?}");
    let path = dir.path().join("jobpilot.redb");
    std::fs::File::create(&path).unwrap(); // truncated to 0 bytes
    let output = run_jobpilot(&["serve"], dir.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is empty (0 bytes)"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("jobpilot init"), "{stderr}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_creates_a_private_store_that_serve_then_opens() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("store");
    let first = run_jobpilot(&["init"], &dir);
    assert!(first.status.success(), "{first:?}");
    assert!(String::from_utf8_lossy(&first.stdout).contains("created a new store"));
    let path = dir.join("jobpilot.redb");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&path), 0o600);
    let again = run_jobpilot(&["init"], &dir);
    assert!(String::from_utf8_lossy(&again.stdout).contains("already exists"));

    let listen = format!("127.0.0.1:{}", free_port());
    let env = base_env(&[
        ("JOBPILOT_LISTEN", &listen),
        ("JOBPILOT_DATA_DIR", dir.to_str().unwrap()),
        ("OTEL_TRACES_EXPORTER", "none"),
    ]);
    let serve = Jobpilot::start(&["serve"], &env);
    let (status, body) = get_json(&serve.url("/ready"), None).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_is_reported_as_corruption_not_as_try_again() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = (0..300).map(|i| format!("run{i:04}")).collect();
    {
        let store = EmbeddedBackend::create(dir.path(), QueueSettings::default()).unwrap();
        for id in &ids {
            let mut run = RunRecord::queued(id, "resume_review", "kim", "", 1);
            run.error = Some("x".repeat(2_000));
            store.insert(&run).await.unwrap();
        }
    }
    {
        use std::io::{Seek, SeekFrom, Write};
        let path = dir.path().join("jobpilot.redb");
        let len = std::fs::metadata(&path).unwrap().len();
        let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(len / 2)).unwrap();
        file.write_all(&vec![0xA5; 64 * 1024]).unwrap();
    }
    let listen = format!("127.0.0.1:{}", free_port());
    let env = base_env(&[
        ("JOBPILOT_LISTEN", &listen),
        ("JOBPILOT_DATA_DIR", dir.path().to_str().unwrap()),
        ("OTEL_TRACES_EXPORTER", "none"),
    ]);
    let serve = Jobpilot::start(&["serve"], &env);
    let admin = admin_token("root");
    let mut statuses = std::collections::BTreeMap::new();
    for id in &ids {
        let (status, _) = get_json(&serve.url(&format!("/api/v1/runs/{id}")), Some(&admin)).await;
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert!(
        !statuses.contains_key(&503),
        "damaged runs answered 503 try again: {statuses:?}"
    );
    assert!(
        statuses.contains_key(&500),
        "no read hit the damage: {statuses:?}"
    );
    let (status, ready) = get_json(&serve.url("/ready"), None).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["status"], "corrupt", "{ready}");
    let reason = ready["reasons"][0].as_str().unwrap_or_default();
    assert!(
        reason.contains("corrupt") && !reason.contains("try again"),
        "{ready}"
    );
    eprintln!("FIGURE damaged_page_run_statuses={statuses:?}");
}
