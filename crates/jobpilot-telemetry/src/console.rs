//! The console fallback: finished spans printed to standard output when no OTLP endpoint is
//! configured.
//!
//! `pretty` prints one tree per local root (a request, a task attempt) once that root ends: one
//! line per span, indented by depth, with duration, status and the attributes an operator looks
//! for first. `json` prints one JSON object per span as it ends, for machines. It is not meant
//! for production volumes: output is written synchronously.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::Value;
use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry_sdk::trace::SpanData;

use crate::config::ConsoleFormat;
use crate::names;
use crate::record::{SpanRecord, SpanSink};

/// Attributes shown on pretty lines, in this order, when present.
const KEY_ATTRIBUTES: &[&str] = &[
    names::HTTP_RESPONSE_STATUS_CODE,
    names::USER_ID,
    names::AGENT_TYPE,
    names::RUN_ID,
    names::MESSAGING_DELIVERY_ATTEMPT,
    names::GEN_AI_USAGE_INPUT_TOKENS,
    names::GEN_AI_USAGE_OUTPUT_TOKENS,
    names::ERROR_TYPE,
];

/// Spans held while waiting for their local root; beyond it they are printed alone.
const MAX_PENDING: usize = 10_000;

/// A span sink that prints spans to a writer (standard output by default).
pub struct ConsoleProcessor {
    format: ConsoleFormat,
    state: Mutex<State>,
}

struct State {
    pending: HashMap<TraceId, Vec<SpanData>>,
    pending_count: usize,
    out: Box<dyn Write + Send>,
}

impl std::fmt::Debug for ConsoleProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleProcessor")
            .field("format", &self.format)
            .finish()
    }
}

impl ConsoleProcessor {
    /// Prints to standard output.
    pub fn stdout(format: ConsoleFormat) -> Self {
        Self::to_writer(format, Box::new(std::io::stdout()))
    }

    /// Prints to `out` (tests use a shared buffer).
    pub fn to_writer(format: ConsoleFormat, out: Box<dyn Write + Send>) -> Self {
        ConsoleProcessor {
            format,
            state: Mutex::new(State {
                pending: HashMap::new(),
                pending_count: 0,
                out,
            }),
        }
    }
}

fn is_local_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote
}

fn duration(span: &SpanData) -> Duration {
    span.end_time
        .duration_since(span.start_time)
        .unwrap_or_default()
}

fn kind_str(span: &SpanData) -> &'static str {
    use opentelemetry::trace::SpanKind as K;
    match span.span_kind {
        K::Server => "server",
        K::Client => "client",
        K::Producer => "producer",
        K::Consumer => "consumer",
        K::Internal => "internal",
    }
}

/// Keeps a value on one line: control characters (CR, LF, ESC, ...) are escaped so an
/// attribute cannot forge a line or colour the terminal.
fn one_line(s: &str) -> String {
    s.chars().flat_map(char::escape_default).collect::<String>()
}

fn pretty_line(span: &SpanData, depth: usize) -> String {
    let mut line = format!(
        "{:indent$}{} [{}] {:.1}ms",
        "",
        one_line(&span.name),
        kind_str(span),
        duration(span).as_secs_f64() * 1000.0,
        indent = depth * 2
    );
    match &span.status {
        Status::Error { description } => {
            line.push_str(&format!(" ERROR({})", one_line(description)));
        }
        Status::Ok => line.push_str(" OK"),
        Status::Unset => line.push_str(" ok"),
    }
    for key in KEY_ATTRIBUTES {
        if let Some(kv) = span.attributes.iter().find(|kv| kv.key.as_str() == *key) {
            line.push_str(&format!(" {}={}", key, one_line(&kv.value.as_str())));
        }
    }
    if depth == 0 {
        line.push_str(&format!(" trace_id={}", span.span_context.trace_id()));
    }
    line
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Bool(b) => (*b).into(),
        Value::I64(i) => (*i).into(),
        Value::F64(f) => (*f).into(),
        Value::String(s) => s.as_str().into(),
        other => other.as_str().into_owned().into(),
    }
}

fn unix_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn json_line(span: &SpanData) -> String {
    let attributes: serde_json::Map<String, serde_json::Value> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.to_string(), value_json(&kv.value)))
        .collect();
    let (status, message) = match &span.status {
        Status::Unset => ("unset", None),
        Status::Ok => ("ok", None),
        Status::Error { description } => ("error", Some(description.to_string())),
    };
    let parent = (span.parent_span_id != SpanId::INVALID).then(|| span.parent_span_id.to_string());
    serde_json::json!({
        "trace_id": span.span_context.trace_id().to_string(),
        "span_id": span.span_context.span_id().to_string(),
        "parent_span_id": parent,
        "name": span.name,
        "kind": kind_str(span),
        "start_unix_nano": unix_nanos(span.start_time).to_string(),
        "duration_ms": duration(span).as_secs_f64() * 1000.0,
        "status": status,
        "status_message": message,
        "attributes": attributes,
        "events": span.events.iter().map(|e| e.name.to_string()).collect::<Vec<_>>(),
        "scope": span.instrumentation_scope.name(),
    })
    .to_string()
}

/// Prints the spans of `root`'s subtree found in `spans` (taking them out), depth first by
/// start time.
fn print_tree(out: &mut dyn Write, root: SpanData, spans: &mut Vec<SpanData>) {
    let mut stack = vec![(root, 0usize)];
    while let Some((span, depth)) = stack.pop() {
        let _ = writeln!(out, "{}", pretty_line(&span, depth));
        let id = span.span_context.span_id();
        let mut children: Vec<SpanData> = Vec::new();
        let mut i = 0;
        while i < spans.len() {
            if spans[i].parent_span_id == id {
                children.push(spans.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // Latest first on the stack, so the earliest child prints first.
        children.sort_by_key(|c| std::cmp::Reverse(c.start_time));
        stack.extend(children.into_iter().map(|c| (c, depth + 1)));
    }
}

impl SpanSink for ConsoleProcessor {
    fn on_end(&self, span: SpanRecord) {
        let span = span.into_span_data();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        match self.format {
            ConsoleFormat::Json => {
                let _ = writeln!(state.out, "{}", json_line(&span));
            }
            ConsoleFormat::Pretty if is_local_root(&span) => {
                let trace = span.span_context.trace_id();
                let mut pending = state.pending.remove(&trace).unwrap_or_default();
                let before = pending.len();
                print_tree(&mut state.out, span, &mut pending);
                state.pending_count -= before - pending.len();
                if !pending.is_empty() {
                    state.pending.insert(trace, pending);
                }
            }
            ConsoleFormat::Pretty => {
                if state.pending_count >= MAX_PENDING {
                    // Something never ends its root: print rather than grow without bound.
                    let _ = writeln!(state.out, "{}", pretty_line(&span, 0));
                    return;
                }
                state.pending_count += 1;
                state
                    .pending
                    .entry(span.span_context.trace_id())
                    .or_default()
                    .push(span);
            }
        }
        let _ = state.out.flush();
    }

    fn shutdown(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *state;
        // Spans whose root never ended in this process are printed as they are.
        for (_, spans) in state.pending.drain() {
            for span in spans {
                let _ = writeln!(state.out, "{}", pretty_line(&span, 0));
            }
        }
        state.pending_count = 0;
        let _ = state.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Recorder;
    use crate::span::{SpanKind, TraceCx, Tracer};
    use opentelemetry_sdk::trace::Sampler;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn printed(format: ConsoleFormat, work: impl FnOnce(&Tracer)) -> String {
        let buf = Buffer::default();
        let recorder = Recorder::builder(Sampler::AlwaysOn)
            .with_sink(ConsoleProcessor::to_writer(format, Box::new(buf.clone())))
            .build();
        let tracer = Tracer::new(&recorder, "test", 1024);
        work(&tracer);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn pretty_prints_a_tree_indented_by_depth_in_start_order() {
        let out = printed(ConsoleFormat::Pretty, |t| {
            let root = t.start(&TraceCx::root(), "GET /x", SpanKind::Server, vec![]);
            let a = t.start(&root.cx(), "first", SpanKind::Internal, vec![]);
            let a1 = t.start(&a.cx(), "first.child", SpanKind::Client, vec![]);
            a1.end();
            a.end();
            let b = t.start(&root.cx(), "second", SpanKind::Internal, vec![]);
            b.fail("boom_error", "it broke");
            b.end();
            root.set(names::USER_ID, "alice");
            root.end();
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("GET /x [server]"), "{out}");
        assert!(lines[0].contains("user_id=alice") && lines[0].contains("trace_id="));
        assert!(lines[1].starts_with("  first [internal]"), "{out}");
        assert!(lines[2].starts_with("    first.child [client]"), "{out}");
        assert!(lines[3].starts_with("  second [internal]"), "{out}");
        assert!(lines[3].contains("ERROR(it broke)") && lines[3].contains("error.type=boom_error"));
    }

    #[test]
    fn json_prints_one_object_per_span() {
        let out = printed(ConsoleFormat::Json, |t| {
            let root = t.start(&TraceCx::root(), "root", SpanKind::Server, vec![]);
            t.start(
                &root.cx(),
                "child",
                SpanKind::Internal,
                vec![(names::RUN_ID, "r1".into())],
            )
            .end();
            root.end();
        });
        let spans: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0]["name"], "child");
        assert_eq!(spans[0]["attributes"]["run_id"], "r1");
        assert_eq!(spans[0]["parent_span_id"], spans[1]["span_id"]);
    }

    #[test]
    fn control_characters_cannot_forge_a_line() {
        let out = printed(ConsoleFormat::Pretty, |t| {
            t.start(
                &TraceCx::root(),
                "GET /a\r\nFAKE line\x1b[31m",
                SpanKind::Server,
                vec![],
            )
            .end();
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\x1b'));
    }
}
