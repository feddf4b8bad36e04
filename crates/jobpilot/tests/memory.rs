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

/// Whether the kernel gives huge pages to every process, not only to memory advised to use them.
fn huge_pages_for_everyone() -> bool {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| mode.contains("[always]"))
}

#[tokio::test]
async fn the_process_runs_without_transparent_huge_pages() {
    let (mut jp, _dir) = serve(&[]);
    let pid = jp.child.id();
    let huge_kib = || proc_field(pid, "smaps_rollup", "AnonHugePages:").unwrap_or(0);
    let at_start = huge_kib();
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
    // Kernels since 5.0 report the process's setting.
    if let Some(enabled) = proc_field(pid, "status", "THP_enabled:") {
        assert_eq!(enabled, 0, "huge pages are still enabled for the process");
    }
    assert_eq!(huge_kib(), at_start, "the heap grew in huge pages");
    // Where huge pages come only on advice, the allocator gives none. Where every process gets
    // them, those the allocator touched before `main` turned them off stay.
    if !huge_pages_for_everyone() {
        assert_eq!(at_start, 0, "the allocator asked for huge pages");
    }
    assert_eq!(
        jp.terminate(Duration::from_secs(10)),
        Some(0),
        "{}",
        jp.stderr()
    );
}
