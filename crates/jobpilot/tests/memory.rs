//! The process keeps its memory in small pages: with transparent huge pages, every touched
//! byte of the allocator's arenas made 2 MiB resident, doubling the API's memory under load.

mod support;

use std::time::Duration;

use support::*;

/// A field of `/proc/<pid>/<file>` such as `THP_enabled:` or `AnonHugePages:`, as a number.
fn proc_field(pid: u32, file: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[tokio::test]
async fn the_process_runs_without_transparent_huge_pages() {
    let (mut jp, _dir) = serve(&[]);
    let pid = jp.child.id();
    let client = reqwest::Client::new();
    let auth = format!("Bearer {}", token("alice"));
    for _ in 0..200 {
        let response = client
            .get(jp.url("/api/v1/agents"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Kernels since 5.0 report the process's setting; every kernel with THP reports the pages.
    if let Some(enabled) = proc_field(pid, "status", "THP_enabled:") {
        assert_eq!(enabled, 0, "huge pages are still enabled for the process");
    }
    let huge_kib = proc_field(pid, "smaps_rollup", "AnonHugePages:");
    assert_eq!(huge_kib.unwrap_or(0), 0, "the heap is in huge pages");
    assert_eq!(
        jp.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        jp.stderr()
    );
}
