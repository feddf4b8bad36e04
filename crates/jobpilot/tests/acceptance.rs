//! A process killed (SIGKILL) in the middle of a burst of run submissions leaves no half-accepted
//! run: every run that got its 202 finishes, and once the queue has drained no stored record is
//! left unfinished — for `serve` (the embedded store, restarted after the crash) and for `api`
//! (Redis, with a separate worker).

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// One crash test at a time: each runs several processes and a burst of requests.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Parallel submitters in a burst.
const SUBMITTERS: usize = 4;
/// Runs accepted before the kill.
const ACCEPTED_BEFORE_KILL: usize = 60;

fn input() -> Value {
    json!({"resume": "Experience: Rust engineer at Acme, 2019-2024\nSkills: Docker, Kubernetes"})
}

/// Submits runs from [`SUBMITTERS`] tasks until `stop` is set or the server goes away; the run
/// ids answered with 202.
struct Burst {
    accepted: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Burst {
    fn start(base: &str) -> Burst {
        let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..SUBMITTERS)
            .map(|_| {
                let base = base.to_owned();
                let accepted = accepted.clone();
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while Instant::now() < deadline {
                        let sent = client
                            .post(format!("{base}/api/v1/agents/resume_review/runs"))
                            .bearer_auth(token("kim"))
                            .json(&json!({ "input": input() }))
                            .send()
                            .await;
                        // The server was killed: the burst is over for this submitter.
                        let Ok(res) = sent else { return };
                        if res.status() != 202 {
                            continue;
                        }
                        let Ok(body) = res.json::<Value>().await else {
                            return;
                        };
                        let id = body["run_id"].as_str().unwrap().to_owned();
                        accepted.lock().unwrap().push(id);
                    }
                })
            })
            .collect();
        Burst { accepted, tasks }
    }

    /// Waits (bounded) until at least `n` runs were accepted.
    async fn wait_accepted(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.accepted.lock().unwrap().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            self.accepted.lock().unwrap().len() >= n,
            "the burst stalled"
        );
    }

    /// Waits for the submitters to notice the server is gone; the accepted run ids.
    async fn finish(self) -> Vec<String> {
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.accepted.lock().unwrap().clone()
    }
}

/// The run records stored in an embedded store file, decoded (the process must be stopped).
fn embedded_runs(dir: &std::path::Path) -> Vec<Value> {
    use redb::{ReadableDatabase, ReadableTable};
    const RUNS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("runs");
    let db = redb::Database::open(dir.join("jobpilot.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let runs = txn.open_table(RUNS).unwrap();
    runs.iter()
        .unwrap()
        .map(|row| serde_json::from_slice(row.unwrap().1.value()).unwrap())
        .collect()
}

fn assert_all_finished(runs: &[Value]) {
    let unfinished: Vec<&Value> = runs
        .iter()
        .filter(|r| r["status"] != "succeeded" && r["status"] != "failed")
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} of {} records left unfinished, e.g. {}",
        unfinished.len(),
        runs.len(),
        unfinished[0]
    );
}

/// Waits (bounded) until the admin view shows nothing waiting and nothing in flight.
async fn wait_drained(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let admin = admin_token("root");
    loop {
        let (status, queue) = get_json(&format!("{base}/api/v1/admin/queue"), Some(&admin)).await;
        if status == 200 && queue["depth"] == 0 && queue["in_flight"] == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue never drained: {queue}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_during_a_submission_burst_finishes_every_accepted_run_after_restart() {
    let _serial = SERIAL.lock().await;
    let (mut serve, dir) = serve(&[("OTEL_TRACES_EXPORTER", "none")]);
    let base = serve.base.clone().unwrap();

    let burst = Burst::start(&base);
    burst.wait_accepted(ACCEPTED_BEFORE_KILL).await;
    serve.kill();
    let accepted = burst.finish().await;

    let env = base_env(&[
        ("JOBPILOT_LISTEN", base.trim_start_matches("http://")),
        ("JOBPILOT_DATA_DIR", dir.path().to_str().unwrap()),
        ("OTEL_TRACES_EXPORTER", "none"),
    ]);
    let mut restarted = Jobpilot::start(&["serve"], &env);
    for run_id in &accepted {
        wait_finished(&base, "kim", run_id, Duration::from_secs(60)).await;
    }
    wait_drained(&base).await;
    assert_eq!(restarted.terminate(Duration::from_secs(30)), Some(0));

    let runs = embedded_runs(dir.path());
    assert_all_finished(&runs);
    assert!(runs.len() >= accepted.len());
    eprintln!(
        "FIGURE serve_sigkill_burst accepted={} stored={} all_finished=true",
        accepted.len(),
        runs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_killed_during_a_submission_burst_leaves_no_run_that_never_finishes() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("api-kill");
    let listen = format!("127.0.0.1:{}", free_port());
    let env = base_env(&[
        ("REDIS_URL", &redis_url()),
        ("JOBPILOT_REDIS_PREFIX", &prefix),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("JOBPILOT_LISTEN", &listen),
    ]);
    let mut api = Jobpilot::start(&["api"], &env);
    let mut worker_env = env.clone();
    worker_env.remove("JOBPILOT_LISTEN");
    let mut worker = Jobpilot::start(&["worker"], &worker_env);
    let base = api.base.clone().unwrap();

    let burst = Burst::start(&base);
    burst.wait_accepted(ACCEPTED_BEFORE_KILL).await;
    api.kill();
    let accepted = burst.finish().await;

    // The worker finishes everything that was accepted; a fresh API reads the results.
    let mut again = Jobpilot::start(&["api"], &env);
    for run_id in &accepted {
        wait_finished(&base, "kim", run_id, Duration::from_secs(60)).await;
    }
    wait_drained(&base).await;

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:run:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut runs = Vec::new();
    for key in &keys {
        let raw: String = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        runs.push(serde_json::from_str::<Value>(&raw).unwrap());
    }
    let all: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&all)
        .query_async(&mut conn)
        .await
        .unwrap();
    again.terminate(Duration::from_secs(10));
    worker.terminate(Duration::from_secs(30));

    assert_all_finished(&runs);
    assert!(runs.len() >= accepted.len());
    eprintln!(
        "FIGURE api_sigkill_burst accepted={} stored={} all_finished=true",
        accepted.len(),
        runs.len()
    );
}
