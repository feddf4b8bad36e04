//! The console's HTML, one function per page (and per fragment the live view reloads). Pages
//! only present what the handlers give them; every figure comes from the store.

use maud::{DOCTYPE, Markup, html};

use jobpilot_agents::AgentType;
use jobpilot_queue::{DeadLetterPage, RunPage, RunRecord, RunStatus, StatsWindow};

use super::waterfall;
use crate::bodies::AdminStats;

/// Which page the navigation marks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Runs,
    Stats,
    DeadLetters,
}

/// `unix ms` as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(crate) fn clock(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let stamp = jobpilot_telemetry::logging::rfc3339(t);
    stamp.get(..19).unwrap_or(&stamp).replacen('T', " ", 1)
}

/// Queue wait of a run (enqueue → first start), when it started.
fn queue_wait(run: &RunRecord) -> Option<u64> {
    run.timeline
        .first_start_ms()
        .map(|start| start.saturating_sub(run.timeline.enqueued_at_ms))
}

fn layout(title: &str, nav: Option<Nav>, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(csrf) = csrf { meta name="csrf" content=(csrf); }
                title { (title) " · jobpilot console" }
                link rel="stylesheet" href="/console/console.css";
                script src="/console/console.js" defer {}
            }
            body {
                header {
                    span.brand { "jobpilot" }
                    @if let Some(nav) = nav {
                        nav {
                            a href="/console" class=[(nav == Nav::Runs).then_some("active")] { "Runs" }
                            a href="/console/stats" class=[(nav == Nav::Stats).then_some("active")] { "Stats" }
                            a href="/console/dead-letters" class=[(nav == Nav::DeadLetters).then_some("active")] { "Dead letters" }
                        }
                        form.logout method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=[csrf];
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login form, with the reason of a refused attempt.
pub(crate) fn login(problem: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        None,
        html! {
            h1 { "Operator console" }
            p { "Paste an admin token (" code { "jobpilot token --user you --admin" } ")." }
            @if let Some(problem) = problem { p.error id="login-error" { (problem) } }
            form.login method="post" action="/console/login" {
                label for="token" { "Admin token" }
                textarea id="token" name="token" rows="4" cols="70" autocomplete="off" spellcheck="false" {}
                button type="submit" id="login" { "Log in" }
            }
        },
    )
}

fn status_badge(status: RunStatus) -> Markup {
    html! { span class=(format!("badge {}", status.as_str())) data-status=(status.as_str()) { (status.as_str()) } }
}

/// One row of the runs table (also what the live view inserts, from the same fields).
fn run_row(run: &RunRecord) -> Markup {
    html! {
        tr id=(format!("run-{}", run.run_id)) data-run=(run.run_id) {
            td { a href=(format!("/console/runs/{}", run.run_id)) { code { (run.run_id.get(..12).unwrap_or(&run.run_id)) } } }
            td { (run.agent_type) }
            td { (run.user_id) }
            td.status { (status_badge(run.status)) }
            td.num { (queue_wait(run).map(|w| super::duration_text(w as f64)).unwrap_or_default()) }
            td.num { (run.duration_ms().map(|d| super::duration_text(d as f64)).unwrap_or_default()) }
            td.num.attempts { (run.attempts) }
            td { (clock(run.created_at_ms)) }
        }
    }
}

/// The runs page: the filters as given, a page of runs, the link to the next.
pub(crate) fn runs(csrf: &str, params: &[(String, String)], page: &RunPage) -> Markup {
    let value = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let first_page = value("cursor").is_empty();
    let next = page.next_cursor.as_ref().map(|cursor| {
        let mut query: Vec<String> = params
            .iter()
            .filter(|(k, v)| k != "cursor" && !v.is_empty())
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect();
        query.push(format!("cursor={}", urlencode(cursor)));
        format!("/console?{}", query.join("&"))
    });
    let statuses = ["queued", "running", "succeeded", "failed", "cancelled"];
    layout(
        "Runs",
        Some(Nav::Runs),
        Some(csrf),
        html! {
            h1 { "Runs" }
            form.filters method="get" action="/console" {
                label { "Status " select name="status" {
                    option value="" { "any" }
                    @for s in statuses { option value=(s) selected[value("status") == s] { (s) } }
                } }
                label { "Agent " select name="agent_type" {
                    option value="" { "any" }
                    @for a in AgentType::ALL { option value=(a.as_str()) selected[value("agent_type") == a.as_str()] { (a.as_str()) } }
                } }
                label { "User " input name="user_id" value=(value("user_id")) size="10"; }
                label { "Min duration (ms) " input name="min_duration_ms" value=(value("min_duration_ms")) size="6"; }
                label { "error.type " input name="error_type" value=(value("error_type")) size="12"; }
                button type="submit" { "Filter" }
            }
            table.runs id="runs" data-live=(first_page) data-filter-status=(value("status")) data-filter-agent=(value("agent_type")) {
                thead { tr { th { "Run" } th { "Agent" } th { "User" } th { "Status" } th { "Queue wait" } th { "Duration" } th { "Attempts" } th { "Created (UTC)" } } }
                tbody {
                    @for run in &page.runs { (run_row(run)) }
                }
            }
            @if page.runs.is_empty() { p.empty { "No run matches." } }
            @if let Some(next) = next { p { a.next href=(next) { "Older runs →" } } }
        },
    )
}

/// The part of the run page that changes while the run goes on: status, error, actions,
/// waterfall and attempts. The live view reloads it.
pub(crate) fn run_live(run: &RunRecord, now_ms: u64) -> Markup {
    let retryable = matches!(run.status, RunStatus::Failed | RunStatus::Cancelled);
    let cancellable = matches!(run.status, RunStatus::Queued | RunStatus::Running);
    let failing = run
        .timeline
        .attempts
        .iter()
        .rev()
        .find_map(|a| a.steps.iter().find(|s| !s.success).map(|s| (a, s)));
    html! {
        div id="run-live" data-status=(run.status.as_str()) data-attempts=(run.timeline.attempts.len()) {
            p.summary {
                (status_badge(run.status))
                " attempts " strong.attempts { (run.attempts) }
                @if let Some(d) = run.duration_ms() { " · took " strong { (super::duration_text(d as f64)) } }
                @if let Some(w) = queue_wait(run) { " · queue wait " strong { (super::duration_text(w as f64)) } }
                @if run.dead_lettered { " · " span.badge.failed { "dead-lettered" } }
                @if run.timeline.cancel_requested_at_ms.is_some() && !run.status.is_terminal() { " · " span.badge.cancelled { "stopping" } }
            }
            @if let Some(error) = &run.error { p.error id="run-error" { (error) } }
            @if let Some((attempt, step)) = failing {
                p.failing-step id="failing-step" {
                    "Failing step: " strong { (step.name) }
                    " (attempt " (attempt.attempt) ", error.type " code { (step.error_type.as_deref().unwrap_or("?")) } ")"
                    @if let Some(message) = &attempt.error { ": " (message) }
                }
            }
            p.actions {
                button id="retry" data-action=(format!("/console/runs/{}/retry", run.run_id)) disabled[!retryable] { "Retry" }
                " "
                button id="cancel" data-action=(format!("/console/runs/{}/cancel", run.run_id)) disabled[!cancellable] { "Cancel" }
            }
            (waterfall::draw(run, now_ms))
            h2 { "Attempts" }
            table.attempts id="attempts" {
                thead { tr { th { "#" } th { "Worker" } th { "Delivered" } th { "Ran" } th { "Outcome" } th { "error.type" } th { "Steps" } } }
                tbody {
                    @for a in &run.timeline.attempts {
                        tr data-attempt=(a.attempt) {
                            td { (a.attempt) }
                            td { code { (a.worker) } }
                            td { (clock(a.delivered_at_ms)) }
                            td.num { (super::duration_text(a.duration_ms(now_ms) as f64)) }
                            td { span class=(format!("badge {}", a.outcome.as_str())) { (a.outcome.as_str()) } }
                            td { (a.error_type.as_deref().unwrap_or("")) }
                            td { (a.steps.len()) }
                        }
                    }
                }
            }
        }
    }
}

/// The run page.
pub(crate) fn run(csrf: &str, run: &RunRecord, trace_url: Option<String>, now_ms: u64) -> Markup {
    layout(
        &format!("Run {}", run.run_id),
        Some(Nav::Runs),
        Some(csrf),
        html! {
            h1 { "Run " code { (run.run_id) } }
            p.meta {
                (run.agent_type) " for " strong { (run.user_id) } " · accepted " (clock(run.created_at_ms)) " UTC · trace "
                @match trace_url {
                    Some(url) => a id="trace-link" href=(url) target="_blank" rel="noopener" { code { (run.trace_id) } },
                    None => code id="trace-id" { (run.trace_id) },
                }
            }
            section id="run" data-run=(run.run_id) { (run_live(run, now_ms)) }
        },
    )
}

/// A small inline chart of counts per slot: runs in grey, errors in red.
fn sparkline(runs: &[u64], errors: &[u64]) -> Markup {
    let max = runs.iter().copied().max().unwrap_or(0).max(1) as f64;
    let w = 3.0;
    html! {
        svg.spark width=(runs.len() as f64 * w) height="20" role="img" aria-label="runs per slot" {
            @for (i, (r, e)) in runs.iter().zip(errors).enumerate() {
                @let hr = 18.0 * (*r as f64) / max;
                @let he = 18.0 * (*e as f64) / max;
                rect.runs x=(i as f64 * w) y=(19.0 - hr) width=(w - 0.5) height=(hr) {}
                rect.errors x=(i as f64 * w) y=(19.0 - he) width=(w - 0.5) height=(he) {}
            }
        }
    }
}

fn rate_bar(rate: f64) -> Markup {
    html! {
        span.rate { span.bar style=(format!("width:{:.0}px", (rate * 60.0).clamp(0.0, 60.0))) {} " " (format!("{:.1} %", rate * 100.0)) }
    }
}

/// The stats page.
pub(crate) fn stats(csrf: &str, stats: &AdminStats) -> Markup {
    let s = &stats.stats;
    layout(
        "Stats",
        Some(Nav::Stats),
        Some(csrf),
        html! {
            h1 { "Stats" }
            p.windows {
                @for w in StatsWindow::ALL {
                    a href=(format!("/console/stats?window={}", w.as_str())) class=[(w == s.window).then_some("active")] { (w.as_str()) } " "
                }
                " · queue depth " strong id="depth" { (stats.depth) } " · in flight " strong { (stats.in_flight) }
                " · dead-lettered " strong { (stats.dead_lettered) }
            }
            table.stats id="agents" {
                thead { tr { th { "Agent / step" } th { "Runs" } th { "Error rate" } th { "p50" } th { "p95" } th { "p99" } th { "Queue wait p50 / p95" } th { "Tokens in / out" } th { "Runs per slot" } } }
                tbody {
                    @for agent in &s.agents {
                        tr.agent {
                            td { strong { (agent.agent_type) } }
                            td.num { (agent.runs) }
                            td { (rate_bar(agent.error_rate)) }
                            td.num { (super::duration_text(agent.duration_ms.p50)) }
                            td.num { (super::duration_text(agent.duration_ms.p95)) }
                            td.num { (super::duration_text(agent.duration_ms.p99)) }
                            td.num { (super::duration_text(agent.queue_wait_ms.p50)) " / " (super::duration_text(agent.queue_wait_ms.p95)) }
                            td.num { (agent.input_tokens) " / " (agent.output_tokens) }
                            td { (sparkline(&agent.runs_series, &agent.errors_series)) }
                        }
                        @for step in &agent.steps {
                            tr.step {
                                td { "↳ " (step.step) }
                                td.num { (step.runs) }
                                td { (rate_bar(step.error_rate)) }
                                td.num { (super::duration_text(step.duration_ms.p50)) }
                                td.num { (super::duration_text(step.duration_ms.p95)) }
                                td.num { (super::duration_text(step.duration_ms.p99)) }
                                td {}
                                td.num { (step.input_tokens) " / " (step.output_tokens) }
                                td {}
                            }
                        }
                    }
                }
            }
            @if s.agents.is_empty() { p.empty { "No run finished in this window." } }
            h2 { "Failure groups" }
            table id="failures" {
                thead { tr { th { "Agent" } th { "Step" } th { "error.type" } th { "Count" } th { "First seen" } th { "Last seen" } th { "Examples" } } }
                tbody {
                    @for g in &s.failure_groups {
                        tr {
                            td { (g.agent_type) } td { (g.step) } td { code { (g.error_type) } } td.num { (g.count) }
                            td { (clock(g.first_seen_ms)) } td { (clock(g.last_seen_ms)) }
                            td { @for id in &g.example_run_ids { a href=(format!("/console/runs/{id}")) { code { (id.get(..8).unwrap_or(id)) } } " " } }
                        }
                    }
                }
            }
            h2 { "Slowest runs" }
            table id="slowest" {
                thead { tr { th { "Run" } th { "Duration" } } }
                tbody {
                    @for r in &s.slowest_runs {
                        tr { td { a href=(format!("/console/runs/{}", r.run_id)) { code { (r.run_id) } } } td.num { (super::duration_text(r.duration_ms as f64)) } }
                    }
                }
            }
        },
    )
}

/// The dead letters page.
pub(crate) fn dead_letters(csrf: &str, page: &DeadLetterPage) -> Markup {
    layout(
        "Dead letters",
        Some(Nav::DeadLetters),
        Some(csrf),
        html! {
            h1 { "Dead letters" }
            table id="dead-letters" {
                thead { tr { th { "Task" } th { "Run" } th { "Agent" } th { "Attempts" } th { "When (UTC)" } th { "Reason" } th {} } }
                tbody {
                    @for d in &page.dead_letters {
                        tr data-task=(d.task_id) {
                            td { code { (d.task_id) } }
                            td { @if !d.run_id.is_empty() { a href=(format!("/console/runs/{}", d.run_id)) { code { (d.run_id.get(..12).unwrap_or(&d.run_id)) } } } }
                            td { (d.agent_type) } td.num { (d.attempts) } td { (clock(d.at_ms)) } td { (d.reason) }
                            td {
                                button data-action=(format!("/console/dead-letters/{}/requeue", d.task_id)) data-then="remove" { "Requeue" }
                                " "
                                button data-action=(format!("/console/dead-letters/{}/delete", d.task_id)) data-then="remove" { "Delete" }
                            }
                        }
                    }
                }
            }
            @if page.dead_letters.is_empty() { p.empty { "No dead letter." } }
            @if let Some(cursor) = &page.next_cursor { p { a.next href=(format!("/console/dead-letters?cursor={}", urlencode(cursor))) { "Older →" } } }
        },
    )
}

/// A page for a console error (a missing run, the store down).
pub(crate) fn problem(csrf: Option<&str>, title: &str, message: &str) -> Markup {
    layout(
        title,
        Some(Nav::Runs),
        csrf,
        html! { h1 { (title) } p.error { (message) } },
    )
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The console's script: live updates and action buttons. Plain JavaScript, no build step.
pub(crate) const SCRIPT: &str = include_str!("console.js");
/// The console's style sheet.
pub(crate) const STYLE: &str = include_str!("console.css");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_unix_milliseconds_as_utc() {
        assert_eq!(clock(0), "1970-01-01 00:00:00");
        assert_eq!(clock(1_796_615_296_669), "2026-12-07 03:48:16");
        assert_eq!(clock(951_782_400_000), "2000-02-29 00:00:00");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    }
}
