//! The waterfall of one run, drawn on the server as SVG from its timeline: the queue wait,
//! every attempt with its steps and LLM calls, the waits between attempts. The critical path
//! (what the run's end waited for: the queue, each attempt's steps in turn, the retry waits)
//! is outlined, the slowest step is starred, and a failing step is red with its error.
//!
//! A run's work is strictly sequential (one attempt at a time, one step at a time), so its
//! critical path is every segment from acceptance to the end except the LLM calls, which lie
//! inside their step. Unlike a trace viewer's, this path does not stop where a span ends
//! before its child: the queue wait after the request's span is part of it.

use maud::{Markup, html};

use jobpilot_queue::{AttemptOutcome, RunRecord};

/// Width of the label column, px.
const LABELS: f64 = 270.0;
/// Width of the bars area, px.
const BARS: f64 = 640.0;
/// Width of the column of notes (errors) right of the bars, px.
const NOTES: f64 = 300.0;
/// Characters of a note shown (the whole note is in the row's tooltip and on the page).
const NOTE_CHARS: usize = 40;
/// Height of one row, px.
const ROW: f64 = 20.0;
/// Height of the axis, px.
const AXIS: f64 = 22.0;

/// One row of the drawing.
struct Row {
    label: String,
    /// Start and end, ms after the run was accepted.
    from: f64,
    to: f64,
    class: &'static str,
    critical: bool,
    title: String,
    note: Option<String>,
    depth: u8,
}

/// The rows of `run`, times relative to its acceptance, as of `now_ms`.
fn rows(run: &RunRecord, now_ms: u64) -> Vec<Row> {
    let timeline = &run.timeline;
    let origin = timeline.accepted_at_ms as f64;
    let at = |ms: u64| ms as f64 - origin;
    let mut rows = Vec::new();
    let first_start = timeline.attempts.first().map(|a| a.started_at_ms);
    let queue_end = first_start.or(run.finished_at_ms).unwrap_or(now_ms);
    rows.push(Row {
        label: "queued".to_owned(),
        from: at(timeline.enqueued_at_ms.min(queue_end)),
        to: at(queue_end),
        class: "wait",
        critical: true,
        title: format!(
            "queue wait {}",
            super::duration_text(queue_end.saturating_sub(timeline.enqueued_at_ms) as f64)
        ),
        note: None,
        depth: 0,
    });
    let slowest = timeline
        .attempts
        .iter()
        .flat_map(|a| a.steps.iter().map(move |s| (a.attempt, s)))
        .max_by(|(_, a), (_, b)| a.duration_ms.total_cmp(&b.duration_ms))
        .map(|(attempt, s)| (attempt, s.name.clone()));
    for (i, attempt) in timeline.attempts.iter().enumerate() {
        if i > 0 {
            let previous_end = timeline.attempts[i - 1]
                .finished_at_ms
                .unwrap_or(attempt.delivered_at_ms);
            if attempt.started_at_ms > previous_end {
                rows.push(Row {
                    label: "waiting to retry".to_owned(),
                    from: at(previous_end),
                    to: at(attempt.started_at_ms),
                    class: "wait",
                    critical: true,
                    title: format!(
                        "between attempts {}",
                        super::duration_text((attempt.started_at_ms - previous_end) as f64)
                    ),
                    note: None,
                    depth: 0,
                });
            }
        }
        let end = attempt
            .finished_at_ms
            .unwrap_or(now_ms.max(attempt.started_at_ms));
        let class = match attempt.outcome {
            AttemptOutcome::Succeeded => "ok",
            AttemptOutcome::Running => "running",
            AttemptOutcome::Cancelled | AttemptOutcome::Lost => "stopped",
            AttemptOutcome::Failed | AttemptOutcome::Retrying => "failed",
        };
        rows.push(Row {
            label: format!("attempt {} · {}", attempt.attempt, attempt.outcome.as_str()),
            from: at(attempt.started_at_ms),
            to: at(end),
            class,
            critical: false,
            title: format!(
                "attempt {} on {} · {} · {}",
                attempt.attempt,
                if attempt.worker.is_empty() {
                    "?"
                } else {
                    &attempt.worker
                },
                attempt.outcome.as_str(),
                super::duration_text(end.saturating_sub(attempt.started_at_ms) as f64)
            ),
            note: attempt.error_type.clone(),
            depth: 0,
        });
        let start = at(attempt.started_at_ms);
        for step in &attempt.steps {
            let is_slowest = slowest.as_ref() == Some(&(attempt.attempt, step.name.clone()));
            rows.push(Row {
                label: format!(
                    "{}{}",
                    step.name,
                    if is_slowest { " ★ slowest" } else { "" }
                ),
                from: start + step.start_offset_ms,
                to: start + step.start_offset_ms + step.duration_ms,
                class: if step.success { "step" } else { "failed" },
                critical: true,
                title: format!(
                    "{} · {}{}",
                    step.name,
                    super::duration_text(step.duration_ms),
                    step.error_type
                        .as_ref()
                        .map(|e| format!(" · error.type {e}"))
                        .unwrap_or_default()
                ),
                note: if step.success {
                    None
                } else {
                    Some(
                        attempt
                            .error
                            .clone()
                            .or_else(|| step.error_type.clone())
                            .unwrap_or_else(|| "failed".to_owned()),
                    )
                },
                depth: 1,
            });
            for call in &step.llm_calls {
                let tokens = match (call.input_tokens, call.output_tokens) {
                    (Some(i), Some(o)) => format!(" · {i}→{o} tokens"),
                    _ => String::new(),
                };
                rows.push(Row {
                    label: format!("chat {}", call.model),
                    from: start + call.start_offset_ms,
                    to: start + call.start_offset_ms + call.duration_ms,
                    class: if call.success { "llm" } else { "failed" },
                    critical: false,
                    title: format!(
                        "chat {} · {} · {} HTTP attempt(s){tokens}",
                        call.model,
                        super::duration_text(call.duration_ms),
                        call.http_attempts
                    ),
                    note: None,
                    depth: 2,
                });
            }
        }
    }
    rows
}

fn clip(note: &str) -> String {
    if note.chars().count() <= NOTE_CHARS {
        note.to_owned()
    } else {
        let short: String = note.chars().take(NOTE_CHARS - 1).collect();
        format!("{short}…")
    }
}

/// The waterfall of `run` as of `now_ms`.
pub(crate) fn draw(run: &RunRecord, now_ms: u64) -> Markup {
    let rows = rows(run, now_ms);
    let span = rows.iter().map(|r| r.to).fold(1.0_f64, f64::max).max(1.0);
    let x = |t: f64| LABELS + (t.max(0.0) / span) * BARS;
    let height = AXIS + ROW * rows.len() as f64 + 6.0;
    let width = LABELS + BARS + NOTES;
    let ticks: Vec<f64> = (0..=4).map(|i| span * f64::from(i) / 4.0).collect();
    html! {
        svg.waterfall xmlns="http://www.w3.org/2000/svg" width=(width) height=(height)
            viewBox=(format!("0 0 {width} {height}")) role="img"
            aria-label=(format!("waterfall of run {}", run.run_id)) {
            @for tick in &ticks {
                line.tick x1=(x(*tick)) x2=(x(*tick)) y1=(AXIS - 4.0) y2=(height) {}
                text.axis x=(x(*tick)) y="12" text-anchor="middle" { (super::duration_text(*tick)) }
            }
            @for (i, row) in rows.iter().enumerate() {
                @let y = AXIS + ROW * i as f64;
                @let left = x(row.from);
                @let w = (x(row.to) - left).max(1.5);
                g class=(format!("row {}", row.class)) data-critical=(row.critical) {
                    title { (row.title) }
                    text.label x=(6.0 + 12.0 * f64::from(row.depth)) y=(y + 14.0) { (row.label) }
                    rect.bar x=(left) y=(y + 3.0) width=(w) height=(ROW - 6.0) rx="2" {}
                    @if row.critical {
                        rect.critical x=(left) y=(y + ROW - 3.0) width=(w) height="2" {}
                    }
                    @if let Some(note) = &row.note {
                        text.note x=(left + w + 4.0) y=(y + 14.0) { (clip(note)) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobpilot_queue::{AttemptRecord, LlmCallRecord, StepRecord};

    fn run() -> RunRecord {
        let mut run = RunRecord::queued("r1", "job_match", "alice", "t", 1_000);
        let step = |name: &str, start: f64, duration: f64, success: bool| StepRecord {
            name: name.into(),
            start_offset_ms: start,
            duration_ms: duration,
            success,
            error_type: (!success).then(|| "timeout".to_owned()),
            llm_calls: vec![LlmCallRecord {
                model: "m".into(),
                input_tokens: Some(3),
                output_tokens: Some(4),
                http_attempts: 2,
                start_offset_ms: start,
                duration_ms: duration,
                success,
            }],
        };
        run.timeline.attempts = vec![
            AttemptRecord {
                finished_at_ms: Some(1_300),
                outcome: AttemptOutcome::Retrying,
                error_type: Some("timeout".into()),
                error: Some("llm_unavailable: the model timed out".into()),
                steps: vec![
                    step("parse_resume", 1.0, 5.0, true),
                    step("explain", 6.0, 280.0, false),
                ],
                ..AttemptRecord::started(1, "w1", 1_010, 1_010)
            },
            AttemptRecord {
                finished_at_ms: Some(1_900),
                outcome: AttemptOutcome::Succeeded,
                steps: vec![
                    step("parse_resume", 1.0, 5.0, true),
                    step("explain", 6.0, 80.0, true),
                ],
                ..AttemptRecord::started(2, "w2", 1_800, 1_800)
            },
        ];
        run
    }

    #[test]
    fn every_segment_has_a_row_and_the_path_skips_llm_calls() {
        let rows = rows(&run(), 2_000);
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "queued",
                "attempt 1 · retrying",
                "parse_resume",
                "chat m",
                "explain ★ slowest",
                "chat m",
                "waiting to retry",
                "attempt 2 · succeeded",
                "parse_resume",
                "chat m",
                "explain",
                "chat m",
            ]
        );
        let queued = &rows[0];
        assert_eq!((queued.from, queued.to), (0.0, 10.0));
        assert!(
            rows.iter()
                .filter(|r| r.label.starts_with("chat"))
                .all(|r| !r.critical)
        );
        let failed = rows
            .iter()
            .find(|r| r.class == "failed" && r.label.starts_with("explain"))
            .unwrap();
        assert_eq!(
            failed.note.as_deref(),
            Some("llm_unavailable: the model timed out")
        );
        let gap = rows.iter().find(|r| r.label == "waiting to retry").unwrap();
        assert_eq!((gap.from, gap.to), (300.0, 800.0));
    }

    #[test]
    fn the_drawing_names_its_run_and_scales_to_the_end() {
        let svg = draw(&run(), 2_000).into_string();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("waterfall of run r1"));
        assert!(svg.contains("★ slowest"));
        assert!(
            svg.contains("900.0 ms"),
            "the axis ends at the run's end: {svg}"
        );
    }
}
