//! Fills a store with finished runs, for benchmarks of listing and of the console with a
//! large history: `seed_runs <count> embedded <data dir>` or `seed_runs <count> redis <url>
//! <prefix>`.
//!
//! Each run has a one-attempt timeline of three steps, one in ten failed; they belong to 100
//! users and the three agent types, and were created over the last hour. Runs go in through
//! the store's ordinary `insert`, so the indexes are the ones a real deployment builds.

use std::sync::Arc;

use anyhow::{Context, bail};
use jobpilot_queue::{
    AttemptOutcome, AttemptRecord, EmbeddedBackend, QueueSettings, RedisBackend, RunRecord,
    RunStatus, RunStore, StepRecord, unix_now_ms,
};

/// Inserts at once; Redis answers them concurrently, redb one commit after another.
const IN_FLIGHT: usize = 64;

/// Run `i` of `count`, created evenly over the `span_ms` before `now_ms`.
fn run(i: usize, count: usize, now_ms: u64, span_ms: u64) -> RunRecord {
    let agents = ["job_match", "resume_review", "cover_letter"];
    let created = now_ms - span_ms + (i as u64 * span_ms) / count.max(1) as u64;
    let mut run = RunRecord::queued(
        format!("{i:032x}"),
        agents[i % 3],
        format!("user-{}", i % 100),
        format!("{:032x}", i + 1),
        created,
    );
    let failed = i % 10 == 0;
    let steps = ["parse_resume", "parse_job", "score"]
        .iter()
        .enumerate()
        .map(|(n, name)| StepRecord {
            name: (*name).to_owned(),
            start_offset_ms: n as f64 * 2.0,
            duration_ms: 1.5,
            success: !(failed && n == 2),
            error_type: (failed && n == 2).then(|| "no_words".to_owned()),
            llm_calls: Vec::new(),
        })
        .collect();
    run.timeline.attempts.push(AttemptRecord {
        finished_at_ms: Some(created + 8),
        outcome: if failed {
            AttemptOutcome::Failed
        } else {
            AttemptOutcome::Succeeded
        },
        error_type: failed.then(|| "no_words".to_owned()),
        steps,
        ..AttemptRecord::started(1, "seed", created + 1, created + 1)
    });
    run.attempts = 1;
    run.started_at_ms = Some(created + 1);
    run.finished_at_ms = Some(created + 8);
    if failed {
        run.status = RunStatus::Failed;
        run.error = Some("invalid_input: step score: no words".to_owned());
    } else {
        run.status = RunStatus::Succeeded;
        run.result = Some(serde_json::json!({"score": i % 100}));
    }
    run
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (count, store): (usize, Arc<dyn RunStore>) = match args.as_slice() {
        [count, kind, dir] if kind == "embedded" => (
            count.parse().context("count")?,
            Arc::new(EmbeddedBackend::create(
                dir.as_ref(),
                QueueSettings::default(),
            )?),
        ),
        [count, kind, url, prefix] if kind == "redis" => (
            count.parse().context("count")?,
            Arc::new(RedisBackend::connect(url, prefix, QueueSettings::default()).await?),
        ),
        _ => bail!(
            "usage: seed_runs <count> embedded <data dir> | seed_runs <count> redis <url> <prefix>"
        ),
    };
    let now_ms = unix_now_ms();
    let started = std::time::Instant::now();
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..count {
        if pending.len() >= IN_FLIGHT {
            pending.join_next().await.context("an insert task")???;
        }
        let store = Arc::clone(&store);
        let record = run(i, count, now_ms, 3_600_000);
        pending.spawn(async move { store.insert(&record).await.map_err(anyhow::Error::from) });
    }
    while let Some(done) = pending.join_next().await {
        done??;
    }
    eprintln!(
        "seeded {count} runs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
