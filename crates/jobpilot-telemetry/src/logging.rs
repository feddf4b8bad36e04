//! Log lines: `tracing` events written to standard error as text or JSON, each carrying the
//! `trace_id` and `span_id` of the OpenTelemetry context current when it was written.
//!
//! Control characters in messages and fields are escaped, so a request path with CR/LF or ANSI
//! escapes cannot forge a log line. This module does not create spans.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceContextExt as _;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::ConfigError;
use crate::ids;

/// Log output format (`JOBPILOT_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `timestamp LEVEL target: message key=value trace_id=… span_id=…`
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// An `EnvFilter` directive (`JOBPILOT_LOG`, else `RUST_LOG`, else `info`).
    pub filter: String,
    /// Output format.
    pub format: LogFormat,
}

impl LogConfig {
    /// Reads `JOBPILOT_LOG`, `RUST_LOG` and `JOBPILOT_LOG_FORMAT` through `lookup`.
    ///
    /// # Errors
    /// When the format or the filter is invalid.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let (var, filter) = match (get("JOBPILOT_LOG"), get("RUST_LOG")) {
            (Some(v), _) => ("JOBPILOT_LOG", v),
            (None, Some(v)) => ("RUST_LOG", v),
            (None, None) => ("JOBPILOT_LOG", "info".to_owned()),
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&filter) {
            return Err(ConfigError::new(var, &filter, e.to_string()));
        }
        let format = match get("JOBPILOT_LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::new(
                    "JOBPILOT_LOG_FORMAT",
                    other,
                    "expected text or json",
                ));
            }
        };
        Ok(LogConfig { filter, format })
    }
}

/// Installs the process-wide log subscriber. Call once, from `main`.
///
/// # Errors
/// When a subscriber is already installed.
pub fn init_logging(config: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter =
        tracing_subscriber::EnvFilter::try_new(&config.filter).map_err(|e| e.to_string())?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(LineFormat {
            format: config.format,
        });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .map_err(|e| e.to_string())
}

/// The event formatter behind [`init_logging`].
#[derive(Clone, Copy, Debug)]
pub struct LineFormat {
    /// Text or JSON.
    pub format: LogFormat,
}

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.fields.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name(), text));
        }
    }
}

/// Escapes control characters so the text stays on one line and cannot drive a terminal.
fn escape(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().collect::<String>()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for `t` (UTC), as log lines and the console show times.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since the epoch (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let sc = span.span_context();
        let ids = sc.is_valid().then(|| {
            (
                ids::trace_hex(sc.trace_id()).to_string(),
                ids::span_hex(sc.span_id()).to_string(),
            )
        });
        let time = rfc3339(SystemTime::now());
        match self.format {
            LogFormat::Text => {
                let mut line = format!(
                    "{time} {:>5} {}: {}",
                    meta.level(),
                    meta.target(),
                    escape(&fields.message)
                );
                for (k, v) in &fields.fields {
                    let _ = write!(line, " {k}={}", escape(v));
                }
                if let Some((trace_id, span_id)) = ids {
                    let _ = write!(line, " trace_id={trace_id} span_id={span_id}");
                }
                writeln!(writer, "{line}")
            }
            LogFormat::Json => {
                let mut obj = serde_json::Map::new();
                obj.insert("timestamp".into(), time.into());
                obj.insert("level".into(), meta.level().as_str().into());
                obj.insert("target".into(), meta.target().into());
                obj.insert("message".into(), fields.message.into());
                for (k, v) in fields.fields {
                    obj.insert(k.into(), v.into());
                }
                if let Some((trace_id, span_id)) = ids {
                    obj.insert("trace_id".into(), trace_id.into());
                    obj.insert("span_id".into(), span_id.into());
                }
                writeln!(writer, "{}", serde_json::Value::Object(obj))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_123);
        assert_eq!(rfc3339(t), "2025-11-24T16:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("a\r\nb\x1b[31m"), "a\\r\\nb\\u{1b}[31m");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn invalid_log_settings_name_the_variable() {
        let err = LogConfig::from_lookup(|k| (k == "JOBPILOT_LOG_FORMAT").then(|| "xml".into()))
            .unwrap_err();
        assert_eq!(err.var, "JOBPILOT_LOG_FORMAT");
        let err = LogConfig::from_lookup(|k| (k == "RUST_LOG").then(|| "=[".into())).unwrap_err();
        assert_eq!(err.var, "RUST_LOG");
    }
}
